"""Soft-NMS (Bodla et al., ICCV 2017) for temporal segments, batched over items.

The standard sequential algorithm, as temporal action localization codebases
run it: repeatedly take the remaining proposal with the highest (decayed)
score, keep it, and decay the scores of all the others by their overlap with
it; a proposal whose score falls below ``score_floor`` is dropped.

* ``decay="linear"``: ``score *= 1 - overlap`` where ``overlap > threshold``;
* ``decay="gaussian"``: ``score *= exp(-overlap**2 / sigma)`` for every proposal.

The overlap is IoU by default, as in Bodla et al. and every TAL codebase
(:func:`jaxfuse.fuse_proposals` resolves ``overlap=None`` to ``"iou"`` for
``"soft_nms"``); the published preset, or ``overlap="candidate"``, decays by
the published grouping measure instead.

Each selection is one iteration of a ``lax.while_loop`` costing O(N) per item
(no N x N matrix), batched over items with the same compaction as the grouping
kernel. Ties go to the lower input index.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxfuse._core.rows import compacted_while_loop, first_best
from jaxfuse._proposals.grouping import leader_overlaps

DECAYS = ("gaussian", "linear")
DEFAULT_SIGMA = 0.5
DEFAULT_SCORE_FLOOR = 0.001


class SoftNMSResult(NamedTuple):
    """Kept proposals of each item, in selection order.

    Attributes:
        order: ``[B, N]`` int32, the input index of the ``j``-th kept proposal
            for ``j < count``; ``-1`` beyond.
        scores: ``[B, N]`` the decayed score of the ``j``-th kept proposal at
            the moment it was selected; zero beyond ``count``.
        slot: ``[B, N]`` int32, for each input proposal its position in
            ``order``, or ``-1`` if it was dropped or is invalid.
        count: ``[B]`` int32, the number of kept proposals.
    """

    order: jax.Array
    scores: jax.Array
    slot: jax.Array
    count: jax.Array


class _SoftNMSState(NamedTuple):
    scores: jax.Array  # [b, N] current decayed scores; -inf once selected or dropped
    slot: jax.Array  # [b, N] selection rank of each input, -1 until selected
    kept_score: jax.Array  # [b, N] score of each input when it was selected
    count: jax.Array  # [b]
    current: jax.Array  # [b] the proposal to select next
    active: jax.Array  # [b] whether ``current`` is real


def _drop_below(scores, floor):
    return jnp.where(scores >= floor, scores, -jnp.inf)


def _soft_nms_step(inputs, state: _SoftNMSState, *, linear: bool) -> _SoftNMSState:
    starts, ends, threshold, sigma, floor, use_iou, offset = inputs
    positions = jnp.arange(starts.shape[1], dtype=jnp.int32)
    # Inactive rows have no score above -inf left, so every update below is a no-op there.
    selected = (positions == state.current[:, None]) & state.active[:, None]
    slot = jnp.where(selected, state.count[:, None], state.slot)
    kept_score = jnp.where(selected, state.scores, state.kept_score)
    overlaps = leader_overlaps(starts, ends, state.current, use_iou, offset)
    if linear:
        decay = jnp.where(overlaps > threshold, 1 - overlaps, 1)
    else:
        decay = jnp.exp(-jnp.square(overlaps) / sigma)
    scores = _drop_below(jnp.where(selected, -jnp.inf, state.scores * decay), floor)
    count = state.count + state.active.astype(jnp.int32)
    return _SoftNMSState(scores, slot, kept_score, count, *first_best(scores))


def soft_nms_batch(
    segments, scores, valid, threshold, sigma, score_floor, use_iou, offset, *, linear: bool
) -> SoftNMSResult:
    """Soft-NMS on a flat batch ``[B, N]`` (traceable; no validation).

    Args:
        segments: ``[B, N, 2]`` floats.
        scores: ``[B, N]`` scores, finite where valid (the decay multiplies
            them, so they are meant to be non-negative; any below
            ``score_floor`` are dropped at once).
        valid: ``[B, N]`` bool.
        threshold: linear decay applies where ``overlap > threshold``.
        sigma: Gaussian decay width, ``exp(-overlap**2 / sigma)``.
        score_floor: proposals whose score drops below this are discarded.
        use_iou: bool scalar, see :func:`jaxfuse._proposals.grouping.segment_overlap`.
        offset: 0 or 1, likewise.
        linear: linear decay if True, Gaussian otherwise (static).

    Returns:
        :class:`SoftNMSResult`.
    """
    items, size = scores.shape
    if items == 0 or size == 0:
        unset = jnp.full((items, size), -1, jnp.int32)
        return SoftNMSResult(unset, jnp.zeros((items, size), scores.dtype), unset, jnp.zeros((items,), jnp.int32))
    dtype = scores.dtype
    per_row = lambda x, dtype: jnp.broadcast_to(jnp.asarray(x, dtype), (items, 1))  # noqa: E731
    inputs = (
        segments[..., 0], segments[..., 1],
        per_row(threshold, dtype), per_row(sigma, dtype), per_row(score_floor, dtype),
        per_row(use_iou, bool), per_row(offset, dtype),
    )
    current = _drop_below(jnp.where(valid, scores, -jnp.inf), inputs[4])
    unset = jnp.full((items, size), -1, jnp.int32)
    state = _SoftNMSState(
        current, unset, jnp.zeros_like(scores), jnp.zeros((items,), jnp.int32), *first_best(current)
    )
    final = compacted_while_loop(lambda i, s: _soft_nms_step(i, s, linear=linear), inputs, state)
    # Invert slot -> input index with one scatter after the loop.
    rows = jnp.broadcast_to(jnp.arange(items)[:, None], (items, size))
    target = jnp.where(final.slot >= 0, final.slot, size)
    inputs_index = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (items, size))
    order = unset.at[rows, target].set(inputs_index, mode="drop")
    kept = jnp.zeros_like(scores).at[rows, target].set(final.kept_score, mode="drop")
    return SoftNMSResult(order, kept, final.slot, final.count)
