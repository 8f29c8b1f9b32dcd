"""``Identity``, ``Linear``, ``Bilinear`` and ``Embedding``: MLX's layers with MLX's layouts."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convnn import _args
from convnn.layers._common import as_input, compute_dtype, expand
from convnn.layers._module import Module
from convnn.layers._random import normal, resolve_rngs, uniform_param

__all__ = ["Identity", "Linear", "Bilinear", "Embedding"]


class Identity(Module):
    """Returns its input, as ``mlx.nn.Identity``.

    Args:
      args: ignored.
      kwargs: ignored.

    Raises:
      Nothing: every argument is accepted and ignored.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.Identity(3, key="ignored")(jnp.ones(2)).tolist()
      [1.0, 1.0]
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()

    def __call__(self, x: jax.Array) -> jax.Array:
        return x

    def __repr__(self) -> str:
        return "Identity()"


class Linear(Module):
    """``y = x @ weight.T + bias``, as ``mlx.nn.Linear``.

    Args:
      input_dims: size of the last input axis.
      output_dims: size of the last output axis.
      bias: learn ``bias``. Default True.
      rngs: an ``nnx.Rngs`` (its ``params`` stream). Default: the default stream.

    Attributes:
      weight: ``(output_dims, input_dims)`` (MLX's and PyTorch's layout; ``nnx.Linear`` stores
        the transpose), uniform in ``+-sqrt(1 / input_dims)``.
      bias: ``(output_dims,)``, uniform in the same range (absent when ``bias=False``).

    Raises:
      TypeError: on non-integer sizes or a non-bool ``bias``; when called, on a non-floating
        input.
      ValueError: on non-positive sizes; when called, on an input whose last axis is not
        ``input_dims``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> layer = nn.Linear(3, 2, bias=False)
      >>> layer
      Linear(input_dims=3, output_dims=2, bias=False)
      >>> layer.weight.shape, layer(jnp.ones((4, 3))).shape
      ((2, 3), (4, 2))
    """

    def __init__(
        self, input_dims: int, output_dims: int, bias: bool = True, *, rngs: nnx.Rngs | None = None
    ):
        super().__init__()
        fn = "Linear"
        input_dims = _args.as_int(input_dims, "input_dims", fn, minimum=1)
        output_dims = _args.as_int(output_dims, "output_dims", fn, minimum=1)
        bias = _args.check_bool(bias, "bias", fn)
        rngs = resolve_rngs(rngs, fn)
        scale = math.sqrt(1.0 / input_dims)
        self.weight = uniform_param(rngs, (output_dims, input_dims), scale, fn)
        if bias:
            self.bias = uniform_param(rngs, (output_dims,), scale, fn)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = as_input(x, "Linear")
        w = self.weight
        if x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"[Linear] input must have shape (..., {w.shape[1]}); got input shape "
                f"{tuple(x.shape)}."
            )
        bias = self.bias if "bias" in self else None
        dtype = compute_dtype(x, w, bias)
        y = jnp.matmul(x.astype(dtype), w[...].astype(dtype).T)
        return y if bias is None else y + expand(bias[...].astype(dtype), y.ndim)

    def __repr__(self) -> str:
        out, inp = self.weight.shape
        return f"Linear(input_dims={inp}, output_dims={out}, bias={'bias' in self})"


