"""jaxfuse's store of whole executables: a fresh wrapper (as in a new process) loads instead of tracing; misses are safe."""

from __future__ import annotations

import functools

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
    assert any(p.name == "_segment_fusion.py" for p in modules) and len(modules) > 40


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
