"""The examples run end to end and keep their promises.

The scripts run in subprocesses (clean JAX settings: this suite's conftest turns on x64, and the
device count must be set before JAX is imported), from ``examples/`` so that they import their
helper modules as they do for a user. The fast tier runs tiny digits runs, the flag checks, the
figures and the checkpoint integrity of ``checkpointing.py`` in this process; the ``slow`` tier
runs ``train_cifar.py --synthetic``: resume rules, a SIGKILL during a save, the NaN stop, damaged
checkpoints end to end, data parallelism and two processes joined by
``jax.distributed.initialize``.

The test hooks (the SIGKILL during a save, the NaN batch) live here: a small driver wraps the
example's own functions before calling its ``main``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tolerances import assert_close

# one worker runs the module: its fixture starts every selected run at once
pytestmark = [pytest.mark.examples, pytest.mark.xdist_group("examples")]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LAST_LINE = re.compile(r"^test accuracy: (\d\.\d{4})$")
DIGITS = ["--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "16", "--width", "8"]
# Tiny CIFAR runs on generated data: 3 epochs of 2 steps, batch 16 (divisible by 8 devices).
CIFAR = ["--synthetic", "--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "16",
         "--width", "8", "--blocks", "1"]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent JAX compilation cache for this module's runs (inherited through the
    environment): the tiny runs compile the same programs again and again, which was about
    half of each run's time. A cached program is the same executable, so runs that must agree
    bit for bit still do."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
        yield


def _env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    # This checkout's convnn, not whichever one is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


def _run(argv, *, devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python *argv`` from ``examples/`` (the scripts import their helpers from there)."""
    return subprocess.run([sys.executable, *map(str, argv)], cwd=EXAMPLES, env=_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"{what} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
        f"--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


def _last_line(proc) -> str:
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _load(name: str):
    """An example's helper module, loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The flag checks of the scripts, in one subprocess: each call is (script, function, argv) and
# gives the exit status (or return value) and what was written to stderr.
CALL_DRIVER = textwrap.dedent(
    """
    import contextlib, importlib, io, json, sys
    results = []
    for script, function, argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = getattr(importlib.import_module(script), function)(argv)
                code = code if isinstance(code, int) else 0
            except SystemExit as e:
                code = e.code
        results.append([code, err.getvalue()])
    print(json.dumps(results))
    """
)


# --------------------------------------------------------------------------------------------
# train_digits.py
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_digits_smoke_and_log_output(tmp_path):
    out = tmp_path / "digits"
    proc = _ok(_run(["train_digits.py", *DIGITS, "--out", out]), "train_digits.py")
    assert LAST_LINE.match(_last_line(proc)), proc.stdout[-500:]
    assert _is_png(out / "curves.png") and _is_png(out / "misclassified.png")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["test_accuracy"]) == 2 and len(metrics["step_loss"]) == 6
    assert float(LAST_LINE.match(_last_line(proc)).group(1)) == pytest.approx(
        metrics["test_accuracy"][-1], abs=6e-5)
    # Not a terminal: one line per epoch on stdout, no progress bar (no line per step).
    assert [ln.split(":")[0] for ln in proc.stdout.splitlines() if ln.startswith("epoch")] == [
        "epoch 1", "epoch 2"]
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr[-2000:]


def test_digits_reads_top_to_bottom():
    source = (EXAMPLES / "train_digits.py").read_text()
    assert len(source.splitlines()) <= 200
    for name in ("def loss_fn", "def train_step", "def eval_step", "nnx.MultiMetric"):
        assert name in source, name
    imported = set(re.findall(r"^import (\w+)|^from (\w+)", source, re.M))
    local = {m for pair in imported for m in pair if (EXAMPLES / f"{m}.py").is_file()}
    assert local <= {"plots"}, local  # the training step is on the page
    assert "debug" not in source and "SIGKILL" not in source


FLAG_CASES = [
    ("train_digits", "parse_args", ["--width", "0"], r"--width must be at least 1; got 0"),
    ("train_digits", "parse_args", ["--max-shift", "-1"], r"--max-shift must be between 0 and 3"),
    ("train_digits", "parse_args", ["--max-shift", "20"], r"--max-shift .*got 20"),
    ("train_digits", "parse_args", ["--max-shift", "4"], r"--max-shift .*got 4"),
    ("train_digits", "parse_args", ["--out", "A_FILE"], r"--out .*existing file"),
    ("train_digits", "parse_args", ["--epochs", "0"], r"--epochs must be at least 1"),
    ("train_digits", "parse_args", ["--batch-size", "5000"], r"--batch-size .* 1 and 1437"),
    ("train_digits", "parse_args", ["--lr", "nan"], r"--lr must be a positive number"),
    ("train_digits", "parse_args", ["--lr", "-1"], r"--lr must be a positive number"),
    ("train_digits", "parse_args", ["--seed", "-3"], r"--seed must be at least 0"),
    ("train_digits", "parse_args", ["--steps-per-epoch", "0"], r"--steps-per-epoch"),
    ("train_digits", "parse_args", ["--max-shift", "3"], None),
    ("train_digits", "parse_args", [], None),
    ("train_cifar", "parse_args", ["--width", "0"], r"--width must be at least 1"),
    ("train_cifar", "parse_args", ["--blocks", "0"], r"--blocks must be at least 1"),
    ("train_cifar", "parse_args", ["--out", "A_FILE"], r"--out .*existing file"),
    ("train_cifar", "parse_args", ["--lr", "0"], r"--lr must be a positive number"),
    ("train_cifar", "parse_args", ["--resume", "--overwrite"], r"--resume and --overwrite"),
    ("train_cifar", "parse_args", ["--num-processes", "2", "--process-id", "2"],
     r"--process-id must be between 0"),
    ("train_cifar", "parse_args", ["--synthetic"], None),
    # A failed jax.distributed.initialize leaves nothing behind; it goes last all the same.
    ("train_cifar", "main", ["--synthetic", "--distributed", "--out", "OUT"],
     r"^error: jax.distributed.initialize\(\) failed .*--coordinator-address"),
]


@pytest.fixture(scope="module")
def flag_calls(tmp_path_factory):
    """Every call of FLAG_CASES, run in one subprocess: (exit status, stderr) per case."""
    tmp = tmp_path_factory.mktemp("flags")
    (tmp / "a_file").write_text("x")
    calls = [[script, function, [a.replace("A_FILE", str(tmp / "a_file")).replace(
        "OUT", str(tmp / "out")) for a in argv]] for script, function, argv, _ in FLAG_CASES]
    proc = _ok(_run(["-c", CALL_DRIVER, json.dumps(calls)]), "flag checks")
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


@pytest.mark.parametrize("case", range(len(FLAG_CASES)),
                         ids=[f"{c[0]}-{' '.join(c[2])}" for c in FLAG_CASES])
def test_flags_are_checked_up_front_in_one_line(flag_calls, case):
    script, function, argv, pattern = FLAG_CASES[case]
    code, err = flag_calls[case]
    if pattern is None:
        assert (code, err) == (0, ""), err
        return
    assert code == 2, (argv, code, err)
    lines = [ln for ln in err.strip().splitlines() if not re.match(r"^[WIE]\d{4} ", ln)]
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    assert re.search(pattern, lines[0]), (argv, err)


@pytest.mark.slow
def test_digits_ctrl_c_prints_one_line(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "train_digits.py", *DIGITS, "--out", str(tmp_path)], cwd=EXAMPLES,
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A child of a background job starts with SIGINT ignored; a terminal's Ctrl-C does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stdout.readline()  # printed just before the model is built and compiled
        assert "training" in first, first
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert stderr.strip().splitlines() == ["interrupted"], stderr[-3000:]


# --------------------------------------------------------------------------------------------
# plots.py
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_wrong", [0, 1, 50])
def test_misclassified_figure_fits_its_title(tmp_path, n_wrong):
    plots = _load("plots")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 360)
    predictions = labels.copy()
    predictions[:n_wrong] = (labels[:n_wrong] + 1) % 10
    images = rng.random((360, 8, 8, 1)).astype(np.float32)
    path = tmp_path / "m.png"
    fig = plots.plot_misclassified(images, labels, predictions, path)
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert width >= 600 and height >= 200, (width, height)
    title = fig._suptitle
    assert f"{n_wrong} of 360" in title.get_text()
    box = title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, box


def test_curves_keep_one_colour_per_split(tmp_path):
    plots = _load("plots")
    history = {"train_loss": [1.0, 0.5], "test_loss": [1.1, 0.6], "train_accuracy": [0.5, 0.8],
               "test_accuracy": [0.4, 0.7], "step_loss": [1.2, 1.0, 0.8, 0.5]}
    fig = plots.plot_curves(history, tmp_path / "c.png")
    assert _is_png(tmp_path / "c.png")
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() in ("train", "test"):
                colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert len(colours["train"]) == len(colours["test"]) == 1, colours
    assert colours["train"] != colours["test"]


# --------------------------------------------------------------------------------------------
# checkpointing.py: integrity, in this process
# --------------------------------------------------------------------------------------------


def _state(epoch: int) -> dict:
    import jax.numpy as jnp

    return {"w": jnp.arange(3000, dtype=jnp.float32) * epoch,
            "step": jnp.asarray(epoch, jnp.int32)}


def _damage(step_dir: Path, how: str) -> None:
    data = step_dir / "state" / "ocdbt.process_0" / "d"
    biggest = max(data.iterdir(), key=lambda p: p.stat().st_size) if data.is_dir() else None
    if how == "flipped data byte":
        raw = bytearray(biggest.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        biggest.write_bytes(bytes(raw))
    elif how == "truncated data file":
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    elif how == "truncated metadata":
        meta = step_dir / "meta" / "metadata"
        meta.write_bytes(meta.read_bytes()[:10])
    elif how == "deleted metadata":
        (step_dir / "meta" / "metadata").unlink()
    elif how == "deleted state folder":
        shutil.rmtree(step_dir / "state")
    else:
        raise AssertionError(how)


DAMAGE = ["flipped data byte", "truncated data file", "truncated metadata", "deleted metadata",
          "deleted state folder"]


def _saved(directory: Path, epochs=(1, 2, 3)):
    ckpt = _load("checkpointing")
    c = ckpt.Checkpoints(directory, resume=False)
    for e in epochs:
        c.save(e, _state(e), {"epoch": e})
    c.close()
    return ckpt


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, capsys, how):
    directory = tmp_path / "checkpoints"
    ckpt = _saved(directory)
    _damage(directory / "3", how)
    c = ckpt.Checkpoints(directory, resume=True)
    epoch, state, meta = c.restore(_state(0))
    c.close()
    assert epoch == 2 and meta == {"epoch": 2}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(2)["w"]))
    err = capsys.readouterr().err
    assert f"{directory / '3'} is damaged" in err, err
    # Kept for inspection, out of the way of the next save of epoch 3.
    assert (tmp_path / "checkpoints-damaged" / "3").is_dir() and not (directory / "3").exists()


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = _saved(directory, epochs=(1, 2))
    _damage(directory / "2", "flipped data byte")
    _damage(directory / "1", "deleted metadata")
    c = ckpt.Checkpoints(directory, resume=True)
    with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint .*epoch 2: .*checksum"
                       r".*epoch 1: "):
        c.restore(_state(0))
    c.close()
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]  # nothing moved or deleted


def test_new_run_keeps_an_earlier_runs_checkpoints(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = _saved(directory)
    with pytest.raises(ckpt.CheckpointError, match=r"epochs 1, 2, 3.*--resume.*--overwrite"):
        ckpt.Checkpoints(directory, resume=False)
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2", "3"]
    ckpt.Checkpoints(directory, resume=False, overwrite=True).close()
    assert not [p for p in directory.iterdir() if p.name.isdigit()]


def test_refused_checkpoint_is_not_reported_as_damaged(tmp_path, capsys):
    directory = tmp_path / "checkpoints"
    ckpt = _saved(directory)

    def check(meta):
        raise ValueError(f"settings differ at epoch {meta['epoch']}")

    c = ckpt.Checkpoints(directory, resume=True)
    with pytest.raises(ValueError, match="settings differ at epoch 3"):
        c.restore(_state(0), check)
    c.close()
    assert "damaged" not in capsys.readouterr().err
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2", "3"]


# --------------------------------------------------------------------------------------------
# train_cifar.py: flags and data (fast), runs (slow)
# --------------------------------------------------------------------------------------------


def write_fake_cifar(directory: Path, n_train: int, n_test: int, seed: int = 0):
    """Files in CIFAR-10's binary format, each record assembled from the format's description.

    Returns the images ``(N, 32, 32, 3)`` and labels that the records encode, per file.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    files = [(f"data_batch_{i}.bin", n_train) for i in range(1, 6)] + [("test_batch.bin", n_test)]
    for name, n in files:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        with open(directory / name, "wb") as f:
            for img, label in zip(images, labels, strict=True):
                f.write(bytes([label]))
                for channel in range(3):  # 1024 red bytes, then green, then blue; rows in order
                    for row in range(32):
                        f.write(img[row, :, channel].tobytes())
        out[name] = (images, labels)
    return out


@pytest.fixture(scope="module")
def train_cifar():
    # train_cifar imports its helpers by name, as it does when run from examples/.
    for name in ("plots", "checkpointing"):
        sys.modules.setdefault(name, _load(name))
    return _load("train_cifar")


def test_cifar_reader_reads_the_binary_format(tmp_path, train_cifar):
    written = write_fake_cifar(tmp_path, n_train=3, n_test=4, seed=1)
    data = train_cifar.load_cifar10(tmp_path)
    expected_x = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    expected_y = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert data["x_train"].shape == (15, 32, 32, 3) and data["x_train"].dtype == np.uint8
    np.testing.assert_array_equal(data["x_train"], expected_x)
    np.testing.assert_array_equal(data["y_train"], expected_y)
    np.testing.assert_array_equal(data["x_test"], written["test_batch.bin"][0])
    np.testing.assert_array_equal(data["y_test"], written["test_batch.bin"][1])
    nested = write_fake_cifar(tmp_path / "parent" / "cifar-10-batches-bin", 1, 2, seed=2)
    np.testing.assert_array_equal(
        train_cifar.load_cifar10(tmp_path / "parent")["x_test"], nested["test_batch.bin"][0]
    )


def test_cifar_reader_errors(tmp_path, capsys, train_cifar):
    write_fake_cifar(tmp_path, n_train=2, n_test=2)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_3\.bin.*binary version"):
        train_cifar.load_cifar10(tmp_path)
    # The script reports it in one line, exit status 2, and names the offline option.
    assert train_cifar.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data_batch_3.bin" in err and "--synthetic" in err and len(err.splitlines()) == 1
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(bytes(3073 + 100))
    with pytest.raises(ValueError, match="3173 bytes is not a whole number of 3073-byte"):
        train_cifar.read_cifar10_file(truncated)
    bad_label = tmp_path / "label.bin"
    bad_label.write_bytes(bytes([3]) + bytes(3072) + bytes([10]) + bytes(3072))
    with pytest.raises(ValueError, match="record 1 has label byte 10"):
        train_cifar.read_cifar10_file(bad_label)


def test_cifar_synthetic_data_is_cifar_shaped_and_learnable(train_cifar):
    data = train_cifar.synthetic_cifar10(n_train=200, n_test=100, seed=3)
    assert data["x_train"].shape == (200, 32, 32, 3) and data["x_train"].dtype == np.uint8
    assert data["x_test"].shape == (100, 32, 32, 3) and set(np.unique(data["y_train"])) == set(
        range(10))
    again = train_cifar.synthetic_cifar10(n_train=200, n_test=100, seed=3)
    np.testing.assert_array_equal(again["x_train"], data["x_train"])
    # A nearest-class-mean classifier separates the classes: the labels carry signal.
    x = data["x_train"].reshape(200, -1).astype(np.float32)
    means = np.stack([x[data["y_train"] == c].mean(0) for c in range(10)])
    xt = data["x_test"].reshape(100, -1).astype(np.float32)
    predicted = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == data["y_test"]).mean() > 0.5


