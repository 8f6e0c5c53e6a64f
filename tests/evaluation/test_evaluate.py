"""Detection mAP: the vectorised evaluator against a plain loop written from the protocol."""

from __future__ import annotations

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxfuse._evaluation import matching
from jaxfuse._evaluation.activitynet_json import evaluate_json, load_activitynet_json
from jaxfuse._evaluation.evaluate import (
    ACTIVITYNET_THRESHOLDS,
    THUMOS14_THRESHOLDS,
    DetectionMAP,
    Detections,
    GroundTruth,
    evaluate_detections,
)
from jaxfuse.formats.activitynet import DetectionFileError, read_ground_truth, read_predictions

# ---------------------------------------------------------------- reference loop
#
# A plain-numpy rendition of ActivityNet's Evaluation/eval_detection.py
# (compute_average_precision_detection and utils.interpolated_prec_rec), written from
# its description, one class at a time. Its two sorts are ``argsort()[::-1]``; numpy's
# default sort is not stable, so the rendition uses the stable sort, the order the
# reference gives wherever its sort keeps ties in input order (see jaxfuse._evaluation.evaluate).


def descending(values):
    """``argsort()[::-1]`` with ties in input order before the reversal: later first."""
    return np.argsort(values, kind="stable")[::-1]


def reference_segment_iou(target, candidates):
    """utils.segment_iou: tIoU of one segment against ``[N, 2]`` candidates (0/0 is NaN)."""
    intersection = (np.minimum(target[1], candidates[:, 1]) - np.maximum(target[0], candidates[:, 0])).clip(0)
    union = (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return intersection / union


def reference_interpolated_prec_rec(precision, recall):
    """utils.interpolated_prec_rec: VOC 2011 all-point interpolated AP."""
    mprec = np.hstack([[0.0], precision, [0.0]])
    mrec = np.hstack([[0.0], recall, [1.0]])
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return np.sum((mrec[steps] - mrec[steps - 1]) * mprec[steps])


def reference_class_ap(gt_video, gt_segments, pred_video, pred_score, pred_segments, thresholds):
    """compute_average_precision_detection for one class: ``[num_thresholds]`` AP."""
    num_thresholds = len(thresholds)
    if len(pred_score) == 0:
        return np.zeros(num_thresholds)
    lock = -np.ones((num_thresholds, len(gt_video)))
    order = descending(pred_score)
    tp = np.zeros((num_thresholds, len(order)))
    fp = np.zeros((num_thresholds, len(order)))
    for rank, i in enumerate(order):
        same_video = np.flatnonzero(gt_video == pred_video[i])  # input order
        if same_video.size == 0:
            fp[:, rank] = 1
            continue
        tiou = reference_segment_iou(pred_segments[i], gt_segments[same_video])
        tried = descending(tiou)
        for t, threshold in enumerate(thresholds):
            for j in tried:
                if tiou[j] < threshold:
                    fp[t, rank] = 1
                    break
                if lock[t, same_video[j]] >= 0:
                    continue
                tp[t, rank] = 1
                lock[t, same_video[j]] = rank
                break
            if fp[t, rank] == 0 and tp[t, rank] == 0:
                fp[t, rank] = 1
    tp_sum, fp_sum = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    recall = tp_sum / len(gt_video)
    precision = tp_sum / (tp_sum + fp_sum)
    return np.asarray([reference_interpolated_prec_rec(precision[t], recall[t]) for t in range(num_thresholds)])


def reference_map(predictions, ground_truth, thresholds):
    """The reference per class: ``[num_thresholds, num_classes]`` AP, and the classes.

    Classes are the sorted labels of both inputs; one without ground truth (where the
    reference raises KeyError) gets NaN.
    """
    p_video, p_label = np.asarray(predictions.video), np.asarray(predictions.label)
    p_score = np.asarray(predictions.score, np.float64)
    p_segments = np.asarray(predictions.segments, np.float64).reshape(-1, 2)
    g_video, g_label = np.asarray(ground_truth.video), np.asarray(ground_truth.label)
    g_segments = np.asarray(ground_truth.segments, np.float64).reshape(-1, 2)
    classes = np.union1d(p_label, g_label).astype(np.int64)
    ap = np.full((len(thresholds), classes.size), np.nan)
    for c_index, c in enumerate(classes):
        gt, pred = g_label == c, p_label == c
        if gt.any():
            ap[:, c_index] = reference_class_ap(
                g_video[gt], g_segments[gt], p_video[pred], p_score[pred], p_segments[pred], thresholds
            )
    return ap, classes


# ----------------------------------------------------------------- random cases


def random_case(rng, num_videos, num_classes, num_gt, num_predictions, *, quantise=False):
    """Random ground truth and predictions that mostly jitter around it, with duplicates.

    Some predictions have a class or a video without ground truth. ``quantise`` rounds
    times to integers and scores to 0.1: ties in tIoU and score, tIoU on thresholds.
    Ground truths keep a positive length (an empty union is where jaxfuse departs from
    the reference on purpose; see test_zero_length_segments_never_match).
    """
    gt_video = rng.integers(0, num_videos, num_gt)
    gt_label = rng.integers(0, num_classes, num_gt)
    gt_start = rng.uniform(0, 100, num_gt)
    gt_segments = np.stack([gt_start, gt_start + rng.uniform(0, 20, num_gt)], axis=1)
    near = rng.integers(0, num_gt, num_predictions)  # the ground truth each prediction imitates
    pred_segments = gt_segments[near] + rng.normal(0, 3, (num_predictions, 2))
    random_rows = rng.random(num_predictions) < 0.3
    pred_segments[random_rows] = rng.uniform(0, 120, (random_rows.sum(), 2))
    pred_segments.sort(axis=1)
    other_video = rng.integers(0, num_videos + 2, num_predictions)  # some videos without ground truth
    other_label = rng.integers(0, num_classes + 2, num_predictions)  # some classes without ground truth
    pred_video = np.where(rng.random(num_predictions) < 0.9, gt_video[near], other_video)
    pred_label = np.where(rng.random(num_predictions) < 0.8, gt_label[near], other_label)
    score = rng.random(num_predictions)
    duplicates = rng.random(num_predictions) < 0.15
    if num_predictions > 1:
        source = rng.integers(0, num_predictions, num_predictions)
        pred_segments[duplicates] = pred_segments[source[duplicates]]
        pred_video[duplicates] = pred_video[source[duplicates]]
        pred_label[duplicates] = pred_label[source[duplicates]]
    if quantise:  # exact ties in tIoU and score, and tIoU landing on thresholds
        pred_segments, gt_segments, score = np.round(pred_segments), np.round(gt_segments), np.round(score, 1)
        pred_segments[:, 1] = np.maximum(pred_segments[:, 1], pred_segments[:, 0])
        gt_segments[:, 1] = np.maximum(gt_segments[:, 1], gt_segments[:, 0] + 1)
    return (
        Detections(pred_video, pred_label, score, pred_segments),
        GroundTruth(gt_video, gt_label, gt_segments),
    )


@pytest.mark.parametrize("seed", range(40))
def test_matches_reference_loop_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    thresholds = THUMOS14_THRESHOLDS if seed % 2 else ACTIVITYNET_THRESHOLDS
    predictions, ground_truth = random_case(
        rng,
        num_videos=int(rng.integers(1, 6)),
        num_classes=int(rng.integers(1, 5)),
        num_gt=int(rng.integers(1, 30)),
        num_predictions=int(rng.integers(0, 150)),
        quantise=seed % 3 == 0,
    )
    expected, classes = reference_map(predictions, ground_truth, thresholds)
    result = evaluate_detections(predictions, ground_truth, thresholds=thresholds)
    np.testing.assert_array_equal(result.classes, classes)
    np.testing.assert_allclose(result.average_precision, expected, atol=1e-12, rtol=0)
    has_gt = np.isin(classes, np.asarray(ground_truth.label))
    expected_mean = expected[:, has_gt].mean(axis=1)
    np.testing.assert_allclose(result.mean_average_precision, expected_mean, atol=1e-12, rtol=0)
    np.testing.assert_allclose(result.average, expected[:, has_gt].mean(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_loop_with_many_equal_tious(seed):
    """A lattice of equal-length segments: most predictions sit halfway between two
    ground truths (equal tIoU), most scores are tied, some ground truths repeat."""
    rng = np.random.default_rng(seed)
    num_gt, num_predictions = 40, 120
    gt_start = 5.0 * rng.integers(0, 12, num_gt)
    pred_start = 2.5 * rng.integers(0, 26, num_predictions)
    predictions = Detections(
        video=rng.integers(0, 3, num_predictions),
        label=rng.integers(0, 3, num_predictions),
        score=rng.integers(0, 4, num_predictions) / 4,
        segments=np.stack([pred_start, pred_start + 10], axis=1),
    )
    ground_truth = GroundTruth(rng.integers(0, 2, num_gt), rng.integers(0, 2, num_gt),
                               np.stack([gt_start, gt_start + 10], axis=1))
    thresholds = (0.3, 0.5, 0.6, 0.7)
    expected, classes = reference_map(predictions, ground_truth, thresholds)
    result = evaluate_detections(predictions, ground_truth, thresholds=thresholds)
    np.testing.assert_array_equal(result.classes, classes)
    np.testing.assert_allclose(result.average_precision, expected, atol=1e-12, rtol=0)


def test_many_ground_truths_in_one_video_and_class():
    """Dense groups: many rounds of the vectorised matcher, many competing claims."""
    rng = np.random.default_rng(123)
    predictions, ground_truth = random_case(rng, num_videos=1, num_classes=1, num_gt=60, num_predictions=400)
    expected, _ = reference_map(predictions, ground_truth, THUMOS14_THRESHOLDS)
    result = evaluate_detections(predictions, ground_truth)
    np.testing.assert_allclose(result.average_precision, expected, atol=1e-12, rtol=0)


def test_pairs_split_across_chunks(monkeypatch):
    """Chunk boundaries of the pair scoring (a few pairs per chunk) change nothing."""
    predictions, ground_truth = random_case(np.random.default_rng(11), 3, 2, 25, 120, quantise=True)
    expected = evaluate_detections(predictions, ground_truth).average_precision
    monkeypatch.setattr(matching, "_PAIR_CHUNK", 7)
    np.testing.assert_array_equal(evaluate_detections(predictions, ground_truth).average_precision, expected)
    reference, _ = reference_map(predictions, ground_truth, THUMOS14_THRESHOLDS)
    np.testing.assert_allclose(expected, reference, atol=1e-12, rtol=0)


def test_larger_case_and_other_array_kinds():
    rng = np.random.default_rng(99)
    predictions, ground_truth = random_case(
        rng, num_videos=30, num_classes=8, num_gt=300, num_predictions=3000
    )
    # float32 scores tie often; JAX arrays and unsorted thresholds are accepted.
    predictions = predictions._replace(score=jnp.asarray(np.round(predictions.score, 3), jnp.float32))
    thresholds = (0.7, 0.3, 0.55)
    expected, _ = reference_map(predictions, ground_truth, thresholds)
    result = evaluate_detections(predictions, ground_truth, thresholds=thresholds)
    np.testing.assert_allclose(result.average_precision, expected, atol=1e-12, rtol=0)


# -------------------------------------------------------------- hand-checked cases


def one_class(segments, scores, gt_segments, videos=None, gt_videos=None):
    n, g = len(segments), len(gt_segments)
    predictions = Detections(
        video=np.zeros(n, int) if videos is None else np.asarray(videos),
        label=np.zeros(n, int),
        score=np.asarray(scores, float),
        segments=np.asarray(segments, float).reshape(n, 2),
    )
    ground_truth = GroundTruth(
        video=np.zeros(g, int) if gt_videos is None else np.asarray(gt_videos),
        label=np.zeros(g, int),
        segments=np.asarray(gt_segments, float),
    )
    return predictions, ground_truth


def test_perfect_predictions_score_one():
    gt = [[0, 10], [20, 25], [30, 60]]
    result = evaluate_detections(*one_class(gt, [0.9, 0.8, 0.7], gt), thresholds=ACTIVITYNET_THRESHOLDS)
    np.testing.assert_array_equal(result.average_precision, 1.0)
    assert result.average == 1.0


def test_no_predictions_score_zero():
    result = evaluate_detections(*one_class([], [], [[0, 10], [20, 30]]))
    np.testing.assert_array_equal(result.average_precision, 0.0)
    assert result.average == 0.0


def test_duplicate_prediction_is_a_false_positive():
    # TP, duplicate of the same ground truth (FP), TP. Precision 1, 1/2, 2/3 at recall
    # 1/2, 1/2, 1; the envelope at the second TP is 2/3: AP = 1/2 * 1 + 1/2 * 2/3.
    predictions, ground_truth = one_class([[0, 10], [0, 10], [20, 30]], [0.9, 0.8, 0.7], [[0, 10], [20, 30]])
    result = evaluate_detections(predictions, ground_truth, thresholds=(0.5,))
    assert result.average_precision[0, 0] == pytest.approx(5 / 6, abs=1e-12)


def test_prediction_below_threshold_is_a_false_positive():
    # The first prediction has tIoU exactly 0.5: a TP at 0.5 (>=), a FP at 0.6, where
    # the second one is the only TP: precision 1/2 at recall 1.
    predictions, ground_truth = one_class([[0, 5], [0, 10]], [0.9, 0.5], [[0, 10]])
    result = evaluate_detections(predictions, ground_truth, thresholds=(0.5, 0.6))
    np.testing.assert_allclose(result.average_precision[:, 0], [1.0, 0.5], atol=1e-12)


def test_prediction_takes_the_best_unmatched_ground_truth():
    # The first prediction overlaps both ground truths; it takes [0, 10] (tIoU 0.8 > 0.6),
    # so the second prediction can still match [4, 14]. Same video only: the third
    # prediction sits on a ground truth of another video and is a FP.
    predictions, ground_truth = one_class(
        [[1, 9], [4, 14], [0, 10]], [0.9, 0.8, 0.7], [[0, 10], [4, 14]], videos=[0, 0, 1], gt_videos=[0, 0]
    )
    result = evaluate_detections(predictions, ground_truth, thresholds=(0.5,))
    assert result.average_precision[0, 0] == 1.0


def test_equal_tiou_goes_to_the_later_ground_truth():
    # Issue 8's case: [2.5, 12.5] has tIoU 0.6 with both ground truths and the reference
    # tries [5, 15] first (argsort()[::-1]), so [0, 10] is left for the second: AP 1.
    predictions, ground_truth = one_class([[2.5, 12.5], [0, 10]], [0.9, 0.8], [[0, 10], [5, 15]])
    assert evaluate_detections(predictions, ground_truth, thresholds=(0.5,)).average == 1.0
    expected, _ = reference_map(predictions, ground_truth, (0.5,))
    assert expected[0, 0] == 1.0
    # Listed the other way round, the first prediction takes [0, 10]: TP, FP, AP 1/2.
    predictions, ground_truth = one_class([[2.5, 12.5], [0, 10]], [0.9, 0.8], [[5, 15], [0, 10]])
    assert evaluate_detections(predictions, ground_truth, thresholds=(0.5,)).average == 0.5
    # A locked later ground truth passes the prediction on to the earlier one.
    predictions, ground_truth = one_class([[5, 15], [2.5, 12.5]], [0.9, 0.8], [[0, 10], [5, 15]])
    assert evaluate_detections(predictions, ground_truth, thresholds=(0.5,)).average == 1.0


def test_equal_scores_rank_the_later_prediction_first():
    # The true positive [0, 10] is listed second, so it ranks first: AP 1.
    predictions, ground_truth = one_class([[50, 60], [0, 10]], [0.5, 0.5], [[0, 10]])
    result = evaluate_detections(predictions, ground_truth, thresholds=(0.5,))
    assert result.average == 1.0 and result.tied_predictions == 2
    # Listed first, it ranks second: precision 0, then 1/2 at recall 1.
    predictions, ground_truth = one_class([[0, 10], [50, 60]], [0.5, 0.5], [[0, 10]])
    assert evaluate_detections(predictions, ground_truth, thresholds=(0.5,)).average == 0.5


def test_equal_scores_order_is_the_stable_descending_sort():
    # Long runs of equal scores, where numpy's default sort reorders ties.
    rng = np.random.default_rng(5)
    scores = np.round(rng.random(5000), 2)
    expected = np.argsort(scores, kind="stable")[::-1]
    np.testing.assert_array_equal(matching.descending_order(scores), expected)


def test_tied_predictions_count_ties_within_a_class():
    predictions = Detections(
        video=[0, 0, 0, 1, 0, 0],
        label=[0, 0, 1, 0, 2, 2],
        score=[0.5, 0.7, 0.5, 0.5, 0.1, 0.2],
        segments=[[0, 1]] * 6,
    )
    ground_truth = GroundTruth(video=[0], label=[0], segments=[[0, 1]])
    # Class 0 has 0.5 twice (videos 0 and 1): two tied; class 1's 0.5 ties with nothing.
    assert evaluate_detections(predictions, ground_truth).tied_predictions == 2
    assert evaluate_detections(predictions._replace(score=np.arange(6.0)), ground_truth).tied_predictions == 0


def test_zero_length_segments_never_match():
    # An empty union: jaxfuse gives tIoU 0 (a false positive). The reference divides 0
    # by 0 and its NaN makes a TP of a point anywhere in the video (documented).
    predictions, ground_truth = one_class([[50, 50]], [0.9], [[3, 3]])
    assert evaluate_detections(predictions, ground_truth, thresholds=(0.5,)).average == 0.0
    expected, _ = reference_map(predictions, ground_truth, (0.5,))
    assert expected[0, 0] == 1.0


def test_tiou_just_below_nine_tenths_passes_the_official_threshold():
    # tIoU([0.3, 1.2], [0.2, 1.2]) computes to 0.8999999999999999: a TP at the 9th
    # ActivityNet threshold (np.linspace's 0.8999999999999999), a FP at 0.9.
    predictions, ground_truth = one_class([[0.3, 1.2]], [0.9], [[0.2, 1.2]])
    result = evaluate_detections(predictions, ground_truth, thresholds=ACTIVITYNET_THRESHOLDS)
    np.testing.assert_array_equal(result.average_precision[:, 0], [1.0] * 9 + [0.0])
    assert evaluate_detections(predictions, ground_truth, thresholds=(0.9,)).average == 0.0


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    predictions = Detections(video=[0, 0, 0], label=[7, 2, 5], score=[0.9, 0.8, 0.7],
                             segments=[[0, 10], [0, 10], [0, 10]])
    ground_truth = GroundTruth(video=[0, 0], label=[2, 9], segments=[[0, 10], [20, 30]])
    result = evaluate_detections(predictions, ground_truth, thresholds=(0.5, 0.7))
    assert isinstance(result, DetectionMAP)
    np.testing.assert_array_equal(result.classes, [2, 5, 7, 9])
    # Class 2 found (1), class 9 has no predictions (0), 5 and 7 have no ground truth.
    np.testing.assert_array_equal(result.average_precision, [[1, np.nan, np.nan, 0]] * 2)
    np.testing.assert_array_equal(result.mean_average_precision, [0.5, 0.5])
    assert result.average == 0.5
    np.testing.assert_array_equal(result.thresholds, [0.5, 0.7])


def test_accepts_dicts_and_any_integer_ids():
    predictions, ground_truth = one_class([[0, 10]], [1.0], [[0, 10]], videos=[10**12], gt_videos=[10**12])
    result = evaluate_detections(predictions._asdict(), ground_truth._asdict())
    assert result.average == 1.0


def test_presets_are_the_official_floats():
    # Exactly, bit for bit: the reference's np.linspace (9th value 0.8999999999999999)
    # and GauFuse's literal THUMOS14 list (= np.linspace(0.1, 0.7, 7)).
    assert ACTIVITYNET_THRESHOLDS == tuple(np.linspace(0.5, 0.95, 10).tolist())
    assert ACTIVITYNET_THRESHOLDS[8] == 0.8999999999999999
    assert THUMOS14_THRESHOLDS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert THUMOS14_THRESHOLDS == tuple(np.linspace(0.1, 0.7, 7).tolist())


# ------------------------------------------------------------------------- errors


def good_inputs():
    return one_class([[0, 10], [5, 8]], [0.9, 0.8], [[0, 10]])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("segments", [[0, 10], [8, 5]], "predictions.segments"),
        ("segments", [[0, 10], [5, np.inf]], "predictions.segments"),
        ("segments", [0, 10, 5, 8], "predictions.segments"),
        ("score", [0.9, np.nan], "predictions.score"),
        ("score", [0.9], "predictions.score"),
        ("label", [0, 0, 0], "predictions.label"),
        ("video", [[0, 0]], "predictions.video"),
    ],
)
def test_bad_predictions_raise_value_error_naming_them(field, value, message):
    predictions, ground_truth = good_inputs()
    with pytest.raises(ValueError, match=message):
        evaluate_detections(predictions._replace(**{field: np.asarray(value)}), ground_truth)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("segments", [[3, 1]], "ground_truth.segments"),
        ("segments", [[0, np.nan]], "ground_truth.segments"),
        ("label", [0, 1], "ground_truth.label"),
    ],
)
def test_bad_ground_truth_raises_value_error_naming_it(field, value, message):
    predictions, ground_truth = good_inputs()
    with pytest.raises(ValueError, match=message):
        evaluate_detections(predictions, ground_truth._replace(**{field: np.asarray(value)}))


