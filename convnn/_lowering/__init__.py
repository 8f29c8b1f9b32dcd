"""How each convolution is computed.

The functional API canonicalises its arguments into a :class:`ConvSpec` (non-negative padding,
channels-last input ``(N, *spatial, C_in)``, weight ``(C_out, *kernel, C_in // groups)``) and
calls :func:`dispatch`, which asks the policy for a strategy (:func:`resolve`) and runs it.

* strategies: ``"xla"`` (``_xla.py``), ``"decomposed"`` (``_decomposed.py``), ``"mixed"``
  (``_mixed.py``), registered in ``_policy.STRATEGIES``;
* the registry, the per-backend policies behind ``"auto"`` and backend detection: ``_policy.py``;
* :func:`lowering`, the public context manager / decorator: ``_context.py``.
"""

from __future__ import annotations

import jax

from convnn._lowering._context import Lowering, current, lowering
from convnn._lowering._decomposed import conv_decomposed
from convnn._lowering._policy import (
    BACKENDS,
    PLATFORMS,
    STRATEGIES,
    ConvConfig,
    Strategy,
    choose,
    detect_backend,
)
from convnn._lowering._spec import ConvSpec
from convnn._lowering._xla import conv_xla


def resolve(x_shape, w_shape, dtype, spec: ConvSpec, device: jax.Device | None = None) -> str:
    """The strategy name that the lowering in force picks for one convolution."""
    state = current()
    cfg = ConvConfig(tuple(x_shape), tuple(w_shape), dtype, spec)
    return choose(cfg, state.name, state.backend, device)


def run(name: str, x: jax.Array, w: jax.Array, spec: ConvSpec) -> jax.Array:
    """Computes the convolution with the named strategy."""
    return STRATEGIES[name].fn(x, w, spec)


def dispatch(x, w, spec: ConvSpec, device: jax.Device | None = None) -> jax.Array:
    """Computes the convolution described by ``spec`` with the strategy in force."""
    return run(resolve(x.shape, w.shape, x.dtype, spec, device), x, w, spec)


__all__ = [
    "BACKENDS",
    "PLATFORMS",
    "STRATEGIES",
    "ConvConfig",
    "ConvSpec",
    "Lowering",
    "Strategy",
    "choose",
    "conv_decomposed",
    "conv_xla",
    "current",
    "detect_backend",
    "dispatch",
    "lowering",
    "resolve",
    "run",
]
