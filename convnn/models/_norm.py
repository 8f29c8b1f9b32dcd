"""The norm and linear layers the models use, behind one small seam.

The models take PyTorch's hyperparameters (``momentum=0.1`` means ``running = 0.9 * running +
0.1 * batch``) and these functions translate them to Flax's layers, so a later swap to other
classes touches this file only. Eval-mode outputs equal torchvision's for the same weights.
"""

from __future__ import annotations

from typing import Any

from flax import nnx


def BatchNorm2d(
    num_features: int, *, eps: float = 1e-5, momentum: float = 0.1, dtype: Any = None,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """``torch.nn.BatchNorm2d`` over the last (channel) axis; Flax's momentum is ``1 - m``."""
    return nnx.BatchNorm(
        num_features, momentum=1.0 - momentum, epsilon=eps, dtype=dtype, rngs=rngs
    )


def LayerNorm(num_features: int, *, eps: float = 1e-5, dtype: Any = None, rngs: nnx.Rngs):
    """``torch.nn.LayerNorm(num_features)`` (and torchvision's ``LayerNorm2d`` on NHWC input)."""
    return nnx.LayerNorm(num_features, epsilon=eps, dtype=dtype, rngs=rngs)


def Linear(
    in_features: int, out_features: int, *, dtype: Any = None, kernel_init: Any = None,
    bias_init: Any = None, rngs: nnx.Rngs,
) -> nnx.Linear:
    """``torch.nn.Linear`` (kernel stored ``(in, out)``; interop transposes PyTorch's)."""
    kwargs = {}
    if kernel_init is not None:
        kwargs["kernel_init"] = kernel_init
    if bias_init is not None:
        kwargs["bias_init"] = bias_init
    return nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs, **kwargs)
