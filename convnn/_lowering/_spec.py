"""The canonical description of one convolution, shared by every strategy."""

from __future__ import annotations

import dataclasses
from typing import Any


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
