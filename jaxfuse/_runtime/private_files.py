"""Files only the user can have written: the rule for anything jaxfuse loads that can run code.

A cache of compiled programs is code. Whoever can write an entry, or replace
the directory holding it, chooses what runs the next time jaxfuse loads it,
with the rights of whoever runs jaxfuse. So, as ssh does with ``~/.ssh`` and
gpg with its home, jaxfuse trusts a cache directory only when

* the directory itself, and every directory from it up to the cache's root,
  is owned by the user (``os.geteuid()``) and writable by nobody else
  (no group or other write bit);
* every directory above the root, up to ``/``, is owned by the user or by
  root and writable by nobody else, unless it is sticky (``/tmp``): there only
  an entry's owner may rename or delete it, so others cannot swap ours;

and it opens an entry without following a symbolic link (``O_NOFOLLOW``),
without blocking on a FIFO (``O_NONBLOCK``), and uses it only when ``fstat``
shows a regular file that the user owns and nobody else can write. The paths
are checked once resolved (``realpath``): a link on the way is fine when its
target passes.

Directories jaxfuse creates are made ``0700`` and files ``0600``; files are
written to a temporary name and renamed into place, so a reader never sees
half a file. Where ownership cannot be checked (no ``os.geteuid`` or
``O_NOFOLLOW``: Windows), :func:`can_check_ownership` is False and callers
keep nothing that runs code.
"""

from __future__ import annotations

import os
import secrets
import stat
import warnings
from pathlib import Path

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
TEMPORARY_SUFFIX = ".tmp"

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_CLOEXEC", 0))


class UntrustedFileError(OSError):
    """A file that must not be used: a link, not a regular file, or writable or owned by someone else."""


class UntrustedCacheWarning(RuntimeWarning):
    """A cache directory jaxfuse will not load code from (or write to): given once per directory and process."""


def can_check_ownership() -> bool:
    """Whether this platform lets jaxfuse check owners and refuse links (POSIX: yes; Windows: no)."""
    return hasattr(os, "geteuid") and hasattr(os, "O_NOFOLLOW")


def make_private_directory(path: str | os.PathLike) -> None:
    """Create ``path`` and any missing parents with mode 0700; existing directories are left as they are.

    Raises:
        OSError: a component cannot be created.
    """
    path = Path(path)
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIRECTORY_MODE)
        except FileExistsError:  # made meanwhile by another process: checked like any other
            pass


def _writers(mode: int) -> str:
    who = [name for bit, name in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "other users")) if mode & bit]
    return " and ".join(who)


def _component_problem(path: Path, status: os.stat_result, private: bool, user: int) -> str:
    if not stat.S_ISDIR(status.st_mode):
        return f"{path} is not a directory"
    if private:
        if status.st_uid != user:
            return f"{path} is owned by uid {status.st_uid}, not by you (uid {user})"
        if status.st_mode & _OTHERS_WRITE:
            return f"{path} is writable by {_writers(status.st_mode)}; fix with chmod go-w {path}"
        return ""
    if status.st_uid not in (user, 0):
        return f"{path}, a parent of the cache, is owned by uid {status.st_uid}, neither you (uid {user}) nor root"
    if status.st_mode & _OTHERS_WRITE and not status.st_mode & stat.S_ISVTX:
        return f"{path}, a parent of the cache, is writable by {_writers(status.st_mode)} and not sticky"
    return ""


