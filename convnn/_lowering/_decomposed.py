"""The ``"decomposed"`` strategy: convolution without a convolution primitive.

The convolution is rebuilt from primitives that every backend compiles well and whose
derivatives are again such primitives, so the forward pass and both gradients (and higher
derivatives, forward or reverse mode) contain no ``conv_general_dilated``:

1. **Input dilation and padding** in one ``lax.pad`` (interior padding for the dilation). The same
   pad also trims or extends the high side so that every strided axis has a whole number of
   stride-sized blocks.
2. **Strides without strided slices.** Each strided spatial axis of the padded input is reshaped
   into ``(blocks, stride)``. The kernel tap at offset ``t`` then reads blocks
   ``t // stride .. t // stride + out - 1`` at phase ``t % stride``: a contiguous slice. (A
   strided ``lax.slice`` would work too, but its gradient is an interior pad, which is slower.)
3. **Taps by slicing**: one contiguous ``lax.slice`` per kernel tap (kernel dilation is just the
   tap's offset; a flipped kernel just reads its taps in reverse).
4. **Contraction**, accumulated tap by tap:

   * *multiply-add* when each group has one input channel (depthwise convolutions, with any
     channel multiplier): ``out += x_tap * w_tap``; XLA fuses all taps into one loop;
   * *matmul* otherwise (dense and grouped): ``dot_general`` over the channels, with the groups
     as a batch dimension. Consecutive taps are concatenated along the channels (im2col) as long
     as the patch tensor stays under :data:`PATCH_BYTES`, so small convolutions make one large
     matmul and large ones stay tap by tap, bounding memory. The ``"im2col"`` strategy is this
     form with no bound: every tap in one patch tensor and one matmul, whatever its size.

With ``max_rank=4`` the spatial output axes of each tap's window are flattened into one where
the product would have more than 4 axes (3-D, and depthwise with a channel multiplier), so that
the reductions of every gradient stay at rank 4 or below.

Accumulation is in ``preferred_element_type`` when given, else in the input dtype, widened to
float32 for 16-bit inputs; ``precision`` is passed to ``dot_general`` (the multiply-add form is
exact elementwise arithmetic at the accumulation dtype).

Autodiff of these primitives is already convolution-free (pad <-> slice, reshape <-> reshape,
dot_general <-> dot_general, multiply <-> multiply), so no ``custom_vjp`` is needed and forward
mode (``jax.jvp``, ``jax.jacfwd``) keeps working. One derivative is written by hand, for speed:
the depthwise form is a ``jax.custom_jvp`` whose tangent in the weight loops over the taps (see
:func:`_depthwise_looped`), so that the weight gradient runs one tap at a time.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from convnn._lowering._spec import ConvSpec

__all__ = ["conv_decomposed", "PATCH_BYTES"]

#: Largest patch tensor (bytes) built by concatenating taps for one matmul; beyond it the matmul
#: path contracts tap by tap.
PATCH_BYTES = 16 * 2**20


def _accumulation_dtype(dtype) -> np.dtype:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def _geometry(x_shape, w_shape, spec: ConvSpec):
    """Per spatial axis: pad config, output size, and whether the axis is split in blocks."""
    outs = spec.output_sizes(x_shape[1:-1], w_shape[1:-1])
    config = [(0, 0, 0)]
    for size, (lo, hi), d, k, kd, s, out in zip(
        x_shape[1:-1], spec.padding, spec.input_dilation, w_shape[1:-1], spec.kernel_dilation,
        spec.stride, outs,
    ):
        padded = (size - 1) * d + 1 + lo + hi
        span = (k - 1) * kd + 1
        need = ((span - 1) // s + out) * s  # whole blocks covering every tap; == padded if s == 1
        config.append((lo, hi + need - padded, d - 1))
    config.append((0, 0, 0))
    return config, outs


def _blocked(xp, spec: ConvSpec, lead: int):
    """Splits each strided spatial axis (starting at axis ``lead``) into ``(blocks, stride)``."""
    shape = list(xp.shape[:lead])
    for axis, s in enumerate(spec.stride):
        size = xp.shape[lead + axis]
        shape += [size // s, s] if s > 1 else [size]
    shape += list(xp.shape[lead + spec.ndim :])
    return xp.reshape(shape) if len(shape) != xp.ndim else xp


def _tap_bounds(shape, tap, outs, spec: ConvSpec, lead: int):
    """Start and limit indices of one kernel tap's window in the blocked input."""
    starts, limits = [0] * lead, list(shape[:lead])
    for t, o, kd, s in zip(tap, outs, spec.kernel_dilation, spec.stride):
        off = t * kd
        if s > 1:
            q, r = divmod(off, s)
            starts += [q, r]
            limits += [q + o, r + 1]
        else:
            starts.append(off)
            limits.append(off + o)
    rest = shape[len(starts) :]
    return starts + [0] * len(rest), limits + list(rest)


