"""MLX's activation functions and classes (``mlx.nn.relu``, ``mlx.nn.ReLU``, ...).

Each function uses MLX's formula and constants (``selu`` with MLX's 1.67326 and 1.0507, ``gelu``
exact by default), so values match MLX to float rounding. Gradients match too, including at
ties: MLX's ``maximum(a, b)`` / ``minimum(a, b)`` send the whole gradient to ``b`` when
``a == b`` (JAX's split it in halves), so ``relu``'s gradient at 0 is 0 and ``relu6``'s at 6 is
0, as in MLX.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from convnn import _args
from convnn.layers._common import expand
from convnn.layers._module import Module

__all__ = [
    "celu", "elu", "gelu", "gelu_approx", "gelu_fast_approx", "glu", "hard_shrink", "hard_tanh",
    "hardswish", "leaky_relu", "log_sigmoid", "log_softmax", "mish", "prelu", "relu", "relu2",
    "relu6", "selu", "sigmoid", "silu", "softmax", "softmin", "softplus", "softshrink",
    "softsign", "step", "tanh",
    "CELU", "ELU", "GELU", "GLU", "SELU", "HardShrink", "Hardswish", "HardTanh", "LeakyReLU",
    "LogSigmoid", "LogSoftmax", "Mish", "PReLU", "ReLU", "ReLU2", "ReLU6", "Sigmoid", "SiLU",
    "Softmax", "Softmin", "Softplus", "Softshrink", "Softsign", "Step", "Tanh",
]


def _maximum(a: Any, b: Any) -> jax.Array:
    """MLX's ``maximum``: NaN propagates; at a tie the gradient goes to ``b``."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.where((a > b) | jnp.isnan(a), a, b)


def _minimum(a: Any, b: Any) -> jax.Array:
    """MLX's ``minimum``: NaN propagates; at a tie the gradient goes to ``b``."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.where((a < b) | jnp.isnan(a), a, b)


def _scalar(x: jax.Array, v: float) -> jax.Array:
    return jnp.asarray(v, x.dtype)


def _input(x: Any, fn: str, *, keep_int: bool = False) -> jax.Array:
    """``x`` as an array (a ``TypeError`` naming ``fn`` if it is none), in MLX's dtype: integer
    and bool inputs compute in float32, except where ``keep_int`` (``relu``, ``relu2``,
    ``hard_shrink``: MLX keeps integers there and turns bools into int32)."""
    x = _args.as_array(x, "x", fn)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    if keep_int:
        return x.astype(jnp.int32) if x.dtype == jnp.bool_ else x
    return x.astype(jnp.float32)


def sigmoid(x: ArrayLike) -> jax.Array:
    """``1 / (1 + exp(-x))``."""
    return jax.nn.sigmoid(_input(x, "sigmoid"))


def relu(x: ArrayLike) -> jax.Array:
    """``max(x, 0)``."""
    x = _input(x, "relu", keep_int=True)
    return _maximum(x, _scalar(x, 0))


def relu2(x: ArrayLike) -> jax.Array:
    """``max(x, 0) ** 2``."""
    return jnp.square(relu(_input(x, "relu2", keep_int=True)))


def relu6(x: ArrayLike) -> jax.Array:
    """``min(max(x, 0), 6)``."""
    x = _input(x, "relu6")
    return _minimum(_maximum(x, _scalar(x, 0)), _scalar(x, 6))


def leaky_relu(x: ArrayLike, negative_slope: float = 0.01) -> jax.Array:
    """``max(negative_slope * x, x)``."""
    x = _input(x, "leaky_relu")
    return _maximum(negative_slope * x, x)


def log_softmax(x: ArrayLike, axis: int = -1) -> jax.Array:
    """``x - logsumexp(x, axis)``, shifted by the (gradient-stopped) maximum first."""
    x = _input(x, "log_softmax")
    x = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return x - jax.nn.logsumexp(x, axis=axis, keepdims=True)


def elu(x: ArrayLike, alpha: Any = 1.0) -> jax.Array:
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``."""
    x = _input(x, "elu")
    return jnp.where(x > 0, x, alpha * (jnp.exp(x) - 1))


def softmax(x: ArrayLike, axis: int = -1) -> jax.Array:
    """``exp(x) / sum(exp(x), axis)``."""
    return jax.nn.softmax(_input(x, "softmax"), axis=axis)


def softplus(x: ArrayLike) -> jax.Array:
    """``log(1 + exp(x))`` (``logaddexp(x, 0)``)."""
    x = _input(x, "softplus")
    return jnp.logaddexp(x, _scalar(x, 0))


