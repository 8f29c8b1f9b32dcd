"""MLX's activation functions and classes against the real MLX (values and gradients), and the
coverage of ``mlx.nn``'s public names by ``convnn.layers``."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import convnn.layers as L

# Function name -> extra arguments (besides the input) to try.
FUNCTIONS = {
    "sigmoid": [{}],
    "relu": [{}],
    "relu2": [{}],
    "relu6": [{}],
    "leaky_relu": [{}, {"negative_slope": 0.2}],
    "log_softmax": [{}, {"axis": 0}],
    "elu": [{}, {"alpha": 0.5}],
    "softmax": [{}, {"axis": 0}],
    "softplus": [{}],
    "softsign": [{}],
    "softshrink": [{}, {"lambd": 1.0}],
    "celu": [{}, {"alpha": 2.0}],
    "silu": [{}],
    "log_sigmoid": [{}],
    "gelu": [{}],
    "gelu_approx": [{}],
    "gelu_fast_approx": [{}],
    "glu": [{}, {"axis": 0}],
    "step": [{}, {"threshold": 0.5}],
    "selu": [{}],
    "mish": [{}],
    "hardswish": [{}],
    "hard_tanh": [{}, {"min_val": -0.5, "max_val": 2.0}],
    "hard_shrink": [{}, {"lambd": 1.0}],
    "softmin": [{}, {"axis": 0}],
    "tanh": [{}],
}

# Class name -> constructor arguments to try.
CLASSES = {
    "CELU": [(), (0.5,)],
    "ELU": [(), (2.0,)],
    "GELU": [(), ("none",), ("precise",), ("tanh",), ("fast",)],
    "GLU": [(), (0,)],
    "SELU": [()],
    "HardShrink": [(), (1.5,)],
    "Hardswish": [()],
    "HardTanh": [()],
    "LeakyReLU": [(), (0.3,)],
    "LogSigmoid": [()],
    "LogSoftmax": [()],
    "Mish": [()],
    "ReLU": [()],
    "ReLU2": [()],
    "ReLU6": [()],
    "Sigmoid": [()],
    "SiLU": [()],
    "Softmax": [()],
    "Softmin": [()],
    "Softplus": [()],
    "Softshrink": [(), (0.2,)],
    "Softsign": [()],
    "Step": [(), (0.25,)],
    "Tanh": [()],
}

# Not ported: quantization, distributed training, MLX's own autodiff helper.
NOT_PORTED = {
    "QQLinear", "QuantizedEmbedding", "QuantizedLinear", "quantize",
    "AllToShardedLinear", "FullyShardedModule", "QuantizedAllToShardedLinear",
    "QuantizedShardedToAllLinear", "ShardedToAllLinear", "fully_shard",
    "average_gradients", "value_and_grad",
}
# Part B of the MLX layer set (recurrent, attention, positional encodings, transformers).
PART_B = {
    "RNN", "GRU", "LSTM", "MultiHeadAttention", "SinusoidalPositionalEncoding", "RoPE", "ALiBi",
    "Transformer", "TransformerEncoder", "TransformerEncoderLayer", "TransformerDecoder",
    "TransformerDecoderLayer",
}


def _x(seed=0):
    x = np.random.default_rng(seed).standard_normal((4, 6)).astype(np.float32) * 3
    # Ties and kinks that MLX's maximum/minimum/where decide, and exact thresholds.
    x[0, :6] = [0.0, 6.0, -3.0, 3.0, 1.0, -1.0]
    x[1, :2] = [0.5, -0.5]
    return x


def _check(mx, name, ref_fn, our_fn, x):
    y_ref = np.array(ref_fn(mx.array(x)))
    y = np.asarray(our_fn(jnp.asarray(x)))
    assert y.dtype == y_ref.dtype, (name, y.dtype, y_ref.dtype)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6, err_msg=name)
    if not np.issubdtype(y_ref.dtype, np.floating):
        return
    g = np.random.default_rng(5).standard_normal(y_ref.shape).astype(np.float32)
    g_ref = np.array(mx.grad(lambda a: (ref_fn(a) * mx.array(g)).sum())(mx.array(x)))
    g_ours = np.asarray(jax.grad(lambda a: jnp.sum(our_fn(a) * g))(jnp.asarray(x)))
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-5, err_msg=f"{name} grad")


def _tiered(table):
    """The first variant of each entry in the fast tier, the others marked slow."""
    return [
        pytest.param(name, v, marks=() if i == 0 else (pytest.mark.slow,), id=f"{name}-{i}")
        for name, variants in table.items()
        for i, v in enumerate(variants)
    ]


@pytest.mark.parametrize(("name", "kwargs"), _tiered(FUNCTIONS))
def test_function_matches_mlx(mx, mnn, name, kwargs):
    ref, ours = getattr(mnn, name), getattr(L, name)
    _check(mx, name, lambda a: ref(a, **kwargs), lambda a: ours(a, **kwargs), _x())


def test_prelu_function_matches_mlx(mx, mnn):
    alpha = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], np.float32)
    _check(mx, "prelu", lambda a: mnn.prelu(a, mx.array(alpha)),
           lambda a: L.prelu(a, jnp.asarray(alpha)), _x())


@pytest.mark.slow  # the classes call the functions tested above; GELU's options are below
@pytest.mark.parametrize(("name", "args"), _tiered(CLASSES))
def test_class_matches_mlx(mx, mnn, name, args):
    ref, ours = getattr(mnn, name)(*args), getattr(L, name)(*args)
    _check(mx, name, ref, ours, _x(1))
    assert isinstance(ours, L.Module)


def test_every_mlx_nn_name_is_covered(mnn):
    """Every public class and function of ``mlx.nn`` (and ``losses`` / ``init``) exists in
    ``convnn.layers``, except quantization, distributed training and part B's layers."""
    public = {
        name for name, value in vars(mnn).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
    }
    missing = sorted(public - NOT_PORTED - PART_B - set(dir(L)))
    assert not missing, missing
    for module in ("losses", "init"):
        ref = getattr(mnn, module)
        names = {
            n for n, v in vars(ref).items()
            if inspect.isfunction(v) and not n.startswith("_") and v.__module__ == ref.__name__
        }
        assert not sorted(names - set(dir(getattr(L, module)))), module


