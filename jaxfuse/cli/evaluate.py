"""``jaxfuse evaluate``: detection mAP of an ActivityNet-format results file, as papers print it.

    jaxfuse evaluate PRED.json GT.json [--dataset thumos14|activitynet]
        [--thresholds T ...] [--subset NAME] [--per-class] [--json OUT]

The numbers are :func:`jaxfuse.evaluate_json`'s: ActivityNet's reference protocol
(``compute_average_precision_detection``), ties resolved as documented in
``jaxfuse._evaluation.evaluate``. The dataset presets:

- ``thumos14`` (default): tIoU 0.1:0.1:0.7; ground truth labelled ``Ambiguous`` is not
  a class (``--ambiguous ignore``), as THUMOS14 evaluators treat it; all subsets.
- ``activitynet``: the reference's ``np.linspace(0.5, 0.95, 10)`` and its default
  subset, ``validation``.

What users hit, reported on stderr (not errors): predictions whose label has no ground
truth are not counted (the reference raises ``KeyError``); predictions in videos
without ground truth are false positives; predictions that tie in score within a class
are ranked later-in-file first (the reference's order depends on the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from jaxfuse._evaluation.activitynet_json import ActivityNetData, ArgumentNames, evaluate_data, read_activitynet
from jaxfuse._evaluation.evaluate import ACTIVITYNET_THRESHOLDS, THUMOS14_THRESHOLDS, DetectionMAP
from jaxfuse.cli.wording import counted
from jaxfuse.formats.output import STDOUT, OutputError, plan_output, write_output

PROG = "jaxfuse evaluate"
NAMES = ArgumentNames(predictions="PRED.json", ground_truth="GT.json", subset="--subset")
"""How errors name the inputs: as the usage line does."""

AMBIGUOUS_LABEL = "Ambiguous"

DATASETS = {
    # name: (thresholds, default subset)
    "thumos14": (THUMOS14_THRESHOLDS, None),
    "activitynet": (ACTIVITYNET_THRESHOLDS, "validation"),
}

AMBIGUOUS_CHOICES = ("ignore", "drop-overlapping", "class")


class _UsageError(ValueError):
    """A bad option or output path, found before any work."""


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 < value <= 1):
        raise argparse.ArgumentTypeError(f"a tIoU threshold must lie in (0, 1], got {text}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``jaxfuse evaluate`` arguments to ``parser``."""
    parser.add_argument(
        "predictions", metavar=NAMES.predictions,
        help="ActivityNet-format results JSON ({'results': {video: [{label, score, segment}]}})",
    )
    parser.add_argument(
        "ground_truth", metavar=NAMES.ground_truth,
        help="ActivityNet-format ground truth JSON ({'database': {video: {'annotations': [...]}}})",
    )
    parser.add_argument(
        "--dataset", choices=sorted(DATASETS), default="thumos14",
        help="protocol preset: thumos14 (tIoU 0.1:0.1:0.7, all subsets) or activitynet "
        "(0.5:0.05:0.95, subset validation); default thumos14",
    )
    parser.add_argument(
        "--thresholds", type=_threshold, nargs="+", metavar="T",
        help="tIoU thresholds in (0, 1] (default: the dataset's, see --dataset)",
    )
    parser.add_argument(
        "--subset", metavar="NAME",
        help="evaluate the ground-truth videos whose 'subset' equals NAME (exactly, as the reference); "
        "'all' for every video; default: the dataset's",
    )
    parser.add_argument(
        "--ambiguous", choices=AMBIGUOUS_CHOICES, default="ignore",
        help=f"what {AMBIGUOUS_LABEL!r} annotations are: ignore (not a class; default), drop-overlapping "
        "(also drop predictions overlapping them, as the W-TALC/GauFuse evaluator), class (an ordinary class, "
        "as the ActivityNet reference treats any label)",
    )
    parser.add_argument("--per-class", action="store_true", help="also print each class's AP per threshold")
    parser.add_argument(
        "--json", metavar="OUT",
        help="also write {thresholds, mean_average_precision, average, average_precision: {class: [...]}} "
        "(fractions, classes with ground truth) to OUT ('-' for stdout; the table then goes to stderr)",
    )
    parser.epilog = (
        "Prints mAP (%) per tIoU threshold and their average. Exit status: 0 on success, 2 for a malformed "
        "or unreadable input (the message names the video and the entry, counted from 0), an unwritable --json "
        "(checked before the work; written atomically, see jaxfuse fuse --help) or standard output (closed, or its "
        "reader gone)."
    )


