"""Compiled programs kept on disk whole, so that a fresh process skips tracing and lowering as well as compiling.

JAX's persistent compilation cache (see :mod:`jaxfuse._runtime.compilation_cache`)
stores compiled code, but finds it by the lowered program: a fresh process
still traces and lowers every jaxfuse program before it can look.

:func:`stored_executable` wraps a jitted entry point: a call with concrete
arguments is keyed by what the program depends on (the function, the
arguments' shapes, dtypes and weak types, their tree structure, the static
options, the jaxfuse source, the jax and jaxlib versions, the device, the
host CPU's features, the compile-affecting environment (``XLA_FLAGS``,
``LIBTPU_INIT_ARGS`` and every ``XLA_*``/``LIBTPU_*`` variable) and JAX's
configuration options, all but the cache's and logging's own); the
executable is loaded from the store when present, else compiled by
``jit(...).lower(...).compile()`` without JAX's cache (see
:func:`_compile_afresh`) and written there. Later calls in the process reuse
it from memory. A call the store cannot serve exactly runs the plain ``jit``
function: traced arguments (inside a caller's ``jit``, ``vmap`` or ``grad``),
arrays on another device or sharded, disabled jit or ``jax_debug_nans``/
``jax_debug_infs`` (JAX's checks run in its own dispatch), the persistent
cache off (``JAXFUSE_COMPILATION_CACHE=0``, :func:`jaxfuse.set_compilation_cache`
``(None)``, a remote JAX cache directory), the store off
(``JAXFUSE_EXECUTABLE_STORE_MAX_BYTES=0``), or a thread that compiles
without caches (:func:`jaxfuse._runtime.compilation_cache.persistent_cache_disabled`).

What is trusted, and why ownership is the defence. The entries live in
``<compilation cache>/jaxfuse-executables`` (:mod:`jaxfuse._runtime.store_entries`
describes the layout and the size cap). jaxfuse parses an entry's header
itself and rebuilds the argument and result trees without unpickling
anything; the entry records its full key and its payload's SHA-256, checked
before the payload is touched, so an entry under another key's name, a
damaged or truncated one, or one of another layout is deleted and rebuilt,
never used. But the payload is jax's serialization
(``jax.experimental.serialize_executable``): ``deserialize_and_load``
unpickles it (jax's own ``pickle.Unpickler`` subclass, jax 0.10, which
resolves any global), and it holds XLA's compiled machine code, which runs
when the program runs. Either way, whoever can write an entry chooses what
runs, and a digest is no signature: they can write a matching one. So the
payload is loaded only from a directory that is the user's alone (checked
before every load and write, as ssh and gpg check their homes, see
:mod:`jaxfuse._runtime.private_files`): owned by the user and writable by nobody else,
up to the cache's root, with no writable parent that is not sticky, each
entry a regular file the user owns, opened without following links or
blocking on FIFOs. A directory that fails is neither read nor written: one
warning per process names it and the reason, and jaxfuse computes normally.
Where ownership cannot be checked (Windows) the store stays off.

Worth its risk? Measured (``fuse_proposal_lists`` on the 400-item THUMOS-like
set, first call in a fresh process with a warm cache, store on and off in
alternating rounds, 4 each, 2-core CPU at load average 8 to 9): 0.79 s with
the store (median; 0.58 to 1.60) against 3.82 s without (3.08 to 4.56), where
JAX's cache serves the compiled code but every program is traced and lowered
again; the three entries take 2.0 MB. Three seconds saved on every one-shot
run (each CLI call), and the risk is the one JAX's own cache already carries,
behind the same ownership check; so the store stays on by default.
Rerun: ``python -m pytest benchmarks/test_bench_executable_store.py -s``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxfuse._runtime import store_entries as store_files
from jaxfuse._runtime.compilation_cache import (
    compilation_cache_status,
    ensure_compilation_cache,
    record_store_write,
)
from jaxfuse._runtime.jax_cache_bypass import (
    bypass_available,
    bypassing_jax_cache,
    jax_cache_bypassed,
)
from jaxfuse._runtime.private_files import (
    UntrustedFileError,
    can_check_ownership,
    directory_problem,
    make_private_directory,
    warn_untrusted,
)

FORMAT = store_files.FORMAT
"""Bumped when the stored layout changes (part of every key)."""

SUBDIRECTORY = "jaxfuse-executables"

# Options that change what tracing or compiling produces (and are not already in the shapes and dtypes),
# read on every call for the in-memory key (they can change inside a `with` block). The disk key holds
# every configuration option (see _settings).
_TRACING_OPTIONS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_numpy_rank_promotion",
    "jax_numpy_dtype_promotion",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_optimization_level",
    "jax_exec_time_optimization_effort",
    "jax_memory_fitting_effort",
    "jax_disable_most_optimizations",
    "jax_use_shardy_partitioner",
)
# Configuration options that cannot change a program: the caches' own settings and logging.
_NOT_PROGRAM_OPTIONS = ("jax_compilation_cache", "jax_persistent_cache", "jax_enable_compilation_cache",
                        "jax_raise_persistent_cache_errors", "jax_explain_cache_misses", "jax_log", "jax_debug_log",
                        "jax_pprint", "jax_traceback", "jax_tracer_error")
# Environment variables that XLA reads when the backend starts (compiler flags, TPU runtime arguments).
_COMPILER_ENVIRONMENT_PREFIXES = ("XLA_", "LIBTPU_")


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
    """What every key shares in this process: versions, device, CPU, and the compiler's environment variables."""
    import jaxlib

    device = jax.devices()[0]
    compiler_environment = sorted((name, value) for name, value in os.environ.items()
                                  if name.startswith(_COMPILER_ENVIRONMENT_PREFIXES))
    return (FORMAT, source_digest(), jax.__version__, jaxlib.__version__, device.platform, device.device_kind,
            jax.device_count(), host_cpu(), tuple(compiler_environment))


