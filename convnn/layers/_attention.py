"""``MultiHeadAttention`` with MLX's argument order, parameter names and mask rules."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convnn import _args
from convnn.layers import _random
from convnn.layers._linear import Linear
from convnn.layers._module import Module

__all__ = ["MultiHeadAttention", "scaled_dot_product_attention"]


def scaled_dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, mask: Any = None
) -> jax.Array:
    """``softmax(q @ k.T * scale + mask) @ v`` per head, as MLX's
    ``mx.fast.scaled_dot_product_attention``.

    The softmax is computed in float32 at least, as MLX does.

    Args:
      q: queries ``(B, H, L_q, D)``.
      k: keys ``(B, H_kv, L_k, D)``; ``H`` must be a multiple of ``H_kv`` (grouped-query
        attention: query head ``h`` reads key head ``h // (H // H_kv)``).
      v: values ``(B, H_kv, L_k, D_v)``.
      scale: factor on the queries, usually ``1 / sqrt(D)``.
      mask: ``None``; ``"causal"`` (lower-right aligned: the last query sees every key); a
        boolean array (``True`` attends; a row with no ``True`` averages the values, as in MLX);
        or an additive float array (``-inf`` or a large negative value masks). Arrays broadcast
        against ``(B, H, L_q, L_k)``. Default None.

    Returns:
      ``(B, H, L_q, D_v)`` in the inputs' promoted dtype.

    Raises:
      TypeError: on non-floating inputs, a ``scale`` that is not a real number, or a mask that
        is neither boolean nor floating.
      ValueError: on inputs that are not 4-D with matching sizes, a mask that does not
        broadcast, or a string mask other than ``"causal"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from convnn.layers import scaled_dot_product_attention
      >>> q = k = v = jnp.ones((1, 2, 3, 4))
      >>> scaled_dot_product_attention(q, k, v, scale=0.5, mask="causal").shape
      (1, 2, 3, 4)
    """
    fn = "scaled_dot_product_attention"
    q, k, v = (_args.as_array(a, name, fn) for a, name in
               ((q, "queries"), (k, "keys"), (v, "values")))
    for name, a in (("queries", q), ("keys", k), ("values", v)):
        _args.check_float_dtype(a.dtype, name, fn)
    if (
        q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or k.shape[:3] != v.shape[:3]
        or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] or q.shape[1] % k.shape[1]
    ):
        raise ValueError(
            f"[{fn}] queries (B, H, L_q, D), keys (B, H_kv, L_k, D) and values "
            f"(B, H_kv, L_k, D_v) with H a multiple of H_kv are required; got queries shape "
            f"{tuple(q.shape)}, keys shape {tuple(k.shape)}, values shape {tuple(v.shape)}."
        )
    dtype = _args.promote_float(_args.promote_float(q.dtype, k.dtype), v.dtype)
    scores_shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    causal = isinstance(mask, str)
    if causal:
        if mask != "causal":
            raise ValueError(f"[{fn}] the only string mask is 'causal', got {mask!r}.")
        mask = None
    if mask is not None:
        mask = _args.as_array(mask, "mask", fn)
        try:
            shape = jnp.broadcast_shapes(mask.shape, scores_shape)
        except ValueError:
            shape = None
        if mask.ndim > 4 or shape != scores_shape:
            raise ValueError(
                f"[{fn}] mask must broadcast to (B, H, L_q, L_k) = {scores_shape}; got mask "
                f"shape {tuple(mask.shape)}."
            )
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.floating)):
            raise TypeError(f"[{fn}] mask must be boolean or floating, got dtype {mask.dtype}.")
    return _attend(q, k, v, mask, _args.check_real(scale, "scale", fn), causal, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _attend(q, k, v, mask, scale, causal, dtype):
    """The checked computation, compiled once per shape and configuration (an eager call
    dispatches one program)."""
    stats = _args.promote_float(dtype, jnp.float32)  # MLX's softmax is in float32 at least
    if k.shape[1] != q.shape[1]:
        repeats = q.shape[1] // k.shape[1]
        k, v = jnp.repeat(k, repeats, axis=1), jnp.repeat(v, repeats, axis=1)
    scores = (q.astype(stats) * scale) @ jnp.swapaxes(k.astype(stats), -1, -2)
    lq, lk = scores.shape[-2:]
    if causal:  # lower-right aligned: the last query sees every key
        mask = jnp.arange(lq)[:, None] + (lk - lq) >= jnp.arange(lk)[None, :]
    if mask is not None:
        mask = jnp.broadcast_to(mask, scores.shape)
        if mask.dtype == jnp.bool_:
            scores = jnp.where(mask, scores, jnp.finfo(stats).min)
        else:
            scores = scores + mask.astype(stats)
    weights = jax.nn.softmax(scores, axis=-1)
    return (weights @ v.astype(stats)).astype(dtype)


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention, as ``mlx.nn.MultiHeadAttention``.

    Queries, keys and values are projected (``query_proj``, ``key_proj``, ``value_proj``: MLX's
    names, weights ``(out, in)``), split into ``num_heads`` heads, attended with
    :func:`scaled_dot_product_attention` (scale ``1 / sqrt(dims // num_heads)``), joined and
    projected by ``out_proj``. The call takes MLX's argument order
    ``(queries, keys, values, mask=None)`` (Flax's ``nnx.MultiHeadAttention`` takes
    ``(inputs_q, inputs_k, inputs_v, mask)`` with a boolean mask of other layout and other
    parameter names).

    Args:
      dims: model dimensions; the default for every size below. Divisible by ``num_heads``.
      num_heads: attention heads.
      query_input_dims: query input features. Default ``dims``.
      key_input_dims: key input features. Default ``dims``.
      value_input_dims: value input features. Default ``key_input_dims``.
      value_dims: projected value features. Default ``dims``.
      value_output_dims: output features. Default ``dims``.
      bias: biases in the four projections. Default False (MLX's default; PyTorch's
        ``nn.MultiheadAttention`` has them).
      rngs: where the initial weights come from. Default ``None``: convnn's default stream.

    Called on ``(B, L_q, query_input_dims)`` queries and ``(B, L_k, ...)`` keys and values with
    a ``mask`` as :func:`scaled_dot_product_attention` takes it (MLX's additive masks from
    :meth:`create_additive_causal_mask`, booleans, ``"causal"``); returns
    ``(B, L_q, value_output_dims)``.

    Raises:
      TypeError: on non-integer sizes or a non-bool ``bias``; when called, on non-floating
        inputs.
      ValueError: on sizes below 1 or ``dims`` / ``value_dims`` not divisible by
        ``num_heads``; when called, on inputs that are not ``(B, L, features)`` with the
        configured features, one batch size, and one length for keys and values.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> attn = nn.MultiHeadAttention(8, 2)
      >>> x = jnp.ones((2, 5, 8))
      >>> mask = nn.MultiHeadAttention.create_additive_causal_mask(5)
      >>> attn(x, x, x, mask).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        dims: int,
        num_heads: int,
        query_input_dims: int | None = None,
        key_input_dims: int | None = None,
        value_input_dims: int | None = None,
        value_dims: int | None = None,
        value_output_dims: int | None = None,
        bias: bool = False,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        fn = "MultiHeadAttention"
        dims = _args.as_int(dims, "dims", fn, minimum=1)
        num_heads = _args.as_int(num_heads, "num_heads", fn, minimum=1)
        if dims % num_heads:
            raise ValueError(
                f"[{fn}] The input feature dimensions should be divisible by the number of "
                f"heads ({dims} % {num_heads}) != 0."
            )

        def size(value, name, default):
            return default if value is None else _args.as_int(value, name, fn, minimum=1)

        query_input_dims = size(query_input_dims, "query_input_dims", dims)
        key_input_dims = size(key_input_dims, "key_input_dims", dims)
        value_input_dims = size(value_input_dims, "value_input_dims", key_input_dims)
        value_dims = size(value_dims, "value_dims", dims)
        value_output_dims = size(value_output_dims, "value_output_dims", dims)
        if value_dims % num_heads:
            raise ValueError(
                f"[{fn}] value_dims={value_dims} must be divisible by num_heads={num_heads}."
            )
        bias = _args.check_bool(bias, "bias", fn)
        rngs = _random.resolve_rngs(rngs, fn)
        self.num_heads = num_heads
        self.query_proj = Linear(query_input_dims, dims, bias=bias, rngs=rngs)
        self.key_proj = Linear(key_input_dims, dims, bias=bias, rngs=rngs)
        self.value_proj = Linear(value_input_dims, value_dims, bias=bias, rngs=rngs)
        self.out_proj = Linear(value_dims, value_output_dims, bias=bias, rngs=rngs)

    def __call__(
        self, queries: jax.Array, keys: jax.Array, values: jax.Array, mask: Any = None
    ) -> jax.Array:
        fn = "MultiHeadAttention"
        queries, keys, values = (_args.as_array(a, name, fn) for a, name in
                                 ((queries, "queries"), (keys, "keys"), (values, "values")))
        ins = (
            ("queries", queries, self.query_proj), ("keys", keys, self.key_proj),
            ("values", values, self.value_proj),
        )
        for name, a, proj in ins:
            _args.check_float_dtype(a.dtype, name, fn)
            d = proj.weight.shape[1]
            if a.ndim != 3 or a.shape[-1] != d:
                raise ValueError(
                    f"[{fn}] {name} must have shape (B, L, {d}); got {name} shape "
                    f"{tuple(a.shape)}."
                )
        if keys.shape[:2] != values.shape[:2] or queries.shape[0] != keys.shape[0]:
            raise ValueError(
                f"[{fn}] queries, keys and values need one batch size and keys and values one "
                f"length; got queries shape {tuple(queries.shape)}, keys shape "
                f"{tuple(keys.shape)}, values shape {tuple(values.shape)}."
            )
        heads = self.num_heads

        def split(a):  # (B, L, F) -> (B, heads, L, F // heads); no -1: B or L may be 0
            return a.reshape(*a.shape[:2], heads, a.shape[-1] // heads).transpose(0, 2, 1, 3)

        q = split(self.query_proj(queries))
        k = split(self.key_proj(keys))
        v = split(self.value_proj(values))
        scale = math.sqrt(1 / q.shape[-1])
        out = scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        out = out.transpose(0, 2, 1, 3)
        return self.out_proj(out.reshape(*out.shape[:2], heads * out.shape[-1]))

    @staticmethod
    def create_additive_causal_mask(N: int, dtype: Any = jnp.float32) -> jax.Array:
        """``(N, N)``: 0 where key ``j <= i``, the dtype's most negative value elsewhere."""
        fn = "MultiHeadAttention.create_additive_causal_mask"
        N = _args.as_int(N, "N", fn, minimum=0)
        _args.check_size((N, N), "mask", fn, "check N")
        indices = jnp.arange(N)
        mask = indices[:, None] < indices[None]
        return mask.astype(dtype) * jnp.finfo(dtype).min
