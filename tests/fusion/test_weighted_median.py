"""Lower weighted quantiles (``jaxfuse._fusion.closed_forms.weighted_quantiles``) against a plain numpy definition.

Weights are multiples of 1/64, so every cumulative weight is exact in float32 and
the reference and the kernel must pick the same member, ties and zero weights
included. Values come from a small pool (ties, -0 beside +0, signs, magnitudes
near the dtype's limit); padding holds values no real member has (NaN, infinities,
the pool's extremes) with zero weight and must never be chosen.
"""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from jaxfuse._fusion.closed_forms import SNAPPED_BISECTION_LIMIT, laplace_fit, weighted_quantiles

COORDINATES = 2
SHAPES = [(6, 7), (2, 80)]  # (groups, members) on both sides of SNAPPED_BISECTION_LIMIT
LEVELS = (0.25, 0.5, 0.75)


def reference_quantile(x, g, mask, level):
    """The smallest real value whose weight at or below it reaches ``level`` times the total weight."""
    total = g.sum()
    real, real_weight = x[mask].astype(np.float64), g[mask].astype(np.float64)
    for candidate in np.sort(real):
        if real_weight[real <= candidate].sum() >= level * total:
            return candidate
    raise AssertionError("the largest real value always reaches the total")


@functools.cache
def _batched_quantiles():
    return jax.jit(jax.vmap(lambda x, g, m: weighted_quantiles(x, g, m, LEVELS)))


def _pool(dtype):
    big = np.finfo(dtype).max
    return np.array([-big, -3.5, -1.0, -0.0, 0.0, 1.0, np.nextafter(dtype(1), dtype(2)), 2.5, 1e6, big], dtype)


def _groups(draw_data, dtype, shape):
    pool = _pool(dtype)
    real_pool = pool[1:-1]  # the extremes only pad, so a chosen extreme would be a chosen pad
    groups, members = shape
    shape = (groups, members, COORDINATES)
    slots = groups * members * COORDINATES
    mask = np.array(draw_data.draw(st.lists(st.booleans(), min_size=groups * members, max_size=groups * members)))
    mask = mask.reshape(groups, members)
    mask[:, 0] |= ~mask.any(axis=1)  # every group has a member; padding may sit anywhere
    picks = draw_data.draw(st.lists(st.integers(0, len(real_pool) - 1), min_size=slots, max_size=slots))
    values = real_pool[np.array(picks)].reshape(shape)
    padding = np.array([np.nan, np.inf, -np.inf, pool[0], pool[-1]], dtype)
    pad_picks = draw_data.draw(st.lists(st.integers(0, len(padding) - 1), min_size=slots, max_size=slots))
    values = np.where(mask[..., None], values, padding[np.array(pad_picks)].reshape(shape))
    sixty_fourths = draw_data.draw(st.lists(st.integers(0, 8), min_size=groups * members, max_size=groups * members))
    weights = np.where(mask, np.array(sixty_fourths).reshape(groups, members) / 64, 0).astype(dtype)
    return values, weights, mask


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"M={s[1]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@settings(max_examples=25, deadline=None)
@given(draw_data=st.data())
def test_weighted_quantiles_match_the_definition(dtype, shape, draw_data):
    assert min(m for _, m in SHAPES) <= SNAPPED_BISECTION_LIMIT < max(m for _, m in SHAPES)
    values, weights, mask = _groups(draw_data, dtype, shape)
    groups = shape[0]
    with jax.enable_x64(dtype == np.float64):
        quantiles = np.asarray(_batched_quantiles()(jnp.asarray(values), jnp.asarray(weights), jnp.asarray(mask)))
    assert quantiles.dtype == dtype
    for group in range(groups):
        for coordinate in range(COORDINATES):
            x = values[group, :, coordinate]
            for level_index, level in enumerate(LEVELS):
                expected = reference_quantile(x, weights[group], mask[group], level)
                assert quantiles[group, level_index, coordinate] == expected, (group, coordinate, level)


def test_laplace_location_gradient_reaches_only_the_median_member():
    """laplace_fit re-gathers the median member: d location / d values is one-hot on it."""
    rng = np.random.default_rng(0)
    values = jnp.asarray(rng.permutation(np.arange(9.0, dtype=np.float32))[:, None])
    probabilities = jnp.full((9,), 1 / 9, jnp.float32)
    mask = jnp.ones((9,), bool)
    gradient = jax.grad(lambda v: laplace_fit(v, probabilities, mask).location[0])(values)
    expected = (np.asarray(values)[:, 0] == 4).astype(np.float32)  # the median of 0..8
    np.testing.assert_array_equal(np.asarray(gradient)[:, 0], expected)
