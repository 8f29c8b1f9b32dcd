"""Convolution layers and the Flax NNX integration of convnn.layers.

Tiers: module = functional API (same parameters, same output, bit for bit); padding_mode =
jnp.pad + functional, and PyTorch's padding_mode; init statistics from the definition; repr
against MLX's own repr; argument errors; dtypes; nnx.jit / nnx.grad / nnx.Optimizer training,
nnx.split / nnx.merge, nnx.vmap and sharded parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tolerances import assert_close

import convnn
import convnn.layers as L
from convnn._flax_compat import get_value, optimizer_update, set_value

pytestmark = pytest.mark.floor  # runs again at the version floor in CI


def np_init(key, shape, dtype=jnp.float32):
    """A NumPy initializer for tests that do not check the default init: compiling
    jax.random for every new parameter shape dominates the runtime on CPU otherwise."""
    del key
    rng = np.random.default_rng(sum(shape) * 7919 + len(shape))
    bound = 1 / math.sqrt(math.prod(shape[1:]))
    return jnp.asarray(rng.uniform(-bound, bound, shape), dtype)


FAST = dict(kernel_init=np_init)

# ----------------------------------------------------------------------------------------------
# Module = functional

# (layer, positional args, keyword args, input shape)
CONV_CASES = [
    ("Conv1d", (4, 6, 3), dict(stride=2, padding=1), (2, 9, 4)),
    ("Conv1d", (4, 6, 3), dict(dilation=2, groups=2, bias=False), (2, 9, 4)),
    ("Conv2d", (4, 8, 3), dict(stride=2, padding=1), (2, 7, 8, 4)),
    (
        "Conv2d",
        (6, 4, (3, 2)),
        dict(stride=(1, 2), padding=((1, 0), (0, 1)), groups=2),
        (2, 6, 7, 6),
    ),
    ("Conv2d", (3, 4, 3), dict(padding="same", dilation=2), (2, 7, 6, 3)),
    ("Conv3d", (4, 4, 2), dict(padding=1, groups=4), (1, 4, 5, 3, 4)),
    ("ConvTranspose1d", (4, 6, 3), dict(stride=2, padding=1, output_padding=1), (2, 5, 4)),
    (
        "ConvTranspose2d",
        (4, 6, 3),
        dict(stride=2, padding=1, output_padding=1, groups=2),
        (2, 4, 5, 4),
    ),
    ("ConvTranspose2d", (4, 2, (2, 3)), dict(dilation=(1, 2), bias=False), (2, 4, 5, 4)),
    ("ConvTranspose3d", (2, 4, 2), dict(stride=2), (1, 3, 2, 3, 2)),
]
CONV_IDS = [f"{c[0]}-{i}" for i, c in enumerate(CONV_CASES)]


def _functional(name, x, w, kwargs):
    n = int(name[-2])
    transposed = name.startswith("ConvTranspose")
    fn = getattr(convnn, f"conv_transpose{n}d" if transposed else f"conv{n}d")
    extra = dict(output_padding=kwargs.get("output_padding", 0)) if transposed else {}
    return fn(
        x, w, stride=kwargs.get("stride", 1), padding=kwargs.get("padding", 0),
        dilation=kwargs.get("dilation", 1), groups=kwargs.get("groups", 1), **extra,
    )


@pytest.mark.parametrize("name, args, kwargs, x_shape", CONV_CASES, ids=CONV_IDS)
def test_module_equals_functional(name, args, kwargs, x_shape):
    layer = getattr(L, name)(*args, **kwargs, **FAST, rngs=nnx.Rngs(0))
    c_in, c_out, k = args
    n = int(name[-2])
    kernel = (k,) * n if isinstance(k, int) else k
    groups = kwargs.get("groups", 1)
    assert layer.weight.shape == (c_out, *kernel, c_in // groups)
    if kwargs.get("bias", True):
        assert layer.bias.shape == (c_out,)
        # a non-zero bias, so that adding it is checked
        set_value(layer.bias, jnp.asarray(np.arange(c_out, dtype=np.float32) / 7))
    else:
        assert layer.bias is None
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    expected = _functional(name, x, layer.weight[...], kwargs)
    if layer.bias is not None:
        bias = np.arange(c_out, dtype=np.float32) / 7
        expected = expected + bias.reshape((1,) * (len(x_shape) - 1) + (c_out,))
    out = layer(x)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, expected)
    # unbatched input (XLA may lower a batch of one differently: compare at float32 tolerance)
    assert_close(layer(x[0]), out[0], np.float32)
    # under nnx.jit (XLA may fuse differently: compare at float32 tolerance)
    assert_close(nnx.jit(lambda m, v: m(v))(layer, x), expected, np.float32)


@pytest.mark.parametrize("name, args, kwargs, x_shape", CONV_CASES[2:8], ids=CONV_IDS[2:8])
def test_gradients_equal_functional(name, args, kwargs, x_shape):
    layer = getattr(L, name)(*args, **kwargs, **FAST, rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(1).standard_normal(x_shape).astype(np.float32))

    def loss(model, v):
        return jnp.sum(jnp.sin(model(v)))

    (value, grads) = nnx.value_and_grad(loss)(layer, x)

    def ref_loss(w, b):
        y = _functional(name, x, w, kwargs)
        return jnp.sum(jnp.sin(y if b is None else y + b.reshape((1,) * (y.ndim - 1) + (-1,))))

    b = None if layer.bias is None else layer.bias[...]
    ref_value, (gw, gb) = jax.value_and_grad(ref_loss, argnums=(0, 1))(layer.weight[...], b)
    assert_close(value, ref_value, np.float32)
    assert_close(get_value(grads["weight"]), gw, np.float32)
    if b is not None:
        assert_close(get_value(grads["bias"]), gb, np.float32)


# ----------------------------------------------------------------------------------------------
# padding_mode

_JNP = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "name, padding, x_shape",
    [
        ("Conv1d", 2, (2, 9, 3)),
        ("Conv2d", (2, 1), (2, 6, 7, 3)),
        ("Conv2d", ((1, 2), (0, 1)), (2, 6, 7, 3)),
        ("Conv2d", ((2, -1), (1, 1)), (2, 6, 7, 3)),  # the negative part crops
        ("Conv3d", 1, (1, 4, 5, 3, 3)),
        ("Conv1d", 5, (2, 3, 3)),  # beyond the input (PyTorch refuses reflect and circular)
    ],
)
def test_padding_mode_equals_pad_then_functional(mode, name, padding, x_shape):
    n = int(name[-2])
    layer = getattr(L, name)(3, 4, 3, stride=1, padding=padding, padding_mode=mode,
                             **FAST, rngs=nnx.Rngs(2))
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    if isinstance(padding, int):
        lows = highs = (padding,) * n
    elif isinstance(padding[0], int):
        lows = highs = padding
    else:
        lows, highs = padding
    widths = [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in zip(lows, highs)] + [(0, 0)]
    xp = np.pad(x, widths, mode=_JNP[mode])  # NumPy's modes, repeated beyond the input
    crop = (tuple(min(v, 0) for v in lows), tuple(min(v, 0) for v in highs))
    conv = getattr(convnn, f"conv{n}d")
    bias = layer.bias[...].reshape((1,) * (n + 1) + (4,))
    expected = conv(xp, layer.weight[...], padding=crop) + bias
    np.testing.assert_array_equal(layer(x), expected)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding, stride", [(1, 1), ((2, 1), 2), ("same", 1)])
def test_padding_mode_against_torch(mode, padding, stride, torch):
    layer = L.Conv2d(3, 4, 3, stride=stride, padding=padding, padding_mode=mode,
                     param_dtype=jnp.float64, **FAST, rngs=nnx.Rngs(3))
    set_value(layer.bias, jnp.linspace(-1, 1, 4, dtype=jnp.float64))
    x = np.random.default_rng(3).standard_normal((2, 6, 7, 3))
    t = torch.nn.Conv2d(3, 4, 3, stride=stride, padding=padding, padding_mode=mode).double()
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(np.moveaxis(np.array(layer.weight[...]), -1, 1)))
        t.bias.copy_(torch.from_numpy(np.array(layer.bias[...])))
        ref = t(torch.from_numpy(np.moveaxis(x, -1, 1))).numpy()
    assert_close(layer(x), np.moveaxis(ref, 1, -1), np.float64)


# ----------------------------------------------------------------------------------------------
# Initialisation

INIT_CASES = [
    ("Conv1d", (64, 64, 3), {}),
    ("Conv2d", (32, 64, 3), dict(groups=2)),
    ("Conv3d", (16, 32, 3), {}),
    ("ConvTranspose1d", (64, 32, 4), {}),
    ("ConvTranspose2d", (64, 64, 3), dict(groups=4)),
    ("ConvTranspose3d", (16, 16, (3, 2, 3)), {}),
]


@pytest.mark.parametrize("name, args, kwargs", INIT_CASES, ids=[c[0] for c in INIT_CASES])
def test_init_statistics(name, args, kwargs):
    c_in, c_out, k = args
    n = int(name[-2])
    kernel = (k,) * n if isinstance(k, int) else k
    bound = 1 / math.sqrt(c_in // kwargs.get("groups", 1) * math.prod(kernel))
    layer = getattr(L, name)(*args, **kwargs, rngs=nnx.Rngs(4))
    w = np.asarray(layer.weight[...], np.float64).ravel()
    count = w.size
    assert count > 4000
    assert np.all(np.abs(w) <= bound)
    assert np.max(np.abs(w)) > 0.97 * bound
    std = bound / math.sqrt(3)  # of uniform(-bound, bound)
    assert abs(w.mean()) < 5 * std / math.sqrt(count)
    # the standard error of the sample std of a uniform is std * sqrt(0.2 / count)
    assert abs(w.std() - std) < 5 * std * math.sqrt(0.2 / count)
    np.testing.assert_array_equal(layer.bias[...], np.zeros(c_out))
    assert layer.weight.dtype == jnp.float32
    again = getattr(L, name)(*args, **kwargs, rngs=nnx.Rngs(4))
    other = getattr(L, name)(*args, **kwargs, rngs=nnx.Rngs(5))
    np.testing.assert_array_equal(again.weight[...], layer.weight[...])
    assert not np.array_equal(other.weight[...], layer.weight[...])


def test_custom_initializers():
    layer = L.ConvTranspose2d(
        4, 6, 3, groups=2, rngs=nnx.Rngs(0), kernel_init=nnx.initializers.ones,
        bias_init=nnx.initializers.constant(0.5),
    )
    np.testing.assert_array_equal(layer.weight[...], np.ones((6, 3, 3, 2)))
    np.testing.assert_array_equal(layer.bias[...], np.full(6, 0.5))


# ----------------------------------------------------------------------------------------------
# dtypes


def test_dtypes():
    x32 = np.random.default_rng(5).standard_normal((2, 6, 6, 4)).astype(np.float32)
    base = L.Conv2d(4, 8, 3, **FAST, rngs=nnx.Rngs(0))
    # float16 input, float32 parameters: MLX's promotion computes in float32
    assert base(x32.astype(np.float16)).dtype == jnp.float32
    # compute dtype
    half = L.Conv2d(4, 8, 3, dtype=jnp.float16, **FAST, rngs=nnx.Rngs(0))
    out = half(x32)
    assert out.dtype == jnp.float16
    assert_close(out, base(x32), jnp.float16)
    # storage dtype
    bf = L.ConvTranspose2d(4, 8, 3, param_dtype=jnp.bfloat16, **FAST, rngs=nnx.Rngs(0))
    assert bf.weight.dtype == jnp.bfloat16 and bf.bias.dtype == jnp.bfloat16
    assert bf(x32).dtype == jnp.float32
    assert bf(x32.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    # precision is passed through
    hi = L.Conv2d(4, 8, 3, precision=jax.lax.Precision.HIGHEST, **FAST,
                  rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(
        hi(x32), convnn.conv2d(x32, hi.weight[...], precision=jax.lax.Precision.HIGHEST)
        + hi.bias[...].reshape(1, 1, 1, 8),
    )


# ----------------------------------------------------------------------------------------------
# repr: MLX generates the expected strings

REPR_CASES = [
    ("Conv1d", (4, 8, 3), dict(stride=2)),
    ("Conv1d", (4, 8, 3, 2, 1, 2, 2, False), {}),
    ("Conv2d", (4, 8, 3), dict(stride=2, padding=1)),
    ("Conv2d", (4, 8, (3, 1)), dict(stride=(2, 1), padding=1, dilation=(2, 1), groups=2,
                                   bias=False)),
    ("Conv3d", (4, 8, 3), {}),
    ("Conv3d", (4, 8, (1, 2, 3)), dict(stride=2, padding=(0, 1, 0), dilation=2, bias=False)),
    ("ConvTranspose1d", (4, 8, 3), dict(stride=2, padding=1, output_padding=1)),
    ("ConvTranspose2d", (4, 8, 3), dict(stride=2, output_padding=1)),
    ("ConvTranspose3d", (4, 8, 2), dict(stride=2, bias=False)),
]


@pytest.mark.parametrize("name, args, kwargs", REPR_CASES, ids=[c[0] for c in REPR_CASES])
def test_repr_matches_mlx(name, args, kwargs, mnn):
    ours = getattr(L, name)(*args, **kwargs, **FAST, rngs=nnx.Rngs(0))
    assert repr(ours) == repr(getattr(mnn, name)(*args, **kwargs))


def test_repr_extensions(mnn):
    # groups where MLX has none is shown (only) when it is not 1, before bias
    mlx3 = repr(mnn.Conv3d(4, 8, 3))
    assert repr(L.Conv3d(4, 8, 3, groups=2, **FAST, rngs=nnx.Rngs(0))) == mlx3.replace(
        ", bias=", ", groups=2, bias="
    )
    mlxt = repr(mnn.ConvTranspose2d(4, 8, 3, stride=2))
    assert repr(L.ConvTranspose2d(4, 8, 3, stride=2, groups=4, **FAST, rngs=nnx.Rngs(0))) == (
        mlxt.replace(", bias=", ", groups=4, bias=")
    )
    mlx2 = repr(mnn.Conv2d(4, 8, 3, padding=1))
    assert repr(L.Conv2d(4, 8, 3, padding=1, padding_mode="reflect", **FAST,
                       rngs=nnx.Rngs(0))) == (
        mlx2[:-1] + ", padding_mode='reflect')"
    )
    # Flax's own printing still works on the layers and on models containing them
    model = nnx.Sequential(L.Conv2d(1, 2, 3, **FAST, rngs=nnx.Rngs(0)), L.MaxPool2d(2))
    text = str(model)
    assert "Conv2d" in text and "weight=Param" in text
    assert "weight=Param" in str(model.layers[0])


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda r: L.Conv2d(0, 8, 3, rngs=r), ValueError, "in_channels"),
        (lambda r: L.Conv2d(4, -1, 3, rngs=r), ValueError, "out_channels"),
        (lambda r: L.Conv2d(4.0, 8, 3, rngs=r), TypeError, "in_channels"),
        (lambda r: L.Conv2d(4, 8, 3, groups=3, rngs=r), ValueError, "groups"),
        (lambda r: L.Conv2d(4, 6, 3, groups=4, rngs=r), ValueError, "groups"),
        (lambda r: L.ConvTranspose3d(4, 8, 3, groups=0, rngs=r), ValueError, "groups"),
        (lambda r: L.Conv2d(4, 8, 0, rngs=r), ValueError, "kernel_size"),
        (lambda r: L.Conv2d(4, 8, (3, 3, 3), rngs=r), ValueError, "kernel_size"),
        (lambda r: L.Conv1d(4, 8, 3, stride=0, rngs=r), ValueError, "stride"),
        (lambda r: L.Conv1d(4, 8, 3, dilation=0, rngs=r), ValueError, "dilation"),
        (lambda r: L.Conv2d(4, 8, 3, padding="full", rngs=r), ValueError, "padding"),
        (lambda r: L.Conv2d(4, 8, 3, padding=((1, 1), (1, 1), (1, 1)), rngs=r), ValueError,
         "padding"),
        (lambda r: L.Conv2d(4, 8, 3, padding_mode="zero", rngs=r), ValueError, "padding_mode"),
        (lambda r: L.ConvTranspose2d(4, 8, 3, padding_mode="reflect", rngs=r), ValueError,
         "padding_mode"),
        (lambda r: L.ConvTranspose2d(4, 8, 3, padding=-1, rngs=r), ValueError, "padding"),
        (lambda r: L.ConvTranspose2d(4, 8, 3, padding="same", rngs=r), ValueError, "padding"),
        (lambda r: L.ConvTranspose2d(4, 8, 3, stride=2, output_padding=2, rngs=r), ValueError,
         "output_padding"),
        (lambda r: L.Conv2d(4, 8, 3, bias=1, rngs=r), TypeError, "bias"),
        (lambda r: L.Conv2d(4, 8, 3, rngs=0), TypeError, "rngs"),
        (lambda r: L.Conv2d(4, 8, 3, dtype=jnp.int32, rngs=r), TypeError, "dtype"),
        (lambda r: L.Conv2d(4, 8, 3, param_dtype=jnp.complex64, rngs=r), TypeError, "param_dtype"),
        (lambda r: L.Conv2d(4, 8, 3, kernel_init="uniform", rngs=r), TypeError, "kernel_init"),
        (lambda r: L.Conv2d(4, 8, 3, **FAST, rngs=r)(np.zeros((1, 5, 5, 3), np.float32)),
         ValueError, "channels"),
        (lambda r: L.Conv2d(4, 8, 3, padding=1, padding_mode="reflect", **FAST, rngs=r)(
            np.zeros((5, 5), np.float32)), ValueError, "Conv2d"),
        (lambda r: L.Conv2d(4, 8, 3, **FAST, rngs=r)(np.zeros((1, 5, 5, 4), np.int32)),
         TypeError, "floating"),
    ],
)
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make(nnx.Rngs(0))


# ----------------------------------------------------------------------------------------------
# Flax NNX integration


class SmallNet(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = L.Conv2d(1, 8, 3, padding=1, **FAST, rngs=rngs)
        self.pool = L.MaxPool2d(2)
        self.conv2 = L.Conv2d(8, 8, 3, padding=1, groups=2, padding_mode="reflect", **FAST,
                             rngs=rngs)
        self.norm = L.GroupNorm(2, 8)
        self.avg = L.AvgPool2d(2, ceil_mode=True)
        self.head = nnx.Linear(8, 2, kernel_init=lambda k, s, d: np_init(k, s[::-1], d).T,
                               rngs=rngs)

    def __call__(self, x):
        x = self.pool(nnx.relu(self.conv1(x)))
        x = self.avg(nnx.relu(self.norm(self.conv2(x))))
        return self.head(jnp.mean(x, axis=(1, 2)))


def _bars(n, seed):
    """Noisy 8x8 images with a vertical (label 0) or horizontal (label 1) bar."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, n)
    pos = rng.integers(1, 7, n)
    for i in range(n):
        if y[i]:
            x[i, pos[i], :, 0] += 1
        else:
            x[i, :, pos[i], 0] += 1
    return jnp.asarray(x), jnp.asarray(y, jnp.int32)


