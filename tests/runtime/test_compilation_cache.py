"""The persistent compilation cache jaxfuse turns on: where it goes, what it stores, and who overrides it.

Each case runs in a fresh interpreter (the settings are read at ``import
jaxfuse``), with the cache in a temporary directory, never the real home.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxfuse
from jaxfuse._runtime import compilation_cache as compilation_cache_module

REPOSITORY = Path(__file__).resolve().parents[2]

# One small program with a while loop (grouping and fusion): it takes well over
# MIN_COMPILE_TIME_SECS to compile, so the cache must store it. The script prints
# the status, the JAX settings and how many programs JAX read from the cache.
_SCRIPT_HEAD = """
import json, sys
import jax
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kwargs: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
import jaxfuse
import numpy as np
"""
_FUSE = """
segments = np.array([[[0.0, 9.0], [1.0, 9.0], [20.0, 30.0]]], np.float32)
fused = jaxfuse.fuse_proposals(segments, np.array([[0.9, 0.5, 0.7]], np.float32), temperature=0.2)
assert int(fused.count[0]) == 2
"""
_SCRIPT_TAIL = """
from jaxfuse._proposals.group_fusion import group_and_fuse
status = jaxfuse.compilation_cache_status()
print("RESULT " + json.dumps({
    "directory": status.directory, "source": status.source, "reason": status.reason,
    "jax_dir": jax.config.jax_compilation_cache_dir,
    "min_compile_time": jax.config.jax_persistent_cache_min_compile_time_secs,
    "min_entry_size": jax.config.jax_persistent_cache_min_entry_size_bytes,
    "hits": len(hits),
    "loaded": group_and_fuse.stored_calls, "compiled": group_and_fuse.compiled_calls,
    "segments": np.asarray(fused.segments).tolist() if "fused" in globals() else None,
}))
"""


def _run(tmp_path, *, env: dict[str, str], body: str = _FUSE) -> dict:
    """Run the script with ``env`` on top of a clean environment (no inherited cache settings)."""
    environment = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"
                   and not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXFUSE_COMPILATION"))}
    environment.update(PYTHONPATH=str(REPOSITORY), HOME=str(tmp_path / "home"), JAX_PLATFORMS="cpu", **env)
    completed = subprocess.run([sys.executable, "-c", _SCRIPT_HEAD + textwrap.dedent(body) + _SCRIPT_TAIL],
                               capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.split("RESULT ", 1)[1])


def _entries(directory: Path) -> list[Path]:
    return [p for p in directory.glob("*-cache")] if directory.is_dir() else []


def test_programs_are_stored_then_read_by_the_next_process(tmp_path):
    cache = tmp_path / "cache"
    first = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(cache)})
    assert first["directory"] == first["jax_dir"] == str(cache) and first["source"] == "jaxfuse"
    assert first["min_compile_time"] == compilation_cache_module.MIN_COMPILE_TIME_SECS
    assert first["min_entry_size"] == -1
    stored = _entries(cache)
    assert first["hits"] == 0 and first["loaded"] == 0 and first["compiled"] == 1  # an empty cache: all compiled
    executables = sorted((cache / "jaxfuse-executables").glob("*.bin"))
    assert len(executables) == 1  # the grouping + fusion program, kept whole
    second = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(cache)})
    # Every stored program loaded, none compiled again: the grouping + fusion program from jaxfuse's
    # executable store (no tracing), the rest from JAX's cache.
    assert second["loaded"] == 1 and second["compiled"] == 0
    assert second["hits"] + second["loaded"] >= len(stored)
    # A small program under JAX's store threshold the first time may pass it on a loaded machine.
    assert set(stored) <= set(_entries(cache))
    assert sorted((cache / "jaxfuse-executables").glob("*.bin")) == executables
    assert second["segments"] == first["segments"]


def test_turned_off_by_the_environment_variable(tmp_path):
    result = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": "0", "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert result["directory"] is None and result["jax_dir"] is None and result["source"] == "off"
    assert result["min_compile_time"] == 1.0  # JAX's own thresholds untouched
    assert not (tmp_path / "xdg").exists()


def test_configuring_jax_after_import_wins(tmp_path):
    later = tmp_path / "later"
    result = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(tmp_path / "ours")},
                  body=f"jax.config.update('jax_compilation_cache_dir', {str(later)!r})\n" + _FUSE)
    assert result["directory"] == str(later) and result["source"] == "user"
    # The fusion program is kept whole in jaxfuse's store beside JAX's entries, in the user's directory.
    assert list((later / "jaxfuse-executables").glob("*.bin"))
    assert not _entries(tmp_path / "ours") and not (tmp_path / "ours" / "jaxfuse-executables").exists()


@pytest.fixture
def restore_cache_settings():
    """Put back this process's cache settings after a test that changes them."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes", "jax_enable_compilation_cache")
    saved = {name: getattr(jax.config, name) for name in names}
    status = compilation_cache_module._status
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache_module._status = status
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()



