"""The strategy registry: name -> :class:`Strategy`, filled by explicit :func:`register` calls.

A strategy is a way to compute a convolution, ``fn(x, w, spec) -> out``, with its answer to
"can you compute this configuration on this device?" (``can_compute``) and a description of the
kernels each pass runs (``passes``, what ``convnn.explain`` reports). Strategies that only a
policy may pick (the Pallas kernel combinations, the float32 forms for devices without
bfloat16) are registered with ``selectable=False``: ``convnn.lowering`` refuses their names.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax

from convnn._lowering import _decomposed, _pallas
from convnn._lowering._config import ConvConfig, Target
from convnn._lowering._float32 import (
    conv_decomposed_float32,
    conv_decomposed_rank4,
    conv_decomposed_rank4_float32,
    conv_xla_float32,
)
from convnn._lowering._mixed import conv_mixed
from convnn._lowering._spec import ConvSpec
from convnn._lowering._xla import conv_xla, xla_form

__all__ = [
    "FALLBACK",
    "STRATEGIES",
    "Passes",
    "Strategy",
    "pallas_name",
    "register",
    "selectable",
    "unregister",
]


@dataclasses.dataclass(frozen=True)
class Passes:
    """What computes each pass of a convolution: the forward pass and the two gradients."""

    forward: str
    input_grad: str
    weight_grad: str


def _anywhere(cfg: ConvConfig, target: Target) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A way to compute a convolution.

    Attributes:
      name: the registry key.
      fn: ``fn(x, w, spec) -> out``.
      passes: ``ConvConfig -> Passes``, the kernels of each pass.
      can_compute: ``(ConvConfig, Target) -> bool``; where it is false, the choice falls back.
      selectable: whether ``convnn.lowering(name)`` accepts the name (``False``: internal).
      fuses_prologue: whether ``fn`` takes a keyword ``prologue`` (a
        :class:`~convnn._lowering._prologue.Prologue`) and applies it itself; else the
        prologue is applied to the input before ``fn`` runs.
    """

    name: str
    fn: Callable[[jax.Array, jax.Array, ConvSpec], jax.Array]
    passes: Callable[[ConvConfig], Passes]
    can_compute: Callable[[ConvConfig, Target], bool] = _anywhere
    selectable: bool = True
    fuses_prologue: bool = False


#: name -> Strategy.
STRATEGIES: dict[str, Strategy] = {}

#: The strategy a forced or chosen strategy falls back to where it cannot compute a convolution.
FALLBACK = "xla"


def register(strategy: Strategy) -> Strategy:
    """Adds ``strategy`` to :data:`STRATEGIES` (a name is registered once)."""
    if strategy.name in STRATEGIES:
        raise ValueError(f"[lowering] a strategy named {strategy.name!r} is registered already.")
    STRATEGIES[strategy.name] = strategy
    return strategy


def unregister(name: str) -> None:
    """Removes a strategy added with :func:`register` (the built-in ones stay)."""
    if name in BUILTIN:
        raise ValueError(f"[lowering] the built-in strategy {name!r} cannot be removed.")
    STRATEGIES.pop(name, None)


def selectable() -> tuple[str, ...]:
    """The names ``convnn.lowering`` accepts besides ``"auto"``."""
    return tuple(name for name, s in STRATEGIES.items() if s.selectable)


# ---------------------------------------------------------------------------------------------
# What each strategy runs
# ---------------------------------------------------------------------------------------------

_XLA_CONV = "lax.conv_general_dilated"


def _xla_passes(cfg: ConvConfig) -> Passes:
    transpose = f"{_XLA_CONV} (XLA's transpose)"
    form = xla_form(cfg.x_shape, cfg.w_shape, cfg.spec, jax.default_backend())
    if form == "input":
        return Passes(_XLA_CONV, "the decomposed form's transpose (XLA's CPU transpose of this "
                      "strided convolution aborts)", transpose)
    if form == "weight":
        return Passes(_XLA_CONV, transpose, f"{_XLA_CONV} over the explicitly dilated input")
    if form == "explicit":
        explicit = f"lax.pad (input dilation and padding), then {_XLA_CONV}"
        return Passes(explicit, f"{explicit} (XLA's transpose)", f"{explicit} (XLA's transpose)")
    return Passes(_XLA_CONV, transpose, transpose)


def _decomposed_passes(cfg: ConvConfig) -> Passes:
    if cfg.group_in == 1:
        fused = f"multiply-add over {cfg.taps} taps (one fused loop)"
        looped = (f"a loop over {cfg.taps} taps (lax.fori_loop)" if _decomposed.LOOP_TRANSPOSES
                  else fused)
        return Passes(fused, fused, looped)
    matmul = f"dot_general per tap over {cfg.taps} taps (taps concatenated up to 16 MiB)"
    return Passes(matmul, matmul, matmul)


