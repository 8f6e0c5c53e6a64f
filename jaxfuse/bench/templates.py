"""The *templates*, *groups* and *members* sections: closed-form kernels against vectorized numpy, and G / M sweeps."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

import jaxfuse
from jaxfuse._core.result_codes import ResultCode
from jaxfuse.bench.baselines import float32_einsum_gaussian, numpy_closed_form
from jaxfuse.bench.data import closed_form_groups
from jaxfuse.bench.machine import closed_form_footprint
from jaxfuse.bench.section import Section, format_fraction, format_ratio, format_seconds
from jaxfuse.bench.sizes import CLOSED_FORMS, NUMPY_CHUNK_SLOTS, SYNTHETIC_BLOCK, TEMPERATURE, Sizes
from jaxfuse.bench.timing import device_arrays, time_call, time_interleaved, tree_bytes
from jaxfuse.tools.synthetic import SyntheticGroups


class KernelMeasurement(NamedTuple):
    """One closed-form kernel on one problem, with its baseline (median and best seconds per call)."""

    jax_seconds: float
    jax_best: float
    host_seconds: float  # numpy in, numpy out (transfers included)
    numpy_seconds: float
    numpy_best: float
    bytes_moved: int
    exps: int
    max_difference: float  # |jaxfuse - numpy| / the coordinate's spread
    failed_groups: int


def measure_closed_form(template: str, data: SyntheticGroups, sizes: Sizes, *, host: bool = True,
                        check: bool = True) -> KernelMeasurement:
    """Time one closed-form template on device arrays (and numpy arrays) against :func:`numpy_closed_form`."""
    values, weights, mask = device_arrays(*data)

    def fuse():
        return jaxfuse.fuse_groups(values, weights, mask, template=template, temperature=TEMPERATURE)

    fused = jax.block_until_ready(fuse())  # compile outside the timing
    jax_time = time_call(fuse, repeats=sizes.repeats, warmup=0, min_seconds=sizes.min_seconds,
                         max_seconds=sizes.max_seconds)
    host_seconds = math.nan
    if host:
        host_seconds = time_call(lambda: jaxfuse.fuse_groups(*data, template=template, temperature=TEMPERATURE),
                                 repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                                 max_seconds=sizes.max_seconds).median
    # The baseline pays for fresh float64 temporaries (page faults) in every call, like a user's loop would.
    numpy_time = time_call(lambda: numpy_closed_form(template, *data), repeats=sizes.baseline_repeats, warmup=0,
                           min_seconds=min(0.05, sizes.min_seconds), max_seconds=2 * sizes.max_seconds, max_rounds=20)
    difference = math.nan
    if check:
        reference = numpy_time.result
        real = data.mask
        spread = np.maximum(np.ptp(data.values[real], axis=0), 1e-12) if real.any() else 1.0
        difference = float(np.max(np.abs(np.asarray(fused.location)[real.any(-1)] - reference[real.any(-1)]) / spread))
    return KernelMeasurement(
        jax_seconds=jax_time.median,
        jax_best=jax_time.best,
        host_seconds=host_seconds,
        numpy_seconds=numpy_time.median,
        numpy_best=numpy_time.best,
        bytes_moved=tree_bytes((values, weights, mask)) + tree_bytes(fused),
        exps=int(mask.size),
        max_difference=difference,
        failed_groups=int(np.sum(np.asarray(fused.result) != ResultCode.SUCCESSFUL)),
    )


def _gbps(measurement: KernelMeasurement) -> float:
    """Bytes the kernel must move over its best time."""
    return measurement.bytes_moved / measurement.jax_best / 1e9


def _floor_fraction(measurement: KernelMeasurement, floors: dict[str, float]) -> tuple[float, float]:
    """(achieved GB/s / copy GB/s, the slower of the copy and exp floors' times / the kernel's time), best times."""
    copy_fraction = _gbps(measurement) / floors["copy_gbps"]
    floor_seconds = max(measurement.bytes_moved / (floors["copy_gbps"] * 1e9),
                        measurement.exps / floors["exp_per_second"])
    return copy_fraction, floor_seconds / measurement.jax_best


def measure_templates(sizes: Sizes, floors: dict[str, float]) -> Section:
    """Every closed-form template at the headline size, against vectorized numpy."""
    groups, members = sizes.headline_groups, sizes.members
    data = closed_form_groups(groups, members)
    real = int(data.mask.sum())
    section = Section("templates", f"Closed-form kernels at G x M x K = {groups:,} x {members} x 3", (
        f"Seeded THUMOS-like groups (skewed sizes, {real:,} real members of {data.mask.size:,} slots), float32, "
        f"T = {TEMPERATURE}. *jaxfuse* is timed on device arrays (JAX in, JAX out); *numpy in/out* adds the "
        "transfers and conversions of a numpy caller. The baseline is `jaxfuse.tools.synthetic.numpy_fuse`, the "
        "vectorized numpy formulas (float64) on the same padded arrays. GB/s counts the bytes the kernel must "
        "move (values, weights, mask read; location, parameters, probabilities, codes, steps written) over "
        "the best time; "
        "*of floor* is max(bytes / copy bandwidth, members / exp rate) over the kernel's time."),
        ["template", "jaxfuse", "numpy in/out", "numpy baseline", "speed-up (medians)", "speed-up (best times)",
         "speed-up (numpy in/out)", "GB/s", "of copy", "of floor", "max diff / spread"])
    for template in CLOSED_FORMS:
        measured = measure_closed_form(template, data, sizes)
        copy_fraction, floor_fraction = _floor_fraction(measured, floors)
        speedup = measured.numpy_seconds / measured.jax_seconds
        best_speedup = measured.numpy_best / measured.jax_best
        host_speedup = measured.numpy_seconds / measured.host_seconds
        gbps = _gbps(measured)
        section.rows.append([template, format_seconds(measured.jax_seconds), format_seconds(measured.host_seconds),
                             format_seconds(measured.numpy_seconds), format_ratio(speedup), format_ratio(best_speedup),
                             format_ratio(host_speedup), f"{gbps:.2f}", format_fraction(copy_fraction), format_fraction(floor_fraction),
                             f"{measured.max_difference:.1e}"])
        section.data[template] = dict(measured._asdict(), speedup=speedup, best_speedup=best_speedup,
                                      host_speedup=host_speedup, gbps=gbps, copy_fraction=copy_fraction,
                                      floor_fraction=floor_fraction)
    section.data["gaussian_einsum"] = _gaussian_against_einsum(data, sizes, section)
    section.data["laplace_large_groups"] = _laplace_large_groups(groups * members, sizes, section)
    section.data.update(groups=groups, members=members, real_members=real)
    return section


def _gaussian_against_einsum(data: SyntheticGroups, sizes: Sizes, section: Section) -> dict[str, float]:
    """The Gaussian eagerly and inside a caller's jit against a float32 ``np.einsum``, round-robin in one loop."""
    values, weights, mask = device_arrays(*data)
    in_jit = jax.jit(lambda v, w, m: jaxfuse.fuse_gaussian(v, w, m, temperature=TEMPERATURE))
    timings = time_interleaved({
        "eager": lambda: jaxfuse.fuse_gaussian(values, weights, mask, temperature=TEMPERATURE),
        "jit": lambda: in_jit(values, weights, mask),
        "einsum": lambda: float32_einsum_gaussian(*data),
    }, rounds=max(sizes.repeats, 7), max_seconds=4 * sizes.max_seconds)
    einsum = timings["einsum"]
    out = {"einsum_seconds": einsum.median, "einsum_best": einsum.best}
    for call in ("eager", "jit"):
        out.update({f"{call}_seconds": timings[call].median, f"{call}_best": timings[call].best,
                    f"{call}_speedup": einsum.median / timings[call].median,
                    f"{call}_best_speedup": einsum.best / timings[call].best})
    section.notes.append(
        "Gaussian against a float32 `np.einsum` computing the same outputs (location, scale, probabilities; "
        "`jaxfuse.bench.baselines.float32_einsum_gaussian`), timed round-robin: einsum "
        f"{format_seconds(einsum.median)}; jaxfuse eager {format_seconds(out['eager_seconds'])} "
        f"({format_ratio(out['eager_speedup'])} medians, {format_ratio(out['eager_best_speedup'])} best), inside a "
        f"caller's jit {format_seconds(out['jit_seconds'])} ({format_ratio(out['jit_speedup'])}, "
        f"{format_ratio(out['jit_best_speedup'])}).")
    return out