# The hooks of the slow tests: a driver wraps the example's functions, then runs its main.
HOOK_DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    import numpy as np
    import checkpointing, train_cifar
    hook, at = sys.argv[1], int(sys.argv[2])
    if hook == "kill-during-save":  # SIGKILL while the checkpoint of epoch `at` is written
        save = checkpointing.Checkpoints.save
        def killing_save(self, epoch, state, meta):
            save(self, epoch, state, meta)
            if epoch == at:
                deadline = time.monotonic() + 30  # until the writer has created its folder
                while time.monotonic() < deadline and not any(
                        self.directory.glob(f"{epoch}.*tmp*")):
                    time.sleep(0.001)
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        checkpointing.Checkpoints.save = killing_save
    elif hook == "nan-at-batch":  # one NaN pixel in training batch `at` (counting from 1)
        augment, calls = train_cifar.augment, [0]
        def nan_augment(x, rng):
            x = augment(x, rng).astype(np.float32)
            calls[0] += 1
            if calls[0] == at:
                x.flat[0] = np.nan
            return x
        train_cifar.augment = nan_augment
    sys.exit(train_cifar.main(sys.argv[3:]))
    """
)


def _restore(step_dir: Path) -> dict:
    """A checkpoint's arrays keyed by path, read in this process with orbax."""
    import jax
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(step_dir / "state")
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_trees_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"{what}: {key}"


