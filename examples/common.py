"""Training helpers shared by the examples (``train_digits.py``, ``train_cifar.py``).

One place for everything that is not specific to a data set or a model:

* multi-host start-up (``jax.distributed.initialize``) from command-line flags or the environment;
* data parallelism with ``jax.sharding``: a one-axis ``Mesh`` named ``"data"`` over
  ``jax.devices()``, every batch split along it, parameters and optimizer state replicated;
* the classification train / eval steps under ``nnx.jit`` with optax;
* the epoch loop: per-epoch shuffling derived from ``(seed, epoch)`` only (so that a resumed run
  sees exactly the batches an uninterrupted one does), a tqdm progress bar per epoch, a stop on
  a non-finite loss, orbax checkpoints (model state, optimizer state and metric history) after
  every epoch, ``--resume`` from the latest complete checkpoint;
* plots (matplotlib, Agg backend): loss and accuracy curves, a grid of misclassified test images.

Orbax writes a checkpoint into a temporary directory and renames it only when everything is on
disk, so a process killed during a save leaves the previous checkpoint intact; the partial
directory is removed the next time the checkpoint manager opens the folder.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

__all__ = [
    "NonFiniteLossError",
    "UsageError",
    "Checkpoints",
    "add_common_args",
    "run_main",
    "init_distributed",
    "make_mesh",
    "replicate",
    "shard_batch",
    "to_host",
    "is_main_process",
    "epoch_rng",
    "random_translate",
    "init_rngs",
    "make_classifier_steps",
    "evaluate",
    "steps_per_epoch",
    "fit",
    "plot_history",
    "plot_misclassified",
    "write_json",
]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or parameters); the run stops."""


class UsageError(ValueError):
    """Settings that cannot work (batch size vs devices, a resume with other settings)."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    out: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
) -> None:
    """Adds the flags every training example shares (defaults are per example)."""
    parser.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"total epochs (default {epochs})")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"global batch size, split over the devices (default {batch_size})",
    )
    parser.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    parser.add_argument("--seed", type=int, default=seed, help=f"initialisation and shuffling seed (default {seed})")
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="limit the number of steps per epoch (quick runs; default: the whole training set)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in OUT/checkpoints (without it, old ones are removed)",
    )
    parser.add_argument(
        "--data-parallel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="split each batch over all devices (default: on when more than one device is visible)",
    )
    dist = parser.add_argument_group(
        "multi-host",
        "Start one process per host with the same command line; jax.distributed.initialize() "
        "connects them and the mesh then spans the devices of all hosts.",
    )
    dist.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize(); without the three flags below JAX auto-detects "
        "SLURM, Open MPI, Kubernetes and Cloud TPU environments",
    )
    dist.add_argument(
        "--coordinator-address",
        default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        help="host:port of process 0 (env JAX_COORDINATOR_ADDRESS)",
    )
    dist.add_argument(
        "--num-processes",
        type=int,
        default=_env_int("JAX_NUM_PROCESSES"),
        help="number of processes (env JAX_NUM_PROCESSES)",
    )
    dist.add_argument(
        "--process-id",
        type=int,
        default=_env_int("JAX_PROCESS_ID"),
        help="this process's index, 0 .. num-processes - 1 (env JAX_PROCESS_ID)",
    )
    # Test hooks, not shown in --help.
    parser.add_argument("--debug-nan-at-step", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug-kill-during-save", type=int, default=None, help=argparse.SUPPRESS)


def check_common_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects impossible values with a parser error (before any JAX work)."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error(f"--steps-per-epoch must be at least 1; got {args.steps_per_epoch}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive; got {args.lr}")


# --------------------------------------------------------------------------------------------
# Devices: multi-host start-up, mesh, sharding
# --------------------------------------------------------------------------------------------


def run_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs an example's ``run(args)``; a non-finite loss exits with 1, a usage error with 2."""
    try:
        return run(args)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def init_distributed(args: argparse.Namespace) -> None:
    """Calls ``jax.distributed.initialize`` when asked to (before any other JAX call).

    Nothing happens for a single-process run (no ``--distributed``, no coordinator address).
    """
    if not (args.distributed or args.coordinator_address or args.num_processes):
        return
    jax.distributed.initialize(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )


