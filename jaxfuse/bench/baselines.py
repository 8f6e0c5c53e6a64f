"""What users run today, timed beside jaxfuse: vectorized numpy closed forms, a scipy Student-t loop, the CAS loop."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from jaxfuse.bench.published import published_fusion_loop
from jaxfuse.bench.sizes import (
    CAS_MARGIN_POWER,
    CAS_MARGIN_SCALE,
    CAS_THRESHOLDS,
    NUMPY_CHUNK_SLOTS,
    PUBLISHED_OVERLAP,
    STUDENT_T_DF,
    TEMPERATURE,
)
from jaxfuse.tools.synthetic import numpy_fuse, numpy_probabilities


def numpy_closed_form(template: str, values, weights, mask, temperature: float = TEMPERATURE) -> np.ndarray:
    """:func:`numpy_fuse` over chunks of at most :data:`NUMPY_CHUNK_SLOTS` padded slots."""
    chunk = max(1, NUMPY_CHUNK_SLOTS // values.shape[1])
    # Empty padding groups give 0/0 in the baseline: harmless NaN rows, not worth a warning.
    with np.errstate(invalid="ignore", divide="ignore"):
        if values.shape[0] <= chunk:
            return numpy_fuse(template, values, weights, mask, temperature)
        return np.concatenate([
            numpy_fuse(template, values[i : i + chunk], weights[i : i + chunk], mask[i : i + chunk], temperature)
            for i in range(0, values.shape[0], chunk)
        ])


def float32_einsum_gaussian(values, weights, mask, temperature: float = TEMPERATURE):
    """What a careful numpy user writes for the Gaussian's outputs (location, scale, probabilities), in float32."""
    logits = np.where(mask, weights, -np.inf) / np.float32(temperature)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty padding groups give harmless NaN rows
        unnormalised = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = unnormalised / unnormalised.sum(axis=1, keepdims=True)
        location = np.einsum("bm,bmk->bk", probabilities, values)
        variance = np.einsum("bm,bmk->bk", probabilities, np.square(values - location[:, None]))
    return location, np.sqrt(variance), probabilities


class ScipyStudentT(NamedTuple):
    """Per-lane Student-t fits of the scipy loop: ``location``, ``scale`` ``[G, K]``; ``iterations`` per fitted lane."""

    location: np.ndarray
    scale: np.ndarray
    iterations: np.ndarray


def _student_t_loss_and_gradient(parameters, z, g, df, constant):
    """Cross-entropy of the location-scale t at (mu, log sigma) on standardised values, and its gradient."""
    location, log_scale = parameters
    residual = (z - location) * np.exp(-log_scale)
    ratio = 1 + residual * residual / df
    loss = 0.5 * (df + 1) * (g @ np.log(ratio)) + log_scale + constant
    pull = (df + 1) * g * residual / (df * ratio)
    gradient = np.array([-pull.sum() * np.exp(-log_scale), 1 - pull @ residual])
    return loss, gradient


