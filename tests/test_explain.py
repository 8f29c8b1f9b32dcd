"""``convnn.explain`` against the policy tables: on CPU, and under the CUDA and Apple policies
for devices that are only described (no GPU needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import convnn
from convnn._lowering import STRATEGIES, _cpu


def _sds(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


# (what, function, input shape, weight shape, dtype, arguments, backend, strategy, rule contains)
TABLE = [
    ("dense 3x3", "conv2d", (8, 16, 16, 64), (64, 3, 3, 64), "float32", dict(padding=1), "cpu",
     "xla", "other dense"),
    ("dense 1x1", "conv2d", (8, 16, 16, 64), (256, 1, 1, 64), "float32", {}, "cpu",
     "decomposed", "1x1"),
    ("dense 3x3 stem", "conv2d", (8, 32, 32, 3), (32, 3, 3, 3), "float32",
     dict(stride=2, padding=1), "cpu", "im2col", "2 or 3 input channels"),
    ("dense 7x7 stem", "conv2d", (8, 32, 32, 3), (64, 7, 7, 3), "float32",
     dict(stride=2, padding=3), "cpu", "xla", "other dense"),
    ("dense wide", "conv2d", (8, 16, 16, 256), (256, 3, 3, 256), "float32", dict(padding=1),
     "cpu", "mixed", "256 input channels"),
    ("transposed dense", "conv_transpose2d", (8, 8, 8, 256), (256, 3, 3, 256), "float32",
     dict(stride=2), "cpu", "xla", "input-dilated"),
    ("depthwise 7x7", "conv2d", (8, 28, 28, 96), (96, 7, 7, 1), "float32",
     dict(padding=3, groups=96), "cpu", "decomposed", "depthwise"),
    ("groups of 4", "conv2d", (8, 16, 16, 128), (128, 3, 3, 4), "float32",
     dict(padding=1, groups=32), "cpu", "decomposed", "at most 4 input channels"),
    ("groups of 8", "conv2d", (8, 16, 16, 256), (256, 3, 3, 8), "float32",
     dict(padding=1, groups=32), "cpu", "mixed", "more than 4 input channels"),
    ("depthwise 7x7 bf16", "conv2d", (256, 56, 56, 96), (96, 7, 7, 1), "bfloat16",
     dict(padding=3, groups=96), "cuda", "pallas", "at least 25 taps"),
    ("depthwise 3x3 s2 bf16", "conv2d", (256, 56, 56, 144), (144, 3, 3, 1), "bfloat16",
     dict(stride=2, padding=1, groups=144), "cuda", "pallas[forward=xla,weight_grad=xla]",
     "3x3 at stride 2"),
    ("depthwise 3x3 f32", "conv2d", (256, 56, 56, 144), (144, 3, 3, 1), "float32",
     dict(padding=1, groups=144), "cuda", "xla", "everything else"),
    ("depthwise 7x7 x2 f32", "conv2d", (8, 28, 28, 16), (32, 7, 7, 1), "float32",
     dict(padding=3, groups=16), "cuda", "mixed", "at least 49 taps"),
    ("depthwise 7x7 dilated f32", "conv2d", (8, 28, 28, 16), (16, 7, 7, 1), "float32",
     dict(padding=6, dilation=2, groups=16), "cuda", "mixed",
     "'pallas' cannot compute it on cuda"),
    ("dense 3x3 cuda", "conv2d", (8, 16, 16, 64), (64, 3, 3, 64), "float32", dict(padding=1),
     "cuda", "xla", "everything else"),
    ("grouped 3-D on jax-metal", "conv3d", (1, 6, 5, 6, 4), (4, 2, 3, 2, 2), "float32",
     dict(groups=2), "jax-metal", "decomposed-rank4", "3-D convolutions"),
    ("bf16 on jax-metal", "conv2d", (1, 8, 8, 4), (4, 3, 3, 4), "bfloat16", dict(padding=1),
     "jax-metal", "xla-float32", "bfloat16"),
    ("depthwise 3x3 on tpu", "conv2d", (8, 16, 16, 64), (64, 3, 3, 1), "float32",
     dict(padding=1, groups=64), "tpu", "xla", "every convolution"),
]


@pytest.mark.parametrize("what, fn, x_shape, w_shape, dtype, kwargs, backend, strategy, rule",
                         TABLE, ids=[f"{t[6]}-{t[0]}" for t in TABLE])
def test_explain_follows_the_policy_tables(what, fn, x_shape, w_shape, dtype, kwargs, backend,
                                           strategy, rule):
    e = convnn.explain(getattr(convnn, fn), _sds(x_shape, dtype), _sds(w_shape, dtype),
                       backend=backend, **kwargs)
    assert (e.strategy, e.backend, e.device) == (strategy, backend, backend), str(e)
    assert rule in e.rule, e.rule
    assert (e.forward, e.input_grad, e.weight_grad) == tuple(
        vars(STRATEGIES[strategy].passes(e.config)).values())


def test_explain_reports_each_pass_of_the_pallas_strategy():
    e = convnn.explain(convnn.conv2d, _sds((256, 56, 56, 96), "bfloat16"),
                       _sds((96, 7, 7, 1), "bfloat16"), padding=3, groups=96, backend="cuda")
    assert e.strategy == "pallas"
    assert "convnn_depthwise_correlate" in e.forward
    assert "convnn_depthwise_correlate" in e.input_grad
    assert "convnn_depthwise_weight_grad" in e.weight_grad
    assert "forward pallas, weight gradient pallas" in e.rule


def test_explain_uses_the_lowering_in_force():
    x, w = _sds((2, 8, 8, 4)), _sds((4, 3, 3, 1))
    assert convnn.explain(convnn.conv2d, x, w, groups=4).strategy == "decomposed"  # CPU auto
    with convnn.lowering("xla"):
        e = convnn.explain(convnn.conv2d, x, w, groups=4)
    assert e.strategy == "xla" and e.selection == "xla" and e.rule.startswith("forced")
    with convnn.lowering("auto", backend="tpu"):  # the TPU policy, run on this CPU
        e = convnn.explain(convnn.conv2d, x, w, groups=4)
    assert (e.strategy, e.backend, e.device) == ("xla", "tpu", "cpu")


def test_explain_matches_what_runs():
    """The strategy explain names is the one whose program is traced (no convolution primitive
    in any pass of the decomposed form, one in each of XLA's)."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((4, 3, 3, 1))

    def f(a, b):
        return convnn.conv2d(a, b, groups=4, padding=1)

    for selection, convolves in (("auto", False), ("xla", True)):
        with convnn.lowering(selection):
            e = convnn.explain(convnn.conv2d, x, w, groups=4, padding=1)
            jaxpr = str(jax.make_jaxpr(jax.grad(lambda a, b: f(a, b).sum(), (0, 1)))(x, w))
        assert ("conv_general_dilated" in jaxpr) == convolves == (e.strategy == "xla")


@pytest.mark.parametrize("stride, decomposed", [((2, 3), True), ((2, 1), False)])
def test_explain_names_the_strided_guard_on_cpu(stride, decomposed):
    """A strided convolution whose output is no longer than the kernel on some axis takes its
    input gradient through the decomposed form on CPU (conv_xla's guard); explain says so, and
    the traced input gradient then has no convolution."""
    x, w = jnp.ones((1, 6, 4, 1)), jnp.ones((1, 2, 2, 1))
    with convnn.lowering("xla"):
        e = convnn.explain(convnn.conv2d, x, w, stride=stride, padding=(1, 0))
        y, backward = jax.vjp(lambda a: convnn.conv2d(a, w, stride=stride, padding=(1, 0)), x)
    jaxpr = str(jax.make_jaxpr(backward)(y))  # the input gradient alone
    assert ("decomposed" in e.input_grad) == decomposed, e.input_grad
    assert ("conv_general_dilated" in jaxpr) != decomposed
    assert "XLA's transpose" in e.weight_grad


def test_explain_checks_its_arguments_and_the_call():
    x, w = _sds((2, 8, 8, 4)), _sds((4, 3, 3, 1))
    with pytest.raises(ValueError, match=r"\[explain\] unknown backend"):
        convnn.explain(convnn.conv2d, x, w, groups=4, backend="vulkan")
    with pytest.raises(ValueError, match=r"\[conv2d\]"):  # the call's own validation
        convnn.explain(convnn.conv2d, x, w, groups=3)
    with pytest.raises(ValueError, match="made 0 convolutions"):
        convnn.explain(lambda a, b: a + 1, x, w)
    with pytest.raises(ValueError, match="made 2 convolutions"):
        convnn.explain(lambda a, b: convnn.conv2d(convnn.conv2d(a, b, groups=4, padding=1), b,
                                                  groups=4), x, w)


def test_cpu_rules_are_listed_in_order():
    assert [r.strategy for r in _cpu.RULES][-1] == "xla"
