"""Writing an output file without harming what is there: checked first, atomic where it can be, not via others' links.

What happens at the output path, by what is there:

* ``-``: standard output, written to the end (a closed standard output, or a
  reader that exits early, is an error: ``EBADF`` or ``EPIPE``).
* nothing yet: a new file, written in full beside its name and renamed into
  place (:mod:`jaxfuse.formats.temporary_files`: no temporary file is left,
  even after SIGKILL), with the mode a plain ``open()`` would give (``0o666``
  less the umask).
* a regular file with one link: the same atomic replacement, keeping the
  file's mode (a private ``0600`` file stays private, its new contents too)
  and, where permitted, its owner.
* a regular file with several hard links: written in place (truncated, then
  written), so every link sees the new contents. A rename would split the
  links. In place is not atomic: a crash mid-write leaves a partial file.
* anything else that is not a directory (a character device such as
  ``/dev/null``, a FIFO, a socket): opened and written directly; never
  replaced by a regular file.

Symlinks, in any component of the path, are followed where the kernel's
protected-symlinks rule would follow them: not a link in a sticky,
world-writable directory (``/tmp``) owned by neither the running user nor
the directory's owner; nor is another user's existing file there written
(:mod:`jaxfuse.formats.output_paths`). The rules hold whatever the
``fs.protected_*`` sysctls say.

The path is checked twice: by :func:`plan_output` before the work (so a bad
path fails early) and again by :func:`write_output` at the time of writing
(what is there may have changed meanwhile). The write happens relative to
the directory descriptor of that second walk, and an in-place or direct
write opens the final name with ``O_NOFOLLOW``: nothing swapped in after the
check is followed.

Every error is an :class:`OutputError` (an ``OSError``) whose ``filename`` is
the path the caller gave (not the resolved target nor a temporary file).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import NamedTuple

from jaxfuse.formats.output_paths import ResolvedOutput, check_not_shared, resolve_output
from jaxfuse.formats.temporary_files import replace_atomically, write_all

STDOUT = "-"


class OutputError(OSError):
    """An output that cannot be written; ``filename`` is the path the caller gave (``"-"`` for standard output)."""


class OutputPlan(NamedTuple):
    """How :func:`write_output` will write, as :func:`plan_output` found the path.

    Attributes:
        path: the path the caller gave (what errors name).
        target: the resolved path, for messages; None for stdout.
        mode: ``"stdout"``, ``"atomic"``, ``"in_place"`` or ``"direct"``.
        file_mode: the permission bits kept from the file replaced, or None
            (a new file: ``0o666`` less the umask).
    """

    path: str
    target: str | None
    mode: str
    file_mode: int | None


def _error(number: int, path: str, why: str | None = None) -> OutputError:
    return OutputError(number, why or os.strerror(number), path)


def _directory_writable(resolved: ResolvedOutput) -> bool:
    return os.access(".", os.W_OK | os.X_OK, dir_fd=resolved.directory)


def _decide(resolved: ResolvedOutput, path: str) -> tuple[str, int | None]:
    """The write mode and the mode bits to keep, for what is at the resolved name now."""
    status = resolved.status
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise _error(errno.EISDIR, path)
    check_not_shared(resolved, path)
    if status is None:
        if not _directory_writable(resolved):
            raise _error(errno.EACCES, path, f"cannot create files in {os.path.dirname(resolved.shown)}")
        return "atomic", None
    if not os.access(resolved.name, os.W_OK, dir_fd=resolved.directory):
        raise _error(errno.EACCES, path)
    if not stat.S_ISREG(status.st_mode):
        return "direct", None
    # Several links: a rename would split them. An unwritable directory: no temporary file possible.
    if status.st_nlink > 1 or not _directory_writable(resolved):
        return "in_place", None
    return "atomic", stat.S_IMODE(status.st_mode)


def _as_output_error(error: OSError, path: str) -> OutputError:
    if isinstance(error, OutputError) and error.filename == path:
        return error
    return _error(error.errno or errno.EIO, path, error.strerror or str(error))


def _check_stdout() -> None:
    if sys.stdout is None:  # started with standard output closed (``>&-``)
        raise _error(errno.EBADF, STDOUT, "standard output is closed")


def plan_output(path: str | os.PathLike) -> OutputPlan:
    """Check that ``path`` can be written and how; call it before the work.

    Raises:
        OutputError: naming ``path``: its directory is missing or not
            writable, it is a directory, it is not writable, a symlink or
            file on the way is another user's in a sticky world-writable
            directory, standard output is closed.
    """
    path = os.fspath(path)
    if path == STDOUT:
        _check_stdout()
        return OutputPlan(path, None, "stdout", None)
    try:
        resolved = resolve_output(path)
        try:
            mode, file_mode = _decide(resolved, path)
        finally:
            os.close(resolved.directory)
    except OSError as error:
        raise _as_output_error(error, path) from None
    return OutputPlan(path, resolved.shown, mode, file_mode)


def write_output(plan: OutputPlan | str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to the plan's path, checking the path again (see the module docstring).

    Args:
        plan: a :func:`plan_output` result, or a path (planned now).
        data: the whole contents.

    Raises:
        OutputError: naming the path the caller gave.
    """
    if not isinstance(plan, OutputPlan):
        plan = plan_output(plan)
    if plan.mode == "stdout":
        write_stdout(data)
        return
    try:
        resolved = resolve_output(plan.path)
        try:
            mode, file_mode = _decide(resolved, plan.path)
            if mode == "atomic":
                owner = None if resolved.status is None else (resolved.status.st_uid, resolved.status.st_gid)
                replace_atomically(resolved.directory, resolved.name, data, mode=file_mode, owner=owner)
            else:
                _write_existing(resolved, data, plan.path)
        finally:
            os.close(resolved.directory)
    except OSError as error:
        raise _as_output_error(error, plan.path) from None


