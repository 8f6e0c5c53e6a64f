"""The parallel-rounds grouping against the sequential loop and the published numpy loop, bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_grouping import (
    CONVENTION_IDS,
    CONVENTIONS,
    assert_matches_reference,
    items_with_repeats,
    random_item,
    reference_overlap,
)

from jaxfuse._proposals.actionformer_nms import hard_nms_batch, parallel_hard_nms_batch
from jaxfuse._proposals.grouping import group_batch, overlap_settings
from jaxfuse._proposals.grouping_entry import group_items, group_items_distinct, grouping_method
from jaxfuse._proposals.parallel_grouping import (
    DEFAULT_MAX_ROUNDS,
    parallel_group_batch_with_stats,
    tile_plan,
)
from jaxfuse.bench.data import actionformer_like_candidates

_STATIC = ("max_rounds", "pairs_per_tile", "min_pairs", "fallback_rows")
parallel = jax.jit(parallel_group_batch_with_stats, static_argnames=_STATIC)
loop = jax.jit(group_batch)
hard_nms = jax.jit(hard_nms_batch, static_argnames="keep")
parallel_hard_nms = jax.jit(parallel_hard_nms_batch, static_argnames="keep")


def assert_same_groups(expected, found):
    for name, a, b in zip(("group", "leader", "count"), expected, found):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def tied_items(rng, items, size, dtype=np.float32, grid=False):
    """Clustered items whose scores take few values (many ties), some invalid slots and zero-length segments.

    With ``grid``, endpoints are small integers, so many overlaps are simple
    fractions that land exactly on thresholds such as 0.25, 1/3 or 0.5.
    """
    segments = np.zeros((items, size, 2), dtype)
    scores = np.zeros((items, size), dtype)
    for item in range(items):
        segments[item], scores[item] = random_item(rng, size, dtype, span=float(rng.uniform(20, 400)))
    if grid:
        starts = rng.integers(0, 3 * size, (items, size))
        segments = np.stack([starts, starts + rng.integers(0, 9, (items, size))], -1).astype(dtype)
    scores = (np.round(scores * rng.integers(2, 12, (items, 1))) / 4).astype(dtype)  # a handful of levels
    scores[:, ::7] = -0.0  # ties between -0.0 and 0.0 too
    scores[:, 3::7] = 0.0
    valid = rng.random((items, size)) < 0.85
    valid[0] = True
    valid[1] = False  # an item with nothing to group
    return segments, scores, valid


def thresholds_on_overlaps(segments, valid, overlap, discrete, rng, count=3):
    """Thresholds equal to overlaps that actually occur (so some decisions fall exactly on them)."""
    item = segments[0][valid[0]]
    leader = item[int(rng.integers(len(item)))]
    values = reference_overlap(leader, item, overlap, discrete)
    values = np.unique(values[(values > 0) & (values < 1)])
    return [float(v) for v in rng.choice(values, min(count, values.size), replace=False)]


@pytest.mark.parametrize("overlap,discrete", CONVENTIONS, ids=CONVENTION_IDS)
@pytest.mark.parametrize("grid", [False, True], ids=["clustered", "integer-grid"])
def test_same_groups_as_the_loop_and_the_published_rule(overlap, discrete, grid):
    rng = np.random.default_rng(101 + 7 * grid + 3 * discrete + (overlap == "iou"))
    segments, scores, valid = tied_items(rng, 10, 80, grid=grid)
    settings = overlap_settings(overlap, discrete)
    thresholds = [0.0, 0.25, 0.5, 1.0, float(rng.uniform())]
    thresholds += thresholds_on_overlaps(segments, valid, overlap, discrete, rng)
    for threshold in thresholds:
        threshold = np.float32(threshold)
        expected = loop(segments, scores, valid, threshold, *settings)
        found, stats = parallel(segments, scores, valid, threshold, *settings)
        assert_same_groups(expected, found)
        assert int(stats.sequential_rows) == 0
        assert_matches_reference(found, segments, scores, valid, threshold=threshold, overlap=overlap,
                                 discrete=discrete)


def test_float64(dtype):
    rng = np.random.default_rng(5)
    segments, scores, valid = tied_items(rng, 6, 64, dtype=dtype)
    for overlap, discrete in (("candidate", True), ("iou", False)):
        expected = loop(segments, scores, valid, 0.3, *overlap_settings(overlap, discrete))
        found, _ = parallel(segments, scores, valid, 0.3, *overlap_settings(overlap, discrete))
        assert_same_groups(expected, found)
        assert_matches_reference(found, segments, scores, valid, threshold=0.3, overlap=overlap, discrete=discrete)


def test_traced_threshold_inside_a_callers_jit():
    rng = np.random.default_rng(9)
    segments, scores, valid = tied_items(rng, 5, 48)

    @jax.jit
    def caller(threshold, use_iou):
        # The threshold reaches the kernel as a traced value, after some arithmetic of the caller's.
        return parallel_group_batch_with_stats(segments, scores, valid, threshold * 0.5, use_iou, 1)[0]

    for threshold in (0.2, 0.5, 1.4):
        found = caller(threshold, True)
        assert_same_groups(loop(segments, scores, valid, threshold * 0.5, True, 1), found)
        assert_matches_reference(found, segments, scores, valid, threshold=np.float32(threshold * 0.5), overlap="iou",
                                 discrete=True)


def test_negative_threshold_relates_disjoint_segments():
    """A negative threshold (flagged invalid by the public API) still gives the loop's groups: one per item."""
    rng = np.random.default_rng(13)
    segments, scores, valid = tied_items(rng, 4, 40)
    expected = loop(segments, scores, valid, -0.5, False, 1)
    found, _ = parallel(segments, scores, valid, -0.5, False, 1)
    assert_same_groups(expected, found)
    np.testing.assert_array_equal(np.asarray(found.count), (valid.sum(1) > 0).astype(int))


