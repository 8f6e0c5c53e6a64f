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
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
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
    "extra": globals().get("extra"),
}))
"""


def _run(tmp_path, *, env: dict[str, str], body: str = _FUSE) -> dict:
    """Run the script with ``env`` on top of a clean environment (no inherited cache settings)."""
    environment = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"
                   and not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXFUSE_"))}
    environment.update(PYTHONPATH=str(REPOSITORY), HOME=str(tmp_path / "home"), JAX_PLATFORMS="cpu", **env)
    completed = subprocess.run([sys.executable, "-c", _SCRIPT_HEAD + textwrap.dedent(body) + _SCRIPT_TAIL],
                               capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {**json.loads(completed.stdout.split("RESULT ", 1)[1]), "stderr": completed.stderr}


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


def test_persistent_cache_disabled_leaves_the_settings_alone(tmp_path, restore_cache_settings):
    """It skips JAX's cache for this thread's compilations without touching the configuration (other threads see it)."""
    before = jaxfuse.set_compilation_cache(tmp_path / "cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    with compilation_cache_module.persistent_cache_disabled():
        with compilation_cache_module.persistent_cache_disabled():  # nests
            assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        jax.jit(lambda x: jnp.cumsum(x) * 3)(np.ones(7, np.float32)).block_until_ready()
        assert not _entries(tmp_path / "cache")  # compiled, not written
    jax.jit(lambda x: jnp.cumsum(x) * 5)(np.ones(7, np.float32)).block_until_ready()
    assert len(_entries(tmp_path / "cache")) == 1  # outside, JAX's cache is in use as before
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    assert jaxfuse.compilation_cache_status() == before


def test_without_a_thread_bypass_overlapping_blocks_restore_the_setting(tmp_path, monkeypatch,
                                                                      restore_cache_settings):
    """Another jax (no per-thread hook): the directory is unset while any thread is inside, restored by the last."""
    import threading

    jaxfuse.set_compilation_cache(tmp_path / "cache")
    monkeypatch.setattr(compilation_cache_module, "bypass_available", lambda: False)
    entered, leave = threading.Barrier(3), [threading.Event(), threading.Event()]

    def inside(index):
        with compilation_cache_module.persistent_cache_disabled(), compilation_cache_module.persistent_cache_disabled():
            entered.wait()
            leave[index].wait()

    threads = [threading.Thread(target=inside, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    entered.wait()
    assert jax.config.jax_compilation_cache_dir is None
    leave[0].set()  # the first in leaves first: an unguarded save/restore would put back None after the second
    threads[0].join()
    assert jax.config.jax_compilation_cache_dir is None
    leave[1].set()
    threads[1].join()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")


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


# A small jaxfuse call (one Gaussian fit of two members), for cases that need some compilation, not a big one.
_SMALL = """
small = jaxfuse.fuse_groups(np.array([[[1.0], [3.0]]], np.float32), np.zeros((1, 2), np.float32),
                            np.ones((1, 2), bool), temperature=0.2)
assert np.allclose(np.asarray(small.location), [[2.0]])
"""


def test_import_changes_no_setting_and_the_first_jaxfuse_call_sets_the_cache_up(tmp_path):
    """Issue 17: no side effect at import; the cache still serves jaxfuse even after the user compiled first."""
    cache = tmp_path / "cache"
    body = f"""
import os
extra = {{"jax_dir": jax.config.jax_compilation_cache_dir, "exists": os.path.exists({str(cache)!r}),
          "min_compile_time": jax.config.jax_persistent_cache_min_compile_time_secs}}
