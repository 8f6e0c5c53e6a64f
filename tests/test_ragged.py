"""pack_groups: ragged members to padded buckets and back, with a bounded number of compiles."""

from __future__ import annotations

import numpy as np
import pytest

import jaxfuse


def test_pack_then_fuse_equals_fusing_each_group_alone():
    rng = np.random.default_rng(40)
    sizes = rng.integers(1, 20, size=37)
    values = rng.normal(size=(sizes.sum(), 3)).astype(np.float32) * 10
    weights = rng.uniform(size=sizes.sum()).astype(np.float32)
    labels = rng.permutation(np.repeat(rng.choice(1000, size=37, replace=False), sizes))
    packed = jaxfuse.pack_groups(values, weights, labels, min_groups=1, min_members=1)
    assert packed.values.shape == (64, 32, 3) and packed.num_groups == 37
    assert jaxfuse.pack_groups(values, weights, labels).values.shape == (256, 32, 3)
    fused = jaxfuse.fuse_gaussian(packed.values, packed.weights, packed.mask, temperature=0.3)
    locations = jaxfuse.unpack_groups(fused.location, packed)
    for row, label in enumerate(packed.group_ids):
        # Each group alone, in float64 numpy (not one compile per group size): softmax(w / T) @ x.
        members = labels == label
        logits = weights[members].astype(np.float64) / 0.3
        probabilities = np.exp(logits - logits.max())
        alone = probabilities / probabilities.sum() @ values[members].astype(np.float64)
        np.testing.assert_allclose(locations[row], alone, rtol=1e-6, atol=1e-6 * np.abs(values).max())
    assert (fused.result[37:] == jaxfuse.ResultCode.EMPTY_GROUP).all()
    probabilities = jaxfuse.unpack_members(fused.probabilities, packed)
    for label in packed.group_ids:
        np.testing.assert_allclose(probabilities[labels == label].sum(), 1.0, rtol=1e-6)


def test_lengths_and_group_ids_agree():
    rng = np.random.default_rng(41)
    lengths = rng.integers(0, 6, size=10)
    values = rng.normal(size=lengths.sum())
    weights = rng.normal(size=lengths.sum())
    by_lengths = jaxfuse.pack_groups(values, weights, lengths=lengths)
    by_ids = jaxfuse.pack_groups(values, weights, np.repeat(np.arange(10), lengths))
    nonempty = lengths > 0
    np.testing.assert_array_equal(by_lengths.mask[: 10][nonempty], by_ids.mask[: nonempty.sum()])
    np.testing.assert_array_equal(by_lengths.values[: 10][nonempty], by_ids.values[: nonempty.sum()])


def test_random_sizes_compile_once_per_bucket():
    rng = np.random.default_rng(42)
    buckets = set()
    before = jaxfuse.compile_count()
    for _ in range(60):
        sizes = rng.integers(1, 40, size=rng.integers(1, 200))
        values = rng.normal(size=(sizes.sum(), 3)).astype(np.float32)
        packed = jaxfuse.pack_groups(values, np.zeros(sizes.sum(), np.float32), lengths=sizes)
        buckets.add(packed.mask.shape)
        jaxfuse.fuse_gaussian(packed.values, packed.weights, packed.mask)
    assert jaxfuse.compile_count() - before <= len(buckets) <= 6


def test_bucket_sizes_and_errors():
    assert [jaxfuse.bucket_size(n) for n in (0, 1, 2, 3, 5, 64, 65)] == [1, 1, 2, 4, 8, 64, 128]
    with pytest.raises(ValueError, match="exactly one"):
        jaxfuse.pack_groups(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="lengths"):
        jaxfuse.pack_groups(np.zeros(3), np.zeros(3), lengths=[1, 1])
    with pytest.raises(ValueError, match="weights"):
        jaxfuse.pack_groups(np.zeros(3), np.zeros(2), lengths=[3])
    with pytest.raises(ValueError, match="members"):
        jaxfuse.pack_groups(np.zeros(3), np.zeros(3), lengths=[3], members=2)


def test_empty_input_packs_to_empty_padding():
    for kwargs in ({"lengths": []}, {"group_ids": []}, {"group_ids": np.zeros(0, np.int64)}):
        packed = jaxfuse.pack_groups(np.zeros(0), np.zeros(0), **kwargs)
        assert packed.num_groups == 0 and not packed.mask.any() and packed.values.shape == (256, 16, 1)
    with pytest.raises(TypeError, match="`lengths` must be integers"):
        jaxfuse.pack_groups(np.zeros(2), np.zeros(2), lengths=[1.0, 1.0])