def is_main_process() -> bool:
    return jax.process_index() == 0


def make_mesh(data_parallel: bool | None = None) -> Mesh:
    """A one-axis mesh ``("data",)``: all devices of all processes, or only the first device.

    Args:
        data_parallel: ``True`` uses every device in ``jax.devices()``, ``False`` only the first;
            ``None`` (default) means ``True`` when more than one device is visible.
    """
    devices = jax.devices()
    if data_parallel is None:
        data_parallel = len(devices) > 1
    if not data_parallel:
        if jax.process_count() > 1:
            raise UsageError("--no-data-parallel cannot be combined with a multi-process run")
        devices = devices[:1]
    return Mesh(np.asarray(devices), ("data",))


def _global_array(value: Any, sharding: NamedSharding) -> jax.Array:
    value = np.asarray(value)
    # Every process holds the whole value; each one supplies the shards its devices own, which
    # works the same for one process and for many.
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every array of ``tree`` on every device of ``mesh`` (a replicated copy)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda leaf: _global_array(leaf, sharding), tree)


def replicate_module_state(mesh: Mesh, *nodes: Any) -> None:
    """Replicates the state of NNX modules / optimizers in place."""
    for node in nodes:
        nnx.update(node, replicate(nnx.state(node), mesh))


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Splits host arrays along their first axis over the mesh's ``"data"`` axis."""
    sharding = NamedSharding(mesh, P("data"))
    return tuple(_global_array(a, sharding) for a in arrays)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-host) array as a NumPy array."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """The NumPy generator of one epoch, a function of ``(seed, epoch, stream)`` only."""
    return np.random.default_rng([seed, epoch, stream])


def init_rngs(seed: int) -> nnx.Rngs:
    """``nnx.Rngs`` for parameter initialisation, on the ``"rbg"`` PRNG.

    XLA compiles the default threefry generator slowly on CPU (several seconds for a handful of
    parameter shapes); ``"rbg"`` compiles in a fraction of that. Initial values are still a
    function of the seed only.
    """
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def random_translate(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Shifts each image of ``(N, H, W, C)`` by up to ``max_shift`` pixels, filling with zeros.

    The same as zero-padding by ``max_shift`` and taking a random ``H x W`` crop.
    """
    n, h, w = x.shape[:3]
    m = max_shift
    padded = np.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))
    dy = rng.integers(0, 2 * m + 1, n)
    dx = rng.integers(0, 2 * m + 1, n)
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


# --------------------------------------------------------------------------------------------
# Train / eval steps for classifiers
# --------------------------------------------------------------------------------------------


def optimizer_update(optimizer: nnx.Optimizer, model: nnx.Module, grads: Any) -> None:
    """``optimizer.update(model, grads)``; Flax 0.10 (the newest for jax 0.5, which Apple's
    jax-metal needs) spells it ``optimizer.update(grads)``."""
    if "model" in inspect.signature(optimizer.update).parameters:
        optimizer.update(model, grads)
    else:
        optimizer.update(grads)


def make_classifier_steps() -> tuple[Callable, Callable]:
    """``train_step(model, optimizer, x, y) -> (loss, correct)`` and
    ``eval_step(model, x, y, mask) -> (loss_sum, correct, predictions)``, both under ``nnx.jit``.

    The loss is softmax cross-entropy in float32 (logits are cast, so bfloat16 models work).
    Under a mesh the batch arrives sharded, parameters replicated; XLA inserts the gradient
    all-reduce, and the mean over the global batch equals the single-device mean.
    """

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x).astype(jnp.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer_update(optimizer, model, grads)
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == y)
        return loss, correct

    @nnx.jit
    def eval_step(model, x, y, mask):
        logits = model(x).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        predictions = jnp.argmax(logits, axis=-1)
        loss_sum = jnp.sum(jnp.where(mask, losses, 0.0))
        correct = jnp.sum(jnp.logical_and(mask, predictions == y))
        return loss_sum, correct, predictions

    return train_step, eval_step


