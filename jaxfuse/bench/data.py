"""Seeded benchmark inputs: padded closed-form groups, skewed ragged members, request streams, THUMOS-like CAS."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxfuse.bench.sizes import CAS_MARGIN_POWER, CAS_MARGIN_SCALE, CAS_THRESHOLDS, COORDINATES, SYNTHETIC_BLOCK
from jaxfuse.tools.synthetic import SyntheticGroups, thumos_like_groups


def closed_form_groups(groups: int, members: int, *, seed: int = 0, max_size: int | None = None) -> SyntheticGroups:
    """Seeded THUMOS-like padded groups ``[G, M, 3]`` float32 (skewed sizes, most groups small).

    Groups past :data:`SYNTHETIC_BLOCK` repeat the first block (see there).
    """
    # Sizes are geometric with mean max_size / 4, capped at M; at least 8 keeps that a distribution for tiny M.
    max_size = max(members, 8) if max_size is None else max_size
    block = thumos_like_groups(min(groups, SYNTHETIC_BLOCK), members, seed=seed, max_size=max_size)
    if groups <= SYNTHETIC_BLOCK:
        return block
    repeated = []
    for array in block:
        out = np.empty((groups,) + array.shape[1:], array.dtype)
        for start in range(0, groups, SYNTHETIC_BLOCK):
            stop = min(start + SYNTHETIC_BLOCK, groups)
            out[start:stop] = array[: stop - start]
        repeated.append(out)
    return SyntheticGroups(*repeated)


class RaggedMembers(NamedTuple):
    """Flat members of ragged groups: ``values [N, 3]``, ``weights [N]``, ``lengths [groups]`` (contiguous)."""

    values: np.ndarray
    weights: np.ndarray
    lengths: np.ndarray


def skewed_ragged_members(groups: int, max_size: int, *, seed: int = 0, zipf_exponent: float = 1.7) -> RaggedMembers:
    """THUMOS-like members of ``groups`` groups whose sizes follow a Zipf law capped at ``max_size``.

    Most groups hold one to three proposals, a few hold hundreds: the shape of
    the published grouping's output on real class activation sequences.
    """
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.zipf(zipf_exponent, size=groups), max_size)
    group_of = np.repeat(np.arange(groups), lengths)
    video_length = np.exp(rng.normal(np.log(500), 0.8, size=groups)).clip(60, 5000)
    action_length = (video_length * rng.uniform(0.02, 0.2, size=groups)).clip(2, None)
    action_start = rng.uniform(0, 1, size=groups) * (video_length - action_length)
    jitter = (action_length * 0.15)[group_of]
    start = action_start[group_of] + rng.normal(size=group_of.size) * jitter
    end = (action_start + action_length)[group_of] + rng.normal(size=group_of.size) * jitter
    start, end = np.minimum(start, end - 1), np.maximum(end, start + 1)
    score = rng.beta(2, 5, size=group_of.size)
    values = np.stack([np.floor(start), np.ceil(end), score], axis=-1).astype(np.float32)
    weights = (score + rng.normal(scale=0.05, size=score.shape)).astype(np.float32)
    return RaggedMembers(values, weights, lengths)


def request_stream(requests: int, max_groups: int, max_size: int, *, seed: int = 0) -> list[RaggedMembers]:
    """Random-size fusion requests: group counts log-uniform in [1, max_groups], sizes geometric (mean 2 to 12)."""
    rng = np.random.default_rng(seed)
    stream = []
    for _ in range(requests):
        groups = int(np.exp(rng.uniform(0, np.log(max_groups + 1))))
        lengths = np.minimum(rng.geometric(1 / rng.uniform(2, 12), size=groups), max_size)
        members = int(lengths.sum())
        values = rng.uniform(0, 500, size=(members, COORDINATES)).astype(np.float32)
        weights = rng.uniform(0, 1, size=members).astype(np.float32)
        stream.append(RaggedMembers(values, weights, lengths))
    return stream


class ThumosLikeCas(NamedTuple):
    """Seeded class activation sequences and the actions planted in them.

    Attributes:
        cas: ``[V, L, C]`` float32 in ``[0, 0.05)``, zero past each video's length.
        length: ``[V]`` int, real snippets of each video.
        truth_video, truth_label: ``[A]`` int, the video and class of each action.
        truth_segments: ``[A, 2]`` float, its ``[start, end)`` in snippets.
    """

    cas: np.ndarray
    length: np.ndarray
    truth_video: np.ndarray
    truth_label: np.ndarray
    truth_segments: np.ndarray


def thumos_like_cas(videos: int, *, snippets: int = 512, classes: int = 3, seed: int = 0) -> ThumosLikeCas:
    """THUMOS14-like CAS (400 to 512 snippets, the 3 classes that pass the video threshold).

    Smoothed noise plus 3 to 11 action bumps per (video, class), squashed into
    the published threshold range, so that every one of the 20 levels cuts runs:
    about 250 to 450 proposals per (video, class), as in the SPEC.
    """
    rng = np.random.default_rng(seed)
    length = rng.integers(400, snippets + 1, videos)
    kernel = np.hanning(9) / np.hanning(9).sum()
    noise = rng.normal(size=(videos, snippets, classes))
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, noise)
    actions = np.zeros_like(smooth)
    truth = []
    for video in range(videos):
        for label in range(classes):
            for _ in range(rng.integers(3, 12)):
                centre, width = int(rng.integers(0, length[video])), int(rng.integers(3, 40))
                start, end = max(0, centre - width // 2), min(int(length[video]), centre + width // 2)
                actions[video, start:end, label] += rng.uniform(1, 3)
                if end > start:
                    truth.append((video, label, start, end))
    cas = 0.05 / (1 + np.exp(-(2.5 * smooth + actions - 1.5)))
    outside = np.arange(snippets)[None, :, None] >= length[:, None, None]
    truth_array = np.asarray(truth, np.int64).reshape(-1, 4)
    return ThumosLikeCas(
        np.where(outside, 0.0, cas).astype(np.float32),
        length,
        truth_array[:, 0],
        truth_array[:, 1],
        truth_array[:, 2:].astype(np.float64),
    )


def _proposal_item(rng: np.random.Generator, target: int):
    """Proposals of one (video, class) from a synthetic CAS, the published way: segments, contrast, inner."""
    length = int(np.clip(rng.lognormal(np.log(500), 0.5), 60, 3000))
    t = np.arange(length)
    cas = np.zeros(length)
    for _ in range(int(rng.integers(1, 12))):
        centre, width, height = rng.uniform(0, length), rng.uniform(4, 60), rng.uniform(0.01, 0.08)
        cas += height * np.exp(-0.5 * ((t - centre) / (width / 2)) ** 4)
    noise_level = 0.004
    while True:  # more noise, more fragments, until there are enough proposals
        noise = np.convolve(rng.normal(0, 1, length), np.ones(3) / 3, "same")
        signal = cas + noise_level * noise * (1 + 5 * cas / 0.04)
        runs = []
        for level in CAS_THRESHOLDS:
            edges = np.diff(np.concatenate([[0], (signal > level).astype(np.int8), [0]]))
            s, e = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            runs.append(np.stack([s, e], -1)[e - s >= 2])
        runs = np.concatenate(runs)
        if len(runs) >= target or noise_level > 0.1:
            break
        noise_level *= 1.5
    if len(runs) > target:
        runs = runs[np.sort(rng.choice(len(runs), target, replace=False))]
    s, e = runs[:, 0], runs[:, 1]
    cumulative = np.concatenate([[0], np.cumsum(signal)])
    inner = (cumulative[e] - cumulative[s]) / (e - s)
    margin = np.maximum(1, (CAS_MARGIN_SCALE * (e - s) ** CAS_MARGIN_POWER).astype(int))
    outer_s, outer_e = np.clip(s - margin, 0, length), np.clip(e + margin, 0, length)
    outer_sum = (cumulative[s] - cumulative[outer_s]) + (cumulative[outer_e] - cumulative[e])
    outer_count = (s - outer_s) + (outer_e - e)
    outer = np.where(outer_count > 0, outer_sum / np.maximum(outer_count, 1), 0)
    return runs.astype(np.float32), (inner - outer).astype(np.float32), inner.astype(np.float32)


def thumos_like_proposal_items(items: int, *, seed: int = 0, min_proposals: int = 20, max_proposals: int = 800):
    """THUMOS14-like raw proposals of ``items`` (video, class) pairs: lists of segments, contrast and inner scores.

    Each item is a synthetic CAS of about 500 snippets (log-normal, 60 to 3000)
    with a few action bumps and noise, cut at the published 20 levels; runs of
    >= 2 snippets are the proposals, sub-sampled to a count log-uniform in
    ``[min_proposals, max_proposals]`` (SPEC: 20 to 800 per (video, class)).

    Returns:
        ``(segments_list, contrast_list, inner_list)``: per item ``[n, 2]``,
        ``[n]``, ``[n]`` float32 (the published ordering score and weights).
    """
    rng = np.random.default_rng(seed)
    counts = np.exp(rng.uniform(np.log(min_proposals), np.log(max_proposals + 1), items)).astype(int)
    made = [_proposal_item(rng, int(n)) for n in counts]
    return tuple(list(column) for column in zip(*made)) if made else ([], [], [])


class ScoredSegments(NamedTuple):
    """Per video, a model's candidates before post-processing: ``segments [V, N, 2]`` seconds, ``scores``, ``labels``."""

    segments: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def actionformer_like_candidates(videos: int = 212, candidates: int = 2_000, *, classes: int = 20,
                                 seed: int = 0) -> ScoredSegments:
    """THUMOS14 test as ActionFormer hands it to post-processing: ``candidates`` scored segments per video.

    Videos of 60 to 600 s; 1 to 3 action classes per video; candidates
    clustered around 3 to 25 action centres (lengths 1 to 30 s, 3 s jitter),
    labels drawn from the video's classes, scores log-uniform in [1e-4, 1]
    (most candidates score low, as a classifier's sigmoid outputs do).
    """
    rng = np.random.default_rng(seed)
    segments = np.empty((videos, candidates, 2), np.float32)
    scores = np.empty((videos, candidates), np.float32)
    labels = np.empty((videos, candidates), np.int32)
    for video in range(videos):
        duration = rng.uniform(60, 600)
        present = rng.choice(classes, int(rng.integers(1, 4)), replace=False)
        centres = rng.uniform(0, duration, int(rng.integers(3, 26)))
        centre = centres[rng.integers(0, centres.size, candidates)] + rng.normal(0, 3, candidates)
        length = rng.uniform(1, 30, candidates)
        start = np.clip(centre - length / 2, 0, duration)
        segments[video, :, 0] = start
        segments[video, :, 1] = np.maximum(start + 0.01, np.clip(centre + length / 2, 0, duration))
        scores[video] = np.exp(rng.uniform(np.log(1e-4), 0, candidates))
        labels[video] = present[rng.integers(0, present.size, candidates)]
    return ScoredSegments(segments, scores, labels)


def write_detection_file(path, candidates: ScoredSegments, *, class_names=None) -> None:
    """Write candidates as an ActivityNet-format JSON results file (video ``v_000000``, ..., seconds)."""
    import json

    videos, count = candidates.scores.shape
    names = [json.dumps(f"class_{c:03d}" if class_names is None else class_names[c])
             for c in range(int(candidates.labels.max()) + 1)]
    with open(path, "w", encoding="utf-8") as stream:
        stream.write('{"version": "VERSION 1.3", "results": {')
        for video in range(videos):
            entries = ", ".join(
                f'{{"label": {names[c]}, "score": {q:.6g}, "segment": [{s:.3f}, {e:.3f}]}}'
                for c, q, s, e in zip(candidates.labels[video].tolist(), candidates.scores[video].tolist(),
                                      candidates.segments[video, :, 0].tolist(), candidates.segments[video, :, 1].tolist())
            )
            stream.write(f'{", " if video else ""}"v_{video:06d}": [{entries}]')
        stream.write('}, "external_data": {"used": false}}')
