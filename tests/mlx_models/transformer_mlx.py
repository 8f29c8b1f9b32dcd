"""A Transformer language model in MLX (mlx-examples/transformer_lm/main.py): token embedding,
sinusoidal positions, a pre-norm TransformerEncoder with a causal mask, a linear head."""

import mlx.core as mx
import mlx.nn as nn


class TransformerLM(nn.Module):
    def __init__(self, vocab_size=32, num_layers=2, dims=16, num_heads=4, checkpoint=False):
        super().__init__()

        self.embedding = nn.Embedding(vocab_size, dims)
        self.pe = nn.SinusoidalPositionalEncoding(dims)
        self.transformer = nn.TransformerEncoder(
            num_layers, dims, num_heads, norm_first=True, checkpoint=checkpoint
        )
        self.out_proj = nn.Linear(dims, vocab_size)

    def __call__(self, x):
        L = x.shape[1]
        mask = nn.MultiHeadAttention.create_additive_causal_mask(L)
        x = self.embedding(x)
        x = x + self.pe(mx.arange(L))
        x = self.transformer(x, mask)
        return self.out_proj(x)


def build():
    return TransformerLM()


def example_inputs(rng):
    return (rng.integers(0, 32, (2, 7)).astype("int32"),)
