"""Checkpoints that neither lose a run nor resume it from damaged data (used by train_cifar.py).

Orbax writes every checkpoint into a temporary folder and renames it when all files are on
disk, so a process killed during a save keeps the previous checkpoint (the partial folder is
removed the next time the folder is opened). On top of that, :class:`Checkpoints`:

* records a SHA-256 checksum of every array and of the metadata in each checkpoint, and verifies
  them on restore. A damaged or partial checkpoint (a flipped byte, a truncated or deleted file,
  a missing folder) is reported by name, moved to ``<folder>-damaged/``, and the newest intact
  one is used; with none intact, :class:`CheckpointError` lists what is wrong with each.
* never deletes the checkpoints of an earlier run: a new run in a folder that holds checkpoints
  stops with :class:`CheckpointError` unless it resumes or ``overwrite=True`` is passed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpoints", "checksums"]


class CheckpointError(RuntimeError):
    """Checkpoints that cannot be used (none intact) or must not be touched (an earlier run's)."""


def _host(x: Any) -> np.ndarray:
    """The whole value of an array as NumPy (replicated multi-host arrays: the local copy)."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:
            if not x.is_fully_replicated:
                from jax.experimental import multihost_utils

                return np.asarray(multihost_utils.process_allgather(x, tiled=True))
            x = x.addressable_shards[0].data
    return np.asarray(x)


def checksums(tree: Any) -> dict[str, str]:
    """SHA-256 of every array of ``tree`` (dtype, shape and bytes), keyed by its path."""
    sums = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.ascontiguousarray(_host(leaf))
        h = hashlib.sha256(f"{a.dtype.str} {a.shape} ".encode())
        h.update(a.tobytes())
        sums[jax.tree_util.keystr(path)] = h.hexdigest()
    return sums


def _json_sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0].split(" See full TensorStore details")[0] if lines else ""
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


class Checkpoints:
    """Per-epoch orbax checkpoints of a state pytree plus JSON metadata, with checksums.

    Args:
        directory: the checkpoint folder (one subfolder per epoch).
        resume: the run continues from these checkpoints; otherwise the folder must hold none.
        overwrite: a new run deletes the checkpoints it finds (only with this flag).
        max_to_keep: how many recent checkpoints a run keeps.
        main_process: whether this process writes messages and moves damaged checkpoints.

    Raises:
        CheckpointError: a new run (``resume=False``) found checkpoints and ``overwrite`` is off.
    """

    def __init__(self, directory: Path, *, resume: bool, overwrite: bool = False,
                 max_to_keep: int = 3, main_process: bool = True):
        self.directory = Path(directory).absolute()
        self.main_process = main_process
        found = self.epochs_on_disk()
        if found and not resume:
            if not overwrite:
                raise CheckpointError(
                    f"{self.directory} holds the checkpoints of an earlier run (epochs "
                    f"{', '.join(map(str, sorted(found)))}); continue it with --resume, delete "
                    "them with --overwrite, or choose another --out"
                )
            if main_process:
                shutil.rmtree(self.directory)
            self._sync("clear")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, cleanup_tmp_directories=True,
                enable_async_checkpointing=True,
            ),
        )

    def epochs_on_disk(self) -> list[int]:
        """Epochs with a (complete or damaged) checkpoint folder, newest first."""
        if not self.directory.is_dir():
            return []
        return sorted((int(p.name) for p in self.directory.iterdir() if p.name.isdigit()),
                      reverse=True)

    def _sync(self, name: str) -> None:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"examples-checkpoints-{name}")

    def _log(self, message: str) -> None:
        if self.main_process:
            print(message, file=sys.stderr, flush=True)

    def latest_epoch(self) -> int | None:
        self.manager.wait_until_finished()
        return self.manager.latest_step()

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        """Starts writing checkpoint ``epoch`` (the next epoch trains while it is written)."""
        body = {"meta": meta, "checksums": checksums(state)}
        record = dict(body, sha256=_json_sha(body))
        self.manager.save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(record)),
        )

    def _read_meta(self, epoch: int) -> dict:
        record = self.manager.restore(
            epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).get("meta")
        if not isinstance(record, dict) or "sha256" not in record:
            raise ValueError("its metadata is missing or has no checksums")
        body = {k: v for k, v in record.items() if k != "sha256"}
        if _json_sha(body) != record["sha256"]:
            raise ValueError("its metadata does not match its checksum")
        return body

    def _read_state(self, epoch: int, target: Any, expected: dict[str, str]) -> Any:
        state = self.manager.restore(
            epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        ).get("state")
        if state is None:
            raise ValueError("its arrays are missing")
        sums = checksums(state)
        if sums.keys() != expected.keys():
            raise ValueError("its arrays are not the ones its metadata lists")
        bad = [k for k in sums if sums[k] != expected[k]]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ValueError(f"array {bad[0]} does not match its checksum{more}")
        return state

    def restore(self, target: Any, check: Callable[[dict], None] = lambda meta: None
                ) -> tuple[int, Any, dict] | None:
        """The newest intact checkpoint as ``(epoch, state, meta)``; ``None`` when there is none.

        Args:
            target: a pytree like the saved state (its arrays give shapes, dtypes and
                shardings).
            check: called with a checkpoint's verified metadata before its arrays are read; it
                raises to refuse the checkpoint (settings that do not match, for example), and
                that error propagates.

        Damaged checkpoints newer than the one used are reported and moved aside.

        Raises:
            CheckpointError: checkpoints exist but none is intact.
        """
        damaged: list[tuple[int, str]] = []
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for epoch in self.epochs_on_disk():
            state = None
            try:
                body = self._read_meta(epoch)
            except Exception as err:  # any problem with the files: try an older checkpoint
                damaged.append((epoch, _reason(err)))
            else:
                check(body["meta"])
                try:
                    state = self._read_state(epoch, target, body["checksums"])
                except Exception as err:
                    damaged.append((epoch, _reason(err)))
            if state is None:
                self._log(f"checkpoint {self.directory / str(epoch)} is damaged "
                          f"({damaged[-1][1]}); trying the previous one")
                continue
            self._set_aside([e for e, _ in damaged])
            return epoch, state, body["meta"]
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {self.directory}: "
                + "; ".join(f"epoch {e}: {why}" for e, why in damaged)
            )
        return None

    def _set_aside(self, epochs: list[int]) -> None:
        """Moves damaged checkpoints out of the way of new saves (nothing is deleted)."""
        if not epochs:
            return
        aside = self.directory.with_name(self.directory.name + "-damaged")
        if self.main_process:
            aside.mkdir(exist_ok=True)
            for epoch in epochs:
                dest, n = aside / str(epoch), 1
                while dest.exists():
                    dest, n = aside / f"{epoch}.{n}", n + 1
                shutil.move(self.directory / str(epoch), dest)
                self._log(f"moved the damaged checkpoint of epoch {epoch} to {dest}")
        self._sync("set-aside")
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