@pytest.fixture(scope="module")
def cifar_full(tmp_path_factory):
    """The uninterrupted reference run (3 epochs), with a copy of its checkpoints."""
    tmp = tmp_path_factory.mktemp("cifar_full")
    proc = _run(["train_cifar.py", *CIFAR, "--bf16", "--out", tmp / "out"])
    if proc.returncode == 0:
        shutil.copytree(tmp / "out" / "checkpoints", tmp / "ckpt")
    return {"proc": proc, "out": tmp / "out", "ckpt": tmp / "ckpt"}


@pytest.mark.slow
def test_cifar_synthetic_smoke(cifar_full):
    proc = _ok(cifar_full["proc"], "train_cifar.py --synthetic --bf16")
    out = cifar_full["out"]
    assert "bfloat16 compute" in proc.stdout and LAST_LINE.match(_last_line(proc))
    assert _is_png(out / "curves.png") and _is_png(out / "misclassified.png")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["test_accuracy"]) == 3 and len(metrics["step_loss"]) == 6
    assert sorted(p.name for p in cifar_full["ckpt"].iterdir()) == ["1", "2", "3"]
    state = _restore(cifar_full["ckpt"] / "3")
    means = [v for k, v in state.items() if k.startswith("['model']") and "['mean']" in k]
    assert means and any(np.abs(m).max() > 0 for m in means)  # batch-norm statistics moved
    assert all(v.dtype == np.float32 for k, v in state.items() if "['weight']" in k)


