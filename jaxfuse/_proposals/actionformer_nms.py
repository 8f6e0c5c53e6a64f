"""ActionFormer's 1-D NMS and Soft-NMS (``libs/utils/csrc/nms_cpu.cpp``) as batched JAX kernels.

ActionFormer (Zhang et al., ECCV 2022) post-processes every (video, class) with
a C++ loop. These kernels reproduce that loop's arithmetic and its order of
operations on a padded batch ``[B, W]`` of items, one selection per item per
``lax.while_loop`` iteration:

* overlap ``inter / (area_i + area_j - inter)`` with ``area = end - start +
  1e-6`` and ``inter = max(0, min(ends) - max(starts))``, all in float32 in
  the C++ order, so threshold decisions agree bit for bit;
* Soft-NMS (its ``method == 2``): the selected proposal is the first position
  holding the largest remaining score, where positions are the C++ array's
  *after its swaps*: the selected one is swapped to the front of the
  remaining block and each dropped one (decayed score ``< min_score``) with
  the last live one. Equal scores are therefore resolved exactly as the C++
  resolves them; the kernel carries the permuted arrays, not an input order.
  The first selection is never checked against ``min_score`` (the C++ only
  drops proposals after decaying them), so an item whose scores are all
  below ``min_score`` keeps its best one. Carrying the permutation costs a
  scatter, two cumulative sums and four gathers per selection, so
  :func:`fast_soft_nms_batch` runs first, by input index, and flags the rows
  where equal scores met at a selection; only those need this kernel;
* hard NMS: proposals with ``score > min_score`` (when ``min_score > 0``), in
  descending score order, each suppressing later ones whose overlap is
  ``>= iou_threshold``. The C++ orders them with ``torch.sort`` (not stable:
  libstdc++'s introsort, which keeps equal scores in input order only up to
  16 elements); here the order is a ``priority`` array: the scores (equal
  ones by lower input index), or minus the ranks of the caller's own
  ``torch.sort`` to reproduce its order. Where the grouping entry picks the
  parallel rounds (:func:`jaxfuse._proposals.grouping_entry.grouping_method`), the same
  selections come from :func:`parallel_hard_nms_batch`;
* segment voting (``seg_voting`` of ``libs/utils/nms.py``) for the
  class-agnostic mode.

Selections stop after ``keep`` per item: the selected scores never increase
(decay only lowers scores), so ActionFormer's final top-``max_seg_num`` by score
never reaches past them, and the loop runs ``min(keep, kept)`` iterations
instead of the C++'s ``kept``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxfuse._core.rows import first_best, running_count
from jaxfuse._proposals.grouping_entry import grouping_method
from jaxfuse._proposals.parallel_grouping import finish_rows, greedy_leaders, tile_plan

# The C++ adds 1e-6 (a double literal, rounded to float32 by ATen's float add) to every length.
LENGTH_OFFSET = 1e-6


class Selections(NamedTuple):
    """Kept proposals of each item, in selection order.

    Attributes:
        index: ``[B, K]`` int32, the input index (within its row) of the
            ``j``-th kept proposal for ``j < count``; ``-1`` beyond.
        scores: ``[B, K]`` its score when selected (decayed, for Soft-NMS);
            ``-inf`` beyond ``count``.
        count: ``[B]`` int32, the number kept (at most ``K``).
    """

    index: jax.Array
    scores: jax.Array
    count: jax.Array


def lengths(starts, ends):
    return (ends - starts) + jnp.float32(LENGTH_OFFSET)


def overlap(start, end, length, starts, ends, all_lengths):
    """ActionFormer's 1-D IoU of one segment ``(start, end, length)`` with many, in the C++ order."""
    intersection = jnp.maximum(0.0, jnp.minimum(end, ends) - jnp.maximum(start, starts))
    return intersection / ((length + all_lengths) - intersection)