def test_other_bad_inputs():
    predictions, ground_truth = good_inputs()
    with pytest.raises(ValueError, match="ground_truth"):
        evaluate_detections(predictions, GroundTruth([], [], np.zeros((0, 2))))
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_detections(predictions, ground_truth, thresholds=(0.0, 0.5))
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_detections(predictions, ground_truth, thresholds=())
    with pytest.raises(ValueError, match="predictions"):
        evaluate_detections({"video": [0], "label": [0], "segments": [[0, 1]]}, ground_truth)
    with pytest.raises(TypeError, match="predictions.video"):
        evaluate_detections(predictions._replace(video=np.asarray([0.0, 1.0])), ground_truth)


# ---------------------------------------------------------------------------- JSON


def to_activitynet_json(predictions, ground_truth):
    results, database = {}, {}
    for v, c, s, seg in zip(predictions.video, predictions.label, predictions.score, predictions.segments):
        results.setdefault(f"video_{v}", []).append(
            {"label": f"class_{c}", "score": float(s), "segment": [float(seg[0]), float(seg[1])]}
        )
    for v, c, seg in zip(ground_truth.video, ground_truth.label, ground_truth.segments):
        entry = database.setdefault(f"video_{v}", {"subset": "validation", "annotations": []})
        entry["annotations"].append({"label": f"class_{c}", "segment": [float(seg[0]), float(seg[1])]})
    return {"version": "VERSION 1.3", "results": results}, {"database": database}