@pytest.mark.slow
def test_cifar_new_run_resume_rules(cifar_full, tmp_path):
    _ok(cifar_full["proc"], "reference run")
    out = tmp_path / "out"
    shutil.copytree(cifar_full["out"], out)
    # A new run in the same place stops and keeps the earlier checkpoints.
    again = _run(["train_cifar.py", *CIFAR, "--bf16", "--epochs", "1", "--out", out])
    assert again.returncode == 2 and "--overwrite" in again.stderr, again.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1", "2", "3"]
    # Settings other than --epochs and --lr are refused by name, before any array is read.
    other = _run(["train_cifar.py", *CIFAR, "--bf16", "--width", "16", "--resume", "--out", out])
    assert other.returncode == 2 and "width was 8, now 16" in other.stderr, other.stderr[-2000:]
    assert "damaged" not in other.stderr and "Traceback" not in other.stderr
    # More epochs and another learning rate continue the run.
    more = _ok(_run(["train_cifar.py", *CIFAR, "--bf16", "--epochs", "4", "--lr", "0.05",
                     "--resume", "--out", out]), "--resume --epochs 4 --lr 0.05")
    assert "resumed from the checkpoint of epoch 3" in more.stdout and "epoch 4:" in more.stdout
    assert "epoch 3:" not in more.stdout
    # --overwrite is the explicit way to start afresh.
    _ok(_run(["train_cifar.py", *CIFAR, "--bf16", "--epochs", "1", "--overwrite", "--out", out]),
        "--overwrite")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1"]


