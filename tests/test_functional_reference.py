"""Tier 1: the functional API against the float64 NumPy reference (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CORE, SUBSETS, in_fast_tier, pick
from helpers import call_api, random_operands, reference, reference_vjp
from jax.test_util import check_grads
from tolerances import assert_close

import convnn
from convnn._reference import conv_general_ref

pytestmark = pytest.mark.floor  # runs again at the version floor in CI


@pytest.mark.parametrize("case", CORE, ids=str)
def test_forward_float64(case):
    x, w = random_operands(case, 0)
    out = call_api(case, jnp.asarray(x), jnp.asarray(w))
    assert out.dtype == jnp.float64
    assert_close(out, reference(case, x, w), jnp.float64, what=str(case))


# The fast tier checks the VJP of every other case (every function, both halves of the table's
# features); the slow tier the rest. The forward pass of every case is in the fast tier.
@pytest.mark.parametrize("case", in_fast_tier(CORE))
def test_vjp_float64(case):
    x, w = random_operands(case, 1)
    out, vjp = jax.vjp(lambda a, b: call_api(case, a, b), jnp.asarray(x), jnp.asarray(w))
    g = np.random.default_rng(2).standard_normal(out.shape)
    dx, dw = vjp(jnp.asarray(g))
    rdx, rdw = reference_vjp(case, x, w, g)
    assert_close(dx, rdx, jnp.float64, what=f"dx {case}")
    assert_close(dw, rdw, jnp.float64, what=f"dw {case}")


LOW_DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]
# Every case in every dtype; the fast tier takes one dtype per case, in turn (CI runs both tiers).
LOW_PRECISION = [pytest.param(case, dtype, id=f"{case}-{dtype.__name__}",
                              marks=[pytest.mark.slow] * (i % 3 != j))
                 for i, case in enumerate(SUBSETS["every-4th"])
                 for j, dtype in enumerate(LOW_DTYPES)]


@pytest.mark.parametrize("case, dtype", LOW_PRECISION)
def test_forward_low_precision(case, dtype):
    x, w = random_operands(case, 3)
    xj, wj = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    out = call_api(case, xj, wj)
    assert out.dtype == jnp.dtype(dtype)
    # the reference sees exactly the rounded inputs
    expected = reference(case, np.asarray(xj, np.float64), np.asarray(wj, np.float64))
    assert_close(out, expected, dtype, what=str(case))


@pytest.mark.parametrize("case", SUBSETS["every-6th"], ids=str)
def test_vjp_float32(case):
    x, w = random_operands(case, 4, np.float32)
    out, vjp = jax.vjp(lambda a, b: call_api(case, a, b), jnp.asarray(x), jnp.asarray(w))
    g = np.random.default_rng(5).standard_normal(out.shape).astype(np.float32)
    dx, dw = vjp(jnp.asarray(g))
    assert dx.dtype == dw.dtype == jnp.float32
    rdx, rdw = reference_vjp(case, x, w, g)
    assert_close(dx, rdx, jnp.float32, what=f"dx {case}")
    assert_close(dw, rdw, jnp.float32, what=f"dw {case}")


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBSETS["every-9th"], ids=str)
def test_check_grads_second_order(case):
    x, w = random_operands(case, 6)
    check_grads(lambda a, b: call_api(case, a, b), (jnp.asarray(x), jnp.asarray(w)),
                order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "dx, dw, expected",
    [
        (jnp.float16, jnp.float32, jnp.float32),
        (jnp.float32, jnp.float16, jnp.float32),
        (jnp.bfloat16, jnp.float16, jnp.float32),
        (jnp.bfloat16, jnp.float32, jnp.float32),
        (jnp.float32, jnp.float64, jnp.float64),
    ],
)
def test_mixed_dtypes_promote_as_mlx(dx, dw, expected):
    case = pick("conv1d", "grouped", "unbatched")
    x, w = random_operands(case, 7)
    xj, wj = jnp.asarray(x, dx), jnp.asarray(w, dw)
    out = call_api(case, xj, wj)
    assert out.dtype == jnp.dtype(expected)
    ref = reference(case, np.asarray(xj, np.float64), np.asarray(wj, np.float64))
    assert_close(out, ref, expected, what=str(case))


def test_preferred_element_type_accumulates_bfloat16_in_float32():
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((8, 3, 3, 16)), jnp.bfloat16)
    out = convnn.conv2d(x, w, padding=1, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    ref = conv_general_ref(np.asarray(x, np.float64), np.asarray(w, np.float64), stride=(1, 1),
                           padding_lo=(1, 1), padding_hi=(1, 1), kernel_dilation=(1, 1),
                           input_dilation=(1, 1), groups=1, flip=False)
    assert_close(out, ref, jnp.float32)


@pytest.mark.parametrize(
    "size, padding",
    [(5, ([-1], [1])), (5, ([1], [-1])), (6, ([-2], [2])), (7, ([-1], [3])), (4, ([-3], [2]))],
)
@pytest.mark.parametrize("channels", [1, 2, 3, 5, 8, 13, 16])
def test_negative_low_positive_high_padding(size, padding, channels):
    """XLA on CPU gets [(-1, 1)]-style padding wrong; convnn crops by slicing first."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((2, size, channels))
    w = rng.standard_normal((channels, 3, channels))
    out = convnn.conv_general(jnp.asarray(x), jnp.asarray(w), padding=padding)
    ref = conv_general_ref(x, w, stride=(1,), padding_lo=tuple(padding[0]),
                           padding_hi=tuple(padding[1]), kernel_dilation=(1,),
                           input_dilation=(1,), groups=1, flip=False)
    assert_close(out, ref, jnp.float64)


