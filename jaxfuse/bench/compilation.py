"""The *compile* section: compile count and latencies over a stream of random-size requests, per padding policy."""

from __future__ import annotations

import inspect
import math
import time
from typing import NamedTuple

import jax
import numpy as np

import jaxfuse
from jaxfuse._core.padding import bucket_size
from jaxfuse._fusion.packing import pack_groups, unpack_groups
from jaxfuse._runtime.compilation_cache import persistent_cache_disabled
from jaxfuse.bench.data import RaggedMembers, request_stream
from jaxfuse.bench.section import Section, format_fraction, format_seconds
from jaxfuse.bench.sizes import TEMPERATURE, Sizes


class PaddingPolicy(NamedTuple):
    """How a request is padded: power-of-two buckets no smaller than these floors."""

    min_groups: int
    min_members: int

    def pack(self, request: RaggedMembers):
        return pack_groups(request.values, request.weights, lengths=request.lengths,
                           members=bucket_size(int(request.lengths.max()), self.min_members),
                           groups=bucket_size(request.lengths.size, self.min_groups))

    def slots(self, request: RaggedMembers) -> int:
        return (bucket_size(int(request.lengths.max()), self.min_members)
                * bucket_size(request.lengths.size, self.min_groups))


def default_policy() -> PaddingPolicy | None:
    """The floors ``pack_groups`` applies by default (None when it has no such arguments)."""
    parameters = inspect.signature(pack_groups).parameters
    if "min_groups" not in parameters or "min_members" not in parameters:
        return None
    return PaddingPolicy(int(parameters["min_groups"].default), int(parameters["min_members"].default))


def _policy_name(policy: PaddingPolicy) -> str:
    name = ("power-of-two buckets, no floors" if policy == PaddingPolicy(1, 1)
            else f"buckets floored at G >= {policy.min_groups}, M >= {policy.min_members}")
    return name + (" (the pack_groups default)" if policy == default_policy() else "")


# Streams are packed with explicit sizes, so each policy means the same whatever pack_groups' defaults are.
PADDING_POLICIES = {_policy_name(policy): policy for policy in (PaddingPolicy(1, 1), PaddingPolicy(256, 16))}


def serve_request(request: RaggedMembers, policy: PaddingPolicy) -> np.ndarray:
    packed = policy.pack(request)
    fused = jaxfuse.fuse_groups(packed.values, packed.weights, packed.mask, template="gaussian",
                                temperature=TEMPERATURE)
    return unpack_groups(fused.location, packed)


def measure_compile(sizes: Sizes) -> Section:
    """A stream of random-size requests: compile count and latencies under two padding policies.

    ``jax.clear_caches()`` before each policy, so each starts cold, as a fresh process would, and no
    persistent compilation cache, so every bucket is compiled, as on a new machine.
    """
    stream = request_stream(sizes.compile_requests, sizes.request_max_groups, sizes.request_max_size)
    group_counts = np.array([r.lengths.size for r in stream])
    section = Section("compile", f"Compile count over {len(stream):,} random-size requests", (
        f"Each request: a group count log-uniform in [1, {sizes.request_max_groups:,}] (median "
        f"{int(np.median(group_counts))}), group sizes geometric with a random mean in [2, 12], capped at "
        f"{sizes.request_max_size}; flat numpy members -> `pack_groups` -> `fuse_groups` (Gaussian) -> "
        "`unpack_groups`. Compile count from `jaxfuse.compile_count()`, from a cold cache (`jax.clear_caches()`). "
        "*First call* is the first request's latency (compilation included); *compiling requests* are those "
        "that met a new bucket."),
        ["padding policy", "compiles", "first call", "mean compiling request", "median warm request",
         "whole stream", "padded slots"])
    for name, policy in PADDING_POLICIES.items():
        with persistent_cache_disabled():  # a program loaded from disk would hide its compilation
            _serve_stream(section, name, policy, stream)
    return section


def serve_stream(stream: list[RaggedMembers], policy: PaddingPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Serve every request in order: ``(latencies [s], compiled [bool])`` per request."""
    latencies, compiled = [], []
    for request in stream:
        before = jaxfuse.compile_count()
        start = time.perf_counter()
        serve_request(request, policy)
        latencies.append(time.perf_counter() - start)
        compiled.append(jaxfuse.compile_count() > before)
    return np.asarray(latencies), np.asarray(compiled)


def _serve_stream(section: Section, name: str, policy: PaddingPolicy, stream: list[RaggedMembers]) -> None:
    """Serve the stream from a cold in-memory cache under one policy; add its row and numbers to ``section``."""
    jax.clear_caches()
    latencies, compiled = serve_stream(stream, policy)
    count = jaxfuse.compile_count()
    warm = latencies[~compiled]
    slots = sum(policy.slots(request) for request in stream)
    members = sum(int(request.lengths.sum()) for request in stream)
    section.rows.append([name, str(count), format_seconds(latencies[0]), format_seconds(latencies[compiled].mean()),
                         format_seconds(np.median(warm)) if warm.size else "n/a", format_seconds(latencies.sum()),
                         f"{slots:,} ({format_fraction(members / slots)} used)"])
    section.data[name] = dict(compiles=count, first_call_seconds=float(latencies[0]),
                              mean_compiling_seconds=float(latencies[compiled].mean()),
                              median_warm_seconds=float(np.median(warm)) if warm.size else math.nan,
                              total_seconds=float(latencies.sum()), padded_slots=int(slots))
