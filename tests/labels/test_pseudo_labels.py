"""pseudo_labels: the whole published training chain against a numpy + scipy rendition, item by item."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from published_lp import highs_reference, published_matrix

import jaxfuse
from jaxfuse import LPResultCode, pseudo_labels
from jaxfuse.bench.published_labels import published_fusion, published_proposals

LEVELS = np.arange(0.001, 0.04, 0.002)
OPTIONS = dict(max_proposals=512, max_segments=96, max_classes=3)


@pytest.fixture(scope="module")
def videos():
    return jaxfuse.synthetic_videos(num_videos=5, num_classes=4, min_length=150, max_length=300, seed=11)


@pytest.fixture(scope="module")
def labels(videos):
    return pseudo_labels(videos.cas, videos.video_scores, length=videos.length, temperature=0.02, **OPTIONS)


def test_matches_the_published_chain(videos, labels):
    """Per (video, class): HiGHS's status, objective and residual on the published LP (built in tests/published_lp.py);
    HiGHS's own labels on the components of one row."""
    assert not labels.truncated.any()
    cas, scores = videos.cas, videos.video_scores
    compared = one_row = 0
    for video, length in enumerate(videos.length.tolist()):
        assert not labels.labels[video, length:].any()
        for klass in range(cas.shape[2]):
            ours = np.asarray(labels.labels[video, :length, klass], np.float64)
            if scores[video, klass] < 0.16:
                assert not labels.selected[video, klass] and not ours.any()
                continue
            assert labels.selected[video, klass]
            proposals = published_proposals(cas[video, :length, klass], LEVELS)
            if proposals.shape[0] == 0:
                assert labels.result[video, klass] == LPResultCode.EMPTY_GROUP and not ours.any()
                continue
            fused = published_fusion(proposals, 0.02)
            assert labels.num_segments[video, klass] == fused.shape[0]
            # The float32 scores the chain fused: the LP the kernel solved.
            reference = highs_reference(fused[:, :2], fused[:, 2].astype(np.float32), length)
            if not reference.feasible:
                assert labels.result[video, klass] == LPResultCode.INFEASIBLE
                continue
            assert labels.result[video, klass] == LPResultCode.SUCCESSFUL and not labels.fallback[video, klass]
            # Our labels solve the published LP (same rows: same fused segments, margins and scores).
            matrix, target = published_matrix(fused[:, :2], fused[:, 2].astype(np.float32), length)
            assert ours.min() >= 0 and ours.max() <= 1
            assert np.abs(matrix @ ours - target).max() <= 1e-4
            assert abs(ours.sum() - reference.objective) <= 1e-5 * max(reference.objective, 1)
            compared += 1
            for columns in reference.one_row_columns:
                np.testing.assert_allclose(ours[columns], reference.x[columns], atol=2e-6)
                one_row += 1
    assert compared >= 5 and one_row >= 20


# One jitted training-step stand-in for every test that traces (one compile).
traced_step = jax.jit(
    lambda cas, scores, length, t: pseudo_labels(cas, scores, length=length, temperature=t, **OPTIONS)
)


def test_under_jit_with_a_traced_temperature(videos, labels):
    jitted = traced_step(
        jnp.asarray(videos.cas), jnp.asarray(videos.video_scores), jnp.asarray(videos.length), jnp.float32(0.02)
    )
    np.testing.assert_array_equal(np.asarray(jitted.result), labels.result)
    np.testing.assert_allclose(np.asarray(jitted.labels), labels.labels, atol=1e-6)


def test_tiny_training_temperature_is_finite(videos):
    out = pseudo_labels(videos.cas, videos.video_scores, length=videos.length, temperature=0.0016, **OPTIONS)
    assert np.isfinite(out.labels).all() and out.labels.min() >= 0 and out.labels.max() <= 1
    assert ((out.result == LPResultCode.SUCCESSFUL) | (out.result == LPResultCode.INFEASIBLE)
            | (out.result == LPResultCode.EMPTY_GROUP)).all()


