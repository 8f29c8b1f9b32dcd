"""Weight interop: MLX weight files and PyTorch state dicts for Flax NNX models.

Three functions move weights between an NNX model and the two other ecosystems:

* :func:`save_mlx_weights` writes a ``.safetensors`` or ``.npz`` file that MLX's
  ``Module.load_weights`` reads for the same architecture;
* :func:`load_mlx_weights` reads a file written by MLX's ``Module.save_weights`` (or a mapping);
* :func:`load_torch_state_dict` loads a PyTorch ``state_dict`` (torch tensors or NumPy arrays;
  torch itself is never imported here).

Keys are attribute paths joined with ``"."``, list indices as numbers (``blocks.1.conv2.weight``).
Only ``nnx.Param`` and ``nnx.BatchStat`` variables take part (RNG state, caches and
intermediates do not). A module that appears under several paths (a shared layer) has a key under
each path, as in MLX and PyTorch.

Flax's own layers are mapped to MLX's and PyTorch's names and layouts by type:

* ``nnx.Linear``: ``kernel (in, out)`` is ``weight (out, in)`` in MLX and PyTorch;
* ``nnx.Conv``: ``kernel (*k, in/g, out)`` is MLX's ``weight (out, *k, in/g)`` and PyTorch's
  ``weight (out, in/g, *k)``;
* ``nnx.BatchNorm``: ``scale``, ``bias``, ``mean``, ``var`` are ``weight``, ``bias``,
  ``running_mean``, ``running_var`` (PyTorch's ``num_batches_tracked`` is ignored);
* ``nnx.LayerNorm``, ``nnx.GroupNorm``, ``nnx.RMSNorm``: ``scale``, ``bias`` are ``weight``,
  ``bias``;
* ``nnx.Embed``: ``embedding`` is ``weight``.

convnn's layers already use MLX's names and layouts: convolutions ``weight (out, *k, in/g)``,
which PyTorch stores as ``(out, in/g, *k)``; transposed convolutions ``weight (out, *k, in/g)``,
which PyTorch stores as ``(in, out/g, *k)``. Any other module's variables keep their attribute
names and layouts. ``nnx.Sequential`` keeps its children in ``layers`` as MLX's ``nn.Sequential``
does (``down.layers.0.weight``); PyTorch's ``nn.Sequential`` has no such level (``down.0.weight``).

Loading validates every key, shape and value first and assigns afterwards, so a failed load
leaves the model unchanged. Weight files are read without pickle.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

try:
    from flax import nnx
except ImportError as e:
    raise ImportError(
        f'convnn.interop needs Flax ({e}); install it with: pip install "convnn[nn]"'
    ) from e

from convnn import _flax_compat

__all__ = ["LoadResult", "save_mlx_weights", "load_mlx_weights", "load_torch_state_dict"]

_VARIABLE_TYPES = (nnx.Param, nnx.BatchStat)
_SUFFIXES = (".safetensors", ".npz")


class LoadResult(NamedTuple):
    """What a load did not use: lists of keys, sorted.

    Attributes:
      missing_keys: keys the model has and the weights lack (left unchanged).
      unexpected_keys: keys in the weights that the model does not have (ignored).
      mismatched_keys: ``"key: expected shape (...), got (...)"`` for keys whose shape differs
        (left unchanged).

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from convnn.interop import load_torch_state_dict
      >>> model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> missing, unexpected, mismatched = load_torch_state_dict(
      ...     model, {"0.weight": np.zeros((2, 3)), "extra": np.zeros(1)}, strict=False)
      >>> missing, unexpected, mismatched
      (['0.bias'], ['extra'], [])
    """

    missing_keys: list[str]
    unexpected_keys: list[str]
    mismatched_keys: list[str]


# ---------------------------------------------------------------------------------------------
# Layouts: how one variable's NNX value relates to MLX's and PyTorch's stored arrays.
# ---------------------------------------------------------------------------------------------


class _Same:
    """The same array everywhere."""

    def mlx_shape(self, shape):
        return tuple(shape)

    def torch_shape(self, shape):
        return tuple(shape)

    def to_mlx(self, a):
        return a

    def from_mlx(self, a):
        return a

    def from_torch(self, a):
        return a


class _LinearKernel(_Same):
    """``nnx.Linear.kernel`` ``(in, out)``; MLX and PyTorch ``(out, in)``."""

    def mlx_shape(self, shape):
        return tuple(shape[::-1])

    torch_shape = mlx_shape

    def to_mlx(self, a):
        return a.T

    from_mlx = from_torch = to_mlx


class _FlaxConvKernel(_Same):
    """``nnx.Conv.kernel`` ``(*k, in/g, out)``; MLX ``(out, *k, in/g)``; PyTorch
    ``(out, in/g, *k)``."""

    def mlx_shape(self, shape):
        return (shape[-1], *shape[:-1])

    def torch_shape(self, shape):
        return (shape[-1], shape[-2], *shape[:-2])

    def to_mlx(self, a):
        return np.moveaxis(a, -1, 0)

    def from_mlx(self, a):
        return np.moveaxis(a, 0, -1)

    def from_torch(self, a):
        n = a.ndim - 2
        return a.transpose(*range(2, 2 + n), 1, 0)


class _MlxConvWeight(_Same):
    """convnn convolution ``weight`` ``(out, *k, in/g)``; PyTorch ``(out, in/g, *k)``."""

    def torch_shape(self, shape):
        return (shape[0], shape[-1], *shape[1:-1])

    def from_torch(self, a):
        return np.moveaxis(a, 1, -1)


@dataclass(frozen=True)
class _MlxConvTransposeWeight(_Same):
    """convnn transposed convolution ``weight`` ``(out, *k, in/g)``; PyTorch ``(in, out/g, *k)``.

    With ``G`` groups of ``Ig`` input and ``Og`` output channels, PyTorch's
    ``w[g * Ig + i, o, *k]`` is MLX's ``w[g * Og + o, *k, i]``.
    """

    groups: int

    def torch_shape(self, shape):
        out, *k, in_g = shape
        return (self.groups * in_g, out // self.groups, *k)

    def from_torch(self, a):
        in_, out_g, *k = a.shape
        g = self.groups
        n = len(k)
        a = a.reshape(g, in_ // g, out_g, *k)  # (G, Ig, Og, *k)
        a = a.transpose(0, 2, *range(3, 3 + n), 1)  # (G, Og, *k, Ig)
        return a.reshape(g * out_g, *k, in_ // g)


_SAME = _Same()
_NORM = {"scale": ("weight", _SAME), "bias": ("bias", _SAME)}
# Per Flax layer type: NNX attribute -> (MLX and PyTorch name, layout).
_FLAX_RULES: list[tuple[type, dict[str, tuple[str, Any]]]] = [
    (nnx.Linear, {"kernel": ("weight", _LinearKernel()), "bias": ("bias", _SAME)}),
    (nnx.Conv, {"kernel": ("weight", _FlaxConvKernel()), "bias": ("bias", _SAME)}),
    (
        nnx.BatchNorm,
        {
            "scale": ("weight", _SAME),
            "bias": ("bias", _SAME),
            "mean": ("running_mean", _SAME),
            "var": ("running_var", _SAME),
        },
    ),
    (nnx.LayerNorm, _NORM),
    (nnx.GroupNorm, _NORM),
    (nnx.RMSNorm, _NORM),
    (nnx.Embed, {"embedding": ("weight", _SAME)}),
]


# convnn's own layers register their rules (``convnn.layers`` imports this module, so this
# module cannot import it): layer type -> function from the layer to its rules.
_LAYER_RULES: dict[type, Callable[[Any], dict[str, tuple[str, Any]]]] = {}
# PyTorch BatchNorm layers have ``num_batches_tracked``, which is ignored.
_BATCH_NORM_TYPES: tuple[type, ...] = (nnx.BatchNorm,)
# Linear layers with a PyTorch-layout ``weight`` (out, in): the flatten-order check reads them.
_LINEAR_TYPES: tuple[type, ...] = ()


def _register_layer(
    cls: type,
    rules: Callable[[Any], dict[str, tuple[str, Any]]],
    *,
    batch_norm: bool = False,
    linear: bool = False,
) -> None:
    """Maps a layer type's variables: ``rules(layer)`` gives attribute -> (MLX and PyTorch name,
    layout); the most derived registered type of a layer wins. ``batch_norm`` marks a layer
    whose PyTorch counterpart has ``num_batches_tracked``; ``linear`` one whose ``weight`` is a
    PyTorch-layout ``(out, in)`` matrix."""
    global _BATCH_NORM_TYPES, _LINEAR_TYPES
    _LAYER_RULES[cls] = rules
    if batch_norm:
        _BATCH_NORM_TYPES = (*_BATCH_NORM_TYPES, cls)
    if linear:
        _LINEAR_TYPES = (*_LINEAR_TYPES, cls)


# Layers whose PyTorch parameters are not one array per variable (LSTM's two biases, attention's
# packed in_proj_weight): layer type -> function(layer, prefix, state_dict) that rewrites the
# layer's PyTorch keys of a (copied) state dict into the layer's own names and layouts.
_TORCH_REWRITES: dict[type, Callable[[Any, str, dict[str, Any]], None]] = {}


def _register_torch_rewrite(
    cls: type, rewrite: Callable[[Any, str, dict[str, Any]], None]
) -> None:
    """Registers ``rewrite(layer, prefix, state_dict)`` for a layer type (see above)."""
    _TORCH_REWRITES[cls] = rewrite


def _rewrite_torch_keys(model: Any, state_dict: Mapping[str, Any], fn: str) -> Mapping[str, Any]:
    """``state_dict`` with the keys of registered layers rewritten (a copy when any applies)."""
    if not _TORCH_REWRITES or nnx.graph.get_node_impl(model) is None:
        return state_dict
    found: list[tuple[Any, str]] = []
    seen: set[int] = set()

    def walk(node, path):
        impl = nnx.graph.get_node_impl(node)
        if impl is None or id(node) in seen or isinstance(node, nnx.Variable):
            return
        seen.add(id(node))
        if any(cls in _TORCH_REWRITES for cls in type(node).__mro__):
            found.append((node, "".join(f"{p}." for p in path)))
        for key, child in impl.node_dict(node).items():
            skip = isinstance(node, nnx.Sequential) and key == "layers"
            walk(child, path if skip else (*path, str(key)))

    walk(model, ())
    if not found:
        return state_dict
    out = dict(state_dict)
    for layer, prefix in found:
        rewrite = next(_TORCH_REWRITES[c] for c in type(layer).__mro__ if c in _TORCH_REWRITES)
        rewrite(layer, prefix, out)
    return out


def _register_variable_type(variable_type: type) -> None:
    """Lets a variable type take part in saving and loading (besides Param and BatchStat)."""
    global _VARIABLE_TYPES
    if variable_type not in _VARIABLE_TYPES:
        _VARIABLE_TYPES = (*_VARIABLE_TYPES, variable_type)


def _rules_for(module: Any, path: str, fn: str) -> dict[str, tuple[str, Any]]:
    if isinstance(module, nnx.ConvTranspose):
        raise TypeError(
            f"[{fn}] {path or 'the model'} is an nnx.ConvTranspose, whose kernel layout and "
            "flipping have no MLX or PyTorch counterpart; use convnn.layers.ConvTranspose1d/2d/3d "
            "(MLX's layout and PyTorch's semantics)."
        )
    for cls in type(module).__mro__:
        if cls in _LAYER_RULES:
            return _LAYER_RULES[cls](module)
    for cls, rules in _FLAX_RULES:
        if isinstance(module, cls):
            return rules
    return {}


# ---------------------------------------------------------------------------------------------
# Walking the model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One variable under one path."""

    mlx_key: str
    torch_key: str
    variable: Any
    layout: Any
    owner: Any  # the module holding the variable


