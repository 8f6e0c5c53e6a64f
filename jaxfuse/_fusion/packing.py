"""Ragged groups to the padded form the kernels take, with shape buckets.

Compiled code is specialised to array shapes, so padded sizes are powers of
two: a stream of varying sizes compiles once per bucket, not once per call.

Two layouts:

* :func:`pack_groups`: every group padded to the largest one, one ``[G, M]``
  batch. Right when sizes are alike; on skewed sizes (most groups of one to
  three members, a few of hundreds) almost every slot is padding.
* :func:`pack_ragged` (the default path, behind :func:`jaxfuse.fuse_ragged`):
  groups split by size into power-of-two member buckets, one ``[rows, capacity]``
  batch each, so the slots stay within about 4x the members whatever the skew.

Both are vectorised numpy: at most one stable argsort by group id (none when
the members already come group by group), then cumsums and one scatter per
array over the members into one flat buffer whose consecutive slices are the
batches; no Python loop over groups.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxfuse._core.interop import to_host
from jaxfuse._core.padding import bucket_exponents, bucket_size


class PackedGroups(NamedTuple):
    """Ragged groups padded to ``[G, M]``.

    Attributes:
        values: ``[G, M, K]`` member values (zero in padding).
        weights: ``[G, M]`` member weights (zero in padding).
        mask: ``[G, M]`` bool, which slots hold a real member.
        member_index: ``[G, M]`` int, the flat input index of each slot's member,
            -1 in padding; use :func:`unpack_members` to map results back.
        group_ids: ``[num_groups]`` the caller's id of each real group, in the
            order of the first ``num_groups`` rows (ascending ids).
        num_groups: the number of real groups; rows past it are empty padding.
    """

    values: np.ndarray
    weights: np.ndarray
    mask: np.ndarray
    member_index: np.ndarray
    group_ids: np.ndarray
    num_groups: int


class RaggedBuckets(NamedTuple):
    """Ragged groups split by size: one padded batch per power-of-two member bucket.

    Attributes:
        batches: one :class:`PackedGroups` per non-empty size bucket (a
            bucket over ``max_slots`` split into several), smallest capacity
            first; a batch's rows hold groups of more than half its capacity
            (the smallest bucket: up to ``min_members``; a bucket merged
            upwards: smaller).
        group_index: per batch, ``[batch.num_groups]`` int64, the position in
            the output (in ``group_ids``) of each real row.
        group_ids: ``[num_groups]`` the caller's id of each group in output
            order: ascending ids, or ``0 .. len(lengths) - 1``.
        member_slot: ``[N]`` int64, where each input member lies in the
            concatenation of the batches' flattened ``[rows * capacity]``
            slots: :func:`unpack_ragged_members` gathers per-member results
            with it.
    """

    batches: tuple[PackedGroups, ...]
    group_index: tuple[np.ndarray, ...]
    group_ids: np.ndarray
    member_slot: np.ndarray


class MemberLayout(NamedTuple):
    """Where each group's members lie once sorted by group (``order[starts[g] : starts[g] + sizes[g]]``)."""

    order: np.ndarray | None  # [N] input index of each sorted position; None when the input is already in group order
    starts: np.ndarray  # [num_groups] int64
    sizes: np.ndarray  # [num_groups] int64
    group_ids: np.ndarray  # [num_groups]


def checked_members(values, weights) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values)
    weights = np.asarray(weights)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"`values` must have shape [N, K] or [N], got {values.shape}")
    if weights.shape != values.shape[:1]:
        raise ValueError(f"`weights` must have shape ({values.shape[0]},) to match `values`, got {weights.shape}")
    return values, weights


def _integer_array(x, name: str) -> np.ndarray:
    array = np.asarray(x)
    if array.size == 0 and array.dtype == np.float64:
        array = array.astype(np.int64)  # np.asarray([]) is float64
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`{name}` must be integers, got dtype {array.dtype}")
    return array


