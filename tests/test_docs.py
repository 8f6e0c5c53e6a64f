"""The documentation site: it builds strictly, documents every public name, its CLI reference is ``--help``, its code runs.

The site is built once per session (``mkdocs build --strict`` into a temporary
directory, a few seconds) and the built pages are checked; the code of the
hand-written pages is run block by block, as a reader would paste it.
"""

from __future__ import annotations

import contextlib
import html
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import jaxfuse
from jaxfuse.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HELP_COLUMNS = 100  # docs/hooks/jaxfuse_docs.py renders the help at this width
DIRECTIVE = re.compile(r"^:::\s+(?P<path>[\w.]+)\s*$", re.MULTILINE)
FENCE = re.compile(r"^```(?P<language>\w*)[^\n]*\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)

needs_mkdocs = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("mkdocs", "material", "mkdocstrings_handlers.python")),
    reason='the site needs pip install -e ".[docs]"',
)


def documented_paths() -> set[str]:
    """The object paths of every ``::: path`` entry of the API pages."""
    return {m.group("path") for page in (DOCS / "api").glob("*.md") for m in DIRECTIVE.finditer(page.read_text())}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built strictly from this checkout (a broken reference, link or docstring fails the build)."""
    output = tmp_path_factory.mktemp("site")
    process = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(output)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return output


def _page_text(site: Path, page: str) -> str:
    """The text of a built page, tags removed and entities decoded (code blocks keep their whitespace)."""
    return html.unescape(re.sub(r"<[^>]+>", "", (site / page / "index.html").read_text()))


def test_every_public_name_has_an_api_entry():
    missing = sorted(name for name in jaxfuse.__all__ if f"jaxfuse.{name}" not in documented_paths())
    assert not missing, f"add `::: jaxfuse.<name>` entries to a page of docs/api/ for {missing}"


@needs_mkdocs
def test_site_renders_an_entry_for_every_public_name(site):
    built = "".join(page.read_text() for page in (site / "api").rglob("index.html"))
    anchors = set(re.findall(r'id="(jaxfuse\.[\w.]+)"', built))
    assert {f"jaxfuse.{name}" for name in jaxfuse.__all__} <= anchors
    assert documented_paths() <= anchors


def _help(argv: list[str], monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(HELP_COLUMNS))
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_:
        main.main(argv + ["--help"])
    assert exit_.value.code == 0
    return output.getvalue()


@needs_mkdocs
@pytest.mark.parametrize("command", [None, *main._SUBCOMMANDS])
def test_cli_reference_is_what_help_prints(site, command, monkeypatch):
    text = _help([command] if command else [], monkeypatch)
    assert text.strip() in _page_text(site, "cli"), f"docs/cli.md lacks or misrenders `jaxfuse {command or ''} --help`"


@needs_mkdocs
def test_benchmark_reports_and_their_plots_are_in_the_site(site):
    for report in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert (site / "benchmarks" / "results" / report.stem / "index.html").is_file(), report.name
    for plot in (ROOT / "benchmarks" / "results").glob("*.png"):
        assert (site / "benchmarks" / "results" / plot.name).read_bytes() == plot.read_bytes()
    overview = (site / "benchmarks" / "index.html").read_text()
    for report in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert f'href="results/{report.stem}/"' in overview, f"the benchmarks page does not list {report.name}"


def test_organisation_page_names_every_module_and_no_stale_one():
    """docs/organisation.md is the map of the package: every module has its row, every row a module."""
    package = Path(jaxfuse.__file__).parent
    text = (DOCS / "organisation.md").read_text()
    areas = {path.name for path in package.iterdir() if (path / "__init__.py").is_file()}
    named = {path for path in re.findall(r"`(\w+/[\w/]*\w+\.py)`", text) if path.split("/")[0] in areas}
    modules = {path.relative_to(package).as_posix() for path in package.rglob("*.py") if path.name != "__init__.py"}
    assert not named - modules, f"docs/organisation.md names modules that do not exist: {sorted(named - modules)}"
    # bench/'s modules are listed by name in one row (one per report section).
    missing = {m for m in modules - named if not (m.startswith("bench/") and f"`{Path(m).stem}`" in text)}
    assert not missing, f"add a row for {sorted(missing)} to docs/organisation.md"
    for area in areas:
        assert f"`{area}/" in text, f"docs/organisation.md does not describe the area {area}/"


# ---------------------------------------------------------------------- the pages' code runs


def _page_steps(page: Path) -> list[tuple[str, str]]:
    """``("python", code)`` and ``("jaxfuse", command line)`` steps of a page, in order."""
    steps = []
    for block in FENCE.finditer(page.read_text()):
        code, language = block.group("code"), block.group("language")
        if language == "python" and "(not run" not in code.splitlines()[0]:
            steps.append(("python", code))
        elif language == "bash":
            steps += [("jaxfuse", line.split("#")[0].strip()) for line in code.splitlines() if line.startswith("jaxfuse ")]
    return steps


CODE_PAGES = sorted(p.relative_to(DOCS).as_posix() for p in [*DOCS.glob("getting-started/*.md"), *DOCS.glob("concepts/*.md")])
SLOW_PAGES = {"getting-started/training.md", "getting-started/kernels.md", "getting-started/actionformer.md"}


@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p for p in CODE_PAGES]
)
def test_the_code_of_a_page_runs(page, tmp_path, monkeypatch, capsys):
    steps = _page_steps(DOCS / page)
    assert steps or page.startswith("concepts/"), f"{page} has no code to run"
    if any("import torch" in code for kind, code in steps if kind == "python"):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for kind, code in steps:
        if kind == "python":
            exec(compile(code, f"{page} (python block)", "exec"), namespace)  # noqa: S102 - the page is ours
        else:
            status = main.main(shlex.split(code)[1:])
            assert status == 0, f"`{code}` in {page} exited with {status}: {capsys.readouterr().err}"
