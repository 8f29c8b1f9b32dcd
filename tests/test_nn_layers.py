"""The MLX-style layers against the real MLX: values, gradients, training and evaluation mode.

Each case builds the MLX layer and convnn's with the same constructor call, copies MLX's
weights into convnn's through ``load_weights`` (so MLX's names and layouts are checked too), and
compares outputs and the gradients of ``sum(y * g)`` with respect to the input and every
trainable parameter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import convnn.layers as L
from convnn import _flax_compat

RTOL, ATOL = 1e-5, 1e-5


def _mlx_weights(mx, layer):
    from mlx.utils import tree_flatten

    return [(k, np.array(v)) for k, v in tree_flatten(layer.parameters())]


def _to_mx(mx, a):
    return mx.array(np.asarray(a))


def _grads_mlx(mx, mnn, layer, xs, g):
    def loss(*inputs):
        return (layer(*inputs) * g).sum()

    from mlx.utils import tree_flatten

    input_grads = mx.grad(loss, argnums=tuple(range(len(xs))))(*xs)
    if not isinstance(input_grads, (tuple, list)):
        input_grads = [input_grads]
    if not tree_flatten(layer.trainable_parameters()):
        return [np.array(a) for a in input_grads], {}
    _, param_grads = mnn.value_and_grad(layer, loss)(*xs)
    return [np.array(a) for a in input_grads], {
        k: np.array(v) for k, v in tree_flatten(param_grads)
    }


def _grads_ours(layer, xs, g):
    def loss(model, *inputs):
        return jnp.sum(model(*inputs) * g)

    grads = nnx.grad(loss, argnums=tuple(range(len(xs) + 1)))(layer, *xs)
    params = {
        ".".join(map(str, path)): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
        for path, v in nnx.to_flat_state(grads[0])
    }
    return [np.asarray(a) for a in grads[1:]], params


def _compare(mx, mnn, name, args, kwargs, inputs, *, train=True, calls=1, grads=True):
    """Builds ``name(*args, **kwargs)`` in MLX and convnn and compares them on ``inputs``."""
    ref = getattr(mnn, name)(*args, **kwargs)
    ours = getattr(L, name)(*args, **kwargs)
    ours.load_weights(_mlx_weights(mx, ref))
    ref.train(train)
    ours.train(train)
    mx_inputs = [_to_mx(mx, a) for a in inputs]
    jx_inputs = [jnp.asarray(a) for a in inputs]
    for _ in range(calls):
        y_ref = np.array(ref(*mx_inputs))
        y = np.asarray(ours(*jx_inputs))
        assert y.dtype == y_ref.dtype, name
        np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL, err_msg=name)
    # Running statistics (and every other parameter) agree after the calls.
    after = dict(_mlx_weights(mx, ref))
    for key, value in jax.tree_util.tree_leaves_with_path(ours.parameters()):
        dotted = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key)
        np.testing.assert_allclose(value, after[dotted], rtol=RTOL, atol=ATOL, err_msg=dotted)
    if not grads or not np.issubdtype(y_ref.dtype, np.floating):
        return
    g = np.random.default_rng(1).standard_normal(y_ref.shape).astype(y_ref.dtype)
    in_ref, par_ref = _grads_mlx(mx, mnn, ref, mx_inputs, mx.array(g))
    in_ours, par_ours = _grads_ours(ours, jx_inputs, jnp.asarray(g))
    for a, b in zip(in_ours, in_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"{name} input grad")
    assert set(par_ours) == set(par_ref), name
    for k in par_ref:
        np.testing.assert_allclose(
            par_ours[k], par_ref[k], rtol=1e-4, atol=1e-4, err_msg=f"{name} grad {k}"
        )


def _x(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


LAYER_CASES = [
    ("Linear", (5, 3), {}, [_x(4, 5)]),
    ("Linear", (5, 3), {"bias": False}, [_x(2, 3, 5)]),
    ("Bilinear", (3, 4, 2), {}, [_x(5, 3), _x(5, 4, seed=1)]),
    ("Bilinear", (3, 4, 2), {"bias": False}, [_x(2, 5, 3), _x(2, 5, 4, seed=1)]),
    ("Identity", (3,), {"x": 1}, [_x(2, 3)]),
    ("LayerNorm", (6,), {}, [_x(3, 6, scale=3.0)]),
    ("LayerNorm", (6,), {"affine": False}, [_x(3, 6)]),
    ("LayerNorm", (6,), {"bias": False, "eps": 1e-3}, [_x(2, 3, 6)]),
    ("RMSNorm", (6,), {}, [_x(3, 6)]),
    ("RMSNorm", (6,), {"eps": 1e-2}, [_x(2, 6)]),
    ("InstanceNorm", (4,), {}, [_x(2, 5, 4)]),
    ("InstanceNorm", (4,), {"affine": True}, [_x(2, 3, 5, 4)]),
    ("GroupNorm", (2, 4), {}, [_x(2, 3, 3, 4)]),
    ("GroupNorm", (2, 4), {"pytorch_compatible": True}, [_x(2, 5, 4)]),
    ("PReLU", (), {}, [_x(3, 4)]),
    ("PReLU", (4, 0.1), {}, [_x(3, 4)]),
    ("GLU", (), {}, [_x(3, 4)]),
    ("GLU", (0,), {}, [_x(4, 3)]),
]


def _first_of_each(cases):
    """The first case of each layer in the fast tier, the others marked slow."""
    seen, out = set(), []
    for i, case in enumerate(cases):
        marks = () if case[0] not in seen else (pytest.mark.slow,)
        seen.add(case[0])
        out.append(pytest.param(*case, marks=marks, id=f"{case[0]}-{i}"))
    return out


@pytest.mark.parametrize(("name", "args", "kwargs", "inputs"), _first_of_each(LAYER_CASES))
def test_layer_matches_mlx(mx, mnn, name, args, kwargs, inputs):
    _compare(mx, mnn, name, args, kwargs, inputs)


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        pytest.param({}, (8, 3), marks=pytest.mark.slow),
        pytest.param({}, (4, 5, 3), marks=pytest.mark.slow),
        ({"momentum": 0.3, "eps": 1e-3}, (2, 4, 4, 3)),
        pytest.param({"affine": False}, (6, 3), marks=pytest.mark.slow),
        ({"track_running_stats": False}, (6, 3)),
    ],
)
def test_batchnorm_matches_mlx_train_and_eval(mx, mnn, kwargs, shape):
    x = _x(*shape, scale=2.0) + 1.0
    # Training: five steps of running statistics, then the gradients.
    _compare(mx, mnn, "BatchNorm", (3,), kwargs, [x], train=True, calls=5)
    # Evaluation after training steps: normalised by the running statistics.
    ref, ours = mnn.BatchNorm(3, **kwargs), L.BatchNorm(3, **kwargs)
    for step in range(3):
        xs = _x(*shape, seed=step, scale=2.0) + 1.0
        ref(mx.array(xs))
        ours(jnp.asarray(xs))
    ref.eval()
    ours.eval()
    np.testing.assert_allclose(
        np.asarray(ours(jnp.asarray(x))), np.array(ref(mx.array(x))), rtol=RTOL, atol=ATOL
    )
    if kwargs.get("track_running_stats", True):
        np.testing.assert_allclose(
            ours.running_var[...], np.array(ref.running_var), rtol=RTOL, atol=ATOL
        )


def test_batchnorm_statistics_from_the_definition():
    x = _x(10, 3, scale=3.0)
    bn = L.BatchNorm(3, momentum=0.25)
    for _ in range(2):
        bn(jnp.asarray(x))
    mean, var = x.astype(np.float64).mean(0), x.astype(np.float64).var(0, ddof=1)
    expected_mean = 0.25 * mean + 0.75 * (0.25 * mean)
    expected_var = 0.25 * var + 0.75 * (0.25 * var + 0.75)
    np.testing.assert_allclose(bn.running_mean[...], expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var[...], expected_var, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[BatchNorm\] training needs more than one value"):
        bn(jnp.ones((1, 3)))
    bn.eval()
    bn(jnp.ones((1, 3)))  # evaluation takes one sample


def _batchnorm_definition(x, weight, bias, eps, activation):
    """Training-mode batch norm of a rank-3 input from its definition (two-pass statistics),
    then ``activation``."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axes, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + eps) * weight.reshape(1, 1, -1) + bias.reshape(1, 1, -1)
    acts = {None: lambda y: y, "relu": lambda y: jnp.maximum(y, 0.0),
            "relu6": lambda y: jnp.clip(y, 0.0, 6.0), "silu": lambda y: y / (1 + jnp.exp(-y))}
    return acts[activation](y)


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "silu"])
@pytest.mark.parametrize("offset", [0.0, 1000.0])  # a large mean must not cancel the variance
def test_batchnorm_training_values_and_derivatives_match_the_definition(activation, offset):
    """Output, reverse-mode gradients (input, weight, bias) and forward mode of training-mode
    BatchNorm with a fused activation, against the float64 definition differentiated by JAX."""
    x = _x(6, 5, 4, scale=2.0) + offset
    weight, bias = _x(4, seed=1) + 1.0, _x(4, seed=2)
    g, t = _x(6, 5, 4, seed=3), _x(6, 5, 4, seed=4)
    # Without running statistics the layer has no state to update under the transformations.
    bn = L.BatchNorm(4, activation=activation, track_running_stats=False)
    bn.weight.value, bn.bias.value = jnp.asarray(weight), jnp.asarray(bias)
    graphdef, params, rest = nnx.split(bn, nnx.Param, ...)

    def ours(x, params):
        return nnx.merge(graphdef, params, rest)(x)

    def ref(x, params):
        return _batchnorm_definition(x, params["weight"], params["bias"], 1e-5, activation)

    p64 = {"weight": jnp.asarray(weight, jnp.float64), "bias": jnp.asarray(bias, jnp.float64)}
    x64 = jnp.asarray(x, jnp.float64)
    y, vjp = jax.vjp(ours, jnp.asarray(x), params)
    y_ref, vjp_ref = jax.vjp(ref, x64, p64)
    gx, gp = vjp(jnp.asarray(g))
    gx_ref, gp_ref = vjp_ref(jnp.asarray(g, jnp.float64))
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), **tol)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(gx_ref), **tol)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(np.asarray(gp[name][...]), np.asarray(gp_ref[name]), **tol)
    _, tangent = jax.jvp(lambda x: ours(x, params), (jnp.asarray(x),), (jnp.asarray(t),))
    _, tangent_ref = jax.jvp(lambda x: ref(x, p64), (x64,), (jnp.asarray(t, jnp.float64),))
    np.testing.assert_allclose(np.asarray(tangent), np.asarray(tangent_ref), **tol)


