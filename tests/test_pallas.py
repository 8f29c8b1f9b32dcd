"""The Pallas depthwise kernels (the ``"pallas"`` strategy), checked on the CPU.

Tier 1 (pure Python): the index geometry of the input gradient's phase decomposition against a
brute-force enumeration, and the ``supports`` predicate.
Tier 2: the kernels themselves, run in Pallas interpret mode (the same kernel bodies that the GPU
compiles: masked loads and stores, the rolling row loop, prefetching, tails), against the float64
reference: the value and both gradients, on a table of configurations and tilings.
Tier 3: the strategy behind the public API (``convnn.lowering("pallas")``), and the "auto" policy.

The GPU itself is exercised by ``benchmarks/bench_depthwise_gpu.py``, whose first section runs a
larger configuration table against the same reference before any timing.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import assert_close

import convnn
from convnn._lowering import STRATEGIES, ConvConfig, Target, _cuda, _pallas, choose
from convnn._lowering._pallas import STRIDES, common, tiling
from convnn._lowering._prologue import Prologue
from convnn._lowering._spec import ConvSpec
from convnn._reference import conv_general_ref, conv_general_ref_vjp

T = _pallas.Tiling


def make_spec(c, stride=(1, 1), padding=((1, 1), (1, 1)), flip=False, dilation=(1, 1),
              input_dilation=(1, 1), groups=None, preferred=None):
    return ConvSpec(stride=tuple(stride), padding=tuple(tuple(p) for p in padding),
                    kernel_dilation=tuple(dilation), input_dilation=tuple(input_dilation),
                    groups=c if groups is None else groups, flip=flip,
                    preferred_element_type=preferred)


# ---------------------------------------------------------------------------------------------
# Tier 1: geometry and the predicate
# ---------------------------------------------------------------------------------------------


GEOMETRY = [
    (size, k, s, lo, hi)
    for size, k, s in itertools.product((1, 2, 5, 8, 9), (1, 2, 3, 4, 7, 9), (1, 2))
    for lo, hi in ((0, 0), (1, 0), (0, 2), (k // 2, (k - 1) // 2), (k - 1, k - 1), (k + 1, 0))
    if size + lo + hi >= k
]


@pytest.mark.parametrize("size,k,s,lo,hi", GEOMETRY)
def test_input_grad_phases_cover_every_term_once(size, k, s, lo, hi):
    """dx[i] = sum over (o, t) with s*o + t - lo == i of g[o] * w[t]: the phases list each term
    once."""
    out = (size + lo + hi - k) // s + 1
    expected = sorted((i, o, t) for o in range(out) for t in range(k)
                      if 0 <= s * o + t - lo < size for i in [s * o + t - lo])
    geom, taps = _pallas.input_grad_geometry(size, k, s, lo, hi)
    assert geom.src_size == out and geom.out_size == size and geom.a == 1 and geom.m == s
    got = []
    for phase in range(geom.phases):
        for q in range(geom.count[phase]):
            i = geom.m * q + geom.p[phase]
            assert 0 <= i < size
            for j in range(geom.taps):
                o = geom.a * q + geom.b[phase] + j
                if taps[phase][j] >= 0 and 0 <= o < out:
                    got.append((i, o, taps[phase][j]))
    assert sorted(got) == expected
    # Every input position belongs to exactly one phase.
    assert sum(geom.count) == size


def test_forward_geometry_matches_the_definition():
    for size, k, s, lo, hi in GEOMETRY:
        g = _pallas.forward_geometry(size, k, s, lo, hi)
        assert g.count == ((size + lo + hi - k) // s + 1,)
        assert (g.a, g.b, g.m, g.p, g.taps, g.live) == (s, (-lo,), 1, (0,), k, -(-k // s))


SUPPORTS = [
    # (what, spec kwargs, x_shape, w_shape, dtype, expected)
    ("depthwise 3x3", {}, (2, 8, 8, 4), (4, 3, 3, 1), jnp.float32, True),
    ("depthwise 7x7 bf16", dict(padding=((3, 3), (3, 3))), (2, 8, 8, 4), (4, 7, 7, 1),
     jnp.bfloat16, True),
    ("9x9 asymmetric stride 2 f16", dict(stride=(2, 1), padding=((4, 0), (1, 3))),
     (1, 9, 9, 8), (8, 9, 9, 1), jnp.float16, True),
    ("bf16 into float32", dict(preferred=jnp.float32), (1, 8, 8, 4), (4, 3, 3, 1),
     jnp.bfloat16, True),
    ("kernel 11", dict(padding=((5, 5), (5, 5))), (1, 16, 16, 4), (4, 11, 11, 1), jnp.float32,
     False),
    ("stride 3", dict(stride=(3, 3)), (1, 8, 8, 4), (4, 3, 3, 1), jnp.float32, False),
    ("kernel dilation", dict(dilation=(2, 2)), (1, 8, 8, 4), (4, 3, 3, 1), jnp.float32, False),
    ("input dilation", dict(input_dilation=(2, 1)), (1, 8, 8, 4), (4, 3, 3, 1), jnp.float32,
     False),
    ("channel multiplier 2", {}, (1, 8, 8, 4), (8, 3, 3, 1), jnp.float32, False),
    ("grouped, 2 channels per group", dict(groups=2), (1, 8, 8, 4), (4, 3, 3, 2),
     jnp.float32, False),
    ("dense", dict(groups=1), (1, 8, 8, 4), (4, 3, 3, 4), jnp.float32, False),
    ("float64", {}, (1, 8, 8, 4), (4, 3, 3, 1), jnp.float64, False),
    ("float32 into float16", dict(preferred=jnp.float16), (1, 8, 8, 4), (4, 3, 3, 1),
     jnp.float32, False),
    ("window larger than the padded input", dict(padding=((0, 0), (0, 0))), (1, 2, 8, 4),
     (4, 3, 3, 1), jnp.float32, False),
    ("empty batch", {}, (0, 8, 8, 4), (4, 3, 3, 1), jnp.float32, False),
]


@pytest.mark.parametrize("what,kw,x_shape,w_shape,dtype,expected", SUPPORTS,
                         ids=[s[0] for s in SUPPORTS])
def test_supports(what, kw, x_shape, w_shape, dtype, expected):
    spec = make_spec(x_shape[-1], **kw)
    assert _pallas.supports(spec, x_shape, jnp.dtype(dtype), w_shape) is expected


@pytest.mark.parametrize("backend, expected", [("cuda", True), ("cpu", False), ("rocm", False),
                                               ("tpu", False), ("jax-metal", False)])
def test_the_strategy_computes_on_nvidia_gpus_only(backend, expected):
    """The device the convolution runs on decides (not JAX's default backend)."""
    cfg = ConvConfig((1, 8, 8, 4), (4, 3, 3, 1), jnp.dtype(jnp.float32), make_spec(4))
    assert STRATEGIES["pallas"].can_compute(cfg, Target(backend)) is expected


def test_default_tiling_is_powers_of_two():
    for kind, hw, c, k, dt, stride in itertools.product(
            ("correlate", "weight_grad"), ((56, 56), (7, 5), (112, 112)), (3, 96, 144),
            (1, 3, 7), (jnp.bfloat16, jnp.float32), (1, 2)):
        t = _pallas.default_tiling(kind, 256, hw, c, dt, (k, k), 1, stride)
        for size in (t.block_w, t.block_c, t.num_warps):
            assert size >= 1 and size & (size - 1) == 0, t
        assert 1 <= t.span <= 7, t
        assert t.columns <= max(1, 2 * hw[1]) and t.block_c <= max(1, 2 * c)
        # Width blocking: only at stride 1; for large kernels the columns cover the row.
        assert t.span == 1 or stride == 1, t
        if kind == "correlate" and k == 7 and stride == 1:
            assert t.span > 1 and -(-hw[1] // t.columns) * t.columns - hw[1] <= 1, t


@pytest.mark.parametrize("taps,a,span", [(7, 1, 7), (7, 1, 4), (3, 2, 1), (3, 2, 2), (1, 1, 3)])
def test_prefetched_shifts_cover_every_source_column(taps, a, span):
    shifts = a * (span - 1) + taps
    ahead = common._ahead(shifts, T(block_w=4, block_c=4, span=span), a)
    # A thread's source columns step by a*span: the prefetched shifts hit every residue once.
    assert sorted(sh % (a * span) for sh in ahead) == list(range(a * span))
    assert 0 <= ahead.start and ahead.stop <= shifts
    centre = common._ahead(shifts, T(block_w=4, block_c=4, span=span, prefetch_all=False), a)
    assert list(centre) == [shifts // 2]


@pytest.mark.parametrize("width,expected", [(56, (8, 7)), (28, (4, 7)), (14, (2, 7)),
                                            (7, (1, 7)), (64, (8, 4)), (16, (4, 4)), (3, (1, 3))])
def test_width_cover(width, expected):
    assert tiling._width_cover(width) == expected


# ---------------------------------------------------------------------------------------------
# Tier 2: the kernels in interpret mode against the float64 reference
# ---------------------------------------------------------------------------------------------

# (name, x_shape, kernel, stride, padding, flip, dtype, correlate tiling, weight-grad tiling)
KERNELS = [
    # column, row and channel tiles with a channel tail (5 = 4 + 1), channel groups of 2
    # swapped, weights re-read every iteration, prefetch 1.
    ("3x3 tiles and tails", (2, 7, 6, 5), (3, 3), (1, 1), ((1, 1), (1, 1)), False, jnp.float32,
     T(block_w=4, block_c=4, rows=3, num_warps=1, prefetch=1, vector=2),
     T(block_w=4, block_c=4, rows=3, num_warps=1, prefetch=1, vector=2)),
    # the default tilings of a 7x7 kernel (two channels per thread, weights held in registers,
    # 4 and 7 consecutive columns per thread: widths 8 and 14).
    ("7x7 default tiling", (1, 9, 8, 4), (7, 7), (1, 1), ((3, 3), (3, 3)), False, jnp.float32,
     None, None),
    ("7x7 default tiling, 7 columns per thread", (2, 8, 14, 5), (7, 7), (1, 1),
     ((3, 3), (3, 3)), False, jnp.bfloat16, None, None),
    # stride 2 (input gradient in 2 x 2 phases), asymmetric padding, flip, bfloat16; one channel
    # per thread (channels-first tiles).
    ("5x3 stride (2, 1) flip", (2, 8, 9, 6), (5, 3), (2, 1), ((2, 1), (0, 2)), True,
     jnp.bfloat16, T(block_w=8, block_c=4, rows=2, num_warps=1, vector=1, hold_weights=True),
     T(block_w=4, block_c=8, num_warps=1, prefetch=3, hold_weights=True)),
    # even kernel, stride 2, float16; several images per weight-gradient program with a tail.
    ("4x2 stride 2 even kernel", (5, 7, 7, 3), (4, 2), (2, 2), ((2, 1), (1, 0)), False,
     jnp.float16, T(block_w=2, block_c=2, num_warps=1, prefetch=0, hold_weights=True),
     T(block_w=2, block_c=4, rows=2, num_warps=1, prefetch=0, images=2, vector=1,
       hold_weights=True)),
    # the rows before a tile's first output and after its last cotangent row as unrolled code
    # (unrolled_edges=True; the other cases run them as masked loop iterations, the default):
    # row tiles, stride 2 in one axis (phases), a kernel taller than the tile, prefetch.
    ("5x3 unrolled edges", (2, 9, 6, 5), (5, 3), (2, 1), ((2, 1), (1, 1)), False, jnp.float32,
     T(block_w=4, block_c=4, rows=2, num_warps=1, prefetch=1, vector=2, hold_weights=True,
       unrolled_edges=True),
     T(block_w=4, block_c=4, rows=2, num_warps=1, prefetch=1, vector=2, unrolled_edges=True)),
    ("7x7 packed, unrolled edges", (2, 9, 14, 6), (7, 7), (1, 1), ((3, 3), (2, 4)), False,
     jnp.bfloat16,
     T(block_w=2, block_c=4, rows=4, num_warps=1, vector=2, hold_weights=True, span=7,
       packed=True, unrolled_edges=True),
     T(block_w=2, block_c=4, rows=4, num_warps=1, prefetch=0, vector=2, span=7, packed=True,
       unrolled_edges=True)),
    # 1x1 kernel, stride 2 (one of the two phases has no tap at all); default tilings.
    ("1x1 stride 2", (2, 5, 6, 3), (1, 1), (2, 2), ((0, 0), (0, 0)), False, jnp.float32,
     None, None),
    # the default tilings of a 3x3 kernel (16-byte vectors); in bfloat16, packed channel pairs
    # (10 channels: a tile of 8 pairs and a tail of 5).
    ("3x3 default tiling", (2, 6, 5, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), False, jnp.float32,
     None, None),
    ("3x3 bf16 default tiling", (2, 6, 9, 10), (3, 3), (1, 1), ((1, 1), (1, 1)), False,
     jnp.bfloat16, None, None),
    # register blocking along the width (span): 4 and 3 columns per thread with column tails
    # (11 = 2 * 4 + 3, 10 = 2 * 3 + 3 + 1), held weights, bfloat16.
    ("7x7 span", (1, 9, 11, 4), (7, 7), (1, 1), ((3, 3), (3, 3)), False, jnp.bfloat16,
     T(block_w=2, block_c=4, num_warps=1, vector=2, hold_weights=True, span=4),
     T(block_w=2, block_c=4, num_warps=1, span=3)),
    # span with stride 2 (shifts a*j + tw) and the input gradient's phases, flip, channel tail;
    # only the centre shift prefetched (correlation), every column (weight gradient).
    ("3x3 stride 2 span", (2, 9, 10, 5), (3, 3), (2, 2), ((1, 0), (1, 1)), True, jnp.float32,
     T(block_w=2, block_c=4, rows=3, num_warps=1, prefetch=1, span=2, prefetch_all=False),
     T(block_w=4, block_c=2, rows=2, num_warps=1, prefetch=1, images=2, span=2)),
    # span, width stride 2 only, float16.
    ("5x3 stride (1, 2) span", (2, 8, 13, 3), (5, 3), (1, 2), ((2, 2), (1, 1)), False,
     jnp.float16, T(block_w=2, block_c=2, num_warps=1, hold_weights=True, span=3),
     T(block_w=2, block_c=2, num_warps=1, hold_weights=True, span=3)),
    # channel pairs loaded as 32-bit words (packed): 7 columns per thread, a pair tail (6
    # channels = 2 + 1 pairs of 2-pair tiles), row tiles; bfloat16.
    ("7x7 packed", (2, 9, 14, 6), (7, 7), (1, 1), ((3, 3), (2, 4)), False, jnp.bfloat16,
     T(block_w=2, block_c=4, rows=4, num_warps=1, vector=2, hold_weights=True, span=7, packed=True),
     T(block_w=2, block_c=4, rows=4, num_warps=1, prefetch=0, vector=2, span=7, packed=True)),
    # packed float16 with stride 2 (the input gradient's phases), flip, 16-byte vectors of
    # pairs, several images per weight-gradient program; packed is ignored for the
    # odd channel count of the next case.
    ("5x3 stride 2 packed", (3, 9, 10, 10), (5, 3), (2, 2), ((2, 1), (1, 1)), True,
     jnp.float16, T(block_w=4, block_c=8, num_warps=1, prefetch=1, span=2, packed=True),
     T(block_w=2, block_c=4, num_warps=1, prefetch=1, images=2, vector=4, packed=True)),
    ("3x3 packed, odd channels", (2, 6, 7, 5), (3, 3), (1, 1), ((1, 1), (1, 1)), False,
     jnp.bfloat16, T(block_w=4, block_c=4, num_warps=1, vector=2, span=2, packed=True),
     T(block_w=4, block_c=4, num_warps=1, prefetch=1, vector=2, span=2, packed=True)),
]


def _reference(x, w, g, stride, padding, flip):
    kw = dict(stride=stride, padding_lo=[p[0] for p in padding],
              padding_hi=[p[1] for p in padding], kernel_dilation=(1, 1),
              input_dilation=(1, 1), groups=x.shape[-1], flip=flip)
    return (conv_general_ref(x, w, **kw), *conv_general_ref_vjp(x, w, g, **kw))


#: The cases of the fast tier (a few seconds each in interpret mode on a 2-core CPU); the others,
#: 20 s to 2 min each, are in the slow tier.
FAST_KERNELS = {"3x3 tiles and tails", "1x1 stride 2"}


@pytest.mark.interpret
@pytest.mark.parametrize("name,x_shape,kernel,stride,padding,flip,dtype,tc,tw", [
    pytest.param(*k, id=k[0], marks=[] if k[0] in FAST_KERNELS else [pytest.mark.slow])
    for k in KERNELS])
def test_kernels_match_the_reference(name, x_shape, kernel, stride, padding, flip, dtype, tc, tw):
    c = x_shape[-1]
    spec = make_spec(c, stride, padding, flip)
    rng = np.random.default_rng(sum(x_shape) + sum(kernel))
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    w = jnp.asarray(rng.standard_normal((c, *kernel, 1)), dtype)
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    out_shape = conv_general_ref(x64[:1], w64, stride=stride, padding_lo=[p[0] for p in padding],
                                 padding_hi=[p[1] for p in padding], kernel_dilation=(1, 1),
                                 input_dilation=(1, 1), groups=c, flip=flip).shape[1:]
    g = jnp.asarray(rng.standard_normal((x_shape[0], *out_shape)), dtype)
    ref, ref_dx, ref_dw = _reference(x64, w64, np.asarray(g, np.float64), stride, padding, flip)

    @jax.jit
    def run(x, w, g):
        out = _pallas.forward(x, w, spec, tiling=tc, interpret=True)
        dx = _pallas.input_grad(g, w, x.shape, x.dtype, spec, tiling=tc, interpret=True)
        dw = _pallas.weight_grad(x, g, w.shape, w.dtype, spec, tiling=tw, interpret=True)
        return out, dx, dw

    out, dx, dw = run(x, w, g)
    assert out.dtype == dx.dtype == dw.dtype == dtype
    assert_close(out, ref, dtype, what=f"{name}: value")
    assert_close(dx, ref_dx, dtype, what=f"{name}: input gradient")
    assert_close(dw, ref_dw, dtype, what=f"{name}: weight gradient")


#: The prologue ``act(x * scale + shift)`` applied on load: (case of KERNELS, activation,
#: forward pass, weight gradient). The fast tier runs the float32 tiles with their tails; the
#: rest (the packed bfloat16 default tiling of MobileNetV2's layers among them) are slow.
PROLOGUES = [
    ("3x3 tiles and tails", "relu6", "pallas", "pallas"),
    ("3x3 bf16 default tiling", "relu6", "pallas", "pallas"),
    ("5x3 stride (2, 1) flip", "silu", "pallas", "pallas"),
    ("4x2 stride 2 even kernel", "relu", "pallas", "pallas"),
    ("7x7 packed, unrolled edges", None, "pallas", "pallas"),
    ("3x3 stride 2 span", "relu6", "xla", "xla"),
    ("5x3 stride 2 packed", "silu", "pallas", "xla"),
]
FAST_PROLOGUES = {"3x3 tiles and tails"}


def _prologue_reference(x, scale, shift, w, g, activation, stride, padding, flip):
    """The value and the gradients in x, scale, shift and w of ``conv(act(x*scale+shift), w)``
    in float64, from the definition: the chain rule through the float64 convolution."""
    z = x * scale + shift
    act = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0),
           "relu6": lambda v: np.clip(v, 0, 6), "silu": lambda v: v / (1 + np.exp(-v))}
    slope = {None: lambda v: np.ones_like(v), "relu": lambda v: (v > 0) * 1.0,
             "relu6": lambda v: ((v > 0) & (v < 6)) * 1.0,
             "silu": lambda v: (1 / (1 + np.exp(-v))) * (1 + v * (1 - 1 / (1 + np.exp(-v))))}
    out, da, dw = _reference(act[activation](z), w, g, stride, padding, flip)
    dz = da * slope[activation](z)
    return out, dz * scale, (dz * x).sum((0, 1, 2)), dz.sum((0, 1, 2)), dw


@pytest.mark.interpret
@pytest.mark.parametrize("name,activation,forward_pass,weight_gradient", [
    pytest.param(*p, id=f"{p[0]}-{p[1]}-{p[2]}-{p[3]}",
                 marks=[] if p[0] in FAST_PROLOGUES else [pytest.mark.slow])
    for p in PROLOGUES])
def test_prologue_matches_the_reference(name, activation, forward_pass, weight_gradient):
    """The kernels apply the prologue to every tile they load and keep the padding zero; the
    custom derivative gives all four gradients."""
    _, x_shape, kernel, stride, padding, flip, dtype, tc, tw = next(
        k for k in KERNELS if k[0] == name)
    c = x_shape[-1]
    spec = make_spec(c, stride, padding, flip)
    rng = np.random.default_rng(sum(x_shape) + 17)
    x = jnp.asarray(rng.standard_normal(x_shape) * 2, dtype)
    w = jnp.asarray(rng.standard_normal((c, *kernel, 1)), dtype)
    # Shifts past zero, so that the padding (zero) differs from act(shift), and negative scales.
    scale = jnp.asarray(rng.uniform(-1.5, 2.0, c), jnp.float32)
    shift = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
    prologue = Prologue(scale, shift, activation)

    def f(a, s, b, v):
        return _pallas.depthwise(a, v, spec, prologue=Prologue(s, b, activation),
                                 forward_pass=forward_pass, weight_gradient=weight_gradient,
                                 tiling=tc, weight_grad_tiling=tw, interpret=True)

    out, vjp = jax.jit(lambda *a: jax.vjp(f, *a))(x, prologue.scale, prologue.shift, w)
    g = jnp.asarray(rng.standard_normal(out.shape), dtype)
    got = (out, *jax.jit(vjp)(g))
    want = _prologue_reference(*(np.asarray(a, np.float64) for a in (x, scale, shift, w, g)),
                               activation, stride, padding, flip)
    assert out.shape == want[0].shape
    whats = ("value", "input gradient", "scale gradient", "shift gradient", "weight gradient")
    dtypes = (dtype, dtype, jnp.float32, jnp.float32, dtype)
    for a, b, what, want_dtype in zip(got, want, whats, dtypes):
        assert a.dtype == want_dtype, what
        assert_close(a, b, dtype, what=f"{name}: {what}")


@pytest.mark.interpret
@pytest.mark.slow
@settings(max_examples=8, deadline=None, derandomize=True)
@given(data=st.data())
def test_folded_edges_equal_unrolled_edges(data):
    """Folding a tile's edges into the row loop adds the same terms in the same order (and
    zeros), so the folded kernels equal the unrolled ones, whatever the geometry and the row
    tiles: up to a few units in the last place, since XLA on the CPU contracts some
    multiply-adds into fused ones in one program and not in the other (a missing or doubled
    term would differ by the size of a term)."""
    k = (data.draw(st.integers(1, 7)), data.draw(st.integers(1, 5)))
    stride = (data.draw(st.sampled_from(STRIDES)), data.draw(st.sampled_from(STRIDES)))
    padding = tuple((data.draw(st.integers(0, k[i] - 1)), data.draw(st.integers(0, k[i] - 1)))
                    for i in range(2))
    h, w_ = (data.draw(st.integers(max(1, k[i] - sum(padding[i])), 12)) for i in range(2))
    c = data.draw(st.integers(1, 5))
    rows = data.draw(st.integers(0, 4))
    prefetch = data.draw(st.integers(0, 2))
    span = data.draw(st.integers(1, 3))
    spec = make_spec(c, stride, padding)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = jnp.asarray(rng.standard_normal((2, h, w_, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((c, *k, 1)), jnp.float32)
    g = jnp.asarray(rng.standard_normal(jax.eval_shape(
        lambda x, w: _pallas.forward(x, w, spec, interpret=True), x, w).shape), jnp.float32)

    def run(unrolled):
        tc = T(block_w=2, block_c=2, rows=rows, num_warps=1, prefetch=prefetch, vector=1,
               hold_weights=True, span=span, unrolled_edges=unrolled)
        tw = T(block_w=2, block_c=2, rows=rows, num_warps=1, prefetch=prefetch, span=span,
               unrolled_edges=unrolled)
        return jax.jit(lambda x, w, g: (
            _pallas.forward(x, w, spec, tiling=tc, interpret=True),
            _pallas.input_grad(g, w, x.shape, x.dtype, spec, tiling=tc, interpret=True),
            _pallas.weight_grad(x, g, w.shape, w.dtype, spec, tiling=tw, interpret=True),
        ))(x, w, g)

    for what, a, b in zip(("value", "input gradient", "weight gradient"), run(False), run(True)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                                   err_msg=what)


@pytest.mark.interpret
@pytest.mark.slow
def test_custom_vjp_and_preferred_element_type():
    """``depthwise`` differentiates through its own kernels; bfloat16 in, float32 out."""
    c = 4
    spec = make_spec(c, padding=((1, 0), (0, 1)), preferred=jnp.float32)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, c)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((c, 2, 2, 1)), jnp.bfloat16)
    g = jnp.asarray(rng.standard_normal((2, 6, 5, c)), jnp.float32)
    out, vjp = jax.vjp(lambda a, b: _pallas.depthwise(a, b, spec, interpret=True), x, w)
    dx, dw = vjp(g)
    ref, ref_dx, ref_dw = _reference(np.asarray(x, np.float64), np.asarray(w, np.float64),
                                     np.asarray(g, np.float64), (1, 1), spec.padding, False)
    assert out.dtype == jnp.float32 and dx.dtype == dw.dtype == jnp.bfloat16
    assert_close(out, ref, jnp.float32, what="value (exact float32 accumulation of bf16 inputs)")
    assert_close(dx, ref_dx, jnp.bfloat16, what="input gradient")
    assert_close(dw, ref_dw, jnp.bfloat16, what="weight gradient")
    jaxpr = str(jax.make_jaxpr(jax.grad(
        lambda a, b: _pallas.depthwise(a, b, spec, interpret=True).sum(), argnums=(0, 1)))(x, w))
    assert "conv_general_dilated" not in jaxpr and jaxpr.count("pallas_call") == 3


@pytest.mark.interpret
@pytest.mark.slow
def test_packed_bfloat16_input_with_float32_output():
    """Packed 16-bit sources with a float32 output store each channel of a pair on its own."""
    c = 6
    spec = make_spec(c, padding=((2, 1), (1, 2)), preferred=jnp.float32)
    rng = np.random.default_rng(4)
    x, w = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in ((2, 7, 9, c), (c, 4, 4, 1)))
    tiling = T(block_w=4, block_c=4, num_warps=1, prefetch=1, vector=2, hold_weights=True,
               span=3, packed=True)
    out = _pallas.forward(x, w, spec, tiling=tiling, interpret=True)
    ref = conv_general_ref(np.asarray(x, np.float64), np.asarray(w, np.float64), stride=(1, 1),
                           padding_lo=[2, 1], padding_hi=[1, 2], kernel_dilation=(1, 1),
                           input_dilation=(1, 1), groups=c, flip=False)
    assert out.dtype == jnp.float32
    assert_close(out, ref, jnp.float32, what="value")


