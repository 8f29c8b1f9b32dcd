"""MLX's Transformer family: encoder and decoder layers and stacks, and ``Transformer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from convnn import _args
from convnn.layers import _random
from convnn.layers._activations import relu
from convnn.layers._attention import MultiHeadAttention
from convnn.layers._dropout import Dropout
from convnn.layers._linear import Linear
from convnn.layers._module import Module
from convnn.layers._norm import LayerNorm

__all__ = [
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "TransformerDecoderLayer",
    "TransformerDecoder",
    "Transformer",
]


def _check(fn, dims, num_heads, mlp_dims, activation, norm_first):
    dims = _args.as_int(dims, "dims", fn, minimum=1)
    _args.as_int(num_heads, "num_heads", fn, minimum=1)
    mlp_dims = dims * 4 if not mlp_dims else _args.as_int(mlp_dims, "mlp_dims", fn, minimum=1)
    if not callable(activation):
        raise TypeError(f"[{fn}] activation must be callable, got {activation!r}.")
    return dims, mlp_dims, _args.check_bool(norm_first, "norm_first", fn)


def _stack(module: Module, fn: str, layer: type, num_layers, dims, num_heads, mlp_dims, dropout,
           activation, norm_first, checkpoint, rngs) -> None:
    """Builds ``module.layers`` (``num_layers`` of ``layer``), ``module.ln`` and
    ``module.checkpoint``: the body shared by :class:`TransformerEncoder` and
    :class:`TransformerDecoder`."""
    num_layers = _args.as_int(num_layers, "num_layers", fn, minimum=0)
    rngs = _random.resolve_rngs(rngs, fn)
    module.layers = [layer(dims, num_heads, mlp_dims, dropout, activation, norm_first, rngs=rngs)
                     for _ in range(num_layers)]
    module.ln = LayerNorm(dims)
    module.checkpoint = _args.check_bool(checkpoint, "checkpoint", fn)


def _run(layer: Module, checkpoint: bool, *args: Any) -> Any:
    """``layer(*args)``, rematerialised in the backward pass when ``checkpoint`` (MLX's
    ``nn.utils.checkpoint``). Masks that are not arrays (``None``, ``"causal"``) are closed
    over, since ``nnx.remat`` traces its arguments."""
    if not checkpoint:
        return layer(*args)
    arrays = [i for i, a in enumerate(args) if a is not None and not isinstance(a, str)]

    def call(layer, *traced):
        full = list(args)
        for i, a in zip(arrays, traced, strict=True):
            full[i] = a
        return layer(*full)

    return nnx.remat(call)(layer, *(args[i] for i in arrays))


class TransformerEncoderLayer(Module):
    """One encoder block, as ``mlx.nn.TransformerEncoderLayer``.

    Self-attention and an MLP (``linear1``, ``activation``, ``linear2``), each with a residual
    connection and a LayerNorm (``ln1``, ``ln2``) before (``norm_first``, the default) or after.
    Dropout follows the attention (``dropout1``) and the activation (``dropout2``).

    Args:
      dims: model dimensions.
      num_heads: attention heads.
      mlp_dims: hidden MLP features. Default ``None``: ``4 * dims``.
      dropout: dropout probability. Default 0.
      activation: MLP activation. Default ReLU.
      norm_first: pre-norm (True, default) or post-norm.
      rngs: where initial weights and dropout masks come from. Default ``None``: convnn's
        default stream.

    Called as ``layer(x, mask)`` on ``x`` ``(B, L, dims)``; ``mask`` as for
    :class:`MultiHeadAttention` (required, may be None, as in MLX).

    Raises:
      TypeError: on non-integer sizes, a non-callable ``activation`` or non-bool flags.
      ValueError: on sizes below 1 (``num_layers`` below 0) or ``dims`` not divisible by
        ``num_heads``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> layer = nn.TransformerEncoderLayer(8, 2)
      >>> layer(jnp.ones((2, 5, 8)), None).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        dims: int,
        num_heads: int,
        mlp_dims: int | None = None,
        dropout: float = 0.0,
        activation: Callable[[Any], Any] = relu,
        norm_first: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        dims, mlp_dims, self.norm_first = _check(
            "TransformerEncoderLayer", dims, num_heads, mlp_dims, activation, norm_first
        )
        rngs = _random.resolve_rngs(rngs, "TransformerEncoderLayer")
        self.attention = MultiHeadAttention(dims, num_heads, rngs=rngs)
        self.ln1 = LayerNorm(dims)
        self.ln2 = LayerNorm(dims)
        self.linear1 = Linear(dims, mlp_dims, rngs=rngs)
        self.linear2 = Linear(mlp_dims, dims, rngs=rngs)
        self.dropout1 = Dropout(dropout, rngs=rngs)
        self.dropout2 = Dropout(dropout, rngs=rngs)
        self.activation = activation

    def __call__(self, x, mask):
        if self.norm_first:
            y = self.ln1(x)
            y = self.attention(y, y, y, mask)
            x = x + self.dropout1(y)
            y = self.ln2(x)
            y = self.dropout2(self.activation(self.linear1(y)))
            return x + self.linear2(y)
        y = self.attention(x, x, x, mask)
        x = self.ln1(x + self.dropout1(y))
        y = self.dropout2(self.activation(self.linear1(x)))
        return self.ln2(x + self.linear2(y))


