"""ConvNeXt-T (torchvision's ``convnext_tiny``)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convnn.models._common import Factory, flatten, global_avg_pool, identity

__all__ = ["ConvNeXt", "CNBlock", "convnext_tiny"]

_gelu = functools.partial(jax.nn.gelu, approximate=False)  # torch.nn.GELU()'s exact form
_INIT = nnx.initializers.truncated_normal(0.02)


class CNBlock(nnx.Module):
    """7x7 depthwise convolution, LayerNorm, MLP (4x), layer scale, stochastic depth, residual.

    ``block`` keeps torchvision's seven entries (the two permutes are identities on NHWC input),
    and ``layer_scale`` its ``(dim, 1, 1)`` shape, so torchvision's keys and shapes load as they
    are.
    """

    def __init__(self, f: Factory, dim: int, layer_scale: float, stochastic_depth_prob: float):
        self.block = nnx.Sequential(
            f.conv(dim, dim, 7, 1, 3, groups=dim, bias=True, std=0.02),
            identity,
            f.ln(dim, 1e-6),
            f.linear(dim, 4 * dim, kernel_init=_INIT),
            _gelu,
            f.linear(4 * dim, dim, kernel_init=_INIT),
            identity,
        )
        self.layer_scale = nnx.Param(jnp.full((dim, 1, 1), layer_scale, jnp.float32))
        self.stochastic_depth = f.stochastic_depth(stochastic_depth_prob)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.block(x)
        scale = self.layer_scale[...].reshape((1,) * (y.ndim - 1) + (-1,))  # (C,1,1) -> NHWC
        y = scale.astype(y.dtype) * y
        return self.stochastic_depth(y) + x


class ConvNeXt(nnx.Module):
    """torchvision's ``ConvNeXt`` on NHWC input, with its attribute names and state-dict keys.

    Train it with a step that is not host-bound: ``nnx.split`` once and ``jax.jit`` a step over
    the state (docs/training-step.md); ``model.train()`` / ``model.eval()`` switch the modes.

    Args:
      block_setting: ``(input_channels, out_channels or None, num_layers)`` per stage.
      stochastic_depth_prob: the last block's drop probability (linear in the block index).
      layer_scale: initial value of each block's ``layer_scale``. Default 1e-6.
      num_classes: size of the head. Default 1000.
      rngs: an ``nnx.Rngs`` (``params``, and ``dropout`` for stochastic depth in training).
      conv: ``"convnn"`` (default: convnn's layers) or ``"nnx"`` (``nnx.Conv``, the all-Flax
        baseline).
      dtype: compute dtype; parameters stay float32.
    """

    def __init__(
        self, block_setting, stochastic_depth_prob: float = 0.0, layer_scale: float = 1e-6,
        num_classes: int = 1000, *, rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None,
    ):
        f = Factory(type(self).__name__, conv, dtype, rngs)
        first = block_setting[0][0]
        feats: list[Any] = [
            nnx.Sequential(f.conv(3, first, 4, 4, 0, bias=True, std=0.02), f.ln(first, 1e-6))
        ]
        total = sum(n for _, _, n in block_setting)
        block_id = 0
        for cin, cout, n in block_setting:
            stage = []
            for _ in range(n):
                sd_prob = stochastic_depth_prob * block_id / (total - 1.0)
                stage.append(CNBlock(f, cin, layer_scale, sd_prob))
                block_id += 1
            feats.append(nnx.Sequential(*stage))
            if cout is not None:
                feats.append(
                    nnx.Sequential(f.ln(cin, 1e-6), f.conv(cin, cout, 2, 2, bias=True, std=0.02))
                )
        self.features = nnx.Sequential(*feats)
        last = block_setting[-1][1] or block_setting[-1][0]
        self.classifier = nnx.Sequential(
            f.ln(last, 1e-6), flatten, f.linear(last, num_classes, kernel_init=_INIT)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.classifier(global_avg_pool(self.features(x)))


def convnext_tiny(
    num_classes: int = 1000, *, rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None,
    stochastic_depth_prob: float = 0.1,
):
    """ConvNeXt-T (torchvision ``convnext_tiny``): stages ``96, 192, 384, 768`` x ``3, 3, 9, 3``.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from convnn.models import convnext_tiny
      >>> model = nnx.eval_shape(lambda: convnext_tiny(rngs=nnx.Rngs(0)))  # shapes only
      >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))  # as torchvision
      28589128
    """
    setting = ((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3))
    return ConvNeXt(
        setting, stochastic_depth_prob, num_classes=num_classes, rngs=rngs, conv=conv, dtype=dtype
    )