def _while_active(body, inputs, state):
    """``body`` until no row is active: one plain ``while_loop`` per program.

    Not :func:`jaxfuse._core.rows.compacted_while_loop`: its extra loop per
    halving stage doubled the compile time here (2.3 s to 5.8 s per bucket
    shape on the loaded 2-core CPU) and did not make warm runs faster, since
    a bucket's rows need similar numbers of selections (at most ``keep``).
    """
    return jax.lax.while_loop(lambda s: jnp.any(s.active), lambda s: body(inputs, s), state)


def _take(array, index):
    return jnp.take_along_axis(array, index[:, None], axis=1)[:, 0]


# ------------------------------------------------------------------ Soft-NMS


class _SoftState(NamedTuple):
    starts: jax.Array  # [b, W] the C++ arrays, permuted as the C++ permutes them
    ends: jax.Array
    scores: jax.Array  # positions < selected: the score at selection
    index: jax.Array  # [b, W] int32, input index at each position
    selected: jax.Array  # [b] the C++ loop counter i: positions [0, i) are chosen
    live: jax.Array  # [b] the C++ ``nsegs``: positions [i, live) are still candidates
    active: jax.Array  # [b] i < live and i < keep


def _soft_step(inputs, state: _SoftState) -> _SoftState:
    sigma, min_score, keep = inputs
    width = state.scores.shape[1]
    position = jnp.arange(width, dtype=jnp.int32)
    i, live = state.selected[:, None], state.live[:, None]
    active = state.active[:, None]
    remaining = (position >= i) & (position < live)
    # The C++ scans forward and replaces its best only on a strictly larger score.
    best, _ = first_best(jnp.where(remaining, state.scores, -jnp.inf))
    best = jnp.minimum(best, width - 1)
    at_i = jnp.minimum(state.selected, width - 1)

    # Swap the best with position i (on active rows only).
    def swapped(array):
        chosen, displaced = _take(array, best)[:, None], _take(array, at_i)[:, None]
        array_swapped = jnp.where(position == i, chosen, jnp.where(position == best[:, None], displaced, array))
        return jnp.where(active, array_swapped, array)

    starts, ends, scores, index = (swapped(a) for a in (state.starts, state.ends, state.scores, state.index))
    start, end = _take(starts, at_i)[:, None], _take(ends, at_i)[:, None]
    iou = overlap(start, end, lengths(start, end), starts, ends, lengths(starts, ends))
    rest = active & (position > i) & (position < live)
    scores = jnp.where(rest, scores * jnp.exp(-(iou * iou) / sigma), scores)
    dropped = rest & (scores < min_score)

    # The C++ moves each dropped proposal to the end of the live block, filling
    # its place with the last live one (re-examined there): the holes among the
    # first ``kept`` positions after i, lowest first, take the kept proposals
    # beyond them, highest position first.
    kept = jnp.sum(rest & ~dropped, axis=1, keepdims=True)
    boundary = i + kept
    hole = dropped & (position <= boundary)
    tail = rest & ~dropped & (position > boundary)
    hole_rank = jnp.cumsum(hole, axis=1) - 1
    tail_rank = jnp.sum(tail, axis=1, keepdims=True) - jnp.cumsum(tail, axis=1)
    rows = jnp.broadcast_to(jnp.arange(scores.shape[0])[:, None], scores.shape)
    tail_position = jnp.zeros_like(scores, dtype=jnp.int32).at[rows, jnp.where(tail, tail_rank, width)].set(
        jnp.broadcast_to(position, scores.shape), mode="drop"
    )
    source = jnp.where(hole, jnp.take_along_axis(tail_position, jnp.maximum(hole_rank, 0), axis=1), position)
    starts, ends, scores, index = (jnp.take_along_axis(a, source, axis=1) for a in (starts, ends, scores, index))

    step = state.active.astype(jnp.int32)
    selected = state.selected + step
    live = jnp.where(state.active, boundary[:, 0] + 1, state.live)
    return _SoftState(starts, ends, scores, index, selected, live, (selected < live) & (selected < keep[:, 0]))


