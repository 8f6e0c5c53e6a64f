"""Fusion of grouped proposals in segment form: every member carries its group id, segment sums give each group's template.

Also the result type, :class:`FusedProposals`, and the program that groups and
fuses a batch in one dispatch (closed forms and NMS). Memory stays O(items x N)
whatever the group sizes.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode, repr_with_code_names
from jaxfuse._fusion.flat_closed_forms import GroupMoments, mean_excess, parameters_from_moments
from jaxfuse._proposals.grouping import ProposalGroups
from jaxfuse._proposals.grouping_entry import group_batch_checked
from jaxfuse._runtime.executable_store import stored_executable


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

    __repr__ = repr_with_code_names  # result codes by name; still a NamedTuple (a pytree)


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
      lose no precision to cancellation (as :mod:`jaxfuse._fusion.closed_forms` does
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
    reference, mean_offset = means.reference[:, :2], means.mean_offset[:, :2]
    if method == "gaussian":
        # Two passes (deviations from the group mean): the leader need not be the most probable member.
        deviation = means.offsets[:, :2] - means.mean_offset[jnp.minimum(means.ids, num - 1), :2]
        squares = jax.ops.segment_sum(means.weights[:, None] * jnp.square(deviation), means.ids, num_segments=num)
        variance = squares / jnp.where(means.total > 0, means.total, 1)[:, None]
        parameters = parameters_from_moments(method, GroupMoments(reference, mean_offset, variance=variance))
        return parameters.location, parameters.scale, parameters
    low, high = _extremes(x, means.ids, num)
    moments = GroupMoments(reference, mean_offset, low=low, high=high, nonempty=(means.total > 0)[:, None])
    parameters = parameters_from_moments(method, moments)
    if method == "uniform":
        half_width = (high - low) / 2
        return low + half_width, half_width, parameters
    # exponential: same location as the Gaussian (erratum 3); its spread is the mean excess 1 / rate.
    return means.mean[:, :2], mean_excess(moments), parameters


def temperature_code(temperature, dtype) -> jax.Array:
    """``INVALID_OPTION`` for a (traced) temperature that is not positive and finite in ``dtype``."""
    value = jnp.asarray(temperature, dtype)
    ok = jnp.isfinite(value) & (value > 0)
    return jnp.where(ok, ResultCode.SUCCESSFUL, ResultCode.INVALID_OPTION).astype(RESULT_DTYPE)


def finish_fused_groups(location, score, spread, parameters, result, groups: ProposalGroups, codes) -> FusedProposals:
    """Reshape per-group ``[B*N, ...]`` arrays to ``[B, N, ...]``, apply the result codes, blank the padding.

    ``codes [B]`` are the items' input and option codes; they go to every group
    of the item. ``spread`` None means zero spread (NMS keeps a member as it
    is): a constant array of zeros there would make XLA constant-fold its
    finiteness check, for seconds at large shapes ("slow_operation_alarm").
    A group whose inputs were sound but whose outputs are not finite
    overflowed (finite values near the dtype's limit, or a temperature too
    small for it): ``OVERFLOW``. Groups with a code from ``NONFINITE_INPUT``
    up get zeros.
    """
    items, size = groups.group.shape
    valid = jnp.arange(size) < groups.count[:, None]
    shaped = lambda x: x.reshape((items, size) + x.shape[1:])  # noqa: E731
    result = jnp.maximum(result.reshape(items, size), codes[:, None])
    finite = jnp.all(jnp.isfinite(shaped(location)), axis=-1) & jnp.isfinite(shaped(score))
    if spread is not None:
        finite &= jnp.all(jnp.isfinite(shaped(spread)), axis=-1)
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
        spread=jnp.zeros((items, size, 2), score.dtype) if spread is None else blank(spread),
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
    return finish_fused_groups(location, means.mean[:, 2], spread, parameters, success, groups, codes)


@jax.jit
def _fuse_nms(segments, scores, groups: ProposalGroups, codes):
    leader = jnp.maximum(groups.leader, 0)
    kept_segments = jnp.take_along_axis(segments, leader[..., None], axis=1)
    kept_scores = jnp.take_along_axis(scores, leader, axis=1)
    num = scores.size
    success = jnp.full((num,), ResultCode.SUCCESSFUL, RESULT_DTYPE)
    return finish_fused_groups(
        kept_segments.reshape(num, 2), kept_scores.reshape(num), None, None, success, groups, codes,
    )


@jax.jit
def fused_scores(scores, weights, groups: ProposalGroups, temperature):
    """Per-group weighted average of the ordering scores, ``[B*N]``."""
    means = _group_means(scores[..., None], weights, groups, jnp.asarray(temperature, scores.dtype))
    return means.mean[:, 0]


@functools.partial(jax.jit, static_argnames=("method", "num_distinct"))
def _group_and_fuse_program(segments, scores, weights, valid, threshold, use_iou, offset, temperature,
                            first_slot=None, *, method: str, num_distinct: int | None = None):
    """Grouping, value checks and a closed-form (or NMS) fusion in one program: one compile, one dispatch.

    ``first_slot`` and ``num_distinct``: group the first occurrences of
    repeated proposals only (see :func:`jaxfuse._proposals.grouping.group_batch_distinct`).

    Returns:
        ``(fused, problems)``, see :func:`jaxfuse._proposals.grouping.value_problems`.
    """
    checked = () if weights is None else (weights,)
    groups, problems, codes = group_batch_checked(
        segments, scores, valid, threshold, use_iou, offset, checked, first_slot, num_distinct=num_distinct
    )
    if method == "nms":
        return _fuse_nms(segments, scores, groups, codes), problems
    weights = scores if weights is None else weights
    return _fuse_closed_form(segments, scores, weights, groups, temperature, codes, method=method), problems


# The program of a fuse_proposals call; kept whole on disk so that a fresh process skips tracing it.
group_and_fuse = stored_executable(_group_and_fuse_program, static_argnames=("method", "num_distinct"))
