"""fuse_groups against independent numpy formulas, and the invariances every template must keep."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_COORDINATES, SHARED_GROUPS, SHARED_MEMBERS, fuse_in_shared_shape, random_groups, tolerance

import jaxfuse
from jaxfuse import ResultCode
from jaxfuse._fusion.templates import TEMPLATE_NAMES

TEMPLATES = list(TEMPLATE_NAMES)
CLOSED_FORMS = [name for name in TEMPLATES if name != "student_t"]


def reference_probabilities(weights, temperature):
    logits = np.asarray(weights, np.float64) / temperature
    unnormalised = np.exp(logits - logits.max())
    return unnormalised / unnormalised.sum()


def reference_fusion(template, values, weights, temperature):
    """Plain numpy, float64, one unpadded group ``values [n, K]``: (location, parameter arrays)."""
    x = np.asarray(values, np.float64)
    g = reference_probabilities(weights, temperature)
    if template == "gaussian":
        mean = g @ x
        return mean, (mean, np.sqrt(g @ (x - mean) ** 2))
    if template == "uniform":
        return (x.min(0) + x.max(0)) / 2, (x.min(0), x.max(0))
    if template == "exponential":
        mean_offset = g @ (x - x.min(0))
        with np.errstate(divide="ignore"):
            return x.min(0) + mean_offset, (x.min(0), 1 / mean_offset)
    if template == "laplace":
        medians = []
        for column in x.T:
            order = np.argsort(column, kind="stable")
            cumulative = np.cumsum(g[order])
            medians.append(column[order][np.searchsorted(cumulative, cumulative[-1] / 2)])
        median = np.array(medians)
        return median, (median, g @ np.abs(x - median))
    raise AssertionError(template)


SHARED = (SHARED_GROUPS, SHARED_MEMBERS, SHARED_COORDINATES)  # most tests use it: one compile per template and dtype


def shared_groups(rng, dtype=np.float64, min_size=1):
    return random_groups(rng, *SHARED, dtype=dtype, min_size=min_size)


@functools.cache
def jitted_fuse(template):
    """One caller's jit per template for the whole module, temperature traced: tests share its compiles."""
    return jax.jit(lambda v, w, m, t: jaxfuse.fuse_groups(v, w, m, template=template, temperature=t))


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("template", CLOSED_FORMS)
@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_closed_forms_match_numpy_reference(template, temperature, dtype, use_jit):
    rng = np.random.default_rng([hash(template) % 2**32, int(temperature * 10)])
    values, weights, mask = shared_groups(rng, dtype)
    if use_jit:
        fused = jitted_fuse(template)(jnp.asarray(values), jnp.asarray(weights), jnp.asarray(mask), jnp.asarray(temperature, dtype))
    else:
        fused = jaxfuse.fuse_groups(jnp.asarray(values), jnp.asarray(weights), jnp.asarray(mask), template=template, temperature=temperature)
    assert fused.location.dtype == dtype
    assert (np.asarray(fused.result) == ResultCode.SUCCESSFUL).all()
    for group in range(values.shape[0]):
        members = mask[group]
        location, parameters = reference_fusion(template, values[group][members], weights[group][members], temperature)
        scale = np.abs(values[group][members]).max()
        np.testing.assert_allclose(fused.location[group], location, rtol=tolerance(dtype), atol=tolerance(dtype) * scale)
        for actual, expected in zip(fused.parameters, parameters):
            expected = np.asarray(expected)
            finite = np.isfinite(expected)
            np.testing.assert_array_equal(np.isfinite(np.asarray(actual[group])), finite)
            np.testing.assert_allclose(
                np.asarray(actual[group])[finite], expected[finite], rtol=50 * tolerance(dtype), atol=tolerance(dtype) * scale
            )
        expected_probabilities = np.zeros(mask.shape[1])
        expected_probabilities[members] = reference_probabilities(weights[group][members], temperature)
        np.testing.assert_allclose(fused.probabilities[group], expected_probabilities, rtol=tolerance(dtype), atol=1e-7)


