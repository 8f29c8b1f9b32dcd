"""``Module``: an ``nnx.Module`` with the object model MLX code relies on.

MLX's ``nn.Module`` is a ``dict`` of its arrays, sub-modules, lists and dicts. Flax NNX needs
lists of modules wrapped (``nnx.List`` or ``nnx.data``), arrays wrapped (``nnx.Param``), and has
none of MLX's tree methods. :class:`Module` closes the gap without leaving NNX:

* ``__setattr__`` marks every list and dict attribute as data (so ``self.layers = []`` followed
  by ``self.layers.append(Linear(...))`` works), wraps float arrays as ``nnx.Param`` (also inside
  those lists and dicts), and assigning an array to an existing variable updates its value (so
  ``self.running_mean = ...`` updates a ``BatchStat``);
* ``"name" in self``, ``parameters()``, ``trainable_parameters()``, ``update()``, ``apply()``,
  ``freeze()`` / ``unfreeze()``, ``children()``, ``leaf_modules()``, ``modules()``,
  ``named_modules()``, ``apply_to_modules()``, ``train()`` / ``eval()`` and ``training``,
  ``load_weights()`` / ``save_weights()`` behave as in MLX.

The module stays an ordinary ``nnx.Module``: ``nnx.jit``, ``nnx.grad``, ``nnx.Optimizer``,
``nnx.split`` / ``nnx.merge`` and sharding see its ``nnx.Param`` / ``nnx.BatchStat`` variables.
``freeze()`` turns parameters into :class:`Frozen` variables, which are not ``nnx.Param``, so
``nnx.grad`` and ``nnx.Optimizer(..., wrt=nnx.Param)`` leave them alone (freeze before creating
the optimizer: its state follows the parameters it was created with).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convnn import _flax_compat, interop

__all__ = ["Module", "Frozen"]


class Frozen(nnx.Variable):
    """A parameter excluded from training by :meth:`Module.freeze` (it is not an ``nnx.Param``).

    It is loaded and saved with the parameters; :meth:`Module.unfreeze` turns it back into an
    ``nnx.Param``.

    Args:

    Raises:
      TypeError: as ``nnx.Variable``.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> layer = nn.Linear(2, 2).freeze(keys="bias")
      >>> type(layer.bias).__name__, sorted(layer.trainable_parameters())
      ('Frozen', ['weight'])
    """


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def _is_float_array(value: Any) -> bool:
    return _is_array(value) and jnp.issubdtype(value.dtype, jnp.inexact)


def _wrap_arrays(value: Any) -> Any:
    """``value`` with the float arrays inside lists, tuples and dicts wrapped as ``nnx.Param``."""
    if _is_float_array(value):
        return nnx.Param(jnp.asarray(value))
    if isinstance(value, list):
        return [_wrap_arrays(v) for v in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_wrap_arrays(v) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {k: _wrap_arrays(v) for k, v in value.items()}
    return value


def _has_state(value: Any) -> bool:
    """Whether ``value`` is or contains a module, variable or array."""
    if isinstance(value, (nnx.Module, nnx.Variable)) or _is_array(value):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_state(v) for v in value)
    if isinstance(value, dict):
        return any(_has_state(v) for v in value.values())
    return False


def _is_parameter(value: Any) -> bool:
    """MLX's parameters: arrays the model learns or keeps (not RNG state, caches, sown values)."""
    return isinstance(value, (nnx.Param, nnx.BatchStat, Frozen))


def _public_items(module: Any):
    for key, value in vars(module).items():
        if not key.startswith("_"):
            yield key, value


def _tree(value: Any, leaf: Callable[[Any], bool], skip_modules: bool = False) -> Any:
    """MLX's ``filter_and_map`` on one value: variables selected by ``leaf`` become their value,
    modules become dicts, lists and dicts recurse, anything else becomes ``{}``."""
    if isinstance(value, nnx.Variable):
        return _flax_compat.get_value(value) if leaf(value) else {}
    if isinstance(value, nnx.Module):
        return _module_tree(value, leaf)
    if isinstance(value, (list, tuple)):
        return [_tree(v, leaf) for v in value]
    if isinstance(value, dict):
        return {k: _tree(v, leaf) for k, v in value.items()}
    return {}


