"""CAS -> proposals at THUMOS14 scale: proposals_from_cas against the per-run numpy loop.

Run: ``python -m pytest benchmarks/test_bench_cas.py``

Data: 210 videos of 400 to 512 snippets (padded to 512), 3 classes each (the classes
that pass the video-level threshold), 20 thresholds ``np.arange(0.001, 0.04, 0.002)``
on a CAS in ``[0, 0.05)`` built from smoothed noise and action-like bumps, so every
level cuts runs: about 250 to 450 proposals per (video, class), as in the SPEC.

The baseline is the loop users run today, in the SPEC convention: per (video, class,
threshold) the run edges come from ``np.diff`` (already vectorised), then each run is
scored with numpy means one at a time. It is defined here (benchmarks do not import
tests), and ``test_bench_reference_loop`` checks that it agrees with jaxfuse on the
benchmark data, so the two cannot drift apart unnoticed. The published code finds run
edges with a Python list comprehension per snippet and is slower still.

jaxfuse is timed from device-resident JAX arrays to device-resident results
(``block_until_ready``) and, separately, NumPy in to NumPy out (transfers and the
finiteness check included). Compilation happens in the warm-up round, outside the
timed rounds.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfuse._detection.cas_proposals import proposals_from_cas

NUM_VIDEOS = 210
PADDED_LENGTH = 512
CLASSES_PER_VIDEO = 3
THRESHOLDS = np.arange(0.001, 0.04, 0.002)  # 20 levels, as published
MARGIN_SCALE, MARGIN_POWER = 0.0785, 0.9

_timings: dict[str, float] = {}


# ------------------------------------------------------------- reference loop


def reference_proposals(cas, thresholds, length, *, min_length=2):
    """One sequence ``cas [L]``: a list of (threshold_index, start, end, inner, outer, contrast)."""
    video = cas[:length]
    found = []
    for threshold_index, level in enumerate(thresholds):
        edges = np.diff(np.concatenate([[0], (video > level).astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # ends exclusive
        for start, end in zip(starts.tolist(), ends.tolist()):
            run_length = end - start
            if run_length < min_length:
                continue
            width = math.ceil(MARGIN_SCALE * run_length**MARGIN_POWER)
            inner = video[start:end].mean()
            around = np.concatenate([video[max(0, start - width) : start], video[end : min(length, end + width)]])
            outer = around.mean() if around.size else 0.0
            found.append((threshold_index, start, end, inner, outer, inner - outer))
    return found


def reference_batch(cas, thresholds, length):
    """``cas [V, L, C]``: the proposals of every (video, class), in that order."""
    return [
        reference_proposals(cas[video, :, klass], thresholds, int(length[video]))
        for video in range(cas.shape[0])
        for klass in range(cas.shape[2])
    ]


# ------------------------------------------------------------------------ data


def make_thumos_like_cas(seed: int = 0):
    """Seeded ``cas [210, 512, 3]`` float32, zero padded, and ``length [210]``."""
    rng = np.random.default_rng(seed)
    length = rng.integers(400, PADDED_LENGTH + 1, NUM_VIDEOS)
    shape = (NUM_VIDEOS, PADDED_LENGTH, CLASSES_PER_VIDEO)
    kernel = np.hanning(9) / np.hanning(9).sum()
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, rng.normal(size=shape))
    actions = np.zeros(shape)
    for video in range(NUM_VIDEOS):
        for klass in range(CLASSES_PER_VIDEO):
            for _ in range(rng.integers(3, 12)):
                centre, width = rng.integers(0, length[video]), rng.integers(3, 40)
                actions[video, max(0, centre - width // 2) : centre + width // 2, klass] += rng.uniform(1, 3)
    cas = 0.05 / (1 + np.exp(-(2.5 * smooth + actions - 1.5)))
    outside = np.arange(PADDED_LENGTH)[None, :, None] >= length[:, None, None]
    return np.where(outside, 0.0, cas).astype(np.float32), length


@pytest.fixture(scope="module")
def thumos_like_cas():
    return make_thumos_like_cas()


def _run_jaxfuse(cas, length, max_proposals=None):
    return proposals_from_cas(cas, THRESHOLDS, classes_last=True, length=length, max_proposals=max_proposals)


def _min_seconds(benchmark) -> float | None:
    """The fastest round, or None when pytest-benchmark is disabled."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.min


