"""Result codes readable by name: ``ResultCode.names`` on arrays, and results that print their codes by name
while staying NamedTuples (pytrees) (issue 20)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfuse
from jaxfuse import ResultCode


def test_result_code_names_of_an_array_in_one_call():
    codes = np.array([[0, 4], [3, 8]], np.int32)
    names = ResultCode.names(codes)
    assert names.shape == (2, 2)
    assert names.tolist() == [[ResultCode(c).name for c in row] for row in codes.tolist()]
    assert ResultCode.names(jnp.asarray(codes)).tolist() == names.tolist()
    assert ResultCode.names(ResultCode.OVERFLOW) == "OVERFLOW"
    with pytest.raises(ValueError, match="no ResultCode: \\[9\\]"):
        ResultCode.names(np.array([0, 9]))
    with pytest.raises(TypeError, match="integer"):
        ResultCode.names(np.array([0.0]))


def result_classes():
    return [getattr(jaxfuse, name) for name in sorted(jaxfuse.__all__)
            if isinstance(getattr(jaxfuse, name), type) and "result" in getattr(getattr(jaxfuse, name), "_fields", ())]


@pytest.mark.parametrize("cls", result_classes(), ids=lambda cls: cls.__name__)
def test_every_result_shows_its_codes_by_name(cls):
    fields = {name: np.arange(3, dtype=np.float32) for name in cls._fields}
    for name in ("result", "item_result"):
        if name in fields:
            fields[name] = np.array([0, 4, 5], np.int32)
    text = repr(cls(**fields))
    assert text.startswith(f"{cls.__name__}(") and "result=<ResultCode [SUCCESSFUL, EMPTY_GROUP, OVERFLOW]>" in text
    assert "array([0., 1., 2.], dtype=float32)" in text  # the other fields as before


def test_results_stay_pytrees_under_vmap_and_jit():
    values = np.random.default_rng(42).normal(size=(4, 2, 3, 2)).astype(np.float32)
    weights = np.zeros((4, 2, 3), np.float32)
    mapped = jax.vmap(lambda v, w: jaxfuse.fuse_groups(v, w))(values, weights)
    assert type(mapped) is jaxfuse.FusionResult and mapped.result.shape == (4, 2)
    texts = []

    @jax.jit
    def fuse(v, w):
        fused = jaxfuse.fuse_groups(v, w)
        texts.append(repr(fused))  # traced: the usual reprs, no error
        return fused

    fused = fuse(values[0], weights[0])
    assert "result=JitTracer" in texts[0] or "Traced" in texts[0]
    assert "result=<ResultCode [SUCCESSFUL, SUCCESSFUL]>" in repr(fused)
    assert jax.tree.structure(fused) == jax.tree.structure(jaxfuse.fuse_groups(values[0], weights[0]))
