"""The one private general convolution behind every public convolution function.

``conv`` validates and canonicalises the arguments in Python (trace time), crops negative
padding by slicing, and hands a :class:`~convnn.lowering.ConvSpec` with non-negative padding to
the lowering layer, which decides how the convolution is computed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convnn import _args
from convnn.lowering import ConvSpec, dispatch

__all__ = ["conv", "resolve_stream"]

_SPATIAL = {1: "(W)", 2: "(H, W)", 3: "(D, H, W)"}


def _shapes(x_shape, w_shape) -> str:
    return f"got input shape {tuple(x_shape)} and weight shape {tuple(w_shape)}"


def resolve_stream(stream: Any, fn: str) -> jax.Device | None:
    """Maps MLX's ``stream`` argument to a JAX device (``None`` keeps JAX's placement).

    Accepts ``None``, a ``jax.Device``, or a platform name such as ``"cpu"`` or ``"gpu"``.
    """
    if stream is None or isinstance(stream, jax.Device):
        return stream
    if isinstance(stream, str):
        try:
            devices = jax.devices(stream)
        except (RuntimeError, ValueError) as err:
            available = sorted({d.platform for d in jax.devices()})
            raise ValueError(
                f"[{fn}] stream={stream!r} names no available platform; available: {available}."
            ) from err
        return devices[0]
    raise TypeError(
        f"[{fn}] stream must be None, a jax.Device or a platform name such as 'cpu', "
        f"got {stream!r} of type {type(stream).__name__}."
    )


def _as_float_array(value: Any, name: str, fn: str) -> jax.Array:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(value).dtype
        except Exception as err:  # pragma: no cover - exotic objects
            raise TypeError(f"[{fn}] {name} must be an array, got {type(value).__name__}.") from err
    if np.dtype(dtype).kind == "O":
        raise TypeError(f"[{fn}] {name} must be a numeric array, got dtype object.")
    _args.check_float_dtype(dtype, name, fn)
    return value if isinstance(value, jax.Array) else jnp.asarray(value)


def _check_operands(fn: str, x: jax.Array, w: jax.Array, n: int | None, groups: int) -> int:
    """Checks ranks, channels and groups; returns the number of spatial axes."""
    if n is None:
        if w.ndim not in (3, 4, 5):
            raise ValueError(
                f"[{fn}] weight must have shape (C_out, *kernel, C_in // groups) with 1 to 3 "
                f"spatial axes; {_shapes(x.shape, w.shape)}."
            )
        n = w.ndim - 2
    if w.ndim != n + 2:
        raise ValueError(
            f"[{fn}] weight must have {n + 2} dimensions (C_out, *kernel{_SPATIAL[n]}, "
            f"C_in // groups); {_shapes(x.shape, w.shape)}."
        )
    if x.ndim not in (n + 1, n + 2):
        raise ValueError(
            f"[{fn}] input must have shape (N, *spatial{_SPATIAL[n]}, C_in) or unbatched "
            f"(*spatial, C_in) with {n} spatial axes; {_shapes(x.shape, w.shape)}."
        )
    c_in, c_out, c_in_g = x.shape[-1], w.shape[0], w.shape[-1]
    kernel = w.shape[1:-1]
    if c_in == 0 or c_out == 0 or c_in_g == 0:
        raise ValueError(f"[{fn}] channel counts must be positive; {_shapes(x.shape, w.shape)}.")
    if any(k == 0 for k in kernel):
        raise ValueError(f"[{fn}] the kernel has a zero-size axis; {_shapes(x.shape, w.shape)}.")
    if c_in % groups:
        raise ValueError(
            f"[{fn}] groups={groups} must divide the input channels {c_in}; "
            f"{_shapes(x.shape, w.shape)}."
        )
    if c_out % groups:
        raise ValueError(
            f"[{fn}] groups={groups} must divide the output channels {c_out}; "
            f"{_shapes(x.shape, w.shape)}."
        )
    if c_in_g * groups != c_in:
        hint = ""
        if w.shape[1] * groups == c_in:
            hint = (
                " The weight looks like PyTorch's (C_out, C_in // groups, *kernel) layout; convnn "
                "(like MLX) expects (C_out, *kernel, C_in // groups): use "
                "jnp.moveaxis(weight, 1, -1)."
            )
        raise ValueError(
            f"[{fn}] the input has {c_in} channels but the weight expects C_in // groups * groups "
            f"= {c_in_g} * {groups} = {c_in_g * groups}; {_shapes(x.shape, w.shape)}.{hint}"
        )
    return n


def _same_padding(size: int, k_dil: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k_dil - size, 0)
    return total // 2, total - total // 2


def _crop(x: jax.Array, lows, highs, input_dilation, batched_offset: int):
    """Removes negative padding by slicing; returns the input and non-negative padding.

    Padding applies to the input *after* dilation, so a crop of ``c`` dilated elements keeps the
    original elements from ``ceil(c / d)`` on and adds the leftover zeros back as padding.
    Returns ``None`` for the input when no original element survives the crop.
    """
    starts, stops, pads = [], [], []
    empty = False
    for axis, (lo, hi, d) in enumerate(zip(lows, highs, input_dilation)):
        size = x.shape[batched_offset + axis]
        dilated = (size - 1) * d + 1
        c_lo, c_hi = max(-lo, 0), max(-hi, 0)
        first = -(-c_lo // d)
        end = dilated - 1 - c_hi  # last kept position in the dilated input
        last = end // d if end >= 0 else -1
        if last < first:
            empty = True
        new_lo = first * d - c_lo + max(lo, 0)
        new_hi = end - last * d + max(hi, 0)
        starts.append(first)
        stops.append(last + 1)
        pads.append((new_lo, new_hi))
    if empty:
        return None, tuple(pads)
    if any(s != 0 for s in starts) or any(
        e != x.shape[batched_offset + a] for a, e in enumerate(stops)
    ):
        index = (slice(None),) * batched_offset + tuple(slice(s, e) for s, e in zip(starts, stops))
        x = x[index]
    return x, tuple(pads)


def conv(
    fn: str,
    input: Any,
    weight: Any,
    *,
    n: int | None,
    stride: Any = 1,
    padding: Any = 0,
    kernel_dilation: Any = 1,
    input_dilation: Any = 1,
    groups: Any = 1,
    flip: bool = False,
    output_padding: Any = None,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Validates, canonicalises and lowers one convolution.

    ``output_padding`` not ``None`` marks a transposed convolution: then ``padding``,
    ``stride`` and ``kernel_dilation`` are those of the forward convolution being transposed.
    """
    transposed = output_padding is not None
    groups = _args.as_int(groups, "groups", fn, minimum=1)
    if not isinstance(flip, (bool, np.bool_)):
        raise TypeError(f"[{fn}] flip must be a bool, got {flip!r}.")
    x = _as_float_array(input, "input", fn)
    w = _as_float_array(weight, "weight", fn)
    n = _check_operands(fn, x, w, n, groups)
    stride = _args.normalize_tuple(stride, n, "stride", fn, minimum=1)
    dil_name = "dilation" if fn != "conv_general" else "kernel_dilation"
    kernel_dilation = _args.normalize_tuple(kernel_dilation, n, dil_name, fn, minimum=1)
    input_dilation = _args.normalize_tuple(input_dilation, n, "input_dilation", fn, minimum=1)
    kernel = tuple(w.shape[1:-1])
    k_dil = tuple((k - 1) * d + 1 for k, d in zip(kernel, kernel_dilation))
    spatial = tuple(x.shape[-n - 1 : -1])
    device = resolve_stream(stream, fn)

    if transposed:
        pad = _args.canonicalize_padding(padding, n, fn, allow_strings=False)
        lows, highs = pad
        if any(p < 0 for p in lows + highs):
            raise ValueError(
                f"[{fn}] padding must be non-negative for transposed convolutions, got {padding!r}."
            )
        out_pad = _args.normalize_tuple(output_padding, n, "output_padding", fn, minimum=0)
        for op, s, d in zip(out_pad, stride, kernel_dilation):
            if op >= max(s, d):
                raise ValueError(
                    f"[{fn}] output_padding must be smaller than stride or dilation on every axis, "
                    f"got output_padding={out_pad}, stride={stride}, dilation={kernel_dilation}."
                )
        out_size = tuple(
            (s_in - 1) * s - lo - hi + kd + op
            for s_in, s, lo, hi, kd, op in zip(spatial, stride, lows, highs, k_dil, out_pad)
        )
        if any(o < 1 for o in out_size):
            raise ValueError(
                f"[{fn}] the output would have spatial size {out_size} (below 1): "
                f"(size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1 "
                f"with stride={stride}, padding={padding!r}; {_shapes(x.shape, w.shape)}."
            )
        lows = tuple(kd - 1 - lo for kd, lo in zip(k_dil, lows))
        highs = tuple(kd - 1 - hi + op for kd, hi, op in zip(k_dil, highs, out_pad))
        input_dilation, stride, flip = stride, (1,) * n, True
    else:
        pad = _args.canonicalize_padding(padding, n, fn)
        dilated = tuple((s - 1) * d + 1 for s, d in zip(spatial, input_dilation))
        if pad == "valid":
            lows = highs = (0,) * n
        elif pad == "same":
            pairs = [_same_padding(s, k, st) for s, k, st in zip(dilated, k_dil, stride)]
            lows, highs = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
        else:
            lows, highs = pad
        padded = tuple(s + lo + hi for s, lo, hi in zip(dilated, lows, highs))
        if any(p < k for p, k in zip(padded, k_dil)) or any(s == 0 for s in spatial):
            raise ValueError(
                f"[{fn}] the (dilated) kernel of size {k_dil} is larger than the padded input of "
                f"size {padded} (padding lows={lows}, highs={highs}), so the output would be "
                f"empty; {_shapes(x.shape, w.shape)}."
            )

    dtype = _args.promote_float(x.dtype, w.dtype)
    if preferred_element_type is not None:
        _args.check_float_dtype(preferred_element_type, "preferred_element_type", fn)
        preferred_element_type = jnp.dtype(preferred_element_type)
    x, w = x.astype(dtype), w.astype(dtype)
    if device is not None:
        x, w = jax.device_put(x, device), jax.device_put(w, device)

    unbatched = x.ndim == n + 1
    if unbatched:
        x = x[None]
    batch = x.shape[0]
    x, pads = _crop(x, lows, highs, input_dilation, 1)
    spec = ConvSpec(
        stride=stride,
        padding=pads,
        kernel_dilation=kernel_dilation,
        input_dilation=input_dilation,
        groups=groups,
        flip=bool(flip),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if x is None:
        out = _zeros_output(batch, w, spec, spatial, lows, highs)
    else:
        out = dispatch(x, w, spec)
    return out[0] if unbatched else out


def _zeros_output(batch: int, w, spec: ConvSpec, spatial, lows, highs) -> jax.Array:
    """The output when cropping leaves no input element: every window sees only zeros."""
    out_spatial = []
    for s, lo, hi, d, kd, k, st in zip(
        spatial, lows, highs, spec.input_dilation, spec.kernel_dilation, w.shape[1:-1], spec.stride
    ):
        length = (s - 1) * d + 1 + lo + hi
        out_spatial.append((length - ((k - 1) * kd + 1)) // st + 1)
    dtype = spec.preferred_element_type or w.dtype
    return jnp.zeros((batch, *out_spatial, w.shape[0]), dtype)
