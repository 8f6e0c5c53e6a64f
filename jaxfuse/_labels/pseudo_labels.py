"""Training-time pseudo labels: the published chain from CAS to snippet labels, as one jit-compatible call.

Zhou et al. (CVPR 2023) train with the same fusion as they evaluate: every
training step, the current predictions become fused detections, and these
become snippet-level pseudo labels (GauFuse_WSTAL ``utils/utils.py``:
``fuse_current_pred`` -> ``generate_segs`` -> ``convert_segment_to_tensor``).
There it is a Python loop per video and class ending in one HiGHS LP per
(video, class); here it is one compiled program of static shapes, so a JAX
training step can call it inside ``jit``:

1. items: per video, the classes whose video score is at least
   ``class_threshold`` (the published ``< threshold: skip``), at most
   ``max_classes`` per video (the highest scores first);
2. proposals: :func:`jaxfuse.proposals_from_cas` with
   ``convention="published"`` (runs of >= 2 snippets above each of the 20
   levels, inner and outer means with the published off-by-one), at most
   ``max_proposals`` per item;
3. grouping: :func:`jaxfuse.group_proposals` with the published rule
   (candidate overlap > 0.25, ``+1`` lengths, contrast order);
4. fusion at the training temperature: ``g = softmax(inner / T)`` over each
   group; the fused score is ``sum g_k contrast_k``; the fused start and end
   are taken to whole snippets as the LP needs them (``int()``). They are
   computed here as the leader's (whole) snippet plus ``floor`` of the
   weighted mean offset from it: at training temperatures the other members
   weigh 1e-10 and less, and ``leader + offset`` rounded to float32 would lose
   the offset's sign, which decides ``int()`` (the float64 published code
   keeps it). At most ``max_segments`` groups per item (leader order);
5. :func:`jaxfuse.segments_to_snippets` (the published LP, solved exactly on
   device by default: components, closed forms and a batched simplex).

Shapes are static: ``V x max_classes`` items of ``max_proposals`` proposal
slots and ``max_segments`` rows. Anything a bound drops is flagged in
``truncated``. Steps 2 to 5 run on the selected items only, two per video at
a time (the selected items first, in "slots"), so items of classes that do
not pass cost their buffers and nothing else.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import array_kind, from_jax
from jaxfuse._core.result_codes import ResultCode, raise_for_results, repr_with_code_names
from jaxfuse._core.settings import MARGIN_POWER, MARGIN_SCALE, PUBLISHED_CLASS_THRESHOLD, PUBLISHED_THRESHOLDS
from jaxfuse._core.validation import float_array, positive_int, positive_scalar
from jaxfuse._detection.cas_proposals import proposals_from_cas
from jaxfuse._labels.lp_rows import published_breaks
from jaxfuse._labels.snippets import (
    DEFAULT_CHECK_EVERY,
    DEFAULT_MAX_STEPS,
    approximate_snippets,
    check_solver_options,
    exact_first_stage,
    exact_labels,
    finish_exact,
)
from jaxfuse._proposals.grouping_entry import group_proposals
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache


class PseudoLabels(NamedTuple):
    """Snippet pseudo labels of a batch of videos.

    Attributes:
        labels: ``[V, L, C]`` labels in ``[0, 1]``: the LP solution for every
            selected (video, class) with segments; 0 elsewhere and after each
            video's length.
        result: ``[V, C]`` int32 :class:`jaxfuse.ResultCode` of each (video,
            class): see :class:`jaxfuse.SnippetLabels`; ``EMPTY_GROUP`` for
            classes not selected or without proposals; ``NONFINITE_INPUT``
            where the class's CAS inside the video, or its video score, holds
            a NaN or inf (whatever the score: that pair is skipped, its labels
            are 0, and the other pairs are as if it had not passed).
        selected: ``[V, C]`` bool, classes that were items (passed the class
            threshold with finite inputs and fit in ``max_classes``).
        num_segments: ``[V, C]`` int32, fused segments used as LP rows.
        truncated: ``[V, C]`` bool: proposals (``max_proposals``) or segments
            (``max_segments``) were dropped, or the class passed the threshold
            but did not fit in ``max_classes``.
        steps: ``[V, C]`` int32 solver iterations (see
            :class:`jaxfuse.SnippetLabels`).
        fallback: ``[V, C]`` bool, the exact solver handed a component to PDHG
            (see :class:`jaxfuse.SnippetLabels`).
    """

    labels: Any
    result: Any
    selected: Any
    num_segments: Any
    truncated: Any
    steps: Any
    fallback: Any

    __repr__ = repr_with_code_names  # result codes by name; still a NamedTuple (a pytree)


def _fuse_to_whole_snippets(segments, contrast, inner, valid, group, leader, count, temperature, max_segments: int):
    """Per item: the first ``max_segments`` groups as ``int()`` start, end and fused score (see the module docstring)."""
    items, size = contrast.shape
    member = valid & (group >= 0)
    flat_ids = jnp.where(member, group + size * jnp.arange(items)[:, None], items * size).reshape(-1)
    num = items * size + 1
    group_max = jax.ops.segment_max(jnp.where(member, inner, -jnp.inf).reshape(-1), flat_ids, num_segments=num)
    shift = (inner.reshape(-1) - group_max[flat_ids]) / temperature
    weight = jnp.where(member.reshape(-1), jnp.exp(jnp.where(member.reshape(-1), shift, 0)), 0)
    leader_segments = jnp.take_along_axis(segments, jnp.maximum(leader, 0)[..., None], axis=1)  # [I, P, 2] by group
    member_leader = jnp.take_along_axis(leader_segments, jnp.maximum(group, 0)[..., None], axis=1)  # per member
    offsets = jnp.where(member[..., None], segments - member_leader, 0).reshape(-1, 2)
    sums = jax.ops.segment_sum(
        jnp.concatenate([weight[:, None], weight[:, None] * offsets, (weight * contrast.reshape(-1))[:, None]], axis=-1),
        flat_ids,
        num_segments=num,
    )[:-1].reshape(items, size, 4)
    total = jnp.where(sums[..., 0] > 0, sums[..., 0], 1)
    mean_offset = sums[..., 1:3] / total[..., None]
    whole = leader_segments.astype(jnp.int32) + jnp.floor(mean_offset).astype(jnp.int32)
    fused_score = sums[..., 3] / total
    rows = jnp.arange(size) < count[:, None]
    keep = min(max_segments, size)
    return whole[:, :keep, 0], whole[:, :keep, 1], fused_score[:, :keep], rows[:, :keep]


def _item_chunk(num_videos: int, max_classes: int) -> int:
    """Items per pass of steps 2 to 5: two per video (1 to 3 of 20 classes pass on THUMOS14)."""
    return max(1, min(num_videos * max_classes, 2 * num_videos))


def _in_chunks(fn, count, chunk: int, batch: int, *args):
    """``fn`` on the first ``count`` of ``batch`` items of ``args``, ``chunk`` items at a time; zeros for the rest.

    Every array leaf of ``args`` and of ``fn``'s output holds the items along
    its first axis, item-major (any number of entries per item); scalar
    leaves of ``args`` go to every call whole, scalar outputs are summed.
    With every class an item, most items are not selected (THUMOS14: 1 to 3
    of 20 classes pass): passes over all of them would mostly work on nothing.
    """
    passes = -(-batch // chunk)
    leaves, tree = jax.tree.flatten(args)
    # Pad every leaf to whole passes, then view it as [passes, chunk entries, ...].
    blocked = [
        x if x.ndim == 0 else jnp.pad(x, [(0, passes * chunk * (x.shape[0] // batch) - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
        .reshape((passes, -1) + x.shape[1:])
        for x in leaves
    ]

    def call(index):
        return fn(*jax.tree.unflatten(tree, [x if x.ndim == 0 else x[index] for x in blocked]))

    out = jax.tree.map(
        lambda x: jnp.zeros(((passes,) + x.shape) if x.ndim else (), x.dtype), jax.eval_shape(lambda: call(0))
    )

    def one_pass(index, out):
        return jax.tree.map(lambda whole, new: whole + new if new.ndim == 0 else whole.at[index].set(new), out, call(index))

    out = jax.lax.fori_loop(0, -(-count // chunk), one_pass, out)
    return jax.tree.map(lambda x: x if x.ndim == 0 else x.reshape((-1,) + x.shape[2:])[: x.shape[1] // chunk * batch], out)


class _ItemRows(NamedTuple):
    """The chain up to the LP, for the items in "slot" order: the selected items first (slot ``s`` is item ``order[s]``)."""

    breaks: jax.Array  # [I, R, 4] int32
    score: jax.Array  # [I, R]
    rows: jax.Array  # [I, R] bool
    length: jax.Array  # [I] int32, 0 for items not selected
    truncated: jax.Array  # [I] bool
    order: jax.Array  # [I] int32, item (video * K + k) of each slot
    count: jax.Array  # scalar int32, selected items
    chosen: jax.Array  # [V, K] int32 classes
    item_valid: jax.Array  # [V, K] bool
    passes: jax.Array  # [V, C] bool
    nonfinite: jax.Array  # [V, C] bool: a NaN or inf in the CAS inside the video or in the video score


def _rows(
    cas, video_scores, length, temperature, class_threshold, *, thresholds, max_classes, max_proposals, max_segments,
    method,
):
    """Steps 1 to 4 of the module docstring, and the exact solver's first stage for ``method="lp"``, in slot order."""
    if cas.dtype in (jnp.float16, jnp.bfloat16):
        cas = cas.astype(jnp.float32)
    num_videos, num_snippets, _ = cas.shape
    dtype = cas.dtype
    # A (video, class) with a NaN or inf in its CAS inside the video, or in its
    # video score, is reported and skipped: never an item, so it takes no
    # class slot and nothing of it reaches the other pairs.
    inside = jnp.arange(num_snippets) < length[:, None]
    nonfinite = jnp.any(inside[:, :, None] & ~jnp.isfinite(cas), axis=1) | ~jnp.isfinite(video_scores)
    passes = (video_scores >= class_threshold) & ~nonfinite
    # The highest-scoring passing classes first; ties to the lower class index.
    ranked = jnp.where(passes, video_scores.astype(dtype), -jnp.inf)
    _, chosen = jax.lax.top_k(ranked, max_classes)  # [V, K]
    item_valid = jnp.take_along_axis(passes, chosen, axis=1)
    items = num_videos * max_classes
    selected = item_valid.reshape(-1)
    count = jnp.sum(selected, dtype=jnp.int32)
    order = jnp.argsort(~selected, stable=True).astype(jnp.int32)
    temperature = jnp.asarray(temperature, dtype)

    def rows_and_first_stage(slot_items, slot_index):
        real = slot_index < count
        video, klass = slot_items // max_classes, jnp.take_along_axis(chosen.reshape(-1), slot_items, axis=0)
        sequences = cas[video, :, klass]  # [chunk, L]
        item_length = jnp.where(real, length[video], 0)
        found = proposals_from_cas(
            sequences, np.asarray(thresholds), min_length=2, margin_scale=MARGIN_SCALE, margin_power=MARGIN_POWER,
            convention="published", length=item_length, max_proposals=max_proposals,
        )
        groups = group_proposals(
            found.segments, found.contrast, found.valid, overlap_threshold=0.25, overlap="candidate", discrete=True
        )
        start, end, score, rows = _fuse_to_whole_snippets(
            found.segments, found.contrast, found.inner, found.valid, groups.group, groups.leader, groups.count,
            temperature, max_segments,
        )
        if start.shape[1] < max_segments:
            pad = ((0, 0), (0, max_segments - start.shape[1]))
            start, end, score, rows = (jnp.pad(x, pad) for x in (start, end, score, rows))
        breaks = published_breaks(
            start.astype(dtype), end.astype(dtype), rows, item_length, num_snippets=num_snippets,
            scale=MARGIN_SCALE, power=MARGIN_POWER,
        )
        truncated = real & ((found.num_found > found.count) | (groups.count > max_segments))
        progress = None
        if method == "lp":
            progress = exact_first_stage(breaks, score, rows, _no_status(item_length), num_snippets=num_snippets)
        return breaks, score, rows, item_length, truncated, progress

    chunk = _item_chunk(num_videos, max_classes)
    breaks, score, rows, item_length, truncated, progress = _in_chunks(
        rows_and_first_stage, count, chunk, items, order, jnp.arange(items, dtype=jnp.int32)
    )
    rows_out = _ItemRows(breaks, score, rows, item_length, truncated, order, count, chosen, item_valid, passes,
                         nonfinite)
    return rows_out, progress


