"""Greedy grouping of raw proposals (the published evaluation rule), batched over items.

For one item (a (video, class) pair) the rule is: take proposals in descending
score order; the best remaining one becomes a leader and absorbs every remaining
proposal whose overlap with it is strictly greater than the threshold; repeat.

The kernel is a ``lax.while_loop`` with one leader per item per iteration, run
on a whole batch ``[B, N]`` of items at once. Each iteration is O(N) per item:
the overlap of the leader with every proposal, then two reductions (the best
remaining score, then the first index holding it) that find the next leader.
Memory is O(B x N); no N x N matrix is ever formed.

Why it is built this way (measured on a 2-core CPU, THUMOS-like data):

* No sort. The next leader is the first index of the maximal remaining score,
  which is exactly the stable tie-break by input index; XLA's CPU sort of the
  scores alone costs more than the whole loop.
* No ``argmax``: its variadic (value, index) reduction is about 3x slower on
  CPU than a ``max`` followed by a ``min`` over the matching indices.
* The loop runs as many iterations as the item with the most groups needs,
  so items that finished early would be dragged along. Every time at most half
  the rows are still active, they are gathered into a batch half as tall and
  the loop continues there (log2(B) stages, all in one program). This halves
  the work on real data.

Tried and not kept (no gain, or slower, on the same data): integer score keys
as the only loop state, an item-minor ``[N, B]`` layout, reductions split into
small blocks, and narrowing each row to its unassigned columns under a
``lax.switch`` of widths (the conditional's buffer copies cost more than the
narrower loop saved).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import host_to_device, is_traced, warn_if_narrowed
from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode
from jaxfuse._core.rows import compacted_while_loop, first_best, gather_rows, running_count
from jaxfuse._core.validation import bool_array, choice, float_array

OVERLAP_MEASURES = ("candidate", "iou")

# Group id of proposals that take no part (invalid rows); above every real group
# so that ``group < 0`` alone means "still unassigned".
_NOT_A_CANDIDATE = np.iinfo(np.int32).max


class ProposalGroups(NamedTuple):
    """Groups found by the greedy rule, in leader order.

    Attributes:
        group: ``[..., N]`` int32, the group of each input proposal: group ``j``
            is led by the ``j``-th leader. ``-1`` for invalid proposals.
        leader: ``[..., N]`` int32, the input index of the ``j``-th leader for
            ``j < count``; ``-1`` beyond.
        count: ``[...]`` int32, the number of groups of each item.
    """

    group: jax.Array
    leader: jax.Array
    count: jax.Array


def overlap_settings(overlap: str, discrete: bool) -> tuple[bool, int]:
    """The measure and length convention as kernel arguments ``(use_iou, offset)``.

    They are passed as traced values rather than compile-time constants, so
    one compiled kernel per shape serves all four conventions.
    """
    return overlap == "iou", 1 if discrete else 0


def segment_overlap(leader_start, leader_end, starts, ends, use_iou, offset):
    """Overlap of leaders with candidate segments (broadcasting).

    Args:
        leader_start: leader starts, broadcastable to ``starts``.
        leader_end: leader ends, likewise.
        starts: candidate starts.
        ends: candidate ends.
        use_iou: bool scalar: intersection over union if True, else
            intersection / candidate length (the published measure).
        offset: 1 for the published frame convention (``length = end - start +
            1``, ``intersection = max(0, min(e) - max(s) + 1)``), 0 for
            continuous lengths.

    Returns:
        The overlaps, broadcast shape. A zero denominator (a zero-length
        candidate with continuous lengths) gives 0, so such a candidate is never
        absorbed by another leader; the published numpy code gives NaN there,
        which compares the same way.
    """
    # Same operations in the same order as the published numpy code, so that
    # float32 overlaps agree bit for bit and threshold decisions never differ
    # (adding an offset of 0 is exact).
    intersection = jnp.maximum(0, jnp.minimum(leader_end, ends) - jnp.maximum(leader_start, starts) + offset)
    candidate_length = ends - starts + offset
    union = candidate_length + (leader_end - leader_start + offset) - intersection
    denominator = jnp.where(use_iou, union, candidate_length)
    positive = denominator > 0
    return jnp.where(positive, intersection / jnp.where(positive, denominator, 1), 0)


# Compaction stops at this many rows: each stage is one more while loop to
# compile, and below a few dozen rows the wasted work is small. Measured on
# 400 THUMOS-like items (fuse_proposal_lists, CPU seconds in a fresh process):
# stopping at 16 rows instead of 4 cuts the first call from 19.2 s to 13.7 s
# for 7% more warm time (30.3 vs 28.4 ms); 32 rows or no compaction at all
# save a little more compile time but cost 28-56% warm.
_MIN_STAGE_ROWS = 16
# On first occurrences only (a few hundred columns at most) the late stages
# cost little either way: stopping at 64 rows saves two of the five loops'
# compilation (issue 12's detect workload: 3.6 -> 2.6 s to compile the
# grouping and fusion program) for the same warm time (7.7-8.0 ms, shared CPU).
_MIN_DISTINCT_STAGE_ROWS = 64


def leader_overlaps(starts, ends, leader, use_iou, offset):
    """``[B, N]`` overlap of each row's proposal ``leader [B]`` with all its proposals."""
    leader = leader[:, None]
    return segment_overlap(
        jnp.take_along_axis(starts, leader, axis=1), jnp.take_along_axis(ends, leader, axis=1),
        starts, ends, use_iou, offset,
    )


