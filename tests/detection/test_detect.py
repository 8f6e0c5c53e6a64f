"""detect: CAS to fused detections per (video, class), against proposals_from_cas + fuse_proposals by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfuse._detection.cas_proposals import proposals_from_cas
from jaxfuse._detection.detect import (
    PUBLISHED_THRESHOLDS,
    VideoDetections,
    _comparable_levels,
    _item_proposals,
    _item_sequences,
    detect,
    detect_videos,
)
from jaxfuse._evaluation.activitynet_json import evaluate_json, load_activitynet_json
from jaxfuse._evaluation.evaluate import Detections, GroundTruth, evaluate_detections
from jaxfuse._proposals.fuse_proposals import fuse_proposals
from jaxfuse._proposals.grouping import _group_batch_jit, group_batch_distinct, overlap_settings

# Most tests share this batch shape and select between 17 and 32 (video, class)
# items, so that they share compiled programs (each new shape costs seconds).
VIDEOS, SNIPPETS, CLASSES = 6, 60, 4


def random_cas(rng, videos=VIDEOS, snippets=SNIPPETS, classes=CLASSES):
    """Smoothed noise through a sigmoid: values in [0, 0.05), runs of many lengths at the published levels."""
    noise = rng.normal(size=(videos, snippets + 4, classes))
    smooth = (noise[:, :-4] + noise[:, 1:-3] + noise[:, 2:-2] + noise[:, 3:-1] + noise[:, 4:]) / 5
    return (0.05 / (1 + np.exp(-3 * smooth))).astype(np.float32)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    cas = random_cas(rng)
    length = np.array([60, 41, 17, 60, 2, 0], np.int32)
    video_scores = rng.uniform(0.3, 1, (VIDEOS, CLASSES)).astype(np.float32)
    video_scores[0, 0] = 0.16  # exactly at the threshold: selected
    video_scores[1, :3] = [0.0, 0.1, 0.15]  # below: skipped
    video_scores[3, 1] = 0.2
    assert (video_scores >= 0.16).sum() == 21 and (video_scores >= 0.3).sum() == 19
    return cas, video_scores, length


def by_hand(cas, video_scores, length, *, method, temperature, **options):
    """Per selected (video, class): ``[count, 2]`` segments, ``[count]`` scores, ``[count, 2]`` spread.

    One ``proposals_from_cas`` call for the batch, then ``fuse_proposals`` on each
    item's padded proposals (one shape, so one compile per method). Laplace and
    Student-t size their packed groups from the data, so each item would compile
    its own shapes: they get all items in one call instead (items are independent).
    """
    found = proposals_from_cas(cas, np.asarray(PUBLISHED_THRESHOLDS), classes_last=True, length=length)
    items = list(zip(*np.nonzero(video_scores >= 0.16)))
    fields = (found.segments, found.contrast, found.inner, found.valid)
    if method in ("laplace", "student_t"):
        rows = tuple(np.array(index) for index in zip(*items))
        # Padded with empty items to detect's 32 item rows, so the two share compiled kernels.
        padding = 32 - len(items)
        batch = [np.concatenate([field[rows], np.zeros((padding,) + field.shape[2:], field.dtype)]) for field in fields]
        fused = fuse_proposals(*batch, method=method, temperature=temperature, **options)
        per_item = [jax.tree.map(lambda x, i=i: x[i], fused) for i in range(len(items))]
    else:
        per_item = [
            fuse_proposals(*(field[index] for field in fields), method=method, temperature=temperature, **options)
            for index in items
        ]
    expected = {}
    for (video, klass), fused in zip(items, per_item):
        n = int(fused.count)
        expected[video, klass] = (fused.segments[:n], fused.scores[:n], fused.spread[:n], int(found.count[video, klass]))
    return expected


def assert_matches(result: VideoDetections, expected, video_scores):
    assert result.selected.tolist() == (video_scores >= 0.16).tolist()
    for (video, klass), (segments, scores, spread, num_proposals) in expected.items():
        n = len(scores)
        assert int(result.count[video, klass]) == n, (video, klass)
        assert int(result.num_proposals[video, klass]) == num_proposals
        np.testing.assert_allclose(result.segments[video, klass, :n], segments, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(result.scores[video, klass, :n], scores, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(result.spread[video, klass, :n], spread, rtol=1e-5, atol=1e-5)
        assert result.valid[video, klass].tolist() == [j < n for j in range(result.valid.shape[-1])]
        assert not result.segments[video, klass, n:].any() and not result.scores[video, klass, n:].any()
    unselected = ~result.selected
    assert not result.count[unselected].any() and not result.valid[unselected].any()


# ---------------------------------------------------------------- agreement with composing by hand


@pytest.mark.parametrize(
    ("method", "temperature", "options"),
    [
        ("gaussian", 0.2, {}),
        ("uniform", 0.05, {}),
        ("laplace", 1.0, {}),
        ("nms", 0.2, {}),
        ("soft_nms", 0.2, {"sigma": 0.3}),
    ],
)
def test_detect_equals_proposals_then_fuse_by_hand(batch, method, temperature, options):
    cas, video_scores, length = batch
    result = detect(cas, video_scores, length=length, method=method, temperature=temperature, weights="inner", **options)
    expected = by_hand(cas, video_scores, length, method=method, temperature=temperature, **options)
    assert len(expected) == 21
    assert any(len(e[1]) > 3 for e in expected.values())  # a real test: several groups per item
    assert_matches(result, expected, video_scores)
    assert not result.truncated.any()


def test_published_preset_is_the_published_rule_by_hand(batch):
    """preset="published": +1 frame lengths, candidate overlap > 0.25, Gaussian at T = 0.2, inner-score weights."""
    cas, video_scores, length = batch
    result = detect(cas, video_scores, length=length, preset="published")
    expected = by_hand(cas, video_scores, length, method="gaussian", temperature=0.2, discrete=True)
    assert_matches(result, expected, video_scores)
    # The default differs from it exactly by the length convention and the weights.
    default = detect(cas, video_scores, length=length, discrete=True, weights="inner")
    for a, b in zip(default, result):
        np.testing.assert_array_equal(a, b)
    # An explicit value beside the preset wins.
    warmer = detect(cas, video_scores, length=length, preset="published", temperature=1.0)
    assert_matches(warmer, by_hand(cas, video_scores, length, method="gaussian", temperature=1.0, discrete=True),
                   video_scores)


def test_traced_options_raise_one_clear_line(batch):
    cas, video_scores, length = batch
    with pytest.raises(TypeError, match="traced `temperature`"):
        jax.jit(lambda t: detect(cas, video_scores, length=length, temperature=t).count)(0.2)


def test_class_threshold_masks_classes_and_keeps_the_others_unchanged(batch):
    cas, video_scores, length = batch
    default = detect(cas, video_scores, length=length)
    masked = detect(cas, video_scores, length=length, class_threshold=0.3)
    selected = video_scores >= 0.3
    assert masked.selected.tolist() == selected.tolist() and default.selected.sum() > selected.sum()
    assert not masked.count[~selected].any() and not masked.num_proposals[~selected].any()
    assert not masked.valid[~selected].any() and not masked.scores[~selected].any()
    for field in ("segments", "scores", "count", "spread", "num_proposals"):
        np.testing.assert_array_equal(getattr(masked, field)[selected], getattr(default, field)[selected])
    # Nothing selected: empty but well-formed.
    none = detect(cas, video_scores, length=length, class_threshold=2.0)
    assert not none.selected.any() and not none.count.any() and none.segments.shape[:2] == (VIDEOS, CLASSES)


def test_length_handling_ignores_padding_and_matches_a_video_alone(batch):
    cas, video_scores, length = batch
    zero_padded = detect(cas, video_scores, length=length)
    garbage = cas.copy()
    garbage[2, length[2] :] = np.nan  # padding may hold anything
    garbage[4, length[4] :] = 1.0
    garbage[5] = np.inf
    for a, b in zip(zero_padded, detect(garbage, video_scores, length=length)):
        np.testing.assert_array_equal(a, b)
    # A length-0 video has nothing; a length-2 video one proposal per level at most, all [0, 2).
    assert not zero_padded.num_proposals[5].any() and (zero_padded.num_proposals[4] <= 20).all()
    assert (zero_padded.count[4] <= 1).all() and (zero_padded.segments[4, :, 0] == [0, 2]).all()
    alone = detect(cas[2:3, : length[2]], video_scores[2:3])
    n = alone.count.max()
    np.testing.assert_array_equal(zero_padded.count[2], alone.count[0])
    np.testing.assert_allclose(zero_padded.segments[2, :, :n], alone.segments[0, :, :n], rtol=1e-6)
    np.testing.assert_allclose(zero_padded.scores[2, :, :n], alone.scores[0, :, :n], rtol=1e-6)


def test_default_length_is_the_padded_length(batch):
    cas, video_scores, _ = batch
    a = detect(cas, video_scores)
    b = detect(cas, video_scores, length=np.full(VIDEOS, SNIPPETS, np.int32))
    for field_a, field_b in zip(a, b):
        np.testing.assert_array_equal(field_a, field_b)


def test_max_detections_keeps_the_first_in_leader_order(batch):
    cas, video_scores, length = batch
    full = detect(cas, video_scores, length=length)
    capped = detect(cas, video_scores, length=length, max_detections=2)
    assert capped.segments.shape == (VIDEOS, CLASSES, 2, 2)
    np.testing.assert_array_equal(capped.count, np.minimum(full.count, 2))
    np.testing.assert_array_equal(capped.segments, full.segments[:, :, :2])
    np.testing.assert_array_equal(capped.truncated, full.count > 2)
    assert capped.truncated.any()


def test_max_proposals_drops_and_flags(batch):
    cas, video_scores, length = batch
    full = detect(cas, video_scores, length=length)
    capped = detect(cas, video_scores, length=length, max_proposals=64)
    assert (full.num_proposals > 64).any()
    np.testing.assert_array_equal(capped.num_proposals, full.num_proposals)  # found, before dropping
    np.testing.assert_array_equal(capped.truncated, full.num_proposals > 64)


@pytest.mark.parametrize("min_length", [1, 3])
def test_proposal_count_from_levels_below_is_exact(batch, min_length):
    """The O(L) count that sizes the proposal slots equals proposals_from_cas's count, ties included."""
    cas, _, length = batch
    cas = cas.copy()
    cas[0, 10:20, 1] = np.float32(PUBLISHED_THRESHOLDS[3])  # exactly at a level: not above it (strict)
    cas[3, :, 2] = np.float32(0.02)  # one run over the whole video
    items = np.array(np.nonzero(np.ones((VIDEOS, CLASSES), bool)), np.int32)
    _, _, largest, _ = _item_sequences(
        cas, length, items[0], items[1], np.ones(items.shape[1], bool),
        _comparable_levels(PUBLISHED_THRESHOLDS, np.float32), padded_length=64, min_length=min_length,
    )
    found = proposals_from_cas(cas, np.asarray(PUBLISHED_THRESHOLDS), classes_last=True, length=length,
                               min_length=min_length)
    assert int(largest) == int(found.num_found.max())
    # Per item too: the largest over any single item of the batch.
    for video, klass in zip(*items):
        _, _, alone, _ = _item_sequences(
            cas, length, np.array([video]), np.array([klass]), np.array([True]),
            _comparable_levels(PUBLISHED_THRESHOLDS, np.float32), padded_length=64, min_length=min_length,
        )
        assert int(alone) == int(found.num_found[video, klass])


