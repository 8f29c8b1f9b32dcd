"""The convolution plan (convnn._plan) and the dispatch: one test per audit finding.

Each finding of the audit (issue 19) has a test here that fails on the code before the plan:
the silent wrong result of ``output_padding=None``, history-dependent validation, unbounded
integers and sizes, strategy-dependent validation, and the edges (empty axes, initializers,
``param_dtype=None``, array-likes, layer names in errors, layout hints). The process aborts are
in ``test_xla_safety.py`` (child processes).
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tolerances import assert_close

import convnn
import convnn.layers as L
from convnn import _args, _dispatch, _plan
from convnn._reference import conv_transpose_ref

F32 = jnp.float32


def ones(*shape, dtype=F32):
    return jnp.ones(shape, dtype)


def rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F32)


# ---------------------------------------------------------------------------------------------
# Finding 2: whether a call is transposed comes from the function called
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2])
def test_output_padding_none_still_transposes(n):
    x, w = rand((1, *(5,) * n, 2)), rand((2, *(3,) * n, 2), 1)
    fn = getattr(convnn, f"conv_transpose{n}d")
    out = fn(x, w, stride=2, output_padding=None)
    assert out.shape == (1, *(11,) * n, 2)
    want = conv_transpose_ref(np.asarray(x), np.asarray(w), stride=(2,) * n, padding=(0,) * n,
                              dilation=(1,) * n, output_padding=(0,) * n, groups=1)
    assert_close(out, want, F32)


def test_plan_marks_transposed_by_function():
    p = _plan.plan("conv_transpose1d", (1, 5, 2), F32, (2, 3, 2), F32, stride=2,
                   output_padding=None)
    assert p.transposed and p.out_shape == (1, 11, 2)
    assert not _plan.plan("conv1d", (1, 5, 2), F32, (2, 3, 2), F32).transposed


# ---------------------------------------------------------------------------------------------
# Finding 3: the verdict does not depend on earlier calls
# ---------------------------------------------------------------------------------------------

NOT_INTS = [
    ("conv2d", dict(stride=(True, 1)), "stride"),
    ("conv2d", dict(stride=(1.0, 1)), "stride"),
    ("conv2d", dict(stride=(np.bool_(True), 1)), "stride"),
    ("conv2d", dict(padding=(True, False)), "padding"),
    ("conv2d", dict(padding=(1.0, 0)), "padding"),
    ("conv2d", dict(dilation=(1, True)), "dilation"),
    ("conv_transpose2d", dict(stride=2, output_padding=True), "output_padding"),
    ("conv_transpose2d", dict(stride=2, output_padding=1.0), "output_padding"),
]
VALID_TWIN = {"stride": (1, 1), "padding": (1, 0), "dilation": (1, 1), "output_padding": 1}


@pytest.mark.parametrize("fn, kwargs, name", NOT_INTS, ids=[str(c[1]) for c in NOT_INTS])
def test_same_verdict_after_a_valid_twin_call(fn, kwargs, name):
    x, w = ones(1, 5, 5, 2), ones(3, 3, 3, 2)
    twin = dict(kwargs, **{name: VALID_TWIN[name]})
    getattr(convnn, fn)(x, w, **twin)  # the valid call that hashes like the invalid one
    getattr(convnn, fn)(x, w, **twin)
    with pytest.raises(TypeError, match=name):
        getattr(convnn, fn)(x, w, **kwargs)
    with pytest.raises(TypeError, match=name):  # and again, after the failed call
        getattr(convnn, fn)(x, w, **kwargs)


def test_strict_keys_differ_for_equal_hashing_arguments():
    keys = {_plan._strict(v) for v in (1, 1.0, True, np.int64(1), np.bool_(True))}
    assert len(keys) == 5
    assert _plan._strict((1, True)) != _plan._strict((1, 1))
    for v in ((1, 2), [1, 2], ((0, 1), (2, 3)), np.asarray([1, 2]), "same", None, 3):
        back = _plan._unstrict(_plan._strict(v))
        assert type(back) is type(v) and np.array_equal(np.asarray(back), np.asarray(v))


@pytest.mark.subprocess
def test_same_verdict_in_a_fresh_process_and_after_other_calls():
    code = textwrap.dedent("""
        import jax.numpy as jnp, convnn
        x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 3, 2))
        def verdict():
            try:
                convnn.conv2d(x, w, stride=(True, 1))
            except TypeError as e:
                return "TypeError"
            return "ok"
        first = verdict()
        convnn.conv2d(x, w, stride=(1, 1))
        print(first, verdict())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TypeError", "TypeError"]