def _laplace_large_groups(slots: int, sizes: Sizes, section: Section) -> dict[str, float]:
    """Laplace at M = 256 (the same padded slots as the headline) against numpy: its sort-free median's hard case."""
    members = 256
    measured = measure_closed_form("laplace", closed_form_groups(max(slots // members, 1), members), sizes, host=False)
    out = dict(measured._asdict(), members=members, groups=max(slots // members, 1),
               speedup=measured.numpy_seconds / measured.jax_seconds,
               best_speedup=measured.numpy_best / measured.jax_best)
    section.notes.append(
        f"Laplace at M = {members} ({out['groups']:,} groups, same slots): jaxfuse "
        f"{format_seconds(measured.jax_seconds)}, numpy {format_seconds(measured.numpy_seconds)}: "
        f"{format_ratio(out['speedup'])} medians, {format_ratio(out['best_speedup'])} best; max diff / spread "
        f"{measured.max_difference:.1e}.")
    return out


def _skipped_for_memory(groups: int, members: int, budget: int) -> bool:
    return closed_form_footprint(groups, members) > budget


def measure_group_sweep(sizes: Sizes, floors: dict[str, float], memory_budget: int) -> Section:
    """Gaussian throughput against the number of groups G (M = 32)."""
    members = sizes.members
    section = Section("groups", f"Gaussian throughput against G (M = {members}, K = 3, float32)", (
        "Same data and baseline as above; times are medians, rates use best times. "
        f"Groups past {SYNTHETIC_BLOCK:,} repeat the first {SYNTHETIC_BLOCK:,} "
        f"(a closed form costs the same on any numbers); the numpy baseline runs in chunks of "
        f"{NUMPY_CHUNK_SLOTS:,} padded slots so its float64 temporaries fit in memory. Sizes whose estimated "
        f"footprint exceeds the memory cap ({memory_budget / 1e9:.1f} GB here) are skipped."),
        ["G", "jaxfuse", "numpy baseline", "speed-up (medians)", "speed-up (best times)", "M groups/s", "GB/s",
         "of copy"])
    points = []
    for groups in sizes.group_sweep:
        if _skipped_for_memory(groups, members, memory_budget):
            needed = closed_form_footprint(groups, members) / 1e9
            section.rows.append([f"{groups:,}", f"skipped: needs ~{needed:.1f} GB", "", "", "", "", "", ""])
            section.notes.append(f"G = {groups:,} skipped: needs about {needed:.1f} GB, over the cap.")
            continue
        data = closed_form_groups(groups, members)
        measured = measure_closed_form("gaussian", data, sizes, host=False, check=False)
        del data
        copy_fraction, _ = _floor_fraction(measured, floors)
        gbps = _gbps(measured)
        speedup = measured.numpy_seconds / measured.jax_seconds
        points.append(dict(groups=groups, jax_seconds=measured.jax_seconds, numpy_seconds=measured.numpy_seconds,
                           jax_best=measured.jax_best, numpy_best=measured.numpy_best, speedup=speedup, gbps=gbps,
                           numpy_gbps=measured.bytes_moved / measured.numpy_best / 1e9, copy_fraction=copy_fraction))
        section.rows.append([f"{groups:,}", format_seconds(measured.jax_seconds), format_seconds(measured.numpy_seconds),
                             format_ratio(speedup), format_ratio(measured.numpy_best / measured.jax_best),
                             f"{groups / measured.jax_best / 1e6:.3g}", f"{gbps:.2f}", format_fraction(copy_fraction)])
    section.data = {"members": members, "points": points}
    return section


def measure_member_sweep(sizes: Sizes, floors: dict[str, float]) -> Section:
    """Gaussian throughput against the padded size M, with G x M constant."""
    slots = sizes.member_sweep_slots
    section = Section("members", f"Gaussian throughput against M (G x M = {slots:,} slots, K = 3, float32)", (
        "Group sizes are skewed up to M (geometric, mean about M / 4), so every point moves the same bytes; "
        "slots/s counts padded slots. Times are medians, rates use best times. Baseline: vectorized numpy on the "
        "same padded arrays."),
        ["M", "G", "jaxfuse", "numpy baseline", "speed-up (medians)", "speed-up (best times)", "G slots/s", "GB/s",
         "of copy"])
    points = []
    for members in sizes.member_sweep:
        groups = max(slots // members, 1)
        measured = measure_closed_form("gaussian", closed_form_groups(groups, members), sizes, host=False, check=False)
        copy_fraction, _ = _floor_fraction(measured, floors)
        gbps = _gbps(measured)
        speedup = measured.numpy_seconds / measured.jax_seconds
        points.append(dict(members=members, groups=groups, jax_seconds=measured.jax_seconds,
                           numpy_seconds=measured.numpy_seconds, jax_best=measured.jax_best,
                           numpy_best=measured.numpy_best, speedup=speedup, gbps=gbps,
                           slots_per_second=groups * members / measured.jax_best,
                           numpy_slots_per_second=groups * members / measured.numpy_best,
                           copy_fraction=copy_fraction))
        section.rows.append([str(members), f"{groups:,}", format_seconds(measured.jax_seconds),
                             format_seconds(measured.numpy_seconds), format_ratio(speedup),
                             format_ratio(measured.numpy_best / measured.jax_best),
                             f"{groups * members / measured.jax_best / 1e9:.3g}", f"{gbps:.2f}",
                             format_fraction(copy_fraction)])
    section.data = {"slots": slots, "points": points}
    return section