@jax.jit
def _batchnorm_step(x, g):
    """One training step of a fresh layer with momentum 1 (its running statistics are then the
    batch's) and the input's gradient, compiled once per shape so that the draws below share it."""
    bn = L.BatchNorm(x.shape[-1], momentum=1.0)
    y = bn(x)
    _, vjp = jax.vjp(L.BatchNorm(x.shape[-1], track_running_stats=False), x)
    return y, bn.running_mean[...], bn.running_var[...], vjp(g)[0]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([(2, 1), (3, 5), (40, 3)]), st.floats(-1e4, 1e4), st.floats(1e-2, 1e2),
       st.floats(0.0, 30.0), st.integers(0, 2**31 - 1))
def test_batchnorm_statistics_hold_for_large_means_and_outliers(shape, offset, scale, spike,
                                                                seed):
    """The one-pass statistics against float64 two-pass ones, for means up to 1e6 spreads away
    and the first sample (the shift) up to 30 spreads off the mean: the running statistics after
    one step with momentum 1 are the batch mean and unbiased variance (to 2e-4, which the
    unshifted one-pass form misses by far); the output and the input's gradient follow. Three
    shapes (two samples, the fewest with a variance, to forty): the values are what is drawn."""
    x = np.random.default_rng(seed).standard_normal(shape) * scale + offset
    x[0] += spike * scale
    x = x.astype(np.float32)
    g = np.random.default_rng(seed + 1).standard_normal(shape)
    y, mean, var_unbiased, dx = map(np.asarray, _batchnorm_step(jnp.asarray(x),
                                                               jnp.asarray(g, jnp.float32)))
    x64 = x.astype(np.float64)
    var = x64.var(0)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-6, atol=1e-5 * scale)
    np.testing.assert_allclose(var_unbiased, x64.var(0, ddof=1), rtol=2e-4,
                               atol=1e-6 * scale**2)
    # The output and the gradient carry one float32 rounding at the magnitude of the values, as
    # any float32 batch norm does (x - mean, or x * a + c): an error of about |mean| / spread
    # float32 epsilons. The statistics above carry none.
    ratio = float(np.max(np.abs(x64.mean(0)) / np.sqrt(var + 1e-5)))
    xhat = (x64 - x64.mean(0)) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(y, xhat, rtol=1e-3, atol=1e-3 + 1e-6 * ratio)
    want = (g - g.mean(0) - xhat * (g * xhat).mean(0)) / np.sqrt(var + 1e-5)
    # The terms are of size |g| / std and cancel (to zero, for two samples): atol follows them.
    terms = np.abs(g).max(0) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(dx, want, rtol=1e-3, atol=(1e-4 + 1e-6 * ratio) * terms.max())