def exact_soft_nms_batch(segments, scores, count, sigma, min_score, *, keep: int) -> Selections:
    """ActionFormer's Gaussian Soft-NMS on a padded batch (traceable).

    Args:
        segments: ``[B, W, 2]`` float32; row ``b``'s proposals at ``[0, count[b])``
            in the caller's order (the C++'s starting positions).
        scores: ``[B, W]`` float32.
        count: ``[B]`` int32, the number of proposals of each row.
        sigma: the decay ``exp(-iou**2 / sigma)``.
        min_score: a decayed score below it drops the proposal.
        keep: stop after this many selections per row (static).

    Returns:
        :class:`Selections` with ``K = keep``.
    """
    items, width = scores.shape
    keep_width = min(keep, width)
    if items == 0 or width == 0 or keep_width == 0:
        return Selections(
            jnp.full((items, keep_width), -1, jnp.int32), jnp.full((items, keep_width), -jnp.inf, scores.dtype),
            jnp.zeros((items,), jnp.int32),
        )
    per_row = lambda x, dtype: jnp.broadcast_to(jnp.asarray(x, dtype), (items, 1))  # noqa: E731
    inputs = (per_row(sigma, scores.dtype), per_row(min_score, scores.dtype), per_row(keep, jnp.int32))
    count = count.astype(jnp.int32)
    index = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (items, width))
    state = _SoftState(
        segments[..., 0], segments[..., 1], scores, index, jnp.zeros((items,), jnp.int32), count,
        (count > 0) & (keep > 0),
    )
    final = _while_active(_soft_step, inputs, state)
    chosen = jnp.arange(keep_width)[None, :] < final.selected[:, None]
    return Selections(
        jnp.where(chosen, final.index[:, :keep_width], -1),
        jnp.where(chosen, final.scores[:, :keep_width], -jnp.inf),
        final.selected,
    )


def _first_best_and_tie(scores):
    """:func:`first_best`, and whether another proposal holds the same best score."""
    index, has_best = first_best(scores)
    best = jnp.take_along_axis(scores, jnp.minimum(index, scores.shape[1] - 1)[:, None], axis=1)
    tie = jnp.sum(scores == best, axis=1) > 1
    return index, has_best, has_best & tie


class _FastSoftState(NamedTuple):
    scores: jax.Array  # [b, W] decayed scores of the candidates left, -inf for the others
    slot: jax.Array  # [b, W] int32 selection rank of each input, -1 until selected
    kept: jax.Array  # [b, W] each input's score when selected
    count: jax.Array  # [b]
    current: jax.Array  # [b] the proposal to select next
    active: jax.Array  # [b]
    tied: jax.Array  # [b] some selection had a rival of equal score


def _fast_soft_step(inputs, state: _FastSoftState) -> _FastSoftState:
    starts, ends, sigma, min_score, keep = inputs
    position = jnp.arange(starts.shape[1], dtype=jnp.int32)
    active = state.active[:, None]
    current = state.current[:, None]
    selected = (position == current) & active
    start, end = jnp.take_along_axis(starts, current, axis=1), jnp.take_along_axis(ends, current, axis=1)
    iou = overlap(start, end, lengths(start, end), starts, ends, lengths(starts, ends))
    # Guarded: a decay that underflows to 0 must not turn a -inf into NaN.
    decayed = jnp.where(state.scores > -jnp.inf, state.scores * jnp.exp(-(iou * iou) / sigma), -jnp.inf)
    decayed = jnp.where(selected | (decayed < min_score), -jnp.inf, decayed)
    scores = jnp.where(active, decayed, state.scores)
    slot = jnp.where(selected, state.count[:, None], state.slot)
    kept = jnp.where(selected, state.scores, state.kept)
    count = state.count + state.active.astype(jnp.int32)
    current, has_next, tie = _first_best_and_tie(scores)
    next_active = state.active & has_next & (count < keep[:, 0])
    return _FastSoftState(scores, slot, kept, count, current, next_active, state.tied | (next_active & tie))