def _tap(xb, tap, outs, spec: ConvSpec, lead: int):
    """The input window of one kernel tap: ``(*lead_dims, *outs, *trailing)``, no strided slice."""
    starts, limits = _tap_bounds(xb.shape, tap, outs, spec, lead)
    window = lax.slice(xb, starts, limits)
    shape = (*xb.shape[:lead], *outs, xb.shape[-1])
    return window.reshape(shape) if window.shape != shape else window


def _taps(w_shape, spec: ConvSpec):
    """(input tap, weight tap) pairs; the weight is read reversed when ``spec.flip``."""
    kernel = w_shape[1:-1]
    for tap in itertools.product(*(range(k) for k in kernel)):
        wtap = tuple(k - 1 - t for k, t in zip(kernel, tap)) if spec.flip else tap
        yield tap, wtap


def _depthwise_input(x, w_shape, spec: ConvSpec, acc):
    config, outs = _geometry(x.shape, w_shape, spec)
    return _blocked(lax.pad(x.astype(acc), lax.full((), 0, acc), config), spec, 1), outs


def _depthwise_weight(w, spec: ConvSpec, acc):
    """``(C_out, *kernel, 1)`` -> ``(taps, C_out)`` in the order of :func:`_taps`' input taps."""
    if spec.flip:
        w = lax.rev(w, tuple(range(1, spec.ndim + 1)))
    return w.astype(acc).reshape(w.shape[0], -1).T


def _scale(window, wt, c_in: int):
    """``window (N, *outs, C_in)`` times one tap's weights ``wt (C_out,)``, channel multiplier."""
    m = wt.shape[0] // c_in
    ones = (1,) * (window.ndim - 1)
    if m == 1:
        return window * wt.reshape(ones + (c_in,))
    return window.reshape(*window.shape, 1) * wt.reshape(ones + (c_in, m))


#: The largest array rank a reduction sees in the ``max_rank=4`` form (the multiply-adds' and
#: matmuls' transposes reduce their products): jax-metal is reported to abort on reductions over
#: rank-5 and rank-6 arrays. Flattening the spatial axes costs fusion on XLA:CPU (a 3-D depthwise
#: gradient ran 2x slower), so the default form keeps them.
MAX_REDUCTION_RANK = 4


def _flat_outs(outs, c_in: int, c_out: int, max_rank: int | None) -> tuple[int, ...]:
    """The spatial output axes the multiply-add form works on: as they are, or flattened into
    one where the product ``(N, *outs, C_in[, multiplier])`` would otherwise exceed ``max_rank``
    (``None``: no limit)."""
    rank = 2 + len(outs) + (c_out != c_in)
    return tuple(outs) if max_rank is None or rank <= max_rank else (math.prod(outs),)


def _depthwise_fused(x, w, spec: ConvSpec, acc, max_rank=None):
    """Sum over taps of shifted input times per-channel weights; XLA fuses it into one loop."""
    xb, outs = _depthwise_input(x, w.shape, spec, acc)
    wt = _depthwise_weight(w, spec, acc)
    flat = _flat_outs(outs, x.shape[-1], w.shape[0], max_rank)
    total = None
    for i, (tap, _) in enumerate(_taps(w.shape, spec)):
        window = _tap(xb, tap, outs, spec, 1).reshape(x.shape[0], *flat, x.shape[-1])
        term = _scale(window, wt[i], x.shape[-1])
        total = term if total is None else total + term
    return total.reshape(x.shape[0], *outs, w.shape[0])


