"""The lowering layer: every strategy against the float64 reference, convolution-free programs of
the decomposed strategy, the ``"auto"`` policy's choices, the ``convnn.lowering`` context manager
and the eager-call cache."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CORE, SUBSETS, Case, pick
from helpers import call_api, random_operands, reference, reference_vjp
from jax.test_util import check_grads
from tolerances import assert_close

import convnn
from convnn import _dispatch
from convnn._lowering import (
    BACKENDS,
    STRATEGIES,
    ConvConfig,
    ConvSpec,
    Strategy,
    Target,
    _context,
    _registry,
    choose,
    conv_decomposed,
    conv_xla,
    current,
)
from convnn._reference import conv_general_ref

# The core tests' tables (tests/test_functional_reference.py): every third case for the
# strategies new here, every ninth for "xla" (which the core tests cover in full).
STRATEGY_NAMES = ["xla", "decomposed", "im2col", "mixed"]
STRATEGY_CASES = ([("decomposed", c) for c in CORE[::3]] + [("mixed", c) for c in CORE[1::3]]
                  + [("im2col", c) for c in CORE[2::3]] + [("xla", c) for c in CORE[2::9]])


def _jitted_value_and_grads(case, strategy):
    @jax.jit
    @convnn.lowering(strategy)
    def f(x, w, g):
        out, vjp = jax.vjp(lambda a, b: call_api(case, a, b), x, w)
        return (out, *vjp(g))

    return f


def equations(fn, *args):
    """Every equation in the jaxpr of ``fn(*args)``, sub-jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            found.append(eqn)
            for value in eqn.params.values():
                for v in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(v, "eqns"):  # a Jaxpr
                        walk(v)
                    elif hasattr(getattr(v, "jaxpr", None), "eqns"):  # a ClosedJaxpr
                        walk(v.jaxpr)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def primitives(fn, *args):
    """Names of every primitive in the jaxpr of ``fn(*args)``, sub-jaxprs included."""
    return [eqn.primitive.name for eqn in equations(fn, *args)]


# ---------------------------------------------------------------------------------------------
# Tier 1: values and gradients against the float64 reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy, case", [
    # every other pair in the fast tier (each strategy keeps half of its cases); all in CI
    pytest.param(s, c, id=f"{s}-{c}", marks=[pytest.mark.slow] * (i % 2))
    for i, (s, c) in enumerate(STRATEGY_CASES)])
def test_strategy_matches_reference_float64(case, strategy):
    _check_value_and_grads(case, strategy, seed=11)


def _check_value_and_grads(case, strategy, seed):
    """The strategy's value and both VJPs (float64) against the NumPy reference's."""
    x, w = random_operands(case, seed)
    expected = reference(case, x, w)
    g = np.random.default_rng(seed + 1).standard_normal(expected.shape)
    out, dx, dw = _jitted_value_and_grads(case, strategy)(x, w, g)
    rdx, rdw = reference_vjp(case, x, w, g)
    assert out.dtype == dx.dtype == dw.dtype == jnp.float64
    assert_close(out, expected, jnp.float64, what=f"out {case}")
    assert_close(dx, rdx, jnp.float64, what=f"dx {case}")
    assert_close(dw, rdw, jnp.float64, what=f"dw {case}")


def _depthwise(n, multiplier, stride, dilation, padding, batch=2, c=3, seed=0):
    rng = np.random.default_rng(seed)
    kernel = tuple(int(k) for k in rng.integers(1, 4, n))
    spatial = tuple(int(s) for s in rng.integers(4, 8, n))
    return Case("conv", n, batch, c, c * multiplier, c, spatial, kernel, (stride,) * n,
                padding, (padding,) * n, (padding,) * n, (dilation,) * n)


# Depthwise cases with channel multipliers, strides and dilations (the multiply-add path).
DEPTHWISE = [
    _depthwise(1, 1, 1, 1, 1), _depthwise(2, 1, 2, 1, 1, seed=1), _depthwise(2, 2, 1, 2, 2, seed=2),
    _depthwise(3, 1, 2, 1, 1, c=2, seed=3), _depthwise(2, 3, 3, 1, 0, batch=None, seed=4),
]


