"""Argument handling shared by every public function and module.

Everything here runs in Python at trace time: it sees shapes and dtypes, never values, and it
raises ``ValueError`` / ``TypeError`` before XLA is involved. Messages share one style:
``[fn] what is wrong; got input shape (...) and weight shape (...)``.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MAX_INT",
    "MAX_ELEMENTS",
    "as_int",
    "bounded",
    "check_size",
    "normalize_tuple",
    "canonicalize_padding",
    "check_float_dtype",
    "promote_float",
    "check_bool",
    "check_real",
    "check_positive_float",
    "as_array",
]


#: The largest magnitude of any integer argument, and the largest size of one axis of any array
#: built from the arguments: XLA computes sizes in 64-bit integers, and products of two such
#: values stay far from overflowing.
MAX_INT = 2**31 - 1

#: The largest number of elements of any array built from the arguments (a convolution's or a
#: pooling's output, a padded input, an upsampled image, a layer's parameter): 2**34, 64 GiB in
#: float32, more than one accelerator holds. Larger requests are refused before XLA sees them:
#: XLA aborts the process on some of them (a static size whose product overflows).
MAX_ELEMENTS = 2**34


def _is_int(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def as_int(value: Any, name: str, fn: str, *, minimum: int | None = None) -> int:
    """Returns ``value`` as a Python int, or raises naming ``name`` in ``fn``."""
    if not _is_int(value):
        raise TypeError(
            f"[{fn}] {name} must be an int, got {value!r} of type {type(value).__name__}."
        )
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"[{fn}] {name} must be >= {minimum}, got {value}.")
    return bounded((value,), name, fn)[0]


def bounded(values: tuple[int, ...], name: str, fn: str) -> tuple[int, ...]:
    """Returns ``values``, or raises if one exceeds :data:`MAX_INT` in magnitude."""
    if any(abs(v) > MAX_INT for v in values):
        got = values[0] if len(values) == 1 else values
        raise ValueError(f"[{fn}] {name} must be at most {MAX_INT} in magnitude, got {got}.")
    return values


def check_size(shape: Sequence[int], what: str, fn: str, context: str) -> None:
    """Raises if an array of ``shape`` would exceed :data:`MAX_ELEMENTS` elements or
    :data:`MAX_INT` on one axis; ``context`` says which arguments and shapes led to it."""
    shape = tuple(shape)
    size = math.prod(shape)
    if size > MAX_ELEMENTS or any(s > MAX_INT for s in shape):
        raise ValueError(
            f"[{fn}] the {what} would have shape {shape} ({size} elements), above the limit of "
            f"{MAX_ELEMENTS} elements ({MAX_INT} per axis); {context}."
        )


def normalize_tuple(
    value: Any, n: int, name: str, fn: str, *, minimum: int | None = None
) -> tuple[int, ...]:
    """Normalises an int-or-sequence argument to a tuple of ``n`` ints.

    Args:
      value: an int (applied to every axis) or a sequence of ``n`` ints.
      n: the number of spatial axes.
      name: the argument's name, used in error messages.
      fn: the public function's name, used in error messages.
      minimum: the smallest allowed value, if any.

    Returns:
      A tuple of ``n`` Python ints.

    Raises:
      TypeError: if ``value`` is neither an int nor a sequence of ints.
      ValueError: if the sequence has the wrong length or a value is below ``minimum`` or above
        :data:`MAX_INT` in magnitude.
    """
    if _is_int(value):
        values = (operator.index(value),) * n
    elif (
        isinstance(value, Sequence) and not isinstance(value, str)
        or isinstance(value, np.ndarray)
    ):
        values = tuple(value)
        if len(values) != n:
            raise ValueError(
                f"[{fn}] {name} must be an int or a sequence of {n} ints (one per spatial axis), "
                f"got {value!r} of length {len(values)}."
            )
        for v in values:
            if not _is_int(v):
                raise TypeError(f"[{fn}] {name} must contain ints only, got {value!r}.")
        values = tuple(operator.index(v) for v in values)
    else:
        raise TypeError(
            f"[{fn}] {name} must be an int or a sequence of {n} ints, got {value!r} "
            f"of type {type(value).__name__}."
        )
    if minimum is not None and any(v < minimum for v in values):
        raise ValueError(f"[{fn}] {name} must be >= {minimum} on every axis, got {values}.")
    return bounded(values, name, fn)


def canonicalize_padding(
    padding: Any, n: int, fn: str, *, allow_strings: bool = True
) -> str | tuple[tuple[int, ...], tuple[int, ...]]:
    """Canonicalises MLX's padding forms to ``(lows, highs)`` or a string.

    Accepted forms (``n`` spatial axes):
      * an int: the same padding on both sides of every axis;
      * a sequence of ``n`` ints: symmetric padding per axis;
      * a pair of sequences ``(lows, highs)``, each of ``n`` ints: lows for every axis, then highs
        for every axis (MLX's ``conv_general`` form, *not* lax's per-axis ``(lo, hi)`` pairs);
      * ``"same"`` or ``"valid"`` (case-insensitive) where ``allow_strings`` is true.

    Returns:
      ``"same"``, ``"valid"``, or ``(lows, highs)`` as tuples of ``n`` ints (may be negative).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if not allow_strings:
            raise ValueError(f"[{fn}] padding={padding!r} is not supported here; pass ints.")
        if mode not in ("same", "valid"):
            raise ValueError(
                f"[{fn}] padding must be 'same', 'valid', an int or ints, got {padding!r}."
            )
        return mode
    if _is_int(padding):
        p = (operator.index(padding),) * n
        return p, p
    if not (isinstance(padding, Sequence) or isinstance(padding, np.ndarray)):
        raise TypeError(
            f"[{fn}] padding must be an int, a sequence of {n} ints or a pair (lows, highs) of "
            f"sequences, got {padding!r} of type {type(padding).__name__}."
        )
    items = list(padding)
    if items and all(_is_int(v) for v in items):
        if len(items) != n:
            raise ValueError(
                f"[{fn}] padding must have one int per spatial axis ({n}), got {padding!r}."
            )
        p = tuple(operator.index(v) for v in items)
        return p, p
    if items and not any(isinstance(v, (Sequence, np.ndarray)) for v in items):
        raise TypeError(f"[{fn}] padding must contain ints only, got {padding!r}.")
    if len(items) == 2 and all(
        isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, str) for v in items
    ):
        lows, highs = (list(v) for v in items)
        if len(lows) != len(highs):
            raise ValueError(
                f"[{fn}] padding (lows, highs) must have the same lengths, got lows of length "
                f"{len(lows)} and highs of length {len(highs)}: {padding!r}."
            )
        if len(lows) != n:
            raise ValueError(
                f"[{fn}] padding (lows, highs) must give {n} values each (one per spatial axis), "
                f"got {padding!r}."
            )
        if not all(_is_int(v) for v in lows + highs):
            raise TypeError(f"[{fn}] padding must contain ints only, got {padding!r}.")
        return tuple(operator.index(v) for v in lows), tuple(operator.index(v) for v in highs)
    hint = ""
    if len(items) == n and all(isinstance(v, (Sequence, np.ndarray)) for v in items):
        hint = " (lax-style per-axis (lo, hi) pairs are not accepted: pass (lows, highs))"
    raise ValueError(
        f"[{fn}] padding must be an int, a sequence of {n} ints or a pair (lows, highs) of "
        f"sequences of {n} ints, got {padding!r}{hint}."
    )


