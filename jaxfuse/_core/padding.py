"""How far each padded axis is rounded up: the one home of jaxfuse's shape-bucket policies.

Every jitted program compiles once per input shape, so ragged sizes (items of
any number of proposals, groups of any number of members, batches of any
number of items) are rounded up to a few sizes. Each policy trades padding
(wasted work, at most the stated fraction) against the number of distinct
shapes (compiled programs):

=====================  ==========================  =================  =====================================
policy                 sizes                       padding at most    used for
=====================  ==========================  =================  =====================================
:func:`bucket_size`    powers of two               1/2 of the work    ragged group sizes, snippet axes
:func:`geometric_size` ``minimum * growth**k``     1 - 1/growth       proposal lists (growth 4)
:func:`two_per_octave` 1, 1.5, 2, 3, 4, 6, 8, ...  1/3                detect's item, proposal, output slots
:func:`eight_per_octave` k 2^(b-4), k = 9..16      1/9                flat members of segment-sum fusion
:func:`size_buckets`   4, 8, 16, ..., size         1/2 of a bucket    Laplace / Student-t group buckets
:func:`merged_buckets` merge small buckets up      a padding budget   detection-file items
=====================  ==========================  =================  =====================================

Changing how an axis is padded means changing its policy here.
"""

from __future__ import annotations

import numpy as np

MERGE_PADDING_BUDGET = 1 << 24
"""The most padded detections a merge of small item buckets may add (:func:`merged_buckets`)."""

SMALLEST_GROUP_BUCKET = 4
"""Groups of up to this many members share the first size bucket: below it a bucket of its own would cost a
compiled program for little memory."""


def bucket_size(n: int, minimum: int = 1) -> int:
    """The smallest power of two that is at least ``max(n, minimum)``.

    Example:
        >>> import jaxfuse
        >>> jaxfuse.bucket_size(5), jaxfuse.bucket_size(16), jaxfuse.bucket_size(3, minimum=16)
        (8, 16, 16)
    """
    return 1 << (max(int(n), int(minimum), 1) - 1).bit_length()


def bucket_exponents(n: np.ndarray, minimum: int = 1) -> np.ndarray:
    """``log2`` of :func:`bucket_size` of every element of an int array, as uint8 (vectorised)."""
    n = np.maximum(np.asarray(n, np.int64), max(int(minimum), 1))
    # frexp(n - 1) = (m, e) with n - 1 = m 2^e, m in [0.5, 1): e is the bit length of n - 1 (exact below 2^53).
    return np.frexp((n - 1).astype(np.float64))[1].astype(np.uint8)


def geometric_size(n: int, minimum: int, growth: int) -> int:
    """The smallest ``minimum * growth**k`` holding ``n``."""
    size = minimum
    while size < n:
        size *= growth
    return size


def two_per_octave(n: int, minimum: int) -> int:
    """The padded size of an axis holding ``n``: ``minimum`` times 1, 1.5, 2, 3, 4, 6, 8, ...

    Two sizes per octave: at most a third of the work is padding (a quarter on
    average), for one more compiled shape per octave than powers of two.
    """
    size = minimum
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def eight_per_octave(n: int, minimum: int) -> int:
    """``max(n, minimum)`` rounded up to one of 8 sizes per octave (``k * 2^(b - 4)`` for ``n`` in ``(2^(b-1), 2^b]``)."""
    n = max(int(n), minimum)
    step = 1 << max((n - 1).bit_length() - 4, 0)
    return -(-n // step) * step


def size_buckets(size: int) -> tuple[int, ...]:
    """Member capacities of the size buckets for items of ``size`` proposals: 4, 8, 16, ..., >= size.

    A group of ``m`` members goes to the first bucket holding it, whose
    capacity is then less than ``2 m`` (or the smallest): the packed slots of
    every bucket are within twice its members, whatever the other groups.
    """
    capacities = [min(SMALLEST_GROUP_BUCKET, max(size, 1))]
    while capacities[-1] < size:
        capacities.append(min(2 * capacities[-1], size))
    return tuple(capacities)


def merged_buckets(bucket_counts: dict[int, int], budget: int = MERGE_PADDING_BUDGET) -> dict[int, int]:
    """Which padded size each bucket's items get, after merging small buckets upwards.

    From the largest bucket down, a bucket joins the current target (the
    nearest larger bucket that was kept) when its items would gain at most
    ``budget`` padded detections in all; otherwise it is kept and becomes the
    target. Each kept bucket is one program to compile.

    Args:
        bucket_counts: ``{padded size: number of items}``.
        budget: the most padded detections a merge may add.

    Returns:
        ``{padded size: the padded size its items are given}``.

    Example:
        >>> merged_buckets({16: 1000, 512: 7000, 1024: 3000}, budget=1 << 24)
        {1024: 1024, 512: 1024, 16: 1024}
        >>> merged_buckets({16: 10**6, 1024: 10}, budget=1 << 24)
        {1024: 1024, 16: 16}
    """
    target: dict[int, int] = {}
    current = None
    for size in sorted(bucket_counts, reverse=True):
        if current is not None and bucket_counts[size] * (current - size) <= budget:
            target[size] = current
        else:
            target[size] = current = size
    return target
