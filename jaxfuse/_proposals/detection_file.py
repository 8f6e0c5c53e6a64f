"""Fusing ActivityNet-format detection files: (video, label) items packed into padded batches, fused in float64, filtered and written back (the library side of ``jaxfuse fuse``).

Every (video, label) pair is one item: its detections are grouped by the
published greedy rule and each group is fused into one detection by
:func:`jaxfuse.fuse_proposals`. All items of a file are fused together in a
few padded batches (power-of-two sizes, as :func:`jaxfuse.pack_proposals`
makes them, of about 65,000 padded detections each), so a whole dataset
compiles one program per padded size (usually one) and runs a few hundred
kernel calls at most. The output keeps the input's other top-level values
byte for byte, its videos and their order; each video's detections are
sorted by score (highest first; ties in label order of first appearance,
then leader order), then cut to ``min_score`` and ``top_k``.

Precision: times in result files are seconds since the start of the video,
or since an epoch (``1.7e9``), and float32 keeps only 7 digits, so the
kernels run in float64 (``jax.enable_x64`` for the duration of the kernel
calls only: the caller's setting is left as it was). A detection that is not
fused (a group of one, an NMS or Soft-NMS survivor's segment) is copied
from the input, so it is written back exactly as it was read. Cost, measured
on 1,000 videos x 1,000 detections (``benchmarks/test_bench_detection_file.py``
notes): the warm kernels take 0.68 s instead of 0.38 s in float32, a few
percent of a cold run, which parsing and compiling dominate. Fusing in
float32 relative to each item's first start and adding it back in float64
would keep float32's speed, but leaves fused times accurate to float32 of the
item's span (1e-5 s on 200 s) and overlap tests rounding differently from
the published float64 code.

The file format (reading, checking, writing) is :mod:`jaxfuse.formats.activitynet`;
writing the output safely is :mod:`jaxfuse.formats.output`; the command
line is :mod:`jaxfuse.cli.fuse`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import msgspec
import numpy as np

from jaxfuse._core.result_codes import ResultCode
from jaxfuse._core.settings import overlap_for_method
from jaxfuse._core.validation import choice, positive_int, positive_scalar
from jaxfuse._proposals.fuse_proposals import METHODS, fuse_proposals
from jaxfuse._proposals.grouping import validate_overlap, validate_threshold
from jaxfuse._proposals.item_batches import TableItems, batch_rows, merged_buckets, pack_items, table_items
from jaxfuse._proposals.proposal_lists import PaddedProposals
from jaxfuse.formats.activitynet import (
    RESULTS,
    DetectionFileError,
    DetectionTable,
    detection_table,
    encode_results,
    garbage_collector_paused,
    read_predictions,
    results_of,
)
from jaxfuse.formats.output import plan_output, write_output

__all__ = [
    "DetectionFileError",
    "DetectionTable",
    "FileFusionReport",
    "FusedTable",
    "batch_rows",
    "detection_table",
    "fuse_detection_file",
    "fuse_detections_json",
    "fuse_table",
    "merged_buckets",
    "pack_items",
    "results_of",
]

DEFAULT_TEMPERATURE = 0.2
"""The softmax temperature of the published evaluation."""

DEFAULT_THRESHOLD = 0.25
"""The published grouping threshold: overlap with the leader strictly above it joins the group."""


class FusedTable(NamedTuple):
    """The fused detections of a :class:`DetectionTable`, video by video, by descending score within each.

    Attributes:
        counts: ``[V]`` int64, the number of fused detections of each video.
        label_codes: ``[F]`` int64, index into the table's ``labels``.
        scores: ``[F]`` float64 fused scores.
        segments: ``[F, 2]`` float64 fused (start, end).
        items: the number of (video, label) items.
        batches: the number of kernel calls.
    """

    counts: np.ndarray
    label_codes: np.ndarray
    scores: np.ndarray
    segments: np.ndarray
    items: int
    batches: int


class FileFusionReport(NamedTuple):
    """What :func:`fuse_detection_file` did.

    Attributes:
        videos: number of videos.
        detections: number of input detections.
        items: number of (video, label) items.
        fused_detections: number of output detections.
        batches: number of kernel calls.
        seconds: wall time of each phase (``"read"``: file to checked
            arrays, ``"fuse"``: packing, kernels and compiling, ``"write"``:
            formatting and writing), ``"compile"`` (the part of ``"fuse"``
            spent tracing and compiling) and ``"total"``.
    """

    videos: int
    detections: int
    items: int
    fused_detections: int
    batches: int
    seconds: dict


class _Settings(NamedTuple):
    """The checked options of one fusion run (see :func:`fuse_detections_json`)."""

    method: str
    temperature: float
    overlap: str
    overlap_threshold: float
    discrete: bool
    kernel_options: dict
    top_k: int | None
    min_score: float | None




# ---------------------------------------------------------------------- options


def _settings(method, temperature, overlap, overlap_threshold, discrete, sigma, decay, top_k, min_score) -> _Settings:
    """The same checks as :func:`jaxfuse.fuse_proposals`, and the file-level options, before any file is read."""
    choice(method, "method", METHODS)
    temperature = positive_scalar(temperature, "temperature")
    overlap_threshold = validate_threshold(overlap_threshold)
    if not 0 <= float(overlap_threshold) <= 1:  # an overlap is a fraction: outside [0, 1] nothing or everything groups
        raise ValueError(f"`overlap_threshold` must be in [0, 1], got {overlap_threshold}")
    overlap, _ = validate_overlap(overlap_for_method(overlap, method), discrete)  # None: IoU for (soft) NMS
    kernel_options = {}
    if sigma is not None or decay is not None:
        if method != "soft_nms":
            raise ValueError(f"`sigma` and `decay` apply to method 'soft_nms' only, got method {method!r}")
        if sigma is not None:
            kernel_options["sigma"] = positive_scalar(sigma, "sigma")
        if decay is not None:
            kernel_options["decay"] = choice(decay, "decay", ("gaussian", "linear"))
    if min_score is not None:
        min_score = float(min_score)
        if not np.isfinite(min_score):
            raise ValueError(f"`min_score` must be finite, got {min_score}")
        if method == "soft_nms":
            kernel_options["min_score"] = min_score  # ActionFormer's min_score: decayed below it, dropped
    if top_k is not None:
        top_k = positive_int(top_k, "top_k")
    return _Settings(method, temperature, overlap, float(overlap_threshold), bool(discrete), kernel_options, top_k, min_score)


# ---------------------------------------------------------------------- fusing


def _fuse_function() -> Callable:
    """fuse_proposals, or its data-parallel version when JAX sees several devices."""
    if jax.device_count() > 1:
        from jaxfuse._proposals.sharding import fuse_proposals_sharded

        return fuse_proposals_sharded
    return fuse_proposals


class _CompileClock:
    """Seconds JAX spends tracing, lowering and compiling, from its monitoring events (process-wide)."""

    _EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )
    _seconds = 0.0
    _lock = threading.Lock()
    _registered = False

    @classmethod
    def total(cls) -> float:
        if not cls._registered:
            with cls._lock:
                if not cls._registered:
                    jax.monitoring.register_event_duration_secs_listener(cls._listen)
                    cls._registered = True
        return cls._seconds

    @classmethod
    def _listen(cls, event: str, duration: float, **_) -> None:
        if event in cls._EVENTS:
            with cls._lock:
                cls._seconds += duration


class _Found(NamedTuple):
    """The fused detections of the batches: input positions of leaders, values, codes."""

    item: np.ndarray  # [F] item index
    leader: np.ndarray  # [F] the leader's detection index in the table
    single: np.ndarray  # [F] bool: a group of one member (nothing was fused)
    segments: np.ndarray  # [F, 2] float64
    scores: np.ndarray  # [F] float64
    result: np.ndarray  # [F] ResultCode


def _run_batches(table: DetectionTable, items: TableItems, settings: _Settings, on_batch) -> tuple[_Found, int]:
    """Pack the items into batches and fuse them in float64; returns the fused detections and the batch count."""
    in_item_order = lambda x: None if x is None else x[items.order]  # noqa: E731
    batches = pack_items(
        in_item_order(table.segments), in_item_order(table.scores), in_item_order(table.weights), items.starts, items.sizes
    )
    fuse = _fuse_function()
    parts = []
    for done, batch in enumerate(batches, start=1):
        with jax.enable_x64(True):
            fused = fuse(
                batch.segments, batch.scores, batch.weights, batch.valid,
                method=settings.method, temperature=settings.temperature, overlap=settings.overlap,
                overlap_threshold=settings.overlap_threshold, discrete=settings.discrete, **settings.kernel_options,
            )
            fused = jax.tree.map(np.asarray, fused)
        parts.append(_found_in_batch(batch, fused, items))
        if on_batch is not None:
            on_batch(done, len(batches))
    if not parts:
        empty = np.zeros(0, np.int64)
        return _Found(empty, empty, np.zeros(0, bool), np.zeros((0, 2)), np.zeros(0), empty), 0
    return _Found(*(np.concatenate(columns) for columns in zip(*parts))), len(batches)


def _found_in_batch(batch: PaddedProposals, fused, items: TableItems) -> _Found:
    """The fused detections of one batch: the first ``count`` slots of each row, in leader order."""
    row, slot = np.nonzero(fused.valid)
    members = np.zeros(fused.valid.shape, np.int64)
    member_row, member = np.nonzero(fused.group >= 0)
    np.add.at(members, (member_row, fused.group[member_row, member]), 1)
    item = batch.items[row]
    leader = items.order[items.starts[item] + fused.leader[row, slot]]
    return _Found(item, leader, members[row, slot] == 1, fused.segments[row, slot], fused.scores[row, slot], fused.result[row, slot])


def _restore_unfused(found: _Found, table: DetectionTable, method: str) -> _Found:
    """Copy what was not fused from the input, so that it is written back exactly as it was read.

    NMS keeps each leader as it is; Soft-NMS keeps its segment (its score is
    decayed); a template fuses a group of one into itself.
    """
    segments, scores = found.segments.copy(), found.scores.copy()
    segment_as_is = np.ones_like(found.single) if method in ("nms", "soft_nms") else found.single
    score_as_is = np.zeros_like(found.single) if method == "soft_nms" else segment_as_is
    segments[segment_as_is] = table.segments[found.leader[segment_as_is]]
    scores[score_as_is] = table.scores[found.leader[score_as_is]]
    return found._replace(segments=segments, scores=scores)


def _entry_name(table: DetectionTable, detection: int) -> str:
    offsets = np.cumsum(table.counts)
    video = int(np.searchsorted(offsets, detection, side="right"))
    entry = detection - (int(offsets[video - 1]) if video else 0)
    return f"video {table.video_ids[video]!r}, entry {entry}"


def _raise_for_failures(found: _Found, table: DetectionTable, items: TableItems) -> None:
    """A fused detection that is not SUCCESSFUL (e.g. OVERFLOW of values near the float64 limit) names its group's leader."""
    failed = np.flatnonzero(found.result != ResultCode.SUCCESSFUL)
    if failed.size:
        first = failed[np.argmin(found.leader[failed])]
        code = ResultCode(int(found.result[first])).name
        label = table.labels[items.label[found.item[first]]]
        raise DetectionFileError(
            f"{_entry_name(table, int(found.leader[first]))} (label {label!r}): fusing the group it leads "
            f"gave {code}; {failed.size} group(s) of the file failed"
        )


