"""Train a small CNN built from ``convnn.layers`` on scikit-learn's handwritten digits.

The data ships with scikit-learn (1797 grey 8 x 8 images of the digits 0-9): nothing is
downloaded. The test split is fixed (360 images); ``--seed`` sets the initialisation, the
shuffling and the augmentation (random shifts by up to ``--max-shift`` pixels). The defaults
reach about 99 % test accuracy in seconds on a laptop CPU: ``python examples/train_digits.py``.

The file reads top to bottom: the model, ``loss_fn``, ``train_step``, ``eval_step`` (with
``nnx.MultiMetric``), the loop. It writes ``curves.png``, ``misclassified.png`` and ``metrics.json``
to ``--out``; the last line is ``test accuracy: 0.xxxx``. Checkpoints: ``train_cifar.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import plots  # examples/plots.py: curves.png and misclassified.png
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from convnn.layers import Conv2d, MaxPool2d

IMAGE_SIZE = 8
N_TRAIN = 1797 - 360  # load_digits() minus the test split


class DigitsCNN(nnx.Module):
    """Three 3 x 3 convolutions, two max-pools and a two-layer head: ``(N, 8, 8, 1) -> (N, 10)``."""

    def __init__(self, width: int = 32, *, rngs: nnx.Rngs):
        self.conv1 = Conv2d(1, width, 3, padding=1, rngs=rngs)
        self.conv2 = Conv2d(width, width, 3, padding=1, rngs=rngs)
        self.pool = MaxPool2d(2)
        self.conv3 = Conv2d(width, 2 * width, 3, padding=1, rngs=rngs)
        self.fc1 = nnx.Linear(2 * width * 2 * 2, 128, rngs=rngs)
        self.fc2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))  # (N, 8, 8, w): channels-last, as in MLX
        x = self.pool(nnx.relu(self.conv2(x)))  # (N, 4, 4, w)
        x = self.pool(nnx.relu(self.conv3(x)))  # (N, 2, 2, 2w)
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.fc1(x)))


def load_data() -> dict[str, np.ndarray]:
    """The digits as ``(N, 8, 8, 1)`` float32 in [0, 1] with int32 labels; a fixed split."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=360, random_state=0, stratify=y
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def random_shift(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Shifts each image by up to ``max_shift`` pixels (a random crop of the zero-padded image)."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def loss_fn(model: DigitsCNN, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, logits


@nnx.jit
def train_step(model: DigitsCNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, x, y):
    """One optimizer step; the metrics accumulate the batch's loss and accuracy."""
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
    metrics.update(loss=loss, logits=logits, labels=y)
    optimizer.update(model, grads)  # updates the model's parameters in place
    return loss


@nnx.jit
def eval_step(model: DigitsCNN, metrics: nnx.MultiMetric, x, y):
    loss, logits = loss_fn(model, x, y)
    metrics.update(loss=loss, logits=logits, labels=y)


@nnx.jit
def predict(model: DigitsCNN, x):
    return model(x).argmax(axis=-1)


def train(args: argparse.Namespace) -> None:
    data = load_data()
    x_train, y_train = data["x_train"], data["y_train"]
    steps = min(len(x_train) // args.batch_size, args.steps_per_epoch or len(x_train))
    print(f"{len(x_train)} training / {len(data['x_test'])} test digits; {steps} steps per epoch")

    # "rbg" keys: XLA compiles the default threefry generator slowly on CPU.
    model = DigitsCNN(args.width, rngs=nnx.Rngs(jax.random.key(args.seed, impl="rbg")))
    total = args.epochs * steps
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, warmup_steps=max(1, total // 20), decay_steps=total, end_value=args.lr / 100
    )
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
    history = {k: [] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
    history["step_loss"] = []

    for epoch in range(1, args.epochs + 1):
        # The shuffling and the shifts of an epoch depend only on (seed, epoch).
        order = np.random.default_rng([args.seed, epoch, 0]).permutation(len(x_train))
        rng = np.random.default_rng([args.seed, epoch, 1])
        model.train()
        # A bar on a terminal; in a log file (not a terminal) only the line per epoch below.
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{args.epochs}", leave=False,
                   disable=not sys.stderr.isatty())
        for i in bar:
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = random_shift(x_train[idx], rng, args.max_shift)
            loss = float(train_step(model, optimizer, metrics, x, y_train[idx]))
            history["step_loss"].append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
        for name, value in metrics.compute().items():
            history[f"train_{name}"].append(float(value))
        metrics.reset()

        model.eval()
        eval_step(model, metrics, data["x_test"], data["y_test"])
        for name, value in metrics.compute().items():
            history[f"test_{name}"].append(float(value))
        metrics.reset()
        print(f"epoch {epoch}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items()
                                             if k != "step_loss"))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(history, indent=1))
    plots.plot_curves(history, args.out / "curves.png", title="convnn CNN on scikit-learn digits")
    predictions = np.asarray(predict(model, data["x_test"]))
    wrong = int((predictions != data["y_test"]).sum())
    plots.plot_misclassified(data["x_test"], data["y_test"], predictions,
                             args.out / "misclassified.png")
    print(f"wrote {args.out}/curves.png, misclassified.png ({wrong} misclassified), metrics.json")
    print(f"test accuracy: {history['test_accuracy'][-1]:.4f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a small convnn CNN on scikit-learn's digits.")
    p.add_argument("--out", type=Path, default=Path("runs/digits"), help="output folder")
    p.add_argument("--epochs", type=int, default=12, help="epochs (default 12)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--width", type=int, default=32, help="channels of the first convolutions")
    p.add_argument("--max-shift", type=int, default=1,
                   help="shift training digits by up to this many pixels (default 1; 0 disables)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="limit (quick runs)")
    args = p.parse_args(argv)
    # Every flag is checked here, before any JAX work: one line and exit status 2 on a bad one.
    half = IMAGE_SIZE // 2
    for flag, ok, want in [
        ("--epochs", args.epochs >= 1, "at least 1"),
        ("--batch-size", 1 <= args.batch_size <= N_TRAIN, f"between 1 and {N_TRAIN}"),
        ("--seed", args.seed >= 0, "at least 0"),
        ("--width", args.width >= 1, "at least 1"),
        ("--max-shift", 0 <= args.max_shift < half, f"between 0 and {half - 1} (8 x 8 images)"),
        ("--steps-per-epoch", args.steps_per_epoch is None or args.steps_per_epoch > 0,
         "at least 1"),
        ("--lr", 0 < args.lr < float("inf"), "a positive number"),
    ]:
        if not ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            p.exit(2, f"{p.prog}: error: {flag} must be {want}; got {value}\n")
    if args.out.exists() and not args.out.is_dir():
        p.exit(2, f"{p.prog}: error: --out {args.out} is an existing file; name a folder\n")
    return args


def _interrupted(*_):  # Ctrl-C, also mid-compile: one line, and exit at once (KeyboardInterrupt
    print("\ninterrupted", file=sys.stderr)  # raised in JAX's GC hook would be swallowed)
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupted)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
