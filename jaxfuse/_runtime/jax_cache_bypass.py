"""Compile in this thread without JAX's persistent cache, leaving JAX's settings and other threads alone.

Two users need compilations that neither read nor write JAX's on-disk cache:
the executable store (an executable JAX loaded from its cache serializes
without its code on XLA:CPU, jax 0.10: it deserializes, then fails with
"Function ... not found"), and the benchmarks, which time compilation itself.

JAX has no per-call switch: whether its cache is used is decided once per
process (``compilation_cache.is_cache_used``), and turning it off means
setting ``jax_compilation_cache_dir`` to None and back, which other threads
see (their compilations skip the cache meanwhile, and two overlapping
save/restore pairs leave the user's setting None). Instead, jaxfuse wraps the
function through which every compilation asks for its cache key
(``jax._src.compiler._get_cache_key``; checked in jax 0.10): inside
:func:`bypassing_jax_cache` it answers "no key" for this thread only, which is
JAX's own path for "cache disabled" (compile, neither read nor write); for
every other call it is the original. The wrapper is installed on first use,
never at import. Where that function does not exist (another jax),
:func:`bypass_available` is False and callers fall back (see
:func:`jaxfuse._runtime.compilation_cache.persistent_cache_disabled`) or do without
(the executable store stays off).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

_state = threading.local()
_install_lock = threading.Lock()
_installed: bool | None = None  # None: not tried yet


def _install() -> bool:
    global _installed, _state
    with _install_lock:
        if _installed is not None:
            return _installed
        try:
            from jax._src import compiler
        except ImportError:
            _installed = False
            return False
        original = getattr(compiler, "_get_cache_key", None)
        if not callable(original):
            _installed = False
            return False
        existing = getattr(original, "jaxfuse_bypass_state", None)
        if existing is not None:  # a reloaded jaxfuse finds its wrapper in place: share its per-thread state
            _state = existing
        else:
            state = _state

            @functools.wraps(original)
            def cache_key_unless_bypassed(*args, **kwargs):
                if getattr(state, "depth", 0):
                    return None  # JAX's path for "no persistent cache": compile, no read, no write
                return original(*args, **kwargs)

            cache_key_unless_bypassed.jaxfuse_bypass_state = state
            compiler._get_cache_key = cache_key_unless_bypassed
        _installed = True
        return True


def bypass_available() -> bool:
    """Whether this jax lets :func:`bypassing_jax_cache` skip its cache per thread (installs the hook once)."""
    return _installed if _installed is not None else _install()


@contextlib.contextmanager
def bypassing_jax_cache() -> Iterator[None]:
    """Compilations in this thread, inside, neither read nor write JAX's persistent cache; nests.

    Raises:
        RuntimeError: this jax has no such hook (check :func:`bypass_available`).
    """
    if not bypass_available():
        raise RuntimeError("this version of jax offers no way to bypass its compilation cache in one thread")
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def jax_cache_bypassed() -> bool:
    """Whether this thread is inside :func:`bypassing_jax_cache`."""
    return bool(getattr(_state, "depth", 0))
