"""convnn: MLX's convolution API on JAX, with Flax NNX layers.

>>> import jax.numpy as jnp, convnn
>>> convnn.conv2d(jnp.ones((1, 6, 6, 3)), jnp.ones((4, 3, 3, 3))).shape
(1, 4, 4, 4)
"""

from convnn.functional import (
    conv1d,
    conv2d,
    conv3d,
    conv_general,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
)

__version__ = "0.1.0"

__all__ = [
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_general",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
]
