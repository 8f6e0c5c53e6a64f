"""Seeded, cached workloads and timing helpers shared by the benchmark files.

Thin caches over the builders of :mod:`jaxfuse.bench.data`, which ``jaxfuse bench``
uses too, so the pytest suite and the command measure the same data. Each
builder is seeded: the same arguments give the same arrays in every run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse.bench import data as bench_data
from jaxfuse.bench.machine import closed_form_footprint, machine_name
from jaxfuse.bench.machine import memory_budget_bytes as _memory_budget_bytes
from jaxfuse.bench.report import json_ready
from jaxfuse.bench.timing import tree_bytes as _tree_bytes

MEMBERS = 32  # the padded group size of the headline and the G sweep
HEADLINE_GROUPS = 200_000
STUDENT_T_GROUPS = 10_000


def memory_budget_bytes() -> int:
    """The most one benchmark may use: ``$JAXFUSE_BENCH_MEMORY_GB`` (default 4), at most half of free memory."""
    return _memory_budget_bytes(float(os.environ.get("JAXFUSE_BENCH_MEMORY_GB", "4")))


def skip_reason_for_memory(groups: int, members: int) -> str | None:
    """Why a closed-form benchmark of this size would not fit, or None when it fits."""
    needed, budget = closed_form_footprint(groups, members), memory_budget_bytes()
    if needed <= budget:
        return None
    return (f"G x M = {groups:,} x {members} needs ~{needed / 1e9:.1f} GB, over the {budget / 1e9:.1f} GB cap "
            "(raise JAXFUSE_BENCH_MEMORY_GB)")


# Big arrays: keep only the latest couple of sizes alive.
@functools.lru_cache(maxsize=2)
def closed_form_groups(groups: int, members: int = MEMBERS, seed: int = 0) -> bench_data.SyntheticGroups:
    """Seeded THUMOS-like padded groups ``[G, M, 3]`` float32, skewed sizes (see ``jaxfuse.bench.data``)."""
    return bench_data.closed_form_groups(groups, members, seed=seed)


@functools.lru_cache(maxsize=2)
def device_groups(groups: int, members: int = MEMBERS, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The same groups as device arrays (values, weights, mask), so transfers stay out of the timing."""
    return tuple(jax.device_put(jnp.asarray(a)) for a in closed_form_groups(groups, members, seed))


@functools.lru_cache(maxsize=1)
def skewed_ragged(groups: int, max_size: int, seed: int = 0) -> bench_data.RaggedMembers:
    """Flat members of ragged groups with Zipf sizes capped at ``max_size``."""
    return bench_data.skewed_ragged_members(groups, max_size, seed=seed)


@functools.lru_cache(maxsize=1)
def request_stream(requests: int = 1_000, max_groups: int = 2_048, max_size: int = 64, seed: int = 0):
    """Random-size fusion requests (flat members), as served one by one."""
    return tuple(bench_data.request_stream(requests, max_groups, max_size, seed=seed))


def device_info() -> dict[str, Any]:
    """What ran the benchmark, for ``benchmark.extra_info``."""
    device = jax.devices()[0]
    return {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
            "machine": machine_name()}


def record(benchmark, **info: Any) -> None:
    """Add the device and ``info`` to the benchmark's ``extra_info`` (numpy scalars made plain)."""
    benchmark.extra_info.update(device_info())
    benchmark.extra_info.update(json_ready(info))


def run_benchmark(benchmark, function: Callable[[], Any], *, budget_seconds: float = 3.0, max_rounds: int = 50,
                  min_rounds: int = 3):
    """Warm ``function`` up once, then time it in as many rounds as fit ``budget_seconds``.

    ``function`` must end with ``jax.block_until_ready`` on anything it computes
    with JAX. Returns its result.
    """
    start = time.perf_counter()
    jax.block_until_ready(function())  # compile and warm caches outside the timing
    seconds = time.perf_counter() - start
    rounds = int(min(max_rounds, max(min_rounds, budget_seconds // max(seconds, 1e-6))))
    if seconds > budget_seconds:
        rounds = 1
    return benchmark.pedantic(function, rounds=rounds, iterations=1, warmup_rounds=0)


def median_seconds(benchmark) -> float | None:
    """The benchmark's median round, or None when timing is disabled (``--benchmark-disable``)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.median)


def best_seconds(benchmark) -> float | None:
    """The benchmark's fastest round (the least disturbed on a shared machine), or None when timing is disabled."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.min)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` when both were measured."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def tree_bytes(tree) -> int:
    """Bytes of every array in a pytree."""
    return _tree_bytes(tree)


def result_counts(result) -> dict[str, int]:
    """How many groups got each :class:`jaxfuse.ResultCode`."""
    codes, counts = np.unique(np.asarray(result), return_counts=True)
    from jaxfuse import ResultCode

    return {ResultCode(int(c)).name: int(n) for c, n in zip(codes, counts)}


def finite_positive(value: float | None) -> bool:
    """A measured number that can be divided by."""
    return value is not None and math.isfinite(value) and value > 0


def first_call_in_fresh_process(benchmark, script: str, *arguments: str) -> Any:
    """Run ``python -c script arguments`` once in a fresh interpreter with an empty compilation cache, timed by
    ``benchmark``; the JSON its last stdout line holds.

    jaxfuse comes from this checkout; ``JAXFUSE_COMPILATION_CACHE`` and ``JAX_COMPILATION_CACHE_DIR`` both name
    the new temporary cache, so neither jaxfuse's nor a caller's own JAX cache can serve the first call.
    """
    with tempfile.TemporaryDirectory() as cache:
        environment = dict(os.environ, JAXFUSE_COMPILATION_CACHE=cache, JAX_COMPILATION_CACHE_DIR=cache,
                           PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        completed = benchmark.pedantic(
            lambda: subprocess.run([sys.executable, "-c", script, *arguments], env=environment, check=True,
                                   capture_output=True, text=True),
            rounds=1, iterations=1)
    return json.loads(completed.stdout.strip().splitlines()[-1])
