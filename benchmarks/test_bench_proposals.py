"""Raw proposals to fused detections at THUMOS14-like scale: fuse_proposals against the numpy loop.

Run: ``python -m pytest benchmarks/test_bench_proposals.py``

Workload (seeded): 400 and 4,000 (video, class) items (the sizes the GPU
target names; ``benchmarks/gpu.sh`` runs both against the loop on the host CPU), each a synthetic class activation
sequence of about 500 snippets (log-normal length, 60 to 3000) with a few
action bumps and noise, thresholded at the published 20 levels (0.001 to 0.04);
runs of >= 2 snippets are the proposals, sub-sampled to a size drawn
log-uniformly from 20 to 800. Scores are the published inner - outer contrast,
weights the inner score, T = 0.2, the published grouping (candidate overlap >
0.25, +1 frames) and the Gaussian template.

The baseline is the published rule as a plain numpy loop per item and per
group (vectorised within a group), a copy of the reference in
``tests/test_proposals.py`` (benchmarks do not import tests);
``test_bench_reference_loop`` checks that ``fuse_proposals`` gives the same
groups, fused segments and scores (1e-5 relative) on the benchmark data.

``fuse_proposals`` runs on the padded, power-of-two bucketed batches from
``pack_proposals`` (packed and moved to the device before timing; jit warmed
up; ``block_until_ready`` on every result). The speed-up (best reference round
/ best fused round) is recorded in ``extra_info`` with the peak memory of the
largest bucket's kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfuse._grouping import _group_batch_jit, overlap_settings
from jaxfuse._proposals import _fuse_closed_form, fuse_proposals, pack_proposals
from jaxfuse._published import published_fusion_loop

ITEM_COUNTS = (400, 4_000)
MIN_PROPOSALS, MAX_PROPOSALS = 20, 800
THRESHOLDS = np.arange(0.001, 0.04, 0.002)  # the published 20 CAS levels
TEMPERATURE = 0.2
SPEEDUP_TARGET = 30

_timings: dict[int, float] = {}  # items -> best fuse_proposals round


# ------------------------------------------------------------- reference loop


def reference_fuse(segments, scores, weights, temperature, threshold=0.25):
    """The published rule on one item, Gaussian template: ``[groups, 3]`` (start, end, score) in leader order."""
    return published_fusion_loop(segments, scores, weights, temperature=temperature, threshold=threshold)


def reference_dataset(items):
    return [reference_fuse(segments, scores, weights, TEMPERATURE) for segments, scores, weights in items]


# ------------------------------------------------------------------------ data


def _cas_item(rng, target):
    """Proposals of one (video, class) from a synthetic CAS, the published way."""
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
        for level in THRESHOLDS:
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
    margin = np.maximum(1, (0.0785 * (e - s) ** 0.9).astype(int))
    outer_s, outer_e = np.clip(s - margin, 0, length), np.clip(e + margin, 0, length)
    outer_sum = (cumulative[s] - cumulative[outer_s]) + (cumulative[outer_e] - cumulative[e])
    outer_count = (s - outer_s) + (outer_e - e)
    outer = np.where(outer_count > 0, outer_sum / np.maximum(outer_count, 1), 0)
    return runs.astype(np.float32), (inner - outer).astype(np.float32), inner.astype(np.float32)


@pytest.fixture(scope="module", params=ITEM_COUNTS, ids=lambda items: f"{items}-items")
def thumos_like(request):
    num_items = request.param
    rng = np.random.default_rng(0)
    sizes = np.exp(rng.uniform(np.log(MIN_PROPOSALS), np.log(MAX_PROPOSALS + 1), num_items)).astype(int)
    items = [_cas_item(rng, int(n)) for n in sizes]
    batches = pack_proposals(*zip(*items))
    on_device = [
        tuple(jnp.asarray(x) for x in (b.segments, b.scores, b.weights, b.valid)) for b in batches
    ]
    counts = np.array([len(item[1]) for item in items])
    info = {
        "items": num_items,
        "proposals": int(counts.sum()),
        "proposals_per_item_min_median_max": [int(counts.min()), int(np.median(counts)), int(counts.max())],
        "buckets": {int(b.segments.shape[1]): int(b.segments.shape[0]) for b in batches},
        "padded_proposals": int(sum(b.valid.size for b in batches)),
    }
    return items, batches, on_device, info


def fuse_dataset(on_device):
    results = [
        fuse_proposals(segments, scores, weights, valid, preset="published", temperature=TEMPERATURE)
        for segments, scores, weights, valid in on_device
    ]
    return jax.block_until_ready(results)


def _min_seconds(benchmark) -> float | None:
    """The fastest round, or None when pytest-benchmark is disabled."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.min


def _peak_bytes(on_device) -> dict[str, int]:
    """Arguments + outputs + temporaries of the two kernels on the largest bucket (XLA's own count)."""
    segments, scores, weights, valid = max(on_device, key=lambda batch: batch[1].size)
    grouping = _group_batch_jit.lower(segments, scores, valid, 0.25, *overlap_settings("candidate", True)).compile()
    groups = _group_batch_jit(segments, scores, valid, 0.25, *overlap_settings("candidate", True))
    codes = jnp.zeros(scores.shape[:1], jnp.int32)
    fusion = _fuse_closed_form.lower(segments, scores, weights, groups, TEMPERATURE, codes, method="gaussian").compile()
    info = {"largest_bucket_shape": list(scores.shape)}
    for name, compiled in (("grouping", grouping), ("fusion", fusion)):
        memory = compiled.memory_analysis()
        if memory is None:
            continue
        info[f"{name}_bytes"] = int(
            memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
        )
    return info


# ------------------------------------------------------------------ benchmarks


def test_bench_fuse_proposals(benchmark, thumos_like):
    _, _, on_device, info = thumos_like
    fuse_dataset(on_device)  # compile every bucket outside the timing
    results = benchmark.pedantic(fuse_dataset, args=(on_device,), rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(_peak_bytes(on_device))
    benchmark.extra_info["fused_instances"] = int(sum(int(np.sum(r.count)) for r in results))
    if (seconds := _min_seconds(benchmark)) is not None:
        _timings[info["items"]] = seconds


def test_bench_reference_loop(benchmark, thumos_like):
    items, batches, on_device, info = thumos_like
    expected = benchmark.pedantic(reference_dataset, args=(items,), rounds=3, iterations=1)
    benchmark.extra_info.update(info)

    # Same outputs: counts, fused segments and scores, in leader order.
    for batch, fused in zip(batches, fuse_dataset(on_device)):
        for row, item in enumerate(batch.items):
            reference = expected[item]
            count = int(fused.count[row])
            assert count == len(reference)
            np.testing.assert_allclose(np.asarray(fused.segments[row, :count]), reference[:, :2], rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(np.asarray(fused.scores[row, :count]), reference[:, 2], rtol=1e-5, atol=1e-6)

    seconds = _min_seconds(benchmark)
    if seconds is None or info["items"] not in _timings:
        pytest.skip("timings unavailable (run both benchmarks, without --benchmark-disable)")
    speedup = seconds / _timings[info["items"]]
    benchmark.extra_info["speedup"] = speedup
    benchmark.extra_info["speedup_target"] = SPEEDUP_TARGET
    print(f"\nfuse_proposals is {speedup:.1f}x faster than the numpy loop (target {SPEEDUP_TARGET}x)")
