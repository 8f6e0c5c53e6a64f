"""MkDocs hooks of the jaxfuse site: the CLI reference from the argument parsers, the benchmark reports from benchmarks/.

* ``<!-- jaxfuse-help: COMMAND -->`` in a page becomes the text ``jaxfuse COMMAND --help``
  prints (``<!-- jaxfuse-help -->`` alone: ``jaxfuse --help``), taken from
  :func:`jaxfuse.cli.main.main` itself at build time, so the page cannot drift from the parsers.
* ``benchmarks/README.md`` becomes the page ``benchmarks/analysis.md`` and every
  ``benchmarks/results/*.md`` report (with its PNG plots) a page under
  ``benchmarks/results/``; ``<!-- jaxfuse-benchmark-reports -->`` lists those reports.
  A plot a report names but nobody committed (the H200 run's) is replaced by a
  note, so the report still builds strictly.

The site documents the checkout it is built from: its root goes first on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
HELP_COLUMNS = 100
"""Width the help is rendered at (argparse wraps to ``$COLUMNS``); tests/test_docs.py compares at the same width."""

HELP_MARKER = re.compile(r"<!--\s*jaxfuse-help(?::\s*(?P<command>[\w-]+))?\s*-->")
REPORTS_MARKER = "<!-- jaxfuse-benchmark-reports -->"
IMAGE_LINK = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<target>[^)\s]+)\)")


def on_config(config, **kwargs):
    if str(ROOT) not in sys.path[:1]:
        sys.path.insert(0, str(ROOT))
    return config


# ---------------------------------------------------------------------- CLI reference


def help_text(command: str | None) -> str:
    """What ``jaxfuse [COMMAND] --help`` prints at :data:`HELP_COLUMNS` columns."""
    from jaxfuse.cli.main import main

    argv = ([command] if command else []) + ["--help"]
    output = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        with contextlib.redirect_stdout(output):
            try:
                main(argv)
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    raise RuntimeError(f"`jaxfuse {' '.join(argv)}` exited with {exit_.code}") from None
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return output.getvalue()


def _help_block(match: re.Match) -> str:
    return "```text\n" + help_text(match.group("command")).rstrip("\n") + "\n```"


# ---------------------------------------------------------------------- benchmark reports


def _without_missing_images(text: str, folder: Path) -> str:
    def replace(match: re.Match) -> str:
        target = match.group("target")
        if "://" in target or (folder / target).is_file():
            return match.group(0)
        return f"*(plot `{target}` was not committed with this report)*"

    return IMAGE_LINK.sub(replace, text)


def _report_files() -> list[Path]:
    return sorted((BENCHMARKS / "results").glob("*.md"))


def on_files(files: Files, config, **kwargs) -> Files:
    analysis = BENCHMARKS / "README.md"
    if analysis.is_file():
        files.append(File.generated(config, "benchmarks/analysis.md", content=analysis.read_text(encoding="utf-8")))
    for report in _report_files():
        text = _without_missing_images(report.read_text(encoding="utf-8"), report.parent)
        files.append(File.generated(config, f"benchmarks/results/{report.name}", content=text))
    for image in sorted((BENCHMARKS / "results").glob("*.png")):
        files.append(File.generated(config, f"benchmarks/results/{image.name}", abs_src_path=str(image)))
    return files


def _report_title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def _report_list() -> str:
    return "\n".join(f"- [{_report_title(path)}](results/{path.name})" for path in _report_files())


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    markdown = HELP_MARKER.sub(_help_block, markdown)
    return markdown.replace(REPORTS_MARKER, _report_list())
