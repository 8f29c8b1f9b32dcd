"""The private pooling implementation behind ``convnn.functional.max_pool*d`` / ``avg_pool*d``.

Inputs are channels-last, ``(N, *spatial, C)`` or unbatched ``(*spatial, C)``. Defaults follow
MLX (stride = kernel size; max pools pad with ``-inf``; average pools count padded zeros), and
``ceil_mode`` / ``count_include_pad`` / ``dilation`` have PyTorch's meaning:

* output size per axis ``floor_or_ceil((S + 2p - d*(k-1) - 1) / s) + 1``; with ``ceil_mode`` the
  last window is dropped when it would start at or after ``S + p`` (inside the right padding),
  so every window starts inside the input or the left padding (PyTorch's rule);
* padding may exceed half the kernel, as MLX allows (windows in the padding only give ``-inf``
  for max pooling and 0 for average pooling), except with ``count_include_pad=False``;
* integer inputs to average pooling are averaged in float32 (MLX's result dtype);
* the average divides by the number of window positions inside the padded input ``[-p, S + p)``
  (``count_include_pad=True``) or inside the input ``[0, S)`` (``False``); positions that only
  ``ceil_mode`` adds beyond ``S + p`` are never counted (PyTorch's rule).

Both reduce with one ``lax.reduce_window``; the divisor of the average is a trace-time NumPy
constant (it depends only on shapes), so it costs one division. Max pooling with a dilated
window takes the maximum over the window's taps instead, since JAX cannot differentiate
``reduce_window``'s maximum with window dilation.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from convnn import _args

__all__ = ["max_pool", "avg_pool", "pool_args", "check_exclude_pad"]

_SPATIAL = {1: "(W)", 2: "(H, W)", 3: "(D, H, W)"}


def _as_array(x: Any, fn: str, *, allow_int: bool) -> jax.Array:
    x = _args.as_array(x, "input", fn)
    dtype = x.dtype
    if not (allow_int and jnp.issubdtype(dtype, jnp.integer)):
        if allow_int and not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"[{fn}] input must have a floating or integer dtype, got {np.dtype(dtype).name}."
            )
        _args.check_float_dtype(dtype, "input", fn)
    return x


def pool_args(
    fn: str,
    n: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: Any,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], bool]:
    """Validates the shape-independent arguments; returns ``(kernel, stride, padding, dilation,
    ceil_mode)`` as tuples of ``n`` ints and a bool. Also used by the pooling modules."""
    kernel = _args.normalize_tuple(kernel_size, n, "kernel_size", fn, minimum=1)
    stride = kernel if stride is None else _args.normalize_tuple(stride, n, "stride", fn, minimum=1)
    if isinstance(padding, str):
        raise TypeError(
            f"[{fn}] padding must be an int or a sequence of {n} ints, got {padding!r}."
        )
    padding = _args.normalize_tuple(padding, n, "padding", fn, minimum=0)
    dilation = _args.normalize_tuple(dilation, n, "dilation", fn, minimum=1)
    ceil_mode = _args.check_bool(ceil_mode, "ceil_mode", fn)
    return kernel, stride, padding, dilation, ceil_mode


def check_exclude_pad(fn: str, padding: tuple[int, ...], kernel: tuple[int, ...]) -> None:
    """With ``count_include_pad=False`` a window lying in the padding only would average nothing:
    the padding must be at most half the kernel (PyTorch's rule). MLX, which always counts the
    padding, allows any padding, and so do the other modes here."""
    if any(p > k // 2 for p, k in zip(padding, kernel, strict=True)):
        raise ValueError(
            f"[{fn}] with count_include_pad=False, padding must be at most half the kernel size "
            f"on every axis (padding <= kernel_size // 2: a window must not lie in the padding "
            f"only), got padding={padding} and kernel_size={kernel}."
        )


def _geometry(fn, x, n, kernel, stride, padding, dilation, ceil_mode):
    """Checks the input's rank and sizes; returns the per-axis output sizes and high paddings."""
    if x.ndim not in (n + 1, n + 2):
        raise ValueError(
            f"[{fn}] input must have shape (N, *spatial{_SPATIAL[n]}, C) or unbatched "
            f"(*spatial, C) with {n} spatial axes; got input shape {tuple(x.shape)}."
        )
    spatial = tuple(x.shape[-n - 1 : -1])
    outs, highs = [], []
    for size, k, s, p, d in zip(spatial, kernel, stride, padding, dilation, strict=True):
        eff = d * (k - 1) + 1
        span = size + 2 * p - eff
        if size == 0 or span < 0:
            raise ValueError(
                f"[{fn}] the (dilated) window of size {eff} is larger than the padded input of "
                f"size {size + 2 * p} (kernel_size={kernel}, dilation={dilation}, "
                f"padding={padding}); got input shape {tuple(x.shape)}."
            )
        if ceil_mode:
            out = -(-span // s) + 1
            if (out - 1) * s >= size + p:  # the last window would start in the right padding
                out -= 1
        else:
            out = span // s + 1
        outs.append(out)
        # The high padding that makes reduce_window give exactly `out` windows: the last one
        # ends there. Padding more (p, when ceil_mode dropped a window that would start in the
        # right padding) would add windows.
        highs.append(max(0, (out - 1) * s + eff - size - p))
    lead, channels = tuple(x.shape[: -n - 1]), x.shape[-1]
    context = (f"check kernel_size, stride, padding and dilation; got input shape "
               f"{tuple(x.shape)}")
    _args.check_size((*lead, *outs, channels), "output", fn, context)
    padded = (size + p + h for size, p, h in zip(spatial, padding, highs, strict=True))
    _args.check_size((*lead, *padded, channels), "padded input", fn, context)
    return spatial, tuple(outs), tuple(highs)


def _window(x, n, values):
    """Per-dimension window parameters for a (batched or unbatched) channels-last input."""
    lead = x.ndim - n - 1
    return (1,) * lead + tuple(values) + (1,)


def max_pool(
    fn: str, n: int, x: Any, kernel_size: Any, stride: Any, padding: Any, *, ceil_mode: Any,
    dilation: Any,
) -> jax.Array:
    """Max pooling; padded positions hold the dtype's lowest value (``-inf`` for floats)."""
    kernel, stride, padding, dilation, ceil_mode = pool_args(
        fn, n, kernel_size, stride, padding, dilation, ceil_mode
    )
    x = _as_array(x, fn, allow_int=True)
    _, outs, highs = _geometry(fn, x, n, kernel, stride, padding, dilation, ceil_mode)
    if jnp.issubdtype(x.dtype, jnp.floating):
        init = np.array(-np.inf, x.dtype)
    else:
        init = np.array(np.iinfo(x.dtype).min, x.dtype)
    lead = x.ndim - n - 1
    pads = ((0, 0),) * lead + tuple(zip(padding, highs, strict=True)) + ((0, 0),)
    if any(d > 1 for d in dilation):
        return _dilated_max(x, n, kernel, stride, dilation, pads, outs, init)
    return lax.reduce_window(
        x, init, lax.max, _window(x, n, kernel), _window(x, n, stride), pads,
    )


def _dilated_max(x, n, kernel, stride, dilation, pads, outs, init):
    """Max pooling with a dilated window, as the maximum over the window's taps (one strided
    slice of the padded input each). JAX has no gradient for ``reduce_window``'s maximum with
    window dilation; here the cotangent goes to the first maximal tap in window order, the
    element that ``reduce_window``'s gradient (undilated) and PyTorch choose."""
    xp = lax.pad(x, init, [(lo, hi, 0) for lo, hi in pads])
    lead = x.ndim - n - 1
    taps = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        starts = [j * d for j, d in zip(offsets, dilation, strict=True)]
        limits = [a + (o - 1) * s + 1 for a, o, s in zip(starts, outs, stride, strict=True)]
        taps.append(lax.slice(xp, (0,) * lead + (*starts, 0),
                              (*xp.shape[:lead], *limits, xp.shape[-1]),
                              (1,) * lead + (*stride, 1)))
    taps = jnp.stack(taps)
    first = jnp.argmax(taps, axis=0)  # the first maximum; NaN counts as the maximum, as in max
    return jnp.take_along_axis(taps, first[None], axis=0)[0]


def _counts(size, k, s, p, out, include_pad):
    starts = np.arange(out) * s - p
    if include_pad:
        return np.minimum(starts + k, size + p) - starts
    return np.minimum(starts + k, size) - np.maximum(starts, 0)


def avg_pool(
    fn: str, n: int, x: Any, kernel_size: Any, stride: Any, padding: Any, *, ceil_mode: Any,
    count_include_pad: Any,
) -> jax.Array:
    """Average pooling; the divisor follows PyTorch's ``count_include_pad`` rule. Integer inputs
    are averaged in float32 and give float32, as in MLX."""
    kernel, stride, padding, _, ceil_mode = pool_args(
        fn, n, kernel_size, stride, padding, 1, ceil_mode
    )
    include_pad = _args.check_bool(count_include_pad, "count_include_pad", fn)
    if not include_pad:
        check_exclude_pad(fn, padding, kernel)
    x = _as_array(x, fn, allow_int=True)
    if jnp.issubdtype(x.dtype, jnp.integer):  # MLX averages integers in float32
        x = x.astype(jnp.float32)
    spatial, outs, highs = _geometry(fn, x, n, kernel, stride, padding, (1,) * n, ceil_mode)
    dtype = x.dtype
    acc = jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype  # sum 16-bit floats in float32
    lead = x.ndim - n - 1
    pads = ((0, 0),) * lead + tuple(zip(padding, highs, strict=True)) + ((0, 0),)
    total = lax.reduce_window(
        x.astype(acc), np.array(0, acc), lax.add, _window(x, n, kernel), _window(x, n, stride),
        pads,
    )
    count = np.ones((), np.float64)
    axes = zip(spatial, kernel, stride, padding, outs, strict=True)
    for axis, (size, k, s, p, out) in enumerate(axes):
        shape = [1] * n
        shape[axis] = out
        count = count * _counts(size, k, s, p, out, include_pad).reshape(shape)
    count = count.reshape((1,) * lead + count.shape + (1,))  # full rank: no rank promotion
    return (total / jnp.asarray(count, acc)).astype(dtype)
