"""The ``"pallas"`` strategy: depthwise 2-D convolution kernels for NVIDIA GPUs.

Depthwise convolutions (one input channel per group, channel multiplier 1) do a handful of
multiply-adds per byte they move, so they are bound by memory bandwidth and by the arithmetic
issue rate, not by matrix units. The kernels here are written with Pallas (Triton lowering) for
channels-last ``(N, H, W, C)`` data and read each input once from device memory.

**Forward and input gradient: one kernel.** A program owns a tile of ``block_w * span`` output
columns by ``block_c`` channels (channels are contiguous in memory) and walks down ``rows``
output rows. Output row ``q`` reads input rows ``a*q + b + t`` for taps ``t < T``; the program
keeps ``ceil(T / a)`` output rows in flight as float32 accumulators and loads each input row
once, adding it into every output row that uses it. Each thread computes ``span`` consecutive
columns, which share their (L1-cached) loads of the row's column shifts. Every source column of
the rows needed ``prefetch`` iterations ahead is loaded early and carried in registers, so that
device memory is kept busy and the loop's other loads hit the L1 cache. Padding is handled by
masked loads (the padded input is never built; a masked lane reads no memory).

* the forward pass is this kernel with ``a = stride`` and ``b = -padding_lo``;
* the input gradient of a stride-1 convolution is a convolution of the cotangent with the flipped
  kernel and complementary padding: the same kernel with ``a = 1``;
* for stride 2 the input gradient splits into ``2 x 2`` phases (even/odd rows and columns); each
  phase is a stride-1 convolution of the cotangent with a sub-kernel (every other tap) whose
  output lands on every other row and column. The phases are one more grid axis of the same
  kernel (sub-kernels are zero-padded to a common size).

**Weight gradient: a second kernel, reduced deterministically.** A program owns a column and
channel tile of a block of images and keeps one float32 accumulator tile per kernel tap; input
rows are again loaded once and paired with the cotangent rows that use them (kept in a small
rolling buffer). Each program writes its per-tap sums to a float32 buffer of partial sums, which
a second pass (an XLA reduction) sums in a fixed order: no atomics, bitwise reproducible.

Everything accumulates in float32, whatever the input dtype (float32, bfloat16, float16), with
fused multiply-adds issued as inline PTX (:func:`_fma`: the Triton lowering would otherwise
issue a separate multiply and add).

**The strategy.** :func:`conv_pallas` runs each pass with the Pallas kernel or XLA's,
whichever was measured faster, the gradients through a ``jax.custom_vjp``: the Pallas forward
pass except at stride 2 for kernels smaller than 7x7 (:func:`forward_kernel`); the Pallas input
gradient; the Pallas weight gradient for kernels larger than 3x3 in float32, for 7x7 and larger
at stride 1 in 16-bit types and for bfloat16 3x3 at stride 1 with an even number of channels,
XLA's otherwise (:func:`backward_kernels`). ``"auto"`` picks it on NVIDIA GPUs for kernels of
5x5 and larger, for 3x3 kernels at stride 2, and for those bfloat16 3x3 kernels at stride 1
where the output is at least 14 wide (:func:`preferred_on_cuda`); the measurements
are in docs/benchmarks.md and the tilings in :func:`default_tiling`. Limits: 2-D, channel
multiplier 1, kernels up to 9x9, strides 1 and 2, no dilation (:func:`supports`; anything else
runs ``"xla"``). Derivatives through the strategy are reverse mode of first order only
(``jax.jvp``, ``jax.jacfwd`` and Hessians raise JAX's custom_vjp ``TypeError``: run those under
``convnn.lowering("xla")``). :func:`depthwise` also offers ``backward="xla"``, a
``jax.custom_jvp`` whose tangent is XLA's convolution, for which every order and mode works.

**Testing without a GPU.** The kernels also run in Pallas interpret mode (on the CPU): the same
kernel bodies (masked loads and stores, the rolling row loops, prefetch queues, tails and phase
arithmetic) evaluated by XLA, which is how ``tests/test_pallas.py`` checks them against the
float64 reference; see :data:`INTERPRET`. Interpret mode does not cover what Triton decides
(layouts, vector widths, register allocation, ``num_warps``): the GPU benchmark checks a table of
configurations against the same reference before it times anything.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from convnn._lowering._spec import ConvSpec
from convnn._lowering._xla import conv_xla

__all__ = [
    "AxisGeometry",
    "Tiling",
    "conv_pallas",
    "depthwise",
    "forward",
    "input_grad",
    "weight_grad",
    "supports",
    "default_tiling",
    "INTERPRET",
    "MAX_KERNEL",
    "STRIDES",
    "DTYPES",
]

#: Largest kernel size (per axis) the kernels are built for.
MAX_KERNEL = 9
#: Supported strides (per axis).
STRIDES = (1, 2)
#: Supported input dtypes (accumulation is always float32).
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

#: ``None``: run the kernels compiled for the GPU, and report every configuration unsupported on
#: other backends. ``True``: run them in Pallas interpret mode on any backend (slow; for tests).
INTERPRET: bool | None = None


# ---------------------------------------------------------------------------------------------
# Static description of the work
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AxisGeometry:
    """One spatial axis of a correlation ``out[m*q + p] = sum_t src[a*q + b + t] * w[t]``.

    Per phase (a tuple entry per phase): the source offset ``b``, the output offset ``p`` and the
    number of outputs ``count``. ``src_size`` and ``out_size`` are the array sizes along the axis.
    """

    taps: int
    a: int
    m: int
    b: tuple[int, ...]
    p: tuple[int, ...]
    count: tuple[int, ...]
    src_size: int
    out_size: int

    @property
    def phases(self) -> int:
        return len(self.b)

    @property
    def max_count(self) -> int:
        return max(self.count)

    @property
    def live(self) -> int:
        """Output rows in flight (accumulators) / cotangent rows kept (weight gradient)."""
        return -(-self.taps // self.a)


def forward_geometry(size: int, kernel: int, stride: int, lo: int, hi: int) -> AxisGeometry:
    """The forward correlation along one axis."""
    out = (size + lo + hi - kernel) // stride + 1
    return AxisGeometry(kernel, stride, 1, (-lo,), (0,), (out,), size, out)


def input_grad_geometry(size: int, kernel: int, stride: int, lo: int, hi: int):
    """The input gradient along one axis, as ``stride`` phases of a stride-1 correlation.

    Returns the geometry and, per phase, the kernel tap that each sub-kernel tap reads (``-1``:
    a zero tap, padding the sub-kernels to a common size).
    """
    out = (size + lo + hi - kernel) // stride + 1
    s = stride
    jmax = -(-kernel // s)
    bs, ps, counts, taps = [], [], [], []
    for p in range(s):
        k0 = (p + lo) % s
        j = max(0, -(-(kernel - k0) // s))
        d = (p + lo - k0) // s
        bs.append(d - jmax + 1)
        ps.append(p)
        counts.append(max(0, -(-(size - p) // s)))
        taps.append(tuple(-1 if t < jmax - j else k0 + s * (jmax - 1 - t) for t in range(jmax)))
    return AxisGeometry(jmax, 1, s, tuple(bs), tuple(ps), tuple(counts), out, size), taps


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How a kernel is tiled (the block sizes and warps are powers of two).

    Attributes:
      block_w: output columns per program.
      block_c: channels per program.
      rows: output rows per program (0: all).
      num_warps: warps per program.
      prefetch: loop iterations whose input rows are loaded ahead (0: none).
      images: images per program (weight gradient only).
      vector: channels each thread holds side by side (0: as many as a 16-byte load allows).
        Fewer channels per thread means fewer weight registers (``taps * vector``).
      hold_weights: correlation only: load every tap's weights once, before the row loop, and
        keep them in registers (else they are re-read from the L1 cache in every iteration).
      unroll: unroll the row loop by the number of rows in flight, so that the rolling
        accumulators / cotangent rows are renamed rather than moved.
      span: consecutive output columns each thread computes (register blocking along the
        width): the program's columns are ``span`` interleaved tiles of ``block_w``, and the
        ``span`` outputs of a thread share their input loads (``a*(span-1) + taps`` loads per
        input row instead of ``span*taps``).
      prefetch_all: load every source column of the tile ahead (``a * span`` shifts of a row),
        not only the centre shift's columns.
      packed: 16-bit sources with an even number of channels: load each pair of neighbouring
        channels as one 32-bit word (the array viewed as ``uint32``, :func:`_pack`), which halves
        the load instructions and the registers a loaded row takes; ``block_c`` and ``vector``
        still count channels. Ignored for other sources.
    """

    block_w: int
    block_c: int
    rows: int = 0
    num_warps: int = 4
    prefetch: int = 2
    images: int = 1
    vector: int = 0
    hold_weights: bool = False
    unroll: bool = False
    span: int = 1
    prefetch_all: bool = True
    packed: bool = False

    @property
    def columns(self) -> int:
        """Output columns per program."""
        return self.block_w * self.span


