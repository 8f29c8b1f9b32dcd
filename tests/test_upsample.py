"""Upsample: against MLX's mlx.nn.Upsample, a float64 reference built from the definition
(one interpolation matrix per axis), and PyTorch's interpolate where the two conventions agree."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_close

import convnn.layers as L

pytestmark = pytest.mark.floor  # runs again at the version floor in CI


# ----------------------------------------------------------------------------------------------
# Reference: y = A_d ... A_1 x with A (M, N) per axis, from MLX's documented formulas in float64.


def _position(i, n, m, scale, align_corners):
    if align_corners:
        return i * (n - 1) / max(m - 1, 1)
    return (i + 0.5) / scale - 0.5 - ((m - scale * n) / scale) / 2  # centres of the two grids


def _keys(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def interp_matrix(n, scale, mode, align_corners):
    m = int(scale * n)
    A = np.zeros((m, n))
    for i in range(m):
        if mode == "nearest":
            if scale == int(scale):
                A[i, i // int(scale)] = 1
            elif m > n:
                A[i, int(np.round((i + 0.5) * n / m - 0.5))] = 1
            else:
                A[i, int(math.floor(i * n / m))] = 1
            continue
        pos = _position(i, n, m, scale, align_corners)
        if mode == "linear":
            pos = min(max(pos, 0.0), n - 1)
            lo = math.floor(pos)
            A[i, lo] += 1 - (pos - lo)
            A[i, min(lo + 1, n - 1)] += pos - lo
        else:
            lo = math.floor(pos)
            for j in range(lo - 1, lo + 3):
                A[i, min(max(j, 0), n - 1)] += _keys(pos - j)
    return A


def upsample_ref(x, scale, mode, align_corners):
    x = np.asarray(x, np.float64)
    d = x.ndim - 2
    scales = scale if isinstance(scale, tuple) else (scale,) * d
    for axis, s in enumerate(scales):
        A = interp_matrix(x.shape[axis + 1], float(s), mode, align_corners)
        x = np.moveaxis(np.tensordot(A, x, axes=([1], [axis + 1])), 0, axis + 1)
    return x


# (input shape, scale_factor)
SHAPES = [
    ((2, 5, 3), 2),
    ((2, 5, 3), 1.5),
    ((2, 7, 3), 0.5),
    ((2, 9, 2), 2.3),
    ((2, 4, 5, 3), 2),
    ((2, 4, 5, 3), 3),
    ((1, 5, 7, 2), (1.5, 2.5)),
    ((1, 6, 7, 2), (0.5, 0.75)),
    ((1, 3, 4, 5, 2), 2),
    ((1, 3, 5, 4, 2), (2.0, 1.5, 0.5)),
]
MODES = ["nearest", "linear", "cubic"]


def _cases(reference=False):
    for shape, scale in SHAPES:
        for mode in MODES:
            scales = scale if isinstance(scale, tuple) else (scale,)
            if reference and mode == "nearest" and any(v != int(v) for v in scales):
                # Rounding ties ((i + 0.5) * S / M - 0.5 at a half integer, even S) depend on
                # float precision; float32 positions decide as in MLX (tested against MLX).
                continue
            for ac in (False, True) if mode != "nearest" else (False,):
                yield pytest.param(shape, scale, mode, ac, id=f"{shape}-{scale}-{mode}-ac{int(ac)}")


@pytest.mark.parametrize("shape, scale, mode, align_corners", list(_cases()))
def test_against_mlx(shape, scale, mode, align_corners, mx, mnn):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = np.array(mnn.Upsample(scale, mode, align_corners)(mx.array(x)))
    out = L.Upsample(scale, mode, align_corners)(x)
    assert out.shape == ref.shape
    if mode == "nearest":
        np.testing.assert_array_equal(out, ref)
    else:
        assert_close(out, ref, np.float32, what=mode)


def test_nearest_non_integer_scales_against_mlx(mx, mnn):
    # Ties of the rounding rule appear for even sizes; float32 positions decide as in MLX.
    for n in (2, 4, 6):
        for scale in (1.5, 2.5, 1.25, 0.75):
            x = np.random.default_rng(n).standard_normal((1, n, 2)).astype(np.float32)
            ref = np.array(mnn.Upsample(scale, "nearest")(mx.array(x)))
            np.testing.assert_array_equal(L.Upsample(scale, "nearest")(x), ref)


@pytest.mark.parametrize("shape, scale, mode, align_corners", list(_cases(reference=True)))
def test_against_reference(shape, scale, mode, align_corners):
    x = np.random.default_rng(1).standard_normal(shape)
    out = L.Upsample(scale, mode, align_corners)(x)
    assert out.dtype == jnp.float64
    assert_close(out, upsample_ref(x, scale, mode, align_corners), np.float64, what=mode)


@pytest.mark.parametrize(
    "mode, torch_mode, shape",
    [
        ("linear", "linear", (2, 6, 3)),
        ("linear", "bilinear", (2, 4, 6, 3)),
        ("linear", "trilinear", (1, 4, 2, 6, 2)),
        ("cubic", "bicubic", (2, 4, 6, 3)),
    ],
)
@pytest.mark.parametrize("scale", [2, 3, 1.5, 0.5])
@pytest.mark.parametrize("align_corners", [False, True])
def test_against_torch(mode, torch_mode, shape, scale, align_corners, torch, F):
    # PyTorch and MLX agree when scale * size is an integer on every axis (true here).
    x = np.random.default_rng(2).standard_normal(shape)
    t = torch.from_numpy(np.moveaxis(x, -1, 1))
    ref = F.interpolate(t, scale_factor=scale, mode=torch_mode, align_corners=align_corners)
    ref = np.moveaxis(ref.numpy(), 1, -1)
    assert_close(L.Upsample(scale, mode, align_corners)(x), ref, np.float64, what=torch_mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cubic_neighbour_rounding(dtype, torch, F):
    # MLX 0.32 takes the right neighbour as floor(pos + 1): at output 41 of this case pos is
    # just below 16 and pos + 1 rounds to 17 in float32, so MLX skips sample 16 and returns ~0
    # for a ramp 0..16. Cubic convolution reproduces a ramp; PyTorch agrees.
    x = np.arange(17, dtype=dtype).reshape(1, 17, 1, 1)
    out = np.asarray(L.Upsample((2.5, 1.0), "cubic", align_corners=True)(x))[0, :, 0, 0]
    t = torch.from_numpy(np.moveaxis(x.astype(np.float64), -1, 1))
    ref = F.interpolate(t, scale_factor=(2.5, 1.0), mode="bicubic", align_corners=True)
    assert_close(out, ref.numpy()[0, 0, :, 0], dtype)
    assert_close(out[41], 16.0, dtype)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_keeps_dtype(mode, dtype):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 5, 6, 2)), dtype)
    out = L.Upsample(1.5, mode)(x)
    assert out.dtype == jnp.dtype(dtype)
    assert_close(out, upsample_ref(np.asarray(x, np.float64), 1.5, mode, False), dtype)


def test_integer_nearest(mx, mnn):
    x = np.arange(12, dtype=np.int32).reshape(1, 3, 4, 1)
    out = L.Upsample((2, 0.5))(x)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, np.array(mnn.Upsample((2.0, 0.5))(mx.array(x))))


def test_jit_and_grad():
    up = L.Upsample(2, "cubic", align_corners=True)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 4, 5, 3)))
    assert_close(jax.jit(up.__call__)(x), up(x), np.float64)
    g = np.random.default_rng(5).standard_normal((2, 8, 10, 3))
    dx = jax.grad(lambda v: jnp.sum(up(v) * g))(x)
    # The map is linear: its gradient is the transposed interpolation.
    A, B = (interp_matrix(n, 2.0, "cubic", True) for n in (4, 5))
    assert_close(dx, np.einsum("ia,jb,nijc->nabc", A, B, g), np.float64)


@pytest.mark.parametrize(
    "scale, mode, align_corners",
    [
        (2, "nearest", False),
        ((2, 1.5), "cubic", True),
        (0.5, "linear", False),
        ([3, 2, 1], "linear", True),
    ],
)
def test_repr_matches_mlx(scale, mode, align_corners, mnn):
    assert repr(L.Upsample(scale, mode, align_corners)) == repr(
        mnn.Upsample(scale, mode, align_corners)
    )


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: L.Upsample(2, "bilinear"), ValueError, "mode"),
        (lambda: L.Upsample(0), ValueError, "scale_factor"),
        (lambda: L.Upsample((2, -1)), ValueError, "scale_factor"),
        (lambda: L.Upsample("2"), TypeError, "scale_factor"),
        (lambda: L.Upsample(True), TypeError, "scale_factor"),
        (lambda: L.Upsample(2, align_corners=1), TypeError, "align_corners"),
        (lambda: L.Upsample(2)(np.zeros((4, 3), np.float32)), ValueError, "spatial axis"),
        (lambda: L.Upsample((2, 2))(np.zeros((1, 4, 3), np.float32)), ValueError, "one scale"),
        (lambda: L.Upsample(0.1)(np.zeros((1, 4, 3), np.float32)), ValueError, "below 1"),
        (lambda: L.Upsample(2, "linear")(np.zeros((1, 4, 3), np.complex64)), TypeError, "dtype"),
        (lambda: L.Upsample(2, antialias=True), ValueError, "antialias"),
        (lambda: L.Upsample(2, "linear", True, True), ValueError, "antialias"),
    ],
)
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