def test_pack_puts_the_even_channel_in_the_low_half():
    a = jnp.asarray([[1.0, 2.0, -3.0, 0.5]], jnp.bfloat16)
    words = np.asarray(common._pack(a))
    bits = np.asarray(a).view(np.uint16).astype(np.uint32)
    np.testing.assert_array_equal(words, [[bits[0, 0] | bits[0, 1] << 16,
                                           bits[0, 2] | bits[0, 3] << 16]])
    np.testing.assert_array_equal(np.asarray(common._unpack(common._pack(a), a.dtype)),
                                  np.asarray(a))


@pytest.mark.interpret
def test_xla_derivatives_use_xlas_gradient():
    c = 4
    spec = make_spec(c)
    x, w = jnp.ones((1, 6, 5, c), jnp.bfloat16), jnp.ones((c, 3, 3, 1), jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(jax.grad(
        lambda a, b: _pallas.depthwise_with_xla_derivatives(a, b, spec, interpret=True)
        .astype(jnp.float32).sum(),
        argnums=(0, 1)))(x, w))
    assert jaxpr.count("pallas_call") == 1 and "conv_general_dilated" in jaxpr


MIXED = [
    # (x shape, kernel, stride, padding, flip, dtype, preferred output type)
    ((2, 9, 8, 5), (3, 3), (1, 1), ((1, 1), (1, 1)), False, jnp.bfloat16, None),
    ((2, 9, 10, 3), (4, 3), (2, 1), ((2, 1), (0, 2)), True, jnp.float16, None),
    ((1, 11, 9, 4), (7, 7), (2, 2), ((3, 3), (3, 3)), False, jnp.float32, None),
    ((2, 6, 7, 4), (5, 5), (1, 1), ((2, 2), (2, 2)), False, jnp.bfloat16, jnp.float32),
]


