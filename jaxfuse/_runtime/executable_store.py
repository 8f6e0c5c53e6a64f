"""Compiled programs kept on disk whole, so that a fresh process skips tracing and lowering as well as compiling.

JAX's persistent compilation cache (see :mod:`jaxfuse._runtime.compilation_cache`)
stores compiled code, but finds it by the lowered program: a fresh process
still traces and lowers every jaxfuse program before it can look. For the
grouping + fusion program that is about 1.1 s of a 1.45 s first call with a
warm cache (400 THUMOS-like items on a CPU), against 0.04 s warm.

:func:`stored_executable` wraps a jitted entry point: a call with concrete
arguments is keyed by what the program depends on (the function, the
arguments' shapes, dtypes and weak types, their tree structure, the static
options, the jaxfuse source, the jax and jaxlib versions, the device, the
host CPU's features and the configuration options that change tracing); the
executable is loaded from the store when present (tens of milliseconds),
else compiled by ``jit(...).lower(...).compile()`` with JAX's cache off (see
:func:`_compile_afresh`) and written there. Later calls in the process reuse
it from memory.

The key holds every input of tracing, so an executable is never used for a
program it was not built from: the source hash changes with any edit of
jaxfuse, the versions with an upgrade. A call the store cannot serve exactly
runs the plain ``jit`` function: traced arguments (inside a caller's ``jit``,
``vmap`` or ``grad``), arrays on another device or sharded, disabled jit, a
remote JAX cache directory (``gs://...``), or the persistent cache turned
off (``JAXFUSE_COMPILATION_CACHE=0``, :func:`jaxfuse.set_compilation_cache`
``(None)``), so measurements of compilation stay honest. An unreadable or
stale entry is rebuilt.

Entries live in ``<compilation cache>/jaxfuse-executables``; like JAX's cache
they are trusted code, so the directory must be writable by its owner only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jaxfuse._runtime.compilation_cache import compilation_cache_status, persistent_cache_disabled

FORMAT = 1
"""Bumped when the stored layout changes."""

_SUBDIRECTORY = "jaxfuse-executables"

# Options that change what tracing produces (and are not already in the shapes and dtypes).
_TRACING_OPTIONS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_numpy_rank_promotion",
    "jax_numpy_dtype_promotion",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
)


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of jaxfuse's Python sources (every module under the package): any edit changes every key."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    """The host's processor and its instruction-set flags: XLA:CPU compiles for the features it finds.

    A cache directory shared by machines with different CPUs (a network home on
    a cluster) must not hand one machine's code to another, where it could stop
    on an illegal instruction.
    """
    import platform

    described = [platform.machine(), platform.processor()]
    wanted = {"model name", "flags", "Features", "CPU part"}  # x86 and ARM names; each once (every core repeats them)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                name = line.split(":", 1)[0].strip()
                if name in wanted:
                    wanted.discard(name)
                    described.append(line.strip())
    except OSError:
        pass
    return hashlib.sha256("\n".join(described).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _environment() -> tuple:
    import jaxlib

    device = jax.devices()[0]
    return (FORMAT, source_digest(), jax.__version__, jaxlib.__version__, device.platform, device.device_kind,
            jax.device_count(), host_cpu())


def _store_directory(cache_directory: str) -> Path:
    return Path(cache_directory) / _SUBDIRECTORY


def _leaf_signature(leaf: Any, device) -> tuple | None:
    """What tracing sees of one argument, or None when the store cannot serve it exactly."""
    if isinstance(leaf, jax.core.Tracer):
        return None
    if isinstance(leaf, jax.Array):
        sharding = leaf.sharding
        if not isinstance(sharding, jax.sharding.SingleDeviceSharding) or sharding.device_set != {device}:
            return None
        return ("jax", leaf.shape, leaf.dtype, bool(leaf.weak_type))
    if isinstance(leaf, np.ndarray):
        return ("numpy", leaf.shape, leaf.dtype)
    if isinstance(leaf, np.generic):
        return ("numpy scalar", leaf.dtype)
    if isinstance(leaf, (bool, int, float, complex)):
        return ("python", type(leaf).__name__)
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _load(path: Path):
    from jax.experimental import serialize_executable

    with open(path, "rb") as stream:
        stored = pickle.load(stream)
    payload, in_tree, out_tree = stored
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)


def _save(path: Path, compiled) -> None:
    from jax.experimental import serialize_executable

    _write_atomically(path, pickle.dumps(serialize_executable.serialize(compiled), protocol=pickle.HIGHEST_PROTOCOL))


def _compile_afresh(jitted: Callable, args, kwargs, statics):
    """Compile without JAX's persistent cache: an executable JAX loaded from it serializes without its code.

    (XLA:CPU, jax 0.10: such an entry deserializes, then fails at run time with
    "Function ... not found".) The program is compiled once per key, so the
    store costs one full compile where JAX's cache would have served it.
    """
    with persistent_cache_disabled():
        return jitted.lower(*args, **kwargs, **statics).compile()


def stored_executable(jitted: Callable, *, static_argnames: tuple[str, ...] = ()) -> Callable:
    """Serve concrete calls of the ``jax.jit`` function ``jitted`` from executables kept on disk.

    Args:
        jitted: a ``jax.jit``-wrapped function.
        static_argnames: its static arguments, which callers pass by keyword.

    Raises:
        ValueError: ``jitted`` is a lambda or a nested function, whose
            qualified name does not identify its code and closure.

    Returns:
        A function with ``jitted``'s signature and results. Its ``jitted``
        attribute is the plain jit function; ``stored_calls`` counts the
        executables it loaded from disk, ``compiled_calls`` those it compiled.
    """
    name = f"{jitted.__module__}.{getattr(jitted, '__qualname__', '')}"
    if "<" in name or not getattr(jitted, "__qualname__", ""):
        # A lambda or a closure is not named by its qualified name: two of them could share a key.
        raise ValueError(f"stored_executable needs a module-level jitted function, got {name!r}")
    in_memory: dict[Any, Any] = {}

    @functools.wraps(jitted)
    def call(*args, **kwargs):
        directory = compilation_cache_status().directory
        # A remote JAX cache (gs://, s3://...) is JAX's to read; the store only writes local files.
        if directory is None or "://" in directory or jax.config.jax_disable_jit:
            return jitted(*args, **kwargs)
        statics = tuple(sorted((key, kwargs.pop(key)) for key in static_argnames if key in kwargs))
        leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
        device = jax.devices()[0]
        signature = []
        for leaf in leaves:
            leaf_signature = _leaf_signature(leaf, device)
            if leaf_signature is None:
                return jitted(*args, **kwargs, **dict(statics))
            signature.append(leaf_signature)
        options = tuple(getattr(jax.config, option, None) for option in _TRACING_OPTIONS)
        # In memory the tree and statics key as themselves (hashable); on disk as their text.
        key = (tree, tuple(signature), statics, options)
        executable = in_memory.get(key)
        if executable is not None:
            return executable(*args, **kwargs)
        executable, path = _executable(_store_directory(directory), key, args, kwargs, dict(statics))
        if path is None:
            in_memory[key] = executable
            return executable(*args, **kwargs)
        # The first run of a loaded executable is waited for: an entry that loads but cannot
        # run (see _compile_afresh) is replaced by a fresh compile instead of failing the call.
        try:
            result = jax.block_until_ready(executable(*args, **kwargs))
        except jax.errors.JaxRuntimeError:
            with contextlib.suppress(OSError):
                path.unlink()
            executable, _ = _executable(_store_directory(directory), key, args, kwargs, dict(statics))
            result = executable(*args, **kwargs)
        in_memory[key] = executable
        return result

    def _executable(directory: Path, key, args, kwargs, statics):
        tree, signature, statics_key, options = key
        text = repr((_environment(), name, str(tree), signature, repr(statics_key), options))
        digest = hashlib.sha256(text.encode()).hexdigest()
        path = directory / f"{digest}.bin"
        if path.exists():
            try:
                executable = _load(path)
                call.stored_calls += 1
                return executable, path
            except Exception:  # noqa: BLE001 - a damaged or foreign entry is rebuilt, never trusted
                pass
        compiled = _compile_afresh(jitted, args, kwargs, statics)
        call.compiled_calls += 1
        try:
            _save(path, compiled)
        except Exception:  # noqa: BLE001 - an executable that cannot be stored still runs
            pass
        return compiled, None

    call.jitted = jitted
    call.stored_calls = 0
    call.compiled_calls = 0
    _WRAPPED.append(call)
    return call


_WRAPPED: list[Callable] = []


def store_counts() -> tuple[int, int]:
    """``(loaded, compiled)``: executables this process took from the store, and compiled for it."""
    return sum(f.stored_calls for f in _WRAPPED), sum(f.compiled_calls for f in _WRAPPED)
