"""The functional convolution API, with Apple MLX's signatures and semantics.

Inputs are channels-last, ``(N, *spatial, C_in)`` (or unbatched ``(*spatial, C_in)``), and
weights are ``(C_out, *kernel, C_in // groups)`` for convolutions and transposed convolutions
alike. Every function forwards to one private general convolution; all argument handling happens
in Python at trace time, so under ``jax.jit`` with the ``"xla"`` strategy a dense or grouped
convolution costs exactly one ``lax.conv_general_dilated``. The default ``"auto"`` policy may pick
a faster strategy per backend (see ``convnn.lowering``).

Differences from MLX (all additive):

* tuple arguments for the 1-D functions; unbatched inputs; grouped 3-D and grouped transposed
  convolutions; ``padding="same"`` / ``"valid"`` on the convolutions;
* keyword-only ``precision`` and ``preferred_element_type``, passed to ``lax``;
* with input dilation, padding and cropping apply to the *dilated* input (as in ``lax`` and as the
  definition of transposed convolution needs). MLX crops before dilating, which makes its
  transposed convolutions wrong when ``padding > dilation * (kernel - 1)``;
* invalid arguments raise ``ValueError`` / ``TypeError`` where MLX may crash, truncate or
  silently compute something else.
"""

from __future__ import annotations

from typing import Any

import jax

from convnn import _pool
from convnn._dispatch import conv as _conv
from convnn._lowering import Prologue

__all__ = [
    "Prologue",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_general",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
]

IntOrTuple = Any  # int or a sequence of ints, one per spatial axis


def conv1d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    /,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    prologue: Prologue | None = None,
) -> jax.Array:
    """1-D convolution (cross-correlation) over channels-last input, as ``mlx.core.conv1d``.

    Args:
      input: ``(N, W, C_in)``, or unbatched ``(W, C_in)``; a floating dtype.
      weight: ``(C_out, K, C_in // groups)``.
      stride: int or 1-tuple. Default 1.
      padding: int or 1-tuple (symmetric), a pair ``(lows, highs)``, ``"same"`` or ``"valid"``.
        Negative values crop. Default 0.
      dilation: kernel dilation, int or 1-tuple. Default 1.
      groups: number of channel groups; must divide ``C_in`` and ``C_out``. Default 1.
      stream: ``None`` (JAX's placement), a ``jax.Device`` or a platform name like ``"cpu"``.
        Default ``None``.
      precision: passed to ``lax.conv_general_dilated``. Default ``None``.
      preferred_element_type: accumulation and output dtype (e.g. float32 for bfloat16 inputs).
        Default ``None``: the promoted input dtype.
      prologue: a :class:`convnn.Prologue`: convolve ``act(input * scale + shift)``
        (docs/layers.md, "Fusing a BatchNorm into the next convolution"). Default ``None``.

    Returns:
      ``(N, W_out, C_out)`` (unbatched in, unbatched out), with
      ``W_out = floor((W + lo + hi - dilation * (K - 1) - 1) / stride) + 1``.

    Raises:
      ValueError: on wrong ranks, mismatched channels, bad groups, stride, dilation or padding,
        or an empty output.
      TypeError: on non-integer arguments or integer, bool or complex arrays.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((2, 10, 3))
      >>> w = jnp.ones((4, 3, 3))
      >>> convnn.conv1d(x, w, padding=1).shape
      (2, 10, 4)
    """
    return _conv("conv1d", input, weight, stride, padding, dilation, 1, groups, False, 0,
                 stream, precision, preferred_element_type, prologue=prologue)