def member_layout(num_members: int, group_ids, lengths) -> MemberLayout:
    """Sort members by group once (stable: members keep their input order within a group)."""
    if (group_ids is None) == (lengths is None):
        raise ValueError("give exactly one of `group_ids` and `lengths`")
    if lengths is not None:
        lengths = _integer_array(lengths, "lengths")
        if lengths.ndim != 1 or (lengths < 0).any() or lengths.sum() != num_members:
            raise ValueError(f"`lengths` must be non-negative and sum to N = {num_members}, got {lengths}")
        sizes = lengths.astype(np.int64)
        return MemberLayout(None, np.cumsum(sizes) - sizes, sizes, np.arange(sizes.size))
    group_ids = _integer_array(group_ids, "group_ids")
    if group_ids.shape != (num_members,):
        raise ValueError(f"`group_ids` must have shape ({num_members},), one id per member, got {group_ids.shape}")
    # Members that already come group by group (the common case) need no sort.
    in_order = bool(np.all(group_ids[1:] >= group_ids[:-1]))
    order = None if in_order else _stable_order(group_ids)
    sorted_ids = group_ids if in_order else group_ids[order]
    starts = np.flatnonzero(np.r_[num_members > 0, sorted_ids[1:] != sorted_ids[:-1]]).astype(np.int64)
    sizes = np.diff(np.r_[starts, num_members]).astype(np.int64)
    return MemberLayout(order, starts, sizes, sorted_ids[starts])


def _stable_order(ids: np.ndarray) -> np.ndarray:
    """``np.argsort(ids, kind="stable")``, by 16-bit radix passes when the ids span less than 2^32.

    numpy sorts 16-bit keys by radix (linear time) but wider ones by merge
    sort: on 2 million shuffled ids two radix passes take 65 ms, one merge
    sort 260 ms.
    """
    low, high = int(ids.min()), int(ids.max())
    if high - low >= 1 << 32:
        return np.argsort(ids, kind="stable")
    # The offset from the lowest id (< 2^32) as int64: a narrow dtype cannot hold the 16-bit mask (uint8 & 0xFFFF
    # overflows), and an unsigned id is subtracted in its own dtype first (uint64 ids above 2^63 fit no int64).
    key = (ids - ids.dtype.type(low)).astype(np.int64) if ids.dtype.kind == "u" else ids.astype(np.int64) - low
    order = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable")
    if high - low >= 1 << 16:
        order = order[np.argsort((key[order] >> 16).astype(np.uint16), kind="stable")]
    return order


# Buffers start on a 64-byte boundary, and so does every batch whose predecessors hold multiples of 64
# slots (always with pack_ragged's default floors): JAX's CPU client then takes a batch without copying it
# (jax.device_put of a 64-byte aligned array is zero-copy; 32 ms saved per 50 MB on this CPU).
_ALIGNMENT = 64


def aligned_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.zeros(shape, dtype)`` starting on a 64-byte boundary (np.zeros guarantees 16)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + _ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def _scatter(values, weights, layout: MemberLayout, first_slot: np.ndarray, total: int, with_index: bool = True):
    """Copy every member into one flat buffer of ``total`` slots, group ``g`` from slot ``first_slot[g]`` on.

    Returns ``(values [total, K], weights [total], mask [total], member_index
    [total] (None without ``with_index``), member_slot [N])``: one scatter per
    array over the N members (no pass over the padding beyond zeroing it).
    """
    num_members = values.shape[0]
    sorted_slot = np.repeat(first_slot - layout.starts, layout.sizes) + np.arange(num_members)
    if layout.order is None:
        member_slot, member_index = sorted_slot, np.arange(num_members)
    else:
        member_slot = np.empty(num_members, np.int64)
        member_slot[layout.order] = sorted_slot
        member_index = layout.order
    flat_values = aligned_zeros((total,) + values.shape[1:], values.dtype)
    row_bytes = values.dtype.itemsize * int(np.prod(values.shape[1:]))
    if row_bytes:
        # A member's K values as one opaque element: a 1-D put, several times faster than a 2-D fancy assignment.
        row = np.dtype((np.void, row_bytes))
        np.put(flat_values.view(row).reshape(total), member_slot,
               np.ascontiguousarray(values).view(row).reshape(num_members))
    flat_weights = aligned_zeros((total,), weights.dtype)
    np.put(flat_weights, member_slot, weights)
    mask = aligned_zeros((total,), bool)
    np.put(mask, member_slot, True)
    flat_index = None
    if with_index:
        flat_index = aligned_zeros((total,), np.int64)
        flat_index.fill(-1)
        np.put(flat_index, sorted_slot, member_index)
    return flat_values, flat_weights, mask, flat_index, member_slot


