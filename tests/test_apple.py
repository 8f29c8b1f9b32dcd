"""Apple GPU plugins: routing tables, backend detection and the doctor, checked on CPU.

There is no Mac here, so the routing is proven by what the lowered programs contain: under each
plugin's policy (``convnn.lowering("auto", backend=...)``, which applies a plugin's table on any
machine) the jaxprs of the forward pass and of both gradients of every routed configuration
contain no convolution of the forms the plugin mishandles, configurations the plugin handles
still reach its convolution, and the values equal the default ``"xla"`` strategy's.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_close

import convnn
from convnn import _backend, _selfcheck
from convnn._lowering import ConvConfig, ConvSpec, Target, _apple, _detect, choose
from convnn._reference import (
    conv_general_ref,
    conv_general_ref_vjp,
)

pytestmark = pytest.mark.floor  # runs again at the version floor in CI


# ---------------------------------------------------------------------------------------------
# jaxpr inspection
# ---------------------------------------------------------------------------------------------


def _eqns(jaxpr):
    """Every equation of a jaxpr, recursing into sub-jaxprs (custom_jvp/vjp calls, pjit, ...)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _convs(jaxpr):
    return [e for e in _eqns(jaxpr) if e.primitive.name == "conv_general_dilated"]


#: Reductions (and contractions) whose operand rank the Apple plugins are sensitive to:
#: jax-metal is reported to abort on reductions over rank-5 and rank-6 arrays.
REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
              "dot_general")


def _reduction_ranks(jaxpr):
    """``(primitive, largest operand rank)`` of every reduction in a jaxpr."""
    return [(e.primitive.name, max(v.aval.ndim for v in e.invars)) for e in _eqns(jaxpr)
            if e.primitive.name in REDUCTIONS]


@dataclasses.dataclass(frozen=True)
class Conv:
    """What a plugin sees of one ``conv_general_dilated``."""

    spatial: int
    feature_groups: int
    batch_groups: int
    lhs_dilated: bool
    dtype: str

    @classmethod
    def of(cls, eqn):
        p = eqn.params
        return cls(
            spatial=eqn.invars[0].aval.ndim - 2,
            feature_groups=p["feature_group_count"],
            batch_groups=p["batch_group_count"],
            lhs_dilated=any(d > 1 for d in p["lhs_dilation"]),
            dtype=str(eqn.invars[0].aval.dtype),
        )


#: The convolution forms each plugin must never see (issue tracker reports; see _apple.py).
#: Versions are unknown here (no plugin installed), so every rule of a table applies.
RISKY = {
    "jax-metal": lambda c: c.spatial == 3 or c.feature_groups > 1 or c.batch_groups > 1,
    "jax-mps": lambda c: c.batch_groups > 1 or (c.feature_groups > 1 and c.lhs_dilated),
    "metaljax": lambda c: c.feature_groups > 1 and c.lhs_dilated,
    "metal-pjrt": lambda c: False,
}

# name, function, input shape, weight shape, arguments
CONFIGS = [
    ("dense 2-D", "conv2d", (2, 7, 8, 4), (6, 3, 3, 4), dict(padding=1)),
    ("dense strided 2-D", "conv2d", (2, 9, 8, 4), (6, 3, 3, 4), dict(stride=2)),
    ("transposed 2-D", "conv_transpose2d", (2, 5, 4, 4), (3, 3, 3, 4),
     dict(stride=2, padding=1, output_padding=1)),
    ("grouped 2-D", "conv2d", (2, 7, 8, 4), (6, 3, 2, 2), dict(groups=2, padding=(1, 0))),
    ("grouped dilated 1-D", "conv1d", (2, 12, 6), (6, 3, 2), dict(groups=3, dilation=2)),
    ("depthwise strided 2-D", "conv2d", (2, 9, 9, 4), (8, 3, 3, 1),
     dict(groups=4, stride=2, padding=1)),
    ("grouped transposed 2-D", "conv_transpose2d", (1, 5, 4, 4), (6, 3, 3, 2),
     dict(stride=2, groups=2)),
    ("dense 3-D", "conv3d", (1, 5, 4, 5, 3), (4, 3, 2, 3, 3), dict(padding=1)),
    ("grouped strided 3-D", "conv3d", (1, 6, 5, 6, 4), (4, 2, 3, 2, 2),
     dict(groups=2, stride=(2, 1, 2))),
    ("depthwise strided 3-D, multiplier 2", "conv3d", (1, 5, 4, 5, 2), (4, 3, 2, 3, 1),
     dict(groups=2, stride=(2, 1, 1), padding=1)),
]

