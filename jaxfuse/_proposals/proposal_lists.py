"""Ragged lists of items (one per (video, class)): padded into a few size buckets on the host, fused, mapped back per item."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import ArrayKind, array_kind, from_jax, is_traced
from jaxfuse._core.padding import geometric_size
from jaxfuse._core.validation import positive_int
from jaxfuse._proposals.fuse_proposals import FusedProposals, fuse_proposals


class PaddedProposals(NamedTuple):
    """Items of one size bucket, padded to a common N (numpy arrays).

    Attributes:
        segments: ``[B, N, 2]``.
        scores: ``[B, N]``.
        weights: ``[B, N]``, or None when no weights were given.
        valid: ``[B, N]`` bool.
        items: ``[B]`` int, each row's index in the caller's list.
        sizes: ``[B]`` int, each row's number of real proposals.
    """

    segments: np.ndarray
    scores: np.ndarray
    weights: np.ndarray | None
    valid: np.ndarray
    items: np.ndarray
    sizes: np.ndarray


def _require_concrete(*lists, what: str) -> None:
    """Ragged lists are bucketed on the host: traced items cannot be."""
    for items in lists:
        if items is not None and any(isinstance(x, jax.core.Tracer) for x in items):
            raise TypeError(
                f"{what} takes concrete arrays (it pads ragged items on the host), not traced ones; "
                "inside jax.jit, pad the items yourself and call fuse_proposals"
            )


def pack_proposals(
    segments_list: Sequence[Any],
    scores_list: Sequence[Any],
    weights_list: Sequence[Any] | None = None,
    *,
    min_size: int = 16,
    growth: int = 4,
    max_items: int | None = None,
) -> list[PaddedProposals]:
    """Pad ragged per-item proposals into a few batches of sizes ``min_size * growth**k``.

    Compiled kernels are specialised to shapes; bucketing item sizes means a
    dataset compiles a handful of shapes (one per bucket: 16, 64, 256, 1024
    for THUMOS14), not one per item. Items keep their list order within a
    bucket; buckets come out from small to large N.

    Why ``growth=4``: on a one-shot call compilation dominates. On 400
    THUMOS-like items (20 to 800 proposals), powers of four instead of two
    make 3 programs instead of 6: the first call of
    :func:`fuse_proposal_lists` in a fresh process takes 8.6 instead of 13.5
    CPU-seconds, for 7% more warm time (padding is at most 4x, 2x on average).

    Args:
        segments_list: per item, ``[n_i, 2]`` (numpy, JAX or lists).
        scores_list: per item, ``[n_i]``.
        weights_list: per item, ``[n_i]``, or None.
        min_size: the smallest padded N.
        growth: the ratio of consecutive padded sizes (2 pads less, compiles
            more shapes).
        max_items: split buckets into batches of at most this many items
            (bounds memory; each distinct batch height is one more compile).

    Returns:
        A list of :class:`PaddedProposals`.

    Raises:
        ValueError: lists of different lengths, or an item whose arrays have
            the wrong shapes.

    Example:
        >>> import numpy as np
        >>> batches = pack_proposals([np.zeros((3, 2)), np.zeros((40, 2))], [np.zeros(3), np.zeros(40)])
        >>> [(b.segments.shape, b.items.tolist()) for b in batches]
        [((1, 16, 2), [0]), ((1, 64, 2), [1])]
    """
    _require_concrete(segments_list, scores_list, weights_list, what="pack_proposals")
    count = len(segments_list)
    if len(scores_list) != count or (weights_list is not None and len(weights_list) != count):
        raise ValueError(
            f"`segments_list`, `scores_list` and `weights_list` must have one entry per item; got "
            f"{count}, {len(scores_list)}, {None if weights_list is None else len(weights_list)}"
        )
    segments_list = [np.asarray(s).reshape(-1, 2) if np.size(s) == 0 else np.asarray(s) for s in segments_list]
    scores_list = [np.asarray(q) for q in scores_list]
    weights_list = None if weights_list is None else [np.asarray(w) for w in weights_list]
    for i, (s, q) in enumerate(zip(segments_list, scores_list)):
        if s.ndim != 2 or s.shape[1] != 2:
            raise ValueError(f"`segments_list[{i}]` must have shape [n, 2], got {s.shape}")
        if q.shape != s.shape[:1]:
            raise ValueError(f"`scores_list[{i}]` must have shape {s.shape[:1]}, got {q.shape}")
        if weights_list is not None and weights_list[i].shape != s.shape[:1]:
            raise ValueError(f"`weights_list[{i}]` must have shape {s.shape[:1]}, got {weights_list[i].shape}")
    arrays = segments_list + scores_list + (weights_list or [])
    if max_items is not None:
        max_items = positive_int(max_items, "max_items")
    dtype = np.result_type(*(a.dtype for a in arrays)) if arrays else np.float32
    sizes = np.array([len(q) for q in scores_list], dtype=np.int64)
    min_size = positive_int(min_size, "min_size")
    growth = positive_int(growth, "growth")
    if growth < 2:
        raise ValueError(f"`growth` must be at least 2, got {growth}")
    padded = np.array([geometric_size(n, min_size, growth) for n in sizes], dtype=np.int64)
    batches = []
    for size in np.unique(padded):
        members = np.flatnonzero(padded == size)
        step = len(members) if max_items is None else int(max_items)
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            batch_segments = np.zeros((len(chunk), size, 2), dtype)
            batch_scores = np.zeros((len(chunk), size), dtype)
            batch_weights = None if weights_list is None else np.zeros((len(chunk), size), dtype)
            valid = np.arange(size)[None, :] < sizes[chunk][:, None]
            for row, item in enumerate(chunk):
                n = sizes[item]
                batch_segments[row, :n] = segments_list[item]
                batch_scores[row, :n] = scores_list[item]
                if batch_weights is not None:
                    batch_weights[row, :n] = weights_list[item]
            batches.append(PaddedProposals(batch_segments, batch_scores, batch_weights, valid, chunk, sizes[chunk]))
    return batches


def unpack_proposals(batches: Sequence[PaddedProposals], results: Sequence[FusedProposals]) -> list[FusedProposals]:
    """Per-item results, in the caller's item order, trimmed to each item's size.

    Args:
        batches: the output of :func:`pack_proposals`.
        results: one :func:`fuse_proposals` result per batch.

    Returns:
        One :class:`FusedProposals` of numpy arrays per item: ``segments
        [count, 2]``, ``scores``, ``valid``, ``leader``, ``result [count]``,
        ``spread [count, 2]``, parameters with ``[count, 2]`` fields,
        ``group [n]`` (the item's own proposals), ``count`` and
        ``item_result`` ints.

    Example:
        >>> import numpy as np, jaxfuse
        >>> segments = [np.array([[0, 10], [1, 11], [30, 40]], np.float32), np.array([[5, 6]], np.float32)]
        >>> scores = [np.array([0.9, 0.8, 0.7], np.float32), np.array([0.5], np.float32)]
        >>> batches = jaxfuse.pack_proposals(segments, scores)
        >>> fused = [jaxfuse.fuse_proposals(b.segments, b.scores, valid=b.valid) for b in batches]
        >>> [(item.count, item.group.tolist()) for item in jaxfuse.unpack_proposals(batches, fused)]
        [(2, [0, 0, 1]), (1, [0])]
    """
    per_item: dict[int, FusedProposals] = {}
    for batch, fused in zip(batches, results):
        fused = jax.tree.map(np.asarray, fused)
        for row, (item, n) in enumerate(zip(batch.items, batch.sizes)):
            count = int(fused.count[row])
            trim = lambda x, row=row, count=count: x[row, :count]  # noqa: E731
            per_item[int(item)] = FusedProposals(
                segments=trim(fused.segments),
                scores=trim(fused.scores),
                valid=trim(fused.valid),
                count=count,
                group=fused.group[row, :n],
                leader=trim(fused.leader),
                spread=trim(fused.spread),
                parameters=None if fused.parameters is None else jax.tree.map(trim, fused.parameters),
                result=trim(fused.result),
                item_result=int(fused.item_result[row]),
            )
    return [per_item[i] for i in range(len(per_item))]


def fuse_proposal_lists(
    segments_list: Sequence[Any],
    scores_list: Sequence[Any],
    weights_list: Sequence[Any] | None = None,
    *,
    min_size: int = 16,
    growth: int = 4,
    max_items: int | None = None,
    **fuse_options,
) -> list[FusedProposals]:
    """:func:`fuse_proposals` for a list of ragged items (one per (video, class)).

    Packs the items into power-of-two buckets (:func:`pack_proposals`), fuses
    each bucket in one call, and maps the results back per item
    (:func:`unpack_proposals`).

    Args:
        segments_list: per item, ``[n_i, 2]``.
        scores_list: per item, ``[n_i]``.
        weights_list: per item, ``[n_i]``, or None (the scores).
        min_size: the smallest padded N.
        growth: the ratio of consecutive padded sizes (see :func:`pack_proposals`).
        max_items: the most items per batch.
        **fuse_options: keyword arguments of :func:`fuse_proposals`.

    Returns:
        One :class:`FusedProposals` per item (see :func:`unpack_proposals`), of
        numpy arrays, or of JAX arrays when the items are JAX arrays.

    Example:
        >>> import numpy as np
        >>> out = fuse_proposal_lists([np.array([[0., 9.], [1., 9.]]), np.zeros((0, 2))],
        ...                           [np.array([0.9, 0.1]), np.zeros(0)], temperature=0.2)
        >>> [item.count for item in out]
        [1, 0]
    """
    kind = array_kind(*segments_list) if len(segments_list) else ArrayKind.NUMPY
    for name in ("temperature", "overlap_threshold"):
        if is_traced(fuse_options.get(name)):
            raise TypeError(
                f"fuse_proposal_lists cannot take a traced `{name}`: its per-item outputs are sized on the "
                "host from the counts. Pass a Python float, or pad the items and call fuse_proposals inside jit"
            )
    batches = pack_proposals(
        segments_list, scores_list, weights_list, min_size=min_size, growth=growth, max_items=max_items
    )
    results = [
        fuse_proposals(batch.segments, batch.scores, batch.weights, batch.valid, **fuse_options) for batch in batches
    ]
    per_item = unpack_proposals(batches, results)
    if kind is ArrayKind.NUMPY:
        return per_item
    return [from_jax(jax.tree.map(jnp.asarray, item), kind) for item in per_item]
