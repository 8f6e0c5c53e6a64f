"""fit_template takes fuse_groups' layout ``values [..., M, K]`` besides one coordinate, and a bare
``student_t_density`` (issue 20)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import random_groups

import jaxfuse
from jaxfuse import ResultCode


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