@pytest.mark.parametrize("convention", ["spec", "published"])
def test_repeated_proposals_are_grouped_once_with_the_same_result(batch, convention):
    """Each proposal's first occurrence (same segment, lowest level), and grouping on first occurrences only.

    On plateaus and level ties the same run is found at many levels; grouping
    the first occurrences and giving each repeat its first's group must equal
    grouping every proposal, bit for bit, in every overlap convention.
    """
    cas, _, length = batch
    cas = cas.copy()
    cas[0, 10:20, 1] = np.float32(PUBLISHED_THRESHOLDS[3])  # a plateau exactly at a level
    cas[3, :, 2] = np.float32(0.02)  # one run over the whole video
    cas[4, ::3, 0] = np.float32(0.05)  # single snippets: no run
    items = np.array(np.nonzero(np.ones((VIDEOS, CLASSES), bool)), np.int32)
    levels = _comparable_levels(PUBLISHED_THRESHOLDS, np.float32)
    sequences, item_length, largest, _ = _item_sequences(
        cas, length, items[0], items[1], np.ones(items.shape[1], bool), levels, padded_length=64, min_length=2
    )
    found, first_slot, most_found, most_distinct = _item_proposals(
        sequences, item_length, levels, convention=convention, min_length=2, max_proposals=int(largest)
    )
    segments, valid, first = np.asarray(found.segments), np.asarray(found.valid), np.asarray(first_slot)
    positions = np.arange(valid.shape[1])
    assert int(most_found) == int(largest)
    for item in range(valid.shape[0]):
        for slot in positions[valid[item]]:
            same = np.flatnonzero((segments[item, : slot + 1] == segments[item, slot]).all(-1))
            assert first[item, slot] == same[0], (item, slot)  # the lowest slot with this segment
    np.testing.assert_array_equal(first[~valid], np.broadcast_to(positions, valid.shape)[~valid])
    distinct = ((first == positions) & valid).sum(-1)
    assert int(most_distinct) == distinct.max() and distinct.sum() < 0.7 * valid.sum()

    run = jax.jit(group_batch_distinct, static_argnames="num_distinct")
    for overlap, discrete in [("candidate", True), ("candidate", False), ("iou", False)]:
        use_iou, offset = overlap_settings(overlap, discrete)
        expected = _group_batch_jit(found.segments, found.contrast, found.valid, 0.25, use_iou, offset)
        got = run(found.segments, found.contrast, found.valid, first_slot, 0.25, use_iou, offset,
                  num_distinct=int(most_distinct))
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


