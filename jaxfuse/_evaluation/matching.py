"""The detection-mAP kernel: ranking, greedy tIoU matching of every (threshold, class, video) at once, and AP.

Plain numpy in float64 over integer-coded arrays; the protocol, its ties and the
checked public entry point (``evaluate_detections``) are in ``jaxfuse._evaluation.evaluate``.

Why the fast path is fast: a false positive changes no state, so for one
(class, video, threshold) the only events are the true positives, at most one per
ground truth. Each ground truth keeps a cursor into its score-ordered list of
*eligible* predictions (tIoU >= threshold). The next true positive of a
(class, video, threshold) is the earliest cursor among its unlocked ground truths;
it locks its best-tIoU eligible ground truth, and every unlocked ground truth that was
waiting on it moves its cursor on. One round does this for every
(threshold, class, video) at once with numpy, and there are at most as many rounds as
the largest number of ground truths in one (class, video).

Everything is plain numpy in float64. A JAX version (``lax.scan`` over the
score-ordered predictions of every (class, video), padded, with a vmapped lock state)
was measured on the benchmark's 200,000 predictions / 4,000 ground truths: about 1.5x
slower once compiled, plus about 1 s of compilation for every new input shape, and it
would need float64 for tIoU to agree exactly at the thresholds.
"""

from __future__ import annotations

import numpy as np

# (ground truth, prediction) pairs are scored about this many at a time: the
# temporaries stay in cache (about 1.5x faster than one pass over all pairs) and the
# memory stays bounded when one (class, video) holds very many of both.
_PAIR_CHUNK = 1 << 16
_NO_RANK = np.iinfo(np.int64).max


# ---------------------------------------------------------------------- ordering


def dense_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and each value's index among them.

    The same as ``np.unique(values, return_inverse=True)``, in O(n) for the usual case
    of small non-negative ids (a sort of 200,000 ids costs more than the matching).
    """
    if values.size and values.min() >= 0 and values.max() < 4 * values.size + 1024:
        present = np.bincount(values.astype(np.intp)) > 0
        code_of_value = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(values.dtype), code_of_value[values]
    return np.unique(values, return_inverse=True)


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` in descending order, equal scores later index first.

    The reference's ``argsort()[::-1]`` with a stable sort (see the module notes):
    the same as ``np.argsort(scores, kind="stable")[::-1]``. numpy's stable float sort
    is about twice as slow as its quicksort, so quicksort first, then reverse the
    input order within each run of equal scores.
    """
    order = np.argsort(-scores)
    sorted_scores = scores[order]
    tied = np.flatnonzero(sorted_scores[1:] == sorted_scores[:-1])
    if tied.size:
        in_runs = np.union1d(tied, tied + 1)  # positions in runs of equal scores
        # Runs have distinct scores, so this only permutes positions within each run.
        order[in_runs] = order[in_runs[np.lexsort((-order[in_runs], -sorted_scores[in_runs]))]]
    return order


def tied_count(class_of_rank: np.ndarray, ranked_scores: np.ndarray) -> int:
    """How many predictions share their class and score with another prediction."""
    same = (class_of_rank[1:] == class_of_rank[:-1]) & (ranked_scores[1:] == ranked_scores[:-1])
    tied = np.flatnonzero(same)
    return int(np.union1d(tied, tied + 1).size)


