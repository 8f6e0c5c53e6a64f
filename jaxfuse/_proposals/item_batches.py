"""Packing the (video, label) items of a detection table into padded batches: power-of-two sizes, small buckets merged upwards, one batch height per size."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from jaxfuse._core.padding import MERGE_PADDING_BUDGET, bucket_size, merged_buckets
from jaxfuse._proposals.proposal_lists import PaddedProposals
from jaxfuse.formats.activitynet import DetectionTable

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


class TableItems(NamedTuple):
    """The (video, label) items of a table, each a run of the label-sorted detections."""

    order: np.ndarray  # [P] detection indices, sorted by (video, label code), file order within
    starts: np.ndarray  # [I] first position of each item in ``order``
    sizes: np.ndarray  # [I] detections per item
    video: np.ndarray  # [I] video index of each item
    label: np.ndarray  # [I] label code of each item


def table_items(table: DetectionTable) -> TableItems:
    total = table.scores.size
    video_of = np.repeat(np.arange(table.counts.size, dtype=np.int64), table.counts)
    key = video_of * max(len(table.labels), 1) + table.label_codes
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]]) if total else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, total])
    first = order[starts]
    return TableItems(order, starts, sizes, video_of[first], table.label_codes[first])


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
    :func:`jaxfuse.pack_proposals` with ``growth=2`` (power-of-two sizes,
    smallest first, items in order within a bucket), with two differences
    that save compiles (merging small buckets upwards does here, for a file's
    known size distribution, what ``pack_proposals``' default ``growth=4``
    does blindly):

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
    item_padded = _padded_sizes(sizes, min_size, merge_budget)
    batches = []
    for size in np.unique(item_padded).tolist():
        members = np.flatnonzero(item_padded == size)
        height = rows(size, members.size)
        for first in range(0, members.size, height):
            batches.append(_pack_batch(segments, scores, weights, starts, sizes, members[first : first + height], size, height))
    return batches


def _padded_sizes(sizes: np.ndarray, min_size: int, merge_budget: int) -> np.ndarray:
    """Each item's padded size: its power-of-two bucket, after merging small buckets upwards."""
    padded_of = {n: bucket_size(n, min_size) for n in np.unique(sizes).tolist()}
    item_padded = np.fromiter((padded_of[n] for n in sizes.tolist()), np.int64, sizes.size)
    buckets, counts = np.unique(item_padded, return_counts=True)
    target = merged_buckets(dict(zip(buckets.tolist(), counts.tolist())), merge_budget)
    return np.fromiter((target[n] for n in item_padded.tolist()), np.int64, sizes.size)


def _pack_batch(segments, scores, weights, starts, sizes, chunk: np.ndarray, size: int, height: int) -> PaddedProposals:
    """Items ``chunk`` as one ``[height, size]`` batch, with one fancy-indexed copy per array; empty rows top it up."""
    chunk_sizes = sizes[chunk]
    row = np.repeat(np.arange(chunk.size), chunk_sizes)
    column = np.arange(row.size) - np.repeat(np.cumsum(chunk_sizes) - chunk_sizes, chunk_sizes)
    source = np.repeat(starts[chunk], chunk_sizes) + column

    def padded(values: np.ndarray | None, *tail: int) -> np.ndarray | None:
        if values is None:
            return None
        out = np.zeros((height, size, *tail), values.dtype)
        out[row, column] = values[source]
        return out

    valid = np.zeros((height, size), bool)
    valid[row, column] = True
    topped_up = lambda x, fill: np.concatenate([x, np.full(height - chunk.size, fill, x.dtype)])  # noqa: E731
    return PaddedProposals(
        padded(segments, 2), padded(scores), padded(weights), valid, topped_up(chunk, -1), topped_up(chunk_sizes, 0)
    )