def _select_and_sort(found: _Found, table: DetectionTable, items: TableItems, settings: _Settings) -> FusedTable:
    """Per video: by descending score (stable: label, then leader order), cut to ``min_score`` and ``top_k``."""
    video = items.video[found.item]
    # Items are numbered by (video, label code) and leaders come in order within an item,
    # so a stable sort by (video, -score) over item order breaks ties by label, then leader.
    by_item = np.argsort(found.item, kind="stable")
    order = by_item[np.lexsort((-found.scores[by_item], video[by_item]))]
    keep = np.ones(order.size, bool)
    if settings.min_score is not None:
        keep &= found.scores[order] >= settings.min_score
    order = order[keep]
    if settings.top_k is not None and order.size:
        sorted_video = video[order]
        first_of_video = np.r_[0, np.flatnonzero(sorted_video[1:] != sorted_video[:-1]) + 1]
        rank = np.arange(order.size) - np.repeat(first_of_video, np.diff(np.r_[first_of_video, order.size]))
        order = order[rank < settings.top_k]
    return FusedTable(
        counts=np.bincount(video[order], minlength=table.counts.size).astype(np.int64),
        label_codes=items.label[found.item[order]],
        scores=found.scores[order],
        segments=found.segments[order],
        items=int(items.sizes.size),
        batches=0,
    )


