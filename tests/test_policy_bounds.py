"""Every "auto" rule that moves a convolution off XLA has a cost bound (taps), checked by the
rule itself, not by timing (``benchmarks/bench_policy_cpu.py`` measures the ratios)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import convnn
from convnn._lowering import _cpu


def test_the_cpu_policy_refuses_the_large_grouped_transposed_3d_kernel():
    """1,200 taps with groups of 2 channels: the per-tap decomposed form took 20-54 s and 3 GB
    on a 2-core CPU, XLA's convolution under 1 s."""
    x = jax.ShapeDtypeStruct((2, 6, 5, 4, 4), jnp.float16)
    w = jax.ShapeDtypeStruct((6, 10, 10, 12, 2), jnp.float16)
    e = convnn.explain(convnn.conv_transpose3d, x, w, stride=(3, 1, 1), groups=2, backend="cpu")
    assert e.strategy == "xla" and "tap bound" in e.rule
    assert e.config.taps == 1200 > _cpu.MAX_DECOMPOSED_TAPS


@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((1, 8, 8, 8, 8), (8, 6, 6, 6, 1), 8),  # depthwise, 216 taps
    ((1, 8, 8, 8, 8), (8, 6, 6, 6, 2), 4),  # groups of 2 channels
    ((1, 8, 8, 8, 64), (64, 6, 6, 6, 8), 8),  # groups of 8 channels ("mixed")
    ((1, 8, 8, 8, 256), (64, 6, 6, 6, 256), 1),  # wide dense ("mixed")
    ((1, 8, 8, 256), (64, 5, 5, 256), 1),  # wide dense 5x5: measured slower than XLA
])
def test_every_rule_off_xla_has_a_tap_bound(x_shape, w_shape, groups):
    x, w = jax.ShapeDtypeStruct(x_shape, jnp.float32), jax.ShapeDtypeStruct(w_shape, jnp.float32)
    fn = convnn.conv3d if len(x_shape) == 5 else convnn.conv2d
    e = convnn.explain(fn, x, w, groups=groups, backend="cpu")
    assert e.strategy == "xla", e.rule


def test_within_the_bounds_the_rules_stand():
    x = jax.ShapeDtypeStruct((1, 8, 8, 8, 8), jnp.float32)
    w = jax.ShapeDtypeStruct((8, 5, 5, 5, 1), jnp.float32)  # 125 taps
    assert convnn.explain(convnn.conv3d, x, w, groups=8, backend="cpu").strategy == "decomposed"
