"""Seeded benchmark inputs: padded closed-form groups, skewed ragged members, request streams, THUMOS-like CAS."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxfuse.bench.sizes import COORDINATES, SYNTHETIC_BLOCK
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