class _GroupingState(NamedTuple):
    group: jax.Array  # [b, N] int32: group id, -1 unassigned, _NOT_A_CANDIDATE invalid
    count: jax.Array  # [b] groups so far
    current: jax.Array  # [b] index of the leader to process next
    active: jax.Array  # [b] bool, whether ``current`` is a real leader


def _unassigned_scores(group, scores):
    return jnp.where(group < 0, scores, -jnp.inf)


def _grouping_step(inputs, state: _GroupingState) -> _GroupingState:
    """One iteration: the current leader of every active row absorbs its group."""
    starts, ends, scores, threshold, use_iou, offset = inputs
    overlaps = leader_overlaps(starts, ends, state.current, use_iou, offset)
    positions = jnp.arange(starts.shape[1], dtype=jnp.int32)
    # The leader joins its own group even when its self-overlap is not above
    # the threshold (threshold >= 1, or a zero-length continuous segment).
    # Inactive rows have no unassigned proposal left, so they absorb nothing.
    absorbed = (state.group < 0) & ((overlaps > threshold) | (positions == state.current[:, None]))
    group = jnp.where(absorbed, state.count[:, None], state.group)
    count = state.count + state.active.astype(jnp.int32)
    return _GroupingState(group, count, *first_best(_unassigned_scores(group, scores)))


def _leaders_of(group, scores, count):
    """Input index of each group's leader: its first member of maximal score.

    The leader had the best score of everything unassigned when it was picked,
    and ties went to the lowest index, so it is recovered after the loop with
    two segment reductions instead of a scatter in every iteration.
    """
    items, size = group.shape
    ids = jnp.where(group >= 0, group + size * jnp.arange(items)[:, None], items * size).reshape(-1)
    flat_scores = scores.reshape(-1)
    best = jax.ops.segment_max(flat_scores, ids, num_segments=items * size)
    is_best = flat_scores == best[jnp.minimum(ids, items * size - 1)]
    positions = jnp.tile(jnp.arange(size, dtype=jnp.int32), items)
    first = jax.ops.segment_min(jnp.where(is_best, positions, size), ids, num_segments=items * size)
    return jnp.where(jnp.arange(size) < count[:, None], first.reshape(items, size), -1).astype(jnp.int32)


def group_batch(segments, scores, valid, threshold, use_iou, offset, *, min_rows: int = _MIN_STAGE_ROWS) -> ProposalGroups:
    """The grouping kernel on a flat batch ``[B, N]`` (traceable; no validation).

    Args:
        segments: ``[B, N, 2]`` floats.
        scores: ``[B, N]`` ordering scores, finite where valid.
        valid: ``[B, N]`` bool.
        threshold: scalar; membership is ``overlap > threshold``.
        use_iou: bool scalar, see :func:`segment_overlap`.
        offset: 0 or 1, see :func:`segment_overlap`.
        min_rows: static, where row compaction stops (see :func:`compacted_while_loop`).

    Returns:
        :class:`ProposalGroups` with leading dim ``B``.
    """
    items, size = scores.shape
    if items == 0 or size == 0:
        unset = jnp.full((items, size), -1, jnp.int32)
        return ProposalGroups(unset, unset, jnp.zeros((items,), jnp.int32))
    dtype = segments.dtype
    # Scalars ride along as per-row inputs so that compaction can slice them too.
    per_row = lambda x, dtype: jnp.broadcast_to(jnp.asarray(x, dtype), (items, 1))  # noqa: E731
    inputs = (
        segments[..., 0], segments[..., 1], scores,
        per_row(threshold, dtype), per_row(use_iou, bool), per_row(offset, dtype),
    )
    group = jnp.where(valid, -1, _NOT_A_CANDIDATE).astype(jnp.int32)
    state = _GroupingState(group, jnp.zeros((items,), jnp.int32), *first_best(_unassigned_scores(group, scores)))
    final = compacted_while_loop(_grouping_step, inputs, state, min_rows=min_rows)
    group = jnp.where(valid, final.group, -1)
    return ProposalGroups(group, _leaders_of(group, scores, final.count), final.count)