def _entries(model: Any, fn: str) -> list[_Entry]:
    """Every ``Param``/``BatchStat`` of ``model`` under every path that reaches it."""
    if nnx.graph.get_node_impl(model) is None:
        raise TypeError(
            f"[{fn}] model must be a Flax NNX module (or a graph of them), "
            f"got {type(model).__name__}."
        )
    entries: list[_Entry] = []
    on_path: set[int] = set()

    def walk(node, mlx_path, torch_path):
        impl = nnx.graph.get_node_impl(node)
        if impl is None or id(node) in on_path:
            return
        on_path.add(id(node))
        is_module = isinstance(node, nnx.Module)
        rules = _rules_for(node, ".".join(mlx_path), fn) if is_module else {}
        for key, child in impl.node_dict(node).items():
            if isinstance(child, nnx.Variable):
                if not isinstance(child, _VARIABLE_TYPES) or _flax_compat.get_value(child) is None:
                    continue
                name, layout = rules.get(str(key), (str(key), _SAME))
                entries.append(
                    _Entry(
                        ".".join((*mlx_path, name)),
                        ".".join((*torch_path, name)),
                        child,
                        layout,
                        node,
                    )
                )
            elif nnx.graph.get_node_impl(child) is not None:
                skip = isinstance(node, nnx.Sequential) and key == "layers"
                walk(
                    child,
                    (*mlx_path, str(key)),
                    torch_path if skip else (*torch_path, str(key)),
                )
        on_path.discard(id(node))

    walk(model, (), ())
    return entries


