"""MobileNetV2 (torchvision's ``mobilenet_v2``)."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from convnn.models._common import Factory, global_avg_pool, make_divisible, run_chain

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenet_v2"]


def conv_bn_act(f: Factory, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                activation: str | None = "relu6"):
    """torchvision's ``Conv2dNormActivation``: convolution (no bias), BatchNorm, activation (the
    BatchNorm applies it: torchvision's third, parameter-free entry is folded into the second)."""
    conv = f.conv(cin, cout, k, stride, (k - 1) // 2, groups)
    return nnx.Sequential(conv, f.bn(cout, activation))


class InvertedResidual(nnx.Module):
    """1x1 expansion (unless ``expand_ratio == 1``), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, f: Factory, inp: int, oup: int, stride: int, expand_ratio: int):
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        parts: list[Any] = []
        if expand_ratio != 1:
            parts.append(conv_bn_act(f, inp, hidden, 1))
        parts += [
            conv_bn_act(f, hidden, hidden, 3, stride, groups=hidden),
            f.conv(hidden, oup, 1),
            f.bn(oup),
        ]
        self.conv = nnx.Sequential(*parts)

    def plain_layers(self) -> nnx.Sequential | None:
        """The layers, when the block is a plain chain of them (no residual connection)."""
        return None if self.use_res_connect else self.conv

    def __call__(self, x: jax.Array) -> jax.Array:
        y = run_chain(self.conv.layers, x)
        return x + y if self.use_res_connect else y


class MobileNetV2(nnx.Module):
    """torchvision's ``MobileNetV2`` on NHWC input, with its attribute names and state-dict keys.

    Train it with a step that is not host-bound: ``nnx.split`` once and ``jax.jit`` a step over
    the state (docs/training-step.md); ``model.train()`` / ``model.eval()`` switch the modes.

    Args:
      num_classes: size of the head. Default 1000.
      width_mult: channel multiplier. Default 1.0.
      dropout: dropout before the head. Default 0.2.
      rngs: an ``nnx.Rngs`` (``params``, and ``dropout`` in training).
      conv: ``"convnn"`` (default: convnn's layers) or ``"nnx"`` (``nnx.Conv`` and
        ``nnx.BatchNorm``, the all-Flax baseline).
      dtype: compute dtype; parameters stay float32.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from convnn.models import mobilenet_v2
      >>> model = nnx.eval_shape(lambda: mobilenet_v2(rngs=nnx.Rngs(0)))  # shapes only
      >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))  # as torchvision
      3504872
    """

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))  # expand ratio t, channels c, blocks n, stride s

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2, *,
        rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None,
    ):
        f = Factory(type(self).__name__, conv, dtype, rngs)
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        feats: list[Any] = [conv_bn_act(f, 3, cin, stride=2)]
        for t, c, n, s in self.SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(f, cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(conv_bn_act(f, cin, last, 1))
        self.features = nnx.Sequential(*feats)
        self.classifier = nnx.Sequential(
            f.dropout(dropout),
            f.linear(last, num_classes, kernel_init=nnx.initializers.normal(0.01)),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        # Each BatchNorm that feeds a depthwise convolution runs as its prologue (run_chain).
        return self.classifier(global_avg_pool(run_chain(self.features.layers, x)))


def mobilenet_v2(
    num_classes: int = 1000, *, rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None
):
    """MobileNetV2 (torchvision ``mobilenet_v2``, width 1.0); see :class:`MobileNetV2`."""
    return MobileNetV2(num_classes, rngs=rngs, conv=conv, dtype=dtype)