def _batches(buffers, layout: MemberLayout, shapes, groups_of) -> tuple[PackedGroups, ...]:
    """Consecutive ``[rows, capacity]`` views of the flat buffers, one :class:`PackedGroups` per shape."""
    flat_values, flat_weights, mask, flat_index = buffers
    batches, offset = [], 0
    for (rows, capacity), groups in zip(shapes, groups_of):
        view = slice(offset, offset + rows * capacity)
        batches.append(PackedGroups(
            flat_values[view].reshape((rows, capacity) + flat_values.shape[1:]),
            flat_weights[view].reshape(rows, capacity),
            mask[view].reshape(rows, capacity),
            None if flat_index is None else flat_index[view].reshape(rows, capacity),
            layout.group_ids[groups], int(groups.size)))
        offset += rows * capacity
    return tuple(batches)


def pack_groups(
    values,
    weights,
    group_ids=None,
    *,
    lengths=None,
    members: int | None = None,
    groups: int | None = None,
    min_members: int = 16,
    min_groups: int = 256,
) -> PackedGroups:
    """Pad flat per-member arrays into one batch of groups, bucketing both padded sizes.

    Every group is padded to the largest: for skewed sizes use
    :func:`pack_ragged` (or :func:`jaxfuse.fuse_ragged`), which splits groups
    by size. Give either ``group_ids`` (any integer label per member; members
    need not be contiguous) or ``lengths`` (members are contiguous runs of
    these sizes).

    Args:
        values: ``[N, K]`` (or ``[N]``, taken as K = 1) float member values.
        weights: ``[N]`` float member weights (softmax logits).
        group_ids: ``[N]`` int group label of each member.
        lengths: ``[num_groups]`` int sizes of contiguous groups.
        members: padded group size M; default the power of two holding the
            largest group, at least ``min_members``. Must hold the largest group.
        groups: padded number of groups G; default the next power of two, at
            least ``min_groups``.
        min_members, min_groups: floors of the default buckets. Small requests
            cost next to nothing when padded, and the floors cut the number of
            distinct shapes (compilations) a stream of requests meets: about a
            dozen over 1,000 random sizes, against about 50 without them.

    Returns:
        A :class:`PackedGroups` of numpy arrays (pass its ``values``, ``weights``
        and ``mask`` to :func:`fuse_groups`).

    Raises:
        ValueError: inconsistent lengths, both or neither of ``group_ids`` and
            ``lengths``, or a ``members``/``groups`` too small.
        TypeError: non-integer ``group_ids`` or ``lengths``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> packed = jaxfuse.pack_groups(np.arange(5.0), np.zeros(5), lengths=[2, 3])
        >>> packed.values.shape, packed.mask.sum(axis=1)[:3]
        ((256, 16, 1), array([2, 3, 0]))
    """
    values, weights = checked_members(values, weights)
    layout = member_layout(values.shape[0], group_ids, lengths)
    num_groups = layout.sizes.size
    largest = int(layout.sizes.max()) if num_groups else 0
    members = bucket_size(largest, min_members) if members is None else int(members)
    groups = bucket_size(num_groups, min_groups) if groups is None else int(groups)
    if members < largest:
        raise ValueError(f"`members` = {members} cannot hold the largest group ({largest} members)")
    if groups < num_groups:
        raise ValueError(f"`groups` = {groups} cannot hold {num_groups} groups")
    *buffers, _ = _scatter(values, weights, layout, np.arange(num_groups) * members, groups * members)
    return _batches(buffers, layout, [(groups, members)], [np.arange(num_groups)])[0]


