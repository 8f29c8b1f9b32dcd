"""Running planned convolutions: the traced calls' body, and the cache of eager calls.

Every public convolution function and layer ends in :func:`conv`. A traced call (under
``jax.jit``, ``grad``, ``vmap``, ...) plans (:func:`convnn._plan.plan`) on every call and runs
:func:`execute` through :data:`TRACED`, one ``jax.jit`` keyed by the plan, so that each
distinct convolution is traced, differentiated and lowered once. An eager call goes to
:data:`EAGER`, one ``jax.jit`` whose static
argument is the call's *strict key*: the function's name, the lowering in force and every
argument tagged with its type (:func:`convnn._plan._strict`), so that ``1``, ``1.0``, ``True``
and ``np.int64(1)``, which Python hashes alike, never share an entry. JAX's C++ dispatch looks
the key up with the operands' shapes and dtypes; the first call of a key traces
:func:`_eager_body`, which plans (validates) before anything is compiled, and a call that fails
validation leaves no entry. These two jit caches (bounded by JAX) and the plans' cache are the
front end's only caches; :func:`clear_caches` empties all three. (The Pallas kernels' wrappers
are jitted too, keyed by their geometry and tiling; ``jax.clear_caches`` empties those.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from convnn import _args, _lowering, _plan
from convnn._lowering._context import _LOCAL

__all__ = ["conv", "execute", "clear_caches", "EAGER", "TRACED"]

try:
    _Tracer = jax.core.Tracer
except AttributeError:  # pragma: no cover - JAX versions that no longer export it there
    from jax._src.core import Tracer as _Tracer

#: Types of concrete (non-tracer) JAX arrays seen so far: one set lookup tells an eager call.
_CONCRETE: set[type] = set()

_ARG_NAMES = ("stride", "padding", "dilation", "input_dilation", "groups", "flip",
              "output_padding", "stream", "precision", "preferred_element_type", "name")


def _is_concrete(value: Any) -> bool:
    if type(value) in _CONCRETE:
        return True
    if isinstance(value, jax.Array) and not isinstance(value, _Tracer):
        _CONCRETE.add(type(value))
        return True
    return False


def execute(plan: _plan.ConvPlan, x: jax.Array, w: jax.Array,
            prologue: _lowering.Prologue | None = None) -> jax.Array:
    """The traced part of a call: casts, crops and lowers (under jit or an outer trace)."""
    x, w = x.astype(plan.dtype), w.astype(plan.dtype)
    if plan.unbatched:
        x = x[None]
    if plan.zeros:
        out = jnp.zeros((x.shape[0], *plan.out_shape[-plan.n - 1:]), plan.out_dtype)
    else:
        if plan.crop is not None:
            starts, stops = plan.crop
            x = x[(slice(None), *(slice(a, b) for a, b in zip(starts, stops)))]
        out = _lowering.run(plan.strategy, x, w, plan.spec, prologue)
    return out[0] if plan.unbatched else out


def _eager_body(key, x, w):
    """An eager call's traced body: plans from the strict key (validating) and executes."""
    fn, _, *args = key
    kwargs = {k: _plan._unstrict(v) for k, v in zip(_ARG_NAMES, args)}
    if type(args[5]) is tuple:  # flip was tagged twice (see conv)
        kwargs["flip"] = _plan._unstrict(args[5][1])
    return execute(_plan.plan(fn, x.shape, x.dtype, w.shape, w.dtype, **kwargs), x, w)


#: The jitted function behind every eager call (its static argument is the strict key).
EAGER = jax.jit(_eager_body, static_argnums=0)

_strict = _plan._strict