def softsign(x: ArrayLike) -> jax.Array:
    """``x / (1 + |x|)``."""
    x = _input(x, "softsign")
    return x / (1 + jnp.abs(x))


def softshrink(x: ArrayLike, lambd: float = 0.5) -> jax.Array:
    """``x - sign(x) * lambd`` where ``|x| > lambd``, else 0."""
    x = _input(x, "softshrink")
    return jnp.where(jnp.abs(x) > lambd, x - jnp.sign(x) * lambd, _scalar(x, 0))


def celu(x: ArrayLike, alpha: Any = 1.0) -> jax.Array:
    """``max(x, 0) + alpha * (exp(min(x, 0) / alpha) - 1)``."""
    x = _input(x, "celu")
    zero = _scalar(x, 0)
    return _maximum(x, zero) + alpha * (jnp.exp(_minimum(x, zero) / alpha) - 1)


def silu(x: ArrayLike) -> jax.Array:
    """``x * sigmoid(x)``."""
    x = _input(x, "silu")
    return x * jax.nn.sigmoid(x)


def log_sigmoid(x: ArrayLike) -> jax.Array:
    """``-softplus(-x)``."""
    return -softplus(-_input(x, "log_sigmoid"))


def gelu(x: ArrayLike) -> jax.Array:
    """Exact GELU, ``x * (1 + erf(x / sqrt(2))) / 2`` (``nnx.gelu`` defaults to the tanh
    approximation)."""
    x = _input(x, "gelu")
    return x * (1 + jax.lax.erf(x / _scalar(x, math.sqrt(2)))) / 2


def gelu_approx(x: ArrayLike) -> jax.Array:
    """GELU's tanh approximation, ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x**3)))``."""
    x = _input(x, "gelu_approx")
    return 0.5 * x * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_fast_approx(x: ArrayLike) -> jax.Array:
    """GELU's sigmoid approximation, ``x * sigmoid(1.702 * x)``."""
    x = _input(x, "gelu_fast_approx")
    return x * jax.nn.sigmoid(1.702 * x)


def glu(x: ArrayLike, axis: int = -1) -> jax.Array:
    """Splits ``x`` in two halves ``a, b`` along ``axis``; returns ``a * sigmoid(b)``."""
    return _glu(x, axis, "glu")


def _glu(x: ArrayLike, axis: int, fn: str) -> jax.Array:
    x = _input(x, fn)
    if not -x.ndim <= axis < x.ndim or x.shape[axis] % 2:
        raise ValueError(
            f"[{fn}] axis {axis} must be an axis of the input with an even size; got input "
            f"shape {tuple(x.shape)}."
        )
    a, b = jnp.split(x, 2, axis=axis)
    return a * jax.nn.sigmoid(b)


def step(x: ArrayLike, threshold: float = 0.0) -> jax.Array:
    """1 where ``x >= threshold``, else 0, as int32 (MLX's dtype)."""
    x = _input(x, "step")  # float32 for integers: the threshold is a float
    return jnp.where(x >= _scalar(x, threshold), 1, 0).astype(jnp.int32)


def selu(x: ArrayLike) -> jax.Array:
    """``1.0507 * elu(x, 1.67326)`` (MLX's constants)."""
    return elu(_input(x, "selu"), 1.67326) * 1.0507


def prelu(x: ArrayLike, alpha: Any) -> jax.Array:
    """``max(0, x) + alpha * min(0, x)``; ``alpha`` broadcasts against the last axes."""
    return _prelu(x, alpha, "prelu")


def _prelu(x: ArrayLike, alpha: Any, fn: str) -> jax.Array:
    x = _input(x, fn)
    alpha = _args.as_array(alpha, "alpha", fn)
    if alpha.size == 1:  # one slope (PReLU's default) fits any input, a 0-d one too
        alpha = alpha.reshape(())
    try:  # an activation keeps its input's shape: alpha may not broadcast x to a larger one
        fits = jnp.broadcast_shapes(alpha.shape, x.shape) == x.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"[{fn}] alpha must broadcast against the input's last axes without changing its "
            f"shape; got input shape {tuple(x.shape)} and alpha shape {tuple(alpha.shape)}."
        )
    if alpha.ndim < x.ndim:
        alpha = expand(alpha, x.ndim)
    dtype = _args.promote_float(x.dtype, alpha.dtype)
    x, alpha = x.astype(dtype), alpha.astype(dtype)
    zero = _scalar(x, 0)
    return _maximum(zero, x) + alpha * _minimum(zero, x)


