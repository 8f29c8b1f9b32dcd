"""``Dropout``, ``Dropout2d`` and ``Dropout3d``: MLX's dropout layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from convnn import _args
from convnn.layers._common import as_input
from convnn.layers._module import Module
from convnn.layers._random import resolve_rngs

__all__ = ["Dropout", "Dropout2d", "Dropout3d"]


class _Dropout(Module):
    _ndims: tuple[int, ...] = ()  # accepted input ranks (empty: any)
    _shared: int = 0  # axes before the channels that share one mask value

    def __init__(self, p: float = 0.5, *, rngs: nnx.Rngs | None = None):
        super().__init__()
        fn = type(self).__name__
        number = _args.check_real(p, "p", fn, expect="a float in [0, 1)")
        if not 0 <= number < 1:
            raise ValueError(f"[{fn}] the dropout probability p must be in [0, 1), got {p!r}.")
        self._p_1 = 1.0 - number
        # A stream of its own (or the one given), kept in the model so that nnx.jit advances it.
        self.rngs = resolve_rngs(rngs, fn)

    @property
    def deterministic(self) -> bool:
        """``not training`` (the attribute ``nnx.Module.eval`` / ``train`` set)."""
        return not self._training

    @deterministic.setter
    def deterministic(self, value: bool) -> None:
        self._training = not value

    def __call__(self, x: jax.Array) -> jax.Array:
        fn = type(self).__name__
        x = as_input(x, fn)
        if self._ndims and x.ndim not in self._ndims:
            raise ValueError(
                f"[{fn}] input must have {' or '.join(map(str, self._ndims))} axes (channels "
                f"last); got input shape {tuple(x.shape)}."
            )
        if self._p_1 == 1 or not self.training:
            return x
        shape = list(x.shape)
        for axis in range(2, 2 + self._shared):
            shape[-axis] = 1
        mask = jax.random.bernoulli(self.rngs.dropout(), self._p_1, tuple(shape))
        return x * mask.astype(x.dtype) * jnp.asarray(1 / self._p_1, x.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={1 - self._p_1:g})"


class Dropout(_Dropout):
    """Zeroes elements with probability ``p`` in training mode and scales the rest by
    ``1 / (1 - p)``, as ``mlx.nn.Dropout``; the identity in evaluation mode.

    Args:
      p: the probability of zeroing an element, in [0, 1). Default 0.5.
      rngs: an ``nnx.Rngs`` whose ``dropout`` (else ``default``) stream draws the masks. Default:
        a stream of the layer's own, seeded from the default stream (:func:`seed`); it is part
        of the model's state, so masks differ from call to call under ``nnx.jit`` too.

    Raises:
      TypeError: on a non-numeric ``p`` or ``rngs`` that is not an ``nnx.Rngs``.
      ValueError: on ``p`` outside [0, 1).

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> drop = nn.Dropout(0.5)
      >>> sorted(set(drop(jnp.ones(100)).tolist()))
      [0.0, 2.0]
      >>> drop.eval()(jnp.ones(3)).tolist()
      [1.0, 1.0, 1.0]
    """


class Dropout2d(_Dropout):
    """Zeroes whole channels of ``(N, H, W, C)`` or ``(H, W, C)`` input, as ``mlx.nn.Dropout2d``
    (one mask value per sample and channel).

    Args:
      p: the probability of zeroing a channel, in [0, 1). Default 0.5.
      rngs: as for :class:`Dropout`. Default ``None``: a stream of the layer's own.

    Raises:
      TypeError: on a non-numeric ``p`` or ``rngs`` that is not an ``nnx.Rngs``.
      ValueError: on ``p`` outside [0, 1); when called, on an input without 3 or 4 axes.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> y = nn.Dropout2d(0.5)(jnp.ones((2, 4, 4, 8)))
      >>> bool((y == y[:, :1, :1, :]).all())
      True
    """

    _ndims = (3, 4)
    _shared = 2


class Dropout3d(_Dropout):
    """Zeroes whole channels of ``(N, D, H, W, C)`` or ``(D, H, W, C)`` input, as
    ``mlx.nn.Dropout3d``.

    Args:
      p: the probability of zeroing a channel, in [0, 1). Default 0.5.
      rngs: as for :class:`Dropout`. Default ``None``: a stream of the layer's own.

    Raises:
      TypeError: on a non-numeric ``p`` or ``rngs`` that is not an ``nnx.Rngs``.
      ValueError: on ``p`` outside [0, 1); when called, on an input without 4 or 5 axes.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> y = nn.Dropout3d(0.5)(jnp.ones((2, 3, 4, 4, 8)))
      >>> bool((y == y[:, :1, :1, :1, :]).all())
      True
    """

    _ndims = (4, 5)
    _shared = 3
