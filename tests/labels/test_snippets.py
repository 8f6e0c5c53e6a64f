"""segments_to_snippets: the published segment-to-snippet LP against scipy's HiGHS, degenerate cases, options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from published_lp import highs_reference, published_matrix

import jaxfuse
from jaxfuse import LPResultCode, segments_to_snippets
from jaxfuse.bench.published_labels import (
    optimum_is_unique,
    published_fusion,
    published_proposals,
    published_rows,
)

NUM_SNIPPETS = 512
ROWS = 96
LEVELS = np.arange(0.001, 0.04, 0.002)


def thumos_like_items(seed: int, temperature: float = 0.02):
    """Fused segments ``[R, 3]`` and video lengths of the classes that pass the published class threshold."""
    videos = jaxfuse.synthetic_videos(num_videos=6, num_classes=4, min_length=150, max_length=NUM_SNIPPETS, seed=seed)
    items = []
    for video, length in enumerate(videos.length.tolist()):
        for klass in range(videos.cas.shape[2]):
            if videos.video_scores[video, klass] < 0.16:
                continue
            proposals = published_proposals(videos.cas[video, :length, klass], LEVELS)
            if proposals.shape[0]:
                items.append((published_fusion(proposals, temperature)[:ROWS], length))
    return items


def padded(items, rows=ROWS):
    segments = np.zeros((len(items), rows, 2), np.float32)
    scores = np.zeros((len(items), rows), np.float32)
    valid = np.zeros((len(items), rows), bool)
    for i, (fused, _) in enumerate(items):
        r = fused.shape[0]
        segments[i, :r], scores[i, :r], valid[i, :r] = fused[:, :2], fused[:, 2], True
    return segments, scores, valid, np.array([length for _, length in items], np.int32)


def check_against_highs(items, labels, objective_tolerance=1e-5):
    """Every item: HiGHS's status decides the code; objective, residual, bounds and padding as the issue asks."""
    snippets = np.asarray(labels.snippets, np.float64)
    assert np.isfinite(snippets).all()
    assert snippets.min() >= 0 and snippets.max() <= 1
    feasible = []
    for i, (fused, length) in enumerate(items):
        assert not snippets[i, length:].any(), "labels past the video's length"
        scores = fused[:, 2].astype(np.float32)
        reference = highs_reference(fused[:, :2], scores, length)
        feasible.append(reference.feasible)
        if not reference.feasible:
            assert labels.result[i] == LPResultCode.INFEASIBLE, (i, labels.result[i])
            continue
        assert labels.result[i] == LPResultCode.SUCCESSFUL, (i, labels.result[i], labels.steps[i])
        ours = snippets[i, :length]
        scale = max(abs(reference.objective), 1)
        assert abs(ours.sum() - reference.objective) <= objective_tolerance * scale, (i, ours.sum(), reference.objective)
        matrix, target = published_matrix(fused[:, :2], scores, length)
        assert np.abs(matrix @ ours - target).max() <= 1e-3
        np.testing.assert_allclose(labels.objective[i], ours.sum(), rtol=1e-5, atol=1e-5)
    return feasible


@pytest.fixture(scope="module")
def generated():
    items = thumos_like_items(seed=5)
    segments, scores, valid, length = padded(items)
    labels = segments_to_snippets(segments, scores, valid, length=length, num_snippets=NUM_SNIPPETS)
    return items, (segments, scores, valid, length), labels


def test_matches_highs_on_thumos_like_segments(generated):
    items, _, labels = generated
    feasible = check_against_highs(items, labels)
    assert len(feasible) >= 8 and sum(feasible) >= 6  # enough real LPs for the comparison to mean something


def test_pdhg_stays_available(generated):
    """``method="pdhg"`` (the previous solver): optimal to its tolerance on the same LPs."""
    items, arrays, _ = generated
    segments, scores, valid, length = arrays
    labels = segments_to_snippets(segments, scores, valid, length=length, num_snippets=NUM_SNIPPETS, method="pdhg")
    assert labels.steps.max() > 16 and not labels.fallback.any()
    check_against_highs(items, labels, objective_tolerance=1e-3)


# Every small case is one item of up to 4 segments in 16 snippets, sent as a row of one
# batch of SMALL_ITEMS items (the other rows empty) so that all of them share one compile.
SMALL_ITEMS, SMALL_ROWS, SMALL_SNIPPETS = 8, 4, 16


def small_arrays(cases, dtype=np.float32):
    """Segments, scores, valid and length of up to SMALL_ITEMS cases ``(segments, scores, length[, valid])``."""
    segments = np.zeros((SMALL_ITEMS, SMALL_ROWS, 2), dtype)
    scores = np.zeros((SMALL_ITEMS, SMALL_ROWS), dtype)
    valid = np.zeros((SMALL_ITEMS, SMALL_ROWS), bool)
    length = np.full(SMALL_ITEMS, SMALL_SNIPPETS, np.int32)
    for i, (case_segments, case_scores, case_length, *case_valid) in enumerate(cases):
        case_segments = np.asarray(case_segments, dtype).reshape(-1, 2)
        rows = case_segments.shape[0]
        segments[i, :rows], scores[i, :rows], length[i] = case_segments, case_scores, case_length
        valid[i, :rows] = case_valid[0] if case_valid else True
    return segments, scores, valid, length