def test_thresholds_in_any_order(batch):
    """Levels out of order: the same as proposals_from_cas then fuse_proposals with those levels."""
    cas, video_scores, length = batch
    shuffled = np.asarray(PUBLISHED_THRESHOLDS)[np.random.default_rng(5).permutation(20)]
    result = detect(cas, video_scores, length=length, thresholds=shuffled, preset="published")
    found = proposals_from_cas(cas, shuffled, classes_last=True, length=length)
    fused = fuse_proposals(found.segments, found.contrast, found.inner, found.valid, preset="published")
    for video, klass in zip(*np.nonzero(result.selected)):
        n = int(fused.count[video, klass])
        assert int(result.count[video, klass]) == n
        np.testing.assert_array_equal(result.segments[video, klass, :n], fused.segments[video, klass, :n])
        np.testing.assert_array_equal(result.scores[video, klass, :n], fused.scores[video, klass, :n])


def test_clean_rectangular_cas_gives_the_actions_exactly():
    cas = np.zeros((2, 40, 3), np.float32)
    cas[0, 5:12, 0] = 0.5
    cas[0, 20:31, 0] = 0.3
    cas[1, 0:4, 2] = 0.9  # touching the start of the video
    scores = np.array([[0.9, 0.0, 0.0], [0.0, 0.0, 0.9]], np.float32)
    for method in ("gaussian", "nms", "laplace"):
        found = detect(cas, scores, method=method)
        assert found.count.tolist() == [[2, 0, 0], [0, 0, 1]]
        assert found.segments[0, 0, :2].tolist() == [[5.0, 12.0], [20.0, 31.0]]
        assert found.segments[1, 2, 0].tolist() == [0.0, 4.0]
        # Contrast of an isolated plateau: its level (the margins are 0).
        np.testing.assert_allclose(found.scores[0, 0, :2], [0.5, 0.3], rtol=1e-6)


