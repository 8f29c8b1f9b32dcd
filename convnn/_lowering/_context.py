"""``convnn.lowering``: the context manager and decorator that selects how convolutions lower.

The selection is per thread (a :class:`threading.local`, cheap to read on every eager call). Where
JAX has ``jax.make_user_context`` it is mirrored into one, and JAX keys its jit caches on it, so a
jitted function traced under one selection is traced again under another; on older JAX a jitted
function keeps the strategy of its first trace.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from convnn._lowering import _policy, _registry

__all__ = ["Lowering", "lowering", "current"]


class State(NamedTuple):
    """The lowering in force: a strategy name or ``"auto"``, and a backend name or ``None``."""

    name: str = "auto"
    backend: str | None = None


_DEFAULT = State()
_make_user_context = getattr(jax, "make_user_context", None)

#: True when jit caches are keyed on the selection (a jitted function retraces when it changes).
JIT_KEYED = _make_user_context is not None


class _Local(threading.local):
    """This thread's selection (read on every eager call: a plain attribute, no ``getattr``
    default, which costs an exception when unset) and its stack of restore tokens."""

    state: State = _DEFAULT

    def __init__(self):
        self.tokens = []


_LOCAL = _Local()


def current() -> State:
    """The lowering in force in this thread (``State("auto", None)`` by default)."""
    return _LOCAL.state


if JIT_KEYED:
    # Mirrored into a JAX user context so that jit caches are keyed on it.
    _JAX_STATE = _make_user_context(default_value=None)

    def _enter(state: State):
        ctx = _JAX_STATE(state)
        ctx.__enter__()
        previous, _LOCAL.state = current(), state
        return ctx, previous

    def _exit(token) -> None:
        ctx, _LOCAL.state = token
        ctx.__exit__(None, None, None)

else:  # pragma: no cover - JAX without user contexts

    def _enter(state: State):
        previous, _LOCAL.state = current(), state
        return previous

    def _exit(token) -> None:
        _LOCAL.state = token


class Lowering:
    """A lowering selection; use it as a context manager or as a decorator.

    Instances come from :func:`lowering`. Each ``with`` block (and each call of a decorated
    function) sets the selection for its own duration and restores the previous one on exit, also
    on exceptions; blocks nest, and the innermost wins. Each thread has its own selection.
    """

    __slots__ = ("_state",)

    def __init__(self, state: State):
        self._state = state

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def backend(self) -> str | None:
        return self._state.backend

    def __enter__(self) -> Lowering:
        # The restore tokens live on this thread's stack, so one object may be entered by
        # several threads (and re-entered) at once.
        _LOCAL.tokens.append(_enter(self._state))
        return self

    def __exit__(self, *exc: Any) -> None:
        _exit(_LOCAL.tokens.pop())

    def __call__(self, fn: Callable) -> Callable:
        state = self._state

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with Lowering(state):
                return fn(*args, **kwargs)

        return wrapper

    def __repr__(self) -> str:
        return f"convnn.lowering({self._state.name!r}, backend={self._state.backend!r})"


def lowering(name: str = "auto", *, backend: str | None = None) -> Lowering:
    """Selects how the convolutions traced inside a block (or a decorated function) are computed.

    ``name`` forces a strategy for every convolution, or ``"auto"`` lets the policy choose per
    convolution from what the benchmarks measured on the backend. ``backend`` makes the policy
    act as it would on another backend, on any machine (the strategy it picks still runs here).
    The choice is made when a convolution is traced: eagerly, on every call (the eager cache is
    keyed on the selection); under ``jax.jit``, when the function is traced, and JAX keys its
    jit caches on the selection, so a jitted function called under another selection is traced
    again. (On JAX older than ``jax.make_user_context``, a jitted function keeps the strategy of
    its first trace: put the block around the first call.)

    Strategies: ``"xla"`` (one ``lax.conv_general_dilated``), ``"decomposed"`` (pad, slice and
    matmul or multiply-add; no convolution primitive in the forward pass or any gradient),
    ``"im2col"`` (the decomposed form with every tap's patches in one matrix product),
    ``"mixed"`` (XLA's forward pass, the decomposed gradients) and ``"pallas"`` (Pallas kernels
    for 2-D depthwise convolutions on NVIDIA GPUs). A forced strategy that cannot compute a
    configuration on the device falls back to ``"xla"``. ``convnn.explain`` says what a call
    runs, and why.

    Args:
      name: ``"auto"`` (default) or a strategy name.
      backend: keyword-only; ``None`` (default) uses the backend the convolution runs on, or a
        backend name such as ``"cpu"``, ``"cuda"``, ``"rocm"`` or ``"tpu"`` whose policy
        ``"auto"`` applies.

    Returns:
      A :class:`Lowering`, usable as ``with convnn.lowering(...):`` and as a decorator.

    Raises:
      ValueError: for an unknown strategy or backend name (the message lists the valid ones).
      TypeError: if ``name`` or ``backend`` is not a string.

    Example:
      >>> import jax, jax.numpy as jnp, convnn
      >>> x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((4, 3, 3, 1))
      >>> with convnn.lowering("decomposed"):
      ...     jaxpr = jax.make_jaxpr(lambda a, b: convnn.conv2d(a, b, groups=4))(x, w)
      >>> "conv_general_dilated" in str(jaxpr)
      False
      >>> @convnn.lowering("auto", backend="cuda")
      ... def f(a, b):
      ...     return convnn.conv2d(a, b, padding=1, groups=4)
      >>> f(x, w).shape
      (1, 8, 8, 4)
    """
    if not isinstance(name, str):
        raise TypeError(f"[lowering] name must be a string, got {name!r} of type "
                        f"{type(name).__name__}.")
    names = ("auto", *_registry.selectable())
    if name not in names:
        raise ValueError(f"[lowering] unknown strategy {name!r}; valid names: {list(names)}.")
    if backend is not None:
        if not isinstance(backend, str):
            raise TypeError(f"[lowering] backend must be None or a string, got {backend!r} of "
                            f"type {type(backend).__name__}.")
        if backend not in _policy.BACKENDS:
            raise ValueError(f"[lowering] unknown backend {backend!r}; valid backends: "
                             f"{list(_policy.BACKENDS)} (or None for the one in use).")
    return Lowering(State(name, backend))
