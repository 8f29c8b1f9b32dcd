"""Train a small ResNet-style network built from ``convnn.layers`` on CIFAR-10, with checkpoints,
resume, data parallelism and multi-host runs.

``train_digits.py`` is the short introduction; this example adds what a long run needs.

Data
    Nothing is downloaded. ``--synthetic`` trains offline on generated CIFAR-shaped data
    (``(N, 32, 32, 3)`` uint8 images of ten classes, each a colour pattern plus noise; learnable
    in a few epochs), to try every feature below without the data set::

        python examples/train_cifar.py --synthetic --epochs 3 --width 16 --blocks 1

    For the real data, get the *binary version* of CIFAR-10 (``cifar-10-binary.tar.gz`` from
    https://www.cs.toronto.edu/~kriz/cifar.html), extract it, and point ``--data-dir`` at the
    folder with ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin`` (or at its
    parent). Each file is a sequence of 3073-byte records: one label byte (0-9), then the image
    as 1024 red, 1024 green and 1024 blue bytes (row-major), read as raw bytes with NumPy (the
    pickled Python version, which can run code when loaded, is not used)::

        python examples/train_cifar.py --data-dir cifar-10-batches-bin            # float32
        python examples/train_cifar.py --data-dir cifar-10-batches-bin --bf16     # bfloat16

Model and training
    A 3 x 3 stem, three stages of residual blocks (width ``w``, ``2w``, ``4w``; stages 2 and 3
    start with a stride-2 block), global average pooling and a linear head. A block is a 3 x 3
    convolution, a depthwise 3 x 3 (``groups=channels``) and a pointwise 1 x 1 convolution, each
    with batch norm (``nnx.BatchNorm(momentum=0.9)`` is PyTorch's and MLX's ``momentum=0.1``).
    ``--bf16`` computes in bfloat16; parameters, optimizer state and the loss stay float32. SGD
    with Nesterov momentum, weight decay, warm-up + cosine schedule; random crops and flips.

Outputs and checkpoints
    In ``--out`` (default ``runs/cifar``): ``curves.png``, ``misclassified.png``,
    ``metrics.json`` and ``checkpoints/<epoch>/`` after every epoch (the last three kept; see
    ``checkpointing.py``: checksums of every array and of the metadata, verified on restore).

    * A new run never deletes an earlier run's checkpoints: it stops and asks for ``--resume``,
      ``--overwrite`` (delete them) or another ``--out``.
    * ``--resume`` continues from the newest intact checkpoint; a damaged one is named, moved to
      ``checkpoints-damaged/`` and the one before it is used. With the same flags, the result is
      bit-identical to an uninterrupted run (shuffling and augmentation depend only on
      ``(seed, epoch)``; the optimizer state and its step count are in the checkpoint).
    * On ``--resume``, ``--epochs`` may grow (the cosine schedule is stretched over the new
      total) and ``--lr`` may change; the other settings (``--width``, ``--blocks``,
      ``--weight-decay``, ``--bf16``, ``--batch-size``, ``--seed``, ``--steps-per-epoch``, the
      data) must stay as they were, and a resume that changes them is refused by name.
    * A NaN or infinite loss stops the run with exit status 1; the last good checkpoint stays,
      and ``--resume --lr <lower>`` continues from it.

Data parallelism
    Every device JAX sees is used by default (``--no-data-parallel`` uses one): a one-axis
    ``jax.sharding.Mesh`` named ``"data"``, each batch split along it, parameters and optimizer
    state replicated; XLA inserts the gradient all-reduce (and computes the batch-norm statistics
    over the global batch). ``--batch-size`` must divide by the number of devices. On a CPU:
    ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/train_cifar.py ...``.

Multi-host
    Start the same command once per host: ``--coordinator-address HOST0:1234 --num-processes N
    --process-id i`` (or ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``),
    or ``--distributed`` alone on a cluster JAX recognises (SLURM, Open MPI, Kubernetes, Cloud
    TPU). ``--out`` must be on a shared file system; process 0 prints and plots.

The last line printed is ``test accuracy: 0.xxxx``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import plots  # examples/plots.py
from checkpointing import CheckpointError, Checkpoints  # examples/checkpointing.py
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from convnn.layers import Conv2d

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE = "test_batch.bin"
RECORD_BYTES = 1 + 3 * 32 * 32
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32) * 255
STD = np.array([0.2470, 0.2435, 0.2616], np.float32) * 255
# Settings a --resume may change; every other one must match the checkpoint's.
MAY_CHANGE_ON_RESUME = ("epochs", "lr")


class UsageError(ValueError):
    """Settings that cannot work; reported in one line with exit status 2."""


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite loss or parameter; the run stops with exit status 1."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def read_cifar10_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary file: ``(N, 32, 32, 3)`` uint8 images and ``(N,)`` labels.

    Raises:
        ValueError: the size is not a multiple of 3073 bytes, or a label byte is not 0..9.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 "
            "records"
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
    """The five training files and the test file from ``data_dir`` (or its
    ``cifar-10-batches-bin`` subfolder).

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
            "binary version (cifar-10-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html"
            ", extract it and pass --data-dir path/to/cifar-10-batches-bin, or train on generated "
            "data with --synthetic. (The Python/pickle version is deliberately not read.)"
        )
    train = [read_cifar10_file(d / f) for f in TRAIN_FILES]
    x_test, y_test = read_cifar10_file(d / TEST_FILE)
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def synthetic_cifar10(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> dict:
    """Generated CIFAR-shaped data: ``(N, 32, 32, 3)`` uint8 images and int32 labels 0..9.

    Each class is a fixed smooth colour pattern (a random 4 x 4 x 3 grid, upsampled); an image
    is its class's pattern, randomly shifted by up to 4 pixels, plus noise. The same ``seed``
    gives the same data.
    """
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(40, 215, (10, 4, 4, 3)).repeat(8, axis=1).repeat(8, axis=2)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        shift = rng.integers(-4, 5, (n, 2))
        images = np.stack([np.roll(patterns[c], tuple(s), axis=(0, 1))
                           for c, s in zip(labels, shift, strict=True)])
        images += rng.normal(0, 40, images.shape)
        return np.clip(images, 0, 255).astype(np.uint8), labels

    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 32 x 32 crops of the 4-pixel zero-padded images and random horizontal flips."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
    x = np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip = rng.random(n) < 0.5
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
        self.blocks = nnx.List(stages)
        self.head = nnx.Linear(cin, 10, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = ((x.astype(jnp.float32) - MEAN) / STD).astype(self.dtype)
        x = nnx.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


# --------------------------------------------------------------------------------------------
# Devices: multi-host start-up, mesh, sharding
# --------------------------------------------------------------------------------------------


def init_distributed(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` when asked to (before any other JAX call)."""
    if not (args.distributed or args.coordinator_address or args.num_processes):
        return
    try:
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    except (ValueError, RuntimeError) as err:
        raise UsageError(
            f"jax.distributed.initialize() failed ({str(err).strip().splitlines()[0]}); outside "
            "a cluster JAX recognises, pass --coordinator-address, --num-processes and "
            "--process-id"
        ) from None


def is_main_process() -> bool:
    return jax.process_index() == 0


def make_mesh(data_parallel: bool | None) -> Mesh:
    """A one-axis mesh ``("data",)`` over every device (or only the first one)."""
    devices = jax.devices()
    if data_parallel is False:
        if jax.process_count() > 1:
            raise UsageError("--no-data-parallel cannot be combined with a multi-process run")
        devices = devices[:1]
    return Mesh(np.asarray(devices), ("data",))


def to_global(mesh: Mesh, spec: P, value) -> jax.Array:
    """A global array from a host value every process holds in full (each supplies its shards)."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, NamedSharding(mesh, spec), lambda i: value[i])


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Splits host arrays along their first axis over the ``"data"`` axis."""
    return tuple(to_global(mesh, P("data"), a) for a in arrays)


def replicate(mesh: Mesh, *nodes) -> None:
    """Places the state of NNX modules / optimizers on every device of the mesh, in place."""
    for node in nodes:
        nnx.update(node, jax.tree.map(lambda v: to_global(mesh, P(), v), nnx.state(node)))


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-host) array."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# --------------------------------------------------------------------------------------------
# Training and evaluation steps
# --------------------------------------------------------------------------------------------


def loss_fn(model: ResNet, x, y):
    logits = model(x).astype(jnp.float32)  # the loss in float32, also under --bf16
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


# A pure function of the state, jitted, the state donated (docs/training-step.md): `nnx.jit`
# would walk the model's object graph on every call, which on a GPU takes longer than the step.
@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def train_step(graphdef: nnx.GraphDef, state: nnx.State, x, y):
    """One step on a (sharded) batch: the new state, the loss and the correct predictions."""
    model, optimizer = nnx.merge(graphdef, state)
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss, jnp.sum(logits.argmax(axis=-1) == y)


@nnx.jit
def eval_step(model: ResNet, x, y, mask):
    """Loss sum, correct count and predictions of a padded batch (``mask`` marks real rows)."""
    logits = model(x).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    predictions = logits.argmax(axis=-1)
    return jnp.sum(losses * mask), jnp.sum((predictions == y) * mask), predictions


def evaluate(model, x, y, *, batch_size: int, mesh: Mesh):
    """Mean loss, accuracy and predictions over a data set (the last batch padded)."""
    n = len(x)
    padded = -(-n // batch_size) * batch_size
    mask = np.arange(padded) < n
    x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros((padded - n,), y.dtype)])
    loss_sum, correct, predictions = 0.0, 0, []
    for start in range(0, padded, batch_size):
        sl = slice(start, start + batch_size)
        ls, c, p = eval_step(model, *shard_batch(mesh, x[sl], y[sl], mask[sl]))
        loss_sum, correct = loss_sum + float(ls), correct + int(c)
        predictions.append(to_host(p))
    return loss_sum / n, correct / n, np.concatenate(predictions)[:n]


def make_optimizer(model: nnx.Module, args: argparse.Namespace, total_steps: int) -> nnx.Optimizer:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, warmup_steps=max(1, total_steps // 20), decay_steps=total_steps
    )
    tx = optax.chain(
        optax.add_decayed_weights(args.weight_decay),
        optax.sgd(schedule, momentum=0.9, nesterov=True),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _all_finite(tree) -> bool:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return all(np.isfinite(to_host(x).astype(np.float32)).all() for x in leaves)


def _write_json(path: Path, obj) -> None:
    if is_main_process():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)  # atomic: a reader never sees half a file


def run(args: argparse.Namespace) -> int:
    init_distributed(args)
    try:
        data = synthetic_cifar10(seed=args.seed) if args.synthetic else load_cifar10(args.data_dir)
    except (OSError, ValueError) as err:  # missing or malformed data files
        raise UsageError(str(err)) from None
    mesh = make_mesh(args.data_parallel)
    bs, n_dev, main = args.batch_size, mesh.devices.size, is_main_process()
    if bs % n_dev:
        raise UsageError(f"--batch-size {bs} must divide by the number of devices ({n_dev}); "
                         "change it or pass --no-data-parallel")
    if bs > len(data["x_train"]):
        raise UsageError(f"--batch-size {bs} is larger than the training set "
                         f"({len(data['x_train'])} images)")
    steps = min(len(data["x_train"]) // bs, args.steps_per_epoch or len(data["x_train"]))
    config = {"width": args.width, "blocks": args.blocks, "weight_decay": args.weight_decay,
              "bf16": args.bf16, "batch_size": bs, "seed": args.seed, "steps_per_epoch": steps,
              "data": "synthetic" if args.synthetic else "cifar10"}
    ckpt = Checkpoints(args.out / "checkpoints", resume=args.resume, overwrite=args.overwrite,
                       main_process=main)

    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    model = ResNet(args.width, args.blocks, dtype=dtype,
                   rngs=nnx.Rngs(jax.random.key(args.seed, impl="rbg")))
    optimizer = make_optimizer(model, args, total_steps=args.epochs * steps)
    replicate(mesh, model, optimizer)
    if main:
        n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        print(f"{len(data['x_train'])} training / {len(data['x_test'])} test images; "
              f"{n_params:,} parameters, {'bfloat16' if args.bf16 else 'float32'} compute; "
              f"{n_dev} {jax.devices()[0].platform} device(s) in {jax.process_count()} "
              f"process(es), batch {bs}; {steps} steps per epoch", flush=True)

    history = {k: [] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy",
                               "step_loss")}
    start = 0
    if args.resume:

        def check(meta: dict) -> None:  # before any array is read
            changed = {k: (meta["config"].get(k), v) for k, v in config.items()
                       if meta["config"].get(k) != v}
            if changed:
                raise UsageError(
                    f"cannot resume from {ckpt.directory}: "
                    + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                    + f"; only {' and '.join('--' + k for k in MAY_CHANGE_ON_RESUME)} may change"
                )
            if meta["epoch"] > args.epochs:
                raise UsageError(f"--epochs {args.epochs} is fewer than the {meta['epoch']} "
                                 f"epochs of the checkpoint; pass --epochs {meta['epoch']} or more")

        found = ckpt.restore({"model": nnx.state(model), "optimizer": nnx.state(optimizer)}, check)
        if found is None:
            print(f"no checkpoint in {ckpt.directory}; starting from scratch", flush=True)
        else:
            start, state, meta = found
            nnx.update(model, state["model"])
            nnx.update(optimizer, state["optimizer"])
            history = meta["history"]
            print(f"resumed from the checkpoint of epoch {start} in {ckpt.directory}", flush=True)

    def stop(what: str) -> NonFiniteLossError:
        last = ckpt.latest_epoch()
        advice = ("no checkpoint was written" if last is None else
                  f"the last good checkpoint (epoch {last}) is kept in {ckpt.directory}; continue "
                  "from it with --resume and a lower --lr")
        return NonFiniteLossError(f"{what}; stopping: {advice}")

    t0 = time.perf_counter()
    try:
        for epoch in range(start + 1, args.epochs + 1):
            # The shuffling and augmentation of an epoch depend only on (seed, epoch).
            order = np.random.default_rng([args.seed, epoch, 0]).permutation(len(data["x_train"]))
            rng = np.random.default_rng([args.seed, epoch, 1])
            model.train()
            graphdef, state = nnx.split((model, optimizer))  # once per epoch
            loss_sum, correct = 0.0, 0
            bar = tqdm(range(steps), desc=f"epoch {epoch}/{args.epochs}", leave=False,
                       disable=not (main and sys.stderr.isatty()))
            for i in bar:
                idx = order[i * bs : (i + 1) * bs]
                x = augment(data["x_train"][idx], rng)
                batch = shard_batch(mesh, x, data["y_train"][idx])
                state, loss, c = train_step(graphdef, state, *batch)
                loss = float(loss)
                if not math.isfinite(loss):
                    bar.close()
                    raise stop(f"non-finite training loss ({loss}) at epoch {epoch}, step {i + 1}")
                loss_sum, correct = loss_sum + loss, correct + int(c)
                history["step_loss"].append(loss)
                bar.set_postfix(loss=f"{loss_sum / (i + 1):.4f}")
            nnx.update((model, optimizer), state)
            model.eval()
            test_loss, test_acc, _ = evaluate(model, data["x_test"], data["y_test"],
                                              batch_size=bs, mesh=mesh)
            if not (math.isfinite(test_loss) and _all_finite(nnx.state(model))):
                raise stop(f"non-finite parameters or test loss after epoch {epoch}")
            for key, value in [("train_loss", loss_sum / steps), ("train_accuracy",
                               correct / (steps * bs)), ("test_loss", test_loss),
                               ("test_accuracy", test_acc)]:
                history[key].append(value)
            if main:
                summary = ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items()
                                    if k != "step_loss")
                print(f"epoch {epoch}: {summary}", flush=True)
            state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
            # A copy of the history: the metadata is written in the background.
            meta = {"epoch": epoch, "config": config, "history": json.loads(json.dumps(history))}
            ckpt.save(epoch, state, meta)
            _write_json(args.out / "metrics.json", {"config": config, "devices": n_dev, **history})
    finally:
        ckpt.close()  # a save in flight completes (the last good checkpoint stays whole)

    model.eval()
    _, test_acc, predictions = evaluate(model, data["x_test"], data["y_test"], batch_size=bs,
                                        mesh=mesh)
    _write_json(args.out / "metrics.json", {"config": config, "devices": n_dev, **history})
    if main:
        if start < args.epochs:
            print(f"trained epochs {start + 1}..{args.epochs} in {time.perf_counter() - t0:.1f} s")
        plots.plot_curves(history, args.out / "curves.png", title="convnn ResNet on CIFAR-10")
        wrong = int((predictions != data["y_test"]).sum())
        plots.plot_misclassified(data["x_test"], data["y_test"], predictions,
                                 args.out / "misclassified.png", class_names=CLASSES)
        print(f"wrote {args.out}/curves.png, misclassified.png ({wrong} misclassified)")
        print(f"test accuracy: {test_acc:.4f}")
    return 0


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a ResNet-style convnn network on CIFAR-10.",
                                epilog="See the module docstring for resume rules and multi-host.")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data-dir", type=Path, default=Path("data/cifar-10-batches-bin"),
                      help="folder with the binary CIFAR-10 files")
    data.add_argument("--synthetic", action="store_true",
                      help="train on generated CIFAR-shaped data (offline; 2000 / 500 images)")
    p.add_argument("--out", type=Path, default=Path("runs/cifar"), help="output folder")
    p.add_argument("--epochs", type=int, default=30, help="total epochs (default 30)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size (default 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="limit (quick runs)")
    p.add_argument("--width", type=int, default=32, help="channels of the first stage")
    p.add_argument("--blocks", type=int, default=2, help="residual blocks per stage")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the checkpoints of an earlier run in --out (a new run keeps them "
                   "and stops without this flag)")
    p.add_argument("--data-parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="split each batch over all devices (default: on)")
    dist = p.add_argument_group("multi-host")
    dist.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() (auto-detects SLURM, Open MPI, ...)")
    dist.add_argument("--coordinator-address", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                      help="host:port of process 0")
    dist.add_argument("--num-processes", type=int, default=_env_int("JAX_NUM_PROCESSES"))
    dist.add_argument("--process-id", type=int, default=_env_int("JAX_PROCESS_ID"))
    args = p.parse_args(argv)
    # Every flag is checked here, before any JAX work: one line and exit status 2 on a bad one.
    for flag, ok, want in [
        ("--epochs", args.epochs >= 1, "at least 1"),
        ("--batch-size", args.batch_size >= 1, "at least 1"),
        ("--seed", args.seed >= 0, "at least 0"),
        ("--width", args.width >= 1, "at least 1"),
        ("--blocks", args.blocks >= 1, "at least 1"),
        ("--steps-per-epoch", args.steps_per_epoch is None or args.steps_per_epoch > 0,
         "at least 1"),
        ("--lr", 0 < args.lr < math.inf, "a positive number"),
        ("--weight-decay", 0 <= args.weight_decay < math.inf, "zero or positive"),
        ("--num-processes", args.num_processes is None or args.num_processes > 0,
         "at least 1"),
        ("--process-id", 0 <= (args.process_id or 0) < (args.num_processes or 1) or
         args.num_processes is None, "between 0 and --num-processes - 1"),
    ]:
        if not ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            p.exit(2, f"{p.prog}: error: {flag} must be {want}; got {value}\n")
    if args.out.exists() and not args.out.is_dir():
        p.exit(2, f"{p.prog}: error: --out {args.out} is an existing file; name a folder\n")
    if args.resume and args.overwrite:
        p.exit(2, f"{p.prog}: error: --resume and --overwrite exclude each other\n")
    return args


def _exit_on_ctrl_c(signum, frame):
    # Ctrl-C, also while XLA compiles: one line, no traceback. Exiting in the handler, since a
    # KeyboardInterrupt raised inside a callback (JAX's garbage-collection hook) is swallowed.
    print("\ninterrupted", file=sys.stderr, flush=True)
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A checkpoint cut short by the exit is left as a temporary folder, which restore ignores.
    signal.signal(signal.SIGINT, _exit_on_ctrl_c)
    try:
        return run(args)
    except (UsageError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
