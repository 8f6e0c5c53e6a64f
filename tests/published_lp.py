"""The published segment-to-snippet LP, built independently of jaxfuse and solved by scipy's HiGHS (test reference).

GauFuse_WSTAL ``utils/utils.py`` (``compute_score_matrix``) fills one row of
``L`` entries per fused segment ``[start, end, q]`` with numpy slices, the
margin from the segment as given::

    s, e = int(start), int(end)
    m = 0.0785 * (e - s) ** 0.9
    A[r, s:e] = 1
    A[r, max(0, int(s - m)):s] = -1
    A[r, e:min(L - 1, int(e + m + 1))] = -1

and solves ``min sum p  s.t.  A p = q, 0 <= p <= 1`` with
``scipy.optimize.linprog(method="highs")``. Segments here are non-negative,
as the published code's are.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linprog


def published_matrix(segments, scores, length: int, scale: float = 0.0785, power: float = 0.9):
    """``A [R, length]`` and ``q [R]`` (float64) exactly as the published code builds them."""
    segments = np.asarray(segments, np.float64).reshape(-1, 2)
    matrix = np.zeros((segments.shape[0], length))
    for r, (start, end) in enumerate(segments.tolist()):
        s, e = int(start), int(end)
        m = scale * (e - s) ** power
        matrix[r, s:e] = 1
        matrix[r, max(0, int(s - m)) : s] = -1
        matrix[r, e : min(length - 1, int(e + m + 1))] = -1
    return matrix, np.asarray(scores, np.float64).reshape(-1).copy()


class Reference(NamedTuple):
    feasible: bool
    objective: float
    x: np.ndarray  # [length] HiGHS's labels (NaN when infeasible)
    one_row_columns: list  # per row alone in its component: its support's columns


def highs_reference(segments, scores, length: int) -> Reference:
    """HiGHS on the published LP, and the supports of the rows that share no snippet with another row."""
    matrix, target = published_matrix(segments, scores, length)
    solved = linprog(np.ones(length), A_eq=matrix, b_eq=target, bounds=(0.0, 1.0), method="highs")
    assert solved.status in (0, 2), solved.message
    support = matrix != 0
    overlaps = (support.astype(int) @ support.T.astype(int)) > 0
    alone = [np.flatnonzero(support[r]) for r in range(len(target)) if support[r].any() and overlaps[r].sum() == 1]
    if solved.status == 2:
        return Reference(False, np.nan, np.full(length, np.nan), alone)
    return Reference(True, float(solved.fun), solved.x, alone)