def _module_tree(module: Any, leaf: Callable[[Any], bool]) -> dict:
    out = {}
    for key, value in _public_items(module):
        if isinstance(value, nnx.Variable):
            if leaf(value) and _flax_compat.get_value(value) is not None:
                out[key] = _flax_compat.get_value(value)
        elif isinstance(value, (nnx.Module, list, tuple, dict)):
            if isinstance(value, tuple) and not _has_state(value):
                continue  # hyperparameters such as kernel_size
            out[key] = _tree(value, leaf)
    return out


def _children_tree(value: Any, leaf: Callable[[Any], bool]) -> Any:
    if isinstance(value, nnx.Module):
        return value if leaf(value) else _children(value, leaf)
    if isinstance(value, (list, tuple)):
        return [_children_tree(v, leaf) for v in value]
    if isinstance(value, dict):
        return {k: _children_tree(v, leaf) for k, v in value.items()}
    return {}


def _children(module: Any, leaf: Callable[[Any], bool]) -> dict:
    out = {}
    for key, value in _public_items(module):
        if isinstance(value, nnx.Module) or (
            isinstance(value, (list, dict)) or (isinstance(value, tuple) and _has_state(value))
        ):
            out[key] = _children_tree(value, leaf)
    return out


def _flatten_modules(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    """``(dotted path, module)`` pairs of a ``children()``-style tree."""
    if isinstance(tree, nnx.Module):
        return [(prefix, tree)]
    items: Any = ()
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    out = []
    for k, v in items:
        out.extend(_flatten_modules(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _direct_modules(module: Any) -> list[tuple[str, Any]]:
    return _flatten_modules(_children(module, lambda m: True), "")


def _update(dst: Any, key: Any, current: Any, new: Any, strict: bool, set_item) -> None:
    """Assigns ``new`` at ``key`` of ``dst`` (a module, list or dict) whose value is ``current``."""
    if isinstance(current, nnx.Variable):
        if strict and not _is_array(new):
            raise ValueError(
                f"[Module.update] expected an array for parameter {key!r}, got "
                f"{type(new).__name__}."
            )
        _flax_compat.set_value(current, jnp.asarray(new) if isinstance(new, np.ndarray) else new)
    elif _is_array(current):
        set_item(new)
    elif isinstance(current, nnx.Module):
        _update_module(current, new, strict)
    elif isinstance(current, (list, dict)):
        _update_container(current, new, strict)
    elif strict:
        raise ValueError(f"[Module.update] {key!r} is not a parameter or a container of them.")


def _update_container(dst: Any, new: Any, strict: bool) -> None:
    if isinstance(dst, list) and isinstance(new, (list, tuple)):
        for i, v in enumerate(new):
            if i >= len(dst):
                if strict:
                    raise ValueError(
                        f"[Module.update] list index {i} is out of bounds for a list of length "
                        f"{len(dst)}."
                    )
                continue
            _update(dst, i, dst[i], v, strict, lambda x, i=i: dst.__setitem__(i, x))
    elif isinstance(dst, dict) and isinstance(new, dict):
        for k, v in new.items():
            if k in dst:
                _update(dst, k, dst[k], v, strict, lambda x, k=k: dst.__setitem__(k, x))
            elif strict:
                raise ValueError(f"[Module.update] the dict has no key {k!r}.")
    elif strict:
        raise ValueError(
            f"[Module.update] expected a {type(dst).__name__}, got {type(new).__name__}."
        )


def _update_module(module: Any, new: Any, strict: bool) -> None:
    if not isinstance(new, dict):
        if strict:
            raise ValueError(
                f"[Module.update] expected a dict for {type(module).__name__}, got "
                f"{type(new).__name__}."
            )
        return
    attrs = vars(module)
    for k, v in new.items():
        if k in attrs and not k.startswith("_"):
            _update(module, k, attrs[k], v, strict, lambda x, k=k: setattr(module, k, x))
        elif strict:
            raise ValueError(
                f"[Module.update] {type(module).__name__} has no parameter named {k!r}."
            )


def _update_modules(dst: Any, modules: Any, strict: bool) -> None:
    if isinstance(dst, (list, dict)):
        keys = range(len(modules)) if isinstance(modules, list) else modules.keys()
        items = dst
    else:
        keys, items = modules.keys(), vars(dst)
    for k in keys:
        present = k < len(items) if isinstance(items, list) else k in items
        if not present:
            if strict:
                raise ValueError(f"[Module.update_modules] no sub-module named {k!r}.")
            continue
        current, new = items[k], modules[k]
        if isinstance(current, nnx.Module) and isinstance(new, nnx.Module):
            if isinstance(dst, (list, dict)):
                dst[k] = new
            else:
                setattr(dst, k, new)
        elif isinstance(current, (list, dict, nnx.Module)) and isinstance(new, (list, dict)):
            _update_modules(current, new, strict)
        elif strict and new != {}:
            raise ValueError(
                f"[Module.update_modules] {k!r} is not a sub-module (got {type(new).__name__})."
            )


def _retype(value: Any, old: type, new: type, keys: Any) -> Any:
    """``value`` with its ``old`` variables (in lists and dicts too) turned into ``new`` ones."""
    if isinstance(value, old) and not isinstance(value, new):
        return new(_flax_compat.get_value(value))
    if isinstance(value, list):
        for i, v in enumerate(value):
            value[i] = _retype(v, old, new, keys)
    elif isinstance(value, dict):
        for k, v in value.items():
            value[k] = _retype(v, old, new, keys)
    return value


class Module(nnx.Module):
    """Base class of convnn's layers and of MLX-style models: ``mlx.nn.Module`` on Flax NNX.

    Subclass it as MLX code subclasses ``mlx.nn.Module`` (``super().__init__()`` is accepted and
    optional). Attributes behave as in MLX: lists and dicts of layers or arrays need no
    ``nnx.List``; a float array becomes an ``nnx.Param``; assigning an array to an existing
    parameter or statistic updates it in place. Names starting with ``_`` are private, as in MLX:
    arrays there stay plain arrays and ``parameters()`` skips them.

    What differs from MLX: arrays appended to a list after it was assigned stay plain arrays
    (assign the list again, or append ``nnx.Param(array)``); integer arrays are state but not
    parameters; ``parameters()`` returns JAX arrays; frozen parameters are :class:`Frozen`
    variables (see :meth:`freeze`).

    Args:

    Raises:
      ValueError: from Flax, when an attribute holding static values is given arrays later
        (assign the array before, or wrap it: ``nnx.data(...)``); the methods raise as
        documented on each.

    Example:
      >>> import jax.numpy as jnp, convnn.layers as nn
      >>> class Scale(nn.Module):
      ...     def __init__(self, dims):
      ...         super().__init__()
      ...         self.weight = jnp.ones((dims,))
      ...     def __call__(self, x):
      ...         return x * self.weight
      >>> class Model(nn.Module):
      ...     def __init__(self):
      ...         super().__init__()
      ...         self.layers = [Scale(4) for _ in range(3)]
      ...     def __call__(self, x):
      ...         for layer in self.layers:
      ...             x = layer(x)
      ...         return x
      >>> model = Model()
      >>> "layers" in model, type(model.layers[0].weight).__name__
      (True, 'Param')
      >>> [sorted(p) for p in model.parameters()["layers"]]
      [['weight'], ['weight'], ['weight']]
    """

    _training: bool = True

    def __init__(self):
        """Accepted for MLX's ``super().__init__()``; there is nothing to set up."""

    def __setattr__(self, name: str, value: Any) -> None:
        current = vars(self).get(name)
        if isinstance(current, nnx.Variable) and _is_array(value):
            # MLX code replaces a parameter by assignment (``self.running_mean = ...``).
            _flax_compat.set_value(
                current, jnp.asarray(value) if isinstance(value, np.ndarray) else value
            )
            return
        public = not name.startswith("_")
        if type(value) in (list, dict):
            # Always data, so that a list filled after assignment (MLX's ``self.layers = []``
            # then ``append``) is seen by NNX.
            value = _flax_compat.data(_wrap_arrays(value) if public else value)
        elif type(value) is tuple and _has_state(value):
            value = _flax_compat.data(_wrap_arrays(value) if public else value)
        elif public and _is_float_array(value):
            value = nnx.Param(jnp.asarray(value))
        super().__setattr__(name, value)

    def __contains__(self, key: str) -> bool:
        """``key in module``: whether ``key`` is a parameter, sub-module, list or dict, as in MLX
        (whose modules are dicts of those)."""
        value = vars(self).get(key)
        if isinstance(value, nnx.Variable):
            return _flax_compat.get_value(value) is not None
        return (
            isinstance(value, (nnx.Module, list, dict))
            or _is_array(value)
            or (isinstance(value, tuple) and _has_state(value))
        )

    # -- training mode ---------------------------------------------------------------------------

    @property
    def training(self) -> bool:
        """Whether the module is in training mode (``Dropout`` active, ``BatchNorm`` updating)."""
        return self._training

    def train(self, mode: bool = True) -> Module:
        """Sets training mode on this module and every sub-module; returns ``self``.

        Flax layers inside (``nnx.Dropout``, ``nnx.BatchNorm``) get ``deterministic`` and
        ``use_running_average`` set to ``not mode``.
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"[Module.train] mode must be a bool, got {mode!r}.")
        mode = bool(mode)
        # nnx.graph.iter_graph exists from the oldest supported Flax on (nnx.iter_modules not).
        for _, module in nnx.graph.iter_graph(self):
            if not isinstance(module, nnx.Module):
                continue
            if isinstance(module, Module):
                module._training = mode
            else:
                for name in ("deterministic", "use_running_average"):
                    if hasattr(module, name):
                        setattr(module, name, not mode)
        return self

    def eval(self) -> Module:
        """``train(False)``."""
        return self.train(False)

    # -- trees of parameters ---------------------------------------------------------------------

    def parameters(self) -> dict:
        """Every parameter and statistic (``nnx.Param``, ``nnx.BatchStat``, :class:`Frozen`) as a
        tree of dicts and lists of arrays, keyed as in MLX."""
        return _module_tree(self, _is_parameter)

    def trainable_parameters(self) -> dict:
        """The ``nnx.Param`` variables (not frozen ones, not statistics) as a tree."""
        return _module_tree(self, lambda v: isinstance(v, nnx.Param))

    def update(self, parameters: dict, strict: bool = True) -> Module:
        """Assigns the arrays of a (partial) ``parameters()``-style tree; returns ``self``.

        Raises:
          ValueError: with ``strict`` (default), on a key the module lacks or a non-array value
            for a parameter.
        """
        _update_module(self, parameters, strict)
        return self

    def apply(self, map_fn: Callable[[jax.Array], jax.Array]) -> Module:
        """Replaces every parameter ``p`` by ``map_fn(p)`` (e.g. a cast); returns ``self``."""
        return self.update(jax.tree.map(map_fn, self.parameters()))

    def set_dtype(self, dtype: Any, predicate: Callable[[Any], bool] | None = None) -> None:
        """Casts the parameters to ``dtype``; by default only floating ones (MLX's predicate)."""
        keep = predicate or (lambda d: jnp.issubdtype(d, jnp.floating))
        self.apply(lambda p: p.astype(dtype) if keep(p.dtype) else p)

    def update_modules(self, modules: dict, strict: bool = True) -> Module:
        """Replaces sub-modules by those of a (partial) ``children()``-style tree; returns
        ``self``.

        Raises:
          ValueError: with ``strict`` (default), on a name that is not a sub-module.
        """
        _update_modules(self, modules, strict)
        return self

    def freeze(
        self, *, recurse: bool = True, keys: str | list[str] | None = None, strict: bool = False
    ) -> Module:
        """Excludes parameters from training: they become :class:`Frozen` variables.

        Args:
          recurse: freeze the sub-modules' parameters too. Default True.
          keys: only these attribute names (e.g. ``"bias"``). Default: all.
          strict: with ``keys``, raise ``KeyError`` when a key is in no module. Default False.
        """
        self._retype_all(nnx.Param, Frozen, recurse, keys, strict, "freeze")
        return self

    def unfreeze(
        self, *, recurse: bool = True, keys: str | list[str] | None = None, strict: bool = False
    ) -> Module:
        """Makes frozen parameters ``nnx.Param`` again (statistics stay statistics)."""
        self._retype_all(Frozen, nnx.Param, recurse, keys, strict, "unfreeze")
        return self

    def _retype_all(self, old, new, recurse, keys, strict, fn):
        keys = [keys] if isinstance(keys, str) else keys
        modules = [m for _, m in self.named_modules()] if recurse else [self]
        if strict and keys is not None:
            for k in keys:
                if not any(k in vars(m) for m in modules):
                    raise KeyError(f"[Module.{fn}] no module contains a member named {k!r}.")
        for m in modules:
            for name, value in list(_public_items(m)):
                if keys is not None and name not in keys:
                    continue
                if isinstance(value, (nnx.Module,)):
                    continue
                if isinstance(value, old) and not isinstance(value, new):
                    nnx.Module.__setattr__(m, name, new(_flax_compat.get_value(value)))
                elif isinstance(value, (list, dict)):
                    _retype(value, old, new, keys)

    # -- sub-modules ---------------------------------------------------------------------------

    def children(self) -> dict:
        """The direct sub-modules, in the attributes' lists and dicts as in MLX."""
        return _children(self, lambda m: True)

    def leaf_modules(self) -> dict:
        """The sub-modules that contain no module, in a tree of dicts and lists."""
        return _children(self, lambda m: not _direct_modules(m))

    def apply_to_modules(self, apply_fn: Callable[[str, Any], Any]) -> Module:
        """Calls ``apply_fn(path, module)`` on this module (path ``""``) and every sub-module
        (``"blocks.0.conv"``); returns ``self``."""
        stack: list[tuple[str, Any]] = [("", self)]
        while stack:
            prefix, module = stack.pop()
            apply_fn(prefix, module)
            for path, child in _direct_modules(module):
                stack.append((f"{prefix}.{path}" if prefix else path, child))
        return self

    def modules(self) -> list:
        """This module and every sub-module."""
        out: list = []
        self.apply_to_modules(lambda _, m: out.append(m))
        return out

    def named_modules(self) -> list[tuple[str, Any]]:
        """``(path, module)`` for this module and every sub-module."""
        out: list = []
        self.apply_to_modules(lambda k, m: out.append((k, m)))
        return out

    # -- weight files ------------------------------------------------------------------------------

    def load_weights(self, file_or_weights: Any, strict: bool = True) -> Module:
        """Loads MLX weights: a ``.safetensors`` / ``.npz`` file written by MLX's or convnn's
        ``save_weights``, or a list of ``(name, array)`` pairs; returns ``self``.

        Goes through :func:`convnn.interop.load_mlx_weights`: with ``strict`` (default), a
        missing, unexpected or mis-shaped key is a ``ValueError`` and nothing is loaded.
        """
        interop.load_mlx_weights(self, file_or_weights, strict=strict)
        return self

    def save_weights(self, file: str) -> None:
        """Writes the parameters in MLX's names and layouts (``.safetensors`` or ``.npz``), for
        MLX's ``load_weights``; see :func:`convnn.interop.save_mlx_weights`."""
        interop.save_mlx_weights(self, file)