def actionformer_classes(threshold_count=2):
    """Two ActionFormer-like (video, class) items of about 1,000 candidates (2,000 per video), padded to 2,048."""
    candidates = actionformer_like_candidates(2, 2_000, seed=3)
    items = [(candidates.segments[v][candidates.labels[v] == c], candidates.scores[v][candidates.labels[v] == c])
             for v in range(2) for c in np.unique(candidates.labels[v])][:threshold_count]
    size = 2_048
    segments = np.zeros((len(items), size, 2), np.float32)
    scores = np.zeros((len(items), size), np.float32)
    valid = np.zeros((len(items), size), bool)
    for row, (s, q) in enumerate(items):
        segments[row, : len(q)], scores[row, : len(q)], valid[row, : len(q)] = s, q, True
    return segments, scores, valid


def test_actionformer_like_candidates_with_iou():
    segments, scores, valid = actionformer_classes()
    for threshold in (0.1, 0.5, 0.7):
        expected = loop(segments, scores, valid, threshold, *overlap_settings("iou", False))
        found, stats = parallel(segments, scores, valid, threshold, *overlap_settings("iou", False))
        assert_same_groups(expected, found)
        assert int(stats.sequential_rows) == 0 and 2 <= int(stats.rounds) <= 16
    assert_matches_reference(found, segments, scores, valid, threshold=0.7, overlap="iou", discrete=False)
    assert np.asarray(found.count).min() > 100


def suppression_chain(length, size):
    """One item whose proposals each absorb only the next one, best first: the fixed point needs ~length rounds."""
    starts = np.arange(size, dtype=np.float32)
    segments = np.stack([starts, starts + 1.5], -1)  # neighbours overlap 1/3 of a candidate, next-but-one not at all
    scores = (size - np.arange(size)).astype(np.float32)
    valid = np.arange(size) < length
    return segments, scores, valid