@pytest.mark.parametrize("template", TEMPLATES)
def test_padding_and_mask_equal_the_unpadded_group(template, dtype):
    rng = np.random.default_rng(1)
    values, weights, _ = random_groups(rng, groups=SHARED_GROUPS, members=5, coordinates=SHARED_COORDINATES, dtype=dtype, min_size=5)
    unpadded = jaxfuse.fuse_groups(values, weights, template=template, temperature=0.5)
    # Interleave garbage-free but wild padding between the real members (the padded batch has the shared shape).
    padded_values = np.full(SHARED, 1e4, dtype)
    padded_weights = np.full(SHARED[:2], 50.0, dtype)
    mask = np.zeros(SHARED[:2], bool)
    slots = np.sort(rng.choice(SHARED_MEMBERS, size=5, replace=False))
    padded_values[:, slots], padded_weights[:, slots], mask[:, slots] = values, weights, True
    padded = jaxfuse.fuse_groups(padded_values, padded_weights, mask, template=template, temperature=0.5)
    np.testing.assert_allclose(padded.location, unpadded.location, rtol=tolerance(dtype))
    np.testing.assert_allclose(padded.probabilities[:, slots], unpadded.probabilities, rtol=tolerance(dtype))
    assert (padded.probabilities[~mask] == 0).all()


@pytest.mark.parametrize("template", TEMPLATES)
def test_permuting_members_changes_nothing(template, dtype):
    rng = np.random.default_rng(2)
    values, weights, mask = shared_groups(rng, dtype)
    permutation = rng.permutation(SHARED_MEMBERS)
    fused = jaxfuse.fuse_groups(values, weights, mask, template=template)
    permuted = jaxfuse.fuse_groups(values[:, permutation], weights[:, permutation], mask[:, permutation], template=template)
    np.testing.assert_allclose(permuted.location, fused.location, rtol=tolerance(dtype), atol=tolerance(dtype) * 500)
    np.testing.assert_allclose(permuted.probabilities, fused.probabilities[:, permutation], rtol=tolerance(dtype))


@pytest.mark.parametrize("template", TEMPLATES)
def test_translation_and_scaling_move_the_location(template, dtype):
    rng = np.random.default_rng(3)
    values, weights, mask = shared_groups(rng, dtype)
    fused = jaxfuse.fuse_groups(values, weights, mask, template=template)
    shift, factor = dtype(137.5), dtype(2.5)
    moved = jaxfuse.fuse_groups(values * factor + shift, weights, mask, template=template)
    expected = np.asarray(fused.location, np.float64) * factor + shift
    np.testing.assert_allclose(moved.location, expected, rtol=20 * tolerance(dtype), atol=20 * tolerance(dtype) * 1500)


@pytest.mark.parametrize("template", ["gaussian", "exponential", "laplace", "student_t"])
def test_vanishing_temperature_gives_the_highest_weight_member(template, dtype):
    rng = np.random.default_rng(4)
    values, weights, mask = shared_groups(rng, dtype)
    fused = jaxfuse.fuse_groups(values, weights, mask, template=template, temperature=1e-6)
    best = np.argmax(np.where(mask, weights, -np.inf), axis=1)
    # Exact up to the rounding of origin + (x - origin) in the exponential's parametrisation.
    np.testing.assert_allclose(fused.location, values[np.arange(SHARED_GROUPS), best], rtol=4 * np.finfo(dtype).eps, atol=0)


def test_float32_tiny_temperature_and_large_coordinates_do_not_overflow():
    rng = np.random.default_rng(5)
    values, weights, mask = shared_groups(rng, np.float32)
    values = (values + 1e6).astype(np.float32)
    weights = (weights * 30).astype(np.float32)  # logits up to 3e5 at T = 1e-4
    for template in TEMPLATES:
        fused = jaxfuse.fuse_groups(values, weights, mask, template=template, temperature=1e-4)
        assert np.isfinite(fused.location).all(), template
        assert (fused.result == ResultCode.SUCCESSFUL).all(), template
        low = np.where(mask[..., None], values, np.inf).min(1)
        high = np.where(mask[..., None], values, -np.inf).max(1)
        assert ((fused.location >= low) & (fused.location <= high)).all(), template


