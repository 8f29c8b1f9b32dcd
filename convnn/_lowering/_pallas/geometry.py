"""The geometry of a depthwise correlation along one axis: which source rows each output reads.

The forward pass and both gradients of a 2-D depthwise convolution are correlations
``out[m*q + p] = sum_t src[a*q + b + t] * w[t]`` along each spatial axis; the input gradient of a
strided convolution splits into ``stride`` phases of stride-1 correlations.
"""

from __future__ import annotations

import dataclasses

from convnn._lowering._spec import output_size

__all__ = ["AxisGeometry", "forward_geometry", "input_grad_geometry"]


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
    out = output_size(size, lo, hi, 1, kernel, 1, stride)
    return AxisGeometry(kernel, stride, 1, (-lo,), (0,), (out,), size, out)


def input_grad_geometry(
    size: int, kernel: int, stride: int, lo: int, hi: int
) -> tuple[AxisGeometry, list[tuple[int, ...]]]:
    """The input gradient along one axis, as ``stride`` phases of a stride-1 correlation.

    Returns the geometry and, per phase, the kernel tap that each sub-kernel tap reads (``-1``:
    a zero tap, padding the sub-kernels to a common size).
    """
    out = output_size(size, lo, hi, 1, kernel, 1, stride)
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