def test_batchnorm_second_derivatives_match_the_definition():
    """Reverse over forward mode through the fused pass (the derivative rule is itself
    differentiable), against the float64 definition."""
    x, t = _x(5, 3, 4, scale=2.0) + 3.0, _x(5, 3, 4, seed=1)
    bn = L.BatchNorm(4, activation="silu", track_running_stats=False)

    def ours(x):
        return jnp.sum(jax.jvp(bn, (x,), (jnp.asarray(t),))[1] ** 2)

    def ref(x):
        f = lambda x: _batchnorm_definition(x, jnp.ones(4), jnp.zeros(4), 1e-5, "silu")
        return jnp.sum(jax.jvp(f, (x,), (jnp.asarray(t, jnp.float64),))[1] ** 2)

    np.testing.assert_allclose(np.asarray(jax.grad(ours)(jnp.asarray(x))),
                               np.asarray(jax.grad(ref)(jnp.asarray(x, jnp.float64))),
                               rtol=1e-3, atol=1e-3)


def test_batchnorm_dtype_and_bad_activation():
    x = jnp.asarray(_x(4, 3)).astype(jnp.bfloat16)
    assert L.BatchNorm(3)(x).dtype == jnp.float32  # MLX's promotion with float32 parameters
    assert L.BatchNorm(3, dtype=jnp.bfloat16)(x).dtype == jnp.bfloat16
    assert L.BatchNorm(3, dtype=jnp.bfloat16).eval()(x).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"\[BatchNorm\] activation must be one of"):
        L.BatchNorm(3, activation="gelu")
    with pytest.raises(TypeError, match=r"\[BatchNorm\] activation must be None or one of"):
        L.BatchNorm(3, activation=jax.nn.relu)


