"""The timing loop of the per-call GPU benchmarks (depthwise, layouts, BatchNorm)."""

from __future__ import annotations

import argparse
import statistics
import time

import jax


def median_ms(fn, *args, iters: int = 20, repeats: int = 7) -> float:
    """Milliseconds per call of ``fn(*args)``: the median over ``repeats`` groups of the mean over
    ``iters`` asynchronous calls, after two untimed calls (the compile, then cuDNN's autotuning
    and the first run's allocations)."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    groups = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        groups.append((time.perf_counter() - t0) / iters * 1e3)
    return statistics.median(groups)


def add_arguments(p: argparse.ArgumentParser, *, repeats: int) -> None:
    """The per-call benchmarks' shared options: ``--batch``, ``--size``, ``--dtype``, ``--iters``,
    ``--repeats``, ``--smoke`` and ``--json`` (read them with :func:`parse`)."""
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224, help="image height and width")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--smoke", action="store_true", help="CPU check: batch 2, 32x32, 2 iters")
    p.add_argument("--json", default=None)


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``p``'s arguments, with ``--smoke``'s sizes applied."""
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.size, args.iters, args.repeats = 2, 32, 2, 1
    return args
