"""Self-tests for the float64 NumPy convolution references in convnn/_reference.py."""

import itertools

import numpy as np
import pytest

from convnn._reference import (
    conv_general_ref,
    conv_general_ref_vjp,
    conv_transpose_ref,
    conv_transpose_ref_vjp,
)

# ----------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------

# (N, S, C_in, C_out, K, stride, padding_lo, padding_hi, kernel_dilation,
#  input_dilation, groups, flip)
GENERAL_CASES = [
    # plain 1-D
    (2, (7,), 2, 3, (3,), (1,), (0,), (0,), (1,), (1,), 1, False),
    # 1-D stride, kernel dilation, negative low pad, groups, flip
    (2, (9,), 4, 2, (3,), (2,), (-1,), (2,), (2,), (1,), 2, True),
    # 1-D input dilation with positive low / negative high pad
    (1, (5,), 2, 2, (2,), (3,), (2,), (-3,), (1,), (3,), 1, False),
    # 1-D: crop more than the first dilation gap (first real element cropped)
    (2, (6,), 3, 3, (2,), (1,), (-3,), (1,), (1,), (2,), 3, True),
    # 2-D everything mixed
    (2, (6, 5), 4, 4, (3, 2), (2, 1), (1, -1), (-2, 3), (1, 2), (2, 1), 2, True),
    # 2-D depthwise with channel multiplier 2
    (1, (5, 6), 4, 8, (2, 3), (1, 2), (0, 2), (1, 0), (2, 1), (1, 1), 4, False),
    # 3-D
    (1, (4, 5, 3), 2, 2, (2, 3, 2), (1, 2, 1), (0, 1, -1), (1, -1, 2),
     (2, 1, 1), (1, 1, 2), 1, False),
    # 3-D groups + flip + input dilation + crop
    (2, (3, 4, 3), 4, 2, (2, 2, 3), (2, 1, 1), (-1, 2, 1), (2, -2, 0),
     (1, 2, 1), (2, 1, 1), 2, True),
]

# (N, S, C_in, C_out, K, stride, padding, dilation, output_padding, groups)
TRANSPOSE_CASES = [
    (2, (4,), 2, 3, (3,), (2,), (1,), (1,), (1,), 1),
    # padding close to dilation*(K-1) = 6
    (1, (5,), 4, 2, (4,), (3,), (5,), (2,), (2,), 2),
    # padding > dilation*(K-1): equivalent forward conv has negative low pad
    (2, (6,), 2, 2, (2,), (2,), (3,), (1,), (1,), 1),
    (1, (3, 4), 2, 4, (3, 2), (2, 3), (1, 0), (1, 2), (1, 2), 2),
    (1, (3, 2, 3), 2, 2, (2, 2, 3), (2, 1, 2), (0, 1, 2), (1, 1, 1), (1, 0, 0), 1),
    # depthwise, padding larger than the kernel extent on one axis
    (2, (4, 3), 4, 4, (2, 3), (1, 2), (2, 1), (1, 1), (0, 1), 4),
    # output_padding >= stride (outside PyTorch's constraint; definition still holds)
    (1, (3,), 3, 6, (3,), (1,), (0,), (1,), (2,), 3),
]


def _general_kwargs(case):
    _, _, _, _, _, stride, lo, hi, kd, idil, groups, flip = case
    return dict(stride=stride, padding_lo=lo, padding_hi=hi, kernel_dilation=kd,
                input_dilation=idil, groups=groups, flip=flip)