def test_batchnorm_under_jit_and_nnx_eval():
    bn = L.BatchNorm(2)
    x = jnp.asarray(_x(4, 2))

    @nnx.jit
    def step(model, x):
        return model(x)

    step(bn, x)
    step(bn, x)
    np.testing.assert_allclose(
        bn.running_mean[...], (1 - 0.9**2) * np.asarray(x).mean(0), rtol=1e-5, atol=1e-6
    )
    parent = nnx.Sequential(bn)  # a Flax parent switches the mode with its own eval()
    parent.eval()
    assert not bn.training
    parent.train()
    assert bn.training


def test_embedding_matches_mlx(mx, mnn):
    ref, ours = mnn.Embedding(10, 4), L.Embedding(10, 4)
    ours.load_weights(_mlx_weights(mx, ref))
    idx = np.array([[1, 2, 9], [0, 0, 3]], np.int32)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(idx))), np.array(ref(mx.array(idx))))
    h = _x(2, 4)
    np.testing.assert_allclose(
        np.asarray(ours.as_linear(jnp.asarray(h))), np.array(ref.as_linear(mx.array(h))),
        rtol=RTOL, atol=ATOL,
    )
    with pytest.raises(TypeError, match=r"\[Embedding\] input must have an integer dtype"):
        ours(jnp.ones(2))