#: Which configurations each plugin's table sends to the conv-free strategy (unknown versions).
ROUTED = {
    "jax-metal": {"grouped 2-D", "grouped dilated 1-D", "depthwise strided 2-D",
                  "grouped transposed 2-D", "dense 3-D", "grouped strided 3-D",
                  "depthwise strided 3-D, multiplier 2"},
    "jax-mps": {"grouped 2-D", "grouped dilated 1-D", "depthwise strided 2-D",
                "grouped transposed 2-D", "grouped strided 3-D",
                "depthwise strided 3-D, multiplier 2"},
    "metaljax": {"depthwise strided 2-D", "grouped transposed 2-D", "grouped strided 3-D",
                 "depthwise strided 3-D, multiplier 2"},
    "metal-pjrt": set(),
}


def _fn(config):
    _, fn, _, _, kwargs = config
    return lambda x, w: getattr(convnn, fn)(x, w, **kwargs)


def _operands(config, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    _, _, x_shape, w_shape, _ = config
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    w = jnp.asarray(rng.standard_normal(w_shape), dtype)
    return x, w


def _cotangent(config, x, w, seed=1):
    shape = jax.eval_shape(_fn(config), x, w).shape
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), x.dtype)


def _programs(config, x, w, g):
    """Jaxprs of the forward pass and of the gradients with respect to input and weight."""
    f = _fn(config)
    dx = lambda a, b: jax.vjp(lambda a: f(a, b), a)[1](g)[0]  # noqa: E731
    dw = lambda a, b: jax.vjp(lambda b: f(a, b), b)[1](g)[0]  # noqa: E731
    return {name: jax.make_jaxpr(fun)(x, w) for name, fun in
            (("forward", f), ("d/dinput", dx), ("d/dweight", dw))}


def _values(config, x, w, g):
    """Output and both gradients, jitted (traced under the lowering in force)."""

    def run(a, b, c):
        out, vjp = jax.vjp(_fn(config), a, b)
        return (out, *vjp(c))

    return jax.jit(run)(x, w, g)


_DEFAULT: dict = {}


def _default_values(config, x, w, g):
    """Output and both gradients with the default strategy ("xla"), computed once."""
    if config[0] not in _DEFAULT:
        with convnn.lowering("xla"):
            _DEFAULT[config[0]] = _values(config, x, w, g)
    return _DEFAULT[config[0]]


