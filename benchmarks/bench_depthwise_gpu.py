"""Depthwise convolution on an NVIDIA GPU: convnn's Pallas kernels vs plain lax vs PyTorch.

Sections (in this order; the sweep, timing and ConvNeXt sections stop once the time budget is
spent, and the JSON is rewritten after each one; each section compiles its programs up front on
several threads, see ``compile_all``):

1. ``correctness``: the Pallas forward pass, input gradient and weight gradient against the
   float64 NumPy reference (``tests/reference.py``) on a table of configurations (kernel sizes
   1 to 9, odd and even, strides 1 and 2, symmetric and asymmetric padding, flip, channel tails,
   float32 / bfloat16 / float16). Nothing is timed before this passes.
2. ``sweep``: a few tilings of each kernel on one 7x7 and one 3x3 shape.
3. ``timing``: per shape and dtype, forward and dx+dw (the backward pass alone) for convnn
   (the ``"pallas"`` strategy with the default tilings: each pass the Pallas kernel or XLA's, as
   the CUDA policy's ``_cuda.forward_kernel`` and ``_cuda.weight_kernel`` choose),
   ``lax.conv_general_dilated`` and PyTorch
   (``torch.nn.functional.conv2d``, ``groups=C``, channels_last, cuDNN autotuning on), with the
   memory floor (bytes read + written at ``--bandwidth``) and the fraction of it reached.
   The dx+dw floor counts the two passes as separate minimal computations (read g, write dx; read
   x and g), as in the issue this answers: 4 tensors. Each gradient is also timed alone (Pallas
   and lax), as is the Pallas forward kernel, with both Pallas gradients together and with the
   Pallas input gradient paired with XLA's weight gradient (``mixed``).
4. ``convnext``: a ConvNeXt block (7x7 depthwise, LayerNorm, 1x1 conv to 4C, GELU, 1x1 conv
   back, layer scale, residual) training step (loss, gradients, SGD update), with the depthwise
   convolution computed by one ``lax.conv_general_dilated``, by the ``"pallas"`` strategy
   (Pallas forward; gradients as ``_cuda.weight_kernel`` chooses), by the Pallas kernels
   for all three passes (``pallas_all``) and by the Pallas forward pass with XLA's gradients
   (``pallas_xla_grad``); once with the gradients of the parameters only, and once also with
   the gradient of the block's input, as for a block inside a network (``_dx``).

Usage::

    python -m benchmarks.bench_depthwise_gpu --json depthwise_gpu.json [--budget 420]

Times are medians over repetitions of the mean over a loop of asynchronous calls (JAX) or CUDA
events (PyTorch); tensors are far larger than L2, so the loop does not measure the cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import platform
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import convnn
from benchmarks._timing import median_ms
from convnn._lowering import ConvConfig, Prologue, _cuda, _pallas
from convnn._lowering._spec import ConvSpec

ROOT = Path(__file__).resolve().parents[1]

#: Run the kernels in Pallas interpret mode (``--dry-run``: checks the script on a CPU).
INTERPRET = False
START = time.perf_counter()
RESULTS: dict = {"sections": {}}

# (name, N, H, W, C, K, stride, dtype) -- the shapes.
SHAPES = [
    ("56x56x96 7x7", 256, 56, 56, 96, 7, 1, "bfloat16"),
    ("28x28x192 7x7", 256, 28, 28, 192, 7, 1, "bfloat16"),
    ("56x56x144 3x3", 256, 56, 56, 144, 3, 1, "bfloat16"),
    ("56x56x96 7x7", 256, 56, 56, 96, 7, 1, "float32"),
    ("28x28x192 7x7", 256, 28, 28, 192, 7, 1, "float32"),
    ("56x56x144 3x3", 256, 56, 56, 144, 3, 1, "float32"),
    ("112x112x96 3x3 s2", 128, 112, 112, 96, 3, 2, "bfloat16"),
    # more MobileNet-style 3x3 layers (the packed bfloat16 tiles and the "auto" policy)
    ("112x112x32 3x3", 128, 112, 112, 32, 3, 1, "bfloat16"),
    ("28x28x192 3x3", 256, 28, 28, 192, 3, 1, "bfloat16"),
    ("14x14x384 3x3", 256, 14, 14, 384, 3, 1, "bfloat16"),
    ("7x7x960 3x3", 256, 7, 7, 960, 3, 1, "bfloat16"),
    # EfficientNet-B0-style layers: 5x5 kernels, and strided 3x3 and 5x5 ones
    ("56x56x144 3x3 s2", 256, 56, 56, 144, 3, 2, "bfloat16"),
    ("28x28x240 3x3 s2", 256, 28, 28, 240, 3, 2, "bfloat16"),
    ("56x56x144 5x5 s2", 256, 56, 56, 144, 5, 2, "bfloat16"),
    ("28x28x240 5x5", 256, 28, 28, 240, 5, 1, "bfloat16"),
    ("14x14x672 5x5", 256, 14, 14, 672, 5, 1, "bfloat16"),
    ("28x28x240 5x5", 256, 28, 28, 240, 5, 1, "float32"),
    ("14x14x576 3x3 s2", 256, 14, 14, 576, 3, 2, "bfloat16"),
    ("56x56x144 3x3 s2", 256, 56, 56, 144, 3, 2, "float32"),
    ("56x56x144 3x3 s2", 256, 56, 56, 144, 3, 2, "float16"),
    ("56x56x144 5x5 s2", 256, 56, 56, 144, 5, 2, "float32"),
    ("28x28x240 5x5", 256, 28, 28, 240, 5, 1, "float16"),
    ("56x56x96 7x7 s2", 256, 56, 56, 96, 7, 2, "bfloat16"),
    ("56x56x96 7x7 s2", 256, 56, 56, 96, 7, 2, "float32"),
]

# (N, H, W, C, (KH, KW), (sh, sw), ((lo, hi), (lo, hi)), flip, dtype)
CORRECTNESS = [
    (4, 28, 28, 96, (7, 7), (1, 1), ((3, 3), (3, 3)), False, "bfloat16"),
    (2, 16, 14, 20, (7, 7), (2, 2), ((3, 2), (1, 3)), True, "float32"),
    (3, 14, 14, 64, (4, 4), (1, 1), ((1, 2), (2, 1)), True, "float16"),
    (2, 12, 11, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), False, "float32"),
    (3, 15, 14, 40, (3, 3), (1, 1), ((1, 1), (1, 1)), True, "bfloat16"),
    (4, 17, 17, 72, (3, 3), (2, 2), ((1, 1), (1, 1)), False, "bfloat16"),
    (2, 9, 10, 16, (2, 4), (1, 2), ((0, 1), (2, 1)), False, "float32"),
    (2, 9, 9, 16, (1, 1), (2, 2), ((0, 0), (0, 0)), False, "float32"),
    (2, 13, 12, 48, (6, 3), (2, 2), ((2, 3), (1, 1)), False, "float32"),
    (2501, 5, 6, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), False, "float16"),
    (2, 12, 11, 40, (3, 3), (2, 2), ((1, 1), (1, 1)), False, "float32"),
    (3, 15, 13, 24, (7, 7), (1, 1), ((3, 3), (3, 3)), False, "float32"),
    (2, 10, 9, 7, (5, 5), (2, 1), ((2, 2), (0, 0)), False, "float32"),
    (1, 20, 19, 33, (9, 9), (1, 1), ((4, 4), (4, 4)), False, "float32"),
]

TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 2e-3}


def elapsed() -> float:
    return time.perf_counter() - START


def log(*args):
    print(f"[{elapsed():6.1f}s]", *args, flush=True)


def save(path):
    RESULTS["elapsed_s"] = elapsed()
    if path:
        Path(path).write_text(json.dumps(RESULTS, indent=1, default=str))


def compile_all(jobs: dict, xla_only=()) -> dict:
    """Compiles ``{name: (jitted function, args)}``: ``{name: compiled}``.

    A 7x7 Pallas kernel takes tens of seconds to compile, and XLA compiles outside the GIL, so
    the sections compile everything they will run up front, on several threads. The programs
    named in ``xla_only`` (no Pallas kernel) are compiled first, one at a time: XLA times
    convolution algorithms on the GPU while it compiles them (autotuning), which concurrent
    compilations disturb (a lax 7x7 forward pass of 0.34 ms was once timed at 3.7 ms after
    one), and it keeps the choices for the programs compiled after them.
    """

    def build(item):
        fn, args = item
        return fn.lower(*args).compile()

    compiled = {k: build(jobs[k]) for k in xla_only}
    rest = [k for k in jobs if k not in compiled]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(rest)))) as pool:
        compiled.update(zip(rest, pool.map(build, [jobs[k] for k in rest])))
    log(f"compiled {len(jobs)} programs")
    return compiled


def make_spec(c, stride, padding, flip=False):
    return ConvSpec(
        stride=tuple(stride),
        padding=tuple(tuple(p) for p in padding),
        kernel_dilation=(1, 1),
        input_dilation=(1, 1),
        groups=c,
        flip=flip,
    )


def lax_conv(x, w, spec):
    wk = w[:, ::-1, ::-1, :] if spec.flip else w
    return lax.conv_general_dilated(
        x,
        wk,
        spec.stride,
        spec.padding,
        feature_group_count=spec.groups,
        dimension_numbers=("NHWC", "OHWI", "NHWC"),
    )


# ---------------------------------------------------------------------------------------------
# 1. correctness
# ---------------------------------------------------------------------------------------------


#: The prologue ``act(x * scale + shift)`` (convnn.Prologue) of every other correctness case,
#: the activations in turn; the reference is the chain rule through the float64 convolution.
PROLOGUE_ACTIVATIONS = ("relu6", "silu", None, "relu")
_ACT = {None: (lambda v: v, lambda v: np.ones_like(v)),
        "relu": (lambda v: np.maximum(v, 0), lambda v: (v > 0) * 1.0),
        "relu6": (lambda v: np.clip(v, 0, 6), lambda v: ((v > 0) & (v < 6)) * 1.0),
        "silu": (lambda v: v / (1 + np.exp(-v)),
                 lambda v: (1 / (1 + np.exp(-v))) * (1 + v * (1 - 1 / (1 + np.exp(-v)))))}


def correctness():
    from convnn._reference import conv_general_ref, conv_general_ref_vjp

    rows, ok, jobs, data = [], True, {}, {}
    for i, case in enumerate(CORRECTNESS):
        n, h, w_, c, k, s, pad, flip, dt = case
        rng = np.random.default_rng(i)
        x = rng.standard_normal((n, h, w_, c))
        w = rng.standard_normal((c, *k, 1))
        kw = dict(
            stride=s,
            padding_lo=[p[0] for p in pad],
            padding_hi=[p[1] for p in pad],
            kernel_dilation=(1, 1),
            input_dilation=(1, 1),
            groups=c,
            flip=flip,
        )
        xd = np.asarray(jnp.asarray(x, dt).astype(jnp.float32), np.float64)  # rounded inputs
        wd = np.asarray(jnp.asarray(w, dt).astype(jnp.float32), np.float64)
        fused = i % 2 == 1
        act = PROLOGUE_ACTIVATIONS[(i // 2) % len(PROLOGUE_ACTIVATIONS)] if fused else None
        # Shifts past zero (the padding must stay zero, not act(shift)), negative scales.
        scale = rng.uniform(-1.5, 2.0, c) if fused else np.ones(c)
        shift = rng.uniform(0.5, 2.0, c) if fused else np.zeros(c)
        z = xd * scale + shift
        ref = conv_general_ref(_ACT[act][0](z), wd, **kw)
        g = rng.standard_normal(ref.shape)
        gd = np.asarray(jnp.asarray(g, dt).astype(jnp.float32), np.float64)
        spec = make_spec(c, s, pad, flip)
        assert _pallas.supports(spec, x.shape, jnp.dtype(dt), w.shape), case
        da, dw = conv_general_ref_vjp(_ACT[act][0](z), wd, gd, **kw)
        dz = da * _ACT[act][1](z)
        want = (ref, dz * scale, dw, (dz * xd).sum((0, 1, 2)), dz.sum((0, 1, 2)))

        def run(x, w, g, a, b, spec=spec, fused=fused, act=act):
            def f(x, w, a, b):
                prologue = Prologue(a, b, act) if fused else None
                return _pallas.depthwise(x, w, spec, prologue=prologue, interpret=INTERPRET)

            out, vjp = jax.vjp(f, x, w, a, b)
            return (out, *vjp(g))

        args = (jnp.asarray(x, dt), jnp.asarray(w, dt), jnp.asarray(g, dt),
                jnp.asarray(scale, jnp.float32), jnp.asarray(shift, jnp.float32))
        jobs[i] = (jax.jit(run), args)
        data[i] = (case, act if fused else "-", args, want[:5 if fused else 3])
    compiled = compile_all(jobs)
    for i, (case, act, args, want) in data.items():
        dt = case[-1]
        got = compiled[i](*args)
        errs = {}
        for name, a, b in zip(("out", "dx", "dw", "dscale", "dshift"), got, want):
            a = np.asarray(a.astype(jnp.float32), np.float64)
            errs[name] = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
            if a.shape != b.shape or not np.all(np.isfinite(a)):
                errs[name] = float("inf")
        passed = all(e <= TOLERANCE[dt] for e in errs.values())
        ok &= passed
        rows.append(dict(case=repr(case), prologue=act, rel_err=errs, passed=passed))
        log("correct" if passed else "WRONG", case, f"prologue {act}",
            {k_: f"{v:.1e}" for k_, v in errs.items()})
    return dict(all_passed=ok, cases=rows)


# ---------------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------------


def time_torch(fn, iters=20, reps=7):
    import torch

    fn()
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def operands(n, h, w_, c, k, dt, stride, seed=0):
    key = jax.random.PRNGKey(seed)
    kx, kw, kg = jax.random.split(key, 3)
    p = k // 2
    ho = (h + 2 * p - k) // stride + 1
    wo = (w_ + 2 * p - k) // stride + 1
    x = jax.random.normal(kx, (n, h, w_, c), jnp.float32).astype(dt)
    w = (jax.random.normal(kw, (c, k, k, 1), jnp.float32) / k).astype(dt)
    g = jax.random.normal(kg, (n, ho, wo, c), jnp.float32).astype(dt)
    spec = make_spec(c, (stride, stride), ((p, p), (p, p)))
    return x, w, g, spec


def pallas_fns(spec, x, w, tiling_c=None, tiling_w=None):
    fwd = jax.jit(lambda x, w: _pallas.forward(x, w, spec, tiling=tiling_c, interpret=INTERPRET))
    dx = jax.jit(
        lambda g, w: _pallas.input_grad(
            g, w, x.shape, x.dtype, spec, tiling=tiling_c, interpret=INTERPRET
        )
    )
    dw = jax.jit(
        lambda x, g: _pallas.weight_grad(
            x, g, w.shape, w.dtype, spec, tiling=tiling_w, interpret=INTERPRET
        )
    )
    bwd = jax.jit(
        lambda x, w, g: (
            _pallas.input_grad(g, w, x.shape, x.dtype, spec, tiling=tiling_c, interpret=INTERPRET),
            _pallas.weight_grad(x, g, w.shape, w.dtype, spec, tiling=tiling_w, interpret=INTERPRET),
        )
    )
    return fwd, dx, dw, bwd


# ---------------------------------------------------------------------------------------------
# 2. sweep
# ---------------------------------------------------------------------------------------------


T = _pallas.Tiling
# per swept shape: (N, H, W, C, K, dtype), correlation tilings, weight-gradient tilings. The
# first of each list is the previous default. No unrolled variants: a 7x7 unrolled body takes
# minutes to compile (and ran slower).
SWEEP = {
    "56x56x96 7x7 bf16": (
        (256, 56, 56, 96, 7, "bfloat16"),
        [
            T(block_w=64, block_c=32, num_warps=8, vector=2, hold_weights=True),
            T(block_w=16, block_c=32, num_warps=8, vector=2, hold_weights=True, span=4),
            T(block_w=8, block_c=32, vector=2, hold_weights=True, span=4),
            T(block_w=32, block_c=32, num_warps=8, vector=2, hold_weights=True, span=2),
            T(block_w=16, block_c=32, vector=2, hold_weights=True, span=2),
            T(block_w=16, block_c=16, vector=2, hold_weights=True, span=4),
            T(block_w=8, block_c=32, vector=2, hold_weights=True, span=8),
        ],
        [
            T(block_w=8, block_c=32, prefetch=4, images=5),
            T(block_w=8, block_c=32, prefetch=4, images=5, span=2),
            T(block_w=8, block_c=32, prefetch=4, images=5, span=4),
            T(block_w=4, block_c=32, num_warps=2, prefetch=4, images=5, span=4),
            T(block_w=16, block_c=32, num_warps=8, prefetch=4, images=5, span=4),
        ],
    ),
    # occupancy and parallelism of the 7x7 forward pass: warps, channels and rows per program,
    # prefetch depth (correlation only).
    "56x56x96 7x7 bf16 occupancy": (
        (256, 56, 56, 96, 7, "bfloat16"),
        [
            T(block_w=64, block_c=32, num_warps=8, vector=2, hold_weights=True),
            T(block_w=32, block_c=32, vector=2, hold_weights=True),
            T(block_w=64, block_c=32, rows=28, num_warps=8, vector=2, hold_weights=True),
            T(block_w=64, block_c=32, rows=14, num_warps=8, vector=2, hold_weights=True),
            T(block_w=64, block_c=32, num_warps=8, prefetch=1, vector=2, hold_weights=True),
            T(block_w=64, block_c=32, num_warps=8, prefetch=4, vector=2, hold_weights=True),
            T(block_w=32, block_c=64, num_warps=8, vector=2, hold_weights=True),
            T(block_w=64, block_c=32, num_warps=16, vector=2, hold_weights=True),
            T(block_w=64, block_c=16, vector=2, hold_weights=True),
            T(block_w=64, block_c=32, num_warps=8, prefetch=0, vector=2, hold_weights=True),
            T(block_w=64, block_c=8, num_warps=2, vector=2, hold_weights=True),
            T(block_w=64, block_c=16, num_warps=8, vector=2, hold_weights=True),
            T(block_w=64, block_c=16, num_warps=2, vector=2, hold_weights=True),
            T(block_w=32, block_c=16, num_warps=2, vector=2, hold_weights=True),
            T(block_w=64, block_c=16, prefetch=1, vector=2, hold_weights=True),
        ],
        [],
    ),
    "28x28x192 7x7 bf16": (
        (256, 28, 28, 192, 7, "bfloat16"),
        [
            T(block_w=32, block_c=32, vector=2, hold_weights=True),
            T(block_w=8, block_c=32, vector=2, hold_weights=True, span=4),
            T(block_w=16, block_c=32, num_warps=8, vector=2, hold_weights=True, span=2),
            T(block_w=16, block_c=32, vector=2, hold_weights=True, span=2),
        ],
        [
            T(block_w=8, block_c=32, prefetch=4, images=5),
            T(block_w=8, block_c=32, prefetch=4, images=5, span=4),
            T(block_w=8, block_c=32, prefetch=4, images=5, span=2),
        ],
    ),
    "56x56x144 3x3 bf16": (
        (256, 56, 56, 144, 3, "bfloat16"),
        [
            T(block_w=64, block_c=32, num_warps=8),
            T(block_w=32, block_c=32, span=2),
            T(block_w=16, block_c=32, num_warps=2, span=4),
            T(block_w=32, block_c=16, num_warps=2, span=2),
            T(block_w=16, block_c=16, num_warps=1, span=4),
            T(block_w=16, block_c=16, num_warps=2, span=4, vector=2),
        ],
        [
            T(block_w=32, block_c=32, num_warps=8, prefetch=4, images=5),
            T(block_w=16, block_c=32, prefetch=4, images=5, span=2),
            T(block_w=8, block_c=32, num_warps=2, prefetch=4, images=5, span=4),
            T(block_w=16, block_c=16, num_warps=2, prefetch=4, images=5, span=4),
        ],
    ),
    "56x56x96 7x7 fp32": (
        (256, 56, 56, 96, 7, "float32"),
        [
            T(block_w=64, block_c=16, num_warps=8, vector=2, hold_weights=True),
            T(block_w=16, block_c=16, vector=2, hold_weights=True, span=4),
            T(block_w=32, block_c=16, num_warps=8, vector=2, hold_weights=True, span=2),
        ],
        [
            T(block_w=16, block_c=16, prefetch=4, images=5),
            T(block_w=16, block_c=16, prefetch=4, images=5, span=2),
            T(block_w=8, block_c=16, num_warps=2, prefetch=4, images=5, span=4),
        ],
    ),
    "56x56x144 3x3 fp32": (
        (256, 56, 56, 144, 3, "float32"),
        [
            T(block_w=64, block_c=16),
            T(block_w=16, block_c=16, num_warps=1, span=4),
            T(block_w=32, block_c=16, num_warps=2, span=2),
        ],
        [
            T(block_w=32, block_c=16, prefetch=4, images=5),
            T(block_w=16, block_c=16, num_warps=2, prefetch=4, images=5, span=2),
            T(block_w=8, block_c=16, num_warps=1, prefetch=4, images=5, span=4),
        ],
    ),
}
TORCH = True
CONVNEXT_SIZE = (256, 56, 96)
BEST: dict = {}  # shape -> (correlate tiling, weight-gradient tiling), the sweep's fastest


def _max_rel_diff(a, b) -> float:
    """Largest absolute difference, relative to the largest magnitude of ``b``."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _rel_err(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


