"""Convolution layers: MLX's ``Conv*d`` / ``ConvTranspose*d`` as Flax NNX modules."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from convnn import _args, _dispatch, _flax_compat
from convnn._lowering import Prologue
from convnn.layers import _random
from convnn.layers._module import Module
from convnn.layers._random import resolve_rngs

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_JNP_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
_SPATIAL = {1: "(W)", 2: "(H, W)", 3: "(D, H, W)"}


def uniform_init(bound: float):
    """An initializer drawing from ``uniform(-bound, bound)`` (MLX's convolution default)."""

    def init(key, shape, dtype=jnp.float32):
        return _random.uniform(key, shape, dtype, -bound, bound)

    return init


def check_dtype(value: Any, name: str, fn: str, *, optional: bool) -> Any:
    """``None`` (if ``optional``) or a floating dtype, as a NumPy dtype."""
    if value is None:
        if optional:
            return None
        raise TypeError(f"[{fn}] {name} must be a floating dtype, got None.")
    try:
        dtype = jnp.dtype(value)
    except TypeError as err:
        raise TypeError(f"[{fn}] {name} must be a floating dtype, got {value!r}.") from err
    _args.check_float_dtype(dtype, name, fn)
    return dtype


def _check_callable(value: Any, name: str, fn: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(
            f"[{fn}] {name} must be None or a callable (key, shape, dtype) -> array, got {value!r}."
        )


def _display(value: Any, n: int, expand_int: bool) -> Any:
    """How MLX's repr shows a hyperparameter: ints as given (or expanded to an n-tuple),
    sequences as tuples."""
    if isinstance(value, str):
        return value
    if _args._is_int(value):
        return (int(value),) * n if expand_int else int(value)
    items = list(value)
    if items and not _args._is_int(items[0]):  # (lows, highs)
        return tuple(tuple(int(v) for v in part) for part in items)
    return tuple(int(v) for v in items)


def _expand(v: jax.Array, ndim: int) -> jax.Array:
    """``v`` of shape ``(C,)`` as ``(1, ..., 1, C)``, so that adding it needs no rank promotion."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _as_input(x: Any, fn: str) -> jax.Array:
    x = _args.as_array(x, "input", fn)
    _args.check_float_dtype(x.dtype, "input", fn)
    return x


def _init_param(init, rng, shape, dtype, name: str, fn: str) -> jax.Array:
    """Calls an initializer and checks what it returns (shape, floating dtype)."""
    value = init(rng, shape, dtype)
    got_shape = getattr(value, "shape", None)
    if tuple(got_shape or ()) != shape or got_shape is None:
        raise ValueError(
            f"[{fn}] {name} must return an array of shape {shape}, got "
            f"{type(value).__name__} of shape {got_shape}."
        )
    _args.check_float_dtype(value.dtype, f"the result of {name}", fn)
    return value


class _ConvBase(Module):
    """Shared construction, casting and ``repr`` of the convolution layers."""

    _n: int = 0
    _transposed: bool = False

    def _setup(
        self, in_channels, out_channels, kernel_size, stride, padding, dilation, output_padding,
        groups, bias, rngs, padding_mode, dtype, param_dtype, precision, kernel_init, bias_init,
    ):
        fn, n = type(self).__name__, self._n
        in_channels = _args.as_int(in_channels, "in_channels", fn, minimum=1)
        out_channels = _args.as_int(out_channels, "out_channels", fn, minimum=1)
        groups = _args.as_int(groups, "groups", fn, minimum=1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"[{fn}] groups={groups} must divide both in_channels={in_channels} and "
                f"out_channels={out_channels}."
            )
        kernel = _args.normalize_tuple(kernel_size, n, "kernel_size", fn, minimum=1)
        strides = _args.normalize_tuple(stride, n, "stride", fn, minimum=1)
        dilations = _args.normalize_tuple(dilation, n, "dilation", fn, minimum=1)
        bias = _args.check_bool(bias, "bias", fn)
        if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
            raise ValueError(
                f"[{fn}] padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}."
            )
        if self._transposed:
            if padding_mode != "zeros":
                raise ValueError(
                    f"[{fn}] only padding_mode='zeros' is supported for transposed convolutions "
                    f"(as in PyTorch), got {padding_mode!r}."
                )
            lows, highs = _args.canonicalize_padding(padding, n, fn, allow_strings=False)
            if any(p < 0 for p in lows + highs):
                raise ValueError(f"[{fn}] padding must be non-negative, got {padding!r}.")
            canonical = (lows, highs)
            out_pad = _args.normalize_tuple(output_padding, n, "output_padding", fn, minimum=0)
            if any(op >= max(s, d) for op, s, d in zip(out_pad, strides, dilations)):
                raise ValueError(
                    f"[{fn}] output_padding must be smaller than stride or dilation on every "
                    f"axis, got output_padding={out_pad}, stride={strides}, dilation={dilations}."
                )
            self.output_padding = out_pad
        else:
            out_pad = 0
            canonical = _args.canonicalize_padding(padding, n, fn)  # strings allowed
        rngs = resolve_rngs(rngs, fn)
        _check_callable(kernel_init, "kernel_init", fn)
        _check_callable(bias_init, "bias_init", fn)
        self.dtype = check_dtype(dtype, "dtype", fn, optional=True)
        self.param_dtype = check_dtype(param_dtype, "param_dtype", fn, optional=False)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel
        self.stride = strides
        self.padding = padding if isinstance(padding, str) else _display(padding, n, False)
        self.dilation = dilations
        self.groups = groups
        self.padding_mode = padding_mode
        self.precision = precision
        # One static attribute (nnx.jit walks every attribute on every call): the canonical
        # arguments the call passes (validated once, here; the plan checks them against the
        # input's shape), then the values the repr shows.
        self._canonical = (strides, canonical, dilations, out_pad, *(
            _display(v, n, expand_int=n > 1 and name != "dilation")
            for name, v in (
                ("stride", stride), ("padding", padding), ("dilation", dilation),
                ("output_padding", output_padding if self._transposed else 0),
            )
        ))

        fan_in = in_channels // groups * math.prod(kernel)
        kernel_init = kernel_init or uniform_init(math.sqrt(1.0 / fan_in))
        bias_init = bias_init or nnx.initializers.zeros_init()
        shape = (out_channels, *kernel, in_channels // groups)
        _args.check_size(shape, "weight", fn, "check the layer's sizes")
        self.weight = nnx.Param(
            _init_param(kernel_init, rngs.params(), shape, self.param_dtype, "kernel_init", fn))
        if bias:
            self.bias = nnx.Param(_init_param(bias_init, rngs.params(), (out_channels,),
                                              self.param_dtype, "bias_init", fn))
        else:
            self.bias = _flax_compat.data(None)

    def _cast(self, x: jax.Array):
        """Casts input and parameters to the compute dtype (``dtype``, else MLX's promotion)."""
        x = _as_input(x, type(self).__name__)
        w = self.weight[...]
        dtype = self.dtype if self.dtype is not None else _args.promote_float(x.dtype, w.dtype)
        b = None if self.bias is None else self.bias[...].astype(dtype)
        return x.astype(dtype), w.astype(dtype), b

    def __repr__(self) -> str:
        n, g = self._n, self.groups
        stride, padding, dilation, output_padding = self._canonical[4:]
        kernel = self.kernel_size[0] if n == 1 else self.kernel_size
        text = (
            f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
            f"kernel_size={kernel}, stride={stride}, padding={padding!r}, dilation={dilation}, "
        )
        if self._transposed:
            text += f"output_padding={output_padding}, "
        # MLX's Conv3d and transposed layers have no groups (and print none); show it when used.
        if (n < 3 and not self._transposed) or g != 1:
            text += f"groups={g}, "
        text += f"bias={self.bias is not None}"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return text + ")"


def _pad_input(x: jax.Array, n: int, fn: str, pad: Any, mode: str, kernel, stride, dilation):
    """Pads ``x`` with ``jnp.pad(mode=...)``; returns it and the padding left for the conv
    (zero, or the negative part of the padding, which crops). ``pad`` is canonical:
    ``"same"``, ``"valid"`` or ``(lows, highs)``."""
    if x.ndim not in (n + 1, n + 2):
        raise ValueError(
            f"[{fn}] input must have shape (N, *spatial{_SPATIAL[n]}, C_in) or unbatched "
            f"(*spatial, C_in) with {n} spatial axes; got input shape {tuple(x.shape)}."
        )
    spatial = x.shape[-n - 1 : -1]
    if pad == "valid":
        return x, 0
    if pad == "same":
        k_dil = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
        pairs = lax.padtype_to_pads(spatial, k_dil, stride, "SAME")
        lows, highs = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    else:
        lows, highs = pad
    lead = x.ndim - n - 1
    widths = ((0, 0),) * lead + tuple((max(lo, 0), max(hi, 0)) for lo, hi in zip(lows, highs))
    _args.check_size([s + lo + hi for s, (lo, hi) in zip(x.shape, widths + ((0, 0),))],
                     f"{mode}-padded input", fn, f"check padding; got input shape {x.shape}")
    x = jnp.pad(x, widths + ((0, 0),), mode=_JNP_PAD_MODE[mode])
    rest = (tuple(min(lo, 0) for lo in lows), tuple(min(hi, 0) for hi in highs))
    return x, rest


class _Conv(_ConvBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
        padding_mode: str = "zeros",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Any = None,
        bias_init: Any = None,
    ):
        self._setup(
            in_channels, out_channels, kernel_size, stride, padding, dilation, None, groups, bias,
            rngs, padding_mode, dtype, param_dtype, precision, kernel_init, bias_init,
        )

    def __call__(self, x: jax.Array, *, prologue: Prologue | None = None) -> jax.Array:
        x, w, b = self._cast(x)
        stride, padding, dilation = self._canonical[:3]
        name = type(self).__name__
        if self.padding_mode != "zeros":
            x, padding = _pad_input(x, self._n, name, padding, self.padding_mode,
                                    self.kernel_size, stride, dilation)
        y = _dispatch.conv(self._fn, x, w, stride, padding, dilation, 1, self.groups, False, 0,
                           None, self.precision, None, name, prologue)
        return y if b is None else y + _expand(b, y.ndim)


class _ConvTranspose(_ConvBase):
    _transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
        padding_mode: str = "zeros",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Any = None,
        bias_init: Any = None,
    ):
        self._setup(
            in_channels, out_channels, kernel_size, stride, padding, dilation, output_padding,
            groups, bias, rngs, padding_mode, dtype, param_dtype, precision, kernel_init,
            bias_init,
        )

    def __call__(self, x: jax.Array, *, prologue: Prologue | None = None) -> jax.Array:
        x, w, b = self._cast(x)
        stride, padding, dilation, output_padding = self._canonical[:4]
        y = _dispatch.conv(self._fn, x, w, stride, padding, dilation, 1, self.groups, False,
                           output_padding, None, self.precision, None, type(self).__name__,
                           prologue)
        return y if b is None else y + _expand(b, y.ndim)


_CONV_ARGS = """
    Args:
      in_channels: input channels ``C_in`` (the last input axis), a positive int.
      out_channels: output channels ``C_out``, a positive int.
      kernel_size: int or {n}-tuple.
      stride: int or {n}-tuple. Default 1.
      padding: zero padding, as in :func:`convnn.{fn}`: int or {n}-tuple (both sides),
        {padding_extra}Default 0.
      dilation: kernel dilation, int or {n}-tuple. Default 1.{output_padding}
      groups: channel groups; must divide ``in_channels`` and ``out_channels``. Default 1.
      bias: add a learnable ``bias`` of shape ``(C_out,)``; ``self.bias`` is ``None`` when
        False. Default True.
      rngs: an ``nnx.Rngs``, whose ``params`` stream draws the parameters. Default ``None``:
        convnn's default stream (see :func:`convnn.layers.seed`).
      padding_mode: {padding_mode}
      dtype: the compute dtype: input and parameters are cast to it. Default ``None``: MLX's
        promotion of the input's and the parameters' dtypes.
      param_dtype: the storage dtype of the parameters. Default float32.
      precision: passed to ``lax`` (e.g. ``jax.lax.Precision.HIGHEST``). Default ``None``.
      kernel_init: ``init(key, shape, dtype)`` for ``weight``. Default: uniform in
        ``+-sqrt(1 / fan_in)`` with ``fan_in = in_channels // groups * prod(kernel_size)``
        {fan_note}
      bias_init: ``init(key, shape, dtype)`` for ``bias``. Default zeros (as MLX; PyTorch draws
        the bias uniformly).

    Attributes:
      weight: ``nnx.Param`` of shape ``(C_out, *kernel_size, C_in // groups)`` (MLX layout).
      bias: ``nnx.Param`` of shape ``(C_out,)``, or ``None``.

    Raises:
      TypeError: on non-integer sizes, a non-bool ``bias``, a non-floating dtype or missing
        ``rngs``.
      ValueError: on non-positive channels, kernel sizes, strides or dilations, groups that do
        not divide the channels, bad padding or an unknown ``padding_mode``.
"""

_CONV_PADDING_EXTRA = (
    "a pair ``(lows, highs)`` of {n}-tuples, ``\"same\"`` or ``\"valid\"``; negative values crop. "
)
_CONV_PADDING_MODE = (
    '``"zeros"`` (default), or ``"reflect"``, ``"replicate"``, ``"circular"``\n'
    "        (PyTorch's modes): the input is first padded with ``jnp.pad`` (``reflect``,\n"
    "        ``edge``, ``wrap``) and convolved with zero padding."
)
_T_PADDING_MODE = '``"zeros"`` only (as PyTorch); other modes raise ``ValueError``.'
_T_OUTPUT_PADDING = (
    "\n      output_padding: extra output size on the high side, int or {n}-tuple, smaller than "
    "stride\n        or dilation. Default 0."
)
_FAN_NOTE = "(MLX's bound, with its fan-in counted per group)."
_T_FAN_NOTE = (
    "(per group). This is the fan-in of the\n"
    "        weight as laid out, ``prod(weight.shape[1:])``, and equals MLX's bound (MLX has no\n"
    "        groups here), so MLX-initialised and convnn-initialised models match in\n"
    "        distribution. PyTorch instead uses ``C_out // groups * prod(kernel_size)``; pass\n"
    "        ``kernel_init`` for that."
)


def _conv_doc(n: int, transposed: bool, summary: str, example: str) -> str:
    fn = f"conv_transpose{n}d" if transposed else f"conv{n}d"
    args = _CONV_ARGS.format(
        n=n,
        fn=fn,
        padding_extra=(
            "or a pair ``(lows, highs)``; non-negative. "
            if transposed
            else _CONV_PADDING_EXTRA.format(n=n)
        ),
        output_padding=_T_OUTPUT_PADDING.format(n=n) if transposed else "",
        padding_mode=_T_PADDING_MODE if transposed else _CONV_PADDING_MODE,
        fan_note=_T_FAN_NOTE if transposed else _FAN_NOTE,
    )
    return f"{summary}\n{args}\n    Example:\n{example}"


class Conv1d(_Conv):
    _n = 1
    _fn = "conv1d"
    __doc__ = _conv_doc(
        1,
        False,
        """1-D convolution over channels-last ``(N, W, C_in)`` (or unbatched), as ``mlx.nn.Conv1d``.

    ``__call__(x, *, prologue=None)`` returns :func:`convnn.conv1d` of ``x`` with ``weight``
    (through ``prologue``, a :class:`convnn.Prologue`, when given), plus ``bias``.
""",
        """      >>> import jax.numpy as jnp, convnn.layers as L
      >>> from flax import nnx
      >>> conv = L.Conv1d(4, 8, 3, padding=1, rngs=nnx.Rngs(0))
      >>> conv
      Conv1d(4, 8, kernel_size=3, stride=1, padding=1, dilation=1, groups=1, bias=True)
      >>> conv(jnp.ones((2, 16, 4))).shape
      (2, 16, 8)
""",
    )


class Conv2d(_Conv):
    _n = 2
    _fn = "conv2d"
    __doc__ = _conv_doc(
        2,
        False,
        """2-D convolution over channels-last ``(N, H, W, C_in)``, as ``mlx.nn.Conv2d``.

    ``__call__(x, *, prologue=None)`` returns :func:`convnn.conv2d` of ``x`` with ``weight``
    (through ``prologue``, a :class:`convnn.Prologue`, when given), plus ``bias``.
""",
        """      >>> import jax.numpy as jnp, convnn.layers as L
      >>> from flax import nnx
      >>> conv = L.Conv2d(4, 8, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
      >>> conv
      Conv2d(4, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), """
        """dilation=1, groups=1, bias=True)
      >>> conv.weight.shape
      (8, 3, 3, 4)
      >>> conv(jnp.ones((2, 16, 16, 4))).shape
      (2, 8, 8, 8)
""",
    )


class Conv3d(_Conv):
    _n = 3
    _fn = "conv3d"
    __doc__ = _conv_doc(
        3,
        False,
        "3-D convolution over channels-last ``(N, D, H, W, C_in)``, as ``mlx.nn.Conv3d``"
        """ (+ groups).

    ``__call__(x, *, prologue=None)`` returns :func:`convnn.conv3d` of ``x`` with ``weight``
    (through ``prologue``, a :class:`convnn.Prologue`, when given), plus ``bias``.
    The ``repr`` shows ``groups`` only when it is not 1 (MLX's ``Conv3d`` has none).
""",
        """      >>> import jax.numpy as jnp, convnn.layers as L
      >>> from flax import nnx
      >>> conv = L.Conv3d(4, 8, 3, padding=1, groups=2, rngs=nnx.Rngs(0))
      >>> conv.weight.shape
      (8, 3, 3, 3, 2)
      >>> conv(jnp.ones((1, 6, 6, 6, 4))).shape
      (1, 6, 6, 6, 8)
""",
    )


class ConvTranspose1d(_ConvTranspose):
    _n = 1
    _fn = "conv_transpose1d"
    __doc__ = _conv_doc(
        1,
        True,
        "1-D transposed convolution over ``(N, W, C_in)``, as MLX's ``ConvTranspose1d``"
        """ (+ groups).

    ``__call__(x, *, prologue=None)`` returns :func:`convnn.conv_transpose1d` of ``x`` with
    ``weight`` (through ``prologue`` when given), plus ``bias``. The ``repr`` shows ``groups``
    only when it is not 1 (MLX's layer has none).
""",
        """      >>> import jax.numpy as jnp, convnn.layers as L
      >>> from flax import nnx
      >>> up = L.ConvTranspose1d(8, 4, 4, stride=2, padding=1, rngs=nnx.Rngs(0))
      >>> up(jnp.ones((2, 16, 8))).shape
      (2, 32, 4)
""",
    )


class ConvTranspose2d(_ConvTranspose):
    _n = 2
    _fn = "conv_transpose2d"
    __doc__ = _conv_doc(
        2,
        True,
        "2-D transposed convolution over ``(N, H, W, C_in)``, as MLX's ``ConvTranspose2d``"
        """ (+ groups).

    ``__call__(x, *, prologue=None)`` returns :func:`convnn.conv_transpose2d` of ``x`` with
    ``weight`` (through ``prologue`` when given), plus ``bias``. The ``repr`` shows ``groups``
    only when it is not 1 (MLX's layer has none).
""",
        """      >>> import jax.numpy as jnp, convnn.layers as L
      >>> from flax import nnx
      >>> up = L.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, rngs=nnx.Rngs(0))
      >>> up.weight.shape
      (4, 3, 3, 8)
      >>> up(jnp.ones((2, 8, 8, 8))).shape
      (2, 16, 16, 4)
""",
    )


class ConvTranspose3d(_ConvTranspose):
    _n = 3
    _fn = "conv_transpose3d"
    __doc__ = _conv_doc(
        3,
        True,
        "3-D transposed convolution over ``(N, D, H, W, C_in)``, as MLX's ``ConvTranspose3d``"
        """ (+ groups).

    ``__call__(x, *, prologue=None)`` returns :func:`convnn.conv_transpose3d` of ``x`` with
    ``weight`` (through ``prologue`` when given), plus ``bias``. The ``repr`` shows ``groups``
    only when it is not 1 (MLX's layer has none).
""",
        """      >>> import jax.numpy as jnp, convnn.layers as L
      >>> from flax import nnx
      >>> up = L.ConvTranspose3d(4, 2, 2, stride=2, rngs=nnx.Rngs(0))
      >>> up(jnp.ones((1, 3, 3, 3, 4))).shape
      (1, 6, 6, 6, 2)
""",
    )
