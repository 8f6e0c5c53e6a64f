"""proposals_from_cas against plain loops written from the SPEC and from the published code."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfuse import ResultCode
from jaxfuse._core.rows import running_count
from jaxfuse._detection.cas_proposals import CasProposals, max_runs_per_threshold, proposals_from_cas

PUBLISHED_THRESHOLDS = np.arange(0.001, 0.04, 0.002)


# ---------------------------------------------------------------- references
def spec_reference(cas, thresholds, length=None, *, min_length=2, scale=0.0785, power=0.9, rounding="ceil"):
    """Proposals of one sequence, one run at a time, as the SPEC words them.

    Returns a list of (threshold_index, start, end_exclusive, inner, outer, contrast).
    """
    video = np.asarray(cas)[: len(cas) if length is None else length]
    found = []
    for threshold_index, level in enumerate(np.asarray(thresholds, np.float64)):
        above = video > level  # NumPy compares a float32 CAS with a float64 level in float64
        first = 0
        while first < len(video):
            if not above[first]:
                first += 1
                continue
            last = first
            while last + 1 < len(video) and above[last + 1]:
                last += 1
            run_length = last - first + 1
            if run_length >= min_length:
                margin = scale * run_length**power
                width = math.ceil(margin) if rounding == "ceil" else math.floor(margin)
                inner = video[first : last + 1].mean()
                around = np.concatenate(
                    [video[max(0, first - width) : first], video[last + 1 : min(len(video), last + 1 + width)]]
                )
                outer = around.mean() if around.size else 0.0
                found.append((threshold_index, first, last + 1, inner, outer, inner - outer))
            first = last + 1
    return found


def published_reference(cas, thresholds, length=None, *, min_length=2, scale=0.0785, power=0.9):
    """The published GauFuse_WSTAL loop (generate_segs_eval), restated: its e is one past the run."""
    video = np.asarray(cas)[: len(cas) if length is None else length]
    found = []
    for threshold_index, level in enumerate(np.asarray(thresholds, np.float64)):
        flags = np.concatenate([[0.0], (video > level).astype(np.float64), [0.0]])
        steps = np.diff(flags)
        starts, ends = np.flatnonzero(steps == 1), np.flatnonzero(steps == -1)
        for s, e in zip(starts.tolist(), ends.tolist()):
            run_length = e - s
            if run_length >= min_length:
                inner = np.mean(video[s : e + 1])
                margin = scale * (run_length**power)
                outer_s = max(0, int(s - margin))
                outer_e = min(int(len(video) - 1), int(e + margin + 1))
                around = list(range(outer_s, s)) + list(range(e + 1, outer_e))
                outer = np.mean(video[around]) if around else 0.0
                found.append((threshold_index, s, e + 1, inner, outer, inner - outer))
    return found


def as_rows(result: CasProposals, index=()):
    """The valid proposals of one sequence of ``result`` as reference-style tuples."""
    count = int(np.asarray(result.count)[index])
    segments = np.asarray(result.segments)[index]
    return [
        (
            int(np.asarray(result.threshold_index)[index][k]),
            int(segments[k, 0]),
            int(segments[k, 1]),
            float(np.asarray(result.inner)[index][k]),
            float(np.asarray(result.outer)[index][k]),
            float(np.asarray(result.contrast)[index][k]),
        )
        for k in range(count)
    ]


def assert_same_proposals(result, expected, index=(), atol=1e-6):
    got = as_rows(result, index)
    assert [row[:3] for row in got] == [row[:3] for row in expected], f"at {index}"
    if expected:
        got_scores = np.array([row[3:] for row in got])
        expected_scores = np.array([row[3:] for row in expected], np.float64)
        np.testing.assert_allclose(got_scores, expected_scores, rtol=0, atol=atol)
    valid = np.asarray(result.valid)[index]
    assert valid.sum() == len(expected) and valid[: len(expected)].all()
    assert int(np.asarray(result.num_found)[index]) == len(expected)


def smooth_cas(rng, shape, scale=0.05, dtype=np.float32):
    """Random CAS in [0, scale) with runs of many lengths: smoothed noise through a sigmoid."""
    noise = rng.normal(size=shape)
    kernel = np.ones(5) / 5
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), -1, noise)
    return (scale / (1 + np.exp(-3 * smooth))).astype(dtype)


# ---------------------------------------------------------------- agreement with the loops
def test_random_batch_matches_spec_loop_float32():
    rng = np.random.default_rng(0)
    cas = smooth_cas(rng, (4, 6, 80))
    length = rng.integers(0, 81, size=(4, 6))
    length[0, :3] = 80
    result = proposals_from_cas(cas, PUBLISHED_THRESHOLDS, length=length)
    assert result.segments.shape == (4, 6, 20 * 27, 2)
    for index in np.ndindex(4, 6):
        expected = spec_reference(cas[index], PUBLISHED_THRESHOLDS, length[index])
        assert_same_proposals(result, expected, index)


def test_plateaus_ties_and_edges_match_spec_loop():
    """CAS values on the level grid: plateaus, values equal to a level (not above it), runs at both ends."""
    rng = np.random.default_rng(7)
    grid = np.concatenate([[0.0], PUBLISHED_THRESHOLDS, [0.05]]).astype(np.float32)
    # Piecewise-constant steps of random lengths, so runs start and end on many levels at once.
    steps = rng.integers(0, grid.size, size=(4, 6, 80))
    hold = rng.random((4, 6, 80)) < 0.6
    for position in range(1, 80):
        steps[..., position] = np.where(hold[..., position], steps[..., position - 1], steps[..., position])
    cas = grid[steps]
    cas[0, 0] = grid[-1]  # one run over the whole video at every level
    cas[0, 1, ::2] = grid[-1]  # single snippets: no run of two anywhere
    length = rng.integers(0, 81, size=(4, 6))
    length[0, :3] = 80
    result = proposals_from_cas(cas, PUBLISHED_THRESHOLDS, length=length)
    for index in np.ndindex(4, 6):
        expected = spec_reference(cas[index], PUBLISHED_THRESHOLDS, length[index])
        assert_same_proposals(result, expected, index)


def test_levels_in_any_order_and_repeated_levels_match_spec_loop():
    """Runs are found from level ranks: shuffled and repeated levels must still give the loop's proposals, in order."""
    rng = np.random.default_rng(8)
    cas = smooth_cas(rng, (4, 6, 80))
    levels = PUBLISHED_THRESHOLDS.copy()
    levels[5:8] = levels[4]  # repeated levels
    levels = levels[rng.permutation(20)]
    length = rng.integers(0, 81, size=(4, 6))
    result = proposals_from_cas(cas, levels, length=length)
    for index in np.ndindex(4, 6):
        assert_same_proposals(result, spec_reference(cas[index], levels, length[index]), index)