def _unique_keys(entries: list[_Entry], key_of: Callable[[_Entry], str], fn: str) -> set[str]:
    """The entries' keys; two different variables under one key is an error."""
    owner: dict[str, Any] = {}
    for e in entries:
        key = key_of(e)
        if owner.setdefault(key, e.variable) is not e.variable:
            raise ValueError(
                f"[{fn}] two different variables of the model map to the key {key!r}; rename "
                "one of them."
            )
    return set(owner)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _to_numpy(value: Any, key: str, fn: str) -> np.ndarray:
    """A NumPy array from a NumPy/JAX/MLX array or a torch tensor (duck-typed)."""
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        t = value.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # bfloat16 and other dtypes NumPy lacks: widen losslessly first.
            return t.float().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"[{fn}] value for {key!r} cannot be converted to a NumPy array "
            f"({type(value).__name__}: {e}); pass NumPy arrays (cast bfloat16 MLX arrays to "
            "float32 first) or a file path."
        ) from None
    if arr.dtype == np.dtype("V2"):  # MLX writes bfloat16 to .npz as 2-byte void.
        arr = arr.view(jnp.bfloat16)
    if not (
        arr.dtype == np.bool_
        or jnp.issubdtype(arr.dtype, jnp.integer)
        or jnp.issubdtype(arr.dtype, jnp.floating)
    ):
        raise TypeError(
            f"[{fn}] value for {key!r} must be a numeric array, got dtype {arr.dtype} "
            f"of shape {arr.shape}."
        )
    return arr