def fuse_table(
    table: DetectionTable,
    *,
    method: str = "gaussian",
    temperature: float = DEFAULT_TEMPERATURE,
    overlap: str | None = None,
    overlap_threshold: float = DEFAULT_THRESHOLD,
    discrete: bool = False,
    sigma: float | None = None,
    decay: str | None = None,
    top_k: int | None = None,
    min_score: float | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> FusedTable:
    """Fuse every (video, label) item of a :class:`DetectionTable` in padded batches, in float64.

    Args:
        table: the detections.
        method, temperature, overlap, overlap_threshold, discrete, sigma,
            decay, top_k, min_score: as for :func:`fuse_detections_json`.
        on_batch: called as ``on_batch(done, total)`` after each batch.

    Returns:
        A :class:`FusedTable`: per video, its fused detections by descending score.

    Raises:
        DetectionFileError: a group's fusion failed (its result code is not
            SUCCESSFUL); the message names the leader's video and entry.
    """
    settings = _settings(method, temperature, overlap, overlap_threshold, discrete, sigma, decay, top_k, min_score)
    return _fuse_checked(table, settings, on_batch)


def _fuse_checked(table: DetectionTable, settings: _Settings, on_batch=None) -> FusedTable:
    items = table_items(table)
    found, batches = _run_batches(table, items, settings, on_batch)
    _raise_for_failures(found, table, items)
    found = _restore_unfused(found, table, settings.method)
    return _select_and_sort(found, table, items, settings)._replace(batches=batches)


# ---------------------------------------------------------------------- API


@contextlib.contextmanager
def _progress_bar(show: bool, on_batch, stream=None):
    """``on_batch``, also advancing a tqdm bar on ``stream`` (default stderr) when ``show``."""
    if not show:
        yield on_batch
        return
    from tqdm import tqdm

    bar = None

    def advance(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="jaxfuse: fusing", unit="batch", leave=False, file=stream)
        bar.update(done - bar.n)
        if on_batch is not None:
            on_batch(done, total)

    try:
        yield advance
    finally:
        if bar is not None:
            bar.close()


def fuse_detections_json(
    data: Any,
    *,
    method: str = "gaussian",
    temperature: float = DEFAULT_TEMPERATURE,
    overlap: str | None = None,
    overlap_threshold: float = DEFAULT_THRESHOLD,
    discrete: bool = False,
    weight_field: str | None = None,
    sigma: float | None = None,
    decay: str | None = None,
    top_k: int | None = None,
    min_score: float | None = None,
) -> dict:
    """Fuse the detections of ActivityNet detection JSON, per (video, label).

    Args:
        data: the parsed JSON ``{"results": {video_id: [{"label", "score",
            "segment": [s, e]}, ...]}, ...}``, the file's bytes, or its path:
            what :func:`jaxfuse.evaluate_json` accepts, read by the same rules.
        method: a :func:`jaxfuse.fuse_proposals` method (default ``"gaussian"``).
        temperature: softmax temperature (default 0.2, the published evaluation's).
        overlap: ``"candidate"`` (published) or ``"iou"``; default: IoU for NMS and Soft-NMS, else candidate.
        overlap_threshold: grouping threshold in [0, 1] (default 0.25, published).
        discrete: the ``+1`` frame length convention. Default False: result
            files hold seconds, where one extra unit of length would be one
            extra second (the published code fuses snippet indices, before
            converting to seconds).
        weight_field: an entry field holding the softmax logits (e.g. the
            published inner score); default the score.
        sigma: Soft-NMS Gaussian decay width (``exp(-overlap**2 / sigma)``;
            default 0.5); ``method="soft_nms"`` only.
        decay: Soft-NMS decay, ``"gaussian"`` (default) or ``"linear"``.
        top_k: keep at most this many detections per video, the highest
            scoring (ActionFormer's ``max_seg_num``); default all.
        min_score: drop output detections scoring below this; for Soft-NMS
            it is also the decay floor (ActionFormer's ``min_score``;
            default 0.001 there, no cut otherwise).

    Returns:
        A new dict: ``data``'s other keys (parsed, for bytes or a path), and
        ``"results"`` with the fused detections (``label``, ``score``,
        ``segment``) of each video, by descending score.

    Raises:
        DetectionFileError: invalid JSON, malformed detections, or a group whose
            fusion failed (the message names the video and the entry).
        OSError: the path cannot be read.
        ValueError, TypeError: a bad option.

    Example:
        >>> out = fuse_detections_json({"results": {"v1": [
        ...     {"label": "Jump", "score": 0.9, "segment": [0.0, 10.0]},
        ...     {"label": "Jump", "score": 0.9, "segment": [2.0, 12.0]}]}}, temperature=1.0)
        >>> out["results"]["v1"]
        [{'label': 'Jump', 'score': 0.9, 'segment': [1.0, 11.0]}]
    """
    settings = _settings(method, temperature, overlap, overlap_threshold, discrete, sigma, decay, top_k, min_score)
    read = read_predictions(data, weight_field)
    table = read.table
    fused = _fuse_checked(table, settings)
    labels = [table.labels[code] for code in fused.label_codes.tolist()]
    scores, segments = fused.scores.tolist(), fused.segments.tolist()
    ends = np.cumsum(fused.counts).tolist()
    results = {
        video_id: [{"label": labels[i], "score": scores[i], "segment": segments[i]} for i in range(first, last)]
        for video_id, first, last in zip(table.video_ids, [0] + ends[:-1], ends)
    }
    return {key: results if key == RESULTS else _parsed(value) for key, value in read.top_level.items()}


def _parsed(value: Any) -> Any:
    """A top-level value as Python objects (read from bytes, it is still raw JSON)."""
    return msgspec.json.decode(value) if isinstance(value, msgspec.Raw) else value


def _standard_input() -> bytes:
    if sys.stdin is None:  # started with standard input closed (``<&-``)
        raise OSError(errno.EBADF, "standard input is closed", "-")
    return sys.stdin.buffer.read()


def fuse_detection_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    method: str = "gaussian",
    temperature: float = DEFAULT_TEMPERATURE,
    overlap: str | None = None,
    overlap_threshold: float = DEFAULT_THRESHOLD,
    discrete: bool = False,
    weight_field: str | None = None,
    sigma: float | None = None,
    decay: str | None = None,
    top_k: int | None = None,
    min_score: float | None = None,
    progress: bool = False,
    stream=None,
    on_phase: Callable[[str, dict], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> FileFusionReport:
    """Fuse an ActivityNet-format detection file into another (what ``jaxfuse fuse`` runs).

    The output path is checked before the work (:func:`jaxfuse.formats.output.plan_output`)
    and written only if everything succeeded, atomically where it is (or
    will be) a regular file, through symlinks to their target (not another
    user's link in a sticky world-writable directory), in place for a file
    with several hard links, directly to a device or FIFO, to standard
    output for ``"-"``; an existing file keeps its mode.

    Args:
        input_path: the detection JSON to read; ``"-"`` reads standard input.
        output_path: where to write the fused detections.
        method, temperature, overlap, overlap_threshold, discrete, weight_field,
            sigma, decay, top_k, min_score: as for :func:`fuse_detections_json`.
        progress: show a progress bar of the kernel calls (tqdm).
        stream: where the bar goes (default ``sys.stderr``).
        on_phase: called as ``on_phase(name, counts)`` when a phase ends
            (``"read"``, ``"fuse"``, ``"write"``), for progress reports.
        on_batch: called as ``on_batch(done, total)`` after each kernel call.

    Returns:
        A :class:`FileFusionReport` with counts and phase timings.

    Raises:
        DetectionFileError: invalid JSON, a repeated key, malformed
            detections, a failed group.
        OutputError: (an ``OSError``) the output cannot be written, naming the path given
            (``"-"`` for standard output: closed, or its reader exited early).
        OSError: the input cannot be read (naming the path given).
        ValueError, TypeError: a bad option.

    Example:
        >>> import json, os, shutil, tempfile, jaxfuse
        >>> folder = tempfile.mkdtemp()
        >>> source, target = os.path.join(folder, "in.json"), os.path.join(folder, "out.json")
        >>> with open(source, "w") as file:
        ...     json.dump({"results": {"v1": [{"label": "Jump", "score": 0.9, "segment": [0.0, 10.0]},
        ...                                   {"label": "Jump", "score": 0.9, "segment": [2.0, 12.0]}]}}, file)
        >>> report = jaxfuse.fuse_detection_file(source, target, temperature=1.0)
        >>> report.detections, report.fused_detections
        (2, 1)
        >>> with open(target) as file:
        ...     json.load(file)["results"]["v1"]
        [{'label': 'Jump', 'score': 0.9, 'segment': [1.0, 11.0]}]
        >>> shutil.rmtree(folder)
    """
    settings = _settings(method, temperature, overlap, overlap_threshold, discrete, sigma, decay, top_k, min_score)
    plan = plan_output(output_path)
    seconds: dict = {}
    started = clock = time.perf_counter()
    compile_before = _CompileClock.total()

    def lap(phase: str, **counts) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = now - clock
        clock = now
        if on_phase is not None:
            on_phase(phase, counts)

    source = os.fspath(input_path)
    with garbage_collector_paused():
        read = read_predictions(_standard_input() if source == "-" else source, weight_field)
    table = read.table
    lap("read", videos=len(table.video_ids), detections=int(table.scores.size))
    with _progress_bar(bool(progress), on_batch, stream) as on_batch:
        fused = _fuse_checked(table, settings, on_batch)
    seconds["compile"] = _CompileClock.total() - compile_before
    lap("fuse", items=fused.items, batches=fused.batches)
    text = encode_results(read.top_level, table.video_ids, fused.counts, table.labels, fused.label_codes, fused.scores, fused.segments)
    write_output(plan, text)
    lap("write", fused_detections=int(fused.scores.size))
    seconds["total"] = time.perf_counter() - started
    return FileFusionReport(
        videos=len(table.video_ids),
        detections=int(table.scores.size),
        items=fused.items,
        fused_detections=int(fused.scores.size),
        batches=fused.batches,
        seconds=seconds,
    )