def conv2d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    /,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    prologue: Prologue | None = None,
) -> jax.Array:
    """2-D convolution (cross-correlation) over channels-last input, as ``mlx.core.conv2d``.

    Args:
      input: ``(N, H, W, C_in)``, or unbatched ``(H, W, C_in)``; a floating dtype.
      weight: ``(C_out, KH, KW, C_in // groups)``.
      stride: int or 2-tuple. Default 1.
      padding: int or 2-tuple (symmetric per axis), a pair ``(lows, highs)`` of 2-tuples,
        ``"same"`` or ``"valid"``. Negative values crop. Default 0.
      dilation: kernel dilation, int or 2-tuple. Default 1.
      groups: number of channel groups; must divide ``C_in`` and ``C_out``. Default 1.
      stream: ``None`` (JAX's placement), a ``jax.Device`` or a platform name like ``"cpu"``.
        Default ``None``.
      precision: passed to ``lax.conv_general_dilated``. Default ``None``.
      preferred_element_type: accumulation and output dtype (e.g. float32 for bfloat16 inputs).
        Default ``None``: the promoted input dtype.
      prologue: a :class:`convnn.Prologue`: convolve ``act(input * scale + shift)``
        (docs/layers.md, "Fusing a BatchNorm into the next convolution"). Default ``None``.

    Returns:
      ``(N, H_out, W_out, C_out)``, per axis
      ``floor((S + lo + hi - dilation * (K - 1) - 1) / stride) + 1``.

    Raises:
      ValueError: on wrong ranks, mismatched channels, bad groups, stride, dilation or padding,
        or an empty output.
      TypeError: on non-integer arguments or integer, bool or complex arrays.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 8, 8, 3))
      >>> w = jnp.ones((16, 3, 3, 3))
      >>> convnn.conv2d(x, w, stride=2, padding=1).shape
      (1, 4, 4, 16)
    """
    return _conv("conv2d", input, weight, stride, padding, dilation, 1, groups, False, 0,
                 stream, precision, preferred_element_type, prologue=prologue)


def conv3d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    /,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    prologue: Prologue | None = None,
) -> jax.Array:
    """3-D convolution (cross-correlation) over channels-last input, as ``mlx.core.conv3d``.

    Unlike MLX, ``groups > 1`` is supported.

    Args:
      input: ``(N, D, H, W, C_in)``, or unbatched ``(D, H, W, C_in)``; a floating dtype.
      weight: ``(C_out, KD, KH, KW, C_in // groups)``.
      stride: int or 3-tuple. Default 1.
      padding: int or 3-tuple (symmetric per axis), a pair ``(lows, highs)`` of 3-tuples,
        ``"same"`` or ``"valid"``. Negative values crop. Default 0.
      dilation: kernel dilation, int or 3-tuple. Default 1.
      groups: number of channel groups; must divide ``C_in`` and ``C_out``. Default 1.
      stream: ``None`` (JAX's placement), a ``jax.Device`` or a platform name like ``"cpu"``.
        Default ``None``.
      precision: passed to ``lax.conv_general_dilated``. Default ``None``.
      preferred_element_type: accumulation and output dtype.
        Default ``None``: the promoted input dtype.
      prologue: a :class:`convnn.Prologue`: convolve ``act(input * scale + shift)``
        (docs/layers.md, "Fusing a BatchNorm into the next convolution"). Default ``None``.

    Returns:
      ``(N, D_out, H_out, W_out, C_out)``.

    Raises:
      ValueError: on wrong ranks, mismatched channels, bad groups, stride, dilation or padding,
        or an empty output.
      TypeError: on non-integer arguments or integer, bool or complex arrays.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 4, 6, 6, 4))
      >>> w = jnp.ones((8, 3, 3, 3, 2))
      >>> convnn.conv3d(x, w, padding=1, groups=2).shape
      (1, 4, 6, 6, 8)
    """
    return _conv("conv3d", input, weight, stride, padding, dilation, 1, groups, False, 0,
                 stream, precision, preferred_element_type, prologue=prologue)


def conv_transpose1d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    /,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    *,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    prologue: Prologue | None = None,
) -> jax.Array:
    """1-D transposed convolution, as ``mlx.core.conv_transpose1d`` (PyTorch's convention).

    ``stride``, ``padding`` and ``dilation`` are those of the forward convolution being
    transposed. The weight has MLX's layout ``(C_out, K, C_in // groups)``, not PyTorch's
    ``(C_in, C_out // groups, K)``.

    Args:
      input: ``(N, W, C_in)``, or unbatched ``(W, C_in)``.
      weight: ``(C_out, K, C_in // groups)``.
      stride: int or 1-tuple. Default 1.
      padding: non-negative int or 1-tuple. Default 0.
      dilation: int or 1-tuple. Default 1.
      output_padding: extra size on the high side, smaller than stride or dilation. Default 0.
      groups: number of channel groups. Default 1.
      stream: ``None``, a ``jax.Device`` or a platform name.
        Default ``None``.
      precision: passed to ``lax``. Default ``None``.
      preferred_element_type: accumulation and output dtype.
        Default ``None``: the promoted input dtype.
      prologue: a :class:`convnn.Prologue`: convolve ``act(input * scale + shift)``
        (docs/layers.md, "Fusing a BatchNorm into the next convolution"). Default ``None``.

    Returns:
      ``(N, W_out, C_out)`` with
      ``W_out = (W - 1) * stride - 2 * padding + dilation * (K - 1) + output_padding + 1``.

    Raises:
      ValueError: on negative padding, bad output_padding, wrong shapes or an empty output.
      TypeError: on non-integer arguments or non-floating arrays.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 5, 4))
      >>> w = jnp.ones((2, 3, 4))
      >>> convnn.conv_transpose1d(x, w, stride=2, padding=1, output_padding=1).shape
      (1, 10, 2)
    """
    return _conv("conv_transpose1d", input, weight, stride, padding, dilation, 1, groups,
                 False, output_padding, stream, precision, preferred_element_type,
                 prologue=prologue)


