"""Where a jitted step's device time goes: kernel time by category, from a JAX profiler trace.

``bench_models.py --profile-steps N`` calls :func:`profile_steps` after timing a row: it traces
``N`` more steps with :func:`jax.profiler.trace`, reads the trace back with
:class:`jax.profiler.ProfileData` (no TensorBoard needed) and sums the GPU kernels' durations
per HLO op. Categories are a first-match rule over the op and kernel names (:data:`CATEGORIES`);
the JSON keeps the largest ops with their kernel names, so a category can be checked or
re-derived from the record. On a CPU there are no device kernels and the summary says so.

Kernel time is summed over streams, so it can exceed the wall time where kernels overlap; the
wall time per step minus the kernel time per step bounds the time the device sat idle.
"""

from __future__ import annotations

import glob
import re
import tempfile
import time
from collections.abc import Callable

import jax
from jax.profiler import ProfileData

# (category, pattern over "<hlo op> <kernel name>", lowercased); the first match wins.
CATEGORIES = (
    ("pallas depthwise", r"convnn_depthwise"),
    ("convolution", r"cudnn-conv|convolution|fprop|dgrad|wgrad|convolve|conv2d|implicit_gemm"),
    ("matmul", r"gemm|cublas|\bdot|nvjet|cutlass|matmul"),
    ("reduction fusion", r"reduce|reduction"),
    ("other fusion", r"fusion"),
    ("copy, transpose, memset", r"copy|transpose|memcpy|memset"),
)


def category(op: str, kernel: str) -> str:
    text = f"{op} {kernel}".lower()
    return next((c for c, pat in CATEGORIES if re.search(pat, text)), "other")


def _kernels(data: ProfileData) -> tuple[dict, list[str]]:
    """``{(hlo op, kernel name): [count, ns]}`` over the GPU planes' stream lines."""
    totals: dict = {}
    lines_seen = []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        lines = list(plane.lines)
        streams = [ln for ln in lines if ln.name.lower().startswith("stream")] or lines
        lines_seen += [f"{plane.name}/{ln.name}" for ln in streams]
        for line in streams:
            for ev in line.events:
                stats = {k: v for k, v in ev.stats if k is not None}
                key = (str(stats.get("hlo_op", "")), ev.name)
                entry = totals.setdefault(key, [0, 0.0])
                entry[0] += 1
                entry[1] += ev.duration_ns
    return totals, lines_seen


def profile_steps(run: Callable[[int], None], steps: int, top: int = 40) -> dict:
    """Trace ``run(steps)`` (which runs ``steps`` steps and waits for them) and summarise.

    Returns per-step milliseconds: ``wall_ms``, ``kernel_ms`` and ``by_category`` (sorted,
    largest first), ``top_ops``: the ``top`` largest (op, kernel) pairs, and ``convolution_ops``:
    every convolution's, largest first, so that a slow kernel choice shows whatever its rank.
    """
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            t0 = time.perf_counter()
            run(steps)
            wall = time.perf_counter() - t0
        files = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        if not files:
            return {"error": "the profiler wrote no trace"}
        totals, lines = _kernels(ProfileData.from_file(files[0]))
    per_step = 1e-6 / steps  # ns over all steps -> ms per step
    by_cat: dict = {}
    for (op, kernel), (_, ns) in totals.items():
        cat = category(op, kernel)
        by_cat[cat] = by_cat.get(cat, 0.0) + ns * per_step
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])

    def entry(op, kernel, n, ns, width=160):
        return {"op": op, "kernel": kernel[:width], "category": category(op, kernel),
                "calls_per_step": n / steps, "ms": ns * per_step}

    return {
        "steps": steps,
        "wall_ms": wall * 1e3 / steps,
        "kernel_ms": sum(ns for _, ns in totals.values()) * per_step,
        "by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "distinct_ops": len(totals),
        "lines": lines,
        "top_ops": [entry(op, kernel, n, ns) for (op, kernel), (n, ns) in ranked[:top]],
        "convolution_ops": [
            entry(op, kernel, n, ns, width=100) for (op, kernel), (n, ns) in ranked
            if category(op, kernel) in ("convolution", "pallas depthwise")
        ],
    }
