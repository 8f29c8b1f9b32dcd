"""EfficientNet-B0 (torchvision's ``efficientnet_b0``)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convnn.models._common import Factory, global_avg_pool, make_divisible, run_chain
from convnn.models.mobilenet import conv_bn_act

__all__ = ["B0_SETTING", "EfficientNet", "MBConv", "SqueezeExcitation", "efficientnet_b0"]

# torchvision's efficientnet_b0: (expand_ratio, kernel, stride, in, out, num_layers) per stage.
B0_SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
              (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
              (6, 3, 1, 192, 320, 1))


class SqueezeExcitation(nnx.Module):
    """torchvision's ``SqueezeExcitation``: global pool, 1x1 conv, SiLU, 1x1 conv, sigmoid gate."""

    def __init__(self, f: Factory, channels: int, squeeze: int):
        self.fc1 = f.conv(channels, squeeze, 1, bias=True)
        self.fc2 = f.conv(squeeze, channels, 1, bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.fc2(jax.nn.silu(self.fc1(s)))
        return x * jax.nn.sigmoid(s)


class MBConv(nnx.Module):
    """1x1 expansion, ``k x k`` depthwise, squeeze-excitation, 1x1 projection, stochastic depth."""

    def __init__(
        self, f: Factory, expand_ratio: int, kernel: int, stride: int, cin: int, cout: int,
        stochastic_depth_prob: float,
    ):
        self.use_res_connect = stride == 1 and cin == cout
        expanded = make_divisible(cin * expand_ratio)
        parts: list[Any] = []
        if expanded != cin:
            parts.append(conv_bn_act(f, cin, expanded, 1, activation="silu"))
        parts += [
            conv_bn_act(f, expanded, expanded, kernel, stride, expanded, activation="silu"),
            SqueezeExcitation(f, expanded, max(1, cin // 4)),
            conv_bn_act(f, expanded, cout, 1, activation=None),
        ]
        self.block = nnx.Sequential(*parts)
        self.stochastic_depth = f.stochastic_depth(stochastic_depth_prob)

    def plain_layers(self) -> nnx.Sequential | None:
        """The layers, when the block is a plain chain of them (no residual connection)."""
        return None if self.use_res_connect else self.block

    def __call__(self, x: jax.Array) -> jax.Array:
        y = run_chain(self.block.layers, x)
        return self.stochastic_depth(y) + x if self.use_res_connect else y


class EfficientNet(nnx.Module):
    """torchvision's ``EfficientNet`` (B-series) on NHWC input, with its state-dict keys.

    Train it with a step that is not host-bound: ``nnx.split`` once and ``jax.jit`` a step over
    the state (docs/training-step.md); ``model.train()`` / ``model.eval()`` switch the modes.

    Args:
      setting: ``(expand_ratio, kernel, stride, in, out, num_layers)`` per stage.
      dropout: dropout before the head.
      stochastic_depth_prob: the drop probability reached at the last block. Default 0.2.
      num_classes: size of the head. Default 1000.
      rngs: an ``nnx.Rngs`` (``params``, and ``dropout`` in training).
      conv: ``"convnn"`` (default: convnn's layers) or ``"nnx"`` (``nnx.Conv`` and
        ``nnx.BatchNorm``, the all-Flax baseline).
      dtype: compute dtype; parameters stay float32.
    """

    def __init__(
        self, setting, dropout: float, stochastic_depth_prob: float = 0.2,
        num_classes: int = 1000, *, rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None,
    ):
        f = Factory(type(self).__name__, conv, dtype, rngs)
        feats: list[Any] = [conv_bn_act(f, 3, setting[0][3], 3, 2, activation="silu")]
        total = sum(s[5] for s in setting)
        block_id = 0
        for expand, k, stride, cin, cout, n in setting:
            stage = []
            for i in range(n):
                sd = stochastic_depth_prob * block_id / total
                stage.append(
                    MBConv(f, expand, k, stride if i == 0 else 1, cin if i == 0 else cout, cout, sd)
                )
                block_id += 1
            feats.append(nnx.Sequential(*stage))
        last_in = setting[-1][4]
        feats.append(conv_bn_act(f, last_in, 4 * last_in, 1, activation="silu"))
        self.features = nnx.Sequential(*feats)
        bound = 1.0 / math.sqrt(num_classes)  # torchvision: uniform(-1/sqrt(out), 1/sqrt(out))
        uniform = nnx.initializers.uniform(2 * bound)
        self.classifier = nnx.Sequential(
            f.dropout(dropout),
            f.linear(
                4 * last_in, num_classes, kernel_init=lambda k, s, d: uniform(k, s, d) - bound
            ),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        # Each BatchNorm that feeds a depthwise convolution runs as its prologue (run_chain).
        return self.classifier(global_avg_pool(run_chain(self.features.layers, x)))


def efficientnet_b0(
    num_classes: int = 1000, *, rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None
):
    """EfficientNet-B0 (torchvision ``efficientnet_b0``: dropout 0.2, stochastic depth 0.2).

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from convnn.models import efficientnet_b0
      >>> model = nnx.eval_shape(lambda: efficientnet_b0(rngs=nnx.Rngs(0)))  # shapes only
      >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))  # as torchvision
      5288548
    """
    return EfficientNet(B0_SETTING, 0.2, num_classes=num_classes, rngs=rngs, conv=conv, dtype=dtype)
