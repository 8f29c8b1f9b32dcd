"""Independent float64 NumPy reference implementations of N-d convolution.

Layouts (MLX style, channels-last):
    x: (N, *S, C_in)
    w: (C_out, *K, C_in // groups)      -- for both forward and transposed conv
    out: (N, *O, C_out)

Everything here is written from the definitions with plain NumPy slicing and
``einsum``; no library convolution routine is used.  Loops run over kernel
positions (and groups) only; batch, spatial and channel axes are vectorised.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    "TOLERANCE",
    "conv_general_ref",
    "conv_general_ref_vjp",
    "conv_transpose_ref",
    "conv_transpose_ref_vjp",
]

#: How close to the reference is close enough, per dtype name: ``(rtol, atol)`` for
#: ``|got - want| <= atol * max(1, max|want|) + rtol * |want|`` elementwise (the test suite's
#: ``assert_close``). The self-check (``python -m convnn``) accepts a worst error, relative to
#: the largest magnitude of the reference, of ``rtol + atol``, which the elementwise rule implies.
#: The cases are small (at most a few hundred terms per output): float32 rounding stays near
#: 1e-6, while a wrong kernel is off by tens of percent.
TOLERANCE: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-10),
    "float32": (2e-5, 2e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (4e-2, 4e-2),
}


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _as_f64(a):
    return np.asarray(a, dtype=np.float64)


def _check_tuple(name, value, n):
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} must have {n} entries, got {value}")
    return value


def _check_shapes(x, w, groups):
    """Validate x/w ranks and channel counts; return (n, C_in, C_out)."""
    n = w.ndim - 2
    if n < 1:
        raise ValueError("w must have at least one spatial axis")
    if x.ndim != n + 2:
        raise ValueError(f"x has rank {x.ndim}, expected {n + 2}")
    c_in, c_out = x.shape[-1], w.shape[0]
    if groups < 1 or c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide C_in={c_in} and C_out={c_out}")
    if w.shape[-1] != c_in // groups:
        raise ValueError(f"w.shape[-1]={w.shape[-1]} != C_in // groups={c_in // groups}")
    return n, c_in, c_out


def _strided_window(start, count, step):
    """slice selecting ``start, start+step, ..., start+(count-1)*step``."""
    return slice(start, start + (count - 1) * step + 1, step)


def _pad_axis(a, axis, lo, hi):
    """Pad (positive) or crop (negative) one axis, like ``lax.pad`` without interior.

    Output index ``j`` holds input index ``j - lo`` when that is in range and 0
    otherwise; output length is ``L + lo + hi``.  The adjoint of
    ``_pad_axis(., lo, hi)`` is ``_pad_axis(., -lo, -hi)``.
    """
    length = a.shape[axis]
    out_len = length + lo + hi
    if out_len < 0:
        raise ValueError(f"padding ({lo}, {hi}) crops more than the length {length}")
    shape = list(a.shape)
    shape[axis] = out_len
    out = np.zeros(shape, dtype=a.dtype)
    j0, j1 = max(0, lo), min(out_len, length + lo)  # destination range
    if j1 > j0:
        dst = [slice(None)] * a.ndim
        src = [slice(None)] * a.ndim
        dst[axis] = slice(j0, j1)
        src[axis] = slice(j0 - lo, j1 - lo)
        out[tuple(dst)] = a[tuple(src)]
    return out


def _dilate_axis(a, axis, d):
    """Insert ``d - 1`` zeros between consecutive elements along ``axis``."""
    length = a.shape[axis]
    shape = list(a.shape)
    shape[axis] = (length - 1) * d + 1 if length > 0 else 0
    out = np.zeros(shape, dtype=a.dtype)
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(None, None, d)
    out[tuple(idx)] = a
    return out


def _undilate_axis(a, axis, d):
    """Adjoint of :func:`_dilate_axis`: keep only the non-inserted positions."""
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(None, None, d)
    return a[tuple(idx)]


def _outer_sum(a, b):
    """``sum over leading axes of a[..., o] * b[..., i]`` -> (O, I)."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def _flip_spatial(w):
    """Reverse a (C_out, *K, C) kernel along its spatial axes."""
    return w[(slice(None),) + (slice(None, None, -1),) * (w.ndim - 2) + (slice(None),)]