def test_adversarial_chain_beyond_the_round_cap_is_finished_exactly():
    chain = suppression_chain(60, 64)  # needs 60 rounds, more than the default cap
    rng = np.random.default_rng(17)
    others = tied_items(rng, 3, 64)
    segments, scores, valid = (np.concatenate([a[None], b]) for a, b in zip(chain, others))
    expected = loop(segments, scores, valid, 0.25, False, 0)
    found, stats = parallel(segments, scores, valid, 0.25, False, 0)
    assert int(stats.rounds) == DEFAULT_MAX_ROUNDS and int(stats.sequential_rows) == 1
    assert_same_groups(expected, found)
    np.testing.assert_array_equal(np.asarray(found.leader[0, :30]), np.arange(0, 60, 2))
    assert_matches_reference(found, segments, scores, valid, threshold=0.25, discrete=False)
    # A cap of 3 rounds leaves most rows to the sequential finish, 2 at a time: still exact.
    capped, stats = parallel(segments, scores, valid, 0.25, False, 0, max_rounds=3, fallback_rows=2)
    assert int(stats.rounds) == 3 and int(stats.sequential_rows) >= 2
    assert_same_groups(expected, capped)


def test_rows_whose_tile_pairs_do_not_fit_are_finished_exactly():
    rng = np.random.default_rng(19)
    segments, scores, valid = tied_items(rng, 6, 128)
    segments[2] = np.stack([np.zeros(128), np.full(128, 50.0)], -1)  # everything overlaps: all 10 tile pairs
    plan = tile_plan(6, 128, pairs_per_tile=1, min_pairs=1)
    expected = loop(segments, scores, valid, 0.25, True, 1)
    found, stats = parallel(segments, scores, valid, 0.25, True, 1, pairs_per_tile=1, min_pairs=1)
    assert stats.pair_slots == plan.pairs < int(stats.pairs)
    assert int(stats.sequential_rows) >= 1
    assert_same_groups(expected, found)


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_overlaps_across_a_tile_boundary_at_the_edge_of_reach(discrete):
    """The first tile's long proposal barely reaches the second tile's first ones (by start): they must still pair."""
    starts = 3 * np.arange(64, dtype=np.float32)  # apart by more than a frame: no chains in the first tile
    segments = np.stack([starts, starts + 0.5], -1)
    segments[31] = [95.0, 200.0]
    # Intersections with [95, 200]: 0.3 with the +1 convention (candidate length 1.1), 0.1 of 0.15 without.
    segments[32:] = [200.7, 200.8] if discrete else [199.9, 200.05]
    segments[32:, :] += np.arange(32, dtype=np.float32)[:, None] * 1e-4 * (np.arange(32) > 0)[:, None]
    scores = np.linspace(0.1, 0.2, 64).astype(np.float32)
    scores[31] = 1.0
    args = (segments[None], scores[None], np.ones((1, 64), bool), 0.25, False, int(discrete))
    expected = loop(*args)
    assert int(expected.count[0]) == 32  # the long one absorbs the whole second tile
    found, stats = parallel(*args)
    assert int(stats.sequential_rows) == 0
    assert_same_groups(expected, found)


def test_tile_reach_by_binary_search(monkeypatch):
    """Large batches find each tile's reach by binary search instead of comparing all tile pairs: same groups."""
    import jaxfuse._proposals.parallel_grouping as module

    monkeypatch.setattr(module, "REACH_BY_COMPARISON", 0)
    rng = np.random.default_rng(31)
    segments, scores, valid = tied_items(rng, 4, 200)
    searched = jax.jit(lambda *args: parallel_group_batch_with_stats(*args)[0])  # a fresh trace
    for threshold in (0.0, 0.3):
        assert_same_groups(loop(segments, scores, valid, threshold, True, 0),
                           searched(segments, scores, valid, threshold, True, 0))


def test_empty_and_degenerate_batches():
    for shape in ((0, 5), (3, 0)):
        found, _ = parallel(np.zeros((*shape, 2), np.float32), np.zeros(shape, np.float32), np.ones(shape, bool),
                            0.25, False, 1)
        assert found.group.shape == shape and found.count.shape == shape[:1]
    one = parallel(np.array([[[2.0, 5.0]]], np.float32), np.array([[0.3]], np.float32), np.ones((1, 1), bool),
                   0.25, False, 1)[0]
    assert one.group.tolist() == [[0]] and one.leader.tolist() == [[0]] and one.count.tolist() == [1]


