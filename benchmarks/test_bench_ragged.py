"""Ragged groups end to end: flat members -> ``fuse_ragged`` (size-bucketed pack + fuse) against numpy ``reduceat``.

Run: ``python -m pytest benchmarks/test_bench_ragged.py --benchmark-only -s``

Workload: 200,000 groups with Zipf sizes capped at 256 (median 2, mean 10.8,
2.16 million members), K = 3 (start, end, score) float32, T = 0.2, Gaussian,
flat numpy members in contiguous groups (``lengths``), numpy results out. The
baseline is what a careful numpy user writes for the same flat data, with no
padding at all: ``jaxfuse.bench.baselines.numpy_ragged_gaussian`` (a
shift-safe softmax and the weighted mean and variance by ``np.*.reduceat``,
float32); both outputs are location, scale and per-member probabilities, and
are checked to agree.

Rows: *end to end* (``fuse_ragged``: the Gaussian in segment form on the
flat members, one program), *pack* alone (``pack_ragged``, the size-bucketed
path that Laplace and Student-t take; also with shuffled group ids, which
costs a sort), *fuse* alone (``fuse_groups`` on every size bucket, device
arrays in and out; pack + fuse is the bucketed path's cost), the
numpy baseline, and ``test_bench_interleaved``, which times all four in
alternating rounds of one loop (the fairest comparison on a shared machine)
and records the ratios on best and median rounds. ``test_first_call`` runs the
first ``fuse_ragged`` in a fresh process with an empty compilation cache and
counts its compiles; ``test_bench_request_stream`` counts the compiles of 1,000
random-size requests (``benchmarks/test_bench_compile.py``'s stream).
"""

from __future__ import annotations

import math
import time

import _data
import jax
import numpy as np
import pytest

import jaxfuse
from jaxfuse._fusion.flat_closed_forms import padded_groups, padded_members
from jaxfuse._runtime.compilation_cache import persistent_cache_disabled
from jaxfuse.bench.baselines import numpy_ragged_gaussian
from jaxfuse.bench.timing import time_interleaved

GROUPS, MAX_SIZE = 200_000, 256
GROUP = f"ragged Zipf sizes, {GROUPS:,} groups, end to end"
ROUNDS = 12


@pytest.fixture(scope="module")
def ragged():
    return _data.skewed_ragged(GROUPS, MAX_SIZE)


@pytest.fixture(scope="module")
def packed(ragged):
    return jaxfuse.pack_ragged(ragged.values, ragged.weights, lengths=ragged.lengths)


@pytest.fixture(scope="module")
def device_batches(packed):
    return [tuple(jax.device_put(a) for a in (b.values, b.weights, b.mask)) for b in packed.batches]


def _end_to_end(ragged):
    return jaxfuse.fuse_ragged(ragged.values, ragged.weights, lengths=ragged.lengths, temperature=_data.TEMPERATURE)


def _numpy(ragged):
    return numpy_ragged_gaussian(ragged.values, ragged.weights, ragged.lengths, _data.TEMPERATURE)


def _pack(ragged):
    return jaxfuse.pack_ragged(ragged.values, ragged.weights, lengths=ragged.lengths)


def _fuse(device_batches):
    return jax.block_until_ready([jaxfuse.fuse_groups(*batch, temperature=_data.TEMPERATURE)
                                  for batch in device_batches])


def _info(ragged, packed) -> dict:
    slots = sum(b.mask.size for b in packed.batches)
    return {"groups": GROUPS, "members": int(ragged.lengths.sum()), "dtype": "float32", "K": 3,
            "size_median_mean_max": [float(np.median(ragged.lengths)), float(ragged.lengths.mean()),
                                     int(ragged.lengths.max())],
            "bucket_shapes": [list(b.mask.shape) for b in packed.batches], "padded_slots": slots,
            "slots_used": float(ragged.lengths.sum() / slots)}


def test_bench_end_to_end(benchmark, ragged, packed):
    """``fuse_ragged``: flat numpy members in, per-group numpy results out (pack + fuse + unpack)."""
    benchmark.group = GROUP
    _end_to_end(ragged)  # compile every bucket first: run_benchmark sizes its rounds on its own warm-up call
    fused = _data.run_benchmark(benchmark, lambda: _end_to_end(ragged))
    reference = _numpy(ragged)
    spread = np.ptp(ragged.values, axis=0)
    assert (np.abs(fused.location - reference.location) / spread).max() < 1e-5
    assert (np.abs(fused.parameters.scale - reference.scale) / spread).max() < 1e-5
    np.testing.assert_allclose(fused.probabilities, reference.probabilities, rtol=1e-4, atol=1e-6)
    _data.record(benchmark, **_info(ragged, packed), result_codes=_data.result_counts(fused.result),
                 timed="fuse_ragged(values, weights, lengths=...), numpy in and out")


def test_bench_numpy(benchmark, ragged, packed):
    """The numpy baseline on the same flat members: np.*.reduceat weighted moments, no padding."""
    benchmark.group = GROUP
    _data.run_benchmark(benchmark, lambda: _numpy(ragged))
    _data.record(benchmark, **_info(ragged, packed), baseline="numpy_ragged_gaussian (reduceat, float32)")


def test_bench_pack(benchmark, ragged, packed):
    """``pack_ragged`` alone (members already in group order: no sort)."""
    benchmark.group = GROUP
    _data.run_benchmark(benchmark, lambda: _pack(ragged))
    _data.record(benchmark, **_info(ragged, packed))


