"""The strategy registry, the per-backend policy tables behind ``"auto"``, and backend detection.

Three tables, each one entry per item, so that a new strategy or backend is one line:

* :data:`STRATEGIES`: name -> :class:`Strategy` (the function, and which configurations it can
  compute; a forced strategy falls back to ``"xla"`` outside them);
* :data:`BACKENDS`: backend name -> policy, a function from a :class:`ConvConfig` to a strategy
  name (what ``"auto"`` does there);
* :data:`PLATFORMS`: JAX platform name -> backend name, or a function of the device that returns
  one (for platforms whose name alone is ambiguous, such as ``"gpu"``).

The thresholds below come from ``benchmarks/bench_conv.py``; ``docs/performance.md`` gives the
measurements behind each rule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np

from convnn._lowering._decomposed import conv_decomposed
from convnn._lowering._mixed import conv_mixed
from convnn._lowering import _pallas
from convnn._lowering._spec import ConvSpec
from convnn._lowering._xla import conv_xla

__all__ = [
    "ConvConfig",
    "Strategy",
    "STRATEGIES",
    "BACKENDS",
    "PLATFORMS",
    "choose",
    "detect_backend",
]


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    """What a policy sees of one convolution: static shapes, the compute dtype and the spec."""

    x_shape: tuple[int, ...]  # (N, *spatial, C_in), after cropping
    w_shape: tuple[int, ...]  # (C_out, *kernel, C_in // groups)
    dtype: Any
    spec: ConvSpec

    @property
    def ndim(self) -> int:
        return self.spec.ndim

    @property
    def groups(self) -> int:
        return self.spec.groups

    @property
    def c_in(self) -> int:
        return self.x_shape[-1]

    @property
    def c_out(self) -> int:
        return self.w_shape[0]

    @property
    def group_in(self) -> int:
        """Input channels per group."""
        return self.w_shape[-1]

    @property
    def group_out(self) -> int:
        """Output channels per group."""
        return self.w_shape[0] // self.spec.groups

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.w_shape[1:-1])

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)

    @property
    def depthwise(self) -> bool:
        """One input channel per group and more than one group (any channel multiplier)."""
        return self.group_in == 1 and self.groups > 1

    @property
    def input_dilated(self) -> bool:
        return any(d > 1 for d in self.spec.input_dilation)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A way to compute a convolution: ``fn(x, w, spec) -> out`` and what it supports."""

    name: str
    fn: Callable[[jax.Array, jax.Array, ConvSpec], jax.Array]
    supports: Callable[[ConvConfig], bool] = lambda cfg: True
    doc: str = ""


STRATEGIES: dict[str, Strategy] = {
    "xla": Strategy("xla", conv_xla, doc="one lax.conv_general_dilated"),
    "decomposed": Strategy(
        "decomposed", conv_decomposed,
        doc="pad, slice and matmul / multiply-add; no convolution primitive, forward or backward",
    ),
    "pallas": Strategy(
        "pallas", _pallas.conv_pallas, _pallas.supports_config,
        doc="Pallas GPU kernels for 2-D depthwise convolutions (NVIDIA GPUs; _pallas.py)",
    ),
    "mixed": Strategy(
        "mixed", conv_mixed,
        doc="one lax.conv_general_dilated forward; derivatives through the decomposed form",
    ),
}

#: The strategy a forced or chosen strategy falls back to where it does not apply.
FALLBACK = "xla"

# ---------------------------------------------------------------------------------------------
# Policies. Each maps a ConvConfig to a strategy name; BACKENDS holds one per backend.
# ---------------------------------------------------------------------------------------------

#: CPU: grouped convolutions with at most this many input channels per group run decomposed
#: forward too; wider groups keep XLA's forward pass (its convolution kernels win there).
CPU_DECOMPOSED_MAX_GROUP_CHANNELS = 4

#: CPU: dense convolutions with at least this many input channels take "mixed" (XLA's forward,
#: the decomposed per-tap matmuls, 1.4-1.6x faster, for the gradients).
CPU_MIXED_MIN_DENSE_CHANNELS = 256


def policy_xla(cfg: ConvConfig) -> str:
    """Everything through XLA's convolution (backends where it is strong or unmeasured)."""
    return "xla"


