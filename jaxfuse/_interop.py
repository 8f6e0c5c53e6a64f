"""Arrays in, arrays of the same kind out: numpy, JAX, or torch through DLPack."""

from __future__ import annotations

import enum
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class ArrayKind(enum.Enum):
    NUMPY = "numpy"
    JAX = "jax"
    TORCH = "torch"


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "__dlpack__")


def array_kind(*inputs: Any) -> ArrayKind:
    """The kind of the first array-like input that is not None (numpy for lists and scalars)."""
    for x in inputs:
        if x is None:
            continue
        if isinstance(x, jax.Array):
            return ArrayKind.JAX
        if _is_torch_tensor(x):
            return ArrayKind.TORCH
        return ArrayKind.NUMPY
    return ArrayKind.NUMPY


def to_jax(x: Any) -> jax.Array:
    """A JAX array holding ``x``; torch tensors cross through DLPack without a copy where possible.

    The caller's array is never modified: JAX arrays are immutable, and every
    kernel here is a pure function of its inputs.
    """
    if isinstance(x, jax.Array):
        return x
    if _is_torch_tensor(x):
        if x.requires_grad:
            x = x.detach()
        if not x.is_contiguous():
            x = x.contiguous()
        if x.dtype.is_floating_point and x.dtype.itemsize == 8 and not jax.config.jax_enable_x64:
            raise TypeError(
                "a float64 torch tensor was given but JAX runs without x64; enable "
                "jax_enable_x64 or pass float32"
            )
        return jax.dlpack.from_dlpack(x)
    return jnp.asarray(x)


def from_jax(tree: Any, kind: ArrayKind) -> Any:
    """Convert every JAX array in ``tree`` to ``kind`` (NamedTuples keep their type)."""
    if kind is ArrayKind.JAX:
        return tree
    if kind is ArrayKind.NUMPY:
        return jax.tree_util.tree_map(np.asarray, tree)
    import torch

    def to_torch(leaf):
        try:
            return torch.from_dlpack(leaf)
        except (RuntimeError, TypeError, BufferError):
            return torch.from_numpy(np.array(leaf))

    return jax.tree_util.tree_map(to_torch, tree)