@pytest.mark.parametrize("size", [1, 15, 16, 17, 255, 256, 257, 3420, 4097])
def test_running_count_equals_cumsum(size):
    """The blocked running count behind the compaction, at sizes that end mid-block and recurse."""
    flags = np.random.default_rng(size).random((3, size)) < 0.4
    flags[1] = True  # the largest counts
    np.testing.assert_array_equal(np.asarray(running_count(jnp.asarray(flags))), np.cumsum(flags, axis=-1))


@pytest.mark.parametrize(
    ("min_length", "rounding", "scale", "power"),
    [(1, "floor", 0.0785, 0.9), (3, "ceil", 0.25, 1.0), (12, "floor", 0.5, 0.5)],
)
def test_options_match_spec_loop(min_length, rounding, scale, power):
    rng = np.random.default_rng(min_length)
    # Long, slowly varying runs so that floor-rounded margins are non-empty too.
    cas = smooth_cas(rng, (3, 200)) + np.linspace(0, 0.01, 200, dtype=np.float32)
    thresholds = np.linspace(0.005, 0.05, 7)
    result = proposals_from_cas(
        cas, thresholds, min_length=min_length, margin_rounding=rounding, margin_scale=scale, margin_power=power
    )
    for index in np.ndindex(3):
        expected = spec_reference(
            cas[index], thresholds, min_length=min_length, scale=scale, power=power, rounding=rounding
        )
        assert_same_proposals(result, expected, index)


def test_published_convention_matches_published_loop():
    rng = np.random.default_rng(1)
    cas = smooth_cas(rng, (5, 300))
    length = np.array([300, 299, 120, 3, 1])
    result = proposals_from_cas(cas, PUBLISHED_THRESHOLDS, length=length, convention="published")
    for index in np.ndindex(5):
        expected = published_reference(cas[index], PUBLISHED_THRESHOLDS, length[index])
        assert expected or index[0] >= 3
        assert_same_proposals(result, expected, index)


def test_published_and_spec_conventions_differ_by_the_off_by_one():
    cas = np.array([0.0, 0.0, 0.3, 0.5, 0.4, 0.1, 0.0, 0.0], np.float32)
    spec = proposals_from_cas(cas, [0.2])
    published = proposals_from_cas(cas, [0.2], convention="published")
    assert as_rows(spec)[0][1:3] == (2, 5)
    assert as_rows(published)[0][1:3] == (2, 6)
    assert spec.inner[0] == pytest.approx(0.4)
    assert published.inner[0] == pytest.approx(0.325)  # snippet 5 (0.1) counted as inside


