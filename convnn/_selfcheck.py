"""A short self-check of convnn's convolutions on the default device, against NumPy in float64.

``python -m convnn`` runs it; a user on a new backend (an Apple GPU plugin above all) runs it
first. Each case computes a convolution and both gradients (of ``sum(out * cotangent)``) with
convnn under the lowering in force, and compares them with the package's float64 NumPy reference
(:mod:`convnn._reference`, written from the definitions, independent of the library's strategies;
the test suite checks it against finite differences and the adjoint identities). The tolerance
comes from the same module's table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from convnn import _reference
from convnn._reference import (
    conv_general_ref,
    conv_general_ref_vjp,
    conv_transpose_ref,
    conv_transpose_ref_vjp,
)

__all__ = ["Case", "CASES", "CaseResult", "run_case", "run_all", "TOLERANCE"]

#: Largest error accepted, relative to the largest magnitude of the reference (per quantity):
#: ``rtol + atol`` of the package's tolerance table, which the test suite's elementwise rule
#: implies.
TOLERANCE = {name: rtol + atol for name, (rtol, atol) in _reference.TOLERANCE.items()
             if name != "float64"}


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
    common = dict(stride=tup(kw.get("stride", 1)), groups=kw.get("groups", 1))
    pad = tup(kw.get("padding", 0))
    if fn.startswith("conv_transpose"):
        args = dict(common, padding=pad, dilation=tup(kw.get("dilation", 1)),
                    output_padding=tup(kw.get("output_padding", 0)))
        ref, vjp = conv_transpose_ref, conv_transpose_ref_vjp
    else:
        args = dict(common, padding_lo=pad, padding_hi=pad,
                    kernel_dilation=tup(kw.get("dilation", 1)), input_dilation=(1,) * n,
                    flip=False)
        ref, vjp = conv_general_ref, conv_general_ref_vjp
    return Case(name, fn, tuple(x_shape), tuple(w_shape), dict(kw),
                functools.partial(ref, **args), functools.partial(vjp, **args))


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