def conv_transpose2d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    /,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    *,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    prologue: Prologue | None = None,
) -> jax.Array:
    """2-D transposed convolution, as ``mlx.core.conv_transpose2d`` (PyTorch's convention).

    Args:
      input: ``(N, H, W, C_in)``, or unbatched ``(H, W, C_in)``.
      weight: ``(C_out, KH, KW, C_in // groups)`` (MLX layout).
      stride: int or 2-tuple. Default 1.
      padding: non-negative int or 2-tuple: the forward convolution's padding. Default 0.
      dilation: int or 2-tuple. Default 1.
      output_padding: extra size on the high side, smaller than stride or dilation. Default 0.
      groups: number of channel groups. Default 1.
      stream: ``None``, a ``jax.Device`` or a platform name.
        Default ``None``.
      precision: passed to ``lax``. Default ``None``.
      preferred_element_type: accumulation and output dtype.
        Default ``None``: the promoted input dtype.
      prologue: a :class:`convnn.Prologue`: convolve ``act(input * scale + shift)``
        (docs/layers.md, "Fusing a BatchNorm into the next convolution"). Default ``None``.

    Returns:
      ``(N, H_out, W_out, C_out)``, per axis
      ``(S - 1) * stride - 2 * padding + dilation * (K - 1) + output_padding + 1``.

    Raises:
      ValueError: on negative padding, bad output_padding, wrong shapes or an empty output.
      TypeError: on non-integer arguments or non-floating arrays.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 4, 4, 8))
      >>> w = jnp.ones((3, 3, 3, 8))
      >>> convnn.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1).shape
      (1, 8, 8, 3)
    """
    return _conv("conv_transpose2d", input, weight, stride, padding, dilation, 1, groups,
                 False, output_padding, stream, precision, preferred_element_type,
                 prologue=prologue)


def conv_transpose3d(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    /,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    *,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    prologue: Prologue | None = None,
) -> jax.Array:
    """3-D transposed convolution, as ``mlx.core.conv_transpose3d`` (PyTorch's convention).

    Args:
      input: ``(N, D, H, W, C_in)``, or unbatched ``(D, H, W, C_in)``.
      weight: ``(C_out, KD, KH, KW, C_in // groups)`` (MLX layout).
      stride: int or 3-tuple. Default 1.
      padding: non-negative int or 3-tuple. Default 0.
      dilation: int or 3-tuple. Default 1.
      output_padding: extra size on the high side, smaller than stride or dilation. Default 0.
      groups: number of channel groups. Default 1.
      stream: ``None``, a ``jax.Device`` or a platform name.
        Default ``None``.
      precision: passed to ``lax``. Default ``None``.
      preferred_element_type: accumulation and output dtype.
        Default ``None``: the promoted input dtype.
      prologue: a :class:`convnn.Prologue`: convolve ``act(input * scale + shift)``
        (docs/layers.md, "Fusing a BatchNorm into the next convolution"). Default ``None``.

    Returns:
      ``(N, D_out, H_out, W_out, C_out)``.

    Raises:
      ValueError: on negative padding, bad output_padding, wrong shapes or an empty output.
      TypeError: on non-integer arguments or non-floating arrays.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 2, 3, 3, 2))
      >>> w = jnp.ones((4, 2, 2, 2, 2))
      >>> convnn.conv_transpose3d(x, w, stride=2).shape
      (1, 4, 6, 6, 4)
    """
    return _conv("conv_transpose3d", input, weight, stride, padding, dilation, 1, groups,
                 False, output_padding, stream, precision, preferred_element_type,
                 prologue=prologue)