def small_batch(cases, dtype=np.float32, **options):
    """Labels of up to SMALL_ITEMS cases, padded to the one shared shape."""
    segments, scores, valid, length = small_arrays(cases, dtype)
    return segments_to_snippets(segments, scores, valid, length=length, num_snippets=SMALL_SNIPPETS, **options)


def small(segments, scores, length, dtype=np.float32, **options):
    """The labels of one small case (row 0 of the shared batch)."""
    return jax.tree.map(lambda x: x[0], small_batch([(segments, scores, length)], dtype, **options))


DEGENERATE_CASES = [  # (segments, scores, length, expected code)
    ([[0, 16]], [-0.2], 16, LPResultCode.INFEASIBLE),  # the whole video: no margin holds a negative score
    ([[0, 4], [0, 4]], [2.0, 1.0], 16, LPResultCode.INFEASIBLE),  # the same segment, two sums
    ([[0, 1]], [0.5], 1, LPResultCode.SUCCESSFUL),  # one-snippet video
    ([[0, 1]], [1.5], 1, LPResultCode.INFEASIBLE),  # more than one snippet can hold
    ([[0, 2]], [-0.1], 1, LPResultCode.INFEASIBLE),  # one snippet, no margin
    ([[12, 17]], [-0.3], 16, LPResultCode.SUCCESSFUL),  # past the end: the left margin holds it
    ([[0, 5]], [-0.3], 16, LPResultCode.SUCCESSFUL),  # at the start: the right margin holds it
    ([[2, 10], [6, 14]], [3.0, 2.5], 16, LPResultCode.SUCCESSFUL),  # overlapping, consistent
]
DEGENERATE_INPUTS = [case[:3] for case in DEGENERATE_CASES]
DEGENERATE_CODES = np.array([case[3] for case in DEGENERATE_CASES])


@pytest.fixture(scope="module")
def degenerate():
    """The degenerate cases as the rows of one batch (one compile)."""
    return small_batch(DEGENERATE_INPUTS)


@pytest.mark.parametrize("case", range(len(DEGENERATE_CASES)))
def test_degenerate_cases_against_highs(degenerate, case):
    segments, scores, length, expected = DEGENERATE_CASES[case]
    labels = jax.tree.map(lambda x: x[case], degenerate)
    assert labels.result == expected
    reference = highs_reference(segments, np.asarray(scores, np.float32), length)
    assert reference.feasible == (expected == LPResultCode.SUCCESSFUL)
    assert np.isfinite(labels.snippets).all() and not labels.snippets[length:].any()
    if expected == LPResultCode.SUCCESSFUL:
        matrix, target = published_matrix(segments, np.asarray(scores, np.float32), length)
        assert labels.objective == pytest.approx(reference.objective, rel=1e-6, abs=1e-6)
        assert np.abs(matrix @ labels.snippets[:length] - target).max() <= 1e-6


# A caller's jit compiles the whole call again: the tests under jit share this one program, which
# also takes the other fallback (zeros) so that no further program is compiled for it.
jitted_small = jax.jit(
    lambda s, q, v, n: segments_to_snippets(s, q, v, length=n, num_snippets=SMALL_SNIPPETS, fallback="zeros")
)


def degenerate_under_jit():
    return jitted_small(*map(jnp.asarray, small_arrays(DEGENERATE_INPUTS)))


def test_infeasible_items_get_the_paint_fallback(degenerate):
    cases = len(DEGENERATE_CASES)
    infeasible = DEGENERATE_CODES == LPResultCode.INFEASIBLE
    assert infeasible.sum() >= 3 and (degenerate.result[:cases] == DEGENERATE_CODES).all()
    painted = small_batch(DEGENERATE_INPUTS, method="paint").snippets[:cases]
    ours = degenerate.snippets[:cases]
    assert painted[infeasible].any()  # the comparison below is not between zeros
    np.testing.assert_array_equal(ours[infeasible], painted[infeasible])
    zeros = np.asarray(degenerate_under_jit().snippets)[:cases]  # fallback="zeros"
    assert not zeros[infeasible].any()


def test_jit_matches_eager(degenerate):
    jitted = degenerate_under_jit()
    np.testing.assert_array_equal(np.asarray(jitted.result), degenerate.result)
    solved = np.asarray(degenerate.result) != LPResultCode.INFEASIBLE  # there the fallbacks differ (zeros, paint)
    assert solved[: len(DEGENERATE_CASES)].sum() >= 4
    np.testing.assert_allclose(np.asarray(jitted.snippets)[solved], degenerate.snippets[solved], atol=1e-6)
    np.testing.assert_allclose(np.asarray(jitted.objective)[solved], degenerate.objective[solved], rtol=1e-6, atol=1e-6)