_group_batch_jit = jax.jit(group_batch)


def group_batch_distinct(segments, scores, valid, first_slot, threshold, use_iou, offset, *, num_distinct: int,
                         kernel: Callable | None = None):
    """:func:`group_batch` for batches where many proposals repeat an earlier one (traceable).

    CAS proposals repeat: the same run, found at several levels, gives the same
    segment and scores each time (3 of every 5 proposals on THUMOS-like data).
    A repeat joins whatever group its first occurrence joins: it is tied with
    it on score and comes later (so it never leads before it), and its
    overlap with every leader is the same, with itself too (1 for a
    segment of positive length). So the greedy loop runs on the first
    occurrences alone, ``num_distinct`` columns instead of ``N``, and every
    repeat is given its first occurrence's group. Leaders are first
    occurrences (the first index among tied scores), so the result equals
    :func:`group_batch` on all proposals exactly. A repeat whose overlap with
    itself is not above the threshold (zero length with continuous lengths,
    or a threshold of 1) would not join its first occurrence: it is grouped
    as a proposal of its own.

    Args:
        segments, scores, valid, threshold, use_iou, offset: as :func:`group_batch`.
        first_slot: ``[B, N]`` int32, the index of the first proposal with the
            same segment and scores (its own index for a first occurrence
            and for invalid slots); as returned by the CAS run finder.
        num_distinct: static, at most ``N`` and at least every item's number
            of valid proposals grouped on their own (first occurrences, and
            the repeats above); with fewer, the proposals past it join no
            group.

    Returns:
        :class:`ProposalGroups` with leading dim ``B``, equal to
        ``group_batch(segments, scores, valid, ...)``.
    """
    items, size = scores.shape
    positions = jnp.arange(size, dtype=jnp.int32)
    starts, ends = segments[..., 0], segments[..., 1]
    # A repeat that its first occurrence would not absorb (a zero-length
    # continuous segment, a threshold of 1) is grouped on its own.
    absorbed_by_first = segment_overlap(starts, ends, starts, ends, use_iou, offset) > threshold
    own_slot = jnp.where(absorbed_by_first, first_slot, positions)
    is_first = valid & (own_slot == positions)
    running = running_count(is_first)
    # Compact the first occurrences to the front, in index order (so ties
    # still go to the lower index), with one flat scatter; the rest go to a
    # spare slot past the end.
    spare = items * num_distinct
    row_offset = jnp.arange(items, dtype=jnp.int32)[:, None] * num_distinct
    target = jnp.where(is_first & (running <= num_distinct), running - 1 + row_offset, spare)
    source = jnp.zeros((spare + 1,), jnp.int32).at[target.reshape(-1)].set(
        jnp.broadcast_to(positions, (items, size)).reshape(-1), mode="promise_in_bounds"
    )[:spare].reshape(items, num_distinct)
    distinct_valid = jnp.arange(num_distinct, dtype=jnp.int32) < running[:, -1:]
    distinct_segments = jnp.stack([gather_rows(starts, source), gather_rows(ends, source)], -1)
    kernel = functools.partial(group_batch, min_rows=_MIN_DISTINCT_STAGE_ROWS) if kernel is None else kernel
    distinct = kernel(distinct_segments, gather_rows(scores, source), distinct_valid, threshold, use_iou, offset)
    # The groups back at the first occurrences' own slots (a scatter, so the
    # result is in memory), then each proposal reads its first occurrence's.
    slots = items * size
    at_slot = jnp.where(distinct_valid, source + jnp.arange(items, dtype=jnp.int32)[:, None] * size, slots)
    group_at_slot = jnp.full((slots + 1,), -1, jnp.int32).at[at_slot.reshape(-1)].set(
        distinct.group.reshape(-1), mode="promise_in_bounds"
    )[:slots].reshape(items, size)
    group = jnp.where(valid, gather_rows(group_at_slot, own_slot), -1)
    leader = jnp.where(distinct.leader >= 0, gather_rows(source, jnp.maximum(distinct.leader, 0)), -1)
    leader = jnp.pad(leader, ((0, 0), (0, size - num_distinct)), constant_values=-1)
    return ProposalGroups(group, leader, distinct.count)