def _check_values(arr: np.ndarray, dtype: Any, key: str, fn: str) -> None:
    """Refuses values that cannot be what a floating-point variable holds.

    Integer and boolean arrays for a floating-point variable are refused rather than converted:
    they are almost always the wrong tensor (a counter, a mask, an index table) under a matching
    key. NaN and infinite values are refused: a damaged or diverged checkpoint.
    """
    if not jnp.issubdtype(dtype, jnp.inexact):
        return
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        raise TypeError(
            f"[{fn}] value for {key!r} has dtype {arr.dtype} (shape {arr.shape}) but the model's "
            f"variable is {jnp.dtype(dtype)}; integer and boolean weights are refused (cast them "
            "to floating point first if that is really intended)."
        )
    finite = np.isfinite(arr.astype(np.float32) if arr.dtype.itemsize < 4 else arr)
    if not finite.all():
        bad = int(arr.size - finite.sum())
        raise ValueError(
            f"[{fn}] value for {key!r} (shape {arr.shape}) holds {bad} NaN or infinite "
            "value(s); non-finite weights are refused (a damaged or diverged checkpoint?)."
        )


def _format_problems(fn, what, missing, unexpected, mismatched):
    lines = [f"[{fn}] Error(s) loading {what}:"]
    if missing:
        lines.append(f"  Missing {len(missing)} key(s): " + ", ".join(missing) + ".")
    if unexpected:
        lines.append(f"  Unexpected {len(unexpected)} key(s): " + ", ".join(unexpected) + ".")
    if mismatched:
        lines.append(f"  Shape mismatch in {len(mismatched)} key(s):")
        lines.extend(f"    {m}" for m in mismatched)
    return "\n".join(lines)