def test_float64_matches_to_1e_12():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        cas = smooth_cas(rng, (3, 2, 150), dtype=np.float64)
        length = np.array([[150, 140], [77, 150], [2, 0]])
        result = proposals_from_cas(cas, PUBLISHED_THRESHOLDS, length=length)
        assert result.inner.dtype == np.float64
        for index in np.ndindex(3, 2):
            expected = spec_reference(cas[index], PUBLISHED_THRESHOLDS, length[index])
            assert_same_proposals(result, expected, index, atol=1e-12)
        published = proposals_from_cas(cas, PUBLISHED_THRESHOLDS, length=length, convention="published")
        for index in np.ndindex(3, 2):
            expected = published_reference(cas[index], PUBLISHED_THRESHOLDS, length[index])
            assert_same_proposals(published, expected, index, atol=1e-12)


def test_short_run_far_into_long_float32_sequence_keeps_float32_accuracy():
    # A plain float32 cumsum loses ~1e-5 here; float-float prefix sums do not.
    rng = np.random.default_rng(3)
    cas = (0.9 + 0.1 * rng.random(5000)).astype(np.float32)
    cas[4990:4992] = [1.5, 1.25]
    result = proposals_from_cas(cas, [1.1])
    assert as_rows(result)[0][1:3] == (4990, 4992)
    assert float(result.inner[0]) == pytest.approx(1.375, abs=2e-7)
    expected_outer = np.concatenate([cas[4989:4990], cas[4992:4993]]).astype(np.float64).mean()
    assert float(result.outer[0]) == pytest.approx(expected_outer, abs=2e-7)


# ---------------------------------------------------------------- edge cases
def test_runs_touching_both_ends_of_the_video():
    cas = np.array([0.5, 0.6, 0.0, 0.0, 0.7, 0.8, 0.9], np.float32)
    result = proposals_from_cas(cas, [0.1])
    assert [row[1:3] for row in as_rows(result)] == [(0, 2), (4, 7)]
    # Each margin is clipped to the video: only the inner side remains.
    assert result.outer.tolist()[:2] == [0.0, 0.0]
    assert_same_proposals(result, spec_reference(cas, [0.1]))
    published = proposals_from_cas(cas, [0.1], convention="published")
    assert_same_proposals(published, published_reference(cas, [0.1]))


def test_constant_sequences():
    cas = np.full((2, 9), 0.02, np.float32)
    result = proposals_from_cas(cas, [0.01, 0.02, 0.03])
    # Above 0.01 the whole video is one run with empty margins; 0.02 is not above 0.02.
    assert result.count.tolist() == [1, 1]
    assert as_rows(result, (0,)) == [(0, 0, 9, pytest.approx(0.02), 0.0, pytest.approx(0.02))]
    below = proposals_from_cas(np.zeros((2, 9), np.float32), [0.0])
    assert below.count.tolist() == [0, 0]


@pytest.mark.parametrize("num_snippets", [1, 2])
def test_fewer_than_three_snippets(num_snippets):
    cas = np.full(num_snippets, 0.5, np.float32)
    result = proposals_from_cas(cas, [0.1, 0.9])
    assert result.inner.shape == (2 * max_runs_per_threshold(num_snippets, 2),)
    assert_same_proposals(result, spec_reference(cas, [0.1, 0.9]))
    single = proposals_from_cas(cas, [0.1], min_length=1)
    assert as_rows(single) == [(0, 0, num_snippets, 0.5, 0.0, 0.5)]


def test_thresholds_above_every_value():
    cas = smooth_cas(np.random.default_rng(4), (3, 40))
    result = proposals_from_cas(cas, [1.0, 2.0])
    assert not np.asarray(result.valid).any()
    assert result.count.tolist() == [0, 0, 0] and result.num_found.tolist() == [0, 0, 0]
    assert (result.threshold_index == -1).all() and (result.segments == 0).all()


def test_length_shorter_than_padding_ignores_the_padding():
    cas = np.array([0.0, 0.5, 0.5, 0.0, 0.9, 0.9, 0.9, 0.9], np.float32)
    cut = proposals_from_cas(cas, [0.1], length=5)
    # The run at 4.. is outside the video, and snippet 4 is not in the first run's margin.
    assert as_rows(cut) == [(0, 1, 3, 0.5, 0.0, 0.5)]
    cas_with_nan = cas.copy()
    cas_with_nan[5:] = np.nan
    assert as_rows(proposals_from_cas(cas_with_nan, [0.1], length=5)) == as_rows(cut)


