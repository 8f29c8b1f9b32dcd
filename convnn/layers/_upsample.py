"""``Upsample``: MLX's ``mlx.nn.Upsample`` as a Flax NNX module."""

from __future__ import annotations

from typing import Any

import jax

from convnn import _upsample
from convnn.layers._module import Module

__all__ = ["Upsample"]


class Upsample(Module):
    """Upsamples channels-last ``(N, *spatial, C)`` input, as ``mlx.nn.Upsample``.

    Any number of spatial axes (``x.ndim - 2``); the output size per axis is
    ``int(scale * size)``. The modes and formulas are MLX's:

    * ``"nearest"``: integer scales repeat every element; other scales pick
      ``round((i + 0.5) * size / out - 0.5)`` when enlarging and ``floor(i * size / out)`` when
      shrinking;
    * ``"linear"`` (bi-/trilinear): half-pixel sampling, or corner-aligned with
      ``align_corners=True``; positions are clamped to the input;
    * ``"cubic"``: Keys' cubic with ``a = -0.75`` over four neighbours, borders replicated;
    * ``antialias=True`` (linear and cubic): MLX 0.32's antialiased filter (triangle, or Keys'
      cubic with ``a = -0.5``), widened by ``1 / scale`` when shrinking, weights normalized
      over the taps inside the input.

    Integer inputs give float32 in the linear and cubic modes (MLX's rule) and keep their dtype
    in the nearest mode. Differences from MLX: 16-bit float inputs are computed in float32 and
    cast back (MLX returns float32); float64 inputs get float64 sampling positions.

    Args:
      scale_factor: a positive number for every spatial axis, or one per axis.
      mode: ``"nearest"`` (default), ``"linear"`` or ``"cubic"``.
      align_corners: align the corner samples of input and output (linear and cubic only).
        Default False.
      antialias: filter with MLX's antialiasing kernel (linear and cubic; not with
        ``align_corners``). Default False.

    Raises:
      TypeError: on a non-numeric ``scale_factor`` or non-bool flags.
      ValueError: on an unknown mode, a non-positive scale, or ``antialias`` with the nearest
        mode or ``align_corners``; when called, on an input without
        a spatial axis, a scale count that does not match it, or an empty output.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as L
      >>> up = L.Upsample(2, mode="linear")
      >>> up
      Upsample(scale_factor=2.0, mode='linear', align_corners=False)
      >>> x = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
      >>> up(x)[0, :, :, 0].tolist()[0]
      [1.0, 1.25, 1.75, 2.0]
    """

    def __init__(
        self,
        scale_factor: Any,
        mode: str = "nearest",
        align_corners: bool = False,
        antialias: bool = False,
    ):
        self.scale_factor, self.mode, self.align_corners = _upsample.check_args(
            "Upsample", scale_factor, mode, align_corners
        )
        self.antialias = _upsample.check_antialias(
            "Upsample", self.mode, self.align_corners, antialias
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return _upsample.upsample(
            "Upsample", x, self.scale_factor, self.mode, self.align_corners, self.antialias
        )

    def __repr__(self) -> str:
        text = (
            f"Upsample(scale_factor={self.scale_factor}, mode={self.mode!r}, "
            f"align_corners={self.align_corners}"
        )
        return text + (", antialias=True)" if self.antialias else ")")
