"""A batched bounded-variable dual simplex for the atom LPs of the segment-to-snippet LP's components.

One lane holds one component of ``k <= K`` rows (:mod:`jaxfuse._labels.lp_components`)
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
certifies infeasibility (an unbounded dual ray). Basic values are recomputed
from the explicit ``B^-1`` at every pivot, so the optimality test carries no
rounding over from earlier pivots (the reduced costs are updated: they only
rank the entering candidates). On the published chain's components (2 to 12
rows) a component needs about as many pivots as it has rows (at most 12).

Batching: lanes that take the next component of a queue when theirs is done
(finished lanes frozen until a quarter of them wait, then stored and
refilled), so a slow component delays only its lane and the loop runs about
``max(pivots)`` or ``sum(pivots) / lanes`` iterations, whichever is more. Per
lane, the carry is
optimistix's ``(y, step, diff, result)``: ``y`` the basis, ``diff`` the largest
bound violation of a basic variable (0 at the optimum), ``result`` an
:class:`~jaxfuse.ResultCode`. ``max_steps`` (static) caps the pivots per
component; a component past it is handed back for the caller's fallback.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxfuse._core.result_codes import ResultCode
from jaxfuse._labels.lp_components import Components, TierList, feasibility_tolerance


class AtomLP(NamedTuple):
    """One component's atom LP (leading lane dims when batched).

    Attributes:
        matrix: ``[K, N]`` ``M`` (the artificial identity columns are implicit).
        target: ``[K]`` ``q`` (0 on padding rows).
        upper: ``[N]`` atom widths.
        points: ``[4 K]`` int32 sorted breakpoints: atom ``j`` is ``[points[j], points[j + 1])``.
        item: int32 the component's item; first, size: its rows.
    """

    matrix: jax.Array
    target: jax.Array
    upper: jax.Array
    points: jax.Array
    item: jax.Array
    first: jax.Array
    size: jax.Array


class Basis(NamedTuple):
    """A basis and its reduced costs, updated pivot by pivot (basic values are recomputed from ``B^-1``).

    Column ``j < N`` is atom ``j``; ``N + r`` is the artificial of row ``r``
    (fixed at 0: once it has left, it never enters again).
    """

    inverse: jax.Array  # [K, K] B^-1
    columns: jax.Array  # [K] int32 basic columns
    basic: jax.Array  # [N] bool, atom is basic
    at_upper: jax.Array  # [N] bool, nonbasic atom at its upper bound
    upper: jax.Array  # [K] basic variables' upper bounds
    reduced: jax.Array  # [N] reduced costs


class LaneState(NamedTuple):
    y: Basis
    step: jax.Array  # int32 pivots made
    since: jax.Array  # int32 pivots since B^-1 was built or refactored (its rounding grows with them)
    diff: jax.Array  # largest bound violation of a basic variable
    result: jax.Array  # int32 ResultCode, once finished
    active: jax.Array  # bool, solving a component
    pending: jax.Array  # bool, finished and not yet stored
    blocked: jax.Array  # bool, no column can enter: waiting for B^-1 to be refactored before giving up


def atom_lp(components: Components, item, first, size, max_rows: int) -> AtomLP:
    """The atom LP of the component at rows ``first .. first + size - 1`` of ``item`` (one lane)."""
    rows = components.breaks.shape[1]
    index = jnp.minimum(first + jnp.arange(max_rows, dtype=jnp.int32), rows - 1)
    real = jnp.arange(max_rows) < size
    breaks = components.breaks[item, index]
    # Padding rows sit on the component's last breakpoint: zero-width atoms, zero coefficients.
    last = jnp.max(jnp.where(real, breaks[:, 3], 0))
    breaks = jnp.where(real[:, None], breaks, last)
    target = jnp.where(real, components.target[item, index], 0)
    points = jnp.sort(breaks.reshape(-1))
    dtype = target.dtype
    start, width = points[:-1], (points[1:] - points[:-1]).astype(dtype)
    x = start[None, :]
    b = breaks[:, :, None]
    matrix = (
        ((b[:, 1] <= x) & (x < b[:, 2])).astype(dtype)
        - ((b[:, 0] <= x) & (x < b[:, 1])).astype(dtype)
        - ((b[:, 2] <= x) & (x < b[:, 3])).astype(dtype)
    )
    return AtomLP(matrix, target, width, points, item, first, size)


def initial_basis(lp: AtomLP) -> Basis:
    """The artificial basis: every atom nonbasic at 0 (reduced cost 1: dual feasible), artificials at ``q``."""
    max_rows, num_atoms = lp.matrix.shape
    dtype = lp.matrix.dtype
    return Basis(
        inverse=jnp.eye(max_rows, dtype=dtype),
        columns=num_atoms + jnp.arange(max_rows, dtype=jnp.int32),
        basic=jnp.zeros((num_atoms,), bool),
        at_upper=jnp.zeros((num_atoms,), bool),
        upper=jnp.zeros((max_rows,), dtype),
        reduced=jnp.ones((num_atoms,), dtype),
    )


def _one_hot(index, size: int, dtype):
    """``[..., size]`` one-hot rows: per-lane selections as products, which XLA fuses (gathers and scatters it does not)."""
    return (index[..., None] == jnp.arange(size, dtype=index.dtype)).astype(dtype)


def refactored(lp: AtomLP, basis: Basis) -> Basis:
    """``B^-1`` and the reduced costs afresh from the basic columns, dropping the rounding of the pivots' updates.

    Kept as they were if ``B`` is numerically singular.
    """
    max_rows, num_atoms = lp.matrix.shape
    dtype = lp.matrix.dtype
    atom_columns = jnp.take(lp.matrix, jnp.minimum(basis.columns, num_atoms - 1), axis=1)
    artificial_columns = _one_hot(basis.columns - num_atoms, max_rows, dtype).T  # column k: e_r for artificial r
    inverse = jnp.linalg.inv(jnp.where(basis.columns[None, :] < num_atoms, atom_columns, artificial_columns))
    reduced = 1 - ((basis.columns < num_atoms).astype(dtype) @ inverse) @ lp.matrix
    reduced = jnp.where(basis.basic, 0, reduced)
    usable = jnp.all(jnp.isfinite(inverse)) & jnp.all(jnp.isfinite(reduced))
    return basis._replace(
        inverse=jnp.where(usable, inverse, basis.inverse), reduced=jnp.where(usable, reduced, basis.reduced)
    )


def solution_values(lp: AtomLP, basis: Basis, since):
    """Atom values ``[N]`` of a basis (basic ones from ``B^-1``), and whether they meet ``M z = q`` to rounding.

    The rounding allowed on row ``r`` is 1,024 ulps (the most :func:`pivot`
    accepts from a basis no column can leave) of ``|q_r| + sum_j |M_rj| m_j``,
    ``m_j`` the value of a nonbasic atom or the magnitude ``|B^-1| (|q| +
    |M| x_N)`` of a basic one (so it follows ``B``'s conditioning), growing
    with the pivots ``since`` ``B^-1`` was built. After many pivots on an
    ill-conditioned component the updates' rounding in ``B^-1`` can exceed it
    (seen in float32 on dense adversarial rows: residuals of 1e-2).
    """
    dtype = lp.upper.dtype
    nonbasic = jnp.where(basis.basic | ~basis.at_upper, 0, lp.upper)
    basic_values = basis.inverse @ (lp.target - lp.matrix @ nonbasic)
    basic_magnitude = jnp.abs(basis.inverse) @ (jnp.abs(lp.target) + jnp.abs(lp.matrix) @ nonbasic)
    selected = _one_hot(basis.columns, lp.upper.shape[0], dtype)
    values = nonbasic + jnp.clip(basic_values, 0, basis.upper) @ selected
    magnitude = jnp.abs(lp.target) + jnp.abs(lp.matrix) @ (nonbasic + basic_magnitude @ selected)
    rounding = _CLOSE * feasibility_tolerance(magnitude, dtype) * (1 + since.astype(dtype) / 4)
    return values, jnp.all(jnp.abs(lp.matrix @ values - lp.target) <= rounding)


def pivot(lp: AtomLP, state: LaneState):
    """One dual simplex pivot of a lane: ``(state, optimal, infeasible, stuck)``.

    ``optimal`` refers to the basis before the pivot (which is then not
    applied); ``infeasible``: no column can enter and a Farkas certificate
    checks out; ``stuck``: no column can enter. What the pivot reads
    of the leaving row and of the entering column is gathered by one product
    each with a one-hot vector (per-lane gathers would each be a kernel).
    """
    basis = state.y
    max_rows, num_atoms = lp.matrix.shape
    dtype = lp.matrix.dtype
    # Basic values afresh from B^-1 (no rounding carried over from earlier pivots into the optimality test),
    # each with the rounding it can carry: 16 ulps of the sum of its terms' magnitudes, and a quarter of that
    # more for every pivot B^-1 went through since it was last refactored or built.
    nonbasic = jnp.where(basis.basic | ~basis.at_upper, 0, lp.upper)
    values = basis.inverse @ (lp.target - lp.matrix @ nonbasic)
    magnitude = jnp.abs(basis.inverse) @ (jnp.abs(lp.target) + jnp.abs(lp.matrix) @ nonbasic)
    rounding = feasibility_tolerance(magnitude, dtype) * (1 + state.since.astype(dtype) / 4)
    violation = jnp.maximum(-values, values - basis.upper)
    leave = jnp.argmax(violation - rounding)
    leave_row = _one_hot(leave, max_rows, dtype)
    # The leaving row of B^-1, and the leaving variable's value and column.
    row_data = jnp.concatenate(
        [basis.inverse, jnp.stack([values, basis.columns.astype(dtype), violation - rounding], axis=1)], axis=1
    )
    row = leave_row @ row_data
    rho, leaving_value, leaving_column, excess = row[:max_rows], *row[max_rows:]
    diff = jnp.max(violation)
    optimal = excess <= 0
    below = leaving_value < 0

    alpha = rho @ lp.matrix
    signed = jnp.where(below, -alpha, alpha)
    tiny = jnp.finfo(dtype).eps ** 0.75
    eligible = ~basis.basic & (lp.upper > 0) & jnp.where(basis.at_upper, signed < -tiny, signed > tiny)
    ratio = jnp.where(eligible, jnp.abs(basis.reduced) / jnp.where(eligible, jnp.abs(alpha), 1), jnp.inf)
    best = jnp.min(ratio)
    # Ties to the rightmost atom: HiGHS's vertex more often than the leftmost.
    enter = jnp.max(jnp.where(eligible & (ratio <= best + tiny * (1 + best)), jnp.arange(num_atoms), -1))
    # No column can enter. Within _CLOSE times the rounding estimate (which leaves out B^-1's conditioning) the
    # basis is taken as optimal; its atoms are checked against M z = q when stored. Farther out, the leaving
    # row y of B^-1 proves infeasibility if y q lies outside the range of y M z over the box (Farkas). That
    # check holds for any y, so rounding in B^-1 cannot make a false proof; a lane without one is stuck
    # (handed to the fallback like a lane past the pivot cap).
    blocked = ~optimal & (enter < 0)
    close = jnp.max(violation - _CLOSE * rounding) <= 0
    optimal = optimal | (blocked & close)
    stuck = blocked & ~close
    reach = jnp.sum(jnp.abs(alpha) * lp.upper)
    low, high = jnp.sum(jnp.minimum(alpha, 0) * lp.upper), jnp.sum(jnp.maximum(alpha, 0) * lp.upper)
    aim = rho @ lp.target
    margin = feasibility_tolerance(reach + jnp.abs(aim), dtype) * (1 + state.since.astype(dtype) / 4)
    infeasible = stuck & ((aim < low - margin) | (aim > high + margin))

    entering = _one_hot(enter, num_atoms, dtype)
    column_data = jnp.concatenate(
        [lp.matrix, jnp.stack([basis.reduced, alpha, lp.upper])], axis=0
    )
    entry = column_data @ entering
    matrix_column, entering_reduced, entering_alpha, entering_upper = entry[:max_rows], *entry[max_rows:]
    column = basis.inverse @ matrix_column
    pivot_value = leave_row @ column
    dual_step = entering_reduced / entering_alpha
    leaving = jnp.arange(num_atoms, dtype=dtype) == leaving_column  # an artificial: no atom
    pivot_row = rho / pivot_value
    lead = leave_row > 0
    moved = Basis(
        inverse=jnp.where(lead[:, None], pivot_row, basis.inverse - column[:, None] * pivot_row[None, :]),
        columns=jnp.where(lead, enter, basis.columns).astype(jnp.int32),
        basic=(basis.basic | (entering > 0)) & ~leaving,
        at_upper=jnp.where(leaving, ~below, basis.at_upper) & (entering == 0),
        upper=jnp.where(lead, entering_upper, basis.upper),
        reduced=jnp.where(leaving, -dual_step, jnp.where(entering > 0, 0, basis.reduced - dual_step * alpha)),
    )
    return state._replace(y=moved, step=state.step + 1, since=state.since + 1, diff=diff), optimal, infeasible, stuck


# How far past the rounding estimate of a basic value (16 ulps of its terms) a basis that no column can leave
# is still taken as optimal: the estimate leaves out B^-1's conditioning.
_CLOSE = 64
# Pivots between two refactorizations of B^-1 (the published chain's components need at most 12).
_REFACTOR_EVERY = 16


class Atoms(NamedTuple):
    """Every component's atoms, in the slots of its rows: ``[B * R * 4]`` (a component of ``k`` rows fills ``4k - 1``).

    Attributes:
        bounds: ``[B * R * 4, 2]`` int32 atom ``[start, end)`` (``start == end``: no atom).
        value: ``[B * R * 4]`` the labels' sum over the atom.
        status: ``[B * R, 3]`` int32 at a component's first row: its
            :class:`~jaxfuse.ResultCode` (``MAX_STEPS_REACHED``
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


def _store_finished(atoms: Atoms, lp: AtomLP, state: LaneState, rows: int) -> Atoms:
    """Store the lanes that finished since the last store (their basis is the final one).

    An optimum whose atoms fail :func:`solution_values`'s check goes to the
    fallback as if past the pivot cap.
    """
    values, met = jax.vmap(solution_values)(lp, state.y, state.since)
    optimal = (state.result == ResultCode.SUCCESSFUL) & met
    code = jnp.where((state.result == ResultCode.SUCCESSFUL) & ~optimal, ResultCode.MAX_STEPS_REACHED, state.result)
    return store(atoms, lp, values, optimal, code, state.step, jnp.zeros_like(state.step), state.pending, rows)


def solve_tier(components: Components, tier: TierList, atoms: Atoms, *, max_rows: int, lanes: int,
               max_steps: int, refactor: bool = False) -> Atoms:
    """Solve every component of ``tier`` (of at most ``max_rows`` rows) on ``lanes`` lanes; store them in ``atoms``.

    Two nested loops: the outer one stores the lanes that finished, gives
    idle lanes the next components of the queue and, with ``refactor``,
    rebuilds the others' ``B^-1`` from their basic columns; the inner one
    pivots until a quarter of the lanes wait for a component (or none is left
    to pivot), at most ``_REFACTOR_EVERY`` times. When the lanes outnumber the
    components and none needs more pivots than that (the published chain's),
    that is one refill and one store.
    """
    rows = components.target.shape[1]
    capacity = tier.item.shape[0]
    lanes = max(1, min(lanes, capacity))
    build = jax.vmap(lambda i, f, s: atom_lp(components, i, f, s, max_rows))
    zeros = jnp.zeros((lanes,), jnp.int32)
    no = jnp.zeros((lanes,), bool)
    # Idle lanes to start with: only their shapes matter (no program to compile for them).
    lp = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(build, zeros, zeros, zeros))
    state = LaneState(
        y=jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(jax.vmap(initial_basis), lp)),
        step=zeros, since=zeros, diff=jnp.zeros((lanes,), lp.target.dtype), result=zeros, active=no, pending=no,
        blocked=no,
    )
    refill_at = max(1, lanes // 4)

    def pivots(carry):
        lp, state, next_component = carry

        def more(counted):
            count, state = counted
            idle = jnp.sum(~state.active, dtype=jnp.int32)
            waiting = (idle >= refill_at) & (next_component < tier.count)
            return jnp.any(state.active & ~state.blocked) & ~waiting & (count < _REFACTOR_EVERY)

        def step(counted):
            count, state = counted
            return count + 1, pivot_all(state)

        def pivot_all(state):
            stepped, optimal, infeasible, stuck = jax.vmap(pivot)(lp, state)
            working = state.active & ~state.blocked
            # With refactoring, a lane stuck on an updated B^-1 tries again on a refactored one first.
            retry = working & stuck & ~infeasible & (state.since > 0) if refactor else no
            done = working & ~retry & (optimal | stuck | (state.step >= max_steps))
            code = jnp.where(
                optimal, ResultCode.SUCCESSFUL,
                jnp.where(infeasible, ResultCode.INFEASIBLE, ResultCode.MAX_STEPS_REACHED),
            )
            finished = state._replace(result=code.astype(jnp.int32), active=no, pending=state.pending | done)
            state = _where(working & ~done & ~retry, stepped, _where(done, finished, state))
            return state._replace(blocked=state.blocked | retry)

        return jax.lax.while_loop(more, step, (jnp.zeros((), jnp.int32), state))[1]

    def refill_and_solve(carry):
        lp, state, next_component, atoms = carry
        atoms = _store_finished(atoms, lp, state, rows)
        idle = ~state.active
        component = next_component + jnp.cumsum(idle, dtype=jnp.int32) - 1
        take = idle & (component < tier.count)
        safe = jnp.minimum(component, capacity - 1)
        fresh = build(tier.item[safe], tier.first[safe], tier.size[safe])
        start = LaneState(
            y=jax.vmap(initial_basis)(fresh), step=zeros, since=zeros, diff=jnp.zeros_like(state.diff), result=zeros,
            active=take, pending=no, blocked=no,
        )
        state = state._replace(pending=no)
        if refactor:
            continuing = state.active
            state = state._replace(
                y=_where(continuing, jax.vmap(refactored)(lp, state.y), state.y),
                since=jnp.where(continuing, 0, state.since), blocked=no,
            )
        lp = _where(take, fresh, lp)
        state = _where(take, start, state)
        next_component = next_component + jnp.sum(take, dtype=jnp.int32)
        return lp, pivots((lp, state, next_component)), next_component, atoms

    def running(carry):
        return jnp.any(carry[1].active | carry[1].pending) | (carry[2] < tier.count)

    return jax.lax.while_loop(running, refill_and_solve, (lp, state, jnp.zeros((), jnp.int32), atoms))[3]