def test_array_kinds(batch):
    cas, video_scores, length = batch
    from_numpy = detect(cas, video_scores, length=length)
    assert all(isinstance(field, np.ndarray) for field in from_numpy)
    from_jax = detect(jnp.asarray(cas), jnp.asarray(video_scores), length=jnp.asarray(length))
    assert all(isinstance(field, jax.Array) for field in from_jax)
    for a, b in zip(from_numpy, from_jax):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_published_convention_passes_through(batch):
    cas, video_scores, length = batch
    result = detect(cas, video_scores, length=length, convention="published")
    found = proposals_from_cas(cas, np.asarray(PUBLISHED_THRESHOLDS), classes_last=True, length=length,
                               convention="published")
    np.testing.assert_array_equal(result.num_proposals[result.selected], found.num_found[result.selected])


# ---------------------------------------------------------------- conversions


def test_to_predictions_and_evaluation(batch):
    cas, video_scores, length = batch
    result = detect(cas, video_scores, length=length)
    predictions = result.to_predictions()
    assert isinstance(predictions, Detections)
    assert predictions.video.size == int(result.count.sum())
    for video, label, score, segment in zip(*predictions):
        slot = np.flatnonzero(result.scores[video, label] == score)[0]
        assert result.valid[video, label, slot]
        np.testing.assert_array_equal(segment, result.segments[video, label, slot])
    # Ground truth equal to the predictions' top detections: every class finds them.
    shifted = result.to_predictions(video_ids=np.arange(VIDEOS) + 100)
    np.testing.assert_array_equal(shifted.video, predictions.video + 100)
    with pytest.raises(ValueError, match="video_ids"):
        result.to_predictions(video_ids=[1, 2])