def conv_general(
    input: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    /,
    stride: IntOrTuple = 1,
    padding: Any = 0,
    kernel_dilation: IntOrTuple = 1,
    input_dilation: IntOrTuple = 1,
    groups: int = 1,
    flip: bool = False,
    *,
    stream: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    prologue: Prologue | None = None,
) -> jax.Array:
    """General N-d convolution (1 to 3 spatial axes), as ``mlx.core.conv_general``.

    The number of spatial axes is ``weight.ndim - 2``.

    Args:
      input: ``(N, *spatial, C_in)``, or unbatched ``(*spatial, C_in)``.
      weight: ``(C_out, *kernel, C_in // groups)``.
      stride: int or one int per axis. Default 1.
      padding: an int; one int per axis (symmetric); a pair ``(lows, highs)`` of per-axis
        sequences (lows for every axis, then highs: for 2-D, ``((1, 1), (2, 2))`` means lows
        ``(1, 1)`` and highs ``(2, 2)``, not lax's per-axis pairs); or ``"same"`` / ``"valid"``.
        Negative values crop. Padding applies to the input after input dilation. Default 0.
      kernel_dilation: int or one per axis. Default 1.
      input_dilation: int or one per axis (zeros inserted between input elements). Default 1.
      groups: number of channel groups. Default 1.
      flip: if true, a true convolution (kernel reversed) instead of cross-correlation.
        Default False.
      stream: ``None``, a ``jax.Device`` or a platform name.
        Default ``None``.
      precision: passed to ``lax``. Default ``None``.
      preferred_element_type: accumulation and output dtype.
        Default ``None``: the promoted input dtype.
      prologue: a :class:`convnn.Prologue`: convolve ``act(input * scale + shift)``
        (docs/layers.md, "Fusing a BatchNorm into the next convolution"). Default ``None``.

    Returns:
      ``(N, *spatial_out, C_out)``, per axis
      ``floor(((S - 1) * input_dilation + 1 + lo + hi - kernel_dilation * (K - 1) - 1)
      / stride) + 1``.

    Raises:
      ValueError: on wrong shapes or arguments, or an empty output.
      TypeError: on non-integer arguments or non-floating arrays.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 5, 5, 2))
      >>> w = jnp.ones((3, 3, 3, 2))
      >>> convnn.conv_general(x, w, padding=((1, 0), (2, 1)), input_dilation=2).shape
      (1, 10, 8, 3)
    """
    return _conv("conv_general", input, weight, stride, padding, kernel_dilation,
                 input_dilation, groups, flip, 0, stream, precision, preferred_element_type,
                 prologue=prologue)


def max_pool1d(
    x: jax.typing.ArrayLike,
    /,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    *,
    ceil_mode: bool = False,
    dilation: IntOrTuple = 1,
) -> jax.Array:
    """1-D max pooling over channels-last input, as ``mlx.nn.MaxPool1d``, plus PyTorch's options.

    Args:
      x: ``(N, W, C)``, or unbatched ``(W, C)``; a floating or integer dtype.
      kernel_size: window size, int or 1-tuple.
      stride: int or 1-tuple. Default ``None``: the kernel size (MLX and PyTorch).
      padding: int or 1-tuple, added on both sides of each spatial axis with ``-inf`` (the dtype's
        lowest value for integers); at most ``kernel_size // 2`` (PyTorch's rule; MLX accepts
        more but then pools windows of padding only). Default 0.
      ceil_mode: round the output size up, as PyTorch does; a window that would start in the
        right padding is dropped. Default False.
      dilation: window dilation, int or 1-tuple (PyTorch's meaning). Default 1.

    Returns:
      ``(N, W_out, C)`` (unbatched without ``N``), in ``x``'s dtype; per axis
      ``floor((S + 2 * padding - dilation * (K - 1) - 1) / stride) + 1`` (``ceil`` with
      ``ceil_mode``).

    Raises:
      ValueError: on a wrong rank, non-positive kernel, stride or dilation, negative or too
        large padding, or a window larger than the padded input.
      TypeError: on non-integer arguments, non-bool ``ceil_mode``, or a bool or complex input.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 7, 3))
      >>> convnn.max_pool1d(x, 2).shape
      (1, 3, 3)
      >>> convnn.max_pool1d(x, 2, ceil_mode=True).shape
      (1, 4, 3)
    """
    return _pool.max_pool(
        "max_pool1d", 1, x, kernel_size, stride, padding, ceil_mode=ceil_mode,
        dilation=dilation,
    )


