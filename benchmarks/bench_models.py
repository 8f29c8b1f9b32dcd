"""Whole-model training step: convnn.models against the same models with nnx.Conv and PyTorch.

One step is forward + backward + SGD-with-momentum update (optax / torch.optim) on random
images and labels, for torchvision's ResNet-18, ResNet-50, ConvNeXt-T, MobileNetV2 and
EfficientNet-B0 (train mode: batch statistics, dropout and stochastic depth on). Columns:

* ``convnn``: :mod:`convnn.models` (convolutions are :class:`convnn.layers.Conv2d` under
  ``convnn.lowering("auto")``, or the one ``--lowering`` names);
* ``nnx``: the same model with ``nnx.Conv`` (Flax's HWIO kernel, plain ``lax``);
* ``torch``: torchvision's model, eager, channels_last, cuDNN autotuning (``cudnn.benchmark``),
  bf16 through ``torch.autocast``; ``torch.compile``: the same, compiled.

Both JAX columns run three step patterns: ``nnx.jit`` over the model and optimizer
(``nnx_jit``), ``nnx.cached_partial`` of that step (``cached``), and ``nnx.split`` once +
``jax.jit`` over the state with the state donated (``split``; the pattern docs/training-step.md
recommends). ``--patterns`` picks them. Compute dtype bf16 (float32 parameters, SGD on
float32 master weights) or float32 (TF32 allowed in both libraries, XLA's and PyTorch's default
for convolutions; PyTorch's matmul precision set to "high" to match).

Reported per row: images/s (median over ``--repeats`` groups of back-to-back steps with one
synchronisation per group, so a host-bound step shows; a group has ``--steps`` steps, or as many
more as it takes to last ``--min-group-s``, judged from the warmup steps), the first step's time
(trace + compile + run: what a user waits for) and, per (model, batch, dtype), ratios within the
run: convnn/nnx per pattern, convnn (split) against the best other column, and compile time
convnn/nnx. The JSON is rewritten after every row, so a run cut short keeps what it measured;
``--budget`` starts no further (model, batch, dtype) once spent, so that the columns of one are
always measured together. ``--resume JSON`` keeps an earlier run's rows for each (model, batch,
dtype) it measured in full and runs the others, whole: a matrix longer than one command's time
limit is measured over several commands, each group's ratios still within one run.

Each JAX (model, batch, dtype, conv) runs in a child process of this script: XLA keeps cuDNN's
autotuning results in memory, so in one process the second column's program would reuse the
first's for every convolution they share and its first step would look shorter than a user's
(``--in-process`` runs everything in this process, as the runs recorded before this option did).
On a GPU, each JAX row also records where its device time goes: ``--profile-steps`` (default
5 there, 0 elsewhere) steps traced after the timed ones, by kernel category and with every
convolution's kernel (``benchmarks/device_profile.py``), so that a column's outlier (a slow
cuDNN algorithm picked by the autotuner, say) can be explained from the record;
``--autotune DIR`` keeps each column's autotuning results (XLA's
``--xla_gpu_dump_autotune_results_to``) and, in a later run with the same ``DIR``, loads them
instead of tuning again, so that two runs can be made with the same algorithms (their first
steps then leave autotuning out: the rows say ``"autotune": {"mode": "load"}``). After the
first step every column calls ``gc.freeze()``, as docs/training-step.md recommends, so that no
full garbage collection (a pause of 0.2 to 0.3 s, ``benchmarks/bench_gc.py``) lands in a timed
group; runs before this did not.

Usage (from the repository root)::

    python -m benchmarks.bench_models                      # GPU: all models, batch 128 and 32
    python -m benchmarks.bench_models --smoke              # CPU: batch 2, 32x32, float32
    python -m benchmarks.bench_models --models resnet50,convnext_tiny --batches 128 \\
        --dtypes bfloat16 --no-torch --json /tmp/models.json
    python -m benchmarks.bench_models --report a.json b.json   # one table from several runs

Compilation dominates on a GPU (ConvNeXt-T's step takes minutes to compile), so a full run
takes longer than ten minutes; split it by column (``--no-torch`` / ``--no-jax``), pattern
(``--patterns``) and dtype on one machine and pool the JSON files with ``--report``.
``--jobs 8`` compiles a model's ``split`` programs concurrently (their compile times are then
measured under contention; ``--jobs 1`` for the uncontended figure).

torchvision is used when it imports; otherwise the PyTorch copies of its definitions in
``tests/torchvision_ref.py`` (recorded in the JSON as ``torch_models``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Let JAX and PyTorch share the GPU: JAX grows its pool instead of taking 75 % up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import convnn  # noqa: E402
from benchmarks import _results  # noqa: E402
from benchmarks.device_profile import profile_steps  # noqa: E402
from convnn.models import MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
PATTERNS = ("split", "nnx_jit", "cached")
START = time.perf_counter()


# ------------------------------------------------------------------------------------------
# JAX
# ------------------------------------------------------------------------------------------


def _loss_fn(model, x, y):
    logits = model(x).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_step(model, optimizer, pattern: str):
    """``step(carry, x, y) -> (carry, loss)`` in one of the two patterns, and its first carry."""
    if pattern == "nnx_jit":

        @nnx.jit
        def train_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(_loss_fn)(model, x, y)
            optimizer.update(model, grads)
            return loss

        def step(carry, x, y):
            return carry, train_step(*carry, x, y)

        return step, (model, optimizer)

    if pattern == "cached":  # nnx.cached_partial, as its docstring sets it up

        @nnx.jit(graph_updates=True, graph=True)
        def cached_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(_loss_fn)(model, x, y)
            optimizer.update(model, grads)
            return loss

        with nnx.set_graph_mode(True), nnx.set_graph_updates(True):
            partial = nnx.cached_partial(cached_step, model, optimizer)

        def step(carry, x, y):
            return carry, partial(x, y)

        return step, None

    graphdef, state = nnx.split((model, optimizer))
    return split_step(graphdef), state


def split_step(graphdef):
    """The recommended step: a pure function of the state, jitted, the state donated."""

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(_loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return step


def build(name, conv, dtype, classes):
    model = MODELS[name](classes, rngs=nnx.Rngs(params=0, dropout=1), conv=conv,
                         dtype=DTYPES[dtype])
    model.train()
    return model, nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)


def inputs(batch, size, dtype, classes):
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, size, size, 3), DTYPES[dtype])
    return x, jax.random.randint(key, (batch,), 0, classes)


def precompile(keys, args):
    """Ahead-of-time programs of the ``split`` rows ``(name, batch, dtype, conv)``: traced and
    lowered one after the other, compiled on ``args.jobs`` threads (XLA releases the GIL)."""
    lowered = {}
    for name, batch, dtype, conv in keys:
        t0 = time.perf_counter()
        try:
            with convnn.lowering(args.lowering):
                model, opt = nnx.eval_shape(
                    functools.partial(build, name, conv, dtype, args.classes))
                graphdef, state = nnx.split((model, opt))
                x, y = jax.eval_shape(
                    functools.partial(inputs, batch, args.size, dtype, args.classes))
                lowered[(name, batch, dtype, conv)] = (
                    split_step(graphdef).lower(state, x, y), time.perf_counter() - t0
                )
        except Exception as e:
            lowered[(name, batch, dtype, conv)] = (e, time.perf_counter() - t0)

    def compile_one(item):
        key, (low, lower_s) = item
        if isinstance(low, Exception):
            return key, (low, lower_s, 0.0)
        t0 = time.perf_counter()
        try:
            return key, (low.compile(), lower_s, time.perf_counter() - t0)
        except Exception as e:
            return key, (e, lower_s, time.perf_counter() - t0)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        return dict(pool.map(compile_one, lowered.items()))


def time_jax(name, conv, pattern, batch, size, dtype, args, compiled=None):
    t0 = time.perf_counter()
    model, optimizer = build(name, conv, dtype, args.classes)
    build_s = time.perf_counter() - t0
    extra = {}
    if compiled is not None:  # split pattern, compiled ahead of time
        program, lower_s, compile_s = compiled
        if isinstance(program, Exception):
            raise program
        _, carry = nnx.split((model, optimizer))
        step = program
        extra = {"lower_s": lower_s, "compile_s": compile_s}
        if args.hlo_dir:  # XLA's optimised program: the fusions a profile's kernels name
            path = Path(args.hlo_dir) / f"{name}_{batch}_{dtype}_{conv}.hlo.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(program.as_text())
    else:
        step, carry = make_step(model, optimizer, pattern)
    x, y = inputs(batch, size, dtype, args.classes)
    t0 = time.perf_counter()
    carry, loss = step(carry, x, y)
    loss.block_until_ready()
    first = time.perf_counter() - t0
    gc.collect()
    gc.freeze()  # as docs/training-step.md recommends: no full collection walks the model

    def run_steps(n, step=step):
        nonlocal carry, loss
        for _ in range(n):
            carry, loss = step(carry, x, y)
        loss.block_until_ready()

    rates, extra["steps_per_group"] = timed_groups(run_steps, batch, args)
    if args.profile_steps:
        extra["profile"] = profile_steps(run_steps, args.profile_steps, top=args.profile_top)
    loss = float(loss)
    del carry, model, optimizer, step
    gc.unfreeze()
    gc.collect()
    if compiled is not None:  # what a user waits for: trace + lower + compile + the first run
        extra["first_run_s"] = first
        first += extra["lower_s"] + extra["compile_s"]
    return {"images_per_s": statistics.median(rates), "first_step_s": first,
            "build_s": build_s, "loss": loss, "rates": rates, **extra}


def timed_groups(run_steps, batch: int, args) -> tuple[list[float], int]:
    """Images/s of ``args.repeats`` groups of back-to-back steps, and the steps per group.

    ``run_steps(n)`` runs ``n`` steps and waits for them. The ``args.warmup`` untimed steps
    also give the step's time, from which a group gets enough steps (at least ``args.steps``)
    to last ``args.min_group_s``: a group of a few 6 ms steps measures the host's jitter as much
    as the step (docs/benchmarks.md, MobileNetV2 at batch 32).
    """
    t0 = time.perf_counter()
    run_steps(args.warmup)
    steps = args.steps
    if args.warmup:
        per_step = (time.perf_counter() - t0) / args.warmup
        steps = max(steps, math.ceil(args.min_group_s / per_step))
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run_steps(steps)
        rates.append(steps * batch / (time.perf_counter() - t0))
    return rates, steps


def run_isolated(name, batch, dtype, conv, patterns, args):
    """The rows of one (model, batch, dtype, conv) from a child process of this script.

    XLA keeps cuDNN's autotuning results in memory, so a program compiled after another reuses
    them for every convolution the two share, and its first step looks faster than a user's
    would; a child process per JAX column starts every compile cold (docs/benchmarks.md).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_models", "--in-process", "--no-torch",
               "--models", name, "--batches", str(batch), "--dtypes", dtype,
               "--float32-batches", str(batch), "--nnx-jit-batches", str(batch),
               "--convs", conv, "--patterns", ",".join(patterns), "--size", str(args.size),
               "--steps", str(args.steps), "--repeats", str(args.repeats),
               "--warmup", str(args.warmup), "--min-group-s", str(args.min_group_s),
               "--classes", str(args.classes), "--lowering", args.lowering,
               "--profile-steps", str(args.profile_steps), "--profile-top",
               str(args.profile_top), "--json", str(out)]
        if args.hlo_dir:
            cmd += ["--hlo-dir", str(Path(args.hlo_dir).resolve())]
        env, tuning = dict(os.environ), None
        if args.autotune:  # the cuDNN and GEMM algorithms this column runs, kept or reused
            path = Path(args.autotune).resolve() / f"{name}_{batch}_{dtype}_{conv}.pbtxt"
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = "load" if path.exists() else "dump"
            flag = "load_autotune_results_from" if mode == "load" else "dump_autotune_results_to"
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_gpu_{flag}={path}".strip()
            tuning = {"file": path.name, "mode": mode}
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return [{"model": name, "batch": batch, "dtype": dtype, "column": f"{conv}/{p}",
                     "error": f"child process exited {done.returncode}: {tail[0]}"}
                    for p in patterns]
        rows = json.loads(out.read_text())["rows"]
        return [{**r, "autotune": tuning} for r in rows] if tuning else rows


