"""PyTorch state dicts for the recurrent and attention layers.

MLX's (and convnn's) layers store what PyTorch splits or packs differently:

* ``torch.nn.RNN`` / ``LSTM`` (one layer, one direction): ``weight_ih_l0``, ``weight_hh_l0`` are
  ``Wxh``/``Wx`` and ``Whh``/``Wh`` (same layouts, same gate order); the two biases
  ``bias_ih_l0 + bias_hh_l0`` are ``bias``;
* ``torch.nn.GRU``: as LSTM, except that the hidden bias of the candidate gate stays inside the
  reset gate's product: ``b = bias_ih + [bias_hh_r, bias_hh_z, 0]`` and ``bhn = bias_hh_n``;
* ``torch.nn.MultiheadAttention``: ``in_proj_weight`` / ``in_proj_bias`` (queries, keys, values
  stacked) or ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` (when ``kdim`` / ``vdim``
  differ) are ``query_proj``, ``key_proj``, ``value_proj``; ``out_proj`` has the same name.

Keys of further layers or directions (``weight_ih_l1``, ``..._reverse``, ``bias_k``) are left as
they are, so a strict load reports them as unexpected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convnn import interop
from convnn.layers._attention import MultiHeadAttention
from convnn.layers._recurrent import GRU, LSTM, RNN


def _array(state: dict[str, Any], key: str) -> np.ndarray:
    return interop._to_numpy(state[key], key, "load_torch_state_dict")


def _move(state: dict[str, Any], old: str, new: str) -> None:
    if old in state:
        state[new] = state.pop(old)


def _biases(state: dict[str, Any], prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``bias_ih_l0`` and ``bias_hh_l0``, removed from ``state``, when both are there."""
    ih, hh = f"{prefix}bias_ih_l0", f"{prefix}bias_hh_l0"
    if ih not in state or hh not in state:
        return None
    b_ih, b_hh = _array(state, ih), _array(state, hh)
    if b_ih.shape != b_hh.shape or b_ih.ndim != 1:
        return None  # left for the load to report as unexpected keys
    del state[ih], state[hh]
    return b_ih, b_hh


def _recurrent(names: tuple[str, str, str]):
    wx, wh, bias = names

    def rewrite(layer: Any, prefix: str, state: dict[str, Any]) -> None:
        _move(state, f"{prefix}weight_ih_l0", prefix + wx)
        _move(state, f"{prefix}weight_hh_l0", prefix + wh)
        biases = _biases(state, prefix)
        if biases is not None:
            state[prefix + bias] = biases[0] + biases[1]

    return rewrite


def _gru(layer: Any, prefix: str, state: dict[str, Any]) -> None:
    _move(state, f"{prefix}weight_ih_l0", prefix + "Wx")
    _move(state, f"{prefix}weight_hh_l0", prefix + "Wh")
    biases = _biases(state, prefix)
    if biases is not None:
        b_ih, b_hh = biases
        h = b_hh.shape[0] // 3
        state[prefix + "b"] = b_ih + np.concatenate([b_hh[: 2 * h], np.zeros_like(b_hh[:h])])
        state[prefix + "bhn"] = b_hh[2 * h:]


def _attention(layer: Any, prefix: str, state: dict[str, Any]) -> None:
    projections = ("query_proj", "key_proj", "value_proj")
    packed = f"{prefix}in_proj_weight"
    if packed in state:
        w = _array(state, packed)
        if w.ndim == 2 and w.shape[0] % 3 == 0:
            del state[packed]
            for name, part in zip(projections, np.split(w, 3), strict=True):
                state[f"{prefix}{name}.weight"] = part
    for name, short in zip(projections, "qkv", strict=True):
        _move(state, f"{prefix}{short}_proj_weight", f"{prefix}{name}.weight")
    packed = f"{prefix}in_proj_bias"
    if packed in state:
        b = _array(state, packed)
        sizes = [getattr(layer, name).weight.shape[0] for name in projections]
        if b.shape == (sum(sizes),):
            del state[packed]
            parts = np.split(b, np.cumsum(sizes)[:-1])
            for name, part in zip(projections, parts, strict=True):
                state[f"{prefix}{name}.bias"] = part


interop._register_torch_rewrite(RNN, _recurrent(("Wxh", "Whh", "bias")))
interop._register_torch_rewrite(LSTM, _recurrent(("Wx", "Wh", "bias")))
interop._register_torch_rewrite(GRU, _gru)
interop._register_torch_rewrite(MultiHeadAttention, _attention)