def max_pool2d(
    x: jax.typing.ArrayLike,
    /,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    *,
    ceil_mode: bool = False,
    dilation: IntOrTuple = 1,
) -> jax.Array:
    """2-D max pooling over channels-last input, as ``mlx.nn.MaxPool2d``, plus PyTorch's options.

    Args:
      x: ``(N, H, W, C)``, or unbatched ``(H, W, C)``; a floating or integer dtype.
      kernel_size: window size, int or 2-tuple.
      stride: int or 2-tuple. Default ``None``: the kernel size (MLX and PyTorch).
      padding: int or 2-tuple, added on both sides of each spatial axis with ``-inf`` (the dtype's
        lowest value for integers); at most ``kernel_size // 2`` (PyTorch's rule; MLX accepts
        more but then pools windows of padding only). Default 0.
      ceil_mode: round the output size up, as PyTorch does; a window that would start in the
        right padding is dropped. Default False.
      dilation: window dilation, int or 2-tuple (PyTorch's meaning). Default 1.

    Returns:
      ``(N, H_out, W_out, C)`` (unbatched without ``N``), in ``x``'s dtype; per axis
      ``floor((S + 2 * padding - dilation * (K - 1) - 1) / stride) + 1`` (``ceil`` with
      ``ceil_mode``).

    Raises:
      ValueError: on a wrong rank, non-positive kernel, stride or dilation, negative or too
        large padding, or a window larger than the padded input.
      TypeError: on non-integer arguments, non-bool ``ceil_mode``, or a bool or complex input.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 7, 7, 3))
      >>> convnn.max_pool2d(x, 2).shape
      (1, 3, 3, 3)
      >>> convnn.max_pool2d(x, 2, ceil_mode=True).shape
      (1, 4, 4, 3)
    """
    return _pool.max_pool(
        "max_pool2d", 2, x, kernel_size, stride, padding, ceil_mode=ceil_mode,
        dilation=dilation,
    )


def max_pool3d(
    x: jax.typing.ArrayLike,
    /,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    *,
    ceil_mode: bool = False,
    dilation: IntOrTuple = 1,
) -> jax.Array:
    """3-D max pooling over channels-last input, as ``mlx.nn.MaxPool3d``, plus PyTorch's options.

    Args:
      x: ``(N, D, H, W, C)``, or unbatched ``(D, H, W, C)``; a floating or integer dtype.
      kernel_size: window size, int or 3-tuple.
      stride: int or 3-tuple. Default ``None``: the kernel size (MLX and PyTorch).
      padding: int or 3-tuple, added on both sides of each spatial axis with ``-inf`` (the dtype's
        lowest value for integers); at most ``kernel_size // 2`` (PyTorch's rule; MLX accepts
        more but then pools windows of padding only). Default 0.
      ceil_mode: round the output size up, as PyTorch does; a window that would start in the
        right padding is dropped. Default False.
      dilation: window dilation, int or 3-tuple (PyTorch's meaning). Default 1.

    Returns:
      ``(N, D_out, H_out, W_out, C)`` (unbatched without ``N``), in ``x``'s dtype; per axis
      ``floor((S + 2 * padding - dilation * (K - 1) - 1) / stride) + 1`` (``ceil`` with
      ``ceil_mode``).

    Raises:
      ValueError: on a wrong rank, non-positive kernel, stride or dilation, negative or too
        large padding, or a window larger than the padded input.
      TypeError: on non-integer arguments, non-bool ``ceil_mode``, or a bool or complex input.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 7, 7, 7, 3))
      >>> convnn.max_pool3d(x, 2).shape
      (1, 3, 3, 3, 3)
      >>> convnn.max_pool3d(x, 2, ceil_mode=True).shape
      (1, 4, 4, 4, 3)
    """
    return _pool.max_pool(
        "max_pool3d", 3, x, kernel_size, stride, padding, ceil_mode=ceil_mode,
        dilation=dilation,
    )


