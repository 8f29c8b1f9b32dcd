"""Tier 1, second opinion: the functional API against the real MLX (CPU), values and VJPs.

MLX 0.32 is not always right. Where it disagrees with the float64 reference the reference
decides, and the disagreement is kept here as a known MLX bug: the test asserts that MLX still
gets it wrong (so a fixed MLX shows up as a failing test to update) and that convnn matches the
reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CORE, in_fast_tier
from helpers import call_api, random_operands, reference, reference_vjp
from references import require
from tolerances import assert_close

mx = require("mlx.core")
pytestmark = pytest.mark.mlx


def mlx_known_bug(case) -> tuple[str, str] | None:
    """How MLX 0.32 is expected to fail this case, as (effect, reason), or None.

    effect is "refuses" (MLX raises), "forward" (wrong output shape or values, or a refusal of a
    valid input), "dx" (right output, wrong input gradient) or "grad-unchecked" (input dilation
    with stride on one axis: MLX's gradients are wrong or refused in a pattern not pinned down
    here, so only its forward values are compared).
    """
    if case.n == 3 and case.groups > 1:
        return "refuses", "MLX refuses grouped 3-D convolutions"
    if case.kind == "transpose":
        axes = list(zip(case.lows, case.dilation, case.kernel, case.stride, case.output_padding))
        if any(p > d * (k - 1) and s > 1 for p, d, k, s, _ in axes):
            return "forward", "MLX crops before dilating: padding > dilation*(kernel-1)"
        if any(s > 1 and op > p for p, _, _, s, op in axes):
            return "dx", ("MLX: wrong input gradient of a strided transposed conv, "
                          "output_padding > padding")
        return None
    if case.kind != "general":
        return None
    axes = list(zip(case.spatial, case.kernel, case.dilation, case.input_dilation, case.stride,
                    case.lows, case.highs))
    if any((lo < 0 or hi < 0) and d > 1 for _, _, _, d, _, lo, hi in axes):
        return "forward", "MLX crops before dilating: negative padding with input dilation"
    if any(d > 1 and s > 1 for _, _, _, d, s, _, _ in axes):
        return "grad-unchecked", "MLX: gradients with input dilation and stride"
    # the input gradient needs negative padding, which MLX applies before dilating
    if any(d > 1 and (lo > kd * (k - 1) or (size > 1 and hi > kd * (k - 1)))
           for size, k, kd, d, _, lo, hi in axes):
        return "dx", "MLX: input gradient with input dilation and padding > dilated kernel - 1"
    return None


def mlx_fn(case):
    n = case.n
    one = (lambda t: t[0]) if n == 1 else (lambda t: t)
    if case.kind == "transpose":
        f = getattr(mx, f"conv_transpose{n}d")
        return lambda x, w: f(x, w, stride=one(case.stride), padding=one(case.lows),
                              dilation=one(case.dilation), output_padding=one(case.output_padding),
                              groups=case.groups)
    if case.kind == "conv" and case.lows == case.highs:
        f = getattr(mx, f"conv{n}d")
        return lambda x, w: f(x, w, stride=one(case.stride), padding=one(case.lows),
                              dilation=one(case.dilation), groups=case.groups)
    idil = list(case.input_dilation or (1,) * n)
    return lambda x, w: mx.conv_general(
        x, w, stride=list(case.stride), padding=(list(case.lows), list(case.highs)),
        kernel_dilation=list(case.dilation), input_dilation=idil, groups=case.groups,
        flip=case.flip)


def _mlx_operands(case, *arrays):
    out = []
    for i, a in enumerate(arrays):
        if case.batch is None and i != 1:  # arrays are (x, w[, g]); w is never batched
            a = a[None]
        out.append(mx.array(a.astype(np.float32)))
    return out


def _unbatch(case, a):
    a = np.array(a)
    return a if case.batch is not None else a[0]


def run_mlx_forward(case, x, w):
    xm, wm = _mlx_operands(case, x, w)
    return _unbatch(case, mlx_fn(case)(xm, wm))


def run_mlx_vjp(case, x, w, g):
    """MLX's VJPs (dx, dw) on float32 operands."""
    xm, wm, gm = _mlx_operands(case, x, w, g)
    _, (dx, dw) = mx.vjp(mlx_fn(case), [xm, wm], [gm])
    return _unbatch(case, dx), np.array(dw)


def _agrees(actual, expected):
    return actual.shape == expected.shape and np.allclose(actual, expected, rtol=1e-3, atol=1e-3)


# A second opinion: a quarter of the table in the fast tier (cases 0, 4, 8, ...; PyTorch checks
# 1, 5, 9, ...), all of it in the slow tier. The float64 reference checks every case in both.
@pytest.mark.parametrize("case", in_fast_tier(CORE, 4, 0))
def test_values_and_vjps_against_mlx(case):
    x, w = random_operands(case, 31)
    out, vjp = jax.vjp(lambda a, b: call_api(case, a, b), jnp.asarray(x), jnp.asarray(w))
    g = np.random.default_rng(32).standard_normal(out.shape)
    dx, dw = vjp(jnp.asarray(g))
    ref = reference(case, x, w)
    rdx, rdw = reference_vjp(case, x, w, g)
    # convnn always matches the definition
    assert_close(out, ref, jnp.float64)
    assert_close(dx, rdx, jnp.float64)
    assert_close(dw, rdw, jnp.float64)

    bug = mlx_known_bug(case)
    effect = bug[0] if bug else None
    try:
        m_out = run_mlx_forward(case, x, w)
    except ValueError as err:
        assert effect in ("refuses", "forward"), f"MLX refused a case it should handle: {err}"
        return
    assert effect != "refuses", "MLX now accepts grouped 3-D convolutions: update the table"
    if effect == "forward":
        assert not _agrees(m_out, ref), f"known MLX bug no longer reproduces: {bug[1]}"
        return
    assert _agrees(m_out, np.asarray(out)), "MLX and convnn disagree on the output"
    if effect == "grad-unchecked":
        return
    m_dx, m_dw = run_mlx_vjp(case, x, w, g)
    assert _agrees(m_dw, np.asarray(dw)), "MLX and convnn disagree on the weight gradient"
    if effect == "dx":
        assert not _agrees(m_dx, rdx), f"known MLX bug no longer reproduces: {bug[1]}"
    elif effect is None:
        assert _agrees(m_dx, np.asarray(dx)), "MLX and convnn disagree on the input gradient"
