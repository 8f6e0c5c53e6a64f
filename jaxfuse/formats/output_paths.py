"""Resolving an output path step by step, following a symlink only where the kernel's protected-symlinks rule would.

Why not ``os.path.realpath`` and write the result: realpath follows every
link, including one another user planted in ``/tmp``; the kernel's
``fs.protected_symlinks`` would have refused that link to ``open()`` (and to
``echo > link``), but writing to the resolved target bypasses the check, so a
privileged run could be made to overwrite any file. Here the path is walked
with directory descriptors (``openat`` with ``O_NOFOLLOW`` at each step), each
symlink met is checked, and the caller writes relative to the descriptor of
the final directory: nothing swapped in after the check is followed.

The rules (the kernel's, applied whatever the sysctls say, since containers
often run with them off and the harm is the same):

* protected symlinks: a symlink in a sticky, world-writable directory is
  followed only if its owner is the running user (effective uid) or the
  directory's owner.
* protected regular files and FIFOs: an existing file in a sticky,
  world-writable directory, owned by neither the running user nor the
  directory's owner, is not written (the kernel refuses ``echo > file`` there
  with ``fs.protected_regular``); replacing it would hand another user's
  name over to this run's output, writing in place would write into their file.

Every refusal is an ``OSError`` (``EACCES``) whose ``filename`` is the path the
caller gave and whose message says which link or file, and why.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
from typing import NamedTuple

MAX_SYMLINKS = 40
"""As the kernel (``ELOOP`` beyond 40 links in one walk)."""

_STICKY_WORLD_WRITABLE = stat.S_ISVTX | stat.S_IWOTH
# O_PATH: a directory is entered with search permission alone, as the kernel's walk does.
_DIRECTORY_FLAGS = getattr(os, "O_PATH", os.O_RDONLY)
for _flag in ("O_DIRECTORY", "O_CLOEXEC", "O_NOFOLLOW"):
    _DIRECTORY_FLAGS |= getattr(os, _flag, 0)


class ResolvedOutput(NamedTuple):
    """Where an output path leads, pinned by a directory descriptor.

    Attributes:
        directory: a descriptor (``O_PATH`` on Linux) of the directory holding
            the final name; the caller closes it.
        directory_status: its ``os.stat_result``.
        name: the final name in it, not a symlink when resolved.
        status: ``os.lstat`` of the name, or None where nothing is there yet.
        shown: the resolved path, for messages.
    """

    directory: int
    directory_status: os.stat_result
    name: str
    status: os.stat_result | None
    shown: str


def _error(number: int, path: str, why: str | None = None) -> OSError:
    return OSError(number, why or os.strerror(number), path)


def _shared_by_others(directory_status: os.stat_result, owner: int) -> bool:
    """The kernel's test: in a sticky world-writable directory, owned by neither us nor the directory's owner."""
    if directory_status.st_mode & _STICKY_WORLD_WRITABLE != _STICKY_WORLD_WRITABLE:
        return False
    return owner not in (os.geteuid(), directory_status.st_uid)


def check_not_shared(resolved: ResolvedOutput, path: str) -> None:
    """Refuse an existing file that the protected-regular rule guards (see the module docstring).

    Raises:
        OSError: ``EACCES`` naming ``path``.
    """
    if resolved.status is not None and _shared_by_others(resolved.directory_status, resolved.status.st_uid):
        raise _error(
            errno.EACCES,
            path,
            f"refusing to write {resolved.shown}: it belongs to uid {resolved.status.st_uid}, neither you nor the "
            "owner of its sticky world-writable directory (the kernel's protected_regular rule)",
        )


def _lstat(name: str, directory: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Walk:
    """The state of one walk: the current directory's descriptor and its path as text."""

    def __init__(self, path: str):
        self.path = path
        self.shown = "/" if path.startswith("/") else "."
        self.directory = os.open(self.shown, _DIRECTORY_FLAGS)
        self.links = 0

    def restart_at_root(self) -> None:
        self._move(os.open("/", _DIRECTORY_FLAGS), "/")

    def _move(self, descriptor: int, shown: str) -> None:
        os.close(self.directory)
        self.directory, self.shown = descriptor, shown

    def enter(self, part: str, status: os.stat_result | None) -> None:
        """Step into the directory ``part`` (``status`` is its lstat, None if absent)."""
        shown = os.path.join(self.shown, part)
        if status is None:
            raise _error(errno.ENOENT, self.path, f"no such directory: {os.path.dirname(self.path) or shown}")
        if not stat.S_ISDIR(status.st_mode):
            raise _error(errno.ENOTDIR, self.path, f"not a directory: {shown}")
        descriptor = os.open(part, _DIRECTORY_FLAGS, dir_fd=self.directory)
        opened = os.fstat(descriptor)
        if (opened.st_dev, opened.st_ino) != (status.st_dev, status.st_ino):  # replaced between lstat and open
            os.close(descriptor)
            raise _error(errno.EAGAIN, self.path, f"{shown} changed while the path was being resolved")
        self._move(descriptor, shown)

    def parent(self) -> None:
        parent = os.open("..", _DIRECTORY_FLAGS, dir_fd=self.directory)
        self._move(parent, os.path.normpath(os.path.join(self.shown, "..")))

    def follow(self, part: str, status: os.stat_result) -> list[str]:
        """The components of the link ``part``, after the protected-symlinks check."""
        shown = os.path.join(self.shown, part)
        if _shared_by_others(os.fstat(self.directory), status.st_uid):
            raise _error(
                errno.EACCES,
                self.path,
                f"refusing to follow the symlink {shown}: it belongs to uid {status.st_uid}, neither you nor the owner "
                "of its sticky world-writable directory (the kernel's protected_symlinks rule)",
            )
        self.links += 1
        if self.links > MAX_SYMLINKS:
            raise _error(errno.ELOOP, self.path)
        target = os.readlink(part, dir_fd=self.directory)
        if target.startswith("/"):
            self.restart_at_root()
        return target.split("/")


def resolve_output(path: str | os.PathLike) -> ResolvedOutput:
    """Walk ``path`` to its final directory and name, checking every symlink met (see the module docstring).

    Args:
        path: the output path as the user gave it.

    Returns:
        A :class:`ResolvedOutput`; the caller closes its ``directory``.

    Raises:
        OSError: naming ``path``: a missing or non-directory component, a path
            naming a directory, a refused symlink, too many links.
    """
    path = os.fspath(path)
    if not path:
        raise _error(errno.ENOENT, path)
    walk = _Walk(path)
    try:
        pending = collections.deque(path.split("/"))
        while pending:
            part = pending.popleft()
            last = not pending
            if part in ("", ".", ".."):
                if last:  # "out/", ".", "..": a directory
                    raise _error(errno.EISDIR, path)
                if part == "..":
                    walk.parent()
                continue
            status = _lstat(part, walk.directory)
            if status is not None and stat.S_ISLNK(status.st_mode):
                pending.extendleft(reversed(walk.follow(part, status)))
            elif last:
                directory, walk.directory = walk.directory, -1
                return ResolvedOutput(directory, os.fstat(directory), part, status, os.path.join(walk.shown, part))
            else:
                walk.enter(part, status)
        raise _error(errno.EISDIR, path)  # pragma: no cover - the last component returns or raises above
    except OSError as error:
        if error.filename == path:
            raise
        raise _error(error.errno or errno.EIO, path, error.strerror) from None
    finally:
        if walk.directory >= 0:
            os.close(walk.directory)
