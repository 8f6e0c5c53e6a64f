"""Laplace fusion (lower weighted median) against vectorized numpy, side by side, at M = 32 and M = 256.

Run: ``python -m pytest benchmarks/test_bench_laplace.py --benchmark-only -s``

Both sizes hold G x M = 1.6 million padded slots (seeded THUMOS-like groups,
skewed sizes, K = 3 coordinates, float32, T = 0.2). The baseline,
``jaxfuse.tools.synthetic.numpy_fuse("laplace", ...)`` (float64 stable argsort
along the members + cumsum, as users write it), runs on the same padded arrays;
each ``*_numpy`` benchmark checks it picks the same medians and records
``speedup`` = numpy median / jaxfuse median of this run. ``test_first_call``
times the first call in a fresh process with an empty compilation cache.
"""

from __future__ import annotations

import json

import _data
import jax
import numpy as np
import pytest

import jaxfuse
from jaxfuse.bench.baselines import numpy_closed_form

SIZES = {32: 50_000, 256: 6_250}  # members -> groups
_medians: dict[int, float | None] = {}


def _fuse(arrays):
    return jax.block_until_ready(jaxfuse.fuse_laplace(*arrays, temperature=_data.TEMPERATURE))


@pytest.mark.parametrize("members", SIZES, ids=lambda m: f"M={m}")
def test_bench_laplace(benchmark, members):
    groups = SIZES[members]
    benchmark.group = f"laplace {groups:,} x {members} x 3"
    arrays = _data.device_groups(groups, members)
    fused = _data.run_benchmark(benchmark, lambda: _fuse(arrays))
    _medians[members] = _data.median_seconds(benchmark)
    _data.record(benchmark, template="laplace", shape_G_M_K=[groups, members, 3],
                 result_codes=_data.result_counts(fused.result))


@pytest.mark.parametrize("members", SIZES, ids=lambda m: f"M={m}")
def test_bench_laplace_numpy(benchmark, members):
    groups = SIZES[members]
    benchmark.group = f"laplace {groups:,} x {members} x 3"
    data = _data.closed_form_groups(groups, members)
    reference = _data.run_benchmark(benchmark, lambda: numpy_closed_form("laplace", *data), budget_seconds=4.0,
                                    min_rounds=3)
    fused = np.asarray(_fuse(_data.device_groups(groups, members)).location)
    real = data.mask.any(-1)
    # The median is a member's value: both must pick the same one (float64 and float32 sums agree here).
    np.testing.assert_array_equal(fused[real], reference[real].astype(np.float32))
    speedup = _data.ratio(_data.median_seconds(benchmark), _medians.get(members))
    _data.record(benchmark, template="laplace", shape_G_M_K=[groups, members, 3],
                 baseline="jaxfuse.tools.synthetic.numpy_fuse (float64)", speedup=speedup,
                 speedup_of="numpy median / jaxfuse median, same run", speedup_target=1.0)
    if speedup is not None:
        print(f"\nlaplace G x M = {groups:,} x {members}: jaxfuse {speedup:.2f}x numpy")


_FIRST_CALL = """
import json, sys, time
import jax, jax.numpy as jnp
import jaxfuse
from jaxfuse.bench.data import closed_form_groups
seconds = {}
for members, groups in json.loads(sys.argv[1]).items():
    arrays = [jnp.asarray(a) for a in closed_form_groups(groups, int(members))]
    start = time.perf_counter()
    jax.block_until_ready(jaxfuse.fuse_laplace(*arrays, temperature=0.2))
    seconds[members] = time.perf_counter() - start
print(json.dumps(seconds))
"""


def test_first_call(benchmark):
    """First ``fuse_laplace`` call per size in one fresh process, empty compilation cache (compile + run)."""
    benchmark.group = "laplace first call"
    seconds = _data.first_call_in_fresh_process(benchmark, _FIRST_CALL, json.dumps(SIZES))
    _data.record(benchmark, first_call_seconds=seconds, timed="fresh interpreter: import, data, then first calls")
    print(f"\nlaplace first call (fresh process): {seconds}")
