"""``jaxfuse bench``: measure jaxfuse against the baselines users run today, and write a report.

Every measurement runs in this process, baselines side by side with jaxfuse,
so the ratios hold even on a busy machine whose absolute timings wander:

* floors: memory copy bandwidth and ``exp`` throughput of this device;
* the closed-form kernels at G x M x K = 200,000 x 32 x 3 (float32) against
  the vectorized numpy formulas on the same padded arrays
  (:func:`jaxfuse._synthetic.numpy_fuse`, float64 as users write it), with
  GB/s and the achieved fraction of the floors;
* Gaussian throughput against the number of groups G and the padded size M;
* skewed ragged group sizes through :func:`jaxfuse.pack_groups`;
* Student-t at G x M = 10,000 x 32 against a per-group ``scipy.optimize``
  loop (timed on a subset, scaled per group) and numpy EM iterations;
* compile count and first-call latency over a stream of random-size requests;
* the end-to-end pipeline CAS -> proposals -> fused detections (-> mAP)
  against the per-run and per-group numpy loops of the published code.

Timings are medians of several calls after a warm-up call (compilation is
never timed, except where first-call latency is the measurement), and every
timed JAX call ends with ``jax.block_until_ready``. The report goes to
``benchmarks/results/<machine>.md`` with a JSON copy of the numbers and PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxfuse
from jaxfuse._published import published_fusion_loop
from jaxfuse._ragged import bucket_size, pack_groups, unpack_groups
from jaxfuse._result import ResultCode
from jaxfuse._synthetic import SyntheticGroups, numpy_fuse, numpy_probabilities, thumos_like_groups

TEMPERATURE = 0.2  # the published evaluation temperature
STUDENT_T_DF = 3.0  # jaxfuse's default degrees of freedom
CLOSED_FORMS = ("gaussian", "uniform", "exponential", "laplace")
COORDINATES = 3  # start, end, score
CAS_THRESHOLDS = np.arange(0.001, 0.04, 0.002)  # the published 20 levels
CAS_MARGIN_SCALE, CAS_MARGIN_POWER = 0.0785, 0.9
PUBLISHED_OVERLAP = 0.25

# Synthetic groups beyond this many repeat the first block: a closed form costs
# the same on any numbers, and building 10^7 fresh groups would take minutes.
SYNTHETIC_BLOCK = 1 << 18
# The numpy baseline runs on at most this many padded slots at a time, so its
# float64 temporaries fit in memory at G = 10^7 (numpy is no slower in chunks).
NUMPY_CHUNK_SLOTS = 1 << 23

TARGETS = {
    "gaussian_speedup": 4.0,
    "student_t_speedup": 100.0,
    "student_t_median_steps": 8,
    "compile_count": 12,
}

SCIPY_WARMUP_GROUPS = 20

SECTIONS = ("floors", "templates", "groups", "members", "ragged", "student_t", "compile", "pipeline")


# ----------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes of one preset (quick, full, or the tiny smoke test)."""

    name: str
    headline_groups: int  # G of the closed-form kernels' headline
    members: int  # padded group size M of the headline and the G sweep
    group_sweep: tuple[int, ...]
    member_sweep: tuple[int, ...]
    member_sweep_slots: int  # G * M held constant across the M sweep
    ragged_groups: int
    ragged_max_size: int
    student_t_groups: int
    scipy_groups: int  # the per-group scipy loop is timed on this many groups
    em_groups: int  # the numpy EM baseline too
    compile_requests: int
    request_max_groups: int
    request_max_size: int
    cas_videos: int
    repeats: int  # timed calls of jaxfuse (median reported)
    baseline_repeats: int  # timed calls of a vectorized numpy baseline
    floor_elements: int  # float32 elements of the floors' arrays
    memory_gb: float  # default cap on the memory one measurement may use
    min_seconds: float = 0.2  # keep timing short calls until this much was timed
    max_seconds: float = 2.0  # stop timing slow calls once this much was timed (twice that for baselines)


QUICK = Sizes(
    name="quick",
    headline_groups=200_000,
    members=32,
    group_sweep=(100, 1_000, 10_000, 100_000, 1_000_000),
    member_sweep=tuple(2**i for i in range(1, 11)),
    member_sweep_slots=1 << 21,
    ragged_groups=50_000,
    ragged_max_size=256,
    student_t_groups=10_000,
    scipy_groups=200,
    em_groups=200,
    compile_requests=1_000,
    request_max_groups=2_048,
    request_max_size=64,
    cas_videos=100,
    repeats=5,
    baseline_repeats=3,
    floor_elements=1 << 25,
    memory_gb=4.0,
)
FULL = dataclasses.replace(
    QUICK,
    name="full",
    group_sweep=(100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000),
    member_sweep_slots=1 << 23,
    ragged_groups=200_000,
    scipy_groups=300,
    em_groups=1_000,
    cas_videos=210,
    repeats=7,
    baseline_repeats=3,
    floor_elements=1 << 26,
    memory_gb=8.0,
    max_seconds=3.0,
)
SMOKE = Sizes(
    name="smoke",
    headline_groups=1_000,
    members=8,
    group_sweep=(100, 1_000),
    member_sweep=(2, 8),
    member_sweep_slots=1 << 12,
    ragged_groups=200,
    ragged_max_size=4,
    student_t_groups=32,
    scipy_groups=3,
    em_groups=3,
    compile_requests=6,
    request_max_groups=8,
    request_max_size=4,
    cas_videos=1,
    repeats=2,
    baseline_repeats=1,
    floor_elements=1 << 16,
    memory_gb=1.0,
    min_seconds=0.0,
)
PRESETS = {sizes.name: sizes for sizes in (QUICK, FULL, SMOKE)}


# ---------------------------------------------------------------------------- timing


class Timing(NamedTuple):
    """Seconds per call: the median and the fastest of ``rounds`` timed calls, and the last call's result."""

    median: float
    best: float
    rounds: int
    result: Any = None


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


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*$|\d+-core", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_name() -> str:
    """``<gpu name>`` on an accelerator, ``cpu-<cpu model>-<n>cores`` on CPU: the report's file name."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu-{_slug(_cpu_model())}-{cpu_count()}cores"
    count = len(jax.devices())
    return _slug(device.device_kind) + (f"-x{count}" if count > 1 else "")


def machine_info() -> dict[str, Any]:
    """Device, host and versions, for the report's header."""
    import jaxlib

    device = jax.devices()[0]
    info = {
        "machine": machine_name(),
        "device": f"{device.platform}: {device.device_kind}",
        "devices": len(jax.devices()),
        "host_cpu": _cpu_model(),
        "host_cores": cpu_count(),
        "python": platform.python_version(),
        "jaxfuse": jaxfuse.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "source": _source_revision(),
    }
    try:
        import scipy

        info["scipy"] = scipy.__version__
    except ImportError:
        info["scipy"] = "not installed"
    return info