def _scipy_fit_lane(x: np.ndarray, g: np.ndarray, df: float, constant: float) -> tuple[float, float, int]:
    """One coordinate of one group, as a user would write it: ``(location, scale, iterations)``."""
    from scipy import optimize

    distinct, which = np.unique(x, return_inverse=True)
    mass = np.bincount(which, weights=g)
    if mass.max() >= df / (df + 1):  # the likelihood is unbounded: a point mass (see _student_t)
        return float(distinct[np.argmax(mass)]), 0.0, 0
    order = np.argsort(x, kind="stable")
    cumulative = np.cumsum(g[order])
    median = x[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    spread = g @ np.abs(x - median)
    spread = spread if spread > 0 else 1.0
    # Standardised coordinates keep the tolerances scale free, as jaxfuse does.
    solution = optimize.minimize(
        _student_t_loss_and_gradient, np.zeros(2), args=((x - median) / spread, g, df, constant), jac=True,
        method="L-BFGS-B", options=dict(ftol=1e-12, gtol=1e-8, maxiter=1000),
    )
    location, log_scale = solution.x
    return float(median + spread * location), float(spread * np.exp(log_scale)), int(solution.nit)


def scipy_student_t_loop(values, weights, mask, temperature: float = TEMPERATURE,
                         df: float = STUDENT_T_DF) -> ScipyStudentT:
    """The per-group loop users run today: ``scipy.optimize.minimize`` (L-BFGS-B, analytic gradient) per lane.

    Same problem as :func:`jaxfuse.fuse_student_t`: location-scale t with fixed
    ``df``, started at the weighted median, point masses detected the same way.
    """
    from scipy import special

    constant = float(special.gammaln(df / 2) - special.gammaln((df + 1) / 2) + 0.5 * np.log(df * np.pi))
    probabilities = numpy_probabilities(np.asarray(weights, np.float64), mask, temperature)
    groups, _, coordinates = values.shape
    location, scale = np.zeros((groups, coordinates)), np.zeros((groups, coordinates))
    iterations = []
    for group in range(groups):
        members = mask[group]
        if not members.any():
            continue
        for coordinate in range(coordinates):
            x = values[group, members, coordinate].astype(np.float64)
            location[group, coordinate], scale[group, coordinate], steps = _scipy_fit_lane(
                x, probabilities[group, members], df, constant)
            if steps:
                iterations.append(steps)
    return ScipyStudentT(location, scale, np.asarray(iterations, np.int64))


def reference_cas_proposals(cas: np.ndarray, length: int, thresholds=CAS_THRESHOLDS, min_length: int = 2):
    """The per-(threshold, run) numpy loop on one sequence ``cas [L]``: ``[n, 2]`` segments, contrast, inner.

    Runs from ``np.diff`` of the above-threshold mask (already vectorised), then
    each run scored with numpy means one at a time, in the SPEC convention
    (a copy of the loop in ``benchmarks/test_bench_cas.py``).
    """
    video = cas[:length]
    segments, contrast, inner_scores = [], [], []
    for level in thresholds:
        edges = np.diff(np.concatenate([[0], (video > level).astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for start, end in zip(starts.tolist(), ends.tolist()):
            if end - start < min_length:
                continue
            width = math.ceil(CAS_MARGIN_SCALE * (end - start) ** CAS_MARGIN_POWER)
            inner = video[start:end].mean()
            around = np.concatenate([video[max(0, start - width) : start], video[end : min(length, end + width)]])
            outer = around.mean() if around.size else 0.0
            segments.append((start, end))
            contrast.append(inner - outer)
            inner_scores.append(inner)
    return (np.asarray(segments, np.float32).reshape(-1, 2), np.asarray(contrast, np.float32),
            np.asarray(inner_scores, np.float32))


def reference_fuse_proposals(segments, scores, weights, temperature: float = TEMPERATURE,
                             threshold: float = PUBLISHED_OVERLAP) -> np.ndarray:
    """The published grouping + Gaussian fusion loop on one item: ``[groups, 3]`` (start, end, score)."""
    return published_fusion_loop(segments, scores, weights, temperature=temperature, threshold=threshold)


def soft_nms_loop(segments, scores, *, sigma: float = 0.5, min_score: float = 0.001) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS of one (video, class), one selection at a time in numpy: kept ``[k, 2]`` and scores.

    As ActionFormer's post-processing runs it (``libs/utils/nms.py`` with its
    C++ ``softnms``, here in numpy): repeatedly keep the highest remaining
    score, decay every other by ``exp(-IoU**2 / sigma)`` (continuous lengths),
    drop those below ``min_score``. Ties go to the lower index.
    """
    segments = np.asarray(segments, np.float64)
    remaining_scores = np.asarray(scores, np.float64).copy()
    starts, ends = segments[:, 0], segments[:, 1]
    alive = remaining_scores >= min_score
    kept, kept_scores = [], []
    while alive.any():
        best = int(np.argmax(np.where(alive, remaining_scores, -np.inf)))
        kept.append(best)
        kept_scores.append(remaining_scores[best])
        alive[best] = False
        intersection = np.maximum(0.0, np.minimum(ends[best], ends) - np.maximum(starts[best], starts))
        union = (ends[best] - starts[best]) + (ends - starts) - intersection
        iou = np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
        remaining_scores = np.where(alive, remaining_scores * np.exp(-iou * iou / sigma), remaining_scores)
        alive &= remaining_scores >= min_score
    return segments[kept].reshape(-1, 2), np.asarray(kept_scores, np.float64)


def actionformer_postprocess_loop(segments, scores, labels, *, sigma: float = 0.5, min_score: float = 0.001,
                                  max_seg_num: int = 200) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """ActionFormer's per-video post-processing: Soft-NMS per class, then the ``max_seg_num`` best by score.

    Args:
        segments, scores, labels: ``[V, N, 2]``, ``[V, N]``, ``[V, N]`` candidates per video.

    Returns:
        Per video ``(segments [k, 2], scores [k], labels [k])``, best first.
    """
    out = []
    for video in range(len(scores)):
        kept_segments, kept_scores, kept_labels = [], [], []
        for label in np.unique(labels[video]):
            members = labels[video] == label
            segs, kept = soft_nms_loop(segments[video][members], scores[video][members], sigma=sigma,
                                       min_score=min_score)
            kept_segments.append(segs)
            kept_scores.append(kept)
            kept_labels.append(np.full(kept.size, label))
        all_scores = np.concatenate(kept_scores)
        best = np.argsort(-all_scores, kind="stable")[:max_seg_num]
        out.append((np.concatenate(kept_segments)[best], all_scores[best], np.concatenate(kept_labels)[best]))
    return out


class NumpyRaggedGaussian(NamedTuple):
    """The Gaussian fusion of flat ragged groups: ``location``, ``scale`` ``[G, K]``; ``probabilities`` ``[N]``."""

    location: np.ndarray
    scale: np.ndarray
    probabilities: np.ndarray


def numpy_ragged_gaussian(values: np.ndarray, weights: np.ndarray, lengths: np.ndarray,
                          temperature: float = TEMPERATURE) -> NumpyRaggedGaussian:
    """Gaussian fusion of contiguous ragged groups, no padding: ``np.*.reduceat`` weighted moments.

    What a careful numpy user writes for flat members (``lengths`` > 0, groups
    contiguous): a shift-safe softmax per group (``np.maximum.reduceat``), the
    weighted mean and the weighted variance about it, all in the input dtype.
    Work is O(N K), with no padded slot.
    """
    starts = np.cumsum(lengths) - lengths
    logits = weights / np.asarray(temperature, weights.dtype)
    shifted = np.exp(logits - np.repeat(np.maximum.reduceat(logits, starts), lengths))
    probabilities = shifted / np.repeat(np.add.reduceat(shifted, starts), lengths)
    location = np.add.reduceat(probabilities[:, None] * values, starts, axis=0)
    deviation = values - np.repeat(location, lengths, axis=0)
    variance = np.add.reduceat(probabilities[:, None] * deviation * deviation, starts, axis=0)
    return NumpyRaggedGaussian(location, np.sqrt(variance), probabilities)
