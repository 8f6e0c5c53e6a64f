"""Plain-loop baselines the benchmarks time: the published grouping + fusion loop and a per-prediction mAP loop.

One item at a time, as the GauFuse_WSTAL evaluation code runs it (SPEC.md):
the best remaining proposal leads and absorbs every remaining one whose
overlap with it (intersection over the candidate's length) is strictly above
the threshold; each group fuses to the softmax(weights / T)-weighted mean of
its starts, ends and scores. The tests keep their own independent references.
"""

from __future__ import annotations

import math

import numpy as np


def published_fusion_loop(
    segments, scores, weights=None, *, temperature: float = 0.2, threshold: float = 0.25, discrete: bool = True,
    about_leader: bool = False,
) -> np.ndarray:
    """Fuse one item's proposals with the published rule: ``[groups, 3]`` (start, end, score), leader order.

    Args:
        segments: ``[n, 2]`` start, end.
        scores: ``[n]`` ordering scores (also fused).
        weights: ``[n]`` softmax logits; default the scores.
        temperature: softmax temperature.
        threshold: membership is overlap strictly above it, compared in the
            segments' dtype (as the kernels compare).
        discrete: lengths ``end - start + 1`` (frames) or ``end - start``; a
            zero-length candidate has overlap 0.
        about_leader: fuse starts and ends as the leader's plus the weighted
            mean offset from it (float64), so that whole-snippet ends stay
            exact at tiny temperatures, as the pseudo-label chain needs.
    """
    segments, scores = np.asarray(segments), np.asarray(scores)
    weights = scores if weights is None else np.asarray(weights)
    offset = 1 if discrete else 0
    remaining = np.argsort(-scores, kind="stable")
    starts, ends = segments[:, 0], segments[:, 1]
    fused = []
    while remaining.size:
        leader = remaining[0]
        intersection = np.maximum(
            0, np.minimum(ends[leader], ends[remaining]) - np.maximum(starts[leader], starts[remaining]) + offset
        )
        length = ends[remaining] - starts[remaining] + offset
        ratio = np.divide(intersection, length, out=np.zeros_like(length), where=length > 0)
        absorbed = ratio > np.asarray(threshold, ratio.dtype)
        absorbed[0] = True
        members = remaining[absorbed]
        remaining = remaining[~absorbed]
        logits = weights[members].astype(np.float64) / temperature
        g = np.exp(logits - logits.max())
        g /= g.sum()
        if about_leader:
            start = starts[leader] + g @ (starts[members] - starts[leader])
            end = ends[leader] + g @ (ends[members] - ends[leader])
        else:
            start, end = g @ starts[members], g @ ends[members]
        fused.append([start, end, g @ scores[members]])
    return np.asarray(fused, np.float64).reshape(-1, 3)


def _tiou(a, b):
    intersection = max(min(a[1], b[1]) - max(a[0], b[0]), 0.0)
    union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
    return intersection / union if union > 0 else 0.0


def _interpolated_average_precision(true_positive, num_positives):
    """ActivityNet's ``interpolated_prec_rec`` on cumulative precision and recall."""
    tp_sum, precision, recall = 0, [], []
    for i, hit in enumerate(true_positive):
        tp_sum += hit
        precision.append(tp_sum / (i + 1))
        recall.append(tp_sum / num_positives)
    mprec = [0.0] + precision + [0.0]
    mrec = [0.0] + recall + [1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def detection_map_loop(predictions, ground_truth, thresholds):
    """Detection AP by the straightforward per-prediction loop (ActivityNet protocol).

    Returns ``[num_thresholds, num_classes]`` AP (NaN for classes without ground
    truth) and the classes; the baseline ``evaluate_detections`` is timed against.
    """
    p_video, p_label = np.asarray(predictions.video).tolist(), np.asarray(predictions.label).tolist()
    p_score = np.asarray(predictions.score).tolist()
    p_segment = np.asarray(predictions.segments, np.float64).reshape(-1, 2).tolist()
    g_video, g_label = np.asarray(ground_truth.video).tolist(), np.asarray(ground_truth.label).tolist()
    g_segment = np.asarray(ground_truth.segments, np.float64).reshape(-1, 2).tolist()
    gt_of = {}  # (class, video) -> ground-truth indices in input order
    for j in range(len(g_label)):
        gt_of.setdefault((g_label[j], g_video[j]), []).append(j)
    classes = sorted(set(p_label) | set(g_label))
    ap = [[math.nan] * len(classes) for _ in thresholds]
    for c_index, c in enumerate(classes):
        num_positives = g_label.count(c)
        if num_positives == 0:
            continue
        preds = sorted((i for i in range(len(p_label)) if p_label[i] == c), key=lambda i: -p_score[i])
        locked = [set() for _ in thresholds]
        true_positive = [[] for _ in thresholds]
        for i in preds:
            tious = [(_tiou(p_segment[i], g_segment[j]), j) for j in gt_of.get((c, p_video[i]), [])]
            for t_index, threshold in enumerate(thresholds):
                best_tiou, best_gt = -1.0, None
                for tiou, j in tious:
                    if j not in locked[t_index] and tiou > best_tiou:
                        best_tiou, best_gt = tiou, j
                hit = best_gt is not None and best_tiou >= threshold
                if hit:
                    locked[t_index].add(best_gt)
                true_positive[t_index].append(int(hit))
        for t_index in range(len(thresholds)):
            ap[t_index][c_index] = _interpolated_average_precision(true_positive[t_index], num_positives)
    return np.asarray(ap, dtype=np.float64).reshape(len(thresholds), len(classes)), np.asarray(classes)
