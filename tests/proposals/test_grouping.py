"""The greedy grouping kernel against a plain numpy loop of the published rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfuse._proposals.grouping import _group_batch_jit, group_batch_distinct, overlap_settings, segment_overlap
from jaxfuse._proposals.grouping_entry import group_proposals

CONVENTIONS = [("candidate", True), ("candidate", False), ("iou", True), ("iou", False)]
CONVENTION_IDS = ["candidate-discrete", "candidate-continuous", "iou-discrete", "iou-continuous"]


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def float_dtype(request):
    """float64 runs with x64 enabled for the test's duration only."""
    if request.param == np.float64:
        with jax.enable_x64(True):
            yield request.param
    else:
        yield request.param


def reference_overlap(leader, segments, overlap, discrete):
    """The published overlap, in the dtype of the inputs (so threshold decisions match bit for bit)."""
    offset = 1 if discrete else 0
    starts, ends = segments[:, 0], segments[:, 1]
    intersection = np.maximum(0, np.minimum(leader[1], ends) - np.maximum(leader[0], starts) + offset)
    candidate_length = ends - starts + offset
    if overlap == "candidate":
        denominator = candidate_length
    else:
        denominator = candidate_length + (leader[1] - leader[0] + offset) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection / denominator  # 0 / 0 is NaN, which is never > threshold


def reference_groups(segments, scores, threshold=0.25, overlap="candidate", discrete=False):
    """The published greedy loop on one item: a list of member index arrays, leader first."""
    remaining = np.argsort(-scores, kind="stable")  # descending, ties by index
    groups = []
    while remaining.size:
        leader = remaining[0]
        absorbed = reference_overlap(segments[leader], segments[remaining], overlap, discrete) > threshold
        absorbed[0] = True
        groups.append(remaining[absorbed])
        remaining = remaining[~absorbed]
    return groups


