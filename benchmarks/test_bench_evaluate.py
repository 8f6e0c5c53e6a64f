"""Detection mAP at THUMOS14-like scale: the vectorised evaluator against a per-prediction loop.

Run: ``python -m pytest benchmarks/test_bench_evaluate.py``

``test_bench_evaluate_json`` times the file path (``evaluate_json``: parse, check,
code, evaluate) on the same detections written as ActivityNet JSON.

The baseline is the straightforward per-prediction loop (ground truth looked up by
(class, video), tIoU computed once per pair), ``jaxfuse.bench.published.detection_map_loop``,
written like the independent reference in ``tests/evaluation/test_evaluate.py`` (benchmarks do not
import tests). ``test_bench_reference_loop`` also checks that ``evaluate_detections``
agrees with it on the benchmark data to 1e-9. The speed-up (reference time / evaluator
time, best rounds) is printed and recorded in ``extra_info`` next to the target (20x);
timings are measured, not asserted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxfuse._evaluation.activitynet_json import evaluate_json
from jaxfuse._evaluation.evaluate import THUMOS14_THRESHOLDS, Detections, GroundTruth, evaluate_detections
from jaxfuse.bench.published import detection_map_loop

NUM_VIDEOS = 200
NUM_CLASSES = 20
CLASSES_PER_VIDEO = 2
GT_PER_VIDEO_CLASS = 10  # 200 * 2 * 10 = 4,000 ground-truth segments
PREDICTIONS_PER_VIDEO = 1_000  # 200,000 predictions
SPEEDUP_TARGET = 20

_timings: dict[str, float] = {}


# ------------------------------------------------------------- reference loop


def reference_map(predictions, ground_truth, thresholds):
    """The straightforward per-prediction loop: ``[num_thresholds, num_classes]`` AP, classes."""
    return detection_map_loop(predictions, ground_truth, thresholds)


# ------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def thumos_like():
    """Seeded THUMOS14-like detections: a few classes per video, proposals near the truth."""
    rng = np.random.default_rng(0)
    duration = rng.uniform(60, 600, NUM_VIDEOS)
    video_classes = np.stack(
        [rng.choice(NUM_CLASSES, CLASSES_PER_VIDEO, replace=False) for _ in range(NUM_VIDEOS)]
    )

    gt_video = np.repeat(np.arange(NUM_VIDEOS), CLASSES_PER_VIDEO * GT_PER_VIDEO_CLASS)
    gt_label = np.repeat(video_classes.ravel(), GT_PER_VIDEO_CLASS)
    gt_length = rng.uniform(2, 30, gt_video.size)
    gt_start = rng.uniform(0, 1, gt_video.size) * (duration[gt_video] - gt_length)
    gt_segments = np.stack([gt_start, gt_start + gt_length], axis=1)

    # 80% of the predictions jitter around a ground truth of their video; the rest are
    # anywhere, with any class.
    pred_video = np.repeat(np.arange(NUM_VIDEOS), PREDICTIONS_PER_VIDEO)
    per_video = CLASSES_PER_VIDEO * GT_PER_VIDEO_CLASS
    source = pred_video * per_video + rng.integers(0, per_video, pred_video.size)
    centre = gt_segments[source].mean(axis=1) + rng.normal(0, 0.3, pred_video.size) * gt_length[source]
    length = gt_length[source] * rng.lognormal(0, 0.4, pred_video.size)
    pred_label = gt_label[source].copy()
    anywhere = rng.random(pred_video.size) < 0.2
    centre[anywhere] = rng.uniform(0, 1, anywhere.sum()) * duration[pred_video[anywhere]]
    pred_label[anywhere] = rng.integers(0, NUM_CLASSES, anywhere.sum())
    pred_segments = np.stack([centre - length / 2, centre + length / 2], axis=1).clip(0, None)
    score = rng.random(pred_video.size) + np.where(anywhere, 0.0, 0.3)

    predictions = Detections(pred_video, pred_label, score, pred_segments)
    ground_truth = GroundTruth(gt_video, gt_label, gt_segments)
    sizes = {
        "predictions": int(pred_video.size),
        "ground_truth": int(gt_video.size),
        "videos": NUM_VIDEOS,
        "classes": NUM_CLASSES,
        "thresholds": len(THUMOS14_THRESHOLDS),
    }
    return predictions, ground_truth, sizes


# ------------------------------------------------------------------ benchmarks


def _min_seconds(benchmark) -> float | None:
    """The fastest round, or None when pytest-benchmark is disabled."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.min