def test_clear_caches_empties_the_eager_cache():
    x, w = ones(1, 5, 5, 2), ones(3, 3, 3, 2)
    convnn.conv2d(x, w, padding=1)
    assert _dispatch.EAGER._cache_size() > 0
    _dispatch.clear_caches()
    assert _dispatch.EAGER._cache_size() == 0 and not _plan._PLANS


# ---------------------------------------------------------------------------------------------
# Finding 4: integers of any magnitude, and sizes, are bounded before XLA
# ---------------------------------------------------------------------------------------------

HUGE = [2**31, 2**63, 2**64 + 3, -(2**63)]


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("fn, name", [
    ("conv_transpose2d", "stride"), ("conv_transpose2d", "dilation"),
    ("conv_transpose2d", "padding"), ("conv2d", "stride"), ("conv2d", "padding"),
    ("conv2d", "dilation"), ("conv2d", "groups"), ("conv_general", "input_dilation"),
])
def test_huge_or_negative_integers_name_the_argument(fn, name, value):
    x, w = ones(1, 5, 5, 2), ones(2, 3, 3, 2)
    with pytest.raises(ValueError, match=name):
        getattr(convnn, fn)(x, w, **{name: value})


def test_output_size_is_bounded():
    x, w = ones(1, 5, 5, 2), ones(2, 3, 3, 2)
    with pytest.raises(ValueError, match=r"output would have shape .* above the limit"):
        convnn.conv_transpose2d(x, w, stride=2**30)
    with pytest.raises(ValueError, match=r"above the limit"):
        convnn.conv2d(x, w, padding=2**30)
    assert _args.MAX_ELEMENTS == 2**34


def test_preferred_element_type_bogus_names_the_argument():
    with pytest.raises(TypeError, match="preferred_element_type"):
        convnn.conv2d(ones(1, 5, 5, 2), ones(2, 3, 3, 2), preferred_element_type="bogus")


# ---------------------------------------------------------------------------------------------
# Finding 5: the strategy does not change what is accepted
# ---------------------------------------------------------------------------------------------

STRATEGIES = ["xla", "decomposed", "im2col", "mixed", "auto"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("groups", [1, 2])
def test_invalid_precision_refused_by_every_strategy(strategy, groups):
    x, w = ones(1, 5, 5, 2), ones(2, 3, 3, 2 // groups)
    with convnn.lowering(strategy):
        with pytest.raises(ValueError, match="precision"):
            convnn.conv2d(x, w, groups=groups, precision="bogus")
        out = convnn.conv2d(x, w, groups=groups, precision="highest")
    assert out.shape == (1, 3, 3, 2)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("groups", [1, 2])
def test_narrower_preferred_element_type_refused_alike(strategy, groups):
    x, w = ones(1, 5, 5, 2), ones(2, 3, 3, 2 // groups)
    with convnn.lowering(strategy):
        with pytest.raises(ValueError, match="preferred_element_type=float16 is narrower"):
            convnn.conv2d(x, w, groups=groups, preferred_element_type=jnp.float16)
        out = convnn.conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), groups=groups,
                            preferred_element_type=F32)
    assert out.dtype == F32


# ---------------------------------------------------------------------------------------------
# Finding 6: other edges
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 0, 2), (0, 2)])
def test_transposed_convolution_refuses_an_empty_spatial_axis(shape):
    with pytest.raises(ValueError, match="empty spatial axis"):
        convnn.conv_transpose1d(ones(*shape), ones(2, 3, 2), stride=2)


