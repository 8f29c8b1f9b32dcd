"""Training-mode BatchNorm + activation, forward and backward: Flax's against convnn's.

For every BatchNorm of MobileNetV2 or EfficientNet-B0 (``--model``; torchvision's, 224x224
input) this script times one forward and backward pass (``y`` and the gradients of input,
weight and bias from ``jax.vjp`` with a fixed cotangent) of:

* ``nnx``: ``nnx.BatchNorm`` followed by the activation (what the all-Flax model runs);
* ``convnn``: ``convnn.layers.BatchNorm(activation=...)``, the activation fused (what
  ``convnn.models`` runs);
* ``convnn_unfused``: ``convnn.layers.BatchNorm`` followed by the activation;
* ``convnn_relu``: as ``convnn`` with ReLU in place of every other activation, which tells
  the activation's arithmetic from the memory traffic (SiLU's sigmoid, for example);
* ``copy``: ``y = 2 * x + 1`` and ``dx = 2 * g``, which read and write what any BatchNorm must
  at least, as a memory-bandwidth floor.

Each distinct shape is timed once and weighted by how often the model has it; the total is the
BatchNorm time of one training step. Times are medians over ``--repeats`` groups of ``--iters``
asynchronous calls.

Usage (from the repository root)::

    python -m benchmarks.bench_batchnorm --json /tmp/bn.json     # GPU: batch 128, bfloat16
    python -m benchmarks.bench_batchnorm --smoke                 # CPU: batch 2, 56x56
    python -m benchmarks.bench_batchnorm --model efficientnet_b0 --variants convnn,copy
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import convnn.layers as L
from benchmarks import _results
from benchmarks._timing import median_ms
from convnn._lowering._prologue import ACTIVATIONS
from convnn.models._common import make_divisible
from convnn.models.efficientnet import B0_SETTING
from convnn.models.mobilenet import MobileNetV2

VARIANTS = ("nnx", "convnn", "convnn_unfused", "convnn_relu", "copy")


def mobilenet_v2_batchnorms(batch: int, size: int) -> Counter:
    """``(shape, activation) -> count`` for MobileNetV2's BatchNorm inputs (NHWC)."""
    found: Counter = Counter()
    h = (size + 1) // 2
    found[((batch, h, h, 32), "relu6")] += 1
    cin = 32
    for t, c, n, s in MobileNetV2.SETTING:
        cout = make_divisible(c)
        for i in range(n):
            hidden = cin * t
            if t != 1:
                found[((batch, h, h, hidden), "relu6")] += 1
            h = (h + 1) // 2 if (s if i == 0 else 1) == 2 else h
            found[((batch, h, h, hidden), "relu6")] += 1
            found[((batch, h, h, cout), None)] += 1
            cin = cout
    found[((batch, h, h, 1280), "relu6")] += 1
    return found


def efficientnet_b0_batchnorms(batch: int, size: int) -> Counter:
    """``(shape, activation) -> count`` for EfficientNet-B0's BatchNorm inputs (NHWC)."""
    found: Counter = Counter()
    h = (size + 1) // 2
    found[((batch, h, h, B0_SETTING[0][3]), "silu")] += 1
    for expand, _, stride, cin, cout, n in B0_SETTING:
        for i in range(n):
            cin = cin if i == 0 else cout
            hidden = make_divisible(cin * expand)
            if hidden != cin:
                found[((batch, h, h, hidden), "silu")] += 1
            h = (h + 1) // 2 if (stride if i == 0 else 1) == 2 else h
            found[((batch, h, h, hidden), "silu")] += 1
            found[((batch, h, h, cout), None)] += 1
    found[((batch, h, h, 4 * B0_SETTING[-1][4]), "silu")] += 1
    return found


MODELS = {"mobilenet_v2": mobilenet_v2_batchnorms, "efficientnet_b0": efficientnet_b0_batchnorms}


def step_fn(variant: str, channels: int, activation, dtype):
    """A jitted ``(x, g) -> (y, dx, dweight, dbias)`` for one variant."""
    act = ACTIVATIONS[activation] if activation else (lambda y: y)
    if variant == "copy":
        return jax.jit(lambda x, g: (x * 2 + 1, g * 2))
    if variant == "nnx":
        layer = nnx.BatchNorm(channels, dtype=dtype, rngs=nnx.Rngs(0))
    else:
        fused = {"convnn": activation, "convnn_relu": activation and "relu"}.get(variant)
        layer = L.BatchNorm(channels, activation=fused, dtype=dtype)
    apply = act if variant in ("nnx", "convnn_unfused") else (lambda y: y)
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def run(x, g, params, rest):
        def f(x, params, rest):  # rest (running statistics) is traced here: it is updated
            return apply(nnx.merge(graphdef, params, rest)(x))

        y, vjp = jax.vjp(f, x, params, rest)
        return y, *vjp(g)[:2]

    run = jax.jit(run)
    return lambda x, g: run(x, g, params, rest)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilenet_v2", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--smoke", action="store_true", help="CPU check: batch 2, 56x56, 2x2 calls")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    variants = tuple(args.variants.split(","))
    if not set(variants) <= set(VARIANTS):
        p.error(f"--variants must be a subset of {','.join(VARIANTS)}, got {args.variants}")
    if args.smoke:
        args.batch, args.size, args.iters, args.repeats = 2, 56, 2, 2
    path = args.json or _results.default_path("batchnorm")
    dtype = jnp.dtype(args.dtype)
    rows, totals = [], dict.fromkeys(variants, 0.0)
    layers = sorted(MODELS[args.model](args.batch, args.size).items(), key=str)
    for (shape, activation), count in layers:
        kx, kg = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, shape, dtype) * 2 + 1
        g = jax.random.normal(kg, shape, dtype)
        ms = {v: median_ms(step_fn(v, shape[-1], activation, dtype), x, g, iters=args.iters,
                           repeats=args.repeats) for v in variants}
        for v in variants:
            totals[v] += count * ms[v]
        rows.append({"shape": shape, "activation": activation, "count": count, "ms": ms})
        print(f"{str(shape):24} {str(activation):6} x{count:<2} "
              + "  ".join(f"{v} {ms[v]:.4f}" for v in variants), flush=True)
    ratio = (f"  (nnx / convnn {totals['nnx'] / totals['convnn']:.2f}x)"
             if {"nnx", "convnn"} <= set(variants) else "")
    print("total ms per step: " + "  ".join(f"{v} {totals[v]:.3f}" for v in variants) + ratio)
    _results.save(path, {"meta": _results.machine(args, path), "rows": rows, "total_ms": totals})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
