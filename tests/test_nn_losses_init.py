"""convnn.layers.losses against mlx.nn.losses (values, gradients, reductions, defaults) and
convnn.layers.init by the properties of its distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import convnn.layers as L
from convnn.layers import init, losses


def _r(*shape, seed=0, scale=1.0, offset=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + offset).astype(
        np.float32
    )


def _probs(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.05, 0.95, shape).astype(np.float32)


def _log_probs(*shape, seed=0):
    x = _r(*shape, seed=seed)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def _labels(*shape, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, shape).astype(np.int32)


def _signs(*shape, seed=0):
    return np.where(np.random.default_rng(seed).random(shape) > 0.5, 1.0, -1.0).astype(np.float32)


# (name, inputs, kwargs, index of the differentiated input(s))
CASES = [
    ("cross_entropy", [_r(4, 5), _labels(4, classes=5)], {}, (0,)),
    ("cross_entropy", [_r(4, 5), _labels(4, classes=5)],
     {"label_smoothing": 0.2, "reduction": "mean"}, (0,)),
    ("cross_entropy", [_r(5, 4), _labels(4, classes=5)], {"axis": 0, "reduction": "sum"}, (0,)),
    ("cross_entropy", [_r(4, 5), _probs(4, 5, seed=2)], {}, (0, 1)),
    ("cross_entropy", [_r(4, 5), _labels(4, classes=5), _probs(4)], {"reduction": "mean"}, (0,)),
    ("binary_cross_entropy", [_r(6), _probs(6, seed=1)], {}, (0, 1)),
    ("binary_cross_entropy", [_probs(6), _probs(6, seed=1)],
     {"with_logits": False, "reduction": "none"}, (0, 1)),
    ("binary_cross_entropy", [_r(6), _probs(6, seed=1), _probs(6, seed=3)], {}, (0,)),
    ("l1_loss", [_r(3, 4), _r(3, 4, seed=1)], {}, (0, 1)),
    ("l1_loss", [_r(3, 4), _r(3, 4, seed=1)], {"reduction": "sum"}, (0,)),
    ("mse_loss", [_r(3, 4), _r(3, 4, seed=1)], {}, (0, 1)),
    ("mse_loss", [_r(3, 4), _r(3, 4, seed=1)], {"reduction": "none"}, (0,)),
    ("nll_loss", [_log_probs(4, 5), _labels(4, classes=5)], {}, (0,)),
    ("nll_loss", [_log_probs(4, 5), _labels(4, classes=5)], {"reduction": "mean"}, (0,)),
    ("gaussian_nll_loss", [_r(3, 4), _r(3, 4, seed=1), _probs(3, 4, seed=2)], {}, (0, 1, 2)),
    ("gaussian_nll_loss", [_r(3, 4), _r(3, 4, seed=1), _probs(3, 4, seed=2)],
     {"full": True, "reduction": "sum"}, (0, 2)),
    ("kl_div_loss", [_log_probs(3, 5), _log_probs(3, 5, seed=1)], {}, (0, 1)),
    ("smooth_l1_loss", [_r(3, 4, scale=2), _r(3, 4, seed=1)], {}, (0,)),
    ("smooth_l1_loss", [_r(3, 4, scale=2), _r(3, 4, seed=1)], {"beta": 0.5}, (0, 1)),
    ("triplet_loss", [_r(3, 4), _r(3, 4, seed=1), _r(3, 4, seed=2)], {}, (0, 1, 2)),
    ("triplet_loss", [_r(3, 4), _r(3, 4, seed=1), _r(3, 4, seed=2)],
     {"p": 1, "margin": 0.5, "reduction": "mean"}, (0,)),
    ("hinge_loss", [_r(6, scale=2), _signs(6)], {}, (0,)),
    ("huber_loss", [_r(6, scale=2), _r(6, seed=1)], {}, (0, 1)),
    ("huber_loss", [_r(6, scale=2), _r(6, seed=1)], {"delta": 0.5, "reduction": "mean"}, (0,)),
    ("log_cosh_loss", [_r(6, scale=3), _r(6, seed=1)], {}, (0, 1)),
    ("cosine_similarity_loss", [_r(3, 4), _r(3, 4, seed=1)], {}, (0, 1)),
    ("cosine_similarity_loss", [_r(3, 4), _r(3, 4, seed=1)], {"axis": -1, "reduction": "sum"},
     (0,)),
    ("margin_ranking_loss", [_r(5), _r(5, seed=1), _signs(5)], {}, (0, 1)),
    ("margin_ranking_loss", [_r(5), _r(5, seed=1), _signs(5)],
     {"margin": 0.3, "reduction": "mean"}, (0,)),
]


def _first_of_each(cases):
    """The first case of each loss in the fast tier, the others marked slow."""
    seen, out = set(), []
    for i, case in enumerate(cases):
        marks = () if case[0] not in seen else (pytest.mark.slow,)
        seen.add(case[0])
        out.append(pytest.param(*case, marks=marks, id=f"{case[0]}-{i}"))
    return out


@pytest.mark.parametrize(("name", "inputs", "kwargs", "wrt"), _first_of_each(CASES))
def test_loss_matches_mlx(mx, mnn, name, inputs, kwargs, wrt):
    ref, ours = getattr(mnn.losses, name), getattr(losses, name)
    mx_in = [mx.array(a) for a in inputs]
    jx_in = [jnp.asarray(a) for a in inputs]
    y_ref = np.array(ref(*mx_in, **kwargs))
    y = np.asarray(ours(*jx_in, **kwargs))
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype, (y.shape, y_ref.shape)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    g = np.random.default_rng(9).standard_normal(y_ref.shape).astype(np.float32)

    def ref_loss(*args):
        full = list(mx_in)
        for i, a in zip(wrt, args, strict=True):
            full[i] = a
        return (ref(*full, **kwargs) * mx.array(g)).sum()

    def our_loss(*args):
        full = list(jx_in)
        for i, a in zip(wrt, args, strict=True):
            full[i] = a
        return jnp.sum(ours(*full, **kwargs) * g)

    g_ref = mx.grad(ref_loss, argnums=tuple(range(len(wrt))))(*[mx_in[i] for i in wrt])
    g_ref = g_ref if isinstance(g_ref, (tuple, list)) else [g_ref]
    g_ours = jax.grad(our_loss, argnums=tuple(range(len(wrt))))(*[jx_in[i] for i in wrt])
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.array(b), rtol=1e-4, atol=1e-5)


def test_loss_defaults_are_mlx_defaults(mnn):
    import inspect

    for name in losses.__all__:
        ours = inspect.signature(getattr(losses, name)).parameters
        ref = inspect.signature(getattr(mnn.losses, name)).parameters
        assert list(ours) == list(ref), name
        for p in ref:
            assert ours[p].default == ref[p].default, (name, p)


def test_loss_argument_errors():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"\[mse_loss\] reduction must be one of"):
        losses.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"\[l1_loss\] the shapes must match"):
        losses.l1_loss(x, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"\[cross_entropy\] targets shape"):
        losses.cross_entropy(x, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"\[cross_entropy\] label_smoothing"):
        losses.cross_entropy(x, jnp.zeros((2,), jnp.int32), label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"\[cross_entropy\] weights must have"):
        losses.cross_entropy(x, jnp.zeros((2,), jnp.int32), weights=jnp.ones(3))


_X, _T = jnp.ones((4, 3)), jnp.zeros((4, 3))
BAD_LOSS_CALLS = [  # (loss, args, kwargs, error, message); each refused by the loss's name
    ("hinge_loss", (_X, jnp.ones((4,))), {}, ValueError, "shapes must broadcast together"),
    ("huber_loss", (_X, jnp.ones((5, 3))), {}, ValueError, "shapes must broadcast together"),
    ("log_cosh_loss", (_X, jnp.ones((4, 3, 1))), {}, ValueError, "shapes must broadcast"),
    ("kl_div_loss", (_X, _T), dict(axis=2), ValueError, "axis 2 is out of range"),
    ("cosine_similarity_loss", (jnp.ones((4,)), jnp.ones((4,))), {}, ValueError,
     "axis 1 is out of range"),
    ("triplet_loss", (_X, _T, jnp.ones((2, 3))), {}, ValueError, "broadcast together"),
    ("nll_loss", (_X, jnp.zeros((4,))), {}, TypeError, "targets .* must be integers"),
    ("nll_loss", (_X, jnp.zeros((3,), jnp.int32)), {}, ValueError, "targets must have"),
    ("nll_loss", (jnp.ones((4, 3), jnp.int32), jnp.zeros((4,), jnp.int32)), {}, TypeError,
     "must be floating"),
    # casting would drop the imaginary part: mse_loss(1 + 5j, 1) gave 0
    ("mse_loss", (jnp.array([1 + 5j]), jnp.array([1.0])), {}, TypeError, "must be real"),
    ("hinge_loss", (_X.astype(jnp.complex64), _T), {}, TypeError, "must be real"),
    # hyperparameters and inputs that are not numbers (JAX raised unnamed errors)
    ("huber_loss", (_X, _T), dict(delta="a"), TypeError, "delta must be a float"),
    ("smooth_l1_loss", (_X, _T), dict(beta=None), TypeError, "beta must be a float"),
    ("triplet_loss", (_X, _T, _T), dict(margin=[1.0]), TypeError, "margin must be a float"),
    ("cosine_similarity_loss", (_X, _T), dict(eps="1e-8"), TypeError, "eps must be a float"),
    ("margin_ranking_loss", (_X, _T, _T), dict(margin=None), TypeError, "margin must be"),
    ("gaussian_nll_loss", (_X, _T, _T), dict(full=1), TypeError, "full must be a bool"),
    ("cross_entropy", (_X, _T), dict(label_smoothing="0.1"), TypeError, "label_smoothing must"),
    ("mse_loss", ("abc", _T), {}, TypeError, "inputs must be an array"),
    ("nll_loss", (_X, None), {}, TypeError, "targets must be an array"),
]


@pytest.mark.parametrize("name, args, kwargs, error, message", BAD_LOSS_CALLS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_LOSS_CALLS)])
def test_bad_loss_calls_are_refused_by_name(name, args, kwargs, error, message):
    with pytest.raises(error, match=rf"^\[{name}\] .*{message}"):
        getattr(losses, name)(*args, **kwargs)


def test_loss_hyperparameters_may_be_traced():
    """A 0-d JAX array passes the checks above, under jit too (a schedule may trace it)."""
    got = jax.jit(lambda d: losses.huber_loss(_X, _T, delta=d))(jnp.asarray(0.5, _X.dtype))
    np.testing.assert_allclose(got, losses.huber_loss(_X, _T, delta=0.5), rtol=1e-6)


def test_cross_entropy_from_the_definition():
    logits = _r(4, 5).astype(np.float64)
    labels = _labels(4, classes=5)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.log(p[np.arange(4), labels])
    got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10)


# -- init -------------------------------------------------------------------------------------


def test_init_deterministic_initializers():
    a = jnp.zeros((3, 3))
    np.testing.assert_array_equal(init.constant(2.5)(a), np.full((3, 3), 2.5, np.float32))
    np.testing.assert_array_equal(init.identity()(a), np.eye(3, dtype=np.float32))
    assert init.constant(1, dtype=jnp.float16)(a).dtype == jnp.float16
    with pytest.raises(ValueError, match=r"\[identity\] needs a square matrix"):
        init.identity()(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[glorot_normal\] needs an array of at least 2"):
        init.glorot_normal()(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"\[he_uniform\] mode must be"):
        init.he_uniform()(jnp.zeros((3, 3)), "fan")


def _stats(a):
    a = np.asarray(a, np.float64)
    return a.mean(), a.std(), np.abs(a).max()


@pytest.mark.parametrize(
    ("make", "shape", "mean", "std", "bound"),
    [
        (lambda: init.normal(1.0, 2.0), (200, 200), 1.0, 2.0, None),
        (lambda: init.uniform(-1.0, 3.0), (200, 200), 1.0, 4 / np.sqrt(12), 3.0),
        # MLX's fans: fan_in = shape[-1] * receptive, fan_out = shape[0] * receptive.
        (init.glorot_normal, (64, 3, 3, 32), 0.0, np.sqrt(2 / (32 * 9 + 64 * 9)), None),
        pytest.param(init.glorot_uniform, (64, 3, 3, 32), 0.0,
                     np.sqrt(6 / (96 * 9)) / np.sqrt(3), np.sqrt(6 / (96 * 9)),
                     marks=pytest.mark.slow),
        pytest.param(init.he_normal, (128, 256), 0.0, 1 / np.sqrt(256), None,
                     marks=pytest.mark.slow),
        (init.he_uniform, (128, 256), 0.0, np.sqrt(3 / 256) / np.sqrt(3), np.sqrt(3 / 256)),
    ],
)
def test_init_distributions(make, shape, mean, std, bound):
    L.seed(11)
    a = make()(jnp.zeros(shape))
    assert a.shape == shape and a.dtype == jnp.float32
    m, s, biggest = _stats(a)
    n = np.prod(shape)
    assert abs(m - mean) < 5 * std / np.sqrt(n)
    assert abs(s - std) < 0.03 * std
    if bound is not None:
        assert biggest <= bound


def test_flat_draws_equal_jax_draws_of_the_shape():
    """Parameters are drawn flat and reshaped (it compiles faster): the values must be exactly
    jax.random's for the weight's own shape, for the initializers and the layers' defaults."""
    key, shape = jax.random.key(5), (6, 3, 2, 4)
    np.testing.assert_array_equal(
        init.normal(0.5, 2.0)(key, shape, jnp.float32),
        0.5 + 2.0 * jax.random.normal(key, shape, jnp.float32),
    )
    np.testing.assert_array_equal(
        init.uniform(-1.0, 3.0)(key, shape, jnp.float32),
        jax.random.uniform(key, shape, jnp.float32, -1.0, 3.0),
    )
    conv = L.Conv2d(4, 6, (3, 2), rngs=nnx.Rngs(params=7))
    bound = 1.0 / np.sqrt(4 * 3 * 2)
    expected = jax.random.uniform(nnx.Rngs(params=7).params(), (6, 3, 2, 4), jnp.float32,
                                  -bound, bound)
    np.testing.assert_array_equal(conv.weight[...], expected)


