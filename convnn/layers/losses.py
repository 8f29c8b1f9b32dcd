"""MLX's loss functions (``mlx.nn.losses``) with MLX's signatures, defaults and reductions.

Every function takes ``reduction`` (``"none"``, ``"mean"`` or ``"sum"``) with MLX's default for
that loss, and uses MLX's formula, so values and gradients match MLX's to float rounding.
Inputs of different floating dtypes are promoted as MLX promotes them; integer targets of the
probability-style losses are cast to the inputs' dtype.

Example:
  >>> import jax.numpy as jnp
  >>> from convnn.layers import losses
  >>> logits = jnp.array([[2.0, -1.0], [0.0, 1.0]])
  >>> round(float(losses.cross_entropy(logits, jnp.array([0, 1]), reduction="mean")), 4)
  0.1809
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convnn import _args

__all__ = [
    "cross_entropy",
    "binary_cross_entropy",
    "l1_loss",
    "mse_loss",
    "nll_loss",
    "gaussian_nll_loss",
    "kl_div_loss",
    "smooth_l1_loss",
    "triplet_loss",
    "hinge_loss",
    "huber_loss",
    "log_cosh_loss",
    "cosine_similarity_loss",
    "margin_ranking_loss",
]

_REDUCTIONS = ("none", "mean", "sum")


def _reduce(loss: jax.Array, reduction: str, fn: str) -> jax.Array:
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    return loss


def _check_reduction(reduction: Any, fn: str) -> None:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"[{fn}] reduction must be one of {_REDUCTIONS}, got {reduction!r}.")


def _floats(fn: str, *arrays: Any) -> list[jax.Array]:
    """The arrays promoted to one floating dtype (integer and bool arrays take the floats'
    dtype); complex arrays are refused (casting would drop the imaginary part)."""
    arrays = [_args.as_array(a, "inputs", fn) for a in arrays]
    for a in arrays:
        if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)
                or a.dtype == jnp.bool_):
            raise TypeError(f"[{fn}] inputs must be real (floating, integer or bool), got "
                            f"{a.dtype}.")
    dtype = None
    for a in arrays:
        if jnp.issubdtype(a.dtype, jnp.floating):
            dtype = a.dtype if dtype is None else _args.promote_float(dtype, a.dtype)
    dtype = jnp.float32 if dtype is None else dtype
    return [a.astype(dtype) for a in arrays]


def _same_shape(fn: str, **arrays: jax.Array) -> None:
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} shape {shape}" for name, shape in shapes.items())
        raise ValueError(f"[{fn}] the shapes must match; got {listed}.")


def _broadcast(fn: str, **arrays: jax.Array) -> int:
    """Checks that the arrays broadcast together (as MLX's elementwise losses need); returns the
    number of axes of the result."""
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    try:
        return len(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        listed = ", ".join(f"{name} shape {shape}" for name, shape in shapes.items())
        raise ValueError(f"[{fn}] the shapes must broadcast together; got {listed}.") from None


def _axis(fn: str, axis: Any, ndim: int, shapes: str) -> int:
    axis = _args.as_int(axis, "axis", fn)
    if not -ndim <= axis < ndim:
        raise ValueError(f"[{fn}] axis {axis} is out of range for {ndim} axes; got {shapes}.")
    return axis


def _apply_weights(loss: jax.Array, weights: Any, fn: str) -> jax.Array:
    if weights is None:
        return loss
    weights = _args.as_array(weights, "weights", fn)
    if weights.shape != loss.shape:
        raise ValueError(
            f"[{fn}] weights must have the loss's shape {tuple(loss.shape)}; got weights shape "
            f"{tuple(weights.shape)}."
        )
    loss, weights = _floats(fn, loss, weights)
    return loss * weights


def cross_entropy(
    logits: Any,
    targets: Any,
    weights: Any = None,
    axis: int = -1,
    label_smoothing: float = 0.0,
    reduction: str = "none",
) -> jax.Array:
    """Cross entropy of ``logits`` against class indices (one axis fewer) or probabilities (the
    same shape), with optional per-element ``weights`` and ``label_smoothing`` in [0, 1).

    Raises:
      ValueError: on mismatched shapes, ``label_smoothing`` outside [0, 1) or an unknown
        ``reduction``.
    """
    fn = "cross_entropy"
    _check_reduction(reduction, fn)
    smoothing = _args.check_real(label_smoothing, "label_smoothing", fn, expect="a float in [0, 1)")
    if not 0 <= smoothing < 1:
        raise ValueError(f"[{fn}] label_smoothing must be in [0, 1), got {label_smoothing!r}.")
    logits = _args.as_array(logits, "logits", fn)
    targets = _args.as_array(targets, "targets", fn)
    as_probs = targets.ndim == logits.ndim
    axis_ = axis % logits.ndim if logits.ndim else 0
    expected = logits.shape if as_probs else logits.shape[:axis_] + logits.shape[axis_ + 1 :]
    if tuple(targets.shape) != tuple(expected):
        raise ValueError(
            f"[{fn}] targets shape {tuple(targets.shape)} does not match logits shape "
            f"{tuple(logits.shape)} (class indices need the logits' shape without axis {axis})."
        )
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))
    if as_probs:
        logits, targets = _floats(fn, logits, targets)
        score = jnp.sum(logits * targets, axis=axis)
    else:
        if not jnp.issubdtype(targets.dtype, jnp.integer):
            raise TypeError(f"[{fn}] class-index targets must be integers, got {targets.dtype}.")
        score = jnp.take_along_axis(logits, jnp.expand_dims(targets, axis), axis).squeeze(axis)
    lse = jax.nn.logsumexp(logits, axis=axis)
    if smoothing > 0:
        loss = lse - (1 - smoothing) * score - jnp.mean(logits, axis=axis) * smoothing
    else:
        loss = lse - score
    return _reduce(_apply_weights(loss, weights, fn), reduction, fn)


def binary_cross_entropy(
    inputs: Any,
    targets: Any,
    weights: Any = None,
    with_logits: bool = True,
    reduction: str = "mean",
) -> jax.Array:
    """Binary cross entropy of logits (``with_logits=True``, the default) or probabilities
    (log-probabilities clipped at -100, as MLX and PyTorch do)."""
    fn = "binary_cross_entropy"
    _check_reduction(reduction, fn)
    inputs, targets = _floats(fn, inputs, targets)
    _same_shape(fn, inputs=inputs, targets=targets)
    if with_logits:
        loss = jnp.logaddexp(jnp.zeros((), inputs.dtype), inputs) - inputs * targets
    else:
        log_p = jnp.maximum(jnp.log(inputs), -100)
        log_q = jnp.maximum(jnp.log(1 - inputs), -100)
        loss = -(targets * log_p + (1 - targets) * log_q)
    return _reduce(_apply_weights(loss, weights, fn), reduction, fn)


def l1_loss(predictions: Any, targets: Any, reduction: str = "mean") -> jax.Array:
    """``|predictions - targets|``."""
    fn = "l1_loss"
    _check_reduction(reduction, fn)
    predictions, targets = _floats(fn, predictions, targets)
    _same_shape(fn, predictions=predictions, targets=targets)
    return _reduce(jnp.abs(predictions - targets), reduction, fn)


def mse_loss(predictions: Any, targets: Any, reduction: str = "mean") -> jax.Array:
    """``(predictions - targets) ** 2``."""
    fn = "mse_loss"
    _check_reduction(reduction, fn)
    predictions, targets = _floats(fn, predictions, targets)
    _same_shape(fn, predictions=predictions, targets=targets)
    return _reduce(jnp.square(predictions - targets), reduction, fn)


def nll_loss(inputs: Any, targets: Any, axis: int = -1, reduction: str = "none") -> jax.Array:
    """``-inputs[targets]`` along ``axis`` (``inputs`` are log-probabilities)."""
    fn = "nll_loss"
    _check_reduction(reduction, fn)
    inputs = _args.as_array(inputs, "inputs", fn)
    targets = _args.as_array(targets, "targets", fn)
    shapes = f"inputs shape {tuple(inputs.shape)}, targets shape {tuple(targets.shape)}"
    if not jnp.issubdtype(inputs.dtype, jnp.floating):
        raise TypeError(f"[{fn}] inputs (log-probabilities) must be floating, got {inputs.dtype}.")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"[{fn}] targets (class indices) must be integers, got {targets.dtype}.")
    axis = _axis(fn, axis, inputs.ndim, shapes)
    if targets.shape != tuple(np.delete(inputs.shape, axis)):
        raise ValueError(f"[{fn}] targets must have the inputs' shape without axis {axis}; got "
                         f"{shapes}.")
    loss = -jnp.take_along_axis(inputs, jnp.expand_dims(targets, axis), axis).squeeze(axis)
    return _reduce(loss, reduction, fn)


def gaussian_nll_loss(
    inputs: Any,
    targets: Any,
    vars: Any,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> jax.Array:
    """``0.5 * (log(max(vars, eps)) + (targets - inputs) ** 2 / max(vars, eps))``, plus
    ``0.5 * log(2 pi)`` with ``full``."""
    fn = "gaussian_nll_loss"
    _check_reduction(reduction, fn)
    full = _args.check_bool(full, "full", fn)
    eps = _args.check_real(eps, "eps", fn, array=True)
    inputs, targets, vars = _floats(fn, inputs, targets, vars)
    _same_shape(fn, inputs=inputs, targets=targets, vars=vars)
    vars = jnp.maximum(vars, eps)
    loss = 0.5 * (jnp.log(vars) + jnp.square(targets - inputs) / vars)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction, fn)


def kl_div_loss(inputs: Any, targets: Any, axis: int = -1, reduction: str = "none") -> jax.Array:
    """``sum(exp(targets) * (targets - inputs), axis)`` (both are log-probabilities)."""
    fn = "kl_div_loss"
    _check_reduction(reduction, fn)
    inputs, targets = _floats(fn, inputs, targets)
    ndim = _broadcast(fn, inputs=inputs, targets=targets)
    axis = _axis(fn, axis, ndim, f"inputs shape {inputs.shape}, targets shape {targets.shape}")
    return _reduce(jnp.sum(jnp.exp(targets) * (targets - inputs), axis), reduction, fn)


def smooth_l1_loss(
    predictions: Any, targets: Any, beta: float = 1.0, reduction: str = "mean"
) -> jax.Array:
    """``0.5 * d**2 / beta`` where ``d = |predictions - targets| < beta``, else
    ``d - 0.5 * beta``."""
    fn = "smooth_l1_loss"
    _check_reduction(reduction, fn)
    beta = _args.check_real(beta, "beta", fn, array=True)
    predictions, targets = _floats(fn, predictions, targets)
    _same_shape(fn, predictions=predictions, targets=targets)
    diff = jnp.abs(predictions - targets)
    loss = jnp.where(diff < beta, 0.5 * jnp.square(diff) / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction, fn)


def triplet_loss(
    anchors: Any,
    positives: Any,
    negatives: Any,
    axis: int = -1,
    p: int = 2,
    margin: float = 1.0,
    eps: float = 1e-6,
    reduction: str = "none",
) -> jax.Array:
    """``max(d(a, p) - d(a, n) + margin, 0)`` with ``d(a, b) = (sum |a - b|**p + eps)**(1/p)``."""
    fn = "triplet_loss"
    _check_reduction(reduction, fn)
    p, margin, eps = (_args.check_real(v, name, fn, array=True)
                      for v, name in ((p, "p"), (margin, "margin"), (eps, "eps")))
    anchors, positives, negatives = _floats(fn, anchors, positives, negatives)
    ndim = _broadcast(fn, anchors=anchors, positives=positives, negatives=negatives)
    axis = _axis(fn, axis, ndim, f"anchors shape {anchors.shape}")

    def dist(b):
        return jnp.power(jnp.sum(jnp.power(jnp.abs(anchors - b), p), axis) + eps, 1.0 / p)

    loss = jnp.maximum(dist(positives) - dist(negatives) + margin, 0)
    return _reduce(loss, reduction, fn)


def hinge_loss(inputs: Any, targets: Any, reduction: str = "none") -> jax.Array:
    """``max(1 - inputs * targets, 0)``."""
    fn = "hinge_loss"
    _check_reduction(reduction, fn)
    inputs, targets = _floats(fn, inputs, targets)
    _broadcast(fn, inputs=inputs, targets=targets)
    return _reduce(jnp.maximum(1 - inputs * targets, 0), reduction, fn)


def huber_loss(
    inputs: Any, targets: Any, delta: float = 1.0, reduction: str = "none"
) -> jax.Array:
    """``0.5 * q**2 + delta * (|e| - q)`` with ``e = inputs - targets``, ``q = min(|e|, delta)``."""
    fn = "huber_loss"
    _check_reduction(reduction, fn)
    delta = _args.check_real(delta, "delta", fn, array=True)
    inputs, targets = _floats(fn, inputs, targets)
    _broadcast(fn, inputs=inputs, targets=targets)
    abs_errors = jnp.abs(inputs - targets)
    quadratic = jnp.minimum(abs_errors, delta)
    loss = 0.5 * quadratic**2 + delta * (abs_errors - quadratic)
    return _reduce(loss, reduction, fn)


def log_cosh_loss(inputs: Any, targets: Any, reduction: str = "none") -> jax.Array:
    """``log(cosh(inputs - targets))``, computed as ``logaddexp(e, -e) - log 2``."""
    fn = "log_cosh_loss"
    _check_reduction(reduction, fn)
    inputs, targets = _floats(fn, inputs, targets)
    _broadcast(fn, inputs=inputs, targets=targets)
    errors = inputs - targets
    return _reduce(jnp.logaddexp(errors, -errors) - math.log(2), reduction, fn)


def cosine_similarity_loss(
    x1: Any, x2: Any, axis: int = 1, eps: float = 1e-8, reduction: str = "none"
) -> jax.Array:
    """``sum(x1 * x2, axis) / max(|x1| * |x2|, eps)`` (the similarity itself, as MLX returns)."""
    fn = "cosine_similarity_loss"
    _check_reduction(reduction, fn)
    eps = _args.check_real(eps, "eps", fn, array=True)
    x1, x2 = _floats(fn, x1, x2)
    ndim = _broadcast(fn, x1=x1, x2=x2)
    axis = _axis(fn, axis, ndim, f"x1 shape {x1.shape}, x2 shape {x2.shape}")
    n1 = jnp.linalg.norm(x1, axis=axis)
    n2 = jnp.linalg.norm(x2, axis=axis)
    loss = jnp.sum(x1 * x2, axis=axis) / jnp.maximum(n1 * n2, eps)
    return _reduce(loss, reduction, fn)


def margin_ranking_loss(
    inputs1: Any, inputs2: Any, targets: Any, margin: float = 0.0, reduction: str = "none"
) -> jax.Array:
    """``max(0, -targets * (inputs1 - inputs2) + margin)``."""
    fn = "margin_ranking_loss"
    _check_reduction(reduction, fn)
    margin = _args.check_real(margin, "margin", fn, array=True)
    inputs1, inputs2, targets = _floats(fn, inputs1, inputs2, targets)
    _same_shape(fn, inputs1=inputs1, inputs2=inputs2, targets=targets)
    return _reduce(jnp.maximum(0, -targets * (inputs1 - inputs2) + margin), reduction, fn)
