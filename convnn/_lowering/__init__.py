"""How each convolution is computed.

The front end canonicalises a call into a :class:`ConvSpec` (non-negative padding, channels-last
input ``(N, *spatial, C_in)``, weight ``(C_out, *kernel, C_in // groups)``) and enters here
through two functions: :func:`resolve` (which strategy computes it, under the lowering in force
and on the device) and :func:`run` (compute it with that strategy).

Imports flow one way, each layer importing only the ones before it:

1. ``_spec.py``, ``_config.py``: the convolution and the device, as static descriptions;
2. strategies, each a leaf: ``_xla.py``, ``_decomposed.py``, ``_mixed.py``, ``_float32.py``,
   the ``_pallas`` package;
3. ``_registry.py``: name -> strategy, by explicit ``register()`` calls;
4. policies: ``_cpu.py``, ``_cuda.py``, ``_apple.py`` (rules as data), ``_policy.py`` (the table
   behind ``"auto"`` and :func:`decide`);
5. ``_detect.py``: platform and Apple-plugin detection;
6. ``_context.py`` (``convnn.lowering``) and this module.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax

from convnn._lowering._config import ConvConfig, Decision, Target
from convnn._lowering._context import Lowering, current, lowering
from convnn._lowering._decomposed import conv_decomposed
from convnn._lowering._detect import detect_backend, target_for, target_of
from convnn._lowering._policy import BACKENDS, Choice, decide
from convnn._lowering._prologue import Prologue, apply
from convnn._lowering._registry import STRATEGIES, Passes, Strategy
from convnn._lowering._spec import ConvSpec, output_size
from convnn._lowering._xla import conv_xla

__all__ = [
    "BACKENDS",
    "STRATEGIES",
    "Choice",
    "ConvConfig",
    "ConvSpec",
    "Decision",
    "Lowering",
    "Passes",
    "Prologue",
    "Resolved",
    "Strategy",
    "Target",
    "choose",
    "conv_decomposed",
    "conv_xla",
    "current",
    "decide",
    "detect_backend",
    "lowering",
    "output_size",
    "recording",
    "resolve",
    "run",
]


class Resolved(NamedTuple):
    """The arguments of one :func:`resolve` call (what :func:`recording` collects)."""

    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    dtype: Any
    spec: ConvSpec
    device: jax.Device | None


class _Recorder(threading.local):
    calls: list[Resolved] | None = None


_RECORDER = _Recorder()


@contextlib.contextmanager
def recording() -> Iterator[list[Resolved]]:
    """Collects, in this thread, the arguments of every :func:`resolve` call made inside the
    block (how ``convnn.explain`` learns what a call convolves without computing it)."""
    outer, _RECORDER.calls = _RECORDER.calls, []
    try:
        yield _RECORDER.calls
    finally:
        _RECORDER.calls = outer


def choose(cfg: ConvConfig, name: str = "auto", backend: str | None = None,
           device: jax.Device | Target | None = None) -> str:
    """The strategy name for ``cfg`` under a selection (:func:`decide` also gives the rule).

    Args:
      cfg: the convolution.
      name: ``"auto"`` or a strategy name.
      backend: the backend whose policy ``"auto"`` applies; ``None``: the device's.
      device: where it runs: a ``jax.Device``, a described :class:`Target`, or ``None`` (JAX's
        default backend).
    """
    device_target = device if isinstance(device, Target) else target_of(device)
    policy_target = device_target if backend is None else target_for(backend)
    return decide(cfg, name, policy_target, device_target).strategy


def resolve(x_shape, w_shape, dtype, spec: ConvSpec, device: jax.Device | None = None) -> str:
    """The strategy name that the lowering in force picks for one convolution on ``device``
    (``None``: JAX's default backend)."""
    if _RECORDER.calls is not None:
        _RECORDER.calls.append(Resolved(tuple(x_shape), tuple(w_shape), dtype, spec, device))
    state = current()
    cfg = ConvConfig(tuple(x_shape), tuple(w_shape), dtype, spec)
    return choose(cfg, state.name, state.backend, device)


def run(name: str, x: jax.Array, w: jax.Array, spec: ConvSpec,
        prologue: Prologue | None = None) -> jax.Array:
    """Computes the convolution with the named strategy (a name :func:`resolve` returned),
    of ``x`` through ``prologue`` when given: fused where the strategy fuses it
    (``Strategy.fuses_prologue``), else applied first in ``promote(dtype, float32)`` and
    rounded to ``x.dtype``."""
    strategy = STRATEGIES[name]
    if prologue is None:
        return strategy.fn(x, w, spec)
    if strategy.fuses_prologue:
        return strategy.fn(x, w, spec, prologue=prologue)
    return strategy.fn(apply(x, prologue, x.dtype), w, spec)
