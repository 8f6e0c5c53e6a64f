"""A batched bounded-variable dual simplex for the atom LPs of the segment-to-snippet LP's components.

One lane holds one component of ``k <= K`` rows (:mod:`jaxfuse._lp_components`)
as the LP over its atoms::

    min  sum_j z_j    s.t.   M z = q,   0 <= z_j <= w_j,

``M`` being ``-1, 0, +1`` (the rows' margins and interiors), ``N = 4K - 1`` atoms
(zero-width ones are fixed at 0). With ``K`` artificial columns ``e_r`` fixed at
0 the identity is a first basis, and, all costs being 1 and all bounds finite,
every nonbasic atom at its lower bound makes it dual feasible. So the dual
simplex (Dantzig's rule on the primal side: the basic variable farthest out of
its bounds leaves; the dual ratio test picks the entering column, ties to the
rightmost atom, which reproduces most of HiGHS's vertices) needs no phase 1:
every pivot moves one basic variable back into its bounds, the optimum is the
first primal-feasible basis, and a row of ``B^-1 M`` with no entering column
certifies infeasibility (an unbounded dual ray). Basic values and reduced
costs are recomputed from the explicit ``B^-1`` at every pivot, so rounding
does not build up between pivots.

Batching: a while loop over lanes that each take the next component of a
queue when their own is done (finished lanes frozen, then refilled), so a slow
component delays only its lane and the loop runs about ``max(pivots)`` or
``sum(pivots) / lanes`` iterations, whichever is more. Per lane, the carry is
optimistix's ``(y, step, diff, result)``: ``y`` the basis, ``diff`` the largest
bound violation of a basic variable (0 at the optimum), ``result`` an
:class:`~jaxfuse._interval_lp.LPResultCode`. ``max_steps`` (static) caps the pivots per
component; a component past it is handed back for the caller's fallback.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxfuse._interval_lp import LPResultCode
from jaxfuse._lp_components import Components, TierList, feasibility_tolerance


class AtomLP(NamedTuple):
    """One component's atom LP (leading lane dims when batched).

    Attributes:
        matrix: ``[K, N + K]`` ``M`` then the artificial identity.
        target: ``[K]`` ``q`` (0 on padding rows).
        upper: ``[N + K]`` atom widths, then 0 for the artificials.
        points: ``[4 K]`` int32 sorted breakpoints: atom ``j`` is ``[points[j], points[j + 1])``.
        item: int32 the component's item; first, size: its rows.
        tolerance: bound violations up to this are rounding.
    """

    matrix: jax.Array
    target: jax.Array
    upper: jax.Array
    points: jax.Array
    item: jax.Array
    first: jax.Array
    size: jax.Array
    tolerance: jax.Array


class Basis(NamedTuple):
    inverse: jax.Array  # [K, K] B^-1
    columns: jax.Array  # [K] int32 basic columns
    at_upper: jax.Array  # [N + K] bool, nonbasic columns at their upper bound


class LaneState(NamedTuple):
    y: Basis
    step: jax.Array  # int32 pivots made
    diff: jax.Array  # largest bound violation of a basic variable
    result: jax.Array  # int32 LPResultCode
    active: jax.Array  # bool, solving a component
    component: jax.Array  # int32 index in the tier list


def atom_lp(components: Components, item, first, size, max_rows: int) -> AtomLP:
    """The atom LP of the component at rows ``first .. first + size - 1`` of ``item`` (one lane)."""
    rows = components.breaks.shape[1]
    index = first + jnp.arange(max_rows, dtype=jnp.int32)
    real = jnp.arange(max_rows) < size
    breaks = components.breaks[item, jnp.minimum(index, rows - 1)]
    # Padding rows sit on the component's last breakpoint: zero-width atoms, zero coefficients.
    last = jnp.max(jnp.where(real, breaks[:, 3], 0))
    breaks = jnp.where(real[:, None], breaks, last)
    target = jnp.where(real, components.target[item, jnp.minimum(index, rows - 1)], 0)
    points = jnp.sort(breaks.reshape(-1))
    start, width = points[:-1], (points[1:] - points[:-1]).astype(target.dtype)
    x = start[None, :]
    b = breaks[:, :, None]
    coefficient = (
        ((b[:, 1] <= x) & (x < b[:, 2])).astype(target.dtype)
        - ((b[:, 0] <= x) & (x < b[:, 1])).astype(target.dtype)
        - ((b[:, 2] <= x) & (x < b[:, 3])).astype(target.dtype)
    )
    matrix = jnp.concatenate([coefficient, jnp.eye(max_rows, dtype=target.dtype)], axis=1)
    upper = jnp.concatenate([width, jnp.zeros((max_rows,), target.dtype)])
    tolerance = feasibility_tolerance(jnp.max(jnp.abs(target)) + jnp.max(width), target.dtype)
    return AtomLP(matrix, target, upper, points, item, first, size, tolerance)


def initial_basis(lp: AtomLP) -> Basis:
    max_rows, columns = lp.matrix.shape
    return Basis(
        inverse=jnp.eye(max_rows, dtype=lp.matrix.dtype),
        columns=columns - max_rows + jnp.arange(max_rows, dtype=jnp.int32),
        at_upper=jnp.zeros((columns,), bool),
    )


def _one_hot(index, size: int, dtype):
    """``[..., size]`` one-hot rows: per-lane selections as products, which XLA fuses (gathers and scatters it does not)."""
    return (index[..., None] == jnp.arange(size, dtype=index.dtype)).astype(dtype)


def _values(lp: AtomLP, basis: Basis):
    """Nonbasic values ``[N + K]`` (0 at basic columns), basic values ``[K]``, the basic columns one-hot ``[K, N + K]``."""
    dtype = lp.matrix.dtype
    selected = _one_hot(basis.columns, lp.upper.shape[0], dtype)
    basic = jnp.sum(selected, axis=0) > 0
    nonbasic = jnp.where(basic | ~basis.at_upper, 0, lp.upper)
    residual = lp.target - jnp.sum(lp.matrix * nonbasic, axis=1)
    return nonbasic, jnp.sum(basis.inverse * residual, axis=1), selected, basic


def pivot(lp: AtomLP, state: LaneState):
    """One dual simplex pivot of a lane: ``(state, optimal, infeasible, atom values)``.

    ``optimal`` and the values refer to the basis before the pivot (which is
    then not applied); ``infeasible`` means no column can enter.
    """
    basis = state.y
    max_rows, columns = lp.matrix.shape
    num_atoms = columns - max_rows
    dtype = lp.matrix.dtype
    nonbasic, basic_values, selected, basic = _values(lp, basis)
    upper_basic = jnp.sum(selected * lp.upper, axis=1)
    violation = jnp.maximum(-basic_values, basic_values - upper_basic)
    diff = jnp.max(violation)
    leave = jnp.min(jnp.where(violation == diff, jnp.arange(max_rows), max_rows))
    leave_row = _one_hot(leave, max_rows, dtype)
    optimal = diff <= lp.tolerance
    values = (nonbasic + jnp.sum(selected * jnp.clip(basic_values, 0, upper_basic)[:, None], axis=0))[:num_atoms]

    cost_basic = (basis.columns < num_atoms).astype(dtype)
    rows = jnp.stack([cost_basic, leave_row]) @ basis.inverse
    products = jnp.sum(rows[:, :, None] * lp.matrix[None], axis=1)
    reduced = (jnp.arange(columns) < num_atoms).astype(dtype) - products[0]
    alpha = products[1]
    below = jnp.sum(leave_row * basic_values) < 0
    signed = jnp.where(below, -alpha, alpha)
    tiny = jnp.finfo(dtype).eps ** 0.75
    eligible = ~basic & (lp.upper > 0) & jnp.where(basis.at_upper, signed < -tiny, signed > tiny)
    ratio = jnp.where(eligible, jnp.abs(reduced) / jnp.where(eligible, jnp.abs(alpha), 1), jnp.inf)
    best = jnp.min(ratio)
    ties = eligible & (ratio <= best + tiny * (1 + best))
    enter = jnp.max(jnp.where(ties, jnp.arange(columns), -1))
    infeasible = ~optimal & (enter < 0)

    entering = _one_hot(enter, columns, dtype)
    column = jnp.sum(basis.inverse * jnp.sum(lp.matrix * entering, axis=1), axis=1)
    pivot_row = rows[1] / jnp.sum(leave_row * column)
    inverse = jnp.where(leave_row[:, None] > 0, pivot_row, basis.inverse - column[:, None] * pivot_row[None, :])
    leaving = jnp.sum(selected * leave_row[:, None], axis=0) > 0
    at_upper = jnp.where(leaving, ~below, basis.at_upper) & (entering == 0)
    moved = Basis(inverse, jnp.where(leave_row > 0, enter, basis.columns).astype(jnp.int32), at_upper)
    stepped = LaneState(
        y=moved, step=state.step + 1, diff=diff, result=state.result, active=state.active, component=state.component
    )
    return stepped, optimal, infeasible, values


class Atoms(NamedTuple):
    """Every component's atoms, in the slots of its rows: ``[B * R * 4]`` (a component of ``k`` rows fills ``4k - 1``).

    Attributes:
        bounds: ``[B * R * 4, 2]`` int32 atom ``[start, end)`` (``start == end``: no atom).
        value: ``[B * R * 4]`` the labels' sum over the atom.
        status: ``[B * R, 3]`` int32 at a component's first row: its
            :class:`~jaxfuse._interval_lp.LPResultCode` (``MAX_STEPS_REACHED``
            when past the pivot cap), its pivots (or PDHG iterations) and PDHG restarts.
    """

    bounds: jax.Array
    value: jax.Array
    status: jax.Array


def store(atoms: Atoms, lp: AtomLP, values, usable, code, steps, restarts, done, rows: int) -> Atoms:
    """Write the atoms (0 unless ``usable``), code and steps of lanes that are ``done`` into their rows' slots."""
    slots = values.shape[-1]
    head = lp.item * rows + lp.first
    slot = head[:, None] * 4 + jnp.arange(slots, dtype=jnp.int32)
    real = done[:, None] & (jnp.arange(slots) < 4 * lp.size[:, None] - 1)
    slot = jnp.where(real, slot, atoms.value.shape[0])
    bounds = jnp.stack([lp.points[:, :-1], lp.points[:, 1:]], axis=-1)
    return Atoms(
        bounds=atoms.bounds.at[slot].set(bounds, mode="drop"),
        value=atoms.value.at[slot].set(jnp.where(usable[:, None], values, 0), mode="drop"),
        status=atoms.status.at[jnp.where(done, head, atoms.status.shape[0])].set(
            jnp.stack([code, steps, restarts], axis=-1).astype(jnp.int32), mode="drop"
        ),
    )