def check_float_dtype(dtype: Any, name: str, fn: str) -> None:
    """Refuses integer, bool and complex dtypes (MLX would drop imaginary parts silently)."""
    import jax.numpy as jnp

    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"[{fn}] {name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {np.dtype(dtype).name}."
        )


def promote_float(a: Any, b: Any) -> np.dtype:
    """MLX's promotion of two floating dtypes, independent of JAX's promotion settings.

    The wider type wins; float16 with bfloat16 (neither holds the other) gives float32.
    """
    import jax.numpy as jnp

    a, b = jnp.dtype(a), jnp.dtype(b)
    if a == b:
        return a
    if {a, b} == {jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)}:
        return jnp.dtype(jnp.float32)
    return a if a.itemsize > b.itemsize else b


def check_bool(value: Any, name: str, fn: str) -> bool:
    """A Python or NumPy bool; otherwise a ``TypeError`` naming ``fn``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"[{fn}] {name} must be a bool, got {value!r} of type {type(value).__name__}."
        )
    return bool(value)


def check_real(
    value: Any, name: str, fn: str, *, expect: str = "a float", optional: bool = False,
    array: bool = False,
) -> Any:
    """A real Python or NumPy number (not a bool) as a float, ``None`` where ``optional``, or,
    where ``array``, a 0-d real JAX array (a traced value too) as it is; otherwise a
    ``TypeError`` naming ``fn`` and saying what ``name`` must be (``expect``)."""
    if optional and value is None:
        return None
    if array and isinstance(value, jax.Array) and value.ndim == 0 and (
        jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
    ):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        what = f"None or {expect}" if optional else expect
        raise TypeError(f"[{fn}] {name} must be {what}, got {value!r}.")
    return float(value)


def check_positive_float(value: Any, name: str, fn: str) -> float:
    """As :func:`check_real`, and above 0 (a ``ValueError`` otherwise; NaN included)."""
    number = check_real(value, name, fn, expect="a positive float")
    if not number > 0:
        raise ValueError(f"[{fn}] {name} must be positive, got {value!r}.")
    return number


def as_array(value: Any, name: str, fn: str) -> jax.Array:
    """``value`` as a JAX array, accepted exactly as ``jnp.asarray`` accepts it.

    JAX arrays and tracers pass through; NumPy arrays, PyTorch tensors, MLX arrays and other
    objects with ``__array__`` or ``__dlpack__`` are converted. Anything ``jnp.asarray`` refuses
    gives a ``TypeError`` naming the argument (the dtype is the caller's to check).
    """
    if isinstance(value, jax.Array):
        return value
    try:
        return jnp.asarray(value)
    except Exception as err:
        raise TypeError(
            f"[{fn}] {name} must be an array (a JAX or NumPy array, or an object with "
            f"__array__ or __dlpack__ such as a PyTorch tensor), got {type(value).__name__}: "
            f"{err}"
        ) from err