def mish(x: ArrayLike) -> jax.Array:
    """``x * tanh(softplus(x))``."""
    x = _input(x, "mish")
    return x * jnp.tanh(softplus(x))


def hardswish(x: ArrayLike) -> jax.Array:
    """``x * min(max(x + 3, 0), 6) / 6``."""
    x = _input(x, "hardswish")
    return x * _minimum(_maximum(x + 3, _scalar(x, 0)), _scalar(x, 6)) / 6


def hard_tanh(x: ArrayLike, min_val: float = -1.0, max_val: float = 1.0) -> jax.Array:
    """``min(max(x, min_val), max_val)``."""
    x = _input(x, "hard_tanh")
    return _minimum(_maximum(x, _scalar(x, min_val)), _scalar(x, max_val))


def hard_shrink(x: ArrayLike, lambd: float = 0.5) -> jax.Array:
    """``x`` where ``|x| > lambd``, else 0."""
    x = _input(x, "hard_shrink", keep_int=True)
    magnitude = jnp.abs(_input(x, "hard_shrink"))  # float32 for integers: lambd is a float
    return jnp.where(magnitude > _scalar(magnitude, lambd), x, _scalar(x, 0))


def softmin(x: ArrayLike, axis: int = -1) -> jax.Array:
    """``softmax(-x, axis)``."""
    return jax.nn.softmax(-_input(x, "softmin"), axis=axis)


def tanh(x: ArrayLike) -> jax.Array:
    """``tanh(x)``."""
    return jnp.tanh(_input(x, "tanh"))


class _Activation(Module):
    """An activation without arguments: ``__call__`` applies ``_fn``."""

    _fn: Any = None

    def __call__(self, x: jax.Array) -> jax.Array:
        return type(self)._fn(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _simple(name: str, fn: Any) -> type:
    doc = f"""Applies :func:`{fn.__name__}`, as ``mlx.nn.{name}``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.{name}()(jnp.zeros(2)).shape
      (2,)
    """
    return type(name, (_Activation,), {"__doc__": doc, "_fn": staticmethod(fn),
                                       "__module__": __name__})


Sigmoid = _simple("Sigmoid", sigmoid)
Mish = _simple("Mish", mish)
ReLU = _simple("ReLU", relu)
ReLU2 = _simple("ReLU2", relu2)
ReLU6 = _simple("ReLU6", relu6)
Softmax = _simple("Softmax", softmax)
Softplus = _simple("Softplus", softplus)
Softsign = _simple("Softsign", softsign)
SiLU = _simple("SiLU", silu)
LogSoftmax = _simple("LogSoftmax", log_softmax)
LogSigmoid = _simple("LogSigmoid", log_sigmoid)
Tanh = _simple("Tanh", tanh)
Hardswish = _simple("Hardswish", hardswish)
SELU = _simple("SELU", selu)
HardTanh = _simple("HardTanh", hard_tanh)
Softmin = _simple("Softmin", softmin)


class GLU(Module):
    """Applies :func:`glu` along ``axis`` (default -1), as ``mlx.nn.GLU``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.GLU()(jnp.zeros((3, 4))).shape
      (3, 2)
    """

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = _args.as_int(axis, "axis", "GLU")

    def __call__(self, x: jax.Array) -> jax.Array:
        return _glu(x, self.axis, "GLU")

    def __repr__(self) -> str:
        return f"GLU(axis={self.axis})"


class _OneFloat(Module):
    """An activation with one float hyperparameter, stored under MLX's attribute name."""

    _arg: str = ""
    _default: float = 0.0
    _fn: Any = None

    def __init__(self, value: float | None = None):
        super().__init__()
        value = self._default if value is None else value
        setattr(self, self._attr, _args.check_real(value, self._arg, type(self).__name__))

    def __call__(self, x: jax.Array) -> jax.Array:
        return type(self)._fn(x, getattr(self, self._attr))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._arg}={getattr(self, self._attr)})"


class LeakyReLU(_OneFloat):
    """Applies :func:`leaky_relu` (``negative_slope``, default 0.01), as ``mlx.nn.LeakyReLU``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> [round(v, 6) for v in nn.LeakyReLU(0.1)(jnp.array([-1.0, 2.0])).tolist()]
      [-0.1, 2.0]
    """

    _arg, _attr, _default, _fn = "negative_slope", "_negative_slope", 1e-2, staticmethod(leaky_relu)

    def __init__(self, negative_slope: float = 1e-2):
        super().__init__(negative_slope)