@pytest.mark.interpret
@pytest.mark.slow
@pytest.mark.parametrize("x_shape,kernel,stride,padding,flip,dtype,preferred", MIXED)
def test_mixed_backward_pairs_the_pallas_input_gradient_with_xlas_weight_gradient(
        x_shape, kernel, stride, padding, flip, dtype, preferred):
    c = x_shape[-1]
    spec = make_spec(c, stride, padding, flip, preferred=preferred)
    rng = np.random.default_rng(sum(x_shape) + 5)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    w = jnp.asarray(rng.standard_normal((c, *kernel, 1)), dtype)

    def f(a, b):
        return _pallas.depthwise(a, b, spec, weight_gradient="xla", interpret=True)

    out, vjp = jax.vjp(f, x, w)
    assert out.dtype == (preferred or dtype)
    g = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    dx, dw = vjp(g)
    ref = _reference(np.asarray(x, np.float64), np.asarray(w, np.float64),
                     np.asarray(g, np.float64), stride, padding, flip)
    assert out.shape == ref[0].shape and dx.dtype == dw.dtype == dtype
    for got, want, what in zip((out, dx, dw), ref, ("value", "input gradient", "weight gradient")):
        assert_close(got, want, dtype if what != "value" else out.dtype, what=what)
    jaxpr = str(jax.make_jaxpr(lambda a, b, t: jax.vjp(f, a, b)[1](t))(x, w, g))
    # The forward and input-gradient kernels; the weight gradient is XLA's convolution.
    assert jaxpr.count("pallas_call") == 2 and jaxpr.count("conv_general_dilated") == 1