@pytest.fixture
def as_at_import(monkeypatch, restore_cache_settings):
    """JAX as a fresh process has it (no cache directory, default thresholds) and no jaxfuse variables set.

    Returns a function that sets the environment, runs what ``import jaxfuse``
    runs, and returns its status.
    """
    for name in ("JAXFUSE_COMPILATION_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    def enable(**environment):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return compilation_cache_module.enable_default_compilation_cache()

    return enable


def test_default_directory_is_per_user(tmp_path, monkeypatch, as_at_import):
    status = as_at_import(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert status == jaxfuse.CompilationCacheStatus(str(tmp_path / "xdg" / "jaxfuse" / "jax"), "jaxfuse", "")
    assert jax.config.jax_compilation_cache_dir == status.directory and Path(status.directory).is_dir()
    assert jax.config.jax_persistent_cache_min_compile_time_secs == compilation_cache_module.MIN_COMPILE_TIME_SECS
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache_module.default_cache_directory() == tmp_path / "home" / ".cache" / "jaxfuse" / "jax"


@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_off_values_of_the_environment_variable(tmp_path, as_at_import, value):
    status = as_at_import(JAXFUSE_COMPILATION_CACHE=value, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert status.directory is None and status.source == "off" and jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
    assert not (tmp_path / "xdg").exists()


def test_the_users_jax_settings_are_left_alone(tmp_path, as_at_import):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
    status = as_at_import(JAXFUSE_COMPILATION_CACHE=str(tmp_path / "ours"))
    assert status == jaxfuse.CompilationCacheStatus(str(tmp_path / "theirs"), "user", "")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0  # their thresholds, not ours
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0
    assert not (tmp_path / "ours").exists()
    # A threshold the user set stays theirs even when jaxfuse picks the directory.
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 7.0)
    status = as_at_import(JAXFUSE_COMPILATION_CACHE=str(tmp_path / "ours"))
    assert status.directory == str(tmp_path / "ours")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 7.0
    # JAX's cache switched off by the user: nothing turned on.
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)
    status = as_at_import(JAXFUSE_COMPILATION_CACHE=str(tmp_path / "other"))
    assert status.directory is None and status.source == "off" and not (tmp_path / "other").exists()


def test_unwritable_directory_falls_back_silently(tmp_path, as_at_import, capsys):
    # A path below a regular file cannot be created, whoever runs the test (root ignores permission bits).
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = as_at_import(JAXFUSE_COMPILATION_CACHE=str(blocker / "cache"))
    assert status.directory is None and status.source == "unavailable" and "cannot create" in status.reason
    assert jax.config.jax_compilation_cache_dir is None
    assert capsys.readouterr() == ("", "")  # silent at import; the CLI says it (below)
    fused = jaxfuse.fuse_groups(np.array([[[1.0], [3.0]]], np.float32), np.zeros((1, 2), np.float32),
                                np.ones((1, 2), bool), temperature=0.2)
    np.testing.assert_allclose(np.asarray(fused.location), [[2.0]])


def test_set_compilation_cache_moves_and_turns_off(tmp_path, restore_cache_settings):
    status = jaxfuse.set_compilation_cache(tmp_path / "moved")
    assert status == jaxfuse.CompilationCacheStatus(str(tmp_path / "moved"), "set_compilation_cache", "")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "moved") and (tmp_path / "moved").is_dir()
    assert jaxfuse.compilation_cache_status() == status
    off = jaxfuse.set_compilation_cache(None)
    assert off.directory is None and off.source == "off" and jax.config.jax_compilation_cache_dir is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = jaxfuse.set_compilation_cache(blocker / "cache")
    assert bad.directory is None and bad.source == "unavailable" and jax.config.jax_compilation_cache_dir is None