def test_exponential_location_equals_gaussian_location(dtype):
    """Erratum 3: softmax is shift invariant, so eq. (12) is the Gaussian's eq. (4)."""
    rng = np.random.default_rng(6)
    values, weights, mask = shared_groups(rng, dtype)
    gaussian = jaxfuse.fuse_gaussian(values, weights, mask, temperature=0.3)
    exponential = jaxfuse.fuse_exponential(values, weights, mask, temperature=0.3)
    np.testing.assert_allclose(exponential.location, gaussian.location, rtol=tolerance(dtype), atol=tolerance(dtype) * 500)
    # Eq. (9)'s logits (q - min q) / T give the same probabilities.
    shifted = weights - np.where(mask, weights, np.inf).min(1, keepdims=True)
    np.testing.assert_allclose(
        jaxfuse.fuse_exponential(values, shifted, mask, temperature=0.3).location, exponential.location, rtol=tolerance(dtype)
    )


def test_uniform_ignores_weights(dtype):
    rng = np.random.default_rng(7)
    values, weights, mask = shared_groups(rng, dtype)
    first = jaxfuse.fuse_uniform(values, weights, mask)
    second = jaxfuse.fuse_uniform(values, rng.normal(size=weights.shape).astype(dtype) * 10, mask, temperature=0.01)
    np.testing.assert_array_equal(first.location, second.location)
    np.testing.assert_array_equal(first.parameters.low, second.parameters.low)


def test_empty_and_nonfinite_groups_get_codes_and_do_not_leak(dtype):
    rng = np.random.default_rng(8)
    values, weights, mask = random_groups(rng, groups=6, members=8, coordinates=2, dtype=dtype)
    clean = {t: fuse_in_shared_shape(jaxfuse.fuse_groups, values, weights, mask, template=t) for t in TEMPLATES}
    mask[1] = False
    first_real = np.argmax(mask[2])
    values[2, first_real, 1] = np.nan
    weights[3, np.argmax(mask[3])] = np.inf
    values[4, ~mask[4]] = np.nan  # non-finite padding is ignored
    for template in TEMPLATES:
        fused = fuse_in_shared_shape(jaxfuse.fuse_groups, values, weights, mask, template=template)
        expected_codes = [0, ResultCode.EMPTY_GROUP, ResultCode.NONFINITE_INPUT, ResultCode.NONFINITE_INPUT, 0, 0]
        np.testing.assert_array_equal(fused.result, expected_codes)
        for leaf in jax.tree_util.tree_leaves(fused):
            assert np.isfinite(np.asarray(leaf)).all() or template == "exponential", template
        for group in (1, 2, 3):
            assert (fused.location[group] == 0).all() and (fused.probabilities[group] == 0).all()
        keep = [0, 4, 5]
        # The Gaussian's fast path and its careful fallback may round differently.
        np.testing.assert_allclose(fused.location[keep], clean[template].location[keep], rtol=tolerance(dtype))


@pytest.mark.parametrize("template", TEMPLATES)
def test_gradients_are_finite_and_zero_in_padding(template, dtype):
    rng = np.random.default_rng(9)
    values, weights, mask = shared_groups(rng, dtype)  # the derivative programs test_student_t also compiles
    mask[0] = False  # an empty group too

    def total_location(v, w):
        return jnp.sum(jaxfuse.fuse_groups(v, w, jnp.asarray(mask), template=template, temperature=0.5).location)

    value_gradient, weight_gradient = jax.grad(total_location, argnums=(0, 1))(jnp.asarray(values), jnp.asarray(weights))
    assert np.isfinite(value_gradient).all() and np.isfinite(weight_gradient).all()
    assert (np.asarray(value_gradient)[~mask] == 0).all()
    assert (np.asarray(weight_gradient)[~mask] == 0).all()


def test_inputs_are_never_modified():
    rng = np.random.default_rng(10)
    values, weights, mask = shared_groups(rng, np.float32)
    values[0, 0, 0] = np.nan
    copies = [values.copy(), weights.copy(), mask.copy()]
    for template in TEMPLATES:
        jaxfuse.fuse_groups(values, weights, mask, template=template)
    for original, copy in zip((values, weights, mask), copies):
        np.testing.assert_array_equal(original, copy)


