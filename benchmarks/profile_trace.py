"""Where a model's first step spends its time before XLA compiles: tracing and lowering.

For each model and convolution (``convnn``: :class:`convnn.layers.Conv2d` under
``convnn.lowering("auto")``; ``nnx``: ``nnx.Conv``), this builds the model abstractly, traces
the recommended training step (``nnx.split`` once + ``jax.jit``, as ``bench_models.py``) and
lowers it to StableHLO, timing each phase; nothing is compiled or run. ``--profile`` adds the
functions with the most cumulative time under ``cProfile`` (convnn's own, then everything).

Usage (from the repository root)::

    python -m benchmarks.profile_trace --models mobilenet_v2,convnext_tiny
    python -m benchmarks.profile_trace --models mobilenet_v2 --convs convnn --profile

On a CPU the policy picks the CPU strategies, so the convnn rows measure the front end; on an
NVIDIA GPU they include the Pallas kernels' lowering to Triton.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import pstats
import time
from pathlib import Path

import jax
from flax import nnx

import convnn
from benchmarks.bench_models import build, inputs, split_step
from convnn.models import MODELS


def phases(name: str, conv: str, batch: int, size: int, dtype: str) -> dict:
    """Seconds spent building the abstract model, tracing the step and lowering it."""
    t0 = time.perf_counter()
    model, opt = nnx.eval_shape(functools.partial(build, name, conv, dtype, 1000))
    graphdef, state = nnx.split((model, opt))
    x, y = jax.eval_shape(functools.partial(inputs, batch, size, dtype, 1000))
    t1 = time.perf_counter()
    traced = split_step(graphdef).trace(state, x, y)
    t2 = time.perf_counter()
    lowered = traced.lower()
    t3 = time.perf_counter()
    text = lowered.as_text()
    return {"build_s": t1 - t0, "trace_s": t2 - t1, "lower_s": t3 - t2,
            "stablehlo_kb": len(text) / 1024, "custom_calls": text.count("custom_call")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--convs", default="convnn,nnx")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--profile", action="store_true", help="cProfile the convnn rows")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = jax.devices()[0]
    print(f"{device.platform}: {device.device_kind}; batch {args.batch}, {args.size}x{args.size}, "
          f"{args.dtype}", flush=True)
    with convnn.lowering("auto"):  # load what JAX and convnn load on first use
        phases("resnet18", "nnx", 2, 32, args.dtype)
    rows = []
    for name in args.models.split(","):
        for conv in args.convs.split(","):
            with convnn.lowering("auto"):
                jax.clear_caches()
                prof = cProfile.Profile() if args.profile and conv == "convnn" else None
                if prof is not None:
                    prof.enable()
                row = {"model": name, "conv": conv,
                       **phases(name, conv, args.batch, args.size, args.dtype)}
                if prof is not None:
                    prof.disable()
            rows.append(row)
            print(f"{name:16} {conv:7} build {row['build_s']:6.2f} s  trace {row['trace_s']:6.2f} s"
                  f"  lower {row['lower_s']:6.2f} s  ({row['stablehlo_kb']:.0f} KiB StableHLO, "
                  f"{row['custom_calls']} custom calls)", flush=True)
            if prof is not None:
                for restrict in ("convnn", ""):
                    out = io.StringIO()
                    stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
                    stats.print_stats(restrict, args.top) if restrict else stats.print_stats(
                        args.top)
                    print(out.getvalue()[-6000:])
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
             "argv": {**vars(args), "json": Path(args.json).name}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
