"""Positional encodings: MLX's ``SinusoidalPositionalEncoding``, ``RoPE`` and ``ALiBi``."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convnn import _args
from convnn.layers._module import Module

__all__ = ["SinusoidalPositionalEncoding", "RoPE", "ALiBi"]


def _right_aligned(v: jax.Array, ndim: int) -> jax.Array:
    """``v`` with leading ones up to ``ndim`` axes, so arithmetic needs no rank promotion."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


class SinusoidalPositionalEncoding(Module):
    r"""Sinusoidal positional encoding, as ``mlx.nn.SinusoidalPositionalEncoding``.

    Maps each value ``p`` of the input (a position, any shape) to ``dims`` features
    ``scale * [sin(p * s), cos(p * s)]`` (``[cos, sin]`` with ``cos_first``) with ``dims // 2``
    frequencies ``s`` spaced geometrically from ``max_freq`` down to ``min_freq`` (times
    :math:`2\pi` with ``full_turns``). No parameters.

    Args:
      dims: output features; positive and even.
      min_freq: lowest frequency. Default 1e-4.
      max_freq: highest frequency. Default 1.
      scale: factor on the output. Default ``None``: ``sqrt(2 / dims)``.
      cos_first: ``[cos, sin]`` instead of ``[sin, cos]``. Default False.
      full_turns: multiply the frequencies by ``2 pi``. Default False.

    Raises:
      TypeError: on a non-integer ``dims``, non-real frequencies or scale, non-bool flags; when
        called, on a complex input.
      ValueError: on an odd or non-positive ``dims`` or non-positive frequencies.

    Called on ``x`` of any shape (integer positions are computed in float32, as MLX does),
    returns ``(*x.shape, dims)``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> pe = nn.SinusoidalPositionalEncoding(8)
      >>> pe(jnp.arange(5)).shape
      (5, 8)
    """

    def __init__(
        self,
        dims: int,
        min_freq: float = 0.0001,
        max_freq: float = 1,
        scale: float | None = None,
        cos_first: bool = False,
        full_turns: bool = False,
    ):
        fn = "SinusoidalPositionalEncoding"
        dims = _args.as_int(dims, "dims", fn, minimum=1)
        if dims % 2:
            raise ValueError(f"[{fn}] dims must be positive and even but got {dims}.")
        self.dims = dims
        self.min_freq = _args.check_positive_float(min_freq, "min_freq", fn)
        self.max_freq = _args.check_positive_float(max_freq, "max_freq", fn)
        scale = _args.check_real(scale, "scale", fn, optional=True)
        self.scale = scale if scale is not None else (2 / dims) ** 0.5
        self.cos_first = _args.check_bool(cos_first, "cos_first", fn)
        self.full_turns = _args.check_bool(full_turns, "full_turns", fn)

    def _sigmas(self) -> jax.Array:
        # MLX computes these in float32 once; recomputing them per call keeps them out of the
        # module's state (MLX's ``_sigmas`` is not a parameter either).
        half = self.dims // 2
        if half == 1:
            one_zero = jnp.ones((1,), jnp.float32)
        else:
            one_zero = 1 - jnp.arange(half, dtype=jnp.float32) / (half - 1)
        lo, hi = math.log(self.min_freq), math.log(self.max_freq)
        sigmas = jnp.exp(one_zero * (hi - lo) + lo)
        return sigmas * (2 * math.pi) if self.full_turns else sigmas

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _args.as_array(x, "input", "SinusoidalPositionalEncoding")
        if jnp.issubdtype(x.dtype, jnp.floating):
            dtype = _args.promote_float(x.dtype, jnp.float32)
        elif jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
            dtype = jnp.dtype(jnp.float32)
        else:
            raise TypeError(
                f"[SinusoidalPositionalEncoding] input must be real, got dtype {x.dtype}."
            )
        _args.check_size((*x.shape, self.dims), "output", "SinusoidalPositionalEncoding",
                         f"check dims; got input shape {tuple(x.shape)}")
        y = x.astype(dtype)[..., None] * _right_aligned(self._sigmas().astype(dtype), x.ndim + 1)
        parts = [jnp.cos(y), jnp.sin(y)] if self.cos_first else [jnp.sin(y), jnp.cos(y)]
        y = jnp.concatenate(parts, axis=-1)
        return y * self.scale if self.scale != 1 else y