def test_init_modes_gain_and_flax_form():
    L.seed(0)
    fan_out = init.he_normal()(jnp.zeros((100, 400)), mode="fan_out", gain=2.0)
    assert abs(np.asarray(fan_out).std() - 2.0 / np.sqrt(100)) < 0.01
    flax_style = init.glorot_uniform()(jax.random.key(0), (4, 6), jnp.float64)
    assert flax_style.shape == (4, 6) and flax_style.dtype == jnp.float64
    conv = L.Conv2d(3, 8, 3, kernel_init=init.he_normal())
    assert conv.weight.shape == (8, 3, 3, 3)
    # The same key gives the same values; the default stream follows seed().
    np.testing.assert_array_equal(
        init.normal()(jnp.zeros(5), key=jax.random.key(1)),
        init.normal()(jnp.zeros(5), key=jax.random.key(1)),
    )
    L.seed(4)
    first = init.normal()(jnp.zeros(5))
    L.seed(4)
    np.testing.assert_array_equal(first, init.normal()(jnp.zeros(5)))


@pytest.mark.slow
def test_init_sparse_and_orthogonal():
    L.seed(1)
    a = np.asarray(init.sparse(0.25)(jnp.zeros((6, 8))))
    assert ((a == 0).sum(axis=1) == 2).all()  # ceil(0.25 * 8) zeros in every row
    q = np.asarray(init.orthogonal(gain=2.0)(jnp.zeros((4, 6))), np.float64)
    np.testing.assert_allclose(q @ q.T, 4.0 * np.eye(4), atol=1e-5)
    q = np.asarray(init.orthogonal()(jnp.zeros((6, 3))), np.float64)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-5)
