"""The ``"xla"`` strategy: one ``lax.conv_general_dilated`` call.

Rule for input dilation (transposed convolutions, ``conv_general(input_dilation=...)``): on CPU,
an input-dilated convolution whose dilated kernel is at least as large as the (undilated) input
on some spatial axis never reaches XLA with ``lhs_dilation``. XLA's CPU algebraic simplifier
swaps the operands of convolutions whose kernel is larger than their input, and for some
input-dilated ones the swapped program is invalid and the process aborts ("Window dimensions
do not match RHS shape"; found by ``benchmarks/sweep_xla_safety.py``: 2-D and 3-D, a kernel
wider than the input on one axis). A kernel larger than the input on no axis is never swapped,
so the rule covers the family with a margin. A second family: padding on one side at least as
wide as the dilated kernel. The input gradient is then a strided convolution with negative
padding, for which XLA on CPU returns wrong values (uninitialised memory, up to 1e38; found by
the sweep: ``conv_transpose2d`` of a (2, 4, 3, 4) input with a 2x2 kernel at stride (3, 2)).
For both families the input is dilated and padded explicitly
(one ``lax.pad`` with interior padding, behind an optimization barrier so that XLA cannot fold
it back) and convolved with no input dilation and no padding: the same arithmetic, and its
derivatives (a strided slice, and convolutions without input dilation) stay out of the family.
Other input-dilated convolutions, and every one on other platforms, keep the native form; its
weight derivative goes through the explicitly dilated input (:func:`_guarded_conv`).

Rule for the input gradient of strided convolutions (on CPU): JAX's input gradient of a strided
convolution is a convolution of the cotangent dilated by the stride, so where the dilated kernel
is at least as large as the output on some axis it falls in the first family above and the
process aborts (found by the sweep: a (1, 6, 4, 1) input, 2x2 kernel, stride (2, 3), padding
((1, 1), (0, 0)); on a grid of 2,880 such 2-D convolutions 24 aborted, all inside the rule).
There the input's tangent is computed by the decomposed form (:func:`_guarded_conv`), whose
transpose contains no convolution; the forward pass and the weight's tangent stay XLA's. These
are tiny convolutions (an output no larger than the kernel), so the decomposed form costs
nothing that matters, and forward mode and higher derivatives keep working.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

from convnn._lowering._decomposed import conv_decomposed
from convnn._lowering._spec import ConvSpec


def dimension_numbers(n: int) -> lax.ConvDimensionNumbers:
    """Channels-last input and output, weight ``(O, *kernel, I)``, for ``n`` spatial axes."""
    spatial = tuple(range(1, n + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, n + 1, *spatial), rhs_spec=(0, n + 1, *spatial), out_spec=(0, n + 1, *spatial)
    )


def _lax_conv(x, w, spec: ConvSpec, *, input_dilation=None, padding=None):
    n = spec.ndim
    if spec.flip:
        w = lax.rev(w, tuple(range(1, n + 1)))
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=spec.stride,
        padding=spec.padding if padding is None else padding,
        lhs_dilation=spec.input_dilation if input_dilation is None else input_dilation,
        rhs_dilation=spec.kernel_dilation,
        dimension_numbers=dimension_numbers(n),
        feature_group_count=spec.groups,
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )


def _conv_dilated_input(xp, w, spec: ConvSpec):
    """The convolution of an input already dilated and padded by :func:`dilate_and_pad`."""
    return _lax_conv(xp, w, spec, input_dilation=(1,) * spec.ndim,
                     padding=((0, 0),) * spec.ndim)


def dilate_and_pad(x, spec: ConvSpec):
    """Materialises the input dilation and padding of ``spec`` with one ``lax.pad``."""
    config = [(0, 0, 0)]
    config += [(lo, hi, d - 1) for (lo, hi), d in zip(spec.padding, spec.input_dilation)]
    config += [(0, 0, 0)]
    return lax.pad(x, lax.full((), 0, x.dtype), config)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _guarded_conv(x, w, spec, guard):
    """``_lax_conv`` whose tangent takes one operand's term through another form (``guard``):

    * ``"weight"`` (input-dilated convolutions): autodiff with respect to the weight emits a
      convolution with input dilation whose operands XLA's CPU algebraic simplifier may swap
      into an invalid program, aborting the process; the weight's term goes through the
      explicitly dilated input, whose transpose needs no input dilation.
    * ``"input"`` (strided convolutions whose output is no longer than the dilated kernel): the
      input's term goes through the decomposed form, whose transpose is pads, slices and
      products, never the input-dilated convolution that the simplifier aborts on; rank 4 at
      most, so that the program stays one the Apple plugins run too (a CPU host traces for them
      in convnn.explain and the routing tests).

    The other term stays this function, so forward mode and higher derivatives keep working.
    """
    return _lax_conv(x, w, spec)


@_guarded_conv.defjvp
def _guarded_conv_jvp(spec, guard, primals, tangents):
    x, w = primals
    dx, dw = tangents
    if guard == "weight":
        t_w = _conv_dilated_input(dilate_and_pad(x, spec), dw, spec)
        t_x = _guarded_conv(dx, w, spec, guard)
    else:
        t_x = conv_decomposed(dx, w, spec, max_rank=4)
        t_w = _guarded_conv(x, dw, spec, guard)
    return _guarded_conv(x, w, spec, guard), t_x + t_w


@jax.custom_jvp
def _barrier(x):
    """``lax.optimization_barrier`` with an identity derivative (JAX 0.5, the version floor, has
    no differentiation rule for the barrier; the tangent needs none: its transpose, a strided
    slice of the cotangent, has no input dilation to fold)."""
    return lax.optimization_barrier(x)


@_barrier.defjvp
def _barrier_jvp(primals, tangents):
    return _barrier(primals[0]), tangents[0]


def _explicitly_dilated_conv(x, w, spec: ConvSpec):
    """The input dilated and padded by one ``lax.pad``, then a plain convolution.

    The optimization barrier keeps XLA from folding the pad back into the convolution's input
    dilation (its simplifier does, and then aborts on the folded form).
    """
    return _conv_dilated_input(_barrier(dilate_and_pad(x, spec)), w, spec)


def xla_form(x_shape, w_shape, spec: ConvSpec, backend: str) -> str | None:
    """Which form :func:`conv_xla` gives a convolution on ``backend`` (the rules above), so that
    ``convnn.explain`` reports what runs from the same rule:

    * ``None``: one plain ``lax.conv_general_dilated``;
    * ``"input"``: strided, on CPU, an output no longer than the dilated kernel on some axis:
      the input's tangent goes through the decomposed form;
    * ``"explicit"``: input-dilated, on CPU, a dilated kernel at least as large as the input or
      as one side's padding on some axis: the input dilated and padded explicitly;
    * ``"weight"``: other input-dilated convolutions: the weight's tangent goes through the
      explicitly dilated input.
    """
    spans = [(k - 1) * d + 1 for k, d in zip(w_shape[1:-1], spec.kernel_dilation)]
    cpu = backend == "cpu"
    if all(d == 1 for d in spec.input_dilation):
        out = spec.output_sizes(x_shape[1:-1], w_shape[1:-1])
        strided = any(s > 1 for s in spec.stride)
        return "input" if cpu and strided and any(k >= n for k, n in zip(spans, out)) else None
    if cpu and any(k >= size or lo >= k or hi >= k
                   for k, size, (lo, hi) in zip(spans, x_shape[1:-1], spec.padding)):
        return "explicit"
    return "weight"


def conv_xla(x: jax.Array, w: jax.Array, spec: ConvSpec) -> jax.Array:
    """Computes the convolution with a single ``lax.conv_general_dilated`` call."""
    # Decided at trace time from the backend that compiles it, as the policy decides: with
    # lax.platform_dependent both branches would reach XLA's simplifier, which is what aborts.
    form = xla_form(x.shape, w.shape, spec, jax.default_backend())
    if form is None:
        return _lax_conv(x, w, spec)
    if form == "explicit":
        return _explicitly_dilated_conv(x, w, spec)
    return _guarded_conv(x, w, spec, form)