@pytest.mark.parametrize("strategy", ["decomposed", "mixed"])
@pytest.mark.parametrize("case", DEPTHWISE, ids=str)
def test_depthwise_matches_reference_float64(case, strategy):
    _check_value_and_grads(case, strategy, seed=13)


# im2col shares decomposed's code: its twins run in the slow tier.
DECOMPOSED_FORMS = ["decomposed", pytest.param("im2col", marks=pytest.mark.slow)]


@pytest.mark.parametrize("strategy", DECOMPOSED_FORMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", SUBSETS["every-17th"] + DEPTHWISE[1:3], ids=str)
def test_decomposed_low_precision(case, dtype, strategy):
    """The decomposed forms in 16 bits: ``decomposed`` sums its matmuls in float32, ``im2col``'s
    one matmul rounds its own accumulation."""
    x, w = random_operands(case, 15)
    xj, wj = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    x64, w64 = np.asarray(xj, np.float64), np.asarray(wj, np.float64)  # the rounded inputs
    expected = reference(case, x64, w64)
    g = jnp.asarray(np.random.default_rng(16).standard_normal(expected.shape), dtype)
    out, dx, dw = _jitted_value_and_grads(case, strategy)(xj, wj, g)
    assert out.dtype == dx.dtype == dw.dtype == jnp.dtype(dtype)
    rdx, rdw = reference_vjp(case, x64, w64, np.asarray(g, np.float64))
    assert_close(out, expected, dtype, what=f"out {case}")
    assert_close(dx, rdx, dtype, what=f"dx {case}")
    assert_close(dw, rdw, dtype, what=f"dw {case}")


@pytest.mark.parametrize("groups, c_out", [(1, 8), (2, 8), (8, 8), (8, 16)])
@pytest.mark.parametrize("strategy", ["decomposed", "im2col", "mixed"])
def test_preferred_element_type_float32_from_bfloat16(strategy, groups, c_out):
    rng = np.random.default_rng(17)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((c_out, 3, 3, 8 // groups)), jnp.bfloat16)
    with convnn.lowering(strategy):
        out = convnn.conv2d(x, w, padding=1, groups=groups, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    ref = conv_general_ref(np.asarray(x, np.float64), np.asarray(w, np.float64), stride=(1, 1),
                           padding_lo=(1, 1), padding_hi=(1, 1), kernel_dilation=(1, 1),
                           input_dilation=(1, 1), groups=groups, flip=False)
    assert_close(out, ref, jnp.float32)


CHECK_GRADS = [("decomposed", DEPTHWISE[0], 2), ("mixed", pick("conv1d", "grouped"), 2),
               ("im2col", pick("conv2d", "strided"), 2)] + [
    (s, c, 1) for s in ("decomposed", "mixed")
    for c in (pick("general1d", "input-dilated", "cropped"),
              pick("transpose2d", "grouped", "strided", "output-padding", "unbatched"),
              DEPTHWISE[2])]


@pytest.mark.parametrize("strategy, case, order",
                         [pytest.param(s, c, o, id=f"{s}-{c}-order{o}",
                                       marks=[pytest.mark.slow] * (o == 2))
                          for s, c, o in CHECK_GRADS])
def test_check_grads(case, order, strategy):
    """Forward and reverse mode against finite differences (``mixed`` and the depthwise path are
    custom_jvp rules; second order on the small cases)."""
    x, w = random_operands(case, 18)
    f = jax.jit(convnn.lowering(strategy)(lambda a, b: call_api(case, a, b)))
    check_grads(f, (jnp.asarray(x), jnp.asarray(w)), order=order, modes=("fwd", "rev"),
                atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The decomposed strategy contains no convolution primitive, forward or backward
# ---------------------------------------------------------------------------------------------

# grouped, strided, dilated, transposed, 3-D, depthwise (with multiplier) and dense cases
PROGRAM_CASES = SUBSETS["spread"] + DEPTHWISE


def _programs(case, x, w):
    """(what, fn, args) for the forward pass, both gradients, the backward pass alone, forward
    mode and a second derivative."""
    f = lambda a, b: call_api(case, a, b)  # noqa: E731
    out = jax.eval_shape(f, x, w)
    g = jnp.ones(out.shape, out.dtype)
    loss = lambda a, b: jnp.sum(f(a, b) ** 2)  # noqa: E731
    _, vjp = jax.vjp(f, x, w)
    return [
        ("forward", f, (x, w)),
        ("grad x", jax.grad(loss, 0), (x, w)),
        ("grad w", jax.grad(loss, 1), (x, w)),
        ("vjp backward", vjp, (g,)),
        ("jvp", lambda a, b: jax.jvp(f, (a, b), (a, b)), (x, w)),
        ("grad of grad", jax.grad(lambda a, b: jnp.sum(jax.grad(loss, 1)(a, b) ** 2)), (x, w)),
    ]


@pytest.mark.parametrize("strategy, case", [("decomposed", c) for c in PROGRAM_CASES] + [
    pytest.param("im2col", c, marks=pytest.mark.slow) for c in PROGRAM_CASES[::3]],
    ids=lambda v: str(v))
def test_decomposed_programs_have_no_convolution(case, strategy):
    x, w = (jnp.asarray(a) for a in random_operands(case, 19))
    with convnn.lowering(strategy):
        for what, fn, args in _programs(case, x, w):
            assert "conv_general_dilated" not in primitives(fn, *args), what
    with convnn.lowering("xla"):  # the check itself can fail
        assert "conv_general_dilated" in primitives(lambda a, b: call_api(case, a, b), x, w)


@pytest.mark.parametrize("case", PROGRAM_CASES[::2], ids=str)
def test_mixed_convolves_forward_only(case):
    x, w = (jnp.asarray(a) for a in random_operands(case, 20))
    with convnn.lowering("mixed"):
        programs = _programs(case, x, w)
        assert primitives(programs[0][1], x, w).count("conv_general_dilated") <= 1
        _, vjp_fn, args = programs[3]
        assert "conv_general_dilated" not in primitives(vjp_fn, *args)


def test_decomposed_uses_no_strided_slice_forward():
    case = _depthwise(2, 1, 2, 1, 1)
    x, w = (jnp.asarray(a) for a in random_operands(case, 21))
    with convnn.lowering("decomposed"):
        jaxpr = jax.make_jaxpr(lambda a, b: call_api(case, a, b))(x, w)
    strided = [e for e in jaxpr.jaxpr.eqns
               if e.primitive.name == "slice" and e.params.get("strides") not in (None, (1,) * 4)]
    assert not strided


def _products(fn, *args):
    """The output dtypes of the ``dot_general`` calls of ``fn(*args)``."""
    return [e.outvars[0].aval.dtype for e in equations(fn, *args)
            if e.primitive.name == "dot_general"]


def test_im2col_is_one_product_rounded_by_itself():
    """``im2col``: the 9 taps' patches in one array and one ``dot_general`` whose output is the
    bfloat16 result (its own float32 accumulation, rounded once). ``decomposed`` sums float32
    products, one per chunk of taps under its patch bound."""
    x = jnp.ones((2, 64, 64, 3), jnp.bfloat16)  # one tap's patches: 12 KiB
    w = jnp.ones((8, 3, 3, 3), jnp.bfloat16)
    f = lambda a, b: convnn.conv2d(a, b, stride=2, padding=1)  # noqa: E731
    with convnn.lowering("im2col"):
        assert _products(f, x, w) == [jnp.bfloat16]
    with convnn.lowering("decomposed"):
        assert _products(f, x, w) == [jnp.float32]
    spec = ConvSpec((2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 1, False)
    bounded = lambda a, b: conv_decomposed(a, b, spec, patch_bytes=30_000)  # noqa: E731
    assert _products(bounded, x, w) == [jnp.float32] * 5  # two taps a product


# ---------------------------------------------------------------------------------------------
# The "auto" policy
# ---------------------------------------------------------------------------------------------


def _cfg(c_in, c_out, groups, kernel=(3, 3), stride=None, input_dilation=None, dtype="float32"):
    n = len(kernel)
    spec = ConvSpec(stride=stride or (1,) * n, padding=((1, 1),) * n, kernel_dilation=(1,) * n,
                    input_dilation=input_dilation or (1,) * n, groups=groups, flip=False)
    return ConvConfig((8, *(16,) * n, c_in), (c_out, *kernel, c_in // groups), jnp.dtype(dtype),
                      spec)


POLICY_TABLE = [
    # (what, config, backend, expected)
    ("dense 3x3", _cfg(64, 64, 1), "cpu", "xla"),
    ("dense 7x7 stem", _cfg(3, 64, 1, (7, 7), stride=(2, 2)), "cpu", "xla"),
    ("dense 3x3 stem", _cfg(3, 32, 1, stride=(2, 2)), "cpu", "im2col"),
    ("dense 4x4 stem", _cfg(3, 96, 1, (4, 4), stride=(4, 4)), "cpu", "im2col"),
    ("dense 3x3, 2 channels", _cfg(2, 32, 1), "cpu", "im2col"),
    ("dense 3x3, 1 channel", _cfg(1, 32, 1), "cpu", "xla"),
    ("dense 3x3, 4 channels", _cfg(4, 32, 1), "cpu", "xla"),
    ("dense 5x5, 3 channels", _cfg(3, 32, 1, (5, 5)), "cpu", "xla"),
    ("dense 3x3 stem, transposed", _cfg(3, 32, 1, input_dilation=(2, 2)), "cpu", "xla"),
    ("dense 3-D, 3 channels", _cfg(3, 8, 1, (3, 3, 3)), "cpu", "xla"),
    ("dense 3x3 wide", _cfg(256, 256, 1), "cpu", "mixed"),
    ("dense 3x3 wide transposed", _cfg(256, 256, 1, input_dilation=(2, 2)), "cpu", "xla"),
    ("dense 1x1", _cfg(64, 256, 1, (1, 1)), "cpu", "decomposed"),
    ("dense 3-D", _cfg(8, 8, 1, (3, 3, 3)), "cpu", "xla"),
    ("depthwise 3x3", _cfg(64, 64, 64), "cpu", "decomposed"),
    ("depthwise 7x7", _cfg(96, 96, 96, (7, 7)), "cpu", "decomposed"),
    ("depthwise x2 multiplier", _cfg(32, 64, 32), "cpu", "decomposed"),
    ("depthwise strided", _cfg(64, 64, 64, stride=(2, 2)), "cpu", "decomposed"),
    ("depthwise transposed", _cfg(16, 16, 16, input_dilation=(2, 2)), "cpu", "decomposed"),
    ("depthwise 1-D", _cfg(16, 16, 16, (5,)), "cpu", "decomposed"),
    ("groups of 4 channels", _cfg(128, 128, 32), "cpu", "decomposed"),
    ("groups of 8 channels", _cfg(256, 256, 32), "cpu", "mixed"),
    ("2 groups of 32", _cfg(64, 64, 2), "cpu", "mixed"),
    ("dense 3x3", _cfg(64, 64, 1), "cuda", "xla"),
    ("dense 3x3 bf16", _cfg(64, 64, 1, dtype="bfloat16"), "cuda", "xla"),
    ("groups of 4 channels", _cfg(128, 128, 32), "cuda", "xla"),
    ("depthwise 3x3 float32", _cfg(144, 144, 144), "cuda", "xla"),
    ("depthwise 7x7 float32", _cfg(96, 96, 96, (7, 7)), "cuda", "mixed"),
    ("depthwise 7x7 bfloat16", _cfg(96, 96, 96, (7, 7), dtype="bfloat16"), "cuda", "xla"),
    ("dense 7x7 stem float32", _cfg(3, 64, 1, (7, 7), stride=(2, 2)), "cuda", "xla"),
    ("dense 4x4 stem, stride 4", _cfg(3, 96, 1, (4, 4), stride=(4, 4)), "cuda", "xla"),
    ("dense 3x3 stem float32", _cfg(3, 32, 1, stride=(2, 2)), "cuda", "im2col"),
    ("dense 1x1, 3 channels", _cfg(3, 32, 1, (1, 1), dtype="bfloat16"), "cuda", "xla"),
    ("dense 3x3 stem bf16", _cfg(3, 32, 1, stride=(2, 2), dtype="bfloat16"), "cuda", "im2col"),
    ("dense 3x3, 4 channels", _cfg(4, 32, 1, dtype="bfloat16"), "cuda", "im2col"),
    ("dense 3x3, 5 channels", _cfg(5, 32, 1, dtype="bfloat16"), "cuda", "xla"),
    ("dense 3x3 stem, transposed", _cfg(3, 32, 1, input_dilation=(2, 2)), "cuda", "xla"),
    ("dense 3-D, 3 channels", _cfg(3, 8, 1, (3, 3, 3)), "cuda", "xla"),
    ("depthwise 3x3", _cfg(64, 64, 64), "tpu", "xla"),
    ("depthwise 3x3", _cfg(64, 64, 64), "rocm", "xla"),
    ("groups of 4 channels", _cfg(128, 128, 32), "tpu", "xla"),
]


@pytest.mark.parametrize("what, cfg, backend, expected", POLICY_TABLE,
                         ids=[f"{b}-{w}" for w, _, b, _ in POLICY_TABLE])
def test_policy_choices(what, cfg, backend, expected):
    assert choose(cfg, "auto", backend) == expected


def test_forced_strategy_ignores_policy_and_backend():
    for name in STRATEGY_NAMES:
        assert choose(_cfg(64, 64, 64), name, "cpu") == name
        assert choose(_cfg(64, 64, 1), name, "tpu") == name


@pytest.fixture
def registered():
    """Registers strategies for one test (``registered(strategy)``), removed afterwards."""
    names = []

    def add(strategy):
        names.append(_registry.register(strategy).name)
        return strategy

    yield add
    for name in names:
        _registry.unregister(name)


def test_unsupported_strategy_falls_back_to_xla(registered):
    registered(Strategy("never", _registry.STRATEGIES["decomposed"].fn,
                        _registry.STRATEGIES["decomposed"].passes, lambda cfg, target: False))
    assert choose(_cfg(8, 8, 1), "never") == "xla"
    x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((2, 3, 3, 2))
    with convnn.lowering("never"):
        assert "conv_general_dilated" in primitives(lambda a, b: convnn.conv2d(a, b), x, w)


def test_internal_strategies_cannot_be_selected():
    for name in ("decomposed-float32", "xla-float32", "pallas[forward=xla]"):
        assert name in STRATEGIES
        with pytest.raises(ValueError, match="unknown strategy"):
            convnn.lowering(name)
    assert set(_registry.selectable()) == {"xla", "decomposed", "im2col", "mixed", "pallas"}


def test_a_name_is_registered_once_and_builtins_stay():
    with pytest.raises(ValueError, match="registered already"):
        _registry.register(STRATEGIES["xla"])
    with pytest.raises(ValueError, match="built-in"):
        _registry.unregister("xla")


def test_every_backend_policy_returns_a_strategy():
    for backend, policy in BACKENDS.items():
        for cfg in (_cfg(64, 64, 1), _cfg(64, 64, 64), _cfg(128, 128, 32), _cfg(8, 8, 2, (3,))):
            decision = policy(cfg, Target(backend))
            assert decision.strategies and decision.rule, backend
            assert all(name in STRATEGIES for name in decision.strategies), backend


@pytest.mark.parametrize("backend, convolves", [("cpu", False), ("tpu", True)])
def test_backend_option_applies_that_backends_policy(backend, convolves):
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((4, 3, 3, 1))
    with convnn.lowering("auto", backend=backend):
        prims = primitives(lambda a, b: convnn.conv2d(a, b, padding=1, groups=4), x, w)
    assert ("conv_general_dilated" in prims) == convolves


# ---------------------------------------------------------------------------------------------
# convnn.lowering: context manager and decorator
# ---------------------------------------------------------------------------------------------


def test_default_is_auto():
    assert tuple(current()) == ("auto", None)


def test_nesting_restores_outer_state():
    with convnn.lowering("xla"):
        assert current().name == "xla"
        with convnn.lowering("decomposed", backend="cuda") as inner:
            assert tuple(current()) == ("decomposed", "cuda")
            assert (inner.name, inner.backend) == ("decomposed", "cuda")
        assert tuple(current()) == ("xla", None)
    assert tuple(current()) == ("auto", None)


def test_same_object_reentered():
    low = convnn.lowering("mixed")
    with low:
        with convnn.lowering("xla"):
            with low:
                assert current().name == "mixed"
            assert current().name == "xla"
        assert current().name == "mixed"
    assert current().name == "auto"


def test_restores_on_exception():
    with pytest.raises(RuntimeError):
        with convnn.lowering("decomposed"):
            raise RuntimeError("boom")
    assert tuple(current()) == ("auto", None)


def test_decorator_sets_state_per_call_and_restores():
    seen = []

    @convnn.lowering("decomposed", backend="tpu")
    def f(depth):
        seen.append(tuple(current()))
        if depth:
            with convnn.lowering("xla"):
                f(depth - 1)
            seen.append(tuple(current()))
        return depth

    assert f(1) == 1 and f.__name__ == "f"
    assert seen == [("decomposed", "tpu")] * 3
    assert tuple(current()) == ("auto", None)
    with pytest.raises(ZeroDivisionError):
        convnn.lowering("xla")(lambda: 1 / 0)()
    assert tuple(current()) == ("auto", None)


def test_threads_do_not_share_the_selection():
    seen = {}

    def worker():
        seen["start"] = tuple(current())
        with convnn.lowering("mixed"):
            seen["inside"] = tuple(current())

    with convnn.lowering("decomposed"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert current().name == "decomposed"
    assert seen == {"start": ("auto", None), "inside": ("mixed", None)}


def test_unknown_names_raise_listing_valid_ones():
    with pytest.raises(ValueError, match=r"unknown strategy 'cudnn'.*'auto'.*'xla'.*'decomposed'"):
        convnn.lowering("cudnn")
    with pytest.raises(ValueError, match=r"unknown backend 'metal'.*'cpu'.*'cuda'"):
        convnn.lowering("auto", backend="metal")
    with pytest.raises(TypeError, match="name must be a string"):
        convnn.lowering(None)
    with pytest.raises(TypeError, match="backend must be None or a string"):
        convnn.lowering("auto", backend=1)
    assert tuple(current()) == ("auto", None)


def test_jit_picks_the_strategy_at_trace_time():
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((4, 3, 3, 1))
    f = jax.jit(lambda a, b: convnn.conv2d(a, b, padding=1, groups=4))
    with convnn.lowering("decomposed"):
        assert "convolution" not in f.lower(x, w).as_text()
    with convnn.lowering("xla"):
        assert "convolution" in f.lower(x, w).as_text()


def test_jitted_function_retraces_when_the_selection_changes(spy):
    x, w = _operands()
    f = jax.jit(lambda a, b: convnn.conv2d(a, b, padding=1))
    with convnn.lowering("xla"):
        expected = f(x, w)
    with convnn.lowering("spy"):
        out = f(x, w)
    # JAX keys its jit caches on the selection where it can (jax.make_user_context).
    assert len(spy) == (1 if _context.JIT_KEYED else 0)
    assert _context.JIT_KEYED == hasattr(jax, "make_user_context")
    np.testing.assert_array_equal(out, expected)


def test_public_name_is_the_context_manager():
    import convnn._lowering as package

    assert convnn.lowering is package.lowering
    assert callable(convnn.lowering) and "lowering" in convnn.__all__


# ---------------------------------------------------------------------------------------------
# The eager-call cache
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def spy(registered):
    """A strategy "spy" (XLA's) that counts how often it is traced."""
    traces = []

    def traced(x, w, spec):
        traces.append(spec)
        return conv_xla(x, w, spec)

    registered(Strategy("spy", traced, STRATEGIES["xla"].passes))
    _dispatch.clear_caches()
    yield traces
    _dispatch.clear_caches()


def _operands(shape=(2, 7, 7, 4), groups=1, seed=22):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(shape), jnp.float32),
            jnp.asarray(rng.standard_normal((4, 3, 3, shape[-1] // groups)), jnp.float32))


def test_eager_calls_trace_once_per_configuration(spy):
    x, w = _operands()
    with convnn.lowering("spy"):
        outs = [convnn.conv2d(x, w, padding=1) for _ in range(4)]
        assert len(spy) == 1
        convnn.conv2d(x, w, padding=2)
        convnn.conv2d(x[:1], w, padding=1)
        assert len(spy) == 3
    with convnn.lowering("xla"):
        expected = convnn.conv2d(x, w, padding=1)
    for out in outs:
        np.testing.assert_array_equal(out, expected)


def test_eager_cache_is_keyed_on_the_lowering(spy):
    x, w = _operands()
    with convnn.lowering("xla"):
        convnn.conv2d(x, w, padding=1)
    with convnn.lowering("spy"):
        convnn.conv2d(x, w, padding=1)
    assert len(spy) == 1
    with convnn.lowering("spy", backend="cpu"):
        convnn.conv2d(x, w, padding=1)
    assert len(spy) == 2


def test_traced_calls_trace_one_body_per_plan(spy):
    x, w = _operands()
    with convnn.lowering("spy"):
        jax.jit(lambda a, b: convnn.conv2d(a, b, padding=1))(x, w)
        # the same plan under grad, and twice in one function: the body traced above
        jax.grad(lambda a: jnp.sum(convnn.conv2d(a, w, padding=1)))(x)
        jax.jit(lambda a: convnn.conv2d(a, w, padding=1) + convnn.conv2d(a, w, padding=1))(x)
        assert len(spy) == 1
        jax.vmap(lambda a: convnn.conv2d(a, w, padding=1))(x)  # unbatched input: another plan
        jax.jit(lambda a: convnn.conv2d(a, w, padding=2))(x)
        assert len(spy) == 3
    with convnn.lowering("xla"):  # the plan names the strategy: no spy
        jax.jit(lambda a: convnn.conv2d(a, w, padding=1))(x)
    assert len(spy) == 3
    assert _dispatch.EAGER._cache_size() == 0
    # each call is still judged on its own: a bad call under jit is refused every time
    for _ in range(2):
        with pytest.raises(ValueError, match=r"\[conv2d\] the \(dilated\) kernel"):
            jax.jit(lambda a: convnn.conv2d(a, w, padding=-9))(x)


def test_eager_calls_reuse_programs_until_clear_caches(spy):
    """Repeated eager calls reuse one compiled program per configuration (JAX's bounded jit
    cache); ``clear_caches()`` empties it, and a new lowering is a new configuration."""
    x, w = _operands()
    with convnn.lowering("spy"):
        for _ in range(3):
            convnn.conv2d(x, w, 1, 1)
            convnn.conv2d(x, w, padding=(1, 1))
            convnn.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
            convnn.conv1d(x[:, 0], w[:, 0], padding="same")
        assert len(spy) == 4
        _dispatch.clear_caches()
        convnn.conv2d(x, w, 1, 1)
        assert len(spy) == 5
    with convnn.lowering("xla"):  # a new lowering is a new key: traced, not taken from "spy"
        convnn.conv2d(x, w, 1, 1)
    assert len(spy) == 5


def test_values_that_hash_like_ints_never_share_a_valid_calls_entry():
    """``1.0``, ``True`` and ``np.float32(1)`` hash like ``1``: after the valid twin calls they
    are still refused, as in a fresh process."""
    x, w = _operands()
    for _ in range(2):
        convnn.conv2d(x, w, padding=1)
        convnn.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    for kw in (dict(stride=1.0), dict(groups=True), dict(dilation=np.float32(1))):
        with pytest.raises(TypeError, match="must be an int"):
            convnn.conv2d(x, w, **{"padding": 1, **kw})
    with pytest.raises(TypeError, match="must be an int"):
        convnn.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1.0)


def test_cached_configuration_still_rejects_bad_argument_types():
    x, w = _operands()
    convnn.conv2d(x, w, padding=1, groups=1)
    convnn.conv2d(x, w, padding=1, groups=1)
    with pytest.raises(TypeError, match="groups must be an int"):
        convnn.conv2d(x, w, padding=1, groups=True)
    convnn.conv_general(x, w, flip=True)
    convnn.conv_general(x, w, flip=True)
    with pytest.raises(TypeError, match="flip must be a bool"):
        convnn.conv_general(x, w, flip=1)


def test_unhashable_arguments_and_placement_work_eagerly():
    x, w = _operands()
    expected = convnn.conv2d(x, w, padding=(1, 1))
    for _ in range(2):
        np.testing.assert_array_equal(convnn.conv2d(x, w, padding=[1, 1]), expected)
    device = jax.devices()[-1]
    for _ in range(2):
        out = convnn.conv2d(x, w, padding=1, stream=device)
        assert out.devices() == {device}
        np.testing.assert_array_equal(out, expected)


def test_numpy_operands_eagerly():
    x, w = _operands()
    np.testing.assert_allclose(convnn.conv2d(np.asarray(x), np.asarray(w), padding=1),
                               convnn.conv2d(x, w, padding=1), rtol=1e-6)
