"""Property tests (hypothesis): identities that tie the public functions to each other.

The transposed convolution is the adjoint of the convolution with the same stride, padding and
dilation: <conv(x, v), y> = <x, conv_transpose(y, w)> where w regroups v's channels, and
``output_padding`` restores the input size that the forward convolution's floor division lost.

The fast tier draws a few examples of each property; the ``slow`` twins (``..._many``) draw more.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convnn


@st.composite
def forward_configs(draw):
    n = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(n))
    spatial = tuple(
        draw(st.integers(max(1, (k - 1) * d + 1 - 2 * p), 8))
        for k, d, p in zip(kernel, dilation, padding)
    )
    return n, groups, c_in, c_out, kernel, stride, dilation, padding, spatial


FAST = settings(max_examples=15, deadline=None)
SLOW = settings(max_examples=80, deadline=None)


def _check_adjoint(config, seed):
    n, groups, c_in, c_out, kernel, stride, dilation, padding, spatial = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *spatial, c_in))
    v = rng.standard_normal((c_out, *kernel, c_in // groups))
    conv = getattr(convnn, f"conv{n}d")
    conv_t = getattr(convnn, f"conv_transpose{n}d")
    y_shape = conv(jnp.asarray(x), jnp.asarray(v), stride, padding, dilation, groups).shape
    y = rng.standard_normal(y_shape)
    # regroup: w[g * Cin_g + i, k, l] = v[g * Cout_g + l, k, i]
    cin_g, cout_g = c_in // groups, c_out // groups
    w = v.reshape(groups, cout_g, *kernel, cin_g)
    w = np.moveaxis(np.moveaxis(w, 1, -1), n + 1, 1).reshape(c_in, *kernel, cout_g)
    out_pad = tuple(
        (s + 2 * p - d * (k - 1) - 1) % st_
        for s, p, d, k, st_ in zip(spatial, padding, dilation, kernel, stride)
    )
    xt = conv_t(jnp.asarray(y), jnp.asarray(w), stride, padding, dilation, out_pad, groups)
    assert xt.shape == x.shape
    lhs = float(
        jnp.vdot(conv(jnp.asarray(x), jnp.asarray(v), stride, padding, dilation, groups), y)
    )
    rhs = float(jnp.vdot(jnp.asarray(x), xt))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@FAST
@given(forward_configs(), st.integers(0, 2**31 - 1))
def test_conv_transpose_is_the_adjoint_of_conv(config, seed):
    _check_adjoint(config, seed)


@pytest.mark.slow
@SLOW
@given(forward_configs(), st.integers(0, 2**31 - 1))
def test_conv_transpose_is_the_adjoint_of_conv_many(config, seed):
    _check_adjoint(config, seed)


def _check_flip(config, seed):
    n, groups, c_in, c_out, kernel, stride, dilation, padding, spatial = config
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((1, *spatial, c_in)))
    w = rng.standard_normal((c_out, *kernel, c_in // groups))
    flipped = convnn.conv_general(
        x, jnp.asarray(w), stride, list(padding), dilation, 1, groups, True
    )
    reversed_w = jnp.asarray(w[(slice(None), *(slice(None, None, -1),) * n)])
    plain = convnn.conv_general(x, reversed_w, stride, list(padding), dilation, 1, groups, False)
    np.testing.assert_allclose(np.asarray(flipped), np.asarray(plain), rtol=1e-12, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(forward_configs(), st.integers(0, 2**31 - 1))
def test_flip_is_correlation_with_the_reversed_kernel(config, seed):
    _check_flip(config, seed)


@pytest.mark.slow
@SLOW
@given(forward_configs(), st.integers(0, 2**31 - 1))
def test_flip_is_correlation_with_the_reversed_kernel_many(config, seed):
    _check_flip(config, seed)
