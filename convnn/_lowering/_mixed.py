"""The ``"mixed"`` strategy: XLA's convolution forward, the decomposed form for every derivative.

On some backends XLA's convolution is fast forward but slow to differentiate: on CPU the
gradients of grouped convolutions (lowered to convolutions with ``feature_group_count`` /
``batch_group_count``) run a generic loop tens of times slower than the forward pass. This
strategy keeps the forward pass as one ``lax.conv_general_dilated`` and defines its
derivative (a ``jax.custom_jvp``, so forward and reverse mode both work) as the decomposed
convolution of the tangents, which is linear in them: reverse mode transposes it into pads,
slices and matmuls / multiply-adds, with no convolution primitive in either gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from convnn._lowering._decomposed import conv_decomposed
from convnn._lowering._spec import ConvSpec
from convnn._lowering._xla import conv_xla

__all__ = ["conv_mixed"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def conv_mixed(x: jax.Array, w: jax.Array, spec: ConvSpec) -> jax.Array:
    """Computes the convolution with XLA; its derivatives go through :func:`conv_decomposed`."""
    return conv_xla(x, w, spec)


def _conv_mixed_jvp(spec, primals, tangents):
    x, w = primals
    dx, dw = tangents
    out = conv_mixed(x, w, spec)
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(conv_decomposed(dx, w, spec))
    if not isinstance(dw, SymbolicZero):
        terms.append(conv_decomposed(x, dw, spec))
    if not terms:  # not reached: JAX calls the rule only with a nonzero tangent
        return out, jnp.zeros_like(out)
    return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]


conv_mixed.defjvp(_conv_mixed_jvp, symbolic_zeros=True)
