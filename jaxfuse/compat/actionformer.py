"""ActionFormer's ``batched_nms`` on JAX kernels: the same call, the same numbers, and a whole-dataset variant.

ActionFormer (``libs/utils/nms.py``, OpenTAD inherits it) post-processes each
video with a Python loop over its classes and a C++ Soft-NMS. Two calls here:

* :func:`batched_nms`: the same signature and results, torch tensors in and
  out. Swap the import; everything else stays.
* :func:`batched_nms_videos`: all videos in one call (every (video, class)
  of the dataset in a few bucketed batches, one compiled program per bucket
  shape), with the same per-video results, and ``method="gaussian"`` to fuse
  each group of overlapping detections with the GauFuse rule (Zhou et al.,
  CVPR 2023) instead of suppressing them.

Per video, ActionFormer's rule is:

1. multiclass: each class separately; class-agnostic: all detections at once;
2. Soft-NMS (Gaussian decay ``exp(-iou**2 / sigma)``, drop below ``min_score``;
   ``iou_threshold`` unused) or hard NMS (keep ``score > min_score``, suppress
   ``iou >= iou_threshold``), with ActionFormer's IoU (lengths ``+ 1e-6``);
   see :mod:`jaxfuse._proposals.actionformer_nms` for the exact tie rules;
3. class-agnostic with ``voting_thresh > 0``: segment voting over all the
   video's detections;
4. the classes' lists concatenated in ascending class order, sorted by score
   (descending) and cut at ``max_seg_num``.

Where the results can differ from ActionFormer's, and why:

* ActionFormer sorts with ``torch.sort``, which is not stable: equal scores
  come out in libstdc++ introsort's order, unspecified beyond 16 elements.
  With torch input, :func:`batched_nms` calls ``torch.sort`` on the same
  arrays (hard NMS's order within each class, and step 4), so equal scores
  come out in ActionFormer's order. :func:`batched_nms` on numpy input and
  :func:`batched_nms_videos` order equal scores by lower input index (hard
  NMS), then lower class, then earlier selection (step 4): ``torch.sort``'s
  order up to 16 elements, and ``stable=True``'s always. Soft-NMS ties follow
  the C++'s own swaps in every case.
* Computation is in float32, as the C++ (which refuses other dtypes); outputs
  are cast back to the input dtype and device. Kept segments and hard-NMS
  scores are the caller's own values.
* Decayed scores may differ from the C++ in the last bit (XLA's ``exp`` against
  glibc's ``expf``); segment voting sums in another order than torch's matmul.
* ActionFormer returns ``torch.zeros`` (float32, CPU) for an empty input; here
  the empty outputs keep the input dtype and device. A negative
  ``max_seg_num`` (which ActionFormer slices as ``[:-k]``) is an error.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import is_torch_tensor, to_host
from jaxfuse._core.padding import bucket_size
from jaxfuse._core.validation import choice, positive_scalar
from jaxfuse._proposals.actionformer_nms import select
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache

METHODS = ("soft_nms", "nms", "gaussian")
DEFAULT_TEMPERATURE = 0.2  # the published evaluation temperature
_MIN_WIDTH = 64  # narrower rows save little and each width is one more program to compile


class NMSResult(NamedTuple):
    """The detections of one video, best first (unpacks like ActionFormer's tuple).

    Attributes:
        segs: ``[n, 2]`` (start, end).
        scores: ``[n]`` scores (decayed for Soft-NMS, fused for ``"gaussian"``).
        cls_idxs: ``[n]`` class of each detection.
    """

    segs: Any
    scores: Any
    cls_idxs: Any


# ------------------------------------------------------------------ checks


def _host(x: Any) -> np.ndarray:
    """On the host; half-precision floats widened to float32, as ActionFormer's C++ computes in float."""
    x = to_host(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _video_arrays(segs, scores, cls_idxs, where: str = ""):
    """One video's arrays on the host, checked: ``(segments float32 [n, 2], scores float32 [n], labels [n])``."""
    segments, score_values, labels = _host(segs), _host(scores), _host(cls_idxs)
    if segments.size == 0 and segments.ndim != 2:
        segments = segments.reshape(0, 2)
    if segments.ndim != 2 or segments.shape[1] != 2:
        raise ValueError(f"`segs`{where} must have shape [N, 2] (start, end), got {segments.shape}")
    if not np.issubdtype(segments.dtype, np.floating) or not np.issubdtype(score_values.dtype, np.floating):
        raise TypeError(f"`segs` and `scores`{where} must be floating point, got {segments.dtype} and {score_values.dtype}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`cls_idxs`{where} must be integers, got dtype {labels.dtype}")
    for name, array in (("scores", score_values), ("cls_idxs", labels)):
        if array.shape != segments.shape[:1]:
            raise ValueError(f"`{name}`{where} must have shape {segments.shape[:1]} (one per segment), got {array.shape}")
    for name, array in (("segs", segments), ("scores", score_values)):
        bad = ~np.isfinite(array)
        if bad.any():
            raise ValueError(f"`{name}`{where} must be finite; index {np.argwhere(bad)[0].tolist()} is {array[bad][0]}")
    reversed_ = segments[:, 0] > segments[:, 1]
    if reversed_.any():
        first = int(np.flatnonzero(reversed_)[0])
        raise ValueError(f"`segs`{where} must have start <= end; segment {first} is {segments[first].tolist()}")
    return segments.astype(np.float32), score_values.astype(np.float32), labels


def _real(value: Any, name: str) -> float:
    array = np.asarray(value)
    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number) or not np.isfinite(array):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}")
    return float(array)