class Bilinear(Module):
    """``y_i = x2 @ weight[i] @ x1 + bias_i``, as ``mlx.nn.Bilinear``.

    Args:
      input1_dims: size of the last axis of ``x1``.
      input2_dims: size of the last axis of ``x2``.
      output_dims: size of the last output axis.
      bias: learn ``bias``. Default True.
      rngs: an ``nnx.Rngs`` (its ``params`` stream). Default: the default stream.

    Attributes:
      weight: ``(output_dims, input2_dims, input1_dims)``, uniform in
        ``+-sqrt(1 / input1_dims)`` (MLX's layout and range; PyTorch stores
        ``(out, in1, in2)``).
      bias: ``(output_dims,)`` (absent when ``bias=False``).

    Raises:
      TypeError: on non-integer sizes or a non-bool ``bias``.
      ValueError: on non-positive sizes; when called, on inputs whose last axes do not match or
        whose leading axes differ.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> layer = nn.Bilinear(3, 4, 2)
      >>> layer(jnp.ones((5, 3)), jnp.ones((5, 4))).shape
      (5, 2)
    """

    def __init__(
        self,
        input1_dims: int,
        input2_dims: int,
        output_dims: int,
        bias: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        super().__init__()
        fn = "Bilinear"
        in1 = _args.as_int(input1_dims, "input1_dims", fn, minimum=1)
        in2 = _args.as_int(input2_dims, "input2_dims", fn, minimum=1)
        out = _args.as_int(output_dims, "output_dims", fn, minimum=1)
        bias = _args.check_bool(bias, "bias", fn)
        rngs = resolve_rngs(rngs, fn)
        scale = math.sqrt(1.0 / in1)
        self.weight = uniform_param(rngs, (out, in2, in1), scale, fn)
        if bias:
            self.bias = uniform_param(rngs, (out,), scale, fn)

    def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
        x1, x2 = as_input(x1, "Bilinear"), as_input(x2, "Bilinear")
        out, in2, in1 = self.weight.shape
        if x1.shape[-1:] != (in1,) or x2.shape[-1:] != (in2,) or x1.shape[:-1] != x2.shape[:-1]:
            raise ValueError(
                f"[Bilinear] inputs must have shapes (..., {in1}) and (..., {in2}) with the same "
                f"leading axes; got input shapes {tuple(x1.shape)} and {tuple(x2.shape)}."
            )
        bias = self.bias if "bias" in self else None
        dtype = compute_dtype(x1, self.weight, bias)
        dtype = _args.promote_float(dtype, x2.dtype)
        w = self.weight[...].astype(dtype)
        y = jnp.einsum("...j,oji,...i->...o", x2.astype(dtype), w, x1.astype(dtype))
        return y if bias is None else y + expand(bias[...].astype(dtype), y.ndim)

    def __repr__(self) -> str:
        out, in2, in1 = self.weight.shape
        return (
            f"Bilinear(input1_dims={in1}, input2_dims={in2}, output_dims={out}, "
            f"bias={'bias' in self})"
        )


class Embedding(Module):
    """A lookup table ``weight[x]``, as ``mlx.nn.Embedding``.

    Args:
      num_embeddings: number of rows (vocabulary size).
      dims: size of each embedding.
      rngs: an ``nnx.Rngs`` (its ``params`` stream). Default: the default stream.

    Attributes:
      weight: ``(num_embeddings, dims)``, normal with standard deviation ``sqrt(1 / dims)``
        (MLX's; ``nnx.Embed`` calls it ``embedding``).

    Raises:
      TypeError: on non-integer sizes; when called, on a non-integer input.
      ValueError: on non-positive sizes.

    Indices follow NumPy: ``-1`` is the last row (as in MLX), and an index outside
    ``[-num_embeddings, num_embeddings)`` gives a row of NaN (``jnp.take``'s fill, as
    ``nnx.Embed``), so that a token id beyond the vocabulary shows in the loss instead of
    silently reading another row; MLX reads whatever memory lies there. Such indices get no
    gradient. A value can only be checked outside ``jit``, and the result must not depend on
    that, so no error is raised for it.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> emb = nn.Embedding(10, 4)
      >>> emb(jnp.array([[1, 2, 3]])).shape, emb.as_linear(jnp.ones((2, 4))).shape
      ((1, 3, 4), (2, 10))
    """

    def __init__(self, num_embeddings: int, dims: int, *, rngs: nnx.Rngs | None = None):
        super().__init__()
        fn = "Embedding"
        num = _args.as_int(num_embeddings, "num_embeddings", fn, minimum=1)
        dims = _args.as_int(dims, "dims", fn, minimum=1)
        rngs = resolve_rngs(rngs, fn)
        scale = math.sqrt(1.0 / dims)
        _args.check_size((num, dims), "parameter", fn, "check the layer's sizes")
        self.weight = nnx.Param(normal(rngs.params(), (num, dims)) * scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _args.as_array(x, "input", "Embedding")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(
                f"[Embedding] input must have an integer dtype (indices), got {x.dtype.name}."
            )
        return jnp.take(self.weight[...], x, axis=0, mode="fill", fill_value=jnp.nan)

    def as_linear(self, x: jax.Array) -> jax.Array:
        """``x @ weight.T``: the embedding as an output projection (tied weights)."""
        x = as_input(x, "Embedding.as_linear")
        dtype = compute_dtype(x, self.weight)
        return jnp.matmul(x.astype(dtype), self.weight[...].astype(dtype).T)

    def __repr__(self) -> str:
        return f"Embedding({self.weight.shape[0]}, {self.weight.shape[1]})"
