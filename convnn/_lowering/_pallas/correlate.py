"""The correlation kernel: the forward pass and the input gradient.

A program owns a tile of ``block_w * span`` output columns by ``block_c`` channels (channels are
contiguous in memory) and walks down ``rows`` output rows. Output row ``q`` reads input rows
``a*q + b + t`` for taps ``t < T``; the program keeps ``ceil(T / a)`` output rows in flight as
float32 accumulators and loads each input row once, adding it into every output row that uses it.
Each thread computes ``span`` consecutive columns, which share their (L1-cached) loads of the
row's column shifts. Every source column of the rows needed ``prefetch`` iterations ahead is
loaded early and carried in registers, so that device memory is kept busy and the loop's other
loads hit the L1 cache. Padding is handled by masked loads (the padded input is never built; a
masked lane reads no memory).

* the forward pass is this kernel with ``a = stride`` and ``b = -padding_lo``;
* the input gradient of a stride-1 convolution is a convolution of the cotangent with the flipped
  kernel and complementary padding: the same kernel with ``a = 1``;
* for stride 2 the input gradient splits into ``2 x 2`` phases (even/odd rows and columns); each
  phase is a stride-1 correlation of the cotangent with a sub-kernel (every other tap) whose
  output lands on every other row and column. The phases are one more grid axis of the same
  kernel (sub-kernels are zero-padded to a common size).
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
    _PrologueSums,
    _rows,
    _select,
    _split,
    _Tile,
    _unpack,
    _widen,
    _width_shifts,
)
from convnn._lowering._pallas.geometry import AxisGeometry
from convnn._lowering._pallas.tiling import Tiling, default_tiling

__all__ = ["correlate"]


def _correlate_kernel(src_ref, w_ref, *refs, gh: AxisGeometry, gw: AxisGeometry,
                      channels: int, tiling: Tiling, grid_sizes, native: bool, packed_dtype,
                      activation: str | None, sums: bool):
    pl, plgpu = _pallas()
    if sums:
        pre_ref, x_ref, out_ref, sums_ref = refs
    else:
        x_ref, sums_ref = None, None
        pre_ref, out_ref = refs if len(refs) == 2 else (None, refs[0])
    bw, bc, th, depth, span = (tiling.block_w, tiling.block_c, tiling.rows, tiling.prefetch,
                               tiling.span)
    cb, ph, wt, rt, n = _split(pl.program_id(0), grid_sizes)
    ph_h, ph_w = ph // gw.phases, ph % gw.phases
    b_h, p_h, count_h = (_select(ph_h, v) for v in (gh.b, gh.p, gh.count))
    b_w, p_w, count_w = (_select(ph_w, v) for v in (gw.b, gw.p, gw.count))
    tile = _Tile(wt * bw * span, cb * bc, bw, bc, channels, tiling.vector, span, packed_dtype)
    a, taps, live = gh.a, gh.taps, gh.live
    # With ``sums``, ``pre`` is the forward pass's prologue, differentiated at the stores;
    # the source (a cotangent) is read as it is.
    prologue = _Prologue(tile, plgpu, None if sums else pre_ref, activation, native)
    epilogue = (_PrologueSums(tile, plgpu, x_ref, pre_ref, activation, native, packed_dtype)
                if sums else None)
    cols, pairs = _width_shifts(tile, gw, b_w, span)
    shifts = len(cols)
    ahead = _ahead(shifts, tiling, gw.a)
    q0 = rt * th
    q_end = jnp.minimum(count_h, q0 + th)
    # Taps (relative to the first output row that reads them) of the rows each iteration loads.
    new_taps = list(range(max(taps - a, 0), taps))

    if tiling.hold_weights:
        held = {(t, tw): tile.weight(plgpu, w_ref, ph, t * gw.taps + tw)
                for t in range(taps) for tw in range(gw.taps)}
        weight = held.__getitem__
    else:
        def weight(key):
            return tile.weight(plgpu, w_ref, ph, key[0] * gw.taps + key[1])

    def row_of(q, t):
        return a * q + b_h + t

    def load(row, sh):
        return tile.load(plgpu, src_ref, n, row, gh.src_size, cols[sh])

    def accumulate(accs, pre, t, row):
        """Adds input row ``row`` (tap ``t`` of output ``accs[0]``) into every output using it.

        ``accs[i][j]``: output row ``i`` in flight, column ``qx + j``.
        """
        accs = [list(r) for r in accs]
        for sh in range(shifts):
            x = _widen(load(row, sh) if sh not in pre else pre[sh], packed_dtype)
            x = prologue(x, lambda: tile.inside(row, gh.src_size, cols[sh]))  # noqa: B023
            for j, tw in pairs[sh]:
                for i in range(t // a + 1):
                    accs[i][j] = _fmas(accs[i][j], x, weight((t - a * i, tw)), native)
        return [tuple(r) for r in accs]

    zeros = (jnp.zeros(tile.shape, jnp.float32),) * w_ref.shape[2]
    blank = (zeros,) * span
    accs = [blank] * live
    # The rows of the first window read before q0: unrolled, with only the multiply-adds that
    # count, or as ``early`` more loop iterations whose outputs (rows before q0) are not stored.
    early = 0 if tiling.unrolled_edges else live - 1
    for t in range(max(taps - a, 0) if tiling.unrolled_edges else 0):
        accs = accumulate(accs, {}, t, row_of(q0, t))

    def prefetch(q):
        return tuple(tuple(load(row_of(q, t), sh) for sh in ahead) for t in new_taps)

    queue = tuple(prefetch(q0 - early + k) for k in range(depth))
    ocols = [gw.m * (tile.qx + j) + p_w for j in range(span)]
    ocols_ok = [tile.qx + j < count_w for j in range(span)]

    def row_ok_at(q):
        ok = q < q_end
        return ok & (q >= q0) if early else ok

    def x_tiles(q):
        """The epilogue's tiles of ``x`` at output row ``q`` (loaded an iteration ahead)."""
        orow = gh.m * jnp.maximum(q, q0) + p_h
        return tuple(epilogue.load(n, orow, ocols[j], tile.mask(row_ok_at(q), ocols_ok[j]))
                     for j in range(span))

    def body(i, carry):
        accs, queue, totals, xs = list(carry[0]), carry[1], carry[2], carry[3]
        q = q0 - early + i
        # The epilogue's x tiles of this row came with the carry; the next row's load now.
        xs_next = x_tiles(q + 1) if epilogue is not None else ()
        if depth:
            ready, queue = queue[0], queue[1:] + (prefetch(q + depth),)
        for k, t in enumerate(new_taps):
            pre = dict(zip(ahead, ready[k])) if depth else {}
            accs = accumulate(accs, pre, t, row_of(q, t))
        row_ok = row_ok_at(q)
        if early:
            q = jnp.maximum(q, q0)  # a masked store, at an address inside the array
        orow = gh.m * q + p_h
        for j in range(span):
            mask = tile.mask(row_ok, ocols_ok[j])
            tile.store(plgpu, out_ref, n, orow, ocols[j], accs[0][j], mask)
            if epilogue is not None:
                totals = epilogue.add(totals, xs[j], accs[0][j], mask)
        accs = accs[1:] + [blank]
        return tuple(accs), queue, totals, xs_next

    totals, xs = (epilogue.zeros(), x_tiles(q0 - early)) if epilogue is not None else ((), ())
    _, _, totals, _ = lax.fori_loop(0, th + early, body, (tuple(accs), queue, totals, xs))
    if epilogue is not None:
        epilogue.store(sums_ref, ((n * grid_sizes[3] + rt) * grid_sizes[2] + wt) * grid_sizes[1]
                       + ph, totals)