def test_numpy_in_numpy_out_and_jax_in_jax_out():
    rng = np.random.default_rng(11)
    values, weights, mask = shared_groups(rng, np.float32)
    assert isinstance(jaxfuse.fuse_gaussian(values, weights, mask).location, np.ndarray)
    assert isinstance(jaxfuse.fuse_gaussian(jnp.asarray(values), weights, mask).location, jax.Array)


def test_leading_batch_dimensions_are_kept():
    rng = np.random.default_rng(12)
    values, weights, mask = shared_groups(rng, np.float32)
    flat = jaxfuse.fuse_student_t(values, weights, mask)
    nested_shape = (4, SHARED_GROUPS // 4)
    nested = jaxfuse.fuse_student_t(values.reshape(nested_shape + SHARED[1:]), weights.reshape(nested_shape + SHARED[1:2]),
                                    mask.reshape(nested_shape + SHARED[1:2]))
    assert nested.location.shape == nested_shape + SHARED[2:] and nested.result.shape == nested_shape
    np.testing.assert_array_equal(nested.location.reshape(SHARED_GROUPS, SHARED_COORDINATES), flat.location)


def test_bad_input_is_rejected_before_tracing():
    values, weights = np.zeros((2, 3, 2), np.float32), np.zeros((2, 3), np.float32)
    cases = [
        (dict(values=np.zeros((2, 3), np.float32)), ValueError, "values"),
        (dict(weights=np.zeros((2, 4), np.float32)), ValueError, "weights"),
        (dict(weights=np.zeros((3, 3), np.float32)), ValueError, "weights"),
        (dict(values=values.astype(np.int32)), TypeError, "values"),
        (dict(weights=weights.astype(np.int64)), TypeError, "weights"),
        (dict(mask=np.ones((2, 3), np.float32)), TypeError, "mask"),
        (dict(mask=np.ones((2, 2), bool)), ValueError, "mask"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=np.inf), ValueError, "temperature"),
        (dict(temperature=np.nan), ValueError, "temperature"),
        (dict(template="cauchy"), ValueError, "template"),
        (dict(template="gaussian", df=3.0), TypeError, "gaussian"),
        (dict(template="student_t", dof=3.0), TypeError, "dof"),
        (dict(template="student_t", df=-1.0), ValueError, "df"),
        (dict(template="student_t", max_steps=0), ValueError, "max_steps"),
        (dict(template="student_t", fit_df=True, df=500.0), ValueError, "df"),
    ]
    for overrides, error, word in cases:
        arguments = dict(values=values, weights=weights, mask=None, template="gaussian", temperature=1.0) | overrides
        with pytest.raises(error, match=word):
            jaxfuse.fuse_groups(**arguments)


def test_throw_raises_for_failed_groups_but_not_empty_ones():
    values, weights, mask = np.zeros((2, 3, 1)), np.zeros((2, 3)), np.ones((2, 3), bool)
    mask[1] = False
    fuse_in_shared_shape(jaxfuse.fuse_groups, values, weights, mask, throw=True)  # an empty group is not a failure
    values[0, 0, 0] = np.inf
    with pytest.raises(RuntimeError, match="NONFINITE_INPUT"):
        fuse_in_shared_shape(jaxfuse.fuse_groups, values, weights, mask, throw=True)


@pytest.mark.parametrize("template", TEMPLATES)
def test_default_temperature_is_the_published_one_everywhere(template):
    """One default (0.2, the published evaluation's) for fuse_groups, every fuse_<template> and fit_template."""
    assert jaxfuse._core.settings.DEFAULT.temperature == 0.2
    rng = np.random.default_rng(14)
    values, weights, mask = shared_groups(rng, np.float32, min_size=3)
    weights = weights * 4  # spread logits, so that T = 0.2 and T = 1 give clearly different weights
    explicit = jaxfuse.fuse_groups(values, weights, mask, template=template, temperature=0.2)
    for fused in (jaxfuse.fuse_groups(values, weights, mask, template=template), getattr(jaxfuse, f"fuse_{template}")(values, weights, mask)):
        np.testing.assert_array_equal(fused.probabilities, explicit.probabilities)
        np.testing.assert_array_equal(fused.location, explicit.location)
    other = jaxfuse.fuse_groups(values, weights, mask, template="gaussian", temperature=1.0)
    assert not np.allclose(other.probabilities, explicit.probabilities)


