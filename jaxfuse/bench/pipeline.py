"""The *pipeline* section: CAS -> proposals -> fused detections (-> mAP) against the published numpy loops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxfuse.bench.baselines import reference_cas_proposals, reference_fuse_proposals
from jaxfuse.bench.data import ThumosLikeCas, thumos_like_cas
from jaxfuse.bench.section import Section, format_ratio, format_seconds
from jaxfuse.bench.sizes import CAS_THRESHOLDS, TEMPERATURE, Sizes
from jaxfuse.bench.timing import device_arrays, time_call


def _cas_items(proposals, videos: int, classes: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per (video, class): the real proposals' segments, contrast scores and inner scores."""
    items = []
    for video in range(videos):
        for label in range(classes):
            n = int(proposals.count[video, label])
            items.append((proposals.segments[video, label, :n], proposals.contrast[video, label, :n],
                          proposals.inner[video, label, :n]))
    return items


def _jaxfuse_pipeline(cas: ThumosLikeCas):
    """CAS (numpy) -> proposals_from_cas -> pack_proposals -> fuse_proposals -> per-item fused detections."""
    from jaxfuse._detection.cas_proposals import proposals_from_cas
    from jaxfuse._proposals.fuse_proposals import fuse_proposals
    from jaxfuse._proposals.proposal_lists import pack_proposals, unpack_proposals

    proposals = proposals_from_cas(cas.cas, CAS_THRESHOLDS, classes_last=True, length=cas.length)
    items = _cas_items(proposals, cas.cas.shape[0], cas.cas.shape[2])
    batches = pack_proposals(*zip(*items))
    results = [fuse_proposals(b.segments, b.scores, b.weights, b.valid, preset="published", temperature=TEMPERATURE) for b in batches]
    return unpack_proposals(batches, results)


def _loop_pipeline(cas: ThumosLikeCas) -> list[np.ndarray]:
    videos, _, classes = cas.cas.shape
    return [reference_fuse_proposals(*reference_cas_proposals(cas.cas[v, :, c], int(cas.length[v])))
            for v in range(videos) for c in range(classes)]