def _general_arrays(case, seed=0):
    n_batch, s, c_in, c_out, k, *_ = case
    groups = case[10]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_batch, *s, c_in))
    w = rng.standard_normal((c_out, *k, c_in // groups))
    return x, w


def _transpose_kwargs(case):
    _, _, _, _, _, stride, padding, dilation, output_padding, groups = case
    return dict(stride=stride, padding=padding, dilation=dilation,
                output_padding=output_padding, groups=groups)


def _transpose_arrays(case, seed=0):
    n_batch, s, c_in, c_out, k, *_ = case
    groups = case[9]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_batch, *s, c_in))
    w = rng.standard_normal((c_out, *k, c_in // groups))
    return x, w


def _ids(cases):
    return [f"case{i}" for i in range(len(cases))]


# ----------------------------------------------------------------------------
# brute-force scalar-loop versions of the definitions (independent of reference.py)
# ----------------------------------------------------------------------------


def _naive_general(x, w, *, stride, padding_lo, padding_hi, kernel_dilation,
                   input_dilation, groups, flip):
    """Loop over every output element and read xp through its index map."""
    n = w.ndim - 2
    c_in, c_out = x.shape[-1], w.shape[0]
    cin_g, cout_g = c_in // groups, c_out // groups
    kshape = w.shape[1:-1]
    if flip:
        w = w[(slice(None),) + (slice(None, None, -1),) * n]
    out_shape = []
    for a in range(n):
        lp = (x.shape[1 + a] - 1) * input_dilation[a] + 1 + padding_lo[a] + padding_hi[a]
        out_shape.append((lp - (kshape[a] - 1) * kernel_dilation[a] - 1) // stride[a] + 1)

    def xp(b, j, c):
        idx = []
        for a in range(n):
            d = j[a] - padding_lo[a]  # index into the dilated input
            if d < 0 or d % input_dilation[a]:
                return 0.0
            i = d // input_dilation[a]
            if i >= x.shape[1 + a]:
                return 0.0
            idx.append(i)
        return x[(b, *idx, c)]

    out = np.zeros((x.shape[0], *out_shape, c_out))
    for b in range(x.shape[0]):
        for o in itertools.product(*map(range, out_shape)):
            for co in range(c_out):
                grp = co // cout_g
                acc = 0.0
                for k in itertools.product(*map(range, kshape)):
                    j = [o[a] * stride[a] + k[a] * kernel_dilation[a] for a in range(n)]
                    for ci in range(cin_g):
                        acc += xp(b, j, grp * cin_g + ci) * w[(co, *k, ci)]
                out[(b, *o, co)] = acc
    return out


def _naive_transpose(x, w, *, stride, padding, dilation, output_padding, groups):
    """Scatter every x element through every kernel tap, with bounds checks."""
    n = w.ndim - 2
    c_in, c_out = x.shape[-1], w.shape[0]
    cin_g, cout_g = c_in // groups, c_out // groups
    kshape = w.shape[1:-1]
    out_shape = [
        (x.shape[1 + a] - 1) * stride[a] - 2 * padding[a]
        + dilation[a] * (kshape[a] - 1) + output_padding[a] + 1
        for a in range(n)]
    out = np.zeros((x.shape[0], *out_shape, c_out))
    for b in range(x.shape[0]):
        for i in itertools.product(*map(range, x.shape[1:-1])):
            for ci in range(c_in):
                grp = ci // cin_g
                for k in itertools.product(*map(range, kshape)):
                    o = [i[a] * stride[a] + k[a] * dilation[a] - padding[a] for a in range(n)]
                    if any(o[a] < 0 or o[a] >= out_shape[a] for a in range(n)):
                        continue
                    for co in range(grp * cout_g, (grp + 1) * cout_g):
                        out[(b, *o, co)] += x[(b, *i, ci)] * w[(co, *k, ci - grp * cin_g)]
    return out


def _fd_grads(f, x, w, g, eps=1e-6):
    """Central finite-difference gradients of sum(f(x, w) * g) wrt x and w."""
    def loss(xx, ww):
        return float(np.sum(f(xx, ww) * g))

    grads = []
    for which, arr in ((0, x), (1, w)):
        grad = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            if which == 0:
                grad[idx] = (loss(plus, w) - loss(minus, w)) / (2 * eps)
            else:
                grad[idx] = (loss(x, plus) - loss(x, minus)) / (2 * eps)
        grads.append(grad)
    return grads


# ----------------------------------------------------------------------------
# hand-computable cases
# ----------------------------------------------------------------------------

NO_OPTS_1D = dict(stride=(1,), padding_lo=(0,), padding_hi=(0,), kernel_dilation=(1,),
                  input_dilation=(1,), groups=1, flip=False)


def _ramp(n):
    return np.arange(n, dtype=np.float64).reshape(1, n, 1)


def _k1d(vals):
    return np.asarray(vals, dtype=np.float64).reshape(1, len(vals), 1)


def test_identity_kernel_1d():
    x = np.random.default_rng(1).standard_normal((2, 6, 3))
    w = np.zeros((3, 1, 3))
    w[:, 0, :] = np.eye(3)
    np.testing.assert_array_equal(conv_general_ref(x, w, **NO_OPTS_1D), x)
    # centred 3-tap identity with 'same' padding
    w3 = np.zeros((3, 3, 3))
    w3[:, 1, :] = np.eye(3)
    kw = dict(NO_OPTS_1D, padding_lo=(1,), padding_hi=(1,))
    np.testing.assert_array_equal(conv_general_ref(x, w3, **kw), x)
    assert conv_general_ref(x, w3, **kw).dtype == np.float64


@pytest.mark.parametrize("overrides, expected", [
    # x = [0,1,2,3,4], w = [1,1,1]: window sums 0+1+2, 1+2+3, 2+3+4
    ({}, [3, 6, 9]),
    # zero-padded [0,0,1,2,3,4,0]: 0+0+1, 0+1+2, 1+2+3, 2+3+4, 3+4+0
    ({"padding_lo": (1,), "padding_hi": (1,)}, [1, 3, 6, 9, 7]),
    # same padded input, every second window: 1, 6, 7
    ({"padding_lo": (1,), "padding_hi": (1,), "stride": (2,)}, [1, 6, 7]),
    # taps at 0, 2, 4 -> only one window: 0 + 2 + 4
    ({"kernel_dilation": (2,)}, [6]),
    # dilated input [0,0,1,0,2,0,3,0,4]: 0+0+1, 0+1+0, 1+0+2, 0+2+0, 2+0+3, 0+3+0, 3+0+4
    ({"input_dilation": (2,)}, [1, 1, 3, 2, 5, 3, 7]),
    # crop one at the start, pad two at the end: [1,2,3,4,0,0] -> 6, 9, 7, 4
    ({"padding_lo": (-1,), "padding_hi": (2,)}, [6, 9, 7, 4]),
])
def test_sum_kernel_on_ramp(overrides, expected):
    out = conv_general_ref(_ramp(5), _k1d([1, 1, 1]), **dict(NO_OPTS_1D, **overrides))
    np.testing.assert_array_equal(out.ravel(), np.asarray(expected, dtype=np.float64))


def test_crop_and_flip_by_hand():
    # negative padding just crops: [0..5][2:5]
    out = conv_general_ref(_ramp(6), _k1d([1]), **dict(NO_OPTS_1D, padding_lo=(-2,),
                                                        padding_hi=(-1,)))
    np.testing.assert_array_equal(out.ravel(), [2, 3, 4])
    # impulse with 'full' padding: correlation gives the reversed kernel,
    # flip=True (true convolution) gives the kernel itself.
    x = _k1d([1, 0, 0, 0])
    w = _k1d([1, 2, 3])
    kw = dict(NO_OPTS_1D, padding_lo=(2,), padding_hi=(2,))
    np.testing.assert_array_equal(conv_general_ref(x, w, **kw).ravel(), [3, 2, 1, 0, 0, 0])
    np.testing.assert_array_equal(conv_general_ref(x, w, **dict(kw, flip=True)).ravel(),
                                  [1, 2, 3, 0, 0, 0])


def test_empty_output_raises():
    with pytest.raises(ValueError):
        conv_general_ref(_ramp(3), _k1d([1, 1, 1, 1]), **NO_OPTS_1D)
    with pytest.raises(ValueError):
        conv_general_ref(_ramp(5), _k1d([1, 1]), **dict(NO_OPTS_1D, padding_lo=(-2,),
                                                         padding_hi=(-2,)))
    with pytest.raises(ValueError):
        conv_transpose_ref(_ramp(1), _k1d([1]), stride=(1,), padding=(1,),
                           dilation=(1,), output_padding=(0,), groups=1)


TRANSPOSE_1D = dict(stride=(4,), padding=(0,), dilation=(1,), output_padding=(0,), groups=1)


def test_transpose_impulse_1d():
    w = _k1d([1, 2, 3])
    x = _k1d([0, 1, 0])
    # single impulse at i=1, stride 3: kernel placed at position 3; O = 2*3 + 2 + 1 = 9
    out = conv_transpose_ref(x, w, **dict(TRANSPOSE_1D, stride=(3,)))
    np.testing.assert_array_equal(out.ravel(), [0, 0, 0, 1, 2, 3, 0, 0, 0])
    # impulses at i=0 and i=2, stride 4: kernel at 0 and 8; O = 2*4 + 2 + 1 = 11
    x = _k1d([1, 0, 1])
    out = conv_transpose_ref(x, w, **TRANSPOSE_1D)
    np.testing.assert_array_equal(out.ravel(), [1, 2, 3, 0, 0, 0, 0, 0, 1, 2, 3])
    # padding 1 drops one element on each side
    out = conv_transpose_ref(x, w, **dict(TRANSPOSE_1D, padding=(1,)))
    np.testing.assert_array_equal(out.ravel(), [2, 3, 0, 0, 0, 0, 0, 1, 2])
    # output_padding appends zeros on the high side
    out = conv_transpose_ref(x, w, **dict(TRANSPOSE_1D, output_padding=(2,)))
    np.testing.assert_array_equal(out.ravel(), [1, 2, 3, 0, 0, 0, 0, 0, 1, 2, 3, 0, 0])
    # dilation 2 spreads the taps: kernel [1, 0, 2, 0, 3] at 0 and 8
    out = conv_transpose_ref(x, w, **dict(TRANSPOSE_1D, dilation=(2,)))
    np.testing.assert_array_equal(out.ravel(), [1, 0, 2, 0, 3, 0, 0, 0, 1, 0, 2, 0, 3])


def test_transpose_impulses_2d_tile_kernel():
    k = np.arange(1, 7, dtype=np.float64).reshape(2, 3)
    w = k.reshape(1, 2, 3, 1)
    x = np.ones((1, 2, 3, 1))
    out = conv_transpose_ref(x, w, stride=(3, 4), padding=(0, 0), dilation=(1, 1),
                             output_padding=(0, 0), groups=1)
    expected = np.zeros((3 + 2, 2 * 4 + 3))
    for i, j in itertools.product(range(2), range(3)):
        expected[3 * i:3 * i + 2, 4 * j:4 * j + 3] = k
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


# ----------------------------------------------------------------------------
# brute force agreement
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", GENERAL_CASES, ids=_ids(GENERAL_CASES))
def test_general_matches_naive(case):
    x, w = _general_arrays(case)
    kw = _general_kwargs(case)
    np.testing.assert_allclose(conv_general_ref(x, w, **kw), _naive_general(x, w, **kw),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=_ids(TRANSPOSE_CASES))
def test_transpose_matches_naive(case):
    x, w = _transpose_arrays(case)
    kw = _transpose_kwargs(case)
    np.testing.assert_allclose(conv_transpose_ref(x, w, **kw), _naive_transpose(x, w, **kw),
                               rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# VJPs against central finite differences
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", GENERAL_CASES, ids=_ids(GENERAL_CASES))
def test_general_vjp_matches_finite_differences(case):
    x, w = _general_arrays(case)
    kw = _general_kwargs(case)
    g = np.random.default_rng(7).standard_normal(conv_general_ref(x, w, **kw).shape)
    dx, dw = conv_general_ref_vjp(x, w, g, **kw)
    assert dx.shape == x.shape and dw.shape == w.shape
    fdx, fdw = _fd_grads(lambda a, b: conv_general_ref(a, b, **kw), x, w, g)
    np.testing.assert_allclose(dx, fdx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, fdw, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=_ids(TRANSPOSE_CASES))
def test_transpose_vjp_matches_finite_differences(case):
    x, w = _transpose_arrays(case)
    kw = _transpose_kwargs(case)
    g = np.random.default_rng(7).standard_normal(conv_transpose_ref(x, w, **kw).shape)
    dx, dw = conv_transpose_ref_vjp(x, w, g, **kw)
    assert dx.shape == x.shape and dw.shape == w.shape
    fdx, fdw = _fd_grads(lambda a, b: conv_transpose_ref(a, b, **kw), x, w, g)
    np.testing.assert_allclose(dx, fdx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, fdw, rtol=1e-6, atol=1e-7)


def test_padding_and_dilation_zeros_get_no_gradient():
    # x = [a, b, c], input_dilation 2 -> [a,0,b,0,c]; crop 2 at the start -> [b,0,c];
    # a is never read, so its gradient is exactly zero.
    x = np.ones((1, 3, 1))
    w = np.ones((1, 1, 1))
    kw = dict(NO_OPTS_1D, input_dilation=(2,), padding_lo=(-2,), padding_hi=(1,))
    out = conv_general_ref(x, w, **kw)
    np.testing.assert_array_equal(out.ravel(), [1, 0, 1, 0])
    dx, dw = conv_general_ref_vjp(x, w, np.arange(1.0, 5.0).reshape(1, 4, 1), **kw)
    np.testing.assert_array_equal(dx.ravel(), [0, 1, 3])
    np.testing.assert_array_equal(dw.ravel(), [4])


# ----------------------------------------------------------------------------
# cross-checks between the two independent implementations
# ----------------------------------------------------------------------------


def _transpose_weight_as_forward(w, groups):
    """Regroup a transposed-conv weight (C_out_T, *K, C_in_T/G) for the forward conv
    whose VJP wrt its input is the transposed conv.

    That forward conv maps C_out_T channels to C_in_T channels, so its weight has
    shape (C_in_T, *K, C_out_T/G) with
        v[g*Cin_g + i, k, l] = w[g*Cout_g + l, k, i].
    For groups=1 this is just swapping the first and last axes of w.
    """
    c_out, *k, cin_g = w.shape
    cout_g = c_out // groups
    wg = w.reshape(groups, cout_g, *k, cin_g)
    vg = np.moveaxis(wg, [1, -1], [-1, 1])  # (G, Cin_g, *K, Cout_g)
    return vg.reshape(groups * cin_g, *k, cout_g)


def _forward_weight_as_transpose(v, groups):
    """Inverse of :func:`_transpose_weight_as_forward`."""
    c, *k, cout_g = v.shape
    cin_g = c // groups
    vg = v.reshape(groups, cin_g, *k, cout_g)
    return np.moveaxis(vg, [1, -1], [-1, 1]).reshape(groups * cout_g, *k, cin_g)


def _adjoint_forward_kwargs(case):
    """Forward conv F with F^T == conv_transpose (in its input argument).

    F reads z (the transposed output, length O) padded by ``padding`` at the low
    end; its output position o and tap k read z[o*stride + k*dilation - padding],
    exactly where conv_transpose writes x[o] * w[k].  padding_hi = padding -
    output_padding makes F's output length S again:
        (O + 2p - op - (d(K-1)+1)) // s + 1 = ((S-1)s) // s + 1 = S.
    """
    _, _, _, _, _, stride, padding, dilation, output_padding, groups = case
    n = len(stride)
    return dict(stride=stride, padding_lo=padding,
                padding_hi=tuple(padding[a] - output_padding[a] for a in range(n)),
                kernel_dilation=dilation, input_dilation=(1,) * n,
                groups=groups, flip=False)


def test_weight_regrouping_groups1_is_axis_swap():
    w = np.random.default_rng(0).standard_normal((3, 2, 4, 5))
    np.testing.assert_array_equal(_transpose_weight_as_forward(w, 1), np.swapaxes(w, 0, -1))
    w = np.random.default_rng(0).standard_normal((6, 2, 2))
    v = _transpose_weight_as_forward(w, 3)
    np.testing.assert_array_equal(_forward_weight_as_transpose(v, 3), w)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=_ids(TRANSPOSE_CASES))
def test_transpose_is_adjoint_of_forward(case):
    x, w = _transpose_arrays(case)
    tkw = _transpose_kwargs(case)
    fkw = _adjoint_forward_kwargs(case)
    groups = case[9]
    v = _transpose_weight_as_forward(w, groups)

    y = conv_transpose_ref(x, w, **tkw)
    # z: any point (F is linear in z) of the transposed output's shape
    z = np.random.default_rng(3).standard_normal(y.shape)
    assert conv_general_ref(z, v, **fkw).shape == x.shape

    # transpose forward == VJP of F wrt its input, cotangent x
    dz, _ = conv_general_ref_vjp(z, v, x, **fkw)
    np.testing.assert_allclose(y, dz, rtol=1e-12, atol=1e-12)

    # and the other way round, with cotangent g on the transposed output
    g = np.random.default_rng(4).standard_normal(y.shape)
    dx_t, dw_t = conv_transpose_ref_vjp(x, w, g, **tkw)
    np.testing.assert_allclose(dx_t, conv_general_ref(g, v, **fkw), rtol=1e-12, atol=1e-12)
    _, dv = conv_general_ref_vjp(g, v, x, **fkw)
    np.testing.assert_allclose(dw_t, _forward_weight_as_transpose(dv, groups),
                               rtol=1e-12, atol=1e-12)

    # inner-product form of adjointness: <T x, g> == <x, T^* g>
    np.testing.assert_allclose(np.sum(y * g), np.sum(x * dx_t), rtol=1e-12)


def _dilated_forward_kwargs(case, k_shape):
    """conv_transpose == conv_general with input_dilation=stride, flipped kernel."""
    _, _, _, _, _, stride, padding, dilation, output_padding, groups = case
    n = len(stride)
    ext = [dilation[a] * (k_shape[a] - 1) for a in range(n)]
    return dict(stride=(1,) * n,
                padding_lo=tuple(ext[a] - padding[a] for a in range(n)),
                padding_hi=tuple(ext[a] - padding[a] + output_padding[a] for a in range(n)),
                kernel_dilation=dilation, input_dilation=stride,
                groups=groups, flip=True)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=_ids(TRANSPOSE_CASES))
def test_transpose_equals_input_dilated_flipped_forward(case):
    x, w = _transpose_arrays(case)
    tkw = _transpose_kwargs(case)
    fkw = _dilated_forward_kwargs(case, case[4])
    y = conv_transpose_ref(x, w, **tkw)
    np.testing.assert_allclose(conv_general_ref(x, w, **fkw), y, rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(5).standard_normal(y.shape)
    dx_t, dw_t = conv_transpose_ref_vjp(x, w, g, **tkw)
    dx_f, dw_f = conv_general_ref_vjp(x, w, g, **fkw)
    np.testing.assert_allclose(dx_t, dx_f, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw_t, dw_f, rtol=1e-12, atol=1e-12)


def test_some_transpose_case_has_negative_low_padding():
    """Guard: the dilated-forward cross-check really exercises negative padding_lo."""
    lows = [min(_dilated_forward_kwargs(c, c[4])["padding_lo"]) for c in TRANSPOSE_CASES]
    assert min(lows) < 0