def test_depthwise_rejects_an_unknown_kernel():
    spec = make_spec(2)
    x, w = jnp.ones((1, 4, 4, 2), jnp.float32), jnp.ones((2, 3, 3, 1), jnp.float32)
    with pytest.raises(ValueError, match="weight_gradient"):
        _pallas.depthwise(x, w, spec, weight_gradient="cudnn", interpret=True)
    with pytest.raises(ValueError, match="forward_pass"):
        _pallas.depthwise(x, w, spec, forward_pass="cudnn", interpret=True)


XLA_FORWARD = [
    # (x shape, kernel, stride, padding, flip, dtype, weight gradient, Pallas kernels in the
    # gradient)
    ((2, 9, 8, 4), (3, 3), (2, 2), ((1, 1), (1, 1)), False, jnp.bfloat16, "xla", 1),
    ((3, 10, 11, 5), (5, 5), (2, 2), ((2, 1), (2, 2)), True, jnp.float32, "pallas", 2),
]


@pytest.mark.interpret
@pytest.mark.slow
@pytest.mark.parametrize("x_shape,kernel,stride,padding,flip,dtype,backward,kernels",
                         XLA_FORWARD)
def test_xla_forward_with_the_pallas_gradients(x_shape, kernel, stride, padding, flip, dtype,
                                               backward, kernels):
    """``forward_pass="xla"``: XLA's forward pass, then the Pallas input gradient and the weight
    gradient ``weight_gradient`` names."""
    c = x_shape[-1]
    spec = make_spec(c, stride, padding, flip)
    rng = np.random.default_rng(sum(x_shape) + 9)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    w = jnp.asarray(rng.standard_normal((c, *kernel, 1)), dtype)

    def f(a, b):
        return _pallas.depthwise(a, b, spec, forward_pass="xla", weight_gradient=backward,
                                 interpret=True)

    out, vjp = jax.vjp(f, x, w)
    g = jnp.asarray(rng.standard_normal(out.shape), dtype)
    ref = _reference(np.asarray(x, np.float64), np.asarray(w, np.float64),
                     np.asarray(g, np.float64), stride, padding, flip)
    assert out.shape == ref[0].shape and out.dtype == dtype
    for got, want, what in zip((out, *vjp(g)), ref, ("value", "input gradient",
                                                     "weight gradient")):
        assert_close(got, want, dtype, what=what)
    assert "pallas_call" not in str(jax.make_jaxpr(f)(x, w))
    jaxpr = str(jax.make_jaxpr(lambda a, b, t: jax.vjp(f, a, b)[1](t))(x, w, g))
    assert jaxpr.count("pallas_call") == kernels
    assert jaxpr.count("conv_general_dilated") == 1 + (2 - kernels)


