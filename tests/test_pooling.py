"""Pooling: convnn.max_pool*d / avg_pool*d and the MaxPool*d / AvgPool*d layers.

Tiers: a float64 NumPy reference written from the definition (windows enumerated one by one);
PyTorch's max_pool / avg_pool (NCHW, transposed) for ceil_mode, count_include_pad and dilation;
MLX's pooling layers for MLX's semantics; module = function; argument errors; dtypes; gradients.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tolerances import assert_close

import convnn
import convnn.layers as L

pytestmark = pytest.mark.floor  # runs again at the version floor in CI


# ----------------------------------------------------------------------------------------------
# Reference from the definition


def _out_size(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_ref(x, kind, kernel, stride, padding, dilation, ceil_mode, count_include_pad):
    """x: (N, *spatial, C) float64. Visits every window position explicitly."""
    n = len(kernel)
    spatial = x.shape[1:-1]
    outs = [_out_size(*a, ceil_mode) for a in zip(spatial, kernel, stride, padding, dilation)]
    y = np.zeros((x.shape[0], *outs, x.shape[-1]))
    for o in itertools.product(*(range(v) for v in outs)):
        starts = [oi * s - p for oi, s, p in zip(o, stride, padding)]
        values, padded_count, input_count = [], 1, 1
        for axis in range(n):
            pos = [starts[axis] + j * dilation[axis] for j in range(kernel[axis])]
            # positions inside the padded input (not beyond what ceil_mode adds)
            padded_count *= sum(-padding[axis] <= q < spatial[axis] + padding[axis] for q in pos)
            input_count *= sum(0 <= q < spatial[axis] for q in pos)
        for offs in itertools.product(*(range(k) for k in kernel)):
            idx = [st + j * d for st, j, d in zip(starts, offs, dilation)]
            if all(0 <= q < sz for q, sz in zip(idx, spatial)):
                values.append(x[(slice(None), *idx, slice(None))])
        if not values:  # a window in the padding only (MLX allows any padding)
            y[(slice(None), *o, slice(None))] = -np.inf if kind == "max" else 0.0
        elif kind == "max":
            y[(slice(None), *o, slice(None))] = np.max(values, axis=0)
        else:
            div = padded_count if count_include_pad else input_count
            y[(slice(None), *o, slice(None))] = np.sum(values, axis=0) / div
    return y


def pool_ref_vjp(x, g, kind, kernel, stride, padding, dilation, ceil_mode, count_include_pad):
    """The input's cotangent for output cotangent ``g``, from the definition: a max sends each
    window's cotangent to its first maximal input element in window order; an average spreads
    it over the window's input elements, divided as in :func:`pool_ref`."""
    n = len(kernel)
    spatial = x.shape[1:-1]
    dx = np.zeros_like(x)
    for o in itertools.product(*(range(v) for v in g.shape[1:-1])):
        starts = [oi * s - p for oi, s, p in zip(o, stride, padding)]
        div_padded, div_input = 1, 1
        for axis in range(n):
            pos = [starts[axis] + j * dilation[axis] for j in range(kernel[axis])]
            div_padded *= sum(-padding[axis] <= q < spatial[axis] + padding[axis] for q in pos)
            div_input *= sum(0 <= q < spatial[axis] for q in pos)
        inside = [tuple(st + j * d for st, j, d in zip(starts, offs, dilation))
                  for offs in itertools.product(*(range(k) for k in kernel))]
        inside = [idx for idx in inside if all(0 <= q < sz for q, sz in zip(idx, spatial))]
        gi = g[(slice(None), *o, slice(None))]
        if kind == "max" and inside:
            values = np.stack([x[(slice(None), *idx, slice(None))] for idx in inside])
            first = np.argmax(values, axis=0)
            for t, idx in enumerate(inside):
                dx[(slice(None), *idx, slice(None))] += np.where(first == t, gi, 0.0)
        elif kind == "avg":
            div = div_padded if count_include_pad else div_input
            for idx in inside:
                dx[(slice(None), *idx, slice(None))] += gi / div
    return dx


