"""jaxfuse's store of whole executables: a fresh wrapper (as in a new process) loads instead of tracing; misses are safe.

Entries are checked against their key and digest, bounded in size, and never
loaded from a directory others can write (the cases with permissions, links
and FIFOs run in a fresh interpreter each: see tests/test_store_safety.py).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfuse
from jaxfuse._runtime import compilation_cache as compilation_cache_module
from jaxfuse._runtime import executable_store


@functools.partial(jax.jit, static_argnames=("power",))
def _program(x, scale, *, power):
    return jnp.sum(x**power, axis=-1) * scale, jnp.cumsum(x, axis=0)


def _fresh():
    """A new wrapper of the same program: empty memory, as in a new process."""
    return executable_store.stored_executable(_program, static_argnames=("power",))


@pytest.fixture
def store(tmp_path):
    """A private compilation cache (and so executable store) for one test; the session's is put back after."""
    saved_status, saved_directory = compilation_cache_module._status, jax.config.jax_compilation_cache_dir
    jaxfuse.set_compilation_cache(tmp_path / "cache")
    yield tmp_path / "cache" / "jaxfuse-executables"
    jax.config.update("jax_compilation_cache_dir", saved_directory)
    compilation_cache_module._status = saved_status
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


def _expected(x, scale, power):
    return np.sum(x.astype(np.float64) ** power, axis=-1) * scale, np.cumsum(x, axis=0)


