"""Soft-NMS and hard NMS measure overlap by IoU unless the published preset (or an explicit argument) says otherwise.

The references below are plain numpy Soft-NMS (Bodla et al., Gaussian decay) and greedy NMS, written from
their definitions with the measure as a parameter: IoU, as every Soft-NMS uses it, or the published grouping's
intersection over the candidate's length (with the ``+1`` frame convention under the published preset).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxfuse
from jaxfuse._core.settings import resolve_settings
from jaxfuse.cli import main

# The batch shape of tests/proposals/test_proposals.py: the float32 programs are shared with it.
ITEMS, SIZE = 6, 40


def overlaps(leader, segments, measure, offset=0.0):
    """Overlap of every segment with ``leader``: IoU, or intersection over the candidate's own length."""
    starts, ends = segments[:, 0], segments[:, 1]
    intersection = np.maximum(0.0, np.minimum(leader[1], ends) - np.maximum(leader[0], starts) + offset)
    lengths = ends - starts + offset
    if measure == "iou":
        return intersection / (lengths + (leader[1] - leader[0] + offset) - intersection)
    return intersection / lengths


def soft_nms(segments, scores, measure, offset=0.0, sigma=0.5, floor=0.001):
    """Gaussian Soft-NMS: ``[(input index, score when kept)]`` in selection order; ties to the lower index."""
    segments = segments.astype(np.float64)
    current = scores.astype(np.float64).copy()
    alive = current >= floor
    kept = []
    while alive.any():
        best = int(np.flatnonzero(alive)[np.argmax(current[alive])])
        kept.append((best, current[best]))
        alive[best] = False
        current = current * np.exp(-overlaps(segments[best], segments, measure, offset) ** 2 / sigma)
        alive &= current >= floor
    return kept


def hard_nms(segments, scores, measure, offset=0.0, threshold=0.25):
    """Greedy NMS: the kept indices in score order; a segment overlapping a kept one by more than ``threshold`` goes."""
    segments = segments.astype(np.float64)
    left = list(np.argsort(-scores, kind="stable"))
    kept = []
    while left:
        best = left.pop(0)
        kept.append(int(best))
        gone = overlaps(segments[best], segments[left], measure, offset) > threshold
        left = [j for j, g in zip(left, gone) if not g]
    return kept


def random_batch(seed):
    """Integer segments (every overlap a ratio of small integers: no threshold ties between float32 and float64)
    of length >= 1, nested and shifted around a few centres, with distinct scores."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(20, 280, size=(ITEMS, 4))[np.arange(ITEMS)[:, None], rng.integers(0, 4, (ITEMS, SIZE))]
    lengths = rng.integers(1, 40, (ITEMS, SIZE))
    starts = centres + rng.integers(-8, 9, (ITEMS, SIZE)) - lengths // 2
    segments = np.stack([starts, starts + lengths], axis=-1).astype(np.float32)
    scores = np.stack([rng.permutation(SIZE) for _ in range(ITEMS)]).astype(np.float32) / SIZE + np.float32(0.01)
    return segments, scores


def assert_soft_nms(fused, segments, scores, measure, offset):
    for item in range(ITEMS):
        expected = soft_nms(segments[item], scores[item], measure, offset)
        count = int(fused.count[item])
        assert [int(i) for i in fused.leader[item][:count]] == [i for i, _ in expected], (item, measure)
        np.testing.assert_allclose(fused.scores[item][:count], [q for _, q in expected], rtol=1e-5)


def assert_nms(fused, segments, scores, measure, offset):
    for item in range(ITEMS):
        count = int(fused.count[item])
        assert [int(i) for i in fused.leader[item][:count]] == hard_nms(segments[item], scores[item], measure, offset)


def test_the_rule_resolves_per_method_and_explicit_values_win():
    assert jaxfuse.DEFAULT.overlap is None and jaxfuse.PUBLISHED.overlap == "candidate"
    for method, measure in (("nms", "iou"), ("soft_nms", "iou"), ("gaussian", "candidate"), ("laplace", "candidate")):
        assert resolve_settings(None, method=method).overlap == measure
        assert resolve_settings("default", method=method).overlap == measure
        assert resolve_settings("published", method=method).overlap == "candidate"
        assert resolve_settings(None, method=method, overlap="candidate").overlap == "candidate"
        assert resolve_settings("published", method=method, overlap="iou").overlap == "iou"
    assert resolve_settings(None).overlap == "candidate"  # grouping for the default template


def test_default_soft_nms_and_nms_use_iou():
    segments, scores = random_batch(0)
    soft = jaxfuse.fuse_proposals(segments, scores, method="soft_nms")
    assert_soft_nms(soft, segments, scores, "iou", 0.0)
    nms = jaxfuse.fuse_proposals(segments, scores, method="nms")
    assert_nms(nms, segments, scores, "iou", 0.0)
    # The data tells the measures apart: the old default (candidate overlap) kept other proposals.
    for kept in (
        lambda item, measure: [i for i, _ in soft_nms(segments[item], scores[item], measure)],
        lambda item, measure: hard_nms(segments[item], scores[item], measure),
    ):
        assert any(kept(item, "candidate") != kept(item, "iou") for item in range(ITEMS))


def test_published_preset_and_explicit_overlap_keep_candidate_overlap():
    segments, scores = random_batch(1)
    assert_soft_nms(jaxfuse.fuse_proposals(segments, scores, method="soft_nms", preset="published"),
                    segments, scores, "candidate", 1.0)
    published_nms = jaxfuse.fuse_proposals(segments, scores, method="nms", preset="published")
    assert_nms(published_nms, segments, scores, "candidate", 1.0)
    assert_soft_nms(jaxfuse.fuse_proposals(segments, scores, method="soft_nms", overlap="candidate"),
                    segments, scores, "candidate", 0.0)
    # Grouping for fusion keeps the published measure under the default preset.
    groups = jaxfuse.group_proposals(segments, scores)
    np.testing.assert_array_equal(groups.group, jaxfuse.group_proposals(segments, scores, overlap="candidate").group)


@pytest.mark.parametrize("preset, measure, offset", [("default", "iou", 0.0), ("published", "candidate", 1.0)])
def test_cli_soft_nms_follows_the_library_rule(tmp_path, preset, measure, offset):
    # Nested detections: IoU and candidate overlap disagree strongly ([2, 4] lies inside [0, 10]: 0.2 against 1).
    entries = [(0.0, 10.0, 0.9), (2.0, 4.0, 0.8), (1.0, 9.0, 0.7), (30.0, 31.5, 0.6), (30.5, 32.0, 0.5)]
    data = {"results": {"v": [{"label": "a", "score": q, "segment": [s, e]} for s, e, q in entries]}}
    source, output = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text(json.dumps(data))
    arguments = ["fuse", str(source), "-o", str(output), "--method", "soft_nms", "--preset", preset, "--quiet"]
    assert main.main(arguments) == 0
    got = [(entry["segment"], entry["score"]) for entry in json.loads(output.read_text())["results"]["v"]]
    segments = np.array([[s, e] for s, e, _ in entries])
    expected = soft_nms(segments, np.array([q for _, _, q in entries]), measure, offset)
    expected.sort(key=lambda kept: -kept[1])
    assert [segment for segment, _ in got] == [segments[i].tolist() for i, _ in expected]
    np.testing.assert_allclose([score for _, score in got], [q for _, q in expected], rtol=1e-12)
    other = soft_nms(segments, np.array([q for _, _, q in entries]), "candidate" if measure == "iou" else "iou", offset)
    assert sorted(q for _, q in other) != pytest.approx(sorted(q for _, q in expected))