def sweep(budget, only=None):
    """Times each tiling after checking its result against XLA's (float32 XLA on the same data)."""
    out = {}
    for name, (shape, corr, wgrad) in SWEEP.items():
        if only and not any(o in name for o in only):
            continue
        n, h, w_, c, k, dt = shape
        x, w, g, spec = operands(n, h, w_, c, k, dt, 1)
        tol = TOLERANCE[dt]
        x32, w32, g32 = (a.astype(jnp.float32) for a in (x, w, g))
        want_y, vjp = jax.jit(lambda a, b: jax.vjp(lambda a, b: lax_conv(a, b, spec), a, b))(
            x32, w32
        )
        want_dx, want_dw = vjp(g32)
        res = {"correlate": [], "weight_grad": []}
        for kind, tilings in (("correlate", corr), ("weight_grad", wgrad)):
            for t in tilings:
                if elapsed() > budget:
                    break
                entry = dict(tiling=dataclasses.asdict(t))
                try:
                    if kind == "correlate":
                        fn = jax.jit(
                            lambda x, w, t=t: _pallas.forward(
                                x, w, spec, tiling=t, interpret=INTERPRET
                            )
                        )
                        dxf = jax.jit(
                            lambda g, w, t=t: _pallas.input_grad(
                                g, w, x.shape, x.dtype, spec, tiling=t, interpret=INTERPRET
                            )
                        )
                        entry["rel_err"] = max(
                            _rel_err(fn(x, w), want_y), _rel_err(dxf(g, w), want_dx)
                        )
                        args = (x, w)
                    else:
                        fn = jax.jit(
                            lambda x, g, t=t: _pallas.weight_grad(
                                x, g, w.shape, w.dtype, spec, tiling=t, interpret=INTERPRET
                            )
                        )
                        entry["rel_err"] = _rel_err(fn(x, g), want_dw)
                        args = (x, g)
                    entry["passed"] = entry["rel_err"] <= tol
                    if entry["passed"]:
                        entry["ms"] = median_ms(fn, *args, iters=10, repeats=5)
                    log(
                        name,
                        kind,
                        t,
                        f"err {entry['rel_err']:.1e}",
                        f"{entry.get('ms', -1):.3f} ms",
                    )
                except Exception as e:  # noqa: BLE001
                    entry["error"] = repr(e)[:500]
                    log(name, kind, t, "ERROR", repr(e)[:300])
                res[kind].append(entry)
        out[name] = res
        ok_c = [r for r in res["correlate"] if "ms" in r]
        ok_w = [r for r in res["weight_grad"] if "ms" in r]
        if ok_c and ok_w:
            BEST[shape] = (
                _pallas.Tiling(**min(ok_c, key=lambda r: r["ms"])["tiling"]),
                _pallas.Tiling(**min(ok_w, key=lambda r: r["ms"])["tiling"]),
            )
            log(name, "best", BEST[shape])
        jax.clear_caches()
    return out


