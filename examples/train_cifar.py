"""Train a small ResNet-style network built from ``convnn.layers`` on CIFAR-10.

Nothing is downloaded. Get the *binary version* of CIFAR-10 (``cifar-10-binary.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html), extract it, and point ``--data-dir`` at the folder
with ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin`` (or at its parent)::

    tar xzf cifar-10-binary.tar.gz
    python examples/train_cifar.py --data-dir cifar-10-batches-bin            # float32
    python examples/train_cifar.py --data-dir cifar-10-batches-bin --bf16     # bfloat16 compute

Each file is a sequence of 3073-byte records: one label byte (0-9), then the 32 x 32 image as
1024 red, 1024 green and 1024 blue bytes (row-major). The files are read as raw bytes with
NumPy; the Python version of the data set (pickles, which can run code when loaded) is not used.

The network: a 3 x 3 stem, three stages of residual blocks (width ``w``, ``2w``, ``4w``; the
first block of stages 2 and 3 downsamples with a stride-2 convolution and a strided 1 x 1
shortcut), global average pooling and a linear head. A block is a 3 x 3 convolution, a depthwise
3 x 3 convolution (``groups=channels``) and a pointwise 1 x 1 convolution, each followed by batch
norm, plus the shortcut. ``nnx.BatchNorm(momentum=0.9)`` is PyTorch's and MLX's
``momentum=0.1`` (Flax weights the running average, PyTorch and MLX the new batch). Under data
parallelism the batch statistics are computed over the global batch (XLA reduces across
devices), so a sharded run normalises exactly as a single-device one.

``--bf16`` computes convolutions, batch norm and the head in bfloat16 while parameters,
optimizer state and the loss stay in float32.

Training uses SGD with Nesterov momentum, weight decay and a warm-up + cosine schedule, random
crops (4-pixel zero padding) and horizontal flips. Outputs, checkpoints, ``--resume``, the
non-finite-loss stop, data parallelism and multi-host flags work as in ``train_digits.py`` (all
from ``common.py``): ``curves.png``, ``misclassified.png``, ``metrics.json`` and
``checkpoints/`` in ``--out`` (default ``runs/cifar``). The last line printed is
``test accuracy: 0.xxxx``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from convnn.layers import Conv2d

import common  # examples/common.py: the shared training helpers

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE = "test_batch.bin"
RECORD_BYTES = 1 + 3 * 32 * 32
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32) * 255
STD = np.array([0.2470, 0.2435, 0.2616], np.float32) * 255


# --------------------------------------------------------------------------------------------
# Data: the binary version of CIFAR-10
# --------------------------------------------------------------------------------------------


def read_cifar10_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary file.

    Returns:
        ``images``: ``(N, 32, 32, 3)`` uint8, channels-last; ``labels``: ``(N,)`` int32 in 0..9.

    Raises:
        ValueError: the size is not a multiple of 3073 bytes, or a label byte is not 0..9.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(
            f"{path}: record {bad[0]} has label byte {labels[bad[0]]}, not 0..9 "
            "(CIFAR-100's binary files have two label bytes and are not supported)"
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
    return np.ascontiguousarray(images), labels


def load_cifar10(data_dir: str | Path) -> dict[str, np.ndarray]:
    """Loads the five training files and the test file from ``data_dir``.

    ``data_dir`` may also be the parent of the extracted ``cifar-10-batches-bin`` folder.

    Raises:
        FileNotFoundError: naming the missing files and where the data set comes from.
    """
    d = Path(data_dir)
    if (d / "cifar-10-batches-bin").is_dir() and not (d / TEST_FILE).is_file():
        d = d / "cifar-10-batches-bin"
    missing = [f for f in [*TRAIN_FILES, TEST_FILE] if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 binary files not found in {d}: missing {', '.join(missing)}. Download the "
            "binary version (cifar-10-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html, "
            "extract it and pass --data-dir path/to/cifar-10-batches-bin. (The Python/pickle "
            "version is deliberately not read.)"
        )
    train = [read_cifar10_file(d / f) for f in TRAIN_FILES]
    x_test, y_test = read_cifar10_file(d / TEST_FILE)
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 32 x 32 crops of the 4-pixel zero-padded images and random horizontal flips."""
    x = common.random_translate(x, rng, 4)
    flip = rng.random(len(x)) < 0.5
    x[flip] = x[flip, :, ::-1]
    return x


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class ConvBN(nnx.Module):
    """Convolution without bias, then batch norm (PyTorch/MLX momentum 0.1 == Flax 0.9)."""

    def __init__(self, cin, cout, kernel_size, stride=1, groups=1, *, dtype, rngs):
        self.conv = Conv2d(
            cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
            bias=False, dtype=dtype, rngs=rngs,
        )
        self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.conv(x))