def _merged(counts: np.ndarray, budget: int) -> np.ndarray:
    """The capacity exponent each bucket's groups get after merging small buckets upwards.

    ``counts[e]`` groups have capacity ``2**e``. From the largest bucket down,
    a bucket joins the nearest larger kept one when its groups gain at most
    ``budget`` padded slots in all (``groups x (larger - own capacity)``):
    running a few thousand padded slots costs less than one more call and one
    more program.
    """
    target = np.arange(counts.size)
    present = np.flatnonzero(counts)
    for index, larger in zip(present[-2::-1].tolist(), present[:0:-1].tolist()):
        if counts[index] * ((1 << int(target[larger])) - (1 << index)) <= budget:
            target[index] = target[larger]
    return target


def pack_ragged(
    values,
    weights,
    group_ids=None,
    *,
    lengths=None,
    min_members: int = 2,
    min_slots: int = 1 << 14,
    merge_slots: int = 1 << 14,
    max_slots: int = 1 << 20,
) -> RaggedBuckets:
    """Split ragged groups by size into padded batches: one per power-of-two member bucket.

    A group of ``m`` members goes to the batch of capacity
    ``max(bucket_size(m), min_members)``; a batch of ``n`` groups has
    ``bucket_size(n)`` rows, at least ``min_slots // capacity``. Padding is
    then under 2x in each dimension (slots < 4x members, plus the floors),
    where :func:`pack_groups` pads every group to the largest: on Zipf sizes
    (median 2, max 256) 16x fewer slots. A small bucket joins the next
    larger one when that adds at most ``merge_slots`` padded slots, so a
    small request is one batch (one call) rather than several.

    Compiles: one program per (rows, capacity) shape met, so at most
    ``log2(largest / min_members) + 1`` per call; the floors keep a stream of
    varying requests in few shapes: 12 over the 1,000 random-size requests of
    ``benchmarks/test_bench_compile.py`` (1.08 batches per request).

    Args:
        values: ``[N, K]`` (or ``[N]``, taken as K = 1) member values.
        weights: ``[N]`` member weights (softmax logits).
        group_ids: ``[N]`` int group label of each member (any order, any
            integers); groups come out in ascending id order.
        lengths: ``[num_groups]`` int sizes of contiguous groups (zero allowed:
            an empty group); groups come out in this order.
        min_members: the smallest capacity; smaller groups share its batch.
        min_slots: the smallest batch (rows x capacity): small batches cost
            next to nothing and the floor keeps their row count, so their
            program, from call to call.
        merge_slots: the most padded slots merging a bucket into the next
            larger may add (0: never merge).
        max_slots: a bucket holding more is split into batches of the
            largest power-of-two height within it (one shape) and one for the
            rest: past the cache the kernels slow down (on this 2-core CPU,
            Gaussian at M = 256: 13 ns a slot at 2^20 slots, 38 at 2^21).

    Returns:
        A :class:`RaggedBuckets`; fuse each batch, then map per-group results
        back with :func:`unpack_ragged` (and per-member ones with
        :func:`unpack_members`, batch by batch).

    Raises:
        ValueError: both or neither of ``group_ids`` and ``lengths``, shapes
            that do not match, lengths that do not sum to N, floors below 1.
        TypeError: non-integer ``group_ids`` or ``lengths``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> packed = jaxfuse.pack_ragged(np.arange(12.0), np.zeros(12), lengths=[1, 9, 2], merge_slots=0)
        >>> [b.values.shape for b in packed.batches], packed.group_index
        ([(8192, 2, 1), (1024, 16, 1)], (array([0, 2]), array([1])))
        >>> [b.values.shape for b in jaxfuse.pack_ragged(np.arange(12.0), np.zeros(12), lengths=[1, 9, 2]).batches]
        [(1024, 16, 1)]
    """
    return pack_ragged_buckets(values, weights, group_ids, lengths, min_members, min_slots, merge_slots, max_slots)


