"""What each Pallas kernel of a model costs to compile, and to run, per tiling variant.

For every distinct depthwise convolution of a model that the CUDA policy gives the ``"pallas"``
strategy, this builds one program, the forward pass and its VJP (the passes the strategy runs:
``_cuda.forward_kernel`` and ``_cuda.weight_kernel``), and reports per variant the seconds spent
tracing and lowering it, the size of the lowered program, XLA's compile time and the median run
time. Variants:

* ``unrolled``: the default tilings with ``Tiling.unrolled_edges=True`` (the rows before a
  tile's first output row and after its last cotangent row as unrolled code);
* ``folded``: the default tilings (``unrolled_edges=False``: those rows as masked loop
  iterations), exactly the kernels the model runs;
* ``xla``: XLA's convolution (the ``"xla"`` strategy; cuDNN on an NVIDIA GPU), for scale.

Each row also counts how often the model runs the convolution, so that the run times sum to
the model's depthwise time per step (forward and backward).

``--twice`` also compiles a program that runs the first forward kernel twice on different
inputs, against one that runs it once: whether XLA compiles an identical kernel once.

Usage (from the repository root, on an NVIDIA GPU)::

    python -m benchmarks.profile_compile --models convnext_tiny,mobilenet_v2 --json x.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time
from pathlib import Path

import jax
from flax import nnx

import convnn
from benchmarks.bench_models import DTYPES, build
from convnn import _lowering
from convnn._lowering import ConvConfig, _cuda, _pallas
from convnn._lowering._xla import conv_xla

VARIANTS = ("unrolled", "folded", "xla")


def depthwise_configs(name: str, batch: int, size: int, dtype: str) -> dict[ConvConfig, int]:
    """The distinct convolutions of ``name`` that ``"auto"`` computes with the Pallas kernels,
    each with the number of layers that run it."""
    model, _ = nnx.eval_shape(functools.partial(build, name, "convnn", dtype, 1000))
    x = jax.ShapeDtypeStruct((batch, size, size, 3), DTYPES[dtype])
    with convnn.lowering("auto"), _lowering.recording() as calls:
        jax.eval_shape(lambda m, x: m(x), model, x)
    configs = {}
    for call in calls:
        cfg = ConvConfig(call.x_shape, call.w_shape, call.dtype, call.spec)
        if _lowering.choose(cfg).startswith("pallas"):
            configs[cfg] = configs.get(cfg, 0) + 1
    return configs


def unrolled_tilings(cfg: ConvConfig, forward: str) -> dict:
    """The default tilings with ``unrolled_edges=True``, derived as ``correlate`` and
    ``tap_sums`` derive theirs. ``depthwise`` takes one correlation tiling for the forward pass
    and the input gradient: it is derived from the input gradient's geometry where XLA computes
    the forward pass, else from the forward pass's (the same geometry at stride 1 with "same"
    padding)."""
    n, c = cfg.x_shape[0], cfg.x_shape[-1]
    args = [(cfg.x_shape[1 + i], cfg.kernel[i], cfg.spec.stride[i], *cfg.spec.padding[i])
            for i in range(2)]
    fh, fw = (_pallas.forward_geometry(*a) for a in args)
    gh, gw = ((_pallas.input_grad_geometry(*a)[0] for a in args) if forward == "xla"
              else (fh, fw))
    tc = _pallas.default_tiling("correlate", n, (gh.max_count, gw.max_count), c, cfg.dtype,
                                (gh.taps, gw.taps), gh.phases * gw.phases, gw.a)
    tw = _pallas.default_tiling("weight_grad", n, (fh.count[0], fw.count[0]), c, cfg.dtype,
                                (fh.taps, fw.taps), 1, fw.a)
    return {"tiling": dataclasses.replace(tc, unrolled_edges=True),
            "weight_grad_tiling": dataclasses.replace(tw, unrolled_edges=True)}


def program(cfg: ConvConfig, variant: str):
    """The forward pass and its VJP of ``cfg``, as ``variant`` computes it."""
    if variant == "xla":
        f = functools.partial(conv_xla, spec=cfg.spec)
    else:
        forward = _cuda.forward_kernel(cfg)
        tilings = unrolled_tilings(cfg, forward) if variant == "unrolled" else {}
        f = functools.partial(_pallas.depthwise, spec=cfg.spec, forward_pass=forward,
                              weight_gradient=_cuda.weight_kernel(cfg), **tilings)

    def step(x, w, g):
        out, vjp = jax.vjp(f, x, w)
        return out, *vjp(g)

    return jax.jit(step)


def operands(cfg: ConvConfig):
    key = jax.random.key(0)
    x = jax.random.normal(key, cfg.x_shape, cfg.dtype)
    w = jax.random.normal(key, cfg.w_shape, cfg.dtype)
    out = jax.eval_shape(lambda x, w: _pallas.forward(x, w, cfg.spec), x, w)
    return x, w, jax.random.normal(key, out.shape, cfg.dtype)


def measure(fn, args, repeats: int) -> dict:
    t0 = time.perf_counter()
    lowered = fn.trace(*args).lower()
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(10):
            out = compiled(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / 10)
    return {"trace_lower_s": t1 - t0, "compile_s": t2 - t1,
            "stablehlo_kb": len(lowered.as_text()) / 1024,
            "run_ms": 1e3 * statistics.median(times)}


def twice(cfg: ConvConfig) -> dict:
    """Compile times of a program with one forward kernel and with the same kernel twice."""
    f = functools.partial(_pallas.forward, spec=cfg.spec)
    x, w, _ = operands(cfg)
    out = {}
    for label, fn in (("once", lambda x, w: f(x, w)),
                      ("twice", lambda x, w: f(x, w) + f(x * 2, w))):
        jax.clear_caches()
        t0 = time.perf_counter()
        lowered = jax.jit(fn).trace(x, w).lower()
        t1 = time.perf_counter()
        lowered.compile()
        out[label] = {"trace_lower_s": t1 - t0, "compile_s": time.perf_counter() - t1}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="convnext_tiny,mobilenet_v2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--twice", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = jax.devices()[0]
    print(f"{device.platform}: {device.device_kind}; batch {args.batch}, "
          f"{args.size}x{args.size}, {args.dtype}", flush=True)
    result = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
              "argv": {**vars(args), "json": args.json and Path(args.json).name}, "rows": []}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))

    for name in args.models.split(","):
        configs = depthwise_configs(name, args.batch, args.size, args.dtype)
        print(f"{name}: {len(configs)} distinct Pallas convolutions", flush=True)
        if args.twice and configs:
            first = next(iter(configs))
            result.setdefault("twice", {})[name] = {"config": str(first.x_shape), **twice(first)}
            print("twice:", result["twice"][name], flush=True)
        for cfg, layers in configs.items():
            args_ = operands(cfg)
            for variant in args.variants.split(","):
                jax.clear_caches()
                row = {"model": name, "x_shape": cfg.x_shape, "kernel": cfg.kernel,
                       "stride": cfg.spec.stride, "layers": layers, "variant": variant,
                       **measure(program(cfg, variant), args_, args.repeats)}
                result["rows"].append(row)
                save()
                print(f"{name:14} {str(cfg.x_shape):20} {cfg.kernel} s{cfg.spec.stride[0]} "
                      f"x{layers:<2} {variant:9} trace+lower {row['trace_lower_s']:5.2f} s  "
                      f"compile {row['compile_s']:6.2f} s  run {row['run_ms']:7.3f} ms",
                      flush=True)
    save()


if __name__ == "__main__":
    main()
