"""pack_groups, pack_ragged, fuse_ragged: ragged members to padded buckets and back, with few compiles."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fuse_in_shared_shape, tolerance

import jaxfuse
from jaxfuse._fusion.flat_closed_forms import padded_groups, padded_members
from jaxfuse._fusion.templates import SEGMENT_SUM_TEMPLATES, TEMPLATE_NAMES


def test_pack_then_fuse_equals_fusing_each_group_alone():
    rng = np.random.default_rng(40)
    sizes = rng.integers(1, 20, size=37)
    values = rng.normal(size=(sizes.sum(), 3)).astype(np.float32) * 10
    weights = rng.uniform(size=sizes.sum()).astype(np.float32)
    labels = rng.permutation(np.repeat(rng.choice(1000, size=37, replace=False), sizes))
    packed = jaxfuse.pack_groups(values, weights, labels, min_groups=1, min_members=1)
    assert packed.values.shape == (64, 32, 3) and packed.num_groups == 37
    assert jaxfuse.pack_groups(values, weights, labels).values.shape == (256, 32, 3)
    fused = jaxfuse.fuse_gaussian(packed.values, packed.weights, packed.mask, temperature=0.3)
    locations = jaxfuse.unpack_groups(fused.location, packed)
    for row, label in enumerate(packed.group_ids):
        # Each group alone, in float64 numpy (not one compile per group size): softmax(w / T) @ x.
        members = labels == label
        logits = weights[members].astype(np.float64) / 0.3
        probabilities = np.exp(logits - logits.max())
        alone = probabilities / probabilities.sum() @ values[members].astype(np.float64)
        np.testing.assert_allclose(locations[row], alone, rtol=1e-6, atol=1e-6 * np.abs(values).max())
    assert (fused.result[37:] == jaxfuse.ResultCode.EMPTY_GROUP).all()
    probabilities = jaxfuse.unpack_members(fused.probabilities, packed)
    for label in packed.group_ids:
        np.testing.assert_allclose(probabilities[labels == label].sum(), 1.0, rtol=1e-6)


def test_lengths_and_group_ids_agree():
    rng = np.random.default_rng(41)
    lengths = rng.integers(0, 6, size=10)
    values = rng.normal(size=lengths.sum())
    weights = rng.normal(size=lengths.sum())
    by_lengths = jaxfuse.pack_groups(values, weights, lengths=lengths)
    by_ids = jaxfuse.pack_groups(values, weights, np.repeat(np.arange(10), lengths))
    nonempty = lengths > 0
    np.testing.assert_array_equal(by_lengths.mask[: 10][nonempty], by_ids.mask[: nonempty.sum()])
    np.testing.assert_array_equal(by_lengths.values[: 10][nonempty], by_ids.values[: nonempty.sum()])


def test_random_sizes_compile_once_per_bucket():
    rng = np.random.default_rng(42)
    buckets = set()
    before = jaxfuse.compile_count()
    for _ in range(60):
        sizes = rng.integers(1, 40, size=rng.integers(1, 200))
        values = rng.normal(size=(sizes.sum(), 3)).astype(np.float32)
        packed = jaxfuse.pack_groups(values, np.zeros(sizes.sum(), np.float32), lengths=sizes)
        buckets.add(packed.mask.shape)
        jaxfuse.fuse_gaussian(packed.values, packed.weights, packed.mask)
    assert jaxfuse.compile_count() - before <= len(buckets) <= 6


def test_bucket_sizes_and_errors():
    assert [jaxfuse.bucket_size(n) for n in (0, 1, 2, 3, 5, 64, 65)] == [1, 1, 2, 4, 8, 64, 128]
    with pytest.raises(ValueError, match="exactly one"):
        jaxfuse.pack_groups(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="lengths"):
        jaxfuse.pack_groups(np.zeros(3), np.zeros(3), lengths=[1, 1])
    with pytest.raises(ValueError, match="weights"):
        jaxfuse.pack_groups(np.zeros(3), np.zeros(2), lengths=[3])
    with pytest.raises(ValueError, match="members"):
        jaxfuse.pack_groups(np.zeros(3), np.zeros(3), lengths=[3], members=2)


def test_empty_input_packs_to_empty_padding():
    for kwargs in ({"lengths": []}, {"group_ids": []}, {"group_ids": np.zeros(0, np.int64)}):
        packed = jaxfuse.pack_groups(np.zeros(0), np.zeros(0), **kwargs)
        assert packed.num_groups == 0 and not packed.mask.any() and packed.values.shape == (256, 16, 1)
    with pytest.raises(TypeError, match="`lengths` must be integers"):
        jaxfuse.pack_groups(np.zeros(2), np.zeros(2), lengths=[1.0, 1.0])


# ------------------------------------------------------------------ size-bucketed path (pack_ragged, fuse_ragged)

# Groups of 1-16 members go to capacities 8 ([64, 8, 2]) and 16 ([32, 16, 2], the suite's shared shape): two
# programs per template and dtype, the second shared with tests/fusion/test_fuse.py.
SMALL_BUCKETS = dict(min_members=8, min_slots=512, merge_slots=0)


def ragged_members(rng, sizes, dtype=np.float32, coordinates: int = 2):
    """Flat members of groups of ``sizes``: segment-like values around a centre per group, uniform weights."""
    centres = np.repeat(rng.uniform(-50, 500, size=(len(sizes), 1)), sizes, axis=0)
    spread = np.repeat(rng.uniform(0.5, 20, size=(len(sizes), 1)), sizes, axis=0)
    values = centres + spread * rng.normal(size=(int(np.sum(sizes)), coordinates))
    return values.astype(dtype), rng.uniform(0, 1, size=int(np.sum(sizes))).astype(dtype)


def shuffled_labels(rng, sizes):
    """Distinct, unordered, partly negative group labels, members interleaved across groups."""
    labels = rng.choice(np.arange(-5000, 5000), size=len(sizes), replace=False)
    return rng.permutation(np.repeat(labels, sizes))


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_fuse_ragged_equals_fusing_each_group_alone(template, dtype):
    rng = np.random.default_rng(50)
    sizes = np.r_[1, 16, rng.integers(1, 17, size=18)]
    values, weights = ragged_members(rng, sizes, dtype)
    labels = shuffled_labels(rng, sizes)
    # Student-t compiles slowly: all its groups in the shared shape (the packing is the same for every template).
    buckets = dict(SMALL_BUCKETS, min_members=16) if template == "student_t" else SMALL_BUCKETS
    fused = jaxfuse.fuse_ragged(values, weights, labels, template=template, temperature=0.3, **buckets)

    np.testing.assert_array_equal(fused.group_ids, np.unique(labels))
    # Each group in a row of its own (padding + mask equal the unpadded group: tests/fusion/test_fuse.py).
    alone_values = np.zeros((len(sizes), 16, 2), dtype)
    alone_weights = np.zeros((len(sizes), 16), dtype)
    alone_mask = np.zeros((len(sizes), 16), bool)
    for row, label in enumerate(fused.group_ids):
        members = np.flatnonzero(labels == label)
        alone_values[row, : members.size], alone_weights[row, : members.size] = values[members], weights[members]
        alone_mask[row, : members.size] = True
    alone = fuse_in_shared_shape(jaxfuse.fuse_groups, alone_values, alone_weights, alone_mask, template=template,
                                 temperature=0.3)

    scale = np.abs(values).max()
    rtol = tolerance(dtype)
    assert fused.location.dtype == dtype and fused.location.shape == (len(sizes), 2)
    np.testing.assert_array_equal(fused.result, alone.result)
    assert (fused.result == jaxfuse.ResultCode.SUCCESSFUL).all()
    np.testing.assert_allclose(fused.location, alone.location, rtol=rtol, atol=rtol * scale)
    for ours, theirs in zip(fused.parameters, alone.parameters):
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale)
    for row, label in enumerate(fused.group_ids):
        members = np.flatnonzero(labels == label)
        np.testing.assert_allclose(fused.probabilities[members], alone.probabilities[row, : members.size],
                                   rtol=tolerance(dtype), atol=tolerance(dtype))


@pytest.mark.parametrize("template", ["gaussian", "laplace"])
def test_fuse_ragged_equals_fusing_a_group_alone_unpadded(template):
    rng = np.random.default_rng(60)
    sizes = np.array([5, 3, 16, 9])
    values, weights = ragged_members(rng, sizes)
    fused = jaxfuse.fuse_ragged(values, weights, lengths=sizes, template=template, **SMALL_BUCKETS)
    starts = np.cumsum(sizes) - sizes
    members = slice(starts[1], starts[1] + 3)  # padded to 8 in its batch; alone: [1, 3, 2], no padding at all
    alone = jaxfuse.fuse_groups(values[None, members], weights[None, members], template=template)
    np.testing.assert_allclose(fused.location[1], alone.location[0], rtol=2e-5, atol=2e-5 * np.abs(values).max())
    np.testing.assert_allclose(fused.parameters.scale[1], alone.parameters.scale[0], rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(fused.probabilities[members], alone.probabilities[0], rtol=2e-5, atol=1e-7)


def test_gaussian_matches_a_float64_reduceat_reference_and_keeps_lengths_order():
    rng = np.random.default_rng(51)
    sizes = np.array([3, 0, 1, 16, 7, 0, 2])
    values, weights = ragged_members(rng, sizes)
    fused = jaxfuse.fuse_ragged(values, weights, lengths=sizes, temperature=0.3, **SMALL_BUCKETS)
    np.testing.assert_array_equal(fused.group_ids, np.arange(sizes.size))
    empty = sizes == 0
    assert (fused.result[empty] == jaxfuse.ResultCode.EMPTY_GROUP).all()
    assert (fused.result[~empty] == jaxfuse.ResultCode.SUCCESSFUL).all()
    assert not fused.location[empty].any()
    # Independent reference: softmax(w / T) weighted moments by np.add.reduceat, float64, over non-empty groups.
    nonempty = sizes[~empty]
    starts = np.cumsum(nonempty) - nonempty
    logits = weights.astype(np.float64) / 0.3
    g = np.exp(logits - np.repeat(np.maximum.reduceat(logits, starts), nonempty))
    g /= np.repeat(np.add.reduceat(g, starts), nonempty)
    mean = np.add.reduceat(g[:, None] * values, starts)
    std = np.sqrt(np.add.reduceat(g[:, None] * (values - np.repeat(mean, nonempty, axis=0)) ** 2, starts))
    np.testing.assert_allclose(fused.location[~empty], mean, rtol=2e-5, atol=2e-5 * np.abs(values).max())
    np.testing.assert_allclose(fused.parameters.scale[~empty], std, rtol=2e-4, atol=2e-5 * np.abs(values).max())
    np.testing.assert_allclose(fused.probabilities, g, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("template", SEGMENT_SUM_TEMPLATES)
def test_permuting_members_and_groups_changes_nothing(template):
    rng = np.random.default_rng(52)
    sizes = rng.integers(1, 17, size=25)
    values, weights = ragged_members(rng, sizes)
    labels = shuffled_labels(rng, sizes)
    fused = jaxfuse.fuse_ragged(values, weights, labels, template=template, **SMALL_BUCKETS)
    permutation = rng.permutation(labels.size)
    permuted = jaxfuse.fuse_ragged(values[permutation], weights[permutation], labels[permutation],
                                   template=template, **SMALL_BUCKETS)
    np.testing.assert_array_equal(permuted.group_ids, fused.group_ids)
    np.testing.assert_allclose(permuted.location, fused.location, rtol=2e-5, atol=2e-5 * np.abs(values).max())
    for ours, theirs in zip(permuted.parameters, fused.parameters):
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5 * np.abs(values).max())
    np.testing.assert_allclose(permuted.probabilities, fused.probabilities[permutation], rtol=2e-5, atol=1e-7)


def test_single_huge_group_beside_small_ones():
    rng = np.random.default_rng(53)
    sizes = np.array([2, 3000, 1])
    values, weights = ragged_members(rng, sizes)
    # The floors (2 members, 2^14 slots); the two small groups join the big batch (8,188 more padded slots).
    assert [b.mask.shape for b in jaxfuse.pack_ragged(values, weights, lengths=sizes, merge_slots=0).batches] == [
        (8192, 2), (4, 4096)]
    assert [b.mask.shape for b in jaxfuse.pack_ragged(values, weights, lengths=sizes).batches] == [(4, 4096)]
    fused = jaxfuse.fuse_ragged(values, weights, lengths=sizes)
    huge = slice(2, 3002)
    logits = weights[huge].astype(np.float64) / 0.2
    g = np.exp(logits - logits.max())
    np.testing.assert_allclose(fused.location[1], g / g.sum() @ values[huge].astype(np.float64), rtol=2e-5)
    np.testing.assert_allclose(fused.probabilities[huge].sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(fused.location[2], values[-1])


def test_empty_input():
    for kwargs in ({"group_ids": np.zeros(0, np.int64)}, {"lengths": []}):
        fused = jaxfuse.fuse_ragged(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), template="laplace", **kwargs)
        assert fused.location.shape == (0, 2) and fused.probabilities.shape == (0,) and fused.result.shape == (0,)
        assert isinstance(fused.parameters, jaxfuse.LaplaceParameters)
        assert jaxfuse.pack_ragged(np.zeros(0), np.zeros(0), **kwargs).batches == ()
    only_empty = jaxfuse.fuse_ragged(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), lengths=[0, 0],
                                     **SMALL_BUCKETS)
    assert (only_empty.result == jaxfuse.ResultCode.EMPTY_GROUP).all() and only_empty.location.shape == (2, 2)


def test_pack_ragged_layout_round_trips_and_bounds_padding():
    rng = np.random.default_rng(54)
    sizes = np.minimum(rng.zipf(1.7, size=3000), 300)
    values, weights = ragged_members(rng, sizes, np.float64, coordinates=3)
    labels = shuffled_labels(rng, sizes)
    packed = jaxfuse.pack_ragged(values, weights, labels, min_slots=1, merge_slots=0)
    capacities = [b.mask.shape[1] for b in packed.batches]
    assert capacities == sorted(set(capacities)) and capacities[0] == 2
    for batch in packed.batches:  # a batch's groups need more than half its capacity (the smallest: up to 2)
        filled, capacity = batch.mask.sum(axis=1)[: batch.num_groups], batch.mask.shape[1]
        assert (filled <= capacity).all() and (capacity == 2 or (filled > capacity // 2).all())
        assert not batch.mask[batch.num_groups :].any()
    slots = sum(b.mask.size for b in packed.batches)
    assert slots < 4 * (sizes.sum() + 4 * sizes.size)
    # Round trips: every member back in its place, every group's label back in output order.
    np.testing.assert_array_equal(jaxfuse.unpack_ragged_members([b.values for b in packed.batches], packed), values)
    np.testing.assert_array_equal(jaxfuse.unpack_ragged_members([b.weights for b in packed.batches], packed), weights)
    np.testing.assert_array_equal(packed.group_ids, np.unique(labels))
    for batch, index in zip(packed.batches, packed.group_index):
        np.testing.assert_array_equal(batch.group_ids, packed.group_ids[index])
    counts = jaxfuse.unpack_ragged([b.mask.sum(axis=1) for b in packed.batches], packed)
    np.testing.assert_array_equal(counts, np.bincount(np.searchsorted(np.unique(labels), labels)))
    for batch in packed.batches:  # each batch is also a PackedGroups for unpack_members
        np.testing.assert_array_equal(batch.values[batch.mask], values[batch.member_index[batch.mask]])


def test_small_buckets_merge_upwards_within_the_budget():
    sizes = np.array([1] * 100 + [5] * 10 + [40])
    values, weights = ragged_members(np.random.default_rng(57), sizes)

    def capacities(**kwargs):
        return [b.mask.shape[1] for b in jaxfuse.pack_ragged(values, weights, lengths=sizes, **kwargs).batches]

    assert capacities(merge_slots=0) == [2, 8, 64]
    assert capacities(merge_slots=10 * (64 - 8)) == [2, 64]  # the 8s join the 64s; then the 2s would add 6,200 slots
    assert capacities(merge_slots=100 * (64 - 2)) == [64]
    assert capacities() == [64]


def test_buckets_over_max_slots_split_into_equal_batches_and_a_rest():
    rng = np.random.default_rng(58)
    sizes = np.r_[np.full(21, 3), np.full(5, 16)]
    values, weights = ragged_members(rng, sizes)
    labels = shuffled_labels(rng, sizes)
    packed = jaxfuse.pack_ragged(values, weights, labels, min_slots=1, merge_slots=0, max_slots=32)
    # 21 groups of capacity 4 in batches of 8 rows: 8 + 8 + 5 (padded to 8); 5 of capacity 16: 2 + 2 + 1.
    assert [b.mask.shape for b in packed.batches] == [(8, 4)] * 3 + [(2, 16)] * 2 + [(1, 16)]
    assert [b.num_groups for b in packed.batches] == [8, 8, 5, 2, 2, 1]
    np.testing.assert_array_equal(jaxfuse.unpack_ragged_members([b.values for b in packed.batches], packed), values)
    np.testing.assert_array_equal(jaxfuse.unpack_ragged([b.mask.sum(axis=1) for b in packed.batches], packed),
                                  np.bincount(np.searchsorted(np.unique(labels), labels)))


def test_inputs_are_never_modified_and_kinds_follow_the_input():
    import jax

    rng = np.random.default_rng(55)
    sizes = rng.integers(1, 17, size=10)
    values, weights = ragged_members(rng, sizes)
    labels = shuffled_labels(rng, sizes)
    copies = values.copy(), weights.copy(), labels.copy()
    fused = jaxfuse.fuse_ragged(values, weights, labels, **SMALL_BUCKETS)
    for original, copy in zip((values, weights, labels), copies):
        np.testing.assert_array_equal(original, copy)
    on_device = jaxfuse.fuse_ragged(jax.numpy.asarray(values), jax.numpy.asarray(weights), labels, **SMALL_BUCKETS)
    assert isinstance(on_device.location, jax.Array) and isinstance(on_device.parameters.scale, jax.Array)
    np.testing.assert_array_equal(np.asarray(on_device.location), fused.location)
    np.testing.assert_array_equal(on_device.group_ids, fused.group_ids)
    with pytest.raises(TypeError, match="`values` is traced"):
        jax.jit(lambda v: jaxfuse.fuse_ragged(v, weights, labels).location)(values)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(values=np.zeros((4, 2), np.int32)), TypeError, "`values`"),
        (dict(weights=np.zeros(4, np.int64)), TypeError, "`weights`"),
        (dict(weights=np.zeros(3, np.float32)), ValueError, "`weights`"),
        (dict(values=np.zeros((4, 2, 1), np.float32)), ValueError, "`values`"),
        (dict(group_ids=None), ValueError, "exactly one of `group_ids` and `lengths`"),
        (dict(lengths=[2, 2]), ValueError, "exactly one of `group_ids` and `lengths`"),
        (dict(group_ids=None, lengths=[2, 1]), ValueError, "`lengths`"),
        (dict(group_ids=None, lengths=[2, 3, -1]), ValueError, "`lengths`"),
        (dict(group_ids=None, lengths=[2.0, 2.0]), TypeError, "`lengths`"),
        (dict(group_ids=np.zeros(4)), TypeError, "`group_ids`"),
        (dict(group_ids=np.zeros(3, int)), ValueError, "`group_ids`"),
        (dict(template="cauchy"), ValueError, "`template`"),
        (dict(temperature=0.0), ValueError, "`temperature`"),
        (dict(template="gaussian", df=3.0), TypeError, "takes no options"),
        (dict(min_members=0), ValueError, "`min_members`"),
        (dict(min_slots=-1), ValueError, "`min_slots`"),
        (dict(merge_slots=1.5), ValueError, "`merge_slots`"),
        (dict(max_slots=0), ValueError, "`max_slots`"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    arguments = dict(values=np.zeros((4, 2), np.float32), weights=np.zeros(4, np.float32), group_ids=np.arange(4))
    arguments.update(kwargs)
    before = jaxfuse.compile_count()
    with pytest.raises(error, match=match):
        jaxfuse.fuse_ragged(arguments.pop("values"), arguments.pop("weights"), **arguments)
    assert jaxfuse.compile_count() == before  # raised before anything was compiled


def test_throw_raises_for_failed_groups_only():
    values = np.array([[1.0], [np.nan], [2.0]], np.float32)
    fused = jaxfuse.fuse_ragged(values, np.zeros(3, np.float32), lengths=[1, 1, 0, 1], **SMALL_BUCKETS)
    assert fused.result.tolist() == [0, jaxfuse.ResultCode.NONFINITE_INPUT, jaxfuse.ResultCode.EMPTY_GROUP, 0]
    with pytest.raises(RuntimeError, match="NONFINITE_INPUT"):
        jaxfuse.fuse_ragged(values, np.zeros(3, np.float32), lengths=[1, 1, 0, 1], throw=True, **SMALL_BUCKETS)
    jaxfuse.fuse_ragged(values[::2], np.zeros(2, np.float32), lengths=[1, 0, 1], throw=True, **SMALL_BUCKETS)


def test_random_ragged_requests_compile_once_per_bucket():
    rng = np.random.default_rng(56)
    shapes = set()
    before = jaxfuse.compile_count()
    for _ in range(40):
        sizes = np.minimum(rng.zipf(1.8, size=rng.integers(1, 400)), 40)
        values, weights = ragged_members(rng, sizes, coordinates=3)
        labels = None if rng.uniform() < 0.5 else shuffled_labels(rng, sizes)
        jaxfuse.fuse_ragged(values, weights, labels, lengths=None if labels is not None else sizes)
        in_order = labels is None or (np.diff(labels) >= 0).all()
        shapes.add((padded_members(sizes.sum()), padded_groups(sizes.size), in_order))
    # The closed forms run in segment form, one program per (members, groups) bucket and input order:
    # every request here fits the floors (2^14 members, 2^12 groups).
    assert jaxfuse.compile_count() - before <= len(shapes) == 2


def test_padded_sizes_are_few_per_octave_and_close_above_the_floors():
    sizes = np.unique(np.r_[1, np.geomspace(2, 1e7, 400).astype(int), 2**14, 2**14 + 1, 2**20, 2**20 + 1])
    members = np.array([padded_members(n) for n in sizes])
    assert (members >= np.maximum(sizes, 2**14)).all() and (np.diff(members) >= 0).all()
    assert (members[sizes > 2**14] <= 1.125 * sizes[sizes > 2**14]).all()
    above = np.unique(members[(sizes > 2**20) & (sizes <= 2**21)])
    assert above.size == 8 and members[sizes <= 2**14].max() == 2**14
    assert [padded_groups(n) for n in (0, 1, 4096, 4097, 200_000)] == [4096, 4096, 4096, 8192, 262_144]


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(59)
    sizes = rng.integers(1, 17, size=10)
    values, weights = ragged_members(rng, sizes)
    lengths = torch.from_numpy(sizes)
    fused = jaxfuse.fuse_ragged(torch.from_numpy(values), torch.from_numpy(weights), lengths=lengths, **SMALL_BUCKETS)
    assert isinstance(fused.location, torch.Tensor) and isinstance(fused.probabilities, torch.Tensor)
    expected = jaxfuse.fuse_ragged(values, weights, lengths=sizes, **SMALL_BUCKETS)
    np.testing.assert_array_equal(fused.location.numpy(), expected.location)
    np.testing.assert_array_equal(fused.result.numpy(), expected.result)


@pytest.mark.parametrize("dtype, low, high", [
    (np.int8, -128, 127), (np.uint16, 0, 65535), (np.int32, -(2**31), 2**31 - 1), (np.int64, -5, 70_000),
    (np.int64, -(2**40), 2**40), (np.uint64, 2**63, 2**63 + 2**20),
])
def test_group_order_is_numpys_stable_argsort_for_every_id_dtype_and_span(dtype, low, high):
    rng = np.random.default_rng(61)
    distinct = np.array([low, high, (low + high) // 2, low + 1, high - 1], dtype=object).astype(dtype)
    ids = rng.choice(distinct, size=300)
    values = np.arange(300.0)
    packed = jaxfuse.pack_ragged(values, np.zeros(300), ids, min_slots=1, merge_slots=0)
    np.testing.assert_array_equal(packed.group_ids, np.unique(ids))
    # Members keep their input order within a group: the slots hold numpy's stable argsort order.
    by_group = np.concatenate([b.values[b.mask][:, 0] for b in packed.batches])
    expected = np.concatenate([np.flatnonzero(ids == packed.group_ids[i]) for b, index in
                               zip(packed.batches, packed.group_index) for i in index])
    np.testing.assert_array_equal(by_group, values[expected])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int32, np.uint64, np.int64])
def test_unsorted_ids_at_both_limits_of_their_dtype_equal_their_ranks(dtype):
    # The ten lowest and ten highest ids of the dtype, shuffled: every entry point must give what the ids' ranks
    # (0 .. 19, in the same order) give, with the caller's ids (and dtype) back. uint8 used to overflow the sort key.
    rng = np.random.default_rng(50)
    sizes = np.r_[1, 16, rng.integers(1, 17, size=18)]  # the groups of test_fuse_ragged_equals_fusing_each_group_alone
    values, weights = ragged_members(rng, sizes)
    info = np.iinfo(dtype)
    distinct = np.array([info.min + i for i in range(10)] + [info.max - i for i in range(10)], dtype=object)
    order = rng.permutation(20)
    member_group = rng.permutation(np.repeat(np.arange(20), sizes))
    ids = distinct.astype(dtype)[order][member_group]
    ranks = np.argsort(np.argsort(distinct))[order][member_group]  # distinct is not sorted for signed dtypes
    assert ids.dtype == dtype and not (np.diff(ranks) >= 0).all()
    expected_ids = np.unique(ids)
    for template in ("gaussian", "laplace"):
        fused = jaxfuse.fuse_ragged(values, weights, ids, template=template, temperature=0.3, **SMALL_BUCKETS)
        by_rank = jaxfuse.fuse_ragged(values, weights, ranks, template=template, temperature=0.3, **SMALL_BUCKETS)
        assert fused.group_ids.dtype == dtype
        np.testing.assert_array_equal(fused.group_ids, expected_ids)
        for ours, theirs in zip((fused.location, fused.result, fused.probabilities),
                                (by_rank.location, by_rank.result, by_rank.probabilities)):
            np.testing.assert_array_equal(ours, theirs)
    packed, packed_by_rank = (jaxfuse.pack_groups(values, weights, x) for x in (ids, ranks))
    np.testing.assert_array_equal(packed.group_ids, expected_ids)
    np.testing.assert_array_equal(packed.values, packed_by_rank.values)
    np.testing.assert_array_equal(packed.mask, packed_by_rank.mask)
    buckets, buckets_by_rank = (jaxfuse.pack_ragged(values, weights, x, **SMALL_BUCKETS) for x in (ids, ranks))
    np.testing.assert_array_equal(buckets.group_ids, expected_ids)
    for ours, theirs in zip(buckets.batches, buckets_by_rank.batches):
        np.testing.assert_array_equal(ours.values, theirs.values)
        np.testing.assert_array_equal(ours.mask, theirs.mask)


# ------------------------------------------------------------------ segment form (gaussian, uniform, exponential)


def test_segment_form_keeps_precision_far_from_zero():
    # Frame indices near 1e6 in float32 (ulp 0.06), groups a few frames wide: sums of offsets from a member of
    # the group lose nothing to cancellation (E[x^2] - E[x]^2 about zero would lose all of the variance).
    rng = np.random.default_rng(62)
    sizes = rng.integers(2, 17, size=30)
    centres = np.repeat(rng.uniform(1e6, 2e6, size=sizes.size), sizes)
    values = (centres + rng.uniform(0, 8, size=sizes.sum())).astype(np.float32)
    weights = rng.uniform(size=sizes.sum()).astype(np.float32)
    fused = jaxfuse.fuse_ragged(values, weights, lengths=sizes, temperature=0.3)
    starts = np.cumsum(sizes) - sizes
    x = values.astype(np.float64)
    logits = weights.astype(np.float64) / 0.3
    g = np.exp(logits - np.repeat(np.maximum.reduceat(logits, starts), sizes))
    g /= np.repeat(np.add.reduceat(g, starts), sizes)
    mean = np.add.reduceat(g * x, starts)
    std = np.sqrt(np.add.reduceat(g * (x - np.repeat(mean, sizes)) ** 2, starts))
    np.testing.assert_allclose(fused.location[:, 0], mean, rtol=0, atol=0.25)  # 4 ulps of 2e6
    np.testing.assert_allclose(fused.parameters.scale[:, 0], std, rtol=1e-5, atol=1e-5)


def test_segment_form_variance_stays_exact_when_the_first_member_is_a_far_light_outlier():
    # Mass concentrated (small T) on members far from each group's first member: a one-pass variance about the
    # first member cancels to noise (0.15 instead of 5e-4 on the example); about the most probable member
    # its error is bounded by (1 + n) ulps. Reference: the two-pass float64 formula.
    rng = np.random.default_rng(63)
    sizes = rng.integers(3, 12, size=40)
    values, weights = [], []
    for size in sizes:
        centre = rng.uniform(0, 3000)
        group = centre + rng.uniform(0, 0.01, size=size)
        group[0] = centre - rng.uniform(500, 1000)  # far outlier first, with the lowest weight
        values.append(group)
        weights.append(np.concatenate([[0.0], rng.uniform(0.5, 1.0, size=size - 1)]))
    values = np.concatenate(values).astype(np.float32)[:, None]
    weights = np.concatenate(weights).astype(np.float32)
    temperature = 0.01
    fused = jaxfuse.fuse_ragged(values, weights, lengths=sizes, temperature=temperature)
    starts = np.cumsum(sizes) - sizes
    x, logits = values[:, 0].astype(np.float64), weights.astype(np.float64) / temperature
    g = np.exp(logits - np.repeat(np.maximum.reduceat(logits, starts), sizes))
    g /= np.repeat(np.add.reduceat(g, starts), sizes)
    mean = np.add.reduceat(g * x, starts)
    std = np.sqrt(np.add.reduceat(g * (x - np.repeat(mean, sizes)) ** 2, starts))
    assert np.all(std < 0.01)
    np.testing.assert_allclose(fused.parameters.scale[:, 0], std, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(fused.location[:, 0], mean, rtol=0, atol=1e-3)


# Groups fused alone by fuse_groups decide the codes: finite, NaN value, infinite weight, empty, values overflowing
# the offsets (and the uniform's half-width), a single member, all members at one point (exponential rate +inf).
_BIG = np.float32(3e38)
_CODE_GROUPS = [
    ([[1.0, 2.0], [3.0, 5.0], [2.0, 2.0]], [0.1, 0.5, 0.3]),
    ([[1.0, 2.0], [np.nan, 5.0]], [0.1, 0.5]),
    ([[1.0, 2.0], [3.0, 5.0]], [np.inf, 0.5]),
    ([], []),
    ([[_BIG, 1.0], [-_BIG, 2.0], [_BIG, 3.0]], [0.2, 0.2, 0.2]),
    ([[7.0, -7.0]], [0.9]),
    ([[4.0, 4.0], [4.0, 4.0]], [0.1, 0.7]),
]


@pytest.mark.parametrize("temperature", [0.3, 1e-30])
@pytest.mark.parametrize("template", SEGMENT_SUM_TEMPLATES)
def test_segment_form_result_codes_and_outputs_equal_fuse_groups(template, temperature):
    sizes = np.array([len(v) for v, _ in _CODE_GROUPS])
    values = np.concatenate([np.reshape(v, (-1, 2)) for v, _ in _CODE_GROUPS]).astype(np.float32)
    weights = np.concatenate([w for _, w in _CODE_GROUPS]).astype(np.float32)
    fused = jaxfuse.fuse_ragged(values, weights, lengths=sizes, template=template, temperature=temperature)

    alone_values = np.zeros((sizes.size, 16, 2), np.float32)
    alone_weights = np.zeros((sizes.size, 16), np.float32)
    alone_mask = np.arange(16) < sizes[:, None]
    for row, (v, w) in enumerate(_CODE_GROUPS):
        alone_values[row, : len(v)], alone_weights[row, : len(w)] = np.reshape(v, (-1, 2)), w
    alone = fuse_in_shared_shape(jaxfuse.fuse_groups, alone_values, alone_weights, alone_mask, template=template,
                                 temperature=temperature)
    codes = jaxfuse.ResultCode
    assert codes.NONFINITE_INPUT in fused.result and codes.EMPTY_GROUP in fused.result
    np.testing.assert_array_equal(fused.result, alone.result)
    np.testing.assert_allclose(fused.location, alone.location, rtol=2e-6, atol=1e-6)
    for ours, theirs in zip(fused.parameters, alone.parameters):
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6)
    starts = np.cumsum(sizes) - sizes
    for row, size in enumerate(sizes):
        np.testing.assert_allclose(fused.probabilities[starts[row] : starts[row] + size],
                                   alone.probabilities[row, :size], rtol=2e-6, atol=1e-7)


def test_segment_form_reports_a_bad_traced_temperature_on_every_group():
    # fuse_ragged rejects a bad concrete temperature; the program itself (traced T) answers INVALID_OPTION.
    from jaxfuse._fusion.flat_closed_forms import fuse_flat_members, host_inputs
    from jaxfuse._fusion.packing import member_layout

    rng = np.random.default_rng(63)
    sizes = np.array([3, 1, 4])
    values, weights = ragged_members(rng, sizes)
    inputs = host_inputs(values, weights, member_layout(sizes.sum(), None, sizes), np.float32)
    for temperature in (np.nan, -0.2, 0.0, np.inf):
        fused = fuse_flat_members(*inputs, np.float32(temperature), template="gaussian")
        assert (np.asarray(fused.result)[:3] == jaxfuse.ResultCode.INVALID_OPTION).all()
        assert not np.asarray(fused.location).any() and not np.asarray(fused.probabilities).any()
    good = fuse_flat_members(*inputs, np.float32(0.2), template="gaussian")
    assert (np.asarray(good.result)[:3] == jaxfuse.ResultCode.SUCCESSFUL).all()
