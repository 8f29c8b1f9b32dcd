"""Pooling and Upsample where MLX accepts what convnn used to refuse: integer inputs, padding
above half the kernel, antialiasing. Values (and gradients) against the real MLX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import convnn
import convnn.layers as L


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _ints(*shape, seed=0, dtype=np.int32):
    return np.random.default_rng(seed).integers(-50, 50, shape).astype(dtype)


@pytest.mark.parametrize(
    ("cls", "kwargs", "shape"),
    [
        ("MaxPool1d", {"kernel_size": 3, "padding": 2}, (2, 7, 3)),
        ("MaxPool1d", {"kernel_size": 2, "stride": 1, "padding": 2}, (2, 5, 3)),
        ("AvgPool1d", {"kernel_size": 3, "padding": 2}, (2, 7, 3)),
        ("AvgPool1d", {"kernel_size": 2, "stride": 3, "padding": 3}, (2, 7, 3)),
        ("MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": (2, 1)}, (1, 6, 7, 2)),
        ("AvgPool2d", {"kernel_size": (2, 3), "padding": (2, 2)}, (1, 6, 7, 2)),
        ("AvgPool3d", {"kernel_size": 2, "padding": 1}, (1, 4, 4, 4, 2)),
    ],
)
def test_pool_padding_beyond_half_kernel_matches_mlx(mx, mnn, cls, kwargs, shape):
    x = _x(*shape)
    ref = np.array(getattr(mnn, cls)(**kwargs)(mx.array(x)))
    ours = getattr(L, cls)(**kwargs)
    y = np.asarray(ours(jnp.asarray(x)))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ref))  # windows of padding only
    finite = np.isfinite(ref)
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-6, atol=1e-6)
    if cls.startswith("Avg"):
        g = _x(*ref.shape, seed=3)
        g_ref = mx.grad(lambda a: (getattr(mnn, cls)(**kwargs)(a) * mx.array(g)).sum())(
            mx.array(x)
        )
        g_ours = jax.grad(lambda a: jnp.sum(ours(a) * g))(jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(g_ours), np.array(g_ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "dtype", [np.int32, *(pytest.param(d, marks=pytest.mark.slow) for d in (np.int8, np.uint8))]
)
def test_pool_integer_inputs_match_mlx(mx, mnn, dtype):
    x = _ints(2, 6, 7, 3, dtype=dtype) if dtype != np.uint8 else _ints(2, 6, 7, 3) % 200
    x = x.astype(dtype)
    for cls, kwargs in [("AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}),
                        ("AvgPool2d", {"kernel_size": 2}),
                        ("MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1})]:
        ref = np.array(getattr(mnn, cls)(**kwargs)(mx.array(x)))
        y = np.asarray(getattr(L, cls)(**kwargs)(jnp.asarray(x)))
        assert y.dtype == ref.dtype, (cls, y.dtype, ref.dtype)
        np.testing.assert_allclose(y, ref, rtol=1e-6)


def test_avg_pool_integer_input_from_the_definition():
    x = np.arange(8, dtype=np.int32).reshape(1, 8, 1)
    y = convnn.avg_pool1d(jnp.asarray(x), 3, 2, 1)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y)[0, :, 0], [1 / 3, 2.0, 4.0, 6.0])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize(
    "scale", [(0.4, 0.75), 1.5, *(pytest.param(s, marks=pytest.mark.slow) for s in
                                  (0.5, 0.3, 2.0, 0.7))],
)
def test_upsample_antialias_matches_mlx(mx, mnn, mode, scale):
    x = _x(2, 9, 11, 3)
    ref = np.array(mnn.Upsample(scale, mode, antialias=True)(mx.array(x)))
    layer = L.Upsample(scale, mode, antialias=True)
    y = np.asarray(layer(jnp.asarray(x)))
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert repr(layer) == repr(mnn.Upsample(scale, mode, antialias=True))


def test_upsample_antialias_from_the_definition():
    # Halving a ramp with the triangle filter widened to radius 2: taps at distances 0.5 and 1.5
    # weigh 0.75 and 0.25 each side (normalized over the taps inside the input).
    x = jnp.arange(8.0).reshape(1, 8, 1)
    y = np.asarray(L.Upsample(0.5, "linear", antialias=True)(x))[0, :, 0]
    inner = [(0.25 * (2 * i - 1) + 0.75 * (2 * i) + 0.75 * (2 * i + 1) + 0.25 * (2 * i + 2)) / 2
             for i in range(1, 3)]
    first = (0.75 * 0 + 0.75 * 1 + 0.25 * 2) / 1.75
    last = (0.25 * 5 + 0.75 * 6 + 0.75 * 7) / 1.75
    np.testing.assert_allclose(y, [first, *inner, last], rtol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_upsample_integer_inputs_match_mlx(mx, mnn, mode):
    x = _ints(1, 5, 4, 2)
    ref = np.array(mnn.Upsample(2, mode)(mx.array(x)))
    y = np.asarray(L.Upsample(2, mode)(jnp.asarray(x)))
    assert y.dtype == ref.dtype
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-5)
