"""Raw proposals in, fused detections out: grouping and fusion for a whole dataset at once.

:func:`fuse_proposals` runs the published post-processing of Zhou et al. (CVPR
2023) on a padded batch of items ((video, class) pairs): greedy grouping (see
:mod:`jaxfuse._grouping`), then one fused instance per group. NMS and Soft-NMS
are available through the same call for comparison.

How each method fuses a group (``g_k = softmax(w / T)`` over the group):

* ``"gaussian"`` and ``"exponential"``: start and end are ``sum g_k x_k``
  (both templates have the same location, erratum 3 of the spec; they differ
  in their spread parameter).
* ``"uniform"``: ``(min + max) / 2`` of the members' starts and ends.
* ``"laplace"`` and ``"student_t"``: :func:`jaxfuse.fuse_groups` on the
  groups packed into a padded ``[items, G, M, 2]`` batch.
* ``"nms"``: the leader's segment and score.
* ``"soft_nms"``: no groups; see :mod:`jaxfuse._soft_nms`.

For every fusion template the fused score is ``sum g_k q_k``, the weighted
average of the ordering scores, as in the published code.

The closed-form templates are computed in segment form: every member carries
its group id and segment reductions (``jax.ops.segment_*``) give the per-group
sums, so memory stays O(items x N) whatever the group sizes.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._grouping import (
    ProposalGroups,
    _group_batch_checked,
    _is_traced,
    _proposal_flags,
    threshold_code,
    overlap_settings,
    raise_for_value_problems,
    validate_overlap,
    validate_proposals,
    validate_threshold,
)
from jaxfuse._interop import ArrayKind, array_kind, from_jax
from jaxfuse._presets import FusionSettings, resolve_settings
from jaxfuse._ragged import bucket_size
from jaxfuse._result import RESULT_DTYPE, ResultCode
from jaxfuse._soft_nms import DECAYS, DEFAULT_SCORE_FLOOR, DEFAULT_SIGMA, soft_nms_batch
from jaxfuse._student_t import StudentTParameters
from jaxfuse._templates import (
    ExponentialParameters,
    GaussianParameters,
    LaplaceParameters,
    UniformParameters,
    safe_reciprocal,
    safe_sqrt,
)
from jaxfuse._validation import choice, positive_int, positive_scalar

CLOSED_FORM_TEMPLATES = ("gaussian", "uniform", "exponential")
PADDED_TEMPLATES = ("laplace", "student_t")
METHODS = CLOSED_FORM_TEMPLATES + PADDED_TEMPLATES + ("nms", "soft_nms")


class FusedProposals(NamedTuple):
    """Fused detections of each item, in leader order (padded to N).

    Attributes:
        segments: ``[..., N, 2]`` fused (start, end) of the ``j``-th group for
            ``j < count``; zeros beyond.
        scores: ``[..., N]`` fused scores (the weighted average of the members'
            ordering scores; the leader's score for NMS; the decayed score at
            selection for Soft-NMS); zeros beyond ``count``.
        valid: ``[..., N]`` bool, ``j < count``.
        count: ``[...]`` int32, the number of fused instances of each item.
        group: ``[..., N]`` int32, for each *input* proposal the index of the
            fused instance it went into; ``-1`` for invalid input (and, for
            Soft-NMS, for dropped proposals).
        leader: ``[..., N]`` int32, the input index of the ``j``-th leader (for
            Soft-NMS, of the ``j``-th kept proposal); ``-1`` beyond ``count``.
        spread: ``[..., N, 2]`` the template's spread of the members' starts and
            ends: the standard deviation (gaussian), the mean offset from the
            minimum ``1 / rate`` (exponential), the half-width (uniform), the
            scale (laplace, student_t); zero for NMS and Soft-NMS.
        parameters: the template's parameter NamedTuple
            (:class:`jaxfuse.GaussianParameters`, ...) with ``[..., N, 2]``
            fields over (start, end); ``None`` for NMS and Soft-NMS.
        result: ``[..., N]`` int32 :class:`jaxfuse.ResultCode` per fused
            instance: ``SUCCESSFUL``; ``MAX_STEPS_REACHED`` (student_t);
            ``OVERFLOW`` when finite input gives a result the dtype cannot hold
            (coordinates near its limit, a temperature so small that
            ``w / T`` overflows); ``NONFINITE_INPUT`` / ``INVALID_INPUT`` on
            every group of an item that had a non-finite value or a start >
            end, and ``INVALID_OPTION`` on every group of the call when a
            traced temperature or threshold is out of its domain (values that
            only a caller's ``jit`` lets through: concrete ones raise);
            ``EMPTY_GROUP`` beyond ``count``. Outputs of a group whose code
            is ``NONFINITE_INPUT`` or above are zeros.
        item_result: ``[...]`` int32, each item's most severe code over its
            groups and its input (so an item whose every proposal was bad,
            and which has no group to carry a code, is still flagged).
            ``SUCCESSFUL`` for an item without proposals.
    """

    segments: Any
    scores: Any
    valid: Any
    count: Any
    group: Any
    leader: Any
    spread: Any
    parameters: Any
    result: Any
    item_result: Any = None


# ------------------------------------------------------------------ segment form


class _GroupMeans(NamedTuple):
    ids: jax.Array  # [B*N] flat group id of each member, B*N for non-members
    weights: jax.Array  # [B*N] unnormalised softmax weight of each member, 0 for non-members
    total: jax.Array  # [B*N] per group: sum of ``weights``
    offsets: jax.Array  # [B*N, K] member value - its leader's value (0 for non-members)
    mean_offset: jax.Array  # [B*N, K] per group: sum g_k * offset
    reference: jax.Array  # [B*N, K] per group: its leader's values
    mean: jax.Array  # [B*N, K] per group: sum g_k x_k


# exp(80) times any group size stays far below the float32 maximum (3.4e38).
_LARGEST_EXPONENT = 80.0


def _per_member(per_group: jax.Array, group: jax.Array) -> jax.Array:
    """``[B, N, ...]`` per-group rows read at each member's group (non-members read group 0)."""
    index = jnp.maximum(group, 0).reshape(group.shape + (1,) * (per_group.ndim - 2))
    return jnp.take_along_axis(per_group, index, axis=1)


def _group_means(values, weights, groups: ProposalGroups, temperature) -> _GroupMeans:
    """Softmax-weighted means of ``values [B, N, K]`` within each group, in segment form.

    Every member's value and weight is taken relative to its group's leader:

    * offsets from the leader keep sums small, so that large frame indices
      lose no precision to cancellation (as :mod:`jaxfuse._templates` does
      with the most probable member);
    * ``exp((w - w_leader) / T)`` is the softmax up to a per-group factor.
      With the default weights (the scores) the leader has the group's largest
      weight, so this is exactly ``exp((w - group max) / T)``: free of overflow
      for tiny T (0.0016 in float32). Other weights may exceed the leader's;
      when any does by more than 80 T, the shift falls back to the true group
      maximum (one more segment reduction and gather). Members that underflow
      weigh less than 1e-35 relative to the leader.

    Using the leader, whose index the grouping returns, replaces a segment
    reduction and two gathers per call, the dearest operations here on CPU.
    """
    items, size, coordinates = values.shape
    num = items * size
    group = groups.group
    member = group >= 0
    ids = jnp.where(member, group + size * jnp.arange(items)[:, None], num).reshape(-1)
    columns = jnp.concatenate([values, weights[..., None]], axis=-1)
    leader_columns = jnp.take_along_axis(columns, jnp.maximum(groups.leader, 0)[..., None], axis=1)
    reference = _per_member(leader_columns, group)
    scaled = (weights - reference[..., coordinates]) / temperature

    def group_maximum_shift():
        largest = jax.ops.segment_max(jnp.where(member, weights, -jnp.inf).reshape(-1), ids, num_segments=num)
        return (weights - _per_member(largest.reshape(items, size), group)) / temperature

    overflows = jnp.any(member & (scaled > _LARGEST_EXPONENT))
    scaled = jax.lax.cond(overflows, group_maximum_shift, lambda: scaled)
    # Non-members (and their possibly infinite shifts) stay out of the arithmetic.
    unnormalised = jnp.where(member, jnp.exp(jnp.where(member, scaled, 0)), 0)
    offsets = jnp.where(member[..., None], values - reference[..., :coordinates], 0)
    sums = jax.ops.segment_sum(
        jnp.concatenate([unnormalised[..., None], unnormalised[..., None] * offsets], axis=-1).reshape(num, coordinates + 1),
        ids,
        num_segments=num,
    )
    total = sums[:, 0]
    mean_offset = sums[:, 1:] / jnp.where(total > 0, total, 1)[:, None]
    leader_values = leader_columns[..., :coordinates].reshape(num, coordinates)
    return _GroupMeans(
        ids, unnormalised.reshape(-1), total, offsets.reshape(num, coordinates), mean_offset,
        leader_values, leader_values + mean_offset,
    )


def _extremes(x, ids, num):
    """Per-group minimum and maximum of ``x [B*N, K]``, in one segment reduction."""
    member = (ids < num)[:, None]
    both = jax.ops.segment_max(jnp.where(member, jnp.concatenate([-x, x], axis=1), -jnp.inf), ids, num_segments=num)
    coordinates = x.shape[1]
    return -both[:, :coordinates], both[:, coordinates:]


def _closed_form_fit(method: str, means: _GroupMeans, x, num):
    """Per-group (location, spread, parameters) of the segment coordinates ``x [B*N, 2]``."""
    if method == "gaussian":
        deviation = means.offsets[:, :2] - means.mean_offset[jnp.minimum(means.ids, num - 1), :2]
        squares = jax.ops.segment_sum(means.weights[:, None] * jnp.square(deviation), means.ids, num_segments=num)
        scale = safe_sqrt(squares / jnp.where(means.total > 0, means.total, 1)[:, None])
        location = means.mean[:, :2]
        return location, scale, GaussianParameters(location, scale)
    low, high = _extremes(x, means.ids, num)
    if method == "uniform":
        half_width = (high - low) / 2
        return low + half_width, half_width, UniformParameters(low, high)
    # exponential: same location as the Gaussian (erratum 3). Its mean excess
    # sum g_k (x_k - min x) is taken as offsets: (leader - min) + mean offset.
    mean_excess = (means.reference[:, :2] - jnp.where(means.total[:, None] > 0, low, 0)) + means.mean_offset[:, :2]
    return means.mean[:, :2], mean_excess, ExponentialParameters(low, safe_reciprocal(mean_excess))


def temperature_code(temperature, dtype) -> jax.Array:
    """``INVALID_OPTION`` for a (traced) temperature that is not positive and finite in ``dtype``."""
    value = jnp.asarray(temperature, dtype)
    ok = jnp.isfinite(value) & (value > 0)
    return jnp.where(ok, ResultCode.SUCCESSFUL, ResultCode.INVALID_OPTION).astype(RESULT_DTYPE)


def _finish(location, score, spread, parameters, result, groups: ProposalGroups, codes) -> FusedProposals:
    """Reshape per-group ``[B*N, ...]`` arrays to ``[B, N, ...]``, apply the result codes, blank the padding.

    ``codes [B]`` are the items' input and option codes; they go to every group
    of the item. A group whose inputs were sound but whose outputs are not
    finite overflowed (finite values near the dtype's limit, or a temperature
    too small for it): ``OVERFLOW``. Groups with a code from
    ``NONFINITE_INPUT`` up get zeros.
    """
    items, size = groups.group.shape
    valid = jnp.arange(size) < groups.count[:, None]
    shaped = lambda x: x.reshape((items, size) + x.shape[1:])  # noqa: E731
    result = jnp.maximum(result.reshape(items, size), codes[:, None])
    finite = (
        jnp.all(jnp.isfinite(shaped(location)), axis=-1)
        & jnp.isfinite(shaped(score))
        & jnp.all(jnp.isfinite(shaped(spread)), axis=-1)
    )
    result = jnp.where(~finite & (result < ResultCode.NONFINITE_INPUT), ResultCode.OVERFLOW, result)
    result = jnp.where(valid, result, ResultCode.EMPTY_GROUP).astype(RESULT_DTYPE)
    kept = valid & ((result < ResultCode.NONFINITE_INPUT) | (result == ResultCode.EMPTY_GROUP))
    item_result = jnp.maximum(codes, jnp.max(jnp.where(valid, result, ResultCode.SUCCESSFUL), axis=-1, initial=0))

    def blank(x):
        x = shaped(x)
        mask = kept.reshape(kept.shape + (1,) * (x.ndim - 2))
        return jnp.where(mask, x, jnp.zeros_like(x))

    return FusedProposals(
        segments=blank(location),
        scores=blank(score),
        valid=valid,
        count=groups.count,
        group=groups.group,
        leader=groups.leader,
        spread=blank(spread),
        parameters=None if parameters is None else jax.tree.map(blank, parameters),
        result=result,
        item_result=item_result.astype(RESULT_DTYPE),
    )


@functools.partial(jax.jit, static_argnames=("method",))
def _fuse_closed_form(segments, scores, weights, groups: ProposalGroups, temperature, codes, *, method: str):
    items, size = scores.shape
    num = items * size
    values = jnp.concatenate([segments, scores[..., None]], axis=-1)
    means = _group_means(values, weights, groups, jnp.asarray(temperature, scores.dtype))
    location, spread, parameters = _closed_form_fit(method, means, values.reshape(num, 3)[:, :2], num)
    success = jnp.full((num,), ResultCode.SUCCESSFUL, RESULT_DTYPE)
    codes = jnp.maximum(codes, temperature_code(temperature, scores.dtype))
    return _finish(location, means.mean[:, 2], spread, parameters, success, groups, codes)


@jax.jit
def _fuse_nms(segments, scores, groups: ProposalGroups, codes):
    leader = jnp.maximum(groups.leader, 0)
    kept_segments = jnp.take_along_axis(segments, leader[..., None], axis=1)
    kept_scores = jnp.take_along_axis(scores, leader, axis=1)
    num = scores.size
    success = jnp.full((num,), ResultCode.SUCCESSFUL, RESULT_DTYPE)
    return _finish(
        kept_segments.reshape(num, 2), kept_scores.reshape(num), jnp.zeros((num, 2), scores.dtype), None, success,
        groups, codes,
    )


@jax.jit
def _fused_scores(scores, weights, groups: ProposalGroups, temperature):
    """Per-group weighted average of the ordering scores, ``[B*N]``."""
    means = _group_means(scores[..., None], weights, groups, jnp.asarray(temperature, scores.dtype))
    return means.mean[:, 0]


@functools.partial(jax.jit, static_argnames=("method", "num_distinct"))
def _group_and_fuse(segments, scores, weights, valid, threshold, use_iou, offset, temperature, first_slot=None, *,
                    method: str, num_distinct: int | None = None):
    """Grouping, value checks and a closed-form (or NMS) fusion in one program: one compile, one dispatch.

    ``first_slot`` and ``num_distinct``: group the first occurrences of
    repeated proposals only (see :func:`jaxfuse._grouping.group_batch_distinct`).

    Returns:
        ``(fused, problems)``, see :func:`jaxfuse._grouping.value_problems`.
    """
    checked = () if weights is None else (weights,)
    groups, problems, codes = _group_batch_checked(
        segments, scores, valid, threshold, use_iou, offset, checked, first_slot, num_distinct=num_distinct
    )
    if method == "nms":
        return _fuse_nms(segments, scores, groups, codes), problems
    weights = scores if weights is None else weights
    return _fuse_closed_form(segments, scores, weights, groups, temperature, codes, method=method), problems


# ------------------------------------------------------------------ padded templates

# Groups of up to this many members share the first size bucket: below it a
# bucket of its own would cost a compiled program for little memory.
_SMALLEST_BUCKET = 4


def size_buckets(size: int) -> tuple[int, ...]:
    """Member capacities of the size buckets for items of ``size`` proposals: 4, 8, 16, ..., >= size.

    A group of ``m`` members goes to the first bucket holding it, whose
    capacity is then less than ``2 m`` (or the smallest): the packed slots of
    every bucket are within twice its members, whatever the other groups.
    """
    capacities = [min(_SMALLEST_BUCKET, max(size, 1))]
    while capacities[-1] < size:
        capacities.append(min(2 * capacities[-1], size))
    return tuple(capacities)


class _BucketLayout(NamedTuple):
    bucket: jax.Array  # [B*N] per group (item-major, leader order): its size bucket, len(capacities) if no group
    row: jax.Array  # [B*N] per group: its row within its bucket
    rank: jax.Array  # [B*N] per member (input order): its position within its group
    counts: jax.Array  # [buckets] groups per bucket


@functools.partial(jax.jit, static_argnames=("capacities",))
def _bucket_layout(groups: ProposalGroups, *, capacities: tuple[int, ...]) -> _BucketLayout:
    """Where every group and member goes when groups are packed by size bucket."""
    items, size = groups.group.shape
    num = items * size
    ids = jnp.where(groups.group >= 0, groups.group + size * jnp.arange(items)[:, None], num).reshape(-1)
    sizes = jax.ops.segment_sum(jnp.ones(num, jnp.int32), ids, num_segments=num)
    bucket = jnp.sum(sizes[:, None] > jnp.asarray(capacities, jnp.int32), axis=1, dtype=jnp.int32)
    bucket = jnp.where(sizes > 0, bucket, len(capacities))
    one_hot = bucket[:, None] == jnp.arange(len(capacities), dtype=jnp.int32)
    before = jnp.cumsum(one_hot, axis=0, dtype=jnp.int32) - one_hot
    row = jnp.sum(jnp.where(one_hot, before, 0), axis=1)
    # Rank of each member within its group: a stable sort by group id keeps input order.
    order = jnp.argsort(ids, stable=True)
    sorted_ids = ids[order]
    position = jnp.arange(num, dtype=jnp.int32)
    first = jax.ops.segment_min(position, sorted_ids, num_segments=num)
    rank = jnp.zeros(num, jnp.int32).at[order].set(position - first[jnp.minimum(sorted_ids, num - 1)])
    return _BucketLayout(bucket, row, rank, jnp.sum(one_hot, axis=0, dtype=jnp.int32))


def bucket_shapes(counts, size: int, items: int) -> tuple[tuple[int, int], ...]:
    """``(rows, capacity)`` of each size bucket's packed batch; ``rows`` 0 for an empty bucket.

    Args:
        counts: the concrete number of groups per bucket, or None under a
            caller's ``jit``, where the rows are the static bound: a bucket
            whose groups have more than ``lo`` members each holds at most
            ``items * size // (lo + 1)`` of them.
        size: N, proposals per item.
        items: B.

    Memory: ``sum rows x capacity``. With counts, rows is the power of two
    holding the bucket's groups and capacity is below twice their smallest
    size, so the slots are under 4x the members (plus 4 per singleton group);
    the static bound is under ``(4 + 2 log2 N) x B x N``. Packing every group
    to the largest one's size instead costs (groups) x (largest group): 6.8
    GB for one item of 4,096 identical segments beside 4,096 disjoint ones.
    """
    capacities = size_buckets(size)
    shapes = []
    for index, capacity in enumerate(capacities):
        if counts is None:
            smaller = capacities[index - 1] if index else 0
            rows = max(items * size // (smaller + 1), 1)
        else:
            rows = bucket_size(int(counts[index])) if int(counts[index]) else 0
        shapes.append((rows, capacity))
    return tuple(shapes)


@functools.partial(jax.jit, static_argnames=("shapes",))
def _pack_buckets(segments, weights, groups: ProposalGroups, layout: _BucketLayout, *, shapes):
    """Per non-empty bucket, its groups' members in ``[rows, capacity]`` slots (values, weights, mask)."""
    items, size = groups.group.shape
    num = items * size
    ids = jnp.where(groups.group >= 0, groups.group + size * jnp.arange(items)[:, None], num).reshape(-1)
    member = ids < num
    safe_ids = jnp.minimum(ids, num - 1)
    member_bucket = jnp.where(member, layout.bucket[safe_ids], -1)
    member_row = layout.row[safe_ids]
    flat_segments, flat_weights = segments.reshape(num, 2), weights.reshape(num)
    packed = []
    for index, (rows, capacity) in enumerate(shapes):
        if rows == 0:
            packed.append(None)
            continue
        slots = rows * capacity
        slot = jnp.where(member_bucket == index, member_row * capacity + layout.rank, slots)
        scatter = lambda source, fill, slot=slot, slots=slots: (  # noqa: E731
            jnp.full((slots,) + source.shape[1:], fill, source.dtype).at[slot].set(source, mode="drop")
        )
        packed.append((
            scatter(flat_segments, 0).reshape(rows, capacity, 2),
            scatter(flat_weights, 0).reshape(rows, capacity),
            scatter(jnp.ones(num, bool), False).reshape(rows, capacity),
        ))
    return packed


def _outside_hull(location, values, mask):
    """``[G]`` whether a fitted location lies outside [min, max] of its group's members (beyond rounding).

    The weighted median and every location-scale fit of the members lie in
    their hull; a location outside it is a failed fit, whatever its solver
    reported.
    """
    low = jnp.min(jnp.where(mask[..., None], values, jnp.inf), axis=1)
    high = jnp.max(jnp.where(mask[..., None], values, -jnp.inf), axis=1)
    # Rounding, and XLA's flush of subnormal values to zero on CPU.
    finfo = jnp.finfo(values.dtype)
    slack = 8 * finfo.eps * jnp.maximum(jnp.abs(low), jnp.abs(high)) + finfo.tiny
    return jnp.any((location < low - slack) | (location > high + slack), axis=-1)


@jax.jit
def _unpack_buckets(fused, packed, layout: _BucketLayout):
    """Per-bucket results (a list, None for empty buckets) back to ``[B*N]`` per group, leader order."""
    checked = []
    for result, batch in zip(fused, packed):
        if result is not None:
            values, _, mask = batch
            failed = _outside_hull(result.location, values, mask) & (result.result < ResultCode.DIVERGED)
            result = result._replace(result=jnp.where(failed, ResultCode.DIVERGED, result.result).astype(RESULT_DTYPE))
        checked.append(result)
    fused = checked

    def gather(field, fill):
        out = None
        for index, result in enumerate(fused):
            if result is None:
                continue
            x = field(result)
            taken = jnp.take(x, jnp.minimum(layout.row, x.shape[0] - 1), axis=0)
            here = (layout.bucket == index).reshape((-1,) + (1,) * (x.ndim - 1))
            out = jnp.where(here, taken, out if out is not None else jnp.full_like(taken, fill))
        return out

    location = gather(lambda r: r.location, 0)
    result = gather(lambda r: r.result, ResultCode.EMPTY_GROUP)
    first = next(r for r in fused if r is not None)
    parameters = type(first.parameters)(
        *(gather(lambda r, i=i: r.parameters[i], 0) for i in range(len(first.parameters)))
    )
    return location, parameters, result


def _no_groups(method: str, scores, groups: ProposalGroups, codes) -> FusedProposals:
    """The result of a batch without a single group (no template to compile)."""
    num = scores.size
    zeros = jnp.zeros((num, 2), scores.dtype)
    parameters = LaplaceParameters(zeros, zeros) if method == "laplace" else StudentTParameters(zeros, zeros, zeros)
    empty = jnp.full((num,), ResultCode.EMPTY_GROUP, RESULT_DTYPE)
    return _finish(zeros, jnp.zeros((num,), scores.dtype), zeros, parameters, empty, groups, codes)


def _fuse_padded(segments, scores, weights, groups: ProposalGroups, temperature, codes, method: str, options: dict):
    """Laplace / Student-t through :func:`jaxfuse.fuse_groups`, on groups packed by size bucket.

    Groups go to the power-of-two size bucket that holds them (4, 8, ..., N
    members) and each bucket is one padded ``[rows, capacity]`` batch, so
    memory follows the members (see :func:`bucket_shapes`) rather than
    (groups) x (largest group). Reading the bucket counts makes one host round
    trip; under a caller's ``jit`` the rows are static bounds.
    """
    from jaxfuse._fuse import fuse_groups  # the core module; imported late to keep import order free

    items, size = scores.shape
    layout = _bucket_layout(groups, capacities=size_buckets(size))
    traced = _is_traced(layout.counts)
    counts = None if traced else np.asarray(layout.counts)
    if counts is not None and counts.sum() == 0:
        return _no_groups(method, scores, groups, codes)
    shapes = bucket_shapes(counts, size, items)
    packed = _pack_buckets(segments, weights, groups, layout, shapes=shapes)
    fused = [
        None if batch is None else fuse_groups(*batch, template=method, temperature=temperature, **options)
        for batch in packed
    ]
    location, parameters, result = _unpack_buckets(fused, packed, layout)
    codes = jnp.maximum(codes, temperature_code(temperature, scores.dtype))
    return _finish(
        location, _fused_scores(scores, weights, groups, temperature), parameters.scale, parameters, result, groups, codes
    )

# ------------------------------------------------------------------ Soft-NMS


@functools.partial(jax.jit, static_argnames=("linear",))
def _soft_nms_checked(segments, scores, valid, threshold, sigma, floor, use_iou, offset, extra, *, linear):
    problems, codes, sound = _proposal_flags(segments, scores, valid, extra)
    kept = soft_nms_batch(segments, scores, sound, threshold, sigma, floor, use_iou, offset, linear=linear)
    dtype = scores.dtype
    options_ok = (temperature_code(sigma, dtype) == ResultCode.SUCCESSFUL) & jnp.isfinite(jnp.asarray(floor, dtype))
    option_code = jnp.where(options_ok, threshold_code(threshold), ResultCode.INVALID_OPTION).astype(RESULT_DTYPE)
    return kept, problems, jnp.maximum(codes, option_code)


@functools.partial(jax.jit, static_argnames=("linear",))
def _soft_nms_program(segments, scores, valid, threshold, sigma, floor, use_iou, offset, extra, *, linear):
    """Soft-NMS, value checks and the output in one program: one compile, one dispatch."""
    kept, problems, codes = _soft_nms_checked(
        segments, scores, valid, threshold, sigma, floor, use_iou, offset, extra, linear=linear
    )
    groups = ProposalGroups(kept.slot, kept.order, kept.count)
    return _soft_nms_output(segments, kept.scores, groups, codes), problems


@jax.jit
def _soft_nms_output(segments, kept, groups: ProposalGroups, codes):
    items, size = kept.shape
    num = items * size
    leader = jnp.maximum(groups.leader, 0)
    kept_segments = jnp.take_along_axis(segments, leader[..., None], axis=1)
    success = jnp.full((num,), ResultCode.SUCCESSFUL, RESULT_DTYPE)
    return _finish(
        kept_segments.reshape(num, 2), kept.reshape(num), jnp.zeros((num, 2), kept.dtype), None, success, groups, codes
    )


def _soft_nms_options(options: dict) -> tuple[bool, float, float]:
    unknown = set(options) - {"decay", "sigma", "score_floor"}
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for method 'soft_nms'; expected decay, sigma, score_floor")
    decay = choice(options.get("decay", "gaussian"), "decay", DECAYS)
    sigma = positive_scalar(options.get("sigma", DEFAULT_SIGMA), "sigma")
    floor = options.get("score_floor", DEFAULT_SCORE_FLOOR)
    if not isinstance(floor, jax.core.Tracer):
        if np.ndim(floor) != 0 or not np.isfinite(floor):
            raise ValueError(f"`score_floor` must be a finite scalar, got {floor!r}")
        floor = float(floor)
    return decay == "linear", sigma, floor


def _check_options(method: str, options: dict):
    if method == "soft_nms":
        return _soft_nms_options(options)
    if method == "student_t":
        from jaxfuse._fuse import _template_options

        _template_options(method, dict(options))  # raises on unknown or bad options
        return options
    if options:
        raise TypeError(f"method {method!r} takes no options, got {sorted(options)}")
    return options


# ------------------------------------------------------------------ public API


class _Resolved(NamedTuple):
    threshold: Any
    overlap: str
    discrete: bool
    method: str
    temperature: Any


def resolve_fusion_settings(preset=None, **explicit) -> _Resolved:
    """The preset's settings overridden by the explicit ones that are not None, each checked.

    Raises:
        ValueError, TypeError: an unknown preset or method, a threshold outside
            [0, 1], a temperature that is not positive and finite, a
            non-bool ``discrete``; the message names the argument. Traced
            threshold and temperature pass (the kernels give them result codes).
    """
    for name in ("method", "overlap", "discrete", "preset"):
        if _is_traced(explicit.get(name)) or (name == "preset" and _is_traced(preset)):
            raise TypeError(f"`{name}` must be static (a Python value), not a traced value")
    settings = resolve_settings(preset, **explicit)
    method = choice(settings.method, "method", METHODS)
    threshold = validate_threshold(settings.overlap_threshold)
    overlap, discrete = validate_overlap(settings.overlap, settings.discrete)
    temperature = positive_scalar(settings.temperature, "temperature")
    return _Resolved(threshold, overlap, discrete, method, temperature)



def fuse_proposals(
    segments,
    scores,
    weights=None,
    valid=None,
    *,
    overlap_threshold: float | None = None,
    overlap: str | None = None,
    discrete: bool | None = None,
    method: str | None = None,
    temperature: float | None = None,
    preset: str | FusionSettings | None = None,
    **options,
) -> FusedProposals:
    """Group raw proposals and fuse each group, for a whole padded batch of items.

    The published rule (Zhou et al., CVPR 2023), per item: the highest-scoring
    remaining proposal leads a group and absorbs every remaining proposal whose
    overlap with it is strictly greater than ``overlap_threshold``; each group
    is fused into one instance by the template ``method`` under softmax
    weights ``softmax(weights / temperature)``; fused instances come out in
    leader order. Score ties go to the lower input index.

    Args:
        segments: ``[..., N, 2]`` (start, end) floats; leading dims are items,
            e.g. ``[videos, classes, N, 2]``.
        scores: ``[..., N]`` ordering scores (the published outer-inner
            contrast); also fused, as a weighted average, into the fused score.
        weights: ``[..., N]`` softmax logits of the members (the published inner
            score); default: ``scores``.
        valid: ``[..., N]`` bool marking real proposals of ragged items;
            default all. Invalid rows may hold anything and change nothing.
        overlap_threshold: membership is ``overlap > overlap_threshold``; in
            [0, 1]. Default 0.25.
        overlap: ``"candidate"`` (default): intersection / the candidate's
            length (the published measure); ``"iou"``: intersection over union.
        discrete: the published ``+1`` frame convention (``length = end -
            start + 1``) if True; continuous lengths if False (default: right
            for times in seconds, where ``+1`` would merge ``[10, 12]`` and
            ``[12.2, 13]``).
        method: ``"gaussian"`` (default), ``"uniform"``, ``"exponential"``,
            ``"laplace"``, ``"student_t"`` (templates), ``"nms"`` (keep each
            leader) or ``"soft_nms"`` (Bodla et al.; uses ``overlap`` and
            ``discrete`` too: pass ``overlap="iou", discrete=False`` for the
            usual tIoU).
        temperature: softmax temperature T > 0; default 0.2 (the published
            evaluation value; 0.02 down to 0.0016 for pseudo labels). Changing
            it does not recompile.
        preset: ``"default"`` (:data:`jaxfuse.DEFAULT`), ``"published"``
            (:data:`jaxfuse.PUBLISHED`: candidate overlap > 0.25 with the
            ``+1`` frame convention, Gaussian at T = 0.2; pass the inner scores
            as ``weights``, as the published code does) or a
            :class:`jaxfuse.FusionSettings`. The five setting arguments above
            default to None, which means "the preset's value"; an explicit
            value beside a preset wins (``preset="published",
            temperature=0.02`` is the published rule at a training temperature).
        **options: ``"student_t"``: the options of :func:`jaxfuse.fuse_groups`
            (``df``, ``fit_df``, ``df_bounds``, ``max_steps``, ``rtol``,
            ``atol``). ``"soft_nms"``: ``decay`` (``"gaussian"``, default, or
            ``"linear"``), ``sigma`` (0.5; Gaussian decay
            ``exp(-overlap**2 / sigma)``), ``score_floor`` (0.001; lower scores
            are dropped, so negative scores never survive). Linear decay
            multiplies by ``1 - overlap`` where ``overlap > overlap_threshold``.

    Dtypes: the computation follows the input's float dtype. float64 needs
    ``jax_enable_x64``; without it float64 input is computed in float32 (a
    warning says so, once per process).

    Inside a caller's ``jax.jit`` (arrays closed over or passed in, options
    such as ``temperature`` and ``overlap_threshold`` traced), values cannot be
    checked before tracing; they get result codes instead of errors: see
    ``result`` and ``item_result`` of :class:`FusedProposals`. ``method``,
    ``overlap``, ``discrete`` and ``preset`` must be static.

    Returns:
        A :class:`FusedProposals`: numpy arrays for numpy input, JAX arrays for
        JAX input or under a caller's ``jit`` (torch tensors for torch input).

    Raises:
        TypeError: non-float arrays, a non-bool ``valid``, unknown options.
        ValueError: wrong shapes, ``start > end`` or non-finite values in a
            valid proposal, a threshold outside [0, 1], a temperature that is
            not positive and finite, an unknown method or preset; the message
            names the argument.

    Example:
        >>> import numpy as np
        >>> fused = fuse_proposals(np.array([[0., 10.], [2., 12.], [40., 50.]], np.float32),
        ...                        np.array([0.9, 0.8, 0.5], np.float32), temperature=1.0)
        >>> int(fused.count), fused.group.tolist()
        (2, [0, 0, 1])
        >>> fused.segments[:2].astype(float).round(2).tolist()
        [[0.95, 10.95], [40.0, 50.0]]
    """
    kind = array_kind(segments, scores, weights, valid)
    settings = resolve_fusion_settings(
        preset, overlap_threshold=overlap_threshold, overlap=overlap, discrete=discrete, method=method,
        temperature=temperature,
    )
    threshold, overlap, discrete, method, temperature = settings
    options = _check_options(method, options)
    inputs = validate_proposals(segments, scores, valid, extra=[("weights", weights)])
    batch_shape, size = inputs.scores.shape[:-1], inputs.scores.shape[-1]
    items = math.prod(batch_shape)
    # Reshape only when needed: on already-flat input each no-op would still be a dispatch.
    flat = lambda x, *tail: x if x.shape == (items, size, *tail) else x.reshape(items, size, *tail)  # noqa: E731
    segments, scores, valid = flat(inputs.segments, 2), flat(inputs.scores), flat(inputs.valid)
    weights = None if inputs.extra[0] is None else flat(inputs.extra[0])
    checked = () if weights is None else (weights,)
    use_iou, offset = overlap_settings(overlap, discrete)

    if method == "soft_nms":
        linear, sigma, floor = options
        fused, problems = _soft_nms_program(
            segments, scores, valid, threshold, sigma, floor, use_iou, offset, checked, linear=linear
        )
    elif method in PADDED_TEMPLATES:
        groups, problems, codes = _group_batch_checked(segments, scores, valid, threshold, use_iou, offset, checked)
        weights = scores if weights is None else weights
        fused = _fuse_padded(segments, scores, weights, groups, temperature, codes, method, options)
    else:
        # NMS (whose fusion needs no temperature; 1.0 keeps the program's signature) and the closed forms.
        fused, problems = _group_and_fuse(
            segments, scores, weights, valid, threshold, use_iou, offset, 1.0 if method == "nms" else temperature,
            method=method,
        )
    if inputs.check_on_device and not _is_traced(problems):
        # Checked after the kernels are queued: one small transfer, no extra round trip.
        raise_for_value_problems(problems, segments, scores, valid, [("weights", w) for w in checked])

    if batch_shape != (items,):
        fused = jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), fused)
    return from_jax(fused, kind)


# ------------------------------------------------------------------ ragged lists


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


def _padded_size(n: int, min_size: int, growth: int) -> int:
    """The smallest ``min_size * growth**k`` holding ``n``."""
    size = min_size
    while size < n:
        size *= growth
    return size


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
    padded = np.array([_padded_size(n, min_size, growth) for n in sizes], dtype=np.int64)
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
        if _is_traced(fuse_options.get(name)):
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