def _packs(dtype, taps: int, c: int) -> bool:
    """Whether the stride-1 tiles load channel pairs (``Tiling.packed``): bfloat16 kernels of at
    most 9 taps with an even number of channels (bf16 3x3 at 56x56x144 on an H100: forward 0.21
    against 0.22 ms unpacked, weight gradient 0.25-0.26 against 0.30; 7x7 kernels, which are
    limited by their multiply-adds rather than their loads, ran 3-5% slower packed; float16,
    whose halves need a conversion instruction each, was not timed unpacked against packed, and
    stays unpacked)."""
    return jnp.dtype(dtype) == jnp.bfloat16 and taps <= 9 and c % 2 == 0


def _pow2_at_most(n: int, cap: int) -> int:
    return min(cap, 1 << max(0, (int(n) - 1).bit_length()))


def _width_cover(width: int) -> tuple[int, int]:
    """``(block_w, span)``: ``block_w`` (a power of two, at most 8) times ``span`` (at most 7)
    output columns per program, wasting the fewest columns on a row of ``width`` (then taking
    the most columns per program): 56 columns are 8 x 7, 28 are 4 x 7, 64 are two of 8 x 4.
    """
    best = None
    for span in range(7, 0, -1):
        block_w = _pow2_at_most(-(-width // span), 8)
        cols = block_w * span
        key = (-(-width // cols) * cols - width, -cols)
        if best is None or key < best[0]:
            best = (key, (block_w, span))
    return best[1]


#: Programs a launch aims for (a few per multiprocessor on an H100's 132).
TARGET_PROGRAMS = 512


def default_tiling(kind: str, n: int, out_hw: tuple[int, int], c: int, dtype,
                   taps: tuple[int, int] = (3, 3), phases: int = 1, stride: int = 1) -> Tiling:
    """The tiling used unless one is given: ``kind`` is ``"correlate"`` or ``"weight_grad"``.

    ``stride`` is the width stride of the correlation (``a``) and ``phases`` the number of
    input-gradient phases.

    Measured with ``benchmarks/bench_depthwise_gpu.py`` on an H100 (docs/benchmarks.md):

    * correlation, kernels of more than 16 taps: two channels per thread, all the weights held
      in registers (re-reading 8 channels' weights per tap from L1 in every iteration made the
      7x7 forward pass 40% slower). At stride 1 each thread computes ``span`` consecutive
      columns that share their loads, and a program covers the row with few idle columns
      (:func:`_width_cover`: 8 x 7 columns at width 56, 4 x 7 at 28), 32 channels per program:
      bf16 7x7 forward 0.236 against 0.312 ms at 56x56x96 (the best one-column tiling, 64
      columns by 32 channels on 8 warps), 0.128 against 0.145 ms at 28x28x192, float32 0.295
      against 0.350 ms; 16 channels per program, or 64, ran equal or slower. These kernels take
      about 50 s to compile (10 s for one column per thread). Strided and phased correlations
      keep one column per thread and 16 channels when the tile is 64 columns wide;
    * correlation, small kernels at stride 1: the same 7-column tiles, every column prefetched,
      weights re-read from L1 (bf16 3x3 at 56x56x144: 0.226 ms against 0.258 with 4 columns per
      thread, 0.275 with held weights; float32 0.41 against 0.49 ms with one column per
      thread); strided and phased correlations keep one column per thread and 16-byte vectors
      (at stride 2, 4 columns per thread made the bf16 3x3 forward pass slower, 0.23 against
      0.19 ms). In bfloat16 with an even number of channels the stride-1 tiles load channel
      pairs (:func:`_packs`), two pairs per thread, 64 channels per program: bf16 3x3 forward
      0.21 against 0.22 ms, input gradient 0.21 against 0.22, weight gradient 0.25-0.26 against
      0.30 (one pair per thread ran 0.28, 0.28 and 0.43; four pairs 0.30-0.32 and 0.64-0.67);
    * weight gradient at stride 1: the same 7-column tiles, with no prefetch for large kernels
      (bf16 7x7: 0.34 against 0.55 ms with one column per thread at 56x56x96, 0.19 against 0.34
      ms at 28x28x192; float32 0.37 against 0.66 ms). Prefetching one row ahead ran 0.46 ms: the
      kernel is at 255 registers (49 accumulators and 7 cotangent rows of 7 columns per
      channel), and the queued loads spilled. Small kernels prefetch one row (bf16 3x3: 0.30
      against 0.31 ms without, 0.37 with 4 columns per thread). At stride 2: 2 values per
      thread for large kernels (8 columns by 32 channels on 4 warps, 1.3x faster than 16 by 32
      on 8), 4 for small ones;
    * never unrolled: unrolling the row loop by the rows in flight makes a 7x7 loop body of
      thousands of instructions, which ran slower (and took minutes to compile). Unrolling the
      7-column weight gradient, which removes the moves that rotate its 7 cotangent rows (13% of
      its instructions), took over 2 minutes to compile and ran 0.35 against 0.34 ms at
      56x56x96 (0.17 against 0.19 at 28x28x192 with a row prefetched, 0.26 without).

    Rows are split only when the grid would otherwise be small.
    """
    ntaps = taps[0] * taps[1]
    small = jnp.dtype(dtype).itemsize <= 2
    block_c = _pow2_at_most(c, 32 if small else 16)
    vector, hold, span, packed = 0, False, 1, False
    # Large kernels, and stride-1 tiles of 7 columns: every source column of a row prefetched.
    prefetch_all = ntaps > 16 or (stride == 1 and phases == 1)
    # Rows of 7 consecutive columns per thread, two channels, 32 channels per program; for
    # small bfloat16 kernels, two channel pairs (packed), 64 channels per program.
    covered = (*_width_cover(out_hw[1]), _pow2_at_most(c, 32), 2, 2, False)
    if _packs(dtype, ntaps, c):
        covered = (*covered[:2], _pow2_at_most(c, 64), 4, 4, True)
    if kind == "correlate":
        block_w, per_thread, prefetch = _pow2_at_most(out_hw[1], 64), 8, 2
        if ntaps > 16:
            vector, hold = 2, True
            if stride == 1 and phases == 1:
                block_w, span, block_c, vector, per_thread, packed = covered
            elif block_w >= 64:
                block_c = _pow2_at_most(c, 16)
        elif stride == 1 and phases == 1:
            block_w, span, block_c, vector, per_thread, packed = covered
    elif stride == 1:
        block_w, span, block_c, vector, per_thread, packed = covered
        prefetch = 0 if ntaps > 25 else 1
    elif ntaps > 25:
        block_w, per_thread, prefetch = _pow2_at_most(out_hw[1], 8 if block_c == 32 else 16), 2, 4
    else:
        block_w, per_thread, prefetch = _pow2_at_most(out_hw[1], 32), 4, 4
    num_warps = max(1, min(8, block_w * block_c // (32 * per_thread)))
    programs = n * -(-out_hw[1] // (block_w * span)) * -(-c // block_c) * phases
    base = Tiling(block_w, block_c, 0, num_warps, prefetch, 1, vector, hold, False, span,
                  prefetch_all, packed)
    if kind == "weight_grad" and programs >= 4 * TARGET_PROGRAMS:
        return dataclasses.replace(base, images=programs // (2 * TARGET_PROGRAMS))
    tiles = max(1, min(-(-TARGET_PROGRAMS // programs), out_hw[0] // max(8, 2 * taps[0])))
    return dataclasses.replace(base, rows=-(-out_hw[0] // tiles))


# ---------------------------------------------------------------------------------------------
# Kernel helpers (shared by both kernels; all Python control flow is static)
# ---------------------------------------------------------------------------------------------


def _pallas():
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
                 span: int = 1, dtype=None):
        self.block_w, self.block_c = block_w, block_c
        # The 16-bit dtype of packed sources (channels, block_c and vector then count pairs).
        self.dtype = dtype
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

    def load(self, plgpu, ref, n, row, size_h: int, cols, n_ok=None):
        """The tile of ``ref[n, row, cols, ch]`` (in ``ref.dtype``), zero outside."""
        cc, col_ok = cols
        row_ok = (row >= 0) & (row < size_h)
        if n_ok is not None:
            row_ok = row_ok & n_ok
        mask = self.mask(row_ok, col_ok)
        zero = jnp.zeros((), ref.dtype)
        return plgpu.load(self.at(ref, n, row, cc), mask=mask, other=zero)

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
                lax.bitcast_convert_type(v.astype(self.dtype), jnp.uint16), jnp.uint32)
                for v in halves)
            plgpu.store(self.at(ref, n, row, cols), lo | lax.shift_left(hi, jnp.uint32(16)),
                        mask=mask)
        else:
            for h, v in enumerate(halves):
                plgpu.store(self.at(ref, n, row, cols, 2 * self.ch + h), v.astype(ref.dtype),
                            mask=mask)


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
    other shifts' loads hit the L1 cache. With only the centre shift prefetched, ``span - 1`` of
    ``span`` columns are fetched from device memory inside the loop: a bf16 7x7 kernel with
    ``span=7`` then stalled on them (long-scoreboard stalls: 4.35 of 6.06 cycles per
    instruction) and ran 0.56 ms instead of 0.24. Small kernels ran faster with the centre
    shift alone (``Tiling.prefetch_all=False``; bf16 3x3: 0.275 against 0.301 ms).
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


def _widen(v, dtype) -> tuple:
    """A loaded tile in float32, as a tuple: one tile, or for a packed ``uint32`` tile of a
    16-bit ``dtype`` (:func:`_pack`) the tiles of the pair's first and second channel."""
    if v.dtype != jnp.uint32:
        return (_f32(v),)
    if dtype == jnp.bfloat16:
        # The high half is a float32 as it is, once the low half is cleared.
        return (lax.bitcast_convert_type(lax.shift_left(v, jnp.uint32(16)), jnp.float32),
                lax.bitcast_convert_type(v & jnp.uint32(0xFFFF0000), jnp.float32))
    return tuple(lax.bitcast_convert_type(lax.convert_element_type(h, jnp.uint16), dtype)
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


# ---------------------------------------------------------------------------------------------
# Correlation kernel (forward pass and input gradient)
# ---------------------------------------------------------------------------------------------


def _correlate_kernel(src_ref, w_ref, out_ref, *, gh: AxisGeometry, gw: AxisGeometry,
                      n_images: int, channels: int, tiling: Tiling, grid_sizes, native: bool,
                      dtype):
    pl, plgpu = _pallas()
    bw, bc, th, depth, span = (tiling.block_w, tiling.block_c, tiling.rows, tiling.prefetch,
                               tiling.span)
    cb, ph, wt, rt, n = _split(pl.program_id(0), grid_sizes)
    ph_h, ph_w = ph // gw.phases, ph % gw.phases
    b_h, p_h, count_h = (_select(ph_h, v) for v in (gh.b, gh.p, gh.count))
    b_w, p_w, count_w = (_select(ph_w, v) for v in (gw.b, gw.p, gw.count))
    tile = _Tile(wt * bw * span, cb * bc, bw, bc, channels, tiling.vector, span, dtype)
    a, taps, live = gh.a, gh.taps, gh.live
    unroll = live if tiling.unroll else 1
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
            x = _widen(load(row, sh) if sh not in pre else pre[sh], dtype)
            for j, tw in pairs[sh]:
                for i in range(t // a + 1):
                    accs[i][j] = _fmas(accs[i][j], x, weight((t - a * i, tw)), native)
        return [tuple(r) for r in accs]

    zeros = (jnp.zeros(tile.shape, jnp.float32),) * w_ref.shape[2]
    blank = (zeros,) * span
    accs = [blank] * live
    for t in range(max(taps - a, 0)):  # prologue: rows of the first window read before q0
        accs = accumulate(accs, {}, t, row_of(q0, t))

    def prefetch(q):
        return tuple(tuple(load(row_of(q, t), sh) for sh in ahead) for t in new_taps)

    queue = tuple(prefetch(q0 + k) for k in range(depth))
    ocols = [gw.m * (tile.qx + j) + p_w for j in range(span)]
    ocols_ok = [tile.qx + j < count_w for j in range(span)]

    def body(i, carry):
        accs, queue = list(carry[0]), carry[1]
        for u in range(unroll):
            q = q0 + i * unroll + u
            if depth:
                ready, queue = queue[0], queue[1:] + (prefetch(q + depth),)
            for k, t in enumerate(new_taps):
                pre = dict(zip(ahead, ready[k])) if depth else {}
                accs = accumulate(accs, pre, t, row_of(q, t))
            orow = gh.m * q + p_h
            for j in range(span):
                tile.store(plgpu, out_ref, n, orow, ocols[j], accs[0][j],
                           tile.mask(q < q_end, ocols_ok[j]))
            accs = accs[1:] + [blank]
        return tuple(accs), queue

    lax.fori_loop(0, -(-th // unroll), body, (tuple(accs), queue))


def _rows(tiling: Tiling, count: int, live: int) -> int:
    """Rows per program: all, or the tiling's, rounded up to a multiple of the unroll factor."""
    rows = min(tiling.rows or count, count)
    if tiling.unroll:
        rows = -(-rows // live) * live
    return rows


def _correlate(src, wt, gh: AxisGeometry, gw: AxisGeometry, out_dtype, tiling: Tiling | None,
               interpret: bool):
    """``out[n, mh*q+ph, mw*r+pw, c] = sum src[n, ah*q+bh+i, aw*r+bw+j, c] * wt[phase, i*Tw+j, c]``."""
    pl, plgpu = _pallas()
    n, _, _, c = src.shape
    phases = gh.phases * gw.phases
    if tiling is None:
        tiling = default_tiling("correlate", n, (gh.max_count, gw.max_count), c, src.dtype,
                                (gh.taps, gw.taps), phases, gw.a)
    rows = _rows(tiling, gh.max_count, gh.live)
    tiling = dataclasses.replace(tiling, rows=rows)
    dtype, tiling, (src,) = _packed(tiling, src)
    halves = 2 if dtype else 1
    packed_out = halves == 2 and jnp.dtype(out_dtype) == dtype
    grid_sizes = (-(-c // halves // tiling.block_c), phases,
                  -(-gw.max_count // tiling.columns), -(-gh.max_count // rows), n)
    kernel = functools.partial(_correlate_kernel, gh=gh, gw=gw, n_images=n,
                               channels=c // halves, tiling=tiling, grid_sizes=grid_sizes,
                               native=not interpret, dtype=dtype)
    out_shape = jax.ShapeDtypeStruct(
        (n, gh.out_size, gw.out_size, c // 2 if packed_out else c),
        jnp.uint32 if packed_out else out_dtype)
    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(math.prod(grid_sizes),),
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=1),
        name="convnn_depthwise_correlate",
    )(src, _halves_last(wt, halves))
    return _unpack(out, out_dtype) if packed_out else out


def _packed(tiling: Tiling, *srcs):
    """``(dtype, tiling, srcs)`` for a kernel: with ``tiling.packed`` and sources of one 16-bit
    dtype and an even number of channels, that dtype, the tiling in channel pairs and the
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


# ---------------------------------------------------------------------------------------------
# Weight-gradient kernel
# ---------------------------------------------------------------------------------------------


def _weight_grad_kernel(x_ref, g_ref, part_ref, *, gh: AxisGeometry, gw: AxisGeometry,
                        n_images: int, channels: int, tiling: Tiling, grid_sizes, native: bool,
                        dtype):
    pl, plgpu = _pallas()
    bw, bc, th, depth, per, span = (tiling.block_w, tiling.block_c, tiling.rows,
                                    tiling.prefetch, tiling.images, tiling.span)
    cb, wt, rt, nb = _split(pl.program_id(0), grid_sizes)
    part = (nb * grid_sizes[2] + rt) * grid_sizes[1] + wt
    tile = _Tile(wt * bw * span, cb * bc, bw, bc, channels, tiling.vector, span, dtype)
    a, taps, live = gh.a, gh.taps, gh.live
    unroll = live if tiling.unroll else 1
    b_h, count_h = gh.b[0], gh.count[0]
    cols, pairs = _width_shifts(tile, gw, gw.b[0], span)
    shifts = len(cols)
    ahead = _ahead(shifts, tiling, gw.a)
    gcols = [(tile.qx + j, tile.qx + j < gw.count[0]) for j in range(span)]
    q0 = rt * th
    us = list(range(min(a, taps)))  # rows loaded per iteration: a*q + b + u
    halves = 2 if dtype else 1
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
                       if x is None else x, dtype)
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
            return tuple(tile.load(plgpu, g_ref, n, q, count_h, gc, n_ok) for gc in gcols)

        def load_x(q):
            return tuple(tuple(tile.load(plgpu, x_ref, n, a * q + b_h + u, gh.src_size,
                                         cols[sh], n_ok) for sh in ahead) for u in us)

        def prefetch(q):
            return (load_g(q), load_x(q))

        def body(k, carry):
            accs, gbuf, queue = carry
            gbuf = list(gbuf)
            for v in range(unroll):
                q = q0 + k * unroll + v
                if depth:
                    (g_raw, x_raws), queue = queue[0], queue[1:] + (prefetch(q + depth),)
                else:
                    g_raw, x_raws = load_g(q), None
                gbuf = [tuple(_widen(g, dtype) for g in g_raw)] + gbuf[:-1]
                for idx, u in enumerate(us):
                    pre = dict(zip(ahead, x_raws[idx])) if depth else {}
                    accs = pair(accs, gbuf, a * q + b_h + u, u, n, n_ok, pre, 0)
            return accs, tuple(gbuf), queue

        queue = tuple(prefetch(q0 + k) for k in range(depth))
        accs, gbuf, _ = lax.fori_loop(0, th // unroll, body, (accs, (blank,) * live, queue))
        gbuf = list(gbuf)
        for e in range(1, live):  # epilogue: rows after the tile, paired with its last rows
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


def _weight_grad(x, g, gh: AxisGeometry, gw: AxisGeometry, tiling: Tiling | None,
                 interpret: bool):
    """Per-tap sums ``sum_{n,q,r} x[n, a*q+b+i, a*r+b+j, c] * g[n, q, r, c]``: (Th, Tw, C) f32."""
    pl, plgpu = _pallas()
    n, _, _, c = x.shape
    if tiling is None:
        tiling = default_tiling("weight_grad", n, (gh.count[0], gw.count[0]), c, x.dtype,
                                (gh.taps, gw.taps), 1, gw.a)
    rows = _rows(tiling, gh.count[0], gh.live)
    images = max(1, min(tiling.images or 1, n))
    tiling = dataclasses.replace(tiling, rows=rows, images=images)
    dtype, tiling, (x, g) = _packed(tiling, x, g)
    halves = 2 if dtype else 1
    grid_sizes = (-(-c // halves // tiling.block_c), -(-gw.count[0] // tiling.columns),
                  -(-gh.count[0] // rows), -(-n // images))
    parts = grid_sizes[1] * grid_sizes[2] * grid_sizes[3]
    kernel = functools.partial(_weight_grad_kernel, gh=gh, gw=gw, n_images=n,
                               channels=c // halves, tiling=tiling, grid_sizes=grid_sizes,
                               native=not interpret, dtype=dtype)
    part = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((parts, gh.taps * gw.taps, c), jnp.float32),
        grid=(math.prod(grid_sizes),),
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=1),
        name="convnn_depthwise_weight_grad",
    )(x, g)
    return jnp.sum(part, axis=0).reshape(gh.taps, gw.taps, c)


# ---------------------------------------------------------------------------------------------
# The three operations on a ConvSpec
# ---------------------------------------------------------------------------------------------


def _interpret(interpret: bool | None) -> bool:
    if interpret is not None:
        return interpret
    return bool(INTERPRET)


def _geometries(x_shape, w_shape, spec: ConvSpec):
    return [forward_geometry(x_shape[1 + i], w_shape[1 + i], spec.stride[i], *spec.padding[i])
            for i in range(2)]


def _taps_first(w, flip: bool):
    """(C, KH, KW, 1) weight -> (1, KH*KW, C) float32 correlation taps."""
    w = w[..., 0].astype(jnp.float32)
    if flip:
        w = w[:, ::-1, ::-1]
    c, kh, kw = w.shape
    return jnp.transpose(w, (1, 2, 0)).reshape(1, kh * kw, c)


def forward(x, w, spec: ConvSpec, *, tiling: Tiling | None = None,
            interpret: bool | None = None) -> jax.Array:
    """The depthwise convolution of ``spec`` (no custom gradient; see :func:`depthwise`)."""
    gh, gw = _geometries(x.shape, w.shape, spec)
    out_dtype = jnp.dtype(spec.preferred_element_type or x.dtype)
    return _correlate(x, _taps_first(w, spec.flip), gh, gw, out_dtype, tiling,
                      _interpret(interpret))


def input_grad(g, w, x_shape, x_dtype, spec: ConvSpec, *, tiling: Tiling | None = None,
               interpret: bool | None = None) -> jax.Array:
    """The gradient with respect to the input of :func:`forward`, given the cotangent ``g``."""
    (gh, taps_h), (gw, taps_w) = (
        input_grad_geometry(x_shape[1 + i], w.shape[1 + i], spec.stride[i], *spec.padding[i])
        for i in range(2))
    kh, kw = w.shape[1], w.shape[2]
    # Gather table: (phase, sub-kernel tap) -> flat kernel tap, or kh*kw for a zero tap.
    table = np.full((gh.phases * gw.phases, gh.taps * gw.taps), kh * kw, np.int32)
    for ph in range(gh.phases):
        for pw in range(gw.phases):
            for i, th in enumerate(taps_h[ph]):
                for j, tw in enumerate(taps_w[pw]):
                    if th >= 0 and tw >= 0:
                        table[ph * gw.phases + pw, i * gw.taps + j] = th * kw + tw
    taps = _taps_first(w, spec.flip)[0]
    taps = jnp.concatenate([taps, jnp.zeros((1, taps.shape[1]), jnp.float32)], axis=0)
    wt = taps[table]  # (phases, Th*Tw, C)
    return _correlate(g, wt, gh, gw, jnp.dtype(x_dtype), tiling, _interpret(interpret))


def weight_grad(x, g, w_shape, w_dtype, spec: ConvSpec, *, tiling: Tiling | None = None,
                interpret: bool | None = None) -> jax.Array:
    """The gradient with respect to the weight ``(C, KH, KW, 1)`` of :func:`forward`."""
    gh, gw = _geometries(x.shape, w_shape, spec)
    dw = _weight_grad(x, g, gh, gw, tiling, _interpret(interpret))  # (KH, KW, C)
    dw = jnp.transpose(dw, (2, 0, 1))
    if spec.flip:
        dw = dw[:, ::-1, ::-1]
    return dw[..., None].astype(w_dtype)


def depthwise(x, w, spec: ConvSpec, interpret: bool | None = None, backward: str = "pallas",
              forward: str = "pallas"):
    """Depthwise 2-D convolution with the Pallas kernels and a custom derivative.

    Args:
      x: ``(N, H, W, C)``.
      w: ``(C, KH, KW, 1)``.
      spec: a configuration for which :func:`supports` holds.
      interpret: run in Pallas interpret mode (``None``: :data:`INTERPRET`).
      backward: ``"pallas"``: both gradients with the Pallas kernels (a ``jax.custom_vjp``:
        reverse mode of first order only). ``"mixed"``: the same, with the input gradient from
        the Pallas kernel and the weight gradient from XLA. ``"xla"``: a ``jax.custom_jvp``
        whose tangent is XLA's convolution, so that reverse mode runs XLA's gradient, and
        forward mode and higher orders work as for the ``"xla"`` strategy.
      forward: ``"pallas"``: the Pallas forward kernel. ``"xla"``: XLA's convolution, with the
        gradients ``backward`` names (with ``backward="xla"`` too, plain XLA).

    Returns:
      ``(N, H_out, W_out, C)`` in ``spec.preferred_element_type`` or ``x.dtype``.
    """
    if forward not in ("pallas", "xla"):
        raise ValueError(f"forward must be 'pallas' or 'xla', got {forward!r}")
    if backward not in ("pallas", "mixed", "xla"):
        raise ValueError(f"backward must be 'pallas', 'mixed' or 'xla', got {backward!r}")
    if backward == "xla":
        if forward == "xla":
            return conv_xla(x, w, spec)
        return _depthwise_xla_tangent(x, w, spec, interpret)
    return _depthwise_pallas_vjp(x, w, spec, interpret, backward == "mixed", forward == "xla")


def _primal(x, w, spec, interpret, xla_forward):
    if xla_forward:
        return conv_xla(x, w, spec)
    return forward(x, w, spec, interpret=interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _depthwise_pallas_vjp(x, w, spec, interpret, xla_weight_grad, xla_forward):
    return _primal(x, w, spec, interpret, xla_forward)


def _depthwise_fwd(x, w, spec, interpret, xla_weight_grad, xla_forward):
    return _primal(x, w, spec, interpret, xla_forward), (x, w)


def _depthwise_bwd(spec, interpret, xla_weight_grad, xla_forward, res, g):
    x, w = res
    dx = input_grad(g, w, x.shape, x.dtype, spec, interpret=interpret)
    if xla_weight_grad:
        # The convolution is linear in the weight: its transpose is XLA's weight gradient.
        (dw,) = jax.linear_transpose(lambda v: conv_xla(x, v, spec), w)(g)
    else:
        dw = weight_grad(x, g, w.shape, w.dtype, spec, interpret=interpret)
    return dx, dw


_depthwise_pallas_vjp.defvjp(_depthwise_fwd, _depthwise_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _depthwise_xla_tangent(x, w, spec, interpret):
    return forward(x, w, spec, interpret=interpret)


def _depthwise_jvp(spec, interpret, primals, tangents):
    from jax.custom_derivatives import SymbolicZero

    (x, w), (dx, dw) = primals, tangents
    # The primal through the custom_jvp function itself, so that differentiating this rule
    # (second order) uses the rule again instead of differentiating the Pallas kernel.
    out = _depthwise_xla_tangent(x, w, spec, interpret)
    # The convolution is bilinear: d(x * w) = dx * w + x * dw (zero tangents are skipped).
    terms = [conv_xla(a, b, spec) for a, b, t in ((dx, w, dx), (x, dw, dw))
             if not isinstance(t, SymbolicZero)]
    if not terms:
        return out, SymbolicZero(jax.core.get_aval(out).to_tangent_aval())
    return out, functools.reduce(jnp.add, terms)


_depthwise_xla_tangent.defjvp(_depthwise_jvp, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------------
# The strategy
# ---------------------------------------------------------------------------------------------


def _on_gpu() -> bool:
    """Whether JAX's default backend is an NVIDIA GPU (the kernels issue PTX: not ROCm)."""
    from convnn._lowering._policy import detect_backend

    try:
        return detect_backend() == "cuda"
    except RuntimeError:  # pragma: no cover
        return False


def supports(spec: ConvSpec, x_shape: Sequence[int], dtype: Any,
             w_shape: Sequence[int] | None = None) -> bool:
    """Whether the Pallas kernels compute this convolution (else the caller falls back).

    Requires a 2-D depthwise convolution with channel multiplier 1 (``groups == C_in == C_out``),
    kernel sizes up to :data:`MAX_KERNEL`, strides in :data:`STRIDES`, no kernel or input
    dilation, a float32, bfloat16 or float16 input with no wider output requested than float32,
    and an NVIDIA GPU as JAX's default backend (or :data:`INTERPRET` set).
    """
    if not (INTERPRET or _on_gpu()):
        return False
    if spec.ndim != 2 or len(x_shape) != 4:
        return False
    c = x_shape[-1]
    if spec.groups != c or c < 1:
        return False
    if w_shape is not None:
        if len(w_shape) != 4 or w_shape[0] != c or w_shape[-1] != 1:
            return False
        if any(k < 1 or k > MAX_KERNEL for k in w_shape[1:3]):
            return False
        padded = [x_shape[1 + i] + sum(spec.padding[i]) for i in range(2)]
        if any(p < k for p, k in zip(padded, w_shape[1:3])):
            return False
    if any(s not in STRIDES for s in spec.stride):
        return False
    if any(d != 1 for d in spec.kernel_dilation) or any(d != 1 for d in spec.input_dilation):
        return False
    if any(lo < 0 or hi < 0 for lo, hi in spec.padding):
        return False
    if jnp.dtype(dtype) not in DTYPES:
        return False
    pet = spec.preferred_element_type
    if pet is not None and jnp.dtype(pet) not in (jnp.dtype(dtype), jnp.dtype(jnp.float32)):
        return False
    return True


def backward_kernels(spec: ConvSpec, dtype, kernel: Sequence[int]) -> str:
    """Which gradients the ``"pallas"`` strategy uses: ``"pallas"`` or ``"mixed"``.

    ``kernel`` is ``(KH, KW)``. Measured on an H100 (docs/benchmarks.md, batch 256): the Pallas
    input gradient is faster than XLA's for 7x7 kernels in every dtype. The weight gradient:

    * float32: XLA's (cuDNN's) takes 9-11 ms for 7x7 kernels, the Pallas kernel 0.20-0.37 ms;
      for 3x3 kernels XLA's is faster (0.36 against 0.43 ms at 56x56x144), so kernels of at
      most 9 taps take ``"mixed"``;
    * 16-bit types: since the weight gradient computes 7 columns per thread
      (:func:`default_tiling`) the Pallas kernel is faster for 7x7 kernels at stride 1 (bf16
      0.34 against 0.41 ms at 56x56x96, 0.19 against 0.22 ms at 28x28x192). For bf16 3x3
      kernels at stride 1 with an even number of channels, channel pairs loaded as one word
      (``Tiling.packed``) made it faster too (0.26 against 0.28 ms at 56x56x144, 0.11 against
      0.14 at 112x112x32, 0.05 against 0.07 at 14x14x384, equal at 28x28x192); other 3x3
      kernels are slower (float16 0.26 against 0.19 ms; bf16 at stride 2, 0.24 against 0.22).
      For 5x5 kernels both choices ran about even at stride 1 (bf16 0.30 against 0.31 ms at
      28x28x240 and 0.25 against 0.23 at 14x14x672, float16 0.29 against 0.30, both Pallas
      second), and the Pallas weight gradient was slower at stride 2 (bf16 0.30 against 0.22).

    ``"mixed"`` takes the Pallas input gradient and XLA's weight gradient.
    """
    taps = math.prod(kernel)
    if jnp.dtype(dtype) == jnp.float32:
        return "pallas" if taps > 9 else "mixed"
    if all(s == 1 for s in spec.stride) and (
            taps >= LARGE_TAPS or _packs(dtype, taps, spec.groups)):
        return "pallas"
    return "mixed"


def forward_kernel(spec: ConvSpec, kernel: Sequence[int]) -> str:
    """Which forward pass the ``"pallas"`` strategy runs: ``"pallas"`` or ``"xla"``.

    XLA's (cuDNN's) at stride 2 in both axes for kernels of fewer than :data:`LARGE_TAPS` taps,
    whose Pallas forward pass was no faster on an H100 (docs/benchmarks.md, batch 256: 3x3
    0.66x to 1.07x in bfloat16, float16 and float32; 5x5 1.00x in bfloat16, 0.85x in float32),
    while their Pallas input gradient was 2.0x to 3.3x faster than XLA's; the Pallas kernel
    everywhere else.
    """
    if math.prod(kernel) < LARGE_TAPS and all(s == 2 for s in spec.stride):
        return "xla"
    return "pallas"


def conv_pallas(x: jax.Array, w: jax.Array, spec: ConvSpec) -> jax.Array:
    """The ``"pallas"`` strategy: :func:`depthwise` where :func:`supports` holds, else ``"xla"``.

    Each pass is the Pallas kernel or XLA's, whichever was measured faster
    (:func:`forward_kernel`, :func:`backward_kernels`).
    """
    if not supports(spec, x.shape, x.dtype, w.shape) or w.dtype != x.dtype:
        return conv_xla(x, w, spec)
    kernel = w.shape[1:3]
    return depthwise(x, w, spec, None, backward_kernels(spec, x.dtype, kernel),
                     forward_kernel(spec, kernel))


def supports_config(cfg) -> bool:
    """:func:`supports` for a :class:`~convnn._lowering._policy.ConvConfig`."""
    return supports(cfg.spec, cfg.x_shape, cfg.dtype, cfg.w_shape)


#: Smallest kernel (taps) for which "auto" picks the Pallas kernels on an NVIDIA GPU (5x5).
CUDA_MIN_TAPS = 25

#: Kernels of at least this many taps (7x7) run the Pallas forward pass at stride 2 too, and
#: both Pallas gradients in 16-bit types at stride 1.
LARGE_TAPS = 49


#: Narrowest output for which "auto" picks the Pallas kernels for small bfloat16 kernels.
CUDA_MIN_PACKED_WIDTH = 14


def preferred_on_cuda(cfg) -> bool:
    """Whether ``"auto"`` picks ``"pallas"`` for ``cfg`` on an NVIDIA GPU.

    From ``benchmarks/bench_depthwise_gpu.py`` and ``profile_depthwise_gpu.py`` on an H100
    (docs/benchmarks.md):

    * kernels of at least :data:`CUDA_MIN_TAPS` taps (5x5, 7x7, and 9x9, which was checked
      for correctness only): at stride 1 the Pallas forward pass is 2.4-2.5x (7x7) and
      1.7-1.9x (5x5) faster than XLA's in bfloat16, 4.7-4.8x and 2.0x in float32, 1.2x for
      float16 5x5, and dx+dw 1.1x to 1.9x; at stride 2, where 5x5 kernels keep XLA's forward
      pass (:func:`forward_kernel`), dx+dw is 1.7x (bfloat16) and 2.0x (float32) faster;
    * 3x3 kernels at stride 2 in both axes, with no wider output than the input: XLA's forward
      pass, then the Pallas input gradient and XLA's weight gradient, which made dx+dw 1.5x to
      1.7x faster than XLA's in bfloat16, float16 and float32;
    * bfloat16 kernels of at most 9 taps at stride 1, with an even number of channels, a
      bfloat16 output and outputs at least :data:`CUDA_MIN_PACKED_WIDTH` wide (the packed
      tiles of :func:`default_tiling`): 3x3 kernels at widths 14 to 112 ran the forward pass
      0.98x to 1.26x, the input gradient 1.05x to 1.28x and the weight gradient 1.01x to 1.54x
      as fast as XLA's; at width 7 the forward pass ran 0.63x;
    * other kernels stay on XLA: float32 3x3 at stride 1 is slower (0.91x forward), float16
      was slower in every pass; kernels of 10 to 24 taps (3x5, 4x4) were not timed.
    """
    if not supports_config(cfg):
        return False
    kernel = tuple(cfg.w_shape[1:-1])
    taps = math.prod(kernel)
    if taps >= CUDA_MIN_TAPS:
        return True
    spec = cfg.spec
    out_dtype = jnp.dtype(spec.preferred_element_type or cfg.dtype)
    if kernel == (3, 3) and all(s == 2 for s in spec.stride):
        return out_dtype == jnp.dtype(cfg.dtype)
    out_w = cfg.x_shape[2] + sum(spec.padding[1]) - cfg.w_shape[2] + 1
    return (all(s == 1 for s in spec.stride) and _packs(cfg.dtype, taps, cfg.x_shape[-1])
            and out_dtype == jnp.bfloat16 and out_w >= CUDA_MIN_PACKED_WIDTH)