def test_activation_functions_accept_integer_free_python_values():
    assert L.relu(jnp.array([-1.0, 2.0])).tolist() == [0.0, 2.0]
    assert L.step(jnp.array([0.0, -1.0])).dtype == jnp.int32
    with pytest.raises(ValueError, match=r"\[glu\] axis -1 must be an axis of the input with an"):
        L.glu(jnp.ones((2, 3)))


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_integer_and_bool_inputs_follow_mlx(mx, mnn, dtype):
    """MLX's dtype for integer and bool inputs (float32; relu, relu2 and hard_shrink keep
    integers, bools as int32; step gives int32), and the values of the same numbers as float32,
    from MLX's float path (its bool log_softmax is wrong: -1.27 where log(softmax) is -3.00).
    Before: gelu(int) divided by sqrt(2) cast to an integer (silently wrong), hardswish and
    hard_tanh of bools were wrong, sigmoid, silu and glu of integers raised."""
    x = np.array([[-3, -2, -1, 0, 1, 2, 3, 6]]).astype(dtype)
    for name in FUNCTIONS:
        try:
            ref_dtype = getattr(mnn, name)(mx.array(x)).dtype
        except (ValueError, TypeError, RuntimeError):  # MLX: log_sigmoid, softmin of bools
            ref_dtype = mx.float32
        ref = getattr(mnn, name)(mx.array(x.astype(np.float32)))
        ours = getattr(L, name)(jnp.asarray(x))
        assert str(ours.dtype) == str(ref_dtype).removeprefix("mlx.core."), name
        np.testing.assert_allclose(np.asarray(ours, np.float32), np.array(ref.astype(mx.float32)),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_activation_of_what_is_not_an_array_names_the_function():
    for name in FUNCTIONS:
        with pytest.raises(TypeError, match=rf"^\[{name}\] x must be an array"):
            getattr(L, name)("abc")


BAD_SHAPES = [  # (name in the message, call, shapes the message names)
    ("PReLU", lambda: L.PReLU(3)(jnp.ones((2, 5))), r"input shape \(2, 5\) and alpha shape \(3,\)"),
    ("prelu", lambda: L.prelu(jnp.ones((3, 1)), jnp.ones(3)),  # MLX would return (3, 3)
     r"input shape \(3, 1\) and alpha shape \(3,\)"),
    ("GLU", lambda: L.GLU()(jnp.ones((2, 5))), r"axis -1 .*input shape \(2, 5\)"),
    ("GLU", lambda: L.GLU()(jnp.ones(())), r"axis -1 .*input shape \(\)"),
    ("glu", lambda: L.glu(jnp.ones((2, 4)), axis=5), r"axis 5 .*input shape \(2, 4\)"),
]


@pytest.mark.parametrize("name, call, shapes", BAD_SHAPES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_SHAPES)])
def test_activation_shape_errors_name_the_function_or_layer(name, call, shapes):
    """Before JAX sees them (it raised an unnamed broadcasting TypeError for PReLU, an
    IndexError for glu's axis, and silently grew a (3, 1) input to (3, 3) in prelu)."""
    with pytest.raises(ValueError, match=rf"^\[{name}\] .*{shapes}"):
        call()


def test_prelu_keeps_the_input_shape_for_one_slope_or_one_per_channel():
    assert L.PReLU()(jnp.array(-2.0)).shape == ()  # one slope: any input, 0-d too
    np.testing.assert_allclose(L.PReLU(3, 0.5)(-jnp.ones((2, 3))), -0.5 * np.ones((2, 3)))


@pytest.mark.parametrize("args", [(), ("none",), ("precise",), ("tanh",), ("fast",)])
def test_gelu_options_match_mlx(mx, mnn, args):
    _check(mx, "GELU", mnn.GELU(*args), L.GELU(*args), _x(1))
