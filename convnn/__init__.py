"""convnn: MLX's convolution API on JAX, with Flax NNX layers.

>>> import jax.numpy as jnp, convnn
>>> convnn.conv2d(jnp.ones((1, 6, 6, 3)), jnp.ones((4, 3, 3, 3))).shape
(1, 4, 4, 4)
"""

from convnn._backend import BackendInfo, backend_info
from convnn._explain import Explanation, explain
from convnn._lowering import lowering
from convnn.functional import (
    Prologue,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    conv1d,
    conv2d,
    conv3d,
    conv_general,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    max_pool1d,
    max_pool2d,
    max_pool3d,
)

__version__ = "0.1.0"

__all__ = [
    "Prologue",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_general",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "lowering",
    "explain",
    "Explanation",
    "backend_info",
    "BackendInfo",
]
