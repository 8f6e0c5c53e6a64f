"""Compile once per machine: JAX's persistent compilation cache, on by default in a per-user directory.

jaxfuse's programs take seconds to compile on a CPU and a few milliseconds to
run, so in a one-shot use (evaluate a model's outputs once, fuse one detection
file) compilation is most of the wait. JAX can keep compiled programs on disk
and load them in a later process, but by default it keeps none (no cache
directory) and, once given one, skips programs that compiled in under a
second, which is most of jaxfuse's. So ``import jaxfuse`` turns the cache on:

* where: ``$JAXFUSE_COMPILATION_CACHE`` when it names a directory, else
  ``$XDG_CACHE_HOME/jaxfuse/jax``, else ``~/.cache/jaxfuse/jax``;
* what: every program that took at least :data:`MIN_COMPILE_TIME_SECS` to
  compile, whatever its size;
* never over the user's own choice: nothing is changed when JAX already has a
  cache directory (``jax_compilation_cache_dir`` or the
  ``JAX_COMPILATION_CACHE_DIR`` variable) or its cache is switched off
  (``jax_enable_compilation_cache=False``), nor a threshold the user set;
* off with ``JAXFUSE_COMPILATION_CACHE=0`` (or ``off``, ``false``, ``no``), or
  by :func:`set_compilation_cache` ``(None)``, which also moves it.

Why at import: JAX reads these settings at the first compilation, which can be
any jaxfuse call, so they must be in place before it. Setting them costs a
directory check and no compilation; a user who configures JAX afterwards (a
``jax.config.update`` before their first call) simply overrides them. When the
directory cannot be created or written (a read-only home), the cache stays off
silently and :func:`compilation_cache_status` says why; the CLI prints it.

The cache is JAX's own: its entries are keyed by the program, the jax and
jaxlib versions and the device, so a stale entry is never used. As JAX warns,
only point it at a directory that nobody else can write to. jaxfuse's store
of whole executables (:mod:`jaxfuse._runtime.executable_store`, which also skips
tracing) lives in its ``jaxfuse-executables`` subdirectory and follows the
same switches.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, NamedTuple, TextIO

import jax

ENVIRONMENT_VARIABLE = "JAXFUSE_COMPILATION_CACHE"
OFF_VALUES = frozenset({"0", "off", "false", "no", "none"})

# jaxfuse's programs compile in 0.05 to 5 s on a CPU; loading one from disk
# takes milliseconds, so all but the most trivial are worth storing.
MIN_COMPILE_TIME_SECS = 0.05

# JAX's own defaults: a value still equal to one of these was not set by the user.
_JAX_DEFAULT_MIN_COMPILE_TIME_SECS = 1.0
_JAX_DEFAULT_MIN_ENTRY_SIZE_BYTES = 0


class CompilationCacheStatus(NamedTuple):
    """Where compiled programs persist, and who decided.

    Attributes:
        directory: the cache directory JAX uses, or None when it persists nothing.
        source: ``"jaxfuse"`` (the per-user default or the environment variable),
            ``"set_compilation_cache"``, ``"user"`` (JAX configured by the user:
            left alone), ``"off"`` (turned off on purpose) or ``"unavailable"``
            (the directory cannot be created or written).
        reason: why the cache is off or unavailable (empty when it is on).
    """

    directory: str | None
    source: str
    reason: str = ""


_status = CompilationCacheStatus(None, "off", "not configured yet")


def default_cache_directory() -> Path:
    """``$XDG_CACHE_HOME/jaxfuse/jax``, or ``~/.cache/jaxfuse/jax`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxfuse" / "jax"


def _writable_directory(path: Path) -> str:
    """Create ``path``; return why it cannot hold the cache ('' when it can)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create {path}: {error.strerror or error}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return ""


def _store_jaxfuse_programs() -> None:
    """Lower JAX's thresholds so that jaxfuse's programs are stored, unless the user set them."""
    if jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_COMPILE_TIME_SECS:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    if jax.config.jax_persistent_cache_min_entry_size_bytes == _JAX_DEFAULT_MIN_ENTRY_SIZE_BYTES:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no minimum, no override


def _use_directory(path: Path, source: str) -> CompilationCacheStatus:
    global _status
    problem = _writable_directory(path)
    if problem:
        _status = CompilationCacheStatus(None, "unavailable", problem)
        return _status
    _store_jaxfuse_programs()
    jax.config.update("jax_compilation_cache_dir", str(path))
    _status = CompilationCacheStatus(str(path), source)
    return _status


def enable_default_compilation_cache() -> CompilationCacheStatus:
    """Turn the cache on as the module docstring says; called once by ``import jaxfuse``.

    Returns:
        The resulting :class:`CompilationCacheStatus`.
    """
    global _status
    if jax.config.jax_compilation_cache_dir is not None:
        _status = CompilationCacheStatus(jax.config.jax_compilation_cache_dir, "user")
        return _status
    if not jax.config.jax_enable_compilation_cache:
        _status = CompilationCacheStatus(None, "off", "jax_enable_compilation_cache is False")
        return _status
    setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if setting.lower() in OFF_VALUES:
        _status = CompilationCacheStatus(None, "off", f"{ENVIRONMENT_VARIABLE}={setting}")
        return _status
    path = Path(setting).expanduser() if setting else default_cache_directory()
    return _use_directory(path, "jaxfuse")


def set_compilation_cache(path: str | os.PathLike | None) -> CompilationCacheStatus:
    """Move JAX's persistent compilation cache to ``path``, or turn it off with None.

    Takes effect for the next compilation in this process (programs already
    compiled stay in memory). It overrides what ``import jaxfuse`` chose and
    the user's own ``jax_compilation_cache_dir``. For a whole environment, set
    ``JAXFUSE_COMPILATION_CACHE`` to a directory, or to ``0`` for no cache,
    before importing jaxfuse.

    Args:
        path: a directory (created if missing) or None.

    Returns:
        The new :class:`CompilationCacheStatus`: ``directory`` None, with the
        reason, when ``path`` cannot be created or written.

    Example:
        >>> import jaxfuse
        >>> jaxfuse.set_compilation_cache(None).directory is None
        True
    """
    global _status
    # JAX opens its cache once, at the first compilation; forget it so that the
    # next one sees the new setting.
    from jax.experimental.compilation_cache import compilation_cache

    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
        _status = CompilationCacheStatus(None, "off", "set_compilation_cache(None)")
        return _status
    status = _use_directory(Path(os.fspath(path)).expanduser(), "set_compilation_cache")
    if status.directory is None:
        jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
    return status


@contextlib.contextmanager
def persistent_cache_disabled() -> Iterator[None]:
    """Compile everything inside, reading and writing no persistent cache; then restore the settings.

    For measuring compilation itself (the benchmarks' compile counts and
    first-call latencies), which a warm disk cache would hide.
    """
    global _status
    from jax.experimental.compilation_cache import compilation_cache

    saved_status, saved_directory = _status, jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", saved_directory)
        compilation_cache.reset_cache()
        _status = saved_status


def compilation_cache_status() -> CompilationCacheStatus:
    """Where compiled programs persist now (see :class:`CompilationCacheStatus`).

    A ``jax.config.update("jax_compilation_cache_dir", ...)`` made after
    ``import jaxfuse`` is reported as the user's.
    """
    directory = jax.config.jax_compilation_cache_dir
    if directory != _status.directory:
        return CompilationCacheStatus(directory, "user" if directory else "off",
                                      "" if directory else "jax_compilation_cache_dir unset by the user")
    if directory and not jax.config.jax_enable_compilation_cache:
        return CompilationCacheStatus(None, "off", "jax_enable_compilation_cache is False")
    return _status


def _marker(directory: str) -> Path:
    """One file per jaxfuse, jax and backend: its presence means jaxfuse compiled here before."""
    from jaxfuse._core.version import VERSION as __version__

    backend = jax.default_backend()
    return Path(directory) / f"jaxfuse-{__version__}-jax-{jax.__version__}-{backend}.compiled"


def announce_first_compilation(stream: TextIO) -> bool:
    """Say on ``stream``, once per machine, that this run compiles jaxfuse's programs for the first time.

    Also says, every run, when the cache could not be used (and why), but not
    when the user turned it off. Call :func:`mark_compiled` after the run.

    Returns:
        Whether a line was written.
    """
    status = compilation_cache_status()
    if status.source == "unavailable":
        print(f"jaxfuse: compiling without a persistent cache ({status.reason}); every run compiles again",
              file=stream)
        return True
    if status.directory is None:
        return False
    try:
        if _marker(status.directory).exists():
            return False
    except OSError:
        return False
    print(f"jaxfuse: first run on this machine (jax {jax.__version__}, {jax.default_backend()}): compiling, "
          f"which takes a while; compiled programs are kept in {status.directory} for the next runs",
          file=stream)
    return True


def mark_compiled() -> None:
    """Record that jaxfuse compiled here (see :func:`announce_first_compilation`); never raises."""
    directory = compilation_cache_status().directory
    if directory is None:
        return
    try:
        _marker(directory).touch()
    except OSError:
        pass