def _where(mask, new, old):
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def solve_tier(components: Components, tier: TierList, atoms: Atoms, *, max_rows: int, lanes: int,
               max_steps: int) -> Atoms:
    """Solve every component of ``tier`` (of at most ``max_rows`` rows) on ``lanes`` lanes; store them in ``atoms``."""
    rows = components.target.shape[1]
    capacity = tier.item.shape[0]
    lanes = max(1, min(lanes, capacity))
    build = jax.vmap(lambda i, f, s: atom_lp(components, i, f, s, max_rows))
    zeros = jnp.zeros((lanes,), jnp.int32)
    lp = build(zeros, zeros, zeros)
    state = LaneState(
        y=jax.vmap(initial_basis)(lp), step=zeros, diff=jnp.zeros((lanes,), lp.target.dtype),
        result=zeros, active=jnp.zeros((lanes,), bool), component=zeros,
    )

    def load(carry):
        lp, state, next_component, atoms = carry
        idle = ~state.active
        component = next_component + jnp.cumsum(idle, dtype=jnp.int32) - 1
        take = idle & (component < tier.count)
        safe = jnp.minimum(component, capacity - 1)
        fresh = build(tier.item[safe], tier.first[safe], tier.size[safe])
        start = LaneState(
            y=jax.vmap(initial_basis)(fresh), step=zeros, diff=jnp.zeros_like(state.diff),
            result=zeros, active=take, component=component,
        )
        taken = jnp.sum(take, dtype=jnp.int32)
        return _where(take, fresh, lp), _where(take, start, state), next_component + taken, atoms

    def body(carry):
        waiting = jnp.any(~carry[1].active) & (carry[2] < tier.count)
        lp, state, next_component, atoms = jax.lax.cond(waiting, load, lambda c: c, carry)
        stepped, optimal, infeasible, values = jax.vmap(pivot)(lp, state)
        done = state.active & (optimal | infeasible | (state.step >= max_steps))
        code = jnp.where(
            optimal, LPResultCode.SUCCESSFUL, jnp.where(infeasible, LPResultCode.INFEASIBLE, LPResultCode.MAX_STEPS_REACHED)
        )
        atoms = jax.lax.cond(
            jnp.any(done), lambda a: store(a, lp, values, optimal, code, state.step, zeros, done, rows), lambda a: a, atoms
        )
        moving = state.active & ~done
        state = _where(moving, stepped, state)._replace(active=moving)
        return lp, state, next_component, atoms

    def running(carry):
        return jnp.any(carry[1].active) | (carry[2] < tier.count)

    return jax.lax.while_loop(running, body, (lp, state, jnp.zeros((), jnp.int32), atoms))[3]
