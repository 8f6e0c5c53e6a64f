"""The tree stays lint-clean: ruff's lint rules as configured in pyproject.toml (pyflakes, pycodestyle, import order, pyupgrade)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PATHS = ["jaxfuse", "tests", "benchmarks", "docs"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it is in the test extra)")
    return subprocess.run([ruff, *args, *PATHS], cwd=REPOSITORY, capture_output=True, text=True)


def test_ruff_lint_is_clean():
    result = _ruff("check", "--no-cache", "--output-format", "concise")
    assert result.returncode == 0, result.stdout + result.stderr
