"""The README stays a short front page whose commands are the ones CI runs and whose figures are dated and sourced."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SETUP_AND_DEMO = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && jaxfuse demo"
SETUP_AND_TEST = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q -n auto'  # noqa: E501 (the exact command)
LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?:#[^)]*)?\)")


def bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def test_readme_is_short():
    assert len(README.splitlines()) <= 160, "move detail into docs/ (the README is the front page)"


def test_the_two_commands_for_a_fresh_machine_are_unchanged():
    blocks = bash_blocks(README)
    assert SETUP_AND_DEMO in blocks and SETUP_AND_TEST in blocks


def test_the_test_command_is_what_ci_runs():
    """.ci/run: a fresh venv, activated, the project with the test extra, then the README's pytest command."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    steps = [step.strip() for step in SETUP_AND_TEST.split("&&")]
    venv, activate, install, pytest_command = steps
    assert venv in ci and activate in ci
    assert pytest_command in ci, f".ci/run does not run `{pytest_command}`"
    installs = [shlex.split(line) for line in ci if " pip install " in f" {line} "]
    wanted = shlex.split(install)[-2:]  # -e .[test]
    assert any(words[-2:] == wanted for words in installs), f".ci/run does not install {wanted}"
    assert ci.index(venv) < ci.index(activate) < ci.index(pytest_command)


def test_the_demo_command_exists():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'jaxfuse = "jaxfuse.cli.main:console_main"' in pyproject
    from jaxfuse.cli.main import _SUBCOMMANDS

    assert "demo" in _SUBCOMMANDS


def test_relative_links_point_at_files():
    missing = [m.group("target") for m in LINK.finditer(README)
               if "://" not in m.group("target") and not (ROOT / m.group("target")).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_every_quoted_report_is_dated_and_committed():
    """A figure's source is a committed report, linked as "[report](benchmarks/results/X.md) of YYYY-MM-DD"."""
    quoted = re.findall(r"\]\((benchmarks/results/[\w.-]+\.md)\) of\s+(\d{4}-\d{2}-\d{2})", README)
    assert len(quoted) >= 2
    for report, date in quoted:
        text = (ROOT / report).read_text()
        header = "\n".join(text.splitlines()[:8])
        assert date in header, f"{report} is not of {date}"
    reports = set(re.findall(r"\]\((benchmarks/results/[\w.-]+\.md)\)", README))
    assert reports == {report for report, _ in quoted}, "every report the README quotes names its date"
