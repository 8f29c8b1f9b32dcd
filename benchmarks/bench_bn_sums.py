"""BatchNorm's per-channel sums: XLA's reduction fusions against a hand-written Pallas kernel.

A training-mode BatchNorm reduces its ``(N*H*W, C)`` input to two sums per channel in the
forward pass (``sum(x - c)`` and ``sum((x - c)^2)``, ``c`` a per-channel shift) and to two in
the backward pass (``sum(g')`` and ``sum(g' * (x - mean))``, where ``g'`` is the cotangent
through the activation, recomputed from ``x``). On the H100 XLA's fusions of these reductions
read at about 2.3 TB/s where its elementwise passes reach 3 TB/s (docs/benchmarks.md,
"BatchNorm in the models"). This script asks whether a kernel written by hand does better.

The kernel (Pallas, Triton lowering; an experiment, not used by the library): each program
walks a block of rows with a ``(block_rows, block_c)`` float32 accumulator tile and writes one
partial sum per channel; XLA adds the partial sums (two stages, no atomics, like the depthwise
weight-gradient kernel). Every block size in a small grid is timed for the largest layers.

Usage (from the repository root)::

    python -m benchmarks.bench_bn_sums                 # GPU: MobileNetV2's layers, batch 128
    python -m benchmarks.bench_bn_sums --smoke         # CPU: interpret mode, checked only

Results: ``benchmarks/results/bn_sums_<device>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from benchmarks import _results
from benchmarks._timing import median_ms

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Rows and channels per tile (powers of two), programs per channel block, warps."""

    block_rows: int
    block_c: int
    programs: int = 1024
    num_warps: int = 4