def policy_cpu(cfg: ConvConfig) -> str:
    """XLA CPU: depthwise, narrow groups, pointwise and wide dense convolutions decomposed.

    Measured on a 2-core x86 CPU (docs/performance.md): XLA's CPU convolution runs feature
    groups through a slow generic loop (a depthwise 3x3 forward pass is 10-20x slower than the
    fused multiply-add) and differentiates every grouped convolution 10-100x slower than the
    decomposed form; for groups of more than a few channels its forward pass is still the
    fastest, so those take "mixed". Dense convolutions: 1x1 kernels are one matmul (forward as
    fast or faster, backward 2-5x faster); with 256 or more input channels the per-tap matmuls
    differentiate 1.4-1.6x faster while the forward pass is a toss-up, so they take "mixed";
    narrower dense convolutions and input-dilated (transposed) dense ones stay on XLA.
    """
    if cfg.groups > 1:
        return "decomposed" if cfg.group_in <= CPU_DECOMPOSED_MAX_GROUP_CHANNELS else "mixed"
    if cfg.input_dilated:
        return "xla"
    if cfg.taps == 1:
        return "decomposed"
    if cfg.c_in >= CPU_MIXED_MIN_DENSE_CHANNELS:
        return "mixed"
    return "xla"


#: CUDA: depthwise float32 convolutions with at least this many kernel taps take "mixed".
CUDA_MIXED_MIN_TAPS = 49


def policy_cuda(cfg: ConvConfig) -> str:
    """NVIDIA GPUs: cuDNN through XLA, except depthwise convolutions that the Pallas kernels
    compute faster (:func:`_pallas.preferred_on_cuda`), and the gradients of large float32
    depthwise kernels that they do not cover.

    Measured on an H100 (batch 256, docs/benchmarks.md): XLA matches or beats PyTorch on every
    dense, grouped and depthwise layer forward, and the decomposed form loses everywhere but in
    the float32 gradients of 7x7 depthwise convolutions, where cuDNN's are slow (forward +
    backward 1.04x to 1.9x faster with "mixed": XLA forward, decomposed gradients).
    """
    if cfg.depthwise and cfg.taps >= CUDA_MIXED_MIN_TAPS and \
            np.dtype(cfg.spec.preferred_element_type or cfg.dtype) == np.float32:
        return "pallas" if _pallas.preferred_on_cuda(cfg) else "mixed"
    if _pallas.preferred_on_cuda(cfg):  # depthwise 5x5+, 3x3 at stride 2, packed bf16 3x3
        return "pallas"
    return "xla"


BACKENDS: dict[str, Callable[[ConvConfig], str]] = {
    "cpu": policy_cpu,
    "cuda": policy_cuda,
    "rocm": policy_xla,
    "tpu": policy_xla,
}

#: Policy for a platform that has no entry in BACKENDS.
DEFAULT_POLICY = policy_xla


def _gpu_backend(device) -> str:
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


PLATFORMS: dict[str, str | Callable[[Any], str]] = {
    "cpu": "cpu",
    "cuda": "cuda",
    "rocm": "rocm",
    "tpu": "tpu",
    "gpu": _gpu_backend,
}

_DETECTED: dict[str, str | None] = {}


def detect_backend(device: jax.Device | None = None) -> str | None:
    """The backend name (a key of BACKENDS) for ``device`` or JAX's default backend.

    Returns ``None`` for a platform that has no entry in :data:`PLATFORMS`.
    """
    platform = device.platform if device is not None else jax.default_backend()
    if platform not in _DETECTED:
        entry = PLATFORMS.get(platform)
        if callable(entry):
            entry = entry(device if device is not None else jax.devices(platform)[0])
        _DETECTED[platform] = entry
    return _DETECTED[platform]


def choose(cfg: ConvConfig, name: str = "auto", backend: str | None = None,
           device: jax.Device | None = None) -> str:
    """The strategy that computes ``cfg``.

    Args:
      cfg: the convolution.
      name: ``"auto"`` or a strategy name (a key of :data:`STRATEGIES`).
      backend: the backend whose policy ``"auto"`` applies; ``None`` detects it from ``device``
        (or JAX's default backend).
      device: where the convolution runs, if known.

    Returns:
      A key of :data:`STRATEGIES` whose ``supports(cfg)`` holds.
    """
    if name == "auto":
        if backend is None:
            backend = detect_backend(device)
        name = BACKENDS.get(backend, DEFAULT_POLICY)(cfg)
    strategy = STRATEGIES[name]
    return name if strategy.supports(cfg) else FALLBACK


# Apple GPU plugins (jax-metal, jax-mps, metaljax, metal-pjrt): their backends, platforms and the
# float32 strategies for devices without bfloat16; the routing tables are in _apple.py.
from convnn._lowering import _apple  # noqa: E402

_apple.install(STRATEGIES, BACKENDS, PLATFORMS)
