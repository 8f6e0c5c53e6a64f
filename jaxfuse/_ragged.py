"""Ragged groups to the padded form the kernels take, with shape buckets.

Compiled code is specialised to array shapes, so padding every batch to the
next power of two, in both the member dimension M and the group dimension G,
bounds the number of compilations by the number of buckets (about
log2(max M) x log2(max G)) however the sizes vary from call to call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxfuse._interop import to_jax


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


def bucket_size(n: int, minimum: int = 1) -> int:
    """The smallest power of two that is at least ``max(n, minimum)``."""
    return 1 << (max(int(n), int(minimum), 1) - 1).bit_length()


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
    """Pad flat per-member arrays into groups, bucketing both padded sizes.

    Give either ``group_ids`` (any integer label per member; members need not be
    contiguous) or ``lengths`` (members are contiguous runs of these sizes).

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

    Example:
        >>> import numpy as np, jaxfuse
        >>> packed = jaxfuse.pack_groups(np.arange(5.0), np.zeros(5), lengths=[2, 3])
        >>> packed.values.shape, packed.mask.sum(axis=1)[:3]
        ((256, 16, 1), array([2, 3, 0]))
    """
    values = np.asarray(values)
    weights = np.asarray(weights)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"`values` must have shape [N, K] or [N], got {values.shape}")
    if weights.shape != values.shape[:1]:
        raise ValueError(f"`weights` must have shape ({values.shape[0]},) to match `values`, got {weights.shape}")
    if (group_ids is None) == (lengths is None):
        raise ValueError("give exactly one of `group_ids` and `lengths`")
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.size == 0:
            lengths = lengths.astype(np.int64)  # np.asarray([]) is float64
        if lengths.dtype == np.bool_ or not np.issubdtype(lengths.dtype, np.integer):
            raise TypeError(f"`lengths` must be integers (members per group), got dtype {lengths.dtype}")
        if lengths.ndim != 1 or (lengths < 0).any() or lengths.sum() != values.shape[0]:
            raise ValueError(f"`lengths` must be non-negative and sum to N = {values.shape[0]}, got {lengths}")
        group_ids = np.repeat(np.arange(lengths.size), lengths)
        unique_ids, sizes = np.arange(lengths.size), lengths
        order = np.arange(values.shape[0])
    else:
        group_ids = np.asarray(group_ids)
        if group_ids.size == 0:
            group_ids = group_ids.astype(np.int64)  # np.asarray([]) is float64
        if group_ids.shape != values.shape[:1] or not np.issubdtype(group_ids.dtype, np.integer):
            raise ValueError(f"`group_ids` must be an int array of shape ({values.shape[0]},), got {group_ids.shape}")
        order = np.argsort(group_ids, kind="stable")
        unique_ids, sizes = np.unique(group_ids, return_counts=True)

    num_groups = unique_ids.size
    largest = int(sizes.max()) if num_groups else 0
    members = bucket_size(largest, min_members) if members is None else int(members)
    groups = bucket_size(num_groups, min_groups) if groups is None else int(groups)
    if members < largest:
        raise ValueError(f"`members` = {members} cannot hold the largest group ({largest} members)")
    if groups < num_groups:
        raise ValueError(f"`groups` = {groups} cannot hold {num_groups} groups")

    # Slot of each member (in group order): its rank within its group.
    row = np.repeat(np.arange(num_groups), sizes)
    starts = (np.cumsum(sizes) - sizes).astype(np.int64)  # first slot of each group (empty input: none)
    slot = np.arange(order.size) - np.repeat(starts, sizes)

    packed_values = np.zeros((groups, members, values.shape[1]), values.dtype)
    packed_weights = np.zeros((groups, members), weights.dtype)
    mask = np.zeros((groups, members), bool)
    member_index = np.full((groups, members), -1, np.int64)
    packed_values[row, slot] = values[order]
    packed_weights[row, slot] = weights[order]
    mask[row, slot] = True
    member_index[row, slot] = order
    return PackedGroups(packed_values, packed_weights, mask, member_index, unique_ids, num_groups)


def unpack_members(packed_array, packed: PackedGroups) -> np.ndarray:
    """Map a per-slot result ``[G, M, ...]`` (e.g. probabilities) back to the flat members ``[N, ...]``."""
    array = packed_array if isinstance(packed_array, np.ndarray) else np.asarray(to_jax(packed_array))
    if array.shape[:2] != packed.mask.shape:
        raise ValueError(f"`packed_array` must start with the packed shape {packed.mask.shape}, got {array.shape}")
    flat = np.zeros((int(packed.mask.sum()),) + array.shape[2:], array.dtype)
    flat[packed.member_index[packed.mask]] = array[packed.mask]
    return flat


def unpack_groups(group_array, packed: PackedGroups) -> np.ndarray:
    """The rows of a per-group result ``[G, ...]`` that belong to real groups (``[num_groups, ...]``)."""
    array = group_array if isinstance(group_array, np.ndarray) else np.asarray(to_jax(group_array))
    return array[: packed.num_groups]
