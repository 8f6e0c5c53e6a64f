"""Issue 20's API seams: fit_template takes fuse_groups' layout and a bare student_t_density, one name for the
Soft-NMS floor (``min_score``; ``score_floor`` deprecated), result codes readable by name."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_groups

import jaxfuse
from jaxfuse import ResultCode

# ---------------------------------------------------------------------- fit_template


def test_fit_template_takes_the_fuse_groups_layout():
    """values [G, M, K] with weights [G, M]: each coordinate fitted on its own, as fuse_groups does."""
    rng = np.random.default_rng(40)
    with jax.enable_x64(True):
        values, weights, mask = random_groups(rng, 6, 5, coordinates=3, min_size=2)
        fitted = jaxfuse.fit_template(jaxfuse.gaussian_density, values, weights, mask, temperature=2.0, tolerance=1e-10)
        closed = jaxfuse.fuse_groups(values, weights, mask, template="gaussian", temperature=2.0)
        assert fitted.location.shape == fitted.result.shape == (6, 3)
        assert (fitted.result == ResultCode.SUCCESSFUL).all()
        np.testing.assert_allclose(fitted.location, closed.location, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.exp(fitted.parameters["log_scale"]), closed.parameters.scale, rtol=1e-6)
        for k in range(3):  # the same fits as one coordinate at a time, the layout fit_template took before
            one = jaxfuse.fit_template(jaxfuse.gaussian_density, values[..., k], weights, mask, temperature=2.0,
                                       tolerance=1e-10)
            np.testing.assert_allclose(fitted.location[:, k], one.location, rtol=1e-12)


def test_fit_template_weights_of_the_wrong_shape_name_both_layouts():
    values = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match=r"one weight per member: shape \(2, 4\).*\[\.\.\., M, K\]") as error:
        jaxfuse.fit_template(jaxfuse.gaussian_density, values, np.zeros((2, 3)))
    assert "shape of `values`" not in str(error.value)  # which invited broadcasting weights across coordinates
    with pytest.raises(ValueError, match="mask"):
        jaxfuse.fit_template(jaxfuse.gaussian_density, values, np.zeros((2, 4)), np.ones((2, 4, 3), bool))


def test_a_bare_student_t_density_means_df_3():
    x = np.array([[10.0, 11.0, 12.0, 30.0], [1.0, 2.0, 2.5, -9.0]], np.float32)
    w = np.zeros((2, 4), np.float32)
    bare = jaxfuse.fit_template(jaxfuse.student_t_density, x, w)
    called = jaxfuse.fit_template(jaxfuse.student_t_density(3.0), x, w)
    np.testing.assert_array_equal(bare.location, called.location)
    newton = jaxfuse.fuse_student_t(x[..., None], w)  # its default df is 3 too
    np.testing.assert_allclose(bare.location, newton.location[..., 0], rtol=1e-4)


def test_a_template_factory_not_called_says_to_call_it():
    with pytest.raises(TypeError, match="call it"):
        jaxfuse.fit_template(lambda df: jaxfuse.student_t_density(df), np.zeros((1, 3)), np.zeros((1, 3)))


# ---------------------------------------------------------------------- min_score


def soft_nms_case():
    rng = np.random.default_rng(41)
    starts = rng.uniform(0, 100, size=(3, 20))
    segments = np.stack([starts, starts + rng.uniform(1, 30, size=(3, 20))], axis=-1).astype(np.float32)
    return segments, rng.uniform(size=(3, 20)).astype(np.float32)


def test_soft_nms_floor_is_min_score_and_score_floor_still_works_with_a_warning():
    segments, scores = soft_nms_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        kept = jaxfuse.fuse_proposals(segments, scores, method="soft_nms", min_score=0.4)
    default = jaxfuse.fuse_proposals(segments, scores, method="soft_nms")
    assert (kept.count < default.count).any() and (kept.scores[kept.valid] >= 0.4).all()
    with pytest.warns(DeprecationWarning, match="`score_floor` is deprecated, use `min_score`") as record:
        old = jaxfuse.fuse_proposals(segments, scores, method="soft_nms", score_floor=0.4)
    assert record[0].filename == __file__  # it points at the caller's line, so Python shows it
    for new, previous in zip(kept, old):
        np.testing.assert_array_equal(new, previous)
    with pytest.raises(TypeError, match="not both"):
        jaxfuse.fuse_proposals(segments, scores, method="soft_nms", min_score=0.4, score_floor=0.4)


# ---------------------------------------------------------------------- result codes by name


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