def default_blocks(c: int) -> Blocks:
    """Up to 128 channels a tile and 4096 values (8 KB of bf16) a load."""
    block_c = min(1 << max(c - 1, 1).bit_length(), 128)
    return Blocks(max(4096 // block_c, 8), block_c)


def act_grad(y, g, activation):
    """``g`` through the activation's derivative at ``y`` (ReLU6 or none)."""
    if activation == "relu6":
        return jnp.where((y > 0) & (y < 6), g, 0.0)
    return g


def _sums_kernel(*refs, m, c, blocks, per, n_cb, activation, grad):
    x_ref, *rest = refs
    if grad:
        g_ref, a_ref, b_ref, ctr_ref, out_ref = rest
    else:
        ctr_ref, out_ref = rest
    pid = pl.program_id(0)
    part = pid // n_cb
    ch = (pid % n_cb) * blocks.block_c + jnp.arange(blocks.block_c, dtype=jnp.int32)
    c_ok = ch < c

    def vec(ref):
        return plgpu.load(ref.at[ch], mask=c_ok, other=0.0)[None, :]

    ctr = vec(ctr_ref)
    if grad:
        a, b = vec(a_ref), vec(b_ref)
    r0 = part * per * blocks.block_rows

    def body(i, acc):
        rows = r0 + i * blocks.block_rows + jnp.arange(blocks.block_rows, dtype=jnp.int32)
        ok = (rows < m)[:, None] & c_ok[None, :]
        at = (rows[:, None], ch[None, :])
        x = plgpu.load(x_ref.at[at], mask=ok, other=0).astype(F32)
        d = jnp.where(ok, x - ctr, 0.0)
        if grad:
            g = plgpu.load(g_ref.at[at], mask=ok, other=0).astype(F32)
            gy = act_grad(x * a + b, g, activation)
            return acc[0] + gy, acc[1] + gy * d
        return acc[0] + d, acc[1] + d * d

    zeros = jnp.zeros((blocks.block_rows, blocks.block_c), F32)
    s1, s2 = lax.fori_loop(0, per, body, (zeros, zeros))
    plgpu.store(out_ref.at[part, 0, ch], jnp.sum(s1, axis=0), mask=c_ok)
    plgpu.store(out_ref.at[part, 1, ch], jnp.sum(s2, axis=0), mask=c_ok)


@functools.partial(jax.jit, static_argnames=("activation", "blocks", "interpret"))
def pallas_sums(x, ctr, g=None, a=None, b=None, *, activation=None, blocks=None,
                interpret=False):
    """``(sum d, sum d^2)``, ``d = x - ctr``; with ``g``: ``(sum g', sum g' * d)``, ``g'`` the
    cotangent through the activation at ``x * a + b``. ``x``, ``g``: ``(M, C)``; ``ctr``, ``a``,
    ``b``: ``(C,)`` float32. Two ``(C,)`` float32 arrays."""
    m, c = x.shape
    blocks = blocks or default_blocks(c)
    n_cb = -(-c // blocks.block_c)
    tiles = -(-m // blocks.block_rows)
    per = -(-tiles // max(1, min(tiles, blocks.programs // n_cb)))
    parts = -(-tiles // per)
    grad = g is not None
    kernel = functools.partial(_sums_kernel, m=m, c=c, blocks=blocks, per=per, n_cb=n_cb,
                               activation=activation, grad=grad)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((parts, 2, c), F32),
        grid=(parts * n_cb,),
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=1),
    )(*((x, g, a, b, ctr) if grad else (x, ctr)))
    s = jnp.sum(out, axis=0)
    return s[0], s[1]


@jax.jit
def xla_forward(x, ctr):
    d = x.astype(F32) - ctr
    return jnp.sum(d, 0), jnp.sum(d * d, 0)


@jax.jit
def xla_backward(x, g, a, b, ctr):
    xs = x.astype(F32)
    gy = act_grad(xs * a + b, g.astype(F32), "relu6")
    return jnp.sum(gy, 0), jnp.sum(gy * (xs - ctr), 0)


def reference(x, ctr, g=None, a=None, b=None):
    """The sums in float64 NumPy, from the definition."""
    x, ctr = np.asarray(x, np.float64), np.asarray(ctr, np.float64)
    d = x - ctr
    if g is None:
        return d.sum(0), (d * d).sum(0)
    y = x * np.asarray(a, np.float64) + np.asarray(b, np.float64)
    gy = np.where((y > 0) & (y < 6), np.asarray(g, np.float64), 0.0)
    return gy.sum(0), (gy * d).sum(0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--smoke", action="store_true", help="CPU: batch 1, 8x8, interpret mode")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    interpret = args.smoke or jax.default_backend() != "gpu"
    n, scale = (1, 14) if args.smoke else (args.batch, 1)
    # MobileNetV2's largest BatchNorm inputs at 224x224, and a few smaller ones.
    layers = [(112, 96), (112, 32), (56, 144), (28, 192), (14, 384), (7, 960), (56, 24)]
    path = args.json or _results.default_path("bn_sums")
    rows = []
    for size, c in layers:
        m = n * max(size // scale, 2) ** 2
        k = jax.random.split(jax.random.key(0), 2)
        x = jax.random.normal(k[0], (m, c), jnp.bfloat16) * 2 + 1
        g = jax.random.normal(k[1], (m, c), jnp.bfloat16)
        a, b = jnp.full((c,), 2.0, F32), jnp.ones((c,), F32)
        ctr = x[0].astype(F32)
        for got, want in ((pallas_sums(x, ctr, interpret=interpret), reference(x, ctr)),
                          (pallas_sums(x, ctr, g, a, b, activation="relu6",
                                       interpret=interpret), reference(x, ctr, g, a, b))):
            err = max(float(np.max(np.abs(np.asarray(u) - v)) / max(np.max(np.abs(v)), 1e-30))
                      for u, v in zip(got, want))
            if err > 1e-5:
                raise SystemExit(f"({m}, {c}): the kernel's sums are wrong (relative {err:.2e})")
        if args.smoke:
            rows.append({"m": m, "c": c, "checked": True})
            print(f"({m}, {c}) sums match the float64 reference", flush=True)
            continue
        row = {"m": m, "c": c, "xla_forward": median_ms(xla_forward, x, ctr),
               "xla_backward": median_ms(xla_backward, x, g, a, b, ctr)}
        base = default_blocks(c)
        grid = [base]
        if m * c > 10_000_000:  # the large layers: a grid of block sizes
            grid += [Blocks(r, base.block_c, pr, w) for r in (base.block_rows, 2 * base.block_rows)
                     for pr in (528, 1024, 2048) for w in (4, 8)
                     if (r, pr, w) != (base.block_rows, base.programs, base.num_warps)]
        best = {}
        for bl in grid:
            fwd = median_ms(functools.partial(pallas_sums, blocks=bl), x, ctr)
            bwd = median_ms(functools.partial(pallas_sums, activation="relu6", blocks=bl),
                            x, ctr, g, a, b)
            for key, ms in (("pallas_forward", fwd), ("pallas_backward", bwd)):
                if key not in best or ms < best[key][0]:
                    best[key] = (ms, dataclasses.asdict(bl))
        row.update({k: v[0] for k, v in best.items()})
        row["blocks"] = {k: v[1] for k, v in best.items()}
        rows.append(row)
        gb = m * c * 2 / 1e6  # MB of one bf16 operand, so that MB / ms = GB/s
        print(f"({m}, {c}) forward: XLA {row['xla_forward']:.4f} ms, Pallas "
              f"{row['pallas_forward']:.4f} ({gb / row['pallas_forward']:.0f} GB/s); backward: "
              f"XLA {row['xla_backward']:.4f}, Pallas {row['pallas_backward']:.4f} "
              f"({2 * gb / row['pallas_backward']:.0f} GB/s)", flush=True)
    if not args.smoke:
        _results.save(path, {"meta": _results.machine(args, path), "rows": rows})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