def _stable_argsort(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Stable argsort of integer keys in ``[0, num_keys)``; 16-bit keys get numpy's radix sort."""
    if num_keys <= 1 << 16:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")


# ------------------------------------------------------------------------ matching


def _tiou(pred_start, pred_end, gt_start, gt_end) -> np.ndarray:
    """Element-wise tIoU with continuous lengths (0 where the union is empty)."""
    intersection = np.maximum(np.minimum(pred_end, gt_end) - np.maximum(pred_start, gt_start), 0.0)
    union = (pred_end - pred_start) + (gt_end - gt_start) - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


def _overlapping_pairs(
    gt_segments: np.ndarray,
    gt_group_size: np.ndarray,
    pred_start: np.ndarray,
    pred_end: np.ndarray,
    pred_group_start: np.ndarray,
    pred_group_size: np.ndarray,
    min_tiou: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (ground truth, prediction) pair of the same group with tIoU >= ``min_tiou``.

    Ground truths and predictions (``pred_start``, ``pred_end``) are both sorted by
    group, the predictions by rank inside a group, so the pairs come out sorted by
    (ground truth, rank): the order the matcher walks them in.

    Returns:
        ``(gt_index, grouped_prediction_index, tiou)`` of the kept pairs.
    """
    gt_start, gt_end = gt_segments[:, 0].copy(), gt_segments[:, 1].copy()
    pairs_per_gt = np.repeat(pred_group_size, gt_group_size)
    first_prediction = np.repeat(pred_group_start, gt_group_size)
    pair_end = np.cumsum(pairs_per_gt)
    kept_gt, kept_prediction, kept_tiou = [], [], []
    first_gt = 0
    while first_gt < pairs_per_gt.size:
        # The longest run of ground truths whose pairs fit in one chunk (at least one).
        done = pair_end[first_gt - 1] if first_gt else 0
        last_gt = max(int(np.searchsorted(pair_end, done + _PAIR_CHUNK, side="right")), first_gt + 1)
        gts = slice(first_gt, last_gt)
        counts = pairs_per_gt[gts]
        pair_prediction = np.arange(pair_end[last_gt - 1] - done) + np.repeat(
            first_prediction[gts] - (pair_end[gts] - counts - done), counts
        )
        # A tIoU >= min_tiou > 0 needs a positive overlap: a cheap filter first, then
        # the exact tIoU (the same floating-point steps as the reference formula).
        overlap = np.minimum(pred_end[pair_prediction], np.repeat(gt_end[gts], counts)) - np.maximum(
            pred_start[pair_prediction], np.repeat(gt_start[gts], counts)
        )
        overlapping = np.flatnonzero(overlap > 0)
        pair_gt = np.searchsorted(pair_end[gts] - done, overlapping, side="right") + first_gt
        pair_prediction = pair_prediction[overlapping]
        tiou = _tiou(
            pred_start[pair_prediction], pred_end[pair_prediction], gt_start[pair_gt], gt_end[pair_gt]
        )
        keep = np.flatnonzero(tiou >= min_tiou)
        kept_gt.append(pair_gt[keep])
        kept_prediction.append(pair_prediction[keep])
        kept_tiou.append(tiou[keep])
        first_gt = last_gt
    return np.concatenate(kept_gt), np.concatenate(kept_prediction), np.concatenate(kept_tiou)


def _match(
    thresholds: np.ndarray,
    num_predictions: int,
    gt_group_size: np.ndarray,
    pair_gt: np.ndarray,
    pair_rank: np.ndarray,
    pair_tiou: np.ndarray,
) -> np.ndarray:
    """``[num_thresholds, num_predictions]`` true-positive flags, indexed by class rank.

    A "slot" is one (threshold, ground truth). Its entries are its eligible pairs in
    rank order; ``next_entry`` is the first one not yet passed, and a locked slot skips
    to its end. Slots of one (threshold, group) are contiguous, so per-group
    reductions are ``reduceat`` over the segment starts. Each round finds the next true
    positive of every (threshold, group) at once; one that has none is finished and
    dropped, so late rounds only touch the few groups with many ground truths.
    """
    num_thresholds, num_gt = thresholds.size, int(gt_group_size.sum())
    true_positive = np.zeros((num_thresholds, num_predictions), bool)
    if pair_gt.size == 0:
        return true_positive
    eligible = [np.flatnonzero(pair_tiou >= t) for t in thresholds]
    entry_pair = np.concatenate(eligible + [np.zeros(1, np.intp)])  # + a dummy for idle slots
    # Pairs are sorted by ground truth, so each slot's entries are a contiguous run:
    # entry_pair[next_entry:end_entry].
    gt_pairs = np.searchsorted(pair_gt, np.arange(num_gt + 1))
    offsets = np.cumsum([0] + [e.size for e in eligible])
    bounds = [offset + np.searchsorted(e, gt_pairs) for e, offset in zip(eligible, offsets)]
    next_entry = np.concatenate([b[:-1] for b in bounds])
    end_entry = np.concatenate([b[1:] for b in bounds])

    segment_size = np.tile(gt_group_size, num_thresholds)
    segment_threshold = np.repeat(np.arange(num_thresholds), gt_group_size.size)
    while segment_size.size:
        segment_starts = np.cumsum(segment_size) - segment_size
        segment_of_slot = np.repeat(np.arange(segment_size.size), segment_size)
        waiting = next_entry < end_entry
        pair = entry_pair[np.where(waiting, next_entry, -1)]
        candidate = np.where(waiting, pair_rank[pair], _NO_RANK)
        next_tp = np.minimum.reduceat(candidate, segment_starts)
        # The unlocked ground truths eligible for the next true positive all wait on it;
        # it takes the one with the highest tIoU, the last listed among equals (the
        # reference tries ground truths in argsort()[::-1] order of tIoU).
        claims = waiting & (candidate == next_tp[segment_of_slot])
        claim_tiou = np.where(claims, pair_tiou[pair], -1.0)
        best_tiou = np.maximum.reduceat(claim_tiou, segment_starts)
        best = claims & (claim_tiou == best_tiou[segment_of_slot])
        winner = np.maximum.reduceat(np.where(best, np.arange(best.size), -1), segment_starts)
        found = next_tp != _NO_RANK
        next_entry[claims] += 1
        next_entry[winner[found]] = end_entry[winner[found]]  # locked
        true_positive[segment_threshold[found], next_tp[found]] = True
        # A (threshold, group) without a true positive this round has none left.
        keep = found[segment_of_slot]
        next_entry, end_entry = next_entry[keep], end_entry[keep]
        segment_size, segment_threshold = segment_size[found], segment_threshold[found]
    return true_positive


def true_positives(
    pred_video: np.ndarray,
    pred_class: np.ndarray,
    pred_score: np.ndarray,
    pred_segments: np.ndarray,
    gt_video: np.ndarray,
    gt_class: np.ndarray,
    gt_segments: np.ndarray,
    num_classes: int,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """True-positive flags ``[num_thresholds, P]`` in class-rank order, and the ranking.

    The class rank orders predictions by class, then descending score, equal scores
    later input first. A group is one (class, video): matching never crosses groups.

    Args:
        pred_video: ``[P]`` int64 video ids (any integers; shared with ``gt_video``).
        pred_class: ``[P]`` class codes in ``[0, num_classes)``.
        pred_score: ``[P]`` float64, finite.
        pred_segments: ``[P, 2]`` float64 ``(start, end)``.
        gt_video: ``[G]`` int64 video ids.
        gt_class: ``[G]`` class codes in ``[0, num_classes)``.
        gt_segments: ``[G, 2]`` float64.
        num_classes: the number of class codes.
        thresholds: ``[num_thresholds]`` tIoU thresholds in ``(0, 1]``.

    Returns:
        ``(true_positive, by_rank)``: ``by_rank[r]`` is the input index of rank ``r``.
    """
    num_predictions = pred_class.size
    _, video_code = dense_codes(np.concatenate([pred_video, gt_video]))
    num_videos = int(video_code.max()) + 1
    num_groups = num_classes * num_videos
    pred_group = pred_class * num_videos + video_code[:num_predictions]
    gt_group = gt_class * num_videos + video_code[num_predictions:]

    # Two sorts beat one three-key lexsort.
    by_score = descending_order(pred_score)
    by_rank = by_score[_stable_argsort(pred_class[by_score], num_classes)]
    # Predictions by group, rank order inside a group: grouped[i] is a class rank.
    grouped = _stable_argsort(pred_group[by_rank], num_groups)
    grouped_input_index = by_rank[grouped]
    # Ground truth by group, input order inside a group (the tie-break of equal tIoU).
    gt_order = _stable_argsort(gt_group, num_groups)
    group_keys, gt_group_size = np.unique(gt_group[gt_order], return_counts=True)
    grouped_keys = pred_group[grouped_input_index]
    pred_group_start = np.searchsorted(grouped_keys, group_keys, side="left")
    pred_group_size = np.searchsorted(grouped_keys, group_keys, side="right") - pred_group_start

    pair_gt, pair_prediction, pair_tiou = _overlapping_pairs(
        gt_segments[gt_order],
        gt_group_size,
        # Column by column: fancy indexing of an [N, 2] array is several times slower.
        pred_segments[:, 0][grouped_input_index],
        pred_segments[:, 1][grouped_input_index],
        pred_group_start,
        pred_group_size,
        float(thresholds.min()),
    )
    pair_rank = grouped[pair_prediction]
    true_positive = _match(thresholds, num_predictions, gt_group_size, pair_gt, pair_rank, pair_tiou)
    return true_positive, by_rank


# ------------------------------------------------------------------------------ AP


def _average_precision(true_positive: np.ndarray, num_positives: int) -> np.ndarray:
    """All-point interpolated AP of ``[num_thresholds, n]`` rank-ordered TP flags.

    Recall rises by ``1 / num_positives`` at each true positive, so ActivityNet's sum
    over recall steps is the sum of the precision envelope at the true positives,
    divided by ``num_positives``. Precision only falls between true positives, so the
    envelope there is the running maximum, from the right, over true positives alone.
    """
    threshold, position = np.nonzero(true_positive)  # by threshold, then rank
    per_threshold = np.bincount(threshold, minlength=true_positive.shape[0])
    ordinal = np.arange(threshold.size) - np.repeat(np.cumsum(per_threshold) - per_threshold, per_threshold)
    # Row t holds the precision at threshold t's true positives, zero padded on the right.
    precision = np.zeros((true_positive.shape[0], per_threshold.max(initial=0)))
    precision[threshold, ordinal] = (ordinal + 1) / (position + 1)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    return envelope.sum(axis=1) / num_positives


def class_average_precision(true_positive: np.ndarray, class_of_rank: np.ndarray, positives: np.ndarray):
    """``[num_thresholds, num_classes]`` AP; NaN for classes without ground truth."""
    class_start = np.searchsorted(class_of_rank, np.arange(positives.size + 1))
    average_precision = np.full((true_positive.shape[0], positives.size), np.nan)
    for c in np.flatnonzero(positives):
        ranks = slice(class_start[c], class_start[c + 1])
        average_precision[:, c] = _average_precision(true_positive[:, ranks], positives[c])
    return average_precision
