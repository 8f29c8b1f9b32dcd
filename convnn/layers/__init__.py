"""Flax NNX layers with MLX's constructor signatures, semantics and weight layouts.

MLX model code ports line by line: ``mlx.nn.Conv2d(4, 8, 3, padding=1)`` becomes
``convnn.layers.Conv2d(4, 8, 3, padding=1, rngs=nnx.Rngs(0))``; inputs stay channels-last and
the parameters keep MLX's names and layouts (``weight`` ``(C_out, *kernel, C_in // groups)``,
``bias`` ``(C_out,)``), so MLX and PyTorch checkpoints map onto them directly.

Layers provided here:

* ``Conv1d``/``Conv2d``/``Conv3d`` and ``ConvTranspose1d``/``2d``/``3d``, each with ``groups``
  (MLX's ``Conv3d`` and transposed layers lack it) and keyword-only ``padding_mode``, ``dtype``,
  ``param_dtype``, ``precision``, ``kernel_init``, ``bias_init``;
* ``MaxPool1d``/``2d``/``3d`` and ``AvgPool1d``/``2d``/``3d`` (MLX's defaults, PyTorch's
  ``ceil_mode``, ``count_include_pad`` and max-pool ``dilation``);
* ``Upsample`` (MLX's ``nearest``, ``linear`` and ``cubic`` modes);
* ``GroupNorm``, because ``nnx.GroupNorm`` groups channels contiguously while MLX groups them
  interleaved (channel ``c`` in group ``c % num_groups``) unless ``pytorch_compatible=True``.

Flax layers to use directly (they compute what MLX's do; only names, layouts and defaults
differ):

* ``nnx.Linear(in, out, rngs=...)`` for ``mlx.nn.Linear``: the kernel is ``(in, out)`` where MLX
  stores ``weight`` as ``(out, in)``; Flax initialises with LeCun-normal, MLX uniformly.
* ``nnx.BatchNorm(num_features, momentum=0.9, rngs=...)`` for ``mlx.nn.BatchNorm(num_features)``.
  **Momentum conventions are opposite**: MLX and PyTorch update
  ``running = (1 - m) * running + m * batch`` with ``m = 0.1``; Flax updates
  ``running = m * running + (1 - m) * batch``, so MLX/PyTorch ``momentum=0.1`` is Flax
  ``momentum=0.9`` (Flax's default, 0.99, corresponds to 0.01). MLX and PyTorch also feed the
  *unbiased* batch variance into ``running_var`` where Flax uses the biased one (a factor
  ``n / (n - 1)`` with ``n`` values per channel); normalisation in training uses the biased
  variance in all three. Parameters are ``scale``/``bias``/``mean``/``var`` for MLX's
  ``weight``/``bias``/``running_mean``/``running_var``. ``model.eval()`` / ``model.train()``
  switch running statistics and dropout as in MLX.
* ``nnx.LayerNorm(dims, epsilon=1e-5, rngs=...)`` for ``mlx.nn.LayerNorm(dims)`` (Flax's default
  epsilon is 1e-6); ``nnx.RMSNorm`` likewise.
* ``nnx.Dropout(p, rngs=...)`` for ``mlx.nn.Dropout(p)``; ``nnx.Embed`` for ``mlx.nn.Embedding``;
  ``nnx.Sequential`` for ``mlx.nn.Sequential``; activations from ``jax.nn`` / ``nnx``.

Everything here is an ordinary ``nnx.Module``: it works with ``nnx.jit``, ``nnx.grad``,
``nnx.value_and_grad``, ``nnx.Optimizer``, ``nnx.split`` / ``nnx.merge``, ``nnx.vmap`` and
sharded parameters. ``repr(layer)`` gives the hyperparameters in MLX's format; ``print(layer)``,
``nnx.display`` and a model containing the layers still show Flax's tree with the parameters.

Example:
  >>> import jax.numpy as jnp, convnn.layers as L
  >>> from flax import nnx
  >>> model = nnx.Sequential(
  ...     L.Conv2d(3, 8, 3, padding=1, rngs=nnx.Rngs(0)), nnx.relu, L.MaxPool2d(2),
  ...     L.GroupNorm(4, 8), L.Upsample(2, mode="linear"),
  ... )
  >>> model(jnp.ones((2, 16, 16, 3))).shape
  (2, 16, 16, 8)
"""

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