@pytest.mark.slow
def test_cifar_killed_during_save_resumes_bit_identically(cifar_full, tmp_path):
    _ok(cifar_full["proc"], "reference run")
    out = tmp_path / "out"
    args = [*CIFAR, "--bf16", "--out", out]
    killed = _run(["-c", HOOK_DRIVER, "kill-during-save", "2", *args])
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    listing = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "1" in listing and "2" not in listing, listing
    assert any(name.startswith("2.") and "tmp" in name for name in listing), listing
    _assert_trees_equal(_restore(out / "checkpoints" / "1"), _restore(cifar_full["ckpt"] / "1"),
                        "epoch-1 checkpoint")
    resumed = _ok(_run(["train_cifar.py", *args, "--resume"]), "--resume after the kill")
    assert "resumed from the checkpoint of epoch 1" in resumed.stdout
    _assert_trees_equal(_restore(out / "checkpoints" / "3"), _restore(cifar_full["ckpt"] / "3"),
                        "epoch-3 checkpoint")
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((cifar_full["out"] / "metrics.json").read_text())
    assert a["step_loss"] == b["step_loss"] and a["test_accuracy"] == b["test_accuracy"]
    assert _last_line(resumed) == _last_line(cifar_full["proc"])


@pytest.mark.slow
def test_cifar_non_finite_loss_advice_works_as_written(cifar_full, tmp_path):
    _ok(cifar_full["proc"], "reference run")
    out = tmp_path / "out"
    args = [*CIFAR, "--bf16", "--out", out]
    proc = _run(["-c", HOOK_DRIVER, "nan-at-batch", "4", *args])  # epoch 2, step 2
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    # The NaN reaches the loss at once, or (when XLA's max drops it in a ReLU) the parameters
    # through the gradient, found at the end of the epoch.
    assert re.search(r"non-finite (training loss \(nan\) at epoch 2, step 2|parameters or test "
                     r"loss after epoch 2)", proc.stderr), proc.stderr[-2000:]
    assert "last good checkpoint (epoch 1)" in proc.stderr and "--resume and a lower --lr" in (
        proc.stderr)
    assert "Traceback" not in proc.stderr and "test accuracy" not in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1"]
    _assert_trees_equal(_restore(out / "checkpoints" / "1"), _restore(cifar_full["ckpt"] / "1"),
                        "last good checkpoint")
    # The advice, as written: --resume with a lower --lr.
    resumed = _ok(_run(["train_cifar.py", *args, "--resume", "--lr", "0.05"]), "the advice")
    assert "resumed from the checkpoint of epoch 1" in resumed.stdout
    assert LAST_LINE.match(_last_line(resumed))


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGE)
def test_cifar_resume_from_damaged_checkpoint(cifar_full, tmp_path, how):
    """Damage epoch 3 of the finished run: --resume names it, resumes from epoch 2 and ends with
    the parameters of the undamaged run (bit for bit)."""
    _ok(cifar_full["proc"], "reference run")
    out = tmp_path / "out"
    shutil.copytree(cifar_full["out"], out)
    _damage(out / "checkpoints" / "3", how)
    resumed = _ok(_run(["train_cifar.py", *CIFAR, "--bf16", "--resume", "--out", out]), how)
    assert f"{out / 'checkpoints' / '3'} is damaged" in resumed.stderr, resumed.stderr[-2000:]
    assert "resumed from the checkpoint of epoch 2" in resumed.stdout
    _assert_trees_equal(_restore(out / "checkpoints" / "3"), _restore(cifar_full["ckpt"] / "3"),
                        "epoch-3 checkpoint after the fallback")
    assert (out / "checkpoints-damaged" / "3").is_dir()


