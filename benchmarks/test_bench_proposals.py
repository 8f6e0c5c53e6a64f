"""Raw proposals to fused detections at THUMOS14-like scale: fuse_proposals against the numpy loop.

Run: ``python -m pytest benchmarks/test_bench_proposals.py``

Workload (seeded, :func:`jaxfuse.bench.data.thumos_like_proposal_items`): 400 and 4,000 (video, class) items (the sizes the GPU
target names; ``benchmarks/gpu.sh`` runs both against the loop on the host CPU), each a synthetic class activation
sequence of about 500 snippets (log-normal length, 60 to 3000) with a few
action bumps and noise, thresholded at the published 20 levels (0.001 to 0.04);
runs of >= 2 snippets are the proposals, sub-sampled to a size drawn
log-uniformly from 20 to 800. Scores are the published inner - outer contrast,
weights the inner score, T = 0.2, the published grouping (candidate overlap >
0.25, +1 frames) and the Gaussian template.

The baseline is the published rule as a plain numpy loop per item and per
group (vectorised within a group), a copy of the reference in
``tests/proposals/test_proposals.py`` (benchmarks do not import tests);
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

from jaxfuse._proposals.fuse_proposals import fuse_proposals
from jaxfuse._proposals.group_fusion import _fuse_closed_form
from jaxfuse._proposals.grouping import _group_batch_jit, overlap_settings
from jaxfuse._proposals.proposal_lists import pack_proposals
from jaxfuse.bench.data import thumos_like_proposal_items
from jaxfuse.bench.published import published_fusion_loop

ITEM_COUNTS = (400, 4_000)
MIN_PROPOSALS, MAX_PROPOSALS = 20, 800
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


@pytest.fixture(scope="module", params=ITEM_COUNTS, ids=lambda items: f"{items}-items")
def thumos_like(request):
    num_items = request.param
    items = list(zip(*thumos_like_proposal_items(num_items, min_proposals=MIN_PROPOSALS,
                                                 max_proposals=MAX_PROPOSALS)))
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
    # One round of the 4,000-item loop (tens of seconds on a host CPU) keeps gpu.sh within its time.
    rounds = 3 if info["items"] <= 400 else 1
    expected = benchmark.pedantic(reference_dataset, args=(items,), rounds=rounds, iterations=1)
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