# ----------------------------------------------------------------------------
# forward (gather) convolution
# ----------------------------------------------------------------------------


def _prepare_general(x, w, stride, padding_lo, padding_hi, kernel_dilation,
                     input_dilation, groups):
    """Validate arguments; return (xp, n, out_shape) with xp the padded input."""
    x, w = _as_f64(x), _as_f64(w)
    n, _, _ = _check_shapes(x, w, groups)
    stride = _check_tuple("stride", stride, n)
    padding_lo = _check_tuple("padding_lo", padding_lo, n)
    padding_hi = _check_tuple("padding_hi", padding_hi, n)
    kernel_dilation = _check_tuple("kernel_dilation", kernel_dilation, n)
    input_dilation = _check_tuple("input_dilation", input_dilation, n)
    if min(stride + kernel_dilation + input_dilation) < 1:
        raise ValueError("stride and dilations must be >= 1")

    out_shape = []
    for ax in range(n):
        s_len, k_len = x.shape[1 + ax], w.shape[1 + ax]
        dil_len = (s_len - 1) * input_dilation[ax] + 1 if s_len > 0 else 0
        padded = dil_len + padding_lo[ax] + padding_hi[ax]
        eff_k = (k_len - 1) * kernel_dilation[ax] + 1
        o_len = (padded - eff_k) // stride[ax] + 1
        if o_len < 1:
            raise ValueError(f"empty output along spatial axis {ax} (length {o_len})")
        out_shape.append(o_len)

    xp = x
    for ax in range(n):
        xp = _dilate_axis(xp, 1 + ax, input_dilation[ax])
        xp = _pad_axis(xp, 1 + ax, padding_lo[ax], padding_hi[ax])
    args = (stride, padding_lo, padding_hi, kernel_dilation, input_dilation)
    return x, w, xp, n, tuple(out_shape), args


def _window(n, k, stride, kernel_dilation, out_shape):
    """Index into xp of the (N, *O, C) block read by kernel position ``k``."""
    return (slice(None),) + tuple(
        _strided_window(k[a] * kernel_dilation[a], out_shape[a], stride[a])
        for a in range(n)
    ) + (slice(None),)


def conv_general_ref(x, w, *, stride, padding_lo, padding_hi, kernel_dilation,
                     input_dilation, groups, flip):
    """General N-d convolution (cross-correlation unless ``flip``), gather form.

    ``xp`` = input dilated by ``input_dilation`` then padded/cropped by
    ``padding_lo``/``padding_hi``;
    ``out[b, o, co] = sum_{k, ci} xp[b, o*stride + k*kernel_dilation, g*Cin_g + ci]
    * w'[co, k, ci]`` with ``g = co // (C_out // groups)`` and ``w'`` the kernel
    (spatially reversed if ``flip``).  Returns float64 ``(N, *O, C_out)``.
    """
    x, w, xp, n, out_shape, (stride, _, _, kdil, _) = _prepare_general(
        x, w, stride, padding_lo, padding_hi, kernel_dilation, input_dilation, groups)
    if flip:
        w = _flip_spatial(w)
    c_out, cin_g = w.shape[0], w.shape[-1]
    cout_g = c_out // groups

    out = np.zeros((x.shape[0],) + out_shape + (c_out,))
    for k in itertools.product(*(range(kk) for kk in w.shape[1:-1])):
        block = xp[_window(n, k, stride, kdil, out_shape)]  # (N, *O, C_in)
        wk = w[(slice(None),) + k]  # (C_out, Cin_g)
        for g in range(groups):
            out[..., g * cout_g:(g + 1) * cout_g] += np.einsum(
                "...i,oi->...o",
                block[..., g * cin_g:(g + 1) * cin_g],
                wk[g * cout_g:(g + 1) * cout_g])
    return out


