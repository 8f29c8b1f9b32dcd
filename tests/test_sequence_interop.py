"""Weights of the recurrent and attention layers: PyTorch state dicts and MLX files, both ways."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_close

import convnn.layers as nn
from convnn.interop import load_mlx_weights, load_torch_state_dict, save_mlx_weights

F32 = jnp.float32
slow = pytest.mark.slow


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", ["LSTM", "GRU", pytest.param("RNN", marks=slow)])
@pytest.mark.parametrize("bias", [True, pytest.param(False, marks=slow)])
def test_torch_recurrent(torch, tnn, name, bias):
    torch.manual_seed(0)
    t_layer = getattr(tnn, name)(3, 5, bias=bias, batch_first=True)
    layer = getattr(nn, name)(3, 5, bias=bias)
    result = load_torch_state_dict(layer, t_layer.state_dict())
    assert result.missing_keys == result.unexpected_keys == []
    x, h = _x(2, 6, 3), _x(1, 2, 5, seed=1)
    if name == "LSTM":
        c = _x(1, 2, 5, seed=2)
        expected, _ = t_layer(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
        actual, _ = layer(x, h[0], c[0])
    else:
        expected, _ = t_layer(torch.from_numpy(x), torch.from_numpy(h))
        actual = layer(x, h[0])
    assert_close(actual, expected.detach().numpy(), F32)


def test_torch_recurrent_nested_and_refused_keys(torch, tnn):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = [nn.LSTM(3, 4), nn.GRU(4, 4)]

    torch.manual_seed(0)
    lstm, gru = tnn.LSTM(3, 4), tnn.GRU(4, 4)
    state = {f"blocks.0.{k}": v for k, v in lstm.state_dict().items()}
    state.update({f"blocks.1.{k}": v for k, v in gru.state_dict().items()})
    model = Model()
    load_torch_state_dict(model, state)
    x = _x(5, 3)
    expected, _ = gru(lstm(torch.from_numpy(x))[0])
    assert_close(model.blocks[1](model.blocks[0](x)[0]), expected.detach().numpy(), F32)

    two_layers = tnn.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"Unexpected 4 key\(s\): bias_hh_l1, bias_ih_l1"):
        load_torch_state_dict(nn.LSTM(3, 4), two_layers.state_dict())
    with pytest.raises(ValueError, match=r"Missing 1 key\(s\): bias\.\n.*bias_ih_l0"):
        state = dict(tnn.LSTM(3, 4).state_dict())
        del state["bias_hh_l0"]
        load_torch_state_dict(nn.LSTM(3, 4), state)


@pytest.mark.parametrize("kdim", [None, pytest.param(6, marks=slow)])
def test_torch_multihead_attention(torch, tnn, kdim):
    torch.manual_seed(0)
    vdim = None if kdim is None else 4
    t_layer = tnn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=vdim)
    layer = nn.MultiHeadAttention(8, 2, key_input_dims=kdim, value_input_dims=vdim, bias=True)
    result = load_torch_state_dict(layer, t_layer.state_dict())
    assert result.missing_keys == result.unexpected_keys == []
    q, k, v = _x(2, 5, 8), _x(2, 7, kdim or 8, seed=1), _x(2, 7, vdim or 8, seed=2)
    mask = _x(5, 7, seed=3)
    expected, _ = t_layer(*(torch.from_numpy(a) for a in (q, k, v)),
                          attn_mask=torch.from_numpy(mask), need_weights=False)
    assert_close(layer(q, k, v, mask), expected.detach().numpy(), F32)
    # PyTorch's boolean masks mark the positions *not* to attend to; MLX's the opposite
    causal = np.triu(np.ones((5, 7), bool), 1)
    expected, _ = t_layer(*(torch.from_numpy(a) for a in (q, k, v)),
                          attn_mask=torch.from_numpy(causal), need_weights=False)
    assert_close(layer(q, k, v, ~causal), expected.detach().numpy(), F32)


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=slow)])
def test_mlx_files_both_ways(mx, mnn, tmp_path, full):
    """MLX's files load into convnn and convnn's into MLX (the fast case: LSTMs and attention;
    the full one adds RNN and a bias-free GRU)."""

    def define(nn):
        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = nn.RNN(4, 6) if full else nn.Identity()
                self.gru = nn.GRU(6, 6, bias=False) if full else nn.Identity()
                self.lstm = [nn.LSTM(6 if full else 4, 8), nn.LSTM(8, 8)]
                self.attention = nn.MultiHeadAttention(8, 2, bias=True)

            def __call__(self, x):
                x = self.gru(self.rnn(x))
                for layer in self.lstm:
                    x, _ = layer(x)
                return self.attention(x, x, x, "causal")

        return Model

    MlxModel, Model = define(mnn), define(nn)
    x = _x(2, 5, 4)
    mlx_model, model = MlxModel(), Model()
    for suffix in ("safetensors", "npz"):
        path = os.fspath(tmp_path / f"mlx.{suffix}")
        mlx_model.save_weights(path)
        load_mlx_weights(model, path)
        assert_close(model(x), np.array(mlx_model(mx.array(x))), F32, what=suffix)
    # and back: new convnn weights, read by MLX
    nn.seed(7)
    model = Model()
    path = os.fspath(tmp_path / "convnn.safetensors")
    save_mlx_weights(model, path)
    mlx_model.load_weights(path)
    assert_close(model(x), np.array(mlx_model(mx.array(x))), F32, what="MLX reads convnn's file")