class Block(nnx.Module):
    """3 x 3 conv (strided to downsample), depthwise 3 x 3, pointwise 1 x 1; plus the shortcut."""

    def __init__(self, cin, cout, stride, *, dtype, rngs):
        self.conv = ConvBN(cin, cout, 3, stride, dtype=dtype, rngs=rngs)
        self.depthwise = ConvBN(cout, cout, 3, groups=cout, dtype=dtype, rngs=rngs)
        self.pointwise = ConvBN(cout, cout, 1, dtype=dtype, rngs=rngs)
        if stride != 1 or cin != cout:
            self.shortcut = ConvBN(cin, cout, 1, stride, dtype=dtype, rngs=rngs)
        else:
            self.shortcut = None

    def __call__(self, x):
        y = nnx.relu(self.conv(x))
        y = nnx.relu(self.depthwise(y))
        y = self.pointwise(y)
        return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nnx.Module):
    """``(N, 32, 32, 3)`` uint8 images to ``(N, 10)`` logits (normalisation included)."""

    def __init__(self, width: int = 32, blocks: int = 2, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.stem = ConvBN(3, width, 3, dtype=dtype, rngs=rngs)
        stages, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                stages.append(Block(cin, cout, stride, dtype=dtype, rngs=rngs))
                cin = cout
        self.blocks = nnx.List(stages) if hasattr(nnx, "List") else stages  # Flax 0.10: a plain list
        self.head = nnx.Linear(cin, 10, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = ((x.astype(jnp.float32) - MEAN) / STD).astype(self.dtype)
        x = nnx.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


def make_optimizer(model: nnx.Module, args: argparse.Namespace, total_steps: int) -> nnx.Optimizer:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=args.lr, warmup_steps=max(1, total_steps // 20), decay_steps=total_steps
    )
    tx = optax.chain(
        optax.add_decayed_weights(args.weight_decay),
        optax.sgd(schedule, momentum=0.9, nesterov=True),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a ResNet-style convnn network on CIFAR-10 (binary version).",
        epilog="See the module docstring for the data format; multi-host use as in train_digits.py.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data/cifar-10-batches-bin"),
        help="folder with data_batch_1.bin .. data_batch_5.bin and test_batch.bin (default data/cifar-10-batches-bin)",
    )
    common.add_common_args(parser, out="runs/cifar", epochs=30, batch_size=128, lr=0.1)
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage (default 32)")
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks per stage (default 2)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay (default 5e-4)")
    parser.add_argument("--bf16", action="store_true", help="compute in bfloat16 (parameters stay float32)")
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    if args.width < 1 or args.blocks < 1:
        parser.error(f"--width and --blocks must be at least 1; got {args.width}, {args.blocks}")
    return args


def main(argv: list[str] | None = None) -> int:
    return common.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    try:
        data = load_cifar10(args.data_dir)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    common.init_distributed(args)
    mesh = common.make_mesh(args.data_parallel)
    steps = common.steps_per_epoch(len(data["x_train"]), args)

    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    model = ResNet(args.width, args.blocks, dtype=dtype, rngs=common.init_rngs(args.seed))
    optimizer = make_optimizer(model, args, total_steps=args.epochs * steps)
    common.replicate_module_state(mesh, model, optimizer)
    if common.is_main_process():
        n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        print(
            f"{len(data['x_train'])} training / {len(data['x_test'])} test images; {n_params:,} parameters, "
            f"{'bfloat16' if args.bf16 else 'float32'} compute; {mesh.devices.size} "
            f"{jax.devices()[0].platform} device(s), batch {args.batch_size}; {steps} steps per epoch"
        )
    config = {
        "example": "cifar",
        "width": args.width,
        "blocks": args.blocks,
        "weight_decay": args.weight_decay,
        "bf16": args.bf16,
    }
    history = common.fit(model, optimizer, data=data, args=args, mesh=mesh, config=config, augment=augment)

    common.plot_history(history, args.out / "curves.png", title="convnn ResNet on CIFAR-10")
    wrong = common.plot_misclassified(
        data["x_test"], data["y_test"], history["predictions"], args.out / "misclassified.png", class_names=CLASSES
    )
    if common.is_main_process():
        print(f"wrote {args.out / 'curves.png'}, {args.out / 'misclassified.png'} ({wrong} misclassified)")
        print(f"test accuracy: {history['final_test_acc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
