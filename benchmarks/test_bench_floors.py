"""Floors of this device, and each kernel's achieved fraction of them, measured in the same run.

Run: ``python -m pytest benchmarks/test_bench_floors.py --benchmark-only``

* copy bandwidth: a jitted ``x + 0`` on 2^26 float32 (256 MB), which reads and
  writes every byte once (XLA keeps it: ``-0.0 + 0`` is ``+0.0``, so it is no identity);
* exp throughput: a jitted ``jnp.exp`` on the same array;
* each closed-form kernel at G x M x K = 200,000 x 32 x 3 and Student-t at
  10,000 x 32 x 3 (float32, device arrays): the bytes it must move (values,
  weights, mask read; every output written) over its time, as a fraction of the
  copy bandwidth, and ``floor_fraction`` = max(bytes / copy bandwidth,
  G x M exps / exp rate) / its time. 100% would be a kernel limited only by
  memory traffic or by its exponentials.

``JAXFUSE_BENCH_FRACTION_GROUPS`` (e.g. 3200000: 1.02e8 members at M = 32, as
issue 12 asks of a GPU) resizes the closed-form kernels' point.

Floors and fractions use each benchmark's fastest round: on a shared machine the
median of a memory-bound loop wanders with the neighbours' traffic.
"""

from __future__ import annotations

import os

import _data
import jax
import jax.numpy as jnp
import pytest

import jaxfuse
from jaxfuse.bench.sizes import CLOSED_FORMS

FLOOR_ELEMENTS = 1 << 26
FRACTION_GROUPS = int(os.environ.get("JAXFUSE_BENCH_FRACTION_GROUPS", _data.HEADLINE_GROUPS))

_floors: dict[str, float | None] = {}


@pytest.fixture(scope="module")
def big_array():
    return jax.device_put(jnp.linspace(-10.0, 0.0, FLOOR_ELEMENTS, dtype=jnp.float32))


def test_bench_copy_bandwidth(benchmark, big_array):
    benchmark.group = "floors"
    copy = jax.jit(lambda x: x + 0)
    _data.run_benchmark(benchmark, lambda: jax.block_until_ready(copy(big_array)))
    seconds = _data.best_seconds(benchmark)
    gbps = _data.ratio(2 * big_array.nbytes, seconds)
    _floors["copy_bytes_per_second"] = gbps
    _data.record(benchmark, dtype="float32", elements=FLOOR_ELEMENTS, bytes_moved=2 * big_array.nbytes,
                 gb_per_s=None if gbps is None else gbps / 1e9)


def test_bench_exp_throughput(benchmark, big_array):
    benchmark.group = "floors"
    exp = jax.jit(jnp.exp)
    _data.run_benchmark(benchmark, lambda: jax.block_until_ready(exp(big_array)))
    rate = _data.ratio(FLOOR_ELEMENTS, _data.best_seconds(benchmark))
    _floors["exp_per_second"] = rate
    _data.record(benchmark, dtype="float32", elements=FLOOR_ELEMENTS,
                 g_exp_per_s=None if rate is None else rate / 1e9)


@pytest.mark.parametrize("template", CLOSED_FORMS + ("student_t",))
def test_bench_kernel_fraction(benchmark, template):
    benchmark.group = "fraction of floor"
    groups = _data.STUDENT_T_GROUPS if template == "student_t" else FRACTION_GROUPS
    arrays = _data.device_groups(groups, _data.MEMBERS, seed=1 if template == "student_t" else 0)

    def fuse():
        return jax.block_until_ready(
            jaxfuse.fuse_groups(*arrays, template=template, temperature=_data.TEMPERATURE))

    fused = _data.run_benchmark(benchmark, fuse, budget_seconds=5.0)
    seconds = _data.best_seconds(benchmark)
    moved = _data.tree_bytes(arrays) + _data.tree_bytes(fused)
    exps = int(arrays[2].size)
    copy, exp = _floors.get("copy_bytes_per_second"), _floors.get("exp_per_second")
    info = {"template": template, "dtype": "float32", "shape_G_M_K": list(arrays[0].shape), "bytes_moved": moved,
            "exps": exps, "gb_per_s": None if seconds is None else moved / seconds / 1e9,
            "result_codes": _data.result_counts(fused.result)}
    if _data.finite_positive(seconds) and _data.finite_positive(copy) and _data.finite_positive(exp):
        info["copy_fraction"] = moved / seconds / copy
        info["floor_fraction"] = max(moved / copy, exps / exp) / seconds
    _data.record(benchmark, **info)