def test_first_compilation_is_announced_once(tmp_path, restore_cache_settings, capsys):
    jaxfuse.set_compilation_cache(tmp_path / "cache")
    assert compilation_cache_module.announce_first_compilation(sys.stderr)
    assert "first run on this machine" in capsys.readouterr().err
    compilation_cache_module.mark_compiled()
    assert not compilation_cache_module.announce_first_compilation(sys.stderr)
    assert capsys.readouterr().err == ""
    jaxfuse.set_compilation_cache(None)  # turned off on purpose: nothing to say
    assert not compilation_cache_module.announce_first_compilation(sys.stderr)
    blocker = tmp_path / "file"
    blocker.write_text("")
    jaxfuse.set_compilation_cache(blocker / "cache")  # unusable: said every run, with the reason
    assert compilation_cache_module.announce_first_compilation(sys.stderr)
    assert "without a persistent cache (cannot create" in capsys.readouterr().err


def test_persistent_cache_disabled_restores_the_settings(tmp_path, restore_cache_settings):
    before = jaxfuse.set_compilation_cache(tmp_path / "cache")
    with compilation_cache_module.persistent_cache_disabled():
        assert jax.config.jax_compilation_cache_dir is None
        with compilation_cache_module.persistent_cache_disabled():  # nests
            assert jax.config.jax_compilation_cache_dir is None
        assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    assert jaxfuse.compilation_cache_status() == before


def test_the_cli_announces_the_first_compilation_once(tmp_path, restore_cache_settings, capsys):
    from jaxfuse.cli.main import main

    source = tmp_path / "detections.json"
    source.write_text(json.dumps({"results": {"v": [{"label": "a", "score": 0.9, "segment": [0.0, 9.0]},
                                                    {"label": "a", "score": 0.5, "segment": [1.0, 9.0]}]}}))
    jaxfuse.set_compilation_cache(tmp_path / "cache")
    assert main(["fuse", str(source), "-o", str(tmp_path / "out.json")]) == 0
    assert capsys.readouterr().err.count("first run on this machine") == 1
    assert main(["fuse", str(source), "-o", str(tmp_path / "out.json")]) == 0
    assert "first run" not in capsys.readouterr().err


def test_a_lost_executable_is_rebuilt_runnable_while_jax_holds_other_programs(tmp_path):
    """The store compiles without JAX's cache: an executable JAX loaded from disk would serialize without its code."""
    cache = tmp_path / "cache"
    body = "jax.jit(lambda x: x.cumsum() * 2)(np.ones(100, np.float32)).block_until_ready()\n" + _FUSE
    first = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(cache)}, body=body)
    for entry in (cache / "jaxfuse-executables").glob("*.bin"):
        entry.unlink()
    rebuilt = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(cache)}, body=body)
    assert rebuilt["compiled"] == 1 and rebuilt["hits"] >= 1  # JAX's cache was checked and in use
    loaded = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(cache)}, body=body)
    assert loaded["loaded"] == 1 and loaded["compiled"] == 0
    assert first["segments"] == rebuilt["segments"] == loaded["segments"]
