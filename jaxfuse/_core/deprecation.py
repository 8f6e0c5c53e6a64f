"""Deprecated names that keep working for one release, with a warning that points at the caller's line."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn_deprecated(message: str) -> None:
    """Warn with ``DeprecationWarning``, attributed to the first caller outside jaxfuse.

    Python shows a ``DeprecationWarning`` by default only when it is attributed
    to ``__main__``, so the warning must name the user's line, however deep in
    jaxfuse it is raised (``detect`` -> ``fuse_proposals`` -> the option check).
    """
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the frame that called this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def renamed_option(options: dict[str, Any], old: str, new: str, where: str) -> dict[str, Any]:
    """``options`` with ``old`` renamed to ``new`` (a warning says so); both given is an error.

    Args:
        options: keyword options as passed (not modified).
        old: the deprecated name.
        new: the name that replaces it.
        where: the function or method, for the messages.

    Returns:
        A new dict holding ``new`` where ``old`` was.

    Raises:
        TypeError: both names given.
    """
    if old not in options:
        return options
    if new in options:
        raise TypeError(f"{where}: pass `{new}` only (`{old}` is its deprecated name), not both")
    warn_deprecated(f"{where}: `{old}` is deprecated, use `{new}` (the same value; `{old}` goes in the next release)")
    renamed = {key: value for key, value in options.items() if key != old}
    renamed[new] = options[old]
    return renamed
