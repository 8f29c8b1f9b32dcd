"""Building a model: seconds to construct each ``convnn.models`` model eagerly, in a fresh process.

Construction runs one small XLA program per distinct parameter shape (the random draws), so
its time is mostly XLA compiling them; a fresh process per sample keeps JAX's in-memory
compile cache from hiding that. Columns: the model with ``convnn.layers`` convolutions and the
same model with ``nnx.Conv``, medians over ``--repeats`` processes, interleaved.

Usage (from the repository root)::

    python -m benchmarks.bench_build                      # all five models, 3 processes each
    python -m benchmarks.bench_build --models convnext_tiny --repeats 5 --json /tmp/build.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks import _results
from convnn.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time
import jax.numpy as jnp
from flax import nnx
from convnn.models import MODELS
t0 = time.perf_counter()
MODELS[sys.argv[1]](1000, rngs=nnx.Rngs(params=0, dropout=1), conv=sys.argv[2],
                    dtype=jnp.bfloat16)
print(time.perf_counter() - t0)
"""


def build_seconds(name: str, conv: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, name, conv], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--convs", default="convnn,nnx")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="default benchmarks/results/build_<device>.json")
    args = p.parse_args(argv)
    path = Path(args.json) if args.json else _results.default_path("build")
    names, convs = args.models.split(","), args.convs.split(",")
    samples = {(n, c): [] for n in names for c in convs}
    for _ in range(args.repeats):
        for key in samples:
            samples[key].append(build_seconds(*key))
    rows = [{"model": n, "conv": c, "build_s": statistics.median(s), "samples": s}
            for (n, c), s in samples.items()]
    print(f"{'model':16} " + " ".join(f"{c:>10}" for c in convs))
    for n in names:
        print(f"{n:16} " + " ".join(f"{statistics.median(samples[n, c]):10.2f}" for c in convs))
    print(f"seconds to build, median of {args.repeats} fresh processes")
    _results.write(path, args, rows)


if __name__ == "__main__":
    main()
