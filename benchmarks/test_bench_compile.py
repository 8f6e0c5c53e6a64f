"""Compile count and first-call latency over a stream of 1,000 random-size requests.

Run: ``python -m pytest benchmarks/test_bench_compile.py --benchmark-only``

Each request is what a serving loop or a training step hands jaxfuse: flat
numpy members of a random number of groups (log-uniform in [1, 2048]) of random
sizes (geometric with a random mean in [2, 12], capped at 64), packed by
``pack_groups`` into power-of-two buckets, fused (Gaussian), unpacked. The
stream runs once from a cold cache (``jax.clear_caches()``), as in a fresh
process; ``jaxfuse.compile_count()`` counts the executables built.

Two padding policies, passed to ``pack_groups`` as explicit sizes: every power
of two, and buckets floored at G >= 256, M >= 16 (``pack_groups``' default
since the first run of this benchmark), which trades padding for fewer
compiles. The compile count must equal the number of distinct padded shapes in
the stream (shapes are the only thing that recompiles); the floored policy
must stay at about a dozen.
"""

from __future__ import annotations

import _data
import jax
import numpy as np
import pytest

import jaxfuse
from jaxfuse._runtime.compilation_cache import persistent_cache_disabled
from jaxfuse.bench.compilation import PADDING_POLICIES, serve_stream

REQUESTS = 1_000
COMPILE_TARGET = 12


@pytest.mark.parametrize("policy_name", list(PADDING_POLICIES))
def test_bench_request_stream(benchmark, policy_name):
    policy = PADDING_POLICIES[policy_name]
    stream = _data.request_stream(REQUESTS)
    benchmark.group = f"compile: {REQUESTS:,} random-size requests"
    with persistent_cache_disabled():  # every bucket compiled, none loaded from disk
        latencies, compiled = benchmark.pedantic(
            serve_stream, args=(stream, policy), setup=jax.clear_caches, rounds=1, iterations=1)
    count = jaxfuse.compile_count()
    shapes = {bucket_size_pair(r, policy) for r in stream}
    warm = latencies[~compiled]
    _data.record(
        benchmark, policy=policy_name, requests=REQUESTS, compile_count=count, distinct_padded_shapes=len(shapes),
        first_call_seconds=float(latencies[0]), mean_compiling_request_seconds=float(latencies[compiled].mean()),
        median_warm_request_seconds=float(np.median(warm)) if warm.size else None,
        padded_slots=int(sum(policy.slots(r) for r in stream)),
        members=int(sum(int(r.lengths.sum()) for r in stream)), compile_target=COMPILE_TARGET)
    assert count == len(shapes)
    if policy.min_groups > 1:
        assert count <= COMPILE_TARGET
    print(f"\n{policy_name}: {count} compiles for {REQUESTS} requests, first call {latencies[0] * 1e3:.0f} ms, "
          f"warm median {np.median(warm) * 1e3:.2f} ms")


def bucket_size_pair(request, policy) -> tuple[int, int]:
    """The padded (G, M) of a request under ``policy``."""
    return (jaxfuse.bucket_size(request.lengths.size, policy.min_groups),
            jaxfuse.bucket_size(int(request.lengths.max()), policy.min_members))
