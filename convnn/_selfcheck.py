"""A short self-check of convnn's convolutions on the default device, against NumPy in float64.

``python -m convnn`` runs it; a user on a new backend (an Apple GPU plugin above all) runs it
first. Each case computes a convolution and both gradients (of ``sum(out * cotangent)``) with
convnn under the lowering in force, and compares them with a float64 NumPy reference written
here from the definitions (independent of the library's strategies and of its test suite):

* convolution (cross-correlation, MLX layout): ``out[n, p, o] = sum_{k, c}
  xp[n, p * stride + k * kernel_dilation, g(o) * C_in_g + c] * w[o, k, c]``, where ``xp`` is
  the input dilated by ``input_dilation`` and zero-padded;
* transposed convolution, as a scatter: each input element adds ``x[n, i, c] * w[o, k, c]`` to
  output position ``i * stride + k * dilation - padding`` (``output_padding`` extends the high
  end), within its group.

Gradients come from the same loops read backwards (both maps are linear in each operand).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Case", "CASES", "CaseResult", "conv_ref", "conv_ref_vjp", "conv_transpose_ref",
           "conv_transpose_ref_vjp", "run_case", "run_all", "TOLERANCE"]

#: Largest error accepted, relative to the largest magnitude of the reference (per quantity).
#: The cases are small (at most a few hundred terms per output), so float32 rounding stays
#: below 1e-5; a wrong kernel is off by tens of percent.
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


def _taps(kernel):
    return itertools.product(*(range(k) for k in kernel))


def _dilate_pad(x, padding, input_dilation):
    """``x`` (N, *spatial, C) dilated (zeros between elements) and zero-padded, in float64."""
    n = x.ndim - 2
    shape = [x.shape[0]]
    index = [slice(None)]
    for a in range(n):
        size = x.shape[a + 1]
        d, (lo, hi) = input_dilation[a], padding[a]
        shape.append((size - 1) * d + 1 + lo + hi)
        index.append(slice(lo, lo + (size - 1) * d + 1, d))
    shape.append(x.shape[-1])
    out = np.zeros(shape, np.float64)
    out[tuple(index)] = x
    return out, tuple(index)


def _windows(xp, tap, stride, kernel_dilation, out_shape):
    """The (N, *out, C) slice of ``xp`` that kernel tap ``tap`` reads."""
    index = [slice(None)]
    for t, s, kd, o in zip(tap, stride, kernel_dilation, out_shape):
        start = t * kd
        index.append(slice(start, start + (o - 1) * s + 1, s))
    index.append(slice(None))
    return tuple(index)


def _out_shape(xp_shape, w_shape, stride, kernel_dilation):
    return tuple(
        (size - ((k - 1) * kd + 1)) // s + 1
        for size, k, kd, s in zip(xp_shape[1:-1], w_shape[1:-1], kernel_dilation, stride)
    )


def conv_ref(x, w, stride, padding, kernel_dilation=None, input_dilation=None, groups=1):
    """Grouped N-D convolution, float64. ``x``: (N, *spatial, C_in); ``w``: (C_out, *k, C_in/g).

    ``padding``: ``((lo, hi), ...)`` applied after input dilation (non-negative).
    """
    n = x.ndim - 2
    kernel_dilation = kernel_dilation or (1,) * n
    input_dilation = input_dilation or (1,) * n
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp, _ = _dilate_pad(x, padding, input_dilation)
    out_sp = _out_shape(xp.shape, w.shape, stride, kernel_dilation)
    c_out, cg_in = w.shape[0], w.shape[-1]
    cg_out = c_out // groups
    out = np.zeros((x.shape[0], *out_sp, c_out))
    for tap in _taps(w.shape[1:-1]):
        win = xp[_windows(xp, tap, stride, kernel_dilation, out_sp)]
        wt = w[(slice(None), *tap, slice(None))]  # (C_out, C_in/g)
        for g in range(groups):
            xs = win[..., g * cg_in:(g + 1) * cg_in]
            out[..., g * cg_out:(g + 1) * cg_out] += xs @ wt[g * cg_out:(g + 1) * cg_out].T
    return out


def conv_ref_vjp(x, w, cot, stride, padding, kernel_dilation=None, input_dilation=None,
                 groups=1):
    """Gradients ``(d/dx, d/dw)`` of ``sum(conv_ref(x, w, ...) * cot)``, float64."""
    n = x.ndim - 2
    kernel_dilation = kernel_dilation or (1,) * n
    input_dilation = input_dilation or (1,) * n
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    cot = np.asarray(cot, np.float64)
    xp, inner = _dilate_pad(x, padding, input_dilation)
    out_sp = cot.shape[1:-1]
    c_out, cg_in = w.shape[0], w.shape[-1]
    cg_out = c_out // groups
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for tap in _taps(w.shape[1:-1]):
        index = _windows(xp, tap, stride, kernel_dilation, out_sp)
        win = xp[index]
        wt = w[(slice(None), *tap, slice(None))]
        for g in range(groups):
            cg = cot[..., g * cg_out:(g + 1) * cg_out]  # (N, *out, C_out/g)
            ci = slice(g * cg_in, (g + 1) * cg_in)
            dxp[index][..., ci] += cg @ wt[g * cg_out:(g + 1) * cg_out]
            contrib = np.tensordot(cg, win[..., ci], axes=(list(range(n + 1)),) * 2)
            dw[(slice(g * cg_out, (g + 1) * cg_out), *tap, slice(None))] += contrib
    return dxp[inner], dw


def _transpose_geometry(x_shape, w_shape, stride, padding, dilation, output_padding):
    full = tuple((i - 1) * s + (k - 1) * d + 1
                 for i, s, k, d in zip(x_shape[1:-1], stride, w_shape[1:-1], dilation))
    out = tuple(f - 2 * p + op for f, p, op in zip(full, padding, output_padding))
    return full, out


def _scatter_index(tap, stride, dilation, x_spatial):
    """Positions in the uncropped output that input elements reach through kernel tap ``tap``."""
    index = [slice(None)]
    for t, s, d, i in zip(tap, stride, dilation, x_spatial):
        index.append(slice(t * d, t * d + (i - 1) * s + 1, s))
    index.append(slice(None))
    return tuple(index)


def conv_transpose_ref(x, w, stride, padding, dilation=None, output_padding=None, groups=1):
    """Grouped N-D transposed convolution (MLX layout ``(C_out, *k, C_in/g)``), float64.

    ``padding`` is one int per axis (removed from both ends), ``output_padding`` extends the
    high end.
    """
    n = x.ndim - 2
    dilation = dilation or (1,) * n
    output_padding = output_padding or (0,) * n
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    full, out_sp = _transpose_geometry(x.shape, w.shape, stride, padding, dilation,
                                       output_padding)
    c_out, cg_in = w.shape[0], w.shape[-1]
    cg_out = c_out // groups
    big = tuple(max(f, p + o) for f, p, o in zip(full, padding, out_sp))
    acc = np.zeros((x.shape[0], *big, c_out))
    for tap in _taps(w.shape[1:-1]):
        index = _scatter_index(tap, stride, dilation, x.shape[1:-1])
        wt = w[(slice(None), *tap, slice(None))]
        for g in range(groups):
            xs = x[..., g * cg_in:(g + 1) * cg_in]
            acc[index][..., g * cg_out:(g + 1) * cg_out] += xs @ wt[g * cg_out:(g + 1) * cg_out].T
    crop = (slice(None), *(slice(p, p + o) for p, o in zip(padding, out_sp)), slice(None))
    return acc[crop]


def conv_transpose_ref_vjp(x, w, cot, stride, padding, dilation=None, output_padding=None,
                           groups=1):
    """Gradients ``(d/dx, d/dw)`` of ``sum(conv_transpose_ref(x, w, ...) * cot)``, float64."""
    n = x.ndim - 2
    dilation = dilation or (1,) * n
    output_padding = output_padding or (0,) * n
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    full, out_sp = _transpose_geometry(x.shape, w.shape, stride, padding, dilation,
                                       output_padding)
    big = tuple(max(f, p + o) for f, p, o in zip(full, padding, out_sp))
    gbig = np.zeros((x.shape[0], *big, w.shape[0]))
    crop = (slice(None), *(slice(p, p + o) for p, o in zip(padding, out_sp)), slice(None))
    gbig[crop] = np.asarray(cot, np.float64)
    c_out, cg_in = w.shape[0], w.shape[-1]
    cg_out = c_out // groups
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for tap in _taps(w.shape[1:-1]):
        g_tap = gbig[_scatter_index(tap, stride, dilation, x.shape[1:-1])]  # (N, *in, C_out)
        wt = w[(slice(None), *tap, slice(None))]
        for g in range(groups):
            co = slice(g * cg_out, (g + 1) * cg_out)
            ci = slice(g * cg_in, (g + 1) * cg_in)
            dx[..., ci] += g_tap[..., co] @ wt[co]
            contrib = np.tensordot(g_tap[..., co], x[..., ci], axes=(list(range(n + 1)),) * 2)
            dw[(co, *tap, slice(None))] += contrib
    return dx, dw


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One self-check convolution: a convnn function, its arguments and the reference."""

    name: str
    fn: str  # convnn function name
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    kwargs: dict[str, Any]
    ref: Callable  # (x, w) -> out
    ref_vjp: Callable  # (x, w, cot) -> (dx, dw)


