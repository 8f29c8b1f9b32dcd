"""The convolution plan: every check and every derived size of one call, in one pure function.

:func:`plan` maps a call (the public function's name, the operands' shapes and dtypes, every
argument) to a :class:`ConvPlan`. It is the only place that validates a convolution's arguments
and the only place that reads ``padding``: it parses it (:func:`convnn._args.canonicalize_padding`,
with :func:`jax.lax.padtype_to_pads` for ``"same"`` / ``"valid"``), turns a transposed
convolution into the equivalent input-dilated one, and splits the result into a crop (negative
padding) and the non-negative padding of the :class:`~convnn._lowering.ConvSpec` that the
strategies receive. Nothing downstream re-checks or re-derives what the plan holds.

Whether a call is transposed comes from the function called (``conv_transpose*``), never from
the value of an argument.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from convnn import _args, _lowering
from convnn._lowering import ConvSpec, Prologue, output_size
from convnn._lowering._prologue import ACTIVATIONS

__all__ = ["ConvPlan", "as_prologue", "plan", "prologue_key", "resolve_stream", "clear_cache"]


_SPATIAL = {1: "(W)", 2: "(H, W)", 3: "(D, H, W)"}
_RANKS = {"conv1d": 1, "conv2d": 2, "conv3d": 3, "conv_transpose1d": 1, "conv_transpose2d": 2,
          "conv_transpose3d": 3, "conv_general": None}
_PRECISION_NAMES = {p.name.lower(): p for p in lax.Precision}


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """One validated convolution call (frozen and hashable: it keys the compiled callables).

    Invariants (established by :func:`plan`, relied on by everything after it):

    * ``n`` is 1, 2 or 3; the input is ``(N, *spatial, C_in)`` (or unbatched, ``unbatched``) and
      the weight ``(C_out, *kernel, C_in // groups)``, with every size positive and ``groups``
      dividing both channel counts.
    * ``lows`` / ``highs`` are the padding of the equivalent forward convolution (for a transposed
      call: the input-dilated, flipped convolution it equals), per spatial axis, applied to the
      input after input dilation; they may be negative (a crop).
    * ``crop`` is ``None`` or ``(starts, stops)`` on the spatial axes of the batched input;
      after it, ``spec.padding`` (all non-negative) completes ``lows`` / ``highs``.
    * ``out_shape`` is the exact output shape (unbatched when the input is), every axis
      positive, at most ``convnn._args.MAX_ELEMENTS`` elements; the dilated, padded input also
      fits.
    * ``dtype`` is the floating compute dtype of both operands (MLX's promotion);
      ``out_dtype`` is ``spec.preferred_element_type`` when given (never narrower than
      ``dtype``), else ``dtype``. ``spec.precision`` is ``None``, a ``lax.Precision`` or a pair.
    * ``prologue`` is whether the call has a :class:`~convnn.Prologue`, whose ``scale`` and
      ``shift`` are then ``(C_in,)`` with real floating dtypes and whose activation
      (``prologue_activation``) is ``None`` or a name of ``ACTIVATIONS``.
    * ``strategy`` is a key of ``_lowering.STRATEGIES`` chosen for the operands the strategy
      sees (``lowered_x_shape``: batched and cropped), or ``None`` when ``zeros``: no input
      element reaches a window and the output is all zeros. It is resolved again on every
      :func:`plan` call (the policy may read state outside the arguments); the rest is cached.
    """

    fn: str  # the function called
    name: str  # the name errors carry (the function, or the layer)
    n: int
    transposed: bool
    unbatched: bool
    dtype: Any
    out_dtype: Any
    lows: tuple[int, ...]
    highs: tuple[int, ...]
    crop: tuple[tuple[int, ...], tuple[int, ...]] | None
    out_shape: tuple[int, ...]
    spec: ConvSpec
    strategy: str | None
    device: Any
    zeros: bool
    lowered_x_shape: tuple[int, ...] = ()
    w_shape: tuple[int, ...] = ()
    prologue: bool = False
    prologue_activation: str | None = None


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


def check_precision(precision: Any, fn: str) -> Any:
    """``None``, a ``lax.Precision``, or a pair of them; names are accepted case-insensitively."""

    def one(p):
        if isinstance(p, lax.Precision):
            return p
        if isinstance(p, str) and p.lower() in _PRECISION_NAMES:
            return _PRECISION_NAMES[p.lower()]
        raise ValueError(
            f"[{fn}] precision must be None, a jax.lax.Precision, one of "
            f"{sorted(_PRECISION_NAMES)} or a pair of them, got {precision!r}."
        )

    if precision is None:
        return None
    if isinstance(precision, (tuple, list)) and len(precision) == 2:
        return one(precision[0]), one(precision[1])
    return one(precision)


def check_preferred_element_type(pet: Any, dtype: np.dtype, fn: str) -> np.dtype | None:
    """``None``, or a floating dtype at least as wide as the compute dtype ``dtype``.

    One rule for every convolution, dense or grouped, whatever the strategy: accumulating in a
    narrower type than the operands' is refused: ``pet`` must be ``dtype`` or wider in bytes
    (float16 with bfloat16, neither of which holds the other, is refused both ways).
    """
    if pet is None:
        return None
    try:
        pet_dtype = jnp.dtype(pet)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"[{fn}] preferred_element_type must be None or have a floating dtype, got {pet!r}."
        ) from err
    if not jnp.issubdtype(pet_dtype, jnp.floating):
        raise TypeError(
            f"[{fn}] preferred_element_type must have a floating dtype, got {pet_dtype.name}."
        )
    dtype = jnp.dtype(dtype)
    if pet_dtype != dtype and pet_dtype.itemsize <= dtype.itemsize:
        raise ValueError(
            f"[{fn}] preferred_element_type={pet_dtype.name} is narrower than the operands' "
            f"compute dtype {jnp.dtype(dtype).name}; pass None or a type that holds it."
        )
    return pet_dtype


def _check_operands(fn, x_shape, w_shape, n, groups) -> int:
    """Checks ranks, sizes, channels and groups; returns the number of spatial axes."""
    shapes = _shapes(x_shape, w_shape)
    if n is None:
        if len(w_shape) not in (3, 4, 5):
            raise ValueError(
                f"[{fn}] weight must have shape (C_out, *kernel, C_in // groups) with 1 to 3 "
                f"spatial axes; {shapes}."
            )
        n = len(w_shape) - 2
    if len(w_shape) != n + 2:
        raise ValueError(
            f"[{fn}] weight must have {n + 2} dimensions (C_out, *kernel{_SPATIAL[n]}, "
            f"C_in // groups); {shapes}."
        )
    if len(x_shape) not in (n + 1, n + 2):
        raise ValueError(
            f"[{fn}] input must have shape (N, *spatial{_SPATIAL[n]}, C_in) or unbatched "
            f"(*spatial, C_in) with {n} spatial axes; {shapes}."
        )
    c_in, c_out, c_in_g = x_shape[-1], w_shape[0], w_shape[-1]
    if c_in == 0 or c_out == 0 or c_in_g == 0:
        raise ValueError(f"[{fn}] channel counts must be positive; {shapes}.")
    if any(k == 0 for k in w_shape[1:-1]):
        raise ValueError(f"[{fn}] the kernel has a zero-size axis; {shapes}.")
    if c_in % groups:
        raise ValueError(
            f"[{fn}] groups={groups} must divide the input channels {c_in}; {shapes}."
        )
    if c_out % groups:
        raise ValueError(
            f"[{fn}] groups={groups} must divide the output channels {c_out}; {shapes}."
        )
    if c_in_g * groups != c_in:
        raise ValueError(
            f"[{fn}] the input has {c_in} channels but the weight expects C_in // groups * groups "
            f"= {c_in_g} * {groups} = {c_in_g * groups}; {shapes}."
            f"{_layout_hint(x_shape, w_shape, n, groups)}"
        )
    return n


def _layout_hint(x_shape, w_shape, n, groups) -> str:
    """Names the usual porting mistake behind a channel mismatch, if the shapes show one."""
    c_in_g = w_shape[-1]
    channel_axis = len(x_shape) - n - 1  # where a channels-first input keeps its channels
    if x_shape[channel_axis] == c_in_g * groups:
        return (" The input looks channels-first (N, C_in, *spatial), PyTorch's layout; convnn "
                f"(like MLX) expects channels-last: use jnp.moveaxis(input, {channel_axis}, -1).")
    if w_shape[1] * groups == x_shape[-1]:
        return (" The weight looks like PyTorch's (C_out, C_in // groups, *kernel) layout; "
                "convnn (like MLX) expects (C_out, *kernel, C_in // groups): use "
                "jnp.moveaxis(weight, 1, -1).")
    if w_shape[-2] * groups == x_shape[-1]:
        return (" The weight looks like Flax's / TensorFlow's (*kernel, C_in // groups, C_out) "
                "(HWIO) layout; convnn (like MLX) expects (C_out, *kernel, C_in // groups): "
                "use jnp.moveaxis(weight, -1, 0).")
    return ""


def _crop_geometry(spatial, lows, highs, input_dilation):
    """How to remove negative padding by slicing: ``(starts, stops, pads, empty)``.

    Padding applies to the input *after* dilation, so a crop of ``c`` dilated elements keeps the
    original elements from ``ceil(c / d)`` on and adds the leftover zeros back as padding.
    ``empty`` is true when no original element survives the crop.
    """
    starts, stops, pads = [], [], []
    empty = False
    for size, lo, hi, d in zip(spatial, lows, highs, input_dilation):
        dilated = (size - 1) * d + 1
        c_lo, c_hi = max(-lo, 0), max(-hi, 0)
        first = -(-c_lo // d)
        end = dilated - 1 - c_hi  # last kept position in the dilated input
        last = end // d if end >= 0 else -1
        if last < first:
            empty = True
        starts.append(first)
        stops.append(last + 1)
        pads.append((first * d - c_lo + max(lo, 0), end - last * d + max(hi, 0)))
    return tuple(starts), tuple(stops), tuple(pads), empty


class _Ints:
    """Tag of a tuple of exact ints (the common case, tagged once rather than per element)."""


class _IntList:
    """Tag of a list of exact ints."""


def _strict(value: Any) -> Any:
    """A hashable key for an argument that no differently validated argument shares.

    ``1``, ``1.0``, ``True`` and ``np.int64(1)`` hash and compare equal in Python; here they do
    not (every non-``int`` value is tagged with its type, recursively in sequences).
    """
    tv = type(value)
    if tv is int or tv is str or value is None:
        return value
    if tv is tuple or tv is list:
        for e in value:
            if type(e) is not int:
                return (tv, *map(_strict, value))
        return (_Ints, value) if tv is tuple else (_IntList, tuple(value))
    if isinstance(value, np.ndarray):
        return (np.ndarray, value.dtype.str, value.shape, *map(_strict, value.ravel().tolist()))
    hash(value)  # an unhashable argument raises TypeError here, not inside a cache
    return (tv, value)


def _unstrict(value: Any) -> Any:
    """The argument that :func:`_strict` tagged (an equal value of the same type)."""
    if type(value) is not tuple:
        return value
    tag = value[0]
    if tag is _Ints:
        return value[1]
    if tag is _IntList:
        return list(value[1])
    if tag is tuple or tag is list:
        return tag(map(_unstrict, value[1:]))
    if tag is np.ndarray:
        return np.asarray(list(map(_unstrict, value[3:])), dtype=value[1]).reshape(value[2])
    return value[1]


def as_prologue(prologue: Any, fn: str) -> Prologue | None:
    """A call's ``prologue`` with its scale and shift as arrays (``None`` for none); anything
    but a :class:`convnn.Prologue` is refused by name."""
    if prologue is None:
        return None
    if not isinstance(prologue, Prologue):
        raise TypeError(
            f"[{fn}] prologue must be None or a convnn.Prologue (for example a BatchNorm's "
            f"BatchNorm.prologue(x)), got {type(prologue).__name__}."
        )
    return Prologue(_args.as_array(prologue.scale, "prologue.scale", fn),
                    _args.as_array(prologue.shift, "prologue.shift", fn), prologue.activation)


def prologue_key(prologue: Prologue | None) -> tuple | None:
    """What the plan checks of a prologue (:func:`as_prologue`'s): ``(activation, scale
    shape, scale dtype, shift shape, shift dtype)``, or ``None`` for no prologue."""
    if prologue is None:
        return None
    return (prologue.activation, tuple(prologue.scale.shape), jnp.dtype(prologue.scale.dtype),
            tuple(prologue.shift.shape), jnp.dtype(prologue.shift.dtype))


def _check_prologue(key: tuple, x_shape, err: str) -> str | None:
    activation, scale_shape, scale_dtype, shift_shape, shift_dtype = key
    if activation is not None and (not isinstance(activation, str)
                                   or activation not in ACTIVATIONS):
        raise ValueError(
            f"[{err}] prologue.activation must be None or one of {tuple(ACTIVATIONS)}, got "
            f"{activation!r}."
        )
    c = x_shape[-1]
    for what, shape, dtype in (("scale", scale_shape, scale_dtype),
                               ("shift", shift_shape, shift_dtype)):
        _args.check_float_dtype(dtype, f"prologue.{what}", err)
        if shape != (c,):
            raise ValueError(
                f"[{err}] prologue.{what} must have shape (C_in,) = ({c},), one value per input "
                f"channel; got prologue.{what} shape {shape} and input shape {tuple(x_shape)}."
            )
    return activation


def plan(fn: str, x_shape, x_dtype, w_shape, w_dtype, **kwargs) -> ConvPlan:
    """Validates one convolution call and derives everything static about it.

    Args:
      fn: the public function's name (``"conv2d"``, ``"conv_transpose3d"``, ``"conv_general"``,
        ...): it fixes the number of spatial axes and whether the call is transposed.
      x_shape, x_dtype: the input's shape and dtype.
      w_shape, w_dtype: the weight's shape and dtype.
      **kwargs: the call's arguments as the public function takes them: ``stride``,
        ``padding``, ``dilation`` (``kernel_dilation`` for ``conv_general``),
        ``input_dilation``, ``groups``, ``flip``, ``output_padding``, ``stream``,
        ``precision``, ``preferred_element_type``; ``prologue``, the call's
        :func:`prologue_key`; and ``name``, the name errors carry (a layer passes its class
        name; default ``fn``).

    Returns:
      A :class:`ConvPlan`. The result is cached (keyed so that ``1``, ``1.0`` and ``True``
      differ); the lowering in force is part of the key.

    Raises:
      ValueError, TypeError: naming the function (or layer), the argument and the shapes.
    """
    try:
        key = (fn, tuple(x_shape), x_dtype, tuple(w_shape), w_dtype, _lowering.current(),
               *sorted((k, _strict(v)) for k, v in kwargs.items()))
        entry = _PLANS.get(key)
    except TypeError:  # an unhashable argument (a list, a tracer): plan without the cache
        return _plan(fn, tuple(x_shape), x_dtype, tuple(w_shape), w_dtype, **kwargs)
    if entry is None:
        entry = _plan(fn, tuple(x_shape), x_dtype, tuple(w_shape), w_dtype, **kwargs)
        with _LOCK:
            _PLANS[key] = entry
            while len(_PLANS) > MAX_PLANS:
                del _PLANS[next(iter(_PLANS))]
    elif not entry.zeros:
        strategy = _lowering.resolve(entry.lowered_x_shape, entry.w_shape, entry.dtype,
                                     entry.spec, entry.device)
        if strategy != entry.strategy:
            entry = dataclasses.replace(entry, strategy=strategy)
    return entry


#: How many plans the cache keeps (first in, first out; an evicted plan is only planned again).
MAX_PLANS = 1024
_PLANS: dict = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forgets every cached plan."""
    with _LOCK:
        _PLANS.clear()


def _plan(
    fn: str,
    x_shape: tuple[int, ...],
    x_dtype: Any,
    w_shape: tuple[int, ...],
    w_dtype: Any,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    kernel_dilation: Any = None,
    input_dilation: Any = 1,
    groups: Any = 1,
    flip: Any = False,
    output_padding: Any = 0,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    prologue: tuple | None = None,
    name: str | None = None,
) -> ConvPlan:
    if fn not in _RANKS:
        raise ValueError(f"unknown convolution {fn!r}; one of {sorted(_RANKS)}.")
    err = name or fn
    transposed = fn.startswith("conv_transpose")
    dil_name = "kernel_dilation" if fn == "conv_general" else "dilation"
    if kernel_dilation is not None:
        dilation = kernel_dilation
    groups = _args.as_int(groups, "groups", err, minimum=1)
    if not isinstance(flip, (bool, np.bool_)):
        raise TypeError(f"[{err}] flip must be a bool, got {flip!r}.")
    for dtype, what in ((x_dtype, "input"), (w_dtype, "weight")):
        if np.dtype(dtype).kind == "O":
            raise TypeError(f"[{err}] {what} must be a numeric array, got dtype object.")
        _args.check_float_dtype(dtype, what, err)
    n = _check_operands(err, x_shape, w_shape, _RANKS[fn], groups)
    activation = None if prologue is None else _check_prologue(prologue, x_shape, err)
    stride = _args.normalize_tuple(stride, n, "stride", err, minimum=1)
    dilation = _args.normalize_tuple(dilation, n, dil_name, err, minimum=1)
    input_dilation = _args.normalize_tuple(input_dilation, n, "input_dilation", err, minimum=1)
    device = resolve_stream(stream, err)
    dtype = _args.promote_float(x_dtype, w_dtype)
    precision = check_precision(precision, err)
    pet = check_preferred_element_type(preferred_element_type, dtype, err)

    unbatched = len(x_shape) == n + 1
    batched = (1, *x_shape) if unbatched else tuple(x_shape)
    spatial = batched[1:-1]
    kernel = tuple(w_shape[1:-1])
    k_dil = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    shapes = _shapes(x_shape, w_shape)

    if transposed:
        if any(s == 0 for s in spatial):  # PyTorch refuses it too; there is nothing to spread
            raise ValueError(
                f"[{err}] the input has an empty spatial axis; a transposed convolution needs at "
                f"least one element per axis; {shapes}."
            )
        lows, highs = _args.canonicalize_padding(padding, n, err, allow_strings=False)
        _args.bounded(lows + highs, "padding", err)
        if any(p < 0 for p in lows + highs):
            raise ValueError(
                f"[{err}] padding must be non-negative for transposed convolutions, "
                f"got {padding!r}."
            )
        out_pad = _args.normalize_tuple(0 if output_padding is None else output_padding, n,
                                        "output_padding", err, minimum=0)
        if any(op >= max(s, d) for op, s, d in zip(out_pad, stride, dilation)):
            raise ValueError(
                f"[{err}] output_padding must be smaller than stride or dilation on every axis, "
                f"got output_padding={out_pad}, stride={stride}, dilation={dilation}."
            )
        # The transposed convolution is the input-dilated (by stride), flipped convolution with
        # stride 1 and the complementary padding.
        lows = tuple(kd - 1 - lo for kd, lo in zip(k_dil, lows))
        highs = tuple(kd - 1 - hi + op for kd, hi, op in zip(k_dil, highs, out_pad))
        input_dilation, stride, flip = stride, (1,) * n, True
    else:
        pad = _args.canonicalize_padding(padding, n, err)
        dilated = tuple((s - 1) * d + 1 for s, d in zip(spatial, input_dilation))
        if isinstance(pad, str):
            pairs = lax.padtype_to_pads(dilated, k_dil, stride, pad.upper())
            lows, highs = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
        else:
            lows, highs = pad
        _args.bounded(lows + highs, "padding", err)

    padded = tuple((s - 1) * d + 1 + lo + hi
                   for s, d, lo, hi in zip(spatial, input_dilation, lows, highs))
    out_spatial = tuple(output_size(*axis) for axis in zip(
        spatial, lows, highs, input_dilation, kernel, dilation, stride))
    if any(p < kd for p, kd in zip(padded, k_dil)) or any(s == 0 for s in spatial):
        if transposed:
            raise ValueError(
                f"[{err}] the output would have spatial size {out_spatial} (below 1): "
                f"(size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1"
                f" with stride={input_dilation}, padding={padding!r}, dilation={dilation}; "
                f"{shapes}."
            )
        raise ValueError(
            f"[{err}] the (dilated) kernel of size {k_dil} is larger than the padded input of "
            f"size {padded} (padding lows={lows}, highs={highs}), so the output would be "
            f"empty; {shapes}."
        )
    out_shape = (batched[0], *out_spatial, w_shape[0])
    for what, shape in (("output", out_shape),
                        ("dilated and padded input", (batched[0], *padded, batched[-1]))):
        _args.check_size(shape, what, err,
                         f"check stride, padding, {dil_name} and output_padding; {shapes}")

    starts, stops, pads, zeros = _crop_geometry(spatial, lows, highs, input_dilation)
    spec = ConvSpec(
        stride=stride, padding=pads, kernel_dilation=dilation, input_dilation=input_dilation,
        groups=groups, flip=bool(flip), precision=precision, preferred_element_type=pet,
    )
    crop = strategy = None
    cropped = ()
    if not zeros:
        if any(starts) or stops != spatial:
            crop = (starts, stops)
        cropped = (batched[0], *(b - a for a, b in zip(starts, stops)), batched[-1])
        strategy = _lowering.resolve(cropped, tuple(w_shape), dtype, spec, device)
    return ConvPlan(
        fn=fn, name=err, n=n, transposed=transposed, unbatched=unbatched, dtype=jnp.dtype(dtype),
        out_dtype=pet if pet is not None else jnp.dtype(dtype), lows=lows, highs=highs,
        crop=crop, out_shape=out_shape[1:] if unbatched else out_shape, spec=spec,
        strategy=strategy, device=device, zeros=zeros, lowered_x_shape=cropped,
        w_shape=tuple(w_shape), prologue=prologue is not None, prologue_activation=activation,
    )