def directory_problem(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """Why code must not be loaded from ``directory`` (see the module docstring); '' when it may.

    Args:
        directory: the directory holding the files.
        root: the cache's root, an ancestor of ``directory`` (or itself, the
            default): every directory from ``directory`` up to it must be the
            user's alone.

    Returns:
        One sentence naming the first offending path and why, or ''.
    """
    if not can_check_ownership():
        return "this platform cannot check who owns a file"
    user = os.geteuid()
    real = Path(os.path.realpath(directory))
    real_root = Path(os.path.realpath(root if root is not None else directory))
    private = {real, real_root} | {p for p in real.parents if p == real_root or real_root in p.parents}
    seen = set()
    for path in (real, *real.parents, real_root, *real_root.parents):
        if path in seen:
            continue
        seen.add(path)
        try:
            status = os.lstat(path)
        except OSError as error:
            return f"cannot inspect {path}: {error.strerror or error}"
        problem = _component_problem(path, status, path in private, user)
        if problem:
            return problem
    return ""


def check_private_file(path: str | os.PathLike, status: os.stat_result) -> None:
    """Raise :class:`UntrustedFileError` unless ``status`` (an ``fstat``) is a regular file only the user can write."""
    if not stat.S_ISREG(status.st_mode):
        raise UntrustedFileError(f"{path} is not a regular file")
    if status.st_uid != os.geteuid():
        raise UntrustedFileError(f"{path} is owned by uid {status.st_uid}, not by you")
    if status.st_mode & _OTHERS_WRITE:
        raise UntrustedFileError(f"{path} is writable by {_writers(status.st_mode)}")


def _open_checked(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` that refuses a symbolic link; the caller checks the result with ``fstat``."""
    try:
        return os.open(path, flags, mode)
    except OSError as error:
        if os.path.islink(path):  # ELOOP on Linux, EMLINK on FreeBSD, EFTYPE elsewhere
            raise UntrustedFileError(f"{path} is a symbolic link") from error
        raise


def read_private_file(path: str | os.PathLike, *, touch: bool = False) -> bytes | None:
    """The bytes of ``path`` if it is the user's private regular file; None when there is no such file.

    Args:
        path: a file in a directory :func:`directory_problem` accepts.
        touch: also set its access and modification times to now (a use, for
            least-recently-used eviction).

    Raises:
        UntrustedFileError: ``path`` is a link, a FIFO or another non-regular
            file, or owned or writable by someone else.
        OSError: it cannot be read.
    """
    path = Path(path)
    try:
        handle = _open_checked(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    try:
        check_private_file(path, os.fstat(handle))
        chunks = []
        while chunk := os.read(handle, 1 << 20):
            chunks.append(chunk)
        if touch:
            os.utime(handle if os.utime in os.supports_fd else path)
        return b"".join(chunks)
    finally:
        os.close(handle)


def private_file_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the user's private regular file (a link or a FIFO there does not count)."""
    try:
        check_private_file(path, os.lstat(path))
    except OSError:
        return False
    return True


def touch_private_file(path: str | os.PathLike) -> None:
    """Create ``path`` empty (mode 0600) unless it exists; never through a link, never blocking on a FIFO.

    Raises:
        UntrustedFileError: something other than the user's private regular file is there.
        OSError: it cannot be created.
    """
    path = Path(path)
    handle = _open_checked(path, _CREATE_FLAGS)
    try:
        check_private_file(path, os.fstat(handle))
    finally:
        os.close(handle)


def write_private_file(path: str | os.PathLike, data: bytes) -> None:
    """Write ``path`` (mode 0600) whole or not at all: a temporary file in the same directory, then a rename.

    A link or anything else at ``path`` is replaced, never written through.

    Raises:
        OSError: the data cannot be written (a full disk): nothing is left behind.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view):]
        finally:
            os.close(handle)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


_warned: set[str] = set()


def first_warning(directory: str | os.PathLike) -> bool:
    """True the first time it is asked about ``directory`` in this process: whoever gets True says why it is unused."""
    directory = os.fspath(directory)
    if directory in _warned:
        return False
    _warned.add(directory)
    return True


def warn_untrusted(directory: str | os.PathLike, reason: str, consequence: str) -> None:
    """Warn, once per process and directory, that jaxfuse does not use ``directory``, why, and what follows."""
    if first_warning(directory):
        warnings.warn(f"jaxfuse: not using {os.fspath(directory)} ({reason}); {consequence}", UntrustedCacheWarning,
                      stacklevel=3)
