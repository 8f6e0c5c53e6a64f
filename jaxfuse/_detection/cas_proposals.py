"""Temporal action proposals from class activation sequences (CAS), on device.

Weakly supervised TAL turns a CAS (one activation per snippet and class) into
proposals by thresholding it at many levels: every maximal run of consecutive
snippets above a level is a proposal, scored by the contrast between the mean
activation inside the run and in a margin around it (SPEC, "Where proposals
come from in weakly supervised TAL"). The usual implementation is a Python loop
per (video, class, threshold, run); here every run of every threshold of every
sequence is found and scored at once:

* a run of at least ``min_length`` snippets starts where the previous snippet
  is not above the level and the minimum of the next ``min_length`` is. A
  snippet is above level ``t`` exactly when more levels lie strictly below
  it than below level ``t``, so one count per snippet (levels below it) and
  one per level replace the (threshold, snippet) comparisons: the starts of
  snippet ``i`` are the levels whose rank lies in a range read from ``[L]``
  counts;
* starts are compacted in (threshold, position) order into a static number
  of slots by their rank among the sequence's starts (a running count made
  of small triangular matrix products, :func:`jaxfuse._core.rows.running_count`,
  several times faster than ``cumsum`` on CPU) and one flat scatter; each
  run's last snippet is then found from its start by binary lifting on range
  minima of the counts (``log2 L`` lookups per proposal);
* the same run found at several levels (the same segment and scores) is
  marked with the slot of its first occurrence, for grouping it once
  (:func:`jaxfuse._proposals.grouping.group_batch_distinct`, used by :func:`jaxfuse.detect`);
* inner and outer sums are differences of prefix sums, O(1) per proposal. The
  prefix sums carry a running correction for their own rounding errors
  (hi + lo), so a short run's sum far into a long float32 sequence keeps
  float32 accuracy instead of losing it to the size of the running total.

Conventions, as checked against the published GauFuse_WSTAL code
(``utils/utils.py``, ``generate_segs_eval``):

* A snippet is above a threshold when ``cas > threshold`` (strict). This is
  the published comparison, and with ``>=`` a threshold of 0 would turn every
  zero-activation snippet into an action.
* The published loop finds runs with ``diff([0, cas > thr, 0])``, whose ``-1``
  entries sit one past the last snippet of a run. It then uses that exclusive
  end ``e`` as if it were the last snippet: the inner mean covers
  ``cas[s:e + 1]`` (one snippet past the run, except at the end of the video),
  the proposal is ``[s, e + 1)``, the right margin starts at ``e + 1`` (one
  snippet after the run is skipped) and ends at ``len(cas) - 1`` at the latest
  (the last snippet of the video is never in a margin). Its margins are
  ``max(0, int(s - m))`` and ``int(e + m + 1)``, which give ``ceil(m)``
  snippets on the left and ``floor(m)`` on the right. ``convention="spec"``
  (default) computes what the SPEC and the paper describe instead: the
  proposal is the run itself and the margins are symmetric;
  ``convention="published"`` reproduces the published loop exactly, for
  comparing with published numbers.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxfuse._core.interop import array_kind, from_jax, is_traced
from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode, repr_with_code_names
from jaxfuse._core.rows import gather_rows, running_count
from jaxfuse._core.settings import MARGIN_POWER, MARGIN_SCALE
from jaxfuse._core.validation import checked_length, choice, float_array, positive_int
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache

CONVENTIONS = ("spec", "published")
MARGIN_ROUNDINGS = ("ceil", "floor")


class CasProposals(NamedTuple):
    """Proposals of a batch of class activation sequences, padded to a static count.

    ``[...]`` is the batch shape: the leading dimensions of ``cas`` (with
    ``classes_last=True``, the video dimensions followed by the class). ``P``
    is the number of proposal slots (``max_proposals``). Slots are filled in
    order of threshold index, then start snippet; the first ``count`` slots of
    each sequence are real proposals and the rest are padding (zeros, and
    ``threshold_index == -1``).

    Attributes:
        segments: ``[..., P, 2]`` float, ``(start, end)`` in snippets, end
            exclusive: the run covers snippets ``start .. end - 1``. (With
            ``convention="published"`` the end is one snippet further, as in
            the published code.) Same dtype as ``inner``.
        inner: ``[..., P]`` mean of the CAS over the proposal.
        outer: ``[..., P]`` mean of the CAS over the margins on both sides of
            the proposal, clipped to the video; 0 where both margins are empty.
        contrast: ``[..., P]`` ``inner - outer``, the ranking score.
        threshold_index: ``[..., P]`` int32 index into ``thresholds`` of the
            level that produced the proposal; -1 in padding.
        valid: ``[..., P]`` bool, which slots hold real proposals.
        count: ``[...]`` int32, number of proposals returned
            (``valid.sum(-1)``).
        num_found: ``[...]`` int32, number of proposals found. It exceeds
            ``count`` when ``max_proposals`` was too small and the proposals
            after the first ``P`` (in slot order) were dropped.
        result: ``[...]`` int32 :class:`jaxfuse.ResultCode` of each sequence.
            ``SUCCESSFUL`` for every concrete call (bad values raise there).
            Inside a caller's ``jit``, where values cannot be checked before
            tracing: ``NONFINITE_INPUT`` for a sequence with a NaN or inf
            inside its video, ``INVALID_OPTION`` for every sequence when a
            traced level is NaN. Such a sequence has no proposals: ``count``
            and ``num_found`` 0, every slot padding (zeros).
    """

    segments: Any
    inner: Any
    outer: Any
    contrast: Any
    threshold_index: Any
    valid: Any
    count: Any
    num_found: Any
    result: Any

    __repr__ = repr_with_code_names  # result codes by name; still a NamedTuple (a pytree)

    @property
    def truncated(self):
        """``[...]`` bool: whether proposals were dropped for lack of slots."""
        return self.num_found > self.count


def max_runs_per_threshold(num_snippets: int, min_length: int) -> int:
    """Most runs of at least ``min_length`` snippets that fit in ``num_snippets``.

    ``n`` runs need ``n * min_length`` snippets plus ``n - 1`` separating ones,
    so ``n <= (num_snippets + 1) / (min_length + 1)``; the pattern
    ``XX.XX.XX`` (``min_length=2``) reaches the bound.

    Args:
        num_snippets: sequence length ``L``.
        min_length: shortest run that counts as a proposal.

    Returns:
        ``(num_snippets + 1) // (min_length + 1)``.

    Example:
        >>> max_runs_per_threshold(8, 2)
        3
    """
    return (num_snippets + 1) // (min_length + 1)


@functools.lru_cache(maxsize=64)
def _margin_widths(num_snippets: int, scale: float, power: float, rounding: str) -> np.ndarray:
    """Margin width in whole snippets for every run length ``0 .. num_snippets``.

    Computed on the host with Python floats, i.e. in float64 exactly as the
    published ``0.0785 * (len ** 0.9)``, so the rounding of a margin that is
    nearly a whole number never depends on the CAS dtype. Widths are capped at
    ``num_snippets``: a margin is clipped to the video anyway.
    """
    widths = np.zeros(num_snippets + 1, dtype=np.int32)
    round_to_int = math.ceil if rounding == "ceil" else math.floor
    for run_length in range(1, num_snippets + 1):
        margin = min(scale * run_length**power, float(num_snippets))
        widths[run_length] = round_to_int(margin)
    return widths


def _prefix_sums(values):
    """Prefix sums ``[0, v0, v0 + v1, ...]`` along the last axis of ``values [B, L]``, as (hi, lo).

    ``hi`` is the plain running sum, whose rounding errors grow with the
    running total: a short window far into a long float32 sequence would lose
    digits to it. ``lo`` is the running sum of each step's error
    ``v_i - (hi_i - hi_(i-1))``, whatever order XLA added in. Once the total
    dominates ``v_i`` the two running sums are within a factor two of each
    other, so their difference, and the error, are computed exactly
    (Sterbenz); while it does not, the error is rounded at the scale of
    ``v_i`` itself. So ``(hi[b] - hi[a]) + (lo[b] - lo[a])`` is the window
    sum to a few ulps of the window's own values.
    """
    zero = jnp.zeros(values.shape[:-1] + (1,), values.dtype)
    hi = jnp.concatenate([zero, jnp.cumsum(values, axis=-1)], axis=-1)
    step_error = values - (hi[..., 1:] - hi[..., :-1])
    lo = jnp.concatenate([zero, jnp.cumsum(step_error, axis=-1)], axis=-1)
    return hi, lo


def _window_min_count(counts, window: int):
    """Minimum of ``counts [B, L]`` over ``i .. i + window - 1``; positions past the end count as 0."""
    padded = jnp.pad(counts, ((0, 0), (0, window - 1)))
    # The init value must be an int32 array: a Python int is int64 under jax_enable_x64.
    return lax.reduce_window(padded, np.int32(np.iinfo(np.int32).max), lax.min, (1, window), (1, 1), "VALID")


def _compact_starts(lowest, highest, level_rank, spacing: int, num_slots: int):
    """Where the run starts are, in (threshold, position) order.

    A run starts at snippet ``i`` at every level ``t`` with ``lowest[i] <=
    level_rank[t] < highest[i]`` (``lowest``, ``highest``: ``[B, L]``;
    ``level_rank``: ``[T]``). Two starts of one level are at least ``spacing``
    apart, so each chunk of ``spacing`` positions holds at most one:
    compacting chunks instead of positions divides the running count and the
    scatter (the costly parts) by ``spacing``. The flags are made per chunk
    from the ``[B, L]`` ranges, straight in the running count's float layout
    (no ``[B, T, L]`` boolean in memory). Each start's slot is its rank among
    its sequence's starts; ranks past the last slot are dropped.

    Returns:
        ``[B, num_slots]`` int32 indices ``t * L + position`` (0 in unused
        slots), ``[B]`` int32 numbers of starts, and ``[B, T * chunks]``
        int32 running counts of the chunks with a start (its slot plus one).
    """
    batch, length = lowest.shape
    num_rows = level_rank.shape[0]
    num_chunks = -(-length // spacing)
    # Padding positions have an empty range: no start.
    pad = lambda x: jnp.pad(x, ((0, 0), (0, num_chunks * spacing - length))).reshape(batch, 1, num_chunks, spacing)  # noqa: E731
    rank = level_rank.reshape(1, num_rows, 1, 1)
    chunks = (pad(lowest) <= rank) & (rank < pad(highest))  # [B, T, chunks, spacing]
    # At most one start per chunk: one reduction gives its offset plus one, or
    # 0 without a start, so the comparisons are made once (argmax is slower).
    start_code = jnp.max(chunks * jnp.arange(1, spacing + 1, dtype=jnp.int32), axis=-1)  # [B, T, chunks]
    chunk_has_flag = (start_code > 0).reshape(batch, num_rows * num_chunks)
    row = jnp.arange(num_rows, dtype=jnp.int32)[:, None] * length
    chunk_start = jnp.arange(num_chunks, dtype=jnp.int32)[None, :] * spacing
    index_in_sequence = (row + chunk_start + start_code - 1).reshape(batch, num_rows * num_chunks)
    running = running_count(chunk_has_flag)
    slot = running - 1
    # One flat scatter for the whole batch (a batched, vmapped scatter is
    # several times slower on CPU). Flags without a slot go to one spare slot
    # past the end, so every index is in bounds: no bounds checks (about a
    # third of the scatter's time).
    keep = chunk_has_flag & (slot < num_slots)
    sequence_offset = jnp.arange(batch, dtype=jnp.int32)[:, None] * num_slots
    spare = batch * num_slots
    target = jnp.where(keep, slot + sequence_offset, spare).reshape(-1)
    slots = jnp.zeros((spare + 1,), jnp.int32).at[target].set(index_in_sequence.reshape(-1), mode="promise_in_bounds")
    return slots[:spare].reshape(batch, num_slots), running[:, -1], running


def _last_above(levels_below, start, level_rank):
    """Last snippet of the run above level ``level_rank`` that starts at ``start``: ``[B, P]``.

    ``levels_below [B, L]`` counts the levels strictly below each snippet (0
    outside the video); a snippet is above a level whose rank (levels
    strictly below it) is ``level_rank`` exactly when its count is larger.
    Binary lifting on a table of range minima: ``minima[s][i]`` is the
    smallest count of snippets ``i .. i + 2**s - 1`` (0 past the end). From
    the start, the run is extended by ``2**s`` snippets, largest ``s`` first,
    whenever all of them are above the level: ``ceil(log2 L)`` flat gathers of
    ``[B, P]``, instead of flagging and compacting the run ends of every level
    and snippet (``[B, T, L]``). Counts are stored in the narrowest integer
    type that holds them (int8 for up to 127 levels): the table stays in
    cache.
    """
    length = levels_below.shape[1]
    num_levels = level_rank.shape[0]  # counts lie in 0 .. num_levels
    narrow = jnp.int8 if num_levels < 2**7 else jnp.int16 if num_levels < 2**15 else jnp.int32
    # One spare column of 0 (below every level): a run never extends past the last snippet.
    num_steps = max(1, (length - 1).bit_length())  # 2**num_steps >= length
    first = jnp.pad(levels_below.astype(narrow), ((0, 0), (0, 1)))

    def halve(step, table):
        # minima[step] = min(minima[step - 1], minima[step - 1] shifted by 2**(step - 1)), 0 past the end.
        previous = table[step - 1]
        width = jnp.left_shift(jnp.int32(1), (step - 1).astype(jnp.int32))
        shifted = lax.dynamic_slice_in_dim(jnp.pad(previous, ((0, 0), (0, length + 1))), width, length + 1, 1)
        return table.at[step].set(jnp.minimum(previous, shifted))

    # Built and read in loops, not unrolled: unrolled, XLA fuses the chains of
    # minima and dependent gathers into loops whose compilation took about a
    # second of the first call.
    table = lax.fori_loop(1, num_steps, halve, jnp.zeros((num_steps,) + first.shape, narrow).at[0].set(first))
    level_rank = level_rank.astype(narrow)

    def extend(index, last):
        step = (num_steps - 1 - index).astype(jnp.int32)
        following = gather_rows(table[step], last + 1)
        return jnp.where(following > level_rank, last + jnp.left_shift(jnp.int32(1), step), last)

    return lax.fori_loop(0, num_steps, extend, start)


def _proposals(cas, length, thresholds, *, min_length, left_widths, right_widths, convention, num_slots):
    """Proposals of ``cas [B, L]`` with ``length [B]`` real snippets each (see ``proposals_from_cas``)."""
    batch, num_snippets = cas.shape
    positions = jnp.arange(num_snippets, dtype=jnp.int32)
    # Value checks a traced call could not make before tracing: a sequence with a
    # non-finite value inside its video, or any NaN level, gets its code and no
    # proposals (its length becomes 0), so nothing non-finite reaches a score.
    nonfinite = jnp.any((positions < length[:, None]) & ~jnp.isfinite(cas), axis=-1)
    options_ok = ~jnp.any(jnp.isnan(thresholds))
    result = jnp.where(nonfinite, ResultCode.NONFINITE_INPUT, ResultCode.SUCCESSFUL)
    result = jnp.where(options_ok, result, ResultCode.INVALID_OPTION).astype(RESULT_DTYPE)
    length = jnp.where(result == ResultCode.SUCCESSFUL, length, 0)
    inside = positions < length[:, None]
    # Padding may hold anything (NaN included); it must not reach a prefix sum.
    values = jnp.where(inside, cas, 0)
    # Snippets outside the video are -inf: never above any threshold.
    levels = jnp.where(inside, cas, -jnp.inf)

    # Snippet i is above level t exactly when more levels lie strictly below
    # it than below level t (levels in any order, ties included): the
    # [B, T, L] comparisons become one count per snippet ([B, L]) and one per
    # level ([T]). A run of at least min_length snippets starts at i when
    # snippet i - 1 is not above the level and the smallest of snippets
    # i .. i + min_length - 1 is: at the levels t with
    # below[i - 1] <= rank[t] < min(below[i .. i + min_length - 1]).
    levels_below = jnp.sum(levels[:, :, None] > thresholds, axis=-1, dtype=jnp.int32)  # [B, L]
    level_rank = jnp.sum(thresholds[:, None] > thresholds, axis=-1, dtype=jnp.int32)  # [T]
    below_ahead = _window_min_count(levels_below, min_length)
    below_before = jnp.pad(levels_below, ((0, 0), (1, 0)))[:, :-1]  # nothing before the video

    # Slots in (threshold, start) order; each run's last snippet is then found
    # from its start in O(log L) lookups (no second compaction for the ends).
    spacing = min_length + 1  # a run and at least one snippet below the level
    start_index, num_found, running = _compact_starts(below_before, below_ahead, level_rank, spacing, num_slots)
    count = jnp.minimum(num_found, num_slots)
    valid = jnp.arange(num_slots, dtype=jnp.int32)[None, :] < count[:, None]

    threshold_index = start_index // num_snippets
    start = jnp.where(valid, start_index % num_snippets, 0)
    last = jnp.where(valid, _last_above(levels_below, start, level_rank[threshold_index]), 0)
    run_length = last - start + 1
    left_width = jnp.asarray(left_widths)[run_length]
    right_width = jnp.asarray(right_widths)[run_length]
    length = length[:, None]

    if convention == "spec":
        end = last + 1
        inner_begin, inner_end = start, end
        segment_end = end
        left_begin = jnp.maximum(start - left_width, 0)
        right_begin = end
        right_end = jnp.minimum(end + right_width, length)
    else:
        # Published: e = last + 1 is treated as the last snippet (see module doc).
        exclusive_end = last + 1
        inner_begin, inner_end = start, jnp.minimum(exclusive_end + 1, length)
        segment_end = exclusive_end + 1
        left_begin = jnp.maximum(start - left_width, 0)
        right_begin = jnp.minimum(exclusive_end + 1, length)
        right_end = jnp.maximum(right_begin, jnp.minimum(length - 1, exclusive_end + 1 + right_width))

    hi, lo = _prefix_sums(values)

    def window_sum(begin, end):
        # hi and lo are differenced separately: adding them first would round lo away.
        hi_sum = gather_rows(hi, end) - gather_rows(hi, begin)
        return hi_sum + (gather_rows(lo, end) - gather_rows(lo, begin))

    dtype = cas.dtype
    inner = window_sum(inner_begin, inner_end) / jnp.maximum(inner_end - inner_begin, 1).astype(dtype)
    outer_count = (start - left_begin) + (right_end - right_begin)
    outer_sum = window_sum(left_begin, start) + window_sum(right_begin, right_end)
    outer = jnp.where(outer_count > 0, outer_sum / jnp.maximum(outer_count, 1).astype(dtype), 0)

    zero = jnp.zeros((), dtype)
    inner = jnp.where(valid, inner, zero)
    outer = jnp.where(valid, outer, zero)
    segments = jnp.where(valid[..., None], jnp.stack([start, segment_end], axis=-1).astype(dtype), zero)
    proposals = CasProposals(
        segments=segments,
        inner=inner,
        outer=outer,
        contrast=inner - outer,
        threshold_index=jnp.where(valid, threshold_index, -1),
        valid=valid,
        count=count,
        num_found=num_found,
        result=result,
    )
    # The same run is often found at several consecutive levels (a steep edge
    # crosses them all at the same snippets): the same segment, the same
    # scores. With ascending levels, it is a run at level t exactly when t is
    # at least the number of levels below each of its two outside neighbours,
    # so it was first found at the larger of the two; its slot there is the
    # running count of that level's flags at its start. (Meaningless for
    # levels in any other order; only asked for with ascending ones.)
    neighbours = jnp.pad(levels_below, ((0, 0), (1, 1)))  # 0 outside: no level below
    first_level = jnp.maximum(gather_rows(neighbours, start), gather_rows(neighbours, last + 2))
    num_chunks = running.shape[1] // thresholds.shape[0]
    first_chunk = first_level * num_chunks + start // spacing
    first_slot = jnp.where(valid, gather_rows(running, first_chunk) - 1, jnp.arange(num_slots, dtype=jnp.int32))
    return proposals, first_slot


@functools.partial(
    jax.jit,
    static_argnames=(
        "classes_last",
        "min_length",
        "margin_scale",
        "margin_power",
        "margin_rounding",
        "convention",
        "num_slots",
        "first_slots",
    ),
)
def batch_proposals(
    cas,
    video_length,
    thresholds,
    *,
    classes_last,
    min_length,
    margin_scale,
    margin_power,
    margin_rounding,
    convention,
    num_slots,
    first_slots=False,
):
    """``_proposals`` over every sequence of ``cas`` (layout handled here).

    Everything shape-related happens inside this one compiled function: eager
    reshapes and casts would each compile a kernel of their own per shape.
    With ``first_slots`` (ascending thresholds only), also each proposal's
    ``first_slot [..., P]``: the slot of the first proposal (lowest level)
    with the same segment, its own slot if it is the first, and in padding
    (XLA drops this work otherwise).
    """
    if cas.dtype in (jnp.float16, jnp.bfloat16):
        cas = cas.astype(jnp.float32)
    if classes_last:
        cas = jnp.moveaxis(cas, -1, -2)
        video_length = video_length[..., None]
    batch_shape, num_snippets = cas.shape[:-1], cas.shape[-1]
    sequence_length = jnp.broadcast_to(video_length, batch_shape).astype(jnp.int32)
    if convention == "spec":
        left_widths = right_widths = _margin_widths(num_snippets, margin_scale, margin_power, margin_rounding)
    else:
        # The published int(s - m) ceils the left margin, int(e + m + 1) floors the right one.
        left_widths = _margin_widths(num_snippets, margin_scale, margin_power, "ceil")
        right_widths = _margin_widths(num_snippets, margin_scale, margin_power, "floor")
    flat, first_slot = _proposals(
        cas.reshape(-1, num_snippets),
        sequence_length.reshape(-1),
        thresholds.astype(cas.dtype),
        min_length=min_length,
        left_widths=left_widths,
        right_widths=right_widths,
        convention=convention,
        num_slots=num_slots,
    )
    proposals = CasProposals(*(field.reshape(batch_shape + field.shape[1:]) for field in flat))
    if first_slots:
        return proposals, first_slot.reshape(batch_shape + first_slot.shape[1:])
    return proposals


@functools.partial(jax.jit, static_argnames=("classes_last",))
def _first_nonfinite_inside(cas, video_length, *, classes_last):
    """Flat index (in the layout of ``cas``) of its first non-finite value inside a video, or -1."""
    snippet_axis = -2 if classes_last else -1
    positions = jnp.arange(cas.shape[snippet_axis])
    if classes_last:
        inside = positions[:, None] < video_length[..., None, None]
    else:
        inside = positions < video_length[..., None]
    bad = (inside & ~jnp.isfinite(cas)).reshape(-1)
    return jnp.where(jnp.any(bad), jnp.argmax(bad), -1)


def _checked_thresholds(thresholds, dtype) -> Any:
    """Thresholds in ``dtype`` that compare with ``>`` exactly as the given values do.

    A float64 level such as 0.001 lies between two float32 numbers. Rounding it
    down (toward -inf) to the float32 just below keeps ``cas > level`` exact
    for every float32 ``cas``: no float32 lies strictly between the two.
    Rounding to nearest could turn a CAS value equal to the rounded level from
    above-threshold into not-above.
    """
    if thresholds is None:
        raise TypeError("`thresholds` is required, got None")
    if is_traced(thresholds):
        if thresholds.ndim != 1:
            raise ValueError(f"`thresholds` must be 1-D, got shape {thresholds.shape}")
        return thresholds.astype(dtype)
    host = np.asarray(thresholds)
    if host.ndim != 1:
        raise ValueError(f"`thresholds` must be a 1-D array of levels, got shape {host.shape}")
    if host.size == 0:
        raise ValueError("`thresholds` must hold at least one level, got an empty array")
    if host.dtype == np.bool_ or not (
        np.issubdtype(host.dtype, np.integer) or np.issubdtype(host.dtype, np.floating)
    ):
        raise TypeError(f"`thresholds` must be real numbers, got dtype {host.dtype}")
    levels = host.astype(np.float64)
    if np.isnan(levels).any():
        raise ValueError(f"`thresholds` must not contain NaN, got {host.tolist()}")
    narrow = levels.astype(dtype)
    return np.where(narrow > levels, np.nextafter(narrow, np.array(-np.inf, dtype)), narrow)


def proposals_from_cas(
    cas,
    thresholds,
    *,
    min_length: int = 2,
    margin_scale: float = MARGIN_SCALE,
    margin_power: float = MARGIN_POWER,
    margin_rounding: str | None = None,
    convention: str = "spec",
    classes_last: bool = False,
    length=None,
    max_proposals: int | None = None,
) -> CasProposals:
    """Multi-threshold proposals of class activation sequences, scored by contrast.

    For every threshold, every maximal run of consecutive snippets ``s .. e``
    with ``cas > threshold`` (strict) and ``e - s + 1 >= min_length`` is a
    proposal ``[s, e + 1)``. With ``n = e - s + 1`` snippets:

    * ``inner`` is the mean of ``cas[s : e + 1]``;
    * the margin is ``m = margin_scale * n ** margin_power`` snippets,
      rounded to whole snippets by ``margin_rounding`` (default ``"ceil"``:
      every snippet that overlaps the real-valued margin ``[s - m, s)`` or
      ``[e + 1, e + 1 + m)``; with ``"floor"`` runs shorter than 17 snippets
      get no margin at all under the default constants, so their contrast is
      just their inner score);
    * ``outer`` is the mean of ``cas`` over ``[s - w, s)`` and
      ``[e + 1, e + 1 + w)`` (``w`` the rounded margin), clipped to
      ``[0, length)``, and 0 when both are empty;
    * ``contrast = inner - outer``.

    ``convention="published"`` instead reproduces the published GauFuse_WSTAL
    loop, off-by-one included (see the module docstring): ``inner`` over
    ``cas[s : e + 2]``, segment ``[s, e + 2)``, left margin ``ceil(m)``
    snippets, right margin ``[e + 2, min(e + 2 + floor(m), length - 1))``.

    Comparisons are exact as written: a float64 threshold is compared with a
    float32 CAS as NumPy would compare them, in float64. Means are accurate to
    a few ulps of the CAS dtype (prefix sums are error-corrected).

    Args:
        cas: ``[..., L]`` floating CAS of one class per sequence, or
            ``[..., L, C]`` with ``classes_last=True`` (the layout of most WSTAL
            models). float16/bfloat16 are computed and returned in float32;
            float64 needs ``jax_enable_x64`` (without it JAX computes, and
            compares, the float32 rounding of the CAS). Must be finite
            within each video's ``length`` (a concrete call raises; inside a
            caller's ``jit`` the sequence gets ``NONFINITE_INPUT`` in
            ``result`` and no proposals); padding may hold anything.
        thresholds: ``[T]`` levels (published: ``np.arange(0.001, 0.04,
            0.002)``, 20 levels).
        min_length: shortest run, in snippets, that makes a proposal.
        margin_scale: ``0.0785`` in the published code.
        margin_power: ``0.9`` in the published code.
        margin_rounding: ``"ceil"`` (default) or ``"floor"``; must be left
            ``None`` with ``convention="published"``, which has its own.
        convention: ``"spec"`` (default) or ``"published"``.
        classes_last: read ``cas`` as ``[..., L, C]``; the outputs' batch shape
            is then ``[..., C]``.
        length: optional int ``[...]`` (video shape: without the class axis
            when ``classes_last``; broadcastable), the number of real snippets
            of each padded sequence, in ``[0, L]``. Snippets at or after it are
            outside the video: never in a run, never in a margin.
        max_proposals: number of slots ``P`` per sequence. Default: the
            static bound ``T * ((L + 1) // (min_length + 1))``, which never
            drops a proposal. A smaller value saves memory; proposals past
            slot ``P`` (in threshold, start order) are dropped and counted in
            ``num_found``.

    Returns:
        A :class:`CasProposals` of the same array kind as ``cas`` (NumPy in,
        NumPy out; JAX in, JAX out), batch shape ``cas.shape[:-1]`` (or
        ``cas.shape[:-2] + (C,)`` with ``classes_last``).

    Raises:
        TypeError: ``cas`` is not floating point, ``thresholds`` or ``length``
            hold the wrong kind of numbers.
        ValueError: ``cas`` has no snippet axis or no snippets or (concrete
            ``cas`` and ``length``) non-finite values inside a video,
            ``thresholds`` is not 1-D, empty or (concrete) has NaN,
            ``min_length`` or ``max_proposals`` is not a positive integer,
            ``length`` is out of ``[0, L]`` or does not broadcast, an option is
            unknown, or the batch needs flat indices past int32 (split it).

    Example:
        >>> import numpy as np
        >>> cas = np.array([0.0, 0.3, 0.5, 0.4, 0.0, 0.2, 0.0], np.float32)
        >>> found = proposals_from_cas(cas, np.array([0.1, 0.35]))
        >>> found.segments[: found.count].tolist()
        [[1.0, 4.0], [2.0, 4.0]]
        >>> found.threshold_index[: found.count].tolist()
        [0, 1]
    """
    ensure_compilation_cache()  # before this call's first compilation
    kind = array_kind(cas)
    cas = float_array(cas, "cas", min_ndim=2 if classes_last else 1)
    classes_last = bool(classes_last)
    video_shape = cas.shape[:-2] if classes_last else cas.shape[:-1]
    num_snippets = cas.shape[-2] if classes_last else cas.shape[-1]
    if num_snippets == 0:
        raise ValueError(f"`cas` must have at least one snippet, got shape {cas.shape}")

    min_length = positive_int(min_length, "min_length")
    convention = choice(convention, "convention", CONVENTIONS)
    if convention == "published":
        if margin_rounding is not None:
            raise ValueError(
                "`margin_rounding` must be None with convention='published', whose rounding is fixed "
                "(ceil on the left, floor on the right)"
            )
        margin_rounding = "floor"
    elif margin_rounding is None:
        margin_rounding = "ceil"
    margin_rounding = choice(margin_rounding, "margin_rounding", MARGIN_ROUNDINGS)
    margin_scale = _finite_float(margin_scale, "margin_scale", nonnegative=True)
    margin_power = _finite_float(margin_power, "margin_power")

    compute_dtype = np.dtype(np.float32) if cas.dtype in (jnp.float16, jnp.bfloat16) else np.dtype(cas.dtype)
    levels = _checked_thresholds(thresholds, compute_dtype)
    video_length = checked_length(length, video_shape, num_snippets, unit="video")

    if cas.size and not is_traced(cas) and not is_traced(video_length):
        first_bad = int(_first_nonfinite_inside(cas, video_length, classes_last=classes_last))
        if first_bad >= 0:
            where = tuple(int(i) for i in np.unravel_index(first_bad, cas.shape))
            raise ValueError(f"`cas` must be finite inside each video; first non-finite value at index {where}")

    bound = levels.shape[0] * max_runs_per_threshold(num_snippets, min_length)
    num_slots = bound if max_proposals is None else positive_int(max_proposals, "max_proposals")
    # The kernel scatters and gathers with flat int32 indices over the whole batch.
    num_sequences = math.prod(cas.shape[:-2] + cas.shape[-1:]) if classes_last else math.prod(cas.shape[:-1])
    largest_flat_index = num_sequences * max(num_slots, num_snippets + 1)
    if largest_flat_index >= 2**31:
        raise ValueError(
            f"{num_sequences} sequences x {max(num_slots, num_snippets + 1)} slots exceed int32 indexing; "
            "split `cas` into smaller batches or lower `max_proposals`"
        )

    result = batch_proposals(
        cas,
        video_length,
        levels,
        classes_last=classes_last,
        min_length=min_length,
        margin_scale=margin_scale,
        margin_power=margin_power,
        margin_rounding=margin_rounding,
        convention=convention,
        num_slots=num_slots,
    )
    return from_jax(result, kind)


def _finite_float(value, name: str, *, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a Python or NumPy real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (nonnegative and number < 0):
        bound = "non-negative and finite" if nonnegative else "finite"
        raise ValueError(f"`{name}` must be {bound}, got {number}")
    return number
