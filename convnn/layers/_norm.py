"""``GroupNorm`` with MLX's channel grouping."""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convnn import _args, _flax_compat
from convnn.layers._conv import check_bool, check_dtype
from convnn.layers._module import Module

__all__ = ["GroupNorm"]


class GroupNorm(Module):
    """Group normalization over channels-last ``(N, *rest, dims)`` input, as ``mlx.nn.GroupNorm``.

    Statistics (biased variance) are taken per sample and per group over ``rest`` and the
    group's channels; ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    MLX groups channels *interleaved*: channel ``c`` belongs to group ``c % num_groups``. With
    ``pytorch_compatible=True`` the groups are contiguous (channel ``c`` in group
    ``c // (dims // num_groups)``), as in PyTorch's ``nn.GroupNorm`` and Flax's
    ``nnx.GroupNorm``. A model ported from MLX must keep MLX's default to compute the same
    outputs; a PyTorch model needs ``pytorch_compatible=True``.

    Args:
      num_groups: number of groups; must divide ``dims``.
      dims: number of channels (the last input axis).
      eps: added to the variance. Default 1e-5.
      affine: learn ``weight`` (ones) and ``bias`` (zeros) of shape ``(dims,)``, MLX's names.
        Default True; when False both attributes are ``None``.
      pytorch_compatible: contiguous groups (see above). Default False.
      dtype: compute and output dtype. Default ``None``: the input's dtype promoted with the
        parameters' (MLX's rule); statistics are computed in at least float32.
      param_dtype: storage dtype of ``weight`` and ``bias``. Default float32.

    Raises:
      TypeError: on non-integer ``num_groups`` / ``dims``, non-bool flags or a non-floating
        dtype.
      ValueError: on non-positive sizes or ``eps``, or ``num_groups`` not dividing ``dims``;
        when called, on an input of rank below 2 or with the wrong channel count.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as L
      >>> gn = L.GroupNorm(2, 4)
      >>> gn
      GroupNorm(2, 4, eps=1e-05, affine=True, pytorch_compatible=False)
      >>> x = jnp.array([[[0.0, 10.0, 2.0, 20.0]]])  # groups {0, 2} and {1, 3}
      >>> gn(x).round(3).tolist()
      [[[-1.0, -1.0, 1.0, 1.0]]]
    """

    def __init__(
        self,
        num_groups: int,
        dims: int,
        eps: float = 1e-5,
        affine: bool = True,
        pytorch_compatible: bool = False,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ):
        fn = "GroupNorm"
        self.num_groups = _args.as_int(num_groups, "num_groups", fn, minimum=1)
        self.dims = _args.as_int(dims, "dims", fn, minimum=1)
        if self.dims % self.num_groups:
            raise ValueError(
                f"[{fn}] num_groups={self.num_groups} must divide dims={self.dims}."
            )
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
            raise TypeError(f"[{fn}] eps must be a positive float, got {eps!r}.")
        if not eps > 0:
            raise ValueError(f"[{fn}] eps must be positive, got {eps!r}.")
        self.eps = float(eps)
        affine = check_bool(affine, "affine", fn)
        self.pytorch_compatible = check_bool(pytorch_compatible, "pytorch_compatible", fn)
        self.dtype = check_dtype(dtype, "dtype", fn, optional=True)
        self.param_dtype = check_dtype(param_dtype, "param_dtype", fn, optional=False)
        if affine:
            self.weight = nnx.Param(jnp.ones((self.dims,), self.param_dtype))
            self.bias = nnx.Param(jnp.zeros((self.dims,), self.param_dtype))
        else:
            self.weight = _flax_compat.data(None)
            self.bias = _flax_compat.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x if isinstance(x, jax.Array) else jnp.asarray(x)
        _args.check_float_dtype(x.dtype, "input", "GroupNorm")
        if x.ndim < 2 or x.shape[-1] != self.dims:
            raise ValueError(
                f"[GroupNorm] input must have shape (N, *rest, {self.dims}); got input shape "
                f"{tuple(x.shape)}."
            )
        dtype = self.dtype
        if dtype is None:
            dtype = x.dtype if self.weight is None else _args.promote_float(
                x.dtype, self.weight.dtype
            )
        weight = None if self.weight is None else self.weight[...]
        bias = None if self.bias is None else self.bias[...]
        return _group_norm(
            x, weight, bias, self.num_groups, self.eps, self.pytorch_compatible, jnp.dtype(dtype)
        )

    def __repr__(self) -> str:
        return (
            f"GroupNorm({self.num_groups}, {self.dims}, eps={self.eps}, "
            f"affine={self.weight is not None}, pytorch_compatible={self.pytorch_compatible})"
        )


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _group_norm(x, weight, bias, groups, eps, pytorch_compatible, dtype):
    """One compiled program per shape and configuration (eager calls dispatch it once)."""
    stats = _args.promote_float(dtype, jnp.float32)  # statistics in at least float32
    shape, dims = x.shape, x.shape[-1]
    xs = x.astype(stats)
    if pytorch_compatible:
        xs = xs.reshape(shape[0], -1, groups, dims // groups)
        axes = (1, 3)
    else:
        xs = xs.reshape(shape[0], -1, groups)  # channel c lands in group c % groups
        axes = (1,)
    mean = jnp.mean(xs, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xs - mean), axis=axes, keepdims=True)
    y = ((xs - mean) * jax.lax.rsqrt(var + jnp.asarray(eps, stats))).reshape(shape).astype(dtype)
    if weight is None:
        return y
    full = (1,) * (y.ndim - 1) + (dims,)
    return y * weight.astype(dtype).reshape(full) + bias.astype(dtype).reshape(full)
