"""``Sequential``: MLX's container of callables."""

from __future__ import annotations

from typing import Any

from flax import nnx

from convnn.layers._module import Module

__all__ = ["Sequential"]


class Sequential(Module, nnx.Sequential):
    """Calls its modules (or plain callables) in order, as ``mlx.nn.Sequential``.

    They are kept in the list ``layers``, so weights are named ``layers.0.weight`` as in MLX
    (PyTorch's ``nn.Sequential`` names them ``0.weight``, which
    :func:`convnn.interop.load_torch_state_dict` expects). It is also an ``nnx.Sequential``.

    Args:
      modules: the modules or callables, each taking the previous one's output.

    Raises:
      Exception: when called, whatever one of the modules raises.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> model = nn.Sequential(nn.Linear(3, 4), nn.relu, nn.Linear(4, 2))
      >>> model(jnp.ones((5, 3))).shape, sorted(model.parameters()["layers"][0])
      ((5, 2), ['bias', 'weight'])
    """

    def __init__(self, *modules: Any):
        Module.__init__(self)
        self.layers = list(modules)

    def __call__(self, x: Any) -> Any:
        for m in self.layers:
            x = m(x)
        return x