SHARDED_DRIVER = textwrap.dedent(
    """
    import sys
    import jax
    assert jax.device_count() == 8, jax.devices()
    import train_cifar
    args = sys.argv[3:]
    assert train_cifar.main(args + ["--no-data-parallel", "--out", sys.argv[1]]) == 0
    assert train_cifar.main(args + ["--out", sys.argv[2]]) == 0  # data parallel: the default
    """
)


@pytest.mark.slow
def test_cifar_sharded_matches_single_device(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _ok(_run(["-c", SHARDED_DRIVER, single, sharded, *CIFAR], devices=8), "8 devices")
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((sharded / "metrics.json").read_text())
    assert a["devices"] == 1 and b["devices"] == 8
    # The all-reduce sums in another order: equal to float32 rounding, not bitwise.
    assert_close(b["step_loss"], a["step_loss"], np.float32, what="step losses")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_cifar_multi_process_matches_single_device(tmp_path):
    out = tmp_path / "multi"
    flags = ["--coordinator-address", f"localhost:{_free_port()}", "--num-processes", "2"]
    procs = [subprocess.Popen(
        [sys.executable, "train_cifar.py", *CIFAR, "--out", str(out), *flags, "--process-id",
         str(i)], cwd=EXAMPLES, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, proc in enumerate(results):
        _ok(proc, f"process {i} of 2")
    single = _ok(_run(["train_cifar.py", *CIFAR, "--no-data-parallel", "--out",
                       tmp_path / "single"]), "single device")
    main, other = results
    assert "2 cpu device(s) in 2 process(es)" in main.stdout
    assert LAST_LINE.match(_last_line(main)) and "test accuracy" not in other.stdout
    multi = json.loads((out / "metrics.json").read_text())
    ref = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert multi["devices"] == 2 and single.returncode == 0
    # Batch-norm statistics and gradients are reduced across the processes in another order;
    # SGD at lr 0.1 amplifies those float32 roundings a little with every step.
    np.testing.assert_allclose(multi["step_loss"], ref["step_loss"], rtol=2e-3)


# --------------------------------------------------------------------------------------------
# port_from_torch.py, filters.py
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_port_from_torch(torch):
    proc = _ok(_run(["port_from_torch.py", "--size", "16", "--batch", "4"]), "port_from_torch.py")
    match = re.search(r"largest absolute difference of the outputs: (\S+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) < 1e-5
    assert "missing_keys=[]" in proc.stdout and "unexpected_keys=[]" in proc.stdout
    # The flatten-order fix: without it the flattened head gives other logits.
    match = re.search(r"without the channels-first flatten: (\S+)", proc.stdout)
    assert match and float(match.group(1)) > 1e-3, proc.stdout


@pytest.mark.slow
def test_filters(tmp_path):
    import matplotlib.image

    out = tmp_path / "filters"
    _ok(_run(["filters.py", "--out", out, "--size", "96"]), "filters.py")
    for name in ["original", "gray", "sobel", "blur", "depthwise", "sepia"]:
        path = out / f"{name}.png"
        assert _is_png(path), name
        assert matplotlib.image.imread(path).shape[:2] == (96, 96), name
    assert _is_png(out / "filters.png")

