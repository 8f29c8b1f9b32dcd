"""Recurrent layers, attention, positional encodings and the Transformer family against MLX.

Each convnn layer gets the MLX layer's weights (strict ``load_mlx_weights``), then values and the
gradients of the parameters and inputs are compared, in training and in evaluation mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from mlx_compare import (
    assert_trees_close,
    copy_mlx_weights,
    mlx_flat,
    mlx_value_and_grad,
    nnx_flat,
    nnx_value_and_grad,
)
from tolerances import assert_close

import convnn.layers as nn

F32 = jnp.float32
slow = pytest.mark.slow


def _fast_first(values):
    """``values`` as parameters, all but the first marked slow (one case in the fast tier)."""
    return [v if i == 0 else pytest.param(v, marks=slow) for i, v in enumerate(values)]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _objective(out):
    """A loss that weighs every output element differently (a sum would hide permutations)."""
    out = out if isinstance(out, tuple) else (out,)
    total = 0.0
    for k, o in enumerate(out):
        w = jnp.cos(jnp.arange(o.size, dtype=o.dtype) * (0.37 + k)).reshape(o.shape)
        total = total + (o * w).sum()
    return total


def _mlx_objective(mx, out):
    out = out if isinstance(out, tuple) else (out,)
    total = 0.0
    for k, o in enumerate(out):
        w = mx.cos(mx.arange(o.size, dtype=mx.float32) * (0.37 + k)).reshape(o.shape)
        total = total + (o * w).sum()
    return total


def _check_layer(mx, mnn, mlx_layer, layer, args, *, grad_inputs=(0,)):
    """Values and parameter and input gradients of ``layer(*args)`` against MLX's (one compiled
    convnn program per check)."""
    copy_mlx_weights(mlx_layer, layer)
    given = [i for i, a in enumerate(args) if a is not None and not isinstance(a, str)]
    margs = [mx.array(a) if i in given else a for i, a in enumerate(args)]
    # float arrays are traced and differentiated; boolean masks stay constants
    arrays = [i for i in given if np.issubdtype(np.asarray(args[i]).dtype, np.floating)]

    def full(values):
        out = list(args)
        for i, v in zip(arrays, values, strict=True):
            out[i] = v
        return out

    @nnx.jit
    def run(model, values):
        def loss(model, values):
            return _objective(model(*full(values)))

        value, (grads, input_grads) = nnx.value_and_grad(loss, argnums=(0, 1))(model, values)
        return model(*full(values)), value, grads, input_grads

    out, loss, grads, input_grads = run(layer, [jnp.asarray(args[i]) for i in arrays])
    expected = mlx_layer(*margs)
    if isinstance(expected, tuple):
        for e, a in zip(expected, out, strict=True):
            assert_close(a, np.array(e), F32, what="value")
    else:
        assert_close(out, np.array(expected), F32, what="value")

    loss_m, grads_m = mlx_value_and_grad(
        mnn, mlx_layer, lambda m, *a: _mlx_objective(mx, m(*a)), *margs
    )
    assert_close(loss, loss_m, F32, what="loss")
    assert_trees_close(nnx_flat(grads), grads_m, "parameter gradient")
    for i in grad_inputs:
        def f_mlx(x, i=i):
            a = list(margs)
            a[i] = x
            return _mlx_objective(mx, mlx_layer(*a))

        assert_close(input_grads[arrays.index(i)], np.array(mx.grad(f_mlx)(margs[i])), F32,
                     what=f"input {i} gradient")


# ---------------------------------------------------------------------------------------------
# Recurrent layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["LSTM", "GRU", pytest.param("RNN", marks=slow)]
)
@pytest.mark.parametrize("bias", _fast_first([True, False]))
@pytest.mark.parametrize("batched", _fast_first([True, False]))
def test_recurrent_matches_mlx(mx, mnn, name, bias, batched):
    rng = _rng(1)
    mlx_layer = getattr(mnn, name)(3, 5, bias=bias)
    layer = getattr(nn, name)(3, 5, bias=bias)
    x = _normal(rng, 2, 6, 3) if batched else _normal(rng, 6, 3)
    _check_layer(mx, mnn, mlx_layer, layer, [x])


@pytest.mark.parametrize("name", _fast_first(["LSTM", "GRU", "RNN"]))
def test_recurrent_initial_state_matches_mlx(mx, mnn, name):
    rng = _rng(2)
    mlx_layer, layer = getattr(mnn, name)(4, 3), getattr(nn, name)(4, 3)
    x, h = _normal(rng, 2, 5, 4), _normal(rng, 2, 3)
    args = [x, h] if name != "LSTM" else [x, h, _normal(rng, 2, 3)]
    _check_layer(mx, mnn, mlx_layer, layer, args, grad_inputs=range(len(args)))
    if name == "GRU":  # an unbatched state broadcasts over the batch (MLX's RNN and LSTM refuse)
        _check_layer(mx, mnn, mlx_layer, layer, [x, _normal(rng, 3)], grad_inputs=(0, 1))


@slow
def test_rnn_nonlinearity_and_lstm_cell_only(mx, mnn):
    rng = _rng(3)
    x = _normal(rng, 2, 4, 3)
    _check_layer(mx, mnn, mnn.RNN(3, 4, nonlinearity=mnn.relu),
                 nn.RNN(3, 4, nonlinearity=jax.nn.relu), [x])
    # a module as the nonlinearity: its parameters are the layer's (and trained), as in MLX
    _check_layer(mx, mnn, mnn.RNN(3, 4, nonlinearity=mnn.PReLU()),
                 nn.RNN(3, 4, nonlinearity=nn.PReLU()), [x])
    _check_layer(mx, mnn, mnn.LSTM(3, 4), nn.LSTM(3, 4), [x, None, _normal(rng, 2, 4)],
                 grad_inputs=(0, 2))


def test_recurrent_parameter_layouts(mnn):
    for name, expected in [
        ("RNN", {"Wxh": (5, 3), "Whh": (5, 5), "bias": (5,)}),
        ("GRU", {"Wx": (15, 3), "Wh": (15, 5), "b": (15,), "bhn": (5,)}),
        ("LSTM", {"Wx": (20, 3), "Wh": (20, 5), "bias": (20,)}),
    ]:
        layer = getattr(nn, name)(3, 5)
        shapes = {k: v.shape for k, v in layer.parameters().items()}
        mlx_shapes = {k: v.shape for k, v in getattr(mnn, name)(3, 5).parameters().items()}
        assert shapes == expected == mlx_shapes
        assert set(getattr(nn, name)(3, 5, bias=False).parameters()) == {
            k for k in expected if k not in ("bias", "b", "bhn")
        }
        # MLX's initialisation: uniform in +-1/sqrt(hidden_size)
        bound = 1 / np.sqrt(5)
        for value in layer.parameters().values():
            assert float(jnp.abs(value).max()) <= bound


def test_recurrent_errors():
    with pytest.raises(ValueError, match=r"\[LSTM\].*\(N, L, 3\).*got input shape \(2, 4\)"):
        nn.LSTM(3, 4)(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\[GRU\].*got input shape \(1, 2, 5, 3\)"):
        nn.GRU(3, 4)(jnp.ones((1, 2, 5, 3)))
    with pytest.raises(ValueError, match=r"\[RNN\] hidden must broadcast to shape \(2, 4\)"):
        nn.RNN(3, 4)(jnp.ones((2, 5, 3)), jnp.ones((3, 4)))
    with pytest.raises(TypeError, match=r"\[LSTM\] input must have a floating dtype"):
        nn.LSTM(3, 4)(jnp.ones((2, 5, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"\[RNN\] nonlinearity"):
        nn.RNN(3, 4, nonlinearity=3)
    with pytest.raises(ValueError, match=r"\[GRU\] hidden_size"):
        nn.GRU(3, 0)


def test_recurrent_under_jit_and_seed():
    nn.seed(5)
    a = nn.LSTM(3, 4)
    nn.seed(5)
    b = nn.LSTM(3, 4)
    np.testing.assert_array_equal(np.asarray(a.Wx[...]), np.asarray(b.Wx[...]))
    c = nn.LSTM(3, 4, rngs=nnx.Rngs(0))
    assert not np.array_equal(np.asarray(a.Wx[...]), np.asarray(c.Wx[...]))

    x = jnp.ones((2, 5, 3), F32)
    eager = a(x)
    jitted = nnx.jit(lambda m, x: m(x))(a, x)
    for e, j in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(np.asarray(j), np.asarray(e), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def _mask(kind, rng, lq, lk):
    if kind == "additive":
        return _normal(rng, lq, lk)
    if kind == "bool":
        return rng.random((2, 1, lq, lk)) > 0.3
    return kind  # None or "causal"


@pytest.mark.parametrize("mask", _fast_first(["additive", None, "causal", "bool"]))
@pytest.mark.parametrize("bias", _fast_first([False, True]))
def test_multi_head_attention_matches_mlx(mx, mnn, mask, bias):
    rng = _rng(4)
    kwargs = dict(key_input_dims=6, value_dims=4, value_output_dims=3, bias=bias)
    mlx_layer = mnn.MultiHeadAttention(8, 2, **kwargs)
    layer = nn.MultiHeadAttention(8, 2, **kwargs)
    q, kv = _normal(rng, 2, 5, 8), _normal(rng, 2, 7, 6)
    _check_layer(mx, mnn, mlx_layer, layer, [q, kv, kv, _mask(mask, rng, 5, 7)],
                 grad_inputs=(0, 1))


@slow
def test_multi_head_attention_self_with_causal_mask(mx, mnn):
    rng = _rng(5)
    mlx_layer, layer = mnn.MultiHeadAttention(12, 3), nn.MultiHeadAttention(12, 3)
    x = _normal(rng, 2, 6, 12)
    mask = np.array(mnn.MultiHeadAttention.create_additive_causal_mask(6))
    np.testing.assert_array_equal(
        np.asarray(nn.MultiHeadAttention.create_additive_causal_mask(6)), mask
    )
    assert nn.MultiHeadAttention.create_additive_causal_mask(4, jnp.float16).dtype == jnp.float16
    _check_layer(mx, mnn, mlx_layer, layer, [x, x, x, mask], grad_inputs=(0,))
    names = sorted(layer.parameters())
    assert names == ["key_proj", "out_proj", "query_proj", "value_proj"]


def test_scaled_dot_product_attention_matches_mlx(mx):
    rng = _rng(6)
    q, k, v = _normal(rng, 2, 4, 3, 8), _normal(rng, 2, 2, 5, 8), _normal(rng, 2, 2, 5, 6)
    for mask in [None, "causal", _normal(rng, 2, 1, 3, 5), rng.random((3, 5)) > 0.5]:
        mm = mask if mask is None or isinstance(mask, str) else mx.array(mask)
        expected = mx.fast.scaled_dot_product_attention(
            mx.array(q), mx.array(k), mx.array(v), scale=0.3, mask=mm
        )
        actual = nn.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
        assert_close(actual, np.array(expected), F32, what=f"mask {type(mask).__name__}")
    # a query that may attend to no key averages the values, as in MLX
    none = np.zeros((3, 5), bool)
    expected = mx.fast.scaled_dot_product_attention(
        mx.array(q), mx.array(k), mx.array(v), scale=0.3, mask=mx.array(none))
    actual = nn.scaled_dot_product_attention(q, k, v, scale=0.3, mask=none)
    assert_close(actual, np.array(expected), F32, what="all masked")


def test_multi_head_attention_errors():
    attn = nn.MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"\[MultiHeadAttention\] The input feature dimensions"):
        nn.MultiHeadAttention(6, 4)
    with pytest.raises(ValueError, match=r"\[MultiHeadAttention\] keys must have shape"):
        attn(jnp.ones((2, 5, 8)), jnp.ones((2, 5, 6)), jnp.ones((2, 5, 8)))
    with pytest.raises(ValueError, match=r"\[MultiHeadAttention\] queries must have shape"):
        attn(jnp.ones((5, 8)), jnp.ones((5, 8)), jnp.ones((5, 8)))
    with pytest.raises(ValueError, match=r"mask must broadcast to .* got mask shape \(4, 4\)"):
        x = jnp.ones((2, 5, 8))
        attn(x, x, x, jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"the only string mask is 'causal'"):
        x = jnp.ones((2, 5, 8))
        attn(x, x, x, "upper")
    # Named by the layer (the error came from its inner Linear) and by the function (float("a")
    # raised an unnamed ValueError).
    with pytest.raises(TypeError, match=r"^\[MultiHeadAttention\] queries must have a floating"):
        attn(jnp.ones((2, 5, 8), jnp.int32), jnp.ones((2, 5, 8)), jnp.ones((2, 5, 8)))
    q = jnp.ones((1, 2, 5, 4))
    for scale in ("a", None, True, jnp.float32(0.5)):
        with pytest.raises(TypeError, match=r"^\[scaled_dot_product_attention\] scale must be a"):
            nn.scaled_dot_product_attention(q, q, q, scale=scale)


# ---------------------------------------------------------------------------------------------
# Positional encodings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    _fast_first([{}, {"cos_first": True, "full_turns": True},
                 {"min_freq": 0.01, "max_freq": 2.0, "scale": 1.0}]),
)
@pytest.mark.parametrize("dims", _fast_first([16, 2]))
def test_sinusoidal_matches_mlx(mx, mnn, kwargs, dims):
    rng = _rng(7)
    positions = rng.uniform(0, 20, (3, 5)).astype(np.float32)
    mlx_layer = mnn.SinusoidalPositionalEncoding(dims, **kwargs)
    layer = nn.SinusoidalPositionalEncoding(dims, **kwargs)
    expected = mlx_layer(mx.array(positions))
    assert_close(layer(positions), np.array(expected), F32)
    grad_m = mx.grad(lambda p: mlx_layer(p).sum())(mx.array(positions))
    assert_close(jax.grad(lambda p: layer(p).sum())(jnp.asarray(positions)), np.array(grad_m),
                 F32, what="gradient")
    assert layer.parameters() == {} == mlx_layer.parameters()
    # integer positions, as MLX takes them (computed in float32)
    ints = layer(jnp.arange(6, dtype=jnp.int32))
    assert ints.dtype == F32
    assert_close(ints, np.array(mlx_layer(mx.arange(6))), F32, what="int positions")


def test_sinusoidal_errors():
    with pytest.raises(ValueError, match=r"\[SinusoidalPositionalEncoding\] dims must be"):
        nn.SinusoidalPositionalEncoding(5)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dims", _fast_first([4, 8]))
@pytest.mark.parametrize("offset", _fast_first([3, 0]))
def test_rope_matches_mlx(mx, mnn, traditional, dims, offset):
    rng = _rng(8)
    x = _normal(rng, 2, 3, 5, 8)
    for kwargs in ({}, {"base": 500.0, "scale": 0.5}):
        mlx_layer = mnn.RoPE(dims, traditional=traditional, **kwargs)
        layer = nn.RoPE(dims, traditional=traditional, **kwargs)
        expected = mlx_layer(mx.array(x), offset=offset)
        assert_close(layer(x, offset=offset), np.array(expected), F32)
        grad_m = mx.grad(lambda a, m=mlx_layer: (m(a, offset=offset) * mx.array(x)).sum())(
            mx.array(x))
        grad = jax.grad(lambda a, m=layer: (m(a, offset=offset) * jnp.asarray(x)).sum())(
            jnp.asarray(x))
        assert_close(grad, np.array(grad_m), F32, what="gradient")


def test_rope_offsets_per_example_and_dtype(mx, mnn):
    rng = _rng(9)
    x = _normal(rng, 2, 3, 5, 8)
    expected = mnn.RoPE(8)(mx.array(x), offset=mx.array([1, 6]))
    assert_close(nn.RoPE(8)(x, offset=jnp.array([1, 6])), np.array(expected), F32)
    half = nn.RoPE(8)(jnp.asarray(x, jnp.float16))
    assert half.dtype == jnp.float16
    with pytest.raises(ValueError, match=r"\[RoPE\] input must have shape .* dims=8"):
        nn.RoPE(8)(jnp.ones((2, 5, 6)))
    with pytest.raises(ValueError, match=r"\[RoPE\] dims must be even"):
        nn.RoPE(5)


@pytest.mark.parametrize("heads", _fast_first([6, 4, 8]))
@pytest.mark.parametrize("offset", _fast_first([2, 0]))
def test_alibi_matches_mlx(mx, mnn, heads, offset):
    rng = _rng(10)
    scores = _normal(rng, 2, heads, 5, 7)
    mask = _normal(rng, 5, 7)
    for m in (None, mask):
        expected = mnn.ALiBi()(mx.array(scores), offset=offset,
                               mask=None if m is None else mx.array(m))
        assert_close(nn.ALiBi()(scores, offset=offset, mask=m), np.array(expected), F32)
    np.testing.assert_allclose(
        np.asarray(nn.ALiBi.create_alibi_slope(heads)),
        np.array(mnn.ALiBi.create_alibi_slope(heads)), rtol=1e-7)
    np.testing.assert_allclose(
        np.asarray(nn.ALiBi.create_alibi_matrix(6, 4, heads, offset=offset)),
        np.array(mnn.ALiBi.create_alibi_matrix(6, 4, heads, offset=offset)), rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# Transformer family
# ---------------------------------------------------------------------------------------------


@slow
@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_decoder_match_mlx(mx, mnn, norm_first):
    rng = _rng(11)
    x, mem = _normal(rng, 2, 5, 8), _normal(rng, 2, 4, 8)
    mask = np.array(mnn.MultiHeadAttention.create_additive_causal_mask(5))
    kw = dict(mlp_dims=12, norm_first=norm_first)
    _check_layer(mx, mnn, mnn.TransformerEncoderLayer(8, 2, **kw),
                 nn.TransformerEncoderLayer(8, 2, **kw), [x, mask])
    _check_layer(mx, mnn, mnn.TransformerEncoder(2, 8, 2, **kw),
                 nn.TransformerEncoder(2, 8, 2, **kw), [x, None])
    _check_layer(mx, mnn, mnn.TransformerDecoderLayer(8, 2, **kw),
                 nn.TransformerDecoderLayer(8, 2, **kw), [x, mem, mask, None], grad_inputs=(0, 1))
    _check_layer(mx, mnn, mnn.TransformerDecoder(2, 8, 2, **kw),
                 nn.TransformerDecoder(2, 8, 2, **kw), [x, mem, "causal", None],
                 grad_inputs=(0, 1))


@slow
def test_transformer_matches_mlx_with_checkpoint_and_activation(mx, mnn):
    rng = _rng(12)
    src, tgt = _normal(rng, 2, 4, 8), _normal(rng, 2, 5, 8)
    mask = np.array(mnn.MultiHeadAttention.create_additive_causal_mask(5))
    kw = dict(num_encoder_layers=1, num_decoder_layers=2, mlp_dims=16)
    mlx_model = mnn.Transformer(8, 2, activation=mnn.gelu, checkpoint=True, **kw)
    model = nn.Transformer(8, 2, activation=nn.gelu, checkpoint=True, **kw)
    _check_layer(mx, mnn, mlx_model, model, [src, tgt, None, mask, None], grad_inputs=(0, 1))
    # the same numbers without rematerialisation
    plain = nn.Transformer(8, 2, activation=nn.gelu, **kw)
    copy_mlx_weights(mlx_model, plain)
    args = [jnp.asarray(src), jnp.asarray(tgt), None, jnp.asarray(mask), None]
    _, g1 = nnx_value_and_grad(model, lambda m, *a: _objective(m(*a)), *args)
    _, g2 = nnx_value_and_grad(plain, lambda m, *a: _objective(m(*a)), *args)
    assert_trees_close(g1, g2, "checkpoint")


@slow
def test_transformer_defaults_match_mlx(mnn):
    model, mlx_model = nn.Transformer(), mnn.Transformer()
    shapes = {k: v.shape for k, v in nnx_flat(nnx.state(model, nnx.Param)).items()}
    assert shapes == {k: v.shape for k, v in mlx_flat(mlx_model.parameters()).items()}
    layer = model.encoder.layers[0]
    assert layer.norm_first is True and layer.dropout1._p_1 == 1.0
    assert layer.linear1.weight.shape == (2048, 512)


@pytest.mark.parametrize("norm_first", _fast_first([False, True]))
def test_transformer_layer_train_and_eval(mx, mnn, norm_first):
    """Training mode without dropout and evaluation mode with dropout equal MLX's; training mode
    with dropout draws new masks."""
    rng = _rng(13)
    x = _normal(rng, 2, 5, 8)
    kw = dict(mlp_dims=8, norm_first=norm_first)
    if norm_first:  # (post-norm training mode: the test of the ported Transformer LM)
        mask = np.array(mnn.MultiHeadAttention.create_additive_causal_mask(5))
        _check_layer(mx, mnn, mnn.TransformerEncoderLayer(8, 2, **kw),
                     nn.TransformerEncoderLayer(8, 2, **kw), [x, mask])
    mlx_layer = mnn.TransformerEncoderLayer(8, 2, dropout=0.5, **kw)
    layer = nn.TransformerEncoderLayer(8, 2, dropout=0.5, **kw)
    copy_mlx_weights(mlx_layer, layer)
    mlx_layer.eval()
    layer.eval()
    _check_layer(mx, mnn, mlx_layer, layer, [x, None])
    # in training mode dropout draws new masks at every call
    layer.train()
    a, b = layer(jnp.asarray(x), None), layer(jnp.asarray(x), None)
    assert not np.allclose(np.asarray(a), np.asarray(b))
    layer.eval()
    np.testing.assert_array_equal(
        np.asarray(layer(jnp.asarray(x), None)), np.asarray(layer(jnp.asarray(x), None))
    )


@slow
def test_transformer_under_nnx_jit_and_optimizer():
    import optax

    model = nn.TransformerEncoder(1, 8, 2, mlp_dims=16, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    x = jnp.asarray(_normal(_rng(14), 2, 5, 8))

    @nnx.jit
    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: (m(x, "causal") ** 2).mean())(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x)) for _ in range(3)]
    assert losses[-1] < losses[0]


def test_layers_are_valid_in_mlx_form(mnn):
    """MLX constructors as written: no rngs; the hyperparameters print as MLX's do."""
    for args in [(3, 4), (3, 4, False)]:
        for name in ("RNN", "GRU", "LSTM"):
            assert getattr(nn, name)(*args) is not None
    assert repr(nn.RoPE(8)) == repr(mnn.RoPE(8))
    assert repr(nn.LSTM(3, 4)) == repr(mnn.LSTM(3, 4))