def fast_soft_nms_batch(segments, scores, valid, sigma, min_score, *, keep: int) -> tuple[Selections, jax.Array]:
    """Soft-NMS by input index, and per row whether that can differ from the C++.

    Without equal scores at a selection, the C++'s positions never decide
    anything, and this O(W)-per-selection loop (no permutation to carry)
    gives exactly its result. Rows flagged ``tied`` must be rerun with
    :func:`exact_soft_nms_batch`.

    Returns:
        ``(Selections, tied [B] bool)``.
    """
    items, width = scores.shape
    keep_width = min(keep, width)
    if items == 0 or width == 0 or keep_width == 0:
        empty = Selections(
            jnp.full((items, keep_width), -1, jnp.int32), jnp.full((items, keep_width), -jnp.inf, scores.dtype),
            jnp.zeros((items,), jnp.int32),
        )
        return empty, jnp.zeros((items,), bool)
    per_row = lambda x, dtype: jnp.broadcast_to(jnp.asarray(x, dtype), (items, 1))  # noqa: E731
    inputs = (
        segments[..., 0], segments[..., 1], per_row(sigma, scores.dtype), per_row(min_score, scores.dtype),
        per_row(keep, jnp.int32),
    )
    # The first selection is not checked against min_score (the C++ drops only after decaying).
    live = jnp.where(valid, scores, -jnp.inf)
    current, has_first, tie = _first_best_and_tie(live)
    unset = jnp.full((items, width), -1, jnp.int32)
    state = _FastSoftState(live, unset, jnp.zeros_like(scores), jnp.zeros((items,), jnp.int32), current, has_first, tie)
    final = _while_active(_fast_soft_step, inputs, state)
    rows = jnp.broadcast_to(jnp.arange(items)[:, None], (items, width))
    target = jnp.where(final.slot >= 0, final.slot, keep_width)
    inputs_index = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (items, width))
    index = jnp.full((items, keep_width), -1, jnp.int32).at[rows, target].set(inputs_index, mode="drop")
    kept = jnp.full((items, keep_width), -jnp.inf, scores.dtype).at[rows, target].set(final.kept, mode="drop")
    return Selections(index, kept, final.count), final.tied


# ------------------------------------------------------------------ hard NMS


class _HardState(NamedTuple):
    remaining: jax.Array  # [b, W] scores of proposals neither kept nor suppressed, -inf otherwise
    slot: jax.Array  # [b, W] int32 selection rank of each input, -1 until kept
    count: jax.Array  # [b]
    current: jax.Array  # [b] the proposal to keep next
    active: jax.Array  # [b]


def _hard_step(inputs, state: _HardState) -> _HardState:
    starts, ends, threshold, keep = inputs
    position = jnp.arange(starts.shape[1], dtype=jnp.int32)
    current = state.current[:, None]
    selected = (position == current) & state.active[:, None]
    start, end = jnp.take_along_axis(starts, current, axis=1), jnp.take_along_axis(ends, current, axis=1)
    iou = overlap(start, end, lengths(start, end), starts, ends, lengths(starts, ends))
    suppressed = state.active[:, None] & (iou >= threshold)
    remaining = jnp.where(selected | suppressed, -jnp.inf, state.remaining)
    slot = jnp.where(selected, state.count[:, None], state.slot)
    count = state.count + state.active.astype(jnp.int32)
    current, has_next = first_best(remaining)
    return _HardState(remaining, slot, count, current, has_next & (count < keep[:, 0]))