def _settings() -> str:
    """Every JAX configuration option that can change a program, as this thread sees it now."""
    values = jax.config.values
    return repr([(name, getattr(jax.config, name, values[name])) for name in sorted(values)
                 if not name.startswith(_NOT_PROGRAM_OPTIONS)])


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


def _served_by_plain_jit(directory: str | None) -> bool:
    """Calls the store leaves to ``jit``: see the module docstring."""
    return (directory is None or "://" in directory or jax.config.jax_disable_jit or jax.config.jax_debug_nans
            or jax.config.jax_debug_infs or jax_cache_bypassed())


_refused: dict[str, str] = {}  # store directories found untrusted in this process, and why
_opened: dict[str, store_files.StoreDirectory] = {}


def _open_store(cache_directory: str) -> store_files.StoreDirectory | None:
    """The store under ``cache_directory``, created 0700; None (after one warning) when it must not be used.

    The directory chain is checked at every open (each program's first call in
    the process); a refusal holds for the rest of the process.

    Raises:
        ValueError: ``$JAXFUSE_EXECUTABLE_STORE_MAX_BYTES`` is not a number of bytes.
    """
    path = Path(cache_directory) / SUBDIRECTORY
    if str(path) in _refused:
        return None
    if store_files.max_bytes() == 0 or not (can_check_ownership() and bypass_available()):
        return None  # off, or see the module docstring (Windows) and jaxfuse._runtime.jax_cache_bypass (another jax)
    try:
        make_private_directory(cache_directory)
        # The root first: nothing is created inside a directory others could write.
        problem = directory_problem(cache_directory)
        if not problem:
            make_private_directory(path)
            problem = directory_problem(path, cache_directory)
    except OSError:
        return None  # a read-only cache: nothing can be kept; compute as without a store
    if problem:
        _refused[str(path)] = problem
        warn_untrusted(path, problem, "compiled programs are neither loaded from nor stored there")
        return None
    return _opened.setdefault(str(path), store_files.StoreDirectory(path))


# A compiler option set to XLA's default: it changes nothing in the code, only JAX's in-memory key.
_FRESH_COMPILE_OPTIONS = {"xla_embed_ir_in_executable": False}