@pytest.mark.parametrize("backend", list(RISKY))
@pytest.mark.parametrize("config", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_routed_programs_hold_no_risky_convolution(backend, config):
    x, w = _operands(config)
    g = _cotangent(config, x, w)
    with convnn.lowering("auto", backend=backend):
        programs = _programs(config, x, w, g)
    routed = config[0] in ROUTED[backend]
    for what, jaxpr in programs.items():
        convs = [Conv.of(e) for e in _convs(jaxpr)]
        risky = [c for c in convs if RISKY[backend](c)]
        assert not risky, f"{backend}, {config[0]}, {what}: risky convolutions {risky}"
        high = [r for r in _reduction_ranks(jaxpr) if r[1] > 4]
        assert not high, f"{backend}, {config[0]}, {what}: reductions over rank > 4: {high}"
        if routed:
            assert not convs, f"{backend}, {config[0]}, {what}: routed yet convolves: {convs}"
        else:  # not routed: the plugin's own convolution does the work
            assert convs, f"{backend}, {config[0]}, {what}: not routed, yet no convolution"


@pytest.mark.parametrize("backend", ["jax-metal", pytest.param("jax-mps", marks=pytest.mark.slow),
                                     pytest.param("metaljax", marks=pytest.mark.slow)])
def test_routed_values_equal_the_default_strategy(backend):
    for config in CONFIGS:
        if config[0] not in ROUTED[backend]:
            continue
        x, w = _operands(config)
        g = _cotangent(config, x, w)
        want = _default_values(config, x, w, g)
        with convnn.lowering("auto", backend=backend):
            got = _values(config, x, w, g)
        for name, a, b in zip(("output", "d/dinput", "d/dweight"), got, want):
            assert_close(a, b, jnp.float64, what=f"{backend}, {config[0]}, {name}")


@pytest.mark.parametrize("config, stride, pad", [
    (CONFIGS[8], (2, 1, 2), 0), (CONFIGS[9], (2, 1, 1), 1)], ids=["grouped", "depthwise x2"])
def test_routed_values_equal_the_float64_reference(config, stride, pad):
    """One independent check besides the default strategy: jax-metal's routing of the grouped
    strided 3-D cases (their reductions reshaped to rank 4) against the float64 reference."""
    x, w = _operands(config)
    g = _cotangent(config, x, w)
    with convnn.lowering("auto", backend="jax-metal"):
        out, dx, dw = _values(config, x, w, g)
    kw = dict(stride=stride, padding_lo=(pad,) * 3, padding_hi=(pad,) * 3,
              kernel_dilation=(1,) * 3, input_dilation=(1,) * 3, groups=2, flip=False)
    assert_close(out, conv_general_ref(x, w, **kw), jnp.float64, what="output")
    want_dx, want_dw = conv_general_ref_vjp(x, w, g, **kw)
    assert_close(dx, want_dx, jnp.float64, what="d/dinput")
    assert_close(dw, want_dw, jnp.float64, what="d/dweight")


# ---------------------------------------------------------------------------------------------
# bfloat16 on jax-metal: computed in float32
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[3], CONFIGS[7]], ids=lambda c: c[0])
def test_jax_metal_computes_bfloat16_in_float32(config):
    x, w = _operands(config, jnp.bfloat16)
    g = _cotangent(config, x, w)
    with convnn.lowering("auto", backend="jax-metal"):
        programs = _programs(config, x, w, g)
        out, dx, dw = _values(config, x, w, g)
    for what, jaxpr in programs.items():
        for eqn in _eqns(jaxpr):
            if eqn.primitive.name in ("conv_general_dilated", "dot_general", "mul", "add"):
                dtypes = {str(v.aval.dtype) for v in eqn.invars}
                assert "bfloat16" not in dtypes, f"{config[0]}, {what}: {eqn.primitive} {dtypes}"
    assert (out.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16,) * 3
    # the same bfloat16 values, computed in float32 by the default strategy
    x32, w32, g32 = (a.astype(jnp.float32) for a in (x, w, g))
    want = _values(config, x32, w32, g32)
    for name, a, b in zip(("output", "d/dinput", "d/dweight"), (out, dx, dw), want):
        assert_close(a, b, jnp.bfloat16, what=f"{config[0]}, {name}")


def test_jax_metal_bfloat16_with_preferred_element_type():
    x, w = _operands(CONFIGS[3], jnp.bfloat16)
    f = lambda a, b: convnn.conv2d(a, b, groups=2, preferred_element_type=jnp.float32)  # noqa
    with convnn.lowering("auto", backend="jax-metal"):
        jaxpr = jax.make_jaxpr(f)(x, w)
        out = f(x, w)
    assert out.dtype == jnp.float32
    assert not any("bfloat16" in {str(v.aval.dtype) for v in e.invars}
                   for e in _eqns(jaxpr) if e.primitive.name in ("dot_general", "mul"))
    want = convnn.conv2d(x.astype(jnp.float32), w.astype(jnp.float32), groups=2)
    assert_close(out, want, jnp.float32, what="bfloat16 in, float32 out")


def test_other_plugins_keep_bfloat16():
    x, w = _operands(CONFIGS[0], jnp.bfloat16)
    with convnn.lowering("auto", backend="jax-mps"):
        jaxpr = jax.make_jaxpr(_fn(CONFIGS[0]))(x, w)
    assert {str(Conv.of(e).dtype) for e in _convs(jaxpr)} == {"bfloat16"}


# ---------------------------------------------------------------------------------------------
# The version tables
# ---------------------------------------------------------------------------------------------