# ---------------------------------------------------------------------------------------------
# 3. timing
# ---------------------------------------------------------------------------------------------


def best_tilings(n, h, w_, c, k, dt, stride):
    """The sweep's fastest ``(correlation, weight-gradient)`` tilings for a swept shape at stride
    1 ("same" padding: the output is the input's size), else ``(None, None)``: the defaults."""
    if stride != 1:
        return None, None
    return BEST.get((n, h, w_, c, k, jnp.dtype(dt).name), (None, None))


def strategy_fn(spec, x, w, tilings=(None, None)):
    """The ``"pallas"`` strategy as the CUDA policy runs it: each pass's kernel from
    ``_cuda.forward_kernel`` / ``_cuda.weight_kernel``, with the given tilings."""
    cfg = ConvConfig(x.shape, w.shape, x.dtype, spec)
    forward_pass, weight_gradient = _cuda.forward_kernel(cfg), _cuda.weight_kernel(cfg)

    def conv(a, b):
        return _pallas.depthwise(
            a,
            b,
            spec,
            forward_pass=forward_pass,
            weight_gradient=weight_gradient,
            tiling=tilings[0],
            weight_grad_tiling=tilings[1],
            interpret=INTERPRET,
        )

    return conv, forward_pass, weight_gradient


def timing(budget, bandwidth, shapes):
    if TORCH:
        import torch

        torch.backends.cudnn.benchmark = True
    rows = []
    for name, n, h, w_, c, k, s, dt in shapes:
        if elapsed() > budget:
            log("budget spent; skipping", name, dt)
            break
        row = dict(shape=name, n=n, dtype=dt, kernel=k, stride=s)
        try:
            x, w, g, spec = operands(n, h, w_, c, k, dt, s)
            item = jnp.dtype(dt).itemsize
            tensor_in = n * h * w_ * c * item
            tensor_out = g.size * item
            wbytes = w.size * item
            row["floor_fwd_ms"] = (tensor_in + tensor_out + wbytes) / bandwidth * 1e3
            row["floor_bwd_ms"] = (2 * tensor_in + 2 * tensor_out + 2 * wbytes) / bandwidth * 1e3
            best = best_tilings(n, h, w_, c, k, dt, s)
            fwd, pdx, pdw, bwd = pallas_fns(spec, x, w, *best)
            row["tilings"] = [
                dataclasses.asdict(
                    t
                    if t is not None
                    else _pallas.default_tiling(kind, n, g.shape[1:3], c, x.dtype, (k, k), 1, s)
                )
                for t, kind in zip(best, ("correlate", "weight_grad"))
            ]
            # convnn's dx+dw is the strategy's (as ``backward_kernels`` chooses); "pallas_bwd" is
            # both Pallas kernels.
            # convnn's forward pass is the strategy's too (``forward_kernel``); "pallas_fwd" is
            # the Pallas kernel.
            conv, forward_pass, weight_gradient = strategy_fn(spec, x, w, best)
            strategy_fwd = jax.jit(conv)
            row["forward_kernel"] = forward_pass
            strategy_bwd = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g))
            # "pallas": both Pallas gradients; "mixed": XLA's weight gradient.
            row["backward_kernels"] = "pallas" if weight_gradient == "pallas" else "mixed"
            row["explain"] = str(
                convnn.explain(
                    convnn.conv2d, x, w, stride=s, padding=k // 2, groups=c, backend="cuda"
                )
            )
            lfwd = jax.jit(lambda x, w: lax_conv(x, w, spec))
            lbwd = jax.jit(lambda x, w, g: jax.vjp(lambda a, b: lax_conv(a, b, spec), x, w)[1](g))
            # Each gradient alone, and the Pallas input gradient with XLA's weight gradient (the
            # strategy's own choice in 16-bit types: not compiled and timed twice).
            ldx = jax.jit(lambda x, w, g: jax.vjp(lambda a: lax_conv(a, w, spec), x)[1](g))
            ldw = jax.jit(lambda x, w, g: jax.vjp(lambda b: lax_conv(x, b, spec), w)[1](g))
            jobs = dict(
                fwd=(fwd, (x, w)),
                strategy_fwd=(strategy_fwd, (x, w)),
                strategy_bwd=(strategy_bwd, (x, w, g)),
                bwd=(bwd, (x, w, g)),
                lfwd=(lfwd, (x, w)),
                lbwd=(lbwd, (x, w, g)),
                ldx=(ldx, (x, w, g)),
                ldw=(ldw, (x, w, g)),
                pdx=(pdx, (g, w)),
                pdw=(pdw, (x, g)),
            )
            if row["backward_kernels"] != "mixed":
                jobs["mixed"] = (
                    jax.jit(
                        lambda x, w, g: jax.vjp(
                            lambda a, b: _pallas.depthwise(
                                a,
                                b,
                                spec,
                                weight_gradient="xla",
                                tiling=best[0],
                                interpret=INTERPRET,
                            ),
                            x,
                            w,
                        )[1](g)
                    ),
                    (x, w, g),
                )
            fns = compile_all(jobs, xla_only=("lfwd", "lbwd", "ldx", "ldw"))
            fwd, strategy_fwd, strategy_bwd, bwd, lfwd, lbwd, ldx, ldw, pdx, pdw = (
                fns[k_]
                for k_ in (
                    "fwd",
                    "strategy_fwd",
                    "strategy_bwd",
                    "bwd",
                    "lfwd",
                    "lbwd",
                    "ldx",
                    "ldw",
                    "pdx",
                    "pdw",
                )
            )
            mixed = fns.get("mixed", strategy_bwd)
            row["convnn_fwd_ms"] = median_ms(strategy_fwd, x, w)
            row["pallas_fwd_ms"] = median_ms(fwd, x, w)
            row["convnn_bwd_ms"] = median_ms(strategy_bwd, x, w, g)
            row["pallas_bwd_ms"] = median_ms(bwd, x, w, g)
            row["lax_fwd_ms"] = median_ms(lfwd, x, w)
            row["lax_bwd_ms"] = median_ms(lbwd, x, w, g)
            row["pallas_dx_ms"] = median_ms(pdx, g, w)
            row["pallas_dw_ms"] = median_ms(pdw, x, g)
            row["lax_dx_ms"] = median_ms(ldx, x, w, g)
            row["lax_dw_ms"] = median_ms(ldw, x, w, g)
            row["mixed_bwd_ms"] = (
                row["convnn_bwd_ms"] if mixed is strategy_bwd else median_ms(mixed, x, w, g)
            )
            d_mixed, d_lax = mixed(x, w, g), lbwd(x, w, g)
            row["mixed_max_rel_diff_vs_lax"] = max(map(_max_rel_diff, d_mixed, d_lax))
            del d_mixed, d_lax
            # Same numbers from both: the custom_vjp path vs lax (bf16 tolerance).
            o1, o2 = fwd(x, w), lfwd(x, w)
            row["max_rel_diff_vs_lax"] = _max_rel_diff(o1, o2)
            del o1, o2
            if not TORCH:
                rows.append(row)
                log(name, dt, row)
                continue
            tdt = getattr(torch, dt)
            p = k // 2
            cl = torch.channels_last
            tx = torch.randn(n, c, h, w_, device="cuda", dtype=tdt).contiguous(memory_format=cl)
            tx.requires_grad_(True)
            tw = (torch.randn(c, 1, k, k, device="cuda", dtype=tdt) / k).requires_grad_(True)
            tg = torch.randn(n, c, g.shape[1], g.shape[2], device="cuda", dtype=tdt)
            tg = tg.contiguous(memory_format=cl)
            conv = torch.nn.functional.conv2d
            with torch.no_grad():
                row["torch_fwd_ms"] = time_torch(lambda: conv(tx, tw, None, s, p, 1, c))
            tout = conv(tx, tw, None, s, p, 1, c)
            row["torch_bwd_ms"] = time_torch(
                lambda: torch.autograd.grad(tout, (tx, tw), tg, retain_graph=True)
            )
            for kind in ("fwd", "bwd"):
                ours = row[f"convnn_{kind}_ms"]
                row[f"speedup_{kind}_vs_lax"] = row[f"lax_{kind}_ms"] / ours
                row[f"speedup_{kind}_vs_torch"] = row[f"torch_{kind}_ms"] / ours
                row[f"floor_fraction_{kind}"] = row[f"floor_{kind}_ms"] / ours
            log(
                name,
                dt,
                {
                    k_: (round(v, 3) if isinstance(v, float) else v)
                    for k_, v in row.items()
                    if k_.endswith(("ms", "lax", "torch")) or k_.startswith("floor_frac")
                },
            )
        except Exception as e:  # noqa: BLE001
            row["error"] = repr(e)[:1000]
            log(name, dt, "ERROR", traceback.format_exc()[-2000:])
        rows.append(row)
        jax.clear_caches()
    return rows


