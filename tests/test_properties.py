"""Property tests (hypothesis) for the invariants every template keeps."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxfuse

TEMPLATES = ["gaussian", "uniform", "exponential", "laplace", "student_t"]
MEMBERS = 6


@st.composite
def groups(draw):
    size = draw(st.integers(1, MEMBERS))
    coordinates = hnp.arrays(np.float64, (size, 2), elements=st.floats(-1e3, 1e3, allow_subnormal=False))
    values = draw(coordinates)
    weights = draw(hnp.arrays(np.float64, (size,), elements=st.floats(-5, 5, allow_subnormal=False)))
    temperature = draw(st.sampled_from([0.05, 0.5, 2.0]))
    template = draw(st.sampled_from(TEMPLATES))
    return values, weights, temperature, template


def pad(values, weights):
    padded_values = np.zeros((1, MEMBERS, 2))
    padded_weights = np.zeros((1, MEMBERS))
    mask = np.zeros((1, MEMBERS), bool)
    padded_values[0, : len(values)], padded_weights[0, : len(values)], mask[0, : len(values)] = values, weights, True
    return padded_values.astype(np.float32), padded_weights.astype(np.float32), mask


@settings(max_examples=60, deadline=None)
@given(groups(), st.randoms(use_true_random=False))
def test_location_lies_within_the_members_and_ignores_member_order(group, random):
    values, weights, temperature, template = group
    padded_values, padded_weights, mask = pad(values, weights)
    fused = jaxfuse.fuse_groups(padded_values, padded_weights, mask, template=template, temperature=temperature)
    assert fused.result[0] == jaxfuse.ResultCode.SUCCESSFUL
    low, high = padded_values[0, : len(values)].min(0), padded_values[0, : len(values)].max(0)
    slack = 1e-5 * (1 + np.abs(padded_values).max())
    assert ((fused.location[0] >= low - slack) & (fused.location[0] <= high + slack)).all()

    order = list(range(len(values)))
    random.shuffle(order)
    shuffled = jaxfuse.fuse_groups(*pad(values[order], weights[order]), template=template, temperature=temperature)
    np.testing.assert_allclose(shuffled.location, fused.location, rtol=1e-4, atol=slack)


@settings(max_examples=40, deadline=None)
@given(groups(), st.floats(-1e3, 1e3), st.floats(0.1, 10))
def test_location_is_equivariant_under_affine_maps(group, shift, factor):
    values, weights, temperature, template = group
    fused = jaxfuse.fuse_groups(*pad(values, weights), template=template, temperature=temperature)
    moved = jaxfuse.fuse_groups(*pad(values * factor + shift, weights), template=template, temperature=temperature)
    scale = 1 + np.abs(values).max() * factor + abs(shift)
    np.testing.assert_allclose(moved.location, fused.location * np.float32(factor) + np.float32(shift), atol=1e-4 * scale)