def test_embedding_indices_outside_the_table_give_nan_rows():
    """NumPy's indexing: -1 is the last row (MLX agrees); beyond the table a NaN row (MLX reads
    stray memory), never another row's values, eagerly and under jit; no gradient flows there."""
    emb = L.Embedding(4, 3)
    table = np.asarray(emb.weight[...])
    idx = jnp.array([[0, -1], [4, -5]], jnp.int32)
    for out in (emb(idx), nnx.jit(lambda m, i: m(i))(emb, idx)):
        out = np.asarray(out)
        np.testing.assert_array_equal(out[0], table[[0, 3]])
        assert np.isnan(out[1]).all()
    grad = nnx.grad(lambda m: jnp.nansum(m(idx)))(emb).weight[...]
    expected = np.zeros((4, 3), np.float32)
    expected[[0, 3]] = 1  # rows 0 and -1; the rows beyond the table are not in it
    np.testing.assert_array_equal(np.asarray(grad), expected)


NOT_ARRAYS = [  # (layer, call with one argument, the argument's name in the message)
    ("Linear", lambda v: L.Linear(4, 3)(v), "input"),
    ("LayerNorm", lambda v: L.LayerNorm(4)(v), "input"),
    ("GroupNorm", lambda v: L.GroupNorm(2, 4)(v), "input"),
    ("BatchNorm", lambda v: L.BatchNorm(4)(v), "input"),
    ("Dropout", lambda v: L.Dropout(0.5)(v), "input"),
    ("Embedding", lambda v: L.Embedding(10, 4)(v), "input"),
    ("GRU", lambda v: L.GRU(4, 3)(v), "input"),
    ("LSTM", lambda v: L.LSTM(4, 3)(v), "input"),
    ("RNN", lambda v: L.RNN(4, 3)(jnp.ones((2, 5, 4)), v or "abc"), "hidden"),  # None: zeros
    ("RoPE", lambda v: L.RoPE(4)(v), "input"),
    ("ALiBi", lambda v: L.ALiBi()(v), "attention_scores"),
    ("SinusoidalPositionalEncoding", lambda v: L.SinusoidalPositionalEncoding(4)(v), "input"),
    ("MultiHeadAttention", lambda v: L.MultiHeadAttention(8, 2)(v, v, v), "queries"),
    ("MaxPool2d", lambda v: L.MaxPool2d(2)(v), "input"),
    ("Conv2d", lambda v: L.Conv2d(4, 2, 3)(v), "input"),
]


@pytest.mark.parametrize("name, call, arg", NOT_ARRAYS, ids=[c[0] for c in NOT_ARRAYS])
def test_what_is_not_an_array_is_refused_by_the_layers_name(name, call, arg):
    """A string or None (JAX raised "not a valid JAX array type" or "None is not a valid value
    for jnp.array", naming nothing) is refused by the layer, naming the argument."""
    for value in ("abc", None):
        with pytest.raises(TypeError, match=rf"^\[{name}\] {arg} must be an array"):
            call(value)


def test_default_initialisation_follows_mlx():
    L.seed(0)
    lin = L.Linear(100, 50)
    bound = np.sqrt(1 / 100)
    w = np.asarray(lin.weight[...])
    assert w.shape == (50, 100) and w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound  # uniform's standard deviation
    emb = np.asarray(L.Embedding(1000, 16).weight[...])
    assert abs(emb.std() - 0.25) < 0.01 and abs(emb.mean()) < 0.01
    bil = np.asarray(L.Bilinear(4, 9, 3).weight[...])
    assert bil.shape == (3, 9, 4) and np.abs(bil).max() <= 0.5


