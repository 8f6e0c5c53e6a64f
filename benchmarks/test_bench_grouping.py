"""Grouping alone: the sequential loop against the parallel rounds, and what the grouping entry picks (issue 18).

Run: ``python -m pytest benchmarks/test_bench_grouping.py -s --benchmark-only``
(``benchmarks/gpu.sh`` runs it on a GPU; ``-k "thumos-400 or single"`` for a quick look).

Workloads (seeded; each item's proposals in a row of a padded batch):

* ``thumos-400``, ``thumos-4000``: THUMOS-like items
  (:func:`jaxfuse.bench.data.thumos_like_proposal_items`, 20 to 800
  proposals) in :func:`jaxfuse.pack_proposals`' power-of-four buckets, the
  published rule (candidate overlap > 0.25, +1 frames);
* ``actionformer-212x2000``: ActionFormer-like candidates
  (:func:`jaxfuse.bench.data.actionformer_like_candidates`, 212 videos x 2,000)
  per (video, class) in the same buckets, IoU > 0.1 with continuous lengths
  (ActionFormer's THUMOS ``iou_threshold``);
* ``single-disjoint-2000`` and ``single-one-group-2000``: one item of 2,000
  proposals, pairwise disjoint (2,000 groups) or all in one group;
* ``single-100000``: one item of 100,000 short proposals spread over a long
  video (about 90,000 groups). The loop takes about 20 s there on a CPU;
  it runs only with ``JAXFUSE_BENCH_SLOW=1``.

Each workload is timed three ways, warm (best round): ``loop``
(:func:`jaxfuse._proposals.grouping.group_batch`), ``parallel``
(:func:`jaxfuse._proposals.parallel_grouping.parallel_group_batch`) and ``entry``
(what :func:`jaxfuse._proposals.grouping_entry.group_items` runs: the method
:func:`~jaxfuse._proposals.grouping_entry.grouping_method` picks per bucket). ``test_grouping_table`` checks that both methods give the same
groups on every workload and prints the table (rounds run, tile size, tile
pairs and slots, rows left to the sequential finish, times, loop / parallel);
the rows are in its ``extra_info``.
"""

from __future__ import annotations

import functools
import os
import time

import _data
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfuse._proposals.grouping import group_batch, overlap_settings
from jaxfuse._proposals.grouping_entry import grouping_method
from jaxfuse._proposals.parallel_grouping import parallel_group_batch_with_stats
from jaxfuse._proposals.proposal_lists import pack_proposals
from jaxfuse.bench.data import actionformer_like_candidates, thumos_like_proposal_items

WORKLOADS = ("thumos-400", "thumos-4000", "actionformer-212x2000", "single-disjoint-2000", "single-one-group-2000",
             "single-100000")
METHODS = ("loop", "parallel", "entry")
SLOW = bool(os.environ.get("JAXFUSE_BENCH_SLOW"))
_timings: dict[tuple[str, str], float] = {}

_loop = jax.jit(group_batch)
_parallel = jax.jit(parallel_group_batch_with_stats)


def _padded(segments_list, scores_list):
    return [(jnp.asarray(b.segments), jnp.asarray(b.scores), jnp.asarray(b.valid))
            for b in pack_proposals(segments_list, scores_list)]


def _single(segments, scores):
    return [(jnp.asarray(segments[None]), jnp.asarray(scores[None]), jnp.ones((1, len(scores)), bool))]


@functools.lru_cache(maxsize=1)
def workload(name: str):
    """``(batches, threshold, use_iou, offset)``: device batches ``(segments, scores, valid)`` and the rule."""
    rng = np.random.default_rng(0)
    published = (0.25, *overlap_settings("candidate", True))
    if name.startswith("thumos-"):
        segments, contrast, _ = thumos_like_proposal_items(int(name.split("-")[1]))
        return _padded(segments, contrast), *published
    if name == "actionformer-212x2000":
        found = actionformer_like_candidates(212, 2_000)
        keys = [(v, c) for v in range(212) for c in np.unique(found.labels[v])]
        segments = [found.segments[v][found.labels[v] == c] for v, c in keys]
        scores = [found.scores[v][found.labels[v] == c] for v, c in keys]
        return _padded(segments, scores), 0.1, *overlap_settings("iou", False)
    size = 100_000 if name == "single-100000" else 2_000
    starts = np.arange(size) * 10.0 if "disjoint" in name else np.zeros(size)
    lengths = np.full(size, 5.0) if "disjoint" in name else np.full(size, 100.0)
    if name == "single-100000":
        starts, lengths = np.sort(rng.uniform(0, 40 * size, size)), rng.exponential(4, size)
    segments = np.stack([starts, starts + lengths], -1).astype(np.float32)
    return _single(segments, rng.random(size).astype(np.float32)), *published