def test_json_round_trip(tmp_path):
    predictions, ground_truth = random_case(np.random.default_rng(7), 4, 3, 20, 80)
    prediction_dict, ground_truth_dict = to_activitynet_json(predictions, ground_truth)
    # A test-subset video with ground truth, dropped by `subset`.
    ground_truth_dict["database"]["extra"] = {
        "subset": "testing",
        "annotations": [{"label": "class_0", "segment": [0, 5]}],
    }
    prediction_path, ground_truth_path = tmp_path / "pred.json", tmp_path / "gt.json"
    prediction_path.write_text(json.dumps(prediction_dict))
    ground_truth_path.write_text(json.dumps(ground_truth_dict))

    data = load_activitynet_json(prediction_path, str(ground_truth_path), subset="validation")
    # The codes decode to the original names (JSON groups rows by video, so compare sets).
    def decoded(video, label, segments):
        rows = zip(video, label, segments)
        return sorted((data.video_names[v], data.class_names[c], *seg) for v, c, seg in rows)

    def original(video, label, segments):
        return sorted((f"video_{v}", f"class_{c}", *seg) for v, c, seg in zip(video, label, segments))

    assert decoded(*data.ground_truth) == original(*ground_truth)
    assert decoded(data.predictions.video, data.predictions.label, data.predictions.segments) == original(
        predictions.video, predictions.label, predictions.segments
    )

    result = evaluate_json(prediction_path, ground_truth_path, subset="validation")
    direct = evaluate_detections(predictions, ground_truth)
    np.testing.assert_array_equal(result.classes, [f"class_{c}" for c in direct.classes])
    np.testing.assert_allclose(result.average_precision, direct.average_precision, atol=1e-12)
    assert result.average == pytest.approx(float(direct.average), abs=1e-12)

    with_extra = evaluate_json(prediction_dict, ground_truth_dict)
    assert with_extra.average < result.average + 1e-12  # the extra ground truth is never found


