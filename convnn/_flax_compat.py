"""Flax NNX spellings that differ between the oldest supported Flax and the current one.

convnn's floor is the newest Flax that runs on jax 0.5.0 (the last jax that Apple's jax-metal
plugin works with): Flax 0.10.4. Flax 0.11 and 0.12 added ``Variable.get_value`` /
``set_value`` (and deprecated assigning ``.value``), ``nnx.data`` (to mark a plain attribute as
data) and ``nnx.List``, and changed ``Optimizer.update`` to take the model. Each helper uses the
current API when it exists and the 0.10 one otherwise, so neither version warns.

Only ``convnn.layers``, ``convnn.interop`` and the tests import this module (it imports Flax).
"""

from __future__ import annotations

from typing import Any

from flax import nnx

__all__ = ["data", "get_value", "set_value", "List", "optimizer_update"]

#: ``nnx.List`` (Flax >= 0.11: lists of modules must be wrapped); a plain list before.
List = getattr(nnx, "List", list)


def data(value: Any) -> Any:
    """``nnx.data(value)`` where it exists (Flax >= 0.11); the value itself before."""
    mark = getattr(nnx, "data", None)
    return value if mark is None else mark(value)


def get_value(variable: Any) -> Any:
    """The value of an ``nnx.Variable`` (or a Flax 0.10 ``VariableState``)."""
    get = getattr(type(variable), "get_value", None)
    return variable.value if get is None else get(variable)


def set_value(variable: Any, value: Any) -> None:
    """Replaces the value of an ``nnx.Variable``."""
    put = getattr(type(variable), "set_value", None)
    if put is None:
        variable.value = value
    else:
        put(variable, value)


def optimizer_update(optimizer: Any, model: Any, grads: Any) -> None:
    """``optimizer.update(model, grads)`` (Flax >= 0.11) or ``optimizer.update(grads)``."""
    import inspect

    params = inspect.signature(optimizer.update).parameters
    if "model" in params:
        optimizer.update(model, grads)
    else:
        optimizer.update(grads)