class RoPE(Module):
    """Rotary positional encoding, as ``mlx.nn.RoPE`` (``mx.fast.rope``).

    Rotates the first ``dims`` features of ``x`` ``(..., L, D)`` by the angle
    ``(offset + l) * scale * base ** (-2 i / dims)`` for position ``l`` along axis ``-2`` and
    frequency ``i < dims // 2``. The default rotates the pairs ``(i, i + dims // 2)``;
    ``traditional=True`` rotates consecutive pairs ``(2 i, 2 i + 1)``. Features beyond ``dims``
    pass unchanged. No parameters.

    Args:
      dims: features to rotate; even, at most ``D``.
      traditional: rotate consecutive pairs. Default False.
      base: base of the frequencies. Default 10000.
      scale: factor on the positions. Default 1.

    Raises:
      TypeError: on a non-integer ``dims`` or non-real ``base`` / ``scale``; when called, on a
        non-floating input.
      ValueError: on an odd ``dims`` or a non-positive ``base``; when called, on an input with
        fewer than ``dims`` features or an ``offset`` that is neither a scalar nor one value per
        example.

    Called as ``rope(x, offset=0)``; ``offset`` is an int or an int array, a scalar or one
    offset per example of the batch (axis 0). Computed in float32 at least; returns ``x``'s
    dtype.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> rope = nn.RoPE(4)
      >>> rope(jnp.ones((1, 2, 3, 6)), offset=2).shape
      (1, 2, 3, 6)
    """

    def __init__(self, dims: int, traditional: bool = False, base: float = 10000,
                 scale: float = 1.0):
        fn = "RoPE"
        self.dims = _args.as_int(dims, "dims", fn, minimum=1)
        if self.dims % 2:
            raise ValueError(f"[{fn}] dims must be even, got {self.dims}.")
        self.traditional = _args.check_bool(traditional, "traditional", fn)
        self.base = _args.check_positive_float(base, "base", fn)
        self.scale = _args.check_real(scale, "scale", fn)

    def _extra_repr(self) -> str:
        return f"{self.dims}, traditional={self.traditional}"

    def __repr__(self) -> str:  # MLX's format
        return f"RoPE({self._extra_repr()})"

    def __call__(self, x: jax.Array, offset: int | jax.Array = 0) -> jax.Array:
        fn = "RoPE"
        x = _args.as_array(x, "input", fn)
        _args.check_float_dtype(x.dtype, "input", fn)
        if x.ndim < 2 or x.shape[-1] < self.dims:
            raise ValueError(
                f"[{fn}] input must have shape (..., L, D) with D >= dims={self.dims}; got input "
                f"shape {tuple(x.shape)}."
            )
        if isinstance(offset, (int, np.integer)):  # bounded by name here, not by JAX's cast
            offset = _args.as_int(offset, "offset", fn)
        offset = _args.as_array(offset, "offset", fn)
        if not (jnp.issubdtype(offset.dtype, jnp.integer) or jnp.issubdtype(
                offset.dtype, jnp.floating)) or offset.ndim > 1 or (
                offset.ndim == 1 and offset.shape[0] not in (1, x.shape[0])):
            raise ValueError(
                f"[{fn}] offset must be an int, a scalar array or one offset per example "
                f"({x.shape[0]}); got offset shape {tuple(offset.shape)} dtype {offset.dtype}."
            )
        dtype = _args.promote_float(x.dtype, jnp.float32)
        half = self.dims // 2
        length = x.shape[-2]
        positions = jnp.arange(length, dtype=dtype)
        if offset.ndim == 1:  # one offset per example: (B, 1, ..., 1, L, 1)
            positions = offset.astype(dtype)[:, None] + positions[None, :]
            positions = positions.reshape((offset.shape[0],) + (1,) * (x.ndim - 3) + (length, 1))
        else:
            positions = (offset.astype(dtype) + positions)[:, None]
        inv_freq = jnp.asarray(self.base, dtype) ** (-jnp.arange(half, dtype=dtype) / half)
        theta = positions * self.scale * _right_aligned(inv_freq, positions.ndim)
        theta = _right_aligned(theta, x.ndim)
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        xs = x.astype(dtype)
        if self.traditional:
            pairs = xs[..., : self.dims].reshape(*x.shape[:-1], half, 2)
            x1, x2 = pairs[..., 0], pairs[..., 1]
            rotated = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
            rotated = rotated.reshape(*rotated.shape[:-2], self.dims)
        else:
            x1, x2 = xs[..., :half], xs[..., half: self.dims]
            rotated = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
        rotated = jnp.broadcast_to(rotated, (*jnp.broadcast_shapes(
            rotated.shape[:-1], x.shape[:-1]), self.dims))
        if self.dims < x.shape[-1]:
            rest = jnp.broadcast_to(xs[..., self.dims:], (*rotated.shape[:-1],
                                                          x.shape[-1] - self.dims))
            rotated = jnp.concatenate([rotated, rest], axis=-1)
        return rotated.astype(x.dtype)


