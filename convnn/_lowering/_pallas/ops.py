"""The entry points: the three operations on a :class:`ConvSpec`, and the depthwise convolution
with its custom derivatives.

:func:`depthwise` runs each pass with the Pallas kernel or XLA's convolution (``forward_pass``,
``weight_gradient``; the input gradient is always the Pallas kernel) through a
``jax.custom_vjp``: reverse mode of first order only (``jax.jvp``, ``jax.jacfwd`` and Hessians
raise JAX's custom_vjp ``TypeError``). :func:`depthwise_with_xla_derivatives` is the Pallas
forward pass as a ``jax.custom_jvp`` whose tangent is XLA's convolution, for which every order
and mode works.

Every function takes ``interpret``: ``False`` (default) compiles the kernels for an NVIDIA GPU;
``True`` runs the same kernel bodies in Pallas interpret mode on any backend (slow; for tests).
Interpret mode does not cover what Triton decides (layouts, vector widths, register allocation,
``num_warps``): the GPU benchmark checks a table of configurations against the float64
reference before it times anything.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from convnn._lowering._pallas.correlate import correlate
from convnn._lowering._pallas.geometry import forward_geometry, input_grad_geometry
from convnn._lowering._pallas.tiling import Tiling
from convnn._lowering._pallas.weight_grad import tap_sums
from convnn._lowering._prologue import Prologue, activation_tangent, apply, per_channel
from convnn._lowering._spec import ConvSpec
from convnn._lowering._xla import conv_xla

__all__ = [
    "DTYPES",
    "MAX_KERNEL",
    "STRIDES",
    "depthwise",
    "depthwise_with_xla_derivatives",
    "forward",
    "input_grad",
    "supports",
    "weight_grad",
]

#: Largest kernel size (per axis) the kernels are built for.
MAX_KERNEL = 9
#: Supported strides (per axis).
STRIDES = (1, 2)
#: Supported input dtypes (accumulation is always float32).
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

#: The values of ``forward_pass`` and ``weight_gradient``.
KERNELS = ("pallas", "xla")


def supports(spec: ConvSpec, x_shape: Sequence[int], dtype: Any,
             w_shape: Sequence[int] | None = None) -> bool:
    """Whether the Pallas kernels compute this convolution (on an NVIDIA GPU, or interpreted).

    Requires a non-empty batch, a 2-D depthwise convolution with channel multiplier 1
    (``groups == C_in == C_out``), kernel sizes up to :data:`MAX_KERNEL`, strides in
    :data:`STRIDES`, no kernel or input dilation, and a float32, bfloat16 or float16 input with
    no wider output requested than float32. Where the kernels run is the caller's question (the
    strategy's ``can_compute``).
    """
    if spec.ndim != 2 or len(x_shape) != 4:
        return False
    if x_shape[0] < 1:  # nothing to launch: a grid of no programs is left to XLA
        return False
    c = x_shape[-1]
    if spec.groups != c or c < 1:
        return False
    if w_shape is not None:
        if len(w_shape) != 4 or w_shape[0] != c or w_shape[-1] != 1:
            return False
        if any(k < 1 or k > MAX_KERNEL for k in w_shape[1:3]):
            return False
        padded = [x_shape[1 + i] + sum(spec.padding[i]) for i in range(2)]
        if any(p < k for p, k in zip(padded, w_shape[1:3])):
            return False
    if any(s not in STRIDES for s in spec.stride):
        return False
    if any(d != 1 for d in spec.kernel_dilation) or any(d != 1 for d in spec.input_dilation):
        return False
    if any(lo < 0 or hi < 0 for lo, hi in spec.padding):
        return False
    if jnp.dtype(dtype) not in DTYPES:
        return False
    pet = spec.preferred_element_type
    if pet is not None and jnp.dtype(pet) not in (jnp.dtype(dtype), jnp.dtype(jnp.float32)):
        return False
    return True


def _geometries(x_shape, w_shape, spec: ConvSpec):
    return [forward_geometry(x_shape[1 + i], w_shape[1 + i], spec.stride[i], *spec.padding[i])
            for i in range(2)]


def _taps_first(w, flip: bool):
    """(C, KH, KW, 1) weight -> (1, KH*KW, C) float32 correlation taps."""
    w = w[..., 0].astype(jnp.float32)
    if flip:
        w = w[:, ::-1, ::-1]
    c, kh, kw = w.shape
    return jnp.transpose(w, (1, 2, 0)).reshape(1, kh * kw, c)


def _pre(prologue: Prologue | None):
    """A prologue as the kernels take it: ``(2, C)`` float32 scale and shift, and the
    activation."""
    if prologue is None:
        return None, None
    pre = jnp.stack([prologue.scale.astype(jnp.float32), prologue.shift.astype(jnp.float32)])
    return pre, prologue.activation


def forward(x, w, spec: ConvSpec, *, prologue: Prologue | None = None,
            tiling: Tiling | None = None, interpret: bool = False) -> jax.Array:
    """The depthwise convolution of ``spec`` (no custom gradient; see :func:`depthwise`).

    Args:
      x: ``(N, H, W, C)``.
      w: ``(C, KH, KW, 1)``.
      spec: a configuration for which :func:`supports` holds.
      prologue: keyword-only; convolve ``act(x * scale + shift)`` (:class:`Prologue`), applied
        in float32 as each tile is loaded; ``None`` (default): ``x``.
      tiling: keyword-only; ``None`` (default): :func:`~.tiling.default_tiling`.
      interpret: keyword-only; run in Pallas interpret mode (default ``False``).

    Returns:
      ``(N, H_out, W_out, C)`` in ``spec.preferred_element_type`` or ``x.dtype``.
    """
    gh, gw = _geometries(x.shape, w.shape, spec)
    out_dtype = jnp.dtype(spec.preferred_element_type or x.dtype)
    pre, activation = _pre(prologue)
    return correlate(x, _taps_first(w, spec.flip), pre, gh, gw, out_dtype, tiling, interpret,
                     activation)


def input_grad(g, w, x_shape, x_dtype, spec: ConvSpec, *, prologue: Prologue | None = None,
               x: jax.Array | None = None, tiling: Tiling | None = None,
               interpret: bool = False):
    """The gradient with respect to the input of :func:`forward`, given the cotangent ``g``.

    With ``prologue`` and ``x`` (keyword-only; the forward pass convolved
    ``a = act(x * scale + shift)``), the kernel also sums, as it stores ``da`` (the gradient in
    ``a``), the gradients of the prologue's ``scale`` and ``shift``: returns
    ``(da, dscale, dshift)``, the last two ``(C,)`` float32. Default: ``da`` alone.
    """
    (gh, taps_h), (gw, taps_w) = (
        input_grad_geometry(x_shape[1 + i], w.shape[1 + i], spec.stride[i], *spec.padding[i])
        for i in range(2))
    kh, kw = w.shape[1], w.shape[2]
    # Gather table: (phase, sub-kernel tap) -> flat kernel tap, or kh*kw for a zero tap.
    table = np.full((gh.phases * gw.phases, gh.taps * gw.taps), kh * kw, np.int32)
    for ph in range(gh.phases):
        for pw in range(gw.phases):
            for i, th in enumerate(taps_h[ph]):
                for j, tw in enumerate(taps_w[pw]):
                    if th >= 0 and tw >= 0:
                        table[ph * gw.phases + pw, i * gw.taps + j] = th * kw + tw
    taps = _taps_first(w, spec.flip)[0]
    taps = jnp.concatenate([taps, jnp.zeros((1, taps.shape[1]), jnp.float32)], axis=0)
    wt = taps[table]  # (phases, Th*Tw, C)
    if prologue is None:
        return correlate(g, wt, None, gh, gw, jnp.dtype(x_dtype), tiling, interpret)
    pre, activation = _pre(prologue)
    da, sums = correlate(g, wt, pre, gh, gw, jnp.dtype(x_dtype), tiling, interpret, activation,
                         x=x)
    return da, sums[1], sums[0]


def weight_grad(x, g, w_shape, w_dtype, spec: ConvSpec, *, prologue: Prologue | None = None,
                tiling: Tiling | None = None, interpret: bool = False) -> jax.Array:
    """The gradient with respect to the weight ``(C, KH, KW, 1)`` of :func:`forward` (with the
    same ``prologue``, applied to ``x`` as it is loaded)."""
    gh, gw = _geometries(x.shape, w_shape, spec)
    pre, activation = _pre(prologue)
    dw = tap_sums(x, g, pre, gh, gw, tiling, interpret, activation)  # (KH, KW, C)
    dw = jnp.transpose(dw, (2, 0, 1))
    if spec.flip:
        dw = dw[:, ::-1, ::-1]
    return dw[..., None].astype(w_dtype)


def depthwise(x, w, spec: ConvSpec, *, prologue: Prologue | None = None,
              forward_pass: str = "pallas", weight_gradient: str = "pallas",
              tiling: Tiling | None = None, weight_grad_tiling: Tiling | None = None,
              interpret: bool = False) -> jax.Array:
    """Depthwise 2-D convolution with the Pallas kernels and a ``jax.custom_vjp``.

    Args:
      x: ``(N, H, W, C)``.
      w: ``(C, KH, KW, 1)``.
      spec: a configuration for which :func:`supports` holds.
      prologue: keyword-only; convolve ``act(x * scale + shift)`` (:class:`Prologue`) instead
        of ``x``. The Pallas kernels apply it as they load (forward pass, weight gradient), so
        the transformed input is never stored; an ``"xla"`` pass convolves it computed first.
        Its backward pass gives the gradients of ``scale`` and ``shift`` too. ``None``
        (default): ``x``.
      forward_pass: keyword-only; ``"pallas"`` (default): the Pallas kernel; ``"xla"``: XLA's
        convolution.
      weight_gradient: keyword-only; ``"pallas"`` (default) or ``"xla"`` (XLA's weight
        gradient, the transpose of its convolution in the weight). The input gradient is the
        Pallas kernel.
      tiling: keyword-only; the correlation kernel's tiling (forward pass and input gradient),
        ``None`` (default) for :func:`~.tiling.default_tiling`.
      weight_grad_tiling: keyword-only; the weight-gradient kernel's, likewise.
      interpret: keyword-only; run in Pallas interpret mode (default ``False``).

    Returns:
      ``(N, H_out, W_out, C)`` in ``spec.preferred_element_type`` or ``x.dtype``.

    Raises:
      ValueError: for a ``forward_pass`` or ``weight_gradient`` other than ``"pallas"`` or
        ``"xla"``.
    """
    if forward_pass not in KERNELS:
        raise ValueError(f"forward_pass must be 'pallas' or 'xla', got {forward_pass!r}")
    if weight_gradient not in KERNELS:
        raise ValueError(f"weight_gradient must be 'pallas' or 'xla', got {weight_gradient!r}")
    opts = _Options(forward_pass == "xla", weight_gradient == "xla", tiling, weight_grad_tiling,
                    bool(interpret))
    if prologue is None:
        return _depthwise_vjp(x, w, spec, opts)
    return _prologue_vjp(x, prologue.scale, prologue.shift, w, spec, prologue.activation, opts)


@dataclasses.dataclass(frozen=True)
class _Options:
    """The static choices of one :func:`depthwise` call (hashable: a ``custom_vjp`` argument)."""

    xla_forward: bool
    xla_weight_grad: bool
    tiling: Tiling | None
    weight_grad_tiling: Tiling | None
    interpret: bool


def _primal(x, w, spec, opts: _Options):
    if opts.xla_forward:
        return conv_xla(x, w, spec)
    return forward(x, w, spec, tiling=opts.tiling, interpret=opts.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_vjp(x, w, spec, opts):
    return _primal(x, w, spec, opts)


def _depthwise_fwd(x, w, spec, opts):
    return _primal(x, w, spec, opts), (x, w)


def _depthwise_bwd(spec, opts, res, g):
    x, w = res
    dx = input_grad(g, w, x.shape, x.dtype, spec, tiling=opts.tiling, interpret=opts.interpret)
    if opts.xla_weight_grad:
        # The convolution is linear in the weight: its transpose is XLA's weight gradient.
        (dw,) = jax.linear_transpose(lambda v: conv_xla(x, v, spec), w)(g)
    else:
        dw = weight_grad(x, g, w.shape, w.dtype, spec, tiling=opts.weight_grad_tiling,
                         interpret=opts.interpret)
    return dx, dw


_depthwise_vjp.defvjp(_depthwise_fwd, _depthwise_bwd)


def _prologue_primal(x, scale, shift, w, spec, activation, opts: _Options):
    prologue = Prologue(scale, shift, activation)
    if opts.xla_forward:
        return conv_xla(apply(x, prologue, x.dtype), w, spec)
    return forward(x, w, spec, prologue=prologue, tiling=opts.tiling, interpret=opts.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _prologue_vjp(x, scale, shift, w, spec, activation, opts):
    return _prologue_primal(x, scale, shift, w, spec, activation, opts)


def _prologue_fwd(x, scale, shift, w, spec, activation, opts):
    return _prologue_primal(x, scale, shift, w, spec, activation, opts), (x, scale, shift, w)


def _prologue_bwd(spec, activation, opts, res, g):
    """``da``, the cotangent of the transformed input, is the input-gradient kernel's, which
    sums ``scale``'s and ``shift``'s gradients as it stores it (so no reduction reads ``da`` and
    ``x`` again); ``x``'s, ``act'(x * scale + shift) * da * scale``, is one elementwise pass
    (XLA fuses it with the BatchNorm's own)."""
    x, scale, shift, w = res
    prologue = Prologue(scale, shift, activation)
    da, dscale, dshift = input_grad(g, w, x.shape, x.dtype, spec, prologue=prologue, x=x,
                                    tiling=opts.tiling, interpret=opts.interpret)
    xs = x.astype(jnp.float32)
    s, b = (per_channel(v, x.ndim, jnp.float32) for v in (scale, shift))
    gz = activation_tangent(xs * s + b, da.astype(jnp.float32), activation)
    dscale, dshift = dscale.astype(scale.dtype), dshift.astype(shift.dtype)
    dx = (gz * s).astype(x.dtype)
    if opts.xla_weight_grad:
        a = apply(x, prologue, x.dtype)
        (dw,) = jax.linear_transpose(lambda v: conv_xla(a, v, spec), w)(g)
    else:
        dw = weight_grad(x, g, w.shape, w.dtype, spec, prologue=prologue,
                         tiling=opts.weight_grad_tiling, interpret=opts.interpret)
    return dx, dscale, dshift, dw


_prologue_vjp.defvjp(_prologue_fwd, _prologue_bwd)


def depthwise_with_xla_derivatives(x, w, spec: ConvSpec, *, tiling: Tiling | None = None,
                                   interpret: bool = False):
    """The Pallas forward pass, with XLA's convolution as its tangent (a ``jax.custom_jvp``):
    reverse mode runs XLA's gradients, and forward mode and higher orders work as for the
    ``"xla"`` strategy. ``tiling`` and ``interpret`` as for :func:`forward`."""
    return _depthwise_xla_tangent(x, w, spec, tiling, bool(interpret))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _depthwise_xla_tangent(x, w, spec, tiling, interpret):
    return forward(x, w, spec, tiling=tiling, interpret=interpret)


def _depthwise_jvp(spec, tiling, interpret, primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    # The primal through the custom_jvp function itself, so that differentiating this rule
    # (second order) uses the rule again instead of differentiating the Pallas kernel.
    out = _depthwise_xla_tangent(x, w, spec, tiling, interpret)
    # The convolution is bilinear: d(x * w) = dx * w + x * dw (zero tangents are skipped).
    terms = [conv_xla(a, b, spec) for a, b, t in ((dx, w, dx), (x, dw, dw))
             if not isinstance(t, SymbolicZero)]
    if not terms:
        return out, SymbolicZero(jax.core.get_aval(out).to_tangent_aval())
    return out, functools.reduce(jnp.add, terms)


_depthwise_xla_tangent.defjvp(_depthwise_jvp, symbolic_zeros=True)