def _sizes(result) -> dict:
    count = np.asarray(result.count)
    return {
        "videos": NUM_VIDEOS,
        "padded_length": PADDED_LENGTH,
        "classes_per_video": CLASSES_PER_VIDEO,
        "thresholds": len(THRESHOLDS),
        "proposals": int(count.sum()),
        "proposals_per_video_class_median": float(np.median(count)),
        "slots_per_sequence": int(result.valid.shape[-1]),
    }


# ------------------------------------------------------------------ benchmarks


@pytest.mark.parametrize("max_proposals", [None, 1024], ids=["sound_bound", "1024_slots"])
def test_bench_proposals_from_cas_device(benchmark, thumos_like_cas, max_proposals):
    """JAX in, JAX out. The sound bound is 20 * 171 = 3420 slots per sequence; 1024 is a
    caller's lower bound that still holds every proposal here (at most ~450)."""
    cas, length = thumos_like_cas
    cas_device, length_device = jax.device_put(jnp.asarray(cas)), jax.device_put(jnp.asarray(length))

    def run():
        return jax.block_until_ready(_run_jaxfuse(cas_device, length_device, max_proposals))

    result = benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(_sizes(result))
    if (seconds := _min_seconds(benchmark)) is not None:
        _timings[f"device, {result.valid.shape[-1]} slots"] = seconds
    assert not np.asarray(result.truncated).any()


def test_bench_proposals_from_cas_numpy(benchmark, thumos_like_cas):
    cas, length = thumos_like_cas
    result = benchmark.pedantic(_run_jaxfuse, args=(cas, length), rounds=10, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(_sizes(result))
    if (seconds := _min_seconds(benchmark)) is not None:
        _timings[f"numpy, {result.valid.shape[-1]} slots"] = seconds
    assert isinstance(result.inner, np.ndarray)


def test_bench_reference_loop(benchmark, thumos_like_cas):
    cas, length = thumos_like_cas
    expected = benchmark.pedantic(reference_batch, args=(cas, THRESHOLDS, length), rounds=2, iterations=1)
    result = _run_jaxfuse(cas, length)
    benchmark.extra_info.update(_sizes(result))

    # Same proposals, same order, same scores (float32).
    count = result.count.reshape(-1)
    segments = result.segments.reshape(-1, result.segments.shape[-2], 2)
    scores = np.stack([result.inner, result.outer, result.contrast], -1).reshape(-1, segments.shape[1], 3)
    threshold_index = result.threshold_index.reshape(-1, segments.shape[1])
    for sequence, rows in enumerate(expected):
        assert count[sequence] == len(rows)
        keys = np.array([row[:3] for row in rows])
        np.testing.assert_array_equal(threshold_index[sequence, : len(rows)], keys[:, 0])
        np.testing.assert_array_equal(segments[sequence, : len(rows)], keys[:, 1:])
        expected_scores = np.array([row[3:] for row in rows])
        np.testing.assert_allclose(scores[sequence, : len(rows)], expected_scores, atol=1e-6, rtol=0)

    seconds = _min_seconds(benchmark)
    if seconds is None or not _timings:
        pytest.skip("speed-up needs the jaxfuse benchmarks to run first with timing enabled")
    for name, jaxfuse_seconds in _timings.items():
        speedup = seconds / jaxfuse_seconds
        benchmark.extra_info[f"speedup_{name}"] = speedup
        print(
            f"\nproposals_from_cas ({name}) {jaxfuse_seconds * 1e3:.1f} ms vs numpy loop {seconds * 1e3:.0f} ms: "
            f"{speedup:.0f}x ({jax.devices()[0].platform})"
        )
