"""segments_to_snippets(method="lp"): the exact solver against HiGHS on the published LP, built independently.

Every batch has one shape (NUM_ITEMS items of ROWS rows, NUM_SNIPPETS snippets): THUMOS-like
fused segments and adversarial ones (dense overlaps, mixed signs, zero-length rows, segments
running past the video, targets exactly at a row's capacity, repeated rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from published_lp import highs_reference, published_matrix

from jaxfuse import LPResultCode, segments_to_snippets
from jaxfuse._labels.exact_lp import solve_published_lp
from jaxfuse._labels.lp_rows import published_breaks_host

NUM_ITEMS, ROWS, NUM_SNIPPETS = 16, 24, 96


def _grid(x):
    """Coordinates on a 1/64 grid: exact in float32, with fractional parts for int() to truncate."""
    return np.round(np.asarray(x) * 64) / 64


def feasible_scores(rng, segments, length: int):
    """Targets ``q = A p`` of a random action-like ``p`` in ``[0, 1]``: a feasible LP by construction."""
    profile = np.zeros(length)
    for _ in range(int(rng.integers(1, 4))):
        begin = int(rng.integers(0, length))
        profile[begin : begin + int(rng.integers(2, 20))] = rng.uniform(0.3, 1.0)
    profile = np.clip(profile + rng.uniform(0, 0.2, length) * (rng.uniform(size=length) < 0.3), 0, 1)
    matrix, _ = published_matrix(segments, np.zeros(len(segments)), length)
    return matrix @ _grid(profile)


def realistic_item(rng):
    """Fused segments along a video, overlapping a little as the published grouping leaves them."""
    length = int(rng.integers(60, NUM_SNIPPETS + 1))
    rows = int(rng.integers(4, 13))
    size = rng.uniform(1, 8, rows)
    start = np.cumsum(np.concatenate([[0], (size[:-1] + 3) * rng.uniform(0.5, 2.5, rows - 1)]))
    start = start * (length - 10) / (start[-1] + size[-1])
    segments = _grid(np.stack([start, np.minimum(start + size, length)], -1))
    return segments, feasible_scores(rng, segments, length), length


def adversarial_item(rng, kind: int):
    length = int(rng.integers(40, NUM_SNIPPETS + 1))
    if kind == 0:  # dense overlaps, some zero-length rows: one large component, feasible by construction
        start = rng.uniform(10, 30, ROWS)
        end = start + np.where(rng.uniform(size=ROWS) < 0.2, 0, rng.uniform(0, 12, ROWS))
        segments = _grid(np.stack([start, end], -1))
        return segments, feasible_scores(rng, segments, length), length
    if kind == 1:  # running past the video (ends up to 3 L, some starts past L + 1)
        start = rng.uniform(0.6, 1.3, 10) * length
        end = start + rng.uniform(0, 2 * length, 10)
        segments = _grid(np.stack([start, end], -1))
        return segments, feasible_scores(rng, segments, length), length
    if kind == 2:  # targets exactly at capacity, zero targets, zero-length rows, repeated rows
        segments = np.array([[3.5, 9.25], [20, 20], [20.5, 20.75], [30, 36], [50, 58], [50, 58], [length - 1, length]])
        interior = np.floor(segments[:, 1]) - np.floor(segments[:, 0])
        scores = np.array([interior[0], -0.5, 0.0, -2.0, 0.75, 0.75, 0.0])
        return segments, scores, length
    # mixed signs at random: mostly infeasible
    start = rng.uniform(0, length, ROWS)
    segments = _grid(np.stack([start, start + rng.uniform(0, 15, ROWS)], -1))
    return segments, _grid(rng.uniform(-1.5, 1.5, ROWS)), length


def batch(seed: int):
    rng = np.random.default_rng(seed)
    items = [realistic_item(rng) for _ in range(NUM_ITEMS // 2)]
    items += [adversarial_item(rng, kind % 4) for kind in range(NUM_ITEMS - len(items))]
    segments = np.zeros((NUM_ITEMS, ROWS, 2))
    scores = np.zeros((NUM_ITEMS, ROWS))
    valid = np.zeros((NUM_ITEMS, ROWS), bool)
    for i, (item_segments, item_scores, _) in enumerate(items):
        rows = len(item_scores)
        segments[i, :rows], scores[i, :rows], valid[i, :rows] = item_segments, item_scores, True
    return segments, scores, valid, np.array([length for *_, length in items], np.int32)


def solve(arrays, dtype, **options):
    segments, scores, valid, length = arrays
    return segments_to_snippets(
        segments.astype(dtype), scores.astype(dtype), valid, length=length, num_snippets=NUM_SNIPPETS, **options
    )


def check_against_highs(arrays, labels, dtype, *, exact: bool = True):
    """Per item, HiGHS on the published LP of the same (dtype-rounded) input; returns (feasible, one-row rows) counts."""
    segments, scores, valid, length = arrays
    snippets = np.asarray(labels.snippets, np.float64)
    assert np.isfinite(snippets).all() and snippets.min() >= 0 and snippets.max() <= 1
    objective_tolerance = (1e-9 if dtype == np.float64 else 1e-5) if exact else 1e-3
    feasible = one_row = 0
    for i in range(NUM_ITEMS):
        n = int(length[i])
        rows = valid[i]
        reference = highs_reference(segments[i, rows].astype(dtype), scores[i, rows].astype(dtype), n)
        ours = snippets[i, :n]
        assert not snippets[i, n:].any(), "labels past the item's length"
        if not reference.feasible:
            assert labels.result[i] == LPResultCode.INFEASIBLE, (i, labels.result[i])
            continue
        assert labels.result[i] == LPResultCode.SUCCESSFUL, (i, labels.result[i])
        feasible += 1
        scale = max(1.0, abs(reference.objective))
        assert abs(ours.sum() - reference.objective) <= objective_tolerance * scale, (i, ours.sum(), reference.objective)
        matrix, target = published_matrix(segments[i, rows].astype(dtype), scores[i, rows].astype(dtype), n)
        assert np.abs(matrix @ ours - target).max() <= (1e-9 if dtype == np.float64 else 1e-4) * max(1, np.abs(target).max())
        assert not ours[~(matrix != 0).any(0)].any(), "labels outside every row's support"
        if exact:
            for columns in reference.one_row_columns:
                np.testing.assert_allclose(ours[columns], reference.x[columns], atol=1e-9 if dtype == np.float64 else 2e-6)
                one_row += 1
    return feasible, one_row


def test_issue_case_matches_highs():
    """The issue's probe: a segment past the video keeps its margin (the old code clipped it first: INFEASIBLE)."""
    labels = segments_to_snippets(np.array([[12.0, 37.0]], np.float32), np.array([-1.5], np.float32), num_snippets=24)
    reference = highs_reference([[12, 37]], [-1.5], 24)
    assert reference.feasible and reference.objective == pytest.approx(1.5)
    assert labels.result == LPResultCode.SUCCESSFUL
    assert float(labels.objective) == pytest.approx(1.5, rel=1e-6)
    np.testing.assert_allclose(labels.snippets, reference.x, atol=1e-6)


