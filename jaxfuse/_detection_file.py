"""``jaxfuse fuse``: fuse the detections of an ActivityNet-format results file.

Input and output have the ActivityNet detection format::

    {"version": ..., "results": {video_id: [{"label": ..., "score": ...,
                                             "segment": [start, end]}, ...]},
     "external_data": ...}

Every (video, label) pair is one item: its detections are grouped by the
published greedy rule and each group is fused into one detection by
:func:`jaxfuse.fuse_proposals`. All items of a file are fused together in a
few padded batches (power-of-two sizes, as :func:`jaxfuse.pack_proposals`
makes them, of about 65,000 padded detections each), so a whole dataset
compiles one program per padded size (usually one) and runs a few hundred
kernel calls at most. The output
keeps the input's other top-level keys, its videos and their order; each
video's fused detections come label by label (labels in order of first
appearance in the file), in leader order within a label.

Where the time goes on 5,000 videos x 1,000 detections (340 MB; see
``benchmarks/test_bench_detection_file.py``; a loaded 2-core CPU, 21 s in
all): parsing the JSON with Python's ``json`` module (8 s), then turning 5
million entries into checked arrays and freeing them (4 s); compiling the
kernels for the batch shape takes about 4.5 s, the kernels and packing under
2 s, writing 0.3 s. Python's cyclic garbage collector is paused from parsing
until the parsed detections are freed: it would otherwise traverse the
millions of new objects again and again (measured: parsing 29 s instead of
8 s, and fusion 5.4 s instead of 1.9 s once compiled).

Output numbers are written as the shortest decimal that reads back as the
same float32 (``0.1``, not ``0.10000000149011612``), or float64 under
``jax_enable_x64``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import numbers
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from jaxfuse._grouping import OVERLAP_MEASURES, validate_overlap, validate_threshold
from jaxfuse._proposals import METHODS, PaddedProposals, fuse_proposals
from jaxfuse._ragged import bucket_size
from jaxfuse._validation import choice, positive_scalar

DEFAULT_TEMPERATURE = 0.2
"""The softmax temperature of the published evaluation."""

DEFAULT_THRESHOLD = 0.25
"""The published grouping threshold: overlap with the leader strictly above it joins the group."""

PROGRESS_MIN_DETECTIONS = 100_000
"""Files with at least this many detections show progress on stderr (unless ``--quiet``)."""

MIN_ITEM_SIZE = 16
"""The smallest padded number of detections per item."""

# A batch holds about this many (padded) detections. Its height is a power of
# two, so that a dataset compiles one program per item size bucket: on a
# loaded 2-core CPU each compile takes seconds, far more than running a batch
# (0.05 to 0.4 ms per item of 1,000 detections, by its number of groups). Taller batches compile slower
# (the grouping loop gets one more compaction stage per doubling).
_BATCH_DETECTIONS = 1 << 16
_MIN_BATCH_ROWS = 16
_MAX_BATCH_ROWS = 1024

# A size bucket is padded up into the next larger one when that adds at most
# this many padded detections: running them costs well under a second (about
# 60 ns each, measured on 1,000-detection items), a compile several seconds.
MERGE_PADDING_BUDGET = 1 << 24

_ENTRY_FIELDS = ("label", "score", "segment")


class DetectionFileError(ValueError):
    """A malformed detection file; the message names the video and the entry (counted from 0)."""


class DetectionTable(NamedTuple):
    """The detections of a results file as flat arrays, in file order.

    Attributes:
        video_ids: the video ids, in file order.
        counts: ``[V]`` int64, the number of detections of each video.
        labels: the distinct labels, in order of first appearance.
        label_codes: ``[P]`` int64, each detection's index into ``labels``.
        scores: ``[P]`` float64.
        segments: ``[P, 2]`` float64 (start, end), ``start <= end``.
        weights: ``[P]`` float64 softmax logits (the ``weight_field``), or None.
    """

    video_ids: list
    counts: np.ndarray
    labels: list
    label_codes: np.ndarray
    scores: np.ndarray
    segments: np.ndarray
    weights: np.ndarray | None


class FusedTable(NamedTuple):
    """The fused detections of a :class:`DetectionTable`, video by video.

    Attributes:
        counts: ``[V]`` int64, the number of fused detections of each video.
        label_codes: ``[F]`` int64, index into the table's ``labels``.
        scores: ``[F]`` fused scores.
        segments: ``[F, 2]`` fused (start, end).
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
        seconds: wall time of each phase (``"read"``: file to parsed JSON,
            ``"check"``: parsed JSON to checked arrays, including freeing
            the parsed detections, ``"fuse"``: packing,
            kernels and compiling, ``"write"``: formatting and writing) and
            ``"total"``.
    """

    videos: int
    detections: int
    items: int
    fused_detections: int
    batches: int
    seconds: dict


# ---------------------------------------------------------------------- reading


@contextlib.contextmanager
def _garbage_collector_paused():
    """Pause the cyclic garbage collector (parsed JSON holds no cycles; see the module notes)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    """A finite real number (numpy scalars too); bool is not one, though Python treats it as an int."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _is_label(value: Any) -> bool:
    return isinstance(value, (str, numbers.Integral)) and not isinstance(value, (bool, np.bool_))


def _entry_problem(entry: Any, weight_field: str | None) -> str | None:
    """What is wrong with one detection entry, or None (the slow, exact check)."""
    if not isinstance(entry, Mapping):
        return f"expected an object with 'label', 'score' and 'segment', got {_short(entry)}"
    required = _ENTRY_FIELDS + (() if weight_field is None else (weight_field,))
    missing = [name for name in required if name not in entry]
    if missing:
        what = " and ".join(repr(name) for name in missing)
        hint = " (the --weight-field)" if weight_field in missing else ""
        return f"missing {what}{hint}"
    if not _is_label(entry["label"]):
        return f"label must be a string or an integer, got {_short(entry['label'])}"
    if not _is_number(entry["score"]):
        return f"score must be a finite number, got {_short(entry['score'])}"
    segment = entry["segment"]
    if not isinstance(segment, (list, tuple)) or len(segment) != 2 or not all(_is_number(x) for x in segment):
        return f"segment must be [start, end] with two finite numbers, got {_short(segment)}"
    if segment[0] > segment[1]:
        return f"segment must be [start, end] with start <= end, got {_short(segment)}"
    if weight_field is not None and not _is_number(entry[weight_field]):
        return f"{weight_field!r} (the --weight-field) must be a finite number, got {_short(entry[weight_field])}"
    return None


def _raise_first_problem(results: Mapping, weight_field: str | None) -> None:
    """Check every entry in file order and raise for the first bad one (off the fast path).

    Returns normally when every entry is fine: the bulk checks only accept
    exactly what ``json`` produces, so dicts built in Python with, e.g., numpy
    scalars land here and pass.
    """
    for video, entries in results.items():
        if not isinstance(entries, (list, tuple)):
            raise DetectionFileError(f"video {video!r}: expected a list of detections, got {_short(entries)}")
        for index, entry in enumerate(entries):
            problem = _entry_problem(entry, weight_field)
            if problem is not None:
                raise DetectionFileError(f"video {video!r}, entry {index}: {problem}")


def results_of(data: Any) -> Mapping:
    """The ``"results"`` object of parsed ActivityNet detection JSON.

    Raises:
        DetectionFileError: ``data`` is not an object with a ``"results"`` object.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("results"), Mapping):
        raise DetectionFileError(
            "expected ActivityNet detection JSON: an object with a 'results' object mapping "
            "each video id to a list of {'label', 'score', 'segment'} entries"
        )
    return data["results"]