def _load(
    entries: list[_Entry],
    weights: Mapping[str, Any],
    *,
    torch: bool,
    strict: bool,
    fn: str,
    what: str,
    ignore: Callable[[str], bool] = lambda key: False,
) -> LoadResult:
    key_of = (lambda e: e.torch_key) if torch else (lambda e: e.mlx_key)
    expected = _unique_keys(entries, key_of, fn)
    unexpected = sorted(k for k in weights if k not in expected and not ignore(k))
    missing: list[str] = []
    mismatched: list[str] = []
    # id(variable) -> (variable, its current value, the new value in NNX layout)
    updates: dict[int, tuple[Any, Any, np.ndarray]] = {}
    for e in entries:
        key = key_of(e)
        if key not in weights:
            missing.append(key)
            continue
        current = _flax_compat.get_value(e.variable)
        shape = tuple(current.shape)
        want = e.layout.torch_shape(shape) if torch else e.layout.mlx_shape(shape)
        arr = _to_numpy(weights[key], key, fn)
        _check_values(arr, current.dtype, key, fn)
        if tuple(arr.shape) != tuple(want):
            layout = "PyTorch" if torch else "MLX"
            mismatched.append(
                f"{key}: expected shape {tuple(want)} ({layout} layout), got {tuple(arr.shape)}"
            )
            continue
        if id(e.variable) in updates:  # shared: the first path wins, as it would in MLX
            continue
        arr = e.layout.from_torch(arr) if torch else e.layout.from_mlx(arr)
        updates[id(e.variable)] = (e.variable, current, arr)
    missing.sort()
    mismatched.sort()
    if strict and (missing or unexpected or mismatched):
        raise ValueError(_format_problems(fn, what, missing, unexpected, mismatched))
    if mismatched:
        warnings.warn(
            _format_problems(fn, what, [], [], mismatched)
            + "\nThese variables were left unchanged.",
            stacklevel=3,
        )
    new_values = []
    for variable, current, arr in updates.values():
        # A copy: on CPU, jnp.asarray may share the NumPy buffer, which for a torch tensor is the
        # tensor's own memory (PyTorch updates running statistics in place).
        value = jnp.asarray(np.array(arr, order="C", copy=True), dtype=current.dtype)
        sharding = getattr(current, "sharding", None)  # None for an abstract value without one
        if sharding is not None:
            value = jax.device_put(value, sharding)
        new_values.append((variable, value))
    for variable, value in new_values:
        _flax_compat.set_value(variable, value)
    return LoadResult(missing, unexpected, mismatched)


def _check_path(path: Any, fn: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"[{fn}] path must be a str or os.PathLike, got {type(path).__name__}.")
    path = os.fspath(path)
    if not path.endswith(_SUFFIXES):
        raise ValueError(
            f"[{fn}] unsupported file extension in {path!r}; use '.safetensors' or '.npz'."
        )
    return path


def _require_safetensors(fn: str) -> None:
    try:
        import safetensors.numpy  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f'[{fn}] .safetensors files need the safetensors package ({e}); install it with: '
            'pip install "convnn[nn]"'
        ) from e


