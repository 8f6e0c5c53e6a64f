"""Nothing that can run code is loaded from a cache others can write; links and FIFOs are never followed or waited on.

Each case runs in a fresh interpreter (its own JAX settings and warnings),
with a small program, and in temporary directories. Other owners are
simulated with write bits (chmod), or with chown when the tests run as root.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jaxfuse._runtime import store_entries

REPOSITORY = Path(__file__).resolve().parents[2]

# For each cache directory given, the user points JAX's cache there (jaxfuse leaves a user's
# choice alone, so the store's own checks are what stands between the entries and the program)
# and calls a stored program once; the child reports what the store did and what it warned.
_CHILD = r"""
import functools, json, sys, warnings
import jax, jax.numpy as jnp, numpy as np
import jaxfuse
from jaxfuse._runtime import executable_store

@functools.partial(jax.jit, static_argnames=("power",))
def program(x, *, power):
    return jnp.cumsum(x ** power)

reports = []
for cache in json.loads(sys.argv[1]):
    jax.config.update("jax_compilation_cache_dir", cache)
    wrapped = executable_store.stored_executable(program, static_argnames=("power",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = np.asarray(wrapped(np.arange(1.0, 6.0, dtype=np.float32), power=2))
    reports.append({"loaded": wrapped.stored_calls, "compiled": wrapped.compiled_calls, "result": result.tolist(),
                    "warnings": [str(w.message) for w in caught]})
print("RESULT " + json.dumps(reports))
"""
_EXPECTED = [1.0, 5.0, 14.0, 30.0, 55.0]


def _environment(tmp_path: Path) -> dict[str, str]:
    """This environment without cache settings, with a private home and jaxfuse from this checkout."""
    environment = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"
                   and not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXFUSE_"))}
    environment.update(PYTHONPATH=str(REPOSITORY), HOME=str(tmp_path / "home"), JAX_PLATFORMS="cpu")
    return environment


def _run(tmp_path: Path, caches: list[Path], timeout: float = 120) -> list[dict]:
    completed = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(c) for c in caches])],
                               capture_output=True, text=True, env=_environment(tmp_path), cwd=tmp_path,
                               timeout=timeout, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.split("RESULT ", 1)[1])


def _private_cache(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    path.chmod(0o700)
    return path


def _only_entry(cache: Path) -> Path:
    (entry,) = (cache / "jaxfuse-executables").glob("*.bin")
    return entry


class _CreatesFile:
    """Unpickling this creates ``path``: the proof that a planted entry ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _plant(entry: Path, proof: Path) -> None:
    """Rewrite ``entry`` as an adversary who can write it would: its own key and a matching digest, a payload that runs."""
    data = entry.read_bytes()
    start = len(store_entries.MAGIC) + 4
    header = json.loads(data[start:start + int.from_bytes(data[start - 4:start], "big")])
    entry.write_bytes(store_entries.encode_entry(header["key"], pickle.dumps(_CreatesFile(str(proof))),
                                                     header["out_tree"]))


_OTHERS_WRITE = {  # (directory relative to the shared parent, mode)
    "cache writable by its group": ("shared/cache", 0o770),
    "store writable by others": ("shared/cache/jaxfuse-executables", 0o703),
    "parent writable by others, not sticky": ("shared", 0o777),
}


def test_a_planted_entry_never_runs_from_a_directory_others_can_write(tmp_path):
    """The control (a private cache) shows the planted entry is live: the ownership check is what stops it."""
    caches = {name: _private_cache(tmp_path / name.replace(" ", "_") / "shared" / "cache") for name in _OTHERS_WRITE}
    caches["private (control)"] = _private_cache(tmp_path / "control" / "shared" / "cache")
    sticky = _private_cache(tmp_path / "sticky" / "shared" / "cache")  # like /tmp: others cannot swap our directory
    first = _run(tmp_path, [*caches.values(), sticky])
    assert all(r["compiled"] == 1 and r["result"] == _EXPECTED for r in first)
    proofs = {name: tmp_path / f"ran-{name.replace(' ', '_')}" for name in caches}
    for name, cache in caches.items():
        _plant(_only_entry(cache), proofs[name])
    for name, (relative, mode) in _OTHERS_WRITE.items():
        (caches[name].parents[1] / relative).chmod(mode)
    (sticky.parents[1] / "shared").chmod(0o1777)
    reports = dict(zip([*caches, "sticky"], _run(tmp_path, [*caches.values(), sticky])))
    for name in _OTHERS_WRITE:
        assert not proofs[name].exists(), f"{name}: the planted entry ran"
        report = reports[name]
        assert report["result"] == _EXPECTED and report["loaded"] == report["compiled"] == 0  # plain jit
        (warning,) = report["warnings"]
        assert "not using" in warning and "writable by" in warning and "jaxfuse-executables" in warning
        assert _only_entry(caches[name]).read_bytes()[:len(store_entries.MAGIC)] == store_entries.MAGIC
    assert proofs["private (control)"].exists()  # trusted, loaded: it ran, failed to load, and was rebuilt
    assert reports["private (control)"]["compiled"] == 1 and reports["private (control)"]["result"] == _EXPECTED
    assert reports["sticky"]["loaded"] == 1 and not reports["sticky"]["warnings"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give a file away (chown)")
def test_a_cache_or_entry_owned_by_someone_else_is_not_used(tmp_path):
    nobody = 65534
    cache, entry_cache = _private_cache(tmp_path / "a" / "cache"), _private_cache(tmp_path / "b" / "cache")
    _run(tmp_path, [cache, entry_cache])
    os.chown(cache, nobody, nobody)
    os.chown(_only_entry(entry_cache), nobody, nobody)
    theirs, their_entry = _run(tmp_path, [cache, entry_cache])
    assert theirs["loaded"] == 0 and "owned by uid 65534" in theirs["warnings"][0]
    assert their_entry["loaded"] == 0 and their_entry["compiled"] == 1  # replaced by the user's own
    assert _only_entry(entry_cache).stat().st_uid == os.geteuid()


def test_a_link_or_a_fifo_at_an_entry_is_neither_followed_nor_waited_on(tmp_path):
    linked, fifo = _private_cache(tmp_path / "linked"), _private_cache(tmp_path / "fifo")
    _run(tmp_path, [linked, fifo])
    link, elsewhere = _only_entry(linked), tmp_path / "elsewhere.bin"
    link.rename(elsewhere)  # a sound entry, reachable only through a link
    original = elsewhere.read_bytes()
    link.symlink_to(elsewhere)
    pipe = _only_entry(fifo)
    pipe.unlink()
    os.mkfifo(pipe)
    through_link, at_fifo = _run(tmp_path, [linked, fifo], timeout=60)  # a blocking open would wait forever
    for report in (through_link, at_fifo):
        assert (report["loaded"], report["compiled"]) == (0, 1) and report["result"] == _EXPECTED
    assert not link.is_symlink() and elsewhere.read_bytes() == original  # the link replaced, its target untouched
    assert stat.S_ISREG(pipe.lstat().st_mode)


_SAME_PROGRAM_CHILD = r"""
import functools, json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # JAX keeps even this small program
from jaxfuse._runtime import executable_store

@functools.partial(jax.jit, static_argnames=("power",))
def program(x, *, power):
    return jnp.cumsum(x ** power)

x = np.arange(1.0, 6.0, dtype=np.float32)
if sys.argv[2] == "plain first":
    program(x, power=2).block_until_ready()  # the same program, through JAX's cache
wrapped = executable_store.stored_executable(program, static_argnames=("power",))
result = np.asarray(wrapped(x, power=2)).tolist()
print("RESULT " + json.dumps({"loaded": wrapped.stored_calls, "compiled": wrapped.compiled_calls, "result": result}))
"""


def test_the_store_compiles_past_jax_cache_even_when_it_holds_the_same_program(tmp_path):
    """An executable JAX loaded from its cache serializes without its code; the store's compile must not read it."""
    cache = _private_cache(tmp_path / "cache")

    def run(mode: str) -> dict:
        completed = subprocess.run([sys.executable, "-c", _SAME_PROGRAM_CHILD, str(cache), mode], capture_output=True,
                                   text=True, env=_environment(tmp_path), cwd=tmp_path, timeout=120, check=False)
        assert completed.returncode == 0, completed.stderr[-3000:]
        return json.loads(completed.stdout.split("RESULT ", 1)[1])

    assert run("plain first")["compiled"] == 1  # JAX's cache now holds the program; the store compiled its own
    _only_entry(cache).unlink()
    assert run("plain first")["compiled"] == 1  # a JAX cache hit for the plain call, a fresh compile for the store
    assert [p for p in cache.glob("*-cache")]
    loaded = run("store only")
    assert (loaded["loaded"], loaded["compiled"]) == (1, 0) and loaded["result"] == _EXPECTED