def detection_table(data: Any, weight_field: str | None = None) -> DetectionTable:
    """Check parsed ActivityNet detection JSON and turn it into flat arrays.

    The common case is checked in bulk (per-column type sets and vectorised
    value checks, about a second per 5 million entries); only when something
    is wrong is the file walked entry by entry, to name the first bad one.

    Args:
        data: the parsed JSON (``{"results": {video_id: [entry, ...]}, ...}``).
        weight_field: an entry field to use as softmax weights, or None.

    Returns:
        A :class:`DetectionTable`.

    Raises:
        DetectionFileError: naming the video and the entry (counted from 0).
    """
    results = results_of(data)
    labels: list = []
    scores: list = []
    segments: list = []
    weights: list = []
    counts = np.zeros(len(results), np.int64)
    try:
        for video, entries in enumerate(results.values()):
            if not isinstance(entries, (list, tuple)):
                raise TypeError
            labels += [entry["label"] for entry in entries]
            scores += [entry["score"] for entry in entries]
            segments += [entry["segment"] for entry in entries]
            if weight_field is not None:
                weights += [entry[weight_field] for entry in entries]
            counts[video] = len(entries)
    except (KeyError, TypeError, IndexError):
        _raise_first_problem(results, weight_field)
        raise  # pragma: no cover - the walk above finds what failed here

    numbers = {int, float}
    well_typed = (
        set(map(type, labels)) <= {str, int}
        and set(map(type, scores)) <= numbers
        and set(map(type, segments)) <= {list}
        and set(map(len, segments)) <= {2}
        and set(map(type, itertools.chain.from_iterable(segments))) <= numbers
        and set(map(type, weights)) <= numbers
    )
    if not well_typed:
        _raise_first_problem(results, weight_field)
    total = len(scores)
    try:
        score_array = np.fromiter(scores, np.float64, total)
        segment_array = np.fromiter(itertools.chain.from_iterable(segments), np.float64, 2 * total).reshape(total, 2)
        weight_array = None if weight_field is None else np.fromiter(weights, np.float64, total)
    except OverflowError:  # an integer beyond the float range
        _raise_first_problem(results, weight_field)
        raise  # pragma: no cover
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(score_array) | ~np.isfinite(segment_array).all(axis=1) | (segment_array[:, 0] > segment_array[:, 1])
        if weight_array is not None:
            bad |= ~np.isfinite(weight_array)
    if bad.any():
        _raise_first_problem(results, weight_field)

    # Dense label codes in order of first appearance (labels are str or int, so hashable).
    label_index: dict = {}
    codes = np.fromiter((label_index.setdefault(label, len(label_index)) for label in labels), np.int64, total)
    return DetectionTable(
        video_ids=list(results.keys()),
        counts=counts,
        labels=list(label_index),
        label_codes=codes,
        scores=score_array,
        segments=segment_array,
        weights=weight_array,
    )


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, with the garbage collector paused (see the module notes).

    Raises:
        DetectionFileError: the file is not valid JSON.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        raw = handle.read()
    with _garbage_collector_paused():
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DetectionFileError(f"not valid JSON: {error}") from None