def test_mlx_names_and_layouts(mx, mnn):
    for name, args in [("Linear", (3, 2)), ("Bilinear", (3, 4, 2)), ("LayerNorm", (3,)),
                       ("RMSNorm", (3,)), ("BatchNorm", (3,)), ("Embedding", (5, 3)),
                       ("InstanceNorm", (3, 1e-5, True)), ("PReLU", (3,))]:
        ref, ours = getattr(mnn, name)(*args), getattr(L, name)(*args)
        expected = {k: v.shape for k, v in _mlx_weights(mx, ref)}
        got = {
            ".".join(str(getattr(k, "key", k)) for k in path): tuple(v.shape)
            for path, v in jax.tree_util.tree_leaves_with_path(ours.parameters())
        }
        assert got == expected, name
        assert repr(ours) == repr(ref) or name in ("Embedding",), (repr(ours), repr(ref))


@pytest.mark.parametrize("name", ["Dropout", "Dropout2d", "Dropout3d"])
def test_dropout_train_and_eval(name):
    shape = {"Dropout": (4, 1000), "Dropout2d": (4, 3, 3, 500), "Dropout3d": (2, 2, 3, 3, 500)}
    x = jnp.ones(shape[name], jnp.float32)
    layer = getattr(L, name)(0.25, rngs=nnx.Rngs(dropout=3))
    y = np.asarray(layer(x))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.03
    if name != "Dropout":  # one mask value per sample and channel
        lead = 1 if name == "Dropout2d" else 2
        spatial = tuple(range(1, 1 + lead + 1))
        assert (y == y.max(axis=spatial, keepdims=True)).all() or (
            (y == np.take(y, [0], axis=1)).all()
        )
    # Masks differ from call to call, also under nnx.jit (the stream is model state).
    step = nnx.jit(lambda m, x: m(x))
    a, b = np.asarray(step(layer, x)), np.asarray(step(layer, x))
    assert not np.array_equal(a, b)
    layer.eval()
    np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(x))
    with pytest.raises(ValueError, match=rf"\[{name}\] the dropout probability"):
        getattr(L, name)(1.0)


def test_dropout_gradient_is_the_mask():
    layer = L.Dropout(0.5, rngs=nnx.Rngs(0))
    x = jnp.asarray(_x(64))
    replay = nnx.clone(layer)  # the same stream state: the same mask
    y = layer(x)
    g = nnx.grad(lambda m, x: jnp.sum(m(x)), argnums=1)(replay, x)
    np.testing.assert_allclose(np.asarray(g), np.where(np.asarray(y) != 0, 2.0, 0.0))