def test_json_string_ids_shared_between_files():
    predictions = {"results": {"b": [{"label": "Run", "score": 0.9, "segment": [0, 10]}],
                               "only_predicted": [{"label": "Jump", "score": 0.5, "segment": [0, 1]}]}}
    ground_truth = {"database": {"b": {"annotations": [{"label": "Run", "segment": [0, 10]}]},
                                 "a": {"annotations": [{"label": "Swim", "segment": [0, 3]}]}}}
    data = load_activitynet_json(predictions, ground_truth)
    assert data.video_names == ("a", "b", "only_predicted")
    assert data.class_names == ("Jump", "Run", "Swim")
    assert data.predictions.video.tolist() == [1, 2] and data.predictions.label.tolist() == [1, 0]
    result = evaluate_json(predictions, ground_truth, thresholds=(0.5,))
    np.testing.assert_array_equal(result.classes, ["Jump", "Run", "Swim"])
    np.testing.assert_array_equal(result.average_precision, [[np.nan, 1.0, 0.0]])


BAD_PREDICTIONS = [
    ({"label": "Run", "score": "0.9", "segment": [0, 1]}, "score must be a finite number"),
    ({"label": "Run", "score": True, "segment": [0, 1]}, "score must be a finite number"),
    ({"label": "Run", "score": float("nan"), "segment": [0, 1]}, "score must be a finite number"),
    ({"label": "Run", "score": 10**400, "segment": [0, 1]}, "score must be a finite number"),
    ({"label": "Run", "score": 1e301, "segment": [0, 1]}, "score must be within +-1e+300"),
    ({"label": "Run", "score": 0.9, "segment": ["0", "1"]}, "segment must be"),
    ({"label": "Run", "score": 0.9, "segment": [0, 1, 2]}, "segment must be"),
    ({"label": "Run", "score": 0.9, "segment": [0]}, "segment must be"),
    ({"label": "Run", "score": 0.9, "segment": "0-1"}, "segment must be"),
    ({"label": "Run", "score": 0.9, "segment": [0, False]}, "segment must be"),
    ({"label": "Run", "score": 0.9, "segment": [0, float("inf")]}, "segment must be"),
    ({"label": "Run", "score": 0.9, "segment": [2, 1]}, "start <= end"),
    ({"label": True, "score": 0.9, "segment": [0, 1]}, "label must be"),
    ({"label": 1.5, "score": 0.9, "segment": [0, 1]}, "label must be"),
    ({"label": None, "score": 0.9, "segment": [0, 1]}, "label must be"),
    ({"label": "Run", "segment": [0, 1]}, "missing 'score'"),
    ({"score": 0.9}, "missing 'label' and 'segment'"),
    ([0, 1, 0.9], "expected an object"),
]