# ------------------------------------------------------------------------ steps


def _settings(args: argparse.Namespace) -> tuple[tuple[float, ...], str | None]:
    thresholds, subset = DATASETS[args.dataset]
    if args.thresholds:
        thresholds = tuple(args.thresholds)
    if args.subset is not None:
        subset = None if args.subset == "all" else args.subset
    return thresholds, subset


def _json_keys(result: DetectionMAP, has_gt: np.ndarray) -> list[str]:
    """The JSON object keys of the classes with ground truth (labels as strings)."""
    keys = [str(label) for label in result.classes[has_gt]]
    if len(set(keys)) != len(keys):
        clash = sorted({key for key in keys if keys.count(key) > 1})
        raise _UsageError(
            f"--json: labels {clash} occur both as integers and as strings in the ground truth, "
            "so their keys would clash"
        )
    return keys


def _json_document(result: DetectionMAP, has_gt: np.ndarray) -> dict[str, Any]:
    return {
        "thresholds": result.thresholds.tolist(),
        "mean_average_precision": result.mean_average_precision.tolist(),
        "average": float(result.average),
        "average_precision": {
            key: result.average_precision[:, column].tolist()
            for key, column in zip(_json_keys(result, has_gt), np.flatnonzero(has_gt))
        },
    }


def format_table(result: DetectionMAP, *, per_class: bool = False) -> str:
    """The mAP table of papers: one column per tIoU threshold and the average, in percent.

    Args:
        result: a ``DetectionMAP``.
        per_class: add one row per class with ground truth (AP in percent).

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    has_gt = ~np.isnan(result.average_precision[0])
    names = [str(label) for label in result.classes[has_gt]] if per_class else []
    if len(set(names)) != len(names):  # 1 and "1": show which is which
        names = [repr(label) for label in result.classes[has_gt]]
    first = max([len("tIoU"), len("mAP (%)")] + [len(name) for name in names])
    headers = [f"{t:.2f}" for t in result.thresholds] + ["Avg"]
    width = max(6, *(len(h) for h in headers))

    def row(label: str, values) -> str:
        return f"{label:<{first}}" + "".join(f" {value:>{width}}" for value in values)

    def percent(values) -> list[str]:
        return [f"{100 * v:.2f}" for v in values]

    lines = [row("tIoU", headers), row("mAP (%)", percent([*result.mean_average_precision, result.average]))]
    if per_class:
        lines.append("-" * len(lines[0]))
        for name, column in zip(names, result.average_precision[:, has_gt].T):
            lines.append(row(name, percent([*column, column.mean()])))
    return "\n".join(lines)


def _notes(data: ActivityNetData, result: DetectionMAP, subset: str | None) -> list[str]:
    """The one-line facts a user should know about these numbers."""
    predictions, truth = data.predictions, data.ground_truth
    has_gt = ~np.isnan(result.average_precision[0])
    gt_videos = np.unique(truth.video)
    lines = [
        f"{counted(truth.video.size, 'ground-truth segment')} in {counted(gt_videos.size, 'video')}"
        + (f" (subset {subset!r})" if subset is not None else "")
        + f", {counted(has_gt.sum(), 'class', 'classes')}; {counted(predictions.video.size, 'prediction')}"
    ]
    if data.ignored_annotations:
        lines.append(
            f"{data.ignored_annotations:,} {AMBIGUOUS_LABEL!r} annotations are not a class; "
            f"{data.dropped_predictions:,} predictions dropped with them"
        )
    # Every label code of the loaded data is a class of the result, in code order.
    without_gt = ~has_gt[predictions.label]
    if without_gt.any():
        labels = result.classes[~has_gt]
        shown = ", ".join(repr(label) for label in labels[:5]) + (", ..." if labels.size > 5 else "")
        lines.append(
            f"{counted(without_gt.sum(), 'prediction')} of {counted(labels.size, 'label')} without ground truth "
            f"({shown}) {'is' if without_gt.sum() == 1 else 'are'} not counted"
        )
    outside = ~np.isin(predictions.video, gt_videos)
    if outside.any():
        videos = np.unique(predictions.video[outside]).size
        lines.append(f"{counted(outside.sum(), 'prediction')} in {counted(videos, 'video')} without ground truth "
                     f"{'is a false positive' if outside.sum() == 1 else 'are false positives'}")
    if result.tied_predictions:
        lines.append(
            f"{result.tied_predictions:,} predictions tie in score with another of their class: "
            "ranked later-in-file first (the reference's order depends on numpy's sort)"
        )
    return lines


def _require_ground_truth(data: ActivityNetData, args: argparse.Namespace, subset: str | None) -> None:
    """No annotation left to evaluate against: said with the options that chose them."""
    if data.ground_truth.video.size:
        return
    chosen = f" of --subset {subset!r}" if subset is not None else ""
    ignored = (
        f"; {data.ignored_annotations:,} {AMBIGUOUS_LABEL!r} annotations are not a class "
        "(--ambiguous class counts them)"
        if data.ignored_annotations
        else ""
    )
    where = f"{NAMES.ground_truth} ({args.ground_truth})"
    raise _UsageError(f"{where}: no annotations{chosen} to evaluate against{ignored}")


def evaluate_files(args: argparse.Namespace) -> tuple[str, list[str], dict | None]:
    """The table, the notes and the JSON document (with ``--json``) of one ``jaxfuse evaluate`` call."""
    thresholds, subset = _settings(args)
    data = read_activitynet(
        args.predictions,
        args.ground_truth,
        subset=subset,
        ignore_labels=() if args.ambiguous == "class" else (AMBIGUOUS_LABEL,),
        drop_ignored_overlaps=args.ambiguous == "drop-overlapping",
        names=NAMES,
    )
    _require_ground_truth(data, args, subset)
    result = evaluate_data(data, thresholds)
    document = None if args.json is None else _json_document(result, ~np.isnan(result.average_precision[0]))
    return format_table(result, per_class=args.per_class), _notes(data, result, subset), document


def _error(text: str) -> int:
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)
    return 2


def _unwritable(error: OutputError) -> str:
    where = "standard output" if error.filename == STDOUT else f"--json {error.filename}"
    return f"cannot write {where}: {error.strerror}"


def _unreadable(error: OSError, args: argparse.Namespace) -> str:
    names = {args.predictions: NAMES.predictions, args.ground_truth: NAMES.ground_truth}
    name = names.get(error.filename)
    return f"cannot read {error.filename if name is None else f'{name} ({error.filename})'}: {error.strerror or error}"


def run(args: argparse.Namespace) -> int:
    """Run ``jaxfuse evaluate``; returns the exit status."""
    try:
        # Both outputs are checked before the work: the table's (standard output, unless --json takes it) and --json's.
        table_plan = None if args.json == STDOUT else plan_output(STDOUT)
        json_plan = None if args.json is None else plan_output(args.json)
        table, notes, document = evaluate_files(args)
        if json_plan is not None:
            write_output(json_plan, (json.dumps(document, indent=2) + "\n").encode())
    except OutputError as error:
        return _error(_unwritable(error))
    except OSError as error:
        return _error(_unreadable(error, args))
    except ValueError as error:
        return _error(str(error))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    if table_plan is None:
        print(table, file=sys.stderr)
        return 0
    try:
        write_output(table_plan, (table + "\n").encode())
    except OutputError as error:
        return _error(_unwritable(error))
    return 0