def _depthwise_looped(x, w, spec: ConvSpec, acc, max_rank=None):
    """The same sum as a loop over taps (``lax.fori_loop`` with dynamic slices).

    Used for the tangent in the weight: its transpose, the weight gradient, then runs one tap
    at a time. Written out by autodiff from the fused form, the weight gradient is one reduction
    per tap over a materialised shifted copy of the input, all scheduled at once (7x7: 49 live
    copies), several times slower on XLA CPU.
    """
    xb, outs = _depthwise_input(x, w.shape, spec, acc)
    wt = _depthwise_weight(w, spec, acc)
    taps = [tap for tap, _ in _taps(w.shape, spec)]
    bounds = [_tap_bounds(xb.shape, tap, outs, spec, 1) for tap in taps]
    table = jnp.asarray(np.array([start for start, _ in bounds], np.int32))
    sizes = [hi - lo for lo, hi in zip(*bounds[0])]
    c_in, c_out = x.shape[-1], w.shape[0]
    flat = _flat_outs(outs, c_in, c_out, max_rank)
    out_shape = (x.shape[0], *flat, c_in) if c_out == c_in else (x.shape[0], *flat, c_in,
                                                                 c_out // c_in)

    @jax.checkpoint  # recompute the window in the transposed loop rather than stack T of them
    def body(i, total):
        row = lax.dynamic_index_in_dim(table, i, keepdims=False)
        start = [row[d] for d in range(xb.ndim)]
        window = lax.dynamic_slice(xb, start, sizes).reshape(x.shape[0], *flat, c_in)
        return total + _scale(window, lax.dynamic_index_in_dim(wt, i, keepdims=False), c_in)

    total = lax.fori_loop(0, len(taps), body, jnp.zeros(out_shape, acc))
    return total.reshape(x.shape[0], *outs, c_out)


#: jax < 0.10 cannot transpose the loop of :func:`_depthwise_looped` (AssertionError in the scan
#: transpose on jax 0.5 to 0.7, TypeError on 0.8 and 0.9); there the weight tangent takes the
#: fused form, as plain autodiff would (convnn's floor is jax 0.5.0, for Apple's jax-metal).
LOOP_TRANSPOSES = tuple(jax.__version_info__[:2]) >= (0, 10)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, w, spec: ConvSpec, acc, max_rank):
    """Multiply-add form for one input channel per group (channel multiplier ``C_out / C_in``)."""
    return _depthwise_fused(x, w, spec, acc, max_rank)


def _depthwise_jvp(spec, acc, max_rank, primals, tangents):
    # Tangent in x: the fused form (its transpose, the input gradient, fuses as well); tangent in
    # w: the looped form, whose transpose is the weight gradient one tap at a time.
    x, w = primals
    dx, dw = tangents
    out = _depthwise(x, w, spec, acc, max_rank)
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(_depthwise_fused(dx, w, spec, acc, max_rank))
    if not isinstance(dw, SymbolicZero):
        weight_form = _depthwise_looped if LOOP_TRANSPOSES else _depthwise_fused
        terms.append(weight_form(x, dw, spec, acc, max_rank))
    if not terms:  # not reached: JAX calls the rule only with a nonzero tangent
        return out, jnp.zeros_like(out)
    return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]


_depthwise.defjvp(_depthwise_jvp, symbolic_zeros=True)


