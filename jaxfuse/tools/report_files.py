"""Where ``jaxfuse study`` and ``jaxfuse bench`` write their reports, and what they need installed to write them.

Reports go to a per-user directory by default, never into the current
directory: run from a clone, the old default (``benchmarks/results``) silently
replaced the committed reports. ``--output-dir`` chooses another place (the
repository's ``benchmarks/results`` included, on purpose: ``benchmarks/gpu.sh``
passes it).

The optional dependencies (matplotlib for the plots, scipy for the bench's
Student-t baseline) are checked before any work, so a missing one costs one
line naming the extra to install or the flag that avoids it, not a traceback
after minutes of measuring.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

DEFAULT_REPORT_DIR_TEXT = "$XDG_DATA_HOME/jaxfuse/reports, else ~/.local/share/jaxfuse/reports"
"""The default report directory as ``--help`` shows it (the resolved path depends on the user)."""


def default_report_directory() -> Path:
    """``$XDG_DATA_HOME/jaxfuse/reports``, else ``~/.local/share/jaxfuse/reports``.

    A relative ``XDG_DATA_HOME`` is ignored, as the XDG base directory
    specification asks: it would put reports wherever the command happens to run.

    Example:
        >>> from jaxfuse.tools.report_files import default_report_directory
        >>> default_report_directory().parts[-2:]
        ('jaxfuse', 'reports')
    """
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "jaxfuse" / "reports"


def report_directory(chosen: str | os.PathLike | None) -> Path:
    """The directory a report goes to: ``chosen`` (``--output-dir``), else :func:`default_report_directory`."""
    return default_report_directory() if chosen is None else Path(os.fspath(chosen)).expanduser()


class Requirement(NamedTuple):
    """An optional module a command needs for part of its work.

    Attributes:
        module: the module to import, e.g. ``"matplotlib"``.
        purpose: what needs it, for the message (``"study.png"``).
        avoided_by: the option that skips that part (``"--no-plot"``).
    """

    module: str
    purpose: str
    avoided_by: str


def missing_requirements_message(command: str, requirements: Iterable[Requirement], extra: str) -> str | None:
    """One line: what ``command`` lacks, the extra that installs it, the options that avoid it (None: nothing).

    Only looks the modules up (nothing is imported), so it costs nothing before the work.

    Example:
        >>> from jaxfuse.tools.report_files import Requirement, missing_requirements_message
        >>> needs = [Requirement("not_a_module_here", "study.png", "--no-plot")]
        >>> print(missing_requirements_message("jaxfuse study", needs, "plot"))
        jaxfuse study: error: needs not_a_module_here (study.png): pip install "jaxfuse[plot]", or pass --no-plot
        >>> missing_requirements_message("jaxfuse study", [Requirement("json", "x", "--y")], "plot") is None
        True
    """
    missing = [need for need in requirements if importlib.util.find_spec(need.module) is None]
    if not missing:
        return None
    needs = " and ".join(f"{need.module} ({need.purpose})" for need in missing)
    avoid = " and ".join(need.avoided_by for need in missing)
    return f'{command}: error: needs {needs}: pip install "jaxfuse[{extra}]", or pass {avoid}'