def _run(method: str, name: str):
    batches, threshold, use_iou, offset = workload(name)
    if method == "loop":
        return [_loop(*batch, threshold, use_iou, offset) for batch in batches]
    if method == "parallel":
        return [_parallel(*batch, threshold, use_iou, offset)[0] for batch in batches]
    # What group_items runs, bucket by bucket (the same compiled programs as the two rows above).
    picked = [grouping_method(*batch[1].shape) for batch in batches]
    return [_loop(*batch, threshold, use_iou, offset) if method == "loop" else
            _parallel(*batch, threshold, use_iou, offset)[0] for method, batch in zip(picked, batches)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", WORKLOADS)
def test_bench_grouping(benchmark, name, method):
    if method == "loop" and name == "single-100000" and not SLOW:
        pytest.skip("the loop takes about 20 s here; JAXFUSE_BENCH_SLOW=1 runs it")
    _data.run_benchmark(benchmark, lambda: jax.block_until_ready(_run(method, name)), budget_seconds=2.0,
                        max_rounds=10)
    batches = workload(name)[0]
    _data.record(benchmark, workload=name, method=method, shapes=[list(b[1].shape) for b in batches],
                 methods_picked=[grouping_method(*b[1].shape) for b in batches])
    if _data.median_seconds(benchmark) is not None:
        _timings[name, method] = float(benchmark.stats.stats.min)


def _row(name: str) -> dict:
    batches, threshold, use_iou, offset = workload(name)
    row = {"workload": name, "shapes": [], "rounds": [], "tile": [], "pairs": [], "pair_slots": [],
           "sequential_rows": [], "picked": []}
    for batch in batches:
        parallel, stats = _parallel(*batch, threshold, use_iou, offset)
        if name != "single-100000" or SLOW:
            for field, a, b in zip(parallel._fields, _loop(*batch, threshold, use_iou, offset), parallel):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name} {field}")
        row["shapes"].append(list(batch[1].shape))
        row["picked"].append(grouping_method(*batch[1].shape))
        row["rounds"].append(int(stats.rounds))
        row["tile"].append(int(stats.tile))
        row["pairs"].append(int(stats.pairs))
        row["pair_slots"].append(int(stats.pair_slots))
        row["sequential_rows"].append(int(stats.sequential_rows))
        row["groups"] = row.get("groups", 0) + int(np.sum(parallel.count))
    for method in METHODS:
        row[f"{method}_ms"] = 1e3 * _timings[name, method] if (name, method) in _timings else None
    if row["loop_ms"] and row["parallel_ms"]:
        row["loop_over_parallel"] = row["loop_ms"] / row["parallel_ms"]
    return row


def test_grouping_table(benchmark):
    """Same groups from both methods on every workload; the table of rounds, tiles and times (run last)."""
    start = time.perf_counter()
    rows = [_row(name) for name in WORKLOADS]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    _data.record(benchmark, rows=rows, load=os.getloadavg()[0], seconds=time.perf_counter() - start)
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    print(f"\n{'workload':24} {'buckets [B, N]':34} {'rounds':14} {'tile':5} {'pairs/slots':22} {'seq':4} "
          f"{'groups':8} {'loop ms':>9} {'par. ms':>9} {'entry ms':>9} {'loop/par':>8}")
    for row in rows:
        pairs = ",".join(f"{p}/{s}" for p, s in zip(row["pairs"], row["pair_slots"]))
        print(f"{row['workload']:24} {row['shapes']!s:34} {row['rounds']!s:14} {row['tile'][-1]:<5} "
              f"{pairs:22} {sum(row['sequential_rows']):<4} {row['groups']:<8} {fmt(row['loop_ms']):>9} "
              f"{fmt(row['parallel_ms']):>9} {fmt(row['entry_ms']):>9} {fmt(row.get('loop_over_parallel')):>8}")
    print(f"(load average {os.getloadavg()[0]:.1f}; the entry picked {[r['picked'] for r in rows]})")