def _cfg(ndim=2, groups=1, stride=1, input_dilation=1, dtype=jnp.float32, pet=None):
    spec = ConvSpec((stride,) * ndim, ((1, 1),) * ndim, (1,) * ndim, (input_dilation,) * ndim,
                    groups, False, None, pet)
    return ConvConfig((2, *(8,) * ndim, 4), (4, *(3,) * ndim, 4 // groups), jnp.dtype(dtype),
                      spec)


VERSION_TABLE = [
    # plugin, version, configuration, expected strategy
    ("jax-metal", "0.1.1", _cfg(), "xla"),
    ("jax-metal", "0.1.1", _cfg(stride=2), "xla"),
    ("jax-metal", "0.1.1", _cfg(input_dilation=2), "xla"),
    ("jax-metal", "0.0.7", _cfg(input_dilation=2), "xla"),
    ("jax-metal", "0.0.6", _cfg(input_dilation=2), "decomposed"),
    ("jax-metal", "0.0.6", _cfg(stride=2), "decomposed"),
    ("jax-metal", "0.1.1", _cfg(groups=2), "decomposed"),
    ("jax-metal", "0.1.1", _cfg(groups=4), "decomposed"),
    ("jax-metal", "0.1.1", _cfg(ndim=3), "decomposed"),
    ("jax-metal", "0.1.1", _cfg(ndim=1), "xla"),
    ("jax-metal", "0.1.1", _cfg(dtype=jnp.bfloat16), "xla-float32"),
    ("jax-metal", "0.1.1", _cfg(groups=2, dtype=jnp.bfloat16), "decomposed-float32"),
    ("jax-metal", "0.1.1", _cfg(pet=jnp.dtype(jnp.bfloat16)), "xla-float32"),
    ("jax-metal", "0.1.1", _cfg(dtype=jnp.float16), "xla"),
    ("jax-mps", "0.10.2", _cfg(groups=2), "decomposed"),
    ("jax-mps", "0.10.3", _cfg(groups=2), "xla"),
    ("jax-mps", "0.10.3", _cfg(groups=2, stride=2), "decomposed"),
    ("jax-mps", "0.10.11.dev845", _cfg(groups=2, stride=2), "decomposed"),
    ("jax-mps", "0.10.11", _cfg(groups=4, input_dilation=2), "decomposed"),
    ("jax-mps", "0.10.12.dev847", _cfg(groups=2, stride=2), "xla"),
    ("jax-mps", "0.11.1", _cfg(groups=2, stride=2), "xla"),
    ("jax-mps", "0.10.5", _cfg(stride=2), "xla"),
    ("jax-mps", "0.10.5", _cfg(ndim=3), "xla"),
    ("jax-mps", "0.10.5", _cfg(dtype=jnp.bfloat16), "xla"),
    ("jax-mps", None, _cfg(groups=2), "decomposed"),
    ("metaljax", "0.11.9", _cfg(groups=2, stride=2), "decomposed"),
    ("metaljax", "0.11.9", _cfg(groups=2), "xla"),
    ("metaljax", "0.11.9", _cfg(ndim=3), "xla"),
    ("metal-pjrt", None, _cfg(groups=2, stride=2, ndim=3), "xla"),
    ("metal-pjrt", None, _cfg(dtype=jnp.bfloat16), "xla"),
]


@pytest.mark.parametrize("plugin, version, cfg, expected", VERSION_TABLE)
def test_version_table(plugin, version, cfg, expected):
    assert _apple.route(cfg, plugin, version) == expected


@pytest.mark.parametrize("lower, higher", [
    ("0.10.11.dev845", "0.10.11"), ("0.10.11", "0.10.12.dev847"), ("0.0.6", "0.0.7"),
    ("0.0.7", "0.1.1"), ("0.9", "0.10.0"), ("0.11.0rc1", "0.11"), ("0.10.2", "0.10.10"),
])
def test_parse_version_orders_releases(lower, higher):
    assert _apple.parse_version(lower) < _apple.parse_version(higher)
    assert _apple.parse_version("0.11.0") == _apple.parse_version("0.11")


@pytest.mark.parametrize("name", ["decomposed", "im2col"])
def test_forced_decomposed_forms_run_rank4_on_apple(name):
    """The decomposed forms' patches and products of a 3-D convolution have five axes; on an
    Apple plugin a forced one runs the rank-4 form."""
    cfg = _cfg(ndim=3)
    for plugin in ("jax-metal", "jax-mps"):
        assert choose(cfg, name, None, Target(plugin, None)) == "decomposed-rank4"
    assert choose(cfg, name, None, Target("cpu")) == name  # the check can fail


def test_policy_uses_the_plugin_version_of_the_target():
    """A jax-mps that has the fixes keeps grouped strided convolutions on the plugin."""
    cfg = _cfg(groups=2, stride=2)
    assert choose(cfg, "auto", None, Target("jax-mps", "0.11.1")) == "xla"
    assert choose(cfg, "auto", None, Target("jax-mps", "0.10.11")) == "decomposed-rank4"
    # backend= describes the installed plugin (or, without one, its assumed version).
    assert _detect.target_for("jax-mps") == Target("jax-mps", _detect.installed_version("jax-mps"))
    assert _detect.target_for("jax-metal").version == (
        _detect.plugin_version("jax-metal", _detect.package_version) or "0.1.1")


def test_unknown_versions_assume_the_worst_except_where_convnn_pins_them():
    assert _apple.ASSUMED_VERSIONS["jax-metal"] == "0.1.1"  # convnn needs jax >= 0.5.0
    rules = _apple.active_rules("jax-mps", None)
    assert {r.last for r in rules} == {"0.10.2", "0.10.11"}
    assert _apple.active_rules("jax-mps", "0.11.1") == []
    assert [r.what for r in _apple.active_rules("jax-metal", "0.1.1")] == [
        r.what for r in (*_apple.RULES, *_apple.FLOAT32_RULES)
        if r.plugin == "jax-metal" and r.last is None]


def test_lowering_accepts_every_apple_backend():
    for backend in _apple.APPLE_BACKENDS:
        assert convnn.lowering("auto", backend=backend).backend == backend
    with pytest.raises(ValueError, match="jax-metal"):
        convnn.lowering("auto", backend="metal")  # a platform name, not a backend


# ---------------------------------------------------------------------------------------------
# Backend detection
# ---------------------------------------------------------------------------------------------


class FakeDevice:
    def __init__(self, platform, kind="Apple M2"):
        self.platform = platform
        self.device_kind = kind

    def __repr__(self):
        return f"{self.platform}(id=0)"


DETECTION = [
    # platform, installed packages, expected (plugin, version)
    ("METAL", {"jax-metal": "0.1.1", "jax": "0.5.0"}, ("jax-metal", "0.1.1")),
    ("metal", {"jax-metal": "0.1.1", "jax": "0.5.0"}, ("jax-metal", "0.1.1")),
    ("metal", {"metaljax": "0.11.9", "jax": "0.11.2"}, ("metaljax", "0.11.9")),
    ("METAL", {"metaljax": "0.11.9", "jax": "0.11.2"}, ("metaljax", "0.11.9")),
    # both installed: only one of them can load with the installed jax
    ("METAL", {"jax-metal": "0.1.1", "metaljax": "0.11.9", "jax": "0.11.2"},
     ("metaljax", "0.11.9")),
    ("metal", {"jax-metal": "0.1.1", "metaljax": "0.11.9", "jax": "0.5.0"},
     ("jax-metal", "0.1.1")),
    # built from source: no metadata; the platform's usual owner, version unknown
    ("METAL", {"jax": "0.5.0"}, ("jax-metal", None)),
    ("metal", {"jax": "0.11.2"}, ("metaljax", None)),
    ("mps", {"jax-mps": "0.10.11.dev845"}, ("jax-mps", "0.10.11.dev845")),
    ("mps", {"jax-metallib": "0.9.4"}, ("jax-metallib", "0.9.4")),
    ("mps", {}, ("jax-mps", None)),
    ("mtl", {"metal-pjrt-plugin": "0.1.0"}, ("metal-pjrt", "0.1.0")),
    ("mtl", {"metal-pjrt-core": "0.2.0"}, ("metal-pjrt", "0.2.0")),
    ("cpu", {"jax-metal": "0.1.1"}, (None, None)),
    ("gpu", {"jax-mps": "0.11.1"}, (None, None)),
]


@pytest.mark.parametrize("platform, packages, expected", DETECTION)
def test_apple_plugin_detection(platform, packages, expected):
    assert _backend.apple_plugin(platform, packages.get) == expected


@pytest.mark.parametrize("platform, packages, plugin, version, backend", [
    ("METAL", {"jax-metal": "0.1.1", "jaxlib": "0.5.0"}, "jax-metal", "0.1.1", "jax-metal"),
    ("mps", {"jax-mps": "0.11.1", "jaxlib": "0.11.1"}, "jax-mps", "0.11.1", "jax-mps"),
    ("metal", {"metaljax": "0.11.9", "jaxlib": "0.11.2"}, "metaljax", "0.11.9", "metaljax"),
    ("mtl", {"metal-pjrt-plugin": "0.1.0"}, "metal-pjrt", "0.1.0", "metal-pjrt"),
    ("mps", {"jax-metallib": "0.9.4"}, "jax-metallib", "0.9.4", None),
])
def test_backend_info_on_a_simulated_apple_gpu(monkeypatch, platform, packages, plugin, version,
                                               backend):
    devices = [FakeDevice(platform)]
    monkeypatch.setattr(jax, "devices", lambda platform=None: devices)
    info = convnn.backend_info(version_of=packages)
    assert (info.platform, info.plugin, info.plugin_version, info.backend) == (
        platform, plugin, version, backend)
    assert info.apple and info.device_kind == "Apple M2" and info.device_count == 1
    assert info.jaxlib_version == packages.get("jaxlib")
    text = repr(info)
    assert text.startswith("BackendInfo(") and f"plugin={plugin!r}" in text
    assert f"plugin_version={version!r}" in text and f"platform={platform!r}" in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.plugin = "x"  # type: ignore[misc]


def test_backend_info_on_cpu():
    info = convnn.backend_info(jax.devices("cpu")[0])
    assert (info.platform, info.backend, info.plugin, info.apple) == ("cpu", "cpu", None, False)
    assert info.jax_version == jax.__version__ and info.device_count == len(jax.devices("cpu"))
    assert "plugin" not in repr(info)
    with pytest.raises(TypeError, match=r"\[backend_info\] device"):
        convnn.backend_info("cpu")


@pytest.mark.parametrize("platform, packages, backend", [
    ("METAL", {}, "jax-metal"), ("mps", {}, "jax-mps"), ("mtl", {}, "metal-pjrt"),
    ("metal", {"metaljax": "0.11.9"}, "metaljax"),
])
def test_the_policy_detects_apple_platforms(monkeypatch, platform, packages, backend):
    """``"auto"`` on an Apple platform applies that plugin's table (no backend= needed)."""
    monkeypatch.setattr(_detect, "_DETECTED", {})
    monkeypatch.setattr(_detect, "package_version", packages.get)
    assert _detect.detect_backend(FakeDevice(platform)) == backend
    cfg = _cfg(ndim=3, groups=2, stride=2)
    expected = "xla" if backend == "metal-pjrt" else "decomposed-rank4"
    assert choose(cfg, "auto", None, FakeDevice(platform)) == expected


# ---------------------------------------------------------------------------------------------
# The doctor and its reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _selfcheck.CASES, ids=lambda c: c.name)
def test_doctor_cases_give_the_reference_what_the_call_means(case):
    """Each doctor case hands the package's float64 reference the arguments its convnn call
    means: the call's value and gradients in float64 (no rounding to hide a wrong mapping)."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(case.x_shape), rng.standard_normal(case.w_shape)
    fn = getattr(convnn, case.fn)
    out, vjp = jax.vjp(lambda a, b: fn(a, b, **case.kwargs), jnp.asarray(x), jnp.asarray(w))
    g = rng.standard_normal(out.shape)
    assert_close(out, case.ref(x, w), jnp.float64, what=f"{case.name} output")
    for got, exp, name in zip(vjp(jnp.asarray(g)), case.ref_vjp(x, w, g),
                              ("d/dinput", "d/dweight")):
        assert_close(got, exp, jnp.float64, what=f"{case.name} {name}")


def _doctor(*args, **env):
    environ = {k: v for k, v in os.environ.items() if k != "CONVNN_DOCTOR_BREAK"}
    return subprocess.run([sys.executable, "-m", "convnn", *args], capture_output=True,
                          text=True, env=environ | env, timeout=600)


def test_doctor_passes_on_cpu():
    proc = _doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for expected in (f"jax        {jax.__version__}", "platform='cpu'", 'policy "auto"',
                     f"all {len(_selfcheck.CASES)} convolutions agree"):
        assert expected in out, out
    for case in _selfcheck.CASES:
        assert f"{case.name:<26} ok " in out, out


@pytest.mark.slow  # a self-check subprocess (the fast tier runs one)
def test_doctor_applies_an_apple_policy_on_cpu():
    """The jax-metal table routes six of the cases to the decomposed strategy (its rank-4 form):
    they pass."""
    proc = _doctor("--backend", "jax-metal")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "jax-metal version 0.1.1 (assumed" in out and "3-D convolutions -> 'decomposed'" in out
    assert "[decomposed-rank4]" in out and "[xla]" in out


@pytest.mark.slow  # a self-check subprocess (the fast tier runs one)
def test_doctor_fails_clearly_with_a_broken_strategy():
    proc = _doctor(CONVNN_DOCTOR_BREAK="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    n = len(_selfcheck.CASES)
    assert f"result: MISMATCH in {n} of {n} convolutions" in out, out
    assert "d/dinput off by 5.0e-01" in out  # the broken strategy scales it by 1.5
    assert "d/dweight off" not in out and "output off" not in out  # only what is wrong
    assert "docs/apple-gpu.md" in out and 'convnn.lowering("decomposed")' in out
    # the same switch as a command-line option, kept out of --help
    usage = _doctor("--help")
    assert usage.returncode == 0 and "--strategy" in usage.stdout
    assert "break" not in usage.stdout