def median_rows(runs: list[list[dict]]) -> dict:
    """``column -> row`` over the rows of several child processes of one column: the row of the
    process with the median images/s (the lower middle one for an even count), its first step
    the median of all, and every process's images/s in ``process_rates``. A column that failed
    in every process keeps the first error."""
    out = {}
    for column in dict.fromkeys(r["column"] for rows in runs for r in rows):
        rows = [r for run in runs for r in run if r["column"] == column]
        good = sorted((r for r in rows if "error" not in r), key=lambda r: r["images_per_s"])
        if not good:
            out[column] = rows[0]
            continue
        mid = dict(good[(len(good) - 1) // 2])
        if len(rows) > 1:
            mid["first_step_s"] = statistics.median(r["first_step_s"] for r in good)
            mid["process_rates"] = [r.get("images_per_s") for r in rows]
        out[column] = mid
    return out


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------


def torch_models():
    """``torchvision.models`` or the copies in tests/torchvision_ref.py, and which it is."""
    try:
        import torchvision.models as tvm  # noqa: PLC0415 (optional dependency)

        return (lambda torch, name, n: getattr(tvm, name)(num_classes=n)), "torchvision"
    except Exception:  # missing, or built for another torch
        spec = importlib.util.spec_from_file_location(
            "torchvision_ref", ROOT / "tests" / "torchvision_ref.py"
        )
        ref = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ref)
        return (lambda torch, name, n: ref._reference(torch)[name](n)), "tests/torchvision_ref.py"


def time_torch(torch, build_torch, name, compiled, batch, size, dtype, args):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_torch(torch, name, args.classes).to(dev).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fwd = torch.compile(model) if compiled else model
    build_s = time.perf_counter() - t0
    x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (batch,), device=dev)
    autocast = dtype == "bfloat16"

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
            out = fwd(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    loss = step()
    sync()
    first = time.perf_counter() - t0
    gc.collect()
    gc.freeze()

    def run_steps(n):
        nonlocal loss
        for _ in range(n):
            loss = step()
        sync()

    rates, steps = timed_groups(run_steps, batch, args)
    loss = float(loss.detach())
    gc.unfreeze()
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    return {"images_per_s": statistics.median(rates), "first_step_s": first,
            "build_s": build_s, "loss": loss, "rates": rates, "steps_per_group": steps}


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


def ratios(rows):
    """Per (model, batch, dtype): the comparisons the issue asks for, within this run."""
    out = []
    keys = sorted({(r["model"], r["batch"], r["dtype"]) for r in rows}, key=str)
    for model, batch, dtype in keys:
        cell = {
            r["column"]: r for r in rows
            if (r["model"], r["batch"], r["dtype"]) == (model, batch, dtype) and "error" not in r
        }
        rate = {c: r["images_per_s"] for c, r in cell.items()}
        entry = {"model": model, "batch": batch, "dtype": dtype}
        for p in PATTERNS:
            a, b = rate.get(f"convnn/{p}"), rate.get(f"nnx/{p}")
            if a and b:
                entry[f"convnn/nnx {p}"] = a / b
                fa, fb = cell[f"convnn/{p}"]["first_step_s"], cell[f"nnx/{p}"]["first_step_s"]
                entry[f"compile convnn/nnx {p}"] = fa / fb
        others = {c: v for c, v in rate.items() if not c.startswith("convnn")}
        if "convnn/split" in rate and others:
            best = max(others, key=others.get)
            entry["best_other"] = best
            entry["convnn/split vs best"] = rate["convnn/split"] / others[best]
        out.append(entry)
    return out


def print_table(rows):
    cols = ["convnn/split", "nnx/split", "convnn/nnx_jit", "nnx/nnx_jit", "convnn/cached",
            "nnx/cached", "torch", "torch.compile"]
    print()
    print(f"{'model':16} {'batch':>5} {'dtype':8} " + " ".join(f"{c:>15}" for c in cols)
          + f" {'vs best':>8} {'compile c/n':>11}")
    for e in ratios(rows):
        cell = {r["column"]: r for r in rows if (r["model"], r["batch"], r["dtype"]) ==
                (e["model"], e["batch"], e["dtype"])}
        vals = []
        for c in cols:
            r = cell.get(c)
            vals.append("-" if r is None else "error" if "error" in r else
                        f"{r['images_per_s']:7.0f} ({r['first_step_s']:4.0f}s)")
        vs = e.get("convnn/split vs best")
        comp = e.get("compile convnn/nnx split")
        vs = "-" if vs is None else f"{vs:.3f}x"
        comp = "-" if comp is None else f"{comp:.2f}x"
        print(f"{e['model']:16} {e['batch']:5d} {e['dtype']:8} "
              + " ".join(f"{v:>15}" for v in vals) + f" {vs:>8} {comp:>11}")
    print("images/s (first step: trace + compile + run, s); 'vs best': convnn/split over the best "
          "other column; 'compile c/n': first step convnn/nnx, split pattern")


def resume(plan: list, earlier: Path, rows: list, meta: dict) -> list:
    """The plan without the (model, batch, dtype) groups ``earlier`` measured in full.

    Their rows are appended to ``rows`` and ``meta["resumed"]`` records where they came from
    (the earlier run's machine record); a group with a missing or failed column runs again
    whole, so that its ratios are within one run.
    """
    old = json.loads(earlier.read_text())
    done = {(r["model"], r["batch"], r["dtype"], r["column"]): r for r in old["rows"]
            if "error" not in r}
    complete = {k[:3] for k in plan} - {k[:3] for k in plan if k not in done}
    rows.extend(done[k] for k in plan if k[:3] in complete)
    meta["resumed"] = {"from": earlier.name, "meta": old["meta"],
                       "groups": sorted(list(g) for g in complete)}
    print(f"resumed from {earlier}: {len(complete)} groups kept", flush=True)
    return [k for k in plan if k[:3] not in complete]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    p.add_argument("--batches", default="128,32")
    p.add_argument("--size", type=int, default=224, help="image height and width")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--patterns", default="split,nnx_jit", help="of split, nnx_jit, cached")
    p.add_argument("--convs", default="convnn,nnx")
    p.add_argument("--float32-batches", default=None,
                   help="batches for float32 (default: the first of --batches)")
    p.add_argument("--nnx-jit-batches", default=None,
                   help="batches for the nnx_jit and cached patterns (default: the first of "
                   "--batches)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    p.add_argument("--no-jax", action="store_true", help="only the PyTorch columns")
    p.add_argument("--jobs", type=int, default=1,
                   help="threads compiling a model's split-pattern programs ahead of time; above "
                   "1 their compile times are measured under contention (default 1)")
    p.add_argument("--report", nargs="+", default=None, metavar="JSON",
                   help="print the table of earlier runs' JSON files (rows pooled) and exit")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--compile-batches", default=None,
                   help="batches for torch.compile (default: the first of --batches)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed group, at least")
    p.add_argument("--min-group-s", type=float, default=0.2,
                   help="seconds a timed group lasts at least (more steps for short ones)")
    p.add_argument("--repeats", type=int, default=5, help="timed groups (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--profile-steps", type=int, default=None,
                   help="after timing a JAX row, trace this many steps and record its device "
                   "time by kernel category (benchmarks/device_profile.py); default 5 on a "
                   "GPU, 0 elsewhere")
    p.add_argument("--profile-top", type=int, default=40,
                   help="how many of the largest (op, kernel) pairs a profile keeps")
    p.add_argument("--hlo-dir", default=None, metavar="DIR",
                   help="write each split row's optimised program (HLO text, the fusions the "
                   "profile's kernels are named after) to DIR")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; then start no further (model, batch, dtype)")
    p.add_argument("--resume", default=None, metavar="JSON",
                   help="keep this earlier run's rows for every (model, batch, dtype) it "
                   "measured in full (all planned columns, no error) and run the rest")
    p.add_argument("--smoke", action="store_true",
                   help="CPU check: batch 2, 32x32, float32, 2 steps, no torch.compile")
    p.add_argument("--in-process", action="store_true",
                   help="run the JAX columns in this process (faster to run, but a program "
                   "compiled after another reuses its cuDNN autotuning, so first-step times "
                   "depend on the order of the columns); by default each (model, batch, dtype, "
                   "conv) runs in a child process")
    p.add_argument("--processes", type=int, default=1,
                   help="fresh child processes per JAX column; a row reports the median of "
                   "their images/s and first steps, and lists each in process_rates (the "
                   "nnx.Conv column's speed differs between processes: docs/benchmarks.md)")
    p.add_argument("--autotune", default=None, metavar="DIR",
                   help="each JAX column loads XLA's autotuning results (the cuDNN and GEMM "
                   "algorithms it runs) from DIR/<model>_<batch>_<dtype>_<conv>.pbtxt where "
                   "that file exists, and otherwise writes them there")
    p.add_argument("--lowering", default="auto",
                   help="the convnn column's convnn.lowering (default auto; for example "
                   "pallas, to try the Pallas kernels where the policy picks XLA's)")
    p.add_argument("--json", default=None, help="default benchmarks/results/models_<device>.json")
    args = p.parse_args(argv)
    if args.autotune and args.in_process:
        p.error("--autotune needs a process per column: leave out --in-process")
    if args.processes < 1 or (args.processes > 1 and args.in_process):
        p.error(f"--processes must be at least 1, and 1 with --in-process; got {args.processes}")
    if args.profile_steps is None:
        args.profile_steps = 5 if jax.default_backend() == "gpu" else 0
    if args.report:
        rows = [r for f in args.report for r in json.loads(Path(f).read_text())["rows"]]
        print_table(rows)
        return
    if args.smoke:
        args.batches, args.size, args.dtypes = "2", 32, "float32"
        args.steps, args.repeats, args.warmup, args.classes = 2, 1, 1, 10
        args.min_group_s = 0.0
        args.no_compile = True
    names = args.models.split(",")
    for n in names:
        if n not in MODELS:
            p.error(f"unknown model {n!r}; choose from {list(MODELS)}")
    batches = [int(b) for b in args.batches.split(",")]
    first = str(batches[0])
    f32_batches = {int(b) for b in (args.float32_batches or first).split(",")}
    jit_batches = {int(b) for b in (args.nnx_jit_batches or first).split(",")}
    compile_batches = {int(b) for b in (args.compile_batches or first).split(",")}
    dtypes = args.dtypes.split(",")
    patterns = args.patterns.split(",")
    convs = [] if args.no_jax else args.convs.split(",")

    path = Path(args.json) if args.json else _results.default_path("models")
    meta = {
        **_results.machine(args, path), "jobs": args.jobs,
        "flax": importlib.metadata.version("flax"), "convnn_backend": str(convnn.backend_info()),
        "size": args.size, "steps": args.steps, "min_group_s": args.min_group_s,
        "repeats": args.repeats,
        "isolated": not args.in_process,
    }
    torch = build_torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: PLC0415 (optional dependency)

            build_torch, meta["torch_models"] = torch_models()
            meta["torch"] = torch.__version__
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        except ImportError:
            torch = None
    rows: list[dict] = []

    def save():
        _results.save(path, {"meta": meta, "rows": rows, "ratios": ratios(rows)})

    def record(row):
        rows.append(row)
        save()
        shown = row.get("error") or (f"{row['images_per_s']:8.1f} images/s, first step "
                                     f"{row['first_step_s']:.1f} s")
        print(f"[{time.perf_counter() - START:6.0f} s] {row['model']:16} {row['batch']:4d} "
              f"{row['dtype']:8} {row['column']:15} {shown}", flush=True)

    plan = []
    for name in names:
        for batch in batches:
            for dtype in dtypes:
                if dtype == "float32" and batch not in f32_batches:
                    continue
                if torch is not None:
                    plan.append((name, batch, dtype, "torch"))
                    if not args.no_compile and batch in compile_batches:
                        plan.append((name, batch, dtype, "torch.compile"))
                for pattern in patterns:
                    if pattern != "split" and batch not in jit_batches:
                        continue
                    for conv in convs:
                        plan.append((name, batch, dtype, f"{conv}/{pattern}"))
    if args.resume:
        try:
            plan = resume(plan, Path(args.resume), rows, meta)
        except (OSError, ValueError, KeyError, TypeError) as e:  # never resume from a bad file
            p.error(f"--resume {args.resume}: not a readable bench_models result "
                    f"({type(e).__name__}: {e})")
    print(f"{meta['device']}; {len(plan)} rows; results -> {path}", flush=True)
    programs: dict = {}
    isolated: dict = {}  # (name, batch, dtype, conv) -> {column: row}, from a child process
    skipped: set = set()  # (name, batch, dtype) left out once the budget was spent
    for i, (name, batch, dtype, column) in enumerate(plan):
        group = (name, batch, dtype)
        if (args.budget is not None and time.perf_counter() - START > args.budget
                and (i == 0 or plan[i - 1][:3] != group or group in skipped)):
            skipped.add(group)  # a group is started whole or not at all
            print(f"budget spent: skipping {name} {batch} {dtype} {column}", flush=True)
            continue
        if not args.in_process and not column.startswith("torch"):
            conv = column.split("/")[0]
            key = (name, batch, dtype, conv)
            if key not in isolated:
                mine = [c.split("/")[1] for n, b, d, c in plan
                        if (n, b, d, c.split("/")[0]) == key]
                isolated[key] = median_rows([run_isolated(name, batch, dtype, conv, mine, args)
                                             for _ in range(args.processes)])
            record(isolated[key].get(column) or {"model": name, "batch": batch, "dtype": dtype,
                                                 "column": column, "error": "no row from child"})
            continue
        if i == 0 or plan[i - 1][0] != name:  # a new model: compile its split programs
            keys = [(n, b, d, c.split("/")[0]) for n, b, d, c in plan
                    if n == name and c.endswith("/split")]
            if keys:
                t0 = time.perf_counter()
                programs = precompile(keys, args)
                print(f"[{time.perf_counter() - START:6.0f} s] {name}: {len(keys)} split "
                      f"programs compiled in {time.perf_counter() - t0:.0f} s ({args.jobs} jobs)",
                      flush=True)
        row = {"model": name, "batch": batch, "dtype": dtype, "column": column}
        try:
            if column.startswith("torch"):
                row.update(time_torch(torch, build_torch, name, column == "torch.compile", batch,
                                      args.size, dtype, args))
            else:
                conv, pattern = column.split("/")
                compiled = programs.get((name, batch, dtype, conv)) if pattern == "split" else None
                with convnn.lowering(args.lowering):
                    row.update(time_jax(name, conv, pattern, batch, args.size, dtype, args,
                                        compiled))
        except Exception as e:  # record and go on: one failing column must not lose the rest
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        record(row)
    programs.clear()
    print_table(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
