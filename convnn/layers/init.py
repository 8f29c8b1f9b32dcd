"""MLX's initializers (``mlx.nn.init``): each function returns an initializer.

An initializer is called as MLX calls it, ``init(a)``, with an array whose shape it takes,
and returns a new array of that shape (``dtype`` float32 by default); random ones draw their key
from convnn's default stream (:func:`convnn.layers.seed`), or from ``key=``. The same function
is also a Flax initializer, ``init(key, shape, dtype)``, so it can be passed as ``kernel_init``.
The extra arguments of MLX's initializers (``gain``, ``mode``) are accepted in both forms as
keywords, and positionally after the array in the MLX form.

Example:
  >>> import jax, jax.numpy as jnp, convnn.layers as nn
  >>> nn.init.constant(0.5)(jnp.zeros((2, 2))).tolist()
  [[0.5, 0.5], [0.5, 0.5]]
  >>> nn.init.glorot_uniform()(jax.random.key(0), (4, 3), jnp.float32).shape
  (4, 3)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convnn.layers import _random
from convnn.layers._random import next_key

__all__ = [
    "constant",
    "normal",
    "uniform",
    "identity",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "sparse",
    "orthogonal",
]


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    )


def _initializer(draw: Callable[..., jax.Array], default_dtype: Any) -> Callable[..., jax.Array]:
    """Wraps ``draw(key, shape, dtype, *extra, **kw)`` to take MLX's ``(a, *extra)`` or Flax's
    ``(key, shape, dtype)``."""

    @functools.wraps(draw)
    def init(a, *args, key=None, **kwargs):
        if args and _is_shape(args[0]):  # Flax: (key, shape, dtype=...)
            shape = tuple(int(v) for v in args[0])
            dtype = args[1] if len(args) > 1 else kwargs.pop("dtype", default_dtype)
            return draw(a, shape, jnp.dtype(dtype), *args[2:], **kwargs)
        shape = tuple(jnp.shape(a))
        return draw(next_key() if key is None else key, shape, default_dtype, *args, **kwargs)

    return init


def _fans(shape: tuple[int, ...], fn: str) -> tuple[int, int]:
    """MLX's fans: ``fan_in = shape[-1] * receptive``, ``fan_out = shape[0] * receptive``."""
    if len(shape) < 2:
        raise ValueError(
            f"[{fn}] needs an array of at least 2 dimensions; got shape {shape}."
        )
    receptive = math.prod(shape[1:-1])
    return shape[-1] * receptive, shape[0] * receptive


def constant(value: float, dtype: Any = jnp.float32) -> Callable[..., jax.Array]:
    """Fills with ``value``."""
    return _initializer(lambda key, shape, dt: jnp.full(shape, value, dt), dtype)


def normal(mean: float = 0.0, std: float = 1.0, dtype: Any = jnp.float32):
    """Draws from ``N(mean, std**2)``."""

    def draw(key, shape, dt):
        return mean + std * _random.normal(key, shape, dt)

    return _initializer(draw, dtype)


def uniform(low: float = 0.0, high: float = 1.0, dtype: Any = jnp.float32):
    """Draws from ``U(low, high)``."""
    return _initializer(
        lambda key, shape, dt: _random.uniform(key, shape, dt, low, high), dtype
    )


def identity(dtype: Any = jnp.float32):
    """The identity matrix (square 2-D arrays only)."""

    def draw(key, shape, dt):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"[identity] needs a square matrix; got shape {shape}.")
        return jnp.eye(shape[0], dtype=dt)

    return _initializer(draw, dtype)


def glorot_normal(dtype: Any = jnp.float32):
    """``N(0, std**2)`` with ``std = gain * sqrt(2 / (fan_in + fan_out))`` (``gain`` 1.0)."""

    def draw(key, shape, dt, gain=1.0):
        fan_in, fan_out = _fans(shape, "glorot_normal")
        return gain * math.sqrt(2.0 / (fan_in + fan_out)) * _random.normal(key, shape, dt)

    return _initializer(draw, dtype)


def glorot_uniform(dtype: Any = jnp.float32):
    """``U(-limit, limit)`` with ``limit = gain * sqrt(6 / (fan_in + fan_out))``."""

    def draw(key, shape, dt, gain=1.0):
        fan_in, fan_out = _fans(shape, "glorot_uniform")
        limit = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return _random.uniform(key, shape, dt, -limit, limit)

    return _initializer(draw, dtype)


def _fan(shape, mode, fn):
    fan_in, fan_out = _fans(shape, fn)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"[{fn}] mode must be 'fan_in' or 'fan_out', got {mode!r}.")


def he_normal(dtype: Any = jnp.float32):
    """``N(0, std**2)`` with ``std = gain / sqrt(fan)``, ``fan`` by ``mode`` (``"fan_in"``)."""

    def draw(key, shape, dt, mode="fan_in", gain=1.0):
        std = gain / math.sqrt(_fan(shape, mode, "he_normal"))
        return std * _random.normal(key, shape, dt)

    return _initializer(draw, dtype)


def he_uniform(dtype: Any = jnp.float32):
    """``U(-limit, limit)`` with ``limit = gain * sqrt(3 / fan)``, ``fan`` by ``mode``."""

    def draw(key, shape, dt, mode="fan_in", gain=1.0):
        limit = gain * math.sqrt(3.0 / _fan(shape, mode, "he_uniform"))
        return _random.uniform(key, shape, dt, -limit, limit)

    return _initializer(draw, dtype)


def sparse(sparsity: float, mean: float = 0.0, std: float = 1.0, dtype: Any = jnp.float32):
    """``N(mean, std**2)`` with ``ceil(sparsity * cols)`` random zeros in every row (2-D only)."""

    def draw(key, shape, dt):
        if len(shape) != 2:
            raise ValueError(f"[sparse] needs a 2-D array; got shape {shape}.")
        rows, cols = shape
        num_zeros = int(math.ceil(sparsity * cols))
        k_order, k_values = jax.random.split(key)
        order = jnp.argsort(jax.random.uniform(k_order, shape), axis=1)
        a = mean + std * jax.random.normal(k_values, shape, dt)
        return a.at[jnp.arange(rows)[:, None], order[:, :num_zeros]].set(0)

    return _initializer(draw, dtype)


def orthogonal(gain: float = 1.0, dtype: Any = jnp.float32):
    """A (semi-)orthogonal matrix from the QR decomposition of a normal one, times ``gain``."""

    def draw(key, shape, dt):
        if len(shape) != 2:
            raise ValueError(f"[orthogonal] needs a 2-D array; got shape {shape}.")
        rows, cols = shape
        n = max(rows, cols)
        q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), jnp.float32))
        q = q * jnp.sign(jnp.diag(r))[None, :]
        return (q[:rows, :cols] * gain).astype(dt)

    return _initializer(draw, dtype)
