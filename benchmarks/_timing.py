"""The timing loop of the per-call GPU benchmarks (depthwise, layouts, BatchNorm)."""

from __future__ import annotations

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
