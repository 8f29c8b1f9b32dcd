"""Normalization layers with MLX's semantics: ``BatchNorm``, ``LayerNorm``, ``RMSNorm``,
``InstanceNorm`` and ``GroupNorm`` (with MLX's channel grouping)."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convnn import _args, _flax_compat
from convnn._lowering import Prologue
from convnn._lowering._prologue import ACTIVATIONS, activation_tangent
from convnn.layers._activations import relu, relu6, silu
from convnn.layers._common import as_input, compute_dtype, expand
from convnn.layers._conv import check_dtype
from convnn.layers._module import Module

__all__ = ["GroupNorm", "BatchNorm", "LayerNorm", "RMSNorm", "InstanceNorm"]


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
        self.eps = _args.check_positive_float(eps, "eps", fn)
        affine = _args.check_bool(affine, "affine", fn)
        self.pytorch_compatible = _args.check_bool(pytorch_compatible, "pytorch_compatible", fn)
        self.dtype = check_dtype(dtype, "dtype", fn, optional=True)
        self.param_dtype = check_dtype(param_dtype, "param_dtype", fn, optional=False)
        if affine:
            self.weight = nnx.Param(jnp.ones((self.dims,), self.param_dtype))
            self.bias = nnx.Param(jnp.zeros((self.dims,), self.param_dtype))
        else:
            self.weight = _flax_compat.data(None)
            self.bias = _flax_compat.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _args.as_array(x, "input", "GroupNorm")
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
        # Sizes written out, not -1: an empty batch has no size to infer.
        xs = xs.reshape(shape[0], math.prod(shape[1:-1]), groups, dims // groups)
        axes = (1, 3)
    else:  # channel c lands in group c % groups
        xs = xs.reshape(shape[0], math.prod(shape[1:]) // groups, groups)
        axes = (1,)
    mean = jnp.mean(xs, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xs - mean), axis=axes, keepdims=True)
    y = ((xs - mean) * jax.lax.rsqrt(var + jnp.asarray(eps, stats))).reshape(shape).astype(dtype)
    if weight is None:
        return y
    full = (1,) * (y.ndim - 1) + (dims,)
    return y * weight.astype(dtype).reshape(full) + bias.astype(dtype).reshape(full)


def _stats_dtype(dtype: Any) -> Any:
    return _args.promote_float(dtype, jnp.float32)  # statistics in at least float32


def _affine(y: jax.Array, weight: Any, bias: Any) -> jax.Array:
    if weight is not None:
        y = y * expand(weight[...].astype(y.dtype), y.ndim)
    if bias is not None:
        y = y + expand(bias[...].astype(y.dtype), y.ndim)
    return y


def _check_last(x: jax.Array, dims: int, fn: str, min_ndim: int = 1) -> None:
    if x.ndim < min_ndim or x.shape[-1] != dims:
        lead = "N, *rest, " if min_ndim >= 2 else "..., "
        raise ValueError(
            f"[{fn}] input must have shape ({lead}{dims}) with at least {min_ndim} "
            f"{'axis' if min_ndim == 1 else 'axes'}; got "
            f"input shape {tuple(x.shape)}."
        )


class LayerNorm(Module):
    """Normalizes over the last axis, as ``mlx.nn.LayerNorm``:
    ``(x - mean) / sqrt(var + eps) * weight + bias`` (biased variance).

    Args:
      dims: size of the last axis.
      eps: added to the variance. Default 1e-5 (``nnx.LayerNorm``'s is 1e-6).
      affine: learn ``weight`` (ones). Default True.
      bias: with ``affine``, learn ``bias`` (zeros). Default True.

    Statistics are computed in at least float32; the output has the dtype of the input promoted
    with the parameters'.

    Raises:
      TypeError: on a non-integer ``dims``, non-bool flags or a non-numeric ``eps``.
      ValueError: on non-positive ``dims`` or ``eps``; when called, on an input whose last axis is
        not ``dims``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> ln = nn.LayerNorm(4)
      >>> ln
      LayerNorm(4, eps=1e-05, affine=True)
      >>> [round(v, 3) for v in ln(jnp.array([1.0, 2.0, 3.0, 4.0])).tolist()]
      [-1.342, -0.447, 0.447, 1.342]
    """

    def __init__(self, dims: int, eps: float = 1e-5, affine: bool = True, bias: bool = True):
        super().__init__()
        fn = "LayerNorm"
        self.dims = _args.as_int(dims, "dims", fn, minimum=1)
        self.eps = _args.check_positive_float(eps, "eps", fn)
        if _args.check_bool(affine, "affine", fn):
            self.weight = jnp.ones((self.dims,), jnp.float32)
            if _args.check_bool(bias, "bias", fn):
                self.bias = jnp.zeros((self.dims,), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = as_input(x, "LayerNorm")
        _check_last(x, self.dims, "LayerNorm")
        weight = self.weight if "weight" in self else None
        bias = self.bias if "bias" in self else None
        dtype = compute_dtype(x, weight, bias)
        xs = x.astype(_stats_dtype(dtype))
        mean = jnp.mean(xs, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xs - mean), axis=-1, keepdims=True)
        y = ((xs - mean) * jax.lax.rsqrt(var + jnp.asarray(self.eps, xs.dtype))).astype(dtype)
        return _affine(y, weight, bias)

    def __repr__(self) -> str:
        return f"LayerNorm({self.dims}, eps={self.eps}, affine={'weight' in self})"


class RMSNorm(Module):
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axis, as ``mlx.nn.RMSNorm``.

    Args:
      dims: size of the last axis.
      eps: added to the mean square. Default 1e-5.

    The mean is accumulated in at least float32, as in MLX.

    Raises:
      TypeError: on a non-integer ``dims`` or a non-numeric ``eps``.
      ValueError: on non-positive ``dims`` or ``eps``; when called, on an input whose last axis is
        not ``dims``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> [round(v, 3) for v in nn.RMSNorm(2)(jnp.array([3.0, 4.0])).tolist()]
      [0.849, 1.131]
    """

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        fn = "RMSNorm"
        dims = _args.as_int(dims, "dims", fn, minimum=1)
        self.eps = _args.check_positive_float(eps, "eps", fn)
        self.weight = jnp.ones((dims,), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = as_input(x, "RMSNorm")
        _check_last(x, self.weight.shape[0], "RMSNorm")
        dtype = compute_dtype(x, self.weight)
        xs = x.astype(_stats_dtype(dtype))
        ms = jnp.mean(jnp.square(xs), axis=-1, keepdims=True)
        y = (xs * jax.lax.rsqrt(ms + jnp.asarray(self.eps, xs.dtype))).astype(dtype)
        return _affine(y, self.weight, None)

    def __repr__(self) -> str:
        return f"RMSNorm({self.weight.shape[0]}, eps={self.eps})"


class InstanceNorm(Module):
    """Normalizes each sample and channel over the spatial axes of ``(N, *spatial, dims)``, as
    ``mlx.nn.InstanceNorm`` (biased variance).

    Args:
      dims: number of channels (the last axis).
      eps: added to the variance. Default 1e-5.
      affine: learn ``weight`` (ones) and ``bias`` (zeros). Default False (as MLX).

    Raises:
      TypeError: on a non-integer ``dims``, a non-bool ``affine`` or a non-numeric ``eps``.
      ValueError: on non-positive ``dims`` or ``eps``; when called, on an input with fewer than 3
        axes or whose last axis is not ``dims``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> x = jnp.array([[[0.0, 5.0], [2.0, 5.0]]])  # (N=1, W=2, C=2)
      >>> [round(v, 3) for v in nn.InstanceNorm(2)(x)[0, :, 0].tolist()]
      [-1.0, 1.0]
    """

    def __init__(self, dims: int, eps: float = 1e-5, affine: bool = False):
        super().__init__()
        fn = "InstanceNorm"
        self.dims = _args.as_int(dims, "dims", fn, minimum=1)
        self.eps = _args.check_positive_float(eps, "eps", fn)
        if _args.check_bool(affine, "affine", fn):
            self.weight = jnp.ones((self.dims,), jnp.float32)
            self.bias = jnp.zeros((self.dims,), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = as_input(x, "InstanceNorm")
        _check_last(x, self.dims, "InstanceNorm", min_ndim=3)
        weight = self.weight if "weight" in self else None
        bias = self.bias if "bias" in self else None
        dtype = compute_dtype(x, weight, bias)
        xs = x.astype(_stats_dtype(dtype))
        axes = tuple(range(1, x.ndim - 1))
        mean = jnp.mean(xs, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(xs - mean), axis=axes, keepdims=True)
        y = ((xs - mean) * jax.lax.rsqrt(var + jnp.asarray(self.eps, xs.dtype))).astype(dtype)
        return _affine(y, weight, bias)

    def __repr__(self) -> str:
        return f"InstanceNorm({self.dims}, eps={self.eps}, affine={'weight' in self})"


# The activations BatchNorm can fuse (those a convolution's prologue applies): MLX's functions
# (layers/_activations.py) by name.
_FUSED = {"relu": relu, "relu6": relu6, "silu": silu}
_BN_ACTIVATIONS = (None, *ACTIVATIONS)


def _activate(y: jax.Array, activation: str | None) -> jax.Array:
    return y if activation is None else _FUSED[activation](y)


def _batch_stats(xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over every axis but the last (kept as size-1 axes), in one pass.

    The values are shifted by the first sample of each channel first, so that the one-pass
    formula ``E[d^2] - E[d]^2`` does not cancel catastrophically when the mean is large against
    the spread (the unshifted form, Flax's ``use_fast_variance``, does).
    """
    axes = tuple(range(xs.ndim - 1))
    shift = jax.lax.stop_gradient(xs[(slice(0, 1),) * (xs.ndim - 1)])
    d = xs - shift
    m1 = jnp.mean(d, axes, keepdims=True)
    var = jnp.maximum(jnp.mean(d * d, axes, keepdims=True) - m1 * m1, 0)
    return shift + m1, var


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x, weight, bias, eps, activation, dtype):
    """Training-mode batch norm with an optional activation: ``(act(y), mean, var)``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the batch mean and biased variance
    over every axis but the last, computed in ``promote(dtype, float32)``; ``act(y)`` is returned
    in ``dtype``, the statistics with shape ``(C,)``. The derivative rule is written out (below)
    rather than traced through the statistics: its transpose, the backward pass, is one
    reduction (``sum(g)`` and ``sum(g * x)`` per channel) and one elementwise pass that reads
    ``x`` and recomputes ``y``. It is a ``custom_jvp``, so forward mode and higher derivatives
    work too.
    """
    z, mean, var = _batch_norm_train(x, weight, bias, eps, activation, dtype)[:3]
    return z, mean.reshape(-1), var.reshape(-1)


def _batch_norm_train(x, weight, bias, eps, activation, dtype):
    stats = _stats_dtype(dtype)
    xs = x.astype(stats)
    mean, var = _batch_stats(xs)
    inv = jax.lax.rsqrt(var + jnp.asarray(eps, stats))
    a = expand(weight.astype(stats), x.ndim) * inv
    c = expand(bias.astype(stats), x.ndim) - mean * a
    y = xs * a + c
    return _activate(y, activation).astype(dtype), mean, var, xs, y, a, inv


@batch_norm_train.defjvp
def _batch_norm_train_jvp(eps, activation, dtype, primals, tangents):
    x, weight, bias = primals
    tx, tw, tb = tangents
    z, mean, var, xs, y, a, inv = _batch_norm_train(x, weight, bias, eps, activation, dtype)
    axes = tuple(range(x.ndim - 1))
    stats = xs.dtype
    txs = tx.astype(stats)
    tmean = jnp.mean(txs, axes, keepdims=True)
    half_tvar = jnp.mean(txs * xs, axes, keepdims=True) - mean * tmean
    # y = x * a + (bias - mean * a), a = weight * inv; every full-size term below is ``x`` or
    # ``tx`` times a per-channel vector, so the backward pass reads ``x`` and nothing saved.
    k = expand(tw.astype(stats), x.ndim) * inv - a * inv * inv * half_tvar
    ty = a * txs + k * xs + (expand(tb.astype(stats), x.ndim) - a * tmean - k * mean)
    tz = activation_tangent(y, ty, activation).astype(dtype)
    primal = (z, mean.reshape(-1), var.reshape(-1))
    return primal, (tz, tmean.reshape(-1), 2 * half_tvar.reshape(-1))


class BatchNorm(Module):
    """Batch normalization over channels-last ``(N, *rest, num_features)``, as
    ``mlx.nn.BatchNorm``, with MLX's (and PyTorch's) running statistics.

    In training mode (the default; see :meth:`Module.train`), the input is normalized with the
    batch mean and *biased* variance over every axis but the last, and with
    ``track_running_stats`` the statistics are updated as MLX does::

        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * unbiased_var

    (``unbiased_var`` divides by ``n - 1``, ``n`` values per channel). In evaluation mode the
    running statistics normalize; without ``track_running_stats`` the batch statistics always do.
    ``nnx.BatchNorm``'s momentum runs the other way (``momentum=0.9`` there is 0.1 here) and its
    running variance is the biased one.

    Args:
      num_features: number of channels (the last axis).
      eps: added to the variance. Default 1e-5.
      momentum: weight of the batch statistics in the update. Default 0.1.
      affine: learn ``weight`` (ones) and ``bias`` (zeros). Default True.
      track_running_stats: keep ``running_mean`` (zeros) and ``running_var`` (ones) as
        ``nnx.BatchStat`` variables (never trained, like MLX's frozen arrays). Default True.
      activation: keyword-only; ``"relu"``, ``"relu6"`` or ``"silu"`` applied to the output in
        the same pass over memory (in training, its derivative too), as a separate activation
        layer after it would be but without a second pass. Default None. MLX has no such option.
      dtype: keyword-only; the compute and output dtype (for example ``jnp.bfloat16`` in a
        model computing in bfloat16 with float32 parameters). Default None: MLX's promotion of
        the input's dtype with the parameters'. Statistics are always at least float32.

    Differences from MLX: inputs of any rank of at least 2 are accepted (MLX: 2 to 4); statistics
    are computed in at least float32, in one pass over the input (shifted by each channel's
    first value, so a large mean does not cancel the variance away); the derivative is written
    out (:func:`batch_norm_train`) so that XLA reads the input once per pass (faster training
    steps: docs/benchmarks.md).

    Raises:
      TypeError: on a non-integer ``num_features``, non-bool flags or non-numeric floats.
      ValueError: on non-positive ``num_features`` or ``eps``, or ``momentum`` outside [0, 1];
        when called, on an input with the wrong channel count, or in training mode with one value
        per channel.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> bn = nn.BatchNorm(1)
      >>> [round(v, 3) for v in bn(jnp.array([[1.0], [3.0]]))[:, 0].tolist()]
      [-1.0, 1.0]
      >>> round(float(bn.running_mean[0]), 6), round(float(bn.running_var[0]), 6)
      (0.2, 1.1)
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        activation: str | None = None,
        dtype: Any = None,
    ):
        super().__init__()
        fn = "BatchNorm"
        if activation is not None and not isinstance(activation, str):
            raise TypeError(
                f"[{fn}] activation must be None or one of {_BN_ACTIVATIONS[1:]}, got "
                f"{activation!r} of type {type(activation).__name__}."
            )
        if activation not in _BN_ACTIVATIONS:
            raise ValueError(
                f"[{fn}] activation must be one of {_BN_ACTIVATIONS}, got {activation!r}."
            )
        self.activation = activation
        self.dtype = check_dtype(dtype, "dtype", fn, optional=True)
        self.num_features = _args.as_int(num_features, "num_features", fn, minimum=1)
        self.eps = _args.check_positive_float(eps, "eps", fn)
        self.momentum = _args.check_real(momentum, "momentum", fn, expect="a float in [0, 1]")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"[{fn}] momentum must be in [0, 1], got {momentum!r}.")
        self.track_running_stats = _args.check_bool(track_running_stats, "track_running_stats", fn)
        if _args.check_bool(affine, "affine", fn):
            self.weight = jnp.ones((self.num_features,), jnp.float32)
            self.bias = jnp.zeros((self.num_features,), jnp.float32)
        if self.track_running_stats:
            self.running_mean = nnx.BatchStat(jnp.zeros((self.num_features,), jnp.float32))
            self.running_var = nnx.BatchStat(jnp.ones((self.num_features,), jnp.float32))

    @property
    def use_running_average(self) -> bool:
        """``not training`` (the attribute ``nnx.Module.eval`` / ``train`` set)."""
        return not self._training

    @use_running_average.setter
    def use_running_average(self, value: bool) -> None:
        self._training = not value

    def _operands(self, x: Any, fn: str):
        """The checked input, the affine parameters (constants without ``affine``), the compute
        dtype, and whether the batch statistics normalise (else the running ones)."""
        x = as_input(x, fn)
        _check_last(x, self.num_features, fn, min_ndim=2)
        weight = self.weight[...] if "weight" in self else None
        bias = self.bias[...] if "bias" in self else None
        dtype = self.dtype if self.dtype is not None else compute_dtype(x, weight, bias)
        if weight is None:  # constants: their tangents are zeros that XLA folds away
            weight = jnp.ones((self.num_features,), jnp.float32)
            bias = jnp.zeros((self.num_features,), jnp.float32)
        batch = self.training or not self.track_running_stats
        if self.training and math.prod(x.shape[:-1]) <= 1:
            # No variance (PyTorch's rule; also for no values).
            raise ValueError(
                f"[{fn}] training needs more than one value per channel; got input shape "
                f"{tuple(x.shape)}."
            )
        return x, weight, bias, dtype, batch

    def _update(self, x: jax.Array, mean: jax.Array, var: jax.Array) -> None:
        """In training, moves the running statistics towards the batch's ``mean`` and biased
        ``var`` (``(C,)``)."""
        if self.training and self.track_running_stats:
            n = math.prod(x.shape[:-1])
            mu = self.momentum
            rm, rv = self.running_mean, self.running_var
            unbiased = var * (n / max(n - 1, 1))
            self.running_mean = (1 - mu) * rm[...] + mu * mean.astype(rm.dtype)
            self.running_var = (1 - mu) * rv[...] + mu * unbiased.astype(rv.dtype)

    def _running_affine(self, weight, bias, stats):
        inv = jax.lax.rsqrt(self.running_var[...].astype(stats) + jnp.asarray(self.eps, stats))
        a = weight.astype(stats) * inv
        return a, bias.astype(stats) - self.running_mean[...].astype(stats) * a

    def __call__(self, x: jax.Array) -> jax.Array:
        x, weight, bias, dtype, batch = self._operands(x, "BatchNorm")
        if batch:
            y, mean, var = batch_norm_train(x, weight, bias, self.eps, self.activation, dtype)
            self._update(x, mean, var)
            return y
        stats = _stats_dtype(dtype)
        a, c = self._running_affine(weight, bias, stats)
        y = x.astype(stats) * expand(a, x.ndim) + expand(c, x.ndim)
        return _activate(y, self.activation).astype(dtype)

    def prologue(self, x: jax.Array) -> Prologue:
        """This layer as the :class:`convnn.Prologue` of the convolution that reads its output.

        ``conv(x, prologue=bn.prologue(x))`` equals ``conv(bn(x))`` (up to the rounding of the
        normalised values to the compute dtype, which a fused prologue skips) and updates the
        running statistics as ``bn(x)`` does: the statistics of ``x`` in training, the running
        ones in evaluation, folded into a per-channel ``scale = weight / sqrt(var + eps)`` and
        ``shift = bias - mean * scale`` (float32), with this layer's ``activation``. Where the
        convolution fuses it (the Pallas depthwise kernels on NVIDIA GPUs), the normalised
        tensor is never written to memory or read back (docs/layers.md, "Fusing a BatchNorm
        into the next convolution").

        Args:
          x: ``(N, *rest, num_features)``, the input this layer would normalise.

        Returns:
          A :class:`convnn.Prologue` with ``(num_features,)`` arrays.

        Example:
          >>> import jax.numpy as jnp, convnn.layers as nn
          >>> from flax import nnx
          >>> bn = nn.BatchNorm(2, activation="relu")
          >>> conv = nn.Conv2d(2, 2, 3, padding=1, groups=2, rngs=nnx.Rngs(0))
          >>> x = jnp.arange(32.0).reshape(1, 4, 4, 2)
          >>> bool(jnp.allclose(conv(x, prologue=bn.prologue(x)), conv(nn.BatchNorm(
          ...     2, activation="relu")(x)), atol=1e-5))
          True
        """
        x, weight, bias, dtype, batch = self._operands(x, "BatchNorm.prologue")
        stats = _stats_dtype(dtype)
        if batch:
            mean, var = (v.reshape(-1) for v in _batch_stats(x.astype(stats)))
            self._update(x, mean, var)
            scale = weight.astype(stats) * jax.lax.rsqrt(var + jnp.asarray(self.eps, stats))
            shift = bias.astype(stats) - mean * scale
        else:
            scale, shift = self._running_affine(weight, bias, stats)
        return Prologue(scale, shift, self.activation)

    def __repr__(self) -> str:
        return (
            f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={'weight' in self}, track_running_stats={self.track_running_stats}"
            + (f", activation={self.activation!r}" if self.activation else "")
            + (f", dtype={self.dtype.name}" if self.dtype is not None else "") + ")"
        )