def test_activitynet_json_round_trip(batch):
    cas, video_scores, length = batch
    result = detect(cas, video_scores, length=length)
    videos = [f"video_{i}" for i in range(VIDEOS)]
    classes = ["Jump", "Run", "Swim", "Throw"][:CLASSES]
    document = result.to_activitynet_json(videos, classes, snippet_seconds=0.64)
    predictions = result.to_predictions()
    # A ground truth built from some of the predictions, in seconds and in snippets.
    keep = np.arange(predictions.video.size) % 3 == 0
    truth = GroundTruth(predictions.video[keep], predictions.label[keep], predictions.segments[keep] + 0.5)
    truth_json = {"database": {name: {"annotations": []} for name in videos}}
    for video, label, segment in zip(*truth):
        truth_json["database"][videos[video]]["annotations"].append(
            {"label": classes[label], "segment": (segment * 0.64).tolist()}
        )
    loaded = load_activitynet_json(document, truth_json)
    assert loaded.predictions.video.size == predictions.video.size
    np.testing.assert_allclose(np.sort(loaded.predictions.score), np.sort(predictions.score.astype(np.float64)))
    from_json = evaluate_json(document, truth_json)
    from_arrays = evaluate_detections(predictions, truth)
    np.testing.assert_allclose(from_json.mean_average_precision, from_arrays.mean_average_precision, atol=1e-12)
    with pytest.raises(ValueError, match="video_names"):
        result.to_activitynet_json(videos[:2], classes)


def test_detect_videos_buckets_and_matches_detect(batch):
    cas, video_scores, length = batch
    videos = [0, 1, 2, 3]  # two length buckets: 64 (60, 41, 60 snippets) and 32 (17)
    merged = detect_videos([cas[v, : length[v]] for v in videos], video_scores[videos])
    expected = detect(cas[videos], video_scores[videos], length=length[videos]).to_predictions()
    assert merged.video.tolist() == expected.video.tolist()
    assert merged.label.tolist() == expected.label.tolist()
    np.testing.assert_allclose(merged.segments, expected.segments, rtol=1e-6)
    np.testing.assert_allclose(merged.score, expected.score, rtol=1e-6)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "error", "name"),
    [
        ({"cas": np.zeros((2, 3), np.float32)}, ValueError, "cas"),
        ({"cas": np.zeros((VIDEOS, SNIPPETS, CLASSES), np.int32)}, TypeError, "cas"),
        ({"video_scores": np.zeros((VIDEOS, 3), np.float32)}, ValueError, "video_scores"),
        ({"video_scores": np.full((VIDEOS, CLASSES), np.nan, np.float32)}, ValueError, "video_scores"),
        ({"length": np.full(VIDEOS, 61)}, ValueError, "length"),
        ({"length": np.full(VIDEOS, 6.0)}, TypeError, "length"),
        ({"length": np.full(3, 6)}, ValueError, "length"),
        ({"thresholds": []}, ValueError, "thresholds"),
        ({"thresholds": [0.1, np.nan]}, ValueError, "thresholds"),
        ({"class_threshold": "high"}, TypeError, "class_threshold"),
        ({"method": "mean"}, ValueError, "method"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"overlap": "dice"}, ValueError, "overlap"),
        ({"overlap_threshold": 1.5}, ValueError, "overlap_threshold"),
        ({"overlap_threshold": -0.5}, ValueError, "overlap_threshold"),
        ({"preset": "paper"}, ValueError, "preset"),
        ({"weights": "outer"}, ValueError, "weights"),
        ({"max_detections": 0}, ValueError, "max_detections"),
        ({"convention": "paper"}, ValueError, "convention"),
        ({"sigma": 0.5}, TypeError, "gaussian"),
    ],
)
def test_bad_arguments_raise_naming_them(batch, change, error, name):
    cas, video_scores, length = batch
    arguments = {"cas": cas, "video_scores": video_scores, "length": length} | change
    with pytest.raises(error, match=name):
        detect(arguments.pop("cas"), arguments.pop("video_scores"), **arguments)


def test_non_finite_cas_inside_a_selected_video_names_its_index(batch):
    cas, video_scores, length = batch
    bad = cas.copy()
    bad[3, 7, 2] = np.inf
    scores = video_scores.copy()
    scores[3, 2] = 0.9
    with pytest.raises(ValueError, match=r"`cas` must be finite.*\(3, 7, 2\)"):
        detect(bad, scores, length=length)
    # A traced CAS is refused before any work: never a silent answer from unchecked values.
    with pytest.raises(TypeError, match="cannot run under jax.jit"):
        jax.jit(lambda c: detect(c, scores, length=length).count)(bad)
