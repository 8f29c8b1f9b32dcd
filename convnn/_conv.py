"""The one private general convolution behind every public convolution function.

``conv`` validates and canonicalises the arguments in Python (trace time), crops negative
padding by slicing, and hands a :class:`~convnn._lowering.ConvSpec` with non-negative padding to
the lowering layer, which decides how the convolution is computed.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from convnn import _args
from convnn import _lowering
from convnn._lowering import ConvSpec
from convnn._lowering import _context as _lowering_context
from convnn._lowering._context import _LOCAL

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


def _crop_geometry(shape, lows, highs, input_dilation, batched_offset: int):
    """How to remove negative padding by slicing: ``(starts, stops, pads, empty)``.

    Padding applies to the input *after* dilation, so a crop of ``c`` dilated elements keeps the
    original elements from ``ceil(c / d)`` on and adds the leftover zeros back as padding.
    ``empty`` is true when no original element survives the crop.
    """
    starts, stops, pads = [], [], []
    empty = False
    for axis, (lo, hi, d) in enumerate(zip(lows, highs, input_dilation)):
        size = shape[batched_offset + axis]
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
    return tuple(starts), tuple(stops), tuple(pads), empty


class _Plan(NamedTuple):
    """Everything static about one validated call (hashable: it keys the compiled callables)."""

    dtype: Any  # compute dtype of both operands
    unbatched: bool
    crop: tuple | None  # (starts, stops) on the spatial axes, or None
    spec: ConvSpec
    strategy: str | None  # the lowering strategy; None when the output is all zeros
    zeros_shape: tuple | None  # output shape when cropping leaves no input element


def _execute(plan: _Plan, x: jax.Array, w: jax.Array) -> jax.Array:
    """The traced part of a call: casts, crops and lowers (under jit or an outer trace)."""
    x, w = x.astype(plan.dtype), w.astype(plan.dtype)
    if plan.unbatched:
        x = x[None]
    if plan.zeros_shape is not None:
        out = jnp.zeros(plan.zeros_shape, plan.spec.preferred_element_type or plan.dtype)
    else:
        if plan.crop is not None:
            starts, stops = plan.crop
            x = x[(slice(None), *(slice(a, b) for a, b in zip(starts, stops)))]
        out = _lowering.run(plan.strategy, x, w, plan.spec)
    return out[0] if plan.unbatched else out


@functools.lru_cache(maxsize=256)
def _compiled(plan: _Plan):
    """One jitted callable per plan (bounded: least recently used plans are dropped)."""
    return jax.jit(functools.partial(_execute, plan))


class _EagerCache:
    """Raw call arguments -> compiled callable, so repeated eager calls skip validation.

    A key holds the operands' abstract values (shape, dtype, weak type), every argument as passed
    (with the types of the scalar ones, so ``True`` and ``1`` differ), and the lowering in force.
    Only calls whose arguments validated get an entry. Bounded, first in first out: a hit is a
    plain dict lookup (the eager call's fast path), and an evicted configuration only costs a
    validation again (its compiled callable stays in ``_compiled``'s own LRU cache). Insertions
    take a lock.
    """

    def __init__(self, maxsize: int = 512):
        self.maxsize = maxsize
        self.entries: dict = {}
        self._lock = threading.Lock()

    def put(self, key, entry) -> None:
        with self._lock:
            self.entries[key] = entry
            while len(self.entries) > self.maxsize:
                del self.entries[next(iter(self.entries))]

    def clear(self) -> None:
        """Empties this cache, the plans' compiled callables and the fast path's (``EAGER``)."""
        with self._lock:
            self.entries.clear()
        _compiled.cache_clear()
        if EAGER is not None:
            EAGER.clear_cache()

    def __len__(self) -> int:
        return len(self.entries)


EAGER_CACHE = _EagerCache()
_ENTRIES = EAGER_CACHE.entries
try:
    _Tracer = jax.core.Tracer
except AttributeError:  # pragma: no cover - JAX versions that no longer export it there
    from jax._src.core import Tracer as _Tracer
_CONCRETE: set[type] = set()  # types of concrete (non-tracer) jax arrays seen so far


def _is_concrete(value) -> bool:
    if type(value) in _CONCRETE:
        return True
    if isinstance(value, jax.Array) and not isinstance(value, _Tracer):
        _CONCRETE.add(type(value))
        return True
    return False


def _eager_body(fn, n, stride, padding, dilation, groups, output_padding, x, w):
    """An eager call's traced body: ``conv`` on tracers (it validates at trace time)."""
    return conv(fn, x, w, n=n, stride=stride, padding=padding, kernel_dilation=dilation,
                groups=groups, output_padding=output_padding)


#: The fastest eager path, for the common calls whose arguments are plain ints (and a padding
#: string): one jitted function whose static arguments are those arguments, dispatched by JAX's
#: C++ jit path with no Python validation (``convnn.functional`` checks the argument types
#: first, so that ``True`` or ``1.0``, which hash like ``1``, never reach it). The first call of
#: a configuration traces ``conv``, which validates before anything is compiled; the compiled
#: callables live in JAX's bounded jit cache. It needs JAX's user contexts, which key jit's
#: cache on the lowering in force (``None`` without them: every call takes :func:`conv`).
EAGER = (jax.jit(_eager_body, static_argnums=(0, 1, 2, 3, 4, 5, 6))
         if _lowering_context.JIT_KEYED else None)
#: Types of ``padding`` that the fast path accepts.
EAGER_PADDING = frozenset({int, str})


def _placed(call, device):
    """``call`` with its operands first moved to ``device`` (MLX's ``stream``), if any."""
    if device is None:
        return call

    def placed(x, w):
        return call(jax.device_put(x, device), jax.device_put(w, device))

    return placed


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
    key = None
    if type(input) in _CONCRETE and type(weight) in _CONCRETE:  # eager call: try the cache
        key = (fn, n, input.aval, weight.aval, stride, padding, kernel_dilation, input_dilation,
               groups, flip, output_padding, stream, precision, preferred_element_type,
               _LOCAL.state, type(stride), type(padding), type(kernel_dilation),
               type(input_dilation), type(groups), type(flip))
        try:
            entry = _ENTRIES.get(key)
        except TypeError:  # unhashable arguments (lists): validate every time
            key = entry = None
        if entry is not None:
            return entry(input, weight)

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
    unbatched = x.ndim == n + 1
    x_shape = (1, *x.shape) if unbatched else tuple(x.shape)
    starts, stops, pads, empty = _crop_geometry(x_shape, lows, highs, input_dilation, 1)
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
    crop = zeros_shape = strategy = None
    if empty:
        zeros_shape = _zeros_shape(x_shape[0], w.shape, spec, spatial, lows, highs)
    else:
        if any(a != 0 for a in starts) or stops != x_shape[1:-1]:
            crop = (starts, stops)
        cropped = (x_shape[0], *(b - a for a, b in zip(starts, stops)), x_shape[-1])
        strategy = _lowering.resolve(cropped, w.shape, dtype, spec, device)
    plan = _Plan(dtype, unbatched, crop, spec, strategy, zeros_shape)

    if _is_concrete(x) and _is_concrete(w):  # eager: one compiled callable per plan
        try:
            call = _placed(_compiled(plan), device)
        except TypeError:  # an unhashable precision: run op by op
            call = _placed(functools.partial(_execute, plan), device)
        else:
            if key is not None:
                EAGER_CACHE.put(key, call)
        return call(x, w)
    if device is not None:
        x, w = jax.device_put(x, device), jax.device_put(w, device)
    return _execute(plan, x, w)


def _zeros_shape(batch: int, w_shape, spec: ConvSpec, spatial, lows, highs) -> tuple:
    """The output shape when cropping leaves no input element: every window sees only zeros."""
    out_spatial = []
    for s, lo, hi, d, kd, k, st in zip(
        spatial, lows, highs, spec.input_dilation, spec.kernel_dilation, w_shape[1:-1], spec.stride
    ):
        length = (s - 1) * d + 1 + lo + hi
        out_spatial.append((length - ((k - 1) * kd + 1)) // st + 1)
    return (batch, *out_spatial, w_shape[0])
