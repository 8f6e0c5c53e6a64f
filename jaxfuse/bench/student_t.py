"""The *student_t* section: the Newton kernel against a per-group scipy loop and vectorized numpy EM."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import jaxfuse
from jaxfuse._core.result_codes import ResultCode
from jaxfuse.bench.baselines import ScipyStudentT, scipy_student_t_loop
from jaxfuse.bench.data import closed_form_groups
from jaxfuse.bench.section import Section, format_ratio, format_seconds
from jaxfuse.bench.sizes import SCIPY_WARMUP_GROUPS, STUDENT_T_DF, TEMPERATURE, Sizes
from jaxfuse.bench.timing import device_arrays, first_call_seconds, time_call
from jaxfuse.tools.synthetic import SyntheticGroups, numpy_fuse


def scipy_agreement(fused, reference: ScipyStudentT, count: int) -> dict[str, Any]:
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
    values, weights, mask = device_arrays(*data)

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
    section.rows.append(["jaxfuse (device arrays)", f"{groups:,}", format_seconds(jax_time.median),
                         format_seconds(jax_time.median / groups), format_seconds(jax_time.median), "1x"])
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
        f"{steps.max()}; result codes {code_counts}; first call (compile + run) {format_seconds(compile_seconds)}.")
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
        agreement = scipy_agreement(fused, reference, count)
        section.rows.append(["scipy.optimize loop, per group", f"{count:,}", format_seconds(seconds),
                             format_seconds(seconds / count), f"{format_seconds(scaled)} (scaled)", format_ratio(scaled / jax_seconds)])
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
    section.rows.append(["numpy EM, vectorized", f"{count:,}", format_seconds(seconds), format_seconds(seconds / count),
                         f"{format_seconds(scaled)} (scaled)", format_ratio(scaled / jax_seconds)])
    section.data.update(em_groups=count, em_seconds=seconds, em_scaled_seconds=scaled, em_speedup=scaled / jax_seconds)