def test_bench_evaluate_detections(benchmark, thumos_like):
    predictions, ground_truth, sizes = thumos_like
    result = benchmark.pedantic(
        evaluate_detections, args=(predictions, ground_truth), rounds=5, iterations=1, warmup_rounds=1
    )
    benchmark.extra_info.update(sizes)
    benchmark.extra_info["mAP@0.5"] = float(result.mean_average_precision[4])
    benchmark.extra_info["average_mAP"] = float(result.average)
    if (seconds := _min_seconds(benchmark)) is not None:
        _timings["vectorised"] = seconds
    assert np.all(np.isfinite(result.mean_average_precision))


def test_bench_reference_loop(benchmark, thumos_like):
    predictions, ground_truth, sizes = thumos_like
    expected, _ = benchmark.pedantic(
        reference_map, args=(predictions, ground_truth, THUMOS14_THRESHOLDS), rounds=1, iterations=1
    )
    benchmark.extra_info.update(sizes)
    np.testing.assert_allclose(
        evaluate_detections(predictions, ground_truth).average_precision, expected, atol=1e-9, rtol=0
    )
    seconds = _min_seconds(benchmark)
    if seconds is None or "vectorised" not in _timings:
        pytest.skip("speed-up needs both benchmarks to run with timing enabled")
    speedup = seconds / _timings["vectorised"]
    benchmark.extra_info["speedup_vs_reference"] = speedup
    print(f"\nevaluate_detections is {speedup:.1f}x faster than the per-prediction loop ({sizes})")
    benchmark.extra_info["speedup_target"] = SPEEDUP_TARGET


@pytest.fixture(scope="module")
def thumos_like_files(thumos_like, tmp_path_factory):
    """The same detections as ActivityNet-format files (string video ids and labels)."""
    predictions, ground_truth, sizes = thumos_like
    results: dict = {}
    for video, label, score, (start, end) in zip(
        predictions.video.tolist(), predictions.label.tolist(), predictions.score.tolist(), predictions.segments.tolist()
    ):
        results.setdefault(f"video_{video}", []).append({"label": f"class_{label}", "score": score, "segment": [start, end]})
    database: dict = {}
    for video, label, (start, end) in zip(ground_truth.video.tolist(), ground_truth.label.tolist(), ground_truth.segments.tolist()):
        entry = database.setdefault(f"video_{video}", {"subset": "test", "annotations": []})
        entry["annotations"].append({"label": f"class_{label}", "segment": [start, end]})
    folder = tmp_path_factory.mktemp("evaluate_json")
    prediction_path, ground_truth_path = folder / "pred.json", folder / "gt.json"
    prediction_path.write_text(json.dumps({"results": results}))
    ground_truth_path.write_text(json.dumps({"database": database}))
    return prediction_path, ground_truth_path, sizes


def test_bench_evaluate_json(benchmark, thumos_like, thumos_like_files):
    """File to mAP, as ``jaxfuse evaluate`` runs it: parse, check, code, evaluate."""
    prediction_path, ground_truth_path, sizes = thumos_like_files
    result = benchmark.pedantic(
        evaluate_json, args=(prediction_path, ground_truth_path), rounds=3, iterations=1, warmup_rounds=1
    )
    benchmark.extra_info.update(sizes)
    benchmark.extra_info["file_megabytes"] = prediction_path.stat().st_size / 1e6
    predictions, ground_truth, _ = thumos_like
    direct = evaluate_detections(predictions, ground_truth)
    columns = [int(name.removeprefix("class_")) for name in result.classes]  # "class_10" sorts before "class_2"
    np.testing.assert_allclose(result.average_precision, direct.average_precision[:, columns], atol=1e-12, rtol=0)
    if (seconds := _min_seconds(benchmark)) is not None and "vectorised" in _timings:
        benchmark.extra_info["evaluation_share"] = _timings["vectorised"] / seconds
        print(f"\nevaluate_json: {seconds:.2f} s for {benchmark.extra_info['file_megabytes']:.0f} MB, "
              f"of which the evaluation {_timings['vectorised']:.2f} s")