def test_length_zero_and_default_length():
    cas = np.full((2, 6), 0.5, np.float32)
    result = proposals_from_cas(cas, [0.1], length=np.array([0, 6]))
    assert result.count.tolist() == [0, 1]
    assert as_rows(proposals_from_cas(cas, [0.1]), (1,)) == as_rows(result, (1,))


def test_empty_batch():
    result = proposals_from_cas(np.zeros((0, 10), np.float32), [0.1, 0.2])
    assert result.inner.shape == (0, 2 * 3) and result.count.shape == (0,)


def test_classes_last_batch_of_videos():
    rng = np.random.default_rng(5)
    cas = smooth_cas(rng, (3, 3, 64))  # [video, class, L]
    length = np.array([64, 50, 9])
    videos_first = proposals_from_cas(
        np.moveaxis(cas, -1, -2), PUBLISHED_THRESHOLDS, classes_last=True, length=length
    )
    assert videos_first.inner.shape[:2] == (3, 3)
    for video, klass in np.ndindex(3, 3):
        expected = spec_reference(cas[video, klass], PUBLISHED_THRESHOLDS, length[video])
        assert_same_proposals(videos_first, expected, (video, klass))


def test_strict_comparison_and_float64_levels_against_float32_cas():
    # 0.001 is not a float32; the float32 nearest to it lies above it, so it is above the level.
    nearest = np.float32(0.001)
    assert float(nearest) > 0.001
    cas = np.array([nearest, nearest, 0.0, 0.25, 0.25], np.float32)
    result = proposals_from_cas(cas, np.array([0.001, 0.25]))
    assert [row[:3] for row in as_rows(result)] == [(0, 0, 2), (0, 3, 5)]  # nothing is above 0.25 itself
    assert_same_proposals(result, spec_reference(cas, np.array([0.001, 0.25])))
    # A float32 level equal to the CAS value is not exceeded by it.
    assert int(proposals_from_cas(cas, np.array([nearest, 0.3], np.float32)).count) == 1


def test_static_bound_is_reached_and_never_truncates():
    pattern = np.array([0.5, 0.5, 0.0] * 4 + [0.5, 0.5], np.float32)  # XX.XX.XX.XX.XX
    result = proposals_from_cas(pattern, [0.1])
    assert result.inner.shape == (max_runs_per_threshold(14, 2),) == (5,)
    assert int(result.count) == int(result.num_found) == 5 and not result.truncated


def test_max_proposals_keeps_the_first_in_order_and_reports_truncation():
    rng = np.random.default_rng(6)
    cas = smooth_cas(rng, (2, 30))  # the shape of the tests below: `full` shares their program
    full = proposals_from_cas(cas, PUBLISHED_THRESHOLDS)
    short = proposals_from_cas(cas, PUBLISHED_THRESHOLDS, max_proposals=7)
    assert short.inner.shape == (2, 7)
    assert (short.num_found == full.num_found).all() and (full.num_found > 7).all()
    assert short.truncated.all() and (short.count == 7).all()
    np.testing.assert_array_equal(short.segments, full.segments[:, :7])
    np.testing.assert_array_equal(short.contrast, full.contrast[:, :7])
    # Order: threshold index, then start.
    keys = full.threshold_index[0, : full.count[0]] * 1000 + full.segments[0, : full.count[0], 0]
    assert (np.diff(keys) > 0).all()


def test_numpy_in_numpy_out_and_jax_in_jax_out():
    cas = smooth_cas(np.random.default_rng(7), (2, 30))
    from_numpy = proposals_from_cas(cas, PUBLISHED_THRESHOLDS)
    from_jax = proposals_from_cas(jnp.asarray(cas), PUBLISHED_THRESHOLDS)
    assert isinstance(from_numpy, CasProposals) and isinstance(from_jax, CasProposals)
    assert all(type(field) is np.ndarray for field in from_numpy)
    assert all(isinstance(field, jax.Array) for field in from_jax)
    for a, b in zip(from_numpy, from_jax):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_inside_a_callers_jit():
    cas = smooth_cas(np.random.default_rng(8), (2, 30))

    @jax.jit
    def best_contrast(cas, length):
        found = proposals_from_cas(cas, PUBLISHED_THRESHOLDS, length=length)
        return jnp.max(jnp.where(found.valid, found.contrast, -jnp.inf), axis=-1)

    length = np.array([30, 20])
    eager = proposals_from_cas(cas, PUBLISHED_THRESHOLDS, length=length)
    expected = np.where(eager.valid, eager.contrast, -np.inf).max(-1)
    np.testing.assert_allclose(best_contrast(jnp.asarray(cas), jnp.asarray(length)), expected, rtol=0, atol=0)


