"""What the commands say: every option with help and its default, ``--version``, plurals, the demo's executables."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import jax
import numpy as np
import pytest

import jaxfuse
from jaxfuse.cli import main
from jaxfuse.cli.wording import counted
from jaxfuse.tools import demo

FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                argparse._HelpAction, argparse._VersionAction)
# Optional files: absent means "not written" / "not drawn", which the help says in other words.
NO_DEFAULT_TO_SHOW = {("evaluate", "--json"), ("plot", "--gt"), ("plot", "--fused")}


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    module_name = main._SUBCOMMANDS[name][0]
    parser = argparse.ArgumentParser(prog=f"jaxfuse {name}")
    __import__(module_name, fromlist=["configure"]).configure(parser)
    return parser


def default_texts(default) -> set[str]:
    """How a numeric default may read in the help ("0.2", "10" or "10.0", "0.05 0.2 1.0"); empty for other defaults."""
    numbers = default if isinstance(default, list) else [default]
    if not numbers or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        return set()
    return {" ".join(map(str, numbers)), " ".join(f"{v:g}" for v in numbers)}


@pytest.mark.parametrize("command", sorted(main._SUBCOMMANDS))
def test_every_option_has_help_and_says_its_default(command):
    problems = []
    for action in subcommand_parser(command)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        if not action.help:
            problems.append(f"{name}: no help")
            continue
        if not action.option_strings or action.required or isinstance(action, FLAG_ACTIONS):
            continue
        if (command, name) not in NO_DEFAULT_TO_SHOW and "default" not in action.help.lower():
            problems.append(f"{name}: the help does not say the default")
        shown = default_texts(action.default)
        if shown and not any(text in action.help for text in shown):
            problems.append(f"{name}: default {action.default} is not the one the help quotes ({action.help!r})")
    assert not problems, f"jaxfuse {command}: " + "; ".join(problems)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxfuse {jaxfuse.__version__}"


def test_counts_take_the_number_of_their_noun():
    assert counted(1, "video") == "1 video"
    assert counted(0, "video") == "0 videos"
    assert counted(np.int64(2_500), "batch", "batches") == "2,500 batches"
    assert counted(1, "class", "classes") == "1 class"


def test_fuse_summary_of_one_video_is_singular(tmp_path, capsys):
    source = tmp_path / "in.json"
    source.write_text(json.dumps({"results": {"v": [{"label": "Jump", "score": 0.9, "segment": [0.0, 10.0]}]}}))
    assert main.main(["fuse", str(source), "-o", str(tmp_path / "out.json")]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 detection of 1 video (1 item)" in summary and "1 batch," in summary, summary


@pytest.fixture
def fresh_compilation_cache(tmp_path):
    """An empty persistent cache that stores every program (however fast it compiled), put back afterwards."""
    before = jaxfuse.compilation_cache_status()
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jaxfuse.set_compilation_cache(tmp_path / "cache")
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
    jaxfuse.set_compilation_cache(before.directory)


def test_demo_says_whether_it_compiled_or_loaded_its_executables(fresh_compilation_cache, monkeypatch):
    monkeypatch.setattr(demo, "TEMPLATES", ("gaussian", "uniform"))  # two programs make the point
    arguments = ["demo", "--groups", "37", "--members", "7", "--repeats", "1"]  # a shape no other test uses

    def executables_line() -> str:
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            assert main.main(arguments) == 0
        return next(line for line in output.getvalue().splitlines() if line.startswith("executables:"))

    assert executables_line().endswith("executables: 2 (one per template for this shape and dtype): 2 compiled")
    jax.clear_caches()  # a new process, as far as these programs go: they come from the disk cache now
    assert executables_line().endswith(": 2 loaded from the compilation cache")
