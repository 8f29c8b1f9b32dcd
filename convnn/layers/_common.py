"""Argument checks and small array helpers shared by the MLX-style layers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from convnn import _args

__all__ = ["as_input", "expand", "compute_dtype"]


def as_input(x: Any, fn: str, *, allow_int: bool = False) -> jax.Array:
    """``x`` as a JAX array with a floating dtype (or an integer one with ``allow_int``)."""
    x = _args.as_array(x, "input", fn)
    if allow_int and (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        return x
    _args.check_float_dtype(x.dtype, "input", fn)
    return x


def expand(v: jax.Array, ndim: int) -> jax.Array:
    """``v`` of shape ``(C,)`` as ``(1, ..., 1, C)`` (no implicit rank promotion)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def compute_dtype(x: jax.Array, *params: Any) -> Any:
    """MLX's result dtype: the input's dtype promoted with the parameters' (floats only)."""
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32)
    for p in params:
        if p is not None:
            dtype = _args.promote_float(dtype, p.dtype)
    return jnp.dtype(dtype)
