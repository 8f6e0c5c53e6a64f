r"""Log-densities of the built-in templates, for the generic fitter :func:`fit_template`.

A :class:`TemplateDensity` describes a template through unconstrained
parameters, so that any optax optimiser can fit it:

* scales and rates are stored as their logarithms;
* the uniform support is ``[min x - exp(a), max x + exp(b)]``, which holds every
  member for every ``(a, b)`` (erratum 2); the optimum is approached as
  ``a, b -> -inf``;
* the exponential origin is the group's minimum, as in eq. (8).

Log-densities take the group's member values and mask so that such
data-dependent supports can be expressed; they return one log-density per member.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxfuse._fusion.closed_forms import weighted_median

Parameters = Any  # a pytree of scalars for one group


class TemplateDensity(NamedTuple):
    """A template for :func:`fit_template`.

    Attributes:
        name: a short name.
        log_density: ``(parameters, values [M], mask [M]) -> [M]`` log p(x_k; parameters).
            Padded slots hold a copy of a real member's value, so the density may
            assume every value lies in the support.
        initial_parameters: ``(values [M], probabilities [M], mask [M]) -> parameters``,
            a starting point (deliberately not the closed-form optimum).
        location: ``(parameters, values [M], mask [M]) -> scalar``, the fused value.
    """

    name: str
    log_density: Callable[[Parameters, jax.Array, jax.Array], jax.Array]
    initial_parameters: Callable[[jax.Array, jax.Array, jax.Array], Parameters]
    location: Callable[[Parameters, jax.Array, jax.Array], jax.Array]


def _masked_mean(values, mask):
    return jnp.sum(jnp.where(mask, values, 0)) / jnp.maximum(jnp.sum(mask), 1)


def _masked_log_spread(values, mask):
    """Log of the unweighted standard deviation, floored so it is finite for a single member."""
    deviation = jnp.where(mask, values - _masked_mean(values, mask), 0)
    variance = jnp.sum(jnp.square(deviation)) / jnp.maximum(jnp.sum(mask), 1)
    floor = jnp.finfo(values.dtype).eps * (1 + jnp.max(jnp.abs(jnp.where(mask, values, 0))))
    return 0.5 * jnp.log(jnp.maximum(variance, floor**2))


def _extremes(values, mask):
    return jnp.min(jnp.where(mask, values, jnp.inf)), jnp.max(jnp.where(mask, values, -jnp.inf))


def _location_scale_start(values, probabilities, mask):
    del probabilities
    return {"location": _masked_mean(values, mask), "log_scale": _masked_log_spread(values, mask)}


def _location(parameters, values, mask):
    del values, mask
    return parameters["location"]


def _gaussian_log_density(parameters, values, mask):
    del mask
    scale = jnp.exp(parameters["log_scale"])
    standardised = (values - parameters["location"]) / scale
    return -0.5 * jnp.square(standardised) - parameters["log_scale"] - 0.5 * jnp.log(2 * jnp.pi)


def _laplace_log_density(parameters, values, mask):
    del mask
    return -jnp.abs(values - parameters["location"]) / jnp.exp(parameters["log_scale"]) - parameters[
        "log_scale"
    ] - jnp.log(2.0)


def _uniform_support(parameters, values, mask):
    low, high = _extremes(values, mask)
    return low - jnp.exp(parameters["log_low_margin"]), high + jnp.exp(parameters["log_high_margin"])


def _uniform_log_density(parameters, values, mask):
    low, high = _uniform_support(parameters, values, mask)
    return jnp.full_like(values, -jnp.log(high - low))


def _uniform_start(values, probabilities, mask):
    del probabilities
    half_spread = _masked_log_spread(values, mask)
    return {"log_low_margin": half_spread, "log_high_margin": half_spread}


def _uniform_location(parameters, values, mask):
    low, high = _uniform_support(parameters, values, mask)
    return low + (high - low) / 2


def _exponential_log_density(parameters, values, mask):
    origin, _ = _extremes(values, mask)
    return parameters["log_rate"] - jnp.exp(parameters["log_rate"]) * (values - origin)


def _exponential_start(values, probabilities, mask):
    del probabilities
    return {"log_rate": -_masked_log_spread(values, mask)}


def _exponential_location(parameters, values, mask):
    origin, _ = _extremes(values, mask)
    return origin + jnp.exp(-parameters["log_rate"])


gaussian_density = TemplateDensity("gaussian", _gaussian_log_density, _location_scale_start, _location)
uniform_density = TemplateDensity("uniform", _uniform_log_density, _uniform_start, _uniform_location)
exponential_density = TemplateDensity(
    "exponential", _exponential_log_density, _exponential_start, _exponential_location
)
laplace_density = TemplateDensity("laplace", _laplace_log_density, _location_scale_start, _location)


def student_t_density(df: float) -> TemplateDensity:
    """The location-scale Student-t template with fixed degrees of freedom ``df``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> x, w = np.array([[10.0, 11.0, 12.0, 30.0]], np.float32), np.zeros((1, 4), np.float32)
        >>> generic = jaxfuse.fit_template(jaxfuse.student_t_density(3.0), x, w)
        >>> newton = jaxfuse.fuse_student_t(x[..., None], w, df=3.0)
        >>> bool(np.allclose(generic.location, newton.location[..., 0], rtol=1e-4))
        True
    """

    def log_density(parameters, values, mask):
        del mask
        residual = (values - parameters["location"]) * jnp.exp(-parameters["log_scale"])
        return (
            gammaln((df + 1) / 2)
            - gammaln(df / 2)
            - 0.5 * jnp.log(df * jnp.pi)
            - parameters["log_scale"]
            - 0.5 * (df + 1) * jnp.log1p(jnp.square(residual) / df)
        )

    def initial_parameters(values, probabilities, mask):
        # The likelihood is not concave: start near the robust centre, as the Newton solver does.
        centre = weighted_median(values[:, None], probabilities, mask)[0]
        start = _location_scale_start(values, probabilities, mask)
        return {"location": centre, "log_scale": start["log_scale"]}

    return TemplateDensity(f"student_t(df={df})", log_density, initial_parameters, _location)
