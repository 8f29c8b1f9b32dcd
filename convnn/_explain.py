"""``convnn.explain``: which strategy and kernels compute a call, and which rule decided."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax

from convnn import _lowering
from convnn._lowering import ConvConfig, _registry
from convnn._lowering._detect import target_for, target_of

__all__ = ["Explanation", "explain"]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What computes one convolution: the strategy, each pass's kernels, and the deciding rule.

    Attributes:
      strategy: the strategy that runs (a registry name: ``"xla"``, ``"decomposed"``,
        ``"im2col"``, ``"mixed"``, ``"pallas"`` or one of its kernel combinations such as
        ``"pallas[forward=xla,weight_grad=xla]"``, or an internal float32 form).
      selection: the lowering in force (``"auto"`` or a forced strategy name).
      backend: the backend whose policy applied (``"cpu"``, ``"cuda"``, ``"jax-metal"``, ...).
      device: the backend the convolution runs on, as the strategies were asked.
      rule: the rule that decided, in words, with any fallback.
      forward: what computes the forward pass.
      input_grad: what computes the gradient with respect to the input.
      weight_grad: what computes the gradient with respect to the weight.
      config: the convolution the strategies see (input shape after cropping, weight shape,
        compute dtype, spec).

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((4, 3, 3, 1))
      >>> print(convnn.explain(convnn.conv2d, x, w, groups=4, backend="tpu"))
      strategy:    xla
      rule:        tpu: every convolution -> 'xla'
      forward:     lax.conv_general_dilated
      input grad:  lax.conv_general_dilated (XLA's transpose)
      weight grad: lax.conv_general_dilated (XLA's transpose)
    """

    strategy: str
    selection: str
    backend: str | None
    device: str | None
    rule: str
    forward: str
    input_grad: str
    weight_grad: str
    config: ConvConfig

    def __str__(self) -> str:
        return "\n".join([
            f"strategy:    {self.strategy}",
            f"rule:        {self.rule}",
            f"forward:     {self.forward}",
            f"input grad:  {self.input_grad}",
            f"weight grad: {self.weight_grad}",
        ])


# --- ADAPTER: the one place explain depends on the front end ---------------------------------
def _convolutions(fn: Callable, x: Any, w: Any, kwargs: dict) -> list[_lowering.Resolved]:
    """The (post-crop input shape, weight shape, compute dtype, spec, device) of each
    convolution ``fn(x, w, **kwargs)`` makes.

    Found by tracing the call abstractly (``jax.eval_shape``: nothing is computed or compiled)
    while ``_lowering.recording()`` collects what the front end passes to ``_lowering.resolve``;
    the validation errors of the call propagate. A front end with a plan function can compute
    the same tuple from its plan instead.
    """
    with _lowering.recording() as calls:
        jax.eval_shape(functools.partial(fn, **kwargs), x, w)
    return list(calls)
# --- end of ADAPTER ---------------------------------------------------------------------------


def explain(fn: Callable, x: Any, w: Any, *, backend: str | None = None,
            **kwargs: Any) -> Explanation:
    """Says which strategy and kernels compute ``fn(x, w, **kwargs)``, and which rule decided.

    Nothing is computed: the call is traced abstractly under the lowering in force
    (``convnn.lowering``), and its convolution put to the same choice the call would make.

    Args:
      fn: a convnn convolution (``convnn.conv2d``, ``convnn.conv_transpose3d``, ...) or any
        function of ``(x, w, **kwargs)`` that makes exactly one.
      x: the input ``(N, *spatial, C_in)`` (or unbatched): an array or a
        ``jax.ShapeDtypeStruct``.
      w: the weight ``(C_out, *kernel, C_in // groups)``, likewise.
      backend: keyword-only; ``None`` (default): the device the call runs on (and the policy
        ``convnn.lowering`` selects). A backend name (``"cpu"``, ``"cuda"``, ``"jax-metal"``,
        ...) describes a device of that backend instead, on any machine: its policy applies and
        the strategies are asked whether they can compute the call there.
      **kwargs: the call's other arguments (``stride``, ``padding``, ``groups``, ...).

    Returns:
      An :class:`Explanation` (``print`` it for a table).

    Raises:
      ValueError: if ``fn`` makes no convolution or several (a call whose padding crops away the
        whole input computes zeros without one), or for an unknown ``backend``; and whatever the
        call itself raises for bad arguments.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x, w = jnp.ones((8, 56, 56, 96), jnp.float32), jnp.ones((96, 7, 7, 1), jnp.float32)
      >>> e = convnn.explain(convnn.conv2d, x, w, padding=3, groups=96, backend="cpu")
      >>> e.strategy, e.weight_grad
      ('decomposed', 'a loop over 49 taps (lax.fori_loop)')
      >>> convnn.explain(convnn.conv2d, x, w, padding=3, groups=96, backend="cuda").strategy
      'pallas'
    """
    if backend is not None and backend not in _lowering.BACKENDS:
        raise ValueError(f"[explain] unknown backend {backend!r}; valid backends: "
                         f"{list(_lowering.BACKENDS)} (or None for the device in use).")
    calls = _convolutions(fn, x, w, kwargs)
    if len(calls) != 1:
        raise ValueError(f"[explain] the call made {len(calls)} convolutions, expected one "
                         "(a call whose padding crops away the whole input computes zeros "
                         "without a convolution).")
    call = calls[0]
    cfg = ConvConfig(call.x_shape, call.w_shape, call.dtype, call.spec)
    state = _lowering.current()
    if backend is not None:
        device_target = policy_target = target_for(backend)
    else:
        device_target = target_of(call.device)
        policy_target = device_target if state.backend is None else target_for(state.backend)
    choice = _lowering.decide(cfg, state.name, policy_target, device_target)
    passes = _registry.STRATEGIES[choice.strategy].passes(cfg)
    return Explanation(
        strategy=choice.strategy,
        selection=state.name,
        backend=policy_target.backend,
        device=device_target.backend,
        rule=choice.rule,
        forward=passes.forward,
        input_grad=passes.input_grad,
        weight_grad=passes.weight_grad,
        config=cfg,
    )
