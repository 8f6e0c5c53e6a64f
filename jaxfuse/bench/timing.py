"""Timing helpers of the benchmark harness: medians of repeated calls, first-call latency, device copies."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Timing(NamedTuple):
    """Seconds per call: the median and the fastest of ``rounds`` timed calls, and the last call's result."""

    median: float
    best: float
    rounds: int
    result: Any = None


def time_interleaved(functions: dict[str, Callable[[], Any]], *, rounds: int, max_seconds: float = 10.0
                     ) -> dict[str, Timing]:
    """Time several calls round-robin (one warm-up each), so that a shared machine's load hits them alike.

    Each round starts with the next call (the order rotates), so none always
    runs first. Stops after ``rounds`` rounds, or earlier (after at least
    three) once ``max_seconds`` were timed.
    """
    for function in functions.values():
        jax.block_until_ready(function())
    names = list(functions)
    times: dict[str, list[float]] = {name: [] for name in functions}
    results: dict[str, Any] = {}
    total = 0.0
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            results[name] = jax.block_until_ready(functions[name]())
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            total += elapsed
        if round_index >= 2 and total >= max_seconds:
            break
    return {name: Timing(float(np.median(t)), float(np.min(t)), len(t), results[name]) for name, t in times.items()}


def time_call(function: Callable[[], Any], *, repeats: int, warmup: int = 1, min_seconds: float = 0.2,
              max_seconds: float = 4.0, max_rounds: int = 200) -> Timing:
    """Time ``function`` (its result is waited for with ``jax.block_until_ready``).

    Args:
        function: called with no arguments.
        repeats: the number of timed calls wanted.
        warmup: untimed calls first (compilation, caches).
        min_seconds: keep calling, up to ``max_rounds``, until this much time
            was timed, so that microsecond calls get a stable median.
        max_seconds: stop early (after at least one call) once this much time
            was timed, so that slow calls do not stretch the run.
        max_rounds: the most timed calls.

    Returns:
        A :class:`Timing`.
    """
    for _ in range(warmup):
        jax.block_until_ready(function())
    times: list[float] = []
    result = None
    while True:
        start = time.perf_counter()
        result = jax.block_until_ready(function())
        times.append(time.perf_counter() - start)
        total = sum(times)
        if len(times) >= max_rounds or total >= max_seconds:
            break
        if len(times) >= repeats and total >= min_seconds:
            break
    return Timing(float(np.median(times)), float(np.min(times)), len(times), result)


def first_call_seconds(function: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of one call (compilation included when it is the first), and its result."""
    start = time.perf_counter()
    result = jax.block_until_ready(function())
    return time.perf_counter() - start, result


def tree_bytes(tree) -> int:
    return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "nbytes")))


def device_arrays(*arrays):
    return tuple(jax.device_put(jnp.asarray(array)) for array in arrays)