def test_stored_then_loaded_with_identical_results(store):
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    first = _fresh()
    a = first(x, 0.5, power=2)
    assert (first.compiled_calls, first.stored_calls) == (1, 0) and len(list(store.glob("*.bin"))) == 1
    first(x * 2, 3.0, power=2)  # same shapes, other values: from memory, no compile, no recompile of a scalar
    assert first.compiled_calls == 1
    second = _fresh()
    b = second(x, 0.5, power=2)
    assert (second.compiled_calls, second.stored_calls) == (0, 1)
    for got, want in zip(b, a):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    expected = _expected(x, 0.5, 2)
    np.testing.assert_allclose(np.asarray(b[0]), expected[0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(b[1]), expected[1], rtol=1e-6)


def test_other_shapes_dtypes_statics_and_scalar_types_are_other_entries(store):
    wrapped = _fresh()
    x = np.ones((3, 4), np.float32)
    wrapped(x, 1.0, power=2)
    wrapped(np.ones((3, 5), np.float32), 1.0, power=2)
    wrapped(x.astype(np.float16), 1.0, power=2)
    wrapped(x, 1.0, power=3)
    wrapped(x, 1, power=2)  # a Python int traces differently from a float
    wrapped(jnp.asarray(x), 1.0, power=2)
    assert wrapped.compiled_calls == 6 and len(list(store.glob("*.bin"))) == 6
    np.testing.assert_allclose(np.asarray(wrapped(x, 2, power=3)[0]), [8.0] * 3)


def test_traced_calls_and_a_cache_turned_off_use_plain_jit(store):
    wrapped = _fresh()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    inside = jax.jit(lambda v: wrapped(v, 2.0, power=1)[0])(x)
    gradient = jax.grad(lambda v: wrapped(v, 2.0, power=2)[0].sum())(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(inside), [6.0, 24.0])
    np.testing.assert_allclose(np.asarray(gradient), 4 * x)
    assert wrapped.compiled_calls == wrapped.stored_calls == 0 and not store.exists()
    jaxfuse.set_compilation_cache(None)
    np.testing.assert_allclose(np.asarray(wrapped(x, 2.0, power=1)[0]), [6.0, 24.0])
    assert wrapped.compiled_calls == wrapped.stored_calls == 0


def test_a_damaged_entry_is_rebuilt(store):
    x = np.ones((2, 2), np.float32)
    _fresh()(x, 1.0, power=2)
    (entry,) = store.glob("*.bin")
    entry.write_bytes(b"not an executable")
    again = _fresh()
    np.testing.assert_allclose(np.asarray(again(x, 1.0, power=2)[0]), [2.0, 2.0])
    assert (again.compiled_calls, again.stored_calls) == (1, 0)
    assert _fresh()(x, 1.0, power=2) is not None and entry.read_bytes() != b"not an executable"


@pytest.mark.parametrize("part, other", [
    ("source_digest", "an edited jaxfuse"),  # any edit of jaxfuse changes every key
    ("host_cpu", "another processor"),  # a cache shared by machines with other CPUs (a network home)
])
def test_the_environment_is_in_every_key(store, monkeypatch, part, other):
    x = np.ones((2, 2), np.float32)
    _fresh()(x, 1.0, power=2)
    monkeypatch.setattr(executable_store, part, lambda: other)
    executable_store._environment.cache_clear()
    try:
        changed = _fresh()
        changed(x, 1.0, power=2)
        assert (changed.compiled_calls, changed.stored_calls) == (1, 0) and len(list(store.glob("*.bin"))) == 2
    finally:
        executable_store._environment.cache_clear()


def test_source_digest_covers_every_module():
    assert len(executable_store.source_digest()) == 64
    from pathlib import Path

    modules = list(Path(jaxfuse.__file__).parent.rglob("*.py"))
    assert any(p.parts[-2:] == ("_proposals", "group_fusion.py") for p in modules) and len(modules) > 40


def test_lambdas_and_closures_are_refused():
    with pytest.raises(ValueError, match="module-level"):
        executable_store.stored_executable(jax.jit(lambda x: x))


def test_a_remote_jax_cache_is_left_to_jax(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(executable_store, "compilation_cache_status",
                        lambda: compilation_cache_module.CompilationCacheStatus("gs://bucket/cache", "user"))
    wrapped = _fresh()
    np.testing.assert_allclose(np.asarray(wrapped(np.ones((2, 2), np.float32), 1.0, power=2)[0]), [2.0, 2.0])
    assert wrapped.compiled_calls == wrapped.stored_calls == 0 and not (tmp_path / "gs:").exists()


def _entry_for(store, wrapped_call) -> tuple:
    """Call ``wrapped_call`` with a fresh wrapper and return the one new entry it stored, with its bytes."""
    before = set(store.glob("*.bin")) if store.exists() else set()
    wrapped_call(_fresh())
    (entry,) = set(store.glob("*.bin")) - before
    return entry, entry.read_bytes()


def test_an_entry_under_another_programs_name_is_never_used(store):
    """Two programs with one signature (here the static power; in the issue Soft-NMS's linear and Gaussian decay)."""
    x = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)
    _, square_bytes = _entry_for(store, lambda w: w(x, 1.0, power=2))
    cube, _ = _entry_for(store, lambda w: w(x, 1.0, power=3))
    cube.write_bytes(square_bytes)  # the squares' executable under the cubes' name
    wrapped = _fresh()
    np.testing.assert_allclose(np.asarray(wrapped(x, 1.0, power=3)[0]), _expected(x, 1.0, 3)[0], rtol=1e-6)
    assert (wrapped.compiled_calls, wrapped.stored_calls) == (1, 0)
    assert cube.read_bytes() != square_bytes  # replaced by the cubes' own entry, which the next process loads
    again = _fresh()
    np.testing.assert_allclose(np.asarray(again(x, 1.0, power=3)[0]), _expected(x, 1.0, 3)[0], rtol=1e-6)
    assert (again.compiled_calls, again.stored_calls) == (0, 1)


def test_an_entry_of_another_signature_is_replaced_not_a_crash_every_run(store):
    x = np.ones((3, 4), np.float32)
    _, narrow_bytes = _entry_for(store, lambda w: w(x, 1.0, power=2))
    wide_entry, _ = _entry_for(store, lambda w: w(np.ones((3, 5), np.float32), 1.0, power=2))
    wide_entry.write_bytes(narrow_bytes)  # an executable for [3, 4] where [3, 5] is looked for
    for _ in range(2):  # rebuilt once, then loaded
        wrapped = _fresh()
        np.testing.assert_allclose(np.asarray(wrapped(np.ones((3, 5), np.float32), 1.0, power=2)[0]), [5.0] * 3)
    assert (wrapped.compiled_calls, wrapped.stored_calls) == (0, 1)


def test_bit_flips_are_detected_and_the_entry_rebuilt(store):
    """Each flip (header or code) is caught by the key or digest check before anything is deserialized."""
    x = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    entry, original = _entry_for(store, lambda w: w(x, 0.5, power=2))
    rng = np.random.default_rng(2)
    for position in rng.choice(len(original), size=12, replace=False):
        flipped = bytearray(original)
        flipped[position] ^= 1 << int(rng.integers(8))
        entry.write_bytes(bytes(flipped))
        wrapped = _fresh()
        got = wrapped(x, 0.5, power=2)
        assert (wrapped.compiled_calls, wrapped.stored_calls) == (1, 0), f"flip at byte {position} was used"
        np.testing.assert_allclose(np.asarray(got[0]), _expected(x, 0.5, 2)[0], rtol=1e-5)
        assert entry.read_bytes() != bytes(flipped)


def test_the_layout_is_parsed_not_unpickled():
    from jaxfuse._runtime import store_entries as layout

    data = layout.encode_entry("key text", b"payload", ["tuple", ["*", ["none"]]])
    assert layout.decode_entry(data, "key text") == (b"payload", ["tuple", ["*", ["none"]]])
    with pytest.raises(layout.EntryError, match="another program"):
        layout.decode_entry(data, "other key")
    with pytest.raises(layout.EntryError, match="digest"):
        layout.decode_entry(data[:-1] + b"X", "key text")
    import pickle

    with pytest.raises(layout.EntryError, match="not an entry"):  # the old layout, a pickle, is never unpickled
        layout.decode_entry(pickle.dumps((b"payload", None, None)), "key text")


def test_result_trees_are_rebuilt_from_their_description():
    from jaxfuse._runtime import store_entries as layout

    result = jaxfuse.FusionResult  # a named tuple of jaxfuse's, with nested containers and None below
    example = (result(*range(len(result._fields))), [1, None, {"b": 2, "a": (3,)}], None)
    tree = jax.tree_util.tree_structure(example)
    description = layout.describe_tree(tree)
    assert layout.rebuild_tree(description) == tree
    import json

    assert layout.rebuild_tree(json.loads(json.dumps(description))) == tree  # it survives the JSON header

    @jax.tree_util.register_pytree_node_class
    class Custom:
        def tree_flatten(self):
            return (), None

        @classmethod
        def tree_unflatten(cls, aux, children):
            return cls()

    assert layout.describe_tree(jax.tree_util.tree_structure((Custom(), 1))) is None  # not stored: runs from memory
    with pytest.raises(layout.EntryError, match="not a loaded named tuple"):
        layout.rebuild_tree(["namedtuple", "some.module.never.imported:Result", ["*"]])


@pytest.mark.parametrize("variable", ["XLA_FLAGS", "LIBTPU_INIT_ARGS"])
def test_compiler_flags_are_in_every_key(store, monkeypatch, variable):
    """XLA reads these when the backend starts: an entry built under other flags (unoptimised, say) is another entry."""
    x = np.ones((2, 2), np.float32)
    _fresh()(x, 1.0, power=2)
    monkeypatch.setenv(variable, "--xla_backend_optimization_level=0")
    executable_store._environment.cache_clear()
    try:
        changed = _fresh()
        changed(x, 1.0, power=2)
        assert (changed.compiled_calls, changed.stored_calls) == (1, 0) and len(list(store.glob("*.bin"))) == 2
    finally:
        executable_store._environment.cache_clear()


def test_least_recently_used_entries_are_evicted_beyond_the_cap(store, monkeypatch):
    shapes = [(2, n) for n in range(2, 6)]
    for shape in shapes:
        _fresh()(np.ones(shape, np.float32), 1.0, power=2)
    entries = {shape: path for shape, path in zip(shapes, sorted(store.glob("*.bin"), key=os.path.getmtime))}
    sizes = {shape: path.stat().st_size for shape, path in entries.items()}
    for age, shape in enumerate(reversed(shapes)):  # (2, 2) least recently used, (2, 5) most
        os.utime(entries[shape], (time.time() - 100 * (age + 1),) * 2)
    loaded = _fresh()
    loaded(np.ones((2, 2), np.float32), 1.0, power=2)  # a use: now the most recent
    assert loaded.stored_calls == 1
    assert max(sizes.values()) < 1.1 * min(sizes.values())  # one program, other shapes: entries of about one size
    cap = sizes[(2, 2)] + sizes[(2, 5)] + int(1.5 * max(sizes.values()))  # room for two old entries and the new one
    monkeypatch.setenv("JAXFUSE_EXECUTABLE_STORE_MAX_BYTES", str(cap))
    _fresh()(np.ones((2, 6), np.float32), 1.0, power=2)
    kept = set(store.glob("*.bin"))
    assert sum(p.stat().st_size for p in kept) <= cap
    assert entries[(2, 2)] in kept and entries[(2, 5)] in kept  # the two most recently used
    assert entries[(2, 3)] not in kept and len(kept) == 3  # the least recently used went first


def test_a_zero_cap_turns_the_store_off_and_a_bad_one_is_named(store, monkeypatch):
    monkeypatch.setenv("JAXFUSE_EXECUTABLE_STORE_MAX_BYTES", "0")
    wrapped = _fresh()
    np.testing.assert_allclose(np.asarray(wrapped(np.ones((2, 2), np.float32), 1.0, power=2)[0]), [2.0, 2.0])
    assert wrapped.compiled_calls == wrapped.stored_calls == 0 and not store.exists()
    monkeypatch.setenv("JAXFUSE_EXECUTABLE_STORE_MAX_BYTES", "1GB")
    with pytest.raises(ValueError, match="JAXFUSE_EXECUTABLE_STORE_MAX_BYTES must be a number of bytes.*'1GB'"):
        _fresh()(np.ones((2, 2), np.float32), 1.0, power=2)


def test_stale_temporary_files_of_killed_writers_are_removed_when_the_store_opens(store):
    x = np.ones((2, 2), np.float32)
    _fresh()(x, 1.0, power=2)
    (entry,) = store.glob("*.bin")
    stale, fresh = store / f".{entry.name}.123.ab.tmp", store / f".{entry.name}.456.cd.tmp"
    stale.write_bytes(b"half an entry")
    fresh.write_bytes(b"being written now")
    os.utime(stale, (time.time() - 3600,) * 2)
    executable_store._opened.clear()  # as in a new process, which opens the store at its first program
    _fresh()(np.ones((2, 3), np.float32), 1.0, power=2)
    assert not stale.exists() and fresh.exists() and entry.exists()


def test_directories_and_entries_are_private(store):
    _fresh()(np.ones((2, 2), np.float32), 1.0, power=2)
    assert (store.stat().st_mode & 0o777) == 0o700 and (store.parent.stat().st_mode & 0o777) == 0o700
    (entry,) = store.glob("*.bin")
    assert entry.stat().st_mode & 0o777 == 0o600
