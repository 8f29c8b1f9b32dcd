"""Pieces shared by the models: the convolution factory, stochastic depth and pooling."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convnn import layers
from convnn.models import _norm

CONVS = ("convnn", "nnx")


class Factory:
    """Builds the layers of one model with one convolution implementation and compute dtype.

    ``conv="convnn"`` gives :class:`convnn.layers.Conv2d` (MLX layout, convnn's lowering policy);
    ``conv="nnx"`` gives ``nnx.Conv`` (Flax's HWIO kernel, plain ``lax``), the baseline the
    benchmarks compare against. Both load the same PyTorch state dict through
    :func:`convnn.interop.load_torch_state_dict`.
    """

    def __init__(self, fn: str, conv: str, dtype: Any, rngs: nnx.Rngs):
        if conv not in CONVS:
            raise ValueError(f"[{fn}] conv must be one of {CONVS}, got {conv!r}.")
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"[{fn}] rngs must be an nnx.Rngs, got {rngs!r}.")
        self.conv_impl, self.dtype, self.rngs = conv, dtype, rngs

    def conv(
        self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1,
        bias: bool = False, *, std: float | None = None,
    ):
        """A ``k x k`` convolution; weights ``normal(0, std)`` (default: Kaiming, fan-out)."""
        if std is None:  # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu")
            std = math.sqrt(2.0 / (cout * k * k))
        init = layers.init.normal(0.0, std)  # drawn flat: the same values, compiled faster
        if self.conv_impl == "convnn":
            return layers.Conv2d(
                cin, cout, k, stride, padding, 1, groups, bias, rngs=self.rngs, dtype=self.dtype,
                kernel_init=init,
            )
        return nnx.Conv(
            cin, cout, (k, k), stride, padding=((padding, padding), (padding, padding)),
            feature_group_count=groups, use_bias=bias, dtype=self.dtype, kernel_init=init,
            rngs=self.rngs,
        )

    def bn(self, c: int, activation: str | None = None, **kwargs):
        """BatchNorm over ``c`` channels, then ``activation`` (``"relu"``, ``"relu6"``,
        ``"silu"`` or None): convnn's, with the activation fused, or Flax's."""
        cls = _norm.BatchNorm2d if self.conv_impl == "convnn" else _norm.FlaxBatchNorm2d
        return cls(c, activation=activation, dtype=self.dtype, rngs=self.rngs, **kwargs)

    def ln(self, c: int, eps: float):
        return _norm.LayerNorm(c, eps=eps, dtype=self.dtype, rngs=self.rngs)

    def linear(self, cin: int, cout: int, **kwargs):
        return _norm.Linear(cin, cout, dtype=self.dtype, rngs=self.rngs, **kwargs)

    def dropout(self, p: float):
        return nnx.Dropout(p, rngs=self.rngs)

    def stochastic_depth(self, p: float):
        """torchvision's ``StochasticDepth(p, "row")``: drop whole samples of a residual branch
        with probability ``p`` and scale the rest by ``1 / (1 - p)``; identity in eval mode."""
        return nnx.Dropout(p, broadcast_dims=(1, 2, 3), rngs=self.rngs)


def _chain(modules) -> list:
    """The modules of a chain, nested ``nnx.Sequential`` and plain blocks (those whose
    ``plain_layers()`` gives their layers: no residual connection) flattened in order."""
    out = []
    for m in modules:
        plain = getattr(m, "plain_layers", None)
        inner = plain() if plain is not None else None
        inner = m if inner is None else inner
        if isinstance(inner, nnx.Sequential):
            out += _chain(inner.layers)
        else:
            out.append(inner)
    return out


def _fuses(bn, conv) -> bool:
    """A convnn BatchNorm feeding a depthwise convnn convolution: the kernels that run it can
    apply the BatchNorm as they load the input (docs/layers.md, "Fusing a BatchNorm into the
    next convolution")."""
    return (isinstance(bn, layers.BatchNorm) and isinstance(conv, layers.Conv2d)
            and conv.groups == conv.in_channels == conv.out_channels)


def run_chain(modules, x: jax.Array) -> jax.Array:
    """Applies ``modules`` in order (as ``nnx.Sequential`` would; nested ones and plain blocks
    flattened), each convnn BatchNorm that feeds a depthwise convolution handed to it as its
    ``prologue`` (``conv(x, prologue=bn.prologue(x))``) instead of being applied on its own.
    The ``nnx`` form of a model has no such pair and runs as ``nnx.Sequential``."""
    chain = _chain(modules)
    i = 0
    while i < len(chain):
        if i + 1 < len(chain) and _fuses(chain[i], chain[i + 1]):
            x = chain[i + 1](x, prologue=chain[i].prologue(x))
            i += 2
        else:
            x = chain[i](x)
            i += 1
    return x


def global_avg_pool(x: jax.Array) -> jax.Array:
    """``AdaptiveAvgPool2d(1)`` + ``flatten(1)`` on NHWC input: ``(N, H, W, C) -> (N, C)``."""
    return jnp.mean(x, axis=(1, 2))


def flatten(x: jax.Array) -> jax.Array:
    """``(N, ...) -> (N, prod(...))``; the size written out, since an empty batch has none to
    infer."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def identity(x: jax.Array) -> jax.Array:
    """Stands where torchvision permutes NCHW to NHWC and back (inputs here are NHWC already);
    it keeps the ``nn.Sequential`` indices, and so the state-dict keys, of torchvision."""
    return x


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: round channels to a multiple of ``divisor``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v
