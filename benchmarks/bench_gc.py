"""Python's full garbage collections in a training loop, with and without ``gc.freeze()``.

Each step of the recommended ``split`` step (docs/training-step.md) returns a new state: one
new array object per parameter, optimizer slot and batch statistic, which outlives a young
collection. So every few dozen steps Python runs a full (generation 2) collection, which walks
every object the process holds: the model, the optimizer, and the traced and compiled
programs' Python objects. That pause stalls the host, and with it the GPU once its queue runs
dry. ``gc.freeze()`` after building and compiling moves the objects alive then out of the
collector's reach, so a full collection walks only what came since. ``jax.clear_caches()``
instead drops JAX's tracing caches (the jaxprs kept to retrace a function, convnn's traced
convolution bodies among them), which are most of the difference between the two columns.

For each model and convolution this builds the model, compiles the step (``--batch`` images of
``--size`` pixels, float32), and runs ``--steps`` steps three times, timing every collection
through ``gc.callbacks``: as built (``none``), after
``jax.clear_caches()`` (``clear_caches``) and after ``gc.freeze()`` (``freeze``), each in a fresh
process.

Usage (from the repository root)::

    python -m benchmarks.bench_gc                              # EfficientNet-B0, both convs
    python -m benchmarks.bench_gc --models mobilenet_v2 --steps 400 --json /tmp/gc.json
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
from flax import nnx

import convnn
from benchmarks import _results
from benchmarks.bench_models import build, inputs, split_step

ROOT = Path(__file__).resolve().parents[1]


MODES = ("none", "clear_caches", "freeze")


def run(name: str, conv: str, mode: str, args) -> dict:
    """Builds, compiles and runs ``args.steps`` steps; the collections' count and pauses."""
    with convnn.lowering("auto"):
        model, opt = build(name, conv, "float32", 10)
        graphdef, state = nnx.split((model, opt))
        x, y = inputs(args.batch, args.size, "float32", 10)
        step = split_step(graphdef).lower(state, x, y).compile()
    del model, opt
    if mode == "clear_caches":  # the compiled step stays usable; later traces start afresh
        jax.clear_caches()
    gc.collect()
    if mode == "freeze":
        gc.freeze()
    tracked = len(gc.get_objects())
    pauses, started = [], {}

    def timer(phase, info):
        if phase == "start":
            started["t"] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started["t"]))

    gc.callbacks.append(timer)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, loss = step(state, x, y)
    loss.block_until_ready()
    wall = time.perf_counter() - t0
    gc.callbacks.remove(timer)
    full = [d for g, d in pauses if g == 2]
    return {"model": name, "conv": conv, "mode": mode, "tracked_objects": tracked,
            "steps": args.steps, "ms_per_step": wall * 1e3 / args.steps,
            "full_collections": len(full), "full_max_ms": max(full, default=0.0) * 1e3,
            "full_total_ms": sum(full) * 1e3,
            "young_total_ms": sum(d for g, d in pauses if g < 2) * 1e3}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="efficientnet_b0")
    p.add_argument("--convs", default="convnn,nnx")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--json", default=None, help="default benchmarks/results/gc_<device>.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:  # one measurement in this process: name,conv,mode
        name, conv, mode = args.child.split(",")
        print(json.dumps(run(name, conv, mode, args)))
        return
    path = Path(args.json) if args.json else _results.default_path("gc")
    rows = []
    print(f"{'model':16} {'conv':7} {'mode':>12} {'objects':>8} {'ms/step':>8} {'full GCs':>8} "
          f"{'max ms':>7} {'total ms':>8}")
    for name in args.models.split(","):
        for conv in args.convs.split(","):
            for mode in MODES:  # a fresh process each: the same start for all
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_gc", "--child",
                     f"{name},{conv},{mode}", "--batch", str(args.batch), "--size",
                     str(args.size), "--steps", str(args.steps)],
                    cwd=ROOT, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(r)
                print(f"{name:16} {conv:7} {mode:>12} {r['tracked_objects']:8d} "
                      f"{r['ms_per_step']:8.2f} {r['full_collections']:8d} "
                      f"{r['full_max_ms']:7.1f} {r['full_total_ms']:8.1f}", flush=True)
    _results.write(path, args, rows)


if __name__ == "__main__":
    main()
