"""The canonical description of one convolution, shared by every strategy."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


def output_size(size: int, lo: int, hi: int, input_dilation: int, kernel: int,
                kernel_dilation: int, stride: int) -> int:
    """A convolution's output size along one axis (below 1 where the window does not fit).

    The input dilated and padded, ``(size - 1) * input_dilation + 1 + lo + hi``, less the
    dilated kernel's span, ``(kernel - 1) * kernel_dilation + 1``, over the stride, plus one.

    Example:
      >>> output_size(224, 3, 3, 1, 7, 1, 2)  # a ResNet stem: (230 - 7) // 2 + 1
      112
      >>> output_size(5, 0, 0, 2, 3, 1, 1)  # the input dilated to 9 values, a 3-tap kernel
      7
      >>> output_size(2, 0, 0, 1, 5, 1, 1)  # a 5-tap kernel does not fit in 2 values
      -2
    """
    padded = (size - 1) * input_dilation + 1 + lo + hi
    return (padded - (kernel - 1) * kernel_dilation - 1) // stride + 1


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """A canonicalised convolution (hashable, so it can key caches).

    Attributes:
      stride: window strides, one per spatial axis.
      padding: ``(lo, hi)`` per spatial axis, all non-negative, applied after input dilation.
      kernel_dilation: kernel (rhs) dilation per axis.
      input_dilation: input (lhs) dilation per axis.
      groups: feature groups.
      flip: true convolution (kernel reversed along its spatial axes) instead of correlation.
      precision: passed to ``lax.conv_general_dilated``.
      preferred_element_type: accumulation / output dtype, or ``None``.
    """

    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    kernel_dilation: tuple[int, ...]
    input_dilation: tuple[int, ...]
    groups: int
    flip: bool
    precision: Any = None
    preferred_element_type: Any = None

    @property
    def ndim(self) -> int:
        return len(self.stride)

    def output_sizes(self, spatial: Sequence[int], kernel: Sequence[int]) -> tuple[int, ...]:
        """The output's spatial sizes for an input of spatial sizes ``spatial`` and a kernel of
        spatial sizes ``kernel`` (:func:`output_size` per axis)."""
        return tuple(output_size(n, lo, hi, d, k, kd, s) for n, (lo, hi), d, k, kd, s in zip(
            spatial, self.padding, self.input_dilation, kernel, self.kernel_dilation,
            self.stride, strict=True))
