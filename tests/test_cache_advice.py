"""What README, the docs and ``--help`` say about the compilation cache is what it does (issue 20).

The cache is on by default, so no text may tell users to set JAX's cache
directory to keep compiled programs; the directory the texts name is the one
used; the first-run notice is the commands' (library calls compile silently).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxfuse.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIRECTORY_TEXT = "$XDG_CACHE_HOME/jaxfuse/jax"
# Advice to set JAX's own cache directory, which jaxfuse's default cache makes unnecessary.
STALE_ADVICE = re.compile(r"\bset(?:ting)?\s+(?:JAX's\s+)?`?(?:JAX_COMPILATION_CACHE_DIR|jax_compilation_cache_dir)\b")


def help_text(command: str) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
        main.main([command, "--help"])
    return output.getvalue()


def texts() -> dict[str, str]:
    """README, every documentation page and every command's --help."""
    found = {"README.md": (ROOT / "README.md").read_text()}
    found |= {str(page.relative_to(ROOT)): page.read_text() for page in (ROOT / "docs").rglob("*.md")}
    found |= {f"jaxfuse {name} --help": help_text(name) for name in main._SUBCOMMANDS}
    return found


def clean_environment(**changes: str) -> dict[str, str]:
    """This environment without any JAX or jaxfuse cache setting, plus ``changes``."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("JAX_COMPILATION_CACHE_DIR", "JAXFUSE_COMPILATION_CACHE")}
    return {**environment, "PYTHONPATH": str(ROOT), **changes}


def test_no_text_tells_users_to_set_the_jax_cache_directory():
    stale = {where: match.group(0) for where, text in texts().items() if (match := STALE_ADVICE.search(text))}
    assert not stale, f"the cache is on by default; stale advice in {stale}"


def test_the_texts_name_the_default_directory_and_the_off_switch():
    for where in ("README.md", "docs/concepts/compilation-cache.md", "jaxfuse fuse --help"):
        text = " ".join(texts()[where].split())
        assert DEFAULT_DIRECTORY_TEXT in text and "JAXFUSE_COMPILATION_CACHE=0" in text, where


def test_the_first_run_notice_is_said_to_be_the_commands():
    """Only the ``jaxfuse`` commands print it; a library call compiles without a word (checked below)."""
    for where in ("README.md", "docs/concepts/compilation-cache.md"):
        text = " ".join(texts()[where].split())
        notices = [s for s in re.split(r"(?<=[.;)])\s", text) if "stderr" in s and "first" in s]
        assert notices and all("command" in sentence for sentence in notices), (where, notices)
        assert re.search(r"library calls compile (silently|without a message)", text), where


LIBRARY_CALL = """
import json, sys
import numpy as np
import jaxfuse
jaxfuse.fuse_gaussian(np.ones((2, 3, 2), np.float32), np.zeros((2, 3), np.float32))
status = jaxfuse.compilation_cache_status()
print(json.dumps([status.directory and str(status.directory), status.source]))
"""


def test_the_cache_is_on_by_default_where_the_texts_say_and_library_calls_are_silent(tmp_path):
    completed = subprocess.run([sys.executable, "-c", LIBRARY_CALL], capture_output=True, text=True, timeout=300,
                               env=clean_environment(XDG_CACHE_HOME=str(tmp_path)))
    assert completed.returncode == 0, completed.stderr
    directory, source = json.loads(completed.stdout.strip().splitlines()[-1])
    assert Path(directory) == tmp_path / "jaxfuse" / "jax" and source == "jaxfuse"
    assert any((tmp_path / "jaxfuse" / "jax").iterdir()), "nothing was kept in the cache"
    assert "first run" not in completed.stderr and "compiling" not in completed.stderr


def test_the_off_switch_turns_it_off(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", "import jaxfuse; print(jaxfuse.compilation_cache_status().directory)"],
        capture_output=True, text=True, timeout=300,
        env=clean_environment(XDG_CACHE_HOME=str(tmp_path), JAXFUSE_COMPILATION_CACHE="0"),
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "None" and not (tmp_path / "jaxfuse").exists()
