"""Kernel by kernel: ``lax.conv_general_dilated`` with OHWI against HWIO weights.

convnn's ``xla`` strategy hands XLA the weight in MLX's layout, ``(C_out, kh, kw, C_in/g)``
(dimension numbers ``("NHWC", "OHWI", "NHWC")``); ``nnx.Conv`` hands it Flax's
``(kh, kw, C_in/g, C_out)`` (``"HWIO"``). XLA may choose a different cuDNN path for each. This
script times, for every distinct convolution of the five reference models (found by tracing
each model's forward pass with ``nnx.Conv`` and reading the convolutions off the jaxpr), three
variants:

* ``ohwi``: the weight stored OHWI, OHWI dimension numbers (convnn's ``xla`` strategy today);
* ``hwio``: the weight stored HWIO, HWIO dimension numbers (``nnx.Conv``);
* ``ohwi->hwio``: the weight stored OHWI and transposed to HWIO inside the jitted function (what
  the ``xla`` strategy would do if HWIO wins: the transpose is part of the timed program);

each for the forward pass and for forward + backward (``y``, ``dx``, ``dw`` from ``jax.vjp``
with a fixed cotangent). Per model, the sum over its layers (times the number of layers of each
shape) gives the convolution time of one step in each layout. Times are medians over
``--repeats`` groups of ``--iters`` asynchronous calls.

Usage (from the repository root)::

    python -m benchmarks.bench_layouts_gpu --json /tmp/layouts.json        # H100: batch 128, bf16
    python -m benchmarks.bench_layouts_gpu --smoke                         # CPU: tiny shapes

The JSON is rewritten after every layer; ``--budget`` (seconds) skips the remaining layers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx
from jax import lax

from benchmarks import _results, _timing
from benchmarks._timing import median_ms
from convnn.models import MODELS

START = time.perf_counter()
VARIANTS = ("ohwi", "hwio", "ohwi->hwio")


def model_convs(name: str, batch: int, size: int, dtype) -> list[dict]:
    """The convolutions of one model's forward pass, read off the jaxpr of its nnx.Conv form."""
    model = nnx.eval_shape(
        lambda: MODELS[name](1000, rngs=nnx.Rngs(0), conv="nnx", dtype=dtype)
    )
    model.eval()
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), dtype)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    found = []

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (v.aval for v in eqn.invars[:2])
                p = eqn.params
                dn = p["dimension_numbers"]
                # nnx.Conv: lhs NHWC, rhs HWIO.
                assert dn.lhs_spec == (0, 3, 1, 2) and dn.rhs_spec == (3, 2, 0, 1), dn
                kh, kw, cin_g, cout = rhs.shape
                found.append({
                    "x": tuple(lhs.shape), "kernel": (kh, kw), "cin_g": cin_g, "cout": cout,
                    "stride": tuple(p["window_strides"]),
                    "padding": tuple(map(tuple, p["padding"])),
                    "groups": p["feature_group_count"],
                })
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(jaxpr.jaxpr)
    return found


def kind(c: dict) -> str:
    if c["groups"] == 1:
        return "dense"
    return "depthwise" if c["cin_g"] == 1 else "grouped"


def build(c: dict, variant: str, dtype):
    """(fwd, fwd_bwd, args) for one convolution in one weight layout."""
    kh, kw = c["kernel"]
    ohwi = variant != "hwio"
    wshape = (c["cout"], kh, kw, c["cin_g"]) if ohwi else (kh, kw, c["cin_g"], c["cout"])

    def conv(x, w):
        spec = "OHWI"
        if variant == "ohwi->hwio":
            w, spec = jnp.transpose(w, (1, 2, 3, 0)), "HWIO"
        elif variant == "hwio":
            spec = "HWIO"
        return lax.conv_general_dilated(
            x, w, c["stride"], c["padding"], dimension_numbers=("NHWC", spec, "NHWC"),
            feature_group_count=c["groups"],
        )

    def fwd_bwd(x, w, g):
        y, vjp = jax.vjp(conv, x, w)
        return (y, *vjp(g))

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, c["x"], dtype)
    w = jax.random.normal(k2, wshape, dtype) * 0.05
    y = jax.eval_shape(conv, x, w)
    g = jax.random.normal(k3, y.shape, dtype)
    return jax.jit(conv), jax.jit(fwd_bwd), (x, w), (x, w, g)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _timing.add_arguments(p, repeats=5)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--kinds", default="depthwise,dense", help="depthwise, dense, grouped")
    p.add_argument("--budget", type=float, default=None)
    args = _timing.parse(p, argv)
    dtype = jnp.dtype(args.dtype)
    kinds = set(args.kinds.split(","))
    device = jax.devices()[0]
    path = Path(args.json) if args.json else _results.default_path("layouts")

    # Distinct convolutions, with how often each model uses them.
    layers: dict[tuple, dict] = {}
    for name in args.models.split(","):
        for c in model_convs(name, args.batch, args.size, dtype):
            if kind(c) not in kinds:
                continue
            key = json.dumps(c, sort_keys=True)
            entry = layers.setdefault(key, {**c, "kind": kind(c), "uses": defaultdict(int)})
            entry["uses"][name] += 1
    print(f"{device.platform}: {device.device_kind}; {len(layers)} distinct convolutions "
          f"({args.dtype}, batch {args.batch}, {args.size}x{args.size})", flush=True)
    results = []

    def save():
        _results.save(path, {"meta": _results.machine(args, path), "layers": results,
                             "models": totals()})

    def totals():
        out = defaultdict(lambda: defaultdict(float))
        for r in results:
            for name, n in r["uses"].items():
                for k, v in r["ms"].items():
                    out[name][k] += n * v
        return {m: dict(v) for m, v in out.items()}

    header = (f"{'kind':9} {'input':>20} {'k':>3} {'s':>2} {'cin/g':>5} {'cout':>5} "
              + " ".join(f"{v + ' ' + p:>16}" for p in ("fwd", "f+b") for v in VARIANTS)
              + "  ohwi/hwio f+b")
    print(header)
    for entry in sorted(layers.values(), key=lambda e: (e["kind"] != "depthwise", e["x"])):
        if args.budget is not None and time.perf_counter() - START > args.budget:
            print("budget spent: skipping the remaining layers")
            break
        ms = {}
        for variant in VARIANTS:
            fwd, fwd_bwd, fargs, bargs = build(entry, variant, dtype)
            ms[f"{variant} fwd"] = median_ms(fwd, *fargs, iters=args.iters, repeats=args.repeats)
            ms[f"{variant} f+b"] = median_ms(fwd_bwd, *bargs, iters=args.iters,
                                               repeats=args.repeats)
        results.append({**entry, "uses": dict(entry["uses"]), "ms": ms})
        save()
        ratio = ms["ohwi f+b"] / ms["hwio f+b"]
        print(f"{entry['kind']:9} {'x'.join(map(str, entry['x'])):>20} {entry['kernel'][0]:3d} "
              f"{entry['stride'][0]:2d} {entry['cin_g']:5d} {entry['cout']:5d} "
              + " ".join(f"{ms[f'{v} {p}']:16.4f}" for p in ("fwd", "f+b") for v in VARIANTS)
              + f"  {ratio:13.3f}", flush=True)
    print("\nper model, sum over its layers of these kinds (ms per step, layers x uses):")
    for name, t in totals().items():
        print(f"{name:16} " + "  ".join(f"{k} {v:8.3f}" for k, v in t.items()))
    print("ms per call; 'ohwi/hwio f+b' > 1 means HWIO is faster. Wrote", path)


if __name__ == "__main__":
    main()
