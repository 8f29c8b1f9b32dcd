"""A CIFAR ResNet in MLX (after mlx-examples/cifar/resnet.py): convolutions with BatchNorm,
option-A shortcuts (strided slicing and zero padding of channels), global average pooling."""

import mlx.core as mx
import mlx.nn as nn


class ShortcutA(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def __call__(self, x):
        return mx.pad(
            x[:, ::2, ::2, :],
            pad_width=[(0, 0), (0, 0), (0, 0), (self.dims // 4, self.dims // 4)],
        )


class Block(nn.Module):
    expansion = 1

    def __init__(self, in_dims, dims, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dims, dims, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm(dims)
        self.conv2 = nn.Conv2d(dims, dims, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm(dims)
        if stride != 1:
            self.shortcut = ShortcutA(dims)
        else:
            self.shortcut = None

    def __call__(self, x):
        out = nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is None:
            out += x
        else:
            out += self.shortcut(x)
        out = nn.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block=Block, num_blocks=(1, 1, 1), num_classes=10, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm(width)
        self.layer1 = self._make_layer(block, width, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, width, 2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 2 * width, 4 * width, num_blocks[2], stride=2)
        self.linear = nn.Linear(4 * width, num_classes)

    def _make_layer(self, block, in_dims, dims, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for stride in strides:
            layers.append(block(in_dims, dims, stride))
            in_dims = dims
        return nn.Sequential(*layers)

    def __call__(self, x):
        x = nn.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = mx.mean(x, axis=(1, 2))
        x = self.linear(x)
        return x


def build():
    return ResNet()


def example_inputs(rng):
    return (rng.standard_normal((4, 8, 8, 3)).astype("float32"),)
