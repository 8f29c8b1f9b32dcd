"""The ``"auto"`` policy on CPU (XLA:CPU), as a table of rules: the first that catches a
convolution decides. The measurements behind each rule: docs/performance.md, "The "auto"
policy", and docs/benchmarks.md, "CPU".

XLA's CPU convolution runs feature groups through a slow generic loop and differentiates every
grouped convolution much slower than the decomposed form, so grouped convolutions leave it.
Each rule that moves a convolution off XLA has a cost bound: the decomposed form unrolls one
slice (and one multiply-add or matmul) per kernel tap, in the forward pass and in each gradient,
so its program, compile time and memory grow with the taps; past the bound XLA's convolution is
the safer pick (``benchmarks/bench_policy_cpu.py`` measures the worst auto/xla ratio over a grid
of shapes, docs/performance.md "Cost bounds").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from convnn._lowering._config import ConvConfig, Decision, Target

__all__ = [
    "IM2COL_CHANNELS",
    "MAX_DECOMPOSED_TAPS",
    "MAX_DENSE_MIXED_TAPS",
    "MAX_DEPTHWISE_TAPS",
    "MAX_GROUPED_TAPS",
    "MAX_IM2COL_TAPS",
    "RULES",
    "Rule",
    "policy",
]

#: Grouped convolutions with at most this many input channels per group run decomposed forward
#: too; wider groups keep XLA's forward pass (its convolution kernels win there).
DECOMPOSED_MAX_GROUP_CHANNELS = 4

#: Dense convolutions with at least this many input channels take "mixed" (XLA's forward, the
#: decomposed per-tap matmuls, 1.4-1.6x faster, for the gradients).
MIXED_MIN_DENSE_CHANNELS = 256

#: Cost bound of the depthwise rule (multiply-add form): at most this many kernel taps.
MAX_DEPTHWISE_TAPS = 125

#: Cost bound of the narrow-group rule (per-tap matmuls): at most this many kernel taps.
MAX_DECOMPOSED_TAPS = 125

#: Cost bound of the grouped rule that takes "mixed" (XLA forward, per-tap matmul gradients).
MAX_GROUPED_TAPS = 125

#: Dense 2-D convolutions with this many input channels (2 or 3: the models' stems on RGB
#: images) and at most :data:`MAX_IM2COL_TAPS` taps take "im2col": one matmul over the gathered
#: patches. Forward + weight gradient, 2-core CPU: 3x3 stems 1.3-3.3x faster than XLA, 4x4
#: kernels 2.2-18x (XLA's weight gradient of even kernels is slow); XLA wins with one input
#: channel (1.6-3.5x) and with four at 3x3 (1.8x), so those stay (docs/benchmarks.md, "The stem
#: convolutions").
IM2COL_CHANNELS = (2, 3)

#: Cost bound of the stem rule: the patches are up to ``taps`` times the input (4x4 at most;
#: ResNet's 7x7 stem ran its forward pass 3x slower as im2col than XLA's).
MAX_IM2COL_TAPS = 16

#: Cost bound of the wide dense rule ("mixed"): measured faster for 3x3 kernels, while a 5x5
#: kernel at 256 channels ran 1.8x slower than XLA (benchmarks/bench_policy_cpu.py).
MAX_DENSE_MIXED_TAPS = 9


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the CPU table: ``catches(cfg)`` -> ``strategy``; ``what`` says when."""

    what: str
    catches: Callable[[ConvConfig], bool]
    strategy: str


RULES: tuple[Rule, ...] = (
    Rule(f"depthwise (one input channel per group), at most {MAX_DEPTHWISE_TAPS} taps",
         lambda c: c.groups > 1 and c.group_in == 1 and c.taps <= MAX_DEPTHWISE_TAPS,
         "decomposed"),
    Rule(f"groups of at most {DECOMPOSED_MAX_GROUP_CHANNELS} input channels, at most "
         f"{MAX_DECOMPOSED_TAPS} taps",
         lambda c: (c.groups > 1 and c.group_in <= DECOMPOSED_MAX_GROUP_CHANNELS
                    and c.taps <= MAX_DECOMPOSED_TAPS),
         "decomposed"),
    Rule(f"groups of more than {DECOMPOSED_MAX_GROUP_CHANNELS} input channels, at most "
         f"{MAX_GROUPED_TAPS} taps",
         lambda c: (c.groups > 1 and c.group_in > DECOMPOSED_MAX_GROUP_CHANNELS
                    and c.taps <= MAX_GROUPED_TAPS),
         "mixed"),
    Rule("grouped, above the tap bound of the rules above", lambda c: c.groups > 1, "xla"),
    Rule("dense, input-dilated (transposed)", lambda c: c.input_dilated, "xla"),
    Rule(f"dense 2-D, 2 or 3 input channels, at most {MAX_IM2COL_TAPS} taps (stems)",
         lambda c: c.ndim == 2 and c.c_in in IM2COL_CHANNELS and c.taps <= MAX_IM2COL_TAPS,
         "im2col"),
    Rule("dense 1x1 (one matmul)", lambda c: c.taps == 1, "decomposed"),
    Rule(f"dense, at least {MIXED_MIN_DENSE_CHANNELS} input channels, at most "
         f"{MAX_DENSE_MIXED_TAPS} taps",
         lambda c: c.c_in >= MIXED_MIN_DENSE_CHANNELS and c.taps <= MAX_DENSE_MIXED_TAPS,
         "mixed"),
    Rule("other dense convolutions", lambda c: True, "xla"),
)


def policy(cfg: ConvConfig, target: Target | None = None) -> Decision:
    """The CPU policy: the first rule of :data:`RULES` that catches ``cfg``.

    Example:
      >>> from convnn._lowering._spec import ConvSpec
      >>> spec = ConvSpec((1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 8, False)
      >>> policy(ConvConfig((1, 8, 8, 8), (8, 3, 3, 1), "float32", spec)).strategies
      ('decomposed',)
    """
    for rule in RULES:
        if rule.catches(cfg):
            return Decision((rule.strategy,), f"cpu: {rule.what} -> {rule.strategy!r}")
    return Decision(("xla",), "cpu: no rule -> 'xla'")  # not reached: the last rule catches all
