"""Replacing a file atomically without leaving temporary files behind, even after SIGKILL.

How (decided for issue 16):

* On Linux the new contents go to an *unnamed* file in the output's directory
  (``O_TMPFILE``), are flushed to disk (``fsync``), then linked under a
  temporary name and renamed over the output. A process killed while writing
  leaves nothing: the kernel frees an unnamed file. Only the two system calls
  between the link and the rename can leave a name behind.
* Elsewhere, or on a file system without ``O_TMPFILE``, the temporary file is
  named from the start (created with ``O_EXCL``, never through a link).
* Temporary names are unmistakable and tied to their output:
  ``.<output name>.<16 hex digits>.jaxfuse-tmp`` (a name too long for that is
  cut, with a digest of the whole name). Before each replacement, that
  output's stale temporary files are removed: regular files (never links)
  whose name matches that output's pattern exactly, owned by the running
  user, and not modified for :data:`STALE_SECONDS`. A live writer modifies its
  file as it writes and renames it microseconds after the last write, so only
  a writer stopped for that long (``SIGSTOP``) could lose its file, and then
  its rename fails with an error; it never publishes a partial file.

SIGINT and SIGTERM are held while a temporary name is being created and
recorded, so a handler that raises (``jaxfuse fuse`` turns SIGTERM into
``SystemExit``) cannot leave a name that the cleanup does not know.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import signal
import stat
import time

SUFFIX = ".jaxfuse-tmp"
STALE_SECONDS = 600.0
"""A temporary file unmodified for this long (10 minutes) belongs to a writer that died."""

_LONGEST_STEM = 200  # bytes of the output's name kept in a temporary name (file names stop at 255)
_SUPPORTS_UNNAMED = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def write_all(descriptor: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a pipe or a signal can cut a write short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT and SIGTERM back (delivered on exit) in this thread."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stem(name: str) -> str:
    encoded = os.fsencode(name)
    if len(encoded) <= _LONGEST_STEM:
        return name
    return os.fsdecode(encoded[: _LONGEST_STEM - 40]) + "~" + hashlib.sha256(encoded).hexdigest()[:16]


def temporary_name(name: str) -> str:
    """A fresh temporary name for the output ``name`` (same directory)."""
    return f".{_stem(name)}.{secrets.token_hex(8)}{SUFFIX}"


def temporary_pattern(name: str) -> re.Pattern:
    """The exact pattern of the temporary names of the output ``name``."""
    return re.compile(rf"\.{re.escape(_stem(name))}\.[0-9a-f]{{16}}{re.escape(SUFFIX)}", re.DOTALL)


def remove_stale_temporaries(directory: int, name: str, *, now: float | None = None) -> list[str]:
    """Remove the stale temporary files of the output ``name`` in ``directory`` (a descriptor); see the module doc.

    Returns:
        The names removed. A directory that cannot be listed is left alone.
    """
    try:
        readable = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return []
    try:
        names = os.listdir(readable)
    except OSError:
        return []
    finally:
        os.close(readable)
    pattern, me = temporary_pattern(name), os.geteuid()
    now = time.time() if now is None else now
    removed = []
    for candidate in filter(pattern.fullmatch, names):
        try:
            found = os.stat(candidate, dir_fd=directory, follow_symlinks=False)
            if stat.S_ISREG(found.st_mode) and found.st_uid == me and now - found.st_mtime > STALE_SECONDS:
                os.unlink(candidate, dir_fd=directory)
                removed.append(candidate)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def _unnamed_file(directory: int, permissions: int) -> int | None:
    """An ``O_TMPFILE`` descriptor in ``directory``, or None where the system or file system has none."""
    if not _SUPPORTS_UNNAMED:
        return None
    try:
        return os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, permissions, dir_fd=directory)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def _named_file(directory: int, name: str, permissions: int) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        temporary = temporary_name(name)
        try:
            return os.open(temporary, flags, permissions, dir_fd=directory), temporary
        except FileExistsError:
            continue


def _link_unnamed(descriptor: int, directory: int, name: str) -> str | None:
    """Give the unnamed file a temporary name; None where ``/proc/self/fd`` cannot be linked from."""
    while True:
        temporary = temporary_name(name)
        try:
            os.link(f"/proc/self/fd/{descriptor}", temporary, dst_dir_fd=directory, follow_symlinks=True)
            return temporary
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EXDEV, errno.EOPNOTSUPP):
                return None
            raise


def _settle(descriptor: int, mode: int | None, owner: tuple[int, int] | None) -> None:
    """Owner, then mode (a change of owner may clear set-id bits), then the bytes on disk."""
    if owner is not None:
        try:
            os.fchown(descriptor, *owner)
        except OSError:
            pass  # not permitted: the new file keeps the writer's owner, like any rewritten file
    if mode is not None:
        os.fchmod(descriptor, mode)
    os.fsync(descriptor)


def replace_atomically(
    directory: int, name: str, data: bytes, *, mode: int | None = None, owner: tuple[int, int] | None = None
) -> None:
    """Write ``data`` as ``name`` in ``directory`` (a descriptor), atomically, leaving no temporary file.

    Args:
        directory: a descriptor of the directory (``O_PATH`` will do).
        name: the final name in it.
        data: the new contents.
        mode: the permission bits to give the file; None for a new file: ``0o666``
            less the umask (and any default ACL), as ``open()`` gives.
        owner: ``(uid, gid)`` to give the file where permitted, or None.

    Raises:
        OSError: as the system calls raise it (the caller names the path).
    """
    remove_stale_temporaries(directory, name)
    # A replacing file starts private, so a private file's new contents are never readable by others.
    permissions = 0o666 if mode is None else 0o600
    descriptor = temporary = None
    try:
        with signals_held():  # a handler raising on the way out finds the name recorded, for the cleanup below
            descriptor = _unnamed_file(directory, permissions)
            if descriptor is None:
                descriptor, temporary = _named_file(directory, name, permissions)
        write_all(descriptor, data)
        _settle(descriptor, mode, owner)
        if temporary is None:
            with signals_held():
                temporary = _link_unnamed(descriptor, directory, name)
        if temporary is None:  # /proc/self/fd refused the link (a sandbox): write it again, named
            os.close(descriptor)
            descriptor = None
            with signals_held():
                descriptor, temporary = _named_file(directory, name, permissions)
            write_all(descriptor, data)
            _settle(descriptor, mode, owner)
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        temporary = None  # a signal before this line: the unlink below finds nothing, and says nothing
    finally:
        if descriptor is not None:
            os.close(descriptor)
        if temporary is not None:
            try:
                os.unlink(temporary, dir_fd=directory)
            except OSError:
                pass