def avg_pool1d(
    x: jax.typing.ArrayLike,
    /,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """1-D average pooling, as ``mlx.nn.AvgPool1d``, plus PyTorch's options.

    Args:
      x: ``(N, W, C)``, or unbatched ``(W, C)``; a floating dtype (16-bit floats are summed in
        float32).
      kernel_size: window size, int or 1-tuple.
      stride: int or 1-tuple. Default ``None``: the kernel size (MLX and PyTorch).
      padding: int or 1-tuple of zeros added on both sides of each spatial axis; at most
        ``kernel_size // 2`` (PyTorch's rule). Default 0.
      ceil_mode: round the output size up, as PyTorch does; a window that would start in the
        right padding is dropped. Default False.
      count_include_pad: divide by the number of window positions inside the padded input (True,
        MLX's and PyTorch's default) or inside the input only (False). Positions beyond the
        padding that ``ceil_mode`` adds are never counted (PyTorch's rule). Default True.

    Returns:
      ``(N, W_out, C)`` (unbatched without ``N``), in ``x``'s dtype; sizes as for
      max pooling without dilation.

    Raises:
      ValueError: on a wrong rank, non-positive kernel or stride, negative or too large padding,
        or a window larger than the padded input.
      TypeError: on non-integer arguments, non-bool flags, or a non-floating input.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 7, 3))
      >>> convnn.avg_pool1d(x, 2).shape
      (1, 3, 3)
      >>> float(convnn.avg_pool1d(x, 3, 2, 1, count_include_pad=False).min())
      1.0
    """
    return _pool.avg_pool(
        "avg_pool1d", 1, x, kernel_size, stride, padding, ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )


def avg_pool2d(
    x: jax.typing.ArrayLike,
    /,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """2-D average pooling, as ``mlx.nn.AvgPool2d``, plus PyTorch's options.

    Args:
      x: ``(N, H, W, C)``, or unbatched ``(H, W, C)``; a floating dtype (16-bit floats are
        summed in float32).
      kernel_size: window size, int or 2-tuple.
      stride: int or 2-tuple. Default ``None``: the kernel size (MLX and PyTorch).
      padding: int or 2-tuple of zeros added on both sides of each spatial axis; at most
        ``kernel_size // 2`` (PyTorch's rule). Default 0.
      ceil_mode: round the output size up, as PyTorch does; a window that would start in the
        right padding is dropped. Default False.
      count_include_pad: divide by the number of window positions inside the padded input (True,
        MLX's and PyTorch's default) or inside the input only (False). Positions beyond the
        padding that ``ceil_mode`` adds are never counted (PyTorch's rule). Default True.

    Returns:
      ``(N, H_out, W_out, C)`` (unbatched without ``N``), in ``x``'s dtype; sizes as for
      max pooling without dilation.

    Raises:
      ValueError: on a wrong rank, non-positive kernel or stride, negative or too large padding,
        or a window larger than the padded input.
      TypeError: on non-integer arguments, non-bool flags, or a non-floating input.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 7, 7, 3))
      >>> convnn.avg_pool2d(x, 2).shape
      (1, 3, 3, 3)
      >>> float(convnn.avg_pool2d(x, 3, 2, 1, count_include_pad=False).min())
      1.0
    """
    return _pool.avg_pool(
        "avg_pool2d", 2, x, kernel_size, stride, padding, ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )


def avg_pool3d(
    x: jax.typing.ArrayLike,
    /,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    *,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """3-D average pooling, as ``mlx.nn.AvgPool3d``, plus PyTorch's options.

    Args:
      x: ``(N, D, H, W, C)``, or unbatched ``(D, H, W, C)``; a floating dtype (16-bit floats
        are summed in float32).
      kernel_size: window size, int or 3-tuple.
      stride: int or 3-tuple. Default ``None``: the kernel size (MLX and PyTorch).
      padding: int or 3-tuple of zeros added on both sides of each spatial axis; at most
        ``kernel_size // 2`` (PyTorch's rule). Default 0.
      ceil_mode: round the output size up, as PyTorch does; a window that would start in the
        right padding is dropped. Default False.
      count_include_pad: divide by the number of window positions inside the padded input (True,
        MLX's and PyTorch's default) or inside the input only (False). Positions beyond the
        padding that ``ceil_mode`` adds are never counted (PyTorch's rule). Default True.

    Returns:
      ``(N, D_out, H_out, W_out, C)`` (unbatched without ``N``), in ``x``'s dtype; sizes as for
      max pooling without dilation.

    Raises:
      ValueError: on a wrong rank, non-positive kernel or stride, negative or too large padding,
        or a window larger than the padded input.
      TypeError: on non-integer arguments, non-bool flags, or a non-floating input.

    Example:
      >>> import jax.numpy as jnp, convnn
      >>> x = jnp.ones((1, 7, 7, 7, 3))
      >>> convnn.avg_pool3d(x, 2).shape
      (1, 3, 3, 3, 3)
      >>> float(convnn.avg_pool3d(x, 3, 2, 1, count_include_pad=False).min())
      1.0
    """
    return _pool.avg_pool(
        "avg_pool3d", 3, x, kernel_size, stride, padding, ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )
