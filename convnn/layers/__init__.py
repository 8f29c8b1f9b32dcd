"""Flax NNX layers with MLX's constructor signatures, semantics and weight layouts.

MLX model code runs with ``import convnn.layers as nn`` in place of ``import mlx.nn as nn``:
``nn.Conv2d(4, 8, 3, padding=1)``, ``nn.Linear(8, 2)``, ``nn.BatchNorm(8)``; inputs stay
channels-last and the parameters keep MLX's names and layouts (``weight``
``(C_out, *kernel, C_in // groups)``, ``Linear.weight`` ``(out, in)``, ``bias`` ``(C_out,)``), so
MLX and PyTorch checkpoints map onto them directly.

Provided here:

* :class:`Module`, MLX's object model on ``nnx.Module`` (plain lists and dicts of layers, float
  arrays as parameters, ``parameters()``, ``update()``, ``freeze()``, ``train()`` / ``eval()``,
  ``load_weights()`` / ``save_weights()``), and :func:`seed` for the default random stream that
  layers use when no ``rngs`` is given;
* ``Conv1d``/``2d``/``3d`` and ``ConvTranspose1d``/``2d``/``3d`` (with ``groups`` on every rank
  and keyword-only ``padding_mode``, ``dtype``, ``param_dtype``, ``precision``, ``kernel_init``,
  ``bias_init``);
* ``MaxPool1d``/``2d``/``3d``, ``AvgPool1d``/``2d``/``3d`` (MLX's defaults, PyTorch's
  ``ceil_mode``, ``count_include_pad`` and max-pool ``dilation``) and ``Upsample``;
* ``Linear``, ``Bilinear``, ``Identity``, ``Embedding``, ``Sequential``;
* ``BatchNorm`` (MLX's momentum and unbiased running variance), ``LayerNorm``, ``RMSNorm``,
  ``InstanceNorm``, ``GroupNorm`` (MLX's interleaved groups);
* ``Dropout``, ``Dropout2d``, ``Dropout3d``;
* every activation of ``mlx.nn`` as a function (``relu``, ``gelu`` exact, ...) and a class
  (``ReLU``, ``GELU(approx=...)``, ...);
* :mod:`convnn.layers.losses` and :mod:`convnn.layers.init`, ``mlx.nn.losses`` and
  ``mlx.nn.init`` with MLX's signatures.

Everything here is an ordinary ``nnx.Module``: it works with ``nnx.jit``, ``nnx.grad``,
``nnx.value_and_grad``, ``nnx.Optimizer``, ``nnx.split`` / ``nnx.merge``, ``nnx.vmap`` and
sharded parameters. ``repr(layer)`` gives the hyperparameters in MLX's format; ``print(layer)``,
``nnx.display`` and a model containing the layers still show Flax's tree with the parameters.

Example:
  >>> import jax.numpy as jnp, convnn.layers as nn
  >>> nn.seed(0)
  >>> model = nn.Sequential(
  ...     nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
  ...     nn.GroupNorm(4, 8), nn.Upsample(2, mode="linear"),
  ... )
  >>> model(jnp.ones((2, 16, 16, 3))).shape
  (2, 16, 16, 8)
"""

try:
    import flax.nnx  # noqa: F401  (the layers are Flax NNX modules)
except ImportError as e:
    raise ImportError(
        f'convnn.layers needs Flax ({e}); install it with: pip install "convnn[nn]"'
    ) from e

from convnn.layers import (
    _activations,
    _interop,  # noqa: F401  (registers the layers' weight layouts)
    _sequence_interop,  # noqa: F401  (PyTorch keys of the recurrent and attention layers)
    init,
    losses,
)
from convnn.layers._activations import *  # noqa: F403  (MLX's activation functions and classes)
from convnn.layers._attention import MultiHeadAttention, scaled_dot_product_attention
from convnn.layers._containers import Sequential
from convnn.layers._conv import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from convnn.layers._dropout import Dropout, Dropout2d, Dropout3d
from convnn.layers._linear import Bilinear, Embedding, Identity, Linear
from convnn.layers._module import Frozen, Module
from convnn.layers._norm import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from convnn.layers._pool import (
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from convnn.layers._positional import ALiBi, RoPE, SinusoidalPositionalEncoding
from convnn.layers._random import seed
from convnn.layers._recurrent import GRU, LSTM, RNN
from convnn.layers._transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from convnn.layers._upsample import Upsample

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "Upsample",
    "GroupNorm",
    "Module",
    "Frozen",
    "seed",
    "BatchNorm",
    "LayerNorm",
    "RMSNorm",
    "InstanceNorm",
    "Identity",
    "Linear",
    "Bilinear",
    "Embedding",
    "Dropout",
    "Dropout2d",
    "Dropout3d",
    "Sequential",
    "init",
    "losses",
    *_activations.__all__,
]
__all__ += [
    "RNN",
    "GRU",
    "LSTM",
    "SinusoidalPositionalEncoding",
    "RoPE",
    "ALiBi",
    "MultiHeadAttention",
    "scaled_dot_product_attention",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "TransformerDecoderLayer",
    "TransformerDecoder",
    "Transformer",
]
