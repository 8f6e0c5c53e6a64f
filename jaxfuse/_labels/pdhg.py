"""Batched LPs over interval rows, solved on device by restarted PDHG.

The linear program (one per lane of a batch)::

    min  sum_t x_t    s.t.   A x = q,   0 <= x <= u

where row ``r`` of ``A`` is a signed sum of three consecutive intervals given by
its breakpoints ``b0 <= b1 <= b2 <= b3``: ``-1`` on ``[b0, b1)``, ``+1`` on
``[b1, b2)``, ``-1`` on ``[b2, b3)`` (the segment-to-snippet LP of the published
GauFuse_WSTAL training code: a fused segment and its outer margins). Such rows
make both products O(L + R) prefix-sum operations instead of O(L R):

* ``A x``: with the prefix sums ``P = [0, x_0, x_0 + x_1, ...]``, row ``r`` is
  ``P[b0] - 2 P[b1] + 2 P[b2] - P[b3]`` (four gathers);
* ``A^T y``: the cumulative sum of a difference array holding ``-y_r`` at
  ``b0``, ``+2 y_r`` at ``b1``, ``-2 y_r`` at ``b2`` and ``+y_r`` at ``b3``
  (one scatter-add of four points per row).

Solver: primal-dual hybrid gradient (Chambolle and Pock, 2011) in the form of
PDLP (Applegate et al., NeurIPS 2021; cuPDLP, Lu and Yang, 2023):

* diagonal preconditioning by the row and column absolute sums of ``A``
  (Pock and Chambolle, ICCV 2011, alpha = 1): steps ``tau_t = eta / (omega
  colsum_t)`` and ``sigma_r = eta omega / rowsum_r`` converge for any ``eta < 1``
  without a norm estimate (here rowsum is the row's length, colsum the number of
  rows touching the snippet);
* restarts to the average or the current iterate, whichever has the smaller
  KKT error, on cuPDLP's criteria (sufficient decay 0.2, necessary decay 0.8
  without progress, or an artificial restart after 36 % of all steps);
* the primal weight ``omega`` re-balanced at every restart by the distance
  moved in the dual over the distance moved in the primal (smoothing 0.5).

With finite bounds the dual is always feasible (the reduced costs are absorbed
by the bounds), so the KKT error is the primal residual and the duality gap.
A lane stops, optimistix-style, when ``max |A x - q| <= atol + rtol max |q|``
and ``|gap| <= atol + rtol (|primal| + |dual|)``; it is then frozen while the
other lanes go on.

Infeasibility (Farkas): if some ``y`` has ``q^T y > sum_t u_t max(0, (A^T y)_t)``
no ``x`` in the box satisfies ``A x = q``. On an infeasible LP the PDHG dual
iterate diverges along such a ray, so the test runs on the current dual
iterate and on its displacement since the last restart. Rows that are
infeasible on their own (``q_r`` beyond what the row's intervals can reach) are
caught before the first step.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxfuse._core.result_codes import ResultCode
from jaxfuse._core.rows import compacted_while_loop


class IntervalLPSolution(NamedTuple):
    """The solution of a batch of interval LPs (leading dims ``[...]`` are lanes).

    Attributes:
        x: ``[..., L]`` primal solution, within ``[0, u]`` exactly.
        dual: ``[..., R]`` equality multipliers ``y``.
        objective: ``[...]`` ``sum_t x_t``.
        dual_objective: ``[...]`` ``q^T y + sum_t u_t min(0, 1 - (A^T y)_t)``, a
            lower bound on the optimum for any ``y``.
        primal_residual: ``[...]`` ``max_r |(A x - q)_r|``.
        steps: ``[...]`` int32 PDHG iterations run.
        restarts: ``[...]`` int32 restarts made.
        result: ``[...]`` int32 :class:`ResultCode`.
    """

    x: Any
    dual: Any
    objective: Any
    dual_objective: Any
    primal_residual: Any
    steps: Any
    restarts: Any
    result: Any


class _Problem(NamedTuple):
    breaks: jax.Array  # [B, R, 4] int32 in [0, L]
    target: jax.Array  # [B, R] q, 0 on padding rows
    upper: jax.Array  # [B, L] u
    tau: jax.Array  # [B, L] 1 / colsum
    sigma: jax.Array  # [B, R] 1 / rowsum


class _Carry(NamedTuple):
    x: jax.Array  # [B, L] current iterate
    y: jax.Array  # [B, R]
    aty: jax.Array  # [B, L] A^T y
    x_sum: jax.Array  # [B, L] sum of iterates since the last restart
    y_sum: jax.Array  # [B, R]
    count: jax.Array  # [B] iterates in the sums
    x_anchor: jax.Array  # [B, L] the last restart point
    y_anchor: jax.Array  # [B, R]
    aty_anchor: jax.Array  # [B, L]
    kkt_anchor: jax.Array  # [B] its KKT error
    kkt_previous: jax.Array  # [B] the candidate's KKT error at the previous check
    omega: jax.Array  # [B] primal weight
    best_x: jax.Array  # [B, L] the candidate of the last check (what is returned)
    best_y: jax.Array  # [B, R]
    residual: jax.Array  # [B] its max |A x - q|
    objective: jax.Array  # [B]
    dual_objective: jax.Array  # [B]
    step: jax.Array  # [B] int32 iterations run
    restarts: jax.Array  # [B] int32
    result: jax.Array  # [B] int32 ResultCode
    active: jax.Array  # [B] bool, still iterating


# cuPDLP's restart parameters.
_SUFFICIENT_DECAY = 0.2
_NECESSARY_DECAY = 0.8
_ARTIFICIAL_FRACTION = 0.36
_PRIMAL_WEIGHT_SMOOTHING = 0.5
# Step scale below the Pock-Chambolle bound of 1 (which is only reached in the limit).
_STEP_SCALE = 0.99
# Initial primal weight: PDLP's |c| / |q| times this. The warm start's primal is
# good and its dual crude, so larger dual steps pay first: 15-25 % fewer
# iterations on THUMOS-like LPs (two seeds) than with a factor 1; 3 to 30 do alike.
_OMEGA_SCALE = 10.0
# Compaction stops at this many lanes, and after one halving: every stage is one
# more loop to compile (about 5 s on a loaded 2-core CPU), and the first halving
# (empty and quickly solved lanes out) saves most of the time.
_MIN_LANES = 16


_BLOCK = 16


def prefix_sums(x):
    """``[..., n + 1]`` prefix sums ``[0, x_0, x_0 + x_1, ...]`` of ``x [..., n]``.

    XLA's CPU cumulative sum costs several times a matrix product of the same
    size: blocks of 16 are summed by a product with a triangular matrix of ones
    (full float32 precision) and only the block totals go through ``cumsum``.
    """
    n = x.shape[-1]
    padded = -(-n // _BLOCK) * _BLOCK
    blocks = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, padded - n)]).reshape(x.shape[:-1] + (padded // _BLOCK, _BLOCK))
    triangle = jnp.triu(jnp.ones((_BLOCK, _BLOCK), x.dtype))
    within = jnp.matmul(blocks, triangle, precision=lax.Precision.HIGHEST)
    totals = within[..., -1]
    before = jnp.cumsum(totals, axis=-1) - totals
    sums = (within + before[..., None]).reshape(x.shape[:-1] + (padded,))[..., :n]
    return jnp.concatenate([jnp.zeros(x.shape[:-1] + (1,), x.dtype), sums], axis=-1)


def apply_rows(breaks, x):
    """``A x``: ``[B, R]`` from ``x [B, L]`` and row breakpoints ``[B, R, 4]``."""
    prefix = prefix_sums(x)
    rows = breaks.shape[-2]
    at = jnp.take_along_axis(prefix, breaks.reshape(breaks.shape[:-2] + (4 * rows,)), axis=-1)
    at = at.reshape(breaks.shape)
    return (at[..., 0] - at[..., 3]) + 2 * (at[..., 2] - at[..., 1])


_DIFFERENCE = (-1.0, 2.0, -2.0, 1.0)


class TransposePlan(NamedTuple):
    """What ``A^T y`` needs that does not change between iterations.

    ``A^T y`` at ``t`` is the sum of the difference-array weights of the
    breakpoints at or before ``t``. With the breakpoints sorted once, that is
    a prefix sum over the sorted weights read at ``#{breakpoints <= t}``: two
    gathers and a cumulative sum of 4 R values per iteration, no scatter (a
    scatter-add is several times slower than a gather on CPU).

    Attributes:
        order: ``[B, 4R]`` int32, the breakpoints' flat indices in sorted order.
        count: ``[B, L]`` int32, the number of breakpoints ``<= t``.
    """

    order: jax.Array
    count: jax.Array


def transpose_plan(breaks, num_columns: int) -> TransposePlan:
    points = breaks.reshape(breaks.shape[0], -1)
    order = jnp.argsort(points, axis=-1, stable=True)
    ordered = jnp.take_along_axis(points, order, axis=-1)
    columns = jnp.arange(num_columns, dtype=points.dtype)
    count = jax.vmap(lambda row: jnp.searchsorted(row, columns, side="right"))(ordered)
    return TransposePlan(order.astype(jnp.int32), count.astype(jnp.int32))


def spread_points(plan: TransposePlan, weights):
    """``sum_r sum_k weights[r, k] [t >= b_rk]`` for ``t < L``: a difference array of per-breakpoint weights ``[B, R, 4]``."""
    flat = weights.reshape(weights.shape[0], -1)
    ordered = jnp.take_along_axis(flat, plan.order, axis=-1)
    return jnp.take_along_axis(prefix_sums(ordered), plan.count, axis=-1)


def apply_transpose(plan: TransposePlan, y):
    """``A^T y``: ``[B, L]`` from ``y [B, R]``."""
    return spread_points(plan, y[..., None] * jnp.asarray(_DIFFERENCE, y.dtype))


def _warm_start(problem: _Problem, plan: TransposePlan):
    """The solution when no two rows share a snippet, as the starting point.

    A row alone is solved by spreading ``q_r`` evenly over its inside when
    ``q_r >= 0`` (its margins at 0), or ``-q_r`` over its margins when
    ``q_r < 0``; its multiplier is ``sign(q_r)`` (zero reduced cost where the
    spread lies). Where rows share snippets the sum is clipped to the bounds;
    PDHG then only has to resolve the interactions.
    """
    capacity = prefix_sums(problem.upper)
    at = jnp.take_along_axis(capacity, problem.breaks.reshape(problem.breaks.shape[0], -1), axis=-1)
    at = at.reshape(problem.breaks.shape)
    inside = at[..., 2] - at[..., 1]
    margin = (at[..., 1] - at[..., 0]) + (at[..., 3] - at[..., 2])
    q = problem.target
    level_inside = jnp.where((q > 0) & (inside > 0), q / jnp.where(inside > 0, inside, 1), 0)
    level_margin = jnp.where((q < 0) & (margin > 0), -q / jnp.where(margin > 0, margin, 1), 0)
    zero = jnp.zeros_like(q)
    weights = jnp.stack([level_margin, level_inside - level_margin, level_margin - level_inside, -level_margin], axis=-1)
    x = jnp.clip(spread_points(plan, weights) * problem.upper, 0, problem.upper)
    y = jnp.where(q > 0, 1, jnp.where(q < 0, -1, zero)).astype(q.dtype)
    return x, y


def _absolute_sums(breaks, num_columns: int, dtype):
    """Row and column absolute sums of ``A`` (its nonzeros are all +-1)."""
    row = (breaks[..., 3] - breaks[..., 0]).astype(dtype)
    batch = breaks.shape[0]
    # |A| is +1 on [b0, b3): a difference array of +1 at b0 and -1 at b3.
    lanes = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, breaks.shape[1] * 2))
    points = breaks[..., jnp.array([0, 3])].reshape(batch, -1)
    signs = jnp.broadcast_to(jnp.asarray([1.0, -1.0], dtype), breaks.shape[:-1] + (2,)).reshape(batch, -1)
    difference = jnp.zeros((batch, num_columns + 1), dtype).at[lanes, points].add(signs)
    column = jnp.cumsum(difference[:, :num_columns], axis=-1)
    return row, column


def _dual_objective(problem: _Problem, y, aty):
    reduced = 1 - aty
    return jnp.sum(problem.target * y, axis=-1) + jnp.sum(problem.upper * jnp.minimum(reduced, 0), axis=-1)


def _proves_infeasible(problem: _Problem, y, aty, direction, at_direction):
    """Whether a dual point or a dual ray proves the LP infeasible, with margins for rounding.

    * Weak duality: every feasible ``x`` has ``sum x <= sum u``, and the dual
      objective of any ``y`` is a lower bound on ``sum x``; a dual objective
      above ``sum u`` leaves no feasible ``x``.
    * Farkas: a ray ``d`` with ``q^T d > sum_t u_t max(0, (A^T d)_t)``.

    The margins are far above the rounding of the sums (a few ulps of their
    absolute terms), so a lane is only declared infeasible on clear evidence;
    a lane that is infeasible by less keeps iterating to ``max_steps``.
    """
    capacity = jnp.sum(problem.upper, axis=-1)
    dual = _dual_objective(problem, y, aty)
    dual_scale = jnp.sum(jnp.abs(problem.target * y), axis=-1) + jnp.sum(problem.upper * jnp.abs(1 - aty), axis=-1)
    above_capacity = dual > capacity + 1e-3 * (1 + capacity) + 1e-4 * dual_scale
    gain = jnp.sum(problem.target * direction, axis=-1)
    cost = jnp.sum(problem.upper * jnp.maximum(at_direction, 0), axis=-1)
    ray_scale = jnp.sum(jnp.abs(problem.target * direction), axis=-1) + jnp.sum(
        problem.upper * jnp.abs(at_direction), axis=-1
    )
    farkas = gain - cost > 1e-3 * ray_scale + jnp.finfo(y.dtype).tiny
    return above_capacity | farkas


def _row_infeasible(problem: _Problem):
    """Rows whose target no point of the box reaches on its own: ``-margin <= q <= inside`` fails."""
    upper_prefix = jnp.concatenate(
        [jnp.zeros(problem.upper.shape[:-1] + (1,), problem.upper.dtype), jnp.cumsum(problem.upper, axis=-1)], axis=-1
    )
    at = jnp.take_along_axis(upper_prefix, problem.breaks.reshape(problem.breaks.shape[0], -1), axis=-1)
    at = at.reshape(problem.breaks.shape)
    inside = at[..., 2] - at[..., 1]
    margin = (at[..., 1] - at[..., 0]) + (at[..., 3] - at[..., 2])
    slack = 1e2 * jnp.finfo(problem.target.dtype).eps * (1 + inside + margin)
    return jnp.any((problem.target > inside + slack) | (problem.target < -margin - slack), axis=-1)


def _pdhg_step(problem, plan, state):
    """One PDHG iteration: projected primal step, extrapolated dual step."""
    x, y, aty, x_sum, y_sum, omega = state
    primal_step = (_STEP_SCALE / omega)[:, None] * problem.tau
    dual_step = (_STEP_SCALE * omega)[:, None] * problem.sigma
    x_new = jnp.clip(x - primal_step * (1 - aty), 0, problem.upper)
    y_new = y + dual_step * (problem.target - apply_rows(problem.breaks, 2 * x_new - x))
    aty_new = apply_transpose(plan, y_new)
    return x_new, y_new, aty_new, x_sum + x_new, y_sum + y_new, omega

def _kkt(problem, x, y, aty, omega):
    """The weighted KKT error, max primal residual, primal and dual objectives of an iterate."""
    residual = apply_rows(problem.breaks, x) - problem.target
    primal = jnp.sum(x, axis=-1)
    dual = _dual_objective(problem, y, aty)
    error = jnp.sqrt((omega**2) * jnp.sum(residual**2, axis=-1) + (primal - dual) ** 2)
    return error, jnp.max(jnp.abs(residual), axis=-1, initial=0), primal, dual

def _check_round(inputs, c: _Carry, *, check_every: int, num_checks: int, rtol, atol) -> _Carry:
    """``check_every`` PDHG iterations, then the convergence, infeasibility and restart checks of every lane."""
    dtype = c.x.dtype
    problem, plan = inputs
    x, y, aty, x_sum, y_sum, _ = lax.fori_loop(
        0, check_every, lambda _, state: _pdhg_step(problem, plan, state), (c.x, c.y, c.aty, c.x_sum, c.y_sum, c.omega)
    )
    count = c.count + check_every
    step = c.step + check_every
    x_avg = x_sum / count[:, None]
    y_avg = y_sum / count[:, None]
    aty_avg = apply_transpose(plan, y_avg)
    kkt_current, residual_current, primal_current, dual_current = _kkt(problem, x, y, aty, c.omega)
    kkt_average, residual_average, primal_average, dual_average = _kkt(problem, x_avg, y_avg, aty_avg, c.omega)
    use_average = kkt_average < kkt_current
    pick = lambda a, b: jnp.where(use_average.reshape(use_average.shape + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
    x_candidate, y_candidate, aty_candidate = pick(x_avg, x), pick(y_avg, y), pick(aty_avg, aty)
    kkt_candidate = pick(kkt_average, kkt_current)
    residual = pick(residual_average, residual_current)
    primal, dual = pick(primal_average, primal_current), pick(dual_average, dual_current)

    converged = (residual <= atol + rtol * jnp.max(jnp.abs(problem.target), axis=-1, initial=0)) & (
        jnp.abs(primal - dual) <= atol + rtol * (jnp.abs(primal) + jnp.abs(dual))
    )
    y_moved = y - c.y_anchor
    infeasible = _proves_infeasible(problem, y, aty, y_moved, aty - c.aty_anchor)
    diverged = ~jnp.isfinite(kkt_candidate)
    restart = (
        (kkt_candidate <= _SUFFICIENT_DECAY * c.kkt_anchor)
        | ((kkt_candidate <= _NECESSARY_DECAY * c.kkt_anchor) & (kkt_candidate > c.kkt_previous))
        | (count >= _ARTIFICIAL_FRACTION * step.astype(dtype))
    )
    # Primal weight: move omega toward |dy| / |dx| (in log space), when both moved.
    moved_x = jnp.sqrt(jnp.sum((x_candidate - c.x_anchor) ** 2, axis=-1))
    moved_y = jnp.sqrt(jnp.sum((y_candidate - c.y_anchor) ** 2, axis=-1))
    balanced = jnp.exp(
        _PRIMAL_WEIGHT_SMOOTHING * jnp.log(jnp.where(moved_x > 0, moved_y, 1) / jnp.where(moved_x > 0, moved_x, 1))
        + (1 - _PRIMAL_WEIGHT_SMOOTHING) * jnp.log(c.omega)
    )
    new_omega = jnp.where(restart & (moved_x > 1e-10) & (moved_y > 1e-10), balanced, c.omega)
    keep = restart[:, None]
    zero = jnp.zeros((), dtype)
    out_of_steps = step >= num_checks * check_every
    result = jnp.where(
        converged,
        ResultCode.SUCCESSFUL,
        jnp.where(
            infeasible,
            ResultCode.INFEASIBLE,
            jnp.where(diverged, ResultCode.DIVERGED, jnp.where(out_of_steps, ResultCode.MAX_STEPS_REACHED, c.result)),
        ),
    )
    updated = _Carry(
        x=jnp.where(keep, x_candidate, x),
        y=jnp.where(keep, y_candidate, y),
        aty=jnp.where(keep, aty_candidate, aty),
        x_sum=jnp.where(keep, zero, x_sum),
        y_sum=jnp.where(keep, zero, y_sum),
        count=jnp.where(restart, zero, count),
        x_anchor=jnp.where(keep, x_candidate, c.x_anchor),
        y_anchor=jnp.where(keep, y_candidate, c.y_anchor),
        aty_anchor=jnp.where(keep, aty_candidate, c.aty_anchor),
        kkt_anchor=jnp.where(restart, kkt_candidate, c.kkt_anchor),
        kkt_previous=kkt_candidate,
        omega=new_omega,
        best_x=x_candidate,
        best_y=y_candidate,
        residual=residual,
        objective=primal,
        dual_objective=dual,
        step=step,
        restarts=c.restarts + restart.astype(jnp.int32),
        result=result.astype(jnp.int32),
        active=~(converged | infeasible | diverged | out_of_steps),
    )
    # Finished lanes keep their state.
    return jax.tree.map(
        lambda new, old: jnp.where(c.active.reshape(c.active.shape + (1,) * (new.ndim - 1)), new, old), updated, c
    )


@functools.partial(jax.jit, static_argnames=("max_steps", "check_every"))
def solve_interval_lp(breaks, target, upper, status, *, max_steps: int, check_every: int, rtol, atol):
    """Solve a batch of interval LPs by restarted PDHG (see the module docstring).

    Args:
        breaks: ``[B, R, 4]`` int32 row breakpoints, sorted within each row and
            in ``[0, L]``; padding rows have all four equal.
        target: ``[B, R]`` right-hand side ``q`` (0 on padding rows).
        upper: ``[B, L]`` upper bounds ``u >= 0`` (0 fixes a snippet at 0).
        status: ``[B]`` int32 code known before solving
            (``ResultCode.SUCCESSFUL`` for lanes to solve; any other code
            leaves the lane at ``x = 0`` with that code).
        max_steps: most PDHG iterations per lane (rounded up to a multiple of
            ``check_every``).
        check_every: iterations between two convergence and restart checks.
        rtol, atol: tolerances of the termination test.

    Returns:
        An :class:`IntervalLPSolution`.
    """
    batch, rows = target.shape
    num_columns = upper.shape[-1]
    dtype = target.dtype
    row_sum, column_sum = _absolute_sums(breaks, num_columns, dtype)
    problem = _Problem(
        breaks=breaks,
        target=target,
        upper=upper,
        tau=1 / jnp.maximum(column_sum, 1),
        sigma=1 / jnp.maximum(row_sum, 1),
    )
    plan = transpose_plan(breaks, num_columns)
    infeasible = _row_infeasible(problem)
    status = jnp.where((status == ResultCode.SUCCESSFUL) & infeasible, ResultCode.INFEASIBLE, status)
    done = status != ResultCode.SUCCESSFUL

    target_norm = jnp.sqrt(jnp.sum(target**2, axis=-1))
    cost_norm = jnp.sqrt(jnp.sum((upper > 0).astype(dtype), axis=-1))
    omega = _OMEGA_SCALE * jnp.where((target_norm > 0) & (cost_norm > 0), cost_norm / jnp.where(target_norm > 0, target_norm, 1), 1)
    x0, y0 = _warm_start(problem, plan)
    aty0 = apply_transpose(plan, y0)
    residual_vector = apply_rows(problem.breaks, x0) - target
    residual0 = jnp.max(jnp.abs(residual_vector), axis=-1, initial=0)
    objective0 = jnp.sum(x0, axis=-1)
    dual0 = _dual_objective(problem, y0, aty0)
    kkt0 = jnp.sqrt(omega**2 * jnp.sum(residual_vector**2, axis=-1) + (objective0 - dual0) ** 2)
    zeros = jnp.zeros_like(x0)
    carry = _Carry(
        x=x0, y=y0, aty=aty0, x_sum=zeros, y_sum=jnp.zeros_like(y0), count=jnp.zeros((batch,), dtype),
        x_anchor=x0, y_anchor=y0, aty_anchor=aty0, kkt_anchor=kkt0, kkt_previous=kkt0, omega=omega,
        best_x=x0, best_y=y0, residual=residual0, objective=objective0,
        dual_objective=dual0, step=jnp.zeros((batch,), jnp.int32),
        restarts=jnp.zeros((batch,), jnp.int32), result=status, active=~done,
    )
    num_checks = -(-max_steps // check_every)
    rtol = jnp.asarray(rtol, dtype)
    atol = jnp.asarray(atol, dtype)

    body = functools.partial(_check_round, check_every=check_every, num_checks=num_checks, rtol=rtol, atol=atol)

    # Lanes that finish early (or never start: empty items) drop out of the batch as it goes.
    final = compacted_while_loop(body, (problem, plan), carry, min_rows=max(_MIN_LANES, batch // 2))
    # Lanes never iterated (known codes) and diverged lanes report zeros, never NaN.
    usable = (final.step > 0) & (final.result != ResultCode.DIVERGED)
    return IntervalLPSolution(
        x=jnp.where(usable[:, None], jnp.clip(final.best_x, 0, upper), 0),
        dual=jnp.where(usable[:, None], final.best_y, 0),
        objective=jnp.where(usable, final.objective, 0),
        dual_objective=jnp.where(usable, final.dual_objective, 0),
        primal_residual=jnp.where(usable, final.residual, residual0),
        steps=final.step,
        restarts=final.restarts,
        result=final.result,
    )
