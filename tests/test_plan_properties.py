"""Property tests of the plan: random valid calls against the float64 reference, random invalid
arguments refused by name, and the same verdict whatever ran before (and in a fresh process).

The fast tier runs a few examples of each property; the ``slow`` tests run many more.
"""

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tolerances import assert_close

import convnn
from convnn import _reference as ref

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=8, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def valid_calls(draw):
    """A valid call: (fn, x_shape, w_shape, kwargs, reference kwargs)."""
    kind = draw(st.sampled_from(["conv", "conv_transpose", "conv_general"]))
    n = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    spatial = draw(st.lists(st.integers(1, 5 if n < 3 else 3), min_size=n, max_size=n))
    kernel = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    stride = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    dil = draw(st.lists(st.integers(1, 2), min_size=n, max_size=n))
    x_shape = (draw(st.integers(1, 2)), *spatial, c_in)
    w_shape = (c_out, *kernel, c_in // groups)
    if kind == "conv_transpose":
        pad = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        out_pad = [draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dil)]
        sizes = [(s - 1) * t - 2 * p + d * (k - 1) + o + 1
                 for s, t, p, d, k, o in zip(spatial, stride, pad, dil, kernel, out_pad)]
        if min(sizes) < 1:
            return draw(valid_calls())
        kw = dict(stride=stride, padding=pad, dilation=dil, output_padding=out_pad,
                  groups=groups)
        return f"conv_transpose{n}d", x_shape, w_shape, kw, ("t", kw)
    lows = draw(st.lists(st.integers(-2, 3), min_size=n, max_size=n))
    highs = draw(st.lists(st.integers(-2, 3), min_size=n, max_size=n))
    idil = (draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
            if kind == "conv_general" else [1] * n)
    flip = draw(st.booleans()) if kind == "conv_general" else False
    for s, k, _t, d, lo, hi, i in zip(spatial, kernel, stride, dil, lows, highs, idil):
        if (s - 1) * i + 1 + lo + hi < (k - 1) * d + 1:
            return draw(valid_calls())
    ref_kw = dict(stride=stride, padding_lo=lows, padding_hi=highs, kernel_dilation=dil,
                  input_dilation=idil, groups=groups, flip=flip)
    if kind == "conv_general":
        kw = dict(stride=stride, padding=(lows, highs), kernel_dilation=dil,
                  input_dilation=idil, groups=groups, flip=flip)
        return "conv_general", x_shape, w_shape, kw, ("g", ref_kw)
    kw = dict(stride=stride, padding=(lows, highs), dilation=dil, groups=groups)
    return f"conv{n}d", x_shape, w_shape, kw, ("g", ref_kw)


def _check_valid(call, seed, with_vjp):
    fn, x_shape, w_shape, kw, (form, ref_kw) = call
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    f = getattr(convnn, fn)
    forward = ref.conv_transpose_ref if form == "t" else ref.conv_general_ref
    want = forward(x, w, **ref_kw)
    assert_close(f(x, w, **kw), want, jnp.float64, what=f"{fn} {kw}")
    if with_vjp:
        ct = rng.standard_normal(want.shape)
        backward = ref.conv_transpose_ref_vjp if form == "t" else ref.conv_general_ref_vjp
        want_dx, want_dw = backward(x, w, ct, **ref_kw)
        dx, dw = jax.vjp(lambda a, b: f(a, b, **kw), x, w)[1](ct)
        assert_close(dx, want_dx, jnp.float64, what=f"dx {fn} {kw}")
        assert_close(dw, want_dw, jnp.float64, what=f"dw {fn} {kw}")


@FAST
@given(valid_calls(), st.integers(0, 2**16), st.booleans())
def test_valid_calls_match_the_reference(call, seed, with_vjp):
    _check_valid(call, seed, with_vjp)


@pytest.mark.slow
@SLOW
@given(valid_calls(), st.integers(0, 2**16), st.booleans())
def test_valid_calls_match_the_reference_many(call, seed, with_vjp):
    _check_valid(call, seed, with_vjp)


BAD_VALUES = [0, -1, -(2**31), 2**31, 2**63, 2**70, True, np.bool_(True), 1.0, np.float32(2),
              "x", None, (1, 1, 1, 1), (True,), [1.5]]


