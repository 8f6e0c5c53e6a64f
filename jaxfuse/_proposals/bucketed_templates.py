"""Laplace and Student-t fusion of grouped proposals: groups packed by size bucket into padded batches for fuse_groups."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import is_traced
from jaxfuse._core.padding import bucket_size, size_buckets
from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode
from jaxfuse._fusion.closed_forms import LaplaceParameters
from jaxfuse._fusion.student_t import StudentTParameters
from jaxfuse._proposals.group_fusion import FusedProposals, finish_fused_groups, fused_scores, temperature_code
from jaxfuse._proposals.grouping import ProposalGroups


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
    return finish_fused_groups(zeros, jnp.zeros((num,), scores.dtype), zeros, parameters, empty, groups, codes)


def fuse_padded_templates(segments, scores, weights, groups: ProposalGroups, temperature, codes, method: str, options: dict):
    """Laplace / Student-t through :func:`jaxfuse.fuse_groups`, on groups packed by size bucket.

    Groups go to the power-of-two size bucket that holds them (4, 8, ..., N
    members) and each bucket is one padded ``[rows, capacity]`` batch, so
    memory follows the members (see :func:`bucket_shapes`) rather than
    (groups) x (largest group). Reading the bucket counts makes one host round
    trip; under a caller's ``jit`` the rows are static bounds.
    """
    from jaxfuse._fusion.fuse_groups import fuse_groups  # the core module; imported late to keep import order free

    items, size = scores.shape
    layout = _bucket_layout(groups, capacities=size_buckets(size))
    traced = is_traced(layout.counts)
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
    return finish_fused_groups(
        location, fused_scores(scores, weights, groups, temperature), parameters.scale, parameters, result, groups, codes
    )
