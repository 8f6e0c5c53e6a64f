"""The one grouping entry: the sequential loop or the parallel rounds, chosen per backend and item size.

Every user of the greedy grouping (:func:`jaxfuse.group_proposals`,
:func:`jaxfuse.fuse_proposals` and :func:`jaxfuse.fuse_proposal_lists`,
:func:`jaxfuse.detect`, :func:`jaxfuse.pseudo_labels`, ActionFormer's hard NMS
and ``method="gaussian"`` in :mod:`jaxfuse.compat.actionformer`) comes here.
Both methods give the same groups bit for bit; they differ in speed only:

* ``"loop"`` (:func:`jaxfuse._proposals.grouping.group_batch`): one leader per
  iteration, ``O(N x groups)`` per item, with row compaction;
* ``"parallel"`` (:func:`jaxfuse._proposals.parallel_grouping.parallel_group_batch`):
  two sorts and a few rounds over overlapping tile pairs, ``O(N log N +
  overlapping pairs)`` per item.

On GPU and TPU the parallel form always: the loop is launch-bound there (one
leader per iteration, each a few tiny kernels). On CPU the parallel form from
:data:`CPU_PARALLEL_FROM` padded proposals per item, the loop below. Measured
on the 2-core CPU this project is developed on (load average 4-7 from other
work, so single figures vary by up to 2x; ratios side by side), warm, loop /
parallel in milliseconds:

* THUMOS-like buckets (the published rule): 64 x 110 items 0.30 / 1.4,
  256 x 145 1.4 / 14, 1024 x 145 13 / 106 (XLA:CPU sorts at 90-150 ns per
  element: the two sorts alone cost more than the loop there);
* ActionFormer-like 212 x 2,000 per (video, class), IoU > 0.1, about 30
  groups per item: 29 / 458 (buckets 1024 and 4096); dense short videos
  truncated to 2,048 and 8,192 proposals, 16 items: 16 / 99 and 52 / 219;
* sparse long items (clustered, about a group per 4 proposals), 16 items of
  2,048 / 8,192: 44 / 36-113 and 1,324 / 304-430; one of 32,768: 655 / 24-46;
* one item of 2,000 disjoint proposals 10 / 1-4, of 2,000 in one group
  0.06 / 2; one of 100,000 short proposals (92,000 groups) 17,500 / 107-270.

Compilation weighs on the choice too: the parallel program takes about 1.8 s
of CPU to build against 0.4 s for a loop without row compaction (1 to 4
rows), so a one-shot call on one item of a few thousand proposals is faster
with the loop even when its warm time is a few milliseconds longer; from
8,192 proposals the loop's warm time on sparse items passes a second.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxfuse._core.interop import is_traced
from jaxfuse._core.settings import resolve_settings
from jaxfuse._proposals.grouping import (
    ProposalGroups,
    group_batch,
    group_batch_distinct,
    overlap_settings,
    proposal_flags,
    raise_for_value_problems,
    threshold_code,
    validate_overlap,
    validate_proposals,
    validate_threshold,
)
from jaxfuse._proposals.parallel_grouping import parallel_group_batch
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache

METHODS = ("loop", "parallel")

# On CPU, the parallel rounds for items padded to at least this many proposals (see the module docstring).
CPU_PARALLEL_FROM = 8192


def grouping_method(items: int, size: int, backend: str | None = None) -> str:
    """``"loop"`` or ``"parallel"`` for a batch of ``items`` rows of ``size`` proposals on ``backend``.

    Args:
        items: rows in the batch (static; the choice does not depend on it today,
            both methods' costs growing about linearly with it).
        size: padded proposals per row (static).
        backend: ``"cpu"``, ``"gpu"``, ``"tpu"``...; default :func:`jax.default_backend`.

    Returns:
        The faster method there (see the module docstring).
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return "parallel"
    return "parallel" if size >= CPU_PARALLEL_FROM else "loop"


def _use_parallel(method: str | None, items: int, size: int) -> bool:
    method = grouping_method(items, size) if method is None else method
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    return method == "parallel"


def group_items(segments, scores, valid, threshold, use_iou, offset, *, method: str | None = None) -> ProposalGroups:
    """Greedy grouping of a flat batch ``[B, N]`` by the method that is faster here (traceable; no validation).

    Args:
        segments: ``[B, N, 2]`` floats.
        scores: ``[B, N]`` ordering scores, finite where valid.
        valid: ``[B, N]`` bool.
        threshold: scalar; membership is ``overlap > threshold``.
        use_iou: bool scalar, see :func:`jaxfuse._proposals.grouping.segment_overlap`.
        offset: 0 or 1, likewise.
        method: static, ``"loop"``, ``"parallel"`` or None (:func:`grouping_method`).

    Returns:
        :class:`jaxfuse._proposals.grouping.ProposalGroups` with leading dim ``B``; the same for either method.

    Example:
        >>> import jax.numpy as jnp
        >>> groups = group_items(jnp.array([[[0., 10.], [1., 9.], [20., 30.]]]), jnp.array([[0.9, 0.8, 0.7]]),
        ...                      jnp.ones((1, 3), bool), 0.25, False, 0, method="parallel")
        >>> groups.group.tolist(), groups.count.tolist()
        ([[0, 0, 1]], [2])
    """
    items, size = scores.shape
    kernel = parallel_group_batch if _use_parallel(method, items, size) else group_batch
    return kernel(segments, scores, valid, threshold, use_iou, offset)


def group_items_distinct(segments, scores, valid, first_slot, threshold, use_iou, offset, *, num_distinct: int,
                         method: str | None = None) -> ProposalGroups:
    """:func:`group_items` on the first occurrences of repeated proposals only (:func:`jaxfuse._proposals.grouping.group_batch_distinct`).

    The method is chosen for the ``num_distinct`` columns the kernel runs on.
    """
    kernel = parallel_group_batch if _use_parallel(method, scores.shape[0], num_distinct) else None
    return group_batch_distinct(segments, scores, valid, first_slot, threshold, use_iou, offset,
                                num_distinct=num_distinct, kernel=kernel)


@functools.partial(jax.jit, static_argnames=("num_distinct",))
def group_batch_checked(segments, scores, valid, threshold, use_iou, offset, extra=(), first_slot=None, *,
                         num_distinct=None):
    """The grouping entry (:mod:`jaxfuse._proposals.grouping_entry`), :func:`value_problems` and :func:`item_codes` in one program.

    With ``first_slot`` (and ``num_distinct``), the grouping runs on first
    occurrences only (:func:`group_batch_distinct`); same result.

    Returns:
        ``(groups, problems, codes)``: ``codes [B]`` is each item's
        :class:`jaxfuse.ResultCode` from its values (proposals with bad values
        join no group) and the threshold.
    """
    problems, codes, sound = proposal_flags(segments, scores, valid, extra)
    if first_slot is None:
        groups = group_items(segments, scores, sound, threshold, use_iou, offset)
    else:
        groups = group_items_distinct(
            segments, scores, sound, first_slot, threshold, use_iou, offset, num_distinct=num_distinct
        )
    return groups, problems, jnp.maximum(codes, threshold_code(threshold))


def group_proposals(
    segments: Any,
    scores: Any,
    valid: Any = None,
    *,
    overlap_threshold: float | None = None,
    overlap: str | None = None,
    discrete: bool | None = None,
    preset=None,
) -> ProposalGroups:
    """Group proposals with the published greedy rule, for many items at once.

    Args:
        segments: ``[..., N, 2]`` (start, end); leading dims are items.
        scores: ``[..., N]`` ordering scores; ties go to the lower index.
        valid: optional ``[..., N]`` bool; invalid proposals join no group.
        overlap_threshold: a proposal joins the leader's group when its overlap
            is strictly greater than this; in [0, 1] (default 0.25).
        overlap: ``"candidate"`` (intersection / candidate length, published,
            default) or ``"iou"``.
        discrete: the ``+1`` frame convention for lengths if True; default
            False (continuous lengths, right for times in seconds).
        preset: ``"default"``, ``"published"`` or a :class:`jaxfuse.FusionSettings`
            whose grouping settings fill the arguments left at None (explicit
            values win).

    Inside a caller's ``jit``, a proposal with a non-finite value or start >
    end joins no group (group ``-1``); :func:`jaxfuse.fuse_proposals` reports
    such items with a result code.

    Returns:
        :class:`ProposalGroups` of JAX arrays (leading dims kept).

    Raises:
        TypeError, ValueError: bad shapes or dtypes, non-finite values, or
            ``start > end`` in a valid proposal (the message names the argument).

    Example:
        >>> import numpy as np
        >>> groups = group_proposals(np.array([[0., 10.], [1., 9.], [20., 30.]]),
        ...                          np.array([0.9, 0.8, 0.7]))
        >>> groups.group.tolist(), groups.leader.tolist(), int(groups.count)
        ([0, 0, 1], [0, 2, -1], 2)
    """
    ensure_compilation_cache()  # before this call's first compilation
    settings = resolve_settings(preset, overlap_threshold=overlap_threshold, overlap=overlap, discrete=discrete)
    threshold = validate_threshold(settings.overlap_threshold)
    overlap, discrete = validate_overlap(settings.overlap, settings.discrete)
    inputs = validate_proposals(segments, scores, valid)
    batch_shape, size = inputs.scores.shape[:-1], inputs.scores.shape[-1]
    items = math.prod(batch_shape)
    flat = (inputs.segments.reshape(items, size, 2), inputs.scores.reshape(items, size), inputs.valid.reshape(items, size))
    groups, problems, _ = group_batch_checked(*flat, threshold, *overlap_settings(overlap, discrete))
    if inputs.check_on_device and not is_traced(problems):
        raise_for_value_problems(problems, *flat)
    return ProposalGroups(
        groups.group.reshape(*batch_shape, size),
        groups.leader.reshape(*batch_shape, size),
        groups.count.reshape(batch_shape),
    )
