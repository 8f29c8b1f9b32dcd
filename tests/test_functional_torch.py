"""Tier 1, second opinion: the functional API against PyTorch (CPU), values and gradients.

PyTorch has no input dilation, asymmetric padding or MLX weight layout, so the test builds each
case from PyTorch primitives: input dilation by strided assignment, padding and cropping by
``F.pad`` (negative values crop), the flip by ``torch.flip``, layouts by permutation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CORE, in_fast_tier
from helpers import call_api, random_operands
from references import require
from tolerances import assert_close

import convnn

torch = require("torch")
F = require("torch.nn.functional")
pytestmark = pytest.mark.torch


def _to_torch_x(x, n):  # (N, *S, C) -> (N, C, *S)
    return x.permute(0, n + 1, *range(1, n + 1))


def _from_torch_y(y, n):  # (N, C, *S) -> (N, *S, C)
    return y.permute(0, *range(2, n + 2), 1)


def torch_conv(case, x, w):
    """The case computed by PyTorch, with x (N, *S, C_in) and w in MLX layout."""
    n = case.n
    conv = getattr(F, f"conv{n}d")
    xt = _to_torch_x(x, n)
    if case.kind == "transpose":
        cin_g, cout_g = case.c_in // case.groups, case.c_out // case.groups
        # MLX (C_out, *K, C_in/g) -> PyTorch (C_in, C_out/g, *K), group by group
        wg = w.reshape(case.groups, cout_g, *case.kernel, cin_g)
        wt = wg.permute(0, n + 2, 1, *range(2, n + 2)).reshape(case.c_in, cout_g, *case.kernel)
        y = getattr(F, f"conv_transpose{n}d")(
            xt, wt, stride=case.stride, padding=case.lows, output_padding=case.output_padding,
            groups=case.groups, dilation=case.dilation)
        return _from_torch_y(y, n)
    idil = case.input_dilation or (1,) * n
    if any(d > 1 for d in idil):
        shape = [*xt.shape[:2], *((s - 1) * d + 1 for s, d in zip(xt.shape[2:], idil))]
        xd = xt.new_zeros(shape)
        xd[(slice(None), slice(None), *(slice(None, None, d) for d in idil))] = xt
        xt = xd
    pads = []
    for lo, hi in reversed(list(zip(case.lows, case.highs))):
        pads += [lo, hi]
    xt = F.pad(xt, pads)
    wt = w.permute(0, n + 1, *range(1, n + 1))
    if case.flip:
        wt = torch.flip(wt, dims=tuple(range(2, n + 2)))
    y = conv(xt, wt, stride=case.stride, dilation=case.dilation, groups=case.groups)
    return _from_torch_y(y, n)


# A second opinion: a quarter of the table in the fast tier (cases 1, 5, 9, ...; MLX checks
# 0, 4, 8, ...), all of it in the slow tier. The float64 reference checks every case in both.
@pytest.mark.parametrize("case", in_fast_tier(CORE, 4, 3))
def test_values_and_vjps_match_pytorch(case):
    x, w = random_operands(case, 21)
    xb = x if case.batch is not None else x[None]
    xt = torch.tensor(xb, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = torch_conv(case, xt, wt)
    g = np.random.default_rng(22).standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    out, vjp = jax.vjp(lambda a, b: call_api(case, a, b), jnp.asarray(x), jnp.asarray(w))
    gj = g if case.batch is not None else g[0]
    dx, dw = vjp(jnp.asarray(gj))
    expected = yt.detach().numpy()
    tdx = xt.grad.numpy()
    if case.batch is None:
        expected, tdx = expected[0], tdx[0]
    assert_close(out, expected, jnp.float64, what=f"out {case}")
    assert_close(dx, tdx, jnp.float64, what=f"dx {case}")
    assert_close(dw, wt.grad.numpy(), jnp.float64, what=f"dw {case}")


@pytest.mark.parametrize("stride, kernel, dilation", [(1, 3, 1), (1, 4, 1), (1, 4, 2), (1, 2, 3)])
def test_same_padding_matches_pytorch_at_stride_one(stride, kernel, dilation):
    """PyTorch's padding='same' (stride 1 only) puts the odd pixel on the high side, as lax does."""
    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((2, 9, 3))
    w = rng.standard_normal((4, kernel, 3))
    out = convnn.conv1d(jnp.asarray(x), jnp.asarray(w), stride, "same", dilation)
    expected = F.conv1d(torch.tensor(x).permute(0, 2, 1), torch.tensor(w).permute(0, 2, 1),
                        padding="same", dilation=dilation).permute(0, 2, 1).numpy()
    assert_close(out, expected, jnp.float64)