def _detections(fused_items, classes: int):
    from jaxfuse._evaluation.evaluate import Detections

    video = np.concatenate([np.full(item.count, i // classes) for i, item in enumerate(fused_items)])
    label = np.concatenate([np.full(item.count, i % classes) for i, item in enumerate(fused_items)])
    score = np.concatenate([item.scores for item in fused_items])
    segments = np.concatenate([item.segments for item in fused_items]).reshape(-1, 2)
    return Detections(video, label, score.astype(np.float64), segments.astype(np.float64))


def measure_pipeline(sizes: Sizes) -> Section:
    """End to end: CAS -> proposals -> grouped and fused detections, against the published loops; then mAP."""
    from jaxfuse._detection.cas_proposals import proposals_from_cas
    from jaxfuse._evaluation.evaluate import GroundTruth, evaluate_detections
    from jaxfuse._proposals.fuse_proposals import fuse_proposals
    from jaxfuse._proposals.proposal_lists import pack_proposals

    cas = thumos_like_cas(sizes.cas_videos)
    videos, _, classes = cas.cas.shape
    fused_items = _jaxfuse_pipeline(cas)  # compile every bucket outside the timing
    proposals = proposals_from_cas(cas.cas, CAS_THRESHOLDS, classes_last=True, length=cas.length)
    items = _cas_items(proposals, videos, classes)
    batches = pack_proposals(*zip(*items))
    on_device = [device_arrays(b.segments, b.scores, b.weights, b.valid) for b in batches]

    def fuse_only():
        return [fuse_proposals(*batch, preset="published", temperature=TEMPERATURE) for batch in on_device]

    cas_device, length_device = device_arrays(cas.cas, cas.length)
    stage_cas = time_call(lambda: proposals_from_cas(cas_device, CAS_THRESHOLDS, classes_last=True,
                                                     length=length_device),
                          repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                          max_seconds=sizes.max_seconds)
    stage_fuse = time_call(fuse_only, repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                           max_seconds=sizes.max_seconds)
    whole = time_call(lambda: _jaxfuse_pipeline(cas), repeats=max(2, sizes.repeats // 2), warmup=0,
                      min_seconds=sizes.min_seconds,
                      max_seconds=sizes.max_seconds)

    loop_cas = time_call(lambda: [reference_cas_proposals(cas.cas[v, :, c], int(cas.length[v]))
                                  for v in range(videos) for c in range(classes)], repeats=1, warmup=0, min_seconds=0)
    loop_fuse = time_call(lambda: [reference_fuse_proposals(*item) for item in items], repeats=1, warmup=0,
                          min_seconds=0)
    expected = _loop_pipeline(cas)
    matches = _pipeline_matches(fused_items, expected)

    truth = GroundTruth(cas.truth_video, cas.truth_label, cas.truth_segments)
    detections = _detections(fused_items, classes)
    evaluate = time_call(lambda: evaluate_detections(detections, truth), repeats=max(2, sizes.repeats // 2),
                         min_seconds=sizes.min_seconds,
                         max_seconds=sizes.max_seconds)
    result = evaluate_detections(detections, truth)

    proposal_count = int(proposals.count.sum())
    section = Section("pipeline", f"End to end: CAS -> proposals -> fused detections ({videos} videos x {classes} "
                      f"classes)", (
        f"Seeded THUMOS14-like CAS ({videos} videos of 400 to 512 snippets, {classes} classes, 20 thresholds): "
        f"{proposal_count:,} proposals, {sum(i.count for i in fused_items):,} fused detections. Stages on device "
        "arrays; *whole pipeline* from the numpy CAS to per-item numpy detections (`proposals_from_cas`, "
        "`pack_proposals`, `fuse_proposals`, `unpack_proposals`). Baselines: the per-run numpy loop for "
        "proposals and the published per-item grouping + fusion loop (T = 0.2, Gaussian); both checked "
        "against jaxfuse on this data. Stage times are medians; the whole pipeline is timed on its own, so on a "
        "shared machine it need not equal the sum of its stages."),
        ["stage", "jaxfuse", "numpy loop", "speed-up"])
    rows = [("CAS -> proposals", stage_cas.median, loop_cas.median),
            ("grouping + Gaussian fusion", stage_fuse.median, loop_fuse.median),
            ("whole pipeline (numpy in, numpy out)", whole.median, loop_cas.median + loop_fuse.median)]
    for name, ours, loop in rows:
        section.rows.append([name, format_seconds(ours), format_seconds(loop), format_ratio(loop / ours)])
    section.rows.append(["detection mAP (tIoU 0.1:0.7)", format_seconds(evaluate.median), "see test_bench_evaluate", ""])
    section.notes.append(f"Fused detections identical to the loops' (count, segments, scores to 1e-4): {matches}. "
                         f"Synthetic mAP at tIoU 0.1:0.1:0.7 (average {100 * float(result.average):.1f}) only "
                         "checks the plumbing.")
    section.data = {"videos": videos, "classes": classes, "proposals": proposal_count, "matches": matches,
                    "cas_seconds": stage_cas.median, "fuse_seconds": stage_fuse.median,
                    "whole_seconds": whole.median, "loop_cas_seconds": loop_cas.median,
                    "loop_fuse_seconds": loop_fuse.median, "map_seconds": evaluate.median,
                    "average_map": float(result.average)}
    return section


def _pipeline_matches(fused_items, expected: Sequence[np.ndarray]) -> bool:
    for item, reference in zip(fused_items, expected):
        if item.count != len(reference):
            return False
        got = np.concatenate([np.asarray(item.segments, np.float64), np.asarray(item.scores, np.float64)[:, None]], 1)
        if not np.allclose(got, reference, rtol=1e-4, atol=1e-4):
            return False
    return True
