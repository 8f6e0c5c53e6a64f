"""The optax fitter checks every closed form and the Newton t fit numerically (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SHARED_GROUPS, SHARED_MEMBERS, fuse_in_shared_shape, random_groups

import jaxfuse
from jaxfuse import ResultCode

DENSITIES = {
    "gaussian": jaxfuse.gaussian_density,
    "uniform": jaxfuse.uniform_density,
    "exponential": jaxfuse.exponential_density,
    "student_t": jaxfuse.student_t_density(3.0),
}


def cross_entropy(density, parameters, values, probabilities, mask):
    """The fitter's objective evaluated at closed-form parameters (one group)."""
    filled = jnp.where(mask, values, values[jnp.argmax(mask)])
    return -jnp.sum(jnp.where(mask, probabilities * density.log_density(parameters, filled, mask), 0))


def closed_form_as_density_parameters(template, fused, coordinate):
    """The closed form's parameters of every group, ``[G]`` each, as the density takes them."""
    p = fused.parameters
    if template in ("gaussian", "student_t", "laplace"):
        return {"location": p.location[:, coordinate], "log_scale": jnp.log(p.scale[:, coordinate])}
    if template == "exponential":
        return {"log_rate": jnp.log(p.rate[:, coordinate])}
    raise AssertionError(template)


def closed_form_losses(template, density, fused, values, mask):
    """The objective at the closed form, for every group at once (one compiled program, not one eager run per group)."""
    parameters = closed_form_as_density_parameters(template, fused, 0)
    per_group = jax.vmap(lambda p, v, g, m: cross_entropy(density, p, v, g, m))
    return np.asarray(per_group(parameters, jnp.asarray(values[..., 0]), jnp.asarray(fused.probabilities),
                                jnp.asarray(mask)))


@pytest.mark.parametrize("template", sorted(DENSITIES))
def test_closed_forms_are_the_fitters_optimum(template):
    rng = np.random.default_rng(len(template))
    with jax.enable_x64(True):
        values, weights, mask = random_groups(rng, SHARED_GROUPS, SHARED_MEMBERS, coordinates=1, min_size=4)
        fused = fuse_in_shared_shape(jaxfuse.fuse_groups, values, weights, mask, template=template, temperature=2.0)
        fitted = jaxfuse.fit_template(DENSITIES[template], values[..., 0], weights, mask, temperature=2.0, tolerance=1e-9, max_steps=3000)
        fit_ok = fitted.result == ResultCode.SUCCESSFUL
        assert fit_ok.mean() > 0.9
        real_values = np.where(mask, values[..., 0], np.nan)
        spread = np.nanmax(real_values, axis=1) - np.nanmin(real_values, axis=1)
        np.testing.assert_allclose(fitted.location[fit_ok], fused.location[fit_ok, 0], atol=1e-6 * spread[fit_ok].max())
        if template == "uniform":
            return  # the fitter approaches the support from outside; its loss is the closed form's plus a vanishing margin
        closed_loss = closed_form_losses(template, DENSITIES[template], fused, values, mask)[fit_ok]
        fitted_loss = np.asarray(fitted.loss)[fit_ok]
        assert (closed_loss <= fitted_loss + 1e-12 * np.abs(fitted_loss)).all()


def test_uniform_fit_approaches_the_member_range():
    rng = np.random.default_rng(30)
    with jax.enable_x64(True):
        values, weights, mask = random_groups(rng, SHARED_GROUPS, SHARED_MEMBERS, coordinates=1, min_size=2)
        fitted = jaxfuse.fit_template(jaxfuse.uniform_density, values[..., 0], weights, mask, tolerance=1e-9)
        fused = fuse_in_shared_shape(jaxfuse.fuse_uniform, values, weights, mask)
    width = fused.parameters.high[:, 0] - fused.parameters.low[:, 0]
    assert (fitted.loss >= np.log(width)).all()  # erratum 2: no support holding every member is shorter
    np.testing.assert_allclose(fitted.loss, np.log(width), atol=1e-6)


def test_laplace_weighted_median_is_the_fitters_optimum():
    """A template beyond the paper through the generic path: its non-smooth loss needs a first-order optimiser."""
    rng = np.random.default_rng(31)
    with jax.enable_x64(True):
        values, weights, mask = random_groups(rng, SHARED_GROUPS, SHARED_MEMBERS, coordinates=1, min_size=3)
        optimizer = optax.adam(optax.exponential_decay(0.5, transition_steps=300, decay_rate=0.3))
        fitted = jaxfuse.fit_template(jaxfuse.laplace_density, values[..., 0], weights, mask, temperature=2.0, optimizer=optimizer, max_steps=4000)
        fused = fuse_in_shared_shape(jaxfuse.fuse_laplace, values, weights, mask, temperature=2.0)
        closed_loss = closed_form_losses("laplace", jaxfuse.laplace_density, fused, values, mask)
        fitted_loss = np.asarray(fitted.loss)
        assert closed_loss.shape == (SHARED_GROUPS,)
        assert (closed_loss <= fitted_loss + 1e-9).all()
        assert (fitted_loss - closed_loss < 1e-5).all()
    assert (np.abs(fitted.location - fused.location[:, 0]) <= 1e-2 * fused.parameters.scale[:, 0]).all()


def test_fitter_reports_empty_nonfinite_and_divergent_groups():
    values = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [np.nan, 2.0, 3.0], [1.0, 2.0, 2.0]])
    weights = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
    mask = np.array([[True, True, True], [False, False, False], [True, True, True], [True, True, True]])
    fitted = jaxfuse.fit_template(jaxfuse.student_t_density(3.0), values, weights, mask, max_steps=300)
    assert fitted.result[0] == ResultCode.SUCCESSFUL
    assert fitted.result[1] == ResultCode.EMPTY_GROUP
    assert fitted.result[2] == ResultCode.NONFINITE_INPUT
    # Almost all weight on the value 2: the t loss is unbounded below there.
    assert fitted.result[3] in (ResultCode.DIVERGED, ResultCode.MAX_STEPS_REACHED)
    assert np.isfinite(fitted.location).all()


def test_fitter_rejects_bad_input():
    values = np.zeros((2, 3))
    with pytest.raises(TypeError, match="template"):
        jaxfuse.fit_template("gaussian", values, values)
    with pytest.raises(ValueError, match="weights"):
        jaxfuse.fit_template(jaxfuse.gaussian_density, values, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="temperature"):
        jaxfuse.fit_template(jaxfuse.gaussian_density, values, values, temperature=0)
    with pytest.raises(ValueError, match="max_steps"):
        jaxfuse.fit_template(jaxfuse.gaussian_density, values, values, max_steps=0)
    with pytest.raises(TypeError, match="values"):
        jaxfuse.fit_template(jaxfuse.gaussian_density, values.astype(int), values)