def test_unique_optimum_is_reproduced(dtype):
    # q equal to the segment's length forces every snippet inside to 1 and its margins to 0; the second row
    # (q = 0) forces its snippets and margins to 0; the third spreads 0.5 over the margins of a segment at 0.
    labels = small([[3, 7], [10, 12], [13, 14]], [4.0, 0.0, -0.5], 16, dtype=dtype)
    assert labels.snippets.dtype == dtype and labels.result == LPResultCode.SUCCESSFUL
    reference = highs_reference([[3, 7], [10, 12], [13, 14]], [4.0, 0.0, -0.5], 16)
    assert labels.objective == pytest.approx(reference.objective, rel=1e-6)
    np.testing.assert_allclose(labels.snippets, reference.x, atol=1e-6)


def test_throw_names_the_unsolved_items():
    with pytest.raises(RuntimeError, match="INFEASIBLE"):
        small([[0, 16]], [-0.2], 16, throw=True)
    assert small([[2, 5]], [0.5], 16, throw=True).result == LPResultCode.SUCCESSFUL


def test_without_segments_the_labels_are_zero():
    labels = small(np.zeros((0, 2)), np.zeros(0), 16)
    assert labels.result == LPResultCode.EMPTY_GROUP and not labels.snippets.any()


def test_padding_rows_and_row_order_change_nothing():
    segments = np.array([[2, 9], [5, 12], [20, 30]], np.float32)
    scores = np.array([2.0, 1.5, -0.4], np.float32)
    base = small(segments / 3, scores, 16)
    order = np.array([2, 0, 1])
    extra = np.concatenate([segments[order] / 3, [[1e6, -5]]]).astype(np.float32)  # an invalid row may hold anything
    shuffled = small_batch([(extra, np.append(scores[order], np.nan), 16, [True, True, True, False])])
    shuffled = jax.tree.map(lambda x: x[0], shuffled)
    assert base.result == shuffled.result == LPResultCode.SUCCESSFUL
    assert shuffled.objective == pytest.approx(float(base.objective), rel=1e-4)


def test_paint_is_the_largest_covering_score():
    labels = small([[2, 6], [4, 9.7], [11, 13]], [0.4, 0.7, 1.6], 12, method="paint")
    expected = np.zeros(16)
    expected[2:4], expected[4:9], expected[11] = 0.4, 0.7, 1.0  # int(9.7) = 9; clipped to [0, 1]; cut at the length
    np.testing.assert_allclose(labels.snippets, expected)
    assert labels.result == LPResultCode.SUCCESSFUL and labels.steps == 0


def test_value_problems_inside_jit_give_codes():
    segments = jnp.zeros((SMALL_ITEMS, SMALL_ROWS, 2)).at[:3, 0].set(jnp.array([[2.0, 1.0], [jnp.nan, 3.0], [1.0, 3.0]]))
    valid = jnp.zeros((SMALL_ITEMS, SMALL_ROWS), bool).at[:3, 0].set(True)
    length = jnp.full(SMALL_ITEMS, SMALL_SNIPPETS, jnp.int32)
    result = jitted_small(segments, jnp.ones((SMALL_ITEMS, SMALL_ROWS)), valid, length).result
    np.testing.assert_array_equal(
        result[:3], [LPResultCode.INVALID_INPUT, LPResultCode.NONFINITE_INPUT, LPResultCode.SUCCESSFUL]
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: small([[3, 1]], [0.5], 16), "start <= end"),
        (lambda: small([[np.nan, 1]], [0.5], 16), "finite"),
        (lambda: small([[0, 1]], [0.5], 17), "length"),
        (lambda: small([[0, 1]], [0.5], 16, method="simplex"), "method"),
        (lambda: small([[0, 1]], [0.5], 16, fallback="nan"), "fallback"),
        (lambda: small([[0, 1]], [0.5], 16, max_steps=0), "max_steps"),
        (lambda: segments_to_snippets(np.zeros((3, 3), np.float32), np.zeros(3, np.float32), num_snippets=4), "segments"),
        (lambda: segments_to_snippets(np.zeros((3, 2), np.float32), np.zeros(2, np.float32), num_snippets=4), "scores"),
    ],
)
def test_bad_input_is_rejected_by_name(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_inputs_are_not_modified():
    segments = np.array([[2.5, 7.9]], np.float32)
    scores = np.array([1.0], np.float32)
    before = segments.copy(), scores.copy()
    small(segments, scores, 16)
    np.testing.assert_array_equal(segments, before[0])
    np.testing.assert_array_equal(scores, before[1])


def test_unique_solution_checker_agrees_with_highs():
    """The helper the pseudo-label test relies on: a singleton optimal face is recognised."""
    matrix, target = published_rows(np.array([[3.0, 7.0, 4.0]]), 16)
    assert optimum_is_unique(matrix, target)
    matrix, target = published_rows(np.array([[3.0, 7.0, 2.0]]), 16)
    assert not optimum_is_unique(matrix, target)