def test_layer_checks_what_kernel_init_returns():
    def int_init(key, shape, dtype):
        return jnp.zeros(shape, jnp.int32)

    def wrong_shape(key, shape, dtype):
        return jnp.zeros((3,), dtype)

    with pytest.raises(TypeError, match=r"\[Conv2d\].*kernel_init"):
        L.Conv2d(2, 3, 3, kernel_init=int_init, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[Conv2d\].*kernel_init must return .* shape"):
        L.Conv2d(2, 3, 3, kernel_init=wrong_shape, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[ConvTranspose1d\].*bias_init"):
        L.ConvTranspose1d(2, 4, 3, bias_init=wrong_shape, rngs=nnx.Rngs(0))


def test_layer_refuses_param_dtype_none():
    with pytest.raises(TypeError, match=r"\[Conv1d\] param_dtype"):
        L.Conv1d(2, 3, 3, param_dtype=None, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("layer, x", [
    (lambda: L.Conv2d(2, 3, 3, rngs=nnx.Rngs(0)), ones(1, 5, 5, 4)),
    (lambda: L.Conv2d(2, 3, 3, rngs=nnx.Rngs(0)), ones(1, 2, 2, 2)),
    (lambda: L.ConvTranspose3d(2, 3, 3, rngs=nnx.Rngs(0)), ones(1, 2, 2, 2, 3)),
])
def test_layer_errors_name_the_layer(layer, x):
    module = layer()
    with pytest.raises(ValueError, match=rf"^\[{type(module).__name__}\]"):
        module(x)
    with pytest.raises(ValueError, match=rf"^\[{type(module).__name__}\]"):
        jax.jit(lambda a: module(a))(x)


def test_torch_tensors_are_accepted(torch):
    x = torch.ones(1, 5, 5, 2)
    w = torch.ones(3, 3, 3, 2)
    out = convnn.conv2d(x, w)
    np.testing.assert_allclose(np.asarray(out), np.full((1, 3, 3, 3), 18.0))
    layer = L.Conv2d(2, 3, 3, rngs=nnx.Rngs(0))
    assert layer(x).shape == (1, 3, 3, 3)


def test_array_likes_are_accepted_or_refused_by_name():
    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.ones((1, 5, 5, 2), np.float32)

    assert convnn.conv2d(ArrayLike(), np.ones((3, 3, 3, 2), np.float32)).shape == (1, 3, 3, 3)
    with pytest.raises(TypeError, match=r"\[conv2d\] weight must be an array"):
        convnn.conv2d(ones(1, 5, 5, 2), object())
    with pytest.raises(TypeError, match=r"\[conv2d\] input must be an array"):
        convnn.conv2d({"a": 1}, ones(3, 3, 3, 2))


# ---------------------------------------------------------------------------------------------
# Layout hints (issue 22): the usual porting mistakes are named
# ---------------------------------------------------------------------------------------------


def test_hwio_weight_gets_a_hint():
    with pytest.raises(ValueError, match=r"HWIO.*jnp.moveaxis\(weight, -1, 0\)"):
        convnn.conv2d(ones(1, 5, 5, 2), ones(3, 3, 2, 4))  # (KH, KW, C_in, C_out)


def test_channels_first_input_gets_a_hint():
    with pytest.raises(ValueError, match=r"channels-first.*jnp.moveaxis\(input, 1, -1\)"):
        convnn.conv2d(ones(1, 2, 7, 6), ones(4, 3, 3, 2))
    with pytest.raises(ValueError, match=r"channels-first.*jnp.moveaxis\(input, 0, -1\)"):
        convnn.conv1d(ones(2, 9), ones(4, 3, 2))


def test_pytorch_weight_hint_is_kept():
    with pytest.raises(ValueError, match=r"PyTorch's \(C_out, C_in // groups, \*kernel\)"):
        convnn.conv2d(ones(1, 5, 5, 2), ones(4, 2, 3, 3))


# ---------------------------------------------------------------------------------------------
# The plan itself
# ---------------------------------------------------------------------------------------------


def test_plan_is_frozen_hashable_and_canonical():
    p = _plan.plan("conv2d", (2, 7, 7, 4), F32, (8, 3, 3, 2), F32, stride=2, padding="same",
                   groups=2)
    hash(p)
    with pytest.raises(AttributeError):
        p.n = 3
    assert p.lows == (1, 1) and p.highs == (1, 1) and p.out_shape == (2, 4, 4, 8)
    assert p.spec.padding == ((1, 1), (1, 1)) and p.crop is None and p.strategy is not None
    neg = _plan.plan("conv1d", (1, 9, 1), F32, (1, 3, 1), F32, padding=((-2,), (1,)))
    assert neg.crop == ((2,), (9,)) and neg.spec.padding == ((0, 1),)
    assert neg.out_shape == (1, 6, 1)


def test_plan_names_the_layer():
    with pytest.raises(ValueError, match=r"^\[Conv2d\] stride"):
        _plan.plan("conv2d", (1, 5, 5, 2), F32, (3, 3, 3, 2), F32, stride=0, name="Conv2d")