class ELU(_OneFloat):
    """Applies :func:`elu` (``alpha``, default 1.0), as ``mlx.nn.ELU``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.ELU()(jnp.array([0.0, 2.0])).tolist()
      [0.0, 2.0]
    """

    _arg, _attr, _default, _fn = "alpha", "_alpha", 1.0, staticmethod(elu)

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)


class CELU(_OneFloat):
    """Applies :func:`celu` (``alpha``, default 1.0), as ``mlx.nn.CELU``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.CELU()(jnp.array([0.0, 2.0])).tolist()
      [0.0, 2.0]
    """

    _arg, _attr, _default, _fn = "alpha", "_alpha", 1.0, staticmethod(celu)

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)


class Softshrink(_OneFloat):
    """Applies :func:`softshrink` (``lambd``, default 0.5), as ``mlx.nn.Softshrink``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.Softshrink()(jnp.array([0.25, 2.0])).tolist()
      [0.0, 1.5]
    """

    _arg, _attr, _default, _fn = "lambd", "lambd", 0.5, staticmethod(softshrink)

    def __init__(self, lambd: float = 0.5):
        super().__init__(lambd)


class HardShrink(_OneFloat):
    """Applies :func:`hard_shrink` (``lambd``, default 0.5), as ``mlx.nn.HardShrink``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.HardShrink()(jnp.array([0.25, 2.0])).tolist()
      [0.0, 2.0]
    """

    _arg, _attr, _default, _fn = "lambd", "lambd", 0.5, staticmethod(hard_shrink)

    def __init__(self, lambd: float = 0.5):
        super().__init__(lambd)


class Step(_OneFloat):
    """Applies :func:`step` (``threshold``, default 0.0), as ``mlx.nn.Step``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.Step()(jnp.array([-1.0, 0.0, 2.0])).tolist()
      [0, 1, 1]
    """

    _arg, _attr, _default, _fn = "threshold", "threshold", 0.0, staticmethod(step)

    def __init__(self, threshold: float = 0.0):
        super().__init__(threshold)


