"""The published segment-to-snippet LP solved exactly on device: components, closed forms, batched simplex.

Steps (static shapes throughout, so it runs inside a caller's ``jit``):

1. rows sorted by support start and cut into independent components
   (:func:`jaxfuse._labels.lp_components.split_components`); snippets outside every
   support stay 0;
2. one-row components in closed form, with HiGHS's own vertex;
3. multi-row components, by size tier (2 to 4 rows, 5 to 16, more), through
   the batched dual simplex on their atom LPs (:mod:`jaxfuse._labels.interval_simplex`),
   each tier with its own lanes and pivot cap;
4. components past the pivot cap (none on the published chain's data in the
   benchmarks) get a second try in lanes that refactor ``B^-1`` every 16
   pivots, then go to the restarted PDHG of :mod:`jaxfuse._labels.pdhg` on their
   atom LP (an interval LP too: rows are runs of consecutive atoms, bounds
   the atoms' widths), a few at a time; their items are flagged ``fallback``;
5. atom values back to snippets by the right fill, all in one scatter.

The work is split in three stages so that eager callers compile only what
their data needs: :func:`first_stage` (steps 1 to 3 up to 16 rows: what the
published chain's components need), :func:`second_stage` (larger components
and the fallback: compiled and run only when :attr:`LPProgress.rest` is
positive) and :func:`last_stage`. Inside a caller's ``jit`` the three run in one
program (the second one's loops then make no iteration when nothing is left).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxfuse._core.result_codes import ResultCode
from jaxfuse._labels.interval_simplex import Atoms, atom_lp, solve_tier, store
from jaxfuse._labels.lp_components import (
    Components,
    TierList,
    empty_fill,
    feasibility_tolerance,
    filled_snippets,
    one_row_atoms,
    right_fill,
    split_components,
    tier_list,
)
from jaxfuse._labels.pdhg import solve_interval_lp

# (most rows, lanes per item, most lanes) of the tiers of the first stage. Most components have 2 to 4
# rows (95 % on the benchmark's published-chain data, about 12 per item), a few up to 12; larger ones
# come from dense adversarial rows. A lane costs for every iteration of its tier's loop, an iteration
# has a fixed cost too: on a 2-core CPU, 4 lanes per item up to 1,024 (2 to 4 rows) and one per 4 items
# up to 32 (5 to 16 rows) took 1.1 ms for 32 published-chain LPs and 4.4 ms for 120 (512 and 64 lanes:
# 1.7 and 4.8 ms; 16 and 2 per item: 11 ms for 120).
_TIERS = ((4, 4.0, 1024), (16, 0.25, 32))
_LARGE_TIER_LANES = 4
# Fallback lanes per PDHG solve.
_FALLBACK_LANES = 4


def pivot_cap(max_rows: int) -> int:
    """Most simplex pivots for a component of up to ``max_rows`` rows (realistic ones need about ``rows``)."""
    return 8 * max_rows + 32


def tiers(batch: int, rows: int) -> tuple[tuple[int, int, int], ...]:
    """``(smallest, largest, lanes)`` component sizes per first-stage tier for ``batch`` items of ``rows`` rows."""
    out, smallest = [], 2
    for largest, lanes_per_item, most_lanes in _TIERS:
        if smallest > rows:
            break
        largest = min(largest, rows)
        out.append((smallest, largest, int(min(most_lanes, max(8, lanes_per_item * batch)))))
        smallest = largest + 1
    return tuple(out)


class LPProgress(NamedTuple):
    """A batch of published LPs between stages.

    Attributes:
        components: the rows cut into components.
        atoms: the solved components' atoms and codes (see :class:`~jaxfuse._labels.interval_simplex.Atoms`).
        rest: scalar int32, components left for :func:`second_stage` (more
            rows than the first stage's tiers hold, or past a pivot cap).
        fallback: ``[B]`` bool, items with a component solved by PDHG.
    """

    components: Components
    atoms: Atoms
    rest: jax.Array
    fallback: jax.Array


class ExactSolution(NamedTuple):
    """Labels of a batch of published LPs.

    Attributes:
        x: ``[B, L]`` labels (zero past each length and outside every support).
        result: ``[B]`` int32 ``ResultCode``: ``SUCCESSFUL``, ``INFEASIBLE``,
            or what the PDHG fallback reported (``MAX_STEPS_REACHED``, ``DIVERGED``).
        steps: ``[B]`` int32 most simplex pivots of one component (PDHG
            iterations for a fallback component).
        restarts: ``[B]`` int32 PDHG restarts of the fallback.
        fallback: ``[B]`` bool, a component went past the pivot cap to PDHG.
    """

    x: jax.Array
    result: jax.Array
    steps: jax.Array
    restarts: jax.Array
    fallback: jax.Array


def _capped(atoms: Atoms):
    return atoms.status[:, 0] == ResultCode.MAX_STEPS_REACHED


def _capped_list(components: Components, atoms: Atoms, capacity: int, larger_than: int | None = None) -> TierList:
    """Components past their tier's pivot cap (and, with ``larger_than``, those of more rows), compacted."""
    batch, rows = components.size.shape
    member = atoms.status[:, 0].reshape(batch, rows) == ResultCode.MAX_STEPS_REACHED
    if larger_than is not None:
        member = member | (components.size > larger_than)
    flat = member.reshape(-1)
    position = jnp.where(flat, jnp.cumsum(flat, dtype=jnp.int32) - 1, capacity)
    where = jnp.arange(flat.shape[0], dtype=jnp.int32)

    def listed(values):
        return jnp.zeros((capacity,), jnp.int32).at[position].set(values, mode="drop")

    return TierList(
        listed(where // rows), listed(where % rows), listed(components.size.reshape(-1)), jnp.sum(flat, dtype=jnp.int32)
    )


def _pdhg_fallback(components: Components, listed: TierList, atoms: Atoms, *, max_steps: int, check_every: int, rtol,
                   atol) -> Atoms:
    """Solve the ``listed`` components by PDHG on their atom LPs, ``_FALLBACK_LANES`` at a time."""
    rows = components.target.shape[1]
    build = jax.vmap(lambda i, f, s: atom_lp(components, i, f, s, rows))

    def chunk(carry):
        done, atoms = carry
        index = done + jnp.arange(_FALLBACK_LANES, dtype=jnp.int32)
        real = index < listed.count
        safe = jnp.minimum(index, listed.item.shape[0] - 1)
        item, first = listed.item[safe], listed.first[safe]
        size = jnp.where(real, components.size[item, first], 0)
        lp = build(item, first, size)
        row_index = jnp.minimum(first[:, None] + jnp.arange(rows, dtype=jnp.int32), rows - 1)
        breaks = components.breaks[item[:, None], row_index]
        # Row r of the atom LP covers the atoms from the one starting at b_k on: an interval LP over atoms.
        atom_breaks = jax.vmap(lambda points, b: jnp.searchsorted(points[:-1], b, side="left"))(lp.points, breaks)
        atom_breaks = jnp.where((jnp.arange(rows) < size[:, None])[..., None], atom_breaks, 0).astype(jnp.int32)
        status = jnp.where(real, ResultCode.SUCCESSFUL, ResultCode.EMPTY_GROUP).astype(jnp.int32)
        solution = solve_interval_lp(
            atom_breaks, lp.target, lp.upper, status, max_steps=max_steps, check_every=check_every,
            rtol=rtol, atol=atol,
        )
        usable = (solution.result != ResultCode.INFEASIBLE) & (solution.result != ResultCode.DIVERGED)
        atoms = store(atoms, lp, solution.x, usable, solution.result, solution.steps, solution.restarts, real, rows)
        return done + _FALLBACK_LANES, atoms

    return jax.lax.while_loop(lambda c: c[0] < listed.count, chunk, (jnp.zeros((), jnp.int32), atoms))[1]


def first_stage(breaks, target, valid, *, num_snippets: int, max_pivots: int | None = None) -> LPProgress:
    """First stage: components, one-row closed forms, and the simplex on components of up to 16 rows.

    Args:
        breaks: ``[B, R, 4]`` int32 row breakpoints in ``[0, L_b]`` (from
            :mod:`jaxfuse._labels.lp_rows`).
        target: ``[B, R]`` row targets ``q``.
        valid: ``[B, R]`` bool rows to use.
        num_snippets: ``L``, the largest breakpoint there can be.
        max_pivots: simplex pivots per component before the fallback
            (default :func:`pivot_cap` of the component's tier).

    Returns:
        An :class:`LPProgress`.
    """
    batch, rows = target.shape
    components = split_components(breaks, target, valid, num_snippets)
    start_point, end_point, value, one_row_infeasible = one_row_atoms(components)
    bounds = jnp.stack([start_point, end_point], axis=-1)  # [B, R, 3, 2]
    bounds = jnp.concatenate([bounds, jnp.zeros_like(bounds[:, :, :1])], axis=2)
    code = jnp.where(one_row_infeasible, ResultCode.INFEASIBLE, ResultCode.SUCCESSFUL)
    status = jnp.stack([code, jnp.zeros_like(code), jnp.zeros_like(code)], axis=-1).astype(jnp.int32)
    atoms = Atoms(
        bounds=bounds.reshape(-1, 2),
        value=jnp.concatenate([value, jnp.zeros_like(value[..., :1])], axis=-1).reshape(-1),
        status=status.reshape(-1, 3),
    )
    largest = 1
    for smallest, largest, lanes in tiers(batch, rows):
        listed = tier_list(components, smallest, largest)
        cap = pivot_cap(largest) if max_pivots is None else max_pivots
        atoms = solve_tier(components, listed, atoms, max_rows=largest, lanes=lanes, max_steps=cap)
    rest = jnp.sum(components.size > largest, dtype=jnp.int32) + jnp.sum(_capped(atoms), dtype=jnp.int32)
    return LPProgress(components, atoms, rest, jnp.zeros((batch,), bool))


def second_stage(progress: LPProgress, *, max_steps: int, check_every: int, rtol, atol,
                max_pivots: int | None = None) -> LPProgress:
    """Second stage: the simplex on the components over 16 rows and those past a first-stage cap (lanes of ``R``
    rows that refactor ``B^-1`` every few pivots), then PDHG on any still past the cap.

    Args:
        progress: the first stage's :class:`LPProgress`.
        max_steps, check_every, rtol, atol: the PDHG fallback's options.
        max_pivots: as in :func:`first_stage`.

    Returns:
        The :class:`LPProgress` with nothing left (``rest`` 0).
    """
    components, atoms = progress.components, progress.atoms
    batch, rows = components.target.shape
    largest = max((largest for _, largest, _ in tiers(batch, rows)), default=1)
    capacity = max(1, batch * rows // 2)
    # Components over the first stage's sizes, and those past a first-stage cap, in lanes of all R rows that
    # rebuild B^-1 every few pivots (long pivot sequences lose precision, float32 most).
    listed = _capped_list(components, atoms, capacity, larger_than=largest)
    cap = pivot_cap(rows) if max_pivots is None else max_pivots
    atoms = solve_tier(components, listed, atoms, max_rows=rows, lanes=_LARGE_TIER_LANES, max_steps=cap, refactor=True)
    listed = _capped_list(components, atoms, capacity)
    in_list = jnp.arange(listed.item.shape[0]) < listed.count
    fallback = progress.fallback.at[jnp.where(in_list, listed.item, batch)].set(True, mode="drop")
    atoms = _pdhg_fallback(components, listed, atoms, max_steps=max_steps, check_every=check_every, rtol=rtol, atol=atol)
    return LPProgress(components, atoms, jnp.zeros((), jnp.int32), fallback)


def last_stage(progress: LPProgress, *, num_snippets: int) -> ExactSolution:
    """Last stage: the snippets of every atom (right fill) and each item's code."""
    components, atoms = progress.components, progress.atoms
    batch, rows = components.target.shape
    dtype = atoms.value.dtype
    status = atoms.status.reshape(batch, rows, 3)
    result = jnp.max(status[..., 0], axis=1, initial=0)
    result = jnp.where(components.empty_infeasible, ResultCode.INFEASIBLE, result)
    item = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, rows * 4)).reshape(-1)
    fill = right_fill(
        empty_fill(batch, num_snippets, dtype), item, atoms.bounds[:, 0], atoms.bounds[:, 1], atoms.value,
        num_snippets, feasibility_tolerance(jnp.abs(atoms.value), dtype),
    )
    return ExactSolution(
        filled_snippets(fill, batch, num_snippets), result.astype(jnp.int32), jnp.max(status[..., 1], axis=1),
        jnp.max(status[..., 2], axis=1), progress.fallback,
    )


def solve_published_lp(breaks, target, valid, *, num_snippets: int, max_steps: int, check_every: int, rtol, atol,
                       max_pivots: int | None = None) -> ExactSolution:
    """All three stages in one program (see the module docstring; the arguments are :func:`first_stage`'s and :func:`second_stage`'s)."""
    progress = first_stage(breaks, target, valid, num_snippets=num_snippets, max_pivots=max_pivots)
    progress = second_stage(
        progress, max_steps=max_steps, check_every=check_every, rtol=rtol, atol=atol, max_pivots=max_pivots
    )
    return last_stage(progress, num_snippets=num_snippets)