@pytest.mark.interpret
@pytest.mark.slow
def test_xla_backward_supports_forward_mode_and_second_order():
    """``depthwise_with_xla_derivatives`` is a custom_jvp with XLA's tangent: jvp, grad and
    Hessians all work and equal the float64 reference's; the forward pass stays the Pallas
    kernel."""
    c = 3
    spec = make_spec(c, stride=(2, 1), padding=((1, 2), (0, 1)))
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.standard_normal((2, 7, 5, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((c, 3, 2, 1)), jnp.float32)
    tx = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    tw = jnp.asarray(rng.standard_normal(w.shape), jnp.float32)

    def f(a, b):
        return _pallas.depthwise_with_xla_derivatives(a, b, spec, interpret=True)

    kw = dict(stride=(2, 1), padding_lo=[1, 0], padding_hi=[2, 1], kernel_dilation=(1, 1),
              input_dilation=(1, 1), groups=c, flip=False)
    x64, w64, tx64, tw64 = (np.asarray(a, np.float64) for a in (x, w, tx, tw))
    out, tangent = jax.jvp(f, (x, w), (tx, tw))
    assert_close(out, conv_general_ref(x64, w64, **kw), jnp.float32, what="value")
    # Bilinear: the tangent is conv(tx, w) + conv(x, tw).
    assert_close(tangent, conv_general_ref(tx64, w64, **kw) + conv_general_ref(x64, tw64, **kw),
                 jnp.float32, what="tangent")
    _, only_x = jax.jvp(lambda a: f(a, w), (x,), (tx,))
    assert_close(only_x, conv_general_ref(tx64, w64, **kw), jnp.float32, what="tangent in x")
    # Hessian of 0.5 * |conv(x, w)|^2 in w: H[i, j] = <conv(x, e_i), conv(x, e_j)>.
    hess = jax.hessian(lambda b: 0.5 * jnp.sum(f(x, b) ** 2))(w).reshape(w.size, w.size)
    basis = np.eye(w.size).reshape(w.size, *w.shape)
    cols = np.stack([conv_general_ref(x64, e, **kw).ravel() for e in basis], axis=1)
    assert_close(hess, cols.T @ cols, jnp.float32, what="Hessian")
    jaxpr = str(jax.make_jaxpr(f)(x, w))
    assert jaxpr.count("pallas_call") == 1 and "conv_general_dilated" not in jaxpr


@pytest.mark.interpret
def test_pallas_backward_is_reverse_mode_only():
    """The Pallas gradients are a custom_vjp: forward mode is refused by JAX (documented)."""
    spec = make_spec(2)
    x, w = jnp.ones((1, 4, 4, 2), jnp.float32), jnp.ones((2, 3, 3, 1), jnp.float32)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda a: _pallas.depthwise(a, w, spec, interpret=True), (x,), (x,))