def check_bucket_floors(min_members, min_slots, merge_slots, max_slots) -> None:
    for name, value, least in (("min_members", min_members, 1), ("min_slots", min_slots, 1),
                               ("merge_slots", merge_slots, 0), ("max_slots", max_slots, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"`{name}` must be an integer >= {least}, got {value!r}")


def pack_ragged_buckets(values, weights, group_ids, lengths, min_members, min_slots, merge_slots, max_slots,
                 with_index: bool = True) -> RaggedBuckets:
    """:func:`pack_ragged`; without ``with_index`` the batches' ``member_index`` is None (8 of 37 ms on 2 M members).

    :func:`jaxfuse.fuse_ragged` maps members back through ``member_slot`` and never reads ``member_index``.
    """
    check_bucket_floors(min_members, min_slots, merge_slots, max_slots)
    values, weights = checked_members(values, weights)
    layout = member_layout(values.shape[0], group_ids, lengths)
    exponent = bucket_exponents(layout.sizes, min_members)
    exponent = _merged(np.bincount(exponent, minlength=64), merge_slots).astype(np.uint8)[exponent]
    # Groups sorted by capacity (a radix sort of 8-bit keys): each bucket is a slice, in group order.
    by_capacity = np.argsort(exponent, kind="stable")
    counts = np.bincount(exponent, minlength=64)
    present = np.flatnonzero(counts)
    capacities, first, counts = 1 << present, (np.cumsum(counts) - counts)[present], counts[present]
    shapes, group_index = [], []
    for c, begin, n in zip(capacities.tolist(), first.tolist(), counts.tolist()):
        # Full batches of the largest power-of-two height within max_slots, then one for the rest.
        tallest = 1 << (max(int(max_slots) // c, 1).bit_length() - 1)
        for start in range(begin, begin + n, tallest):
            size = min(tallest, begin + n - start)
            shapes.append((min(bucket_size(size, max(int(min_slots) // c, 1)), max(tallest, size)), c))
            group_index.append(by_capacity[start : start + size])
    # Batches lie one after another in one flat buffer; a group's first slot is its batch's offset + row x capacity.
    offsets = np.cumsum([0] + [rows * c for rows, c in shapes])
    first_slot = np.empty(exponent.size, np.int64)
    for offset, (_, c), groups in zip(offsets.tolist(), shapes, group_index):
        first_slot[groups] = offset + c * np.arange(groups.size)
    *buffers, member_slot = _scatter(values, weights, layout, first_slot, int(offsets[-1]), with_index)
    group_index = tuple(group_index)
    return RaggedBuckets(_batches(buffers, layout, shapes, group_index), group_index, layout.group_ids, member_slot)


def unpack_members(packed_array, packed: PackedGroups) -> np.ndarray:
    """Map a per-slot result ``[G, M, ...]`` (e.g. probabilities) back to the flat members ``[N, ...]``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values, weights = np.array([1, 2, 10, 20, 30], np.float32), np.zeros(5, np.float32)
        >>> packed = jaxfuse.pack_groups(values, weights, lengths=[2, 3])
        >>> fused = jaxfuse.fuse_gaussian(packed.values, packed.weights, packed.mask)
        >>> jaxfuse.unpack_members(fused.probabilities, packed).round(3)
        array([0.5  , 0.5  , 0.333, 0.333, 0.333], dtype=float32)
    """
    array = to_host(packed_array)
    if array.shape[:2] != packed.mask.shape:
        raise ValueError(f"`packed_array` must start with the packed shape {packed.mask.shape}, got {array.shape}")
    flat = np.zeros((int(packed.mask.sum()),) + array.shape[2:], array.dtype)
    flat[packed.member_index[packed.mask]] = array[packed.mask]
    return flat


def unpack_groups(group_array, packed: PackedGroups) -> np.ndarray:
    """The rows of a per-group result ``[G, ...]`` that belong to real groups (``[num_groups, ...]``).

    Example:
        >>> import numpy as np, jaxfuse
        >>> values, weights = np.array([1, 2, 10, 20, 30], np.float32), np.zeros(5, np.float32)
        >>> packed = jaxfuse.pack_groups(values, weights, lengths=[2, 3])
        >>> fused = jaxfuse.fuse_gaussian(packed.values, packed.weights, packed.mask)
        >>> fused.location.shape, jaxfuse.unpack_groups(fused.location, packed)
        ((256, 1), array([[ 1.5],
               [20. ]], dtype=float32))
    """
    return to_host(group_array)[: packed.num_groups]


def unpack_ragged(batch_arrays, packed: RaggedBuckets) -> np.ndarray:
    """Per-batch per-group results (``[rows, ...]`` each, in ``packed.batches`` order) to ``[num_groups, ...]``.

    Row ``i`` of the output belongs to group ``packed.group_ids[i]``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> packed = jaxfuse.pack_ragged(np.array([1, 2, 10, 20, 30], np.float32), np.zeros(5, np.float32),
        ...                              group_ids=np.array([4, 4, 9, 9, 9]))
        >>> fused = [jaxfuse.fuse_gaussian(b.values, b.weights, b.mask) for b in packed.batches]
        >>> packed.group_ids, jaxfuse.unpack_ragged([f.location for f in fused], packed)
        (array([4, 9]), array([[ 1.5],
               [20. ]], dtype=float32))
    """
    arrays = [to_host(a) for a in batch_arrays]
    if len(arrays) != len(packed.batches):
        raise ValueError(f"`batch_arrays` must hold one array per batch ({len(packed.batches)}), got {len(arrays)}")
    if not arrays:
        return np.zeros((packed.group_ids.size,))
    for array, batch in zip(arrays, packed.batches):
        if array.shape[:1] != batch.mask.shape[:1] or array.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"`batch_arrays` must be [rows, ...] per batch with one trailing shape, got "
                             f"{[a.shape for a in arrays]} for rows {[b.mask.shape[0] for b in packed.batches]}")
    out = np.empty((packed.group_ids.size,) + arrays[0].shape[1:], np.result_type(*arrays))
    for array, batch, index in zip(arrays, packed.batches, packed.group_index):
        out[index] = array[: batch.num_groups]
    return out


def unpack_ragged_members(batch_arrays, packed: RaggedBuckets) -> np.ndarray:
    """Per-batch per-slot results (``[rows, capacity, ...]`` each, e.g. probabilities) to the members ``[N, ...]``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> packed = jaxfuse.pack_ragged(np.array([1, 2, 10, 20, 30], np.float32), np.zeros(5, np.float32),
        ...                              lengths=[2, 3])
        >>> fused = [jaxfuse.fuse_gaussian(b.values, b.weights, b.mask) for b in packed.batches]
        >>> jaxfuse.unpack_ragged_members([f.probabilities for f in fused], packed).round(3)
        array([0.5  , 0.5  , 0.333, 0.333, 0.333], dtype=float32)
    """
    arrays = [to_host(a) for a in batch_arrays]
    if len(arrays) != len(packed.batches) or any(
        a.shape[:2] != b.mask.shape or a.shape[2:] != arrays[0].shape[2:] for a, b in zip(arrays, packed.batches)
    ):
        raise ValueError(f"`batch_arrays` must be one [rows, capacity, ...] array per batch, shaped "
                         f"{[b.mask.shape for b in packed.batches]}, got {[a.shape for a in arrays]}")
    if not arrays:
        return np.zeros((0,))
    slots = np.concatenate([a.reshape((-1,) + a.shape[2:]) for a in arrays])
    return np.take(slots, packed.member_slot, axis=0)