def conv_general_ref_vjp(x, w, g, *, stride, padding_lo, padding_hi,
                         kernel_dilation, input_dilation, groups, flip):
    """VJP of :func:`conv_general_ref` for cotangent ``g``; returns ``(dx, dw)``.

    Scatters the cotangent back through the gather: every kernel position adds
    ``g @ w_k`` into the xp positions it read and ``g^T xp_block`` into ``dw_k``.
    The padding/cropping and dilation are then undone by their adjoints, so
    padded zeros and inserted dilation zeros receive no gradient.
    """
    x, w, xp, n, out_shape, args = _prepare_general(
        x, w, stride, padding_lo, padding_hi, kernel_dilation, input_dilation, groups)
    stride, lo, hi, kdil, idil = args
    g_ = _as_f64(g)
    expected = (x.shape[0],) + out_shape + (w.shape[0],)
    if g_.shape != expected:
        raise ValueError(f"cotangent shape {g_.shape} != output shape {expected}")
    wf = _flip_spatial(w) if flip else w
    c_out, cin_g = w.shape[0], w.shape[-1]
    cout_g = c_out // groups

    dxp = np.zeros_like(xp)
    dwf = np.zeros_like(wf)
    for k in itertools.product(*(range(kk) for kk in w.shape[1:-1])):
        win = _window(n, k, stride, kdil, out_shape)
        block = xp[win]
        wk = wf[(slice(None),) + k]
        for grp in range(groups):
            ci = slice(grp * cin_g, (grp + 1) * cin_g)
            co = slice(grp * cout_g, (grp + 1) * cout_g)
            gg = g_[..., co]
            dxp[win][..., ci] += np.einsum("...o,oi->...i", gg, wk[co])
            dwf[(co,) + k] += _outer_sum(gg, block[..., ci])

    # Undo padding then dilation (adjoints, in reverse order per axis).
    dx = dxp
    for ax in reversed(range(n)):
        dx = _pad_axis(dx, 1 + ax, -lo[ax], -hi[ax])
        dx = _undilate_axis(dx, 1 + ax, idil[ax])
    assert dx.shape == x.shape, (dx.shape, x.shape)
    dw = _flip_spatial(dwf) if flip else dwf
    return dx, np.ascontiguousarray(dw)


# ----------------------------------------------------------------------------
# transposed convolution (scatter form), PyTorch ConvTranspose semantics
# ----------------------------------------------------------------------------


def _prepare_transpose(x, w, stride, padding, dilation, output_padding, groups):
    x, w = _as_f64(x), _as_f64(w)
    n, _, _ = _check_shapes(x, w, groups)
    stride = _check_tuple("stride", stride, n)
    padding = _check_tuple("padding", padding, n)
    dilation = _check_tuple("dilation", dilation, n)
    output_padding = _check_tuple("output_padding", output_padding, n)
    if min(stride + dilation) < 1:
        raise ValueError("stride and dilation must be >= 1")
    if min(padding + output_padding) < 0:
        raise ValueError("padding and output_padding must be >= 0")
    in_shape = x.shape[1:-1]
    k_shape = w.shape[1:-1]
    out_shape = tuple(
        (in_shape[a] - 1) * stride[a] - 2 * padding[a]
        + dilation[a] * (k_shape[a] - 1) + output_padding[a] + 1
        for a in range(n))
    if min(out_shape) < 1:
        raise ValueError(f"empty transposed-conv output {out_shape}")
    # Scratch buffer indexed by ``o + padding`` = i*stride + k*dilation; big
    # enough for every contribution and for the whole requested output.
    buf_shape = tuple(
        max((in_shape[a] - 1) * stride[a] + dilation[a] * (k_shape[a] - 1) + 1,
            padding[a] + out_shape[a])
        for a in range(n))
    return x, w, n, (stride, padding, dilation), out_shape, buf_shape


