"""The per-call Python cost of convnn's convolution layers under ``nnx.jit``, against ``nnx.Conv``.

A small NNX model of about 60 tiny convolutions (1x8x8x4 input, 3x3 kernels, 4 channels: the
compiled program is microseconds, so what is timed is ``nnx.jit``'s per-call work on the
module graph plus dispatch) runs one jitted step (forward, or forward and gradient) in a loop.
The same model is built from ``convnn.layers.Conv2d`` and from ``flax.nnx.Conv``; samples are
interleaved and the minimum and median of each are reported, with the paired ratio (median
over rounds of convnn / nnx.Conv).

Usage (from the repository root, so that this checkout's ``convnn`` is imported)::

    python -m benchmarks.bench_layer_overhead
    python -m benchmarks.bench_layer_overhead --layers 60 --rounds 31 --calls 50

It prints a table and writes ``benchmarks/results/layer_overhead.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import convnn
import convnn.layers as L

RESULTS = Path(__file__).resolve().parent / "results"


class Stack(nnx.Module):
    """``depth`` same-padded 3x3 convolutions with ReLU in between."""

    def __init__(self, make, depth: int):
        self.convs = nnx.List([make() for _ in range(depth)]) if hasattr(nnx, "List") else \
            [make() for _ in range(depth)]

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return x


def models(depth: int, channels: int):
    rngs = nnx.Rngs(0)
    return {
        "convnn.layers.Conv2d": Stack(lambda: L.Conv2d(channels, channels, 3, padding=1,
                                                       rngs=rngs), depth),
        "nnx.Conv": Stack(lambda: nnx.Conv(channels, channels, (3, 3), padding=1, rngs=rngs),
                          depth),
    }


def steps(model):
    @nnx.jit
    def forward(m, x):
        return m(x)

    @nnx.jit
    def grad(m, x):
        return nnx.grad(lambda m: jnp.sum(m(x) ** 2))(m)

    return {"forward": forward, "forward+grad": grad}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=60)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--rounds", type=int, default=41, help="interleaved samples per function")
    p.add_argument("--calls", type=int, default=30, help="calls per sample")
    p.add_argument("--out", default=str(RESULTS / "layer_overhead.json"))
    args = p.parse_args(argv)
    x = jnp.ones((1, 8, 8, args.channels))
    fns = {}
    for name, model in models(args.layers, args.channels).items():
        for step, fn in steps(model).items():
            fns[(name, step)] = (fn, model)
    for fn, model in fns.values():  # compile
        jax.block_until_ready(fn(model, x))
    samples = {k: [] for k in fns}
    for _ in range(args.rounds):
        for key, (fn, model) in fns.items():
            t = time.perf_counter()
            for _ in range(args.calls):
                out = fn(model, x)
            jax.block_until_ready(out)
            samples[key].append((time.perf_counter() - t) / args.calls)
    rows = []
    print(f"{args.layers} convolutions 1x8x8x{args.channels}, 3x3; us per step "
          f"(min / median of {args.rounds} samples of {args.calls} calls); "
          f"jax {jax.__version__}, {os.cpu_count()} CPUs")
    print(f"{'step':14s} {'layer':22s} {'min':>9s} {'median':>9s} {'paired vs nnx.Conv':>19s}")
    for (name, step), v in samples.items():
        base = samples[("nnx.Conv", step)]
        paired = statistics.median(a / b for a, b in zip(v, base))
        row = dict(layer=name, step=step, us_min=min(v) * 1e6, us=statistics.median(v) * 1e6,
                   paired_ratio_vs_nnx_conv=paired)
        rows.append(row)
        print(f"{step:14s} {name:22s} {row['us_min']:9.1f} {row['us']:9.1f} {paired:19.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), jax=jax.__version__,
                     convnn=convnn.__version__, load=os.getloadavg(),
                     device=f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"),
        args={**vars(args), "out": out.name}, rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