# ---------------------------------------------------------------------------------------------
# 4. ConvNeXt block
# ---------------------------------------------------------------------------------------------


def convnext(n=256, size=56, c=96, dtype="bfloat16"):
    dt = jnp.dtype(dtype)
    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 6)
    params = dict(
        dw=jax.random.normal(ks[0], (c, 7, 7, 1), jnp.float32) / 7,
        dw_b=jnp.zeros((c,), jnp.float32),
        ln_s=jnp.ones((c,), jnp.float32),
        ln_b=jnp.zeros((c,), jnp.float32),
        w1=jax.random.normal(ks[1], (c, 4 * c), jnp.float32) / math.sqrt(c),
        b1=jnp.zeros((4 * c,), jnp.float32),
        w2=jax.random.normal(ks[2], (4 * c, c), jnp.float32) / math.sqrt(4 * c),
        b2=jnp.zeros((c,), jnp.float32),
        gamma=jnp.full((c,), 0.1, jnp.float32),
    )
    x = jax.random.normal(ks[3], (n, size, size, c), jnp.float32).astype(dt)

    spec = make_spec(c, (1, 1), ((3, 3), (3, 3)))
    best = best_tilings(n, size, size, c, 7, dt, 1)
    strategy, _, _ = strategy_fn(spec, x, params["dw"].astype(dt), best)
    dwconv = {
        "xla": lambda x, w: lax_conv(x, w, spec),
        "pallas": strategy,  # the strategy
        "pallas_all": lambda x, w: _pallas.depthwise(
            x, w, spec, tiling=best[0], weight_grad_tiling=best[1], interpret=INTERPRET
        ),
        "pallas_xla_grad": lambda x, w: _pallas.depthwise_with_xla_derivatives(
            x, w, spec, tiling=best[0], interpret=INTERPRET
        ),
    }

    def block(p, x, strategy):
        h = dwconv[strategy](x, p["dw"].astype(dt)) + p["dw_b"].astype(dt)
        hf = h.astype(jnp.float32)
        mu = hf.mean(-1, keepdims=True)
        var = ((hf - mu) ** 2).mean(-1, keepdims=True)
        h = ((hf - mu) * lax.rsqrt(var + 1e-6) * p["ln_s"] + p["ln_b"]).astype(dt)
        h = jnp.dot(h, p["w1"].astype(dt)) + p["b1"].astype(dt)
        h = jax.nn.gelu(h)
        h = jnp.dot(h, p["w2"].astype(dt)) + p["b2"].astype(dt)
        return x + (p["gamma"].astype(dt) * h)

    def loss(p, x, strategy):
        y = block(p, x, strategy).astype(jnp.float32)
        return jnp.mean(y * y)

    def step(p, x, strategy):
        value, grads = jax.value_and_grad(loss)(p, x, strategy)
        return jax.tree.map(lambda a, b: a - 1e-3 * b, p, grads), value

    def step_dx(p, x, strategy):
        # A block inside a network: the gradient also flows to the block's input.
        value, (grads, dx) = jax.value_and_grad(loss, argnums=(0, 1))(p, x, strategy)
        return jax.tree.map(lambda a, b: a - 1e-3 * b, p, grads), value, dx

    out = {}
    names = ("xla", "pallas", "pallas_all", "pallas_xla_grad")
    jobs = {
        (suffix, name): (jax.jit(functools.partial(fn, strategy=name)), (params, x))
        for suffix, fn in (("", step), ("_dx", step_dx))
        for name in names
    }
    compiled = compile_all(jobs, xla_only=(("", "xla"), ("_dx", "xla")))
    for suffix in ("", "_dx"):
        for name in names:
            f = compiled[(suffix, name)]
            hlo = f.as_text()
            key = f"{name}{suffix}"
            out[f"{key}_uses_pallas_kernels"] = "convnn_depthwise" in hlo
            out[f"{key}_step_ms"] = median_ms(f, params, x, iters=10, repeats=7)
            out[f"{key}_loss"] = float(f(params, x)[1])
            log("convnext", key, out[f"{key}_step_ms"], out[f"{key}_uses_pallas_kernels"])
        for name in ("pallas", "pallas_all", "pallas_xla_grad"):
            out[f"speedup_{name}{suffix}"] = (
                out[f"xla{suffix}_step_ms"] / out[f"{name}{suffix}_step_ms"]
            )
    out["speedup"] = out["speedup_pallas"]
    return out


