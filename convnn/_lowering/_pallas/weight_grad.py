"""The weight-gradient kernel, reduced deterministically.

A program owns a column and channel tile of a block of images and keeps one float32 accumulator
tile per kernel tap; input rows are loaded once and paired with the cotangent rows that use them
(kept in a small rolling buffer). Each program writes its per-tap sums to a float32 buffer of
partial sums, which a second pass (an XLA reduction) sums in a fixed order: no atomics, bitwise
reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from convnn._lowering._pallas.common import (
    _ahead,
    _fmas,
    _halves_last,
    _packed,
    _pallas,
    _Prologue,
    _rows,
    _split,
    _Tile,
    _widen,
    _width_shifts,
)
from convnn._lowering._pallas.geometry import AxisGeometry
from convnn._lowering._pallas.tiling import Tiling, default_tiling

__all__ = ["tap_sums"]


def _weight_grad_kernel(x_ref, g_ref, *refs, gh: AxisGeometry, gw: AxisGeometry,
                        n_images: int, channels: int, tiling: Tiling, grid_sizes, native: bool,
                        packed_dtype, activation: str | None):
    pl, plgpu = _pallas()
    pre_ref, part_ref = refs if len(refs) == 2 else (None, refs[0])
    bw, bc, th, depth, per, span = (tiling.block_w, tiling.block_c, tiling.rows,
                                    tiling.prefetch, tiling.images, tiling.span)
    cb, wt, rt, nb = _split(pl.program_id(0), grid_sizes)
    part = (nb * grid_sizes[2] + rt) * grid_sizes[1] + wt
    tile = _Tile(wt * bw * span, cb * bc, bw, bc, channels, tiling.vector, span, packed_dtype)
    a, taps, live = gh.a, gh.taps, gh.live
    b_h, count_h = gh.b[0], gh.count[0]
    prologue = _Prologue(tile, plgpu, pre_ref, activation, native)
    cols, pairs = _width_shifts(tile, gw, gw.b[0], span)
    shifts = len(cols)
    ahead = _ahead(shifts, tiling, gw.a)
    gcols = [(tile.qx + j, tile.qx + j < gw.count[0]) for j in range(span)]
    q0 = rt * th
    us = list(range(min(a, taps)))  # rows loaded per iteration: a*q + b + u
    halves = 2 if packed_dtype else 1
    zeros = (jnp.zeros(tile.shape, jnp.float32),) * halves
    blank = (zeros,) * span

    def pair(accs, gbuf, row, u, n, n_ok, pre, skip):
        """Adds input row ``a*q+b+u`` times the cotangent rows ``q - i`` (``gbuf[i][j]``)."""
        accs = dict(accs)
        rows_in = [i for i in range(skip, live) if u + a * i < taps]
        if not rows_in:
            return accs
        for sh in range(shifts):
            x = pre.get(sh)
            x = _widen(tile.load(plgpu, x_ref, n, row, gh.src_size, cols[sh], n_ok)
                       if x is None else x, packed_dtype)
            x = prologue(x, lambda: tile.inside(row, gh.src_size, cols[sh], n_ok))  # noqa: B023
            for j, tw in pairs[sh]:
                for i in rows_in:
                    key = (u + a * i, tw)
                    accs[key] = _fmas(accs[key], x, gbuf[i][j], native)
        return accs

    def image(i, accs):
        n = nb * per + i
        n_ok = n < n_images
        n = jnp.minimum(n, n_images - 1)

        def load_g(q):
            # Folded edges: cotangent rows past the tile read as zero.
            ok = n_ok if tiling.unrolled_edges else n_ok & (q < q0 + th)
            return tuple(tile.load(plgpu, g_ref, n, q, count_h, gc, ok) for gc in gcols)

        def load_x(q):
            return tuple(tuple(tile.load(plgpu, x_ref, n, a * q + b_h + u, gh.src_size,
                                         cols[sh], n_ok) for sh in ahead) for u in us)

        def prefetch(q):
            return (load_g(q), load_x(q))

        def body(k, carry):
            accs, gbuf, queue = carry
            gbuf = list(gbuf)
            q = q0 + k
            if depth:
                (g_raw, x_raws), queue = queue[0], queue[1:] + (prefetch(q + depth),)
            else:
                g_raw, x_raws = load_g(q), None
            gbuf = [tuple(_widen(g, packed_dtype) for g in g_raw)] + gbuf[:-1]
            for idx, u in enumerate(us):
                pre = dict(zip(ahead, x_raws[idx])) if depth else {}
                accs = pair(accs, gbuf, a * q + b_h + u, u, n, n_ok, pre, 0)
            return accs, tuple(gbuf), queue

        queue = tuple(prefetch(q0 + k) for k in range(depth))
        # The input rows after the tile, paired with its last cotangent rows: unrolled, with
        # only the multiply-adds that count, or as ``late`` more loop iterations whose
        # cotangent rows are zero.
        late = 0 if tiling.unrolled_edges else live - 1
        accs, gbuf, _ = lax.fori_loop(0, th + late, body, (accs, (blank,) * live, queue))
        gbuf = list(gbuf)
        for e in range(1, live if tiling.unrolled_edges else 1):  # the unrolled epilogue
            q = q0 + th - 1 + e
            gbuf = [blank] + gbuf[:-1]
            for u in us:
                accs = pair(accs, gbuf, a * q + b_h + u, u, n, n_ok, {}, e)
        return accs

    keys = [(t, tw) for t in range(taps) for tw in range(gw.taps)]
    accs = {key: zeros for key in keys}
    accs = lax.fori_loop(0, per, image, accs)
    for t, tw in keys:
        for h, acc in enumerate(accs[(t, tw)]):
            total = jnp.sum(acc, axis=tile.pixel_axis)
            at = part_ref.at[part, t * gw.taps + tw, halves * tile.ch + h]
            if tile.c_ok is None:
                plgpu.store(at, total)
            else:
                plgpu.store(at, total, mask=tile.c_ok)


# Jitted with the geometry and tiling static, so each distinct kernel is traced and lowered
# once per program (see correlate).
@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def tap_sums(x, g, pre, gh: AxisGeometry, gw: AxisGeometry, tiling: Tiling | None,
             interpret: bool, activation: str | None = None):
    """Per-tap sums ``sum_{n,q,r} x[n, a*q+b+i, a*r+b+j, c] * g[n, q, r, c]``: (Th, Tw, C) f32.

    With ``pre`` (``(2, C)`` float32), ``x`` is read through the prologue
    ``activation(x * pre[0] + pre[1])``, padding staying zero (as :func:`.correlate.correlate`).
    """
    pl, plgpu = _pallas()
    n, _, _, c = x.shape
    if tiling is None:
        tiling = default_tiling("weight_grad", n, (gh.count[0], gw.count[0]), c, x.dtype,
                                (gh.taps, gw.taps), 1, gw.a)
    rows = _rows(tiling, gh.count[0])
    images = max(1, min(tiling.images or 1, n))
    tiling = dataclasses.replace(tiling, rows=rows, images=images)
    packed_dtype, tiling, (x, g) = _packed(tiling, x, g)
    halves = 2 if packed_dtype else 1
    grid_sizes = (-(-c // halves // tiling.block_c), -(-gw.count[0] // tiling.columns),
                  -(-gh.count[0] // rows), -(-n // images))
    parts = grid_sizes[1] * grid_sizes[2] * grid_sizes[3]
    kernel = functools.partial(_weight_grad_kernel, gh=gh, gw=gw, n_images=n,
                               channels=c // halves, tiling=tiling, grid_sizes=grid_sizes,
                               native=not interpret, packed_dtype=packed_dtype,
                               activation=activation)
    operands = (x, g)
    if pre is not None:
        operands += (_halves_last(pre.astype(jnp.float32)[:, None], halves),)
    part = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((parts, gh.taps * gw.taps, c), jnp.float32),
        grid=(math.prod(grid_sizes),),
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=1),
        name="convnn_depthwise_weight_grad",
    )(*operands)
    return jnp.sum(part, axis=0).reshape(gh.taps, gw.taps, c)