@st.composite
def invalid_calls(draw):
    """A valid call with one argument replaced by a bad value: (fn, x, w, kwargs, name)."""
    fn, x_shape, w_shape, kw, _ = draw(valid_calls())
    names = [k for k in kw if k != "flip"]
    name = draw(st.sampled_from(names))
    value = draw(st.sampled_from(BAD_VALUES))
    if name == "output_padding" and (value is None or (type(value) is int and value == 0)):
        value = -1  # None means 0 there, and 0 is valid
    if name == "padding" and value in (0,) and type(value) is int:
        value = -(2**63)
    if name == "padding" and not fn.startswith("conv_transpose") and type(value) is int and \
            abs(value) < 2**31:
        value = 2**40  # small negative / zero padding may be valid: use an unbounded one
    if name == "groups" and value in (0, -1) and type(value) is int:
        value = 7  # divides no channel count here... or refuses being < 1
    return fn, x_shape, w_shape, dict(kw, **{name: value}), name


def _verdict(fn, x_shape, w_shape, kw):
    x, w = jnp.ones(x_shape, jnp.float32), jnp.ones(w_shape, jnp.float32)
    try:
        getattr(convnn, fn)(x, w, **kw)
    except (TypeError, ValueError) as err:
        return type(err).__name__, str(err).split("\n")[0]
    return "ok", ""


def _check_invalid(call):
    fn, x_shape, w_shape, kw, name = call
    kind, message = _verdict(fn, x_shape, w_shape, kw)
    if name == "groups" and kw["groups"] == 7:
        assert kind == "ValueError", (fn, kw)
        return
    assert kind in ("TypeError", "ValueError"), (fn, kw, kind)
    label = "kernel_dilation" if name == "kernel_dilation" else name
    assert f"[{fn}]" in message and label.split("_")[-1] in message, (fn, kw, message)
    # The same verdict after a valid call of the same configuration.
    valid = {k: v for k, v in kw.items() if k != name}
    _verdict(fn, x_shape, w_shape, valid)
    assert _verdict(fn, x_shape, w_shape, kw) == (kind, message)


@FAST
@given(invalid_calls())
def test_invalid_arguments_are_refused_by_name(call):
    _check_invalid(call)


@pytest.mark.slow
@SLOW
@given(invalid_calls())
def test_invalid_arguments_are_refused_by_name_many(call):
    _check_invalid(call)


FRESH_CALLS = [
    ("conv2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(stride=(True, 1))),
    ("conv2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(stride=(1.0, 1))),
    ("conv2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(stride=(np.bool_(True), 1))),
    ("conv2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(padding=(True, False))),
    ("conv2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(padding=(1.0, 0))),
    ("conv2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(dilation=2**63)),
    ("conv1d", (1, 5, 2), (3, 3, 2), dict(groups=True)),
    ("conv_transpose2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(stride=2, output_padding=True)),
    ("conv_transpose2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(stride=2, output_padding=1.0)),
    ("conv_transpose2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(stride=2**31)),
    ("conv_general", (1, 5, 5, 2), (3, 3, 3, 2), dict(input_dilation=(1, -1))),
    ("conv_general", (1, 5, 5, 2), (3, 3, 3, 2), dict(flip=1)),
]
FRESH_VALID = [("conv2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(stride=(1, 1), padding=(1, 0))),
               ("conv_transpose2d", (1, 5, 5, 2), (3, 3, 3, 2), dict(stride=2, output_padding=1)),
               ("conv_general", (1, 5, 5, 2), (3, 3, 3, 2), dict(flip=True)),
               ("conv1d", (1, 5, 2), (3, 3, 2), dict(groups=1))]


@pytest.mark.subprocess
def test_verdicts_in_a_fresh_process_match(tmp_path):
    """The same invalid calls judged in this process (after valid twins) and in a new one."""
    for call in FRESH_VALID:
        assert _verdict(*call)[0] == "ok"
    here = [_verdict(*c) for c in FRESH_CALLS]
    assert all(kind != "ok" for kind, _ in here)
    path = tmp_path / "calls.pkl"
    path.write_bytes(pickle.dumps(FRESH_CALLS))
    code = textwrap.dedent(f"""
        import pickle
        import jax, jax.numpy as jnp, convnn
        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_numpy_dtype_promotion", "strict")
        def verdict(fn, x_shape, w_shape, kw):
            x, w = jnp.ones(x_shape, jnp.float32), jnp.ones(w_shape, jnp.float32)
            try:
                getattr(convnn, fn)(x, w, **kw)
            except (TypeError, ValueError) as err:
                return type(err).__name__, str(err).split("\\n")[0]
            return "ok", ""
        calls = pickle.loads(open({str(path)!r}, "rb").read())
        print(repr([verdict(*c) for c in calls]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert eval(out.stdout.strip().splitlines()[-1]) == here