def hard_nms_batch(segments, scores, priority, eligible, iou_threshold, *, keep: int) -> Selections:
    """ActionFormer's hard NMS on a padded batch (traceable).

    Args:
        segments: ``[B, W, 2]`` float32.
        scores: ``[B, W]`` float32.
        priority: ``[B, W]`` the processing order, highest first, equal
            values by lower index: the scores, or minus the rank a caller's
            sort gave (to follow that sort's order among equal scores).
        eligible: ``[B, W]`` bool: real proposals that pass the ``min_score`` filter.
        iou_threshold: suppress where ``iou >= iou_threshold``.
        keep: stop after this many selections per row (static).

    Returns:
        :class:`Selections` with ``K = keep``; scores are the input scores.
    """
    items, width = scores.shape
    keep_width = min(keep, width)
    if items == 0 or width == 0 or keep_width == 0:
        return Selections(
            jnp.full((items, keep_width), -1, jnp.int32), jnp.full((items, keep_width), -jnp.inf, scores.dtype),
            jnp.zeros((items,), jnp.int32),
        )
    per_row = lambda x, dtype: jnp.broadcast_to(jnp.asarray(x, dtype), (items, 1))  # noqa: E731
    starts, ends = segments[..., 0], segments[..., 1]
    inputs = (starts, ends, per_row(iou_threshold, scores.dtype), per_row(keep, jnp.int32))
    remaining = jnp.where(eligible, priority, -jnp.inf)
    current, has_next = first_best(remaining)
    unset = jnp.full((items, width), -1, jnp.int32)
    state = _HardState(remaining, unset, jnp.zeros((items,), jnp.int32), current, has_next)
    final = _while_active(_hard_step, inputs, state)
    rows = jnp.broadcast_to(jnp.arange(items)[:, None], (items, width))
    target = jnp.where(final.slot >= 0, final.slot, keep_width)
    inputs_index = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (items, width))
    index = jnp.full((items, keep_width), -1, jnp.int32).at[rows, target].set(inputs_index, mode="drop")
    kept_scores = jnp.take_along_axis(scores, jnp.maximum(index, 0), axis=1)
    return Selections(index, jnp.where(index >= 0, kept_scores, -jnp.inf), final.count)


def parallel_hard_nms_batch(segments, scores, priority, eligible, iou_threshold, *, keep: int) -> Selections:
    """:func:`hard_nms_batch` by parallel rounds (:mod:`jaxfuse._proposals.parallel_grouping`): the same selections.

    Hard NMS is the greedy grouping rule with ActionFormer's IoU and ``>=``:
    its selections are the rule's leaders in priority order, the first
    ``keep`` of them. Rows that do not converge within the round cap (or whose
    tile pairs do not fit) are rerun by :func:`hard_nms_batch`.
    """
    items, width = scores.shape
    keep_width = min(keep, width)
    if items == 0 or width == 0 or keep_width == 0:
        return hard_nms_batch(segments, scores, priority, eligible, iou_threshold, keep=keep)
    threshold = jnp.asarray(iou_threshold, scores.dtype)

    def related(start, end, starts, ends):
        return overlap(start, end, lengths(start, end), starts, ends, lengths(starts, ends)) >= threshold

    # The loop never selects a -inf priority; such a proposal neither leads nor counts.
    candidates = eligible & (priority > -jnp.inf)
    # Disjoint segments have IoU 0, which only a threshold <= 0 reaches.
    found = greedy_leaders(segments[..., 0], segments[..., 1], priority, candidates, related, 0.0, threshold <= 0,
                           tile_plan(items, width))
    is_leader = found.lead == jnp.arange(width, dtype=jnp.int32)
    number = running_count(is_leader) - 1
    rows = jnp.arange(items, dtype=jnp.int32)[:, None]
    slot = jnp.where(is_leader & (number < keep_width), number + rows * keep_width, items * keep_width)
    index = jnp.full((items * keep_width,), -1, jnp.int32).at[slot.reshape(-1)].set(found.order.reshape(-1),
                                                                                   mode="drop")
    index = index.reshape(items, keep_width)
    kept_scores = jnp.take_along_axis(scores, jnp.maximum(index, 0), axis=1)
    selections = Selections(index, jnp.where(index >= 0, kept_scores, -jnp.inf),
                            jnp.minimum(number[:, -1] + 1, keep_width).astype(jnp.int32))

    def sequential(*rows_inputs):
        return hard_nms_batch(*rows_inputs, iou_threshold, keep=keep)

    return finish_rows(sequential, (segments, scores, priority, eligible), selections, ~found.finished)


