"""Detection mAP under the ActivityNet protocol: the threshold presets, the input and result types, and ``evaluate_detections``.

The protocol of ActivityNet's reference evaluator (``Evaluation/eval_detection.py``,
``compute_average_precision_detection``), per class and per tIoU threshold:

1. Predictions are taken in descending score order: ``argsort()[::-1]`` of the scores.
2. Each tries the ground truths of its video and class in descending tIoU order
   (``argsort()[::-1]`` again), skipping those already matched at this threshold; the
   first one left is taken if its tIoU is ``>= threshold`` (a true positive, and the
   ground truth is locked for this threshold). Otherwise, or when its video has no
   ground truth of the class, the prediction is a false positive.
3. AP is the all-point interpolated precision of ActivityNet's
   ``interpolated_prec_rec``: the precision envelope made monotone from the right,
   summed over the recall steps. mAP is the mean over the classes with ground truth;
   a class with ground truth but no predictions has AP 0.

Ties. Both sorts are ``argsort()[::-1]``, so among equal values the order is the
reverse of whatever numpy's default sort leaves them in. That sort is not stable:
arrays of up to 16 elements were sorted by a stable insertion sort when the reference
was written, but numpy >= 1.25 on AVX-512 CPUs sorts with x86-simd-sort, which already
reorders ties of 5 elements (measured on numpy 2.4: 79 of 300 random 5-element arrays
with ties). No implementation can match every machine, so jaxfuse fixes the order the
reference gives with a stable sort, ``argsort(kind="stable")[::-1]``: **among equal
values the later one comes first**. Equal scores: the prediction later in the input
(for JSON files, later in the file) ranks first. Equal tIoU: the ground truth listed
later is tried first. ``DetectionMAP.tied_predictions`` counts the predictions whose
rank depends on this rule.

AP agrees with the reference to rounding (within 1e-15: its recall steps are summed
in another order). The reference's online list of blocked videos (``check_status``)
is not fetched: results equal the reference run with ``check_status=False``.

tIoU uses continuous lengths: ``intersection / union`` with ``length = end - start``,
the reference's floating-point steps. The one deliberate difference: an empty union
(a zero-length prediction against a zero-length ground truth) gives tIoU 0, where the
reference divides 0 by 0 and its NaN, sorted first and never ``< threshold``, makes the
prediction a true positive wherever the two points lie. The reference raises
``KeyError`` on a prediction whose label has no ground truth (ActionFormer's copy leaves
its label id unmapped, where it may collide with another class's index); here such a
class gets AP NaN and stays out of the mean, which is over the classes with ground
truth as in the reference.

The matching and AP kernel is ``jaxfuse._evaluation.matching``; the JSON files are
read by ``jaxfuse._evaluation.activitynet_json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxfuse._core.interop import to_host
from jaxfuse._evaluation.matching import class_average_precision, dense_codes, tied_count, true_positives

THUMOS14_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(0.1, 0.7, 7).tolist())
"""tIoU thresholds reported by weakly supervised THUMOS14 papers (0.1:0.1:0.7).

``np.linspace(0.1, 0.7, 7)``, which is exactly the decimals 0.1, ..., 0.7: the literal
list of GauFuse's ``evaluation/detectionMAP.py`` (not ``np.arange(0.1, 0.8, 0.1)``,
whose 0.30000000000000004 and 0.7000000000000001 differ in the last bit). Fully
supervised papers (ActionFormer, TriDet) report the last five, 0.3:0.1:0.7.
"""

ACTIVITYNET_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(0.5, 0.95, 10).tolist())
"""tIoU thresholds of ActivityNet 1.3: the reference evaluator's ``np.linspace(0.5, 0.95, 10)``.