@pytest.fixture(scope="module")
def arrays():
    return batch(seed=19)


def test_matches_highs(arrays, dtype):
    labels = solve(arrays, dtype)
    assert labels.snippets.dtype == dtype and not labels.fallback.any()
    feasible, one_row = check_against_highs(arrays, labels, dtype)
    codes = np.asarray(labels.result)
    assert feasible >= NUM_ITEMS // 2 and (codes == LPResultCode.INFEASIBLE).sum() >= 2 and one_row >= 20
    assert labels.steps.max() > 2  # multi-row components went through the simplex


def test_published_rows_from_any_segment(arrays):
    """The device rows (inside jit) equal the host's published float64 rows, for segments past the video too."""
    segments, scores, valid, length = arrays
    jitted = jax.jit(
        lambda s, q, v, n: segments_to_snippets(s, q, v, length=n, num_snippets=NUM_SNIPPETS, fallback="zeros")
    )
    eager = solve(arrays, np.float32, fallback="zeros")
    traced = jitted(*(jnp.asarray(a) for a in (segments.astype(np.float32), scores.astype(np.float32), valid, length)))
    past = valid & (np.floor(segments[..., 1]) > length[:, None] + 1)
    assert past.sum() >= 5
    np.testing.assert_array_equal(np.asarray(traced.result), eager.result)
    np.testing.assert_array_equal(np.asarray(traced.snippets), eager.snippets)


def test_fallback_to_pdhg_past_the_pivot_cap(arrays):
    """With a pivot cap of 1 every multi-row component goes to PDHG: flagged, and still optimal to its tolerance."""
    segments, scores, valid, length = arrays
    breaks = published_breaks_host(
        segments[..., 0], segments[..., 1], valid, length, num_snippets=NUM_SNIPPETS, scale=0.0785, power=0.9
    )
    solution = solve_published_lp(
        jnp.asarray(breaks), jnp.asarray(scores, jnp.float32), jnp.asarray(valid), num_snippets=NUM_SNIPPETS,
        max_steps=4096, check_every=16, rtol=1e-6, atol=1e-6, max_pivots=1,
    )
    exact = solve(arrays, np.float32)
    fallback = np.asarray(solution.fallback)
    assert fallback.sum() >= NUM_ITEMS // 2
    np.testing.assert_array_equal(fallback, exact.steps > 1)  # items with a multi-row component needing a second pivot
    labels = exact._replace(snippets=np.asarray(solution.x), result=np.asarray(solution.result))
    check_against_highs(arrays, labels, np.float32, exact=False)
