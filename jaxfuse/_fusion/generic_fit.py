r"""A generic cross-entropy fitter: any template, any optax optimiser, batched over groups.

It minimises, for each group, :math:`-\sum_k g_k \log p(x_k; \theta)` with
:math:`g = \mathrm{softmax}(w / T)` over the group's real members, in a
``lax.while_loop`` vmapped over groups. It exists to check every closed form
numerically and to let users fit templates of their own.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfuse._core.interop import array_kind, from_jax
from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode, group_result, repr_with_code_names
from jaxfuse._core.settings import DEFAULT
from jaxfuse._core.validation import bool_array, float_array, positive_int, positive_scalar
from jaxfuse._fusion.densities import TemplateDensity, student_t_density
from jaxfuse._fusion.weights import member_probabilities
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache


class FitResult(NamedTuple):
    """The fitted template of each group.

    Attributes:
        parameters: the fitted parameters, a pytree like the template's, each leaf
            with the batch shape ``[...]`` in front.
        location: ``[...]`` the template's location at the fitted parameters.
        loss: ``[...]`` the cross-entropy at the fitted parameters.
        steps: ``[...]`` optimiser steps taken.
        result: ``[...]`` :class:`ResultCode`: SUCCESSFUL when the gradient norm fell
            below ``tolerance``, MAX_STEPS_REACHED otherwise, DIVERGED for a
            non-finite loss (its outputs are zeros), EMPTY_GROUP or
            NONFINITE_INPUT for unusable groups.
    """

    parameters: Any
    location: jax.Array
    loss: jax.Array
    steps: jax.Array
    result: jax.Array

    __repr__ = repr_with_code_names  # result codes by name; still a NamedTuple (a pytree)


class _FitState(NamedTuple):
    parameters: Any
    optimizer_state: Any
    step: jax.Array
    gradient_norm: jax.Array


def _fit_one_group(values, weights, mask, temperature, template, optimizer, max_steps, tolerance):
    finite = jnp.all(jnp.where(mask, jnp.isfinite(values) & jnp.isfinite(weights), True))
    nonempty = jnp.any(mask)
    usable = finite & nonempty
    fit_mask = jnp.where(usable, mask, jnp.arange(mask.shape[0]) == 0)
    clean_values = jnp.where(fit_mask & usable, values, 0)
    # Padding holds a real member's value, so log-densities with data-dependent
    # supports stay finite there (and so do their gradients).
    clean_values = jnp.where(fit_mask, clean_values, clean_values[jnp.argmax(fit_mask)])
    probabilities = member_probabilities(jnp.where(fit_mask & usable, weights, 0), fit_mask, temperature)

    def cross_entropy(parameters):
        log_density = template.log_density(parameters, clean_values, fit_mask)
        return -jnp.sum(jnp.where(fit_mask, probabilities * log_density, 0))

    value_and_grad = jax.value_and_grad(cross_entropy)

    def step(state: _FitState) -> _FitState:
        value, gradient = value_and_grad(state.parameters)
        updates, optimizer_state = optimizer.update(
            gradient, state.optimizer_state, state.parameters, value=value, grad=gradient, value_fn=cross_entropy
        )
        parameters = optax.apply_updates(state.parameters, updates)
        return _FitState(parameters, optimizer_state, state.step + 1, optax.tree.norm(gradient))

    initial_parameters = template.initial_parameters(clean_values, probabilities, fit_mask)
    initial = _FitState(
        initial_parameters,
        optimizer.init(initial_parameters),
        jnp.zeros((), jnp.int32),
        jnp.asarray(jnp.inf, values.dtype),
    )
    final = jax.lax.while_loop(
        # A NaN gradient norm fails both comparisons: the loop stops on divergence too.
        lambda state: (state.step < max_steps) & ~(state.gradient_norm < tolerance) & ~jnp.isnan(state.gradient_norm) & usable,
        step,
        initial,
    )
    loss, gradient = jax.value_and_grad(cross_entropy)(final.parameters)
    gradient_norm = optax.tree.norm(gradient)
    diverged = ~jnp.isfinite(loss) | ~jnp.isfinite(gradient_norm)
    result = jnp.where(gradient_norm < tolerance, ResultCode.SUCCESSFUL, ResultCode.MAX_STEPS_REACHED)
    result = jnp.where(diverged, ResultCode.DIVERGED, result)
    result = group_result(result, finite=finite, nonempty=nonempty)
    zero_if_failed = lambda x: jnp.where(usable & ~diverged, x, jnp.zeros_like(x))  # noqa: E731
    return FitResult(
        parameters=jax.tree_util.tree_map(zero_if_failed, final.parameters),
        location=zero_if_failed(template.location(final.parameters, clean_values, fit_mask)),
        loss=zero_if_failed(loss),
        steps=final.step,
        result=result.astype(RESULT_DTYPE),
    )


@functools.partial(jax.jit, static_argnames=("template", "optimizer", "max_steps"))
def _fit_flat(values, weights, mask, temperature, tolerance, template, optimizer, max_steps):
    fit = functools.partial(
        _fit_one_group,
        temperature=temperature,
        template=template,
        optimizer=optimizer,
        max_steps=max_steps,
        tolerance=tolerance,
    )
    return jax.vmap(fit)(values, weights, mask)


def fit_template(
    template: TemplateDensity,
    values,
    weights,
    mask=None,
    *,
    temperature=DEFAULT.temperature,
    optimizer: optax.GradientTransformation | None = None,
    max_steps: int = 1000,
    tolerance: float | None = None,
) -> FitResult:
    r"""Fit a template to every group by minimising the cross-entropy with optax.

    For each group: :math:`\min_\theta -\sum_k g_k \log p(x_k; \theta)`,
    :math:`g = \mathrm{softmax}(w / T)`. Each coordinate is fitted on its own,
    with the group's probabilities, in either layout:

    * ``values [..., M, K]``, ``weights [..., M]``: the layout of
      :func:`jaxfuse.fuse_groups` (K coordinates per member, one weight per
      member); the outputs have shape ``[..., K]``, one fit per coordinate.
    * ``values [..., M]``, ``weights [..., M]``: one coordinate; outputs ``[...]``.

    Args:
        template: a :class:`TemplateDensity` (built-ins: ``gaussian_density``,
            ``uniform_density``, ``exponential_density``, ``laplace_density``,
            ``student_t_density(df)``; ``student_t_density`` itself, not
            called, means ``df=3``, as :func:`jaxfuse.fuse_student_t`), or one of your own.
        values: ``[..., M, K]`` or ``[..., M]`` float member values (see above).
        weights: ``[..., M]`` float softmax logits, one per member.
        mask: ``[..., M]`` bool, real members; ``None`` means all.
        temperature: positive scalar T (default 0.2, ``jaxfuse._core.settings.DEFAULT.temperature``).
        optimizer: any optax ``GradientTransformation`` (extra-args ones such as
            ``optax.lbfgs()`` receive value, gradient and value function).
            Default: ``optax.lbfgs()``. Pass the same instance to reuse compiled code.
        max_steps: static bound on optimiser steps.
        tolerance: stop when the gradient's L2 norm is below it; default
            ``sqrt(eps)`` of the dtype.

    Returns:
        A :class:`FitResult` with leading shape ``[..., K]`` (``[...]`` for one coordinate).

    Raises:
        TypeError, ValueError: bad arrays or options, naming the argument.

    Example:
        >>> import numpy as np, jaxfuse
        >>> x = np.array([[1.0, 2.0, 4.0]]); w = np.zeros((1, 3))
        >>> fit = jaxfuse.fit_template(jaxfuse.gaussian_density, x, w)
        >>> float(fit.location[0])  # doctest: +ELLIPSIS
        2.33...
        >>> segments = np.array([[[10.0, 50.0], [12.0, 48.0], [20.0, 60.0]]])  # [G, M, K]: fuse_groups' layout
        >>> print(jaxfuse.fit_template(jaxfuse.gaussian_density, segments, w).location.round(3))
        [[14.    52.667]]
    """
    ensure_compilation_cache()  # before this call's first compilation
    template = _checked_template(template)
    kind = array_kind(values, weights)
    values = float_array(values, "values", min_ndim=1)
    weights = float_array(weights, "weights", min_ndim=1)
    one_coordinate = values.shape == weights.shape
    values, weights = _one_coordinate_per_row(values, weights)
    if values.shape[-1] == 0:
        raise ValueError("`values` must have at least one member slot")
    mask = _broadcast_mask(mask, values.shape, one_coordinate)
    temperature = positive_scalar(temperature, "temperature")
    max_steps = positive_int(max_steps, "max_steps")
    dtype = jnp.result_type(values.dtype, weights.dtype)
    if tolerance is None:
        tolerance = float(jnp.finfo(dtype).eps) ** 0.5
    tolerance = positive_scalar(tolerance, "tolerance")
    optimizer = optax.lbfgs() if optimizer is None else optimizer

    batch_shape, members = values.shape[:-1], values.shape[-1]
    flat = _fit_flat(
        values.astype(dtype).reshape(-1, members),
        weights.astype(dtype).reshape(-1, members),
        mask.reshape(-1, members),
        jnp.asarray(temperature, dtype),
        jnp.asarray(tolerance, dtype),
        template=template,
        optimizer=optimizer,
        max_steps=max_steps,
    )
    fitted = jax.tree_util.tree_map(lambda x: x.reshape(batch_shape + x.shape[1:]), flat)
    return from_jax(fitted, kind)


_BARE_STUDENT_T_DF = 3.0


@functools.cache
def _bare_student_t() -> TemplateDensity:
    # One object for every bare reference, so that repeated calls reuse the compiled fit.
    return student_t_density(_BARE_STUDENT_T_DF)


def _checked_template(template) -> TemplateDensity:
    """The template to fit: ``student_t_density`` itself (not called) means df = 3."""
    if template is student_t_density:
        return _bare_student_t()
    if isinstance(template, TemplateDensity):
        return template
    if callable(template):
        raise TypeError("`template` must be a TemplateDensity, got a function; if it builds one, call it "
                        "(e.g. student_t_density(df=5.0))")
    raise TypeError(f"`template` must be a TemplateDensity, got {type(template).__name__}")


def _one_coordinate_per_row(values, weights):
    """``values [..., M, K]`` with ``weights [..., M]`` -> ``[..., K, M]`` each (K fits); ``[..., M]`` unchanged."""
    if weights.shape == values.shape:
        return values, weights
    if values.ndim == weights.ndim + 1 and values.shape[:-1] == weights.shape:
        values = jnp.moveaxis(values, -1, -2)
        return values, jnp.broadcast_to(weights[..., None, :], values.shape)
    raise ValueError(
        f"`weights` must hold one weight per member: shape {values.shape[:-1]} for `values` {values.shape} read as "
        f"[..., M, K] (the fuse_groups layout), or {values.shape} for one coordinate [..., M]; got {weights.shape}"
    )


def _broadcast_mask(mask, shape: tuple[int, ...], one_coordinate: bool):
    """The mask ``[..., M]`` (like ``weights``) in the shape ``[..., (K,) M]`` of the rows being fitted."""
    if mask is None:
        return jnp.ones(shape, bool)
    if one_coordinate:
        return bool_array(mask, "mask", shape)
    mask = bool_array(mask, "mask", shape[:-2] + shape[-1:])
    return jnp.broadcast_to(mask[..., None, :], shape)
