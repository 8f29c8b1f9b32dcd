"""Calling the public API and the float64 reference for one case."""

from __future__ import annotations

import numpy as np

import convnn
from convnn._reference import (
    conv_general_ref,
    conv_general_ref_vjp,
    conv_transpose_ref,
    conv_transpose_ref_vjp,
)


def api_fn(case):
    if case.kind == "general":
        return convnn.conv_general
    prefix = "conv_transpose" if case.kind == "transpose" else "conv"
    return getattr(convnn, f"{prefix}{case.n}d")


def call_api(case, x, w, **extra):
    return api_fn(case)(x, w, **case.api_kwargs(), **extra)


def _ref_kwargs(case):
    if case.kind == "transpose":
        return dict(stride=case.stride, padding=case.lows, dilation=case.dilation,
                    output_padding=case.output_padding, groups=case.groups)
    return dict(stride=case.stride, padding_lo=case.lows, padding_hi=case.highs,
                kernel_dilation=case.dilation,
                input_dilation=case.input_dilation or (1,) * case.n,
                groups=case.groups, flip=case.flip)


def reference(case, x, w):
    """The float64 reference output, unbatched when the case is."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    xb = x if case.batch is not None else x[None]
    fn = conv_transpose_ref if case.kind == "transpose" else conv_general_ref
    out = fn(xb, w, **_ref_kwargs(case))
    return out if case.batch is not None else out[0]


def reference_vjp(case, x, w, g):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64)
    if case.batch is None:
        x, g = x[None], g[None]
    fn = conv_transpose_ref_vjp if case.kind == "transpose" else conv_general_ref_vjp
    dx, dw = fn(x, w, g, **_ref_kwargs(case))
    return (dx if case.batch is not None else dx[0]), dw


def random_operands(case, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(dtype)
    w = rng.standard_normal(case.w_shape).astype(dtype)
    return x, w
