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
    * ``"cubic"``: Keys' cubic with ``a = -0.75`` over four neighbours, borders replicated.

    Differences from MLX: float inputs keep their dtype (MLX returns float32 for 16-bit and
    integer inputs in the linear and cubic modes; here those modes need a floating input, and
    16-bit inputs are computed in float32 and cast back); float64 inputs get float64 sampling
    positions; ``antialias`` is not implemented.

    Args:
      scale_factor: a positive number for every spatial axis, or one per axis.
      mode: ``"nearest"`` (default), ``"linear"`` or ``"cubic"``.
      align_corners: align the corner samples of input and output (linear and cubic only).
        Default False.

    Raises:
      TypeError: on a non-numeric ``scale_factor`` or non-bool ``align_corners``.
      ValueError: on an unknown mode or a non-positive scale; when called, on an input without
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

    def __init__(self, scale_factor: Any, mode: str = "nearest", align_corners: bool = False):
        self.scale_factor, self.mode, self.align_corners = _upsample.check_args(
            "Upsample", scale_factor, mode, align_corners
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return _upsample.upsample(
            "Upsample", x, self.scale_factor, self.mode, self.align_corners
        )

    def __repr__(self) -> str:
        return (
            f"Upsample(scale_factor={self.scale_factor}, mode={self.mode!r}, "
            f"align_corners={self.align_corners})"
        )
