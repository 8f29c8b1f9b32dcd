"""The examples run end to end with tiny settings, and their training loop keeps its promises.

Every example runs in a subprocess (clean JAX settings: this suite's conftest turns on x64 and
strict promotion, and the device count must be fixed before JAX is imported). The runs are
independent, so they start together at the beginning of the module, two at a time, and each
test waits for the ones it reads:

* smoke runs of every example (files written, last line ``test accuracy: ...``);
* resume equality: a run SIGKILLed while writing the checkpoint of epoch 2 is resumed by a new
  process from epoch 1 and ends with bit-identical parameters, optimizer state and loss curve;
* kill-during-save survival: after the kill, epoch 2's temporary directory is left behind and
  epoch 1's checkpoint restores (in this process) to the uninterrupted run's epoch-1 state;
* non-finite loss: a NaN injected into one batch stops the run with a message, exit status 1,
  and the last good checkpoint intact;
* data parallelism: 8 simulated CPU devices give the single-device loss curve, and so do two
  processes joined by ``jax.distributed.initialize`` (the multi-host path, on localhost);
* the CIFAR-10 binary reader against records assembled from the format's description.

Tiers: the module is marked ``examples``; the fast tier runs the digits smoke run (the main job)
and the CIFAR reader; the kill, NaN, multi-device and multi-process runs and the CIFAR, port and
filters smoke runs are ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tolerances import assert_close

# one worker runs the module: its fixture starts every selected run at once
pytestmark = [pytest.mark.examples, pytest.mark.xdist_group("examples")]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LAST_LINE = re.compile(r"^test accuracy: (\d\.\d{4})$")
# Tiny digits runs: 3 epochs of 3 steps, batch 16 (divisible by 8 devices).
DIGITS = ["--epochs", "3", "--steps-per-epoch", "3", "--batch-size", "16", "--width", "8"]


CACHE_DIR: Path | None = None  # set by the jobs fixture


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
    )
    if CACHE_DIR is not None:
        # The digits runs compile the same train step again and again: share JAX's persistent
        # compilation cache between the subprocesses of this module (a fresh folder per session).
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(CACHE_DIR),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.3",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def _run(argv: list[str], *, devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _script(name: str, *args) -> list[str]:
    return [EXAMPLES / name, *args]


def _ok(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"{what} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _restore(step_dir: Path) -> dict:
    """A checkpoint's arrays, keyed by path, read in this process with orbax."""
    import jax
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(step_dir / "state")
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_trees_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"{what}: {key} differs"


# --------------------------------------------------------------------------------------------
# The subprocess runs, started together
# --------------------------------------------------------------------------------------------


def job_digits_full(tmp: Path):
    """The uninterrupted reference run; then --resume on the finished run, then a mismatched resume."""
    out = tmp / "digits_full"
    full = _run(_script("train_digits.py", *DIGITS, "--out", out))
    snapshot = tmp / "digits_full_ckpt"
    if full.returncode == 0:
        shutil.copytree(out / "checkpoints", snapshot)
    again = _run(_script("train_digits.py", *DIGITS, "--out", out, "--resume"))
    mismatch = _run(_script("train_digits.py", *DIGITS, "--out", out, "--resume", "--lr", "0.5"))
    return {"out": out, "ckpt": snapshot, "full": full, "again": again, "mismatch": mismatch}


def job_digits_kill(tmp: Path):
    """SIGKILL inside the save of epoch 2 (a test hook), then a new process resumes."""
    out = tmp / "digits_kill"
    killed = _run(_script("train_digits.py", *DIGITS, "--out", out, "--debug-kill-during-save", "2"))
    listing = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []
    after_kill = tmp / "digits_kill_ckpt"
    if (out / "checkpoints").is_dir():
        shutil.copytree(out / "checkpoints", after_kill)
    resumed = _run(_script("train_digits.py", *DIGITS, "--out", out, "--resume"))
    return {"out": out, "killed": killed, "listing": listing, "after_kill": after_kill, "resumed": resumed}


def job_digits_nan(tmp: Path):
    out = tmp / "digits_nan"
    # Global step 4 is epoch 2, step 2 (3 steps per epoch).
    proc = _run(_script("train_digits.py", *DIGITS, "--out", out, "--debug-nan-at-step", "4"))
    return {"out": out, "proc": proc}


