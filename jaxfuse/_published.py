"""The published grouping + Gaussian fusion loop, in plain numpy: the baseline benchmarks time.

One item at a time, as the GauFuse_WSTAL evaluation code runs it (SPEC.md):
the best remaining proposal leads and absorbs every remaining one whose
overlap with it (intersection over the candidate's length) is strictly above
the threshold; each group fuses to the softmax(weights / T)-weighted mean of
its starts, ends and scores. The tests keep their own independent references.
"""

from __future__ import annotations

import numpy as np


def published_fusion_loop(
    segments, scores, weights=None, *, temperature: float = 0.2, threshold: float = 0.25, discrete: bool = True
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
        fused.append([g @ starts[members], g @ ends[members], g @ scores[members]])
    return np.asarray(fused, np.float64).reshape(-1, 3)
