"""The private implementation of :class:`convnn.layers.Upsample` (MLX's ``mlx.nn.Upsample``).

Channels-last input ``(N, *spatial, C)`` with any number of spatial axes. The output size per axis
is ``int(scale * S)``. Sampling positions and weights are computed in NumPy at trace time (they
depend only on shapes) with MLX's formulas, in float32 exactly as MLX computes them (float64 for
float64 inputs), and applied one axis at a time with ``jnp.take``:

* ``nearest``: integer scales repeat every element (``jnp.repeat``); otherwise, when enlarging,
  the source index is ``round((i + 0.5) * S / M - 0.5)`` (round half to even), when shrinking
  ``floor(i * S / M)``;
* ``linear``: ``align_corners=True`` maps ``i`` to ``i * (S - 1) / (M - 1)``; otherwise to
  ``i / scale - ((M - 1) / scale - S + 1) / 2`` (the half-pixel rule); positions are clamped to
  ``[0, S - 1]`` and the two neighbours are mixed linearly;
* ``cubic``: the same positions, unclamped, with Keys' cubic kernel at ``a = -0.75`` (MLX's and
  PyTorch's non-antialiased bicubic) over the four neighbours; indices outside the input are
  clamped to the border (edge replication).

MLX's cubic and align-corners linear paths sum over all ``2**d`` / ``4**d`` corner products;
applying the same per-axis weights separably is mathematically identical and differs from MLX
only by float rounding.

``antialias=True`` (linear and cubic, MLX 0.32) filters as MLX does: around each half-pixel
position ``p`` the taps ``floor(p) + k`` for ``|k| < ceil(r / s') + 1`` (radius ``r`` 1 for the
triangle, 2 for Keys' cubic with ``a = -0.5``, ``s' = min(scale, 1)``) are weighted by the
kernel at ``|p - tap| * s'`` (widened by ``1 / scale`` when shrinking), taps outside the input
get weight 0, and the weights are normalized to sum to 1.

Integer inputs to the linear and cubic modes are interpolated in float32 and give float32, as in
MLX; the nearest mode keeps the input's dtype.

One deliberate difference: MLX (0.32) takes the cubic right neighbour as ``floor(pos + 1)``;
when ``pos`` lies just below an integer ``k`` and ``pos + 1`` rounds up to ``k + 1`` in float32,
it skips sample ``k`` and returns a wrong value (e.g. 17 samples, ``scale_factor=2.5``,
``align_corners=True``, output 41 of a ramp 0..16 is ~0 instead of 16). Here the neighbours are
``floor(pos) + (-1, 0, 1, 2)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convnn import _args

__all__ = ["MODES", "check_args", "check_antialias", "upsample"]

MODES = ("nearest", "linear", "cubic")


def check_antialias(fn: str, mode: str, align_corners: bool, antialias: Any) -> bool:
    """Validates ``antialias`` against the mode and ``align_corners`` (MLX's rules)."""
    if not isinstance(antialias, (bool, np.bool_)):
        raise TypeError(
            f"[{fn}] antialias must be a bool, got {antialias!r} of type "
            f"{type(antialias).__name__}."
        )
    if antialias and mode == "nearest":
        raise ValueError(f"[{fn}] antialias=True needs mode 'linear' or 'cubic', got 'nearest'.")
    if antialias and align_corners:
        raise ValueError(
            f"[{fn}] antialias=True does not support align_corners=True (as in MLX); use "
            "align_corners=False."
        )
    return bool(antialias)


def check_args(fn: str, scale_factor: Any, mode: Any, align_corners: Any):
    """Validates the constructor arguments; returns ``scale_factor`` as a float or floats."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"[{fn}] mode must be one of {MODES}, got {mode!r}.")
    if not isinstance(align_corners, (bool, np.bool_)):
        raise TypeError(
            f"[{fn}] align_corners must be a bool, got {align_corners!r} of type "
            f"{type(align_corners).__name__}."
        )

    def as_scale(v):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(
                f"[{fn}] scale_factor must be a positive number or a sequence of positive "
                f"numbers (one per spatial axis), got {scale_factor!r}."
            )
        v = float(v)
        if not (v > 0 and np.isfinite(v)):
            raise ValueError(
                f"[{fn}] scale_factor must be positive and finite, got {scale_factor!r}."
            )
        return v

    if isinstance(scale_factor, (Sequence, np.ndarray)) and not isinstance(scale_factor, str):
        if len(scale_factor) == 0:
            raise ValueError(f"[{fn}] scale_factor must not be empty, got {scale_factor!r}.")
        return tuple(as_scale(v) for v in scale_factor), mode, bool(align_corners)
    return as_scale(scale_factor), mode, bool(align_corners)


def _shape(ndim: int, axis: int, size: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = size
    return tuple(shape)


def _scaled_positions(n, m, scale, align_corners, ft):
    idx = np.arange(m, dtype=ft)
    if align_corners:
        return idx * ft((n - 1) / max(m - 1, 1))
    step = 1 / scale
    start = ((m - 1) * step - n + 1) / 2
    return idx * ft(step) - ft(start)


def _nearest_taps(n, m, ft):
    idx = np.arange(m, dtype=ft)
    if m > n:
        idx = np.round((idx + ft(0.5)) * ft(n / m) - ft(0.5))
    else:
        idx = idx * ft(n / m)
    return [(np.clip(idx.astype(np.int64), 0, n - 1), None)]


def _linear_taps(n, m, scale, align_corners, ft):
    pos = np.clip(_scaled_positions(n, m, scale, align_corners, ft), ft(0), ft(n - 1))
    lo, hi = np.floor(pos), np.ceil(pos)
    w = pos - lo
    return [(lo.astype(np.int64), ft(1) - w), (hi.astype(np.int64), w)]


def _cubic_taps(n, m, scale, align_corners, ft):
    a = ft(-0.75)
    pos = _scaled_positions(n, m, scale, align_corners, ft)
    l1 = np.floor(pos)
    # MLX takes floor(pos + 1), which skips a neighbour when pos + 1 rounds up to an integer.
    r1, l2, r2 = l1 + ft(1), l1 - ft(1), l1 + ft(2)

    def near(grid):  # |t| <= 1
        t = np.abs(pos - grid)
        return ((a + ft(2)) * t - (a + ft(3))) * t * t + ft(1)

    def far(grid):  # 1 < |t| < 2
        t = np.abs(pos - grid)
        return (((t - ft(5)) * t + ft(8)) * t - ft(4)) * a

    taps = [(l1, near(l1)), (r1, near(r1)), (l2, far(l2)), (r2, far(r2))]
    return [(np.clip(i, 0, n - 1).astype(np.int64), w) for i, w in taps]


def _aa_taps(n, m, scale, kernel, radius, ft):
    """MLX's antialiased taps: every tap near each position, weights normalized (see above)."""
    pos = _scaled_positions(n, m, scale, False, ft)
    inv_scale = 1.0 / scale if scale < 1 else 1.0
    num_taps = math.ceil(radius * inv_scale) + 1
    base = np.floor(pos)
    taps = []
    for k in range(-num_taps + 1, num_taps):
        idx = base + ft(k)
        w = kernel(np.abs(pos - idx) / ft(inv_scale), ft)
        w = np.where((idx >= 0) & (idx < n), w, ft(0)).astype(ft)
        taps.append((idx, w))
    total = sum(w for _, w in taps)
    total = np.where(total > 0, total, ft(1)).astype(ft)
    return [(np.clip(idx, 0, n - 1).astype(np.int64), (w / total).astype(ft)) for idx, w in taps]


def _triangle(t, ft):
    return np.maximum(ft(1) - t, ft(0))


def _keys_half(t, ft):
    """Keys' cubic with ``a = -0.5`` (MLX's antialiased cubic)."""
    a = ft(-0.5)
    inner = ((a + ft(2)) * t - (a + ft(3))) * t * t + ft(1)
    outer = (((t - ft(5)) * t + ft(8)) * t - ft(4)) * a
    return np.where(t <= 1, inner, np.where(t <= 2, outer, ft(0))).astype(ft)


def upsample(
    fn: str, x: Any, scale_factor: Any, mode: str, align_corners: bool, antialias: bool = False
) -> jax.Array:
    """Upsamples ``x`` (``(N, *spatial, C)``) by ``scale_factor`` with MLX's ``mode``."""
    scale_factor, mode, align_corners = check_args(fn, scale_factor, mode, align_corners)
    antialias = check_antialias(fn, mode, align_corners, antialias)
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        x = np.asarray(x)
        dtype = x.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(
            f"[{fn}] input must have a floating or integer dtype, got {np.dtype(dtype).name}."
        )
    x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    if mode != "nearest" and jnp.issubdtype(dtype, jnp.integer):
        x = x.astype(jnp.float32)  # MLX interpolates integers in float32
    dims = x.ndim - 2
    if dims < 1:
        raise ValueError(
            f"[{fn}] input must have shape (N, *spatial, C) with at least one spatial axis; "
            f"got input shape {tuple(x.shape)}."
        )
    if isinstance(scale_factor, tuple):
        if len(scale_factor) != dims:
            raise ValueError(
                f"[{fn}] scale_factor must give one scale per spatial axis ({dims}), got "
                f"scale_factor={scale_factor} for input shape {tuple(x.shape)}."
            )
        scales = scale_factor
    else:
        scales = (scale_factor,) * dims
    spatial = x.shape[1:-1]
    out_sizes = tuple(int(s * n) for s, n in zip(scales, spatial, strict=True))
    if any(m < 1 for m in out_sizes) or any(n < 1 for n in spatial):
        raise ValueError(
            f"[{fn}] the output would have spatial size {out_sizes} (int(scale * size) below 1); "
            f"got scale_factor={scale_factor} and input shape {tuple(x.shape)}."
        )
    _args.check_size((x.shape[0], *out_sizes, x.shape[-1]), "output", fn,
                     f"got scale_factor={scale_factor} and input shape {tuple(x.shape)}")
    return _resample(x, scales, out_sizes, mode, align_corners, antialias)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _resample(x, scales, out_sizes, mode, align_corners, antialias):
    """One compiled program per shape and configuration (eager calls dispatch it once)."""
    dtype = x.dtype
    spatial = x.shape[1:-1]
    if mode == "nearest" and all(s == int(s) for s in scales):
        for axis, s in enumerate(scales):
            x = jnp.repeat(x, int(s), axis=axis + 1)
        return x

    ft = np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32
    if mode != "nearest":
        compute = jnp.float64 if ft is np.float64 else jnp.float32
        x = x.astype(compute)
    out = x
    for axis, (n, m, s) in enumerate(zip(spatial, out_sizes, scales, strict=True)):
        if mode == "nearest":
            taps = _nearest_taps(n, m, ft)
        elif antialias:
            kernel, radius = (_triangle, 1.0) if mode == "linear" else (_keys_half, 2.0)
            taps = _aa_taps(n, m, s, kernel, radius, ft)
        elif mode == "linear":
            taps = _linear_taps(n, m, s, align_corners, ft)
        else:
            taps = _cubic_taps(n, m, s, align_corners, ft)
        total = None
        for index, weight in taps:
            sample = jnp.take(out, index, axis=axis + 1, mode="clip")
            if weight is not None:
                weight = weight.reshape(_shape(out.ndim, axis + 1, m))
                sample = sample * jnp.asarray(weight, out.dtype)
            total = sample if total is None else total + sample
        out = total
    return out.astype(dtype)