def test_training_with_optax_reduces_loss():
    model = SmallNet(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x, y = _bars(64, 0)

    def loss_fn(m, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def step(m, opt, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)
        optimizer_update(opt, m, grads)
        return loss

    # optax mixes Python floats with its int32 step count: it needs standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        losses = [float(step(model, optimizer, x, y)) for _ in range(40)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    x_test, y_test = _bars(64, 1)
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1).astype(jnp.int32) == y_test))
    assert accuracy > 0.8


def test_split_merge_round_trip():
    model = SmallNet(nnx.Rngs(1))
    x, _ = _bars(4, 2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    clone = nnx.merge(graphdef, params, rest)
    np.testing.assert_array_equal(clone(x), model(x))
    assert repr(clone.conv2) == repr(model.conv2)
    # new parameter values flow through merge
    zeros = jax.tree.map(jnp.zeros_like, params)
    zeroed = nnx.merge(graphdef, zeros, rest)
    np.testing.assert_array_equal(zeroed.conv1(x), np.zeros((4, 8, 8, 8), np.float32))


def test_vmap_ensemble_and_inputs():
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return L.Conv2d(3, 4, 3, padding=1, rngs=rngs)

    ensemble = make(nnx.Rngs(0))
    assert ensemble.weight.shape == (3, 4, 3, 3, 3)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 5, 5, 3)).astype(np.float32))

    @nnx.vmap(in_axes=(0, None))
    def forward(member, v):
        return member(v)

    ys = forward(ensemble, x)
    assert ys.shape == (3, 2, 5, 5, 4)
    for i in range(3):
        expected = convnn.conv2d(x, ensemble.weight[i], padding=1)
        assert_close(ys[i], expected + ensemble.bias[i].reshape(1, 1, 1, 4), np.float32)
    assert not np.allclose(ensemble.weight[0], ensemble.weight[1])

    # vmap over examples: unbatched calls equal one batched call
    single = L.ConvTranspose2d(3, 2, 3, stride=2, **FAST, rngs=nnx.Rngs(1))
    per_example = nnx.vmap(lambda m, v: m(v), in_axes=(None, 0))(single, x)
    assert_close(per_example, single(x), np.float32)


def test_sharded_parameters():
    devices = jax.devices()
    assert len(devices) >= 2
    mesh = Mesh(np.array(devices[:2]), ("model",))
    conv = L.Conv2d(4, 8, 3, padding=1, **FAST, rngs=nnx.Rngs(2))
    norm = L.GroupNorm(4, 8)
    x = jnp.asarray(np.random.default_rng(7).standard_normal((4, 6, 6, 4)).astype(np.float32))
    expected = norm(conv(x))

    def put(a):  # shard every parameter along its first (output-channel) axis
        return jax.device_put(a, NamedSharding(mesh, P("model")))

    for layer in (conv, norm):
        nnx.update(layer, jax.tree.map(put, nnx.state(layer, nnx.Param)))
    assert conv.weight[...].sharding.spec == P("model")
    assert len(conv.weight[...].addressable_shards) == 2
    assert conv.weight[...].addressable_shards[0].data.shape == (4, 3, 3, 4)
    xs = jax.device_put(x, NamedSharding(mesh, P("model")))  # and the batch
    out = nnx.jit(lambda c, g, v: g(c(v)))(conv, norm, xs)
    assert_close(out, expected, np.float32)
