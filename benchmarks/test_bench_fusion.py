"""Closed-form fusion throughput against the vectorized numpy formulas on the same padded arrays.

Run: ``python -m pytest benchmarks/test_bench_fusion.py --benchmark-only``

Workloads (seeded THUMOS-like groups, skewed sizes, K = 3 coordinates, float32,
T = 0.2; see :func:`jaxfuse.bench.data.closed_form_groups`):

* the headline, G x M = 200,000 x 32, every closed-form template; the Gaussian
  also inside a caller's ``jax.jit`` and against a float32 ``np.einsum``
  implementation of the same outputs (target 2.5x);
* a G sweep 10^2 .. 10^7 at M = 32 (sizes over the memory cap are skipped);
* an M sweep 2 .. 1024 with G x M = 2^21 slots, so every point moves the same bytes;
* skewed ragged sizes (Zipf, up to 256 members) through ``pack_groups`` (packing
  timed apart: both the fusion and the baseline need it).

jaxfuse is timed on device arrays (JAX in, JAX out, ``block_until_ready``),
compiled and warmed up outside the timing. The baseline,
``jaxfuse.tools.synthetic.numpy_fuse`` (float64, as users write it), runs on the
same padded arrays; each ``*_numpy`` benchmark checks it agrees with jaxfuse
and records ``speedup`` = numpy median / jaxfuse median of this run.
"""

from __future__ import annotations

import _data
import jax
import numpy as np
import pytest

import jaxfuse
from jaxfuse.bench.baselines import float32_einsum_gaussian, numpy_closed_form
from jaxfuse.bench.sizes import CLOSED_FORMS

GROUP_SWEEP = [100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000]
MEMBER_SWEEP = [2**i for i in range(1, 11)]
MEMBER_SWEEP_SLOTS = 1 << 21
RAGGED_GROUPS, RAGGED_MAX_SIZE = 50_000, 256

_medians: dict[tuple, float | None] = {}
_bests: dict[tuple, float | None] = {}


def _fuse(template: str, arrays):
    values, weights, mask = arrays
    return jax.block_until_ready(
        jaxfuse.fuse_groups(values, weights, mask, template=template, temperature=_data.TEMPERATURE))


def _shape_info(data) -> dict:
    return {"dtype": str(data.values.dtype), "shape_G_M_K": list(data.values.shape),
            "real_members": int(data.mask.sum()), "temperature": _data.TEMPERATURE}


def _bench_jaxfuse(benchmark, key: tuple, template: str, groups: int, members: int) -> None:
    if reason := _data.skip_reason_for_memory(groups, members):
        pytest.skip(reason)
    data, arrays = _data.closed_form_groups(groups, members), _data.device_groups(groups, members)
    fused = _data.run_benchmark(benchmark, lambda: _fuse(template, arrays))
    _medians[key] = _data.median_seconds(benchmark)
    _bests[key] = best = _data.best_seconds(benchmark)
    moved = _data.tree_bytes(arrays) + _data.tree_bytes(fused)
    _data.record(benchmark, template=template, **_shape_info(data), bytes_moved=moved,
                 gb_per_s_best=moved / best / 1e9 if best else None, steps=int(np.max(fused.steps)),
                 result_codes=_data.result_counts(fused.result))


def _bench_numpy(benchmark, key: tuple, template: str, groups: int, members: int) -> None:
    if reason := _data.skip_reason_for_memory(groups, members):
        pytest.skip(reason)
    data = _data.closed_form_groups(groups, members)
    reference = _data.run_benchmark(benchmark, lambda: numpy_closed_form(template, *data), budget_seconds=4.0,
                                    min_rounds=1)
    fused = _fuse(template, _data.device_groups(groups, members))
    real = data.mask.any(-1)
    spread = np.ptp(data.values[data.mask], axis=0)
    difference = np.abs(np.asarray(fused.location)[real] - reference[real]) / spread
    assert difference.max() < 1e-4, f"jaxfuse and numpy disagree: {difference.max():.2e} of the spread"
    speedup = _data.ratio(_data.median_seconds(benchmark), _medians.get(key))
    _data.record(benchmark, template=template, **_shape_info(data), baseline="jaxfuse.tools.synthetic.numpy_fuse (float64)",
                 max_difference_over_spread=float(difference.max()), speedup=speedup,
                 speedup_of="numpy median / jaxfuse median, same run",
                 speedup_best=_data.ratio(_data.best_seconds(benchmark), _bests.get(key)))
    if speedup is not None:
        print(f"\n{template} G x M = {groups:,} x {members}: jaxfuse {speedup:.2f}x numpy")


