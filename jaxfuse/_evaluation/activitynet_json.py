"""ActivityNet JSON to detection mAP: ``load_activitynet_json`` and ``evaluate_json``, reading through ``jaxfuse.formats``.

The files (or already parsed dicts, or bytes) are read and checked by
:mod:`jaxfuse.formats.activitynet`, the reader of ``jaxfuse fuse``, so both commands
accept and reject exactly the same entries, with the same words: a label is a string
or an integer (``1`` and ``"1"`` are two labels, as in the reference evaluator, whose
class index is a dict keyed by the raw JSON value), a score is a finite number (not a
bool, not a string), a segment is ``[start, end]`` of two finite numbers with
``start <= end``; magnitudes are bounded by ``MAX_MAGNITUDE`` (1e300); a repeated
key, invalid JSON and deep nesting are errors. Errors are
:class:`~jaxfuse.formats.activitynet.DetectionFileError` (a ``ValueError``) prefixed
with the argument and the path, and name the video and the entry (counted from 0).

What is evaluation rather than format lives here: the ignored labels (THUMOS14's
``Ambiguous``), and one integer code space for the video ids and labels of both files.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from jaxfuse._evaluation.evaluate import THUMOS14_THRESHOLDS, DetectionMAP, Detections, GroundTruth, evaluate_detections
from jaxfuse.formats.activitynet import (
    DetectionFileError,
    SubsetNotFoundError,
    garbage_collector_paused,
    read_ground_truth,
    read_predictions,
)


class ActivityNetData(NamedTuple):
    """ActivityNet JSON read into integer-coded arrays.

    Attributes:
        predictions: the ``Detections``.
        ground_truth: the ``GroundTruth``.
        video_names: ``video_names[i]`` is the JSON video id coded as ``i``.
        class_names: ``class_names[i]`` is the label coded as ``i``.
        ignored_annotations: annotations left out because of ``ignore_labels``.
        dropped_predictions: predictions left out because of ``ignore_labels`` (their
            label, or with ``drop_ignored_overlaps`` an overlap).
    """

    predictions: Detections
    ground_truth: GroundTruth
    video_names: tuple[str, ...]
    class_names: tuple[str, ...]
    ignored_annotations: int = 0
    dropped_predictions: int = 0




class ArgumentNames(NamedTuple):
    """How errors name the inputs: the Python parameters by default, else a command line's (``PRED.json``)."""

    predictions: str = "`predictions_json`"
    ground_truth: str = "`ground_truth_json`"
    subset: str = "`subset`"


PYTHON_NAMES = ArgumentNames()


def _read(reader, source: Any, name: str, subset_name: str, **options):
    """``reader(source, **options)``, its errors prefixed with the argument's name (and path)."""
    try:
        return reader(source, **options)
    except DetectionFileError as error:
        where = f" ({os.fspath(source)})" if isinstance(source, (str, os.PathLike)) else ""
        reason = f"{subset_name}: {error.reason}" if isinstance(error, SubsetNotFoundError) else str(error)
        raise DetectionFileError(f"{name}{where}: {reason}") from None


def _sort_key(value: Any) -> tuple:
    """Integers (by value) before strings: labels and video ids may be either."""
    return (isinstance(value, str), value)


def _names_in_use(names: list, codes: np.ndarray) -> list:
    """The entries of ``names`` that some code points at."""
    return [names[code] for code in np.unique(codes).tolist()]


def _recoded(names: list, codes: np.ndarray, code_of_name: dict) -> np.ndarray:
    """``codes`` into ``names`` as codes into another table (``code_of_name``), -1 where absent."""
    lookup = np.fromiter((code_of_name.get(name, -1) for name in names), np.int64, len(names))
    return lookup[codes]


def _is_ignored(labels: list, ignored: set) -> np.ndarray:
    return np.fromiter((label in ignored for label in labels), bool, len(labels))


