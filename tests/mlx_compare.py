"""Comparing a convnn model with the MLX model it was ported from: weights, values, gradients.

MLX is never imported here: the MLX modules come from the tests' ``mx`` / ``mnn`` fixtures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tolerances import assert_close

from convnn._flax_compat import get_value
from convnn.interop import load_mlx_weights


def mlx_flat(tree) -> dict[str, np.ndarray]:
    """``{"a.0.b": array}`` from an MLX parameter tree (dicts and lists of arrays)."""
    out: dict[str, np.ndarray] = {}

    def walk(value, prefix):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{prefix}.{i}" if prefix else str(i))
        else:
            out[prefix] = np.array(value)

    walk(tree, "")
    return out


def copy_mlx_weights(mlx_model, model) -> dict[str, np.ndarray]:
    """Loads ``mlx_model``'s parameters into ``model`` strictly; returns them."""
    weights = mlx_flat(mlx_model.parameters())
    result = load_mlx_weights(model, weights)
    assert result.missing_keys == result.unexpected_keys == result.mismatched_keys == []
    return weights


def nnx_flat(state) -> dict[str, np.ndarray]:
    """``{"a.0.b": array}`` from an NNX state (gradients, parameters)."""
    return {".".join(str(p) for p in path): np.asarray(get_value(v))
            for path, v in nnx.to_flat_state(state)}


def mlx_value_and_grad(mnn, mlx_model, loss_fn, *args):
    """Loss and flat parameter gradients of ``loss_fn(mlx_model, *args)`` in MLX."""
    loss, grads = mnn.value_and_grad(mlx_model, lambda *a: loss_fn(mlx_model, *a))(*args)
    return float(loss.item()), mlx_flat(grads)


def nnx_value_and_grad(model, loss_fn, *args):
    """Loss and flat ``nnx.Param`` gradients of ``loss_fn(model, *args)``."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, *args)
    return float(loss), nnx_flat(grads)


def assert_trees_close(actual: dict, expected: dict, what: str, rtol: float | None = None):
    """Same keys, and each array close (``rtol`` relative to the array's largest magnitude, or
    the float32 tolerance of ``tolerances.py``)."""
    assert sorted(actual) == sorted(expected), f"{what}: {sorted(actual)} != {sorted(expected)}"
    for key, value in expected.items():
        if rtol is None:
            assert_close(actual[key], value, jnp.float32, what=f"{what} {key}")
        else:
            assert_rel(actual[key], value, rtol, what=f"{what} {key}")


def assert_rel(actual, expected, rtol: float, what: str = "", *, floor: float = 0.0) -> None:
    """``|actual - expected| <= rtol * (|expected| + max|expected|)`` elementwise: relative to
    each value, with the array's scale as the floor for values near zero.

    ``floor``: a scale below which an array counts as zero (a gradient that vanishes in exact
    arithmetic, such as that of a key projection's bias under softmax, is rounding noise); such
    an array is compared with ``atol = rtol * floor``.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), floor)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def as_jax(x) -> jax.Array:
    return jnp.asarray(np.array(x))