def _no_status(item_length):
    return jnp.zeros(item_length.shape, jnp.int32)


def _labels(items: _ItemRows, progress, rtol, atol, *, num_snippets, method, fallback, max_steps, check_every):
    """Step 5's labels (from the exact solver's stages, or by ``"pdhg"``/``"paint"``) scattered to ``[V, L, C]``."""
    num_videos, max_classes = items.chosen.shape
    num_classes = items.passes.shape[1]

    def solve(breaks, score, rows, length, progress):
        status = _no_status(length)
        if method == "lp":
            return exact_labels(
                progress, breaks, score, rows, length, status, num_snippets=num_snippets, fallback=fallback
            )
        return approximate_snippets(
            breaks, score, rows, length, status, rtol, atol, num_snippets=num_snippets, method=method,
            fallback=fallback, max_steps=max_steps, check_every=check_every,
        )

    if progress is not None:
        progress = progress._replace(rest=jnp.zeros((), jnp.int32))  # per-item fields only, in chunks
    solved = _in_chunks(
        solve, items.count, _item_chunk(num_videos, max_classes), num_videos * max_classes, items.breaks, items.score,
        items.rows, items.length, progress,
    )
    # Slots of selected items go to (video, class); the others nowhere (an out-of-range video, dropped).
    slot = jnp.arange(items.order.shape[0])
    video = jnp.where(slot < items.count, items.order // max_classes, num_videos)
    klass = items.chosen.reshape(-1)[items.order]

    def scatter(values, fill):
        dense = jnp.full((num_videos, num_classes) + values.shape[1:], fill, values.dtype)
        return dense.at[video, klass].set(values, mode="drop")

    selected = scatter(jnp.ones(slot.shape, bool), False)
    return PseudoLabels(
        labels=jnp.moveaxis(scatter(solved.snippets, 0), 1, 2),
        result=jnp.where(items.nonfinite, ResultCode.NONFINITE_INPUT, scatter(solved.result, ResultCode.EMPTY_GROUP)),
        selected=selected,
        num_segments=scatter(solved.num_segments, 0),
        truncated=scatter(items.truncated, False) | (items.passes & ~selected),
        steps=scatter(solved.steps, 0),
        fallback=scatter(solved.fallback, False),
    )


_ROW_OPTIONS = ("thresholds", "max_classes", "max_proposals", "max_segments", "method")
_LABEL_OPTIONS = ("num_snippets", "method", "fallback", "max_steps", "check_every")
chain_rows = jax.jit(_rows, static_argnames=_ROW_OPTIONS)
chain_labels = jax.jit(_labels, static_argnames=_LABEL_OPTIONS)


@functools.partial(jax.jit, static_argnames=_ROW_OPTIONS + ("fallback", "max_steps", "check_every"))
def chain_in_one(
    cas, video_scores, length, temperature, class_threshold, rtol, atol, *, thresholds, max_classes, max_proposals,
    max_segments, method, fallback, max_steps, check_every,
):
    """The whole chain in one program, the LP's second stage left out: ``(rest, labels, items, progress)``.

    The labels are final when ``rest`` (components the second stage would
    have to solve: none on the published chain's data) is 0.
    """
    items, progress = _rows(
        cas, video_scores, length, temperature, class_threshold, thresholds=thresholds, max_classes=max_classes,
        max_proposals=max_proposals, max_segments=max_segments, method=method,
    )
    labels = _labels(
        items, progress, rtol, atol, num_snippets=cas.shape[1], method=method, fallback=fallback, max_steps=max_steps,
        check_every=check_every,
    )
    rest = progress.rest if progress is not None else jnp.zeros((), jnp.int32)
    return rest, labels, items, progress


def _pseudo_labels(
    cas, video_scores, length, temperature, class_threshold, rtol, atol, *, thresholds, max_classes, max_proposals,
    max_segments, method, fallback, max_steps, check_every,
) -> PseudoLabels:
    """The chain: in a caller's ``jit``, one program; eagerly one program, plus two when the LP's second stage has work."""
    rows = {"thresholds": thresholds, "max_classes": max_classes, "max_proposals": max_proposals,
            "max_segments": max_segments, "method": method}
    labels = {"num_snippets": cas.shape[1], "method": method, "fallback": fallback, "max_steps": max_steps,
              "check_every": check_every}
    if not any(isinstance(x, jax.core.Tracer) for x in (cas, video_scores, length, temperature, class_threshold)):
        rest, out, items, progress = chain_in_one(
            cas, video_scores, length, temperature, class_threshold, rtol, atol, fallback=fallback,
            max_steps=max_steps, check_every=check_every, **rows,
        )
        if method != "lp" or int(rest) == 0:
            return out
    else:
        items, progress = chain_rows(cas, video_scores, length, temperature, class_threshold, **rows)
    if method == "lp":
        progress = finish_exact(progress, rtol, atol, max_steps=max_steps, check_every=check_every)
    return chain_labels(items, progress, rtol, atol, **labels)


def pseudo_labels(
    cas,
    video_scores,
    *,
    temperature,
    length=None,
    class_threshold=PUBLISHED_CLASS_THRESHOLD,
    thresholds=PUBLISHED_THRESHOLDS,
    max_classes: int | None = None,
    max_proposals: int = 1024,
    max_segments: int = 128,
    method: str = "lp",
    fallback: str = "paint",
    max_steps: int = DEFAULT_MAX_STEPS,
    check_every: int = DEFAULT_CHECK_EVERY,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    throw: bool = False,
) -> PseudoLabels:
    """Snippet pseudo labels from a batch of CAS by the published training chain (Zhou et al., CVPR 2023).

    Per video and per class whose video score is at least
    ``class_threshold``: proposals of the CAS at every level (published
    convention), the published greedy grouping, fusion at ``temperature``
    (softmax of the inner scores), and the segment-to-snippet LP
    (:func:`jaxfuse.segments_to_snippets`). See the module docstring.

    Every shape is static, so it runs inside a caller's ``jax.jit``
    (``temperature``, ``class_threshold``, ``length`` may be traced). Values
    are never checked by raising, traced or not: a NaN or inf in the CAS
    (inside a video) or in a video score gives that (video, class)
    ``NONFINITE_INPUT`` in ``result`` and zero labels (``throw=True`` raises).

    Args:
        cas: ``[V, L, C]`` class activation sequences (the layout of most WSTAL
            models), padded after each video's length (padding may hold
            anything, NaN included).
        video_scores: ``[V, C]`` video-level class scores.
        temperature: softmax temperature T > 0 of the fusion (published
            training schedule: 0.02 down to 0.0016; exact in float32).
        length: optional int ``[V]`` snippets per video; default ``L``.
        class_threshold: a class is an item when its video score is at least this
            (published 0.16).
        thresholds: CAS levels (published ``np.arange(0.001, 0.04, 0.002)``).
        max_classes: most items per video (the best-scoring passing classes);
            default ``C``, which never drops one (items of classes that do not
            pass cost no work). 4 suits THUMOS14 (1 to 3 pass).
        max_proposals: proposal slots per item (THUMOS14: 20 to 800); excess
            proposals (the highest levels) are dropped and flagged.
        max_segments: fused segments (LP rows) per item; excess groups (the
            weakest leaders) are dropped and flagged.
        method, fallback, max_steps, check_every, rtol, atol, throw: as in
            :func:`jaxfuse.segments_to_snippets`.

    Returns:
        A :class:`PseudoLabels` (numpy in, numpy out; JAX in, JAX out).

    Raises:
        TypeError, ValueError: bad shapes, dtypes or options, before tracing;
            the message names the argument (a ``[V, C, L]`` CAS is named as
            such when ``video_scores`` shows it).
        RuntimeError: ``throw=True`` and some (video, class) was not solved
            (non-finite input included).

    Example:
        >>> from jaxfuse import synthetic_videos
        >>> videos = synthetic_videos(num_videos=2, seed=0)
        >>> out = pseudo_labels(videos.cas, videos.video_scores, length=videos.length, temperature=0.02)
        >>> out.labels.shape == videos.cas.shape
        True
    """
    ensure_compilation_cache()  # before this call's first compilation
    kind = array_kind(cas, video_scores)
    cas = float_array(cas, "cas", min_ndim=3)
    if cas.ndim != 3:
        raise ValueError(f"`cas` must have shape [V, L, C] (videos, snippets, classes), got {cas.shape}")
    num_videos, num_snippets, num_classes = cas.shape
    if num_snippets == 0 or num_classes == 0:
        raise ValueError(f"`cas` must have at least one snippet and one class, got shape {cas.shape}")
    video_scores = float_array(video_scores, "video_scores")
    if video_scores.shape == (num_videos, num_snippets) != (num_videos, num_classes):
        raise ValueError(
            f"`cas` must have layout [V, L, C] (videos, snippets, classes); got shape {cas.shape}, whose axis 1 "
            f"matches the {num_snippets} classes of `video_scores` {video_scores.shape} and axis 2 does not: it looks "
            "like [V, C, L]; pass jnp.swapaxes(cas, 1, 2)"
        )
    if video_scores.shape != (num_videos, num_classes):
        raise ValueError(f"`video_scores` must have shape {(num_videos, num_classes)} (videos, classes), got {video_scores.shape}")
    temperature = positive_scalar(temperature, "temperature")
    if not isinstance(class_threshold, jax.core.Tracer) and (
        np.ndim(class_threshold) != 0 or not np.isfinite(class_threshold)
    ):
        raise ValueError(f"`class_threshold` must be a finite scalar, got {class_threshold!r}")
    levels = np.asarray(thresholds, np.float64)
    if levels.ndim != 1 or levels.size == 0 or not np.isfinite(levels).all():
        raise ValueError(f"`thresholds` must be a non-empty 1-D array of finite levels, got {thresholds!r}")
    max_classes = num_classes if max_classes is None else min(positive_int(max_classes, "max_classes"), num_classes)
    max_proposals = positive_int(max_proposals, "max_proposals")
    max_segments = positive_int(max_segments, "max_segments")
    method, fallback, max_steps, check_every, rtol, atol, _, _ = check_solver_options(
        method, fallback, max_steps, check_every, rtol, atol, MARGIN_SCALE, MARGIN_POWER
    )
    if length is None:
        length = np.full(num_videos, num_snippets, np.int32)
    elif isinstance(length, jax.core.Tracer):
        if not jnp.issubdtype(length.dtype, jnp.integer) or length.shape != (num_videos,):
            raise ValueError(f"`length` must be an integer array of shape {(num_videos,)}, got {length.dtype} {length.shape}")
        length = jnp.clip(length, 0, num_snippets)
    else:
        host = np.asarray(length)
        if host.dtype == np.bool_ or not np.issubdtype(host.dtype, np.integer):
            raise TypeError(f"`length` must be an integer array (snippets per video), got dtype {host.dtype}")
        if host.shape != (num_videos,):
            raise ValueError(f"`length` must have shape {(num_videos,)} (one per video), got {host.shape}")
        if host.size and (host.min() < 0 or host.max() > num_snippets):
            raise ValueError(f"`length` must lie in [0, {num_snippets}], got values from {host.min()} to {host.max()}")
        length = host.astype(np.int32)
    result = _pseudo_labels(
        cas, video_scores, length, temperature, class_threshold, rtol, atol, thresholds=tuple(levels.tolist()),
        max_classes=max_classes, max_proposals=max_proposals, max_segments=max_segments, method=method,
        fallback=fallback, max_steps=max_steps, check_every=check_every,
    )
    if throw and not isinstance(result.result, jax.core.Tracer):
        raise_for_results(result.result, "pseudo_labels", unit="item")
    return from_jax(result, kind)
