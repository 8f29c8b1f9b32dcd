"""Strategy forms for the Apple plugins (internal: only a policy picks them): computed in float32
for devices without bfloat16 (``"xla-float32"``, ``"decomposed-float32"``), and the decomposed
form with reductions over at most 4 axes (``"decomposed-rank4"``, ``"decomposed-rank4-float32"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from convnn._lowering._decomposed import conv_decomposed
from convnn._lowering._spec import ConvSpec
from convnn._lowering._xla import conv_xla

__all__ = [
    "conv_decomposed_float32",
    "conv_decomposed_rank4",
    "conv_decomposed_rank4_float32",
    "conv_xla_float32",
    "in_float32",
]


def in_float32(inner: Callable[[jax.Array, jax.Array, ConvSpec], jax.Array]):
    """Wraps a strategy: bfloat16 operands and accumulation become float32, the result is cast
    back to the dtype the convolution would have returned. The casts' transposes carry the
    gradients back to the operands' dtypes, so the backward pass is float32 too."""

    def conv(x: jax.Array, w: jax.Array, spec: ConvSpec) -> jax.Array:
        out_dtype = jnp.dtype(spec.preferred_element_type or x.dtype)
        f32 = jnp.dtype(jnp.float32)
        pet = spec.preferred_element_type
        if pet is not None and jnp.dtype(pet).itemsize < 4:
            pet = f32
        spec32 = dataclasses.replace(spec, preferred_element_type=pet)

        def up(a):
            return a.astype(f32) if jnp.dtype(a.dtype).itemsize < 4 else a

        return inner(up(x), up(w), spec32).astype(out_dtype)

    conv.__name__ = f"{inner.__name__}_float32"
    return conv


def conv_decomposed_rank4(x: jax.Array, w: jax.Array, spec: ConvSpec) -> jax.Array:
    """The decomposed form with no reduction over more than 4 axes (``max_rank=4``)."""
    return conv_decomposed(x, w, spec, max_rank=4)


conv_xla_float32 = in_float32(conv_xla)
conv_decomposed_float32 = in_float32(conv_decomposed)
conv_decomposed_rank4_float32 = in_float32(conv_decomposed_rank4)