def dry_run():
    """Shrinks every table so that the script runs on a CPU in interpret mode."""
    global SHAPES, CORRECTNESS, SWEEP, TORCH, CONVNEXT_SIZE, INTERPRET
    INTERPRET = True
    SHAPES = [
        ("8x8x8 3x3", 2, 8, 8, 8, 3, 1, "float32"),
        ("9x9x8 3x3 s2", 2, 9, 9, 8, 3, 2, "bfloat16"),
    ]
    CORRECTNESS = CORRECTNESS[3:5]  # 3x3 float32 as it is, and 3x3 bfloat16 with a prologue
    SWEEP = {
        "8x9x8 3x3 fp32": (
            (2, 8, 9, 8, 3, "float32"),
            [T(block_w=4, block_c=4, num_warps=1), T(block_w=2, block_c=4, num_warps=1, span=3)],
            [
                T(block_w=4, block_c=4, num_warps=1, images=2),
                T(block_w=2, block_c=4, num_warps=1, images=2, span=2),
            ],
        )
    }
    TORCH = False
    CONVNEXT_SIZE = (2, 8, 8)


def main():
    global SHAPES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="depthwise_gpu.json")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all sections")
    parser.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s for the floor")
    parser.add_argument("--sections", default="correctness,sweep,timing,convnext")
    parser.add_argument("--sweep-budget", type=float, default=150.0)
    parser.add_argument("--sweep-only", default="", help="comma-separated substrings of SWEEP keys")
    parser.add_argument(
        "--shapes",
        default="",
        help="time only these SHAPES (comma-separated substrings of 'name dtype')",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny shapes in Pallas interpret mode, no PyTorch (checks the script)",
    )
    args = parser.parse_args()
    if args.dry_run:
        dry_run()
    sections = args.sections.split(",")
    dev = jax.devices()[0]
    RESULTS["env"] = dict(
        jax=jax.__version__,
        device=getattr(dev, "device_kind", str(dev)),
        platform=dev.platform,
        python=platform.python_version(),
    )
    try:
        import torch

        RESULTS["env"]["torch"] = torch.__version__
    except ImportError:
        pass
    log(RESULTS["env"])
    if "correctness" in sections:
        RESULTS["sections"]["correctness"] = res = correctness()
        save(args.json)
        if not res["all_passed"]:
            log("correctness FAILED: no timing")
            return 1
    if "sweep" in sections:
        only = [o for o in args.sweep_only.split(",") if o]
        RESULTS["sections"]["sweep"] = sweep(elapsed() + args.sweep_budget, only)
        save(args.json)
    if args.shapes:
        keep = [o for o in args.shapes.split(",") if o]
        SHAPES = [r for r in SHAPES if any(o in f"{r[0]} {r[-1]}" for o in keep)]
    RESULTS["best_tilings"] = {repr(k): [dataclasses.asdict(t) for t in v] for k, v in BEST.items()}
    if "timing" in sections:
        RESULTS["sections"]["timing"] = timing(args.budget - 60, args.bandwidth, SHAPES[:5])
        save(args.json)
    if "convnext" in sections and elapsed() < args.budget:
        try:
            RESULTS["sections"]["convnext"] = convnext(*CONVNEXT_SIZE)
        except Exception as e:  # noqa: BLE001
            RESULTS["sections"]["convnext"] = dict(error=traceback.format_exc()[-2000:])
            log("convnext ERROR", repr(e)[:500])
        save(args.json)
    if "timing" in sections and elapsed() < args.budget - 30:
        RESULTS["sections"]["timing"] += timing(args.budget - 20, args.bandwidth, SHAPES[5:])
        save(args.json)
    print_tables()
    return 0


