"""Port a PyTorch CNN to convnn / Flax NNX and check that both compute the same logits.

The two models are written side by side with the same attribute names (``stem.0``, ``down``,
``depthwise``, ...); ``convnn.interop.load_torch_state_dict`` then converts every tensor by
layer type: convolution weights ``(O, I/g, kH, kW)`` to MLX's ``(O, kH, kW, I/g)``, the
transposed convolution's ``(I, O/g, kH, kW)`` to ``(O, kH, kW, I/g)``, ``Linear`` ``(out, in)`` to
``nnx.Linear``'s ``(in, out)``, BatchNorm's ``weight``/``bias``/``running_mean``/``running_var``
to ``scale``/``bias``/``mean``/``var``. A PyTorch ``nn.Sequential`` child ``stem.0`` is the
``nnx.Sequential`` child ``stem.layers[0]``.

Three things stay the user's job: inputs are channels-last (NHWC) in convnn where PyTorch's are
NCHW; BatchNorm momentum is written the other way round (PyTorch 0.1 == Flax 0.9; it only
matters for training); and a ``flatten`` before a linear layer must flatten in PyTorch's order.
PyTorch flattens an ``(N, C, H, W)`` map as ``(C, H, W)``, a channels-last model as ``(H, W, C)``:
the keys and shapes match, the logits do not. The head here flattens a 4 x 4 map, so the NNX
model transposes back to channels-first before flattening (``ConvnnNet.__call__``);
``load_torch_state_dict`` warns about such a head unless ``check_flatten=False``. The script
also prints how far off the logits would be without the transpose.

Run: ``python examples/port_from_torch.py`` (needs ``torch``; prints the largest difference;
``--size`` must be a multiple of 8).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from convnn.interop import load_torch_state_dict
from convnn.layers import AvgPool2d, Conv2d, ConvTranspose2d, MaxPool2d


class TorchNet(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1)
        self.shrink = nn.AvgPool2d(size // 8)  # (H/2, W/2) -> (4, 4)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):  # x: (N, 3, H, W)
        x = self.stem(x)
        x = torch.relu(self.down(x))
        x = x + torch.relu(self.depthwise(x))
        x = torch.relu(self.up(self.pool(x)))
        return self.head(torch.flatten(self.shrink(x), 1))  # flattens (C, H, W)


class ConvnnNet(nnx.Module):
    def __init__(self, size: int, *, rngs: nnx.Rngs):
        self.stem = nnx.Sequential(
            Conv2d(3, 16, 3, padding=1, bias=False, rngs=rngs),
            nnx.BatchNorm(16, momentum=0.9, epsilon=1e-5, rngs=rngs),  # PyTorch momentum 0.1
            nnx.relu,
        )
        self.down = Conv2d(16, 32, 3, stride=2, padding=1, rngs=rngs)
        self.depthwise = Conv2d(32, 32, 3, padding=1, groups=32, rngs=rngs)
        self.pool = MaxPool2d(2)
        self.up = ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1, rngs=rngs)
        self.shrink = AvgPool2d(size // 8)
        self.head = nnx.Linear(16 * 4 * 4, 10, rngs=rngs)
        self.channels_first_flatten = True  # False shows the flatten-order trap

    def __call__(self, x):  # x: (N, H, W, 3)
        x = self.stem(x)
        x = nnx.relu(self.down(x))
        x = x + nnx.relu(self.depthwise(x))
        x = self.shrink(nnx.relu(self.up(self.pool(x))))  # (N, 4, 4, 16)
        if self.channels_first_flatten:
            x = x.transpose(0, 3, 1, 2)  # flatten in PyTorch's (C, H, W) order
        return self.head(x.reshape(x.shape[0], -1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Port a PyTorch CNN with load_torch_state_dict.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="input height and width (default 32)")
    args = parser.parse_args(argv)
    if args.size < 8 or args.size % 8:
        parser.exit(2, f"{parser.prog}: error: --size must be a positive multiple of 8; got "
                    f"{args.size}\n")

    torch.manual_seed(args.seed)
    torch_model = TorchNet(args.size)
    with torch.no_grad():  # a few training-mode passes so the BatchNorm running statistics move
        for _ in range(3):
            torch_model(torch.randn(16, 3, args.size, args.size) * 2 + 0.5)
    torch_model.eval()

    # The initial values are overwritten by the port; "rbg" keys compile faster on CPU than the
    # default threefry ones.
    model = ConvnnNet(args.size, rngs=nnx.Rngs(jax.random.key(args.seed, impl="rbg")))
    # Strict: every key must match. The head flattens channels-first (ConvnnNet.__call__), so
    # the flatten-order warning is turned off.
    result = load_torch_state_dict(model, torch_model.state_dict(), check_flatten=False)
    model.eval()
    print(f"ported {len(torch_model.state_dict())} tensors ({result})")

    shape = (args.batch, 3, args.size, args.size)
    x = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    forward = nnx.jit(lambda model, x: model(x))  # one compiled program for the whole model
    actual = np.asarray(forward(model, jnp.asarray(x.transpose(0, 2, 3, 1))))  # NCHW -> NHWC
    diff = float(np.max(np.abs(actual - expected)))
    scale = float(np.max(np.abs(expected)))
    print(f"logits {actual.shape}, largest |logit| {scale:.4f}")
    print(f"largest absolute difference of the outputs: {diff:.3e}")
    model.channels_first_flatten = False  # the trap: same weights, channels-last flatten
    wrong = np.asarray(forward(model, jnp.asarray(x.transpose(0, 2, 3, 1))))
    print(f"without the channels-first flatten: {np.max(np.abs(wrong - expected)):.3e}")
    return 0 if diff <= 1e-4 * max(1.0, scale) else 1


if __name__ == "__main__":
    sys.exit(main())