def test_fit_template_default_temperature_is_the_published_one():
    rng = np.random.default_rng(15)
    values, weights, mask = random_groups(rng, groups=4, members=6, coordinates=1, dtype=np.float32, min_size=3)
    default = jaxfuse.fit_template(jaxfuse.gaussian_density, values[..., 0], weights * 4, mask, max_steps=5)
    explicit = jaxfuse.fit_template(jaxfuse.gaussian_density, values[..., 0], weights * 4, mask, temperature=0.2, max_steps=5)
    np.testing.assert_array_equal(default.location, explicit.location)


def test_changing_temperature_does_not_recompile():
    rng = np.random.default_rng(13)
    values, weights, mask = shared_groups(rng, np.float32)
    jaxfuse.fuse_gaussian(values, weights, mask, temperature=0.5)
    before = jaxfuse.compile_count()
    for temperature in (0.1, 0.02, 0.0016):
        jaxfuse.fuse_gaussian(values, weights, mask, temperature=temperature)
    assert jaxfuse.compile_count() == before


@pytest.mark.parametrize("dtype, temperature", [(np.float16, 1e-8), (np.float32, 1e-39), (np.float32, 1e-45), (np.float32, 1e-30)])
@pytest.mark.parametrize("template", TEMPLATES)
def test_temperature_below_the_dtype_range_is_the_exact_limit(template, dtype, temperature):
    """Issue 8: T = 1e-39 in float32 (subnormal, flushed to zero on CPU) or 1e-8 in float16 gave NaN, SUCCESSFUL."""
    rng = np.random.default_rng(16)
    values, weights, mask = shared_groups(rng, dtype)
    fused = jaxfuse.fuse_groups(values, weights, mask, template=template, temperature=temperature)
    assert (fused.result == ResultCode.SUCCESSFUL).all()
    best = np.argmax(np.where(mask, weights, -np.inf), axis=1)
    expected_probabilities = np.zeros(weights.shape, dtype)
    expected_probabilities[np.arange(SHARED_GROUPS), best] = 1
    np.testing.assert_array_equal(fused.probabilities, expected_probabilities)
    if template == "uniform":
        return
    # Exact, up to the rounding of origin + (x - origin) in the exponential's parametrisation.
    atol = 2 * np.finfo(dtype).eps * np.abs(values).max() if template == "exponential" else 0
    np.testing.assert_allclose(fused.location, values[np.arange(SHARED_GROUPS), best], rtol=2 * np.finfo(dtype).eps, atol=atol)


@pytest.mark.parametrize("template", TEMPLATES)
def test_traced_invalid_temperature_gives_invalid_option_and_zeros(template):
    """Inside a caller's jit a temperature cannot raise: a non-positive or non-finite one is a result code."""
    rng = np.random.default_rng(17)
    values, weights, mask = shared_groups(rng, np.float32)
    fuse = functools.partial(jitted_fuse(template), jnp.asarray(values), jnp.asarray(weights), jnp.asarray(mask))
    for temperature in (0.0, -0.0, np.nan, -1.0, np.inf, -np.inf):
        fused = fuse(jnp.float32(temperature))
        assert (np.asarray(fused.result) == ResultCode.INVALID_OPTION).all(), temperature
        for leaf in jax.tree_util.tree_leaves(fused._replace(result=jnp.zeros(()))):
            assert (np.asarray(leaf) == 0).all(), temperature
    for temperature in (0.3, 1e-39):  # valid traced values fuse as concrete ones do
        traced = fuse(jnp.float32(temperature))
        eager = jaxfuse.fuse_groups(values, weights, mask, template=template, temperature=temperature)
        assert (np.asarray(traced.result) == ResultCode.SUCCESSFUL).all()
        np.testing.assert_allclose(traced.location, eager.location, rtol=tolerance(np.float32))