def _read_weights(path: str, fn: str) -> dict[str, np.ndarray]:
    """The arrays of a weight file; a missing, empty, truncated or foreign file is an error
    naming the file and the problem."""
    kind = "safetensors" if path.endswith(".safetensors") else "npz"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise FileNotFoundError(f"[{fn}] cannot open {path!r}: {e.strerror}.") from None
    if not head:
        raise ValueError(f"[{fn}] {path!r} is empty (0 bytes); expected a .{kind} weight file.")
    if kind == "npz" and not head.startswith(b"PK"):
        raise ValueError(
            f"[{fn}] {path!r} is not a .npz file: it does not start with a zip header "
            f"(its first bytes are {head!r})."
        )
    if kind == "safetensors":
        _require_safetensors(fn)
    try:
        if kind == "safetensors":
            import safetensors.numpy

            try:
                return dict(safetensors.numpy.load_file(path))
            except TypeError:  # bfloat16 tensors: NumPy lacks the dtype; read through JAX.
                import safetensors.flax

                return {k: np.asarray(v) for k, v in safetensors.flax.load_file(path).items()}
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:  # SafetensorError, BadZipFile, EOFError, ValueError, OSError, ...
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"[{fn}] {path!r} is not a readable .{kind} file (damaged or truncated?): "
            f"{type(e).__name__}{': ' + detail if detail else ''}."
        ) from e


def load_mlx_weights(
    model: Any,
    path_or_mapping: str | os.PathLike | Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    strict: bool = True,
) -> LoadResult:
    """Loads MLX weights (a file from ``mlx.nn.Module.save_weights``, or a mapping) into ``model``.

    Keys and layouts are MLX's (see the module docstring): a model written the same way in MLX and
    in NNX exchanges weights through this function and :func:`save_mlx_weights`. Values are cast
    to each variable's dtype and placed with its sharding.

    Args:
      model: a Flax NNX module.
      path_or_mapping: a ``.safetensors`` or ``.npz`` file (read without pickle), or a mapping
        (or iterable of pairs, like MLX's ``load_weights``) from keys to arrays in MLX layout
        (NumPy, JAX or float32 MLX arrays).
      strict: if True (default), any missing, unexpected or mis-shaped key is an error and
        nothing is loaded. If False, loads the keys that match, leaves the other variables
        unchanged, and warns about shape mismatches.

    Returns:
      A :class:`LoadResult` with the keys that were not used (all empty after a strict load).

    Every value is validated before anything is assigned: integer and boolean values for
    floating-point variables are refused, and so are NaN and infinite values.

    Raises:
      ValueError: in strict mode, listing every missing, unexpected and mis-shaped key in one
        message; for a file extension other than ``.safetensors`` / ``.npz``; for an empty,
        truncated or damaged file (naming it); or a value holds NaN or infinity.
      FileNotFoundError: the file cannot be opened.
      TypeError: if ``model`` is not an NNX module or a value is not a floating-point array
        (for a floating-point variable).

    Example:
      >>> import os, tempfile
      >>> from flax import nnx
      >>> from convnn.interop import load_mlx_weights, save_mlx_weights
      >>> a = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> b = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
      >>> with tempfile.TemporaryDirectory() as d:
      ...     save_mlx_weights(a, os.path.join(d, "model.safetensors"))
      ...     result = load_mlx_weights(b, os.path.join(d, "model.safetensors"))
      >>> bool((b.layers[0].kernel[...] == a.layers[0].kernel[...]).all())
      True
      >>> import numpy as np
      >>> load_mlx_weights(b, {"layers.0.weight": np.zeros((2, 3))}, strict=False).missing_keys
      ['layers.0.bias']
    """
    fn = "load_mlx_weights"
    if isinstance(path_or_mapping, (str, os.PathLike)):
        path = _check_path(path_or_mapping, fn)
        weights = _read_weights(path, fn)
        what = f"MLX weights from {path!r}"
    elif isinstance(path_or_mapping, Mapping):
        weights, what = path_or_mapping, "MLX weights"
    elif isinstance(path_or_mapping, Iterable):
        weights, what = dict(path_or_mapping), "MLX weights"
    else:
        raise TypeError(
            f"[{fn}] path_or_mapping must be a file path, a mapping or pairs of (key, array), "
            f"got {type(path_or_mapping).__name__}."
        )
    return _load(_entries(model, fn), weights, torch=False, strict=strict, fn=fn, what=what)


