"""``jaxfuse plot``: one video's timeline per class, from ActivityNet-format files, as a PNG.

    jaxfuse plot PRED.json [--gt GT.json] --video ID [--fused FUSED.json] -o FIG.png

One panel per class of the video: the ground truth as shaded bands, the raw
detections of ``PRED.json`` as thin strokes at the height of their scores, and
the fused or kept detections of ``FUSED.json`` (``jaxfuse fuse``'s output, or
any post-processing's) as thick ones. The drawing is
:mod:`jaxfuse.tools.timeline`; the files are read by
:mod:`jaxfuse.formats.activitynet`, with its checks and messages.

Exit status: 0 on success; 2 when matplotlib is missing (one line naming the
extra to install, before any work), for a malformed or unreadable input, a
video or label that is not there (named, with what is), or an unwritable
output (checked before the work). The PNG is written atomically: a failed run
leaves what was at the output path as it was.
"""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple

import numpy as np

from jaxfuse.cli.wording import counted
from jaxfuse.formats.activitynet import DetectionFileError, read_ground_truth, read_predictions
from jaxfuse.formats.output import plan_output, write_output
from jaxfuse.tools.timeline import Panel, Track, draw_panels, png_bytes, require_matplotlib

PROG = "jaxfuse plot"
DEFAULT_MAX_CLASSES = 6
RAW_TRACK = "detections"
FUSED_TRACK = "fused"


class _UsageError(ValueError):
    """A video or label that is not in the files: the message says what is."""


