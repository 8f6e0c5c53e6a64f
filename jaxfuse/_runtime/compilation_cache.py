"""Compile once per machine: JAX's persistent compilation cache, on by default in a per-user directory.

jaxfuse's programs take seconds to compile on a CPU and a few milliseconds to
run, so in a one-shot use (evaluate a model's outputs once, fuse one detection
file) compilation is most of the wait. JAX can keep compiled programs on disk
and load them in a later process, but by default it keeps none (no cache
directory) and, once given one, skips programs that compiled in under a
second, which is most of jaxfuse's. So jaxfuse turns the cache on, at its
first call that may compile (:func:`ensure_compilation_cache`; ``import
jaxfuse`` itself changes no setting):

* where: ``$JAXFUSE_COMPILATION_CACHE`` when it names a local directory, else
  ``$XDG_CACHE_HOME/jaxfuse/jax``, else ``~/.cache/jaxfuse/jax``; missing
  directories are created ``0700``;
* what: every program that took at least :data:`MIN_COMPILE_TIME_SECS` to
  compile, whatever its size;
* never over the user's own choice: nothing is changed when JAX already has a
  cache directory (``jax_compilation_cache_dir`` or the
  ``JAX_COMPILATION_CACHE_DIR`` variable) or its cache is switched off
  (``jax_enable_compilation_cache=False``), nor a threshold the user set;
* off with ``JAXFUSE_COMPILATION_CACHE=0`` (or ``off``, ``false``, ``no``), or
  by :func:`set_compilation_cache` ``(None)``, which also moves it.

Why at the first call and not at import: JAX opens its cache at the first
compilation that finds a directory set, so the settings need only be in place
before jaxfuse's first compilation (not before the user's own, which then
simply persist nothing until then); a user who configures JAX before that
call overrides them. When the directory cannot
be created or written (a read-only home), the cache stays off silently and
:func:`compilation_cache_status` says why; the CLI prints it.

A cache is code: whoever can write it chooses what runs. So the directory
jaxfuse picks must be the user's alone (:mod:`jaxfuse._runtime.private_files`: owned
by the user and writable by nobody else, and so is every directory up to the
root, sticky ones like ``/tmp`` aside); otherwise the cache stays off with the
reason in :func:`compilation_cache_status`, and one warning. A remote URL
(``gs://...``) in ``JAXFUSE_COMPILATION_CACHE`` is refused the same way, since
its owner cannot be checked: to share a remote cache, configure JAX itself
(``JAX_COMPILATION_CACHE_DIR``), which jaxfuse then leaves alone.

The cache is JAX's own: its entries are keyed by the program, the jax and
jaxlib versions and the device, so a stale entry is never used. jaxfuse's
store of whole executables (:mod:`jaxfuse._runtime.executable_store`, which also skips
tracing) lives in its ``jaxfuse-executables`` subdirectory, follows the same
switches and checks its directory the same way, also in a directory the user
gave JAX.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, TextIO

import jax

from jaxfuse._runtime.jax_cache_bypass import bypass_available, bypassing_jax_cache
from jaxfuse._runtime.private_files import (
    can_check_ownership,
    directory_problem,
    first_warning,
    make_private_directory,
    private_file_exists,
    touch_private_file,
    warn_untrusted,
)

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
            (the directory cannot be created or written, is not the user's
            alone, or is remote).
        reason: why the cache is off or unavailable (empty when it is on).
    """

    directory: str | None
    source: str
    reason: str = ""


_status = CompilationCacheStatus(None, "off", "not configured yet")
_configured = False  # whether _status reflects a decision (lazy: at jaxfuse's first compiling call)
_configure_lock = threading.Lock()
_refused = False  # whether the directory jaxfuse picked was refused for a reason worth a warning


