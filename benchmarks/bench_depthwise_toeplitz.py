"""Experiment: the bf16 depthwise 2-D forward pass on tensor cores (not used by convnn).

Per channel and kernel row ``kh``, 16 output columns of ``rm`` output rows are the product of
the ``rm`` input rows ``r + kh`` (32 columns: the ``16 + KW - 1`` needed, padded to a power of
two) with a banded Toeplitz matrix ``T[i, o] = w[kh, i - o]`` (zero off the band), built by XLA
outside the kernel. A program owns ``bc`` channels and does one batched (3-D) matrix product
per kernel row, accumulating in float32.

Pallas' Triton lowering has no batched ``dot_general``, so this script registers a primitive
whose Triton lowering emits a 3-D ``tt.dot`` (JAX internals: acceptable for an experiment, not
for the library); in interpret mode the primitive is an ordinary batched ``dot_general``.

Sections: a correctness check against XLA's float32 convolution on three small shapes, then
(on a GPU) a table of tilings on the issue's bf16 shapes, with plain ``lax`` timed one call at
a time. Results and conclusions: docs/benchmarks.md ("What limits the kernels").

Usage::

    python benchmarks/bench_depthwise_toeplitz.py --json depthwise_toeplitz.json
    python benchmarks/bench_depthwise_toeplitz.py --dry-run   # CPU, Pallas interpret mode
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.extend import core as jex_core
from jax.interpreters import mlir

bdot_p = jex_core.Primitive("convnn_batched_dot")


def _bdot_impl(a, b, acc):
    return acc + lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,))),
                                 preferred_element_type=jnp.float32)


bdot_p.def_impl(_bdot_impl)
bdot_p.def_abstract_eval(lambda a, b, acc: jax.core.ShapedArray(acc.shape, acc.dtype))
mlir.register_lowering(bdot_p, mlir.lower_fun(_bdot_impl, multiple_results=False))


def _register_triton():
    from jax._src.lib.triton import dialect as tt_dialect
    from jax._src.pallas.triton import lowering as tlow

    def rule(ctx, a, b, acc):
        return tt_dialect.dot(a, b, acc)

    tlow.triton_lowering_rules[bdot_p] = rule


_register_triton()


def bdot(a, b, acc):
    return bdot_p.bind(a, b, acc)


def toeplitz(w, k: int, n: int):
    """(C, KH, KW, 1) -> (KH, C, k, n): T[kh, c, i, o] = w[c, kh, i - o] for 0 <= i-o < KW."""
    c, kh, kw, _ = w.shape
    i = np.arange(k)[:, None]
    o = np.arange(n)[None, :]
    d = i - o
    ok = (d >= 0) & (d < kw)
    idx = np.clip(d, 0, kw - 1)
    w3 = jnp.transpose(w[..., 0], (1, 0, 2))  # (KH, C, KW)
    t = w3[:, :, idx]  # (KH, C, k, n)
    return jnp.where(ok, t, jnp.zeros((), w.dtype))


def _kernel(x_ref, t_ref, o_ref, *, kh_taps, pad_h, pad_w, rm, bc, bn, kk, grid_sizes,
            h, w, c, ho, wo, natural):
    """``natural``: load ``(rows, cols, channels)`` tiles and transpose them in registers (else
    load them as ``(channels, rows, cols)`` directly)."""
    pid = pl.program_id(0)
    idx = []
    for s in grid_sizes:
        idx.append(pid % s)
        pid = pid // s
    cb, wt, rt, n = idx
    ch = cb * bc + jnp.arange(bc, dtype=jnp.int32)
    rows = rt * rm + jnp.arange(rm, dtype=jnp.int32)
    ocol = wt * bn + jnp.arange(bn, dtype=jnp.int32)
    icol = wt * bn - pad_w + jnp.arange(kk, dtype=jnp.int32)
    c_ok = ch < c if c % bc else None
    acc = jnp.zeros((bc, rm, bn), jnp.float32)
    ii = jnp.arange(kk, dtype=jnp.int32)
    oo = jnp.arange(bn, dtype=jnp.int32)
    for t in range(kh_taps):
        irow = rows + t - pad_h
        if natural:
            m = (((irow >= 0) & (irow < h))[:, None, None]
                 & ((icol >= 0) & (icol < w))[None, :, None])
            if c_ok is not None:
                m = m & c_ok[None, None, :]
            m = jnp.broadcast_to(m, (rm, kk, bc))
            a = plgpu.load(x_ref.at[n, irow[:, None, None], icol[None, :, None], ch[None, None, :]],
                           mask=m, other=jnp.zeros((), x_ref.dtype))
            a = jnp.transpose(a, (2, 0, 1))
        else:
            m = (((irow >= 0) & (irow < h))[None, :, None]
                 & ((icol >= 0) & (icol < w))[None, None, :])
            if c_ok is not None:
                m = m & c_ok[:, None, None]
            m = jnp.broadcast_to(m, (bc, rm, kk))
            a = plgpu.load(x_ref.at[n, irow[None, :, None], icol[None, None, :], ch[:, None, None]],
                           mask=m, other=jnp.zeros((), x_ref.dtype))
        chb = ch if c_ok is None else jnp.minimum(ch, c - 1)
        b = plgpu.load(t_ref.at[t, chb[:, None, None], ii[None, :, None], oo[None, None, :]])
        acc = bdot(a, b, acc)
    if natural:
        m = (rows < ho)[:, None, None] & (ocol < wo)[None, :, None]
        if c_ok is not None:
            m = m & c_ok[None, None, :]
        m = jnp.broadcast_to(m, (rm, bn, bc))
        plgpu.store(o_ref.at[n, rows[:, None, None], ocol[None, :, None], ch[None, None, :]],
                    jnp.transpose(acc, (1, 2, 0)).astype(o_ref.dtype), mask=m)
    else:
        m = (rows < ho)[None, :, None] & (ocol < wo)[None, None, :]
        if c_ok is not None:
            m = m & c_ok[:, None, None]
        m = jnp.broadcast_to(m, (bc, rm, bn))
        plgpu.store(o_ref.at[n, rows[None, :, None], ocol[None, None, :], ch[:, None, None]],
                    acc.astype(o_ref.dtype), mask=m)


def forward_tc(x, w, padding, *, rm=16, bc=16, bn=16, num_warps=4, natural=False, interpret=False):
    n, h, wd, c = x.shape
    _, kh, kw, _ = w.shape
    (ph, ph2), (pw, pw2) = padding
    ho = h + ph + ph2 - kh + 1
    wo = wd + pw + pw2 - kw + 1
    kk = 1 << (bn + kw - 2).bit_length()
    t = toeplitz(w, kk, bn)
    grid_sizes = (-(-c // bc), -(-wo // bn), -(-ho // rm), n)
    kernel = functools.partial(_kernel, kh_taps=kh, pad_h=ph, pad_w=pw, rm=rm, bc=bc, bn=bn,
                               kk=kk, grid_sizes=grid_sizes, h=h, w=wd, c=c, ho=ho, wo=wo,
                               natural=natural)
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((n, ho, wo, c), x.dtype),
        grid=(math.prod(grid_sizes),), interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        name="convnn_depthwise_tc")(x, t)


def reference(x, w, padding):
    return lax.conv_general_dilated(
        x.astype(jnp.float32), jnp.transpose(w, (1, 2, 3, 0)).astype(jnp.float32), (1, 1),
        padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
        precision=lax.Precision.HIGHEST)


def timeit(f, *args, reps=30):
    """Median of ``reps`` synchronous calls (ms)."""
    out = f(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="the correctness check only, in Pallas interpret mode")
    ap.add_argument("--json", default="depthwise_toeplitz.json")
    args = ap.parse_args()
    args.interpret = args.dry_run
    dev = jax.devices()[0]
    env = dict(jax=jax.__version__, device=getattr(dev, "device_kind", str(dev)))
    print(env)
    rng = np.random.default_rng(0)
    shapes = [(2, 9, 20, 5, 7, 3), (2, 16, 40, 24, 3, 1), (1, 12, 17, 33, 7, 3)]
    for n, h, wd, c, k, p in shapes:
        x = jnp.asarray(rng.standard_normal((n, h, wd, c)), jnp.bfloat16)
        w = jnp.asarray(rng.standard_normal((c, k, k, 1)), jnp.bfloat16)
        pad = ((p, k - 1 - p), (p, k - 1 - p))
        for cfg in [dict(), dict(rm=32, bc=16), dict(bc=32), dict(natural=True),
                    dict(bc=32, natural=True, rm=32)]:
            out = forward_tc(x, w, pad, interpret=args.interpret, **cfg)
            ref = reference(x, w, pad)
            err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
            print("check", (n, h, wd, c, k, p), cfg, "max error / max |value|", f"{err:.2g}",
                  flush=True)
            if out.shape != ref.shape or not err < 1e-2:  # bf16 output rounding: 2^-8
                print("correctness FAILED")
                return 1
    if args.dry_run:
        return 0
    results = []
    for (n, h, wd, c, k) in [(256, 56, 56, 96, 7), (256, 28, 28, 192, 7), (256, 56, 56, 144, 3)]:
        p = k // 2
        pad = ((p, p), (p, p))
        x = jnp.asarray(rng.standard_normal((n, h, wd, c)), jnp.bfloat16)
        w = jnp.asarray(rng.standard_normal((c, k, k, 1)), jnp.bfloat16)
        lax_f = jax.jit(lambda x, w: lax.conv_general_dilated(
            x, jnp.transpose(w, (1, 2, 3, 0)), (1, 1), pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c))
        base = timeit(lax_f, x, w)
        floor = 2 * x.size * 2 / 3.0e12 * 1e3
        print(f"shape {(n, h, wd, c, k)} lax {base:.3f} ms floor {floor:.3f}", flush=True)
        for rm, bc, nw, nat in [(32, 32, 8, False), (32, 32, 8, True), (32, 16, 4, False),
                                (32, 16, 4, True), (16, 32, 4, True), (64, 16, 8, True),
                                (32, 32, 4, True), (16, 16, 4, True)]:
                if True:
                    cfg = dict(rm=rm, bc=bc, num_warps=nw, natural=nat)
                    try:
                        f = jax.jit(functools.partial(forward_tc, padding=pad, **cfg))
                        out = f(x, w)
                        err = float(jnp.max(jnp.abs(out.astype(jnp.float32)
                                                    - reference(x, w, pad))))
                        ms = timeit(f, x, w)
                        print(f"  {cfg} {ms:.3f} ms  lax/this {base / ms:.2f}x "
                              f"floor {floor / ms:.0%} err {err:.3g}", flush=True)
                        results.append(dict(shape=(n, h, wd, c, k), cfg=cfg, ms=ms, lax=base,
                                            err=err))
                    except Exception as e:  # noqa: BLE001
                        print(f"  {cfg} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
    with open(args.json, "w") as fh:
        json.dump(dict(env=env, results=results), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