def print_tables():
    rows = RESULTS["sections"].get("timing", [])
    if rows:
        print(
            "\n| shape | dtype | fwd convnn / lax / torch / floor (ms) | floor % | "
            "dx+dw convnn / lax / torch / floor (ms) | floor % |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            if "error" in r:
                print(f"| {r['shape']} | {r['dtype']} | error | | | |")
                continue

            def f(kind):
                return " / ".join(
                    f"{r.get(f'{p}_{kind}_ms', float('nan')):.3f}"
                    for p in ("convnn", "lax", "torch", "floor")
                )

            def frac(kind):
                return 100 * r[f"floor_{kind}_ms"] / r[f"convnn_{kind}_ms"]

            print(
                f"| {r['shape']} | {r['dtype']} | {f('fwd')} | {frac('fwd'):.0f}% | "
                f"{f('bwd')} | {frac('bwd'):.0f}% |"
            )
    split = [r for r in rows if "mixed_bwd_ms" in r]
    if split:
        print(
            "\n| shape | dtype | fwd: Pallas / lax | dx: Pallas / lax | dw: Pallas / lax | "
            "dx+dw: Pallas dx with lax dw / lax / both Pallas (ms) | mixed vs lax |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in split:
            print(
                f"| {r['shape']} | {r['dtype']} | "
                f"{r.get('pallas_fwd_ms', float('nan')):.3f} / {r['lax_fwd_ms']:.3f} | "
                f"{r['pallas_dx_ms']:.3f} / {r['lax_dx_ms']:.3f} | "
                f"{r['pallas_dw_ms']:.3f} / {r['lax_dw_ms']:.3f} | {r['mixed_bwd_ms']:.3f} / "
                f"{r['lax_bwd_ms']:.3f} / {r['pallas_bwd_ms']:.3f} | "
                f"{r['lax_bwd_ms'] / r['mixed_bwd_ms']:.2f}x |"
            )
    cx = RESULTS["sections"].get("convnext")
    if cx and "speedup" in cx:
        for suffix, what in (("", "parameter gradients"), ("_dx", "and input gradient")):
            print(
                f"\nConvNeXt block step ({what}): xla {cx[f'xla{suffix}_step_ms']:.3f} ms, "
                + ", ".join(
                    f"{name} {cx[f'{name}{suffix}_step_ms']:.3f} ms "
                    f"({cx[f'speedup_{name}{suffix}']:.2f}x)"
                    for name in ("pallas", "pallas_all", "pallas_xla_grad")
                )
            )


if __name__ == "__main__":
    sys.exit(main())
