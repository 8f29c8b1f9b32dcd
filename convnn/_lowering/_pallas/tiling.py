"""How the Pallas kernels are tiled: the :class:`Tiling` block sizes and :func:`default_tiling`.

Each rule of :func:`default_tiling` names the measurement it comes from: the H100 tables in
``docs/benchmarks.md`` ("Pallas depthwise kernels on an NVIDIA H100") and the tiling notes in
``docs/performance.md`` ("The Pallas tilings"), both from ``benchmarks/bench_depthwise_gpu.py``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

__all__ = ["Tiling", "default_tiling", "packs", "LARGE_TAPS", "TARGET_PROGRAMS"]

#: Kernels of at least this many taps (7x7) count as large: they hold their weights in
#: registers, and in 16-bit types at stride 1 take both Pallas gradients (the CUDA policy).
LARGE_TAPS = 49

#: Programs a launch aims for (a few per multiprocessor on an H100's 132).
TARGET_PROGRAMS = 512


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tiling:
    """How a kernel is tiled (the block sizes and warps are powers of two).

    Attributes:
      block_w: output columns per program (times ``span``).
      block_c: channels per program.
      rows: output rows per program (0: all).
      num_warps: warps per program.
      prefetch: loop iterations whose input rows are loaded ahead (0: none).
      images: images per program (weight gradient only).
      vector: channels each thread holds side by side (0: as many as a 16-byte load allows).
        Fewer channels per thread means fewer weight registers (``taps * vector``).
      hold_weights: correlation only: load every tap's weights once, before the row loop, and
        keep them in registers (else they are re-read from the L1 cache in every iteration).
      span: consecutive output columns each thread computes (register blocking along the
        width): the program's columns are ``span`` interleaved tiles of ``block_w``, and the
        ``span`` outputs of a thread share their input loads (``a*(span-1) + taps`` loads per
        input row instead of ``span*taps``).
      prefetch_all: load every source column of the tile ahead (``a * span`` shifts of a row),
        not only the centre shift's columns.
      packed: 16-bit sources with an even number of channels: load each pair of neighbouring
        channels as one 32-bit word (the array viewed as ``uint32``), which halves the load
        instructions and the registers a loaded row takes; ``block_c`` and ``vector`` still
        count channels. Ignored for other sources.
      unrolled_edges: the rows before a program's first output row (correlation) or after its
        last cotangent row (weight gradient) as unrolled code with only the multiply-adds that
        count (``True``), or as ``live - 1`` more loop iterations whose extra results are
        masked (``False``): a smaller kernel, which traces and compiles faster, for the wasted
        multiply-adds.

    Example:
      >>> Tiling(block_w=8, block_c=32, span=7).columns
      56
    """

    block_w: int
    block_c: int
    rows: int = 0
    num_warps: int = 4
    prefetch: int = 2
    images: int = 1
    vector: int = 0
    hold_weights: bool = False
    span: int = 1
    prefetch_all: bool = True
    packed: bool = False
    unrolled_edges: bool = False

    @property
    def columns(self) -> int:
        """Output columns per program."""
        return self.block_w * self.span


def packs(dtype, taps: int, c: int) -> bool:
    """Whether the stride-1 tiles load channel pairs (:attr:`Tiling.packed`): bfloat16 kernels
    of at most 9 taps with an even number of channels. docs/benchmarks.md, "bfloat16 3x3:
    channel pairs loaded as one word" (7x7 kernels ran 3-5% slower packed; float16 stays
    unpacked, untimed)."""
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


def default_tiling(kind: str, n: int, out_hw: tuple[int, int], c: int, dtype,
                   taps: tuple[int, int] = (3, 3), phases: int = 1, stride: int = 1) -> Tiling:
    """The tiling used unless one is given.

    Args:
      kind: ``"correlate"`` (forward pass and input gradient) or ``"weight_grad"``.
      n: images.
      out_hw: the output (or cotangent) rows and columns.
      c: channels.
      dtype: the source dtype.
      taps: the kernel's taps per axis.
      phases: input-gradient phases (1 for the forward pass).
      stride: the width stride of the correlation.

    Returns:
      A :class:`Tiling`. The rules, each with the measurement behind it in docs/performance.md
      ("The Pallas tilings"):

      1. stride-1 correlations and weight gradients: 7-column rows per thread
         (:func:`_width_cover`), two channels per thread and 32 per program, every column
         prefetched; in bfloat16 with an even channel count two channel pairs per thread, 64
         channels per program (:func:`packs`);
      2. correlation, more than 16 taps: two channels per thread, weights held in registers;
         strided and phased ones keep one column per thread, 16 channels at 64 columns;
      3. weight gradient at stride 1: no prefetch above 25 taps (the prefetched row spilled),
         one row otherwise; at stride 2, 2 values per thread above 25 taps, 4 below;
      4. rows are split only when the grid would otherwise be small (:data:`TARGET_PROGRAMS`);
      5. the rows before a tile's first output row and after its last cotangent row run as
         masked loop iterations (:attr:`Tiling.unrolled_edges` ``False``): the three kernels
         of a ConvNeXt-T 7x7 layer compile in 1.4-6 s instead of 23-111 s, and run 0-27%
         longer.

    Example:
      >>> default_tiling("correlate", 256, (56, 56), 96, jnp.bfloat16, (7, 7)).columns
      56
    """
    ntaps = taps[0] * taps[1]
    small = jnp.dtype(dtype).itemsize <= 2
    block_c = _pow2_at_most(c, 32 if small else 16)
    vector, hold, span, packed = 0, False, 1, False
    # Large kernels, and stride-1 tiles of 7 columns: every source column of a row prefetched.
    prefetch_all = ntaps > 16 or (stride == 1 and phases == 1)
    # Rule 1: rows of 7 consecutive columns per thread, two channels, 32 channels per program;
    # for small bfloat16 kernels, two channel pairs (packed), 64 channels per program.
    covered = (*_width_cover(out_hw[1]), _pow2_at_most(c, 32), 2, 2, False)
    if packs(dtype, ntaps, c):
        covered = (*covered[:2], _pow2_at_most(c, 64), 4, 4, True)
    if kind == "correlate":
        block_w, per_thread, prefetch = _pow2_at_most(out_hw[1], 64), 8, 2
        if ntaps > 16:  # rule 2
            vector, hold = 2, True
            if stride == 1 and phases == 1:
                block_w, span, block_c, vector, per_thread, packed = covered
            elif block_w >= 64:
                block_c = _pow2_at_most(c, 16)
        elif stride == 1 and phases == 1:
            block_w, span, block_c, vector, per_thread, packed = covered
    elif stride == 1:  # rule 3
        block_w, span, block_c, vector, per_thread, packed = covered
        prefetch = 0 if ntaps > 25 else 1
    elif ntaps > 25:
        block_w, per_thread, prefetch = _pow2_at_most(out_hw[1], 8 if block_c == 32 else 16), 2, 4
    else:
        block_w, per_thread, prefetch = _pow2_at_most(out_hw[1], 32), 4, 4
    num_warps = max(1, min(8, block_w * block_c // (32 * per_thread)))
    programs = n * -(-out_hw[1] // (block_w * span)) * -(-c // block_c) * phases
    base = Tiling(block_w=block_w, block_c=block_c, num_warps=num_warps, prefetch=prefetch,
                  vector=vector, hold_weights=hold, span=span, prefetch_all=prefetch_all,
                  packed=packed)
    # Rule 4.
    if kind == "weight_grad" and programs >= 4 * TARGET_PROGRAMS:
        return dataclasses.replace(base, images=programs // (2 * TARGET_PROGRAMS))
    tiles = max(1, min(-(-TARGET_PROGRAMS // programs), out_hw[0] // max(8, 2 * taps[0])))
    return dataclasses.replace(base, rows=-(-out_hw[0] // tiles))