def random_item(rng, size, dtype=np.float32, span=200.0):
    """Clustered segments with distinct random scores."""
    clusters = max(1, size // 8)
    centres = rng.uniform(0, span, clusters)[rng.integers(0, clusters, size)]
    lengths = rng.exponential(12, size) * (rng.uniform(size=size) > 0.05)  # some zero-length
    starts = centres + rng.normal(0, 4, size) - lengths / 2
    segments = np.stack([starts, starts + lengths], axis=-1).astype(dtype)
    scores = rng.permutation(size).astype(dtype) / size + rng.uniform(0, 0.5 / size, size).astype(dtype)
    assert np.unique(scores).size == size
    return segments, scores


def as_batch(groups):
    """One item's result with a leading item axis."""
    return jax.tree.map(lambda x: np.asarray(x)[None], groups)


def assert_matches_reference(groups, segments, scores, valid, **conventions):
    group, leader, count = (np.asarray(x) for x in groups)
    for item in np.ndindex(scores.shape[:-1]):
        real = np.flatnonzero(valid[item])
        expected = reference_groups(segments[item][real], scores[item][real], **conventions)
        assert count[item] == len(expected)
        expected_group = np.full(scores.shape[-1], -1)
        for index, members in enumerate(expected):
            expected_group[real[members]] = index
        np.testing.assert_array_equal(group[item], expected_group)
        expected_leaders = [real[members[0]] for members in expected]
        np.testing.assert_array_equal(leader[item][: len(expected)], expected_leaders)
        assert (leader[item][len(expected) :] == -1).all()


@pytest.mark.parametrize("overlap,discrete", CONVENTIONS, ids=CONVENTION_IDS)
def test_groups_match_published_loop(overlap, discrete, float_dtype):
    rng = np.random.default_rng(7)
    items, size = 6, 48
    pairs = [random_item(rng, size, float_dtype) for _ in range(items)]
    segments = np.stack([p[0] for p in pairs])
    scores = np.stack([p[1] for p in pairs])
    valid = np.arange(size)[None, :] < rng.integers(0, size + 1, items)[:, None]
    valid[0] = True
    for threshold in (0.25, 0.6):
        groups = group_proposals(
            segments, scores, valid, overlap_threshold=threshold, overlap=overlap, discrete=discrete
        )
        assert_matches_reference(groups, segments, scores, valid, threshold=threshold, overlap=overlap, discrete=discrete)


def items_with_repeats(rng, items=6, size=48):
    """Items whose later slots often repeat an earlier proposal (segment and score), as CAS proposals do.

    Some distinct proposals also tie in score with others, so ties between
    first occurrences and repeats are both exercised. Returns segments,
    scores, valid and each slot's first occurrence (numpy).
    """
    segments = np.zeros((items, size, 2), np.float32)
    scores = np.zeros((items, size), np.float32)
    for item in range(items):
        fresh_segments, fresh_scores = random_item(rng, size)
        fresh_scores[rng.random(size) < 0.2] = fresh_scores[0]  # score ties between different segments
        for slot in range(size):
            repeat = slot > 0 and rng.random() < 0.6
            source = int(rng.integers(0, slot)) if repeat else None
            segments[item, slot] = segments[item, source] if repeat else fresh_segments[slot]
            scores[item, slot] = scores[item, source] if repeat else fresh_scores[slot]
    valid = np.arange(size)[None, :] < rng.integers(1, size + 1, items)[:, None]
    valid[0] = True
    first_slot = np.tile(np.arange(size, dtype=np.int32), (items, 1))
    for item, slot in zip(*np.nonzero(valid)):
        same = (segments[item, :slot] == segments[item, slot]).all(-1) & (scores[item, :slot] == scores[item, slot])
        if same.any():
            first_slot[item, slot] = np.argmax(same)
    return segments, scores, valid, first_slot


@pytest.mark.parametrize("overlap,discrete", CONVENTIONS, ids=CONVENTION_IDS)
def test_grouping_first_occurrences_only_equals_grouping_all(overlap, discrete):
    rng = np.random.default_rng(11)
    segments, scores, valid, first_slot = items_with_repeats(rng)
    run = jax.jit(group_batch_distinct, static_argnames="num_distinct")
    use_iou, offset = overlap_settings(overlap, discrete)
    lengths = segments[..., 1] - segments[..., 0] + (1 if discrete else 0)
    for threshold in (0.25, 0.6, 1.0):
        # Grouped on their own: first occurrences, and repeats their first would not absorb
        # (zero length with continuous lengths; every repeat at threshold 1).
        own = (first_slot == np.arange(48)) | (lengths <= 0) | (threshold >= 1)
        distinct = int((own & valid).sum(-1).max())
        assert distinct < 40 or threshold >= 1  # the repeats are many
        for num_distinct in (distinct, 48):  # exactly enough columns, and all of them
            groups = run(segments, scores, valid, first_slot, threshold, use_iou, offset, num_distinct=num_distinct)
            assert groups.leader.shape == (6, 48)
            assert_matches_reference(
                groups, segments, scores, valid, threshold=threshold, overlap=overlap, discrete=discrete
            )


def test_grouping_first_occurrences_only_through_row_compaction():
    """Enough items (130) that the first occurrences' loop drops finished rows (it stops compacting at 64)."""
    rng = np.random.default_rng(12)
    segments, scores, valid, first_slot = items_with_repeats(rng, items=130, size=24)
    distinct = int(((first_slot == np.arange(24)) & valid).sum(-1).max())
    groups = jax.jit(group_batch_distinct, static_argnames="num_distinct")(
        segments, scores, valid, first_slot, 0.25, False, 1, num_distinct=distinct
    )
    assert np.ptp(np.asarray(groups.count)) >= 4  # rows finish at different iterations
    assert_matches_reference(groups, segments, scores, valid, discrete=True)


def test_compaction_over_many_items_of_very_different_sizes():
    # 37 items (not a power of two) from one to ~90 groups: rows finish at very
    # different iterations, so every compaction stage is exercised.
    rng = np.random.default_rng(3)
    items, size = 37, 96
    segments = np.zeros((items, size, 2), np.float32)
    scores = np.zeros((items, size), np.float32)
    valid = np.zeros((items, size), bool)
    for item in range(items):
        n = int(rng.integers(1, size + 1))
        segments[item, :n], scores[item, :n] = random_item(rng, n, span=rng.uniform(5, 2000))
        valid[item, :n] = True
    groups = group_proposals(segments, scores, valid)
    assert np.ptp(np.asarray(groups.count)) > 20
    assert_matches_reference(groups, segments, scores, valid)


def test_ties_go_to_the_lower_input_index():
    segments = np.array([[0, 10], [20, 30], [1, 11], [21, 31]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, 0.9], np.float32)
    groups = group_proposals(segments, scores)
    np.testing.assert_array_equal(groups.leader, [1, 0, -1, -1])
    np.testing.assert_array_equal(groups.group, [1, 0, 1, 0])


def test_membership_is_strictly_greater_than_the_threshold():
    # Candidate [0, 3] has discrete length 4 and intersection 1 with [3, 10]: overlap exactly 0.25.
    segments = np.array([[3, 10], [0, 3], [0, 4]], np.float32)
    groups = group_proposals(segments, np.array([0.9, 0.8, 0.7], np.float32), discrete=True)
    np.testing.assert_array_equal(groups.group, [0, 1, 0])  # 2/5 > 0.25 joins, 1/4 does not


def test_threshold_at_or_above_one_leaves_every_proposal_alone():
    segments = np.array([[0, 10], [0, 10], [0, 10]], np.float32)
    groups = group_proposals(segments, np.array([0.1, 0.3, 0.2], np.float32), overlap_threshold=1.0)
    np.testing.assert_array_equal(groups.group, [2, 0, 1])
    np.testing.assert_array_equal(groups.leader, [1, 2, 0])


def test_zero_length_segments():
    segments = np.array([[5, 5], [5, 5], [0, 10], [20, 20]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # Discrete: a point has length 1 and overlaps itself and anything covering it fully.
    np.testing.assert_array_equal(group_proposals(segments, scores, discrete=True).group, [0, 0, 1, 2])
    # Continuous: zero length gives 0 / 0 with the published measure: never absorbed.
    continuous = group_proposals(segments, scores)  # the default
    np.testing.assert_array_equal(continuous.group, [0, 1, 2, 3])
    assert_matches_reference(as_batch(continuous), segments[None], scores[None], np.ones((1, 4), bool), discrete=False)


def test_empty_single_and_all_invalid_items():
    empty = group_proposals(np.zeros((3, 0, 2), np.float32), np.zeros((3, 0), np.float32))
    assert empty.group.shape == (3, 0) and empty.count.tolist() == [0, 0, 0]
    single = group_proposals(np.array([[2.0, 5.0]], np.float32), np.array([0.3], np.float32))
    assert single.group.tolist() == [0] and single.leader.tolist() == [0] and int(single.count) == 1
    # Invalid rows may hold garbage, NaN and reversed segments included.
    segments = np.array([[[np.nan, 1], [9, 2]], [[0, 1], [0, 2]]], np.float32)
    scores = np.array([[np.inf, np.nan], [0.5, 0.6]], np.float32)
    valid = np.array([[False, False], [True, True]])
    groups = group_proposals(segments, scores, valid)
    assert groups.count.tolist() == [0, 1]
    assert groups.group.tolist() == [[-1, -1], [0, 0]]
    assert groups.leader.tolist() == [[-1, -1], [1, -1]]


def test_bad_input_is_rejected_with_the_argument_named():
    segments = np.array([[0.0, 1.0], [3.0, 2.0]], np.float32)
    scores = np.array([0.5, 0.6], np.float32)
    with pytest.raises(ValueError, match="`segments`.*start <= end"):
        group_proposals(segments, scores)
    with pytest.raises(ValueError, match="`segments`.*start <= end"):
        group_proposals(jnp.asarray(segments), jnp.asarray(scores))
    with pytest.raises(ValueError, match="`scores` must be finite"):
        group_proposals(segments[:1], np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="`segments` must be finite"):
        group_proposals(np.array([[0.0, np.inf]], np.float32), scores[:1])
    with pytest.raises(ValueError, match="`scores` must have shape"):
        group_proposals(segments[:1], scores)
    with pytest.raises(ValueError, match=r"`segments` must have shape \[..., N, 2\]"):
        group_proposals(np.zeros((4, 3), np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="`segments` must be a floating-point"):
        group_proposals(np.zeros((4, 2), np.int32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="`valid` must be a bool"):
        group_proposals(segments[:1], scores[:1], np.ones(1, np.int32))
    with pytest.raises(ValueError, match="`overlap`"):
        group_proposals(segments[:1], scores[:1], overlap="giou")
    for threshold in (float("nan"), -0.5, 1.5):
        with pytest.raises(ValueError, match=r"`overlap_threshold` must lie in \[0, 1\]"):
            group_proposals(segments[:1], scores[:1], overlap_threshold=threshold)


def test_ten_thousand_proposals_in_one_item():
    rng = np.random.default_rng(11)
    segments, scores = random_item(rng, 10_000, span=20_000.0)
    groups = group_proposals(segments, scores, overlap="iou")
    assert_matches_reference(as_batch(groups), segments[None], scores[None], np.ones((1, 10_000), bool), overlap="iou")
    assert int(groups.count) > 500


def test_memory_is_linear_in_n():
    size = 10_000
    args = (
        jnp.zeros((1, size, 2), jnp.float32), jnp.zeros((1, size), jnp.float32), jnp.ones((1, size), bool),
        0.25, *overlap_settings("candidate", True),
    )
    memory = _group_batch_jit.lower(*args).compile().memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    # An N x N float32 matrix would be 400 MB; the kernel needs a few arrays of N.
    assert memory.temp_size_in_bytes < 64 * size * 4


def test_overlap_measures():
    leader = jnp.float32(0), jnp.float32(9)
    starts = jnp.array([0, 5, 9, 20], jnp.float32)
    ends = jnp.array([9, 14, 9, 30], jnp.float32)
    candidate = segment_overlap(*leader, starts, ends, *overlap_settings("candidate", True))
    np.testing.assert_allclose(candidate, [1, 5 / 10, 1, 0])
    iou = segment_overlap(*leader, starts, ends, *overlap_settings("iou", False))
    np.testing.assert_allclose(iou, [1, 4 / 14, 0, 0])
