"""Timelines of one video, one panel per class: ground truth, raw detections by score, fused or kept detections.

The picture behind ``jaxfuse plot`` and the figures of the documentation. Time
runs along x; each detection is a horizontal stroke from its start to its end
at the height of its score, so overlapping detections of one action stack up
as a ladder and a fused (or kept) detection shows where it lands among them.
Ground-truth actions are shaded bands across the whole panel.

Every layer of a panel is one matplotlib collection whose ``gid`` names it
(:data:`TRUTH`, or the track's name) and which holds one path per segment, so
what was drawn can be counted from the figure itself.

matplotlib is optional (``pip install "jaxfuse[plot]"``): nothing here imports
it until a figure is drawn, and :func:`require_matplotlib` says in one line what
to install.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

TRUTH = "ground truth"
"""The ``gid`` and legend label of the ground-truth bands."""

PLOT_EXTRA_HINT = 'pip install "jaxfuse[plot]"'

# Figure geometry in inches: a band for the title and legend, one panel per class,
# a band for the time axis. With the default width and dpi the PNG is a whole
# number of pixels: (width * dpi) x ((HEADER + n * PANEL + FOOTER) * dpi).
HEADER_INCHES = 0.6
PANEL_INCHES = 1.6
FOOTER_INCHES = 0.5

_TRUTH_COLOR = "#2ca02c"
_RAW_COLOR = "0.45"
_KEPT_COLORS = ("#d62728", "#1f77b4", "#9467bd", "#ff7f0e")


class Track(NamedTuple):
    """Detections drawn as strokes at the height of their scores.

    Attributes:
        name: the legend label and the collection's ``gid``.
        segments: ``[N, 2]`` (start, end).
        scores: ``[N]``.
        raw: thin grey strokes (the input detections) if True; thick coloured
            ones (fused or kept detections) if False.
    """

    name: str
    segments: np.ndarray
    scores: np.ndarray
    raw: bool = False


class Panel(NamedTuple):
    """One class of one video.

    Attributes:
        title: shown at the panel's top left (the class label).
        truth: ``[G, 2]`` ground-truth segments, drawn as bands.
        tracks: the :class:`Track` s drawn over them, in order.
    """

    title: str
    truth: np.ndarray
    tracks: tuple[Track, ...]


def require_matplotlib(command: str):
    """Import matplotlib with its file-only backend, or raise ``ImportError`` with one line saying what to install.

    Args:
        command: what needs it, for the message (e.g. ``"jaxfuse plot"``).

    Returns:
        The ``matplotlib.pyplot`` module.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"{command} needs matplotlib: {PLOT_EXTRA_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_segments(segments) -> np.ndarray:
    return np.asarray(segments, np.float64).reshape(-1, 2)


def time_range(panels: Sequence[Panel]) -> tuple[float, float]:
    """The span of every segment of ``panels``, widened by 2% on each side (``(0, 1)`` if there are none)."""
    ends = [_as_segments(p.truth) for p in panels] + [_as_segments(t.segments) for p in panels for t in p.tracks]
    ends = np.concatenate(ends) if ends else np.zeros((0, 2))
    if ends.size == 0:
        return 0.0, 1.0
    low, high = float(ends.min()), float(ends.max())
    margin = 0.02 * (high - low) or 0.5
    return low - margin, high + margin


def _score_range(panel: Panel) -> tuple[float, float]:
    """From 0 (or the lowest score) to the highest score: contrast scores of CAS proposals are a few hundredths."""
    scores = np.concatenate([np.asarray(t.scores, np.float64).ravel() for t in panel.tracks] + [np.zeros(1)])
    low, high = float(scores.min()), float(scores.max())
    high = high if high > low else low + 1.0
    margin = 0.08 * (high - low)
    return low - margin, high + margin