@pytest.mark.parametrize(("entry", "problem"), BAD_PREDICTIONS)
def test_bad_prediction_entries_name_the_video_and_entry(entry, problem):
    good = {"label": "Run", "score": 0.5, "segment": [0, 10]}
    predictions = {"results": {"a": [good], "b": [good, good, entry, good]}}
    ground_truth = {"database": {"a": {"annotations": [{"label": "Run", "segment": [0, 10]}]}}}
    with pytest.raises(ValueError, match=f"predictions_json.*video 'b', entry 2: .*{re.escape(problem)}"):
        evaluate_json(predictions, ground_truth)


@pytest.mark.parametrize(("entry", "problem"), BAD_PREDICTIONS)
def test_prediction_rules_equal_the_fuse_command(tmp_path, entry, problem):
    """The reader of `jaxfuse fuse` rejects the same entries with the same words, from a dict or a file."""
    good = {"label": "Run", "score": 0.5, "segment": [0, 10]}
    predictions = {"results": {"a": [good], "b": [good, good, entry, good]}}
    ground_truth = {"database": {"a": {"annotations": [{"label": "Run", "segment": [0, 10]}]}}}
    with pytest.raises(DetectionFileError) as fuse_error:
        read_predictions(predictions)
    assert problem in str(fuse_error.value)
    with pytest.raises(DetectionFileError) as from_dict:
        evaluate_json(predictions, ground_truth)
    assert str(from_dict.value) == f"`predictions_json`: {fuse_error.value}"
    try:
        text = json.dumps(predictions, allow_nan=False)
    except ValueError:
        return  # NaN and inf are not JSON numbers: only a dict can hold them
    path = tmp_path / "pred.json"
    path.write_text(text)
    with pytest.raises(DetectionFileError) as fuse_file_error:
        read_predictions(path)
    with pytest.raises(DetectionFileError) as from_file:
        evaluate_json(path, ground_truth)
    assert problem in str(fuse_file_error.value)
    assert str(from_file.value) == f"`predictions_json` ({path}): {fuse_file_error.value}"