SHARDED_DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import jax
    assert jax.device_count() == 8, jax.devices()
    import train_digits
    args = sys.argv[4:]
    assert train_digits.main(args + ["--no-data-parallel", "--out", sys.argv[2]]) == 0
    assert train_digits.main(args + ["--out", sys.argv[3]]) == 0  # data parallel: the default
    """
)


def job_digits_sharded(tmp: Path):
    single, sharded = tmp / "digits_single", tmp / "digits_sharded"
    proc = _run(["-c", SHARDED_DRIVER, EXAMPLES, single, sharded, *DIGITS], devices=8)
    return {"single": single, "sharded": sharded, "proc": proc}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def job_digits_multiprocess(tmp: Path):
    """Two processes joined by jax.distributed.initialize (the multi-host path) on one machine."""
    out = tmp / "digits_multiprocess"
    flags = ["--coordinator-address", f"localhost:{_free_port()}", "--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [sys.executable, EXAMPLES / "train_digits.py", *DIGITS, "--out", out, *flags, "--process-id", str(i)],
            cwd=ROOT,
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return {"out": out, "procs": results}


def write_fake_cifar(directory: Path, n_train: int, n_test: int, seed: int = 0):
    """Files in CIFAR-10's binary format, each record assembled from the format's description.

    Returns the images ``(N, 32, 32, 3)`` and labels that the records encode (train, test).
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    files = [(f"data_batch_{i}.bin", n_train) for i in range(1, 6)] + [("test_batch.bin", n_test)]
    for name, n in files:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        with open(directory / name, "wb") as f:
            for img, label in zip(images, labels):
                f.write(bytes([label]))
                for channel in range(3):  # 1024 red bytes, then green, then blue; rows in order
                    for row in range(32):
                        f.write(img[row, :, channel].tobytes())
        out[name] = (images, labels)
    return out


def job_cifar(tmp: Path):
    data, out = tmp / "cifar_data", tmp / "cifar_out"
    write_fake_cifar(data, n_train=8, n_test=10)
    args = ["--data-dir", data, "--out", out, "--epochs", "2", "--batch-size", "8", "--steps-per-epoch", "2"]
    proc = _run(_script("train_cifar.py", *args, "--width", "8", "--blocks", "1", "--bf16"))
    return {"out": out, "proc": proc}


def job_port(tmp: Path):
    return {"proc": _run(_script("port_from_torch.py", "--size", "16", "--batch", "4"))}


def job_filters(tmp: Path):
    out = tmp / "filters"
    return {"out": out, "proc": _run(_script("filters.py", "--out", out, "--size", "96"))}


JOBS = {
    "digits_full": job_digits_full,
    "digits_kill": job_digits_kill,
    "digits_nan": job_digits_nan,
    "digits_sharded": job_digits_sharded,
    "digits_multiprocess": job_digits_multiprocess,
    "cifar": job_cifar,
    "port": job_port,
    "filters": job_filters,
}
# Which jobs each test reads (only the jobs of the selected tests are started).
NEEDS = {
    "test_digits_smoke": ["digits_full"],
    "test_digits_resume_after_completion": ["digits_full"],
    "test_digits_resume_with_other_settings_is_refused": ["digits_full"],
    "test_digits_killed_during_save_keeps_previous_checkpoint": ["digits_full", "digits_kill"],
    "test_digits_resume_equals_uninterrupted_run": ["digits_full", "digits_kill"],
    "test_digits_non_finite_loss_stops_and_keeps_last_good_checkpoint": ["digits_full", "digits_nan"],
    "test_digits_sharded_matches_single_device": ["digits_sharded"],
    "test_digits_multi_process_matches_single_device": ["digits_sharded", "digits_multiprocess"],
    "test_cifar_smoke": ["cifar"],
    "test_port_from_torch": ["port"],
    "test_filters": ["filters"],
}


@pytest.fixture(scope="module")
def jobs(request, tmp_path_factory):
    # Doctest items of the same session have no .module: compare with getattr.
    selected = {
        item.originalname
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    }
    names = sorted({job for test in selected for job in NEEDS.get(test, [])}, key=list(JOBS).index)
    tmp = tmp_path_factory.mktemp("examples")
    global CACHE_DIR
    CACHE_DIR = tmp / "jax_cache"
    pool = ThreadPoolExecutor(max_workers=2)  # two cores: two runs at a time
    futures = {name: pool.submit(JOBS[name], tmp) for name in names}
    yield {name: f for name, f in futures.items()}
    pool.shutdown(wait=True)


def _get(jobs, name):
    return jobs[name].result()


# --------------------------------------------------------------------------------------------
# train_digits.py
# --------------------------------------------------------------------------------------------