def _case(name, fn, x_shape, w_shape, **kw):
    n = len(x_shape) - 2
    tup = lambda v: (v,) * n if isinstance(v, int) else tuple(v)  # noqa: E731
    stride, dilation, groups = tup(kw.get("stride", 1)), tup(kw.get("dilation", 1)), kw.get(
        "groups", 1)
    pad = tup(kw.get("padding", 0))
    if fn.startswith("conv_transpose"):
        opad = tup(kw.get("output_padding", 0))
        args = (stride, pad, dilation, opad, groups)
        ref = lambda x, w: conv_transpose_ref(x, w, *args)  # noqa: E731
        vjp = lambda x, w, c: conv_transpose_ref_vjp(x, w, c, *args)  # noqa: E731
    else:
        args = (stride, tuple((p, p) for p in pad), dilation, None, groups)
        ref = lambda x, w: conv_ref(x, w, *args)  # noqa: E731
        vjp = lambda x, w, c: conv_ref_vjp(x, w, c, *args)  # noqa: E731
    return Case(name, fn, tuple(x_shape), tuple(w_shape), dict(kw), ref, vjp)


#: The self-check: one case per family the Apple routing tables care about.
CASES: tuple[Case, ...] = (
    _case("dense 2-D", "conv2d", (2, 9, 8, 6), (5, 3, 3, 6), padding=1),
    _case("grouped 2-D", "conv2d", (2, 8, 9, 6), (4, 3, 2, 3), groups=2, padding=(1, 0)),
    _case("depthwise 2-D, stride 2", "conv2d", (2, 9, 9, 4), (8, 3, 3, 1), groups=4, stride=2,
          padding=1),
    _case("strided dilated 2-D", "conv2d", (1, 11, 10, 3), (4, 3, 3, 3), stride=2, dilation=2,
          padding=2),
    _case("grouped strided 1-D", "conv1d", (2, 13, 6), (6, 3, 2), groups=3, stride=2),
    _case("transposed 2-D", "conv_transpose2d", (2, 5, 6, 4), (3, 3, 3, 4), stride=2, padding=1,
          output_padding=1),
    _case("grouped transposed 2-D", "conv_transpose2d", (1, 5, 5, 4), (6, 3, 3, 2), stride=2,
          groups=2),
    _case("dense 3-D", "conv3d", (1, 5, 6, 5, 3), (4, 3, 2, 3, 3), padding=1),
    _case("grouped strided 3-D", "conv3d", (1, 6, 5, 6, 4), (4, 2, 3, 2, 2), groups=2,
          stride=(2, 1, 2)),
)


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """Worst relative errors of one case (``None``: not computed because of an exception)."""

    case: Case
    errors: dict[str, float | None]
    tolerance: float
    strategy: str
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and all(
            e is not None and e <= self.tolerance for e in self.errors.values())


