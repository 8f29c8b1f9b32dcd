"""Recurrent layers: MLX's ``RNN``, ``GRU`` and ``LSTM``, one ``jax.lax.scan`` each."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convnn import _args, _flax_compat
from convnn.layers import _random
from convnn.layers._module import Module
from convnn.layers._random import uniform_param

__all__ = ["RNN", "GRU", "LSTM"]


class _Recurrent(Module):
    """Construction, input checks and the input projection shared by the three layers."""

    _gates = 1

    def __repr__(self) -> str:  # MLX's format: the hyperparameters, not the parameter tree
        return f"{type(self).__name__}({self._extra_repr()})"

    def _setup(self, input_size, hidden_size, bias, rngs, names):
        fn = type(self).__name__
        input_size = _args.as_int(input_size, "input_size", fn, minimum=1)
        self.hidden_size = _args.as_int(hidden_size, "hidden_size", fn, minimum=1)
        bias = _args.check_bool(bias, "bias", fn)
        rngs = _random.resolve_rngs(rngs, fn)
        scale = 1.0 / math.sqrt(self.hidden_size)
        rows = self._gates * self.hidden_size
        wx, wh, b = names
        # MLX's draw order: input weight, hidden weight, bias.
        setattr(self, wx, uniform_param(rngs, (rows, input_size), scale, fn))
        setattr(self, wh, uniform_param(rngs, (rows, self.hidden_size), scale, fn))
        setattr(self, b,
                uniform_param(rngs, (rows,), scale, fn) if bias else _flax_compat.data(None))
        return bias, scale, rngs

    def _project(self, x: Any, wx: Any, b: Any):
        """Checks ``x`` ``(N, L, D)`` or ``(L, D)``; returns ``x @ wx.T + b`` with the time axis
        first, ``(L, [N,] rows)``, and the compute dtype."""
        fn = type(self).__name__
        x = _args.as_array(x, "input", fn)
        _args.check_float_dtype(x.dtype, "input", fn)
        if x.ndim not in (2, 3) or x.shape[-1] != wx.shape[1]:
            raise ValueError(
                f"[{fn}] input must have shape (N, L, {wx.shape[1]}) or (L, {wx.shape[1]}); "
                f"got input shape {tuple(x.shape)}."
            )
        dtype = _args.promote_float(x.dtype, wx.dtype)
        y = x.astype(dtype) @ wx[...].astype(dtype).T
        if b is not None:
            y = y + b[...].astype(dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return jnp.moveaxis(y, -2, 0), dtype

    def _state(self, value: Any, name: str, batch: tuple[int, ...], dtype: Any) -> jax.Array:
        """The initial ``hidden`` or ``cell``: zeros when None (MLX's first step adds nothing),
        else the given array broadcast to ``(*batch, hidden_size)`` as MLX's arithmetic would."""
        shape = (*batch, self.hidden_size)
        if value is None:
            return jnp.zeros(shape, dtype)
        fn = type(self).__name__
        value = _args.as_array(value, name, fn)
        _args.check_float_dtype(value.dtype, name, fn)
        try:
            target = jnp.broadcast_shapes(value.shape, shape)
        except ValueError:
            target = None
        if target != shape:
            raise ValueError(
                f"[{fn}] {name} must broadcast to shape {shape}; got {name} shape "
                f"{tuple(value.shape)}."
            )
        return jnp.broadcast_to(value.astype(dtype), shape)


class RNN(_Recurrent):
    r"""An Elman recurrent layer, as ``mlx.nn.RNN``: ``h_{t+1} = f(W_{xh} x_t + W_{hh} h_t + b)``.

    Args:
      input_size: input features ``D``.
      hidden_size: hidden features ``H``.
      bias: learn ``bias`` ``(H,)``. Default True.
      nonlinearity: ``f``; ``None`` for ``tanh``. Default None.
      rngs: where the initial weights come from (uniform in ``±1/sqrt(H)``, as MLX). Default
        ``None``: convnn's default stream (:func:`convnn.layers.seed`).

    Raises:
      TypeError: on non-integer sizes, a non-bool ``bias`` or an ``rngs`` that is not an
        ``nnx.Rngs``; when called, on a non-floating input.
      ValueError: on sizes below 1 or a ``nonlinearity`` that is not callable; when called, on
        an input that is not ``(N, L, D)`` or ``(L, D)`` or an initial state that does not
        broadcast to ``(N, H)``.

    Parameters ``Wxh`` ``(H, D)``, ``Whh`` ``(H, H)``, ``bias`` ``(H,)`` (MLX's names and
    layouts). Called on ``x`` ``(N, L, D)`` or ``(L, D)`` with an optional initial ``hidden``
    ``(N, H)`` or ``(H,)``; returns the hidden state of every step, ``(N, L, H)`` or ``(L, H)``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> rnn = nn.RNN(4, 8)
      >>> rnn(jnp.ones((2, 5, 4))).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: Callable | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        if nonlinearity is not None and not callable(nonlinearity):
            raise ValueError(
                f"[RNN] nonlinearity must be None or callable, got {nonlinearity!r}."
            )
        self.nonlinearity = nonlinearity or jnp.tanh
        self._setup(input_size, hidden_size, bias, rngs, ("Wxh", "Whh", "bias"))

    def _extra_repr(self) -> str:
        return (
            f"input_dims={self.Wxh.shape[1]}, hidden_size={self.hidden_size}, "
            f"nonlinearity={self.nonlinearity}, bias={self.bias is not None}"
        )

    def __call__(self, x: jax.Array, hidden: jax.Array | None = None) -> jax.Array:
        xs, dtype = self._project(x, self.Wxh, self.bias)
        h0 = self._state(hidden, "hidden", xs.shape[1:-1], dtype)
        f = self.nonlinearity
        # A module (MLX's nn.PReLU()) has parameters of its own: trace it with the layer instead
        # of baking it into a cached program.
        scan = _rnn_scan_traced if isinstance(f, nnx.Module) else _rnn_scan
        hs = scan(xs, h0, self.Whh[...].astype(dtype).T, f)
        return jnp.moveaxis(hs, 0, -2)


class GRU(_Recurrent):
    r"""A gated recurrent unit, as ``mlx.nn.GRU`` (PyTorch's equations and gate order r, z, n).

    .. math::

        r_t = \sigma(W_{xr} x_t + W_{hr} h_t + b_r), \quad
        z_t = \sigma(W_{xz} x_t + W_{hz} h_t + b_z),

        n_t = \tanh(W_{xn} x_t + b_n + r_t \odot (W_{hn} h_t + b_{hn})), \quad
        h_{t+1} = (1 - z_t) \odot n_t + z_t \odot h_t.

    Args:
      input_size: input features ``D``.
      hidden_size: hidden features ``H``.
      bias: learn ``b`` ``(3H,)`` and ``bhn`` ``(H,)``. Default True.
      rngs: as for :class:`RNN`. Default None.

    Raises:
      TypeError: on non-integer sizes, a non-bool ``bias`` or an ``rngs`` that is not an
        ``nnx.Rngs``; when called, on a non-floating input.
      ValueError: on sizes below 1; when called, on an input that is not ``(N, L, D)`` or
        ``(L, D)`` or an initial state that does not broadcast to ``(N, H)``.

    Parameters ``Wx`` ``(3H, D)``, ``Wh`` ``(3H, H)``, ``b``, ``bhn`` (MLX's names and
    layouts; PyTorch's ``bias_hh`` r and z parts fold into ``b``). Called on ``x``
    ``(N, L, D)`` or ``(L, D)`` and an optional ``hidden``; returns ``(N, L, H)`` or ``(L, H)``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> nn.GRU(4, 8)(jnp.ones((5, 4))).shape
      (5, 8)
    """

    _gates = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        bias, scale, rngs = self._setup(input_size, hidden_size, bias, rngs, ("Wx", "Wh", "b"))
        self.bhn = (uniform_param(rngs, (self.hidden_size,), scale, type(self).__name__)
                    if bias else _flax_compat.data(None))

    def _extra_repr(self) -> str:
        return (
            f"input_dims={self.Wx.shape[1]}, hidden_size={self.hidden_size}, "
            f"bias={self.b is not None}"
        )

    def __call__(self, x: jax.Array, hidden: jax.Array | None = None) -> jax.Array:
        xs, dtype = self._project(x, self.Wx, self.b)
        h0 = self._state(hidden, "hidden", xs.shape[1:-1], dtype)
        bhn = None if self.bhn is None else self.bhn[...].astype(dtype)
        hs = _gru_scan(xs, h0, self.Wh[...].astype(dtype).T, bhn)
        return jnp.moveaxis(hs, 0, -2)


class LSTM(_Recurrent):
    r"""A long short-term memory layer, as ``mlx.nn.LSTM`` (gate order i, f, g, o, as PyTorch).

    .. math::

        (i, f, g, o) = (\sigma, \sigma, \tanh, \sigma)(W_x x_t + W_h h_t + b), \quad
        c_{t+1} = f \odot c_t + i \odot g, \quad h_{t+1} = o \odot \tanh(c_{t+1}).

    Args:
      input_size: input features ``D``.
      hidden_size: hidden features ``H``.
      bias: learn ``bias`` ``(4H,)`` (PyTorch's ``bias_ih + bias_hh``). Default True.
      rngs: as for :class:`RNN`. Default None.

    Raises:
      TypeError: on non-integer sizes, a non-bool ``bias`` or an ``rngs`` that is not an
        ``nnx.Rngs``; when called, on a non-floating input.
      ValueError: on sizes below 1; when called, on an input that is not ``(N, L, D)`` or
        ``(L, D)`` or an initial state that does not broadcast to ``(N, H)``.

    Parameters ``Wx`` ``(4H, D)``, ``Wh`` ``(4H, H)``, ``bias`` (MLX's names and layouts).
    Called on ``x`` ``(N, L, D)`` or ``(L, D)`` with optional ``hidden`` and ``cell``; returns
    the hidden and the cell state of every step, each ``(N, L, H)`` or ``(L, H)``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> hidden, cell = nn.LSTM(4, 8)(jnp.ones((2, 5, 4)))
      >>> hidden.shape, cell.shape
      ((2, 5, 8), (2, 5, 8))
    """

    _gates = 4

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        self._setup(input_size, hidden_size, bias, rngs, ("Wx", "Wh", "bias"))

    def _extra_repr(self) -> str:
        return (
            f"input_dims={self.Wx.shape[1]}, hidden_size={self.hidden_size}, "
            f"bias={self.bias is not None}"
        )

    def __call__(
        self, x: jax.Array, hidden: jax.Array | None = None, cell: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        xs, dtype = self._project(x, self.Wx, self.bias)
        batch = xs.shape[1:-1]
        h0 = self._state(hidden, "hidden", batch, dtype)
        c0 = self._state(cell, "cell", batch, dtype)
        hs, cs = _lstm_scan(xs, h0, c0, self.Wh[...].astype(dtype).T)
        return jnp.moveaxis(hs, 0, -2), jnp.moveaxis(cs, 0, -2)


# The recurrences, compiled once per shape and nonlinearity (an eager call would otherwise trace
# the scan's body again at every call). ``xs`` is ``(L, [N,] gates * H)``, time first.


def _rnn_scan_traced(xs, h0, whh_t, f):
    def step(h, xt):
        h = f(xt + h @ whh_t)
        return h, h

    return jax.lax.scan(step, h0, xs)[1]


_rnn_scan = jax.jit(_rnn_scan_traced, static_argnums=(3,))


@jax.jit
def _gru_scan(xs, h0, wh_t, bhn):
    size = h0.shape[-1]

    def step(h, xt):
        hp = h @ wh_t
        hp_n = hp[..., 2 * size:]
        if bhn is not None:
            hp_n = hp_n + bhn.reshape((1,) * (hp_n.ndim - 1) + (-1,))
        rz = jax.nn.sigmoid(xt[..., : 2 * size] + hp[..., : 2 * size])
        r, z = rz[..., :size], rz[..., size:]
        n = jnp.tanh(xt[..., 2 * size:] + r * hp_n)
        h = (1 - z) * n + z * h
        return h, h

    return jax.lax.scan(step, h0, xs)[1]


@jax.jit
def _lstm_scan(xs, h0, c0, wh_t):
    size = h0.shape[-1]

    def step(carry, xt):
        h, c = carry
        ifgo = xt + h @ wh_t
        i = jax.nn.sigmoid(ifgo[..., :size])
        f = jax.nn.sigmoid(ifgo[..., size: 2 * size])
        g = jnp.tanh(ifgo[..., 2 * size: 3 * size])
        o = jax.nn.sigmoid(ifgo[..., 3 * size:])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (h, c)

    return jax.lax.scan(step, (h0, c0), xs)[1]