Exactly those floats: the 9th is 0.8999999999999999, not 0.9, so a tIoU of exactly
0.9 is a true positive there.
"""



class Detections(NamedTuple):
    """Predicted segments, one entry per prediction (P of them).

    Attributes:
        video: ``[P]`` integer video ids.
        label: ``[P]`` integer class labels.
        score: ``[P]`` finite confidence scores; higher ranks first.
        segments: ``[P, 2]`` ``(start, end)`` with ``start <= end``.
    """

    video: Any
    label: Any
    score: Any
    segments: Any


class GroundTruth(NamedTuple):
    """Annotated segments, one entry per instance (G of them).

    Attributes:
        video: ``[G]`` integer video ids (the same id space as the predictions).
        label: ``[G]`` integer class labels.
        segments: ``[G, 2]`` ``(start, end)`` with ``start <= end``.
    """

    video: Any
    label: Any
    segments: Any


class DetectionMAP(NamedTuple):
    """Detection average precision per threshold and class.

    Attributes:
        average_precision: ``[num_thresholds, num_classes]`` AP in ``[0, 1]``; NaN for
            a class that has no ground truth (it only has predictions).
        mean_average_precision: ``[num_thresholds]`` mean AP over the classes that
            have ground truth.
        average: scalar, the mean of ``mean_average_precision`` over thresholds (the
            "Avg" column of papers).
        thresholds: ``[num_thresholds]`` the tIoU thresholds.
        classes: ``[num_classes]`` the column labels, sorted: the integer labels
            found in predictions or ground truth (``evaluate_detections``), or the
            labels of the files (``evaluate_json``).
        tied_predictions: how many predictions share their class and score with
            another prediction. Their relative rank follows the rule of the module
            notes (equal scores: later input first); in the reference evaluator it
            depends on the machine's sort. 0 means the ranking is unambiguous.
    """

    average_precision: np.ndarray
    mean_average_precision: np.ndarray
    average: np.ndarray
    thresholds: np.ndarray
    classes: np.ndarray
    tied_predictions: int = 0


# --------------------------------------------------------------------------- input


def _field(container: Any, container_name: str, field: str) -> np.ndarray:
    """One named array of a NamedTuple, object or mapping, as numpy."""
    if isinstance(container, Mapping):
        if field not in container:
            raise ValueError(f"`{container_name}` has no field {field!r}")
        value = container[field]
    elif hasattr(container, field):
        value = getattr(container, field)
    else:
        raise ValueError(f"`{container_name}` has no field {field!r}")
    if value is None:
        raise ValueError(f"`{container_name}.{field}` is required, got None")
    return to_host(value)


def _integer_ids(array: np.ndarray, name: str, length: int | None) -> np.ndarray:
    if array.ndim != 1 or (length is not None and array.shape[0] != length):
        expected = "[N]" if length is None else f"[{length}]"
        raise ValueError(f"`{name}` must have shape {expected}, got {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        if array.size:
            raise TypeError(f"`{name}` must hold integer ids, got dtype {array.dtype}")
        return array.astype(np.int64)  # an empty list arrives as float64
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"`{name}` ids must fit in int64")
    return array.astype(np.int64)


def _segments(array: np.ndarray, name: str, length: int) -> np.ndarray:
    if array.size == 0 and length == 0:
        return np.zeros((0, 2), np.float64)
    if array.shape != (length, 2):
        raise ValueError(f"`{name}` must have shape [{length}, 2] (start, end), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"`{name}` must be real numbers, got dtype {array.dtype}")
    segments = array.astype(np.float64)
    bad = ~np.isfinite(segments).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"`{name}` must be finite; row {row} is {segments[row].tolist()}")
    reversed_rows = segments[:, 0] > segments[:, 1]
    if reversed_rows.any():
        row = int(np.flatnonzero(reversed_rows)[0])
        raise ValueError(f"`{name}` must have start <= end; row {row} is {segments[row].tolist()}")
    return segments


def _scores(array: np.ndarray, name: str, length: int) -> np.ndarray:
    if array.shape != (length,):
        raise ValueError(f"`{name}` must have shape [{length}], got {array.shape}")
    real = np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)
    if array.size and not real:
        raise TypeError(f"`{name}` must be real numbers, got dtype {array.dtype}")
    scores = array.astype(np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"`{name}` must be finite; entry {row} is {scores[row]}")
    return scores


def _checked_thresholds(thresholds: Any) -> np.ndarray:
    values = np.asarray(thresholds, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`thresholds` must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.all((values > 0) & (values <= 1)):
        raise ValueError(f"`thresholds` must lie in (0, 1], got {values.tolist()}")
    return values


def _checked_detections(predictions: Any) -> Detections:
    video = _integer_ids(_field(predictions, "predictions", "video"), "predictions.video", None)
    count = video.shape[0]
    return Detections(
        video=video,
        label=_integer_ids(_field(predictions, "predictions", "label"), "predictions.label", count),
        score=_scores(_field(predictions, "predictions", "score"), "predictions.score", count),
        segments=_segments(_field(predictions, "predictions", "segments"), "predictions.segments", count),
    )


def _checked_ground_truth(ground_truth: Any) -> GroundTruth:
    video = _integer_ids(_field(ground_truth, "ground_truth", "video"), "ground_truth.video", None)
    count = video.shape[0]
    if count == 0:
        raise ValueError("`ground_truth` is empty; mAP is undefined without ground truth")
    return GroundTruth(
        video=video,
        label=_integer_ids(_field(ground_truth, "ground_truth", "label"), "ground_truth.label", count),
        segments=_segments(_field(ground_truth, "ground_truth", "segments"), "ground_truth.segments", count),
    )


# ----------------------------------------------------------------------------- API


def evaluate_detections(
    predictions: Any, ground_truth: Any, *, thresholds=THUMOS14_THRESHOLDS
) -> DetectionMAP:
    """Detection mAP of predicted segments under the ActivityNet protocol.

    Args:
        predictions: a ``Detections`` (or any object or mapping with the fields
            ``video``, ``label``, ``score``, ``segments``): numpy, JAX or torch arrays.
        ground_truth: a ``GroundTruth`` (fields ``video``, ``label``, ``segments``).
        thresholds: tIoU thresholds in ``(0, 1]``; ``THUMOS14_THRESHOLDS`` by default,
            ``ACTIVITYNET_THRESHOLDS`` for ActivityNet.

    Returns:
        A ``DetectionMAP`` of numpy float64 arrays. Classes are the sorted union of
        the labels in both inputs; a class with ground truth but no predictions has AP
        0, a class without ground truth has AP NaN and is left out of the mean.

    Raises:
        ValueError: a field is missing or has the wrong shape, a segment is not finite
            or has ``start > end``, a score is not finite, a threshold is outside
            ``(0, 1]``, or the ground truth is empty. The message names the argument.
        TypeError: ids or labels are not integers, or scores/segments are not real.

    Example:
        >>> gt = GroundTruth(video=[0], label=[3], segments=[[0.0, 10.0]])
        >>> pred = Detections(video=[0, 0], label=[3, 3], score=[0.9, 0.8],
        ...                   segments=[[0.0, 10.0], [1.0, 9.0]])
        >>> result = evaluate_detections(pred, gt, thresholds=(0.5,))
        >>> float(result.average)
        1.0
    """
    predictions = _checked_detections(predictions)
    ground_truth = _checked_ground_truth(ground_truth)
    thresholds = _checked_thresholds(thresholds)

    classes, class_code = dense_codes(np.concatenate([predictions.label, ground_truth.label]))
    num_predictions = predictions.label.size
    pred_class, gt_class = class_code[:num_predictions], class_code[num_predictions:]
    true_positive, by_rank = true_positives(
        predictions.video,
        pred_class,
        predictions.score,
        predictions.segments,
        ground_truth.video,
        gt_class,
        ground_truth.segments,
        classes.size,
        thresholds,
    )
    class_of_rank = pred_class[by_rank]
    positives = np.bincount(gt_class, minlength=classes.size)
    average_precision = class_average_precision(true_positive, class_of_rank, positives)
    mean_ap = average_precision[:, positives > 0].mean(axis=1)
    return DetectionMAP(
        average_precision=average_precision,
        mean_average_precision=mean_ap,
        average=np.asarray(mean_ap.mean()),
        thresholds=thresholds,
        classes=classes,
        tied_predictions=tied_count(class_of_rank, predictions.score[by_rank]),
    )