# ---------------------------------------------------------------------------------------------
# Tier 3: the strategy behind the public API, and the "auto" policy
# ---------------------------------------------------------------------------------------------


@pytest.mark.interpret
@pytest.mark.slow
def test_public_api_under_lowering_pallas():
    """float32 5x5 at stride 2 on a (described) NVIDIA GPU: XLA's forward pass and both Pallas
    gradients; the strategy ``explain`` names computes the reference's values."""
    c = 3
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((c, 5, 5, 1)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 3, 3, c)), jnp.float32)
    with convnn.lowering("pallas"):
        e = convnn.explain(convnn.conv2d, x, w, stride=2, padding=2, groups=c, backend="cuda")
    assert e.strategy == "pallas[forward=xla]" and e.rule.startswith("forced")
    assert "Pallas" not in e.forward and "Pallas" in e.input_grad and "Pallas" in e.weight_grad
    spec = e.config.spec

    def f(a, b):
        return STRATEGIES[e.strategy].fn(a, b, spec, interpret=True)

    jaxpr = str(jax.make_jaxpr(jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(x, w))
    assert jaxpr.count("pallas_call") == 2 and jaxpr.count("conv_general_dilated") == 1
    out, vjp = jax.jit(lambda a, b: jax.vjp(f, a, b))(x, w)
    ref = _reference(np.asarray(x, np.float64), np.asarray(w, np.float64),
                     np.asarray(g, np.float64), (2, 2), ((2, 2), (2, 2)), False)
    for got, want, what in zip((out, *vjp(g)), ref, ("value", "input gradient",
                                                     "weight gradient")):
        assert_close(got, want, jnp.float32, what=what)


def _config(kernel, dtype, c_out=16, stride=(1, 1), x_shape=(8, 28, 28, 16), preferred=None):
    k, c = kernel, x_shape[-1]
    spec = make_spec(c, stride=stride, padding=((k // 2, k // 2), (k // 2, k // 2)),
                     preferred=preferred)
    return ConvConfig(x_shape, (c_out * c // 16, k, k, 1), jnp.dtype(dtype), spec)


AUTO_CUDA = [
    # (kernel, dtype, channel multiplier, stride, on an NVIDIA GPU, expected, other _config
    #  arguments)
    (7, jnp.float32, 1, (1, 1), True, "pallas", {}),
    (7, jnp.bfloat16, 1, (1, 1), True, "pallas", {}),
    (9, jnp.float16, 1, (2, 2), True, "pallas", {}),
    (5, jnp.float32, 1, (1, 1), True, "pallas", {}),
    (7, jnp.float32, 2, (1, 1), True, "mixed", {}),  # channel multiplier 2: no Pallas kernel
    (7, jnp.float32, 1, (1, 1), False, "mixed", {}),  # on a CPU: the Pallas kernels do not apply
    (7, jnp.bfloat16, 1, (1, 1), False, "xla", {}),
    # small bfloat16 kernels: the packed tiles, at stride 1, an even number of channels, a
    # bfloat16 output and outputs at least 14 wide.
    (3, jnp.bfloat16, 1, (1, 1), True, "pallas", {}),
    (3, jnp.bfloat16, 1, (1, 1), True, "pallas", dict(x_shape=(8, 5, 14, 16))),
    (3, jnp.bfloat16, 1, (1, 1), True, "xla", dict(x_shape=(8, 28, 13, 16))),
    (3, jnp.bfloat16, 1, (1, 1), True, "xla", dict(x_shape=(8, 28, 28, 15))),
    (3, jnp.bfloat16, 1, (1, 1), True, "xla", dict(preferred=jnp.float32)),
    (3, jnp.float16, 1, (1, 1), True, "xla", {}),
    (3, jnp.float32, 1, (1, 1), True, "xla", {}),
    # 3x3 at stride 2 in both axes (XLA's forward pass, the Pallas input gradient), in every
    # dtype, with no wider output; 5x5 kernels at strides 1 and 2.
    (3, jnp.bfloat16, 1, (2, 2), True, "pallas", {}),
    (3, jnp.float16, 1, (2, 2), True, "pallas", {}),
    (3, jnp.float32, 1, (2, 2), True, "pallas", dict(x_shape=(8, 7, 7, 15))),
    (3, jnp.bfloat16, 1, (2, 2), True, "xla", dict(preferred=jnp.float32)),
    (3, jnp.bfloat16, 1, (2, 1), True, "xla", {}),
    (5, jnp.bfloat16, 1, (1, 1), True, "pallas", {}),
    (5, jnp.float16, 1, (2, 2), True, "pallas", {}),
    (5, jnp.float32, 1, (1, 1), False, "xla", {}),
]


@pytest.mark.parametrize("kernel,dtype,mult,stride,gpu,expected,more", AUTO_CUDA)
def test_auto_policy_on_cuda(kernel, dtype, mult, stride, gpu, expected, more):
    cfg = _config(kernel, dtype, 16 * mult, stride, **more)
    device = Target("cuda" if gpu else "cpu")
    assert choose(cfg, "auto", "cuda", device).split("[")[0] == expected


def test_forced_pallas_on_a_cpu_device_falls_back_to_xla():
    """The device the call runs on is asked, whatever JAX's default backend is."""
    cfg = _config(7, jnp.float32)
    assert choose(cfg, "pallas", "cuda", Target("cuda")) == "pallas"
    assert choose(cfg, "pallas", "cuda", Target("cpu")) == "xla"
    assert choose(cfg, "pallas", None, jax.devices("cpu")[0]) == "xla"
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((4, 3, 3, 1))
    with convnn.lowering("pallas"):
        jaxpr = str(jax.make_jaxpr(lambda a, b: convnn.conv2d(
            a, b, padding=1, groups=4, stream=jax.devices("cpu")[0]))(x, w))
        e = convnn.explain(convnn.conv2d, x, w, padding=1, groups=4)
    assert "pallas_call" not in jaxpr and "conv_general_dilated" in jaxpr
    assert e.strategy == "xla" and "'pallas' cannot compute it on cpu" in e.rule


WEIGHT_KERNEL = [
    # (kernel, dtype, stride, expected, channels): XLA's weight gradient where it was
    # measured faster.
    ((7, 7), jnp.bfloat16, (1, 1), "pallas", 4),
    ((7, 7), jnp.float16, (1, 1), "pallas", 4),
    ((9, 9), jnp.bfloat16, (1, 1), "pallas", 4),
    ((3, 3), jnp.bfloat16, (1, 1), "pallas", 4),  # packed channel pairs
    ((3, 3), jnp.bfloat16, (1, 1), "xla", 5),  # an odd number of channels: not packed
    ((3, 3), jnp.bfloat16, (2, 2), "xla", 4),
    ((7, 5), jnp.bfloat16, (1, 1), "xla", 4),
    ((7, 7), jnp.bfloat16, (2, 1), "xla", 4),
    ((3, 3), jnp.float16, (1, 1), "xla", 4),
    ((3, 3), jnp.float32, (1, 1), "xla", 4),
    ((5, 5), jnp.float32, (1, 1), "pallas", 4),
    ((7, 7), jnp.float32, (2, 2), "pallas", 4),
]


def _kernel_config(kernel, dtype, stride, c=4):
    return ConvConfig((1, 16, 16, c), (c, *kernel, 1), jnp.dtype(dtype),
                      make_spec(c, stride=stride))


@pytest.mark.parametrize("kernel,dtype,stride,expected,c", WEIGHT_KERNEL)
def test_strategy_weight_gradient_kernel(kernel, dtype, stride, expected, c):
    assert _cuda.weight_kernel(_kernel_config(kernel, dtype, stride, c)) == expected


FORWARD_KERNEL = [
    # (kernel, stride, expected): XLA's forward pass where it was measured faster.
    ((3, 3), (2, 2), "xla"),
    ((5, 5), (2, 2), "xla"),
    ((7, 5), (2, 2), "xla"),
    ((7, 7), (2, 2), "pallas"),
    ((3, 3), (2, 1), "pallas"),
    ((3, 3), (1, 1), "pallas"),
    ((5, 5), (1, 1), "pallas"),
]


@pytest.mark.parametrize("kernel,stride,expected", FORWARD_KERNEL)
def test_strategy_forward_kernel(kernel, stride, expected):
    assert _cuda.forward_kernel(_kernel_config(kernel, jnp.float32, stride)) == expected


@pytest.mark.interpret
@pytest.mark.parametrize("kernel,dtype,stride,kernels", [
    ((7, 7), jnp.bfloat16, 1, 3), ((3, 3), jnp.bfloat16, 1, 3), ((3, 3), jnp.float16, 1, 2),
    ((3, 3), jnp.float32, 1, 2), ((5, 5), jnp.float32, 1, 3), ((3, 3), jnp.bfloat16, 2, 1),
    ((5, 5), jnp.float32, 2, 2)])
def test_the_chosen_strategy_runs_the_chosen_kernels(kernel, dtype, stride, kernels):
    """Forced "pallas" on a described NVIDIA GPU: three Pallas kernels; two and XLA's weight
    gradient; or, at stride 2, XLA's forward pass with one or two Pallas gradients."""
    spec = make_spec(4, stride=(stride, stride), padding=((3, 3), (1, 1)))
    x, w = jnp.ones((1, 8, 8, 4), dtype), jnp.ones((4, *kernel, 1), dtype)
    cfg = ConvConfig(x.shape, w.shape, x.dtype, spec)
    strategy = STRATEGIES[choose(cfg, "pallas", None, Target("cuda"))]
    jaxpr = str(jax.make_jaxpr(jax.grad(
        lambda a, b: strategy.fn(a, b, spec, interpret=True).astype(jnp.float32).sum(),
        argnums=(0, 1)))(x, w))
    assert jaxpr.count("pallas_call") == kernels
    assert jaxpr.count("conv_general_dilated") == 3 - kernels