# ---------------------------------------------------------------------- fusing


class _Items(NamedTuple):
    """The (video, label) items of a table, each a run of the label-sorted detections."""

    order: np.ndarray  # [P] detection indices, sorted by (video, label code), file order within
    starts: np.ndarray  # [I] first position of each item in ``order``
    sizes: np.ndarray  # [I] detections per item
    video: np.ndarray  # [I] video index of each item
    label: np.ndarray  # [I] label code of each item


def _items(table: DetectionTable) -> _Items:
    total = table.scores.size
    video_of = np.repeat(np.arange(table.counts.size, dtype=np.int64), table.counts)
    key = video_of * max(len(table.labels), 1) + table.label_codes
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]]) if total else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, total])
    first = order[starts]
    return _Items(order, starts, sizes, video_of[first], table.label_codes[first])


def batch_rows(size: int, num_items: int) -> int:
    """The height (items per batch) used for items padded to ``size``.

    A power of two near ``2**16 / size`` within [16, 1024], and no taller than
    ``num_items`` needs, so that small files compile small programs.
    """
    rows = min(max(_BATCH_DETECTIONS // size, _MIN_BATCH_ROWS), _MAX_BATCH_ROWS)
    return min(bucket_size(rows), bucket_size(num_items))


def pack_items(
    segments: np.ndarray,
    scores: np.ndarray,
    weights: np.ndarray | None,
    starts: np.ndarray,
    sizes: np.ndarray,
    *,
    min_size: int = MIN_ITEM_SIZE,
    rows: Callable[[int, int], int] | None = None,
    merge_budget: int = MERGE_PADDING_BUDGET,
) -> list[PaddedProposals]:
    """Vectorised :func:`jaxfuse.pack_proposals` for items stored as runs of flat arrays.

    Item ``i`` is ``segments[starts[i] : starts[i] + sizes[i]]`` (and the same
    rows of ``scores``, ``weights``). The buckets are those of
    :func:`jaxfuse.pack_proposals` (power-of-two sizes, smallest first, items
    in order within a bucket), with two differences that save compiles:

    * a bucket is padded into the next larger bucket when that adds at most
      ``merge_budget`` padded detections (see :func:`merged_buckets`);
    * every batch of a bucket has the same height ``rows(size, items in
      bucket)``: the last one is topped up with empty items (``valid`` all
      False, ``items`` -1, ``sizes`` 0).

    ``pack_proposals`` copies item by item in Python, which costs seconds for
    a million small items; this copies each batch with one fancy-indexing
    assignment per array.

    Args:
        segments: ``[P, 2]``.
        scores: ``[P]``.
        weights: ``[P]`` or None.
        starts: ``[I]`` first row of each item.
        sizes: ``[I]`` rows of each item.
        min_size: the smallest padded size.
        rows: ``(padded size, number of items in the bucket) -> batch height``;
            default :func:`batch_rows`.
        merge_budget: see :func:`merged_buckets`; 0 keeps every bucket.

    Returns:
        A list of :class:`jaxfuse.PaddedProposals` (``items`` index ``starts``).
    """
    rows = batch_rows if rows is None else rows
    distinct = np.unique(sizes).tolist()
    padded_of = {n: bucket_size(n, min_size) for n in distinct}
    item_padded = np.fromiter((padded_of[n] for n in sizes.tolist()), np.int64, sizes.size)
    buckets, counts = np.unique(item_padded, return_counts=True)
    target = merged_buckets(dict(zip(buckets.tolist(), counts.tolist())), merge_budget)
    item_padded = np.fromiter((target[n] for n in item_padded.tolist()), np.int64, sizes.size)
    batches = []
    for size in np.unique(item_padded):
        members = np.flatnonzero(item_padded == size)
        height = rows(int(size), members.size)
        for first in range(0, members.size, height):
            chunk = members[first : first + height]
            chunk_sizes = sizes[chunk]
            row = np.repeat(np.arange(chunk.size), chunk_sizes)
            column = np.arange(row.size) - np.repeat(np.cumsum(chunk_sizes) - chunk_sizes, chunk_sizes)
            source = np.repeat(starts[chunk], chunk_sizes) + column
            batch_segments = np.zeros((height, size, 2), segments.dtype)
            batch_scores = np.zeros((height, size), scores.dtype)
            batch_segments[row, column] = segments[source]
            batch_scores[row, column] = scores[source]
            batch_weights = None
            if weights is not None:
                batch_weights = np.zeros((height, size), weights.dtype)
                batch_weights[row, column] = weights[source]
            valid = np.zeros((height, size), bool)
            valid[row, column] = True
            topped_up = lambda x, fill: np.concatenate([x, np.full(height - chunk.size, fill, x.dtype)])  # noqa: E731
            batches.append(
                PaddedProposals(batch_segments, batch_scores, batch_weights, valid, topped_up(chunk, -1), topped_up(chunk_sizes, 0))
            )
    return batches


def merged_buckets(bucket_counts: dict[int, int], budget: int = MERGE_PADDING_BUDGET) -> dict[int, int]:
    """Which padded size each bucket's items get, after merging small buckets upwards.

    From the largest bucket down, a bucket joins the current target (the
    nearest larger bucket that was kept) when its items would gain at most
    ``budget`` padded detections in all; otherwise it is kept and becomes the
    target. Each kept bucket is one program to compile.

    Args:
        bucket_counts: ``{padded size: number of items}``.
        budget: the most padded detections a merge may add.

    Returns:
        ``{padded size: the padded size its items are given}``.

    Example:
        >>> merged_buckets({16: 1000, 512: 7000, 1024: 3000}, budget=1 << 24)
        {1024: 1024, 512: 1024, 16: 1024}
        >>> merged_buckets({16: 10**6, 1024: 10}, budget=1 << 24)
        {1024: 1024, 16: 16}
    """
    target: dict[int, int] = {}
    current = None
    for size in sorted(bucket_counts, reverse=True):
        if current is not None and bucket_counts[size] * (current - size) <= budget:
            target[size] = current
        else:
            target[size] = current = size
    return target


def _fuse_function() -> Callable:
    """fuse_proposals, or its data-parallel version when JAX sees several devices."""
    if jax.device_count() > 1:
        from jaxfuse._sharding import fuse_proposals_sharded

        return fuse_proposals_sharded
    return fuse_proposals


def fuse_table(
    table: DetectionTable,
    *,
    method: str = "gaussian",
    temperature: float = DEFAULT_TEMPERATURE,
    overlap: str = "candidate",
    overlap_threshold: float = DEFAULT_THRESHOLD,
    discrete: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> FusedTable:
    """Fuse every (video, label) item of a :class:`DetectionTable` in padded batches.

    Args:
        table: the detections.
        method, temperature, overlap, overlap_threshold, discrete: as for
            :func:`jaxfuse.fuse_proposals`.
        on_batch: called as ``on_batch(done, total)`` after each batch.

    Returns:
        A :class:`FusedTable`: per video, its items in label-code order, each
        item's fused detections in leader order.
    """
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    items = _items(table)
    in_item_order = lambda x: None if x is None else x[items.order].astype(dtype)  # noqa: E731
    batches = pack_items(
        in_item_order(table.segments), in_item_order(table.scores), in_item_order(table.weights), items.starts, items.sizes
    )
    fuse = _fuse_function()
    found_items, found_segments, found_scores = [], [], []
    for done, batch in enumerate(batches, start=1):
        fused = fuse(
            batch.segments, batch.scores, batch.weights, batch.valid,
            method=method, temperature=temperature, overlap=overlap,
            overlap_threshold=overlap_threshold, discrete=discrete,
        )
        # Fused detections are the first count[row] slots of each row, in leader order.
        row, slot = np.nonzero(np.asarray(fused.valid))
        found_items.append(batch.items[row])
        found_segments.append(np.asarray(fused.segments)[row, slot])
        found_scores.append(np.asarray(fused.scores)[row, slot])
        if on_batch is not None:
            on_batch(done, len(batches))
    item = np.concatenate(found_items) if found_items else np.zeros(0, np.int64)
    # Batches come bucket by bucket; a stable sort by item restores (video, label, leader) order.
    order = np.argsort(item, kind="stable")
    item = item[order]
    video = items.video[item]
    return FusedTable(
        counts=np.bincount(video, minlength=table.counts.size).astype(np.int64),
        label_codes=items.label[item],
        scores=np.concatenate(found_scores)[order] if found_scores else np.zeros(0, dtype),
        segments=np.concatenate(found_segments)[order] if found_segments else np.zeros((0, 2), dtype),
        items=int(items.sizes.size),
        batches=len(batches),
    )


# ---------------------------------------------------------------------- writing


def _number_texts(values: np.ndarray) -> np.ndarray:
    """Shortest round-trip decimals of a float array (numpy's float32 repr, not float64's)."""
    return values.astype(str)


def _entry_texts(table: DetectionTable, fused: FusedTable) -> list[str]:
    label_texts = [json.dumps(label) for label in table.labels]
    labels = [label_texts[code] for code in fused.label_codes.tolist()]
    scores = _number_texts(fused.scores).tolist()
    starts = _number_texts(fused.segments[:, 0]).tolist()
    ends = _number_texts(fused.segments[:, 1]).tolist()
    return [
        f'{{"label": {label}, "score": {score}, "segment": [{start}, {end}]}}'
        for label, score, start, end in zip(labels, scores, starts, ends)
    ]


def results_text(data: Mapping, table: DetectionTable, fused: FusedTable) -> str:
    """The output file's text: ``data`` with its ``"results"`` replaced by the fused detections.

    Only ``data``'s keys and non-``"results"`` values are read.

    Written directly rather than through ``json.dumps`` of dicts: formatting
    the numbers from arrays avoids building a dict and three floats per
    detection. The layout is ``json.dumps``' default (``", "``, ``": "``).
    """
    entries = _entry_texts(table, fused)
    ends = np.cumsum(fused.counts).tolist()
    videos = []
    for video_id, first, last in zip(table.video_ids, [0] + ends[:-1], ends):
        videos.append(f"{json.dumps(video_id)}: [{', '.join(entries[first:last])}]")
    results = "{" + ", ".join(videos) + "}"
    parts = [f"{json.dumps(key)}: {results if key == 'results' else json.dumps(value)}" for key, value in data.items()]
    return "{" + ", ".join(parts) + "}\n"


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    Readers never see a half-written file, and a failure leaves ``path`` as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".jaxfuse-", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# ---------------------------------------------------------------------- API


def _check_options(method, temperature, overlap, overlap_threshold, discrete) -> None:
    """The same option checks as :func:`jaxfuse.fuse_proposals`, before any file is read."""
    choice(method, "method", METHODS)
    positive_scalar(temperature, "temperature")
    validate_threshold(overlap_threshold)
    validate_overlap(overlap, discrete)


def fuse_detections_json(
    data: Any,
    *,
    method: str = "gaussian",
    temperature: float = DEFAULT_TEMPERATURE,
    overlap: str = "candidate",
    overlap_threshold: float = DEFAULT_THRESHOLD,
    discrete: bool = False,
    weight_field: str | None = None,
) -> dict:
    """Fuse the detections of parsed ActivityNet detection JSON, per (video, label).

    Args:
        data: ``{"results": {video_id: [{"label", "score", "segment": [s, e]}, ...]}, ...}``.
        method: a :func:`jaxfuse.fuse_proposals` method (default ``"gaussian"``).
        temperature: softmax temperature (default 0.2, the published evaluation's).
        overlap: ``"candidate"`` (published) or ``"iou"``.
        overlap_threshold: grouping threshold (default 0.25, published).
        discrete: the ``+1`` frame length convention. Default False: result
            files hold seconds, where one extra unit of length would be one
            extra second (the published code fuses snippet indices, before
            converting to seconds).
        weight_field: an entry field holding the softmax logits (e.g. the
            published inner score); default the score.

    Returns:
        A new dict: ``data``'s other keys, and ``"results"`` with the fused
        detections (``label``, ``score``, ``segment``) of each video.

    Raises:
        DetectionFileError: malformed detections (the message names the
            video and the entry).
        ValueError, TypeError: a bad option.

    Example:
        >>> out = fuse_detections_json({"results": {"v1": [
        ...     {"label": "Jump", "score": 0.9, "segment": [0.0, 10.0]},
        ...     {"label": "Jump", "score": 0.9, "segment": [2.0, 12.0]}]}}, temperature=1.0)
        >>> out["results"]["v1"]
        [{'label': 'Jump', 'score': 0.9, 'segment': [1.0, 11.0]}]
    """
    _check_options(method, temperature, overlap, overlap_threshold, discrete)
    table = detection_table(data, weight_field)
    fused = fuse_table(
        table, method=method, temperature=temperature, overlap=overlap, overlap_threshold=overlap_threshold, discrete=discrete
    )
    # Through the same decimal text as the file, so that both give the same numbers.
    scores = _number_texts(fused.scores).astype(np.float64).tolist()
    segments = _number_texts(fused.segments).astype(np.float64).tolist()
    labels = [table.labels[code] for code in fused.label_codes.tolist()]
    ends = np.cumsum(fused.counts).tolist()
    results = {
        video_id: [
            {"label": labels[i], "score": scores[i], "segment": segments[i]} for i in range(first, last)
        ]
        for video_id, first, last in zip(table.video_ids, [0] + ends[:-1], ends)
    }
    return {key: results if key == "results" else value for key, value in data.items()}


class _Progress:
    """Plain-text progress on a stream: a redrawn bar on a terminal, a line per phase otherwise."""

    def __init__(self, stream, enabled: bool):
        self.stream = stream
        self.enabled = enabled
        self.interactive = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.started = time.perf_counter()
        self.last_line = 0.0

    def say(self, text: str) -> None:
        if self.enabled:
            prefix = "\r\x1b[K" if self.interactive else ""
            self.stream.write(f"{prefix}jaxfuse fuse: {text}\n")
            self.stream.flush()

    def bar(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        # Off a terminal, a line every few seconds (and the last) is enough for a log.
        if not self.interactive and done < total and now - self.last_line < 5:
            return
        self.last_line = now
        width = 30
        filled = width * done // max(total, 1)
        line = f"{what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({now - self.started:.1f} s)"
        if self.interactive:
            self.stream.write(f"\r\x1b[Kjaxfuse fuse: {line}" + ("\n" if done >= total else ""))
        else:
            self.stream.write(f"jaxfuse fuse: {line}\n")
        self.stream.flush()


def fuse_detection_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    method: str = "gaussian",
    temperature: float = DEFAULT_TEMPERATURE,
    overlap: str = "candidate",
    overlap_threshold: float = DEFAULT_THRESHOLD,
    discrete: bool = False,
    weight_field: str | None = None,
    progress: bool | None = None,
    stream=None,
) -> FileFusionReport:
    """Fuse an ActivityNet-format detection file into another (what ``jaxfuse fuse`` runs).

    Nothing is written unless everything succeeded: the output goes to a
    temporary file in the output's directory, renamed over ``output_path`` at
    the end.

    Args:
        input_path: the detection JSON to read.
        output_path: where to write the fused detections (replaced if present).
        method, temperature, overlap, overlap_threshold, discrete, weight_field:
            as for :func:`fuse_detections_json`.
        progress: show progress on ``stream``; None: only for files with at
            least ``PROGRESS_MIN_DETECTIONS`` detections.
        stream: where progress goes (default ``sys.stderr``).

    Returns:
        A :class:`FileFusionReport` with counts and phase timings.

    Raises:
        DetectionFileError: invalid JSON or malformed detections.
        OSError: the input cannot be read or the output cannot be written.
        ValueError, TypeError: a bad option.
    """
    _check_options(method, temperature, overlap, overlap_threshold, discrete)
    stream = sys.stderr if stream is None else stream
    seconds = {}
    clock = time.perf_counter()
    started = clock

    def lap(phase: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = now - clock
        clock = now
        return seconds[phase]

    with _garbage_collector_paused():
        data = read_json(input_path)
        lap("read")
        table = detection_table(data, weight_field)
        # Only the other top-level keys are needed from here on. The parsed
        # detections (millions of objects) are freed now, while the collector
        # is paused: left alive, every collection during fusion walked them
        # all (measured: fusion 5.4 s instead of 1.2 s once compiled).
        skeleton = {key: None if key == "results" else value for key, value in data.items()}
        del data
        lap("check")
    detections = int(table.scores.size)
    report = _Progress(stream, detections >= PROGRESS_MIN_DETECTIONS if progress is None else progress)
    report.say(
        f"read {len(table.video_ids):,} videos, {detections:,} detections in {seconds['read'] + seconds['check']:.1f} s "
        f"(parse {seconds['read']:.1f} s, check {seconds['check']:.1f} s)"
    )
    fused = fuse_table(
        table, method=method, temperature=temperature, overlap=overlap, overlap_threshold=overlap_threshold,
        discrete=discrete, on_batch=lambda done, total: report.bar(done, total, "fusing batches"),
    )
    lap("fuse")
    write_atomically(output_path, results_text(skeleton, table, fused))
    lap("write")
    seconds["total"] = time.perf_counter() - started
    result = FileFusionReport(
        videos=len(table.video_ids),
        detections=detections,
        items=fused.items,
        fused_detections=int(fused.scores.size),
        batches=fused.batches,
        seconds=seconds,
    )
    report.say(
        f"fused {result.detections:,} detections of {result.items:,} (video, label) items into "
        f"{result.fused_detections:,} in {seconds['total']:.1f} s (parse {seconds['read']:.1f} s, "
        f"check {seconds['check']:.1f} s, fuse {seconds['fuse']:.1f} s in {result.batches} batches, "
        f"write {seconds['write']:.1f} s)"
    )
    return result


# ---------------------------------------------------------------------- CLI


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``jaxfuse fuse`` arguments to ``parser``."""
    parser.add_argument("input", help="ActivityNet-format detection JSON ({'results': {video: [{label, score, segment}]}})")
    parser.add_argument("-o", "--output", required=True, help="where to write the fused detections (same format)")
    parser.add_argument("--method", choices=METHODS, default="gaussian", help="fusion template, or nms / soft_nms (default gaussian)")
    parser.add_argument(
        "--temperature", type=_positive_float, default=DEFAULT_TEMPERATURE,
        help=f"softmax temperature (default {DEFAULT_TEMPERATURE}, the published evaluation's)",
    )
    parser.add_argument(
        "--overlap", choices=OVERLAP_MEASURES, default="candidate",
        help="grouping overlap: intersection / candidate length (published) or IoU (default candidate)",
    )
    parser.add_argument(
        "--threshold", type=_finite_float, default=DEFAULT_THRESHOLD,
        help=f"a detection joins a leader's group when its overlap is above this (default {DEFAULT_THRESHOLD})",
    )
    lengths = parser.add_mutually_exclusive_group()
    lengths.add_argument(
        "--discrete", dest="discrete", action="store_true",
        help="frame/snippet units: length = end - start + 1 (the published convention on snippet indices)",
    )
    lengths.add_argument(
        "--continuous", dest="discrete", action="store_false",
        help="seconds: length = end - start (default, as result files hold seconds)",
    )
    parser.set_defaults(discrete=False)
    parser.add_argument(
        "--weight-field", metavar="NAME", default=None,
        help="use this per-detection field as the softmax weights instead of the score",
    )
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress on stderr")
    shown.add_argument(
        "--quiet", dest="progress", action="store_false",
        help=f"never show progress (default: shown for files of {PROGRESS_MIN_DETECTIONS:,}+ detections)",
    )
    parser.epilog = (
        "Exit status: 0 on success, 2 for a malformed input (the message names the video and the entry, "
        "counted from 0) or an unreadable file; nothing is written on failure. Compiled kernels can be "
        "kept between runs by setting JAX_COMPILATION_CACHE_DIR."
    )


def run(args: argparse.Namespace) -> int:
    """Run ``jaxfuse fuse``; returns the exit status."""
    try:
        fuse_detection_file(
            args.input,
            args.output,
            method=args.method,
            temperature=args.temperature,
            overlap=args.overlap,
            overlap_threshold=args.threshold,
            discrete=args.discrete,
            weight_field=args.weight_field,
            progress=args.progress,
        )
    except DetectionFileError as error:
        print(f"jaxfuse fuse: error: {args.input}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"jaxfuse fuse: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience for `python -m`
    parser = argparse.ArgumentParser(prog="jaxfuse fuse")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
