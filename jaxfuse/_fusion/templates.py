"""The one list of templates: each template's batched fit, its fused location, its options and their checks.

Adding a template means adding its closed form (or solver) in its own module
and one entry in :data:`TEMPLATES`; every entry point, the CLI's choices, the
study and the tests read their template names from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode
from jaxfuse._core.validation import positive_int, positive_scalar
from jaxfuse._fusion import closed_forms
from jaxfuse._fusion.student_t import StudentTOptions, student_t_fit


class Template(NamedTuple):
    """How one template is fitted to a batch of padded groups.

    Attributes:
        fit: ``(values [B, M, K], probabilities [B, M], mask [B, M], options)
            -> (parameters, result [B], steps [B])``.
        location: ``parameters -> [B, K]``, the fused value.
        options_type: the NamedTuple of the template's options, or None.
        infinite_allowed: parameter fields whose +inf is a documented value
            (the exponential's rate of a point mass), not an overflow.
    """

    fit: Callable
    location: Callable
    options_type: type | None = None
    infinite_allowed: tuple[str, ...] = ()


def _closed_form(fit_one_group):
    """Batch a per-group closed form with vmap; it always succeeds in zero steps."""

    def fit(values, probabilities, mask, options):
        del options
        parameters = jax.vmap(fit_one_group)(values, probabilities, mask)
        groups = values.shape[0]
        return parameters, jnp.full((groups,), ResultCode.SUCCESSFUL, RESULT_DTYPE), jnp.zeros((groups,), jnp.int32)

    return fit


TEMPLATES: dict[str, Template] = {
    "gaussian": Template(_closed_form(closed_forms.gaussian_fit), lambda p: p.location),
    "uniform": Template(_closed_form(closed_forms.uniform_fit), closed_forms.uniform_location),
    "exponential": Template(
        _closed_form(closed_forms.exponential_fit), closed_forms.exponential_location, infinite_allowed=("rate",)
    ),
    "laplace": Template(_closed_form(closed_forms.laplace_fit), lambda p: p.location),
    "student_t": Template(student_t_fit, lambda p: p.location, StudentTOptions),
}

TEMPLATE_NAMES = tuple(TEMPLATES)
"""Every template, in the order tables and reports list them."""

SEGMENT_SUM_TEMPLATES = ("gaussian", "uniform", "exponential")
"""Templates whose fit is a few segment sums over flat members (moments, minima, maxima): fused without
padding by :mod:`jaxfuse._fusion.flat_closed_forms`. The others need each group's members together
(Laplace's weighted median sorts them, Student-t iterates) and go through size-bucketed padded groups."""

PADDED_TEMPLATES = tuple(name for name in TEMPLATE_NAMES if name not in SEGMENT_SUM_TEMPLATES)


def representable(template: Template, parameters, location) -> jax.Array:
    """``[B]`` whether a group's location and parameters are finite (a documented +inf aside)."""
    finite = jnp.all(jnp.isfinite(location), axis=-1)
    for name, leaf in zip(parameters._fields, parameters):
        ok = (leaf == jnp.inf) | jnp.isfinite(leaf) if name in template.infinite_allowed else jnp.isfinite(leaf)
        finite &= jnp.all(ok, axis=-1)
    return finite


def template_options(template: str, options: dict[str, Any]):
    """Check a template's keyword options before tracing and return them as its options NamedTuple (None if it has none).

    Raises:
        TypeError: an option the template does not take.
        ValueError: an option outside its domain (named).
    """
    options_type = TEMPLATES[template].options_type
    if options_type is None:
        if options:
            raise TypeError(f"template {template!r} takes no options, got {sorted(options)}")
        return None
    unknown = set(options) - set(options_type._fields)
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for template {template!r}; expected some of {list(options_type._fields)}"
        )
    parsed = options_type(**options)
    if template == "student_t":
        positive_scalar(parsed.df, "df")
        low, high = (positive_scalar(b, "df_bounds") for b in parsed.df_bounds)
        if not low < high:
            raise ValueError(f"`df_bounds` must be (low, high) with low < high, got {parsed.df_bounds}")
        if parsed.fit_df and not low <= parsed.df <= high:
            raise ValueError(f"`df` ({parsed.df}) must lie within `df_bounds` {parsed.df_bounds} when fit_df=True")
        positive_int(parsed.max_steps, "max_steps")
        for name in ("rtol", "atol"):
            if getattr(parsed, name) is not None:
                positive_scalar(getattr(parsed, name), name)
        parsed = parsed._replace(
            df=float(parsed.df), fit_df=bool(parsed.fit_df), df_bounds=(float(low), float(high))
        )
    return parsed