def item_codes(segments, scores, valid, extra=()) -> jax.Array:
    """``[B]`` int32 per item: ``NONFINITE_INPUT`` or ``INVALID_INPUT`` (start > end) if a valid proposal has one.

    Only traced input (inside a caller's ``jit``) can reach the kernels with
    such values; concrete input is rejected with an error first.
    """
    masks = _problem_masks(jnp, segments, scores, valid, extra)
    nonfinite = masks[0]
    for mask in masks[2:]:
        nonfinite = nonfinite | mask
    code = jnp.where(
        jnp.any(nonfinite, axis=-1), ResultCode.NONFINITE_INPUT,
        jnp.where(jnp.any(masks[1], axis=-1), ResultCode.INVALID_INPUT, ResultCode.SUCCESSFUL),
    )
    return code.astype(RESULT_DTYPE)


def threshold_code(threshold) -> jax.Array:
    """``INVALID_OPTION`` for a (traced) overlap threshold outside [0, 1] or NaN, else ``SUCCESSFUL``."""
    ok = (threshold >= 0) & (threshold <= 1)
    return jnp.where(ok, ResultCode.SUCCESSFUL, ResultCode.INVALID_OPTION).astype(RESULT_DTYPE)


def proposal_flags(segments, scores, valid, extra):
    """Which value checks fail anywhere, and each item's code; the grouping leaves bad proposals out."""
    codes = item_codes(segments, scores, valid, extra)
    bad = _problem_masks(jnp, segments, scores, valid, extra)
    sound = valid
    for mask in bad:
        sound = sound & ~mask
    return value_problems(segments, scores, valid, extra), codes, sound


# --------------------------------------------------------------------- validation


def _problem_masks(xp, segments, scores, valid, extra):
    """Per check, where a valid proposal fails it: non-finite segment, start > end, non-finite scores/extra."""
    starts, ends = segments[..., 0], segments[..., 1]
    finite_segments = xp.isfinite(starts) & xp.isfinite(ends)
    return [
        valid & ~finite_segments,
        valid & finite_segments & (starts > ends),
        valid & ~xp.isfinite(scores),
    ] + [valid & ~xp.isfinite(array) for array in extra]


def value_problems(segments, scores, valid, extra=()) -> jax.Array:
    """``[3 + len(extra)]`` bool: which value checks fail anywhere (traceable, for device-side checks)."""
    return jnp.stack([jnp.any(mask) for mask in _problem_masks(jnp, segments, scores, valid, extra)])


def raise_for_value_problems(found, segments, scores, valid, extra=()) -> None:
    """Raise the ``ValueError`` that :func:`value_problems` flags, naming the argument and an index.

    Args:
        found: the concrete flags of :func:`value_problems` (or None to compute them here).
        segments: ``[..., N, 2]``.
        scores: ``[..., N]``.
        valid: ``[..., N]`` bool.
        extra: ``(name, array)`` pairs of further ``[..., N]`` float arrays that
            must be finite where valid (e.g. the weights).

    Raises:
        ValueError: for the first failed check.
    """
    if found is not None and not np.asarray(found).any():
        return
    # The error path only: everything to the host.
    host = lambda x: np.asarray(x)  # noqa: E731
    segments, scores, valid = host(segments), host(scores), host(valid)
    extra = [(name, host(array)) for name, array in extra]
    with np.errstate(invalid="ignore"):
        masks = _problem_masks(np, segments, scores, valid, [array for _, array in extra])
    for kind, mask in enumerate(masks):
        if not mask.any():
            continue
        index = tuple(int(i) for i in np.argwhere(mask)[0])
        if kind == 0:
            raise ValueError(f"`segments` must be finite; the proposal at index {index} is {segments[index].tolist()}")
        if kind == 1:
            raise ValueError(
                f"`segments` must have start <= end; the proposal at index {index} is "
                f"{segments[index].tolist()} (swap the columns or mark it invalid)"
            )
        name, array = ("scores", scores) if kind == 2 else extra[kind - 3]
        raise ValueError(f"`{name}` must be finite where valid; got {float(array[index])} at index {index}")


def _float_input(x: Any, name: str, min_ndim: int):
    """numpy stays numpy (checked on the host), everything else becomes JAX."""
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
        if x.ndim < min_ndim:
            raise ValueError(f"`{name}` must have at least {min_ndim} dimensions, got shape {x.shape}")
        return x
    return float_array(x, name, min_ndim=min_ndim)