def test_long_item_of_many_disjoint_proposals_forms_few_tile_pairs():
    """20,000 proposals, mostly disjoint: tile pairs stay near one per tile and no N x N array is formed."""
    rng = np.random.default_rng(23)
    size = 20_000
    starts = rng.uniform(0, 40 * size, size)
    segments = np.stack([starts, starts + rng.exponential(5, size)], -1).astype(np.float32)
    scores = rng.random(size).astype(np.float32)
    args = (segments[None], scores[None], np.ones((1, size), bool), 0.25, False, 0)
    found, stats = parallel(*args)
    assert int(stats.pairs) < 2 * tile_plan(1, size).tiles
    assert_same_groups(loop(*args), found)
    assert int(found.count[0]) > 15_000
    memory = parallel.lower(*args).compile().memory_analysis()
    if memory is not None:  # an N x N float32 matrix would be 1.6 GB
        assert memory.temp_size_in_bytes < 200 * size * 4 + tile_plan(1, size).pairs * 300


@pytest.mark.parametrize("keep", [40, 5_000], ids=["keep-40", "keep-all"])
def test_actionformer_hard_nms_by_rounds_selects_what_the_loop_selects(keep):
    segments, scores, valid = actionformer_classes()
    priority = np.round(scores * 50) / 50  # many equal priorities: ties go to the lower index
    eligible = valid & (scores > 0.001)
    for threshold in (0.0, 0.1, 0.5, 0.7, 1.0):
        expected = hard_nms(segments, scores, priority, eligible, threshold, keep=keep)
        found = parallel_hard_nms(segments, scores, priority, eligible, threshold, keep=keep)
        for name, a, b in zip(expected._fields, expected, found):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name} at {threshold}")


def test_the_entry_picks_a_method_per_backend_and_size():
    assert grouping_method(400, 1024, "gpu") == grouping_method(1, 16, "tpu") == "parallel"
    assert grouping_method(400, 1024, "cpu") == "loop"  # THUMOS-like buckets: the sorts alone cost more
    assert grouping_method(1, 100_000, "cpu") == grouping_method(400, 8192, "cpu") == "parallel"
    assert grouping_method(1, 2048, "cpu") == "loop"  # a few milliseconds warm, against 1.4 s more to compile
    with pytest.raises(ValueError, match="`method`"):
        group_items(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2), np.float32), np.ones((1, 2), bool), 0.25,
                    False, 1, method="greedy")


@pytest.mark.parametrize("overlap,discrete", CONVENTIONS[1:3], ids=CONVENTION_IDS[1:3])
def test_first_occurrences_only_by_either_method(overlap, discrete):
    """detect's path: repeats take their first occurrence's group; the kernel on the first occurrences may be either."""
    segments, scores, valid, first_slot = items_with_repeats(np.random.default_rng(29))
    settings = overlap_settings(overlap, discrete)
    distinct = int(((first_slot == np.arange(48)) | (segments[..., 1] - segments[..., 0] + discrete <= 0)).sum(-1).max())
    run = jax.jit(group_items_distinct, static_argnames=("num_distinct", "method"))
    for threshold in (0.25, 0.7):
        loop_groups = run(segments, scores, valid, first_slot, threshold, *settings, num_distinct=distinct,
                          method="loop")
        found = run(segments, scores, valid, first_slot, threshold, *settings, num_distinct=distinct,
                    method="parallel")
        assert_same_groups(loop_groups, found)
        assert_same_groups(jax.jit(group_items, static_argnames="method")(
            segments, scores, valid, threshold, *settings, method="parallel"), found)
        assert_matches_reference(found, segments, scores, valid, threshold=threshold, overlap=overlap,
                                 discrete=discrete)