# Jitted with the geometry, dtype and tiling static: JAX then traces and lowers each distinct
# kernel once per program, however often it is called (the forward pass and the input gradient
# of a stride-1 convolution with symmetric padding are the same kernel).
@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def correlate(src, wt, pre, gh: AxisGeometry, gw: AxisGeometry, out_dtype, tiling: Tiling | None,
              interpret: bool, activation: str | None = None, x=None):
    """``out[n, mh*q+ph, mw*r+pw, c] = sum src[n, ah*q+bh+i, aw*r+bw+j, c] * wt[phase, i*Tw+j, c]``
    (``wt``: ``(phases, Th*Tw, C)`` float32).

    With ``pre`` (``(2, C)`` float32: a scale and a shift per channel), ``src`` is read through
    the prologue ``activation(src * pre[0] + pre[1])``, padding staying zero; ``pre=None``: as
    it is.

    With ``x`` as well (the input gradient of a convolution with that prologue: ``src`` the
    cotangent, ``x`` the forward pass's input, of ``out``'s shape), ``src`` is read as it is and
    the result is ``(out, sums)``: ``sums`` ``(2, C)`` float32, over every position,
    ``sum(gz)`` and ``sum(gz * x)`` for ``gz = activation'(x * pre[0] + pre[1]) * out`` (``out``
    before its rounding to ``out_dtype``)."""
    pl, plgpu = _pallas()
    n, _, _, c = src.shape
    phases = gh.phases * gw.phases
    if tiling is None:
        tiling = default_tiling("correlate", n, (gh.max_count, gw.max_count), c, src.dtype,
                                (gh.taps, gw.taps), phases, gw.a)
    rows = _rows(tiling, gh.max_count)
    tiling = dataclasses.replace(tiling, rows=rows)
    sums = x is not None
    packed_dtype, tiling, srcs = _packed(tiling, src, *((x,) if sums else ()))
    src = srcs[0]
    halves = 2 if packed_dtype else 1
    packed_out = halves == 2 and jnp.dtype(out_dtype) == packed_dtype
    grid_sizes = (-(-c // halves // tiling.block_c), phases,
                  -(-gw.max_count // tiling.columns), -(-gh.max_count // rows), n)
    kernel = functools.partial(_correlate_kernel, gh=gh, gw=gw, channels=c // halves,
                               tiling=tiling, grid_sizes=grid_sizes, native=not interpret,
                               packed_dtype=packed_dtype, activation=activation, sums=sums)
    operands = (src, _halves_last(wt, halves))
    if pre is not None:
        operands += (_halves_last(pre.astype(jnp.float32)[:, None], halves),)
    out_shape = jax.ShapeDtypeStruct(
        (n, gh.out_size, gw.out_size, c // 2 if packed_out else c),
        jnp.uint32 if packed_out else out_dtype)
    if sums:
        operands += (srcs[1],)
        parts = math.prod(grid_sizes[1:])
        out_shape = (out_shape, jax.ShapeDtypeStruct((parts, 2, c), jnp.float32))
    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(math.prod(grid_sizes),),
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=1),
        name="convnn_depthwise_correlate",
    )(*operands)
    if sums:
        out, part = out
        return (_unpack(out, out_dtype) if packed_out else out), jnp.sum(part, axis=0)
    return _unpack(out, out_dtype) if packed_out else out