def default_cache_directory() -> Path:
    """``$XDG_CACHE_HOME/jaxfuse/jax``, or ``~/.cache/jaxfuse/jax`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxfuse" / "jax"


def _unusable_directory(path: str | os.PathLike) -> tuple[str, bool]:
    """Create ``path`` (0700); return why it cannot hold the cache ('' when it can) and whether to warn.

    A remote URL or a directory others can write is worth a warning; a
    read-only home (cannot create, not writable) is not, as before.
    """
    if "://" in os.fspath(path):
        return (f"{os.fspath(path)} is a remote URL, whose owner jaxfuse cannot check; to use a remote cache, "
                f"set JAX_COMPILATION_CACHE_DIR (jaxfuse leaves JAX's own setting alone)"), True
    path = Path(path)
    try:
        make_private_directory(path)
    except OSError as error:
        return f"cannot create {path}: {error.strerror or error}", False
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable", False
    if can_check_ownership():
        problem = directory_problem(path)
        return problem, bool(problem)
    return "", False  # Windows: a profile directory is the user's by its access list; the executable store stays off


def _store_jaxfuse_programs() -> None:
    """Lower JAX's thresholds so that jaxfuse's programs are stored, unless the user set them."""
    if jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_COMPILE_TIME_SECS:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    if jax.config.jax_persistent_cache_min_entry_size_bytes == _JAX_DEFAULT_MIN_ENTRY_SIZE_BYTES:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no minimum, no override


def _reset_jax_cache() -> None:
    """Make JAX open its cache afresh: it opens one once, at the first compilation that finds a directory set."""
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


def _use_directory(path: str | os.PathLike, source: str) -> CompilationCacheStatus:
    global _status, _refused
    problem, _refused = _unusable_directory(path)
    if problem:
        _status = CompilationCacheStatus(None, "unavailable", problem)
        return _status
    _store_jaxfuse_programs()
    jax.config.update("jax_compilation_cache_dir", os.fspath(path))
    _reset_jax_cache()
    _status = CompilationCacheStatus(os.fspath(path), source)
    return _status


def _decide() -> CompilationCacheStatus:
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
    return _use_directory(_local_path(setting) if setting else default_cache_directory(), "jaxfuse")


def _local_path(setting: str) -> str | Path:
    """``setting`` with ``~`` expanded; a URL as it is (refused by :func:`_use_directory`, never made a directory)."""
    return setting if "://" in setting else Path(setting).expanduser()


def enable_default_compilation_cache() -> CompilationCacheStatus:
    """Turn the cache on as the module docstring says, now (:func:`ensure_compilation_cache` does it once, lazily).

    Returns:
        The resulting :class:`CompilationCacheStatus`.
    """
    global _configured
    with _configure_lock:
        _configured = True
        return _decide()


def ensure_compilation_cache(*, warn: bool = True) -> None:
    """Turn the cache on as the module docstring says, once per process; called by jaxfuse before it compiles.

    Costs one check after the first call. A directory refused as not the
    user's alone is named in one warning (``warn``; the CLI says it itself).
    """
    global _configured
    if _configured:
        return
    with _configure_lock:
        if _configured:
            return
        status = _decide()
        _configured = True
    if status.source == "unavailable" and _refused:
        directory = os.environ.get(ENVIRONMENT_VARIABLE, "").strip() or str(default_cache_directory())
        if warn:
            warn_untrusted(directory, status.reason, "compiling without a persistent cache")
        else:
            first_warning(directory)  # the caller prints the status itself


def set_compilation_cache(path: str | os.PathLike | None) -> CompilationCacheStatus:
    """Move JAX's persistent compilation cache to ``path``, or turn it off with None.

    Takes effect for the next compilation in this process (programs already
    compiled stay in memory). It overrides what jaxfuse chose and the user's
    own ``jax_compilation_cache_dir``. For a whole environment, set
    ``JAXFUSE_COMPILATION_CACHE`` to a directory, or to ``0`` for no cache.

    Args:
        path: a local directory (created 0700 if missing) or None.

    Returns:
        The new :class:`CompilationCacheStatus`: ``directory`` None, with the
        reason, when ``path`` cannot be created or written, is not the user's
        alone, or is a remote URL.

    Example:
        >>> import jaxfuse
        >>> jaxfuse.set_compilation_cache(None).directory is None
        True
    """
    global _status, _configured
    with _configure_lock:
        _configured = True
        if path is None:
            jax.config.update("jax_compilation_cache_dir", None)
            _reset_jax_cache()
            _status = CompilationCacheStatus(None, "off", "set_compilation_cache(None)")
            return _status
        status = _use_directory(_local_path(os.fspath(path)), "set_compilation_cache")
        if status.directory is None:
            jax.config.update("jax_compilation_cache_dir", None)
            _reset_jax_cache()
        return status


_fallback_lock = threading.Lock()
_fallback_depth = 0  # threads inside persistent_cache_disabled, where jax offers no per-thread bypass
_fallback_saved_directory: str | None = None


@contextlib.contextmanager
def persistent_cache_disabled() -> Iterator[None]:
    """Compile everything inside, in this thread, reading and writing no persistent cache; nests.

    For measuring compilation itself (the benchmarks' compile counts and
    first-call latencies), which a warm disk cache would hide. JAX's settings
    are not touched and other threads keep their caches (see
    :mod:`jaxfuse._runtime.jax_cache_bypass`). With a jax that offers no per-thread
    bypass, the cache directory is unset while any thread is inside and put
    back when the last one leaves: other threads then compile without the
    cache meanwhile. Threads started inside (the workers of
    :func:`jaxfuse.fuse_proposals_sharded`) are not covered by the bypass.
    """
    ensure_compilation_cache()
    if bypass_available():
        with bypassing_jax_cache():
            yield
        return
    global _fallback_depth, _fallback_saved_directory
    with _fallback_lock:
        if _fallback_depth == 0:
            _fallback_saved_directory = jax.config.jax_compilation_cache_dir
            jax.config.update("jax_compilation_cache_dir", None)
            _reset_jax_cache()
        _fallback_depth += 1
    try:
        yield
    finally:
        with _fallback_lock:
            _fallback_depth -= 1
            if _fallback_depth == 0:
                jax.config.update("jax_compilation_cache_dir", _fallback_saved_directory)
                _reset_jax_cache()


def compilation_cache_status() -> CompilationCacheStatus:
    """Where compiled programs persist now (see :class:`CompilationCacheStatus`).

    Sets the cache up first if no jaxfuse call has yet (as that call would). A
    ``jax.config.update("jax_compilation_cache_dir", ...)`` made after that is
    reported as the user's.
    """
    ensure_compilation_cache()
    directory = jax.config.jax_compilation_cache_dir
    if directory != _status.directory:
        return CompilationCacheStatus(directory, "user" if directory else "off",
                                      "" if directory else "jax_compilation_cache_dir unset by the user")
    if directory and not jax.config.jax_enable_compilation_cache:
        return CompilationCacheStatus(None, "off", "jax_enable_compilation_cache is False")
    return _status


# ------------------------------------------------------------ first-run marker

_store_writes = {"kept": 0, "failed": 0}


def record_store_write(kept: bool) -> None:
    """Count a program written to (or lost by) the executable store, for :func:`mark_compiled`."""
    _store_writes["kept" if kept else "failed"] += 1


def _marker(directory: str) -> Path:
    """One file per jaxfuse, jax and backend: its presence means an earlier run compiled here and kept its programs."""
    from jaxfuse._core.version import VERSION as __version__

    backend = jax.default_backend()
    return Path(directory) / f"jaxfuse-{__version__}-jax-{jax.__version__}-{backend}.compiled"


def _marker_problem(directory: str | None) -> str:
    """Why no marker can live in ``directory`` ('' when one can); jaxfuse writes it only where it owns the chain."""
    if directory is None or "://" in directory or not can_check_ownership():
        return "no local directory whose owner jaxfuse can check"
    return directory_problem(directory)


def announce_first_compilation(stream: TextIO) -> bool:
    """Say on ``stream``, once per machine, that this run compiles jaxfuse's programs for the first time.

    Also says, every run, when the cache could not be used (and why), but not
    when the user turned it off. Call :func:`mark_compiled` after the run.

    Returns:
        Whether a line was written.
    """
    ensure_compilation_cache(warn=False)
    status = compilation_cache_status()
    if status.source == "unavailable":
        print(f"jaxfuse: compiling without a persistent cache ({status.reason}); every run compiles again",
              file=stream)
        return True
    if status.directory is None or "://" in status.directory or not can_check_ownership():
        return False  # off on purpose, or JAX's alone (a remote cache of the user's; Windows): nothing to mark
    problem = _marker_problem(status.directory)
    if problem:  # the user's own JAX cache directory: jaxfuse keeps nothing there
        if first_warning(Path(status.directory) / "jaxfuse-executables"):
            print(f"jaxfuse: not keeping compiled programs in {status.directory} ({problem})", file=stream)
            return True
        return False
    if private_file_exists(_marker(status.directory)):
        return False
    print(f"jaxfuse: first run on this machine (jax {jax.__version__}, {jax.default_backend()}): compiling, "
          f"which takes a while; compiled programs are kept in {status.directory} for the next runs",
          file=stream)
    return True


def mark_compiled() -> None:
    """Record that jaxfuse compiled here and kept its programs (see :func:`announce_first_compilation`).

    Nothing is recorded when a program could not be written to the executable
    store in this process (a full disk: the next run compiles again, and must
    say so), or when the cache directory is not the user's alone. The marker
    is created without following a link or blocking on a FIFO. Never raises.
    """
    directory = compilation_cache_status().directory
    if _store_writes["failed"] or _marker_problem(directory):
        return
    try:
        touch_private_file(_marker(directory))
    except OSError:
        pass