def test_digits_smoke(jobs):
    r = _get(jobs, "digits_full")
    proc = _ok(r["full"], "train_digits.py")
    out = r["out"]
    assert LAST_LINE.match(_last_line(proc)), proc.stdout[-500:]
    assert _is_png(out / "curves.png") and _is_png(out / "misclassified.png")
    # A tqdm bar per epoch, with loss and accuracy.
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}/3" in proc.stderr
    assert "loss=" in proc.stderr and "acc=" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["test_acc"]) == 3 and len(metrics["step_loss"]) == 9
    assert all(np.isfinite(metrics["step_loss"]))
    # The printed accuracy is the last epoch's test accuracy (same parameters, eval mode).
    assert float(LAST_LINE.match(_last_line(proc)).group(1)) == pytest.approx(metrics["test_acc"][-1], abs=6e-5)
    assert sorted(p.name for p in r["ckpt"].iterdir()) == ["1", "2", "3"]  # one per epoch


def test_digits_resume_after_completion(jobs):
    r = _get(jobs, "digits_full")
    _ok(r["full"], "train_digits.py")
    again = _ok(r["again"], "train_digits.py --resume (finished run)")
    assert "resumed from the checkpoint of epoch 3" in again.stdout
    assert "epoch 1/3" not in again.stderr  # nothing left to train
    assert _last_line(again) == _last_line(r["full"])


