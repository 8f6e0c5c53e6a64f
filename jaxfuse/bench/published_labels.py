"""The published training-time pseudo-label chain as a plain numpy + scipy loop (the baseline and test reference).

One video at a time, as GauFuse_WSTAL's ``generate_segs`` and
``convert_segment_to_tensor`` (``utils/utils.py``) run it, restated from the
SPEC: per class whose video score passes the class threshold, the CAS runs of
every level are proposals ``[s, e + 1)`` with ``e`` the exclusive end of the
run (the published off-by-one: inner mean over ``cas[s : e + 1]``, margins
``max(0, int(s - m))`` and ``min(L - 1, int(e + m + 1))``); they are grouped
greedily (candidate overlap > 0.25, ``+1`` lengths, contrast order) and fused
at temperature T (softmax of the inner scores); each fused ``[s, e, q]`` is a
row of the LP ``min sum p  s.t.  A p = q, 0 <= p <= 1`` solved by HiGHS. The
published code writes the LP's missing solution (infeasible) as NaN; so does
this loop.

Score ties in the grouping go to the lower index (the kernels' rule; the
published ``np.argsort`` leaves ties to the sort). Fused starts and ends are
computed as the leader's plus the weighted mean offset, in float64.
"""

from __future__ import annotations

import math

import numpy as np

from jaxfuse.bench.published import published_fusion_loop


def published_proposals(cas: np.ndarray, thresholds) -> np.ndarray:
    """``[n, 4]`` (start, end, contrast, inner) of one class's CAS ``[L]``, published convention."""
    cas = np.asarray(cas, np.float64)
    length = cas.shape[0]
    found = []
    for level in np.asarray(thresholds, np.float64):
        above = np.concatenate([[0], (cas > level).astype(np.int8), [0]])
        change = np.diff(above)
        starts, ends = np.flatnonzero(change == 1), np.flatnonzero(change == -1)
        for s, e in zip(starts.tolist(), ends.tolist()):
            run = e - s
            if run < 2:
                continue
            inner = cas[s : e + 1].mean()
            margin = 0.0785 * run**0.9
            outer_start = max(0, int(s - margin))
            outer_end = min(length - 1, int(e + margin + 1))
            outer_index = list(range(outer_start, s)) + list(range(e + 1, outer_end))
            outer = cas[outer_index].mean() if outer_index else 0.0
            found.append([s, e + 1, inner - outer, inner])
    return np.asarray(found, np.float64).reshape(-1, 4)


def published_fusion(proposals: np.ndarray, temperature: float, threshold: float = 0.25) -> np.ndarray:
    """``[groups, 3]`` fused (start, end, score) in leader order; leaders by descending contrast."""
    return published_fusion_loop(
        proposals[:, :2], proposals[:, 2], proposals[:, 3], temperature=temperature, threshold=threshold, about_leader=True
    )


def published_rows(fused: np.ndarray, length: int, margin_scale: float = 0.0785, margin_power: float = 0.9):
    """The LP's ``A [R, length]`` and ``q [R]`` for fused ``[R, 3]`` segments (``compute_score_matrix``)."""
    matrix = np.zeros((fused.shape[0], length))
    for r, (start, end, _) in enumerate(fused):
        s, e = int(start), int(end)
        margin = margin_scale * (e - s) ** margin_power
        outer_start = max(0, int(s - margin))
        outer_end = min(length - 1, int(e + margin + 1))
        matrix[r, s:e] = 1.0
        matrix[r, outer_start:s] = -1.0
        if outer_end > e:
            matrix[r, e:outer_end] = -1.0
    return matrix, fused[:, 2].copy()


def solve_published_lp(matrix: np.ndarray, target: np.ndarray):
    """``scipy.optimize.linprog`` (HiGHS) of ``min sum p  s.t.  A p = q, 0 <= p <= 1``: the result object."""
    from scipy.optimize import linprog

    return linprog(np.ones(matrix.shape[1]), A_eq=matrix, b_eq=target, bounds=(0.0, 1.0), method="highs")


def optimum_is_unique(matrix: np.ndarray, target: np.ndarray, seed: int = 0) -> bool:
    """Whether the LP's optimal face is a single point (almost surely: min and max of a random direction on it agree)."""
    from scipy.optimize import linprog

    reference = solve_published_lp(matrix, target)
    if reference.status != 0:
        return False
    direction = np.random.default_rng(seed).normal(size=matrix.shape[1])
    face = dict(A_eq=np.vstack([matrix, np.ones(matrix.shape[1])]), b_eq=np.append(target, reference.fun), bounds=(0.0, 1.0))
    low, high = linprog(direction, method="highs", **face), linprog(-direction, method="highs", **face)
    return low.status == 0 and high.status == 0 and (-high.fun - low.fun) <= 1e-7 * (1 + abs(low.fun))


def published_pseudo_labels(
    cas: np.ndarray, video_scores: np.ndarray, length=None, *, temperature: float, class_threshold: float = 0.16,
    thresholds=None,
) -> np.ndarray:
    """``[V, L, C]`` pseudo labels of a padded batch, video by video, class by class (NaN where infeasible)."""
    cas = np.asarray(cas, np.float64)
    num_videos, num_snippets, num_classes = cas.shape
    lengths = np.full(num_videos, num_snippets) if length is None else np.asarray(length)
    levels = np.arange(0.001, 0.04, 0.002) if thresholds is None else np.asarray(thresholds)
    labels = np.zeros(cas.shape)
    for video in range(num_videos):
        n = int(lengths[video])
        for klass in range(num_classes):
            if video_scores[video, klass] < class_threshold:
                continue
            proposals = published_proposals(cas[video, :n, klass], levels)
            if proposals.shape[0] == 0:
                continue
            fused = published_fusion(proposals, temperature)
            solution = solve_published_lp(*published_rows(fused, n))
            labels[video, :n, klass] = solution.x if solution.status == 0 else math.nan
    return labels