def _options(iou_threshold, min_score, max_seg_num, use_soft_nms, sigma, voting_thresh, method, temperature):
    if isinstance(max_seg_num, bool) or not isinstance(max_seg_num, (int, np.integer)) or max_seg_num < 0:
        raise ValueError(f"`max_seg_num` must be a non-negative integer, got {max_seg_num!r}")
    if method is None:
        method = "soft_nms" if use_soft_nms else "nms"
    choice(method, "method", METHODS)
    return dict(
        iou_threshold=_real(iou_threshold, "iou_threshold"),
        min_score=_real(min_score, "min_score"),
        max_seg_num=int(max_seg_num),
        sigma=positive_scalar(sigma, "sigma"),
        voting_thresh=_real(voting_thresh, "voting_thresh"),
        method=method,
        temperature=positive_scalar(temperature, "temperature"),
    )


# ------------------------------------------------------------------ per-item selection


class _Items(NamedTuple):
    """Every item's kept detections, ``[I, K]`` host arrays (K = the widest item's cap)."""

    member: np.ndarray  # [I, K] global index of the kept (or leading) candidate, -1 beyond count
    scores: np.ndarray  # [I, K] float32, -inf beyond count
    segments: np.ndarray  # [I, K, 2] float32
    count: np.ndarray  # [I]


def _bucket_rows(item_ids: np.ndarray, num_items: int, row_limit=None):
    """Pack candidates (``item_ids [T]``, items ``0..I-1``) into power-of-two ``[R, W]`` buckets.

    One bucket per width: a video's few large classes and many small ones go
    to different kernel calls (padding all to the widest took 2.4x longer).
    ``row_limit(width)``: the most rows per bucket (a power of two), or None.

    Yields ``(items [r], member [R, W])``: the bucket's items and, per row, the
    global indices of its candidates in their input order (-1 in padding).
    """
    order = np.argsort(item_ids, kind="stable")
    sizes = np.bincount(item_ids, minlength=num_items)
    first = np.cumsum(sizes) - sizes
    rank = np.arange(order.size) - first[item_ids[order]]
    widths = np.array([bucket_size(n, _MIN_WIDTH) for n in sizes])
    for width in np.unique(widths):
        same_width = np.flatnonzero(widths == width)
        step = same_width.size if row_limit is None else row_limit(int(width))
        for start in range(0, same_width.size, step):
            yield _bucket(same_width[start : start + step], int(width), item_ids, order, rank, num_items)


def _bucket(items, width, item_ids, order, rank, num_items):
    """``(items, member [R, W])`` for these items: R their number rounded up to a power of two."""
    row_of = np.full(num_items, -1)
    row_of[items] = np.arange(items.size)
    rows = row_of[item_ids[order]]
    in_bucket = rows >= 0
    member = np.full((bucket_size(items.size), width), -1, np.int64)
    member[rows[in_bucket], rank[in_bucket]] = order[in_bucket]
    return items, member


@functools.partial(jax.jit, static_argnames=("keep",))
def _top_fused(scores, count, *, keep: int):
    """Per row, the ``keep`` best fused instances (ties: leader order)."""
    real = jnp.arange(scores.shape[1]) < count[:, None]
    values, index = jax.lax.top_k(jnp.where(real, scores, -jnp.inf), keep)
    return values, jnp.where(values > -jnp.inf, index, -1)


