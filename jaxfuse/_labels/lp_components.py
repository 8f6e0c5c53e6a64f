"""The published LP split into independent components, one-row components in closed form, and atoms to snippets.

Each row of the segment-to-snippet LP (:mod:`jaxfuse._labels.lp_rows`) touches only
the snippets of its support ``[b0, b3)`` (the segment and its two margins),
and the objective ``sum_t p_t`` is separable. So:

* snippets outside every row's support are 0 at the optimum;
* rows sorted by support start fall into components: a new component starts
  where a row's ``b0`` is at or past the largest ``b3`` of the rows before it.
  Components share no snippet, so each is an LP of its own;
* a component of one row has a closed form: ``q >= 0`` is feasible iff
  ``q <= b2 - b1`` (its interior), ``q < 0`` iff ``-q <= (b1 - b0) + (b3 - b2)``
  (its margins), and the optimum is ``|q|``;
* in a component of several rows, the snippets between two consecutive
  breakpoints of its rows have identical columns: an "atom" ``[a, b)``
  whose labels enter every row through their sum ``z in [0, b - a]``. The LP
  over atoms (at most ``4k - 1`` of them for ``k`` rows) is exact; it is
  solved by :mod:`jaxfuse._labels.interval_simplex`.

An atom value ``z`` goes back to snippets by the "right fill" that HiGHS's
vertex shows on one-row components (16,456 of 16,456 in the issue's probe,
re-checked in the tests): ``floor(z)`` ones at the right end of the atom, the
fractional rest on the snippet to their left. For a negative one-row target
the right margin is filled before the left one. On multi-row components the
same fill gives HiGHS's labels wherever the simplex ends on HiGHS's vertex
(577 of 654 components of 24 published-chain videos in float64); on the
others, all of the difference is in the atoms' sums (another vertex of the
same optimal face: HiGHS's presolve picks it), none in the fill. Atoms share no snippet, so
all atoms of a batch land in one scatter of ones (a difference array of
int32, exact) and one of fractional points.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Components(NamedTuple):
    """The rows of a batch ``[B, R]`` sorted by support start and cut into components.

    Attributes:
        breaks: ``[B, R, 4]`` int32 breakpoints in sorted order (rows with an
            empty support, and padding, last).
        target: ``[B, R]`` their targets ``q``.
        head: ``[B, R]`` bool, the first row of a component.
        size: ``[B, R]`` int32, at a head the number of rows of its component
            (0 elsewhere).
        empty_infeasible: ``[B]`` bool, a valid row with an empty support and
            ``q != 0`` (``0 = q`` cannot hold).
    """

    breaks: jax.Array
    target: jax.Array
    head: jax.Array
    size: jax.Array
    empty_infeasible: jax.Array


def feasibility_tolerance(magnitude, dtype):
    """Bound violations up to this are rounding, for sums of values of about ``magnitude`` (16 ulps)."""
    return 16 * jnp.finfo(dtype).eps * (1 + magnitude)


def _order_by_start(key, largest_key: int):
    """``argsort(key, stable=True)`` along the last axis, for int32 keys in ``[0, largest_key]``.

    XLA's CPU sort of (key, index) pairs is about 7x slower than a sort of one
    array, so the index rides in the low digits of the key when both fit in int32.
    """
    rows = key.shape[-1]
    if (largest_key + 1) * rows > jnp.iinfo(jnp.int32).max:
        return jnp.argsort(key, axis=-1, stable=True)
    return jnp.sort(key * rows + jnp.arange(rows, dtype=jnp.int32), axis=-1) % rows


def split_components(breaks, target, valid, num_snippets: int) -> Components:
    """Sort each item's rows by support start and find its components (O(R log R) per item).

    Args:
        breaks: ``[B, R, 4]`` int32 row breakpoints in ``[0, num_snippets]``.
        target: ``[B, R]`` row targets.
        valid: ``[B, R]`` bool real rows.
        num_snippets: the largest breakpoint there can be.

    Returns:
        The :class:`Components`.
    """
    rows = target.shape[-1]
    support = valid & (breaks[..., 3] > breaks[..., 0])
    empty = valid & ~support
    empty_infeasible = jnp.any(empty & (jnp.abs(target) > feasibility_tolerance(0, target.dtype)), axis=-1)
    order = _order_by_start(jnp.where(support, breaks[..., 0], num_snippets + 1), num_snippets + 1)
    breaks = jnp.take_along_axis(breaks, order[..., None], axis=1)
    target = jnp.take_along_axis(jnp.where(support, target, 0), order, axis=1)
    real = jnp.take_along_axis(support, order, axis=1)
    reach = jax.lax.cummax(jnp.where(real, breaks[..., 3], -1), axis=1)
    before = jnp.concatenate([jnp.full_like(reach[:, :1], -1), reach[:, :-1]], axis=1)
    head = real & (breaks[..., 0] >= before)
    index = jnp.arange(rows, dtype=jnp.int32)
    num_real = jnp.sum(real, axis=-1, dtype=jnp.int32)[:, None]
    next_head = jax.lax.cummin(jnp.where(head, index, rows), axis=1, reverse=True)
    next_head = jnp.concatenate([next_head[:, 1:], jnp.full_like(next_head[:, :1], rows)], axis=1)
    size = jnp.where(head, jnp.minimum(next_head, num_real) - index, 0)
    return Components(breaks, target, head, size.astype(jnp.int32), empty_infeasible)


def one_row_atoms(components: Components):
    """Atoms ``[B, R, 3]`` (start, end, value) of the one-row components, and their infeasibility ``[B, R]``.

    A row's atoms are its left margin, its interior and its right margin; the
    values are HiGHS's vertex: ``q`` on the interior for ``q >= 0``, ``-q`` on
    the right margin first and the rest on the left margin for ``q < 0``.
    """
    b = components.breaks
    q = components.target
    alone = components.head & (components.size == 1)
    left, inside, right = [(b[..., i + 1] - b[..., i]).astype(q.dtype) for i in range(3)]
    tolerance = feasibility_tolerance(jnp.abs(q), q.dtype)
    infeasible = alone & (((q >= 0) & (q > inside + tolerance)) | ((q < 0) & (-q > left + right + tolerance)))
    on_right = jnp.clip(-q, 0, right)
    value = jnp.stack([jnp.clip(-q - on_right, 0, left), jnp.clip(q, 0, inside), on_right], axis=-1)
    value = jnp.where(alone[..., None], value, 0)
    return b[..., :3], b[..., 1:], value, infeasible


class TierList(NamedTuple):
    """The multi-row components of one size tier, compacted over the whole batch.

    Attributes:
        item: ``[H]`` int32 item of each listed component.
        first: ``[H]`` int32 its first row (in :class:`Components` order).
        size: ``[H]`` int32 its number of rows (0 past ``count``).
        count: scalar int32, components listed.
    """

    item: jax.Array
    first: jax.Array
    size: jax.Array
    count: jax.Array


def tier_list(components: Components, smallest: int, largest: int) -> TierList:
    """Components of ``smallest .. largest`` rows; the list has room for all ``B R // smallest`` there can be."""
    batch, rows = components.size.shape
    capacity = max(1, batch * rows // smallest)
    member = (components.size >= smallest) & (components.size <= largest)
    flat = member.reshape(-1)
    position = jnp.where(flat, jnp.cumsum(flat, dtype=jnp.int32) - 1, capacity)
    where = jnp.arange(batch * rows, dtype=jnp.int32)

    def listed(values):
        return jnp.zeros((capacity,), jnp.int32).at[position].set(values, mode="drop")

    return TierList(
        item=listed(where // rows), first=listed(where % rows), size=listed(components.size.reshape(-1)),
        count=jnp.sum(flat, dtype=jnp.int32),
    )


class Fill(NamedTuple):
    """Snippet labels under construction: a difference array of ones and fractional points.

    Attributes:
        ones: ``[B * (L + 1)]`` int32 difference array of the runs of ones.
        fraction: ``[B * L]`` the fractional labels (at most one per atom).
    """

    ones: jax.Array
    fraction: jax.Array


def empty_fill(batch: int, num_snippets: int, dtype) -> Fill:
    return Fill(jnp.zeros((batch * (num_snippets + 1),), jnp.int32), jnp.zeros((batch * num_snippets,), dtype))


def right_fill(fill: Fill, item, start, end, value, num_snippets: int, tolerance) -> Fill:
    """Add atoms ``[start, end)`` of items ``item`` holding ``value`` (any matching shapes), right fill.

    ``floor(value)`` ones end at ``end``, the rest goes on the snippet before
    them; a value within ``tolerance`` of a whole number is taken as that number.
    """
    width = (end - start).astype(value.dtype)
    value = jnp.clip(value, 0, width)
    whole = jnp.minimum(jnp.floor(value + tolerance), width)
    rest = value - whole
    rest = jnp.where((rest > tolerance) & (whole < width), rest, 0)
    ones_start = end - whole.astype(jnp.int32)
    row = item * (num_snippets + 1)
    has_ones = whole > 0
    drop = fill.ones.shape[0]
    ones = fill.ones.at[jnp.where(has_ones, row + ones_start, drop).reshape(-1)].add(1, mode="drop")
    ones = ones.at[jnp.where(has_ones, row + end, drop).reshape(-1)].add(-1, mode="drop")
    point = jnp.where(rest > 0, item * num_snippets + ones_start - 1, fill.fraction.shape[0])
    fraction = fill.fraction.at[point.reshape(-1)].add(rest.reshape(-1), mode="drop")
    return Fill(ones, fraction)


def filled_snippets(fill: Fill, batch: int, num_snippets: int):
    """``[B, L]`` labels: the cumulated ones plus the fractional points."""
    ones = jnp.cumsum(fill.ones.reshape(batch, num_snippets + 1)[:, :num_snippets], axis=-1)
    return ones.astype(fill.fraction.dtype) + fill.fraction.reshape(batch, num_snippets)