def _compile_afresh(jitted: Callable, args, kwargs, statics):
    """Compile without JAX's caches: an executable JAX loaded from its disk cache serializes without its code.

    (XLA:CPU, jax 0.10: such an entry deserializes, then fails at run time with
    "Function ... not found".) So this thread's compilation skips JAX's disk
    cache (its settings untouched, see :mod:`jaxfuse._runtime.jax_cache_bypass`), and
    a compiler option keys it apart in JAX's memory, where the plain ``jit``
    path of this process may hold the same program loaded from disk. The
    program is compiled once per key, so the store costs one full compile where
    JAX's cache would have served it.
    """
    with bypassing_jax_cache():
        return jitted.lower(*args, **kwargs, **statics).compile(compiler_options=_FRESH_COMPILE_OPTIONS)


def _load(entry: store_files.Entry, in_tree):
    from jax.experimental import serialize_executable

    out_tree = store_files.rebuild_tree(entry.out_tree)
    return serialize_executable.deserialize_and_load(entry.payload, in_tree, out_tree)


def _save(directory: store_files.StoreDirectory, key: str, compiled, in_tree) -> None:
    """Write ``compiled`` under ``key`` when the store can rebuild it exactly; a failed write is recorded."""
    from jax.experimental import serialize_executable

    try:
        payload, serialized_in_tree, out_tree = serialize_executable.serialize(compiled)
    except (ValueError, NotImplementedError):
        return  # a program jax cannot serialize: it runs from memory
    description = store_files.describe_tree(out_tree)
    if description is None or serialized_in_tree != in_tree:
        return  # the trees could not be rebuilt from the call and the description
    try:
        directory.write(key, payload, description, store_files.max_bytes())
    except OSError:
        record_store_write(False)  # a full disk: the first-run marker must not claim the programs were kept
    else:
        record_store_write(True)


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
        ensure_compilation_cache()
        directory = compilation_cache_status().directory
        if _served_by_plain_jit(directory):
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
        memory_key = (tree, tuple(signature), statics, options)
        executable = in_memory.get(memory_key)
        if executable is not None:
            return executable(*args, **kwargs)
        store = _open_store(directory)
        if store is None:
            return jitted(*args, **kwargs, **dict(statics))
        key = repr((_environment(), name, str(tree), tuple(signature), repr(statics), _settings()))
        executable, loaded = _executable(store, key, tree, args, kwargs, dict(statics))
        if loaded:
            # The first run of a loaded executable is waited for: an entry that loads but cannot
            # run (see _compile_afresh) is replaced by a fresh compile instead of failing the call.
            try:
                result = jax.block_until_ready(executable(*args, **kwargs))
            except jax.errors.JaxRuntimeError:
                store.forget(key)
                executable, _ = _executable(store, key, tree, args, kwargs, dict(statics))
            else:
                in_memory[memory_key] = executable
                return result
        in_memory[memory_key] = executable
        return executable(*args, **kwargs)

    def _executable(store: store_files.StoreDirectory, key: str, in_tree, args, kwargs, statics):
        """``(executable, loaded)``: from the store when a sound entry is there, else compiled and stored."""
        try:
            entry = store.read(key)
        except (store_files.EntryError, UntrustedFileError, OSError):
            entry = None  # foreign, damaged, a link or a FIFO: removed below, then rebuilt
            store.forget(key)
        if entry is not None:
            try:
                executable = _load(entry, in_tree)
                call.stored_calls += 1
                return executable, True
            except Exception:  # noqa: BLE001 - an entry jax cannot load here is rebuilt, never trusted
                store.forget(key)
        compiled = _compile_afresh(jitted, args, kwargs, statics)
        call.compiled_calls += 1
        _save(store, key, compiled, in_tree)
        return compiled, False

    call.jitted = jitted
    call.stored_calls = 0
    call.compiled_calls = 0
    _WRAPPED.append(call)
    return call


_WRAPPED: list[Callable] = []


def store_counts() -> tuple[int, int]:
    """``(loaded, compiled)``: executables this process took from the store, and compiled for it."""
    return sum(f.stored_calls for f in _WRAPPED), sum(f.compiled_calls for f in _WRAPPED)