def _write_existing(resolved: ResolvedOutput, data: bytes, path: str) -> None:
    """Write into the file that is there (in place, or a device or FIFO), never through a link swapped in."""
    try:
        descriptor = os.open(resolved.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=resolved.directory)
    except OSError as error:
        if error.errno == errno.ELOOP:
            why = f"{resolved.shown} became a symlink after it was checked; not followed"
            raise _error(errno.ELOOP, path, why) from None
        raise
    try:
        opened = os.fstat(descriptor)
        if (opened.st_dev, opened.st_ino) != (resolved.status.st_dev, resolved.status.st_ino):
            raise _error(errno.EAGAIN, path, f"{resolved.shown} was replaced after it was checked; not written")
        if stat.S_ISREG(opened.st_mode):
            os.ftruncate(descriptor, 0)  # only now that it is known to be the file checked
        write_all(descriptor, data)
    finally:
        os.close(descriptor)


def write_stdout(data: bytes) -> None:
    """Write ``data`` to standard output, to the end.

    Python's buffered writer can report a write to a pipe whose reader has
    gone as complete; the bytes go to the descriptor with ``os.write`` instead,
    after what Python buffered.

    Raises:
        OutputError: naming ``"-"``: standard output is closed (``EBADF``), or its
            reader went away before the end (``EPIPE``).
    """
    _check_stdout()
    stream = sys.stdout
    try:
        stream.flush()
        try:
            descriptor = stream.fileno()
        except (OSError, ValueError):  # a stream without a descriptor (a test harness's capture)
            descriptor = None
        if descriptor is None:
            buffer = getattr(stream, "buffer", None)
            if buffer is None:
                stream.write(data.decode("utf-8"))
            else:
                buffer.write(data)
            stream.flush()
        else:
            write_all(descriptor, data)
    except OSError as error:
        why = {
            errno.EPIPE: "broken pipe: its reader exited before the end",
            errno.EBADF: "standard output is closed",
        }.get(error.errno, error.strerror)
        raise _error(error.errno or errno.EIO, STDOUT, why) from None