def test_nonfinite_cas_inside_a_callers_jit_gets_its_code_and_no_proposals():
    """Traced CAS cannot raise: a sequence with a NaN or inf inside its video gets NONFINITE_INPUT and zeros."""
    cas = smooth_cas(np.random.default_rng(9), (4, 30))
    length = np.array([30, 20, 30, 20])
    cas[1, 4] = np.nan  # inside the video
    cas[2, 29] = np.inf  # the last real snippet
    cas[3, 25:] = np.nan  # padding only: ignored
    found = jax.jit(lambda c, n: proposals_from_cas(c, PUBLISHED_THRESHOLDS, length=n))(jnp.asarray(cas), length)
    ok, bad = ResultCode.SUCCESSFUL, ResultCode.NONFINITE_INPUT
    assert np.asarray(found.result).tolist() == [ok, bad, bad, ok]
    for name, field in zip(found._fields, found):
        padding = -1 if name == "threshold_index" else 0
        assert name == "result" or (np.asarray(field)[1:3] == padding).all(), name
    # The sound sequences are exactly as an eager call computes them alone.
    alone = proposals_from_cas(cas[[0, 3]], PUBLISHED_THRESHOLDS, length=length[[0, 3]])
    for name, field in zip(found._fields, found):
        expected = np.zeros_like(getattr(alone, name)) if name == "result" else getattr(alone, name)
        np.testing.assert_array_equal(np.asarray(field)[[0, 3]], expected, err_msg=name)
    assert (alone.count > 0).all()
    # A NaN level, traced, is an invalid option for every sequence.
    levels = jnp.asarray(np.r_[PUBLISHED_THRESHOLDS[:19], np.nan])
    found = jax.jit(lambda c, t: proposals_from_cas(c, t))(jnp.asarray(cas[[0, 3]]), levels)
    assert (np.asarray(found.result) == ResultCode.INVALID_OPTION).all() and not np.asarray(found.valid).any()


def test_half_precision_is_computed_in_float32():
    cas = np.array([0.0, 0.5, 0.25, 0.0], np.float16)
    result = proposals_from_cas(cas, [0.1])
    assert result.inner.dtype == np.float32 and float(result.inner[0]) == 0.375


# ---------------------------------------------------------------- errors before tracing
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        (dict(cas=np.ones(5, np.int32)), TypeError, "cas"),
        (dict(cas=np.float32(1.0)), ValueError, "cas"),
        (dict(cas=np.zeros((3, 0), np.float32)), ValueError, "cas"),
        (dict(cas=np.array([0.1, np.nan, 0.2], np.float32)), ValueError, "cas"),
        (dict(cas=np.array([0.1, np.inf, 0.2], np.float32), length=3), ValueError, "cas"),
        (dict(thresholds=np.ones((2, 2))), ValueError, "thresholds"),
        (dict(thresholds=0.1), ValueError, "thresholds"),
        (dict(thresholds=np.array([])), ValueError, "thresholds"),
        (dict(thresholds=np.array([0.1, np.nan])), ValueError, "thresholds"),
        (dict(thresholds=np.array(["a"])), TypeError, "thresholds"),
        (dict(min_length=0), ValueError, "min_length"),
        (dict(min_length=1.5), ValueError, "min_length"),
        (dict(length=4), ValueError, "length"),
        (dict(length=-1), ValueError, "length"),
        (dict(length=np.array([1.0])), TypeError, "length"),
        (dict(length=np.array([1, 2])), ValueError, "length"),
        (dict(max_proposals=0), ValueError, "max_proposals"),
        (dict(cas=np.zeros((3, 4), np.float32), max_proposals=2**30), ValueError, "max_proposals"),
        (dict(margin_scale=-1.0), ValueError, "margin_scale"),
        (dict(margin_power=float("nan")), ValueError, "margin_power"),
        (dict(margin_rounding="round"), ValueError, "margin_rounding"),
        (dict(convention="paper"), ValueError, "convention"),
        (dict(convention="published", margin_rounding="ceil"), ValueError, "margin_rounding"),
        (dict(cas=np.ones((3, 2), np.float32), classes_last=True, length=np.array([1, 2])), ValueError, "length"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, name):
    arguments = dict(cas=np.array([0.1, 0.3, 0.2], np.float32), thresholds=[0.1])
    arguments.update(kwargs)
    cas, thresholds = arguments.pop("cas"), arguments.pop("thresholds")
    with pytest.raises(error, match=f"`{name}`"):
        proposals_from_cas(cas, thresholds, **arguments)