# ------------------------------------------------------------ headline, every template


@pytest.mark.parametrize("template", CLOSED_FORMS)
def test_bench_headline(benchmark, template):
    benchmark.group = f"headline {_data.HEADLINE_GROUPS:,} x {_data.MEMBERS} x 3: {template}"
    _bench_jaxfuse(benchmark, ("headline", template), template, _data.HEADLINE_GROUPS, _data.MEMBERS)


@pytest.mark.parametrize("template", CLOSED_FORMS)
def test_bench_headline_numpy(benchmark, template):
    benchmark.group = f"headline {_data.HEADLINE_GROUPS:,} x {_data.MEMBERS} x 3: {template}"
    _bench_numpy(benchmark, ("headline", template), template, _data.HEADLINE_GROUPS, _data.MEMBERS)


def test_bench_headline_numpy_in_numpy_out(benchmark):
    """The Gaussian headline as a numpy caller sees it: host arrays in, host arrays out."""
    benchmark.group = f"headline {_data.HEADLINE_GROUPS:,} x {_data.MEMBERS} x 3: gaussian"
    data = _data.closed_form_groups(_data.HEADLINE_GROUPS)
    _data.run_benchmark(benchmark, lambda: _fuse("gaussian", data))
    _data.record(benchmark, template="gaussian", **_shape_info(data), inputs="numpy", outputs="numpy",
                 speedup_of_numpy_baseline=None)


def test_bench_headline_inside_jit(benchmark):
    """The Gaussian headline called inside a caller's jax.jit: the same program as the eager call."""
    benchmark.group = f"headline {_data.HEADLINE_GROUPS:,} x {_data.MEMBERS} x 3: gaussian"
    arrays = _data.device_groups(_data.HEADLINE_GROUPS, _data.MEMBERS)
    jitted = jax.jit(lambda v, w, m: jaxfuse.fuse_gaussian(v, w, m, temperature=_data.TEMPERATURE))
    fused = _data.run_benchmark(benchmark, lambda: jax.block_until_ready(jitted(*arrays)))
    _medians[("headline jit",)] = _data.median_seconds(benchmark)
    _bests[("headline jit",)] = _data.best_seconds(benchmark)
    _data.record(benchmark, template="gaussian", called="inside jax.jit", result_codes=_data.result_counts(fused.result))


def test_bench_headline_float32_einsum(benchmark):
    """Baseline: float32 np.einsum on the same padded arrays; speed-ups of the eager and the jit call."""
    benchmark.group = f"headline {_data.HEADLINE_GROUPS:,} x {_data.MEMBERS} x 3: gaussian"
    data = _data.closed_form_groups(_data.HEADLINE_GROUPS, _data.MEMBERS)
    location, _, _ = _data.run_benchmark(
        benchmark, lambda: float32_einsum_gaussian(data.values, data.weights, data.mask, _data.TEMPERATURE),
        budget_seconds=4.0, min_rounds=3)
    fused = _fuse("gaussian", _data.device_groups(_data.HEADLINE_GROUPS, _data.MEMBERS))
    real = data.mask.any(-1)
    np.testing.assert_allclose(np.asarray(fused.location)[real], location[real], rtol=1e-5, atol=1e-3)
    median, best = _data.median_seconds(benchmark), _data.best_seconds(benchmark)
    _data.record(benchmark, template="gaussian", baseline="float32 np.einsum (location, scale, probabilities)",
                 speedup_eager=_data.ratio(median, _medians.get(("headline", "gaussian"))),
                 speedup_jit=_data.ratio(median, _medians.get(("headline jit",))),
                 speedup_eager_best=_data.ratio(best, _bests.get(("headline", "gaussian"))),
                 speedup_jit_best=_data.ratio(best, _bests.get(("headline jit",))), speedup_target=2.5)


# ---------------------------------------------------------------------------- G sweep


@pytest.mark.parametrize("groups", GROUP_SWEEP, ids=lambda g: f"G={g:.0e}")
def test_bench_groups(benchmark, groups):
    benchmark.group = f"gaussian G={groups:,} M={_data.MEMBERS}"
    _bench_jaxfuse(benchmark, ("groups", groups), "gaussian", groups, _data.MEMBERS)


