"""convnn's default random stream: MLX's global generator for layers built without ``rngs``.

MLX layers draw their initial parameters (and dropout masks) from a global generator that
``mx.random.seed`` resets. JAX has no global generator, so Flax NNX layers take an
``nnx.Rngs``. convnn's layers accept ``rngs`` optionally: without it they take a key from the
stream kept here, so ``Linear(4, 8)`` is valid as MLX writes it, and :func:`seed` makes a
program reproducible as ``mx.random.seed`` does.

The stream is a seed and a counter in Python: key ``i`` is ``fold_in(key(seed), i)``. It starts
at seed 0 (MLX seeds from the clock), so a program that never calls :func:`seed` is still
reproducible run to run.

Keys drawn this way are Python-level state, not traced values: a layer constructed inside a
traced function (``jax.jit``, ``nnx.jit``, ``nnx.eval_shape``) takes its key when the function
is traced, and a cached compiled call reuses it. Construct layers outside transformations, or
pass ``rngs`` explicitly where a traced constructor must draw fresh keys. Layers that need
randomness at call time (``Dropout``) take one key at construction and keep an ``nnx.Rngs`` of
their own, whose state is part of the model and advances correctly under ``nnx.jit``.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convnn import _args

__all__ = ["seed", "next_key", "resolve_rngs", "normal", "uniform", "uniform_param"]

_lock = threading.Lock()
_state = {"seed": 0, "count": 0}


def seed(s: int) -> None:
    """Resets convnn's default random stream, as ``mx.random.seed`` resets MLX's.

    Args:
      s: a non-negative integer seed.

    Raises:
      TypeError: on a non-integer seed.
      ValueError: on a negative seed.

    Example:
      >>> import convnn.layers as L
      >>> L.seed(3); a = L.Conv1d(1, 2, 3).weight[...]
      >>> L.seed(3); b = L.Conv1d(1, 2, 3).weight[...]
      >>> bool((a == b).all())
      True
    """
    if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
        raise TypeError(f"[seed] s must be an int, got {s!r} of type {type(s).__name__}.")
    if s < 0:
        raise ValueError(f"[seed] s must be non-negative, got {s}.")
    with _lock:
        _state["seed"] = int(s)
        _state["count"] = 0


def next_key() -> jax.Array:
    """The next key of the default stream (a new one at every call)."""
    with _lock:
        s, i = _state["seed"], _state["count"]
        _state["count"] = i + 1
    return jax.random.fold_in(jax.random.key(s), i)


def resolve_rngs(rngs: Any, fn: str) -> nnx.Rngs:
    """``rngs`` itself, or a fresh ``nnx.Rngs`` seeded from the default stream when ``None``.

    Raises:
      TypeError: naming the layer ``fn``, when ``rngs`` is neither ``None`` nor an ``nnx.Rngs``.
    """
    if rngs is None:
        return nnx.Rngs(next_key())
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"[{fn}] rngs must be None or an nnx.Rngs, got {rngs!r}.")
    return rngs


# The layers draw their parameters through these two. A draw is made flat and reshaped: JAX's
# counter-based generator numbers the elements in row-major order, so the values are those of
# ``jax.random.normal(key, shape)``, but XLA compiles a 1-D draw several times faster than a
# 4-D one, and a model builds one draw program per distinct weight shape (docs/performance.md,
# "Building a model").


def normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, drawn flat."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def uniform(
    key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32, minval: float = 0.0,
    maxval: float = 1.0,
) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, drawn flat."""
    return jax.random.uniform(key, (math.prod(shape),), dtype, minval, maxval).reshape(shape)


def uniform_param(
    rngs: nnx.Rngs, shape: tuple[int, ...], scale: float, fn: str
) -> nnx.Param:
    """A float32 parameter drawn from ``U(-scale, scale)`` (MLX's linear and recurrent default);
    ``fn`` (the layer) is named if ``shape`` is above the size limit."""
    _args.check_size(shape, "parameter", fn, "check the layer's sizes")
    return nnx.Param(uniform(rngs.params(), shape, jnp.float32, -scale, scale))
