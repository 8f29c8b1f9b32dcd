"""The policy table behind ``"auto"`` (backend name -> policy) and :func:`decide`, which turns a
selection into the strategy that runs and the rule that chose it.

A policy maps a :class:`ConvConfig` and a :class:`Target` to a :class:`Decision`: strategy names
in order of preference and the rule, in words. :func:`decide` takes the first of them that can
compute the convolution on the device it runs on, then lets :data:`REFINE` pick the kernels of
a strategy that has several (the Pallas strategy's, per pass), and falls back to ``"xla"``.
The rules live with their backend: ``_cpu.py``, ``_cuda.py``, ``_apple.py`` (data tables).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from convnn._lowering import _apple, _cpu, _cuda
from convnn._lowering._config import ConvConfig, Decision, Target
from convnn._lowering._registry import FALLBACK, STRATEGIES

__all__ = ["BACKENDS", "REFINE", "Choice", "decide", "policy_for", "policy_xla"]


def policy_xla(cfg: ConvConfig, target: Target | None = None) -> Decision:
    """Everything through XLA's convolution (backends where it is strong or unmeasured)."""
    return Decision(("xla",), f"{getattr(target, 'backend', None)}: every convolution -> 'xla'")


#: backend name -> policy.
BACKENDS: dict[str, Callable[[ConvConfig, Target], Decision]] = {
    "cpu": _cpu.policy,
    "cuda": _cuda.policy,
    "rocm": policy_xla,
    "tpu": policy_xla,
    **{plugin: _apple.policy(plugin) for plugin in _apple.APPLE_BACKENDS},
}

def _refine_decomposed(cfg: ConvConfig, target: Target) -> tuple[str, str] | None:
    if target.backend in _apple.APPLE_BACKENDS:
        return _apple.on_apple(cfg, target)
    return None


#: strategy name -> ``(cfg, device) -> (registry name of the form that runs, why)`` or ``None``
#: (the strategy as it is), for strategies whose kernels are a policy's choice: the Pallas
#: kernels of each pass (CUDA), the rank-4 decomposed form (Apple plugins, for ``"im2col"`` too:
#: its patches of a 3-D convolution would have five axes).
REFINE: dict[str, Callable[[ConvConfig, Target], tuple[str, str] | None]] = {
    "pallas": lambda cfg, target: _cuda.pallas_kernels(cfg),
    "decomposed": _refine_decomposed,
    "im2col": _refine_decomposed,
}


def policy_for(backend: str | None) -> Callable[[ConvConfig, Target], Decision]:
    """The policy of ``backend`` (:func:`policy_xla` for a backend without one)."""
    return BACKENDS.get(backend, policy_xla)


@dataclasses.dataclass(frozen=True)
class Choice:
    """What :func:`decide` picked: the registry name that runs, and why (in words)."""

    strategy: str
    rule: str


def decide(cfg: ConvConfig, name: str, policy_target: Target, device_target: Target) -> Choice:
    """The strategy that computes ``cfg``.

    Args:
      cfg: the convolution.
      name: ``"auto"`` or a strategy name (a key of the registry).
      policy_target: whose ``"auto"`` policy applies (``convnn.lowering``'s ``backend``, else the
        device's).
      device_target: the device the convolution runs on: every strategy's ``can_compute`` is
        asked about it.

    Returns:
      A :class:`Choice` whose strategy can compute ``cfg`` on ``device_target``.
    """
    if name == "auto":
        decision = policy_for(policy_target.backend)(cfg, policy_target)
        candidates, rule = decision.strategies, decision.rule
    else:
        candidates, rule = (name,), f"forced: convnn.lowering({name!r})"
    for candidate in candidates:
        if STRATEGIES[candidate].can_compute(cfg, device_target):
            refined = REFINE[candidate](cfg, device_target) if candidate in REFINE else None
            if refined is not None:
                candidate, how = refined
                rule = f"{rule}; {how}"
            return Choice(candidate, rule)
        rule = f"{rule}; {candidate!r} cannot compute it on {device_target.backend}"
    return Choice(FALLBACK, f"{rule}; fallback {FALLBACK!r}")
