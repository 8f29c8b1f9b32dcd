"""What both Pallas kernels share: tile index arithmetic, loads and stores, channel packing,
float32 widening and fused multiply-adds. All Python control flow here is static."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from convnn._lowering._pallas.geometry import AxisGeometry
from convnn._lowering._pallas.tiling import Tiling


def _pallas():
    """Pallas and its Triton backend, imported on first use: ``import convnn`` does not pay for
    them, and a platform whose jaxlib lacks the Triton backend only fails when a kernel runs."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    return pl, plgpu


def _select(index, values: Sequence[int]):
    """``values[index]`` for a traced int32 scalar index and a static tuple of ints."""
    out = jnp.int32(values[-1])
    for i in range(len(values) - 2, -1, -1):
        out = jnp.where(index == i, jnp.int32(values[i]), out)
    return out


def _split(pid, sizes: Sequence[int]):
    """Splits a flat program id into indices, the first size varying fastest."""
    out = []
    for size in sizes:
        out.append(pid % size)
        pid = pid // size
    return out


class _Tile:
    """Index arithmetic of one program's tile of columns x channels.

    The tile is ``(block_w, block_c)``, or ``(block_c, block_w)`` when ``vector == 1``: with one
    channel per thread, channels must be the tile's first axis so that the compiler lays
    consecutive threads along them (coalesced loads: a warp reads one pixel's channels).
    """

    def __init__(self, col0, c0, block_w: int, block_c: int, channels: int, vector: int = 0,
                 span: int = 1, packed_dtype=None):
        self.block_w, self.block_c = block_w, block_c
        # The 16-bit dtype of packed sources (channels, block_c and vector then count pairs).
        self.packed_dtype = packed_dtype
        # Column ``qx + j`` (``j < span``) of the program's ``block_w * span`` columns.
        self.qx = col0 + span * jnp.arange(block_w, dtype=jnp.int32)
        i = jnp.arange(block_c, dtype=jnp.int32)
        if vector and vector < block_c:
            # The same channels, with groups of ``vector`` swapped pairwise: the compiler then
            # proves contiguity of ``vector`` channels only, and gives each thread that many.
            i = ((i // vector) ^ 1) * vector + i % vector
        self.ch = c0 + i
        self.c_ok = None if channels % block_c == 0 else self.ch < channels
        self.channels_first = vector == 1
        self.shape = (block_c, block_w) if self.channels_first else (block_w, block_c)
        self.pixel_axis = 1 if self.channels_first else 0

    def cvec(self, v):
        """A per-channel vector, broadcastable against the tile."""
        return v[:, None] if self.channels_first else v[None, :]

    def wvec(self, v):
        """A per-column vector, broadcastable against the tile."""
        return v[None, :] if self.channels_first else v[:, None]

    def mask(self, row_ok, col_ok):
        m = self.wvec(col_ok)
        if row_ok is not None:
            m = m & row_ok
        if self.c_ok is not None:
            m = m & self.cvec(self.c_ok)
        return jnp.broadcast_to(m, self.shape)

    def columns(self, a: int, b, size: int):
        """(source columns, validity) for source column ``a*qx + b``.

        Columns outside the array are masked, not clamped: a masked lane reads no memory, and
        unclamped addresses of neighbouring taps differ by a constant, which the compiler folds
        into the load instruction.
        """
        cols = a * self.qx + b
        return cols, (cols >= 0) & (cols < size)

    def at(self, ref, n, row, cols, ch=None):
        """``ref.at[n, row, cols, ch]`` laid out as the tile (``ch``: the tile's channels)."""
        return ref.at[n, row, self.wvec(cols), self.cvec(self.ch if ch is None else ch)]

    def inside(self, row, size_h: int, cols, n_ok=None):
        """Where the tile of source row ``row`` at ``cols`` (:meth:`columns`) lies inside the
        array (and, with ``n_ok``, the image exists): the lanes that are not padding."""
        row_ok = (row >= 0) & (row < size_h)
        if n_ok is not None:
            row_ok = row_ok & n_ok
        return self.mask(row_ok, cols[1])

    def load(self, plgpu, ref, n, row, size_h: int, cols, n_ok=None):
        """The tile of ``ref[n, row, cols, ch]`` (in ``ref.dtype``), zero outside."""
        mask = self.inside(row, size_h, cols, n_ok)
        zero = jnp.zeros((), ref.dtype)
        return plgpu.load(self.at(ref, n, row, cols[0]), mask=mask, other=zero)

    def weight(self, plgpu, ref, phase, tap):
        """The weights of one tap, one per half (``ref``: :func:`_halves_last`), broadcastable
        against the tile."""
        out = []
        for h in range(ref.shape[2]):
            at = ref.at[phase, tap, h, self.ch]
            if self.c_ok is None:
                v = plgpu.load(at)
            else:
                v = plgpu.load(at, mask=self.c_ok, other=jnp.float32(0))
            out.append(self.cvec(v))
        return tuple(out)

    def store(self, plgpu, ref, n, row, cols, halves, mask):
        """Stores float32 ``halves`` into ``ref[n, row, cols, ...]``: one tile per channel of a
        pair, packed into ``uint32`` words for a packed 16-bit ``ref`` (:func:`_pack`)."""
        if len(halves) == 1:
            plgpu.store(self.at(ref, n, row, cols), halves[0].astype(ref.dtype), mask=mask)
        elif ref.dtype == jnp.uint32:
            lo, hi = (lax.convert_element_type(
                lax.bitcast_convert_type(v.astype(self.packed_dtype), jnp.uint16), jnp.uint32)
                for v in halves)
            plgpu.store(self.at(ref, n, row, cols), lo | lax.shift_left(hi, jnp.uint32(16)),
                        mask=mask)
        else:
            for h, v in enumerate(halves):
                plgpu.store(self.at(ref, n, row, cols, 2 * self.ch + h), v.astype(ref.dtype),
                            mask=mask)


class _Prologue:
    """The map a kernel applies to its source tiles on load: ``act(x * scale + shift)`` per
    channel, zero where the source is padding (the convolution pads its transformed input).

    ``ref``: the ``(2, 1, halves, C/halves)`` float32 scale and shift (:func:`_halves_last` of
    ``(2, 1, C)``), or ``None`` for no prologue (the source is used as it is).
    """

    def __init__(self, tile: _Tile, plgpu, ref, activation: str | None, native: bool):
        self.activation, self.native = activation, native
        self.on = ref is not None
        if self.on:
            self.scale = tile.weight(plgpu, ref, 0, 0)
            self.shift = tile.weight(plgpu, ref, 1, 0)

    def __call__(self, xs: tuple, inside) -> tuple:
        """``xs``: a widened tile (:func:`_widen`); ``inside()``: its :meth:`_Tile.inside`
        mask (called only when there is a prologue)."""
        if not self.on:
            return xs
        mask = inside()
        return tuple(jnp.where(mask, _activate(_fma(b, x, a, self.native), self.activation), 0.0)
                     for x, a, b in zip(xs, self.scale, self.shift))


def _activate(v, activation: str | None):
    """The activation on a float32 tile, written with the operations Triton lowers directly
    (``jax.nn``'s carry custom derivatives, which a kernel body does not need)."""
    if activation == "relu":
        return jnp.maximum(v, 0.0)
    if activation == "relu6":
        return jnp.minimum(jnp.maximum(v, 0.0), 6.0)
    if activation == "silu":
        return v / (1.0 + jnp.exp(-v))
    return v


def _activate_tangent(v, t, activation: str | None):
    """The activation's derivative at ``v`` times ``t``, on float32 tiles (the rule of
    ``convnn._lowering._prologue.activation_tangent``, with the operations Triton lowers)."""
    if activation == "relu":
        return jnp.where(v > 0.0, t, 0.0)
    if activation == "relu6":
        return jnp.where((v > 0.0) & (v < 6.0), t, 0.0)
    if activation == "silu":
        s = 1.0 / (1.0 + jnp.exp(-v))
        return t * (s * (1.0 + v * (1.0 - s)))
    return t


class _PrologueSums:
    """The sums an input-gradient kernel adds up as it stores, when the forward pass read its
    input through a prologue ``a = act(x * scale + shift)``: with ``da`` the tile stored (float32,
    before rounding) and ``gz = act'(x * scale + shift) * da``, per channel ``sum(gz)`` and
    ``sum(gz * x)``, the gradients of ``shift`` and ``scale``. They replace a reduction over
    ``da`` and ``x`` after the kernel (docs/benchmarks.md, "Fusing the BatchNorm into the
    depthwise kernels", the gradient sums).

    ``x_ref``: the prologue's input (the stored array's shape, packed as the source is);
    ``pre_ref``: as :class:`_Prologue`'s. Float32 tile accumulators, one per sum and half,
    are carried through the row loop; :meth:`store` reduces them over the tile's columns.
    """

    def __init__(self, tile: _Tile, plgpu, x_ref, pre_ref, activation: str | None,
                 native: bool, packed_dtype):
        self.tile, self.plgpu, self.x_ref = tile, plgpu, x_ref
        self.activation, self.native, self.packed_dtype = activation, native, packed_dtype
        self.scale = tile.weight(plgpu, pre_ref, 0, 0)
        self.shift = tile.weight(plgpu, pre_ref, 1, 0)

    def zeros(self) -> tuple:
        """The accumulators before the first row: ``(sum(gz), sum(gz * x))`` per half."""
        zero = jnp.zeros(self.tile.shape, jnp.float32)
        return ((zero,) * len(self.scale),) * 2

    def load(self, n, row, cols, mask):
        """The raw tile of ``x`` at ``(n, row, cols)`` where ``mask`` (zero elsewhere), loaded an
        iteration before :meth:`add` uses it, so that its latency overlaps a row's work."""
        zero = jnp.zeros((), self.x_ref.dtype)
        return self.plgpu.load(self.tile.at(self.x_ref, n, row, cols), mask=mask, other=zero)

    def add(self, sums: tuple, raw, das: tuple, mask) -> tuple:
        """Adds the stored tile ``das`` (float32 halves) where ``mask``, ``raw`` its tile of
        ``x`` (:meth:`load`)."""
        dz, dzx = [], []
        for x, da, a, b, s0, s1 in zip(_widen(raw, self.packed_dtype), das, self.scale,
                                        self.shift, *sums):
            gz = jnp.where(mask, _activate_tangent(_fma(b, x, a, self.native), da,
                                                    self.activation), 0.0)
            dz.append(s0 + gz)
            dzx.append(_fma(s1, gz, x, self.native))
        return tuple(dz), tuple(dzx)

    def store(self, ref, part, sums: tuple) -> None:
        """Writes the program's sums, reduced over its columns, to ``ref[part, k, channel]``
        (``k``: 0 for ``sum(gz)``, 1 for ``sum(gz * x)``)."""
        tile, halves = self.tile, len(self.scale)
        for k, per_half in enumerate(sums):
            for h, acc in enumerate(per_half):
                at = ref.at[part, k, halves * tile.ch + h]
                total = jnp.sum(acc, axis=tile.pixel_axis)
                if tile.c_ok is None:
                    self.plgpu.store(at, total)
                else:
                    self.plgpu.store(at, total, mask=tile.c_ok)


def _width_shifts(tile: _Tile, gw: AxisGeometry, b, span: int):
    """The source columns one input row is loaded at, and which (column, tap) pairs use each.

    Output (or cotangent) column ``qx + j`` (``j < span``) meets source column
    ``a*qx + b + s`` for ``s = a*j + tw``: one load per shift ``s`` serves every pair ``(j, tw)``
    with that sum. Returns ``(cols, pairs)``: per shift, :meth:`_Tile.columns` and the pairs.
    """
    shifts = gw.a * (span - 1) + gw.taps
    cols = [tile.columns(gw.a, b + sh, gw.src_size) for sh in range(shifts)]
    pairs = [[(j, sh - gw.a * j) for j in range(span) if 0 <= sh - gw.a * j < gw.taps]
             for sh in range(shifts)]
    return cols, pairs


def _ahead(shifts: int, tiling: Tiling, a: int) -> range:
    """The shifts of a source row that are loaded ahead (prefetched).

    ``a * span`` consecutive shifts cover every source column of the tile once (columns step by
    ``a * span`` from one thread's first output to the next), so that when the row is used the
    other shifts' loads hit the L1 cache; with ``Tiling.prefetch_all=False`` only the centre
    shift (faster for small kernels: docs/performance.md, "The Pallas tilings").
    """
    if not tiling.prefetch_all:
        return range(shifts // 2, shifts // 2 + 1)
    ahead = min(shifts, a * tiling.span)
    first = (shifts - ahead) // 2
    return range(first, first + ahead)


def _fma(acc, x, y, native: bool):
    """``acc + x * y`` in float32, with one rounding where ``native``.

    Pallas' Triton lowering, as XLA compiles it, does not contract ``acc + x * y`` into a fused
    multiply-add: the GPU code issues a multiply and an add (FMUL, FADD), which were 77% of the
    forward kernel's instructions (Nsight Compute, docs/benchmarks.md). ``native`` (on an NVIDIA
    GPU) issues PTX's ``fma.rn.f32`` through inline assembly instead; interpret mode computes
    ``acc + x * y``, which differs from it by one rounding per step.
    """
    if not native:
        return acc + x * y
    _, plgpu = _pallas()
    shape = jnp.broadcast_shapes(acc.shape, x.shape, y.shape)
    [out] = plgpu.elementwise_inline_asm(
        "fma.rn.f32 $0, $1, $2, $3;",
        args=[jnp.broadcast_to(v, shape) for v in (x, y, acc)],
        constraints="=f,f,f,f",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(shape, jnp.float32)],
    )
    return out


def _widen(v, packed_dtype) -> tuple:
    """A loaded tile in float32, as a tuple: one tile, or for a packed ``uint32`` tile of the
    16-bit ``packed_dtype`` (:func:`_pack`) the tiles of the pair's first and second channel."""
    if v.dtype != jnp.uint32:
        return (_f32(v),)
    if packed_dtype == jnp.bfloat16:
        # The high half is a float32 as it is, once the low half is cleared.
        return (lax.bitcast_convert_type(lax.shift_left(v, jnp.uint32(16)), jnp.float32),
                lax.bitcast_convert_type(v & jnp.uint32(0xFFFF0000), jnp.float32))
    return tuple(lax.bitcast_convert_type(lax.convert_element_type(h, jnp.uint16), packed_dtype)
                 .astype(jnp.float32)
                 for h in (v & jnp.uint32(0xFFFF), lax.shift_right_logical(v, jnp.uint32(16))))


def _fmas(accs: tuple, xs: tuple, ys: tuple, native: bool) -> tuple:
    """:func:`_fma` on each half."""
    return tuple(_fma(a, x, y, native) for a, x, y in zip(accs, xs, ys))


def _f32(v):
    """Widens a loaded tile to float32.

    bfloat16 is the upper half of a float32, so it is widened with integer operations (zero
    extend, shift), which run at full rate, instead of a conversion instruction.
    """
    if v.dtype == jnp.bfloat16:
        bits = lax.convert_element_type(lax.bitcast_convert_type(v, jnp.uint16), jnp.uint32)
        return lax.bitcast_convert_type(lax.shift_left(bits, jnp.uint32(16)), jnp.float32)
    return v.astype(jnp.float32)


def _rows(tiling: Tiling, count: int) -> int:
    """Rows per program: all, or the tiling's."""
    return min(tiling.rows or count, count)


def _packed(tiling: Tiling, *srcs):
    """``(packed_dtype, tiling, srcs)`` for a kernel: with ``tiling.packed`` and sources of one
    16-bit dtype and an even number of channels, that dtype, the tiling in channel pairs and the
    sources packed (:func:`_pack`); else ``(None, tiling, srcs)``."""
    dtype = srcs[0].dtype
    if not (tiling.packed and dtype.itemsize == 2 and srcs[0].shape[-1] % 2 == 0
            and all(a.dtype == dtype for a in srcs)):
        return None, tiling, srcs
    pairs = dataclasses.replace(tiling, block_c=max(1, tiling.block_c // 2),
                                vector=tiling.vector // 2)
    return dtype, pairs, tuple(_pack(a) for a in srcs)


def _pack(a):
    """A 16-bit ``(..., C)`` array (``C`` even) as ``(..., C/2)`` ``uint32`` words: channel
    ``2k`` in the low half of word ``k``, ``2k+1`` in the high half (a bitcast, no copy)."""
    return lax.bitcast_convert_type(a.reshape(*a.shape[:-1], a.shape[-1] // 2, 2), jnp.uint32)


def _unpack(u, dtype):
    """The inverse of :func:`_pack`."""
    return lax.bitcast_convert_type(u, dtype).reshape(*u.shape[:-1], 2 * u.shape[-1])


def _halves_last(w, halves: int):
    """``(phases, taps, C)`` weights as ``(phases, taps, halves, C/halves)``: with two halves,
    the even channels, then the odd ones (the pair's first and second channel)."""
    p, t, c = w.shape
    return jnp.transpose(w.reshape(p, t, c // halves, halves), (0, 1, 3, 2))
