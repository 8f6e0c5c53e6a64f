"""Checks that run before tracing, so bad input fails with a message naming the argument."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import is_traced, source_dtype, to_host, to_jax


def float_dtype(x: Any, name: str) -> np.dtype:
    """The floating dtype ``x`` holds (before any conversion), or a ``TypeError`` naming ``name``."""
    if x is None:
        raise TypeError(f"`{name}` is required, got None")
    dtype = source_dtype(x, name)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array, got dtype {dtype}; "
            f"convert it first, e.g. `{name}.astype(np.float32)`"
        )
    return dtype


def float_array(x: Any, name: str, *, min_ndim: int = 0) -> jax.Array:
    """``x`` as a floating-point JAX array, or a ``TypeError``/``ValueError`` naming ``name``."""
    float_dtype(x, name)
    array = to_jax(x)
    if array.ndim < min_ndim:
        raise ValueError(f"`{name}` must have at least {min_ndim} dimensions, got shape {array.shape}")
    return array


def bool_array(x: Any, name: str, shape: tuple[int, ...]) -> jax.Array:
    """``x`` as a bool array of exactly ``shape`` (broadcasting is not silently applied)."""
    array = to_jax(x)
    if array.dtype != jnp.bool_:
        raise TypeError(f"`{name}` must be a bool array, got dtype {array.dtype}")
    if array.shape != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {array.shape}")
    return array


def check_shape(array: jax.Array, name: str, expected: tuple[int, ...], meaning: str) -> None:
    if array.shape != tuple(expected):
        raise ValueError(f"`{name}` must have shape {tuple(expected)} ({meaning}), got {array.shape}")


def positive_scalar(value: Any, name: str) -> float | jax.Array:
    """A positive finite scalar; checked on the host when it is concrete.

    Traced values (inside a caller's ``jit``) cannot be checked here and pass through.
    """
    if isinstance(value, jax.core.Tracer):
        return value
    array = np.asarray(value)
    if array.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    scalar = float(array)
    if not math.isfinite(scalar) or scalar <= 0:
        raise ValueError(f"`{name}` must be positive and finite, got {scalar}")
    return scalar


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"`{name}` must be static (a Python int), not a traced value")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def choice(value: Any, name: str, options) -> str:
    if value not in options:
        raise ValueError(f"unknown `{name}` {value!r}; expected one of {sorted(options)}")
    return value


def checked_length(length: Any, shape: tuple[int, ...], num_snippets: int, *, unit: str = "item"):
    """Snippets per sequence as int32 of ``shape``: all ``num_snippets`` when None; range-checked when concrete.

    A traced ``length`` (inside a caller's ``jit``) cannot be checked; it is
    clipped to ``[0, num_snippets]`` so that every index stays in range.
    Concrete lengths stay numpy arrays: a compiled kernel takes them as they
    are, while an eager JAX operation would compile a program of its own.

    Args:
        length: None, an integer scalar or an integer array broadcasting to ``shape``.
        shape: the shape of the sequences (videos or items).
        num_snippets: the padded sequence length.
        unit: what one sequence is (``"video"``, ``"item"``), for messages.

    Raises:
        TypeError: ``length`` is not integer.
        ValueError: a value outside ``[0, num_snippets]`` or a shape that does not broadcast.
    """
    if length is None:
        return np.full(shape, num_snippets, np.int32)
    if is_traced(length):
        if not jnp.issubdtype(length.dtype, jnp.integer):
            raise TypeError(f"`length` must be an integer array, got dtype {length.dtype}")
        return jnp.broadcast_to(jnp.clip(length, 0, num_snippets).astype(jnp.int32), shape)
    host = to_host(length)
    if host.dtype == np.bool_ or not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"`length` must be an integer array (snippets per {unit}), got dtype {host.dtype}")
    if host.size and (host.min() < 0 or host.max() > num_snippets):
        raise ValueError(
            f"`length` must lie in [0, {num_snippets}] (the padded sequences have {num_snippets} snippets), "
            f"got values from {host.min()} to {host.max()}"
        )
    try:
        return np.broadcast_to(host, shape).astype(np.int32)
    except ValueError:
        raise ValueError(f"`length` of shape {host.shape} does not broadcast to the {unit}s' shape {shape}") from None