def _draw_panel(axes, panel: Panel, kept_colors: dict[str, str]) -> None:
    from matplotlib.collections import LineCollection, PolyCollection

    low, high = _score_range(panel)
    truth = _as_segments(panel.truth)
    bands = [[(s, low), (e, low), (e, high), (s, high)] for s, e in truth.tolist()]
    axes.add_collection(PolyCollection(bands, facecolors=_TRUTH_COLOR, alpha=0.22, edgecolors="none", gid=TRUTH, zorder=0))
    for track in panel.tracks:
        segments = _as_segments(track.segments)
        scores = np.asarray(track.scores, np.float64).ravel()
        strokes = [[(s, q), (e, q)] for (s, e), q in zip(segments.tolist(), scores.tolist())]
        if track.raw:
            style = {"colors": _RAW_COLOR, "linewidths": 1.0, "alpha": 0.55, "zorder": 1}
        else:
            style = {"colors": kept_colors[track.name], "linewidths": 3.0, "alpha": 0.9, "zorder": 2, "capstyle": "butt"}
        axes.add_collection(LineCollection(strokes, gid=track.name, **style))
    axes.set_ylim(low, high)
    axes.set_title(panel.title, loc="left", fontsize=9, pad=3)
    axes.set_ylabel("score", fontsize=8)
    axes.tick_params(labelsize=8)
    axes.grid(axis="x", linewidth=0.4, alpha=0.5)


def _legend_handles(panels: Sequence[Panel], kept_colors: dict[str, str]) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    if any(_as_segments(p.truth).size for p in panels):
        handles.append(Patch(facecolor=_TRUTH_COLOR, alpha=0.3, label=TRUTH))
    seen = set()
    for track in (t for p in panels for t in p.tracks):
        if track.name in seen:
            continue
        seen.add(track.name)
        color, width = (_RAW_COLOR, 1.0) if track.raw else (kept_colors[track.name], 3.0)
        handles.append(Line2D([], [], color=color, linewidth=width, label=track.name))
    return handles


def draw_panels(
    panels: Sequence[Panel], *, title: str = "", time_label: str = "time", width: float = 10.0, dpi: int = 100,
    time_limits: tuple[float, float] | None = None,
) -> Any:
    """A matplotlib figure of ``panels``, stacked, sharing the time axis.

    Args:
        panels: one :class:`Panel` per row (at least one).
        title: the figure's title.
        time_label: the x axis label (e.g. ``"time (s)"``).
        width: figure width in inches; each panel is :data:`PANEL_INCHES` tall.
        dpi: dots per inch of the saved image.
        time_limits: the x range; default :func:`time_range` of the panels.

    Returns:
        A ``matplotlib.figure.Figure`` (close it with ``matplotlib.pyplot.close``).

    Raises:
        ValueError: no panels, or a width or dpi that is not positive.
        ImportError: matplotlib is missing (one line naming the extra to install).
    """
    if not panels:
        raise ValueError("`panels` is empty: nothing to draw")
    if not (width > 0 and dpi > 0):
        raise ValueError(f"`width` and `dpi` must be positive, got {width}, {dpi}")
    plt = require_matplotlib("drawing a timeline")
    height = HEADER_INCHES + PANEL_INCHES * len(panels) + FOOTER_INCHES
    figure, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False, figsize=(width, height), dpi=dpi)
    kept_names = list(dict.fromkeys(t.name for p in panels for t in p.tracks if not t.raw))
    kept_colors = {name: _KEPT_COLORS[i % len(_KEPT_COLORS)] for i, name in enumerate(kept_names)}
    for row, panel in zip(axes[:, 0], panels):
        _draw_panel(row, panel, kept_colors)
    axes[-1, 0].set_xlim(*(time_limits or time_range(panels)))
    axes[-1, 0].set_xlabel(time_label, fontsize=8)
    figure.subplots_adjust(
        left=0.8 / width, right=1 - 0.25 / width, top=1 - HEADER_INCHES / height, bottom=FOOTER_INCHES / height,
        hspace=0.3,
    )
    handles = _legend_handles(panels, kept_colors)
    if handles:
        figure.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False,
                      bbox_to_anchor=(1 - 0.2 / width, 1 - 0.05 / height))
    if title:
        figure.text(0.6 / width, 1 - 0.22 / height, title, fontsize=10, va="center", ha="left")
    return figure


def png_bytes(figure) -> bytes:
    """The figure as PNG bytes at its own size and dpi (no tight cropping, so the size is predictable)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)
    return buffer.getvalue()