def test_dropout_shape_checks():
    with pytest.raises(ValueError, match=r"\[Dropout2d\] input must have 3 or 4 axes"):
        L.Dropout2d()(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\[Dropout3d\] input must have 4 or 5 axes"):
        L.Dropout3d()(jnp.ones((2, 3, 4)))


def test_sequential_matches_mlx_and_names(mx, mnn):
    ref = mnn.Sequential(mnn.Linear(3, 4), mnn.relu, mnn.Linear(4, 2))
    ours = L.Sequential(L.Linear(3, 4), L.relu, L.Linear(4, 2))
    ours.load_weights(_mlx_weights(mx, ref))
    x = _x(5, 3)
    np.testing.assert_allclose(
        np.asarray(ours(jnp.asarray(x))), np.array(ref(mx.array(x))), rtol=RTOL, atol=ATOL
    )
    assert isinstance(ours, nnx.Sequential)


def test_argument_errors_name_the_layer():
    cases = [
        (lambda: L.Linear(0, 3), ValueError, r"\[Linear\] input_dims"),
        (lambda: L.Linear(3, 2, bias=1), TypeError, r"\[Linear\] bias"),
        (lambda: L.Linear(3, 2)(jnp.ones((2, 4))), ValueError, r"\[Linear\] input must have"),
        (lambda: L.Linear(3, 2)(jnp.ones((2, 3), jnp.int32)), TypeError, r"\[Linear\] input"),
        (lambda: L.LayerNorm(3, eps=0), ValueError, r"\[LayerNorm\] eps"),
        (lambda: L.LayerNorm(3)(jnp.ones((2, 4))), ValueError, r"\[LayerNorm\] input"),
        (lambda: L.BatchNorm(3, momentum=2), ValueError, r"\[BatchNorm\] momentum"),
        (lambda: L.BatchNorm(3)(jnp.ones((4, 2))), ValueError, r"\[BatchNorm\] input"),
        (lambda: L.InstanceNorm(3)(jnp.ones((2, 3))), ValueError, r"\[InstanceNorm\] input"),
        (lambda: L.RMSNorm(3, eps=-1.0), ValueError, r"\[RMSNorm\] eps"),
        (lambda: L.Bilinear(2, 3, 4)(jnp.ones((2, 2)), jnp.ones((3, 3))), ValueError,
         r"\[Bilinear\] inputs"),
        (lambda: L.GELU("erf"), ValueError, r"\[GELU\] approx"),
        (lambda: L.Dropout(p="x"), TypeError, r"\[Dropout\] p"),
        (lambda: L.Linear(3, 2, rngs=5), TypeError, r"\[Linear\] rngs"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()


def test_training_steps_match_mlx(mx, mnn):
    """A model written once for both libraries: losses, weights and BatchNorm statistics after
    SGD steps (convnn's under nnx.jit with nnx.Optimizer) equal MLX's."""
    import optax
    from mlx import optimizers

    def build(lib):
        class Model(lib.Module):
            def __init__(self):
                super().__init__()
                self.l1 = lib.Linear(4, 8)
                self.bn = lib.BatchNorm(8)
                self.l2 = lib.Linear(8, 1)

            def __call__(self, x):
                return self.l2(lib.relu(self.bn(self.l1(x))))

        return Model()

    ref, ours = build(mnn), build(L)
    ours.load_weights(_mlx_weights(mx, ref))
    ref_loss = mnn.value_and_grad(ref, lambda x, y: ((ref(x) - y) ** 2).mean())
    ref_opt = optimizers.SGD(learning_rate=0.1)
    opt = nnx.Optimizer(ours, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        _flax_compat.optimizer_update(opt, model, grads)
        return loss

    for i in range(4):
        x, y = _x(16, 4, seed=i), _x(16, 1, seed=10 + i)
        loss, grads = ref_loss(mx.array(x), mx.array(y))
        ref_opt.update(ref, grads)
        np.testing.assert_allclose(
            float(step(ours, opt, jnp.asarray(x), jnp.asarray(y))), float(loss), rtol=1e-5
        )
    after = dict(_mlx_weights(mx, ref))
    for key, value in jax.tree_util.tree_leaves_with_path(ours.parameters()):
        dotted = ".".join(str(getattr(k, "key", k)) for k in key)
        np.testing.assert_allclose(value, after[dotted], rtol=1e-5, atol=1e-6, err_msg=dotted)


# (layer, its call on an input of the shape, input shape, output shape): an empty batch is a
# valid input and gives an empty output (reshapes with an inferred -1 size fail on it).
EMPTY_BATCH = [
    ("GroupNorm", lambda: L.GroupNorm(2, 4), lambda m, x: m(x), (0, 3, 3, 4), (0, 3, 3, 4)),
    ("GroupNorm pytorch", lambda: L.GroupNorm(2, 4, pytorch_compatible=True),
     lambda m, x: m(x), (0, 3, 3, 4), (0, 3, 3, 4)),
    ("BatchNorm eval", lambda: L.BatchNorm(4).eval(), lambda m, x: m(x), (0, 4), (0, 4)),
    ("MultiHeadAttention", lambda: L.MultiHeadAttention(8, 2), lambda m, x: m(x, x, x),
     (0, 5, 8), (0, 5, 8)),
    ("RoPE per-example offsets", lambda: L.RoPE(4),
     lambda m, x: m(x, offset=jnp.zeros((0,), jnp.int32)), (0, 5, 4), (0, 5, 4)),
    ("Conv2d", lambda: L.Conv2d(4, 2, 3), lambda m, x: m(x), (0, 5, 5, 4), (0, 3, 3, 2)),
]


@pytest.mark.parametrize("make, call, shape, out", [c[1:] for c in EMPTY_BATCH],
                         ids=[c[0] for c in EMPTY_BATCH])
def test_an_empty_batch_gives_an_empty_output(make, call, shape, out):
    assert call(make(), jnp.ones(shape)).shape == out


def test_batchnorm_training_on_an_empty_batch_names_the_layer():
    with pytest.raises(ValueError, match=r"\[BatchNorm\] training needs more than one value per "
                                         r"channel; got input shape \(0, 4\)"):
        L.BatchNorm(4)(jnp.ones((0, 4)))


# Each layer given an input of the wrong rank, then of a dtype it refuses: the error names the
# layer (not the function it calls), the problem and the shape or dtype it got.
WRONG_INPUT = [
    ("Conv1d", lambda: L.Conv1d(4, 4, 3)),
    ("ConvTranspose2d", lambda: L.ConvTranspose2d(4, 4, 3)),
    ("MaxPool1d", lambda: L.MaxPool1d(2)),
    ("MaxPool2d", lambda: L.MaxPool2d(2)),
    ("AvgPool2d", lambda: L.AvgPool2d(2)),
    ("AvgPool3d", lambda: L.AvgPool3d(2, count_include_pad=False)),
    ("Upsample", lambda: L.Upsample(2)),
    ("Linear", lambda: L.Linear(4, 4)),
    ("BatchNorm", lambda: L.BatchNorm(4)),
    ("InstanceNorm", lambda: L.InstanceNorm(4)),
    ("GroupNorm", lambda: L.GroupNorm(2, 4)),
    ("Dropout2d", lambda: L.Dropout2d(0.5)),
    ("LSTM", lambda: L.LSTM(4, 4)),
    ("RoPE", lambda: L.RoPE(4)),
]


@pytest.mark.parametrize("name, make", WRONG_INPUT, ids=[c[0] for c in WRONG_INPUT])
def test_a_wrong_input_is_refused_by_the_layers_name(name, make):
    layer = make()
    with pytest.raises(ValueError, match=rf"^\[{name}\] input must have .*got input shape \(\)"):
        layer(jnp.ones(()))
    with pytest.raises(TypeError, match=rf"^\[{name}\] input must .*got complex64"):
        layer(jnp.ones((2, 3, 3, 3, 4), jnp.complex64))


@pytest.mark.parametrize("activation, training", [
    ("relu6", True), ("silu", False),
    *(pytest.param(a, t, marks=pytest.mark.slow)
      for a, t in ((None, True), ("silu", True), (None, False), ("relu6", False)))])
def test_batchnorm_prologue_equals_the_batchnorm_then_the_convolution(activation, training):
    """``conv(x, prologue=bn.prologue(x))`` gives ``conv(bn(x))``: the output, the gradients in
    the input and every parameter, and the running statistics (moved in training only)."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((3, 6, 5, 4)) * 2 + 1, jnp.float32)

    def build():
        bn = L.BatchNorm(4, activation=activation)
        conv = L.Conv2d(4, 4, 3, padding=1, groups=4, rngs=nnx.Rngs(1))
        stats = np.random.default_rng(8).uniform(0.5, 2.0, (3, 4))
        bn.weight, bn.bias = jnp.asarray(stats[0] - 1.2), jnp.asarray(stats[1] - 1.0)
        bn.running_mean, bn.running_var = (nnx.BatchStat(jnp.asarray(v, jnp.float32))
                                           for v in (stats[2] - 1, stats[2]))
        for m in (bn, conv):
            m.train() if training else m.eval()
        return bn, conv

    def loss(models, x, fused):
        bn, conv = models
        y = conv(x, prologue=bn.prologue(x)) if fused else conv(bn(x))
        return jnp.sum(y * jnp.cos(y)), y

    results = []
    for fused in (True, False):
        models = build()
        (_, y), grads = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(models, x, fused)
        results.append((y, grads, nnx.state(models[0], nnx.BatchStat)))
    (y1, g1, s1), (y2, g2, s2) = results
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    moved = not np.allclose(np.asarray(jax.tree.leaves(s1)[0]),
                            np.asarray(build()[0].running_mean[...]))
    assert moved == training