@pytest.mark.parametrize("groups", GROUP_SWEEP, ids=lambda g: f"G={g:.0e}")
def test_bench_groups_numpy(benchmark, groups):
    benchmark.group = f"gaussian G={groups:,} M={_data.MEMBERS}"
    _bench_numpy(benchmark, ("groups", groups), "gaussian", groups, _data.MEMBERS)


# ---------------------------------------------------------------------------- M sweep


@pytest.mark.parametrize("members", MEMBER_SWEEP, ids=lambda m: f"M={m}")
def test_bench_members(benchmark, members):
    benchmark.group = f"gaussian M={members} (G x M = {MEMBER_SWEEP_SLOTS:,})"
    _bench_jaxfuse(benchmark, ("members", members), "gaussian", MEMBER_SWEEP_SLOTS // members, members)


@pytest.mark.parametrize("members", MEMBER_SWEEP, ids=lambda m: f"M={m}")
def test_bench_members_numpy(benchmark, members):
    benchmark.group = f"gaussian M={members} (G x M = {MEMBER_SWEEP_SLOTS:,})"
    _bench_numpy(benchmark, ("members", members), "gaussian", MEMBER_SWEEP_SLOTS // members, members)


# ----------------------------------------------------------------------- ragged sizes


@pytest.fixture(scope="module")
def ragged_packed():
    """Zipf-sized groups as flat members, and packed by ``pack_groups`` into one power-of-two bucket."""
    ragged = _data.skewed_ragged(RAGGED_GROUPS, RAGGED_MAX_SIZE)
    return ragged, jaxfuse.pack_groups(ragged.values, ragged.weights, lengths=ragged.lengths)


def _fuse_packed(packed):
    fused = jaxfuse.fuse_groups(packed.values, packed.weights, packed.mask, temperature=_data.TEMPERATURE)
    return jaxfuse.unpack_groups(fused.location, packed)


def _ragged_info(ragged, packed) -> dict:
    return {"dtype": "float32", "groups": RAGGED_GROUPS, "members": int(ragged.lengths.sum()),
            "size_median_mean_max": [float(np.median(ragged.lengths)), float(ragged.lengths.mean()),
                                     int(ragged.lengths.max())],
            "padded_shape": list(packed.values.shape), "slots_used": float(packed.mask.mean())}


def test_bench_ragged_pack(benchmark, ragged_packed):
    """pack_groups alone: flat members to one padded bucket (both the fusion and the baseline need it)."""
    ragged, packed = ragged_packed
    benchmark.group = f"ragged Zipf sizes, {RAGGED_GROUPS:,} groups"
    _data.run_benchmark(benchmark, lambda: jaxfuse.pack_groups(ragged.values, ragged.weights, lengths=ragged.lengths))
    _data.record(benchmark, **_ragged_info(ragged, packed))


def test_bench_ragged(benchmark, ragged_packed):
    """fuse_groups + unpack_groups on the packed numpy arrays (numpy in, numpy out)."""
    ragged, packed = ragged_packed
    benchmark.group = f"ragged Zipf sizes, {RAGGED_GROUPS:,} groups"
    _data.run_benchmark(benchmark, lambda: _fuse_packed(packed))
    _medians[("ragged",)] = _data.median_seconds(benchmark)
    _data.record(benchmark, **_ragged_info(ragged, packed), timed="fuse_groups + unpack_groups, numpy in and out")


def test_bench_ragged_numpy(benchmark, ragged_packed):
    """The vectorized numpy baseline on the same padded arrays."""
    ragged, packed = ragged_packed
    benchmark.group = f"ragged Zipf sizes, {RAGGED_GROUPS:,} groups"
    arrays = (packed.values, packed.weights, packed.mask)
    reference = _data.run_benchmark(benchmark, lambda: numpy_closed_form("gaussian", *arrays),
                                    budget_seconds=4.0, min_rounds=1)
    np.testing.assert_allclose(_fuse_packed(packed), reference[: packed.num_groups], rtol=1e-5, atol=1e-3)
    _data.record(benchmark, **_ragged_info(ragged, packed),
                 speedup=_data.ratio(_data.median_seconds(benchmark), _medians.get(("ragged",))),
                 speedup_of="numpy median / jaxfuse (fuse + unpack) median, same run")