# ------------------------------------------------------------------ voting


def segment_voting(kept_segments, kept_valid, segments, scores, valid, voting_thresh):
    """ActionFormer's ``seg_voting``: each kept segment becomes the IoU x score weighted mean of its row's segments.

    Its IoU has no length offset, and its ``score_offset`` is computed but
    unused there, so it plays no part here either.

    Args:
        kept_segments: ``[B, K, 2]``.
        kept_valid: ``[B, K]`` bool.
        segments: ``[B, W, 2]`` every proposal of the row (also those below ``min_score``).
        scores: ``[B, W]``.
        valid: ``[B, W]`` bool.
        voting_thresh: neighbours with ``iou >= voting_thresh`` vote.

    Returns:
        ``[B, K, 2]`` refined segments (input segments where not ``kept_valid``).
    """
    start, end = kept_segments[..., 0:1], kept_segments[..., 1:2]
    starts, ends = segments[:, None, :, 0], segments[:, None, :, 1]
    intersection = jnp.maximum(jnp.minimum(end, ends) - jnp.maximum(start, starts), 0)
    iou = intersection / (((end - start) + (ends - starts)) - intersection)
    votes = (iou >= voting_thresh).astype(scores.dtype) * scores[:, None, :] * iou
    votes = jnp.where(valid[:, None, :], votes, 0)
    votes = votes / jnp.sum(votes, axis=2, keepdims=True)
    refined = jnp.einsum("bkw,bwc->bkc", votes, segments, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(kept_valid[..., None], refined, kept_segments)


@functools.partial(jax.jit, static_argnames=("soft", "exact", "keep", "voting"))
def select(
    segments, scores, priority, valid, iou_threshold, sigma, min_score, voting_thresh,
    *, soft: bool, exact: bool, keep: int, voting: bool,
):
    """One program per (shape, mode): Soft-NMS or hard NMS, then optional voting.

    ``priority`` orders hard NMS (see :func:`hard_nms_batch`); Soft-NMS ignores it.
    Soft-NMS runs :func:`fast_soft_nms_batch`, or with ``exact`` the
    position-tracking :func:`exact_soft_nms_batch` (for the rows the fast one flags).

    ``valid`` must be a prefix of each row (the packers in
    :mod:`jaxfuse.compat.actionformer` lay rows out so): Soft-NMS starts from
    the C++'s positions, which are the row order.

    Returns:
        ``(Selections, kept_segments [B, K, 2], tied [B])``: ``tied`` rows need
        the ``exact`` rerun (always False when ``exact`` or hard NMS).
    """
    tied = jnp.zeros(scores.shape[:1], bool)
    if soft and exact:
        selections = exact_soft_nms_batch(segments, scores, jnp.sum(valid, axis=1), sigma, min_score, keep=keep)
    elif soft:
        selections, tied = fast_soft_nms_batch(segments, scores, valid, sigma, min_score, keep=keep)
    else:
        eligible = valid & jnp.where(min_score > 0, scores > min_score, True)
        parallel = grouping_method(*scores.shape) == "parallel"
        nms = parallel_hard_nms_batch if parallel else hard_nms_batch
        selections = nms(segments, scores, priority, eligible, iou_threshold, keep=keep)
    kept_segments = jnp.take_along_axis(segments, jnp.maximum(selections.index, 0)[..., None], axis=1)
    if voting:
        kept_segments = segment_voting(kept_segments, selections.index >= 0, segments, scores, valid, voting_thresh)
    return selections, kept_segments, tied
