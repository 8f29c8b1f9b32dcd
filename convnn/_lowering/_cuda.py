"""The ``"auto"`` policy on NVIDIA GPUs, and which kernel the ``"pallas"`` strategy runs for
each pass.

Measured on an H100 (batch 256; docs/benchmarks.md, "GPU: NVIDIA H100" and "Pallas depthwise
kernels on an NVIDIA H100"; the rules with their numbers: docs/performance.md, "The "auto"
policy"): XLA (cuDNN) matches or beats PyTorch on every dense, grouped and depthwise layer's
forward pass, and the decomposed form loses everywhere but in the float32 gradients of 7x7
depthwise convolutions. The Pallas depthwise kernels win for:

* kernels of at least :data:`MIN_TAPS` taps (5x5, 7x7, 9x9);
* 3x3 kernels at stride 2 in both axes, with no wider output than the input (XLA's forward
  pass, the Pallas input gradient and XLA's weight gradient);
* bfloat16 kernels of at most 9 taps at stride 1 with an even number of channels, a bfloat16
  output and outputs at least :data:`MIN_PACKED_WIDTH` wide (the packed tiles);

and float32 depthwise kernels of at least :data:`MIXED_MIN_TAPS` taps that the Pallas kernels
do not cover take ``"mixed"`` (XLA forward, decomposed gradients); dense 2-D convolutions of a
few input channels (the 3x3 stems on RGB images) take ``"im2col"``. The numbers behind each rule:
docs/performance.md, "The "auto" policy".
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from convnn._lowering._config import ConvConfig, Decision, Target
from convnn._lowering._pallas import LARGE_TAPS, packs
from convnn._lowering._registry import pallas_name

__all__ = ["forward_kernel", "pallas_kernels", "policy", "pallas_rule", "weight_kernel"]

#: Smallest kernel (taps) for which "auto" picks the Pallas kernels (5x5).
MIN_TAPS = 25

#: Narrowest output for which "auto" picks the Pallas kernels for small bfloat16 kernels.
MIN_PACKED_WIDTH = 14

#: Dense 2-D convolutions with at most this many input channels and at most
#: :data:`IM2COL_MAX_TAPS` taps (the 3x3 stems of MobileNetV2 and EfficientNet-B0, on RGB images)
#: take "im2col": cuDNN has no tensor-core kernel for so few channels. Measured only in those
#: models' training steps (docs/benchmarks.md, "The stem convolutions"); ResNet's 7x7 stem (472 MB
#: of patches at batch 128) and ConvNeXt's 4x4 one stay on XLA, unmeasured.
IM2COL_MAX_CHANNELS = 4
IM2COL_MAX_TAPS = 9

#: Depthwise float32 convolutions with at least this many kernel taps take "mixed" where the
#: Pallas kernels do not apply.
MIXED_MIN_TAPS = 49


def pallas_rule(cfg: ConvConfig) -> str | None:
    """Which rule makes ``"auto"`` pick ``"pallas"`` for ``cfg`` (``None``: none does).

    Only the rules: whether the kernels can compute ``cfg`` on the device is the strategy's
    ``can_compute``, asked afterwards.
    """
    kernel = cfg.kernel
    taps = math.prod(kernel)
    if cfg.ndim != 2 or not cfg.depthwise or cfg.group_out != 1:
        return None
    if taps >= MIN_TAPS:
        return f"depthwise 2-D, at least {MIN_TAPS} taps"
    spec = cfg.spec
    out_dtype = cfg.out_dtype
    if kernel == (3, 3) and all(s == 2 for s in spec.stride):
        if out_dtype == jnp.dtype(cfg.dtype):
            return "depthwise 2-D 3x3 at stride 2, no wider output"
        return None
    out_w = cfg.x_shape[2] + sum(spec.padding[1]) - cfg.w_shape[2] + 1
    if (all(s == 1 for s in spec.stride) and packs(cfg.dtype, taps, cfg.x_shape[-1])
            and out_dtype == jnp.bfloat16 and out_w >= MIN_PACKED_WIDTH):
        return (f"depthwise 2-D bfloat16, at most 9 taps, stride 1, even channels, "
                f"output at least {MIN_PACKED_WIDTH} wide")
    return None


def forward_kernel(cfg: ConvConfig) -> str:
    """Which forward pass the ``"pallas"`` strategy runs: ``"pallas"`` or ``"xla"``.

    XLA's at stride 2 in both axes for kernels of fewer than ``LARGE_TAPS`` taps, whose Pallas
    forward pass was no faster on an H100 while their Pallas input gradient was (docs/
    benchmarks.md, "5x5 kernels and stride 2: each pass from whichever is faster"); the Pallas
    kernel everywhere else.
    """
    if math.prod(cfg.kernel) < LARGE_TAPS and all(s == 2 for s in cfg.spec.stride):
        return "xla"
    return "pallas"


def weight_kernel(cfg: ConvConfig) -> str:
    """Which weight gradient the ``"pallas"`` strategy runs: ``"pallas"`` or ``"xla"`` (the
    input gradient is always the Pallas kernel).

    float32: the Pallas kernel above 9 taps (cuDNN's 7x7 weight gradient is tens of times
    slower; for 3x3 kernels XLA's is faster). 16-bit types: the Pallas kernel at stride 1 for
    kernels of at least ``LARGE_TAPS`` taps and for the packed bfloat16 tiles; XLA's otherwise
    (docs/benchmarks.md, "Pallas depthwise kernels on an NVIDIA H100" and "bfloat16 3x3: channel
    pairs loaded as one word").
    """
    taps = math.prod(cfg.kernel)
    if jnp.dtype(cfg.dtype) == jnp.float32:
        return "pallas" if taps > 9 else "xla"
    if all(s == 1 for s in cfg.spec.stride) and (
            taps >= LARGE_TAPS or packs(cfg.dtype, taps, cfg.spec.groups)):
        return "pallas"
    return "xla"


def pallas_kernels(cfg: ConvConfig) -> tuple[str, str]:
    """The registry name of the ``"pallas"`` strategy's kernels for ``cfg``, and why."""
    forward, weight = forward_kernel(cfg), weight_kernel(cfg)
    why = f"cuda kernels: forward {forward}, weight gradient {weight}, input gradient pallas"
    return pallas_name(forward, weight), why


def policy(cfg: ConvConfig, target: Target | None = None) -> Decision:
    """The CUDA policy (any :class:`Target`: the rules depend on ``cfg`` alone).

    Example:
      >>> from convnn._lowering._spec import ConvSpec
      >>> spec = ConvSpec((1, 1), ((3, 3), (3, 3)), (1, 1), (1, 1), 96, False)
      >>> cfg = ConvConfig((256, 56, 56, 96), (96, 7, 7, 1), jnp.bfloat16, spec)
      >>> policy(cfg).strategies
      ('pallas', 'xla')
    """
    large_f32 = (cfg.depthwise and cfg.taps >= MIXED_MIN_TAPS
                 and np.dtype(cfg.out_dtype) == np.float32)
    mixed_rule = f"cuda: depthwise float32, at least {MIXED_MIN_TAPS} taps -> 'mixed'"
    rule = pallas_rule(cfg)
    if rule is not None:
        return Decision(("pallas", "mixed" if large_f32 else "xla"), f"cuda: {rule} -> 'pallas'")
    if large_f32:
        return Decision(("mixed",), mixed_rule)
    if (cfg.ndim == 2 and cfg.groups == 1 and cfg.c_in <= IM2COL_MAX_CHANNELS
            and not cfg.input_dilated and 1 < cfg.taps <= IM2COL_MAX_TAPS):
        return Decision(("im2col",), f"cuda: dense 2-D, at most {IM2COL_MAX_CHANNELS} input "
                        f"channels and {IM2COL_MAX_TAPS} taps (stems) -> 'im2col'")
    return Decision(("xla",), "cuda: everything else -> 'xla'")