def _relative_error(got, want) -> float:
    got = np.asarray(got, np.float64)
    if got.shape != want.shape:
        return math.inf
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    diff = np.abs(got - want)
    if not np.all(np.isfinite(got)):
        return math.inf
    return float(np.max(diff, initial=0.0)) / scale


def _strategy(case: Case, dtype) -> str:
    """The strategy the lowering in force picks for the case (as the doctor prints it)."""
    import jax

    import convnn

    x = jax.ShapeDtypeStruct(case.x_shape, dtype)
    w = jax.ShapeDtypeStruct(case.w_shape, dtype)
    try:
        return convnn.explain(getattr(convnn, case.fn), x, w, **case.kwargs).strategy
    except ValueError:  # no convolution (the crop leaves no input)
        return "?"


def run_case(case: Case, dtype: str = "float32", seed: int = 0) -> CaseResult:
    """Computes one case with convnn on the default device and compares with the reference."""
    import jax
    import jax.numpy as jnp

    import convnn

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    tol = TOLERANCE[dtype]
    jdtype = jnp.dtype(dtype)
    # the reference sees exactly the values convnn sees (rounded to ``dtype``)
    x = np.asarray(jnp.asarray(x, jdtype).astype(jnp.float32), np.float64)
    w = np.asarray(jnp.asarray(w, jdtype).astype(jnp.float32), np.float64)
    want = case.ref(x, w)
    cot = rng.standard_normal(want.shape)
    cot = np.asarray(jnp.asarray(cot, jdtype).astype(jnp.float32), np.float64)
    want_dx, want_dw = case.ref_vjp(x, w, cot)
    fn = getattr(convnn, case.fn)
    start = time.perf_counter()
    strategy = "?"
    try:
        strategy = _strategy(case, jdtype)
        xj, wj, cj = (jnp.asarray(a, jdtype) for a in (x, w, cot))

        def loss(a, b):
            out = fn(a, b, **case.kwargs)
            return jnp.sum((out * cj).astype(jnp.float32)), out

        (_, out), (dx, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            xj, wj)
        got = [np.asarray(jnp.asarray(v).astype(jnp.float32)) for v in (out, dx, dw)]
    except Exception as err:  # reported, not raised: the doctor lists every case
        return CaseResult(case, {"output": None, "d/dinput": None, "d/dweight": None}, tol,
                          strategy, f"{type(err).__name__}: {err}",
                          time.perf_counter() - start)
    errors = {
        "output": _relative_error(got[0], want),
        "d/dinput": _relative_error(got[1], want_dx),
        "d/dweight": _relative_error(got[2], want_dw),
    }
    return CaseResult(case, errors, tol, strategy, None, time.perf_counter() - start)


def run_all(dtype: str = "float32", report: Callable[[str], None] | None = None,
            cases: tuple[Case, ...] = CASES) -> list[CaseResult]:
    """Runs every case; ``report`` gets the case name before it runs (so that a process abort
    inside a plugin still shows which convolution killed it) and a result line after."""
    results = []
    for case in cases:
        if report is not None:
            report(f"  {case.name:<26} ")
        result = run_case(case, dtype)
        results.append(result)
        if report is not None:
            report(format_result(result) + "\n")
    return results


def format_result(result: CaseResult) -> str:
    parts = []
    for key, err in result.errors.items():
        if err is None:
            parts.append(f"{key} -")
        else:
            mark = "" if err <= result.tolerance else " MISMATCH"
            parts.append(f"{key} {err:.1e}{mark}")
    status = "ok " if result.ok else "FAIL"
    text = f"{status} [{result.strategy}] " + ", ".join(parts)
    if result.error is not None:
        text += f"\n      raised {result.error.splitlines()[0][:300]}"
    return text