def conv_transpose_ref(x, w, *, stride, padding, dilation, output_padding, groups):
    """Transposed N-d convolution, scatter form.

    Each ``x[b, i, ci]`` (group ``g = ci // Cin_g``) adds ``x[b, i, ci] *
    w[co, k, ci - g*Cin_g]`` to ``out[b, i*stride + k*dilation - padding, co]``
    for all kernel positions ``k`` and all ``co`` of group ``g``; contributions
    outside ``[0, O)`` are dropped, with
    ``O = (S-1)*stride - 2*padding + dilation*(K-1) + output_padding + 1``.
    """
    x, w, n, (stride, padding, dilation), out_shape, buf_shape = _prepare_transpose(
        x, w, stride, padding, dilation, output_padding, groups)
    in_shape = x.shape[1:-1]
    c_out, cin_g = w.shape[0], w.shape[-1]
    cout_g = c_out // groups

    buf = np.zeros((x.shape[0],) + buf_shape + (c_out,))
    for k in itertools.product(*(range(kk) for kk in w.shape[1:-1])):
        dst = (slice(None),) + tuple(
            _strided_window(k[a] * dilation[a], in_shape[a], stride[a]) for a in range(n))
        wk = w[(slice(None),) + k]  # (C_out, Cin_g)
        for grp in range(groups):
            ci = slice(grp * cin_g, (grp + 1) * cin_g)
            co = slice(grp * cout_g, (grp + 1) * cout_g)
            buf[dst + (co,)] += np.einsum("...i,oi->...o", x[..., ci], wk[co])
    crop = (slice(None),) + tuple(
        slice(padding[a], padding[a] + out_shape[a]) for a in range(n)) + (slice(None),)
    return buf[crop].copy()


def conv_transpose_ref_vjp(x, w, g, *, stride, padding, dilation, output_padding,
                           groups):
    """VJP of :func:`conv_transpose_ref` for cotangent ``g``; returns ``(dx, dw)``.

    Gather form of the adjoint: ``dx[b, i, ci] = sum_{k, co} g[b, i*stride +
    k*dilation - padding, co] * w[co, k, ci_local]`` and ``dw[co, k, ci_local] =
    sum_{b, i} g[b, i*stride + k*dilation - padding, co] * x[b, i, ci]``, where
    out-of-range positions of ``g`` read as zero.
    """
    x, w, n, (stride, padding, dilation), out_shape, buf_shape = _prepare_transpose(
        x, w, stride, padding, dilation, output_padding, groups)
    g_ = _as_f64(g)
    expected = (x.shape[0],) + out_shape + (w.shape[0],)
    if g_.shape != expected:
        raise ValueError(f"cotangent shape {g_.shape} != output shape {expected}")
    in_shape = x.shape[1:-1]
    c_out, cin_g = w.shape[0], w.shape[-1]
    cout_g = c_out // groups

    # gbuf[b, i*stride + k*dilation, co] == g[b, i*stride + k*dilation - padding, co]
    gbuf = np.zeros((x.shape[0],) + buf_shape + (c_out,))
    place = (slice(None),) + tuple(
        slice(padding[a], padding[a] + out_shape[a]) for a in range(n)) + (slice(None),)
    gbuf[place] = g_

    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for k in itertools.product(*(range(kk) for kk in w.shape[1:-1])):
        src = (slice(None),) + tuple(
            _strided_window(k[a] * dilation[a], in_shape[a], stride[a]) for a in range(n))
        gk = gbuf[src]  # (N, *S, C_out)
        wk = w[(slice(None),) + k]
        for grp in range(groups):
            ci = slice(grp * cin_g, (grp + 1) * cin_g)
            co = slice(grp * cout_g, (grp + 1) * cout_g)
            dx[..., ci] += np.einsum("...o,oi->...i", gk[..., co], wk[co])
            dw[(co,) + k] += _outer_sum(gk[..., co], x[..., ci])
    return dx, dw