class PReLU(Module):
    """Applies :func:`prelu` with a learned ``weight`` of shape ``(num_parameters,)`` filled with
    ``init``, as ``mlx.nn.PReLU``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.PReLU()(jnp.array([-1.0, 2.0])).tolist()
      [-0.25, 2.0]
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25):
        super().__init__()
        n = _args.as_int(num_parameters, "num_parameters", "PReLU", minimum=1)
        self.weight = jnp.full((n,), _args.check_real(init, "init", "PReLU"), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _prelu(x, self.weight[...], "PReLU")

    def __repr__(self) -> str:
        return "PReLU()"  # MLX's


_GELU_APPROX = ("none", "precise", "tanh", "fast")


class GELU(Module):
    """GELU, as ``mlx.nn.GELU``: exact (``approx="none"``, the default), the tanh approximation
    (``"precise"`` or ``"tanh"``) or the sigmoid approximation (``"fast"``).

    Raises:
      ValueError: on another ``approx``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> x = jnp.array(1.0)
      >>> round(float(nn.GELU()(x)), 6), round(float(nn.GELU("tanh")(x)), 6)
      (0.841345, 0.841192)
    """

    def __init__(self, approx: str = "none"):
        super().__init__()
        if approx not in _GELU_APPROX:
            raise ValueError(f"[GELU] approx must be one of {_GELU_APPROX}, got {approx!r}.")
        self._approx = approx

    def __call__(self, x: jax.Array) -> jax.Array:
        if self._approx == "none":
            return gelu(x)
        if self._approx in ("precise", "tanh"):
            return gelu_approx(x)
        return gelu_fast_approx(x)

    def __repr__(self) -> str:
        return f"GELU(approx={self._approx!r})"



# -- documentation -----------------------------------------------------------------------------
# The functions and classes share their sections; they are composed here from the signatures so
# that every parameter, default and example stays in step with the code.

_PARAMS = {
    "x": "the input, ``(*S)``: any shape and real dtype (integers and bools as in MLX)",
    "alpha": "the scale of the negative part",
    "negative_slope": "the slope for negative inputs",
    "axis": "the axis to normalize over (``glu``: to split in halves)",
    "lambd": "the threshold below which (in magnitude) the output is 0",
    "threshold": "the smallest input that gives 1",
    "min_val": "the lower bound",
    "max_val": "the upper bound",
    "num_parameters": "the size of the learned ``weight``",
    "init": "the initial value of ``weight``",
    "approx": '``"none"`` (exact), ``"precise"`` / ``"tanh"`` or ``"fast"``',
}


def _args_section(fn: Any, skip: tuple[str, ...] = ()) -> str:
    lines = ["Args:"]
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        text = _PARAMS.get(name, name)
        if name == "alpha" and fn is prelu:
            text = "the slopes for negative inputs, broadcast against the last axes of ``x``"
        if p.default is not inspect.Parameter.empty:
            text += f". Default {p.default!r}"
        lines.append(f"  {name}: {text}.")
    return "\n".join(lines)  # an empty section: the constructor takes no arguments


def _document_function(fn: Any) -> None:
    shape_out = "(2, 2)" if fn is glu else "(2, 4)"
    call = "nn.prelu(x, jnp.array([0.25]))" if fn is prelu else f"nn.{fn.__name__}(x)"
    dtype = (
        "int32 (MLX's dtype)" if fn is step
        else "``x``'s dtype (bool inputs give int32, as in MLX)" if fn in (relu, relu2, hard_shrink)
        else "``x``'s floating dtype, float32 for integer and bool inputs (MLX's promotion)"
    )
    shape = "``x`` with ``axis`` halved" if fn is glu else "``(*S)``, ``x``'s shape"
    raises = "  TypeError: for an input that is not an array (a string, None, a ragged list)."
    if fn is glu:
        raises = "  ValueError: if ``axis`` is not an axis of ``x`` or its size is odd.\n" + raises
    if fn is prelu:
        raises = "  ValueError: when ``alpha`` would change ``x``'s shape.\n" + raises
    fn.__doc__ = (
        f"{fn.__doc__.strip()}\n\nAs ``mlx.nn.{fn.__name__}``.\n\n{_args_section(fn)}\n\n"
        f"Returns:\n  {shape}, {dtype}.\n\nRaises:\n{raises}\n\n"
        f"Example:\n  >>> import jax.numpy as jnp, convnn.layers as nn\n"
        f"  >>> x = jnp.linspace(-2.0, 2.0, 8).reshape(2, 4)\n"
        f"  >>> {call}.shape\n  {shape_out}\n"
    )


def _document_class(cls: type, fn: Any) -> None:
    doc = inspect.getdoc(cls) or ""
    summary, _, rest = doc.partition("\n\n")
    example = rest[rest.index("Example:"):] if "Example:" in rest else (
        "Example:\n  >>> import jax.numpy as jnp, convnn.layers as nn\n"
        f"  >>> nn.{cls.__name__}()(jnp.zeros((2, 4))).shape\n  (2, 4)"
    )
    raises = (
        "Raises:\n  TypeError: on a non-numeric hyperparameter; when called, on an input that\n"
        "    is not an array (the error names the function the layer applies)."
    )
    if cls is GELU:
        raises = "Raises:\n  ValueError: on an unknown ``approx``."
    if cls is GLU:
        raises += "\n  ValueError: when called, if ``axis`` is not an axis or its size is odd."
    if cls is PReLU:
        raises += "\n  ValueError: when called, if ``weight`` would change the input's shape."
    call = (
        f"``__call__(x)`` applies :func:`{fn.__name__}` to ``x`` (``(*S)``, any shape)."
        if fn is not None else "``__call__(x)``: ``x`` is ``(*S)``, any shape."
    )
    args = _args_section(cls.__init__, ("self",))
    cls.__doc__ = f"{summary}\n\n{call}\n\n{args}\n\n{raises}\n\n{example}\n"


for _fn in (
    sigmoid, relu, relu2, relu6, leaky_relu, log_softmax, elu, softmax, softplus, softsign,
    softshrink, celu, silu, log_sigmoid, gelu, gelu_approx, gelu_fast_approx, glu, step, selu,
    prelu, mish, hardswish, hard_tanh, hard_shrink, softmin, tanh,
):
    _document_function(_fn)
for _cls, _fn in (
    (Sigmoid, sigmoid), (Mish, mish), (ReLU, relu), (ReLU2, relu2), (ReLU6, relu6),
    (Softmax, softmax), (Softplus, softplus), (Softsign, softsign), (SiLU, silu),
    (LogSoftmax, log_softmax), (LogSigmoid, log_sigmoid), (Tanh, tanh), (Hardswish, hardswish),
    (SELU, selu), (HardTanh, hard_tanh), (Softmin, softmin), (GLU, glu), (LeakyReLU, leaky_relu),
    (ELU, elu), (CELU, celu), (Softshrink, softshrink), (HardShrink, hard_shrink), (Step, step),
    (PReLU, prelu), (GELU, None),
):
    _document_class(_cls, _fn)
del _fn, _cls