@pytest.mark.parametrize("template", TEMPLATES)
def test_results_beyond_the_dtype_get_the_overflow_code_and_do_not_leak(template):
    """Issue 8: finite float32 coordinates near +-3e38 gave inf/NaN, SUCCESSFUL, from the closed forms."""
    rng = np.random.default_rng(18)
    values, weights, mask = random_groups(rng, groups=6, members=4, coordinates=2, dtype=np.float32, min_size=4)
    values[1, :, 0] = [3e38, -3e38, 3.3e38, -3.2e38]  # offsets between members overflow
    values[2, :, 1] = [3.3e38, 3.4e38, 3.35e38, 3.3e38]  # near the limit, but representable differences
    values[3, :, 0] = [1e20, -1e20, 2e20, 0]  # a variance beyond float32, a representable location
    clean = fuse_in_shared_shape(jaxfuse.fuse_groups, values[[0, 4, 5]], weights[[0, 4, 5]], mask[[0, 4, 5]], template=template)
    fused = fuse_in_shared_shape(jaxfuse.fuse_groups, values, weights, mask, template=template)
    np.testing.assert_allclose(fused.location[[0, 4, 5]], clean.location, rtol=tolerance(np.float32))  # fast path or careful
    low, high = values.min(axis=1), values.max(axis=1)
    for group in (1, 2, 3):
        code = ResultCode(int(fused.result[group]))
        if code == ResultCode.SUCCESSFUL:
            assert np.isfinite(fused.location[group]).all()
            assert ((fused.location[group] >= low[group]) & (fused.location[group] <= high[group])).all()
            for name, leaf in zip(fused.parameters._fields, fused.parameters):
                assert (np.isfinite(leaf[group]) | ((name == "rate") & (leaf[group] == np.inf))).all()
        else:
            assert code == ResultCode.OVERFLOW, (group, code)
            assert (fused.location[group] == 0).all() and (fused.probabilities[group] == 0).all()
    # The uniform and the Gaussian location of values near the limit are representable and exact enough.
    if template == "uniform":
        assert (fused.result[[1, 2, 3]] == ResultCode.SUCCESSFUL).all()
        np.testing.assert_allclose(fused.location[1, 0], np.float32(3.3e38) / 2 + np.float32(-3.2e38) / 2, rtol=1e-6)
    if template == "gaussian":  # sums of squares beyond float32 (the scale itself would fit: a documented limit)
        assert fused.result[1] == ResultCode.OVERFLOW and fused.result[3] == ResultCode.OVERFLOW


@pytest.mark.parametrize("suspects", [3, 300])
def test_gaussian_codes_are_the_same_eager_and_inside_jit(suspects):
    """One Gaussian program: non-finite or overflowing groups get their codes in it, few (repaired in place) or many."""
    rng = np.random.default_rng(19)
    values, weights, mask = random_groups(rng, groups=320, members=4, coordinates=2, dtype=np.float32)
    bad = rng.choice(320, size=suspects, replace=False)
    values[bad[::3], 0, 0] = np.nan  # slot 0 may be padding: then it must not matter
    weights[bad[1::3], 0] = np.inf
    values[bad[2::3]] = np.array([3e38, -3e38], np.float32)[np.arange(4) % 2, None]
    eager = jaxfuse.fuse_gaussian(values, weights, mask)
    traced = jax.jit(lambda v, w, m: jaxfuse.fuse_gaussian(v, w, m))(jnp.asarray(values), jnp.asarray(weights), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(traced.result), eager.result)
    np.testing.assert_allclose(np.asarray(traced.location), eager.location, rtol=tolerance(np.float32))
    for group in range(320):
        real = mask[group]
        if not real.any():
            expected = ResultCode.EMPTY_GROUP
        elif not (np.isfinite(values[group][real]).all() and np.isfinite(weights[group][real]).all()):
            expected = ResultCode.NONFINITE_INPUT
        elif group in bad[2::3] and real.sum() > 1 and len(np.unique(values[group][real][:, 0])) > 1:
            expected = ResultCode.OVERFLOW
        else:
            expected = None  # a lone (or one-valued) member near the limit fits
        if expected is None:
            assert eager.result[group] == ResultCode.SUCCESSFUL
            if group not in bad:
                location, _ = reference_fusion("gaussian", values[group][real], weights[group][real], 0.2)
                np.testing.assert_allclose(eager.location[group], location, rtol=tolerance(np.float32), atol=1e-3)
        else:
            assert eager.result[group] == expected, group
            assert (eager.location[group] == 0).all()
