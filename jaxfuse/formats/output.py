"""Writing a command's output file without harming what is there: checked before the work, atomic where it can be, through links, direct to devices and stdout.

What happens at the output path, by what is there (``os.stat`` follows symlinks,
so a symlink is judged, and written, by its target):

* ``-``: standard output.
* nothing yet: a temporary file in the target's directory, renamed into
  place (``os.replace``) once complete, with the mode a plain ``open()`` would
  give (``0o666`` less the umask).
* a regular file with one link: the same atomic replace, keeping the file's
  mode (a private ``0600`` file stays private) and, where permitted, its owner.
* a regular file with several hard links: written in place (truncated, then
  written), so every link sees the new contents. A rename would split the
  links: the path would get a new file and the others keep the old one. In
  place is not atomic: a crash mid-write leaves a partial file (the whole
  text is ready before the file is opened, so the window is one write).
* anything else that is not a directory (a character device such as
  ``/dev/null``, a FIFO, a socket): opened and written directly; never
  replaced by a regular file.

Every error is an ``OSError`` whose ``filename`` is the path the caller gave
(not the resolved target nor the temporary file). The temporary file is
removed on any exception, ``KeyboardInterrupt`` and ``SystemExit`` included
(``jaxfuse fuse`` turns SIGTERM into ``SystemExit``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import sys
import tempfile
from typing import NamedTuple

STDOUT = "-"


class OutputPlan(NamedTuple):
    """How :func:`write_output` will write, decided by :func:`plan_output`.

    Attributes:
        path: the path the caller gave (what errors name).
        target: the path written (symlinks resolved); None for stdout.
        mode: ``"stdout"``, ``"atomic"``, ``"in_place"`` or ``"direct"``.
        file_mode: the permission bits to give a new or replacing file, or None.
    """

    path: str
    target: str | None
    mode: str
    file_mode: int | None


def _error(number: int, path: str, why: str | None = None) -> OSError:
    return OSError(number, why or os.strerror(number), path)


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def plan_output(path: str | os.PathLike) -> OutputPlan:
    """Check that ``path`` can be written and decide how; call it before the work.

    Raises:
        OSError: naming ``path``: its directory is missing or not writable,
            it is a directory, or it is not writable.
    """
    path = os.fspath(path)
    if path == STDOUT:
        return OutputPlan(path, None, "stdout", None)
    target = os.path.realpath(path)
    try:
        status = os.stat(target)
    except FileNotFoundError:
        status = None
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise _error(errno.EISDIR, path)
    if status is not None and not stat.S_ISREG(status.st_mode):
        if not os.access(target, os.W_OK):
            raise _error(errno.EACCES, path)
        return OutputPlan(path, target, "direct", None)
    if status is not None and not os.access(target, os.W_OK):
        raise _error(errno.EACCES, path)
    if status is not None and status.st_nlink > 1:
        return OutputPlan(path, target, "in_place", None)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise _error(errno.ENOENT, path, f"no such directory: {os.path.dirname(path) or directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        if status is not None:  # the file is writable, its directory is not: no temporary file possible
            return OutputPlan(path, target, "in_place", None)
        raise _error(errno.EACCES, path, f"cannot create files in {os.path.dirname(path) or directory}")
    file_mode = stat.S_IMODE(status.st_mode) if status is not None else _umask_mode()
    return OutputPlan(path, target, "atomic", file_mode)


def write_output(plan: OutputPlan | str | os.PathLike, data: bytes) -> None:
    """Write ``data`` as :func:`plan_output` decided (planning now if given a path).

    Raises:
        OSError: naming the path the caller gave.
    """
    if not isinstance(plan, OutputPlan):
        plan = plan_output(plan)
    if plan.mode == "stdout":
        stream = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
        if stream is None:  # a text-only stdout (e.g. captured by a test harness)
            sys.stdout.write(data.decode("utf-8"))
        else:
            stream.write(data)
        sys.stdout.flush()
        return
    try:
        if plan.mode == "atomic":
            _replace_atomically(plan, data)
        else:
            with open(plan.target, "wb") as stream:
                stream.write(data)
    except OSError as error:
        raise OSError(error.errno, error.strerror, plan.path) from None


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM back (delivered on exit): a handler raising between the creation of
    the temporary file and the assignment of its name would leave it behind, unnamed."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _replace_atomically(plan: OutputPlan, data: bytes) -> None:
    temporary = None
    try:
        with _signals_held():
            handle, temporary = tempfile.mkstemp(prefix=".jaxfuse-", suffix=".json.tmp", dir=os.path.dirname(plan.target))
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            os.fchmod(stream.fileno(), plan.file_mode)
            _keep_owner(stream.fileno(), plan.target)
        os.replace(temporary, plan.target)
        temporary = None  # a signal before this line: the unlink below finds nothing, and says nothing
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass


def _keep_owner(descriptor: int, target: str) -> None:
    """Give the new file the old one's owner and group, where permitted (root, or the same user)."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        return
    try:
        os.fchown(descriptor, old.st_uid, old.st_gid)
    except OSError:
        pass  # not permitted: the new file keeps the writer's owner, like any rewritten file
