"""A plain JAX reference for the kernels, written from the definition: the sum over kernel
taps of the shifted, padded input times each channel's weight. Its gradients are JAX's autodiff
of that sum, so it checks all three kernels (tests compare with the float64 reference as well).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from convnn._lowering._spec import ConvSpec

__all__ = ["depthwise_reference"]


def depthwise_reference(x: jax.Array, w: jax.Array, spec: ConvSpec) -> jax.Array:
    """``out[n, i, j, c] = sum_{t, u} xp[n, s_h*i + t, s_w*j + u, c] * w[c, t, u, 0]`` in float32
    (``xp``: ``x`` padded by ``spec.padding``; the kernel reversed when ``spec.flip``).

    Example:
      >>> spec = ConvSpec((1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 2, False)
      >>> x, w = jnp.ones((1, 4, 4, 2), jnp.float32), jnp.ones((2, 3, 3, 1), jnp.float32)
      >>> depthwise_reference(x, w, spec)[0, 1, 1]
      Array([9., 9.], dtype=float32)
    """
    (lo_h, hi_h), (lo_w, hi_w) = spec.padding
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    k = w[..., 0].astype(jnp.float32)
    if spec.flip:
        k = k[:, ::-1, ::-1]
    _, kh, kw = k.shape
    sh, sw = spec.stride
    out_h = (xp.shape[1] - kh) // sh + 1
    out_w = (xp.shape[2] - kw) // sw + 1
    out = jnp.zeros((x.shape[0], out_h, out_w, x.shape[-1]), jnp.float32)
    for t in range(kh):
        for u in range(kw):
            window = xp[:, t:t + sh * (out_h - 1) + 1:sh, u:u + sw * (out_w - 1) + 1:sw]
            out = out + window * k[None, None, None, :, t, u]
    return out.astype(spec.preferred_element_type or x.dtype)