jax.jit(lambda x: x * 2)(np.ones(3)).block_until_ready()  # the user's own first compilation: JAX looks for a cache
""" + _SMALL
    result = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(cache)}, body=body)
    assert result["extra"] == {"jax_dir": None, "exists": False, "min_compile_time": 1.0}
    assert result["directory"] == result["jax_dir"] == str(cache) and result["source"] == "jaxfuse"
    assert result["min_compile_time"] == compilation_cache_module.MIN_COMPILE_TIME_SECS
    assert _entries(cache)  # fuse_groups' program went to JAX's cache, set up after JAX had first looked


def test_every_public_driver_sets_the_cache_up_before_anything_else(monkeypatch):
    """Each entry point that compiles calls ensure_compilation_cache first (bad input still gets there)."""
    from jaxfuse.compat import actionformer

    decided = []
    monkeypatch.setattr(compilation_cache_module, "_configured", False)
    monkeypatch.setattr(compilation_cache_module, "_decide", lambda: decided.append(1) or compilation_cache_module._status)
    drivers = [jaxfuse.fuse_groups, jaxfuse.fit_template, jaxfuse.fuse_ragged, jaxfuse.group_proposals,
               jaxfuse.fuse_proposals, jaxfuse.fuse_proposals_sharded, jaxfuse.proposals_from_cas,
               jaxfuse.pseudo_labels, jaxfuse.segments_to_snippets, jaxfuse.detect, actionformer.batched_nms,
               actionformer.batched_nms_videos]
    import inspect

    for driver in drivers:
        compilation_cache_module._configured = False
        required = [p for p in inspect.signature(driver).parameters.values() if p.default is inspect.Parameter.empty]
        positional = [p for p in required if p.kind == p.POSITIONAL_OR_KEYWORD]
        keywords = {p.name: "not an array" for p in required if p.kind == p.KEYWORD_ONLY}
        with pytest.raises(Exception):  # noqa: B017 - any validation error: only the order matters here
            driver(*(["not an array"] * len(positional)), **keywords)
        assert compilation_cache_module._configured, f"{driver.__name__} did not set the cache up first"
    assert len(decided) == len(drivers)


def test_a_remote_url_is_refused_and_makes_no_local_directory(tmp_path, monkeypatch, restore_cache_settings):
    result = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": "gs://bucket/cache"}, body=_SMALL)
    assert result["directory"] is None and result["jax_dir"] is None and result["source"] == "unavailable"
    assert "remote URL" in result["reason"] and "JAX_COMPILATION_CACHE_DIR" in result["reason"]
    assert result["stderr"].count("jaxfuse: not using gs://bucket/cache (gs://bucket/cache is a remote URL") == 1
    assert not (tmp_path / "gs:").exists()
    monkeypatch.chdir(tmp_path)
    status = jaxfuse.set_compilation_cache("s3://bucket/cache")
    assert status.source == "unavailable" and "remote URL" in status.reason and not (tmp_path / "s3:").exists()
    assert jax.config.jax_compilation_cache_dir is None


@pytest.mark.parametrize("layout, mode, reason", [
    ("cache", 0o770, "is writable by its group"),
    ("cache", 0o702, "is writable by other users"),
    ("parent/cache", 0o777, "a parent of the cache, is writable by its group and other users and not sticky"),
])
def test_a_directory_others_can_write_is_not_used_and_said_once(tmp_path, monkeypatch, as_at_import, layout, mode,
                                                                 reason):
    from jaxfuse._runtime.private_files import UntrustedCacheWarning

    cache = tmp_path / layout
    cache.mkdir(parents=True)
    (cache if layout == "cache" else cache.parent).chmod(mode)
    monkeypatch.setattr(compilation_cache_module, "_configured", False)
    monkeypatch.setenv("JAXFUSE_COMPILATION_CACHE", str(cache))
    with pytest.warns(UntrustedCacheWarning, match=reason) as caught:
        compilation_cache_module.ensure_compilation_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compilation_cache_module.ensure_compilation_cache()  # once per process
    assert len(caught) == 1
    status = jaxfuse.compilation_cache_status()
    assert status.directory is None and status.source == "unavailable" and reason in status.reason
    assert jax.config.jax_compilation_cache_dir is None


def test_a_sticky_world_writable_parent_is_fine(tmp_path, as_at_import):
    parent = tmp_path / "tmp"
    parent.mkdir()
    parent.chmod(0o1777)  # like /tmp: others cannot rename or delete our directory in it
    status = as_at_import(JAXFUSE_COMPILATION_CACHE=str(parent / "cache"))
    assert status.directory == str(parent / "cache") and (parent / "cache").stat().st_mode & 0o777 == 0o700


_MARKER_BODY = """
import functools, resource, signal, sys
import jax.numpy as jnp
from jaxfuse._runtime import compilation_cache as compilation_cache_module
from jaxfuse._runtime import executable_store
if {limit}:  # a full disk: no file may grow past 4 KiB (an entry is about 17 KB, the marker is empty)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