@pytest.mark.parametrize(
    ("annotation", "problem"),
    [
        ({"label": "Run", "segment": [0, 1, 2]}, "segment must be"),
        ({"label": "Run", "segment": ["0", 1]}, "segment must be"),
        ({"label": "Run", "segment": [5, 1]}, "start <= end"),
        ({"label": False, "segment": [0, 1]}, "label must be"),
        ({"segment": [0, 1]}, "missing 'label'"),
    ],
)
def test_bad_annotations_name_the_video_and_annotation(annotation, problem):
    good = {"label": "Run", "segment": [0, 10]}
    ground_truth = {"database": {"a": {"annotations": [good, annotation]}}}
    with pytest.raises(ValueError, match=f"ground_truth_json.*video 'a', entry 1: .*{re.escape(problem)}") as error:
        evaluate_json({"results": {}}, ground_truth)
    with pytest.raises(DetectionFileError) as reader_error:  # the reader evaluate_json reads through
        read_ground_truth(ground_truth)
    assert str(error.value) == f"`ground_truth_json`: {reader_error.value}"


def test_integer_and_string_labels_stay_apart():
    # The reference keys its class index by the raw JSON value: 1 and "1" differ.
    predictions = {"results": {"a": [{"label": 1, "score": 0.9, "segment": [0, 10]},
                                     {"label": "1", "score": 0.8, "segment": [0, 10]}]}}
    ground_truth = {"database": {"a": {"annotations": [{"label": "1", "segment": [0, 10]}]}}}
    result = evaluate_json(predictions, ground_truth, thresholds=(0.5,))
    assert result.classes.tolist() == [1, "1"]
    np.testing.assert_array_equal(result.average_precision, [[np.nan, 1.0]])