def conv(fn: str, x: Any, w: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
         input_dilation: Any = 1, groups: Any = 1, flip: Any = False, output_padding: Any = 0,
         stream: Any = None, precision: Any = None, preferred_element_type: Any = None,
         name: str | None = None, prologue: Any = None) -> jax.Array:
    """Plans and computes one convolution (the arguments as :func:`convnn._plan.plan` takes
    them; ``dilation`` is the kernel dilation). A call with a ``prologue`` runs through
    :data:`TRACED` (eager or not): its arrays are operands of the compiled call."""
    if prologue is not None:
        return _traced(fn, x, w, stride, padding, dilation, input_dilation, groups, flip,
                       output_padding, stream, precision, preferred_element_type, name, prologue)
    if not (type(x) in _CONCRETE or _is_concrete(x)):
        if isinstance(x, _Tracer):
            return _traced(fn, x, w, stride, padding, dilation, input_dilation, groups, flip,
                           output_padding, stream, precision, preferred_element_type, name)
        x = _args.as_array(x, "input", name or fn)
    if not (type(w) in _CONCRETE or _is_concrete(w)):
        if isinstance(w, _Tracer):
            return _traced(fn, x, w, stride, padding, dilation, input_dilation, groups, flip,
                           output_padding, stream, precision, preferred_element_type, name)
        w = _args.as_array(w, "weight", name or fn)
    try:
        key = (fn, _LOCAL.state,
               stride if type(stride) is int else _strict(stride),
               padding if type(padding) is int else _strict(padding),
               dilation if type(dilation) is int else _strict(dilation),
               input_dilation if type(input_dilation) is int else _strict(input_dilation),
               groups if type(groups) is int else _strict(groups),
               # A bool stays a bool here, so anything else (0, 1) must not: tag it.
               flip if type(flip) is bool else (type(flip), _strict(flip)),
               output_padding if type(output_padding) is int else _strict(output_padding),
               stream if stream is None else _strict(stream),
               precision if precision is None else _strict(precision),
               preferred_element_type if preferred_element_type is None
               else _strict(preferred_element_type),
               name)
    except TypeError:  # an unhashable argument: planned on every call, as under a trace
        return _traced(fn, x, w, stride, padding, dilation, input_dilation, groups, flip,
                       output_padding, stream, precision, preferred_element_type, name)
    if stream is not None:
        device = _plan.resolve_stream(stream, name or fn)
        if device is not None:
            x, w = jax.device_put(x, device), jax.device_put(w, device)
    return EAGER(key, x, w)


def _traced(fn, x, w, stride, padding, dilation, input_dilation, groups, flip, output_padding,
            stream, precision, preferred_element_type, name, prologue=None):
    err = name or fn
    x = _args.as_array(x, "input", err)
    w = _args.as_array(w, "weight", err)
    prologue = _plan.as_prologue(prologue, err)
    p = _plan.plan(fn, x.shape, x.dtype, w.shape, w.dtype, stride=stride, padding=padding,
                   dilation=dilation, input_dilation=input_dilation, groups=groups, flip=flip,
                   output_padding=output_padding, stream=stream, precision=precision,
                   preferred_element_type=preferred_element_type, name=name,
                   prologue=_plan.prologue_key(prologue))
    if p.device is not None:
        x, w = jax.device_put(x, p.device), jax.device_put(w, p.device)
        if prologue is not None:
            prologue = jax.device_put(prologue, p.device)
    if prologue is None:
        return TRACED(p, x, w)
    return TRACED(p, x, w, prologue)


#: The traced calls' body, one ``jax.jit`` keyed by the plan. Under an outer ``jit`` it is a
#: nested call that JAX traces, differentiates and lowers once per distinct plan (a model's
#: repeated layers share one body); under an eager ``grad`` or ``vmap`` it runs as a few
#: compiled programs instead of every operation compiled on its own.
TRACED = jax.jit(execute, static_argnums=0)


def clear_caches() -> None:
    """Empties the eager calls' compiled programs, the traced calls' bodies and the plans'
    cache."""
    EAGER.clear_cache()
    TRACED.clear_cache()
    _plan.clear_cache()