class ALiBi(Module):
    """Attention with linear biases, as ``mlx.nn.ALiBi``.

    Adds ``-|i - j| * slope_h`` to the attention scores ``(B, H, L_q, L_k)`` of query ``i`` and
    key ``j`` in head ``h``; the slopes are the geometric sequence of the paper. No parameters.

    The constructor takes no arguments, as in MLX; ``create_alibi_matrix`` and
    ``create_alibi_slope`` are static methods. Called as
    ``alibi(attention_scores, offset=0, mask=None)`` on scores ``(B, H, L_q, L_k)``: ``offset``
    shifts the query positions; ``mask`` (additive) is added too.

    Args:

    Raises:
      TypeError: when called, on non-floating scores or a non-integer ``offset``.
      ValueError: when called, on scores that are not 4-D or a negative ``offset``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.ALiBi()(jnp.zeros((1, 2, 3, 3)))[0, 1, 2].tolist()
      [-0.0078125, -0.00390625, 0.0]
    """

    @staticmethod
    def create_alibi_matrix(
        q_sequence_length: int,
        k_sequence_length: int,
        num_heads: int,
        offset: int = 0,
        dtype: Any = jnp.float32,
    ) -> jax.Array:
        """The bias ``(1, num_heads, q_sequence_length - offset, k_sequence_length)``.

        Rows are the query positions ``offset .. q_sequence_length - 1``, as in MLX.
        """
        x1 = jnp.arange(offset, q_sequence_length)
        x2 = jnp.arange(0, k_sequence_length)
        distance = -jnp.abs(x1[:, None] - x2[None, :])[None, None]
        slopes = ALiBi.create_alibi_slope(num_heads, dtype=jnp.float32)
        return (distance.astype(jnp.float32) * slopes[None]).astype(dtype)

    @staticmethod
    def create_alibi_slope(num_heads: int, dtype: Any = jnp.float32) -> jax.Array:
        """The slopes ``(num_heads, 1, 1)``: ``2 ** (-8 (h + 1) / n)`` for ``n`` a power of two,
        interleaved from the next power of two otherwise."""
        num_heads = _args.as_int(num_heads, "num_heads", "ALiBi", minimum=1)

        def slopes(n: int) -> list[float]:
            if math.log2(n).is_integer():
                start = 2 ** (-(2 ** -(math.log2(n) - 3)))
                return [start * start**i for i in range(n)]
            closest = 2 ** math.floor(math.log2(n))
            return slopes(closest) + slopes(2 * closest)[0::2][: n - closest]

        return jnp.asarray(slopes(num_heads), dtype=dtype)[:, None, None]

    def __call__(
        self, attention_scores: jax.Array, offset: int = 0, mask: jax.Array | None = None
    ) -> jax.Array:
        scores = _args.as_array(attention_scores, "attention_scores", "ALiBi")
        _args.check_float_dtype(scores.dtype, "attention_scores", "ALiBi")
        if scores.ndim != 4:
            raise ValueError(
                "[ALiBi] attention_scores must have shape (B, num_heads, L_q, L_k); got "
                f"attention_scores shape {tuple(scores.shape)}."
            )
        offset = _args.as_int(offset, "offset", "ALiBi", minimum=0)
        bias = ALiBi.create_alibi_matrix(
            scores.shape[-2] + offset, scores.shape[-1], scores.shape[1], offset, scores.dtype
        )
        if mask is not None:
            mask = _args.as_array(mask, "mask", "ALiBi")
            bias = bias + _right_aligned(mask.astype(bias.dtype), bias.ndim)
        return scores + jnp.broadcast_to(bias, scores.shape)