def _write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    # np.savez would reserve the names "file" and "allow_pickle"; write the zip directly.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


def save_mlx_weights(model: Any, path: str | os.PathLike) -> None:
    """Saves ``model``'s parameters in MLX's names and layouts, for ``mlx.nn.Module.load_weights``.

    Args:
      model: a Flax NNX module.
      path: the file to write; its extension picks the format: ``.safetensors`` (with MLX's
        ``{"format": "mlx"}`` metadata) or ``.npz``.

    Raises:
      ValueError: for an extension other than ``.safetensors`` / ``.npz``.
      TypeError: if ``model`` is not an NNX module or contains a layer with no MLX counterpart
        (``nnx.ConvTranspose``).

    Example:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from flax import nnx
      >>> from convnn.interop import save_mlx_weights
      >>> model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> with tempfile.TemporaryDirectory() as d:
      ...     save_mlx_weights(model, os.path.join(d, "model.npz"))
      ...     with np.load(os.path.join(d, "model.npz")) as f:
      ...         print(sorted((k, f[k].shape) for k in f.files))
      [('layers.0.bias', (2,)), ('layers.0.weight', (2, 3))]
    """
    fn = "save_mlx_weights"
    path = _check_path(path, fn)
    arrays: dict[str, np.ndarray] = {}
    entries = _entries(model, fn)
    _unique_keys(entries, lambda e: e.mlx_key, fn)
    for e in entries:
        value = np.asarray(_flax_compat.get_value(e.variable))
        arrays[e.mlx_key] = np.ascontiguousarray(e.layout.to_mlx(value))
    if path.endswith(".safetensors"):
        _require_safetensors(fn)
        import safetensors.numpy

        safetensors.numpy.save_file(arrays, path, metadata={"format": "mlx"})
    else:
        _write_npz(path, arrays)