def _matmul(x, w, spec: ConvSpec, acc, max_rank=None, patch_bytes=PATCH_BYTES):
    """Matmul form for dense and grouped convolutions (groups as a ``dot_general`` batch).

    ``patch_bytes=None``: every tap in one patch tensor and one ``dot_general``, which then
    rounds its float32 accumulation to the output dtype itself (no separate float32 output)."""
    g = spec.groups
    batch, c_in = x.shape[0], x.shape[-1]
    c_out, cg_in = w.shape[0], w.shape[-1]
    cg_out = c_out // g
    # 16-bit operands go to the matmul as they are (accumulating in ``acc``); others are cast.
    operand = x.dtype if jnp.dtype(x.dtype).itemsize == 2 and acc == jnp.float32 else acc
    config, outs = _geometry(x.shape, w.shape, spec)
    xp = lax.pad(x.astype(operand), lax.full((), 0, operand), config)
    w = w.astype(operand)
    if g > 1:  # groups first: (G, N, *spatial, C_in / G)
        xp = jnp.moveaxis(xp.reshape(*xp.shape[:-1], g, cg_in), -2, 0)
    lead = 2 if g > 1 else 1
    xb = _blocked(xp, spec, lead)

    taps = list(_taps(w.shape, spec))
    tap_bytes = batch * math.prod(outs) * c_in * jnp.dtype(operand).itemsize
    chunk = (len(taps) if patch_bytes is None
             else max(1, min(len(taps), patch_bytes // max(tap_bytes, 1))))
    # im2col's one product rounds its own accumulation (float32 for 16-bit operands on CPU and
    # CUDA) to the output dtype; chunks are summed in ``acc``.
    product_dtype = (spec.preferred_element_type or x.dtype) if patch_bytes is None else acc
    total = None
    for start in range(0, len(taps), chunk):
        part = taps[start : start + chunk]
        xs = [_tap(xb, tap, outs, spec, lead) for tap, _ in part]
        ws = [w[(slice(None), *wtap, slice(None))] for _, wtap in part]  # (C_out, C_in / G)
        xc = xs[0] if len(xs) == 1 else lax.concatenate(xs, xs[0].ndim - 1)
        if max_rank is not None and xc.ndim > max_rank:  # flatten the spatial axes
            xc = xc.reshape(*xc.shape[:lead], math.prod(outs), xc.shape[-1])
        wc = ws[0] if len(ws) == 1 else lax.concatenate(ws, 1)  # (C_out, len(part) * C_in / G)
        if g > 1:
            wc = wc.reshape(g, cg_out, wc.shape[-1])
            dims = (((xc.ndim - 1,), (2,)), ((0,), (0,)))
        else:
            dims = (((xc.ndim - 1,), (1,)), ((), ()))
        term = lax.dot_general(xc, wc, dims, precision=spec.precision,
                               preferred_element_type=product_dtype)
        total = term if total is None else total + term
    if g > 1:  # (G, N, *outs, C_out / G) -> (N, *outs, C_out)
        total = jnp.moveaxis(total, 0, -2)
    return total.reshape(batch, *outs, c_out)


def conv_decomposed(x: jax.Array, w: jax.Array, spec: ConvSpec, *,
                    max_rank: int | None = None,
                    patch_bytes: int | None = PATCH_BYTES) -> jax.Array:
    """Computes the convolution of ``spec`` with pad, slice, reshape and matmul or multiply-add.

    Args:
      x: ``(N, *spatial, C_in)``.
      w: ``(C_out, *kernel, C_in // groups)``.
      spec: the canonical convolution (non-negative padding).
      max_rank: keyword-only; ``None`` (default): no limit. ``4``: the spatial output axes are
        flattened into one wherever a product would otherwise have more than 4 axes, so that no
        reduction or ``dot_general`` of the forward pass or either gradient sees an array of
        rank 5 or 6 (for the Apple plugins: see :data:`MAX_REDUCTION_RANK`).
      patch_bytes: keyword-only; the largest patch tensor of one matmul (dense and grouped
        convolutions), default :data:`PATCH_BYTES`. ``None``: all taps in one matmul (im2col),
        which rounds to the output dtype itself (the ``"im2col"`` strategy).

    Returns:
      ``(N, *out_spatial, C_out)`` in ``spec.preferred_element_type`` or ``x.dtype``, the same
      as the ``"xla"`` strategy.
    """
    out_dtype = jnp.dtype(spec.preferred_element_type or x.dtype)
    acc = _accumulation_dtype(out_dtype)
    if w.shape[-1] == 1:
        out = _depthwise(x, w, spec, acc, max_rank)
    else:
        out = _matmul(x, w, spec, acc, max_rank, patch_bytes)
    return out.astype(out_dtype)