class VideoRows(NamedTuple):
    """One video's rows of a table: labels (the file's values), segments ``[N, 2]`` and scores ``[N]`` (None for ground truth)."""

    labels: list
    segments: np.ndarray
    scores: np.ndarray | None


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not (np.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``jaxfuse plot`` arguments to ``parser``."""
    parser.add_argument("predictions", metavar="PRED.json",
                        help="ActivityNet-format detection JSON: the raw detections, drawn thin at their scores")
    parser.add_argument("--gt", metavar="GT.json", help="ActivityNet-format ground truth, drawn as shaded bands")
    parser.add_argument("--video", required=True, metavar="ID", help="the video to draw (a key of PRED.json's 'results')")
    parser.add_argument("--fused", metavar="FUSED.json",
                        help="fused or kept detections of the same videos (e.g. jaxfuse fuse's output), drawn thick")
    parser.add_argument("-o", "--output", required=True, metavar="FIG.png", help="the PNG to write; '-' for standard output")
    parser.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="draw these classes, in this order (default: the video's classes, those with ground "
                        "truth first, then by best raw score)")
    parser.add_argument("--max-classes", type=_positive(int), default=DEFAULT_MAX_CLASSES, metavar="N",
                        help=f"draw at most N classes when --labels is not given (default {DEFAULT_MAX_CLASSES})")
    parser.add_argument("--width", type=_positive(float), default=10.0, metavar="INCHES",
                        help="figure width (default 10); each class adds 1.6 inches of height")
    parser.add_argument("--dpi", type=_positive(int), default=100, help="pixels per inch (default 100)")
    parser.epilog = (
        "Exit status: 0 on success, 2 when matplotlib is missing (pip install \"jaxfuse[plot]\"), for a malformed "
        "or unreadable input, a video or label that is not there, or an unwritable output (checked before the work)."
    )


# ---------------------------------------------------------------------- one video's rows


def _rows_of(table, video: str, scored: bool) -> VideoRows | None:
    try:
        index = table.video_ids.index(video)
    except ValueError:
        return None
    first = int(np.sum(table.counts[:index]))
    rows = slice(first, first + int(table.counts[index]))
    labels = [table.labels[code] for code in table.label_codes[rows].tolist()]
    return VideoRows(labels, table.segments[rows], table.scores[rows] if scored else None)


def _missing_video(video: str, path: str, video_ids: list) -> _UsageError:
    shown = ", ".join(repr(v) for v in video_ids[:3]) + (", ..." if len(video_ids) > 3 else "")
    return _UsageError(f"video {video!r} is not in {path} ({len(video_ids)} videos: {shown})")


def class_order(truth: VideoRows | None, raw: VideoRows, fused: VideoRows | None) -> list:
    """The video's labels: those with ground truth (annotation order), then the others by best score, raw then fused."""
    order = list(dict.fromkeys(truth.labels)) if truth is not None else []
    for rows in (raw, fused):
        if rows is None:
            continue
        best: dict = {}
        for label, score in zip(rows.labels, rows.scores.tolist()):
            best[label] = max(best.get(label, -np.inf), score)
        order += [label for label in sorted(best, key=lambda lb: -best[lb]) if label not in order]
    return order


def _chosen_labels(order: list, wanted: list[str] | None, max_classes: int, video: str) -> tuple[list, str | None]:
    """The labels to draw and, when some were left out, a note saying so."""
    if wanted is None:
        if len(order) <= max_classes:
            return order, None
        note = (f"drawing {max_classes} of the {len(order)} classes of video {video!r} (ground truth first, then by "
                "best score); --labels or --max-classes to choose")
        return order[:max_classes], note
    chosen = []
    for text in wanted:
        matches = [label for label in order if str(label) == text]
        if not matches:
            shown = ", ".join(repr(label) for label in order[:10]) + (", ..." if len(order) > 10 else "")
            raise _UsageError(f"label {text!r} has no detections or annotations in video {video!r} (its classes: {shown})")
        chosen += [label for label in matches if label not in chosen]
    return chosen, None


def _select(rows: VideoRows, label) -> tuple[np.ndarray, np.ndarray | None]:
    keep = np.fromiter((lb == label and type(lb) is type(label) for lb in rows.labels), bool, len(rows.labels))
    return rows.segments[keep], None if rows.scores is None else rows.scores[keep]


def video_panels(labels: list, truth: VideoRows | None, raw: VideoRows, fused: VideoRows | None) -> list[Panel]:
    """One :class:`~jaxfuse.tools.timeline.Panel` per label: its ground truth, raw and fused detections."""
    panels = []
    for label in labels:
        segments, scores = _select(raw, label)
        tracks = [Track(RAW_TRACK, segments, scores, raw=True)]
        title = f"{label}: {counted(len(scores), 'detection')}"
        if fused is not None:
            kept_segments, kept_scores = _select(fused, label)
            tracks.append(Track(FUSED_TRACK, kept_segments, kept_scores))
            title += f", {len(kept_scores)} fused"
        truth_segments = _select(truth, label)[0] if truth is not None else np.zeros((0, 2))
        if truth is not None:
            title += f", {len(truth_segments)} ground truth"
        panels.append(Panel(title, truth_segments, tuple(tracks)))
    return panels


# ---------------------------------------------------------------------- the command


def _panels_of_files(args: argparse.Namespace) -> tuple[list[Panel], list[str]]:
    """The panels to draw and notes for stderr; raises for a missing video or label."""
    notes = []
    table = read_predictions(args.predictions).table
    raw = _rows_of(table, args.video, scored=True)
    if raw is None:
        raise _missing_video(args.video, args.predictions, table.video_ids)
    fused = None
    if args.fused is not None:
        fused_table = read_predictions(args.fused).table
        fused = _rows_of(fused_table, args.video, scored=True)
        if fused is None:
            raise _missing_video(args.video, args.fused, fused_table.video_ids)
    truth = None
    if args.gt is not None:
        truth = _rows_of(read_ground_truth(args.gt), args.video, scored=False)
        if truth is None:
            notes.append(f"video {args.video!r} has no ground truth in {args.gt}")
    order = class_order(truth, raw, fused)
    if not order:
        raise _UsageError(f"video {args.video!r} has no detections or annotations to draw")
    labels, note = _chosen_labels(order, args.labels, args.max_classes, args.video)
    notes += [note] if note else []
    return video_panels(labels, truth, raw, fused), notes


def run(args: argparse.Namespace) -> int:
    try:
        plt = require_matplotlib(PROG)
    except ImportError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        plan = plan_output(args.output)
        panels, notes = _panels_of_files(args)
    except (DetectionFileError, _UsageError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{PROG}: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    figure = draw_panels(panels, title=args.video, width=args.width, dpi=args.dpi)
    try:
        data = png_bytes(figure)
    finally:
        plt.close(figure)
    try:
        write_output(plan, data)
    except OSError as error:
        print(f"{PROG}: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    if plan.mode != "stdout":
        print(f"{PROG}: wrote {args.output} ({len(panels)} {'class' if len(panels) == 1 else 'classes'} of video "
              f"{args.video!r})", file=sys.stderr)
    return 0