@jax.jit
def program(x):
    return jnp.cumsum(x * x)

announced = compilation_cache_module.announce_first_compilation(sys.stdout)
wrapped = executable_store.stored_executable(program)
result = np.asarray(wrapped(np.arange(4.0, dtype=np.float32))).tolist()
compilation_cache_module.mark_compiled()
extra = {{"announced": announced, "compiled": wrapped.compiled_calls, "result": result}}
"""


def test_the_marker_is_never_written_through_a_link(tmp_path):
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    cache.mkdir(mode=0o700)
    marker = compilation_cache_module._marker(str(cache))
    marker.symlink_to(victim)
    result = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(cache)}, body=_MARKER_BODY.format(limit=False))
    assert result["extra"]["announced"] and not victim.exists() and marker.is_symlink()


def test_the_marker_is_not_written_when_the_programs_could_not_be_kept(tmp_path):
    """A full disk: the first-run marker would make the next run compile again without saying so."""
    full, roomy = tmp_path / "full", tmp_path / "roomy"
    result = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(full)}, body=_MARKER_BODY.format(limit=True))
    assert result["extra"] == {"announced": True, "compiled": 1, "result": [0.0, 1.0, 5.0, 14.0]}
    assert not list((full / "jaxfuse-executables").glob("*.bin"))  # the write failed ...
    assert not compilation_cache_module._marker(str(full)).exists()  # ... so nothing claims the programs were kept
    control = _run(tmp_path, env={"JAXFUSE_COMPILATION_CACHE": str(roomy)}, body=_MARKER_BODY.format(limit=False))
    assert control["extra"]["announced"] and compilation_cache_module._marker(str(roomy)).is_file()


_THREADS_BODY = """
import functools, threading, time
import jax.numpy as jnp
from jaxfuse._runtime import compilation_cache as compilation_cache_module
from jaxfuse._runtime import executable_store
user_directory = {user_directory!r}
jax.config.update("jax_compilation_cache_dir", user_directory)  # the user's own setting

@functools.partial(jax.jit, static_argnames=("power",))
def program(x, *, power):
    return jnp.cumsum(x ** power)

wrapped = executable_store.stored_executable(program, static_argnames=("power",))
seen, stop = set(), threading.Event()

def watch():
    while not stop.is_set():
        seen.add(jax.config.jax_compilation_cache_dir)
        time.sleep(0.0005)

def work(worker):
    for round in range(3):
        wrapped(np.ones(2 + 3 * worker + round, np.float32), power=2)  # a new shape: compiled and stored
        with compilation_cache_module.persistent_cache_disabled():
            jax.jit(lambda x: x * (worker + round + 2.5))(np.ones(3, np.float32)).block_until_ready()

watcher = threading.Thread(target=watch)
watcher.start()
workers = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
for thread in workers:
    thread.start()
for thread in workers:
    thread.join()
stop.set()
watcher.join()
extra = {{"seen": sorted(map(str, seen)), "final": jax.config.jax_compilation_cache_dir,
          "compiled": wrapped.compiled_calls}}
"""


def test_threads_never_change_the_users_cache_setting(tmp_path):
    """Concurrent stored compiles and persistent_cache_disabled blocks, watched from another thread."""
    user_directory = str(tmp_path / "theirs")
    result = _run(tmp_path, env={}, body=_THREADS_BODY.format(user_directory=user_directory))
    assert result["extra"] == {"seen": [user_directory], "final": user_directory, "compiled": 12}
    assert result["directory"] == user_directory and result["source"] == "user"
    assert len(list((tmp_path / "theirs" / "jaxfuse-executables").glob("*.bin"))) == 12
