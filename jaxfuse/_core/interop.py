"""Arrays in, arrays of the same kind out: numpy, JAX, or torch through DLPack."""

from __future__ import annotations

import enum
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class ArrayKind(enum.Enum):
    NUMPY = "numpy"
    JAX = "jax"
    TORCH = "torch"


def is_torch_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "__dlpack__")


def is_traced(*arrays: Any) -> bool:
    """Whether any argument is a JAX tracer: the call runs inside a caller's ``jit``, ``vmap`` or ``grad``.

    Entry points check values on the host only for concrete input; traced input
    gets per-item result codes instead.
    """
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def to_host(x: Any) -> np.ndarray:
    """``x`` as a numpy array: torch tensors detached and copied to the host (bfloat16, which numpy lacks,
    widened to float32), JAX arrays fetched, lists converted."""
    if is_torch_tensor(x):
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def array_kind(*inputs: Any) -> ArrayKind:
    """The kind of the first array-like input that is not None (numpy for lists and scalars)."""
    for x in inputs:
        if x is None:
            continue
        if isinstance(x, jax.Array):
            return ArrayKind.JAX
        if is_torch_tensor(x):
            return ArrayKind.TORCH
        return ArrayKind.NUMPY
    return ArrayKind.NUMPY


_warned_about_float64 = False


def warn_if_narrowed(dtype: Any) -> None:
    """Warn once per process that float64 input is computed in float32 because x64 is off.

    JAX without ``jax_enable_x64`` has no float64: ``jnp.asarray`` narrows such
    input to float32 without a word. Results then carry float32 precision
    (about 7 significant digits: frame 1,700,000,000.25 becomes 1.7e9), which a
    caller who passed float64 on purpose must hear about once.
    """
    global _warned_about_float64
    if _warned_about_float64 or jax.config.jax_enable_x64:
        return
    if np.dtype(dtype) == np.float64:
        _warned_about_float64 = True
        warnings.warn(
            "jaxfuse: float64 input is computed in float32 because jax_enable_x64 is off; "
            "call jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) before "
            "using JAX for float64 results. This warning is shown once.",
            UserWarning,
            stacklevel=3,
        )


def source_dtype(x: Any, name: str) -> np.dtype:
    """The dtype ``x`` holds, read before any conversion (which would narrow int64 or float64).

    Raises:
        TypeError: ragged nested lists or non-numeric (object) entries, naming ``name``.
    """
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        dtype = np.dtype(x.dtype)
    elif is_torch_tensor(x):
        import torch

        dtype = torch.empty((), dtype=x.dtype).numpy().dtype if x.dtype != torch.bfloat16 else np.dtype(jnp.bfloat16)
    else:
        try:
            dtype = np.asarray(x).dtype
        except (ValueError, TypeError) as error:
            raise TypeError(f"`{name}` must be a rectangular array of numbers; {error}") from None
    if dtype == np.object_ or dtype.kind in "USV":
        raise TypeError(
            f"`{name}` must be an array of numbers, got dtype {dtype} (non-numeric or ragged entries)"
        )
    return dtype


def to_jax(x: Any) -> jax.Array:
    """A JAX array holding ``x``; torch tensors cross through DLPack without a copy where possible.

    The caller's array is never modified: JAX arrays are immutable, and every
    kernel here is a pure function of its inputs.
    """
    if isinstance(x, jax.Array):
        return x
    if is_torch_tensor(x):
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
    if isinstance(x, (np.ndarray, np.generic)):
        # Python lists and scalars are JAX's weakly typed default, not a float64 request.
        warn_if_narrowed(x.dtype)
        return host_to_device(x)
    return jnp.asarray(x)


def host_to_device(x: np.ndarray | np.generic, dtype: Any = None) -> jax.Array:
    """A numpy array on the default device, cast on the host to ``dtype`` (canonical: float64 -> float32 without x64).

    ``jnp.asarray`` of a numpy array compiles a small program per new shape
    (8-30 ms each on a CPU), which a one-shot call pays for every bucket;
    ``device_put`` of the cast array compiles nothing. Non-numeric arrays go
    through ``jnp.asarray`` and its errors.
    """
    if x.dtype.kind not in "biufc":
        return jnp.asarray(x, dtype)
    target = jax.dtypes.canonicalize_dtype(x.dtype if dtype is None else dtype)
    return jax.device_put(np.asarray(x, target))


def from_jax(tree: Any, kind: ArrayKind) -> Any:
    """Convert every JAX array in ``tree`` to ``kind`` (NamedTuples keep their type)."""
    if kind is ArrayKind.JAX or any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree)):
        return tree  # under a caller's jit the outputs are tracers: they stay JAX
    if kind is ArrayKind.NUMPY:
        return jax.tree_util.tree_map(np.asarray, tree)
    import torch

    def to_torch(leaf):
        try:
            return torch.from_dlpack(leaf)
        except (RuntimeError, TypeError, BufferError):
            return torch.from_numpy(np.array(leaf))

    return jax.tree_util.tree_map(to_torch, tree)