def _tup(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


# (n, spatial, kernel, stride, padding, dilation, ceil_mode, count_include_pad)
CASES = [
    (1, (9,), 2, None, 0, 1, False, True),
    (1, (10,), 3, 2, 1, 1, True, True),
    (1, (10,), 3, 2, 1, 1, True, False),
    (1, (11,), 3, 2, 1, 2, True, True),
    (2, (7, 8), 2, None, 0, 1, False, True),
    (2, (7, 8), 3, 2, 1, 1, False, True),
    (2, (7, 8), 3, 2, 1, 1, True, True),
    (2, (7, 8), 3, 2, 1, 1, True, False),
    (2, (9, 6), (3, 2), (2, 3), (1, 1), 1, True, False),
    (2, (8, 8), 2, 3, 1, 1, True, True),  # a ceil window would start in the right padding
    (2, (6, 6), 4, 3, 2, 1, True, False),
    (2, (11, 9), 3, 1, 1, (2, 1), True, True),
    (2, (5, 5), 5, 1, 2, 1, False, False),
    (3, (5, 6, 4), 2, None, 0, 1, False, True),
    (3, (5, 6, 5), (3, 2, 3), 2, (1, 1, 0), 1, True, False),
    # ceil_mode with padding above kernel_size // 2 (MLX's any padding): the last window would
    # start in the right padding and is dropped, so less than the padding is added on the right.
    (1, (5,), 1, 1, 1, 1, True, True),
    (2, (5, 3), (1, 2), 2, (2, 0), 1, True, True),
    (1, (4,), 2, 1, 2, 1, True, True),
]
IDS = [f"{c[0]}d-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-ceil{int(c[6])}-cip{int(c[7])}" for c in CASES]
# PyTorch refuses padding above half the kernel.
TORCH = [(c, i) for c, i in zip(CASES, IDS)
         if all(p <= k // 2 for p, k in zip(_tup(c[4], c[0]), _tup(c[2], c[0])))]


def _call(kind, case, x):
    n, _, k, s, p, d, ceil, cip = case
    if kind == "max":
        return getattr(convnn, f"max_pool{n}d")(x, k, s, p, ceil_mode=ceil, dilation=d)
    return getattr(convnn, f"avg_pool{n}d")(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)


def _ref(kind, case, x):
    n, _, k, s, p, d, ceil, cip = case
    s = k if s is None else s
    d = d if kind == "max" else 1
    return pool_ref(x, kind, _tup(k, n), _tup(s, n), _tup(p, n), _tup(d, n), ceil, cip)


def _input(case, seed=0, batch=2, channels=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *case[1], channels))


# ----------------------------------------------------------------------------------------------
# Tier 1: the definition


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_against_reference(kind, case):
    x = _input(case)
    assert_close(_call(kind, case, x), _ref(kind, case, x), np.float64, what=f"{kind} {case}")


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_against_reference(kind, case):
    """Dilated max pools included: JAX cannot differentiate reduce_window's dilated maximum, so
    convnn takes it over the window's taps."""
    x = _input(case, seed=3)
    y, vjp = jax.vjp(lambda v: _call(kind, case, v), jnp.asarray(x))
    g = np.random.default_rng(4).standard_normal(y.shape)
    n, _, k, s, p, d, ceil, cip = case
    s = k if s is None else s
    d = d if kind == "max" else 1
    want = pool_ref_vjp(x, g, kind, _tup(k, n), _tup(s, n), _tup(p, n), _tup(d, n), ceil, cip)
    assert_close(vjp(jnp.asarray(g))[0], want, np.float64, what=f"{kind} {case}")


@st.composite
def pools(draw):
    """A random pooling call: (kind, case), padding up to 2 (above half the kernel too)."""
    n = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["max", "avg"]))
    ints = lambda lo, hi: tuple(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)))
    kernel, stride, padding = ints(1, 3), ints(1, 3), ints(0, 2)
    dilation = ints(1, 2) if kind == "max" else (1,) * n
    ceil, cip = draw(st.booleans()), draw(st.booleans())
    if kind == "avg" and not cip:
        padding = tuple(min(p, k // 2) for p, k in zip(padding, kernel))
    spatial = tuple(max(s, (k - 1) * d + 1 - 2 * p) for s, k, d, p in
                    zip(ints(1, 6 if n < 3 else 4), kernel, dilation, padding))
    return kind, (n, spatial, kernel, stride, padding, dilation, ceil, cip)


def _check_random_pool(kind, case, seed):
    x = _input(case, seed=seed, channels=2)
    y, vjp = jax.vjp(lambda v: _call(kind, case, v), jnp.asarray(x))
    assert_close(y, _ref(kind, case, x), np.float64, what=f"{kind} {case}")
    g = np.random.default_rng(seed + 1).standard_normal(y.shape)
    n, _, k, s, p, d, ceil, cip = case
    want = pool_ref_vjp(x, g, kind, k, s, p, d, ceil, cip)
    assert_close(vjp(jnp.asarray(g))[0], want, np.float64, what=f"grad {kind} {case}")


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(pools(), st.integers(0, 2**16))
def test_random_pools_match_the_reference(pool, seed):
    _check_random_pool(*pool, seed)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(pools(), st.integers(0, 2**16))
def test_random_pools_match_the_reference_many(pool, seed):
    _check_random_pool(*pool, seed)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_unbatched_equals_batched(kind):
    case = CASES[7]
    x = _input(case, batch=1)
    np.testing.assert_array_equal(_call(kind, case, x[0]), _call(kind, case, x)[0])


# ----------------------------------------------------------------------------------------------
# Tier 2: PyTorch (channels-first)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", [c for c, _ in TORCH], ids=[i for _, i in TORCH])
def test_against_torch(kind, case, torch, F):
    n, _, k, s, p, d, ceil, cip = case
    x = _input(case, seed=1)
    t = torch.from_numpy(np.moveaxis(x, -1, 1))
    if kind == "max":
        ref = getattr(F, f"max_pool{n}d")(t, k, s, p, dilation=d, ceil_mode=ceil)
    else:
        ref = getattr(F, f"avg_pool{n}d")(t, k, s, p, ceil_mode=ceil, count_include_pad=cip)
    ref = np.moveaxis(ref.numpy(), 1, -1)
    assert_close(_call(kind, case, x), ref, np.float64, what=f"{kind} {case}")


@pytest.mark.parametrize("kind, case", [
    ("max", (2, (7, 8), 3, 2, 1, 1, True, False)),
    ("avg", (2, (7, 8), 3, 2, 1, 1, True, False)),
    ("max", (2, (11, 9), 3, 1, 1, (2, 1), True, True)),  # dilated: the taps' maximum
])
def test_gradient_against_torch(kind, case, torch, F):
    n, _, k, s, p, d, ceil, cip = case
    x = _input(case, seed=2)
    g = np.random.default_rng(3).standard_normal(np.shape(_call(kind, case, x)))
    dx = jax.grad(lambda v: jnp.sum(_call(kind, case, v) * g))(jnp.asarray(x))
    t = torch.from_numpy(np.moveaxis(x, -1, 1)).requires_grad_(True)
    if kind == "max":
        out = F.max_pool2d(t, k, s, p, dilation=d, ceil_mode=ceil)
    else:
        out = F.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=cip)
    out.backward(torch.from_numpy(np.moveaxis(g, -1, 1)))
    assert_close(dx, np.moveaxis(t.grad.numpy(), 1, -1), np.float64, what=f"{kind} {case}")


# ----------------------------------------------------------------------------------------------
# Tier 2: MLX's layers (MLX's semantics: no ceil_mode, padded zeros counted)

MLX_CASES = [
    (1, (9,), 2, None, 0),
    (1, (10,), 3, 2, 1),
    (2, (7, 8), 2, None, 0),
    (2, (7, 8), 3, 2, 1),
    (2, (9, 6), (3, 2), (2, 1), (1, 0)),
    (3, (5, 6, 4), 2, 1, 1),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", MLX_CASES, ids=[str(c) for c in MLX_CASES])
def test_layers_against_mlx(kind, case, mx, mnn):
    n, spatial, k, s, p = case
    x = np.random.default_rng(4).standard_normal((2, *spatial, 3)).astype(np.float32)
    name = f"{'Max' if kind == 'max' else 'Avg'}Pool{n}d"
    ref = np.array(getattr(mnn, name)(k, s, p)(mx.array(x)))
    ours = getattr(L, name)(k, s, p)
    assert_close(ours(x), ref, np.float32, what=name)
    assert repr(ours) == repr(getattr(mnn, name)(k, s, p))


# ----------------------------------------------------------------------------------------------
# Modules


@pytest.mark.parametrize(
    "name, kwargs, fn_kwargs",
    [
        ("MaxPool1d", dict(ceil_mode=True, dilation=2), dict(ceil_mode=True, dilation=2)),
        ("MaxPool2d", dict(ceil_mode=True), dict(ceil_mode=True, dilation=1)),
        ("MaxPool3d", dict(), dict(ceil_mode=False, dilation=1)),
        (
            "AvgPool1d",
            dict(count_include_pad=False),
            dict(ceil_mode=False, count_include_pad=False),
        ),
        ("AvgPool2d", dict(ceil_mode=True), dict(ceil_mode=True, count_include_pad=True)),
        ("AvgPool3d", dict(), dict(ceil_mode=False, count_include_pad=True)),
    ],
)
def test_module_equals_function(name, kwargs, fn_kwargs):
    n = int(name[-2])
    x = np.random.default_rng(5).standard_normal((2, *(7,) * n, 3)).astype(np.float32)
    layer = getattr(L, name)(3, 2, 1, **kwargs)
    fn = getattr(convnn, f"{name[:3].lower()}_pool{n}d")
    np.testing.assert_array_equal(layer(x), fn(x, 3, 2, 1, **fn_kwargs))
    # jax 0.5's XLA (the floor) fuses the eager and jitted programs differently: 1 ulp apart.
    np.testing.assert_allclose(jax.jit(layer.__call__)(x), layer(x), rtol=1e-6, atol=0)


def test_repr_extras():
    assert repr(L.MaxPool2d(3, 2, 1, ceil_mode=True, dilation=2)) == (
        "MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 2), "
        "ceil_mode=True)"
    )
    assert repr(L.AvgPool1d(3, count_include_pad=False)) == (
        "AvgPool1d(kernel_size=(3,), stride=(3,), padding=(0,), count_include_pad=False)"
    )


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda x: convnn.max_pool2d(x, 0), ValueError, "kernel_size"),
        (lambda x: convnn.max_pool2d(x, 2, 0), ValueError, "stride"),
        (lambda x: convnn.max_pool2d(x, 2, 1, -1), ValueError, "padding"),
        (lambda x: convnn.avg_pool2d(x, 3, 1, 2, count_include_pad=False), ValueError,
         "half the kernel"),
        (lambda x: convnn.max_pool2d(x, 2, dilation=0), ValueError, "dilation"),
        (lambda x: convnn.max_pool2d(x, 2.0), TypeError, "kernel_size"),
        (lambda x: convnn.max_pool2d(x, (2, 2, 2)), ValueError, "kernel_size"),
        (lambda x: convnn.max_pool2d(x, 2, padding="same"), TypeError, "padding"),
        (lambda x: convnn.max_pool2d(x, 2, ceil_mode=1), TypeError, "ceil_mode"),
        (lambda x: convnn.avg_pool2d(x, 2, count_include_pad=None), TypeError, "count_include_pad"),
        (lambda x: convnn.max_pool2d(x, 7), ValueError, "larger than the padded input"),
        (lambda x: convnn.max_pool2d(x, 3, dilation=3), ValueError, "larger than the padded"),
        (lambda x: convnn.max_pool3d(x[0], 2), ValueError, "input must have shape"),
        (lambda x: convnn.max_pool1d(x, 2), ValueError, "input must have shape"),
        (lambda x: convnn.avg_pool2d(x.astype(np.complex64), 2), TypeError, "floating"),
        (lambda x: convnn.max_pool2d(x > 0, 2), TypeError, "dtype"),
        (lambda x: L.AvgPool2d(3, padding=2, count_include_pad=False), ValueError, "AvgPool2d"),
        (lambda x: L.AvgPool3d(2, stride=(1, 1)), ValueError, "AvgPool3d"),
        (lambda x: L.AvgPool1d(2, count_include_pad="yes"), TypeError, "count_include_pad"),
    ],
)
def test_bad_arguments(call, exc, match):
    x = np.zeros((2, 6, 5, 3), np.float32)
    with pytest.raises(exc, match=match):
        call(x)


# ----------------------------------------------------------------------------------------------
# Dtypes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_dtypes(kind, dtype):
    case = CASES[7]
    x64 = _input(case, seed=6)
    x = jnp.asarray(x64, dtype)
    out = _call(kind, case, x)
    assert out.dtype == jnp.dtype(dtype)
    assert_close(out, _ref(kind, case, np.asarray(x, np.float64)), dtype, what=str(dtype))


def test_max_pool_integers():
    x = np.random.default_rng(7).integers(-100, 100, (2, 7, 8, 3)).astype(np.int32)
    out = convnn.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    assert out.dtype == jnp.int32
    ref = pool_ref(x.astype(np.float64), "max", (3, 3), (2, 2), (1, 1), (1, 1), True, True)
    np.testing.assert_array_equal(out, ref)
