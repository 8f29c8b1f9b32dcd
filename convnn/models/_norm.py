"""The norm and linear layers the models use, behind one small seam.

The models take PyTorch's hyperparameters (``momentum=0.1`` means ``running = 0.9 * running +
0.1 * batch``). The ``convnn`` form of a model takes :class:`convnn.layers.BatchNorm`, with the
following activation fused into it; the ``nnx`` form, the all-Flax baseline, takes
``nnx.BatchNorm`` (Flax's momentum is ``1 - m``) followed by the same activation. Eval-mode
outputs equal torchvision's for the same weights.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from convnn import layers
from convnn._lowering._prologue import activate


def BatchNorm2d(
    num_features: int, *, eps: float = 1e-5, momentum: float = 0.1, activation: str | None = None,
    dtype: Any = None, rngs: nnx.Rngs,
) -> layers.BatchNorm:
    """``torch.nn.BatchNorm2d`` over the last (channel) axis, followed by ``activation``
    (``"relu"``, ``"relu6"``, ``"silu"`` or None), as :class:`convnn.layers.BatchNorm`: PyTorch's
    momentum and unbiased running variance, the activation fused into its passes."""
    del rngs  # no random initialisation
    return layers.BatchNorm(num_features, eps, momentum, activation=activation, dtype=dtype)


class FlaxBatchNorm2d(nnx.BatchNorm):
    """``nnx.BatchNorm`` (the Flax baseline's norm) followed by an activation, so that the
    models' code is the same for both forms; its variables and state-dict keys are
    ``nnx.BatchNorm``'s."""

    def __init__(
        self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1,
        activation: str | None = None, dtype: Any = None, rngs: nnx.Rngs,
    ):
        super().__init__(
            num_features, momentum=1.0 - momentum, epsilon=eps, dtype=dtype, rngs=rngs
        )
        self.activation = activation

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        y = super().__call__(x, *args, **kwargs)
        return activate(y, self.activation)


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