def evaluate(eval_step: Callable, model: nnx.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int, mesh: Mesh):
    """Mean loss, accuracy and predictions over a whole data set (padded to full batches)."""
    n = len(x)
    padded = -(-n // batch_size) * batch_size
    mask = np.arange(padded) < n
    x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros((padded - n,), y.dtype)])
    loss_sum, correct, predictions = 0.0, 0, []
    for start in range(0, padded, batch_size):
        sl = slice(start, start + batch_size)
        ls, c, p = eval_step(model, *shard_batch(mesh, x[sl], y[sl], mask[sl]))
        loss_sum += float(ls)
        correct += int(c)
        predictions.append(to_host(p))
    return loss_sum / n, correct / n, np.concatenate(predictions)[:n]


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _all_finite(tree: Any) -> bool:
    # On the host: one small transfer per epoch instead of a compiled reduction per leaf shape.
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return all(np.isfinite(to_host(x).astype(np.float32)).all() for x in leaves)


class Checkpoints:
    """Orbax checkpoints of ``(model state, optimizer state, JSON metadata)``, one per epoch.

    Checkpoint ``k`` holds the state after ``k`` completed epochs. Saves are asynchronous (the
    next epoch trains while the files are written) and atomic: orbax writes into
    ``k.orbax-checkpoint-tmp`` and renames it to ``k`` when done.

    Args:
        directory: the checkpoint folder.
        fresh: remove existing checkpoints first (a new run); ``False`` keeps them for a resume.
        max_to_keep: how many recent checkpoints are kept.
        kill_during_save: test hook: SIGKILL this process while the checkpoint of that epoch is
            being written.
    """

    def __init__(self, directory: Path, *, fresh: bool, max_to_keep: int = 3, kill_during_save: int | None = None):
        self.directory = Path(directory).absolute()
        if fresh:
            # Process 0 decides and clears; the others wait for it (whatever they see on disk).
            if is_main_process() and self.directory.exists():
                shutil.rmtree(self.directory)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("convnn-examples-clear-checkpoints")
        self.kill_during_save = kill_during_save
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=True,
            ),
        )

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, model: nnx.Module, optimizer: nnx.Optimizer, meta: dict) -> None:
        state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
        self.manager.save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )
        if self.kill_during_save == epoch:
            # The save above returned once the arrays were copied to host memory; a background
            # thread writes the files into a temporary directory. On a loaded machine that thread
            # may not have created it yet, so wait (at most 30 s) until it has: then the kill
            # lands mid-write, as the hook promises.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(self.directory.glob(f"{epoch}.*tmp*")):
                time.sleep(0.001)
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def restore(self, model: nnx.Module, optimizer: nnx.Optimizer, epoch: int | None = None) -> dict | None:
        """Loads checkpoint ``epoch`` (default: the latest) into ``model`` and ``optimizer``.

        Returns its metadata, or ``None`` when there is no checkpoint. Arrays come back with the
        shardings the model's current arrays have (replicated over the mesh).
        """
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            return None
        current = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, current)
        restored = self.manager.restore(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
        )
        nnx.update(model, restored["state"]["model"])
        nnx.update(optimizer, restored["state"]["optimizer"])
        return restored["meta"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# --------------------------------------------------------------------------------------------
# The epoch loop
# --------------------------------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    if is_main_process():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)


def steps_per_epoch(n_train: int, args: argparse.Namespace) -> int:
    """Full batches per epoch (the last partial batch is dropped: different samples each epoch)."""
    steps = n_train // args.batch_size
    if steps == 0:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training set ({n_train} samples)")
    if args.steps_per_epoch is not None:
        steps = min(steps, args.steps_per_epoch)
    return steps


def fit(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    *,
    data: dict[str, np.ndarray],
    args: argparse.Namespace,
    mesh: Mesh,
    config: dict,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> dict:
    """Trains for ``args.epochs`` epochs (or the remainder after a resume) and checkpoints.

    Args:
        model, optimizer: NNX model and ``nnx.Optimizer``, already replicated over ``mesh``.
        data: ``x_train``, ``y_train``, ``x_test``, ``y_test`` as NumPy arrays (all processes
            hold all of it).
        args: parsed flags of :func:`add_common_args`.
        mesh: from :func:`make_mesh`; ``args.batch_size`` must divide by its size.
        config: the settings that define the run (stored in the checkpoints; a resume with
            different settings is refused).
        augment: optional ``augment(x_batch, rng) -> x_batch`` on host arrays; ``rng`` is drawn
            from ``(seed, epoch)`` so a resumed run augments identically.

    Returns:
        The history: per-epoch ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
        per-step ``step_loss``, and the final test ``predictions``.

    Raises:
        NonFiniteLossError: a NaN/inf loss or parameter; the last good checkpoint is kept.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_step, eval_step = make_classifier_steps()
    x_train, y_train = data["x_train"], data["y_train"]
    n_dev = mesh.devices.size
    bs = args.batch_size
    if bs % n_dev:
        raise UsageError(
            f"--batch-size {bs} must be divisible by the number of devices in the mesh ({n_dev}); "
            "change it or pass --no-data-parallel"
        )
    steps = steps_per_epoch(len(x_train), args)
    config = dict(config, epochs=args.epochs, batch_size=bs, seed=args.seed, lr=args.lr, steps_per_epoch=steps)
    main = is_main_process()

    ckpt = Checkpoints(out / "checkpoints", fresh=not args.resume, kill_during_save=args.debug_kill_during_save)
    history: dict[str, list] = {k: [] for k in ("train_loss", "train_acc", "test_loss", "test_acc", "step_loss")}
    start = 0
    try:
        if args.resume:
            meta = ckpt.restore(model, optimizer)
            if meta is None:
                print(f"no checkpoint in {ckpt.directory}; starting from scratch")
            else:
                if meta["config"] != config:
                    changed = {k: (meta["config"].get(k), v) for k, v in config.items() if meta["config"].get(k) != v}
                    raise UsageError(
                        f"cannot resume from {ckpt.directory}: it was written with other settings "
                        f"(setting: (checkpoint, now)) {changed}; use the same flags, or start afresh without --resume"
                    )
                start, history = meta["epoch"], meta["history"]
                print(f"resumed from the checkpoint of epoch {start} in {ckpt.directory}")

        t0 = time.perf_counter()
        for epoch in range(start + 1, args.epochs + 1):
            order = epoch_rng(args.seed, epoch, 0).permutation(len(x_train))
            aug_rng = epoch_rng(args.seed, epoch, 1)
            model.train()
            loss_sum, correct = 0.0, 0
            bar = tqdm(range(steps), desc=f"epoch {epoch}/{args.epochs}", unit="step", disable=not main, leave=True)
            for i in bar:
                idx = order[i * bs : (i + 1) * bs]
                x, y = x_train[idx], y_train[idx]
                if augment is not None:
                    x = augment(x, aug_rng)
                global_step = (epoch - 1) * steps + i
                if args.debug_nan_at_step == global_step:
                    x = x.astype(np.float32, copy=True)
                    x.flat[0] = np.nan  # a corrupted sample
                loss, c = train_step(model, optimizer, *shard_batch(mesh, x, y))
                loss = float(loss)
                if not math.isfinite(loss):
                    bar.close()
                    raise NonFiniteLossError(
                        f"non-finite training loss ({loss}) at epoch {epoch}, step {i + 1} "
                        f"(global step {global_step}); stopping. {_last_good(ckpt)}"
                    )
                loss_sum += loss
                correct += int(c)
                history["step_loss"].append(loss)
                bar.set_postfix(loss=f"{loss_sum / (i + 1):.4f}", acc=f"{correct / ((i + 1) * bs):.4f}")
            bar.close()
            model.eval()
            test_loss, test_acc, _ = evaluate(
                eval_step, model, data["x_test"], data["y_test"], batch_size=bs, mesh=mesh
            )
            if not (math.isfinite(test_loss) and _all_finite(nnx.state(model))):
                raise NonFiniteLossError(
                    f"non-finite parameters or test loss after epoch {epoch}; stopping. {_last_good(ckpt)}"
                )
            history["train_loss"].append(loss_sum / steps)
            history["train_acc"].append(correct / (steps * bs))
            history["test_loss"].append(test_loss)
            history["test_acc"].append(test_acc)
            if main:
                tqdm.write(
                    f"epoch {epoch}: train loss {loss_sum / steps:.4f}, train acc {correct / (steps * bs):.4f}, "
                    f"test loss {test_loss:.4f}, test acc {test_acc:.4f}"
                )
            # A copy of the history: the checkpoint's metadata is written by a background thread,
            # possibly after the next epoch has appended to the live lists.
            snapshot = {k: list(v) for k, v in history.items()}
            ckpt.save(epoch, model, optimizer, {"epoch": epoch, "config": config, "history": snapshot})
            write_json(out / "metrics.json", {"config": config, "devices": int(n_dev), **history})
        ckpt.close()
    except BaseException:
        # Let a save that is in flight finish (the last good checkpoint stays complete).
        ckpt.manager.wait_until_finished()
        raise
    model.eval()
    test_loss, test_acc, predictions = evaluate(
        eval_step, model, data["x_test"], data["y_test"], batch_size=bs, mesh=mesh
    )
    if start < args.epochs and main:
        print(f"trained epochs {start + 1}..{args.epochs} in {time.perf_counter() - t0:.1f} s")
    write_json(out / "metrics.json", {"config": config, "devices": int(n_dev), **history})
    return dict(history, final_test_loss=test_loss, final_test_acc=test_acc, predictions=predictions)


def _last_good(ckpt: Checkpoints) -> str:
    ckpt.manager.wait_until_finished()
    epoch = ckpt.latest_epoch()
    if epoch is None:
        return "No checkpoint was written."
    return (
        f"The last good checkpoint (epoch {epoch}) is kept in {ckpt.directory}; "
        "continue from it with --resume (for example with a lower --lr)."
    )


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot_history(history: dict, path: Path, title: str = "") -> None:
    """Loss (per step and per epoch) and accuracy (per epoch) curves as one PNG."""
    if not is_main_process():
        return
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    steps = len(history["step_loss"])
    if steps and len(epochs):
        per_epoch = steps / len(epochs)
        ax_loss.plot(np.arange(1, steps + 1) / per_epoch, history["step_loss"], lw=0.6, alpha=0.4, label="train (step)")
    ax_loss.plot(epochs, history["train_loss"], "o-", label="train")
    ax_loss.plot(epochs, history["test_loss"], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_loss.legend()
    ax_acc.plot(epochs, history["train_acc"], "o-", label="train")
    ax_acc.plot(epochs, history["test_acc"], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    path: Path,
    *,
    class_names: list[str] | None = None,
    max_images: int = 36,
) -> int:
    """A grid of misclassified images titled ``true X / pred Y``; returns how many there were.

    ``images`` are ``(N, H, W)`` or ``(N, H, W, C)`` (C = 1 or 3), floats in [0, 1] or uint8.
    """
    if not is_main_process():
        return 0
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(labels != predictions)
    shown = wrong[:max_images]
    name = (lambda c: class_names[c]) if class_names else str
    cols = max(1, min(6, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        img = images[i]
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        ax.imshow(img, cmap="gray_r" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"true {name(labels[i])}\npred {name(predictions[i])}", fontsize=8, color="tab:red")
    if len(shown) == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    fig.suptitle(f"misclassified: {len(wrong)} of {len(labels)} test images" + (f" (first {len(shown)})" if len(wrong) > len(shown) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(wrong)