class ProposalInputs(NamedTuple):
    """Validated proposal arrays.

    Attributes:
        segments: ``[..., N, 2]`` JAX array.
        scores: ``[..., N]``, same float dtype.
        valid: ``[..., N]`` bool.
        extra: the ``extra`` arrays of :func:`validate_proposals`, same dtype (None kept).
        check_on_device: True when the value checks are still to be done:
            the input lives on a device, so they run inside the kernel (see
            :func:`value_problems`) rather than as a separate round trip.
    """

    segments: jax.Array
    scores: jax.Array
    valid: jax.Array
    extra: tuple
    check_on_device: bool


def validate_proposals(segments: Any, scores: Any, valid: Any = None, extra=()) -> ProposalInputs:
    """Shapes and dtypes of a proposal batch, checked before tracing; values too for numpy input.

    Args:
        segments: ``[..., N, 2]`` floats (start, end).
        scores: ``[..., N]`` floats.
        valid: optional ``[..., N]`` bool.
        extra: ``(name, array)`` pairs of further optional ``[..., N]`` float
            arrays (None allowed), checked like ``scores``.

    Returns:
        :class:`ProposalInputs`.

    Raises:
        TypeError: a non-float array, or a non-bool ``valid``.
        ValueError: a wrong shape; for numpy input also a non-finite value or
            ``start > end`` in a valid proposal. The message names the argument.
    """
    segments = _float_input(segments, "segments", 2)
    if segments.shape[-1] != 2:
        raise ValueError(f"`segments` must have shape [..., N, 2] (start, end), got {segments.shape}")
    checked = [("scores", _float_input(scores, "scores", 1))]
    checked += [(name, None if x is None else _float_input(x, name, 1)) for name, x in extra]
    for name, array in checked:
        if array is not None and array.shape != segments.shape[:-1]:
            raise ValueError(f"`{name}` must have shape {segments.shape[:-1]} (one per segment), got {array.shape}")
    if valid is None:
        valid = np.ones(segments.shape[:-1], bool)
    elif isinstance(valid, np.ndarray):
        if valid.dtype != np.bool_:
            raise TypeError(f"`valid` must be a bool array, got dtype {valid.dtype}")
        if valid.shape != segments.shape[:-1]:
            raise ValueError(f"`valid` must have shape {segments.shape[:-1]}, got {valid.shape}")
    else:
        valid = bool_array(valid, "valid", segments.shape[:-1])
    present = [(name, array) for name, array in checked[1:] if array is not None]
    arrays = [segments, valid, checked[0][1]] + [array for _, array in present]
    on_host = all(isinstance(array, np.ndarray) for array in arrays)
    if on_host and valid.any():
        raise_for_value_problems(None, segments, checked[0][1], valid, present)
    # Canonical: float64 input without x64 becomes float32, as jnp.asarray does, with a warning (once).
    requested = np.result_type(*(a.dtype for _, a in checked if a is not None), segments.dtype)
    warn_if_narrowed(requested)
    dtype = jax.dtypes.canonicalize_dtype(requested)

    def convert(x):
        if x is None or (isinstance(x, jax.Array) and x.dtype == dtype):
            return x  # no conversion op: each one is a dispatch
        return host_to_device(x, dtype) if isinstance(x, np.ndarray) else jnp.asarray(x, dtype)

    return ProposalInputs(
        convert(segments),
        convert(checked[0][1]),
        valid if isinstance(valid, jax.Array) else host_to_device(np.asarray(valid)),
        tuple(convert(array) for _, array in checked[1:]),
        check_on_device=not on_host and not is_traced(*arrays),
    )


def validate_threshold(value: Any) -> Any:
    """An overlap threshold in [0, 1] (traced values pass through; the kernels give them a result code).

    Overlaps (candidate or IoU) lie in [0, 1]: a negative threshold would merge
    disjoint segments, one of 1 or more merges nothing but the leader.
    """
    if isinstance(value, jax.core.Tracer):
        return value
    array = np.asarray(value)
    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"`overlap_threshold` must be a real scalar, got {value!r}")
    if not np.isfinite(array) or not 0 <= float(array) <= 1:
        raise ValueError(f"`overlap_threshold` must lie in [0, 1] (overlaps do), got {value!r}")
    return float(array)


def validate_overlap(overlap: Any, discrete: Any) -> tuple[str, bool]:
    """The overlap measure and length convention, checked."""
    choice(overlap, "overlap", OVERLAP_MEASURES)
    if not isinstance(discrete, (bool, np.bool_)):
        raise TypeError(f"`discrete` must be a bool, got {discrete!r}")
    return overlap, bool(discrete)
