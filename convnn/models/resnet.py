"""ResNet-18 and ResNet-50 (torchvision's ``resnet18``/``resnet50``, ResNet v1.5)."""

from __future__ import annotations

import math
from typing import Any

import jax
from flax import nnx

from convnn import layers
from convnn.models._common import Factory, global_avg_pool

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet50"]


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, f: Factory, inplanes: int, planes: int, stride: int = 1, downsample=None):
        self.conv1 = f.conv(inplanes, planes, 3, stride, 1)
        self.bn1 = f.bn(planes, "relu")
        self.conv2 = f.conv(planes, planes, 3, 1, 1)
        self.bn2 = f.bn(planes)
        self.downsample = downsample

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        return nnx.relu(out + identity)


class Bottleneck(nnx.Module):
    """1x1, 3x3 (strided, v1.5), 1x1 convolutions with a residual connection (ResNet-50+)."""

    expansion = 4

    def __init__(self, f: Factory, inplanes: int, planes: int, stride: int = 1, downsample=None):
        self.conv1 = f.conv(inplanes, planes, 1)
        self.bn1 = f.bn(planes, "relu")
        self.conv2 = f.conv(planes, planes, 3, stride, 1)
        self.bn2 = f.bn(planes, "relu")
        self.conv3 = f.conv(planes, planes * 4, 1)
        self.bn3 = f.bn(planes * 4)
        self.downsample = downsample

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        return nnx.relu(out + identity)


class ResNet(nnx.Module):
    """torchvision's ``ResNet`` on NHWC input, with its attribute names (so its state-dict keys).

    Args:
      block: :class:`BasicBlock` or :class:`Bottleneck`.
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      num_classes: size of the ``fc`` head. Default 1000.
      rngs: an ``nnx.Rngs`` for the initial parameters.
      conv: ``"convnn"`` (default: :class:`convnn.layers.Conv2d` and
        :class:`convnn.layers.BatchNorm`) or ``"nnx"`` (``nnx.Conv`` and ``nnx.BatchNorm``).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32. Default ``None``:
        the input's dtype.

    Input ``(N, H, W, 3)``; output logits ``(N, num_classes)`` in the compute dtype.
    Train it with a step that is not host-bound: ``nnx.split`` once and ``jax.jit`` a step over
    the state (docs/training-step.md); ``model.train()`` / ``model.eval()`` switch the modes.
    """

    def __init__(
        self, block: type, stage_sizes: tuple[int, ...], num_classes: int = 1000, *,
        rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None,
    ):
        f = Factory(type(self).__name__, conv, dtype, rngs)
        self.conv1 = f.conv(3, 64, 7, 2, 3)
        self.bn1 = f.bn(64, "relu")
        self.maxpool = layers.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), stage_sizes, strict=True)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nnx.Sequential(
                    f.conv(inplanes, planes * block.expansion, 1, stride),
                    f.bn(planes * block.expansion),
                )
            blocks = [block(f, inplanes, planes, stride, downsample)]
            inplanes = planes * block.expansion
            blocks += [block(f, inplanes, planes) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nnx.Sequential(*blocks))
        bound = 1.0 / math.sqrt(inplanes)  # torch.nn.Linear's default initialisation
        uniform = nnx.initializers.uniform(2 * bound)
        self.fc = f.linear(
            inplanes, num_classes,
            kernel_init=lambda k, s, d: uniform(k, s, d) - bound,
            bias_init=lambda k, s, d: uniform(k, s, d) - bound,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(global_avg_pool(x))


def resnet18(num_classes: int = 1000, *, rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None):
    """ResNet-18 (torchvision ``resnet18``): :class:`BasicBlock` x ``(2, 2, 2, 2)``.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from convnn.models import resnet18
      >>> model = nnx.eval_shape(lambda: resnet18(rngs=nnx.Rngs(0)))  # shapes only
      >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))  # as torchvision
      11689512
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, rngs=rngs, conv=conv, dtype=dtype)


def resnet50(num_classes: int = 1000, *, rngs: nnx.Rngs, conv: str = "convnn", dtype: Any = None):
    """ResNet-50 (torchvision ``resnet50``, v1.5): :class:`Bottleneck` x ``(3, 4, 6, 3)``."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, rngs=rngs, conv=conv, dtype=dtype)
