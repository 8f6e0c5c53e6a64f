"""Seeded THUMOS-like groups of overlapping instances, shared by the demo and the benchmarks.

Sizes follow SPEC.md: videos of about 60 to 5000 snippets (median near 500),
groups of overlapping proposals whose sizes are skewed (most small, a few large).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxfuse._core.padding import bucket_size


class SyntheticGroups(NamedTuple):
    """Padded groups ``[G, M]`` of (start, end, score) members.

    Attributes:
        values: ``[G, M, 3]`` start, end (snippets) and score of each member.
        weights: ``[G, M]`` softmax logits (the inner score in the published code).
        mask: ``[G, M]`` real members.
    """

    values: np.ndarray
    weights: np.ndarray
    mask: np.ndarray


def thumos_like_groups(groups: int, members: int | None = None, *, seed: int = 0, dtype=np.float32, max_size: int = 32) -> SyntheticGroups:
    """Groups of overlapping proposals around random actions, with a skewed size distribution.

    Args:
        groups: number of groups G.
        members: padded size M (default: the power of two holding ``max_size``).
        seed: the random seed; the same seed gives the same groups.
        dtype: float dtype of values and weights.
        max_size: the largest group size; sizes are geometric, most groups small.
    """
    rng = np.random.default_rng(seed)
    members = bucket_size(max_size) if members is None else members
    sizes = np.minimum(rng.geometric(p=4.0 / max_size, size=groups), min(max_size, members))
    video_length = np.exp(rng.normal(np.log(500), 0.8, size=groups)).clip(60, 5000)
    action_length = (video_length * rng.uniform(0.02, 0.2, size=groups)).clip(2, None)
    action_start = rng.uniform(0, 1, size=groups) * (video_length - action_length)
    jitter = action_length[:, None] * 0.15
    start = action_start[:, None] + rng.normal(size=(groups, members)) * jitter
    end = action_start[:, None] + action_length[:, None] + rng.normal(size=(groups, members)) * jitter
    start, end = np.minimum(start, end - 1), np.maximum(end, start + 1)
    score = rng.beta(2, 5, size=(groups, members))
    mask = np.arange(members)[None, :] < sizes[:, None]
    values = np.stack([np.floor(start), np.ceil(end), score], axis=-1) * mask[..., None]
    weights = (score + rng.normal(scale=0.05, size=score.shape)) * mask
    return SyntheticGroups(values.astype(dtype), weights.astype(dtype), mask)


def numpy_probabilities(weights: np.ndarray, mask: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.where(mask, weights / temperature, -np.inf)
    logits = logits - logits.max(axis=-1, keepdims=True)
    unnormalised = np.where(mask, np.exp(logits), 0)
    return unnormalised / unnormalised.sum(axis=-1, keepdims=True)


def numpy_fuse(
    template: str, values, weights, mask, temperature: float, df: float = 3.0, tolerance: float = 1e-10, max_iterations: int = 2000
) -> np.ndarray:
    """Vectorized numpy fusion of padded groups (float64): the baseline the demo and benchmarks compare with.

    The Student-t location comes from EM (iteratively reweighted) iterations, a
    plainer algorithm than the library's Newton solver, run until the location
    moves less than ``tolerance`` (relative) or for ``max_iterations``.
    """
    values = np.asarray(values, np.float64)
    g = numpy_probabilities(np.asarray(weights, np.float64), mask, temperature)[..., None]
    inside = mask[..., None]
    if template in ("gaussian", "exponential"):
        return np.sum(g * np.where(inside, values, 0), axis=-2)
    if template == "uniform":
        low = np.where(inside, values, np.inf).min(axis=-2)
        high = np.where(inside, values, -np.inf).max(axis=-2)
        return (low + high) / 2
    if template == "laplace":
        keys = np.where(inside, values, np.inf)
        order = np.argsort(keys, axis=-2, kind="stable")
        cumulative = np.cumsum(np.take_along_axis(np.broadcast_to(g, keys.shape), order, axis=-2), axis=-2)
        first = np.argmax(cumulative >= cumulative[..., -1:, :] / 2, axis=-2)[..., None, :]
        return np.take_along_axis(np.take_along_axis(keys, order, axis=-2), first, axis=-2)[..., 0, :]
    if template == "student_t":
        location = numpy_fuse("laplace", values, weights, mask, temperature)
        variance = np.sum(g * np.where(inside, (values - location[..., None, :]) ** 2, 0), axis=-2)
        for _ in range(max_iterations):
            residual = np.where(inside, values - location[..., None, :], 0)
            em_weight = g * (df + 1) / (df + residual**2 / np.maximum(variance[..., None, :], 1e-300))
            new_location = np.sum(em_weight * np.where(inside, values, 0), axis=-2) / np.sum(em_weight, axis=-2)
            variance = np.sum(em_weight * np.where(inside, (values - new_location[..., None, :]) ** 2, 0), axis=-2)
            converged = np.abs(new_location - location) <= tolerance * (1 + np.abs(new_location))
            location = new_location
            if converged.all():
                break
        return location
    raise ValueError(f"unknown template {template!r}")
