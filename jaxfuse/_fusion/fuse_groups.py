"""The public fusion entry points: padded groups in, one fused instance per group out."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxfuse._core.interop import array_kind, from_jax
from jaxfuse._core.result_codes import (
    RESULT_DTYPE,
    ResultCode,
    group_result,
    keeps_outputs,
    raise_for_results,
    repr_with_code_names,
)
from jaxfuse._core.settings import DEFAULT
from jaxfuse._core.validation import bool_array, choice, float_array, positive_scalar
from jaxfuse._fusion import closed_forms, flat_closed_forms, templates
from jaxfuse._fusion.templates import TEMPLATES, representable
from jaxfuse._fusion.weights import clipped_temperature, member_probabilities, temperature_is_valid
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache


class FusionResult(NamedTuple):
    """One fused instance per group.

    Attributes:
        location: ``[..., K]`` the fused value of each coordinate: the fitted
            template's location. Zero for groups whose ``result`` is
            ``EMPTY_GROUP`` or ``NONFINITE_INPUT``.
        parameters: the fitted template parameters, a template-specific
            NamedTuple (:class:`GaussianParameters`, :class:`UniformParameters`,
            :class:`ExponentialParameters`, :class:`LaplaceParameters`,
            :class:`StudentTParameters`) whose fields are ``[..., K]`` arrays.
        probabilities: ``[..., M]`` the sampling probabilities g_k
            (softmax of weights / T over each group's real members; zero in padding).
        result: ``[...]`` int32 :class:`ResultCode` of each group (the worst over
            its coordinates).
        steps: ``[...]`` int32 iterations taken (the most over coordinates; zero for
            closed forms).
    """

    location: jax.Array
    parameters: Any
    probabilities: jax.Array
    result: jax.Array
    steps: jax.Array

    __repr__ = repr_with_code_names  # result codes by name; still a NamedTuple (a pytree)


@functools.partial(jax.jit, static_argnames=("template", "options"))
def _fuse_flat(values, weights, mask, temperature, temperature_ok, template: str, options) -> FusionResult:
    """Fuse ``[B, M, K]`` padded groups with per-group result codes; one compile per (template, options, shapes, dtype).

    Codes, most severe first: INVALID_OPTION (a traced temperature that is not
    positive and finite; every group), EMPTY_GROUP, NONFINITE_INPUT, OVERFLOW
    (finite input, a result the dtype cannot hold), then the fit's own code.
    """
    finite = jnp.all(jnp.isfinite(values) | ~mask[..., None], axis=(1, 2)) & jnp.all(jnp.isfinite(weights) | ~mask, axis=1)
    nonempty = jnp.any(mask, axis=1)
    usable = finite & nonempty & temperature_ok
    # A failed group is fitted as a harmless one-member group, then zeroed: no NaN
    # is ever computed, so none can leak into values or gradients.
    fit_mask = jnp.where(usable[:, None], mask, jnp.arange(mask.shape[1]) == 0)
    keep = fit_mask & usable[:, None]
    clean_values = jnp.where(keep[..., None], values, 0)
    probabilities = member_probabilities(jnp.where(keep, weights, 0), fit_mask, temperature)

    kernel = TEMPLATES[template]
    parameters, result, steps = kernel.fit(clean_values, probabilities, fit_mask, options)
    location = kernel.location(parameters)

    result = group_result(result, representable=representable(kernel, parameters, location), finite=finite,
                          nonempty=nonempty, option_ok=temperature_ok)
    kept = keeps_outputs(result)

    def zero_if_failed(x):
        return jnp.where(kept.reshape(kept.shape + (1,) * (x.ndim - 1)), x, jnp.zeros_like(x))

    return FusionResult(
        location=zero_if_failed(location),
        parameters=jax.tree_util.tree_map(zero_if_failed, parameters),
        probabilities=zero_if_failed(probabilities),
        result=result,
        steps=zero_if_failed(steps),
    )


@jax.jit
def _fuse_gaussian(values, weights, mask, temperature, temperature_ok) -> FusionResult:
    """The Gaussian fit of a whole batch in two passes over ``values``, with every result code.

    One program for eager calls and calls inside a caller's ``jit``. On CPU, XLA
    runs the weighted sum as a batched contraction several times faster than an
    element-wise loop over ``[B, M, K]`` with its short minor axis, and every
    extra pass over the values costs a pass of memory traffic. So the batch is
    fused without per-member sanitising: a non-finite value (padding included)
    or an overflow makes its group's moments non-finite. When any group is
    suspect (or a traced temperature is invalid), the careful per-group kernel
    :func:`_fuse_flat`, which assigns the documented codes, refits the batch
    inside the same program. Only bad input pays for it; an earlier version
    also repaired a fixed chunk of suspect rows in place, which doubled the
    first call's compile time and cost every call that chunk's refit.
    """
    groups, _ = weights.shape
    probabilities = member_probabilities(weights, mask, temperature)
    parameters = closed_forms.gaussian_fit_batched(values, probabilities)
    nonempty = jnp.any(mask, axis=-1)
    finite_weights = jnp.all(jnp.isfinite(weights) | ~mask, axis=-1)
    finite_moments = jnp.all(jnp.isfinite(parameters.location) & jnp.isfinite(parameters.scale), axis=-1)
    suspect = ~(finite_weights & finite_moments) | ~temperature_ok
    fused = FusionResult(
        location=parameters.location,
        parameters=parameters,
        probabilities=probabilities,
        result=jnp.where(nonempty, ResultCode.SUCCESSFUL, ResultCode.EMPTY_GROUP).astype(RESULT_DTYPE),
        steps=jnp.zeros((groups,), jnp.int32),
    )
    return jax.lax.cond(
        jnp.any(suspect),
        lambda: _fuse_flat(values, weights, mask, temperature, temperature_ok, template="gaussian", options=None),
        lambda: fused,
    )


def _fuse_batch(values, weights, mask, temperature, temperature_ok, template: str, options) -> FusionResult:
    if template == "gaussian":
        return _fuse_gaussian(values, weights, mask, temperature, temperature_ok)
    return _fuse_flat(values, weights, mask, temperature, temperature_ok, template=template, options=options)


@functools.partial(jax.jit, static_argnames=("template", "options"))
def _fuse_program(values, weights, mask, temperature, temperature_ok, *, template: str, options) -> FusionResult:
    """``fuse_groups`` on ``[..., M, K]`` arrays as one dispatch: casts, flattening and reshapes happen in the program.

    Eager calls pay one dispatch instead of a dozen (each cast and reshape of
    the arguments and results was one: about 0.25 ms per call, more than the
    kernel itself for a hundred groups). ``mask=None`` means all members.
    """
    batch_shape, (members, coordinates) = values.shape[:-2], values.shape[-2:]
    dtype = jnp.result_type(values.dtype, weights.dtype)
    mask = jnp.ones(weights.shape, bool) if mask is None else mask
    flat = _fuse_batch(
        values.astype(dtype).reshape(-1, members, coordinates),
        weights.astype(dtype).reshape(-1, members),
        mask.reshape(-1, members),
        jnp.asarray(temperature, dtype),
        temperature_ok,
        template=template,
        options=options,
    )
    return jax.tree_util.tree_map(lambda x: x.reshape(batch_shape + x.shape[1:]), flat)


def compile_count() -> int:
    """How many executables the fusion kernels have compiled in this process (shapes x templates x dtypes).

    Counts :func:`fuse_groups`' programs and :func:`jaxfuse.fuse_ragged`'s segment-form ones.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values, weights = np.ones((3, 7, 5), np.float32), np.zeros((3, 7), np.float32)
        >>> before = jaxfuse.compile_count()
        >>> _ = jaxfuse.fuse_gaussian(values, weights, temperature=0.5)
        >>> _ = jaxfuse.fuse_gaussian(values, weights, temperature=0.1)  # a new temperature: the same program
        >>> jaxfuse.compile_count() - before
        1
    """
    return _fuse_program._cache_size() + flat_closed_forms.compile_count()


def fuse_groups(
    values,
    weights,
    mask=None,
    *,
    template: str = "gaussian",
    temperature=DEFAULT.temperature,
    throw: bool = False,
    **template_options,
) -> FusionResult:
    r"""Fuse each padded group of instances into one by fitting a template.

    Each coordinate of the members (start, end, score, ...) is fused separately
    with the same sampling probabilities :math:`g_k = \mathrm{softmax}(w / T)_k`,
    by minimising the cross-entropy :math:`-\sum_k g_k \log p(x_k; \theta)`
    (Zhou et al., CVPR 2023, supplement section 1.1). Templates:

    ======================  =========================================================
    ``"gaussian"``          :math:`\mu = \sum g_k x_k`, :math:`\sigma^2 = \sum g_k (x_k - \mu)^2`
    ``"uniform"``           :math:`a = \min x_k`, :math:`b = \max x_k`, location (a + b) / 2
    ``"exponential"``       on :math:`x - \min x`; location equals the Gaussian one (erratum 3)
    ``"laplace"``           weighted median (not in the paper)
    ``"student_t"``         safeguarded Newton on the location-scale t (erratum 4)
    ======================  =========================================================

    Args:
        values: ``[..., M, K]`` float, K coordinates of M (padded) members per group;
            any number of leading batch dimensions.
        weights: ``[..., M]`` float softmax logits, often the members' scores.
        mask: ``[..., M]`` bool, which members are real; ``None`` means all.
        template: one of ``"gaussian"``, ``"uniform"``, ``"exponential"``,
            ``"laplace"``, ``"student_t"``.
        temperature: positive scalar T (default 0.2, the published evaluation's,
            ``jaxfuse._core.settings.DEFAULT.temperature``). Changing it does not recompile.
        throw: raise ``RuntimeError`` if a non-empty group failed (non-finite
            input, or a Newton solve that reached ``max_steps``). Otherwise read
            the per-group ``result`` codes.
        **template_options: for ``"student_t"``: ``df`` (default 3.0),
            ``fit_df`` (estimate df too, within ``df_bounds``, default (1, 100)),
            ``max_steps`` (64), ``rtol`` and ``atol`` (default sqrt of the
            dtype's epsilon, on standardised coordinates).

    Returns:
        A :class:`FusionResult`; numpy arrays for numpy input, JAX arrays for
        JAX input, torch tensors for torch input. The computation follows the
        dtype of ``values`` and ``weights`` (promoted together).

    Raises:
        TypeError: non-floating ``values``/``weights``, a non-bool ``mask``, or
            unknown template options.
        ValueError: wrong shapes, ``temperature <= 0``, an unknown ``template``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values = np.array([[[10., 20.], [12., 22.], [0., 0.]]], np.float32)
        >>> fused = jaxfuse.fuse_groups(values, np.array([[1., 1., 0.]], np.float32),
        ...                             np.array([[True, True, False]]), temperature=0.2)
        >>> fused.location
        array([[11., 21.]], dtype=float32)
    """
    ensure_compilation_cache()  # before this call's first compilation
    kind = array_kind(values, weights)
    values = float_array(values, "values", min_ndim=2)
    weights = float_array(weights, "weights", min_ndim=1)
    members, coordinates = values.shape[-2:]
    if members == 0 or coordinates == 0:
        raise ValueError(f"`values` must have at least one member slot and one coordinate, got shape {values.shape}")
    if weights.shape != values.shape[:-1]:
        raise ValueError(
            f"`weights` must have shape {values.shape[:-1]} (the batch and member dimensions of `values` "
            f"{values.shape}), got {weights.shape}"
        )
    mask = None if mask is None else bool_array(mask, "mask", weights.shape)
    choice(template, "template", TEMPLATES)
    temperature = positive_scalar(temperature, "temperature")
    options = templates.template_options(template, template_options)

    # A concrete temperature was checked above; a traced one is checked in the program.
    dtype = jnp.result_type(values.dtype, weights.dtype)
    temperature_ok = True
    if isinstance(temperature, jax.core.Tracer):
        temperature_ok = temperature_is_valid(
            temperature if jnp.issubdtype(temperature.dtype, jnp.floating) else temperature.astype(dtype)
        )
    temperature = clipped_temperature(temperature, dtype)
    fused = _fuse_program(values, weights, mask, temperature, temperature_ok, template=template, options=options)
    if throw:
        if isinstance(fused.result, jax.core.Tracer):
            jax.debug.callback(raise_for_results, fused.result)
        else:
            raise_for_results(fused.result)
    return from_jax(fused, kind)


# One function per template, each ``fuse_groups`` with the template fixed. Written out (not made by a
# factory) so that their signatures and docstrings are in the source, where documentation tools read them.


def fuse_gaussian(values, weights, mask=None, *, temperature=DEFAULT.temperature, throw: bool = False) -> FusionResult:
    """``fuse_groups(..., template="gaussian")``: the weighted mean and standard deviation of each group.

    See :func:`fuse_groups` for the arguments and the result.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values = np.array([[[10.], [12.], [30.]]], np.float32)
        >>> fused = jaxfuse.fuse_gaussian(values, np.array([[0.9, 0.9, 0.1]], np.float32), temperature=1.0)
        >>> fused.location.round(3), fused.parameters.scale.round(3)
        (array([[14.486]], dtype=float32), array([[7.409]], dtype=float32))
    """
    return fuse_groups(values, weights, mask, template="gaussian", temperature=temperature, throw=throw)


def fuse_uniform(values, weights, mask=None, *, temperature=DEFAULT.temperature, throw: bool = False) -> FusionResult:
    """``fuse_groups(..., template="uniform")``: the range of each group; the weights play no part (erratum 2).

    See :func:`fuse_groups` for the arguments and the result.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values = np.array([[[10.], [12.], [30.]]], np.float32)
        >>> fused = jaxfuse.fuse_uniform(values, np.array([[0.9, 0.9, 0.1]], np.float32))
        >>> fused.location, fused.parameters.low, fused.parameters.high
        (array([[20.]], dtype=float32), array([[10.]], dtype=float32), array([[30.]], dtype=float32))
    """
    return fuse_groups(values, weights, mask, template="uniform", temperature=temperature, throw=throw)


def fuse_exponential(
    values, weights, mask=None, *, temperature=DEFAULT.temperature, throw: bool = False
) -> FusionResult:
    """``fuse_groups(..., template="exponential")``: the same location as the Gaussian (erratum 3), another spread.

    See :func:`fuse_groups` for the arguments and the result.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values, weights = np.array([[[10.], [12.], [30.]]], np.float32), np.array([[0.9, 0.9, 0.1]], np.float32)
        >>> exponential = jaxfuse.fuse_exponential(values, weights, temperature=1.0)
        >>> bool(np.allclose(exponential.location, jaxfuse.fuse_gaussian(values, weights, temperature=1.0).location))
        True
    """
    return fuse_groups(values, weights, mask, template="exponential", temperature=temperature, throw=throw)


def fuse_laplace(values, weights, mask=None, *, temperature=DEFAULT.temperature, throw: bool = False) -> FusionResult:
    """``fuse_groups(..., template="laplace")``: the weighted median of each group (not in the paper).

    See :func:`fuse_groups` for the arguments and the result.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values = np.array([[[10.], [12.], [30.]]], np.float32)
        >>> jaxfuse.fuse_laplace(values, np.array([[0.9, 0.9, 0.1]], np.float32), temperature=1.0).location
        array([[12.]], dtype=float32)
    """
    return fuse_groups(values, weights, mask, template="laplace", temperature=temperature, throw=throw)


def fuse_student_t(
    values, weights, mask=None, *, temperature=DEFAULT.temperature, throw: bool = False, **template_options
) -> FusionResult:
    """``fuse_groups(..., template="student_t")``: a location-scale t fitted by safeguarded Newton (erratum 4).

    Robust to an outlying member. See :func:`fuse_groups` for the arguments, the
    result and the options: ``df`` (default 3.0), ``fit_df``, ``df_bounds``,
    ``max_steps``, ``rtol``, ``atol``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values = np.array([[[10.], [11.], [12.], [90.]]], np.float32)   # an outlier at 90
        >>> fused = jaxfuse.fuse_student_t(values, np.zeros((1, 4), np.float32), df=3.0)
        >>> bool(10 < fused.location[0, 0] < 13), jaxfuse.ResultCode(int(fused.result[0])).name
        (True, 'SUCCESSFUL')
    """
    return fuse_groups(
        values, weights, mask, template="student_t", temperature=temperature, throw=throw, **template_options
    )
