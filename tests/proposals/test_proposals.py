"""fuse_proposals against a plain numpy loop of the published rule (and of Soft-NMS)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxfuse
from jaxfuse import ResultCode
from jaxfuse._proposals.fuse_proposals import METHODS, FusedProposals, fuse_proposals
from jaxfuse._proposals.proposal_lists import fuse_proposal_lists, pack_proposals, unpack_proposals

CONVENTIONS = [("candidate", True), ("candidate", False), ("iou", True), ("iou", False)]
CONVENTION_IDS = ["candidate-discrete", "candidate-continuous", "iou-discrete", "iou-continuous"]
REFERENCE_METHODS = ["gaussian", "uniform", "exponential", "laplace", "nms"]
# Most tests use batches of this shape, so that they share compiled kernels.
ITEMS, SIZE = 6, 40


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def float_dtype(request):
    """float64 runs with x64 enabled for the test's duration only."""
    if request.param == np.float64:
        with jax.enable_x64(True):
            yield request.param
    else:
        yield request.param


def rtol(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-10


# ---------------------------------------------------------------- numpy references


def overlap_with(leader, segments, overlap, discrete):
    """The published overlap, in the inputs' dtype so threshold decisions match bit for bit."""
    offset = 1 if discrete else 0
    starts, ends = segments[:, 0], segments[:, 1]
    intersection = np.maximum(0, np.minimum(leader[1], ends) - np.maximum(leader[0], starts) + offset)
    length = ends - starts + offset
    if overlap == "iou":
        length = length + (leader[1] - leader[0] + offset) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection / length  # 0 / 0 is NaN: never above the threshold


def weighted_median(values, g):
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(g[order])
    return values[order][np.searchsorted(cumulative, cumulative[-1] / 2)]


def reference_fuse(segments, scores, weights, *, method, temperature, threshold=0.25, overlap="candidate", discrete=False):
    """The published post-processing on one item: a list of (leader, members, start, end, score, spread)."""
    remaining = np.argsort(-scores, kind="stable")
    fused = []
    while remaining.size:
        leader = remaining[0]
        absorbed = overlap_with(segments[leader], segments[remaining], overlap, discrete) > threshold
        absorbed[0] = True
        members = remaining[absorbed]
        remaining = remaining[~absorbed]
        x = segments[members].astype(np.float64)
        q = scores[members].astype(np.float64)
        logits = weights[members].astype(np.float64) / temperature
        g = np.exp(logits - logits.max())
        g /= g.sum()
        score = g @ q
        if method == "nms":
            location, spread, score = x[0], np.zeros(2), q[0]
        elif method == "gaussian":
            location = g @ x
            spread = np.sqrt(g @ (x - location) ** 2)
        elif method == "exponential":
            location = g @ x
            spread = g @ (x - x.min(0))
        elif method == "uniform":
            location, spread = (x.min(0) + x.max(0)) / 2, (x.max(0) - x.min(0)) / 2
        elif method == "laplace":
            location = np.array([weighted_median(x[:, k], g) for k in range(2)])
            spread = g @ np.abs(x - location)
        else:
            raise AssertionError(method)
        fused.append((leader, members, location[0], location[1], score, spread))
    return fused


def reference_soft_nms(segments, scores, *, decay, sigma, floor, threshold, overlap, discrete):
    """Sequential Soft-NMS on one item: a list of (input index, score when kept)."""
    current = np.where(scores >= floor, scores.astype(np.float64), -np.inf)
    kept = []
    while np.isfinite(current).any():
        best = int(np.argmax(current))  # first index on ties
        kept.append((best, current[best]))
        current[best] = -np.inf
        overlaps = np.nan_to_num(overlap_with(segments[best], segments, overlap, discrete).astype(np.float64))
        if decay == "linear":
            factor = np.where(overlaps > threshold, 1 - overlaps, 1)
        else:
            factor = np.exp(-(overlaps**2) / sigma)
        with np.errstate(invalid="ignore"):  # -inf * 0 where already removed
            current = np.where(np.isfinite(current), current * factor, -np.inf)
        current[current < floor] = -np.inf
    return kept


def random_item(rng, size, dtype=np.float32, span=300.0):
    """Clustered segments, distinct scores, weights in [0, 1]."""
    clusters = max(1, size // 6)
    centres = rng.uniform(0, span, clusters)[rng.integers(0, clusters, size)]
    lengths = rng.exponential(15, size) * (rng.uniform(size=size) > 0.05)  # some zero-length
    starts = centres + rng.normal(0, 5, size) - lengths / 2
    segments = np.stack([starts, starts + lengths], axis=-1).astype(dtype)
    scores = ((rng.permutation(size) + rng.uniform(0, 0.5, size)) / max(size, 1)).astype(dtype)
    weights = rng.uniform(0, 1, size).astype(dtype)
    return segments, scores, weights


def random_batch(rng, items, size, dtype):
    batch = [random_item(rng, size, dtype) for _ in range(items)]
    segments, scores, weights = (np.stack(parts) for parts in zip(*batch))
    valid = np.arange(size)[None, :] < rng.integers(0, size + 1, items)[:, None]
    valid[0] = True
    return segments, scores, weights, valid


def assert_item_matches(fused, item, expected, dtype, *, check_spread=True):
    count = int(np.asarray(fused.count)[item])
    assert count == len(expected)
    tolerance = rtol(dtype)
    segments = np.asarray(fused.segments)[item]
    scale = max(1.0, np.abs(segments).max())
    for j, (leader, members, start, end, score, spread) in enumerate(expected):
        np.testing.assert_allclose(segments[j], [start, end], rtol=tolerance, atol=tolerance * scale)
        np.testing.assert_allclose(np.asarray(fused.scores)[item][j], score, rtol=tolerance, atol=tolerance)
        assert np.asarray(fused.leader)[item][j] == leader
        if check_spread:
            np.testing.assert_allclose(np.asarray(fused.spread)[item][j], spread, rtol=20 * tolerance, atol=tolerance * scale)
    assert not np.asarray(fused.valid)[item][count:].any()
    assert (np.asarray(fused.segments)[item][count:] == 0).all()
    assert (np.asarray(fused.result)[item][count:] == ResultCode.EMPTY_GROUP).all()
    assert (np.asarray(fused.result)[item][:count] == ResultCode.SUCCESSFUL).all()


# ---------------------------------------------------------------- against the loop


def fusion_cases():
    """Every (method, convention) in float32; float64 (a separate program each) for every method at
    the default convention and every convention for gaussian: the float64 arithmetic is per method,
    and the conventions' float64 threshold decisions are checked bit for bit in test_grouping.py."""
    cases = []
    for method in REFERENCE_METHODS:
        for (overlap, discrete), name in zip(CONVENTIONS, CONVENTION_IDS):
            cases.append(pytest.param(method, overlap, discrete, np.float32, id=f"{method}-{name}-float32"))
            if method == "gaussian" or (overlap, discrete) == ("candidate", False):
                cases.append(pytest.param(method, overlap, discrete, np.float64, id=f"{method}-{name}-float64"))
    return cases


@pytest.mark.parametrize("method,overlap,discrete,float_dtype", fusion_cases())
def test_fusion_matches_published_loop(method, overlap, discrete, float_dtype):
    with jax.enable_x64(float_dtype == np.float64):
        check_fusion_matches_published_loop(method, overlap, discrete, float_dtype)


def check_fusion_matches_published_loop(method, overlap, discrete, float_dtype):
    rng = np.random.default_rng([len(method), len(overlap), discrete])
    segments, scores, weights, valid = random_batch(rng, ITEMS, SIZE, float_dtype)
    fused = fuse_proposals(
        segments, scores, weights, valid, method=method, temperature=0.2, overlap=overlap, discrete=discrete
    )
    assert fused.segments.dtype == float_dtype and isinstance(fused.segments, np.ndarray)
    for item in range(segments.shape[0]):
        real = np.flatnonzero(valid[item])
        expected = reference_fuse(
            segments[item][real], scores[item][real], weights[item][real],
            method=method, temperature=0.2, overlap=overlap, discrete=discrete,
        )
        expected = [(real[leader], real[members], *rest) for leader, members, *rest in expected]
        assert_item_matches(fused, item, expected, float_dtype)
        group = np.full(segments.shape[1], -1)
        for j, (_, members, *_) in enumerate(expected):
            group[members] = j
        np.testing.assert_array_equal(fused.group[item], group)


def test_student_t_equals_fuse_groups_on_the_reference_groups():
    rng = np.random.default_rng(5)
    segments, scores, weights = random_item(rng, SIZE)
    fused = fuse_proposals(segments, scores, weights, method="student_t", temperature=0.5, df=4.0)
    expected = reference_fuse(segments, scores, weights, method="gaussian", temperature=0.5)
    count = len(expected)
    # The same bucketed padded shape as fuse_proposals uses, so the solver compiles once.
    bucket = lambda n: 1 << (n - 1).bit_length()  # noqa: E731
    shape = (bucket(count), bucket(max(len(members) for _, members, *_ in expected)))
    values, group_weights, mask = np.zeros(shape + (2,), np.float32), np.zeros(shape, np.float32), np.zeros(shape, bool)
    for j, (_, members, *_) in enumerate(expected):
        members = np.sort(members)
        values[j, : len(members)] = segments[members]
        group_weights[j, : len(members)] = weights[members]
        mask[j, : len(members)] = True
    direct = jaxfuse.fuse_groups(values, group_weights, mask, template="student_t", temperature=0.5, df=4.0)
    assert int(fused.count) == count
    np.testing.assert_allclose(fused.segments[:count], direct.location[:count], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fused.spread[:count], direct.parameters.scale[:count], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(fused.parameters.df[:count], direct.parameters.df[:count])
    np.testing.assert_array_equal(fused.result[:count], direct.result[:count])
    np.testing.assert_allclose(fused.scores[:count], [e[4] for e in expected], rtol=1e-5)


def test_nms_returns_exactly_the_leaders():
    rng = np.random.default_rng(2)
    segments, scores, weights, valid = random_batch(rng, ITEMS, SIZE, np.float32)
    fused = fuse_proposals(segments, scores, weights, valid, method="nms", overlap="iou", discrete=False)
    for item in range(ITEMS):
        count = int(fused.count[item])
        leaders = fused.leader[item][:count]
        np.testing.assert_array_equal(fused.segments[item][:count], segments[item][leaders])
        np.testing.assert_array_equal(fused.scores[item][:count], scores[item][leaders])
        assert (np.diff(fused.scores[item][:count]) < 0).all()


@pytest.mark.parametrize(
    "decay,overlap,discrete,float_dtype",
    [
        pytest.param(decay, overlap, discrete, dtype, id=f"{decay}-{name}-{np.dtype(dtype).name}")
        for decay in ("linear", "gaussian")
        for (overlap, discrete), name in [(("iou", False), "iou"), (("candidate", True), "published")]
        # float64 (its own program) for both decays at one convention: the decay is the float64 arithmetic.
        for dtype in ((np.float32, np.float64) if name == "iou" else (np.float32,))
    ],
)
def test_soft_nms_matches_sequential_loop(decay, overlap, discrete, float_dtype):
    with jax.enable_x64(float_dtype == np.float64):
        check_soft_nms_matches_sequential_loop(decay, overlap, discrete, float_dtype)


def check_soft_nms_matches_sequential_loop(decay, overlap, discrete, float_dtype):
    rng = np.random.default_rng([len(decay), discrete])
    segments, scores, weights, valid = random_batch(rng, ITEMS, SIZE, float_dtype)
    options = dict(decay=decay, sigma=0.3, min_score=0.05)
    fused = fuse_proposals(
        segments, scores, None, valid, method="soft_nms", overlap_threshold=0.4, overlap=overlap, discrete=discrete, **options
    )
    for item in range(ITEMS):
        real = np.flatnonzero(valid[item])
        expected = reference_soft_nms(
            segments[item][real], scores[item][real], decay=decay, sigma=0.3, floor=0.05,
            threshold=0.4, overlap=overlap, discrete=discrete,
        )
        count = int(fused.count[item])
        assert count == len(expected)
        np.testing.assert_array_equal(fused.leader[item][:count], [real[i] for i in [e[0] for e in expected]])
        np.testing.assert_allclose(fused.scores[item][:count], [e[1] for e in expected], rtol=10 * rtol(float_dtype))
        np.testing.assert_array_equal(fused.segments[item][:count], segments[item][fused.leader[item][:count]])
        slots = np.full(segments.shape[1], -1)
        slots[fused.leader[item][:count]] = np.arange(count)
        np.testing.assert_array_equal(fused.group[item], slots)


# ---------------------------------------------------------------- invariances (hypothesis)

SMALL = 12


@st.composite
def items_with_distinct_scores(draw):
    starts = draw(st.lists(st.integers(0, 60), min_size=SMALL, max_size=SMALL))
    lengths = draw(st.lists(st.integers(0, 25), min_size=SMALL, max_size=SMALL))
    scores = draw(st.lists(st.integers(0, 10_000), min_size=SMALL, max_size=SMALL, unique=True))
    weights = draw(st.lists(st.integers(0, 100), min_size=SMALL, max_size=SMALL))
    segments = np.stack([starts, np.add(starts, lengths)], -1).astype(np.float32)
    return segments, np.float32(scores) / 10_000, np.float32(weights) / 100


FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(items_with_distinct_scores(), st.randoms(use_true_random=False), st.sampled_from(["gaussian", "uniform", "nms"]))
def test_input_order_does_not_matter(item, random, method):
    segments, scores, weights = item
    permutation = np.array(random.sample(range(SMALL), SMALL))
    plain = fuse_proposals(segments, scores, weights, method=method, temperature=0.3)
    shuffled = fuse_proposals(
        segments[permutation], scores[permutation], weights[permutation], method=method, temperature=0.3
    )
    assert int(plain.count) == int(shuffled.count)
    np.testing.assert_allclose(shuffled.segments, plain.segments, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(shuffled.scores, plain.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(shuffled.group, plain.group[permutation])
    count = int(plain.count)
    np.testing.assert_array_equal(permutation[shuffled.leader[:count]], plain.leader[:count])


@FAST
@given(items_with_distinct_scores(), st.randoms(use_true_random=False), st.sampled_from(["exponential", "soft_nms"]))
def test_invalid_rows_change_nothing(item, random, method):
    segments, scores, weights = item
    padding = 4
    positions = np.sort(np.array(random.sample(range(SMALL + padding), SMALL)))  # where the real rows go
    garbage = np.float32([[np.nan, -5.0]] * padding)  # reversed and non-finite: ignored where invalid
    padded_segments = np.zeros((SMALL + padding, 2), np.float32)
    padded_scores = np.full(SMALL + padding, np.inf, np.float32)
    padded_weights = np.full(SMALL + padding, np.nan, np.float32)
    valid = np.zeros(SMALL + padding, bool)
    padded_segments[~np.isin(np.arange(SMALL + padding), positions)] = garbage
    padded_segments[positions], padded_scores[positions], padded_weights[positions] = segments, scores, weights
    valid[positions] = True
    plain = fuse_proposals(segments, scores, weights, method=method, temperature=0.3)
    padded = fuse_proposals(padded_segments, padded_scores, padded_weights, valid, method=method, temperature=0.3)
    count = int(plain.count)
    assert int(padded.count) == count
    np.testing.assert_allclose(padded.segments[:count], plain.segments[:count], rtol=1e-6)
    np.testing.assert_allclose(padded.scores[:count], plain.scores[:count], rtol=1e-6)
    np.testing.assert_array_equal(padded.leader[:count], positions[plain.leader[:count]])
    np.testing.assert_array_equal(padded.group[positions], plain.group)
    assert (padded.group[~valid] == -1).all() and not padded.valid[count:].any()


# ---------------------------------------------------------------- edge cases and API


def single(fused):
    """One item's result with a leading item axis."""
    return jax.tree.map(lambda x: np.asarray(x)[None], fused)


def test_tiny_temperature_is_exact_and_finite_in_float32():
    rng = np.random.default_rng(9)
    segments, scores, weights = random_item(rng, SIZE)
    fused = fuse_proposals(segments, scores, weights * 3, temperature=0.0016)
    assert np.isfinite(fused.segments).all() and np.isfinite(fused.scores).all()
    expected = reference_fuse(segments, scores, weights * 3, method="gaussian", temperature=0.0016)
    assert_item_matches(single(fused), 0, expected, np.float32, check_spread=False)


def test_large_leading_dims_and_jax_in_jax_out():
    rng = np.random.default_rng(4)
    segments, scores, weights, valid = random_batch(rng, ITEMS, SIZE, np.float32)
    as_grid = lambda x: jnp.asarray(x.reshape((2, 3) + x.shape[1:]))  # noqa: E731
    fused = fuse_proposals(as_grid(segments), as_grid(scores), as_grid(weights), as_grid(valid), temperature=0.2)
    assert isinstance(fused.segments, jax.Array)
    assert fused.segments.shape == (2, 3, SIZE, 2) and fused.count.shape == (2, 3)
    flat = fuse_proposals(segments, scores, weights, valid, temperature=0.2)
    np.testing.assert_array_equal(np.asarray(fused.segments).reshape(ITEMS, SIZE, 2), flat.segments)


def test_weights_default_to_scores():
    rng = np.random.default_rng(6)
    segments, scores, _ = random_item(rng, SIZE)
    np.testing.assert_array_equal(
        fuse_proposals(segments, scores).segments, fuse_proposals(segments, scores, scores).segments
    )


def test_ten_thousand_proposals_in_one_item():
    rng = np.random.default_rng(12)
    segments, scores, weights = random_item(rng, 10_000, span=30_000.0)
    fused = fuse_proposals(segments, scores, weights, temperature=0.2, overlap="iou", discrete=False)
    expected = reference_fuse(segments, scores, weights, method="gaussian", temperature=0.2, overlap="iou", discrete=False)
    assert_item_matches(single(fused), 0, expected, np.float32)
    kept = fuse_proposals(segments, scores, method="soft_nms", overlap="iou", discrete=False, min_score=0.3)
    assert 0 < int(kept.count) <= 10_000


def test_empty_one_proposal_and_all_invalid_items():
    for method in METHODS:
        empty = fuse_proposals(np.zeros((2, 0, 2), np.float32), np.zeros((2, 0), np.float32), method=method)
        assert empty.segments.shape == (2, 0, 2) and empty.count.tolist() == [0, 0]
        none_valid = fuse_proposals(
            np.zeros((SIZE, 2), np.float32), np.zeros(SIZE, np.float32), valid=np.zeros(SIZE, bool), method=method
        )
        assert int(none_valid.count) == 0 and (none_valid.result == ResultCode.EMPTY_GROUP).all()
    one = fuse_proposals(np.array([[3.0, 7.0]], np.float32), np.array([0.4], np.float32), method="uniform")
    assert one.segments.tolist() == [[3.0, 7.0]] and one.scores.tolist() == [pytest.approx(0.4)]


@pytest.mark.parametrize("method", ["gaussian", "uniform", "exponential", "laplace", "nms", "soft_nms"])
def test_zero_length_segments_fuse_to_themselves(method):
    segments = np.zeros((SIZE, 2), np.float32)
    segments[:2] = 5.0
    scores = np.zeros(SIZE, np.float32)
    scores[:2] = [0.9, 0.8]
    fused = fuse_proposals(segments, scores, valid=np.arange(SIZE) < 2, method=method)
    assert fused.segments[0].tolist() == [5.0, 5.0]


def test_bad_input_is_rejected_with_the_argument_named():
    segments = np.array([[0.0, 1.0], [3.0, 2.0]], np.float32)
    scores = np.array([0.5, 0.6], np.float32)
    with pytest.raises(ValueError, match="`segments`.*start <= end"):
        fuse_proposals(segments, scores)
    with pytest.raises(ValueError, match="`scores` must be finite"):
        fuse_proposals(segments[:1], np.array([np.inf], np.float32))
    with pytest.raises(ValueError, match="`weights` must be finite"):
        fuse_proposals(segments[:1], scores[:1], np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="`weights` must have shape"):
        fuse_proposals(segments[:1], scores[:1], scores)
    with pytest.raises(ValueError, match="`temperature`"):
        fuse_proposals(segments[:1], scores[:1], temperature=0.0)
    with pytest.raises(ValueError, match="`method`"):
        fuse_proposals(segments[:1], scores[:1], method="wbf")
    with pytest.raises(TypeError, match="takes no options"):
        fuse_proposals(segments[:1], scores[:1], method="gaussian", sigma=0.5)
    with pytest.raises(TypeError, match="unknown option"):
        fuse_proposals(segments[:1], scores[:1], method="soft_nms", alpha=0.5)
    with pytest.raises(ValueError, match="`decay`"):
        fuse_proposals(segments[:1], scores[:1], method="soft_nms", decay="cubic")
    with pytest.raises(TypeError, match="unknown option"):
        fuse_proposals(segments[:1], scores[:1], method="student_t", sigma=0.5)


def test_device_input_is_checked_too():
    rng = np.random.default_rng(13)
    segments, scores, weights, valid = random_batch(rng, ITEMS, SIZE, np.float32)
    weights[1, 3], valid[1, 3] = np.nan, True
    with pytest.raises(ValueError, match=r"`weights` must be finite where valid; got nan at index \(1, 3\)"):
        fuse_proposals(*(jnp.asarray(x) for x in (segments, scores, weights, valid)))
    segments[2, 5], valid[2, 5] = [9.0, 1.0], True
    with pytest.raises(ValueError, match="`segments` must have start <= end"):
        fuse_proposals(jnp.asarray(segments), jnp.asarray(scores), None, jnp.asarray(valid), method="soft_nms")


def test_works_inside_a_callers_jit():
    rng = np.random.default_rng(14)
    segments, scores, weights, valid = random_batch(rng, ITEMS, SIZE, np.float32)
    traced = jax.jit(lambda *args: fuse_proposals(*args, temperature=0.2).segments)(segments, scores, weights, valid)
    np.testing.assert_allclose(traced, fuse_proposals(segments, scores, weights, valid, temperature=0.2).segments, rtol=1e-6)


def test_pack_fuse_unpack_equals_per_item_calls():
    rng = np.random.default_rng(8)
    sizes = [0, 1, 5, 17, 3, 30]
    items = [random_item(rng, n) for n in sizes]
    segments_list, scores_list, weights_list = (list(parts) for parts in zip(*items))
    batches = pack_proposals(segments_list, scores_list, weights_list, min_size=8)
    assert sorted(b.segments.shape[1] for b in batches) == [8, 32]
    assert sorted(np.concatenate([b.items for b in batches]).tolist()) == list(range(len(sizes)))
    per_item = fuse_proposal_lists(segments_list, scores_list, weights_list, min_size=8, method="uniform")
    assert len(per_item) == len(sizes)
    by_hand = unpack_proposals(
        batches, [fuse_proposals(b.segments, b.scores, b.weights, b.valid, method="uniform") for b in batches]
    )
    assert [item.count for item in by_hand] == [item.count for item in per_item]
    for (segments, scores, weights), result in zip(items, per_item):
        # Each item alone, padded to the common test size (one compiled shape for all).
        n = len(scores)
        pad = lambda x: np.concatenate([x, np.zeros((SIZE - n,) + x.shape[1:], x.dtype)])  # noqa: E731
        alone = fuse_proposals(pad(segments), pad(scores), pad(weights), np.arange(SIZE) < n, method="uniform")
        count = int(alone.count)
        assert result.count == count and result.segments.shape == (count, 2)
        np.testing.assert_allclose(result.segments, alone.segments[:count])
        np.testing.assert_allclose(result.scores, alone.scores[:count])
        np.testing.assert_array_equal(result.group, alone.group[:n])
        np.testing.assert_array_equal(result.leader, alone.leader[:count])


def test_lists_of_jax_arrays_give_jax_arrays():
    rng = np.random.default_rng(10)
    segments, scores, weights = random_item(rng, 9)
    (result,) = fuse_proposal_lists([jnp.asarray(segments)], [jnp.asarray(scores)])
    assert isinstance(result.segments, jax.Array)
    assert isinstance(result, FusedProposals)


# ---------------------------------------------------------------- defaults and presets (issue 8)


def test_defaults_are_safe_for_seconds_and_published_is_one_preset():
    segments = np.array([[10.0, 12.0], [12.2, 13.0]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    # Disjoint times in seconds stay apart; the +1 frame convention of the paper merges them.
    assert int(fuse_proposals(segments, scores, method="nms").count) == 2
    assert int(fuse_proposals(segments, scores, method="nms", preset="published").count) == 1
    assert int(fuse_proposals(segments, scores, method="nms", preset="published", discrete=False).count) == 2
    assert int(jaxfuse.group_proposals(segments, scores).count) == 2
    assert int(jaxfuse.group_proposals(segments, scores, preset="published").count) == 1
    (listed,) = fuse_proposal_lists([segments], [scores], method="nms", preset="published")
    assert listed.count == 1
    assert jaxfuse.DEFAULT.temperature == jaxfuse.PUBLISHED.temperature == 0.2


def test_preset_equals_its_settings_given_one_by_one():
    rng = np.random.default_rng(21)
    segments, scores, weights, valid = random_batch(rng, ITEMS, SIZE, np.float32)
    by_name = fuse_proposals(segments, scores, weights, valid, preset="published")
    published = jaxfuse.PUBLISHED
    by_hand = fuse_proposals(
        segments, scores, weights, valid, overlap=published.overlap, discrete=published.discrete,
        overlap_threshold=published.overlap_threshold, temperature=published.temperature, method=published.method,
    )
    for a, b in zip(by_name, by_hand):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    default = fuse_proposals(segments, scores, weights, valid)
    explicit = fuse_proposals(segments, scores, weights, valid, temperature=0.2, discrete=False, overlap_threshold=0.25)
    np.testing.assert_array_equal(default.segments, explicit.segments)
    custom = jaxfuse.FusionSettings(**{**jaxfuse.DEFAULT._asdict(), "temperature": 1.0})
    np.testing.assert_array_equal(
        fuse_proposals(segments, scores, weights, valid, preset=custom).segments,
        fuse_proposals(segments, scores, weights, valid, temperature=1.0).segments,
    )
    with pytest.raises(ValueError, match="`preset`"):
        fuse_proposals(segments, scores, preset="paper")


# ---------------------------------------------------------------- input conversion and messages (issue 8)


def test_float64_without_x64_warns_once_naming_the_flag(monkeypatch):
    import warnings

    import jaxfuse._core.interop

    monkeypatch.setattr(jaxfuse._core.interop, "_warned_about_float64", False)
    segments = np.array([[0.0, 10.0], [2.0, 12.0]])
    scores = np.array([0.9, 0.8])
    with pytest.warns(UserWarning, match="jax_enable_x64"):
        narrowed = fuse_proposals(segments, scores)
    assert narrowed.segments.dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fuse_proposals(segments, scores)  # once per process
        fuse_proposals(segments.astype(np.float32), scores.astype(np.float32))
    monkeypatch.setattr(jaxfuse._core.interop, "_warned_about_float64", False)
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fuse_proposals(segments, scores).segments.dtype == np.float64


def test_messages_name_the_argument_and_the_real_dtype():
    segments = np.array([[0.0, 1.0], [3.0, 4.0]], np.float32)
    scores = np.array([0.5, 0.6], np.float32)
    with pytest.raises(TypeError, match="`segments` must be a floating-point array, got dtype int64"):
        fuse_proposals(segments.astype(np.int64), scores)
    with pytest.raises(TypeError, match="`scores` must be a floating-point array, got dtype int64"):
        fuse_proposals(segments, [1, 2])
    with pytest.raises(TypeError, match="`scores` must be an array of numbers, got dtype object"):
        fuse_proposals(segments, np.array([0.5, None]))
    with pytest.raises(TypeError, match="`segments` must be a rectangular array"):
        fuse_proposals([[0.0, 1.0], [3.0]], scores)
    for threshold in (-0.5, 1.5, np.nan):
        with pytest.raises(ValueError, match="`overlap_threshold` must lie in \\[0, 1\\]"):
            fuse_proposals(segments, scores, overlap_threshold=threshold)
    with pytest.raises(ValueError, match="`overlap_threshold`"):
        jaxfuse.group_proposals(segments, scores, overlap_threshold=-0.5)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="`max_items` must be a positive integer"):
            fuse_proposal_lists([segments], [scores], max_items=bad)
    with pytest.raises(ValueError, match="`growth` must be at least 2"):
        pack_proposals([segments], [scores], growth=1)
    # Padded sizes are min_size * growth**k: 20 proposals pad to 64 by fours, 32 by twos.
    items = [np.zeros((20, 2), np.float32)], [np.zeros(20, np.float32)]
    assert pack_proposals(*items)[0].segments.shape == (1, 64, 2)
    assert pack_proposals(*items, growth=2)[0].segments.shape == (1, 32, 2)
    # The caller's arrays are never modified.
    before = segments.copy()
    fuse_proposals(segments, scores, method="laplace")
    np.testing.assert_array_equal(segments, before)


# ---------------------------------------------------------------- traced bad values get result codes (issue 8)

# Every method, under one jit per method: temperature and threshold traced, arrays passed in.
_TRACED = {}


def traced_fuse(method):
    if method not in _TRACED:
        _TRACED[method] = jax.jit(
            lambda segments, scores, weights, valid, temperature, threshold: fuse_proposals(
                segments, scores, weights, valid, method=method, temperature=temperature, overlap_threshold=threshold
            )
        )
    return _TRACED[method]


@pytest.mark.parametrize("method", ["gaussian", "laplace", "nms", "soft_nms"])
def test_traced_bad_values_get_codes_and_good_items_are_untouched(method):
    rng = np.random.default_rng(22)
    segments, scores, weights, valid = random_batch(rng, 4, 16, np.float32)
    valid[:] = True
    segments[1, 3] = [np.nan, 5.0]  # non-finite in item 1
    segments[2, 4] = [9.0, 1.0]  # start > end in item 2
    fused = traced_fuse(method)(segments, scores, weights, valid, 0.2, 0.25)
    assert isinstance(fused.segments, jax.Array)
    expected_items = [ResultCode.SUCCESSFUL, ResultCode.NONFINITE_INPUT, ResultCode.INVALID_INPUT, ResultCode.SUCCESSFUL]
    assert np.asarray(fused.item_result).tolist() == expected_items
    for item, code in ((1, ResultCode.NONFINITE_INPUT), (2, ResultCode.INVALID_INPUT)):
        count = int(fused.count[item])
        assert (np.asarray(fused.result[item, :count]) == code).all()
        assert not np.asarray(fused.segments[item]).any() and not np.asarray(fused.scores[item]).any()
    good = [0, 3]
    alone = fuse_proposals(segments[good], scores[good], weights[good], valid[good], method=method)
    for field in ("segments", "scores", "count", "result", "group"):
        np.testing.assert_allclose(np.asarray(getattr(fused, field))[good], getattr(alone, field), rtol=1e-6)
    # Bad options: every group of the call carries INVALID_OPTION and zeros.
    bad_options = [(0.0, 0.25), (np.nan, 0.25), (-1.0, 0.25), (0.2, -0.5), (0.2, 1.5), (0.2, np.nan)]
    if method in ("nms", "soft_nms"):
        bad_options = [option for option in bad_options if option[0] == 0.2]  # no temperature there
    for temperature, threshold in bad_options:
        fused = traced_fuse(method)(segments[good], scores[good], weights[good], valid[good], temperature, threshold)
        assert (np.asarray(fused.item_result) == ResultCode.INVALID_OPTION).all(), (temperature, threshold)
        real = np.asarray(fused.valid)
        assert (np.asarray(fused.result)[real] == ResultCode.INVALID_OPTION).all()
        assert not np.asarray(fused.segments).any()


def test_closed_over_arrays_and_traced_temperature():
    rng = np.random.default_rng(23)
    segments, scores, weights, valid = random_batch(rng, ITEMS, SIZE, np.float32)
    eager = fuse_proposals(segments, scores, weights, valid, temperature=0.2)
    for arrays in ((segments, scores, weights, valid), tuple(jnp.asarray(x) for x in (segments, scores, weights, valid))):
        traced = jax.jit(lambda t, arrays=arrays: fuse_proposals(*arrays, temperature=t))(0.2)
        np.testing.assert_allclose(traced.segments, eager.segments, rtol=1e-6)
        assert (np.asarray(traced.item_result) == ResultCode.SUCCESSFUL).all()
    laplace = jax.jit(lambda t: fuse_proposals(segments, scores, method="laplace", temperature=t))(0.2)
    np.testing.assert_allclose(laplace.segments, fuse_proposals(segments, scores, method="laplace").segments, rtol=1e-6)
    grouped = jax.jit(lambda t: jaxfuse.group_proposals(segments, scores, overlap_threshold=t))(0.25)
    np.testing.assert_array_equal(grouped.group, jaxfuse.group_proposals(segments, scores).group)
    with pytest.raises(TypeError, match="traced `temperature`"):
        jax.jit(lambda t: fuse_proposal_lists([segments[0]], [scores[0]], temperature=t)[0].segments)(0.2)
    with pytest.raises(TypeError, match="`discrete` must be static"):
        jax.jit(lambda d: fuse_proposals(segments, scores, discrete=d).segments)(True)


def test_overflow_of_finite_input_has_its_code():
    # Near the float32 limit the location is representable but the squared deviations are not.
    segments = np.array([[3.0e38, 3.2e38], [3.1e38, 3.3e38], [0.0, 1.0]], np.float32)
    scores = np.array([0.9, 0.8, 0.1], np.float32)
    fused = fuse_proposals(segments, scores, method="gaussian")
    assert int(fused.count) == 2
    assert fused.result[:2].tolist() == [ResultCode.OVERFLOW, ResultCode.SUCCESSFUL]
    assert not fused.segments[0].any() and fused.segments[1].tolist() == [0.0, 1.0]
    # A temperature below float32's normal range: no NaN passed off as a success.
    tiny = fuse_proposals(segments[2:], scores[2:], temperature=1e-39)
    assert tiny.result[0] in (ResultCode.SUCCESSFUL, ResultCode.OVERFLOW)
    assert np.isfinite(tiny.segments).all()


# ---------------------------------------------------------------- fuzz (issue 8)

FUZZ_ITEMS, FUZZ_SIZE = 3, 8
_FUZZ = {}


def fuzz_fuse(method):
    """One compiled program per (method, dtype): traced temperature, static everything else."""
    if method not in _FUZZ:
        _FUZZ[method] = jax.jit(
            lambda segments, scores, weights, valid, temperature: fuse_proposals(
                segments, scores, weights, valid, method=method, temperature=temperature
            )
        )
    return _FUZZ[method]


@st.composite
def ragged_batches(draw):
    shape = (FUZZ_ITEMS, FUZZ_SIZE)
    number = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    starts = np.array(draw(st.lists(number, min_size=FUZZ_ITEMS * FUZZ_SIZE, max_size=FUZZ_ITEMS * FUZZ_SIZE)))
    # Lengths over many scales: zero, frames, and outliers that reach across everything.
    length = st.sampled_from([0.0, 0.5, 1.0, 10.0, 1e3, 1e6, 3e7])
    lengths = np.array(draw(st.lists(length, min_size=starts.size, max_size=starts.size)))
    scores = np.array(draw(st.lists(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, -3.0, 20.0]), min_size=starts.size,
                                    max_size=starts.size)))
    weights = np.array(draw(st.lists(st.floats(-50, 50, width=32), min_size=starts.size, max_size=starts.size)))
    sizes = np.array(draw(st.lists(st.integers(0, FUZZ_SIZE), min_size=FUZZ_ITEMS, max_size=FUZZ_ITEMS)))
    segments = np.stack([starts, starts + lengths], -1).reshape(shape + (2,))
    valid = np.arange(FUZZ_SIZE)[None, :] < sizes[:, None]
    return segments, scores.reshape(shape), weights.reshape(shape), valid


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ragged_batches(),
    st.sampled_from(METHODS),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([1e-30, 1e-4, 0.0016, 0.2, 10.0, 1e6]),
)
def test_fuzz_finite_input_never_gives_a_nonfinite_or_out_of_hull_success(batch, method, dtype, temperature):
    segments, scores, weights, valid = batch
    with jax.enable_x64(dtype == np.float64):
        arrays = [x.astype(dtype) for x in (segments, scores, weights)]
        fused = jax.tree.map(np.asarray, fuzz_fuse(method)(*arrays, valid, temperature))
    segments = arrays[0]
    assert (fused.item_result == ResultCode.SUCCESSFUL).all() or (fused.result[fused.valid] > 0).any()
    for item in range(FUZZ_ITEMS):
        count = int(fused.count[item])
        assert count <= valid[item].sum()
        for j in range(count):
            code = fused.result[item, j]
            if code not in (ResultCode.SUCCESSFUL, ResultCode.MAX_STEPS_REACHED):
                continue
            members = fused.group[item] == j
            assert members.any() and valid[item][members].all()
            location = fused.segments[item, j]
            assert np.isfinite(location).all() and np.isfinite(fused.scores[item, j]), (method, code)
            low, high = segments[item][members].min(axis=0), segments[item][members].max(axis=0)
            # Rounding, and XLA's flush of subnormal values (e.g. 1e-45 in float32) to zero.
            slack = 16 * np.finfo(dtype).eps * np.maximum(np.abs(low), np.abs(high)) + np.finfo(dtype).tiny
            assert ((location >= low - slack) & (location <= high + slack)).all(), (method, location, low, high)


# ---------------------------------------------------------------- memory of the padded templates (issue 8)


def test_padded_templates_pack_by_size_bucket_memory_follows_the_members():
    """One item of 4,096 identical segments beside one of 4,096 disjoint ones: slots ~ members, not groups x largest."""
    from jaxfuse._proposals.bucketed_templates import _bucket_layout, bucket_shapes, size_buckets

    size = 4096
    segments = np.zeros((2, size, 2), np.float32)
    segments[0] = [0.0, 10.0]
    segments[1, :, 0] = 3.0 * np.arange(size)
    segments[1, :, 1] = segments[1, :, 0] + 1
    scores = np.tile(np.linspace(1, 0, size, dtype=np.float32), (2, 1))
    groups = jaxfuse.group_proposals(segments, scores)
    assert groups.count.tolist() == [1, size]
    counts = np.asarray(_bucket_layout(groups, capacities=size_buckets(size)).counts)
    shapes = bucket_shapes(counts, size, 2)
    members, num_groups = 2 * size, 1 + size
    slots = sum(rows * capacity for rows, capacity in shapes)
    assert [shape for shape in shapes if shape[0]] == [(size, 4), (1, size)]
    # The documented bound: under 4x the members plus 4 per group (here 20,480 slots; one
    # [groups, largest] batch would be 8,192 x 4,096 = 33.5M).
    assert slots <= 4 * members + 4 * num_groups
    # Under a caller's jit the rows are static bounds, still O(B N log N).
    static = sum(rows * capacity for rows, capacity in bucket_shapes(None, size, 2))
    assert static <= (4 + 2 * np.log2(size)) * members
    fused = fuse_proposals(segments, scores, method="laplace")
    assert fused.segments[0, 0].tolist() == [0.0, 10.0]
    np.testing.assert_array_equal(fused.segments[1], segments[1])
    assert (fused.result[fused.valid] == ResultCode.SUCCESSFUL).all()