def _warn_flatten_order(entries: list[_Entry], fn: str) -> None:
    """Warns about ``nnx.Linear`` layers that look like they take a flattened feature map.

    PyTorch flattens an ``(N, C, H, W)`` map in ``(C, H, W)`` order; a channels-last model
    flattens ``(H, W, C)``. The keys and shapes match either way, so only the outputs show it.
    A Linear layer is suspect when its input size is a multiple (more than once) of some
    convolution's output channels and is neither those channels (global pooling) nor another
    Linear layer's output size.
    """
    conv_channels: dict[int, str] = {}
    linear_out: set[int] = set()
    linears: list[tuple[str, int]] = []
    for e in entries:
        prefix, _, name = e.torch_key.rpartition(".")
        if name != "weight":
            continue
        shape = tuple(_flax_compat.get_value(e.variable).shape)
        if isinstance(e.layout, (_MlxConvWeight, _MlxConvTransposeWeight)):
            conv_channels.setdefault(shape[0], prefix)
        elif isinstance(e.owner, nnx.Conv):
            conv_channels.setdefault(shape[-1], prefix)
        elif isinstance(e.owner, nnx.Linear):
            linears.append((prefix, shape[0]))
            linear_out.add(shape[1])
        elif isinstance(e.owner, _LINEAR_TYPES):
            linears.append((prefix, shape[1]))
            linear_out.add(shape[0])
    for prefix, n_in in linears:
        if n_in in conv_channels or n_in in linear_out:
            continue
        found = [c for c in conv_channels if n_in % c == 0 and n_in // c > 1]
        if found:
            c = max(found)
            warnings.warn(
                f"[{fn}] {prefix!r} takes {n_in} inputs = {c} channels x {n_in // c} positions. "
                f"If the PyTorch model flattens a feature map (of {conv_channels[c]!r}, say) "
                "before it, PyTorch flattens in (C, H, W) order and a channels-last model in "
                "(H, W, C) order: the keys and shapes match but the outputs differ. Flatten with "
                "x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1) in the NNX model (as "
                "examples/port_from_torch.py does), then pass check_flatten=False.",
                stacklevel=3,
            )


def load_torch_state_dict(
    model: Any, state_dict: Mapping[str, Any], *, strict: bool = True, check_flatten: bool = True
) -> LoadResult:
    """Loads a PyTorch ``state_dict`` into an NNX model with the same attribute names.

    Keys are the model's attribute paths as PyTorch names them (``blocks.1.conv2.weight``;
    ``nnx.Sequential`` children as ``down.0.weight``). Layouts are converted by layer type (see
    the module docstring): convolutions ``(out, in/g, *k)`` to ``(out, *k, in/g)``, transposed
    convolutions ``(in, out/g, *k)`` to ``(out, *k, in/g)`` group by group, ``nnx.Linear``
    ``(out, in)`` to ``(in, out)``, ``nnx.Conv`` to ``(*k, in/g, out)``; BatchNorm's
    ``num_batches_tracked`` is ignored. Values are cast to each variable's dtype and placed with
    its sharding. Torch tensors are read through ``.detach().cpu().numpy()``; torch is not
    imported.

    Inputs of the ported model are channels-last (NHWC) where PyTorch's are NCHW, and a
    ``flatten`` before a linear head must follow the same order on both sides: PyTorch flattens
    ``(C, H, W)``, so the NNX model flattens ``x.transpose(0, 3, 1, 2).reshape(n, -1)``. Since
    keys and shapes match either way, a ``UserWarning`` points at every ``nnx.Linear`` whose
    input size looks like a flattened feature map (``check_flatten=False`` turns it off).

    Every value is validated before anything is assigned: integer and boolean values for
    floating-point variables are refused (``TypeError``), and so are NaN and infinite values
    (``ValueError``).

    Args:
      model: a Flax NNX module.
      state_dict: a mapping from keys to torch tensors or NumPy arrays (or an object with a
        ``state_dict()`` method, such as a ``torch.nn.Module``).
      strict: if True (default), any missing, unexpected or mis-shaped key is an error and
        nothing is loaded. If False, loads the keys that match, leaves the other variables
        unchanged, and warns about shape mismatches.
      check_flatten: warn about ``nnx.Linear`` layers that look like they take a flattened
        feature map (the flatten-order trap above). Default True.

    Returns:
      A :class:`LoadResult` with the keys that were not used (all empty after a strict load).

    Raises:
      ValueError: in strict mode, listing every missing, unexpected and mis-shaped key in one
        message; or a value holds NaN or infinity.
      TypeError: if ``model`` is not an NNX module, ``state_dict`` is not a mapping, or a value
        is not a floating-point array (for a floating-point variable).

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from convnn.interop import load_torch_state_dict
      >>> model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)  # PyTorch (out, in)
      >>> load_torch_state_dict(model, {"0.weight": w, "0.bias": np.zeros(2)})
      LoadResult(missing_keys=[], unexpected_keys=[], mismatched_keys=[])
      >>> model.layers[0].kernel.shape
      (3, 2)
    """
    fn = "load_torch_state_dict"
    if not isinstance(state_dict, Mapping) and callable(getattr(state_dict, "state_dict", None)):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"[{fn}] state_dict must be a mapping from keys to tensors, "
            f"got {type(state_dict).__name__}."
        )
    state_dict = _rewrite_torch_keys(model, state_dict, fn)
    entries = _entries(model, fn)
    if check_flatten:
        _warn_flatten_order(entries, fn)
    bn_prefixes = {
        e.torch_key.rsplit(".", 1)[0] if "." in e.torch_key else ""
        for e in entries
        if isinstance(e.owner, _BATCH_NORM_TYPES)
    }

    def ignore(key: str) -> bool:
        prefix, _, name = key.rpartition(".")
        return name == "num_batches_tracked" and prefix in bn_prefixes

    return _load(
        entries, state_dict, torch=True, strict=strict, fn=fn, what="PyTorch state_dict",
        ignore=ignore,
    )
