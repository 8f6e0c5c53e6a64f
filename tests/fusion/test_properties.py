"""Property tests (hypothesis) for the invariants every template keeps."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SHARED_COORDINATES, SHARED_GROUPS, SHARED_MEMBERS, pad_to_shared_shape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxfuse
from jaxfuse import ResultCode
from jaxfuse._fusion.templates import TEMPLATE_NAMES

TEMPLATES = list(TEMPLATE_NAMES)
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
    """One group as row 0 of the suite's shared shape (the other rows empty): no compile of its own."""
    return pad_to_shared_shape(values[None].astype(np.float32), weights[None].astype(np.float32))


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
    np.testing.assert_allclose(shuffled.location[0], fused.location[0], rtol=1e-4, atol=slack)


@settings(max_examples=40, deadline=None)
@given(groups(), st.floats(-1e3, 1e3), st.floats(0.1, 10))
def test_location_is_equivariant_under_affine_maps(group, shift, factor):
    values, weights, temperature, template = group
    fused = jaxfuse.fuse_groups(*pad(values, weights), template=template, temperature=temperature)
    moved = jaxfuse.fuse_groups(*pad(values * factor + shift, weights), template=template, temperature=temperature)
    scale = 1 + np.abs(values).max() * factor + abs(shift)
    np.testing.assert_allclose(moved.location[0], fused.location[0] * np.float32(factor) + np.float32(shift), atol=1e-4 * scale)


FUZZ_GROUPS, FUZZ_MEMBERS, FUZZ_COORDINATES = SHARED_GROUPS, SHARED_MEMBERS, SHARED_COORDINATES


@st.composite
def padded_batches(draw, dtype):
    """A fixed-shape padded batch (one compile per template and dtype) with outliers and extreme scales.

    Drawn as knobs plus a seed rather than element by element, so examples are cheap and shrink to knobs.
    """
    info = np.finfo(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    largest_exponent = float(np.log10(info.max))
    exponent = draw(st.sampled_from([0.0, 3.0, 6.0, largest_exponent / 2, largest_exponent - 1, largest_exponent - 0.05]))
    outlier_exponent = draw(st.sampled_from([None, 2.0, 4.0, 5.0, 6.0, 8.0, largest_exponent]))
    logit_scale = draw(st.sampled_from([0.0, 1.0, 30.0, 1e30]))
    temperature = draw(st.sampled_from([1e-45, 1e-39, 1e-30, 1e-8, 0.0016, 0.2, 1.0, 1e3, 1e30]))
    sizes = rng.integers(0, FUZZ_MEMBERS + 1, size=FUZZ_GROUPS)
    mask = np.zeros((FUZZ_GROUPS, FUZZ_MEMBERS), bool)
    for row, size in zip(mask, sizes):
        row[rng.permutation(FUZZ_MEMBERS)[:size]] = True
    magnitude = 10.0**exponent
    centres = rng.uniform(-1, 1, size=(FUZZ_GROUPS, 1, FUZZ_COORDINATES)) * magnitude
    spreads = rng.uniform(0, 1, size=(FUZZ_GROUPS, 1, 1)) ** 4 * magnitude  # some near-point groups
    with np.errstate(over="ignore", invalid="ignore"):
        values = centres + spreads * rng.standard_t(3, size=(FUZZ_GROUPS, FUZZ_MEMBERS, FUZZ_COORDINATES))
        if outlier_exponent is not None:
            slot = rng.integers(0, FUZZ_MEMBERS, size=FUZZ_GROUPS)
            sides = rng.choice([-1.0, 1.0], size=(FUZZ_GROUPS, FUZZ_COORDINATES))
            far = centres[:, 0] + sides * np.maximum(spreads[:, 0], 1e-30) * np.power(10.0, outlier_exponent)
            values[np.arange(FUZZ_GROUPS), slot] = far
    # Finite input, by construction: overflowed draws become the dtype's extremes.
    values = np.nan_to_num(np.clip(values, -info.max, info.max), nan=0.0).astype(dtype)
    weights = (rng.uniform(-1, 1, size=(FUZZ_GROUPS, FUZZ_MEMBERS)) * logit_scale).astype(dtype)
    # Padding holds garbage, non-finite included: it must never matter.
    values[~mask] = rng.choice([0.0, np.nan, np.inf, 1e30], size=((~mask).sum(), 1)).astype(dtype)
    return values, weights, mask, temperature


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_fuzz_no_finite_input_gives_a_silent_wrong_answer(template, dtype):
    """Issue 8: finite input never yields non-finite outputs, nor an out-of-hull location with a keeping code."""
    with jax.enable_x64(dtype == np.float64):  # x64 only for the duration of this test

        @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(padded_batches(dtype))
        def check(batch):
            values, weights, mask, temperature = batch
            fused = jaxfuse.fuse_groups(values, weights, mask, template=template, temperature=temperature)
            codes = np.asarray(fused.result)
            assert fused.location.dtype == dtype
            for name, leaf in zip(fused.parameters._fields, fused.parameters):
                assert (np.isfinite(leaf) | ((name == "rate") & (leaf == np.inf))).all(), name
            for leaf in (fused.location, fused.probabilities):
                assert np.isfinite(leaf).all()
            assert ((codes == ResultCode.EMPTY_GROUP) == ~mask.any(axis=1)).all()
            kept = (codes == ResultCode.SUCCESSFUL) | (codes == ResultCode.MAX_STEPS_REACHED)
            assert ((codes == ResultCode.SUCCESSFUL) | (codes == ResultCode.OVERFLOW) | (codes == ResultCode.EMPTY_GROUP)
                    | (codes == ResultCode.MAX_STEPS_REACHED) | (codes == ResultCode.DIVERGED)).all(), codes
            low = np.where(mask[..., None], values, np.inf).min(axis=1)
            high = np.where(mask[..., None], values, -np.inf).max(axis=1)
            # A weighted mean may round past the extreme member by a few ulps of the largest coordinate.
            with np.errstate(over="ignore", invalid="ignore"):
                slack = 4 * np.finfo(dtype).eps * np.maximum(np.abs(low), np.abs(high))
                inside = (fused.location >= low - slack) & (fused.location <= high + slack)
            assert inside[kept].all(), (codes, fused.location, low, high)
            assert (fused.location[~kept] == 0).all() and (fused.probabilities[~kept] == 0).all()

        check()