def test_python_built_dicts_with_numpy_scalars_and_tuples_are_accepted():
    predictions = {"results": {"a": [{"label": np.int64(3), "score": np.float32(0.5), "segment": (0, np.float64(10))}]}}
    ground_truth = {"database": {"a": {"annotations": [{"label": 3, "segment": [0, 10]}]}}}
    assert evaluate_json(predictions, ground_truth).average == 1.0


def test_files_with_repeated_keys_or_bad_json_are_rejected(tmp_path):
    ground_truth = tmp_path / "gt.json"
    ground_truth.write_text('{"database": {"a": {"annotations": []}, "a": {"annotations": []}}}')
    with pytest.raises(ValueError, match="ground_truth_json.*gt.json.*'a' more than once"):
        load_activitynet_json({"results": {}}, ground_truth)
    predictions = tmp_path / "pred.json"
    predictions.write_text('{"results": {"a": [}')
    with pytest.raises(ValueError, match="predictions_json.*not valid JSON"):
        load_activitynet_json(predictions, {"database": {}})
    predictions.write_text('{"results": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="predictions_json.*nested too deeply"):
        load_activitynet_json(predictions, {"database": {}})


def test_subset_without_videos_lists_the_subsets():
    ground_truth = {"database": {"a": {"subset": "Test", "annotations": [{"label": "x", "segment": [0, 1]}]}}}
    with pytest.raises(ValueError, match="subset.*'test'.*'Test'"):
        load_activitynet_json({"results": {}}, ground_truth, subset="test")


def test_ignored_labels_and_their_overlaps():
    ground_truth = {"database": {"a": {"annotations": [
        {"label": "Run", "segment": [0, 10]},
        {"label": "Ambiguous", "segment": [20, 30]},
    ]}}}
    predictions = {"results": {"a": [
        {"label": "Run", "score": 0.9, "segment": [25, 40]},  # overlaps the ambiguous one
        {"label": "Run", "score": 0.8, "segment": [0, 10]},
        {"label": "Ambiguous", "score": 0.7, "segment": [20, 30]},
    ]}}
    counted = evaluate_json(predictions, ground_truth, thresholds=(0.5,))
    assert counted.classes.tolist() == ["Ambiguous", "Run"]  # the reference's view: a class
    ignored = evaluate_json(predictions, ground_truth, thresholds=(0.5,), ignore_labels="Ambiguous")
    assert ignored.classes.tolist() == ["Run"]
    assert ignored.average == 0.5  # FP then TP
    dropped = evaluate_json(predictions, ground_truth, thresholds=(0.5,), ignore_labels=("Ambiguous",),
                            drop_ignored_overlaps=True)
    assert dropped.average == 1.0
    data = load_activitynet_json(predictions, ground_truth, ignore_labels=("Ambiguous",), drop_ignored_overlaps=True)
    assert data.predictions.score.tolist() == [0.8]


def test_bad_json_raises_value_error():
    with pytest.raises(ValueError, match="predictions_json"):
        load_activitynet_json({"database": {}}, {"database": {}})
    with pytest.raises(ValueError, match="ground_truth_json"):
        load_activitynet_json({"results": {}}, {"database": {"a": {"annotations": [{"label": "x"}]}}})


# ---------------------------------------------------------------------- properties

segment_strategy = st.tuples(st.integers(0, 30), st.integers(0, 10)).map(lambda se: [se[0], se[0] + se[1]])
# Ground truth of positive length: an empty union is a documented departure from the reference.
gt_segment_strategy = st.tuples(st.integers(0, 30), st.integers(1, 10)).map(lambda se: [se[0], se[0] + se[1]])


@st.composite
def small_cases(draw):
    num_gt = draw(st.integers(1, 8))
    num_predictions = draw(st.integers(0, 20))

    def ids(count):
        return np.asarray(draw(st.lists(st.integers(0, 2), min_size=count, max_size=count)), int)

    def segments(count, strategy=segment_strategy):
        drawn = draw(st.lists(strategy, min_size=count, max_size=count))
        return np.asarray(drawn, float).reshape(-1, 2)

    scores = st.lists(st.integers(0, 10**6), min_size=num_predictions, max_size=num_predictions, unique=True)
    predictions = Detections(
        ids(num_predictions), ids(num_predictions), np.asarray(draw(scores), float), segments(num_predictions)
    )
    return predictions, GroundTruth(ids(num_gt), ids(num_gt), segments(num_gt, gt_segment_strategy))


@settings(max_examples=150, deadline=None)
@given(case=small_cases(), seed=st.integers(0, 2**32 - 1))
def test_property_ap_in_unit_interval_and_order_invariant(case, seed):
    predictions, ground_truth = case
    result = evaluate_detections(predictions, ground_truth, thresholds=(0.1, 0.5, 0.9))
    has_gt = ~np.isnan(result.average_precision)
    assert np.all((result.average_precision[has_gt] >= 0) & (result.average_precision[has_gt] <= 1))
    np.testing.assert_array_equal(has_gt[0], np.isin(result.classes, ground_truth.label))

    permutation = np.random.default_rng(seed).permutation(len(predictions.score))
    shuffled = Detections(*(np.asarray(field)[permutation] for field in predictions))
    permuted = evaluate_detections(shuffled, ground_truth, thresholds=(0.1, 0.5, 0.9))
    np.testing.assert_allclose(permuted.average_precision, result.average_precision, atol=1e-12)

    expected, _ = reference_map(predictions, ground_truth, (0.1, 0.5, 0.9))
    np.testing.assert_allclose(result.average_precision, expected, atol=1e-12, rtol=0)