def test_crop_that_removes_every_input_element_gives_zeros():
    # input dilation 3 on length 2 -> [a, 0, 0, b]; crop 1 low and 1 high -> [0, 0], pad 1 high.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 2)))
    w = jnp.ones((3, 2, 2))
    out = convnn.conv_general(x, w, padding=([-1], [0]), input_dilation=3)
    ref = conv_general_ref(np.asarray(x), np.asarray(w), stride=(1,), padding_lo=(-1,),
                           padding_hi=(0,), kernel_dilation=(1,), input_dilation=(3,), groups=1,
                           flip=False)
    assert_close(out, ref, jnp.float64)
    out = convnn.conv_general(x, w, padding=([-1], [-1]), input_dilation=3)
    ref = conv_general_ref(np.asarray(x), np.asarray(w), stride=(1,), padding_lo=(-1,),
                           padding_hi=(-1,), kernel_dilation=(1,), input_dilation=(3,), groups=1,
                           flip=False)
    assert_close(out, ref, jnp.float64)
    assert not np.any(np.asarray(out))


# The prologue act(x * scale + shift): the chain rule through the float64 reference, with
# shifts past zero (so that the zero padding differs from act(shift)) and negative scales.
_ACT = {None: (lambda v: v, lambda v: np.ones_like(v)),
        "relu": (lambda v: np.maximum(v, 0), lambda v: (v > 0) * 1.0),
        "relu6": (lambda v: np.clip(v, 0, 6), lambda v: ((v > 0) & (v < 6)) * 1.0),
        "silu": (lambda v: v / (1 + np.exp(-v)),
                 lambda v: (1 / (1 + np.exp(-v))) * (1 + v * (1 - 1 / (1 + np.exp(-v)))))}
PROLOGUE_CASES = [pytest.param(case, act, id=f"{case}-{act}")
                  for case, act in zip(SUBSETS["every-6th"], [*_ACT] * 100)]


@pytest.mark.parametrize("case, activation", PROLOGUE_CASES)
def test_prologue_is_the_convolution_of_the_transformed_input(case, activation):
    x, w = random_operands(case, 5)
    c = x.shape[-1]
    rng = np.random.default_rng(6)
    scale, shift = rng.uniform(-1.5, 2.0, c), rng.uniform(0.5, 2.0, c)
    f, slope = _ACT[activation]

    def api(a, s, b, v):
        return call_api(case, a, v, prologue=convnn.Prologue(s, b, activation))

    out, vjp = jax.vjp(api, *map(jnp.asarray, (x, scale, shift, w)))
    z = x * scale + shift
    assert_close(out, reference(case, f(z), w), jnp.float64, what=f"value {case}")
    g = rng.standard_normal(out.shape)
    da, rdw = reference_vjp(case, f(z), w, g)
    dz = da * slope(z)
    axes = tuple(range(x.ndim - 1))
    dx, ds, db, dw = vjp(jnp.asarray(g))
    for got, want, what in ((dx, dz * scale, "dx"), (ds, (dz * x).sum(axes), "dscale"),
                            (db, dz.sum(axes), "dshift"), (dw, rdw, "dw")):
        assert_close(got, want, jnp.float64, what=f"{what} {case}")