def _overlaps_any(video: np.ndarray, segments: np.ndarray, region_video: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """``[N]`` whether each segment overlaps (positive length) a region of its video."""
    hit = np.zeros(video.size, bool)
    for v in np.unique(region_video):
        rows = np.flatnonzero(video == v)
        mine = regions[region_video == v]
        overlap = np.minimum(segments[rows, 1, None], mine[None, :, 1]) - np.maximum(
            segments[rows, 0, None], mine[None, :, 0]
        )
        hit[rows] = (overlap > 0).any(axis=1)
    return hit


def load_activitynet_json(
    predictions_json: Any,
    ground_truth_json: Any,
    *,
    subset: str | None = None,
    ignore_labels: Any = (),
    drop_ignored_overlaps: bool = False,
) -> ActivityNetData:
    """Read ActivityNet-format predictions and ground truth into integer-coded arrays.

    Video ids and labels are coded together, so the two files share one code space:
    ``i`` is the ``i``-th name in sorted order of the union of both files' entries
    (integers before strings). Labels are kept as written: ``1`` and ``"1"`` are two
    classes.

    Args:
        predictions_json: a path, the file's bytes, or the parsed dict
            ``{"results": {video_id: [{"label", "score", "segment": [s, e]}]}}``.
        ground_truth_json: a path, the file's bytes, or the parsed dict
            ``{"database": {video_id: {"annotations": [{"label", "segment"}]}}}``.
        subset: if given, keep only ground-truth videos whose ``"subset"`` equals it
            (e.g. ``"validation"``); only their annotations are checked. Predictions
            are all kept: a prediction for a video without ground truth is a false
            positive, as in ActivityNet's code.
        ignore_labels: labels that are not classes (THUMOS14's ``"Ambiguous"``):
            their annotations and predictions are dropped.
        drop_ignored_overlaps: also drop every prediction that overlaps (by a
            positive length) an annotation of an ignored label in its video, the
            convention of the W-TALC/GauFuse THUMOS14 evaluator (which tests the
            overlap on feature-frame indices; here in the files' own units).

    Returns:
        An ``ActivityNetData`` with the arrays and the name tables.

    Raises:
        DetectionFileError: (a ``ValueError``) an input lacks its top-level object, is
            not valid JSON, is nested too deeply or repeats a key; an entry is
            malformed (the message names the argument, the video and the entry); no
            ground-truth video is in ``subset`` (it lists the subsets there are).
        OSError: a file cannot be read.

    Example:
        >>> data = load_activitynet_json(
        ...     {"results": {"v1": [{"label": "Jump", "score": 0.9, "segment": [1, 4]}]}},
        ...     {"database": {"v1": {"annotations": [{"label": "Jump", "segment": [1, 5]}]}}})
        >>> data.class_names, data.predictions.label.tolist()
        (('Jump',), [0])
    """
    return read_activitynet(
        predictions_json, ground_truth_json, subset=subset, ignore_labels=ignore_labels,
        drop_ignored_overlaps=drop_ignored_overlaps,
    )


def read_activitynet(
    predictions_json: Any,
    ground_truth_json: Any,
    *,
    subset: str | None = None,
    ignore_labels: Any = (),
    drop_ignored_overlaps: bool = False,
    names: ArgumentNames = PYTHON_NAMES,
) -> ActivityNetData:
    """:func:`load_activitynet_json`, its errors naming the inputs as ``names`` says (for a command line)."""
    with garbage_collector_paused():
        predictions = _read(read_predictions, predictions_json, names.predictions, names.subset).table
        truth = _read(read_ground_truth, ground_truth_json, names.ground_truth, names.subset, subset=subset)
        return _coded(predictions, truth, ignore_labels, drop_ignored_overlaps)


def _coded(predictions, truth, ignore_labels: Any, drop_ignored_overlaps: bool) -> ActivityNetData:
    """The two tables as ``Detections`` and ``GroundTruth`` in one code space, ignored labels left out."""
    pred_video = np.repeat(np.arange(len(predictions.video_ids)), predictions.counts)
    gt_video = np.repeat(np.arange(len(truth.video_ids)), truth.counts)

    if isinstance(ignore_labels, (str, int)):
        ignore_labels = (ignore_labels,)
    ignored = set(ignore_labels)
    keep_pred = ~_is_ignored(predictions.labels, ignored)[predictions.label_codes]
    keep_gt = ~_is_ignored(truth.labels, ignored)[truth.label_codes]
    if drop_ignored_overlaps and not keep_gt.all():
        joint = {video: i for i, video in enumerate(dict.fromkeys([*predictions.video_ids, *truth.video_ids]))}
        pred_joint = _recoded(predictions.video_ids, pred_video, joint)
        gt_joint = _recoded(truth.video_ids, gt_video, joint)
        keep_pred &= ~_overlaps_any(pred_joint, predictions.segments, gt_joint[~keep_gt], truth.segments[~keep_gt])

    pred_video, gt_video = pred_video[keep_pred], gt_video[keep_gt]
    pred_label, gt_label = predictions.label_codes[keep_pred], truth.label_codes[keep_gt]
    video_names = tuple(sorted(
        set(_names_in_use(predictions.video_ids, pred_video)) | set(_names_in_use(truth.video_ids, gt_video)),
        key=_sort_key,
    ))
    class_names = tuple(sorted(
        set(_names_in_use(predictions.labels, pred_label)) | set(_names_in_use(truth.labels, gt_label)),
        key=_sort_key,
    ))
    video_code = {name: i for i, name in enumerate(video_names)}
    class_code = {name: i for i, name in enumerate(class_names)}
    return ActivityNetData(
        Detections(
            video=_recoded(predictions.video_ids, pred_video, video_code),
            label=_recoded(predictions.labels, pred_label, class_code),
            score=predictions.scores[keep_pred],
            segments=predictions.segments[keep_pred],
        ),
        GroundTruth(
            video=_recoded(truth.video_ids, gt_video, video_code),
            label=_recoded(truth.labels, gt_label, class_code),
            segments=truth.segments[keep_gt],
        ),
        video_names,
        class_names,
        ignored_annotations=int((~keep_gt).sum()),
        dropped_predictions=int((~keep_pred).sum()),
    )


def evaluate_json(
    predictions_json: Any,
    ground_truth_json: Any,
    *,
    thresholds=THUMOS14_THRESHOLDS,
    subset: str | None = None,
    ignore_labels: Any = (),
    drop_ignored_overlaps: bool = False,
) -> DetectionMAP:
    """Detection mAP of ActivityNet-format JSON files (or their bytes, or parsed dicts).

    Predictions are ranked in file order (videos, then entries) where scores tie; see
    ``jaxfuse._evaluation.evaluate``.

    Args:
        predictions_json: path, bytes or dict, see ``load_activitynet_json``.
        ground_truth_json: path, bytes or dict, see ``load_activitynet_json``.
        thresholds: tIoU thresholds; pass ``ACTIVITYNET_THRESHOLDS`` for ActivityNet.
        subset: keep only ground-truth videos of this subset (e.g. ``"validation"``).
        ignore_labels: labels that are not classes, e.g. ``("Ambiguous",)`` on
            THUMOS14; see ``load_activitynet_json``.
        drop_ignored_overlaps: drop predictions overlapping an ignored annotation.

    Returns:
        A ``DetectionMAP`` whose ``classes`` are the labels of the files.

    Raises:
        ValueError: as ``load_activitynet_json`` (``DetectionFileError``) and
            ``evaluate_detections``.
        OSError: a file cannot be read.

    Example:
        >>> predictions = {"results": {"v": [{"label": "Jump", "score": 0.9, "segment": [10.0, 20.0]},
        ...                                  {"label": "Jump", "score": 0.5, "segment": [40.0, 42.0]}]}}
        >>> truth = {"database": {"v": {"annotations": [{"label": "Jump", "segment": [11.0, 20.0]}]}}}
        >>> evaluate_json(predictions, truth, thresholds=(0.5, 0.95)).mean_average_precision  # tIoU 0.9
        array([1., 0.])
        >>> result = evaluate_json("results.json", "activity_net.v1-3.min.json",  # files, ActivityNet 1.3
        ...                        thresholds=ACTIVITYNET_THRESHOLDS, subset="validation")  # doctest: +SKIP
    """
    data = load_activitynet_json(
        predictions_json,
        ground_truth_json,
        subset=subset,
        ignore_labels=ignore_labels,
        drop_ignored_overlaps=drop_ignored_overlaps,
    )
    return evaluate_data(data, thresholds)


def evaluate_data(data: ActivityNetData, thresholds=THUMOS14_THRESHOLDS) -> DetectionMAP:
    """``evaluate_detections`` of loaded files, classes named by their labels (for the CLI, which also reads ``data``)."""
    result = evaluate_detections(data.predictions, data.ground_truth, thresholds=thresholds)
    names = np.asarray(data.class_names, dtype=object)
    return result._replace(classes=names[result.classes])
