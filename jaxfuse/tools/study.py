"""``jaxfuse study``: NMS, Soft-NMS and every fusion template compared by detection mAP.

One command: seeded synthetic videos with ground truth (:mod:`jaxfuse.tools.videos`),
:func:`jaxfuse.detect` with each method (and each temperature for the fusion
templates), :func:`jaxfuse.evaluate_detections` at the THUMOS14 tIoU thresholds
0.1:0.1:0.7, a table printed and written as markdown, and a plot.

Settings shared by every method (the published evaluation rule): the published
20 CAS levels, class threshold 0.16, proposals ordered by contrast, greedy
groups of candidate overlap > 0.25 with the +1 frame convention. ``nms`` keeps
each group's leader (the published rule's NMS, not IoU NMS); the templates fuse
each group under ``softmax(inner / T)``; ``soft_nms`` is the usual Soft-NMS
(Gaussian decay ``exp(-tIoU^2 / 0.5)`` of continuous tIoU, score floor 0.001),
which has no groups and no temperature.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from jaxfuse._core.settings import PUBLISHED_CLASS_THRESHOLD
from jaxfuse._detection.detect import detect
from jaxfuse._evaluation.evaluate import THUMOS14_THRESHOLDS, evaluate_detections
from jaxfuse._fusion.templates import TEMPLATE_NAMES
from jaxfuse.formats.output import OutputError, write_output
from jaxfuse.tools.report_files import (
    DEFAULT_REPORT_DIR_TEXT,
    Requirement,
    missing_requirements_message,
    report_directory,
)
from jaxfuse.tools.videos import SyntheticVideos, VideoParameters, synthetic_videos

TEMPLATES = TEMPLATE_NAMES
BASELINES = ("nms", "soft_nms")
DEFAULT_TEMPERATURES = (0.05, 0.2, 1.0)
# Soft-NMS as usually run: continuous tIoU, Gaussian decay (sigma 0.5).
SOFT_NMS_OPTIONS = {"overlap": "iou", "discrete": False, "sigma": 0.5}
# Whether a method wins depends on how noisy the CAS is: the main setting is
# rerun easier and harder with the baselines and the Gaussian template.
SENSITIVITY = {
    "easier": {"noise": 0.75, "ramp": 11, "spurious_rate": 0.01},
    "harder": {"noise": 2.0, "ramp": 31, "spurious_rate": 0.03},
}
SENSITIVITY_METHODS = ("nms", "soft_nms", "gaussian")


class StudyRow(NamedTuple):
    """One line of the study table.

    Attributes:
        method: ``"nms"``, ``"soft_nms"`` or a template name.
        temperature: the softmax temperature, or None for NMS and Soft-NMS.
        mean_average_precision: ``[7]`` mAP at tIoU 0.1 ... 0.7, in ``[0, 1]``.
        average: the mean over the thresholds.
        detections: number of detections evaluated.
        seconds: wall time of ``detect`` (compilation included on a method's
            first temperature).
    """

    method: str
    temperature: float | None
    mean_average_precision: np.ndarray
    average: float
    detections: int
    seconds: float


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = VideoParameters()
    add = parser.add_argument
    add("--videos", type=int, default=defaults.num_videos, help=f"synthetic videos (default {defaults.num_videos})")
    add("--classes", type=int, default=defaults.num_classes, help=f"action classes (default {defaults.num_classes})")
    add("--min-length", type=int, default=defaults.min_length,
        help=f"shortest video, snippets (default {defaults.min_length})")
    add("--max-length", type=int, default=defaults.max_length,
        help=f"longest video, snippets (default {defaults.max_length})")
    add("--noise", type=float, default=defaults.noise, help=f"logit noise std (default {defaults.noise})")
    add("--ramp", type=int, default=defaults.ramp, help=f"boundary blur, snippets (default {defaults.ramp})")
    add("--spurious-rate", type=float, default=defaults.spurious_rate,
        help=f"spurious peaks per snippet (default {defaults.spurious_rate})")
    add("--confusion", type=float, default=defaults.confusion,
        help=f"probability of a confused class per video (default {defaults.confusion})")
    add("--seed", type=int, default=defaults.seed, help=f"seed of the synthetic videos (default {defaults.seed})")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(DEFAULT_TEMPERATURES),
                        help="temperatures of the fusion templates (default 0.05 0.2 1.0)")
    parser.add_argument("--methods", nargs="+", default=list(BASELINES + TEMPLATES), choices=BASELINES + TEMPLATES,
                        help="methods to compare (default: all)")
    parser.add_argument("--output-dir", default=None,
                        help=f"where study.md and study.png go (default {DEFAULT_REPORT_DIR_TEXT})")
    parser.add_argument("--no-plot", action="store_true", help="skip study.png (no matplotlib needed)")
    parser.add_argument("--no-sensitivity", action="store_true",
                        help="skip the easier/harder reruns (nms, soft_nms, gaussian with changed noise, ramp, spurious rate)")


def video_parameters(args: argparse.Namespace) -> VideoParameters:
    """The :class:`VideoParameters` of the command line."""
    return VideoParameters()._replace(
        num_videos=args.videos, num_classes=args.classes, min_length=args.min_length, max_length=args.max_length,
        noise=args.noise, ramp=args.ramp, spurious_rate=args.spurious_rate, confusion=args.confusion, seed=args.seed,
    )


def run_study(videos: SyntheticVideos, methods: Sequence[str], temperatures: Sequence[float], *, log=print) -> list[StudyRow]:
    """Detect and evaluate every (method, temperature) on ``videos``.

    Args:
        videos: the synthetic benchmark.
        methods: method names (NMS and Soft-NMS run once, templates once per temperature).
        temperatures: fusion temperatures.
        log: called with a progress line after each run (``None``: silent).

    Returns:
        One :class:`StudyRow` per run, baselines first, then templates by temperature.
    """
    runs = [(m, None) for m in methods if m in BASELINES]
    runs += [(m, t) for m in methods if m in TEMPLATES for t in temperatures]
    rows = []
    for method, temperature in runs:
        options = SOFT_NMS_OPTIONS if method == "soft_nms" else {}
        start = time.perf_counter()
        found = detect(
            videos.cas, videos.video_scores, length=videos.length, preset="published", method=method,
            temperature=0.2 if temperature is None else temperature,
            class_threshold=PUBLISHED_CLASS_THRESHOLD, **options,
        )
        seconds = time.perf_counter() - start
        predictions = found.to_predictions()
        result = evaluate_detections(predictions, videos.ground_truth, thresholds=THUMOS14_THRESHOLDS)
        row = StudyRow(method, temperature, result.mean_average_precision, float(result.average),
                       int(predictions.video.size), seconds)
        rows.append(row)
        if log is not None:
            log(_text_line(row))
    return rows


def _label(row: StudyRow) -> tuple[str, str]:
    return row.method, "-" if row.temperature is None else f"{row.temperature:g}"


def _text_line(row: StudyRow) -> str:
    method, temperature = _label(row)
    values = " ".join(f"{100 * v:6.2f}" for v in row.mean_average_precision)
    return f"{method:<12} {temperature:>5} {values} {100 * row.average:7.2f} {row.detections:>8d} {row.seconds:7.2f}"


def text_table(rows: Sequence[StudyRow]) -> str:
    """The table as fixed-width text (mAP in percent)."""
    header = f"{'method':<12} {'T':>5} " + " ".join(f"{t:>6.1f}" for t in THUMOS14_THRESHOLDS)
    header += f" {'avg':>7} {'dets':>8} {'sec':>7}"
    return "\n".join([header, "-" * len(header)] + [_text_line(row) for row in rows])


def markdown_table(rows: Sequence[StudyRow]) -> str:
    """The table as markdown, mAP in percent, the best of each column in bold."""
    columns = np.array([list(row.mean_average_precision) + [row.average] for row in rows])
    best = columns.max(axis=0)
    header = "| method | T | " + " | ".join(f"{t:.1f}" for t in THUMOS14_THRESHOLDS) + " | avg |"
    lines = [header, "|" + "---|" * (len(THUMOS14_THRESHOLDS) + 3)]
    for row, values in zip(rows, columns):
        method, temperature = _label(row)
        cells = [f"**{100 * v:.2f}**" if np.isclose(v, b) else f"{100 * v:.2f}" for v, b in zip(values, best)]
        lines.append(f"| {method} | {temperature} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(rows: Sequence[StudyRow]) -> list[str]:
    """Plain statements of who wins: overall, per temperature, and against NMS."""
    lines = []
    best = max(rows, key=lambda r: r.average)
    method, temperature = _label(best)
    lines.append(f"Best average mAP: {method} (T = {temperature}) with {100 * best.average:.2f}.")
    nms = next((r for r in rows if r.method == "nms"), None)
    soft = next((r for r in rows if r.method == "soft_nms"), None)
    temperatures = sorted({r.temperature for r in rows if r.temperature is not None})
    for t in temperatures:
        at_t = [r for r in rows if r.temperature == t]
        winner = max(at_t, key=lambda r: r.average)
        text = f"At T = {t:g}: best template {winner.method} ({100 * winner.average:.2f})"
        if nms is not None:
            better = [r.method for r in at_t if r.average > nms.average]
            text += f"; above NMS ({100 * nms.average:.2f}): {', '.join(better) if better else 'none'}"
        lines.append(text + ".")
    if soft is not None and nms is not None:
        lines.append(f"Soft-NMS: {100 * soft.average:.2f} (NMS {100 * nms.average:.2f}).")
    return lines


def _style(method: str) -> dict:
    """Line style per method; exponential is dotted on top of the Gaussian it equals (erratum 3)."""
    if method in BASELINES:
        return {"linestyle": "--", "marker": "o", "markersize": 3}
    if method == "exponential":
        return {"linestyle": ":", "marker": "x", "markersize": 5, "linewidth": 2}
    return {"linestyle": "-", "marker": "o", "markersize": 3}


def _plot(rows: Sequence[StudyRow], path: str) -> None:
    import matplotlib  # lazily: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=72)
    temperatures = sorted({r.temperature for r in rows if r.temperature is not None})
    middle = min(temperatures, key=lambda t: abs(t - 0.2)) if temperatures else None
    for row in rows:
        if row.temperature is None or row.temperature == middle:
            label = row.method if row.temperature is None else f"{row.method} (T={row.temperature:g})"
            left.plot(THUMOS14_THRESHOLDS, 100 * row.mean_average_precision, **_style(row.method), label=label)
    left.set_xlabel("tIoU threshold")
    left.set_ylabel("mAP (%)")
    left.set_title("mAP by tIoU")
    left.legend(fontsize=7)
    for method in TEMPLATES:
        series = [(r.temperature, r.average) for r in rows if r.method == method and r.temperature is not None]
        if series:
            t, a = zip(*sorted(series))
            right.plot(t, 100 * np.array(a), **_style(method), label=method)
    for row in rows:
        if row.temperature is None:
            right.axhline(100 * row.average, linestyle="--", linewidth=1, color="gray" if row.method == "nms" else "black",
                          label=row.method)
    right.set_xscale("log")
    right.set_xlabel("temperature T")
    right.set_ylabel("average mAP (%)")
    right.set_title("average mAP (0.1:0.7) by temperature")
    right.legend(fontsize=7)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png")
    plt.close(figure)
    write_output(path, image.getvalue())  # atomically, as every file jaxfuse writes


def sensitivity_table(results: dict[str, tuple[VideoParameters, list[StudyRow]]]) -> str:
    """Average mAP (and at tIoU 0.5, 0.7) of each setting, as markdown."""
    lines = ["| setting | noise | ramp | spurious rate | method | T | 0.5 | 0.7 | avg |", "|---|---|---|---|---|---|---|---|---|"]
    half, last = THUMOS14_THRESHOLDS.index(0.5), len(THUMOS14_THRESHOLDS) - 1
    for name, (parameters, rows) in results.items():
        for row in rows:
            method, temperature = _label(row)
            lines.append(
                f"| {name} | {parameters.noise:g} | {parameters.ramp} | {parameters.spurious_rate:g} | {method} | "
                f"{temperature} | {100 * row.mean_average_precision[half]:.2f} | "
                f"{100 * row.mean_average_precision[last]:.2f} | {100 * row.average:.2f} |"
            )
    return "\n".join(lines)


def _markdown_report(rows, parameters: VideoParameters, videos: SyntheticVideos, seconds: float, command: str,
                     plot_name: str | None, sensitivity: dict | None = None) -> str:
    truth = videos.ground_truth
    selected = int((videos.video_scores >= PUBLISHED_CLASS_THRESHOLD).sum())
    parameter_lines = "\n".join(f"| `{name}` | {value} |" for name, value in parameters._asdict().items())
    device = jax.devices()[0]
    parts = [
        "# Study: NMS, Soft-NMS and fusion templates by detection mAP",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {seconds:.0f} s "
        f"({_device_text(device)}, {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}). "
        "mAP in percent at the THUMOS14 tIoU thresholds; "
        "the best of each column in bold.",
        "",
        "## Headline",
        "",
        *[f"* {line}" for line in headline(rows)],
        "",
        "## Table",
        "",
        markdown_table(rows),
        "",
    ]
    if plot_name:
        parts += [f"![study]({plot_name})", ""]
    if sensitivity:
        parts += [
            "## Sensitivity",
            "",
            "The same study with an easier and a harder CAS (other parameters unchanged), for the baselines "
            "and the Gaussian template. Which method wins depends on how noisy the CAS is.",
            "",
            sensitivity_table({"main": (parameters, [r for r in rows if r.method in SENSITIVITY_METHODS])} | sensitivity),
            "",
        ]
        for name, (_, varied_rows) in sensitivity.items():
            best = max(varied_rows, key=lambda r: r.average)
            method, temperature = _label(best)
            parts.append(f"* {name}: best average mAP {method} (T = {temperature}) with {100 * best.average:.2f}.")
        parts.append("")
    parts += [
        "## Setup",
        "",
        f"{parameters.num_videos} synthetic videos (`jaxfuse.tools.videos.synthetic_videos`, seeded), "
        f"{len(truth.video)} ground-truth actions of {parameters.num_classes} classes, "
        f"{selected} (video, class) pairs above the class threshold {PUBLISHED_CLASS_THRESHOLD}. "
        "Each CAS is a sigmoid of a logit: background, actions with linear boundary ramps, spurious "
        "triangular peaks and smoothed Gaussian noise (see the module docstring for the model).",
        "",
        "Every method uses `jaxfuse.detect` with the published 20 CAS levels (0.001 to 0.039), "
        "proposals ordered by contrast (inner - outer), fusion weights softmax(inner / T), and the "
        "published grouping (candidate overlap > 0.25, +1 frames). `nms` keeps each group's leader; "
        "`soft_nms` is the usual Soft-NMS (continuous tIoU, Gaussian decay sigma 0.5, floor 0.001). "
        "`exponential` has the same fused location and score as `gaussian` by construction (erratum 3 "
        "of the SPEC), so their rows must agree.",
        "",
        "| parameter | value |",
        "|---|---|",
        parameter_lines,
        "",
    ]
    return "\n".join(parts)


def _device_text(device) -> str:
    kind = str(device.device_kind)
    return device.platform if kind.lower() == device.platform else f"{device.platform}: {kind}"


def run(args: argparse.Namespace) -> int:
    # Before any work: a missing matplotlib is one line, not a traceback after the whole study.
    needs = [] if args.no_plot else [Requirement("matplotlib", "study.png", "--no-plot")]
    if message := missing_requirements_message("jaxfuse study", needs, "plot"):
        print(message, file=sys.stderr)
        return 2
    output_dir = str(report_directory(args.output_dir))
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        print(f"jaxfuse study: error: cannot create {output_dir}: {error.strerror}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    parameters = video_parameters(args)
    videos = synthetic_videos(parameters)
    print(f"jaxfuse study: {parameters.num_videos} synthetic videos, {len(videos.ground_truth.video)} actions, "
          f"{parameters.num_classes} classes, seed {parameters.seed}; mAP (%) at tIoU "
          f"{', '.join(f'{t:.1f}' for t in THUMOS14_THRESHOLDS)}")
    print(text_table([]))
    rows = run_study(videos, args.methods, args.temperatures)
    print()
    for line in headline(rows):
        print(line)

    sensitivity = {}
    if not args.no_sensitivity:
        methods = [m for m in args.methods if m in SENSITIVITY_METHODS]
        for name, changes in SENSITIVITY.items():
            varied = parameters._replace(**changes)
            print(f"\n{name} CAS: " + ", ".join(f"{k} {v}" for k, v in changes.items()))
            sensitivity[name] = (varied, run_study(synthetic_videos(varied), methods, args.temperatures))

    plot_name = None if args.no_plot else "study.png"
    markdown_path = os.path.join(output_dir, "study.md")
    try:
        if plot_name is not None:
            _plot(rows, os.path.join(output_dir, plot_name))
        seconds = time.perf_counter() - started
        command = "jaxfuse study" + ("" if _is_default(args) else " " + _arguments_text(args))
        report = _markdown_report(rows, parameters, videos, seconds, command, plot_name, sensitivity)
        write_output(markdown_path, report.encode())
    except OutputError as error:
        print(f"jaxfuse study: error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {markdown_path}" + ("" if plot_name is None else f" and {os.path.join(output_dir, plot_name)}")
          + f" ({seconds:.0f} s)")
    return 0


def _defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args([])


def _is_default(args: argparse.Namespace) -> bool:
    defaults = vars(_defaults())
    return all(vars(args).get(k) == v for k, v in defaults.items() if k not in ("output_dir", "no_plot", "no_sensitivity"))


def _arguments_text(args: argparse.Namespace) -> str:
    defaults = vars(_defaults())
    changed = []
    for key, value in vars(args).items():
        if key in defaults and key not in ("output_dir", "no_plot", "no_sensitivity") and defaults[key] != value:
            text = " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
            changed.append(f"--{key.replace('_', '-')} {text}")
    return " ".join(changed)