def test_max_classes_keeps_the_best_scores_and_flags_the_rest(videos):
    # Same shapes and options as the fixture (one compile): the video scores make more classes pass
    # than max_classes = 3 in some videos, ties and all-fail included.
    scores = videos.video_scores.copy()
    scores[0] = [0.9, 0.5, 0.3, 0.2]  # four pass: the 0.2 is flagged
    scores[1] = [0.17, 0.8, 0.16, 0.95]  # four pass, the smallest at the threshold
    scores[2] = [0.1, 0.05, 0.0, 0.15]  # none passes
    out = pseudo_labels(videos.cas, scores, length=videos.length, temperature=0.02, **OPTIONS)
    max_classes = OPTIONS["max_classes"]
    passing = scores >= 0.16
    assert (passing.sum(1) > max_classes).sum() >= 2
    assert (out.selected.sum(1) == np.minimum(passing.sum(1), max_classes)).all()
    ranked = np.argsort(-np.where(passing, scores, -np.inf), axis=1, kind="stable")
    for video in np.flatnonzero(passing.any(1)):
        best = ranked[video, : min(passing[video].sum(), max_classes)]
        assert out.selected[video, best].all()
    np.testing.assert_array_equal(out.truncated, passing & ~out.selected)
    assert not np.moveaxis(np.asarray(out.labels), 2, 1)[~np.asarray(out.selected)].any()  # unselected: no labels


def test_nonfinite_cas_or_score_gives_its_code_per_pair_and_leaks_nowhere(videos, labels):
    """NaN/inf inside a video: that (video, class) is NONFINITE_INPUT with zero labels, selected or not; every other
    pair is exactly what it is when that pair is skipped (its score below the class threshold); padding is ignored."""
    cas, scores, length = videos.cas.copy(), videos.video_scores.copy(), videos.length
    solved = np.argwhere(labels.selected & (labels.result == LPResultCode.SUCCESSFUL))
    unselected = np.argwhere(~labels.selected)
    assert len(solved) >= 2 and len(unselected) >= 1
    (v0, c0), (v1, c1), (v2, c2) = solved[0], solved[-1], unselected[0]
    assert v0 != v1
    cas[v0, 3, c0] = np.nan  # a solved pair
    cas[v2, length[v2] - 1, c2] = -np.inf  # a pair below the class threshold: its labels were 0 anyway
    scores[v1, c1] = np.inf  # a non-finite video score
    padded = int(np.argmin(length))
    cas[padded, length[padded]:, :] = np.nan  # padding: ignored
    assert length[padded] < cas.shape[1]
    skipped = videos.video_scores.copy()
    skipped[v0, c0] = skipped[v1, c1] = 0.0
    expected = pseudo_labels(videos.cas, skipped, length=length, temperature=0.02, **OPTIONS)
    expected_result = expected.result.copy()
    for v, c in ((v0, c0), (v1, c1), (v2, c2)):
        expected_result[v, c] = LPResultCode.NONFINITE_INPUT
    eager = pseudo_labels(cas, scores, length=length, temperature=0.02, **OPTIONS)
    jitted = traced_step(jnp.asarray(cas), jnp.asarray(scores), jnp.asarray(length), jnp.float32(0.02))
    for out in (eager, jax.tree.map(np.asarray, jitted)):
        np.testing.assert_array_equal(out.result, expected_result)
        assert np.isfinite(out.labels).all()
        np.testing.assert_allclose(out.labels, expected.labels, atol=1e-6)
        for name in ("selected", "num_segments", "truncated"):
            np.testing.assert_array_equal(getattr(out, name), getattr(expected, name), err_msg=name)
    with pytest.raises(RuntimeError, match="NONFINITE_INPUT"):
        pseudo_labels(cas, scores, length=length, temperature=0.02, throw=True, **OPTIONS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=0.02, length=np.array([1])), "length"),
        (dict(temperature=0.02, max_segments=0), "max_segments"),
        (dict(temperature=0.02, method="simplex"), "method"),
    ],
)
def test_bad_options_are_rejected_by_name(videos, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        pseudo_labels(videos.cas, videos.video_scores, **kwargs)


def test_bad_shapes_are_rejected_by_name():
    with pytest.raises(ValueError, match="video_scores"):
        pseudo_labels(np.zeros((2, 8, 3), np.float32), np.zeros((2, 4), np.float32), temperature=0.02)
    with pytest.raises(ValueError, match="cas"):
        pseudo_labels(np.zeros((8, 3), np.float32), np.zeros((2, 3), np.float32), temperature=0.02)


def test_classes_and_snippets_swapped_blames_cas_and_names_the_layout():
    # [V, C, L] instead of [V, L, C]: the video scores' 3 classes match axis 1 of `cas`, not axis 2.
    with pytest.raises(ValueError, match=r"^`cas` must have layout \[V, L, C\].*got shape \(2, 3, 8\).*axis 1"):
        pseudo_labels(np.zeros((2, 3, 8), np.float32), np.zeros((2, 3), np.float32), temperature=0.02)
