"""Pooling layers: MLX's ``MaxPool*d`` / ``AvgPool*d`` with PyTorch's extra options."""

from __future__ import annotations

from typing import Any

import jax

from convnn import _args, _pool
from convnn.layers._module import Module

__all__ = ["MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d"]


class _MaxPool(Module):
    _n = 0

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        *,
        ceil_mode: bool = False,
        dilation: Any = 1,
    ):
        self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode = (
            _pool.pool_args(type(self).__name__, self._n, kernel_size, stride, padding, dilation,
                            ceil_mode)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        # The layer's name, not the function's, in error messages (as the conv layers do).
        return _pool.max_pool(type(self).__name__, self._n, x, self.kernel_size, self.stride,
                              self.padding, ceil_mode=self.ceil_mode, dilation=self.dilation)

    def __repr__(self) -> str:
        text = (f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        if any(d != 1 for d in self.dilation):
            text += f", dilation={self.dilation}"
        if self.ceil_mode:
            text += ", ceil_mode=True"
        return text + ")"


class _AvgPool(Module):
    _n = 0

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        *,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ):
        fn = type(self).__name__
        self.kernel_size, self.stride, self.padding, _, self.ceil_mode = _pool.pool_args(
            fn, self._n, kernel_size, stride, padding, 1, ceil_mode
        )
        self.count_include_pad = _args.check_bool(count_include_pad, "count_include_pad", fn)
        if not self.count_include_pad:
            _pool.check_exclude_pad(fn, self.padding, self.kernel_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _pool.avg_pool(type(self).__name__, self._n, x, self.kernel_size, self.stride,
                              self.padding, ceil_mode=self.ceil_mode,
                              count_include_pad=self.count_include_pad)

    def __repr__(self) -> str:
        text = (f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        if self.ceil_mode:
            text += ", ceil_mode=True"
        if not self.count_include_pad:
            text += ", count_include_pad=False"
        return text + ")"


_DOC = """{n}-D {what} pooling over channels-last ``{shape}`` (or unbatched), as ``mlx.nn.{mlx}``.

    ``__call__(x)`` returns :func:`convnn.{fn}` with the stored hyperparameters. The ``repr``
    is MLX's, with the PyTorch options appended when they are not their defaults.

    Args:
      kernel_size: window size, int or {n}-tuple.
      stride: int or {n}-tuple. Default ``None``: the kernel size.
      padding: int or {n}-tuple; {pad}. Any size, as in MLX (``count_include_pad=False`` needs
        at most ``kernel_size // 2``). Default 0.
      ceil_mode: round the output size up (PyTorch's meaning). Default False.
      {extra}

    Raises:
      TypeError: on non-integer sizes or non-bool flags.
      ValueError: on non-positive kernel sizes or strides or negative padding.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as L
      >>> pool = L.{mlx}(2)
      >>> pool
      {mlx}(kernel_size={k2}, stride={k2}, padding={k0})
      >>> pool(jnp.ones({x_shape})).shape
      {y_shape}
"""
_MAX_EXTRA = "dilation: window dilation, int or {n}-tuple (PyTorch's meaning). Default 1."
_AVG_EXTRA = (
    "count_include_pad: divide by the window's positions inside the padded input (True, the\n"
    "        default of MLX and PyTorch) or inside the input only (False)."
)
_SHAPES = {1: "(N, W, C)", 2: "(N, H, W, C)", 3: "(N, D, H, W, C)"}


def _doc(n, kind):
    mlx = f"{'Max' if kind == 'max' else 'Avg'}Pool{n}d"
    return _DOC.format(
        n=n,
        what="max" if kind == "max" else "average",
        shape=_SHAPES[n],
        mlx=mlx,
        fn=f"{kind}_pool{n}d",
        pad="padded with ``-inf``" if kind == "max" else "padded with zeros",
        extra=(_MAX_EXTRA if kind == "max" else _AVG_EXTRA).format(n=n),
        k2=(2,) * n,
        k0=(0,) * n,
        x_shape=(2,) + (8,) * n + (3,),
        y_shape=(2,) + (4,) * n + (3,),
    )


class MaxPool1d(_MaxPool):
    __doc__ = _doc(1, "max")
    _n = 1


class MaxPool2d(_MaxPool):
    __doc__ = _doc(2, "max")
    _n = 2


class MaxPool3d(_MaxPool):
    __doc__ = _doc(3, "max")
    _n = 3


class AvgPool1d(_AvgPool):
    __doc__ = _doc(1, "avg")
    _n = 1


class AvgPool2d(_AvgPool):
    __doc__ = _doc(2, "avg")
    _n = 2


class AvgPool3d(_AvgPool):
    __doc__ = _doc(3, "avg")
    _n = 3
