"""GroupNorm: MLX's interleaved grouping and PyTorch's contiguous grouping.

Reference from the definition (explicit channel-to-group assignment, float64), MLX's
mlx.nn.GroupNorm (both settings), PyTorch's nn.GroupNorm (pytorch_compatible=True) and Flax's
nnx.GroupNorm, which groups contiguously like PyTorch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tolerances import assert_close

import convnn.layers as L
from convnn._flax_compat import get_value, set_value

pytestmark = pytest.mark.floor  # runs again at the version floor in CI


def groupnorm_ref(x, groups, eps, weight, bias, pytorch_compatible):
    x = np.asarray(x, np.float64)
    c = x.shape[-1]
    channel = np.arange(c)
    group = channel // (c // groups) if pytorch_compatible else channel % groups
    y = np.empty_like(x)
    for b in range(x.shape[0]):
        for g in range(groups):
            sel = x[b][..., group == g]
            mean, var = sel.mean(), sel.var()
            y[b][..., group == g] = (sel - mean) / np.sqrt(var + eps)
    return y * weight + bias


# (shape, num_groups)
CASES = [((3, 8), 4), ((2, 5, 6), 3), ((2, 4, 5, 8), 4), ((2, 4, 5, 8), 1), ((2, 3, 4, 2, 6), 2)]


def _operands(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + rng.standard_normal(shape[-1])).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    return x, w, b


def _ours(groups, dims, w, b, **kwargs):
    gn = L.GroupNorm(groups, dims, **kwargs)
    set_value(gn.weight, jnp.asarray(w, gn.weight.dtype))
    set_value(gn.bias, jnp.asarray(b, gn.bias.dtype))
    return gn


@pytest.mark.parametrize("pytorch_compatible", [False, True])
@pytest.mark.parametrize("shape, groups", CASES)
def test_against_reference(shape, groups, pytorch_compatible):
    x, w, b = _operands(shape, 0)
    gn = _ours(groups, shape[-1], w, b, pytorch_compatible=pytorch_compatible)
    out = gn(x)
    ref = groupnorm_ref(x, groups, 1e-5, w, b, pytorch_compatible)
    assert_close(out, ref, np.float32, what="reference")
    # float64 in, float64 out, against the same reference at float64 tolerance
    gn64 = _ours(groups, shape[-1], w, b, pytorch_compatible=pytorch_compatible,
                 param_dtype=jnp.float64)
    assert_close(gn64(x.astype(np.float64)), ref, np.float64, what="float64")


@pytest.mark.parametrize("pytorch_compatible", [False, True])
@pytest.mark.parametrize("shape, groups", CASES)
def test_against_mlx(shape, groups, pytorch_compatible, mx, mnn):
    x, w, b = _operands(shape, 0)
    out = _ours(groups, shape[-1], w, b, pytorch_compatible=pytorch_compatible)(x)
    m = mnn.GroupNorm(groups, shape[-1], pytorch_compatible=pytorch_compatible)
    m.weight, m.bias = mx.array(w), mx.array(b)
    assert_close(out, np.array(m(mx.array(x))), np.float32, what="mlx")


def test_groupings_differ():
    x, w, b = _operands((2, 4, 4, 8), 1)
    interleaved = L.GroupNorm(4, 8)(x)
    contiguous = L.GroupNorm(4, 8, pytorch_compatible=True)(x)
    assert np.max(np.abs(np.asarray(interleaved) - np.asarray(contiguous))) > 0.1


@pytest.mark.parametrize("shape, groups", [((2, 8), 2), ((2, 4, 5, 6), 3), ((1, 3, 4, 2, 4), 2)])
def test_pytorch_compatible_against_torch(shape, groups, torch):
    x, w, b = _operands(shape, 2)
    x64 = x.astype(np.float64)
    gn = _ours(groups, shape[-1], w, b, pytorch_compatible=True, param_dtype=jnp.float64)
    t = torch.nn.GroupNorm(groups, shape[-1], eps=1e-5).double()
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(w.astype(np.float64)))
        t.bias.copy_(torch.from_numpy(b.astype(np.float64)))
        ref = t(torch.from_numpy(np.moveaxis(x64, -1, 1))).numpy()
    assert_close(gn(x64), np.moveaxis(ref, 1, -1), np.float64, what="torch")


@pytest.mark.parametrize("shape, groups", [((2, 8), 2), ((2, 4, 5, 6), 3), ((1, 3, 4, 2, 4), 2)])
def test_pytorch_compatible_against_flax(shape, groups):
    x, w, b = _operands(shape, 2)
    x64 = x.astype(np.float64)
    gn = _ours(groups, shape[-1], w, b, pytorch_compatible=True, param_dtype=jnp.float64)
    f = nnx.GroupNorm(shape[-1], num_groups=groups, epsilon=1e-5, param_dtype=jnp.float64,
                      rngs=nnx.Rngs(0))
    set_value(f.scale, jnp.asarray(w, jnp.float64))
    set_value(f.bias, jnp.asarray(b, jnp.float64))
    # nnx.GroupNorm mixes float32 constants into float64 math: it needs standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        flax_out = f(jnp.asarray(x64))
    assert_close(gn(x64), flax_out, np.float64, what="nnx.GroupNorm")


def test_no_affine_and_dtypes():
    x, _, _ = _operands((2, 4, 4, 6), 3)
    gn = L.GroupNorm(3, 6, affine=False)
    assert gn.weight is None and gn.bias is None
    assert nnx.state(gn, nnx.Param) == nnx.State({})
    ref = groupnorm_ref(x, 3, 1e-5, 1.0, 0.0, False)
    assert_close(gn(x), ref, np.float32)
    for dtype in (jnp.float16, jnp.bfloat16):
        xh = jnp.asarray(x, dtype)
        out = L.GroupNorm(3, 6, affine=False)(xh)
        assert out.dtype == jnp.dtype(dtype)
        assert_close(out, groupnorm_ref(np.asarray(xh, np.float64), 3, 1e-5, 1, 0, False), dtype)
    # MLX's promotion: float16 input with float32 parameters computes in float32
    assert L.GroupNorm(3, 6)(jnp.asarray(x, jnp.float16)).dtype == jnp.float32
    assert L.GroupNorm(3, 6, dtype=jnp.float16)(x).dtype == jnp.float16
    assert L.GroupNorm(3, 6, param_dtype=jnp.bfloat16).weight.dtype == jnp.bfloat16


def test_eps_and_grad():
    x, w, b = _operands((2, 3, 3, 4), 4)
    gn = _ours(2, 4, w, b, eps=0.5)
    assert_close(gn(x), groupnorm_ref(x, 2, 0.5, w, b, False), np.float32)

    def loss(model, x):
        return jnp.sum(model(x) ** 2)

    grads = nnx.grad(loss)(gn, x)
    assert get_value(grads["weight"]).shape == (4,) and get_value(grads["bias"]).shape == (4,)
    # d/d bias of sum(y^2) is 2 * sum(y) per channel
    y = np.asarray(gn(x), np.float64)
    assert_close(get_value(grads["bias"]), 2 * y.reshape(-1, 4).sum(0), np.float32)
    np.testing.assert_array_equal(jax.jit(gn.__call__)(x).shape, x.shape)


@pytest.mark.parametrize(
    "args", [(4, 8), (2, 6, 1e-3, False, True), (1, 3, 1e-5, True, False)]
)
def test_repr_matches_mlx(args, mnn):
    assert repr(L.GroupNorm(*args)) == repr(mnn.GroupNorm(*args))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: L.GroupNorm(3, 8), ValueError, "num_groups"),
        (lambda: L.GroupNorm(0, 8), ValueError, "num_groups"),
        (lambda: L.GroupNorm(2, 0), ValueError, "dims"),
        (lambda: L.GroupNorm(2.0, 8), TypeError, "num_groups"),
        (lambda: L.GroupNorm(2, 8, eps=0), ValueError, "eps"),
        (lambda: L.GroupNorm(2, 8, eps="1"), TypeError, "eps"),
        (lambda: L.GroupNorm(2, 8, affine=1), TypeError, "affine"),
        (lambda: L.GroupNorm(2, 8, pytorch_compatible=None), TypeError, "pytorch_compatible"),
        (lambda: L.GroupNorm(2, 8, dtype=jnp.int32), TypeError, "dtype"),
        (lambda: L.GroupNorm(2, 8)(np.zeros((2, 4, 6), np.float32)), ValueError, "input"),
        (lambda: L.GroupNorm(2, 8)(np.zeros((8,), np.float32)), ValueError, "input"),
        (lambda: L.GroupNorm(2, 8)(np.zeros((2, 8), np.int32)), TypeError, "input"),
    ],
)
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
