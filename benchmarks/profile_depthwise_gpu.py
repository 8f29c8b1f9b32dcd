"""Runs one depthwise kernel a few times, for a profiler (Nsight Compute) to look at.

Usage::

    ncu --profile-from-start off --set full -o fwd \\
        python -m benchmarks.profile_depthwise_gpu --op fwd --dtype bfloat16

The kernels are compiled and run twice before the profiler is switched on
(``cudaProfilerStart``), so that compilation and autotuning stay out of the report. Ops:
``fwd``, ``dx``, ``dw`` (the Pallas kernels), ``lax_fwd``, ``lax_dx``, ``lax_dw`` (XLA);
``--time`` takes several, comma-separated.

``--time`` instead times the op for each of several tilings (``;``-separated; an empty one is
the default tiling), after checking it against the same op computed by XLA in float32, and
prints the lax op's time, then one line per tiling. The tilings compile concurrently
(``compile_all``). Operands, the lax convolution and the timing loop are those of
``bench_depthwise_gpu.py``. For example::

    python -m benchmarks.profile_depthwise_gpu --time --op dw \
        --tiling ";block_w=8,block_c=32,vector=2,span=7,prefetch=0,num_warps=4"
"""

from __future__ import annotations

import argparse
import ctypes
import time

import jax
import jax.numpy as jnp

from benchmarks._timing import median_ms
from benchmarks.bench_depthwise_gpu import (
    _pallas,
    _rel_err,
    compile_all,
    lax_conv,
    operands,
)


def _profiler():
    """(start, stop) of the CUDA profiler API, in the primary context that XLA also uses."""
    try:
        import torch

        return torch.cuda.profiler.start, torch.cuda.profiler.stop
    except ImportError:
        lib = ctypes.CDLL("libcuda.so.1")
        return lib.cuProfilerStart, lib.cuProfilerStop


def _ops(spec, tiling):
    """``{op: f(x, w, g)}``."""
    return {
        "fwd": lambda x, w, g: _pallas.forward(x, w, spec, tiling=tiling),
        "dx": lambda x, w, g: _pallas.input_grad(g, w, x.shape, x.dtype, spec, tiling=tiling),
        "dw": lambda x, w, g: _pallas.weight_grad(x, g, w.shape, w.dtype, spec, tiling=tiling),
        "lax_fwd": lambda x, w, g: lax_conv(x, w, spec),
        "lax_dx": lambda x, w, g: jax.vjp(lambda a: lax_conv(a, w, spec), x)[1](g)[0],
        "lax_dw": lambda x, w, g: jax.vjp(lambda b: lax_conv(x, b, spec), w)[1](g)[0],
    }


def _tiling(text):
    """``block_w=8,block_c=32,...`` -> a Tiling (``None`` for an empty string)."""
    if not text:
        return None
    fields = dict(kv.split("=") for kv in text.split(","))
    base = _pallas.Tiling(block_w=64, block_c=16)
    return _pallas.Tiling(**{f: type(getattr(base, f))(int(v)) for f, v in fields.items()})


def time_tilings(op, tilings, x, w, g, spec):
    lax_op = jax.jit(_ops(spec, None)["lax_" + op])
    want = lax_op(*(a.astype(jnp.float32) for a in (x, w, g)))
    t0 = time.perf_counter()
    fns = compile_all({i: (jax.jit(_ops(spec, t)[op]), (x, w, g))
                       for i, t in enumerate(tilings)})
    print(f"compiled {len(tilings)} tilings in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"lax_{op} {x.dtype} {x.shape} {median_ms(lax_op, x, w, g):.3f} ms", flush=True)
    for i, t in enumerate(tilings):
        err = _rel_err(jax.block_until_ready(fns[i](x, w, g)), want)
        print(f"{op} {x.dtype} {x.shape} {t} err {err:.1e} "
              f"{median_ms(fns[i], x, w, g):.3f} ms", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--op", default="fwd")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--shape", default="256,56,56,96,7", help="N,H,W,C,K")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--tiling", default="", help="Tiling fields, e.g. block_w=64,block_c=16")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--time", action="store_true", help="time each tiling instead")
    args = p.parse_args()
    n, h, w_, c, k = (int(v) for v in args.shape.split(","))
    x, w, g, spec = operands(n, h, w_, c, k, args.dtype, args.stride)
    if args.time:
        for op in args.op.split(","):
            time_tilings(op, [_tiling(t) for t in args.tiling.split(";")], x, w, g, spec)
        return
    fn = jax.jit(_ops(spec, _tiling(args.tiling))[args.op])
    jax.block_until_ready(fn(x, w, g))
    jax.block_until_ready(fn(x, w, g))
    start, stop = _profiler()
    start()
    for _ in range(args.runs):
        jax.block_until_ready(fn(x, w, g))
    stop()
    print("ran", args.op, args.dtype, args.shape, args.tiling or "default tiling")


if __name__ == "__main__":
    main()