def test_bench_pack_shuffled_ids(benchmark, ragged, packed):
    """``pack_ragged`` with the members shuffled and labelled by group id: one stable radix argsort more."""
    benchmark.group = GROUP
    permutation = np.random.default_rng(0).permutation(ragged.values.shape[0])
    ids = np.repeat(np.arange(GROUPS), ragged.lengths)[permutation]
    values, weights = ragged.values[permutation], ragged.weights[permutation]
    _data.run_benchmark(benchmark, lambda: jaxfuse.pack_ragged(values, weights, ids))
    _data.record(benchmark, **_info(ragged, packed))


def test_bench_fuse(benchmark, ragged, packed, device_batches):
    """``fuse_groups`` on every size bucket alone, device arrays in and out (the kernels' share)."""
    benchmark.group = GROUP
    _data.run_benchmark(benchmark, lambda: _fuse(device_batches))
    _data.record(benchmark, **_info(ragged, packed), buckets=len(device_batches))


def test_bench_interleaved(benchmark, ragged, packed, device_batches):
    """All four in alternating rounds of one loop; ratios on best and median rounds."""
    benchmark.group = GROUP
    calls = {"numpy": lambda: _numpy(ragged), "end_to_end": lambda: _end_to_end(ragged),
             "pack": lambda: _pack(ragged), "fuse": lambda: _fuse(device_batches)}
    timings = benchmark.pedantic(lambda: time_interleaved(calls, rounds=ROUNDS, max_seconds=math.inf),
                                 rounds=1, iterations=1)
    best = {name: timing.best for name, timing in timings.items()}
    median = {name: timing.median for name, timing in timings.items()}
    ratios = {
        "numpy / end_to_end": (best["numpy"] / best["end_to_end"], median["numpy"] / median["end_to_end"]),
        "pack / fuse": (best["pack"] / best["fuse"], median["pack"] / median["fuse"]),
        "numpy / fuse": (best["numpy"] / best["fuse"], median["numpy"] / median["fuse"]),
    }
    _data.record(benchmark, **_info(ragged, packed), rounds=ROUNDS, best_seconds=best, median_seconds=median,
                 ratios_best_median=ratios)
    print(f"\nragged {GROUPS:,} groups, {int(ragged.lengths.sum()):,} members, {ROUNDS} interleaved rounds:")
    for name in calls:
        print(f"  {name:11s} best {best[name] * 1e3:7.1f} ms   median {median[name] * 1e3:7.1f} ms")
    for name, (on_best, on_median) in ratios.items():
        print(f"  {name:19s} {on_best:.2f}x best, {on_median:.2f}x median")


_FIRST_CALL = """
import json, sys, time
t0 = time.perf_counter()
import jax, jaxfuse
from jaxfuse.bench.data import skewed_ragged_members
imported = time.perf_counter() - t0
ragged = skewed_ragged_members(int(sys.argv[1]), int(sys.argv[2]))
seconds = []
for _ in range(2):
    start = time.perf_counter()
    jaxfuse.fuse_ragged(ragged.values, ragged.weights, lengths=ragged.lengths, temperature=0.2)
    seconds.append(time.perf_counter() - start)
print(json.dumps({"import": imported, "first": seconds[0], "second": seconds[1],
                  "compiles": jaxfuse.compile_count()}))
"""


def test_first_call(benchmark):
    """First and second ``fuse_ragged`` in one fresh process, empty compilation cache: compile + run, compile count."""
    benchmark.group = "ragged first call"
    seconds = _data.first_call_in_fresh_process(benchmark, _FIRST_CALL, str(GROUPS), str(MAX_SIZE))
    _data.record(benchmark, **seconds, timed="fresh interpreter, empty compilation cache")
    print(f"\nragged first call (fresh process): {seconds}")


def test_bench_request_stream(benchmark):
    """1,000 random-size requests through ``fuse_ragged`` from a cold cache: compile count and latencies."""
    stream = _data.request_stream(1_000)
    benchmark.group = "compile: 1,000 random-size requests"

    def serve():
        latencies = []
        for request in stream:
            start = time.perf_counter()
            jaxfuse.fuse_ragged(request.values, request.weights, lengths=request.lengths,
                                temperature=_data.TEMPERATURE)
            latencies.append(time.perf_counter() - start)
        return np.array(latencies)

    with persistent_cache_disabled():  # every bucket compiled, none loaded from disk
        latencies = benchmark.pedantic(serve, setup=jax.clear_caches, rounds=1, iterations=1)
    count = jaxfuse.compile_count()
    shapes = {(padded_members(r.lengths.sum()), padded_groups(r.lengths.size)) for r in stream}
    _data.record(benchmark, policy="fuse_ragged Gaussian in segment form (members: 8 sizes an octave, >= 2^14; "
                                   "groups: powers of two, >= 2^12)",
                 compile_count=count, distinct_padded_shapes=len(shapes), first_call_seconds=float(latencies[0]),
                 median_request_seconds=float(np.median(latencies)), whole_stream_seconds=float(latencies.sum()))
    assert count == len(shapes)
    print(f"\nfuse_ragged: {count} compiles for {len(stream)} requests, first call {latencies[0] * 1e3:.0f} ms, "
          f"median {np.median(latencies) * 1e3:.2f} ms, whole stream {latencies.sum():.1f} s")