def _im2col_passes(cfg: ConvConfig) -> Passes:
    if cfg.group_in == 1:
        return _decomposed_passes(cfg)
    return Passes(f"one dot_general over the {cfg.taps} taps' patches, gathered in one array "
                  "(im2col)", "one dot_general (the cotangent times the weight), its patches "
                  "padded back and added", "one dot_general (the patches, transposed, times the "
                  "cotangent)")


def _mixed_passes(cfg: ConvConfig) -> Passes:
    d = _decomposed_passes(cfg)
    return Passes(_XLA_CONV, d.input_grad, d.weight_grad)


def _float32_passes(inner: Callable[[ConvConfig], Passes]) -> Callable[[ConvConfig], Passes]:
    def passes(cfg: ConvConfig) -> Passes:
        p = inner(cfg)
        return Passes(*(f"{k}, in float32" for k in (p.forward, p.input_grad, p.weight_grad)))

    return passes


def _rank4_passes(inner: Callable[[ConvConfig], Passes]) -> Callable[[ConvConfig], Passes]:
    def passes(cfg: ConvConfig) -> Passes:
        p = inner(cfg)
        return Passes(*(f"{k}, reductions over at most 4 axes"
                        for k in (p.forward, p.input_grad, p.weight_grad)))

    return passes


def _on_cuda(cfg: ConvConfig, target: Target) -> bool:
    """The Pallas kernels run on NVIDIA GPUs (they issue PTX), for the shapes they cover."""
    return target.backend == "cuda" and _pallas.supports(cfg.spec, cfg.x_shape, cfg.dtype,
                                                         cfg.w_shape)


_PALLAS_FWD = "Pallas kernel convnn_depthwise_correlate"
_PALLAS_DW = "Pallas kernel convnn_depthwise_weight_grad, then a fixed-order sum"


def pallas_name(forward_pass: str, weight_gradient: str) -> str:
    """The registry name of the Pallas strategy that runs these kernels (``"pallas"`` or
    ``"xla"`` each; the input gradient is always the Pallas kernel)."""
    parts = [f"{what}={kernel}" for what, kernel in (("forward", forward_pass),
                                                     ("weight_grad", weight_gradient))
             if kernel != "pallas"]
    return "pallas" if not parts else f"pallas[{','.join(parts)}]"


def _pallas_strategy(forward_pass: str, weight_gradient: str) -> Strategy:
    def passes(cfg: ConvConfig) -> Passes:
        phases = "; stride 2 as phases" if any(s > 1 for s in cfg.spec.stride) else ""
        return Passes(
            _PALLAS_FWD if forward_pass == "pallas" else _XLA_CONV,
            f"{_PALLAS_FWD} (the cotangent with the flipped kernel{phases})",
            _PALLAS_DW if weight_gradient == "pallas" else f"{_XLA_CONV} (XLA's transpose)",
        )

    return Strategy(
        pallas_name(forward_pass, weight_gradient),
        functools.partial(_pallas.depthwise, forward_pass=forward_pass,
                          weight_gradient=weight_gradient),
        passes,
        _on_cuda,
        selectable=(forward_pass, weight_gradient) == ("pallas", "pallas"),
        fuses_prologue=True,
    )


register(Strategy("xla", conv_xla, _xla_passes))
register(Strategy("decomposed", _decomposed.conv_decomposed,
                  _decomposed_passes))
register(Strategy("im2col", functools.partial(_decomposed.conv_decomposed, patch_bytes=None),
                  _im2col_passes))
register(Strategy("mixed", conv_mixed, _mixed_passes))
for _forward in _pallas.KERNELS:
    for _weight in _pallas.KERNELS:
        register(_pallas_strategy(_forward, _weight))
register(Strategy("xla-float32", conv_xla_float32, _float32_passes(_xla_passes),
                  selectable=False))
register(Strategy("decomposed-float32", conv_decomposed_float32,
                  _float32_passes(_decomposed_passes), selectable=False))
register(Strategy("decomposed-rank4", conv_decomposed_rank4,
                  _rank4_passes(_decomposed_passes), selectable=False))
register(Strategy("decomposed-rank4-float32", conv_decomposed_rank4_float32,
                  _float32_passes(_rank4_passes(_decomposed_passes)), selectable=False))

#: The names registered by this module.
BUILTIN = frozenset(STRATEGIES)
