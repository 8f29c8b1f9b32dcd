"""Tier 3: contracts of the functional API: errors, shapes, jit, vmap, placement, jaxprs."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from tolerances import assert_close

import convnn
from convnn._reference import conv_general_ref, conv_transpose_ref

pytestmark = pytest.mark.floor  # runs again at the version floor in CI


F = jnp.float32


def ones(*shape, dtype=F):
    return jnp.ones(shape, dtype)


# (function, input shape, weight shape, kwargs, exception, message pattern)
ERRORS = [
    # ranks
    (
        "conv2d",
        (8, 3),
        (4, 3, 3, 3),
        {},
        ValueError,
        r"\[conv2d\] input must have shape.*got input shape \(8, 3\)",
    ),
    (
        "conv1d",
        (1, 8, 8, 3),
        (4, 3, 3),
        {},
        ValueError,
        r"\[conv1d\] input must have shape.*\(1, 8, 8, 3\)",
    ),
    (
        "conv1d",
        (1, 8, 3),
        (4, 3, 3, 3),
        {},
        ValueError,
        r"\[conv1d\] weight must have 3 dimensions",
    ),
    ("conv3d", (1, 4, 4, 4, 2), (4, 3, 3, 2), {}, ValueError, r"\[conv3d\] weight must have 5"),
    ("conv_general", (1, 4, 2), (4, 2), {}, ValueError, r"\[conv_general\] weight must have shape"),
    (
        "conv_transpose2d",
        (1, 4, 4, 2),
        (4, 3, 2),
        {},
        ValueError,
        r"\[conv_transpose2d\] weight must have 4",
    ),
    # channels
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 2),
        {},
        ValueError,
        r"input has 3 channels.*got input shape \(1, 8, 8, 3\) and weight shape \(4, 3, 3, 2\)",
    ),
    ("conv2d", (1, 8, 8, 3), (4, 3, 5, 5), {}, ValueError, r"looks like PyTorch's"),
    ("conv1d", (1, 8, 6), (4, 3, 2), {"groups": 2}, ValueError, r"looks like PyTorch's"),
    ("conv2d", (1, 8, 8, 0), (4, 3, 3, 0), {}, ValueError, r"channel counts must be positive"),
    ("conv2d", (1, 8, 8, 3), (0, 3, 3, 3), {}, ValueError, r"channel counts must be positive"),
    ("conv2d", (1, 8, 8, 3), (4, 0, 3, 3), {}, ValueError, r"zero-size axis"),
    # groups
    (
        "conv2d",
        (1, 8, 8, 4),
        (4, 3, 3, 4),
        {"groups": 0},
        ValueError,
        r"\[conv2d\] groups must be >= 1, got 0",
    ),
    ("conv2d", (1, 8, 8, 4), (4, 3, 3, 4), {"groups": -2}, ValueError, r"groups must be >= 1"),
    (
        "conv2d",
        (1, 8, 8, 6),
        (6, 3, 3, 2),
        {"groups": 4},
        ValueError,
        r"groups=4 must divide the input channels 6",
    ),
    (
        "conv2d",
        (1, 8, 8, 4),
        (6, 3, 3, 1),
        {"groups": 4},
        ValueError,
        r"groups=4 must divide the output channels 6",
    ),
    ("conv2d", (1, 8, 8, 4), (4, 3, 3, 4), {"groups": 2.0}, TypeError, r"groups must be an int"),
    ("conv2d", (1, 8, 8, 4), (4, 3, 3, 4), {"groups": True}, TypeError, r"groups must be an int"),
    # stride, dilation
    ("conv2d", (1, 8, 8, 3), (4, 3, 3, 3), {"stride": 0}, ValueError, r"stride must be >= 1"),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"stride": (1, 0)},
        ValueError,
        r"stride must be >= 1 on every axis",
    ),
    ("conv2d", (1, 8, 8, 3), (4, 3, 3, 3), {"dilation": 0}, ValueError, r"dilation must be >= 1"),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"stride": (1, 2, 3)},
        ValueError,
        r"stride must be an int or a sequence of 2 ints.*length 3",
    ),
    ("conv2d", (1, 8, 8, 3), (4, 3, 3, 3), {"stride": 1.5}, TypeError, r"stride must be an int"),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"stride": (1, 1.0)},
        TypeError,
        r"stride must contain ints",
    ),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"dilation": "2"},
        TypeError,
        r"dilation must be an int",
    ),
    (
        "conv_general",
        (1, 8, 3),
        (4, 3, 3),
        {"input_dilation": 0},
        ValueError,
        r"input_dilation must be >= 1",
    ),
    (
        "conv_general",
        (1, 8, 3),
        (4, 3, 3),
        {"kernel_dilation": (1, 1)},
        ValueError,
        r"kernel_dilation must be an int or a sequence of 1",
    ),
    # padding
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"padding": (1, 2, 3)},
        ValueError,
        r"padding must have one int per spatial axis",
    ),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"padding": "full"},
        ValueError,
        r"padding must be 'same', 'valid'",
    ),
    ("conv2d", (1, 8, 8, 3), (4, 3, 3, 3), {"padding": 1.0}, TypeError, r"padding must be an int"),
    (
        "conv_general",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"padding": ([1, 1], [1])},
        ValueError,
        r"lows of length 2 and highs of length 1",
    ),
    (
        "conv_general",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"padding": ([1], [1])},
        ValueError,
        r"must give 2 values each",
    ),
    (
        "conv_general",
        (1, 4, 4, 4, 3),
        (4, 3, 3, 3, 3),
        {"padding": [(1, 1), (1, 1), (1, 1)]},
        ValueError,
        r"lax-style",
    ),
    (
        "conv_general",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"padding": ([1, 1.5], [1, 1])},
        TypeError,
        r"padding must contain ints",
    ),
    (
        "conv_transpose2d",
        (1, 4, 4, 3),
        (4, 3, 3, 3),
        {"padding": -1},
        ValueError,
        r"padding must be non-negative for transposed",
    ),
    (
        "conv_transpose2d",
        (1, 4, 4, 3),
        (4, 3, 3, 3),
        {"padding": "same"},
        ValueError,
        r"padding='same' is not supported",
    ),
    (
        "conv_transpose2d",
        (1, 4, 4, 3),
        (4, 3, 3, 3),
        {"stride": 2, "output_padding": 2},
        ValueError,
        r"output_padding must be smaller than stride or dilation",
    ),
    (
        "conv_transpose2d",
        (1, 4, 4, 3),
        (4, 3, 3, 3),
        {"output_padding": 1},
        ValueError,
        r"output_padding must be smaller",
    ),
    (
        "conv_transpose1d",
        (1, 4, 3),
        (4, 3, 3),
        {"stride": 2, "output_padding": -1},
        ValueError,
        r"output_padding must be >= 0",
    ),
    # empty outputs
    (
        "conv2d",
        (1, 2, 2, 3),
        (4, 3, 3, 3),
        {},
        ValueError,
        r"\[conv2d\] the \(dilated\) kernel of size \(3, 3\) is larger than the padded input "
        r"of size \(2, 2\)",
    ),
    (
        "conv1d",
        (1, 5, 3),
        (4, 3, 3),
        {"dilation": 3},
        ValueError,
        r"kernel of size \(7,\) is larger",
    ),
    ("conv1d", (1, 5, 3), (4, 3, 3), {"padding": -2}, ValueError, r"larger than the padded input"),
    ("conv1d", (1, 0, 3), (4, 1, 3), {}, ValueError, r"larger than the padded input"),
    (
        "conv_transpose1d",
        (1, 1, 3),
        (4, 1, 3),
        {"padding": 1},
        ValueError,
        r"output would have spatial size \(-1,\)",
    ),
    # dtypes
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"_x_dtype": jnp.int32},
        TypeError,
        r"input must have a floating dtype.*int32",
    ),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"_w_dtype": jnp.bool_},
        TypeError,
        r"weight must have a floating dtype.*bool",
    ),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"_w_dtype": jnp.complex64},
        TypeError,
        r"weight must have a floating dtype.*complex64",
    ),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"preferred_element_type": jnp.int32},
        TypeError,
        r"preferred_element_type must have a floating",
    ),
    # flip, stream
    ("conv_general", (1, 8, 3), (4, 3, 3), {"flip": 1}, TypeError, r"flip must be a bool"),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"stream": "not-a-platform"},
        ValueError,
        r"stream='not-a-platform' names no available platform",
    ),
    (
        "conv2d",
        (1, 8, 8, 3),
        (4, 3, 3, 3),
        {"stream": 3},
        TypeError,
        r"stream must be None, a jax.Device",
    ),
]


@pytest.mark.parametrize(
    "fn, xs, ws, kwargs, exc, pattern", ERRORS, ids=[f"{e[0]}-{e[5][:40]}" for e in ERRORS]
)
def test_bad_input_raises(fn, xs, ws, kwargs, exc, pattern):
    kwargs = dict(kwargs)
    x = ones(*xs, dtype=kwargs.pop("_x_dtype", F))
    w = ones(*ws, dtype=kwargs.pop("_w_dtype", F))
    with pytest.raises(exc, match=pattern):
        getattr(convnn, fn)(x, w, **kwargs)


def test_errors_are_raised_before_tracing_under_jit():
    f = jax.jit(lambda x, w: convnn.conv2d(x, w, groups=4))
    with pytest.raises(ValueError, match=r"\[conv2d\] groups=4 must divide"):
        f(ones(1, 8, 8, 6), ones(6, 3, 3, 2))


def test_numpy_and_list_inputs_are_accepted():
    x = np.ones((1, 5, 2), np.float32)
    w = [[[1.0, 1.0]], [[2.0, 0.0]]]  # (2, 1, 2)
    out = convnn.conv1d(x, np.asarray(w, np.float32))
    assert out.shape == (1, 5, 2)
    np.testing.assert_array_equal(np.asarray(out)[0, 0], [2.0, 2.0])
    with pytest.raises(TypeError, match=r"input must have a floating dtype"):
        convnn.conv1d(np.ones((1, 5, 2), np.int64), np.asarray(w, np.float32))


SIGNATURE_CONV = (
    "(input, weight, /, stride=1, padding=0, dilation=1, groups=1, *, stream=None, "
    "precision=None, preferred_element_type=None, prologue=None)"
)
SIGNATURE_T = (
    "(input, weight, /, stride=1, padding=0, dilation=1, output_padding=0, groups=1, *, "
    "stream=None, precision=None, preferred_element_type=None, prologue=None)"
)
SIGNATURE_G = (
    "(input, weight, /, stride=1, padding=0, kernel_dilation=1, input_dilation=1, groups=1, "
    "flip=False, *, stream=None, precision=None, preferred_element_type=None, prologue=None)"
)


@pytest.mark.parametrize(
    "name, expected",
    [(f"conv{n}d", SIGNATURE_CONV) for n in (1, 2, 3)]
    + [(f"conv_transpose{n}d", SIGNATURE_T) for n in (1, 2, 3)]
    + [("conv_general", SIGNATURE_G)],
)
def test_signatures_match_mlx(name, expected):
    sig = inspect.signature(getattr(convnn, name))
    plain = sig.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    assert str(plain) == expected


@pytest.mark.parametrize("groups, strategy", [(1, "auto"), (1, "xla"), (2, "xla")])
def test_dense_and_grouped_conv2d_jit_to_exactly_one_convolution(groups, strategy):
    """Under the "xla" strategy (the CPU policy's choice for this small dense conv), a conv2d
    compiles to the same single convolution as the hand-written lax call, with no transpose."""
    x, w = ones(2, 8, 8, 4), ones(6, 3, 3, 4 // groups)
    with convnn.lowering(strategy, backend="cpu"):
        hlo = jax.jit(lambda a, b: convnn.conv2d(a, b, 1, 1, 1, groups)).lower(x, w).as_text()
    assert hlo.count("stablehlo.convolution") == 1
    assert "transpose" not in hlo
    plain = (
        jax.jit(
            lambda a, b: lax.conv_general_dilated(
                a,
                b,
                (1, 1),
                [(1, 1), (1, 1)],
                dimension_numbers=("NHWC", "OHWI", "NHWC"),
                feature_group_count=groups,
            )
        )
        .lower(x, w)
        .as_text()
    )

    def body(text):
        return [
            line.split("=", 1)[1] for line in text.splitlines() if "stablehlo.convolution" in line
        ]

    assert body(hlo) == body(plain)


def test_jit_matches_eager():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 7, 7, 4)))
    w = jnp.asarray(rng.standard_normal((6, 3, 3, 2)))
    eager = convnn.conv2d(x, w, 2, "same", 1, 2)
    jitted = jax.jit(lambda a, b: convnn.conv2d(a, b, 2, "same", 1, 2))(x, w)
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))


@pytest.mark.parametrize(
    "fn, xs, ws, kw",
    [
        ("conv1d", (6, 3), (2, 3, 3), {"padding": 1}),
        ("conv2d", (6, 5, 4), (2, 3, 3, 2), {"groups": 2, "stride": 2}),
        ("conv_transpose3d", (3, 3, 3, 2), (4, 2, 2, 2, 2), {"stride": 2}),
    ],
)
def test_vmap_over_a_leading_axis(fn, xs, ws, kw):
    rng = np.random.default_rng(1)
    xb = jnp.asarray(rng.standard_normal((3, 2, *xs)))
    w = jnp.asarray(rng.standard_normal(ws))
    f = getattr(convnn, fn)
    out = jax.vmap(lambda x: f(x, w, **kw))(xb)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(out[i]), np.asarray(f(xb[i], w, **kw)), rtol=1e-12)
    # vmap over unbatched inputs is the same as a batched call
    out_u = jax.vmap(lambda x: f(x, w, **kw))(xb[:, 0])
    np.testing.assert_allclose(np.asarray(out_u), np.asarray(f(xb[:, 0], w, **kw)), rtol=1e-12)


def test_unbatched_input_returns_unbatched_output():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((7, 7, 4)))
    w = jnp.asarray(rng.standard_normal((5, 3, 3, 4)))
    out = convnn.conv2d(x, w, padding=1)
    assert out.shape == (7, 7, 5)
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(convnn.conv2d(x[None], w, padding=1)[0])
    )


def test_stream_places_the_computation():
    devices = jax.devices("cpu")
    assert len(devices) >= 2, "conftest simulates two CPU devices"
    x, w = ones(1, 6, 6, 2), ones(3, 3, 3, 2)
    out = convnn.conv2d(x, w, stream=devices[1])
    assert out.devices() == {devices[1]}
    out = convnn.conv2d(x, w, stream="cpu")
    assert out.devices() == {devices[0]}
    np.testing.assert_array_equal(np.asarray(out), np.full((1, 4, 4, 3), 18.0))


def test_one_dimensional_functions_take_tuples():
    x, w = ones(1, 9, 2), ones(3, 3, 2)
    a = convnn.conv1d(x, w, stride=(2,), padding=(1,), dilation=(2,))
    b = convnn.conv1d(x, w, stride=2, padding=1, dilation=2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_numpy_integer_arguments_are_accepted():
    x, w = ones(1, 9, 2), ones(3, 3, 2)
    out = convnn.conv1d(x, w, stride=np.int64(2), padding=np.int32(1), groups=np.int64(1))
    assert out.shape == (1, 5, 3)


# (function, input shape, weight shape, kwargs): dense, depthwise, 1x1, strided 3-D,
# transposed grouped, input-dilated.
ZERO_BATCH = [
    ("conv1d", (0, 6, 4), (2, 3, 4), dict(stride=2, padding=1)),
    ("conv2d", (0, 6, 6, 4), (4, 3, 3, 1), dict(groups=4, padding=1)),
    ("conv2d", (0, 6, 6, 4), (2, 1, 1, 4), {}),
    ("conv3d", (0, 4, 4, 4, 2), (2, 2, 2, 2, 2), dict(stride=2)),
    ("conv_transpose2d", (0, 3, 3, 4), (4, 3, 3, 2), dict(stride=2, groups=2)),
    ("conv_general", (0, 5, 5, 2), (3, 2, 2, 2), dict(input_dilation=2, padding=1)),
]


@pytest.mark.parametrize("strategy", ["auto", "xla", "decomposed", "im2col", "mixed"])
@pytest.mark.parametrize("fn, xs, ws, kw", ZERO_BATCH, ids=[f"{c[0]}-{c[2]}" for c in ZERO_BATCH])
def test_zero_batch_is_allowed(fn, xs, ws, kw, strategy):
    """An empty batch gives an empty output, an empty input gradient and a zero weight gradient,
    whichever strategy runs it."""
    f = lambda a, b: getattr(convnn, fn)(a, b, **kw)
    with convnn.lowering(strategy):
        y, vjp = jax.vjp(jax.jit(f), ones(*xs), ones(*ws))
        dx, dw = vjp(jnp.ones(y.shape, y.dtype))
    assert y.shape[0] == 0 and dx.shape == xs and dw.shape == ws
    np.testing.assert_array_equal(np.asarray(dw), 0)


@pytest.mark.parametrize(
    "size, k, stride, dilation",
    [(7, 3, 1, 1), (7, 4, 2, 1), (8, 2, 3, 2), (5, 5, 2, 1), (1, 3, 2, 1)],
)
def test_same_padding_keeps_ceil_size_and_matches_lax(size, k, stride, dilation):
    rng = np.random.default_rng(size + k)
    x = jnp.asarray(rng.standard_normal((1, size, size, 2)))
    w = jnp.asarray(rng.standard_normal((3, k, k, 2)))
    out = convnn.conv2d(x, w, stride, "same", dilation)
    assert out.shape[1:3] == (-(-size // stride),) * 2
    lax_out = lax.conv_general_dilated(
        x,
        w,
        (stride,) * 2,
        "SAME",
        rhs_dilation=(dilation,) * 2,
        dimension_numbers=("NHWC", "OHWI", "NHWC"),
    )
    assert_close(out, lax_out, jnp.float64)
    valid = (
        convnn.conv2d(x, w, stride, "VALID", dilation) if size >= (k - 1) * dilation + 1 else None
    )
    if valid is not None:
        assert_close(valid, convnn.conv2d(x, w, stride, 0, dilation), jnp.float64)


def test_conv_general_padding_pair_means_lows_then_highs():
    """For 2-D, ((1, 1), (2, 2)) is lows (1, 1) and highs (2, 2), not lax's per-axis pairs."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, 6, 2))
    w = rng.standard_normal((3, 3, 3, 2))
    out = convnn.conv_general(jnp.asarray(x), jnp.asarray(w), padding=((1, 1), (2, 2)))
    assert out.shape == (1, 6, 7, 3)
    ref = conv_general_ref(
        x,
        w,
        stride=(1, 1),
        padding_lo=(1, 1),
        padding_hi=(2, 2),
        kernel_dilation=(1, 1),
        input_dilation=(1, 1),
        groups=1,
        flip=False,
    )
    assert_close(out, ref, jnp.float64)


def test_process_survives_3d_transposed_conv_with_large_padding():
    """Raw XLA on CPU aborts on some of these; convnn crops first and stays correct."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 4, 4, 4, 2))
    w = rng.standard_normal((3, 2, 2, 2, 2))
    out = convnn.conv_transpose3d(jnp.asarray(x), jnp.asarray(w), stride=2, padding=2, dilation=1)
    ref = conv_transpose_ref(
        x,
        w,
        stride=(2,) * 3,
        padding=(2,) * 3,
        dilation=(1,) * 3,
        output_padding=(0,) * 3,
        groups=1,
    )
    assert out.shape == ref.shape == (1, 4, 4, 4, 3)
    assert_close(out, ref, jnp.float64)


@pytest.mark.parametrize("prologue, error, match", [
    ("relu", TypeError, r"\[conv2d\] prologue must be None or a convnn.Prologue"),
    (convnn.Prologue(jnp.ones(3), jnp.zeros(3), "gelu"), ValueError,
     r"\[conv2d\] prologue.activation must be None or one of"),
    (convnn.Prologue(jnp.ones(2), jnp.zeros(3)), ValueError,
     r"\[conv2d\] prologue.scale must have shape \(C_in,\) = \(3,\).*got prologue.scale shape "
     r"\(2,\) and input shape \(1, 5, 5, 3\)"),
    (convnn.Prologue(jnp.ones(3), jnp.zeros((3, 1))), ValueError, r"prologue.shift must have"),
    (convnn.Prologue(jnp.ones(3, jnp.int32), jnp.zeros(3)), TypeError,
     r"\[conv2d\] prologue.scale must have a floating dtype"),
])
def test_bad_prologues_are_refused_by_name(prologue, error, match):
    def call(x, w):
        return convnn.conv2d(x, w, groups=3, prologue=prologue)

    for run in (call, jax.jit(call)):  # eager, and traced (the prologue's arrays closed over)
        with pytest.raises(error, match=match):
            run(ones(1, 5, 5, 3), ones(3, 3, 3, 1))