def _select_items(segments, scores, item_ids, num_items, options, voting: bool, priority=None) -> _Items:
    """Run the chosen method on every item, bucket by bucket (one compiled program per bucket shape).

    ``priority [T]``: hard NMS's processing order (default: the scores).
    """
    priority = scores if priority is None else priority
    cap = options["max_seg_num"]
    widest = max((bucket_size(n, _MIN_WIDTH) for n in np.bincount(item_ids, minlength=num_items)), default=0)
    keep_all = min(cap, widest)
    result = _Items(
        np.full((num_items, keep_all), -1, np.int64),
        np.full((num_items, keep_all), -np.inf, np.float32),
        np.zeros((num_items, keep_all, 2), np.float32),
        np.zeros(num_items, np.int64),
    )
    if keep_all == 0:
        return result
    # Voting forms a [rows, keep, width] matrix: at most 2**24 elements (64 MB) per bucket.
    row_limit = (lambda width: 1 << (max(1, 2**24 // (keep_all * width)).bit_length() - 1)) if voting else None
    for items, member in _bucket_rows(item_ids, num_items, row_limit):
        valid = member >= 0
        take = np.maximum(member, 0)
        bucket_segments = np.where(valid[..., None], segments[take], 0).astype(np.float32)
        bucket_scores = np.where(valid, scores[take], 0).astype(np.float32)
        keep = min(cap, member.shape[1])
        if options["method"] == "gaussian":
            index, kept_scores, kept_segments, count = _fuse_bucket(bucket_segments, bucket_scores, valid, options, keep)
        else:
            bucket_priority = np.where(valid, priority[take], 0).astype(np.float32)
            arrays = (bucket_segments, bucket_scores, bucket_priority, valid)
            index, kept_scores, count, kept_segments = _run_select(arrays, options, keep, voting)
        rows = slice(0, items.size)
        index = np.asarray(index)[rows]
        result.member[items, :keep] = np.where(index >= 0, np.take_along_axis(member[rows], np.maximum(index, 0), 1), -1)
        result.scores[items, :keep] = np.asarray(kept_scores)[rows]
        result.segments[items, :keep] = np.asarray(kept_segments)[rows]
        result.count[items] = np.minimum(np.asarray(count)[rows], keep)
    return result


def _run_select(arrays, options, keep, voting):
    """:func:`select` on one bucket; rows with equal-score selections rerun with the exact kernel."""
    settings = (options["iou_threshold"], options["sigma"], options["min_score"], options["voting_thresh"])
    soft = options["method"] == "soft_nms"
    selections, kept_segments, tied = select(*arrays, *settings, soft=soft, exact=False, keep=keep, voting=voting)
    index, kept_scores, count, kept_segments = (np.array(x) for x in (*selections, kept_segments))
    tied = np.flatnonzero(np.asarray(tied))
    if tied.size:
        # Padded to a power of two rows (repeating a tied row) to share compiled shapes.
        rows = np.resize(tied, bucket_size(tied.size))
        exact, exact_segments, _ = select(
            *(a[rows] for a in arrays), *settings, soft=True, exact=True, keep=keep, voting=voting
        )
        n = tied.size
        index[tied], kept_scores[tied], count[tied] = (np.asarray(x)[:n] for x in exact)
        kept_segments[tied] = np.asarray(exact_segments)[:n]
    return index, kept_scores, count, kept_segments


def _fuse_bucket(segments, scores, valid, options, keep):
    """GauFuse on one bucket: group (IoU > iou_threshold, continuous lengths), fuse, best ``keep`` per row."""
    from jaxfuse._proposals.fuse_proposals import fuse_proposals

    eligible = valid & (scores > options["min_score"]) if options["min_score"] > 0 else valid
    fused = fuse_proposals(
        jnp.asarray(segments), jnp.asarray(scores), valid=jnp.asarray(eligible),
        overlap_threshold=options["iou_threshold"], overlap="iou", discrete=False,
        method="gaussian", temperature=options["temperature"],
    )
    kept_scores, slot = _top_fused(fused.scores, fused.count, keep=keep)
    slot = np.asarray(slot)
    rows = np.arange(slot.shape[0])[:, None]
    leader = np.where(slot >= 0, np.asarray(fused.leader)[rows, np.maximum(slot, 0)], -1)
    kept_segments = np.asarray(fused.segments)[rows, np.maximum(slot, 0)]
    return leader, kept_scores, kept_segments, (slot >= 0).sum(axis=1)


# ------------------------------------------------------------------ outputs


def _outputs(member, kept_scores, kept_segments, segs, scores, cls_idxs, method, voting):
    """Detections of one video (``member [n]`` global indices) in the caller's array kind, dtype and device."""
    if is_torch_tensor(segs):
        import torch

        index = torch.from_numpy(member).to(segs.device)
        labels = cls_idxs[index.to(cls_idxs.device)]
        if method != "gaussian" and not voting:
            out_segments = segs[index]
        else:
            out_segments = torch.from_numpy(np.array(kept_segments)).to(segs.device, segs.dtype)
        if method == "nms":
            out_scores = scores[index.to(scores.device)]
        else:
            out_scores = torch.from_numpy(np.array(kept_scores)).to(scores.device, scores.dtype)
        return NMSResult(out_segments, out_scores, labels)
    segs, scores, cls_idxs = _host(segs), _host(scores), _host(cls_idxs)
    exact_segments = method != "gaussian" and not voting
    return NMSResult(
        segs[member] if exact_segments else kept_segments.astype(segs.dtype),
        scores[member] if method == "nms" else kept_scores.astype(scores.dtype),
        cls_idxs[member],
    )


def _empty(segs, scores, cls_idxs):
    if is_torch_tensor(segs):
        return NMSResult(segs.new_zeros((0, 2)), scores.new_zeros((0,)), cls_idxs.new_zeros((0,)))
    return NMSResult(
        np.zeros((0, 2), _host(segs).dtype), np.zeros((0,), _host(scores).dtype), np.zeros((0,), _host(cls_idxs).dtype)
    )


# ------------------------------------------------------------------ public API


def _torch_sort_priority(scores, score_values, item_ids, min_score) -> np.ndarray:
    """Minus each candidate's rank in ``torch.sort`` of its item's eligible scores, as ActionFormer's C++ sorts them.

    ``torch.sort`` is not stable: beyond 16 elements equal scores come out in
    introsort's order. Calling it on the same subsets makes hard NMS process
    them in that order too.
    """
    import torch

    on_host = scores.detach().cpu()
    priority = np.zeros(score_values.shape, np.float32)
    order = np.argsort(item_ids, kind="stable")
    boundaries = np.flatnonzero(np.diff(item_ids[order])) + 1
    for members in np.split(order, boundaries):
        if min_score > 0:
            members = members[score_values[members] > np.float32(min_score)]
        ranked = on_host[torch.from_numpy(members)].sort(descending=True)[1].numpy()
        priority[members[ranked]] = -np.arange(members.size, dtype=np.float32)
    return priority


def batched_nms(
    segs,
    scores,
    cls_idxs,
    iou_threshold,
    min_score,
    max_seg_num,
    use_soft_nms=True,
    multiclass=True,
    sigma=0.5,
    voting_thresh=0.75,
    *,
    method: str | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> NMSResult:
    """ActionFormer's ``batched_nms`` for one video, on JAX kernels.

    Args:
        segs: ``[N, 2]`` float tensor (start, end), e.g. in feature-grid units.
        scores: ``[N]`` float tensor.
        cls_idxs: ``[N]`` integer tensor.
        iou_threshold: hard NMS suppresses ``iou >= iou_threshold`` (unused by
            Soft-NMS, as in ActionFormer); ``"gaussian"`` groups ``iou > iou_threshold``.
        min_score: Soft-NMS drops decayed scores ``< min_score``; hard NMS and
            ``"gaussian"`` keep only ``score > min_score`` (when positive).
        max_seg_num: keep the best ``max_seg_num`` detections (0: none).
        use_soft_nms: Soft-NMS if True, hard NMS if False (ignored when
            ``method`` is given).
        multiclass: each class separately if True; class-agnostic otherwise.
        sigma: Soft-NMS decay ``exp(-iou**2 / sigma)``.
        voting_thresh: class-agnostic NMS only: if positive, each kept segment
            becomes the ``iou x score`` weighted mean of the detections with
            ``iou >= voting_thresh``.
        method: ``"soft_nms"``, ``"nms"`` or ``"gaussian"`` (fuse each group of
            overlapping detections: softmax(score / temperature) weighted mean
            of its segments and scores, Zhou et al., CVPR 2023); default: from
            ``use_soft_nms``.
        temperature: ``"gaussian"`` only; the softmax temperature (0.2, the
            published evaluation value).

    Returns:
        :class:`NMSResult` ``(segs, scores, cls_idxs)``, best first, of the
        caller's kind (torch tensors in, torch tensors out, same dtype and device).

    Raises:
        TypeError, ValueError: bad shapes, dtypes, non-finite values, start >
            end, or a bad option (the message names the argument).

    Example:
        >>> import torch
        >>> segs = torch.tensor([[0., 10.], [1., 10.], [30., 40.]])
        >>> out = batched_nms(segs, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]),
        ...                   0.1, 0.001, 200)
        >>> out.cls_idxs.tolist(), [round(s, 4) for s in out.scores.tolist()]
        ([0, 1, 0], [0.9, 0.7, 0.1583])
    """
    ensure_compilation_cache()  # before this call's first compilation
    options = _options(iou_threshold, min_score, max_seg_num, use_soft_nms, sigma, voting_thresh, method, temperature)
    segments, score_values, labels = _video_arrays(segs, scores, cls_idxs)
    if segments.shape[0] == 0 or options["max_seg_num"] == 0:
        return _empty(segs, scores, cls_idxs)
    if multiclass:
        _, item_ids = np.unique(labels, return_inverse=True)
    else:
        item_ids = np.zeros(labels.shape, np.int64)
    item_ids = item_ids.reshape(-1)
    voting = not multiclass and options["voting_thresh"] > 0 and options["method"] != "gaussian"
    priority = None
    if options["method"] == "nms" and is_torch_tensor(scores):
        priority = _torch_sort_priority(scores, score_values, item_ids, options["min_score"])
    chosen = _select_items(segments, score_values, item_ids, int(item_ids.max()) + 1, options, voting, priority)
    # ActionFormer's last step, with its own call so that equal scores come out in its order.
    kept = np.arange(chosen.member.shape[1])[None, :] < chosen.count[:, None]
    member, kept_scores, kept_segments = chosen.member[kept], chosen.scores[kept], chosen.segments[kept]
    if is_torch_tensor(scores):
        import torch

        ranking_scores = torch.from_numpy(kept_scores).to(scores.dtype)
        if options["method"] == "nms":
            ranking_scores = scores.detach().cpu()[torch.from_numpy(member)]
        order = ranking_scores.sort(descending=True)[1].numpy()
    else:
        order = np.argsort(-kept_scores, kind="stable")
    order = order[: options["max_seg_num"]]
    return _outputs(
        member[order], kept_scores[order], kept_segments[order], segs, scores, cls_idxs, options["method"], voting
    )


def _class_items(videos, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One item per (video, class), by video then ascending class: ``(item of each detection, video of each item)``.

    Each video's classes are ranked by ``np.unique`` in their own dtype, never
    combined by arithmetic: a key such as ``video * span + class`` overflows
    for ids near the int64 limits, and uint64 ids above them (or two videos'
    dtypes mixed in one array) do not fit one signed type.
    """
    ranks, counts = [], np.zeros(len(videos), np.int64)
    for video, (_, _, labels) in enumerate(videos):
        distinct, rank = np.unique(labels, return_inverse=True)
        ranks.append(rank.reshape(-1).astype(np.int64))
        counts[video] = distinct.size
    first_item = np.cumsum(counts) - counts
    return np.concatenate(ranks) + np.repeat(first_item, sizes), np.repeat(np.arange(len(videos)), counts)


@functools.partial(jax.jit, static_argnames=("keep",))
def _rank_videos(table, *, keep: int):
    """Per video, the ``keep`` best of its items' kept detections; ties: lower class, then earlier selection."""
    return jax.lax.top_k(table, keep)


def batched_nms_videos(
    segs: Sequence[Any],
    scores: Sequence[Any],
    cls_idxs: Sequence[Any],
    iou_threshold,
    min_score,
    max_seg_num,
    use_soft_nms=True,
    multiclass=True,
    sigma=0.5,
    voting_thresh=0.75,
    *,
    method: str | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> list[NMSResult]:
    """:func:`batched_nms` for a whole dataset in one call: lists in, one result per video.

    Every (video, class) of every video goes into a few power-of-two
    ``[rows, width]`` buckets; each bucket is one kernel call (one compiled
    program per bucket shape, reused by later calls), and each video's final
    ranking is one ``top_k`` over all videos. Per video, the result is
    :func:`batched_nms`'s, except that equal scores are ranked by class, then
    selection order, instead of by ``torch.sort``'s unspecified order.

    Args:
        segs: per video, ``[N_v, 2]`` (torch, numpy or JAX).
        scores: per video, ``[N_v]``.
        cls_idxs: per video, ``[N_v]`` integers.
        iou_threshold, min_score, max_seg_num, use_soft_nms, multiclass, sigma,
            voting_thresh, method, temperature: as in :func:`batched_nms`.

    Returns:
        One :class:`NMSResult` per video: torch tensors for torch input (same
        dtype and device), numpy arrays otherwise.

    Raises:
        TypeError, ValueError: as :func:`batched_nms`, naming the video.

    Example:
        >>> import numpy as np
        >>> videos = [np.array([[0., 10.], [1., 10.]], np.float32), np.array([[5., 6.]], np.float32)]
        >>> out = batched_nms_videos(videos, [np.array([0.9, 0.8], np.float32), np.array([0.5], np.float32)],
        ...                          [np.array([3, 3]), np.array([1])], 0.1, 0.001, 200, method="gaussian")
        >>> [len(video.scores) for video in out]
        [1, 1]
    """
    ensure_compilation_cache()  # before this call's first compilation
    options = _options(iou_threshold, min_score, max_seg_num, use_soft_nms, sigma, voting_thresh, method, temperature)
    if not (len(segs) == len(scores) == len(cls_idxs)):
        raise ValueError(
            f"`segs`, `scores` and `cls_idxs` must have one entry per video; got {len(segs)}, {len(scores)}, {len(cls_idxs)}"
        )
    videos = [_video_arrays(s, q, c, where=f"[{v}]") for v, (s, q, c) in enumerate(zip(segs, scores, cls_idxs))]
    sizes = np.array([len(q) for _, q, _ in videos], np.int64)
    if sizes.sum() == 0 or options["max_seg_num"] == 0:
        return [_empty(*arrays) for arrays in zip(segs, scores, cls_idxs)]
    segments = np.concatenate([s for s, _, _ in videos])
    score_values = np.concatenate([q for _, q, _ in videos])
    if multiclass:
        item_ids, item_video = _class_items(videos, sizes)
    else:
        item_video, item_ids = np.unique(np.repeat(np.arange(len(videos)), sizes), return_inverse=True)
    item_ids = item_ids.reshape(-1)
    voting = not multiclass and options["voting_thresh"] > 0 and options["method"] != "gaussian"
    chosen = _select_items(segments, score_values, item_ids, item_video.size, options, voting)

    # Items of a video are consecutive (ascending class): slot c of the video's C slots.
    items_per_video = np.bincount(item_video, minlength=len(videos))
    slots = bucket_size(items_per_video.max())
    class_slot = np.arange(item_video.size) - (np.cumsum(items_per_video) - items_per_video)[item_video]
    keep = chosen.member.shape[1]
    table_rows = bucket_size(len(videos)) * slots
    destination = item_video * slots + class_slot
    table = np.full((table_rows, keep), -np.inf, np.float32)
    table[destination] = np.where(np.arange(keep)[None, :] < chosen.count[:, None], chosen.scores, -np.inf)
    best = min(options["max_seg_num"], slots * keep)
    values, flat = (np.asarray(x) for x in _rank_videos(jnp.asarray(table.reshape(-1, slots * keep)), keep=best))

    def ranked(array):
        """``array [I, K, ...]`` at each video's ranked (class slot, k) positions: ``[videos, best, ...]``."""
        table_of = np.zeros((table_rows, keep) + array.shape[2:], array.dtype)
        table_of[destination] = array
        table_of = table_of.reshape((-1, slots * keep) + array.shape[2:])
        return np.take_along_axis(table_of, flat.reshape(flat.shape + (1,) * (array.ndim - 2)), axis=1)

    members, kept_segments = ranked(chosen.member), ranked(chosen.segments)
    offsets = np.cumsum(sizes) - sizes
    results = []
    for v, arrays in enumerate(zip(segs, scores, cls_idxs)):
        n = int(np.isfinite(values[v]).sum())
        if n == 0:
            results.append(_empty(*arrays))
            continue
        local = members[v, :n] - offsets[v]
        results.append(_outputs(local, values[v, :n], kept_segments[v, :n], *arrays, options["method"], voting))
    return results
