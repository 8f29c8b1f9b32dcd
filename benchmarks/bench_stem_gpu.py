"""Kernel by kernel: the models' stem convolutions (three input channels) in several forms.

Every reference model starts with a dense convolution of the RGB image: 3x3 stride 2 to 32
channels (MobileNetV2, EfficientNet-B0), 7x7 stride 2 to 64 (ResNet), 4x4 stride 4 to 96
(ConvNeXt-T); the CIFAR example's is 3x3 stride 1 to 32. With three input channels cuDNN has no
tensor-core path for it, and in a MobileNetV2 training step's profile the stem's forward pass
and weight gradient took about 0.5 ms of 11.5 (H100, bf16, batch 128). This script times, for
each stem, the same convolution written as:

* ``ohwi``: ``lax.conv_general_dilated`` with OHWI weights (convnn's ``xla`` strategy);
* ``hwio``: the same with HWIO weights (``nnx.Conv``);
* ``pad8``: input and weight zero-padded to 8 input channels, then ``ohwi``;
* ``im2col``: the patches gathered by ``kh * kw`` strided slices into one
  ``(N, H_out, W_out, kh * kw * C_in)`` array, then one matrix product with the
  ``(C_out, kh * kw * C_in)`` weight;
* ``im2col8``: the same with the patch depth zero-padded to a multiple of 8;
* ``im2col-f32``: ``im2col`` accumulating into a float32 output, then rounded;
* ``decomposed``: ``convnn.conv2d`` under ``convnn.lowering("decomposed")`` (im2col in chunks
  of at most 16 MiB of patches, float32 accumulation);
* ``convnn-im2col``: ``convnn.conv2d`` under ``convnn.lowering("im2col")``, what a CUDA rule for
  the stems would run (the patches by contiguous slices of the input reshaped into stride
  blocks, one product rounded by itself).

Each for the forward pass (``fwd``), forward + weight gradient (``f+dw``: the stem's input is the
data, which is not differentiated) and forward + both gradients (``f+b``), from ``jax.vjp`` with
a fixed cotangent. Every variant is checked against ``ohwi`` in float32 first. Times are medians
over ``--repeats`` groups of ``--iters`` asynchronous calls.

Usage (from the repository root)::

    python -m benchmarks.bench_stem_gpu --json /tmp/stem.json     # GPU: batch 128, bf16
    python -m benchmarks.bench_stem_gpu --smoke                   # CPU: tiny shapes
    python -m benchmarks.bench_stem_gpu --batch 128 --size 32 --dtype float32 \
        --variants ohwi,convnn-im2col                             # CPU: the stem rule's basis
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import convnn
from benchmarks import _results, _timing
from benchmarks._timing import median_ms

#: name: (kernel, stride, padding, C_out), all with three input channels.
STEMS = {
    "mobilenet_v2/efficientnet_b0": (3, 2, 1, 32),
    "resnet": (7, 2, 3, 64),
    "convnext_tiny": (4, 4, 0, 96),
    "train_cifar": (3, 1, 1, 32),  # examples/train_cifar.py's first layer (32x32 images)
}
VARIANTS = ("ohwi", "hwio", "pad8", "im2col", "im2col8", "im2col-f32", "decomposed",
            "convnn-im2col")


def conv_ohwi(x, w, stride, pad):
    return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "OHWI", "NHWC"))


def im2col(x, w, stride, pad, multiple=1, wide=False):
    """The convolution as one matrix product over gathered patches (order: row, column,
    channel, which is OHWI's flattened order)."""
    n, h, wd, c = x.shape
    o, kh, kw, _ = w.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cols = [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1,
                                         j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
            for i in range(kh) for j in range(kw)]
    k = kh * kw * c
    extra = -k % multiple
    if extra:
        cols.append(jnp.zeros((n, ho, wo, extra), x.dtype))
    patches = jnp.concatenate(cols, axis=-1)
    wm = jnp.pad(w.reshape(o, k), ((0, 0), (0, extra)))
    if wide:
        return lax.dot_general(patches, wm, (((3,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32).astype(x.dtype)
    return lax.dot_general(patches, wm, (((3,), (1,)), ((), ())))


def variant_fn(variant, stride, pad):
    if variant == "ohwi":
        return lambda x, w: conv_ohwi(x, w, stride, pad)
    if variant == "hwio":  # w is stored HWIO for this one
        return lambda x, w: lax.conv_general_dilated(
            x, w, (stride, stride), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if variant == "pad8":
        def pad8(x, w):
            extra = 8 - x.shape[-1] % 8
            return conv_ohwi(jnp.pad(x, ((0, 0),) * 3 + ((0, extra),)),
                             jnp.pad(w, ((0, 0),) * 3 + ((0, extra),)), stride, pad)
        return pad8
    if variant == "im2col":
        return lambda x, w: im2col(x, w, stride, pad)
    if variant == "im2col-f32":
        return lambda x, w: im2col(x, w, stride, pad, wide=True)
    if variant in ("decomposed", "convnn-im2col"):
        strategy = variant.removeprefix("convnn-")

        def forced(x, w):
            with convnn.lowering(strategy):
                return convnn.conv2d(x, w, stride, pad)
        return forced
    return lambda x, w: im2col(x, w, stride, pad, multiple=8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _timing.add_arguments(p, repeats=7)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument("--stems", default=",".join(STEMS), help="comma-separated subset")
    args = _timing.parse(p, argv)
    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0]
    print(f"{device.platform}: {device.device_kind}; {args.dtype}, batch {args.batch}, "
          f"{args.size}x{args.size}", flush=True)
    rows = []
    passes = ("fwd", "f+dw", "f+b")
    print(f"{'stem':30} {'variant':8} " + " ".join(f"{q:>8}" for q in passes) + "  max err")
    for name in args.stems.split(","):
        k, stride, pad, cout = STEMS[name]
        kx, kw_, kg = jax.random.split(jax.random.key(0), 3)
        x32 = jax.random.normal(kx, (args.batch, args.size, args.size, 3), jnp.float32)
        w32 = jax.random.normal(kw_, (cout, k, k, 3), jnp.float32) * 0.1
        ref = jax.jit(variant_fn("ohwi", stride, pad))(x32, w32)
        g = jax.random.normal(kg, ref.shape, dtype)
        for variant in args.variants.split(","):
            fn = variant_fn(variant, stride, pad)
            to_layout = (lambda w: jnp.transpose(w, (1, 2, 3, 0))) if variant == "hwio" else (
                lambda w: w)
            err = float(jnp.max(jnp.abs(jax.jit(fn)(x32, to_layout(w32)) - ref)))
            x, w = x32.astype(dtype), to_layout(w32).astype(dtype)

            def f_dw(x, w, g, fn=fn):
                y, vjp = jax.vjp(lambda w: fn(x, w), w)
                return y, vjp(g)

            def f_b(x, w, g, fn=fn):
                y, vjp = jax.vjp(fn, x, w)
                return y, vjp(g)

            ms = {"fwd": median_ms(jax.jit(fn), x, w, iters=args.iters, repeats=args.repeats),
                  "f+dw": median_ms(jax.jit(f_dw), x, w, g, iters=args.iters,
                                    repeats=args.repeats),
                  "f+b": median_ms(jax.jit(f_b), x, w, g, iters=args.iters,
                                   repeats=args.repeats)}
            rows.append({"stem": name, "kernel": k, "stride": stride, "padding": pad,
                         "cout": cout, "variant": variant, "ms": ms, "max_err_f32": err})
            print(f"{name:30} {variant:8} " + " ".join(f"{ms[q]:8.4f}" for q in passes)
                  + f"  {err:.1e}", flush=True)
            if not np.isfinite(err) or err > 1e-3:
                print(f"  {variant} DISAGREES with ohwi on {name}")
    path = Path(args.json) if args.json else _results.default_path("stem")
    _results.write(path, args, rows)


if __name__ == "__main__":
    main()
