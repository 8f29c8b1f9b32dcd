"""A convolution's prologue: a per-channel affine map and activation applied to its input.

``conv(act(x * scale + shift), w)``, the padding applied to the transformed input (padded
positions are zero, not ``act(shift)``). A batch norm followed by its activation and a
convolution is this with the batch norm's ``scale = weight / sqrt(var + eps)`` and
``shift = bias - mean * scale``: a strategy that fuses the prologue (the Pallas depthwise
kernels apply it as they load each tile) never writes the normalised tensor out or reads it
back; every other strategy applies it first, as its own elementwise pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "Prologue", "activate", "activation_tangent", "apply", "per_channel"]

#: The activations a prologue (and ``convnn.layers.BatchNorm``) applies, by name.
ACTIVATIONS = {"relu": jax.nn.relu, "relu6": jax.nn.relu6, "silu": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class Prologue:
    """``act(x * scale + shift)`` over the input's channels (its last axis), before the
    convolution pads it.

    A pytree whose leaves are ``scale`` and ``shift`` (``activation`` is static), so it passes
    through ``jax.jit``, ``grad`` and ``vmap`` as arrays do; both arrays are differentiated.

    Attributes:
      scale: ``(C_in,)``, a real dtype; computed in ``float32`` (or wider).
      shift: ``(C_in,)``, likewise.
      activation: ``None`` (the affine map alone), ``"relu"``, ``"relu6"`` or ``"silu"``.

    Example:
      >>> import jax.numpy as jnp
      >>> p = Prologue(jnp.array([2.0]), jnp.array([-1.0]), "relu")
      >>> apply(jnp.array([[0.0], [3.0]]), p, jnp.float32)[:, 0].tolist()
      [0.0, 5.0]
    """

    scale: Any
    shift: Any
    activation: str | None = None


jax.tree_util.register_dataclass(Prologue, data_fields=["scale", "shift"],
                                 meta_fields=["activation"])


def activate(y: jax.Array, activation: str | None) -> jax.Array:
    """``activation`` (a name of :data:`ACTIVATIONS`, or ``None`` for none) applied to ``y``."""
    return y if activation is None else ACTIVATIONS[activation](y)


def activation_tangent(y: jax.Array, t: jax.Array, activation: str | None) -> jax.Array:
    """The activation's derivative at ``y`` times ``t`` (linear in ``t``): the rule that
    ``convnn.layers.BatchNorm`` and the fused prologue's backward pass share."""
    if activation == "relu":
        return jnp.where(y > 0, t, 0)
    if activation == "relu6":
        return jnp.where((y > 0) & (y < 6), t, 0)
    if activation == "silu":
        s = jax.nn.sigmoid(y)
        return t * (s * (1 + y * (1 - s)))
    return t


def _wide(dtype: Any) -> Any:
    """float32, or float64 for float64 (whatever JAX's promotion settings)."""
    return jnp.dtype(jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32)


def per_channel(v: jax.Array, ndim: int, dtype: Any) -> jax.Array:
    """A ``(C,)`` vector in ``dtype``, shaped to broadcast over an ``ndim``-axis channels-last
    array (explicitly: the tests run with ``jax_numpy_rank_promotion="raise"``)."""
    return v.astype(dtype).reshape((1,) * (ndim - 1) + (-1,))


def apply(x: jax.Array, prologue: Prologue, dtype: Any) -> jax.Array:
    """The prologue on ``x`` (``(..., C)``), computed in ``promote(dtype, float32)`` and returned
    in ``dtype``: what a strategy that does not fuse it convolves."""
    wide = _wide(dtype)
    y = (x.astype(wide) * per_channel(prologue.scale, x.ndim, wide)
         + per_channel(prologue.shift, x.ndim, wide))
    return activate(y, prologue.activation).astype(dtype)
