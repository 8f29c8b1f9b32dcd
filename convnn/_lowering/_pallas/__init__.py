"""The ``"pallas"`` strategy: depthwise 2-D convolution kernels for NVIDIA GPUs.

Depthwise convolutions (one input channel per group, channel multiplier 1) do a handful of
multiply-adds per byte they move, so they are bound by memory bandwidth and by the arithmetic
issue rate, not by matrix units. The kernels are written with Pallas (Triton lowering) for
channels-last ``(N, H, W, C)`` data, read each input once from device memory, and accumulate in
float32 whatever the input dtype (float32, bfloat16, float16), with fused multiply-adds issued as
inline PTX.

The package, one job per module:

* :mod:`.geometry`: which source rows each output row reads, per axis and phase;
* :mod:`.tiling`: :class:`Tiling` (block sizes) and :func:`default_tiling` (its rules, each with
  the measurement behind it in docs/performance.md);
* :mod:`.correlate`: the forward-pass and input-gradient kernel;
* :mod:`.weight_grad`: the weight-gradient kernel;
* :mod:`.ops`: :func:`forward`, :func:`input_grad`, :func:`weight_grad`, and :func:`depthwise`
  with its custom derivatives, each with an explicit ``interpret`` parameter;
* :mod:`.reference`: :func:`depthwise_reference`, the definition in plain JAX.

Which pass runs which kernel, and when ``"auto"`` takes this strategy, is the CUDA policy's
choice (``convnn/_lowering/_cuda.py``). Limits: 2-D, channel multiplier 1, kernels up to 9x9,
strides 1 and 2, no dilation (:func:`supports`), on an NVIDIA GPU (the kernels issue PTX).
"""

from __future__ import annotations

from convnn._lowering._pallas.geometry import (
    AxisGeometry,
    forward_geometry,
    input_grad_geometry,
)
from convnn._lowering._pallas.ops import (
    DTYPES,
    KERNELS,
    MAX_KERNEL,
    STRIDES,
    depthwise,
    depthwise_with_xla_derivatives,
    forward,
    input_grad,
    supports,
    weight_grad,
)
from convnn._lowering._pallas.reference import depthwise_reference
from convnn._lowering._pallas.tiling import LARGE_TAPS, Tiling, default_tiling, packs

__all__ = [
    "DTYPES",
    "KERNELS",
    "LARGE_TAPS",
    "MAX_KERNEL",
    "STRIDES",
    "AxisGeometry",
    "Tiling",
    "default_tiling",
    "depthwise",
    "depthwise_reference",
    "depthwise_with_xla_derivatives",
    "forward",
    "forward_geometry",
    "input_grad",
    "input_grad_geometry",
    "packs",
    "supports",
    "weight_grad",
]
