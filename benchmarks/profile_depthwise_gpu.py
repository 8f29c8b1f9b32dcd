"""Runs one depthwise kernel a few times, for a profiler (Nsight Compute) to look at.

Usage::

    ncu --profile-from-start off --set full -o fwd \\
        python benchmarks/profile_depthwise_gpu.py --op fwd --dtype bfloat16

The kernels are compiled and run twice before the profiler is switched on
(``cudaProfilerStart``), so that compilation and autotuning stay out of the report. Ops:
``fwd``, ``dx``, ``dw`` (the Pallas kernels), ``lax_fwd``, ``lax_dx``, ``lax_dw`` (XLA).

``--time`` instead times the op for each of several tilings (``;``-separated), after checking
it against the same op computed by XLA in float32, and prints one line per tiling.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from convnn._lowering import _pallas  # noqa: E402
from convnn._lowering._spec import ConvSpec  # noqa: E402


def _profiler():
    """(start, stop) of the CUDA profiler API, in the primary context that XLA also uses."""
    try:
        import torch

        return torch.cuda.profiler.start, torch.cuda.profiler.stop
    except ImportError:
        lib = ctypes.CDLL("libcuda.so.1")
        return lib.cuProfilerStart, lib.cuProfilerStop


def _ops(x, w, g, spec, pad, tiling):
    c = x.shape[-1]

    def lax_conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), pad, feature_group_count=c,
                                        dimension_numbers=("NHWC", "OHWI", "NHWC"))

    return {
        "fwd": lambda: _pallas.forward(x, w, spec, tiling=tiling),
        "dx": lambda: _pallas.input_grad(g, w, x.shape, x.dtype, spec, tiling=tiling),
        "dw": lambda: _pallas.weight_grad(x, g, w.shape, w.dtype, spec, tiling=tiling),
        "lax_fwd": lambda: lax_conv(x, w),
        "lax_dx": lambda: jax.vjp(lambda a: lax_conv(a, w), x)[1](g)[0],
        "lax_dw": lambda: jax.vjp(lambda b: lax_conv(x, b), w)[1](g)[0],
    }


def time_tilings(args, tilings, x, w, g, spec, pad):
    f32 = [a.astype(jnp.float32) for a in (x, w, g)]
    want = jax.jit(_ops(*f32, spec, pad, None)["lax_" + args.op])()
    for t in tilings:
        fn = jax.jit(_ops(x, w, g, spec, pad, t)[args.op])
        t0 = time.perf_counter()
        got = jax.block_until_ready(fn())
        compile_s = time.perf_counter() - t0
        err = float(jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want))
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(20):
                out = fn()
            jax.block_until_ready(out)
            times.append((time.perf_counter() - t0) / 20 * 1e3)
        print(f"{args.op} {args.dtype} {args.shape} {t} err {err:.1e} "
              f"{statistics.median(times):.3f} ms (compile {compile_s:.0f} s)", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--op", default="fwd")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--shape", default="256,56,56,96,7")
    p.add_argument("--tiling", default="", help="Tiling fields, e.g. block_w=64,block_c=16")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--time", action="store_true", help="time each tiling instead")
    args = p.parse_args()
    n, h, w_, c, k = (int(v) for v in args.shape.split(","))
    dt = jnp.dtype(args.dtype)
    pad = ((k // 2, (k - 1) // 2),) * 2
    spec = ConvSpec(stride=(1, 1), padding=pad, kernel_dilation=(1, 1), input_dilation=(1, 1),
                    groups=c, flip=False)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, h, w_, c)), dt)
    w = jnp.asarray(rng.standard_normal((c, k, k, 1)), dt)
    g = jnp.asarray(rng.standard_normal((n, h, w_, c)), dt)

    def parse(text):
        if not text:
            return None
        fields = dict(kv.split("=") for kv in text.split(","))
        base = _pallas.Tiling(block_w=64, block_c=16)
        return _pallas.Tiling(**{f: type(getattr(base, f))(int(v)) for f, v in fields.items()})

    if args.time:
        return time_tilings(args, [parse(t) for t in args.tiling.split(";")], x, w, g, spec, pad)
    fn = jax.jit(_ops(x, w, g, spec, pad, parse(args.tiling))[args.op])
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
    start, stop = _profiler()
    start()
    for _ in range(args.runs):
        jax.block_until_ready(fn())
    stop()
    print("ran", args.op, args.dtype, args.shape, args.tiling or "default tiling")


if __name__ == "__main__":
    main()