class TransformerEncoder(Module):
    """``num_layers`` :class:`TransformerEncoderLayer` blocks (``layers``) and a final LayerNorm
    (``ln``), as ``mlx.nn.TransformerEncoder``.

    Args:
      num_layers: blocks.
      dims: model dimensions.
      num_heads: attention heads.
      mlp_dims: hidden MLP features. Default ``None``: ``4 * dims``.
      dropout: dropout probability. Default 0.
      activation: MLP activation. Default ReLU.
      norm_first: pre-norm (True, default) or post-norm.
      checkpoint: recompute each block's activations in the backward pass (``nnx.remat``)
        instead of storing them. Default False.
      rngs: as for :class:`TransformerEncoderLayer`. Default None.

    Raises:
      TypeError: on non-integer sizes, a non-callable ``activation`` or non-bool flags.
      ValueError: on sizes below 1 (``num_layers`` below 0) or ``dims`` not divisible by
        ``num_heads``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> enc = nn.TransformerEncoder(2, 8, 2, checkpoint=True)
      >>> enc(jnp.ones((2, 5, 8)), "causal").shape
      (2, 5, 8)
    """

    def __init__(
        self,
        num_layers: int,
        dims: int,
        num_heads: int,
        mlp_dims: int | None = None,
        dropout: float = 0.0,
        activation: Callable[[Any], Any] = relu,
        norm_first: bool = True,
        checkpoint: bool = False,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        _stack(self, "TransformerEncoder", TransformerEncoderLayer, num_layers, dims, num_heads,
               mlp_dims, dropout, activation, norm_first, checkpoint, rngs)

    def __call__(self, x, mask):
        for layer in self.layers:
            x = _run(layer, self.checkpoint, x, mask)
        return self.ln(x)


class TransformerDecoderLayer(Module):
    """One decoder block, as ``mlx.nn.TransformerDecoderLayer``.

    Self-attention (``self_attention``, ``ln1``, ``dropout1``), attention to the encoder's
    output (``cross_attention``, ``ln2``, ``dropout2``) and the MLP (``linear1``, ``linear2``,
    ``ln3``, ``dropout3``), each with a residual connection.

    Args:
      dims: model dimensions.
      num_heads: attention heads.
      mlp_dims: hidden MLP features. Default ``None``: ``4 * dims``.
      dropout: dropout probability. Default 0.
      activation: MLP activation. Default ReLU.
      norm_first: pre-norm (True, default) or post-norm.
      rngs: as for :class:`TransformerEncoderLayer`. Default None.

    Called as ``layer(x, memory, x_mask, memory_mask)`` on ``x`` ``(B, L, dims)`` and the
    encoder's output ``memory`` ``(B, L_mem, dims)``.

    Raises:
      TypeError: on non-integer sizes, a non-callable ``activation`` or non-bool flags.
      ValueError: on sizes below 1 (``num_layers`` below 0) or ``dims`` not divisible by
        ``num_heads``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> layer = nn.TransformerDecoderLayer(8, 2, norm_first=False)
      >>> layer(jnp.ones((2, 5, 8)), jnp.ones((2, 3, 8)), "causal", None).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        dims: int,
        num_heads: int,
        mlp_dims: int | None = None,
        dropout: float = 0.0,
        activation: Callable[[Any], Any] = relu,
        norm_first: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        dims, mlp_dims, self.norm_first = _check(
            "TransformerDecoderLayer", dims, num_heads, mlp_dims, activation, norm_first
        )
        rngs = _random.resolve_rngs(rngs, "TransformerDecoderLayer")
        self.self_attention = MultiHeadAttention(dims, num_heads, rngs=rngs)
        self.cross_attention = MultiHeadAttention(dims, num_heads, rngs=rngs)
        self.ln1 = LayerNorm(dims)
        self.ln2 = LayerNorm(dims)
        self.ln3 = LayerNorm(dims)
        self.linear1 = Linear(dims, mlp_dims, rngs=rngs)
        self.linear2 = Linear(mlp_dims, dims, rngs=rngs)
        self.dropout1 = Dropout(dropout, rngs=rngs)
        self.dropout2 = Dropout(dropout, rngs=rngs)
        self.dropout3 = Dropout(dropout, rngs=rngs)
        self.activation = activation

    def __call__(self, x, memory, x_mask, memory_mask):
        if self.norm_first:
            y = self.ln1(x)
            x = x + self.dropout1(self.self_attention(y, y, y, x_mask))
            y = self.ln2(x)
            x = x + self.dropout2(self.cross_attention(y, memory, memory, memory_mask))
            y = self.dropout3(self.activation(self.linear1(self.ln3(x))))
            return x + self.linear2(y)
        x = self.ln1(x + self.dropout1(self.self_attention(x, x, x, x_mask)))
        x = self.ln2(x + self.dropout2(self.cross_attention(x, memory, memory, memory_mask)))
        y = self.dropout3(self.activation(self.linear1(x)))
        return self.ln3(x + self.linear2(y))


class TransformerDecoder(Module):
    """``num_layers`` :class:`TransformerDecoderLayer` blocks (``layers``) and a final LayerNorm
    (``ln``), as ``mlx.nn.TransformerDecoder``.

    Args:
      num_layers: blocks.
      dims: model dimensions.
      num_heads: attention heads.
      mlp_dims: hidden MLP features. Default ``None``: ``4 * dims``.
      dropout: dropout probability. Default 0.
      activation: MLP activation. Default ReLU.
      norm_first: pre-norm (True, default) or post-norm.
      checkpoint: rematerialise each block in the backward pass. Default False.
      rngs: as for :class:`TransformerEncoderLayer`. Default None.

    Called as ``decoder(x, memory, x_mask, memory_mask)``.

    Raises:
      TypeError: on non-integer sizes, a non-callable ``activation`` or non-bool flags.
      ValueError: on sizes below 1 (``num_layers`` below 0) or ``dims`` not divisible by
        ``num_heads``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> dec = nn.TransformerDecoder(2, 8, 2, mlp_dims=16)
      >>> dec(jnp.ones((2, 5, 8)), jnp.ones((2, 3, 8)), "causal", None).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        num_layers: int,
        dims: int,
        num_heads: int,
        mlp_dims: int | None = None,
        dropout: float = 0.0,
        activation: Callable[[Any], Any] = relu,
        norm_first: bool = True,
        checkpoint: bool = False,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        _stack(self, "TransformerDecoder", TransformerDecoderLayer, num_layers, dims, num_heads,
               mlp_dims, dropout, activation, norm_first, checkpoint, rngs)

    def __call__(self, x, memory, x_mask, memory_mask):
        for layer in self.layers:
            x = _run(layer, self.checkpoint, x, memory, x_mask, memory_mask)
        return self.ln(x)


class Transformer(Module):
    """An encoder-decoder Transformer, as ``mlx.nn.Transformer`` ("Attention Is All You Need").

    Args:
      dims: model dimensions. Default 512.
      num_heads: attention heads. Default 8.
      num_encoder_layers: encoder blocks. Default 6.
      num_decoder_layers: decoder blocks. Default 6.
      mlp_dims: hidden MLP features. Default ``None``: ``4 * dims``.
      dropout: dropout after each attention and MLP activation. Default 0.
      activation: MLP activation. Default ReLU.
      custom_encoder: a module to use as ``encoder`` instead of a :class:`TransformerEncoder`.
      custom_decoder: a module to use as ``decoder`` instead of a :class:`TransformerDecoder`.
      norm_first: pre-norm (default) or post-norm blocks.
      checkpoint: rematerialise each block in the backward pass. Default False.
      rngs: as for :class:`TransformerEncoderLayer`. Default None.

    Called as ``model(src, tgt, src_mask, tgt_mask, memory_mask)``; returns ``(B, L_tgt,
    dims)``.

    Raises:
      TypeError: on non-integer sizes, a non-callable ``activation`` or non-bool flags.
      ValueError: on sizes below 1 (``num_layers`` below 0) or ``dims`` not divisible by
        ``num_heads``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> model = nn.Transformer(8, 2, 1, 1, mlp_dims=16)
      >>> model(jnp.ones((2, 4, 8)), jnp.ones((2, 3, 8)), None, "causal", None).shape
      (2, 3, 8)
    """

    def __init__(
        self,
        dims: int = 512,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        mlp_dims: int | None = None,
        dropout: float = 0.0,
        activation: Callable[[Any], Any] = relu,
        custom_encoder: Any | None = None,
        custom_decoder: Any | None = None,
        norm_first: bool = True,
        checkpoint: bool = False,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        rngs = _random.resolve_rngs(rngs, "Transformer")
        args = (dims, num_heads, mlp_dims, dropout, activation, norm_first, checkpoint)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            self.encoder = TransformerEncoder(num_encoder_layers, *args, rngs=rngs)
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            self.decoder = TransformerDecoder(num_decoder_layers, *args, rngs=rngs)

    def __call__(self, src, tgt, src_mask, tgt_mask, memory_mask):
        memory = self.encoder(src, src_mask)
        return self.decoder(tgt, memory, tgt_mask, memory_mask)