def test_digits_resume_with_other_settings_is_refused(jobs):
    proc = _get(jobs, "digits_full")["mismatch"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot resume" in proc.stderr and "'lr'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_digits_killed_during_save_keeps_previous_checkpoint(jobs):
    full = _get(jobs, "digits_full")
    r = _get(jobs, "digits_kill")
    assert r["killed"].returncode == -signal.SIGKILL, (r["killed"].returncode, r["killed"].stderr[-2000:])
    # Killed while epoch 2 was being written: its temporary directory is left, epoch 1 complete.
    assert "1" in r["listing"] and "2" not in r["listing"], r["listing"]
    assert any(name.startswith("2.") and "tmp" in name for name in r["listing"]), r["listing"]
    # A new process (this one) restores epoch 1: the uninterrupted run's epoch-1 state.
    _assert_trees_equal(_restore(r["after_kill"] / "1"), _restore(full["ckpt"] / "1"), "epoch-1 checkpoint")


@pytest.mark.slow
def test_digits_resume_equals_uninterrupted_run(jobs):
    full = _get(jobs, "digits_full")
    r = _get(jobs, "digits_kill")
    resumed = _ok(r["resumed"], "train_digits.py --resume (after the kill)")
    assert "resumed from the checkpoint of epoch 1" in resumed.stdout
    assert "epoch 1/3" not in resumed.stderr and "epoch 2/3" in resumed.stderr
    # Parameters and optimizer state after epoch 3: bit for bit.
    _assert_trees_equal(_restore(r["out"] / "checkpoints" / "3"), _restore(full["ckpt"] / "3"), "epoch-3 checkpoint")
    a = json.loads((r["out"] / "metrics.json").read_text())
    b = json.loads((full["out"] / "metrics.json").read_text())
    assert a["step_loss"] == b["step_loss"] and a["test_acc"] == b["test_acc"]
    assert _last_line(resumed) == _last_line(full["full"])


@pytest.mark.slow
def test_digits_non_finite_loss_stops_and_keeps_last_good_checkpoint(jobs):
    full = _get(jobs, "digits_full")
    r = _get(jobs, "digits_nan")
    proc = r["proc"]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "non-finite training loss (nan) at epoch 2, step 2" in proc.stderr
    assert "last good checkpoint (epoch 1)" in proc.stderr
    assert "Traceback" not in proc.stderr and "test accuracy" not in proc.stdout
    assert sorted(p.name for p in (r["out"] / "checkpoints").iterdir()) == ["1"]
    restored = _restore(r["out"] / "checkpoints" / "1")
    assert all(np.isfinite(v).all() for v in restored.values() if v.dtype.kind == "f")
    _assert_trees_equal(restored, _restore(full["ckpt"] / "1"), "last good checkpoint")


@pytest.mark.slow
def test_digits_sharded_matches_single_device(jobs):
    r = _get(jobs, "digits_sharded")
    _ok(r["proc"], "train_digits.py on 8 devices")
    single = json.loads((r["single"] / "metrics.json").read_text())
    sharded = json.loads((r["sharded"] / "metrics.json").read_text())
    assert single["devices"] == 1 and sharded["devices"] == 8
    assert len(single["step_loss"]) == len(sharded["step_loss"]) == 9
    # The all-reduce sums the gradients in another order: equal to float32 rounding, not bitwise.
    assert_close(sharded["step_loss"], single["step_loss"], np.float32, what="step losses")
    assert_close(sharded["test_loss"], single["test_loss"], np.float32, what="test losses")


@pytest.mark.slow
def test_digits_multi_process_matches_single_device(jobs):
    single = json.loads((_get(jobs, "digits_sharded")["single"] / "metrics.json").read_text())
    r = _get(jobs, "digits_multiprocess")
    for i, proc in enumerate(r["procs"]):
        _ok(proc, f"train_digits.py process {i} of 2")
    main, other = r["procs"]
    assert "2 cpu device(s) in 2 process(es)" in main.stdout
    assert LAST_LINE.match(_last_line(main)) and "test accuracy" not in other.stdout  # process 0 reports
    multi = json.loads((r["out"] / "metrics.json").read_text())
    assert multi["devices"] == 2
    assert_close(multi["step_loss"], single["step_loss"], np.float32, what="step losses")
    assert sorted(p.name for p in (r["out"] / "checkpoints").iterdir()) == ["1", "2", "3"]


# --------------------------------------------------------------------------------------------
# train_cifar.py
# --------------------------------------------------------------------------------------------


def _import_example(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def test_cifar_reader_reads_the_binary_format(tmp_path):
    train_cifar = _import_example("train_cifar")
    written = write_fake_cifar(tmp_path, n_train=3, n_test=4, seed=1)
    data = train_cifar.load_cifar10(tmp_path)
    expected_x = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    expected_y = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert data["x_train"].shape == (15, 32, 32, 3) and data["x_train"].dtype == np.uint8
    np.testing.assert_array_equal(data["x_train"], expected_x)
    np.testing.assert_array_equal(data["y_train"], expected_y)
    np.testing.assert_array_equal(data["x_test"], written["test_batch.bin"][0])
    np.testing.assert_array_equal(data["y_test"], written["test_batch.bin"][1])
    # The parent of an extracted cifar-10-batches-bin folder works too.
    nested = write_fake_cifar(tmp_path / "parent" / "cifar-10-batches-bin", n_train=1, n_test=2, seed=2)
    np.testing.assert_array_equal(
        train_cifar.load_cifar10(tmp_path / "parent")["x_test"], nested["test_batch.bin"][0]
    )


def test_cifar_reader_errors(tmp_path, capsys):
    train_cifar = _import_example("train_cifar")
    write_fake_cifar(tmp_path, n_train=2, n_test=2)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_3\.bin.*binary version"):
        train_cifar.load_cifar10(tmp_path)
    # The script reports it in one line, exit status 2, before any JAX work.
    assert train_cifar.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "data_batch_3.bin" in capsys.readouterr().err
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(bytes(3073 + 100))
    with pytest.raises(ValueError, match="3173 bytes is not a whole number of 3073-byte"):
        train_cifar.read_cifar10_file(truncated)
    bad_label = tmp_path / "label.bin"
    bad_label.write_bytes(bytes([3]) + bytes(3072) + bytes([10]) + bytes(3072))
    with pytest.raises(ValueError, match="record 1 has label byte 10"):
        train_cifar.read_cifar10_file(bad_label)


@pytest.mark.slow
def test_cifar_smoke(jobs):
    r = _get(jobs, "cifar")
    proc = _ok(r["proc"], "train_cifar.py --bf16")
    out = r["out"]
    assert "bfloat16 compute" in proc.stdout
    assert LAST_LINE.match(_last_line(proc)), proc.stdout[-500:]
    assert _is_png(out / "curves.png") and _is_png(out / "misclassified.png")
    assert "epoch 2/2" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["test_acc"]) == 2 and len(metrics["step_loss"]) == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1", "2"]
    state = _restore(out / "checkpoints" / "2")
    # Batch-norm running statistics were updated by training and are in the checkpoint.
    means = [v for k, v in state.items() if k.startswith("['model']") and "['mean']" in k]
    assert means and any(np.abs(m).max() > 0 for m in means)
    # Parameters stay float32 under --bf16.
    assert all(v.dtype == np.float32 for k, v in state.items() if "['weight']" in k)


# --------------------------------------------------------------------------------------------
# port_from_torch.py, filters.py
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_port_from_torch(jobs, torch):
    proc = _ok(_get(jobs, "port")["proc"], "port_from_torch.py")
    match = re.search(r"largest absolute difference of the outputs: (\S+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) < 1e-5
    assert "missing_keys=[]" in proc.stdout and "unexpected_keys=[]" in proc.stdout


@pytest.mark.slow
def test_filters(jobs):
    import matplotlib.image

    r = _get(jobs, "filters")
    _ok(r["proc"], "filters.py")
    for name in ["original", "gray", "sobel", "blur", "depthwise", "sepia"]:
        path = r["out"] / f"{name}.png"
        assert _is_png(path), name
        img = matplotlib.image.imread(path)
        assert img.shape[:2] == (96, 96), (name, img.shape)
    assert _is_png(r["out"] / "filters.png")
