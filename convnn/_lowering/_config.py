"""What the strategies and policies see of one convolution (:class:`ConvConfig`) and of the
device it runs on (:class:`Target`). Both are plain static descriptions: a policy or a
strategy's ``can_compute`` can be asked about a configuration and a device that are only
described (a CUDA device on a CPU-only machine, an Apple plugin at a given version).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from convnn._lowering._spec import ConvSpec

__all__ = ["ConvConfig", "Decision", "Target"]


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    """One convolution: static shapes, the compute dtype and the spec.

    Attributes:
      x_shape: ``(N, *spatial, C_in)``, after cropping.
      w_shape: ``(C_out, *kernel, C_in // groups)``.
      dtype: the compute dtype of both operands.
      spec: the canonical convolution.
    """

    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    dtype: Any
    spec: ConvSpec

    @property
    def ndim(self) -> int:
        return self.spec.ndim

    @property
    def groups(self) -> int:
        return self.spec.groups

    @property
    def c_in(self) -> int:
        return self.x_shape[-1]

    @property
    def c_out(self) -> int:
        return self.w_shape[0]

    @property
    def group_in(self) -> int:
        """Input channels per group."""
        return self.w_shape[-1]

    @property
    def group_out(self) -> int:
        """Output channels per group."""
        return self.w_shape[0] // self.spec.groups

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.w_shape[1:-1])

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)

    @property
    def depthwise(self) -> bool:
        """One input channel per group and more than one group (any channel multiplier)."""
        return self.group_in == 1 and self.groups > 1

    @property
    def input_dilated(self) -> bool:
        return any(d > 1 for d in self.spec.input_dilation)

    @property
    def out_dtype(self):
        """The result's dtype: ``preferred_element_type``, else the compute dtype."""
        return jnp.dtype(self.spec.preferred_element_type or self.dtype)


@dataclasses.dataclass(frozen=True)
class Target:
    """A device as the lowering sees it.

    Attributes:
      backend: the backend name (a key of the policy table: ``"cpu"``, ``"cuda"``, ``"rocm"``,
        ``"tpu"``, ``"jax-metal"``, ...), or ``None`` for a platform convnn has no policy for.
      version: the Apple plugin's version where the backend is one (``None``: unknown, every
        routing rule applies).
    """

    backend: str | None
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """A policy's answer for one convolution.

    Attributes:
      strategies: registry names in order of preference: the first whose ``can_compute`` holds
        on the device runs (``"xla"`` if none does).
      rule: the rule that decided, in words (what ``convnn.explain`` reports).
    """

    strategies: tuple[str, ...]
    rule: str