def _source_revision() -> str:
    """The git commit of the jaxfuse being measured, and whether its library files had local changes."""
    package = Path(jaxfuse.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=package,
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes in jaxfuse/" if changed else "")


def available_memory_bytes() -> int:
    """Memory available to a new allocation: MemAvailable on Linux, else a cautious 4 GB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def memory_budget_bytes(memory_gb: float) -> int:
    """The most one measurement may use: ``memory_gb``, and at most half of what is available."""
    return int(min(memory_gb * 1e9, available_memory_bytes() / 2))


def closed_form_footprint(groups: int, members: int, coordinates: int = COORDINATES) -> int:
    """Estimated peak bytes of a closed-form measurement (inputs, device copies, outputs, numpy chunks)."""
    inputs = groups * members * (4 * coordinates + 4 + 1)
    outputs = groups * (members * 4 + 3 * coordinates * 4 + 8)
    numpy_chunk = min(groups * members, NUMPY_CHUNK_SLOTS) * coordinates * 8 * 6
    return 3 * inputs + 2 * outputs + numpy_chunk


# ------------------------------------------------------------------------------ data


def closed_form_groups(groups: int, members: int, *, seed: int = 0, max_size: int | None = None) -> SyntheticGroups:
    """Seeded THUMOS-like padded groups ``[G, M, 3]`` float32 (skewed sizes, most groups small).

    Groups past :data:`SYNTHETIC_BLOCK` repeat the first block (see there).
    """
    # Sizes are geometric with mean max_size / 4, capped at M; at least 8 keeps that a distribution for tiny M.
    max_size = max(members, 8) if max_size is None else max_size
    block = thumos_like_groups(min(groups, SYNTHETIC_BLOCK), members, seed=seed, max_size=max_size)
    if groups <= SYNTHETIC_BLOCK:
        return block
    repeated = []
    for array in block:
        out = np.empty((groups,) + array.shape[1:], array.dtype)
        for start in range(0, groups, SYNTHETIC_BLOCK):
            stop = min(start + SYNTHETIC_BLOCK, groups)
            out[start:stop] = array[: stop - start]
        repeated.append(out)
    return SyntheticGroups(*repeated)


class RaggedMembers(NamedTuple):
    """Flat members of ragged groups: ``values [N, 3]``, ``weights [N]``, ``lengths [groups]`` (contiguous)."""

    values: np.ndarray
    weights: np.ndarray
    lengths: np.ndarray


def skewed_ragged_members(groups: int, max_size: int, *, seed: int = 0, zipf_exponent: float = 1.7) -> RaggedMembers:
    """THUMOS-like members of ``groups`` groups whose sizes follow a Zipf law capped at ``max_size``.

    Most groups hold one to three proposals, a few hold hundreds: the shape of
    the published grouping's output on real class activation sequences.
    """
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.zipf(zipf_exponent, size=groups), max_size)
    group_of = np.repeat(np.arange(groups), lengths)
    video_length = np.exp(rng.normal(np.log(500), 0.8, size=groups)).clip(60, 5000)
    action_length = (video_length * rng.uniform(0.02, 0.2, size=groups)).clip(2, None)
    action_start = rng.uniform(0, 1, size=groups) * (video_length - action_length)
    jitter = (action_length * 0.15)[group_of]
    start = action_start[group_of] + rng.normal(size=group_of.size) * jitter
    end = (action_start + action_length)[group_of] + rng.normal(size=group_of.size) * jitter
    start, end = np.minimum(start, end - 1), np.maximum(end, start + 1)
    score = rng.beta(2, 5, size=group_of.size)
    values = np.stack([np.floor(start), np.ceil(end), score], axis=-1).astype(np.float32)
    weights = (score + rng.normal(scale=0.05, size=score.shape)).astype(np.float32)
    return RaggedMembers(values, weights, lengths)


def request_stream(requests: int, max_groups: int, max_size: int, *, seed: int = 0) -> list[RaggedMembers]:
    """Random-size fusion requests: group counts log-uniform in [1, max_groups], sizes geometric (mean 2 to 12)."""
    rng = np.random.default_rng(seed)
    stream = []
    for _ in range(requests):
        groups = int(np.exp(rng.uniform(0, np.log(max_groups + 1))))
        lengths = np.minimum(rng.geometric(1 / rng.uniform(2, 12), size=groups), max_size)
        members = int(lengths.sum())
        values = rng.uniform(0, 500, size=(members, COORDINATES)).astype(np.float32)
        weights = rng.uniform(0, 1, size=members).astype(np.float32)
        stream.append(RaggedMembers(values, weights, lengths))
    return stream


class ThumosLikeCas(NamedTuple):
    """Seeded class activation sequences and the actions planted in them.

    Attributes:
        cas: ``[V, L, C]`` float32 in ``[0, 0.05)``, zero past each video's length.
        length: ``[V]`` int, real snippets of each video.
        truth_video, truth_label: ``[A]`` int, the video and class of each action.
        truth_segments: ``[A, 2]`` float, its ``[start, end)`` in snippets.
    """

    cas: np.ndarray
    length: np.ndarray
    truth_video: np.ndarray
    truth_label: np.ndarray
    truth_segments: np.ndarray


def thumos_like_cas(videos: int, *, snippets: int = 512, classes: int = 3, seed: int = 0) -> ThumosLikeCas:
    """THUMOS14-like CAS (400 to 512 snippets, the 3 classes that pass the video threshold).

    Smoothed noise plus 3 to 11 action bumps per (video, class), squashed into
    the published threshold range, so that every one of the 20 levels cuts runs:
    about 250 to 450 proposals per (video, class), as in the SPEC.
    """
    rng = np.random.default_rng(seed)
    length = rng.integers(400, snippets + 1, videos)
    kernel = np.hanning(9) / np.hanning(9).sum()
    noise = rng.normal(size=(videos, snippets, classes))
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, noise)
    actions = np.zeros_like(smooth)
    truth = []
    for video in range(videos):
        for label in range(classes):
            for _ in range(rng.integers(3, 12)):
                centre, width = int(rng.integers(0, length[video])), int(rng.integers(3, 40))
                start, end = max(0, centre - width // 2), min(int(length[video]), centre + width // 2)
                actions[video, start:end, label] += rng.uniform(1, 3)
                if end > start:
                    truth.append((video, label, start, end))
    cas = 0.05 / (1 + np.exp(-(2.5 * smooth + actions - 1.5)))
    outside = np.arange(snippets)[None, :, None] >= length[:, None, None]
    truth_array = np.asarray(truth, np.int64).reshape(-1, 4)
    return ThumosLikeCas(
        np.where(outside, 0.0, cas).astype(np.float32),
        length,
        truth_array[:, 0],
        truth_array[:, 1],
        truth_array[:, 2:].astype(np.float64),
    )


# ------------------------------------------------------------------------- baselines


def numpy_closed_form(template: str, values, weights, mask, temperature: float = TEMPERATURE) -> np.ndarray:
    """:func:`numpy_fuse` over chunks of at most :data:`NUMPY_CHUNK_SLOTS` padded slots."""
    chunk = max(1, NUMPY_CHUNK_SLOTS // values.shape[1])
    # Empty padding groups give 0/0 in the baseline: harmless NaN rows, not worth a warning.
    with np.errstate(invalid="ignore", divide="ignore"):
        if values.shape[0] <= chunk:
            return numpy_fuse(template, values, weights, mask, temperature)
        return np.concatenate([
            numpy_fuse(template, values[i : i + chunk], weights[i : i + chunk], mask[i : i + chunk], temperature)
            for i in range(0, values.shape[0], chunk)
        ])


class ScipyStudentT(NamedTuple):
    """Per-lane Student-t fits of the scipy loop: ``location``, ``scale`` ``[G, K]``; ``iterations`` per fitted lane."""

    location: np.ndarray
    scale: np.ndarray
    iterations: np.ndarray


def _student_t_loss_and_gradient(parameters, z, g, df, constant):
    """Cross-entropy of the location-scale t at (mu, log sigma) on standardised values, and its gradient."""
    location, log_scale = parameters
    residual = (z - location) * np.exp(-log_scale)
    ratio = 1 + residual * residual / df
    loss = 0.5 * (df + 1) * (g @ np.log(ratio)) + log_scale + constant
    pull = (df + 1) * g * residual / (df * ratio)
    gradient = np.array([-pull.sum() * np.exp(-log_scale), 1 - pull @ residual])
    return loss, gradient


def _scipy_fit_lane(x: np.ndarray, g: np.ndarray, df: float, constant: float) -> tuple[float, float, int]:
    """One coordinate of one group, as a user would write it: ``(location, scale, iterations)``."""
    from scipy import optimize

    distinct, which = np.unique(x, return_inverse=True)
    mass = np.bincount(which, weights=g)
    if mass.max() >= df / (df + 1):  # the likelihood is unbounded: a point mass (see _student_t)
        return float(distinct[np.argmax(mass)]), 0.0, 0
    order = np.argsort(x, kind="stable")
    cumulative = np.cumsum(g[order])
    median = x[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    spread = g @ np.abs(x - median)
    spread = spread if spread > 0 else 1.0
    # Standardised coordinates keep the tolerances scale free, as jaxfuse does.
    solution = optimize.minimize(
        _student_t_loss_and_gradient, np.zeros(2), args=((x - median) / spread, g, df, constant), jac=True,
        method="L-BFGS-B", options=dict(ftol=1e-12, gtol=1e-8, maxiter=1000),
    )
    location, log_scale = solution.x
    return float(median + spread * location), float(spread * np.exp(log_scale)), int(solution.nit)


def scipy_student_t_loop(values, weights, mask, temperature: float = TEMPERATURE,
                         df: float = STUDENT_T_DF) -> ScipyStudentT:
    """The per-group loop users run today: ``scipy.optimize.minimize`` (L-BFGS-B, analytic gradient) per lane.

    Same problem as :func:`jaxfuse.fuse_student_t`: location-scale t with fixed
    ``df``, started at the weighted median, point masses detected the same way.
    """
    from scipy import special

    constant = float(special.gammaln(df / 2) - special.gammaln((df + 1) / 2) + 0.5 * np.log(df * np.pi))
    probabilities = numpy_probabilities(np.asarray(weights, np.float64), mask, temperature)
    groups, _, coordinates = values.shape
    location, scale = np.zeros((groups, coordinates)), np.zeros((groups, coordinates))
    iterations = []
    for group in range(groups):
        members = mask[group]
        if not members.any():
            continue
        for coordinate in range(coordinates):
            x = values[group, members, coordinate].astype(np.float64)
            location[group, coordinate], scale[group, coordinate], steps = _scipy_fit_lane(
                x, probabilities[group, members], df, constant)
            if steps:
                iterations.append(steps)
    return ScipyStudentT(location, scale, np.asarray(iterations, np.int64))


def reference_cas_proposals(cas: np.ndarray, length: int, thresholds=CAS_THRESHOLDS, min_length: int = 2):
    """The per-(threshold, run) numpy loop on one sequence ``cas [L]``: ``[n, 2]`` segments, contrast, inner.

    Runs from ``np.diff`` of the above-threshold mask (already vectorised), then
    each run scored with numpy means one at a time, in the SPEC convention
    (a copy of the loop in ``benchmarks/test_bench_cas.py``).
    """
    video = cas[:length]
    segments, contrast, inner_scores = [], [], []
    for level in thresholds:
        edges = np.diff(np.concatenate([[0], (video > level).astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for start, end in zip(starts.tolist(), ends.tolist()):
            if end - start < min_length:
                continue
            width = math.ceil(CAS_MARGIN_SCALE * (end - start) ** CAS_MARGIN_POWER)
            inner = video[start:end].mean()
            around = np.concatenate([video[max(0, start - width) : start], video[end : min(length, end + width)]])
            outer = around.mean() if around.size else 0.0
            segments.append((start, end))
            contrast.append(inner - outer)
            inner_scores.append(inner)
    return (np.asarray(segments, np.float32).reshape(-1, 2), np.asarray(contrast, np.float32),
            np.asarray(inner_scores, np.float32))


def reference_fuse_proposals(segments, scores, weights, temperature: float = TEMPERATURE,
                             threshold: float = PUBLISHED_OVERLAP) -> np.ndarray:
    """The published grouping + Gaussian fusion loop on one item: ``[groups, 3]`` (start, end, score)."""
    return published_fusion_loop(segments, scores, weights, temperature=temperature, threshold=threshold)


# ---------------------------------------------------------------------- measurements


@dataclasses.dataclass
class Section:
    """One part of the report: a table, notes, and the raw numbers for the JSON copy and the plots."""

    key: str
    title: str
    intro: str
    columns: list[str]
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


def _seconds(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} us"


def _ratio(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.3g}x"


def _fraction(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}%"


def _tree_bytes(tree) -> int:
    return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "nbytes")))


def _device_arrays(*arrays):
    return tuple(jax.device_put(jnp.asarray(array)) for array in arrays)


def measure_floors(sizes: Sizes) -> Section:
    """Copy bandwidth (``x + 0`` under jit: read and write once) and ``exp`` throughput of the device."""
    section = Section("floors", "Floors of this device", (
        "What the hardware allows, measured in the same run: a jitted `x + 0` on a float32 array "
        "(read once, written once; XLA keeps it, as -0.0 + 0 is +0.0) and a jitted `jnp.exp`. A closed-form "
        "fusion must at least read its inputs, write its outputs and take one `exp` per member. Floors, rates "
        "and fractions of floor use best times (the least disturbed call); speed-ups are given for both."),
        ["measurement", "array", "best time", "median time", "rate (best)"])
    # Accelerators need bigger arrays, or the dispatch overhead hides the bandwidth.
    elements = sizes.floor_elements if jax.devices()[0].platform == "cpu" else max(sizes.floor_elements, 1 << 28)
    x = jax.device_put(jnp.linspace(-10.0, 0.0, elements, dtype=jnp.float32))
    copy, exp = jax.jit(lambda a: a + 0), jax.jit(jnp.exp)
    copy_time = time_call(lambda: copy(x), repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                          max_seconds=sizes.max_seconds)
    exp_time = time_call(lambda: exp(x), repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                         max_seconds=sizes.max_seconds)
    copy_gbps = 2 * x.nbytes / copy_time.best / 1e9
    exp_rate = x.size / exp_time.best
    array = f"{x.size:,} float32 ({x.nbytes / 1e6:.0f} MB)"
    section.rows = [
        ["copy bandwidth (read + write)", array, _seconds(copy_time.best), _seconds(copy_time.median),
         f"{copy_gbps:.2f} GB/s"],
        ["exp throughput", array, _seconds(exp_time.best), _seconds(exp_time.median), f"{exp_rate / 1e9:.3g} G exp/s"],
    ]
    section.data = {"copy_gbps": copy_gbps, "exp_per_second": exp_rate, "elements": int(x.size)}
    return section


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
    values, weights, mask = _device_arrays(*data)

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
        bytes_moved=_tree_bytes((values, weights, mask)) + _tree_bytes(fused),
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
        "transfers and conversions of a numpy caller. The baseline is `jaxfuse._synthetic.numpy_fuse`, the "
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
        section.rows.append([template, _seconds(measured.jax_seconds), _seconds(measured.host_seconds),
                             _seconds(measured.numpy_seconds), _ratio(speedup), _ratio(best_speedup),
                             _ratio(host_speedup), f"{gbps:.2f}", _fraction(copy_fraction), _fraction(floor_fraction),
                             f"{measured.max_difference:.1e}"])
        section.data[template] = dict(measured._asdict(), speedup=speedup, best_speedup=best_speedup,
                                      host_speedup=host_speedup, gbps=gbps, copy_fraction=copy_fraction,
                                      floor_fraction=floor_fraction)
    section.data.update(groups=groups, members=members, real_members=real)
    return section


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
        section.rows.append([f"{groups:,}", _seconds(measured.jax_seconds), _seconds(measured.numpy_seconds),
                             _ratio(speedup), _ratio(measured.numpy_best / measured.jax_best),
                             f"{groups / measured.jax_best / 1e6:.3g}", f"{gbps:.2f}", _fraction(copy_fraction)])
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
        section.rows.append([str(members), f"{groups:,}", _seconds(measured.jax_seconds),
                             _seconds(measured.numpy_seconds), _ratio(speedup),
                             _ratio(measured.numpy_best / measured.jax_best),
                             f"{groups * members / measured.jax_best / 1e9:.3g}", f"{gbps:.2f}",
                             _fraction(copy_fraction)])
    section.data = {"slots": slots, "points": points}
    return section


def _pack_by_size(ragged: RaggedMembers) -> list:
    """Split the groups by power-of-two size and pack each bucket: padding follows each group's own size."""
    # Power-of-two bucket of each group: 2 ** ceil(log2(size)), computed without a Python loop.
    bucket_of = np.left_shift(1, np.ceil(np.log2(np.maximum(ragged.lengths, 1))).astype(np.int64))
    bucket_of_member = np.repeat(bucket_of, ragged.lengths)
    packed = []
    for bucket in np.unique(bucket_of):
        # Members are contiguous in group order, so a bucket's members stay contiguous too.
        members = bucket_of_member == bucket
        packed.append(pack_groups(ragged.values[members], ragged.weights[members],
                                  lengths=ragged.lengths[bucket_of == bucket], members=int(bucket)))
    return packed


def _fuse_packed(packed_list) -> list:
    return [unpack_groups(jaxfuse.fuse_groups(p.values, p.weights, p.mask, template="gaussian",
                                              temperature=TEMPERATURE).location, p) for p in packed_list]


def measure_ragged(sizes: Sizes) -> Section:
    """Skewed ragged sizes: flat members -> pack_groups -> fuse_groups -> per-group numpy results."""
    ragged = skewed_ragged_members(sizes.ragged_groups, sizes.ragged_max_size)
    lengths = ragged.lengths
    section = Section("ragged", f"Skewed ragged groups through pack_groups ({lengths.size:,} groups, "
                      f"{int(lengths.sum()):,} members)", (
        f"Group sizes follow a Zipf law capped at {sizes.ragged_max_size} (median {int(np.median(lengths))}, "
        f"mean {lengths.mean():.1f}, max {int(lengths.max())}). Flat numpy members in, per-group numpy "
        "results out, Gaussian, float32. *One bucket*: `pack_groups` pads every group to the largest; *by size*: "
        "groups are split by power-of-two size and each bucket packed and fused on its own (one compile per "
        "bucket). *Fuse* is `fuse_groups` + `unpack_groups` on the packed numpy arrays (numpy in, numpy out); "
        "the baseline is vectorized numpy on the same padded arrays, so the speed-up compares like with like. "
        "Packing, which either would need, is timed apart."),
        ["packing", "padded slots", "slots used", "pack", "fuse", "numpy baseline", "speed-up (fuse)",
         "speed-up incl. packing"])
    strategies = {
        "one bucket": lambda: [pack_groups(ragged.values, ragged.weights, lengths=lengths)],
        "by size": lambda: _pack_by_size(ragged),
    }
    for name, pack in strategies.items():
        packed_list = pack()
        slots = sum(p.mask.size for p in packed_list)
        _fuse_packed(packed_list)  # compile every bucket outside the timing
        pack_time = time_call(pack, repeats=sizes.repeats, warmup=0, min_seconds=sizes.min_seconds,
                              max_seconds=sizes.max_seconds)
        fuse_time = time_call(lambda: _fuse_packed(packed_list), repeats=sizes.repeats, warmup=0,
                              min_seconds=sizes.min_seconds,
                              max_seconds=sizes.max_seconds)
        baseline = time_call(lambda: [numpy_closed_form("gaussian", p.values, p.weights, p.mask) for p in packed_list],
                             repeats=sizes.baseline_repeats, warmup=0, min_seconds=min(0.05, sizes.min_seconds),
                             max_seconds=2 * sizes.max_seconds, max_rounds=20)
        speedup = baseline.median / fuse_time.median
        with_packing = (baseline.median + pack_time.median) / (fuse_time.median + pack_time.median)
        section.rows.append([name, f"{slots:,}", _fraction(lengths.sum() / slots), _seconds(pack_time.median),
                             _seconds(fuse_time.median), _seconds(baseline.median), _ratio(speedup),
                             _ratio(with_packing)])
        section.data[name] = dict(slots=int(slots), pack_seconds=pack_time.median, fuse_seconds=fuse_time.median,
                                  numpy_seconds=baseline.median, speedup=speedup, speedup_with_packing=with_packing,
                                  buckets=len(packed_list))
    return section


def _agreement(fused, reference: ScipyStudentT, count: int) -> dict[str, Any]:
    """How far jaxfuse's Student-t locations are from scipy's, in units of the fitted scale."""
    location = np.asarray(fused.location[:count], np.float64)
    scale = np.asarray(fused.parameters.scale[:count], np.float64)
    fitted = (reference.scale > 0) & (scale > 0)
    both_point_masses = ~fitted & (reference.scale == 0)
    point_mass_match = np.all(location[both_point_masses] == reference.location[both_point_masses])
    relative = np.abs(location - reference.location)[fitted] / reference.scale[fitted]
    return {
        "lanes": int(location.size),
        "fitted_lanes": int(fitted.sum()),
        "max_location_difference_in_scales": float(relative.max()) if relative.size else 0.0,
        "lanes_differing_over_1e-3_scale": int(np.sum(relative > 1e-3)),
        "point_masses_agree": bool(point_mass_match),
        "max_scale_relative_difference": float(np.max(np.abs(scale[fitted] / reference.scale[fitted] - 1)))
        if fitted.any() else 0.0,
    }


def measure_student_t(sizes: Sizes) -> Section:
    """Student-t at G x M = 10,000 x 32 against the per-group scipy loop and vectorized numpy EM."""
    groups = sizes.student_t_groups
    data = closed_form_groups(groups, sizes.members, seed=1)
    values, weights, mask = _device_arrays(*data)

    def fuse():
        return jaxfuse.fuse_student_t(values, weights, mask, temperature=TEMPERATURE, df=STUDENT_T_DF)

    compile_seconds, fused = first_call_seconds(fuse)
    jax_time = time_call(fuse, repeats=max(3, sizes.repeats // 2), warmup=0, min_seconds=sizes.min_seconds,
                         max_seconds=sizes.max_seconds)
    steps, codes = np.asarray(fused.steps), np.asarray(fused.result)
    iterated = steps[steps > 0]
    code_counts = {ResultCode(c).name: int(n) for c, n in zip(*np.unique(codes, return_counts=True))}

    section = Section("student_t", f"Student-t at G x M x K = {groups:,} x {sizes.members} x 3 (df = {STUDENT_T_DF})", (
        f"Seeded THUMOS-like groups, float32, T = {TEMPERATURE}. *Newton steps* are per group (the most over its "
        "3 coordinates); groups whose every coordinate is a point mass (a member holding probability >= "
        "df / (df + 1), e.g. singletons) take 0 steps. The per-group scipy loop (`scipy.optimize.minimize`, "
        "L-BFGS-B with the analytic gradient, from the weighted median, in float64) is slow, so it is timed on "
        "the first groups only and scaled per group to G; likewise the vectorized numpy EM iterations "
        "(`numpy_fuse('student_t')`, tolerance 1e-10, at most 2000 iterations), whose cost grows with the "
        "slowest lane of the batch, so its scaled time is an estimate."),
        ["implementation", "groups timed", "time", "per group", "time for all G", "speed-up of jaxfuse"])
    section.rows.append(["jaxfuse (device arrays)", f"{groups:,}", _seconds(jax_time.median),
                         _seconds(jax_time.median / groups), _seconds(jax_time.median), "1x"])
    section.data = {
        "groups": groups, "jax_seconds": jax_time.median, "first_call_seconds": compile_seconds,
        "median_steps": float(np.median(steps)), "max_steps": int(steps.max()),
        "median_steps_iterated": float(np.median(iterated)) if iterated.size else 0.0,
        "p99_steps": float(np.percentile(steps, 99)), "result_codes": code_counts,
    }
    _add_student_t_baselines(section, data, fused, jax_time.median, sizes)
    section.notes.append(
        f"Newton steps per group: median {np.median(steps):g} (median {section.data['median_steps_iterated']:g} over "
        f"the {iterated.size:,} groups that iterate), 99th percentile {np.percentile(steps, 99):g}, max "
        f"{steps.max()}; result codes {code_counts}; first call (compile + run) {_seconds(compile_seconds)}.")
    return section


def _add_student_t_baselines(section: Section, data: SyntheticGroups, fused, jax_seconds: float, sizes: Sizes) -> None:
    groups = data.values.shape[0]
    try:
        import scipy  # noqa: F401
    except ImportError:
        section.notes.append("scipy is not installed (`pip install jaxfuse[bench]`): no scipy baseline.")
    else:
        count = min(sizes.scipy_groups, groups)
        subset = [array[:count] for array in data]
        # Warm up on a few groups: the first call imports scipy.optimize and fills its caches.
        scipy_student_t_loop(*(array[:SCIPY_WARMUP_GROUPS] for array in data))
        start = time.perf_counter()
        reference = scipy_student_t_loop(*subset)
        seconds = time.perf_counter() - start
        scaled = seconds / count * groups
        agreement = _agreement(fused, reference, count)
        section.rows.append(["scipy.optimize loop, per group", f"{count:,}", _seconds(seconds),
                             _seconds(seconds / count), f"{_seconds(scaled)} (scaled)", _ratio(scaled / jax_seconds)])
        section.data.update(scipy_groups=count, scipy_seconds=seconds, scipy_scaled_seconds=scaled,
                            scipy_speedup=scaled / jax_seconds, agreement=agreement,
                            scipy_median_iterations=float(np.median(reference.iterations))
                            if reference.iterations.size else 0.0)
        section.notes.append(
            f"Agreement with scipy on its {count} groups ({agreement['fitted_lanes']} fitted lanes): max |location "
            f"difference| = {agreement['max_location_difference_in_scales']:.1e} fitted scales, "
            f"{agreement['lanes_differing_over_1e-3_scale']} lanes over 1e-3 scales, max relative scale difference "
            f"{agreement['max_scale_relative_difference']:.1e}, point masses identical: "
            f"{agreement['point_masses_agree']}; "
            f"scipy's median L-BFGS-B iterations: {section.data['scipy_median_iterations']:g}.")
    count = min(sizes.em_groups, groups)
    start = time.perf_counter()
    numpy_fuse("student_t", *(array[:count] for array in data), TEMPERATURE, df=STUDENT_T_DF)
    seconds = time.perf_counter() - start
    scaled = seconds / count * groups
    section.rows.append(["numpy EM, vectorized", f"{count:,}", _seconds(seconds), _seconds(seconds / count),
                         f"{_seconds(scaled)} (scaled)", _ratio(scaled / jax_seconds)])
    section.data.update(em_groups=count, em_seconds=seconds, em_scaled_seconds=scaled, em_speedup=scaled / jax_seconds)


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


def _default_policy() -> PaddingPolicy | None:
    """The floors ``pack_groups`` applies by default (None when it has no such arguments)."""
    parameters = inspect.signature(pack_groups).parameters
    if "min_groups" not in parameters or "min_members" not in parameters:
        return None
    return PaddingPolicy(int(parameters["min_groups"].default), int(parameters["min_members"].default))


def _policy_name(policy: PaddingPolicy) -> str:
    name = ("power-of-two buckets, no floors" if policy == PaddingPolicy(1, 1)
            else f"buckets floored at G >= {policy.min_groups}, M >= {policy.min_members}")
    return name + (" (the pack_groups default)" if policy == _default_policy() else "")


# Streams are packed with explicit sizes, so each policy means the same whatever pack_groups' defaults are.
PADDING_POLICIES = {_policy_name(policy): policy for policy in (PaddingPolicy(1, 1), PaddingPolicy(256, 16))}


def _serve(request: RaggedMembers, policy: PaddingPolicy) -> np.ndarray:
    packed = policy.pack(request)
    fused = jaxfuse.fuse_groups(packed.values, packed.weights, packed.mask, template="gaussian",
                                temperature=TEMPERATURE)
    return unpack_groups(fused.location, packed)


def measure_compile(sizes: Sizes) -> Section:
    """A stream of random-size requests: compile count and latencies under two padding policies.

    ``jax.clear_caches()`` before each policy, so each starts cold, as a fresh process would.
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
        jax.clear_caches()
        latencies, compiled = [], []
        for request in stream:
            before = jaxfuse.compile_count()
            start = time.perf_counter()
            _serve(request, policy)
            latencies.append(time.perf_counter() - start)
            compiled.append(jaxfuse.compile_count() > before)
        latencies, compiled = np.asarray(latencies), np.asarray(compiled)
        count = jaxfuse.compile_count()
        warm = latencies[~compiled]
        slots = sum(policy.slots(request) for request in stream)
        members = sum(int(request.lengths.sum()) for request in stream)
        section.rows.append([name, str(count), _seconds(latencies[0]), _seconds(latencies[compiled].mean()),
                             _seconds(np.median(warm)) if warm.size else "n/a", _seconds(latencies.sum()),
                             f"{slots:,} ({_fraction(members / slots)} used)"])
        section.data[name] = dict(compiles=count, first_call_seconds=float(latencies[0]),
                                  mean_compiling_seconds=float(latencies[compiled].mean()),
                                  median_warm_seconds=float(np.median(warm)) if warm.size else math.nan,
                                  total_seconds=float(latencies.sum()), padded_slots=int(slots))
    return section


def _cas_items(proposals, videos: int, classes: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per (video, class): the real proposals' segments, contrast scores and inner scores."""
    items = []
    for video in range(videos):
        for label in range(classes):
            n = int(proposals.count[video, label])
            items.append((proposals.segments[video, label, :n], proposals.contrast[video, label, :n],
                          proposals.inner[video, label, :n]))
    return items


def _jaxfuse_pipeline(cas: ThumosLikeCas):
    """CAS (numpy) -> proposals_from_cas -> pack_proposals -> fuse_proposals -> per-item fused detections."""
    from jaxfuse._cas import proposals_from_cas
    from jaxfuse._proposals import fuse_proposals, pack_proposals, unpack_proposals

    proposals = proposals_from_cas(cas.cas, CAS_THRESHOLDS, classes_last=True, length=cas.length)
    items = _cas_items(proposals, cas.cas.shape[0], cas.cas.shape[2])
    batches = pack_proposals(*zip(*items))
    results = [fuse_proposals(b.segments, b.scores, b.weights, b.valid, temperature=TEMPERATURE) for b in batches]
    return unpack_proposals(batches, results)


def _loop_pipeline(cas: ThumosLikeCas) -> list[np.ndarray]:
    videos, _, classes = cas.cas.shape
    return [reference_fuse_proposals(*reference_cas_proposals(cas.cas[v, :, c], int(cas.length[v])))
            for v in range(videos) for c in range(classes)]


def _detections(fused_items, classes: int):
    from jaxfuse._evaluate import Detections

    video = np.concatenate([np.full(item.count, i // classes) for i, item in enumerate(fused_items)])
    label = np.concatenate([np.full(item.count, i % classes) for i, item in enumerate(fused_items)])
    score = np.concatenate([item.scores for item in fused_items])
    segments = np.concatenate([item.segments for item in fused_items]).reshape(-1, 2)
    return Detections(video, label, score.astype(np.float64), segments.astype(np.float64))


def measure_pipeline(sizes: Sizes) -> Section:
    """End to end: CAS -> proposals -> grouped and fused detections, against the published loops; then mAP."""
    from jaxfuse._cas import proposals_from_cas
    from jaxfuse._evaluate import GroundTruth, evaluate_detections
    from jaxfuse._proposals import fuse_proposals, pack_proposals

    cas = thumos_like_cas(sizes.cas_videos)
    videos, _, classes = cas.cas.shape
    fused_items = _jaxfuse_pipeline(cas)  # compile every bucket outside the timing
    proposals = proposals_from_cas(cas.cas, CAS_THRESHOLDS, classes_last=True, length=cas.length)
    items = _cas_items(proposals, videos, classes)
    batches = pack_proposals(*zip(*items))
    on_device = [_device_arrays(b.segments, b.scores, b.weights, b.valid) for b in batches]

    def fuse_only():
        return [fuse_proposals(*batch, temperature=TEMPERATURE) for batch in on_device]

    cas_device, length_device = _device_arrays(cas.cas, cas.length)
    stage_cas = time_call(lambda: proposals_from_cas(cas_device, CAS_THRESHOLDS, classes_last=True,
                                                     length=length_device),
                          repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                          max_seconds=sizes.max_seconds)
    stage_fuse = time_call(fuse_only, repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                           max_seconds=sizes.max_seconds)
    whole = time_call(lambda: _jaxfuse_pipeline(cas), repeats=max(2, sizes.repeats // 2), warmup=0,
                      min_seconds=sizes.min_seconds,
                      max_seconds=sizes.max_seconds)

    loop_cas = time_call(lambda: [reference_cas_proposals(cas.cas[v, :, c], int(cas.length[v]))
                                  for v in range(videos) for c in range(classes)], repeats=1, warmup=0, min_seconds=0)
    loop_fuse = time_call(lambda: [reference_fuse_proposals(*item) for item in items], repeats=1, warmup=0,
                          min_seconds=0)
    expected = _loop_pipeline(cas)
    matches = _pipeline_matches(fused_items, expected)

    truth = GroundTruth(cas.truth_video, cas.truth_label, cas.truth_segments)
    detections = _detections(fused_items, classes)
    evaluate = time_call(lambda: evaluate_detections(detections, truth), repeats=max(2, sizes.repeats // 2),
                         min_seconds=sizes.min_seconds,
                         max_seconds=sizes.max_seconds)
    result = evaluate_detections(detections, truth)

    proposal_count = int(proposals.count.sum())
    section = Section("pipeline", f"End to end: CAS -> proposals -> fused detections ({videos} videos x {classes} "
                      f"classes)", (
        f"Seeded THUMOS14-like CAS ({videos} videos of 400 to 512 snippets, {classes} classes, 20 thresholds): "
        f"{proposal_count:,} proposals, {sum(i.count for i in fused_items):,} fused detections. Stages on device "
        "arrays; *whole pipeline* from the numpy CAS to per-item numpy detections (`proposals_from_cas`, "
        "`pack_proposals`, `fuse_proposals`, `unpack_proposals`). Baselines: the per-run numpy loop for "
        "proposals and the published per-item grouping + fusion loop (T = 0.2, Gaussian); both checked "
        "against jaxfuse on this data. Stage times are medians; the whole pipeline is timed on its own, so on a "
        "shared machine it need not equal the sum of its stages."),
        ["stage", "jaxfuse", "numpy loop", "speed-up"])
    rows = [("CAS -> proposals", stage_cas.median, loop_cas.median),
            ("grouping + Gaussian fusion", stage_fuse.median, loop_fuse.median),
            ("whole pipeline (numpy in, numpy out)", whole.median, loop_cas.median + loop_fuse.median)]
    for name, ours, loop in rows:
        section.rows.append([name, _seconds(ours), _seconds(loop), _ratio(loop / ours)])
    section.rows.append(["detection mAP (tIoU 0.1:0.7)", _seconds(evaluate.median), "see test_bench_evaluate", ""])
    section.notes.append(f"Fused detections identical to the loops' (count, segments, scores to 1e-4): {matches}. "
                         f"Synthetic mAP at tIoU 0.1:0.1:0.7 (average {100 * float(result.average):.1f}) only "
                         "checks the plumbing.")
    section.data = {"videos": videos, "classes": classes, "proposals": proposal_count, "matches": matches,
                    "cas_seconds": stage_cas.median, "fuse_seconds": stage_fuse.median,
                    "whole_seconds": whole.median, "loop_cas_seconds": loop_cas.median,
                    "loop_fuse_seconds": loop_fuse.median, "map_seconds": evaluate.median,
                    "average_map": float(result.average)}
    return section


def _pipeline_matches(fused_items, expected: Sequence[np.ndarray]) -> bool:
    for item, reference in zip(fused_items, expected):
        if item.count != len(reference):
            return False
        got = np.concatenate([np.asarray(item.segments, np.float64), np.asarray(item.scores, np.float64)[:, None]], 1)
        if not np.allclose(got, reference, rtol=1e-4, atol=1e-4):
            return False
    return True


# ---------------------------------------------------------------------------- report


def _headline(sections: dict[str, Section], sizes: Sizes) -> Section:
    """Targets, the measured numbers, and whether each is met."""
    intro = "Ratios are jaxfuse against the baseline measured in the same run."
    if sizes.name == "smoke":
        intro += " These are the *smoke* preset's tiny sizes, not the headline workloads."
    section = Section("headline", "Headline targets", intro, ["target", "measured", "status"])

    def add(target: str, measured: str, met: bool | None, status: str | None = None) -> None:
        status = status or ("n/a" if met is None else ("met" if met else "**missed**"))
        section.rows.append([target, measured, status])
        section.data[target] = {"measured": measured, "met": met, "status": status}

    if "templates" in sections and "floors" in sections:
        gaussian = sections["templates"].data["gaussian"]
        copy_gbps = sections["floors"].data["copy_gbps"]
        # Best times are the robust estimate on a shared machine, but a target met only there is borderline.
        on_best = gaussian["best_speedup"] >= TARGETS["gaussian_speedup"]
        on_median = gaussian["speedup"] >= TARGETS["gaussian_speedup"]
        add(f"Gaussian G x M x K = {sizes.headline_groups:,} x {sizes.members} x 3: >= 4x vectorized numpy",
            f"{gaussian['best_speedup']:.2f}x best times ({gaussian['speedup']:.2f}x medians) on device arrays, "
            f"{gaussian['host_speedup']:.2f}x numpy in/out; {gaussian['gbps']:.2f} GB/s vs copy {copy_gbps:.2f} GB/s "
            f"({_fraction(gaussian['copy_fraction'])})",
            on_best and on_median,
            status="**borderline**: met on best times, missed on medians" if on_best and not on_median else None)
    if "student_t" in sections:
        data = sections["student_t"].data
        if "scipy_speedup" in data:
            add(f"Student-t G x M = {data['groups']:,} x {sizes.members}: >= 100x the per-group scipy loop",
                f"{data['scipy_speedup']:.0f}x (scipy timed on {data['scipy_groups']} groups, scaled); "
                f"{data['em_speedup']:.0f}x numpy EM",
                data["scipy_speedup"] >= TARGETS["student_t_speedup"])
        add("Student-t median Newton steps <= 8",
            f"median {data['median_steps']:g} (iterating groups {data['median_steps_iterated']:g}), "
            f"max {data['max_steps']}",
            data["median_steps"] <= TARGETS["student_t_median_steps"])
    if "compile" in sections:
        # The target is for what users get by default; the other policy is there for comparison.
        for policy, data in sections["compile"].data.items():
            is_default = PADDING_POLICIES[policy] == _default_policy()
            met = data["compiles"] <= TARGETS["compile_count"]
            add(f"Compiles for {sizes.compile_requests:,} random-size requests, {policy}: about a dozen at most",
                f"{data['compiles']} compiles, first call {_seconds(data['first_call_seconds'])}", met,
                status=None if is_default else f"{'within' if met else 'over'} (for comparison)")
    if "pipeline" in sections:
        data = sections["pipeline"].data
        add("End to end CAS -> fused detections vs the numpy loops (no target)",
            f"{(data['loop_cas_seconds'] + data['loop_fuse_seconds']) / data['whole_seconds']:.1f}x whole pipeline; "
            f"proposals {data['loop_cas_seconds'] / data['cas_seconds']:.0f}x, fusion "
            f"{data['loop_fuse_seconds'] / data['fuse_seconds']:.0f}x", None)
    return section


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_section(section: Section) -> str:
    """One section as markdown: title, intro, table, notes."""
    parts = [f"## {section.title}", section.intro, _markdown_table(section.columns, section.rows)]
    parts += [f"- {note}" for note in section.notes]
    return "\n\n".join(parts)


def render_report(info: dict[str, Any], sizes: Sizes, sections: Sequence[Section], plots: Sequence[Path],
                  command: str) -> str:
    """The whole markdown report."""
    header = [
        f"# jaxfuse benchmarks: {info['machine']}",
        "\n".join([
            f"- Machine: {info['device']}; host {info['host_cpu']}, {info['host_cores']} cores",
            f"- Versions: jaxfuse {info['jaxfuse']}, jax {info['jax']}, jaxlib {info['jaxlib']}, "
            f"numpy {info['numpy']}, scipy {info['scipy']}, Python {info['python']}",
            f"- Date: {info['date']}; source: jaxfuse at {info['source']}",
            f"- Command: `{command}` (preset *{sizes.name}*)",
            "- Times are medians over repeated calls after a warm-up call; every timed JAX call ends with "
            "`jax.block_until_ready`. Baselines run in the same process, so ratios hold even when absolute "
            "times wander on a shared machine.",
        ]),
    ]
    body = [render_section(section) for section in sections]
    if plots:
        body.append("## Plots\n\n" + "\n\n".join(f"![{path.stem}]({path.name})" for path in plots))
    return "\n\n".join(header + body) + "\n"


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _plain_log_ticks(axis) -> None:
    """Ticks at 1, 2 and 5 times powers of ten, written as plain numbers (not 3 x 10^0)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(figure, path: Path, title: str) -> Path:
    figure.axes[0].set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def write_plots(sections: dict[str, Section], info: dict[str, Any], directory: Path) -> list[Path]:
    """PNG plots (matplotlib, Agg, no global state): throughput vs G and M, speed-ups, fractions of floor."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    # The subtitle goes on a second line, so long machine names are not cut off.
    stem, subtitle = info["machine"], f"\n{info['machine']}, jax {info['jax']}, {info['date'][:10]}"
    paths = []
    if points := sections.get("groups", Section("", "", "", [])).data.get("points"):
        figure, axes = _figure()
        groups = [p["groups"] for p in points]
        axes.loglog(groups, [p["gbps"] for p in points], "o-", label="jaxfuse")
        axes.loglog(groups, [p["numpy_gbps"] for p in points], "s--", label="numpy (vectorized)")
        if "floors" in sections:
            axes.axhline(sections["floors"].data["copy_gbps"], color="gray", linestyle=":", label="copy bandwidth")
        axes.set(xlabel="groups G (M = 32, K = 3, float32)", ylabel="GB/s moved (best times)")
        _plain_log_ticks(axes.yaxis)
        axes.legend(fontsize=8)
        paths.append(_save(figure, directory / f"{stem}-throughput-vs-groups.png", f"Gaussian fusion vs G{subtitle}"))
    if points := sections.get("members", Section("", "", "", [])).data.get("points"):
        figure, axes = _figure()
        members = [p["members"] for p in points]
        axes.loglog(members, [p["slots_per_second"] for p in points], "o-", label="jaxfuse", base=2)
        axes.loglog(members, [p["numpy_slots_per_second"] for p in points], "s--", label="numpy (vectorized)", base=2)
        axes.set(xlabel="padded group size M (G x M constant)", ylabel="padded members / s (best times)")
        axes.legend(fontsize=8)
        paths.append(_save(figure, directory / f"{stem}-throughput-vs-members.png",
                           f"Gaussian fusion vs M{subtitle}"))
    speedups = _speedups(sections)
    if speedups:
        figure, axes = _figure(height=0.35 * len(speedups) + 1.2)
        names, values = zip(*speedups)
        axes.barh(range(len(values)), values, color="tab:blue")
        axes.set_yticks(range(len(values)), names, fontsize=7)
        axes.set_xscale("log")
        axes.axvline(1, color="gray", linewidth=0.8)
        for y, value in enumerate(values):
            axes.text(value, y, f" {value:.3g}x", va="center", fontsize=7)
        axes.set(xlabel="speed-up of jaxfuse over the baseline (log)")
        axes.invert_yaxis()
        paths.append(_save(figure, directory / f"{stem}-speedup.png",
                           f"Speed-up over each baseline (median times){subtitle}"))
    if "templates" in sections:
        data = sections["templates"].data
        figure, axes = _figure()
        names = [t for t in CLOSED_FORMS if t in data]
        x = np.arange(len(names))
        axes.bar(x - 0.2, [data[t]["copy_fraction"] for t in names], 0.4, label="GB/s / copy GB/s")
        axes.bar(x + 0.2, [data[t]["floor_fraction"] for t in names], 0.4, label="floor time / kernel time")
        axes.set_xticks(x, names)
        axes.set(ylabel="fraction of the floor", ylim=(0, max(1.0, *(data[t]["floor_fraction"] for t in names))))
        axes.legend(fontsize=8)
        paths.append(_save(figure, directory / f"{stem}-floor-fraction.png",
                           f"Closed forms at {data['groups']:,} x {data['members']} x 3{subtitle}"))
    return paths


def _speedups(sections: dict[str, Section]) -> list[tuple[str, float]]:
    found = []
    if "templates" in sections:
        found += [(f"{t} vs numpy", sections["templates"].data[t]["speedup"]) for t in CLOSED_FORMS]
    if "ragged" in sections:
        found += [(f"ragged, {name} vs numpy", d["speedup"]) for name, d in sections["ragged"].data.items()]
    if "student_t" in sections:
        data = sections["student_t"].data
        if "scipy_speedup" in data:
            found.append(("student-t vs scipy loop", data["scipy_speedup"]))
        found.append(("student-t vs numpy EM", data["em_speedup"]))
    if "pipeline" in sections:
        data = sections["pipeline"].data
        found += [("CAS -> proposals vs loop", data["loop_cas_seconds"] / data["cas_seconds"]),
                  ("grouping + fusion vs loop", data["loop_fuse_seconds"] / data["fuse_seconds"]),
                  ("whole pipeline vs loops",
                   (data["loop_cas_seconds"] + data["loop_fuse_seconds"]) / data["whole_seconds"])]
    return [(name, value) for name, value in found if math.isfinite(value) and value > 0]


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------- run


def run_benchmarks(sizes: Sizes, sections: Sequence[str] = SECTIONS, *, memory_gb: float | None = None,
                   echo: Callable[[str], None] | None = None,
                   on_section: Callable[[dict[str, Section]], None] | None = None) -> dict[str, Section]:
    """Run the chosen measurements in order; each finished section is echoed as markdown.

    ``on_section`` gets the sections done so far after each one (to save a
    partial report, in case a time limit cuts the run short).
    """
    echo = echo or (lambda text: print(text, flush=True))
    memory_budget = memory_budget_bytes(sizes.memory_gb if memory_gb is None else memory_gb)
    done: dict[str, Section] = {}
    floors = {}
    if any(s in sections for s in ("floors", "templates", "groups", "members")):
        done["floors"] = measure_floors(sizes)
        floors = done["floors"].data
    steps = {
        "templates": lambda: measure_templates(sizes, floors),
        "groups": lambda: measure_group_sweep(sizes, floors, memory_budget),
        "members": lambda: measure_member_sweep(sizes, floors),
        "ragged": lambda: measure_ragged(sizes),
        "student_t": lambda: measure_student_t(sizes),
        "compile": lambda: measure_compile(sizes),
        "pipeline": lambda: measure_pipeline(sizes),
    }
    if "floors" in done:
        echo(render_section(done["floors"]) + "\n")
    for key, measure in steps.items():
        if key in sections:
            start = time.perf_counter()
            done[key] = measure()
            echo(render_section(done[key]) + f"\n\n({key}: {time.perf_counter() - start:.0f} s)\n")
            if on_section is not None:
                on_section(done)
    return done


def write_report(sections: dict[str, Section], sizes: Sizes, output_dir: Path, *, machine: str | None = None,
                 plots: bool = True, command: str = "jaxfuse bench") -> Path:
    """Write ``<output_dir>/<machine>.md``, its JSON copy and the plots; return the markdown's path."""
    info = machine_info()
    if machine:
        info["machine"] = machine
    output_dir.mkdir(parents=True, exist_ok=True)
    headline = _headline(sections, sizes)
    ordered = [headline] + list(sections.values())
    plot_paths = write_plots(sections, info, output_dir) if plots else []
    report = output_dir / f"{info['machine']}.md"
    report.write_text(render_report(info, sizes, ordered, plot_paths, command))
    payload = {"info": info, "preset": dataclasses.asdict(sizes),
               "sections": {s.key: {"title": s.title, "data": s.data} for s in ordered}}
    (output_dir / f"{info['machine']}.json").write_text(json.dumps(_json_ready(payload), indent=1) + "\n")
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``jaxfuse bench``."""
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--full", action="store_true",
                        help="full sizes (G up to 10^7 where memory allows, more repeats); quick by default")
    preset.add_argument("--smoke", action="store_true", help="tiny sizes: checks the machinery in seconds")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks") / "results",
                        help="where the report, its JSON copy and the plots go (default benchmarks/results)")
    parser.add_argument("--machine", default=None, help="report name (default: GPU name or cpu-<model>-<n>cores)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="cap on one measurement's memory (default 4 quick, 8 full; at most half of what is free)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks, print each table, write the report. Non-zero if jaxfuse disagreed with a baseline."""
    sizes = SMOKE if args.smoke else FULL if args.full else QUICK
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        print(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    device = jax.devices()[0]
    print(f"jaxfuse bench ({sizes.name}) on {device.platform}: {device.device_kind}, {machine_name()}\n")
    start = time.perf_counter()
    command = "jaxfuse bench" + {"full": " --full", "smoke": " --smoke", "quick": ""}[sizes.name]

    def save_partial(done: dict[str, Section]) -> None:
        write_report(done, sizes, Path(args.output_dir), machine=args.machine, plots=False,
                     command=command + " (partial)")

    sections = run_benchmarks(sizes, chosen, memory_gb=args.memory_gb, on_section=save_partial)
    report = write_report(sections, sizes, Path(args.output_dir), machine=args.machine, plots=not args.no_plots,
                          command=command)
    print(render_section(_headline(sections, sizes)))
    print(f"\nreport: {report} ({time.perf_counter() - start:.0f} s)")
    return 0 if _all_agree(sections) else 1


def _all_agree(sections: dict[str, Section]) -> bool:
    """Whether every correctness check against a baseline passed."""
    ok = True
    if "templates" in sections:
        ok &= all(d["max_difference"] < 1e-4 and d["failed_groups"] == 0
                  for d in sections["templates"].data.values() if isinstance(d, dict))
    if "pipeline" in sections:
        ok &= bool(sections["pipeline"].data["matches"])
    return ok
