r"""Location-scale Student-t fit by a safeguarded Newton method (erratum 4).

For one coordinate of one group, minimise over :math:`(\mu, \sigma)` (and
optionally :math:`\nu`) the cross-entropy

.. math::
    L = -\sum_k g_k \log t_\nu(x_k; \mu, \sigma)
      = \sum_k g_k \tfrac{\nu + 1}{2} \log\!\Big(1 + \tfrac{(x_k - \mu)^2}{\nu \sigma^2}\Big)
        + \log \sigma + \log\Gamma(\tfrac{\nu}{2}) - \log\Gamma(\tfrac{\nu + 1}{2})
        + \tfrac12 \log(\nu \pi).

The likelihood in :math:`\mu` is not concave and can be multimodal for small
:math:`\nu`, so the solver

* works in standardised coordinates :math:`z = (x - m_0) / s_0` around a robust
  start (weighted median :math:`m_0`, weighted mean absolute deviation :math:`s_0`),
  which makes the tolerances scale free;
* takes a Newton step on :math:`(\mu, \log\sigma[, \nu])` when the Hessian is
  positive definite, otherwise a diagonally scaled gradient step, with Armijo
  backtracking; when no step length decreases the loss it falls back to the EM
  (iteratively reweighted least squares) step, which never increases it;
* stops on the Cauchy criterion :math:`|\Delta y| < atol + rtol |y|` on
  :math:`(\mu, \sigma[, \log\nu])` in standardised units.

When one value carries weight :math:`\ge \nu / (\nu + 1)`, the loss is unbounded
below as :math:`\sigma \to 0` at that value: the fit is that point mass
(``scale = 0``), which is also the T -> 0 limit of the fusion.

The fused location is differentiable with respect to values and weights by
implicit differentiation: one Newton correction at the optimum, with the
Hessian held constant, has the implicit-function-theorem derivative
:math:`d y^* / d\theta = -H^{-1} \partial_\theta \nabla_y L`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxfuse._result import RESULT_DTYPE, ResultCode
from jaxfuse._templates import PAIRWISE_LIMIT, masked_extremes, weighted_median

DEFAULT_DF = 3.0
"""Default degrees of freedom: heavy tails, yet a finite variance."""

DEFAULT_DF_BOUNDS = (1.0, 100.0)
"""Range of :math:`\\nu` when it is estimated; below 1 the fit degenerates too easily."""

DEFAULT_MAX_STEPS = 64
_BACKTRACKING_FACTORS = (1.0, 0.5, 0.1, 0.01)
_ARMIJO_SLOPE = 1e-4


class StudentTParameters(NamedTuple):
    r"""Location-scale Student-t fit.

    Attributes:
        location: ``[..., K]`` :math:`\mu`, the fused value.
        scale: ``[..., K]`` :math:`\sigma` (zero for a point-mass fit).
        df: ``[..., K]`` :math:`\nu`, the caller's or the estimated one.
    """

    location: jax.Array
    scale: jax.Array
    df: jax.Array


class NewtonState(NamedTuple):
    """Carry of the Newton loop for one lane (standardised coordinates).

    Attributes:
        y: ``[P]`` the iterate: (mu, log sigma) and, when df is fitted, log df.
        loss: the loss at ``y``.
        step: number of steps taken.
        diff: ``[P]`` the last change of (mu, sigma[, log df]), for the Cauchy criterion.
        converged: whether the Cauchy criterion holds.
    """

    y: jax.Array
    loss: jax.Array
    step: jax.Array
    diff: jax.Array
    converged: jax.Array


class StudentTOptions(NamedTuple):
    """Static options of the solver (hashable, so they can key the jit cache)."""

    df: float = DEFAULT_DF
    fit_df: bool = False
    df_bounds: tuple[float, float] = DEFAULT_DF_BOUNDS
    max_steps: int = DEFAULT_MAX_STEPS
    rtol: float | None = None
    atol: float | None = None


def _degrees_of_freedom(y, options: StudentTOptions):
    if options.fit_df:
        return jnp.exp(y[2])
    return jnp.asarray(options.df, y.dtype)


def _lower_upper(y, options: StudentTOptions):
    """Box bounds on y: only log df is bounded (by log df_bounds)."""
    infinite = jnp.full(2, jnp.inf, y.dtype)
    if not options.fit_df:
        return -infinite, infinite
    low, high = (jnp.log(jnp.asarray(b, y.dtype))[None] for b in options.df_bounds)
    return jnp.concatenate([-infinite, low]), jnp.concatenate([infinite, high])


def _with_scale(y):
    return y.at[1].set(jnp.exp(y[1]))


def loss(y, z, probabilities, mask, options: StudentTOptions):
    """The cross-entropy above at ``y`` for standardised values ``z`` (the normaliser included)."""
    df = _degrees_of_freedom(y, options)
    residual = jnp.where(mask, (z - y[0]) * jnp.exp(-y[1]), 0)
    per_member = 0.5 * (df + 1) * jnp.log1p(jnp.square(residual) / df)
    log_normaliser = gammaln(df / 2) - gammaln((df + 1) / 2) + 0.5 * jnp.log(df * jnp.pi)
    return probabilities @ per_member + y[1] + log_normaliser


def _expectation_maximisation_step(y, z, probabilities, mask, options):
    """One EM (IRLS) step for (mu, sigma) at fixed df: never increases the loss."""
    df = _degrees_of_freedom(y, options)
    residual = jnp.where(mask, (z - y[0]) * jnp.exp(-y[1]), 0)
    member_weights = probabilities * (df + 1) / (df + jnp.square(residual))
    location = (member_weights @ jnp.where(mask, z, 0)) / jnp.sum(member_weights)
    variance = member_weights @ jnp.where(mask, jnp.square(z - location), 0)
    log_scale = 0.5 * jnp.log(jnp.maximum(variance, jnp.finfo(z.dtype).tiny))
    return y.at[0].set(location).at[1].set(log_scale)


def _newton_direction(gradient, hessian):
    """Newton direction, with the Hessian's eigenvalues replaced by their magnitudes.

    Equal to Newton's step where the Hessian is positive definite; where it is
    not (a ridge or saddle of the non-convex t likelihood) the step still
    descends and follows the curvature, unlike a plain gradient step. The 2 x 2
    case (df fixed) uses the spectral projectors in closed form: a batched
    LAPACK ``eigh`` of tiny matrices costs more on CPU than the rest of a step.
    """
    floor_factor = jnp.finfo(gradient.dtype).eps ** 0.5
    if gradient.size != 2:
        eigenvalues, eigenvectors = jnp.linalg.eigh(hessian)
        magnitudes = jnp.abs(eigenvalues)
        floor = floor_factor * jnp.maximum(jnp.max(magnitudes), 1)
        return -eigenvectors @ ((eigenvectors.T @ gradient) / jnp.maximum(magnitudes, floor))
    (a, b), (_, c) = hessian
    middle, half_gap = (a + c) / 2, (a - c) / 2
    radius = jnp.sqrt(half_gap**2 + b**2)
    separated = radius > floor_factor * (jnp.abs(middle) + radius)
    # Projector onto the eigenvector of the larger eigenvalue: (H - lambda_2 I) / (2 radius).
    safe_radius = jnp.where(separated, 2 * radius, 1)
    upper = jnp.where(separated, (hessian - (middle - radius) * jnp.eye(2, dtype=hessian.dtype)) / safe_radius, 0.5 * jnp.eye(2, dtype=hessian.dtype))
    lower = jnp.eye(2, dtype=hessian.dtype) - upper
    magnitudes = jnp.abs(jnp.stack([middle + radius, middle - radius]))
    floor = floor_factor * jnp.maximum(jnp.max(magnitudes), 1)
    magnitudes = jnp.maximum(magnitudes, floor)
    return -(upper @ gradient / magnitudes[0] + lower @ gradient / magnitudes[1])


def _newton_step(state: NewtonState, z, probabilities, mask, options, rtol, atol) -> NewtonState:
    objective = lambda y: loss(y, z, probabilities, mask, options)  # noqa: E731
    gradient = jax.grad(objective)(state.y)
    hessian = jax.hessian(objective)(state.y)
    # Projected Newton: a coordinate held at its bound by a gradient pointing
    # outwards is frozen for this step, the others take the reduced Newton step.
    lower, upper = _lower_upper(state.y, options)
    frozen = ((state.y <= lower) & (gradient > 0)) | ((state.y >= upper) & (gradient < 0))
    gradient = jnp.where(frozen, 0, gradient)
    both_free = ~frozen[:, None] & ~frozen[None, :]
    hessian = jnp.where(both_free, hessian, jnp.eye(gradient.size, dtype=gradient.dtype))
    direction = _newton_direction(gradient, hessian)
    slope = gradient @ direction

    factors = jnp.asarray(_BACKTRACKING_FACTORS, state.y.dtype)
    candidates = jnp.clip(state.y + factors[:, None] * direction, lower, upper)
    candidate_losses = jax.vmap(objective)(candidates)
    sufficient = jnp.isfinite(candidate_losses) & (
        candidate_losses <= state.loss + _ARMIJO_SLOPE * factors * slope
    )
    backtracked = candidates[jnp.argmax(sufficient)]
    backtracked_loss = candidate_losses[jnp.argmax(sufficient)]

    fallback = _expectation_maximisation_step(state.y, z, probabilities, mask, options)
    fallback_loss = objective(fallback)
    fallback_improves = jnp.isfinite(fallback_loss) & (fallback_loss < state.loss)

    use_newton = jnp.any(sufficient)
    y = jnp.where(use_newton, backtracked, jnp.where(fallback_improves, fallback, state.y))
    new_loss = jnp.where(use_newton, backtracked_loss, jnp.where(fallback_improves, fallback_loss, state.loss))
    # Cauchy criterion on (mu, sigma) in units of the group's spread, not on
    # log sigma: near a point mass the optimum's log sigma creeps towards -inf
    # while location and scale no longer move.
    converged_y = _with_scale(y)
    diff = converged_y - _with_scale(state.y)
    converged = jnp.all(jnp.abs(diff) < atol + rtol * jnp.abs(converged_y))
    return state._replace(y=y, loss=new_loss, step=state.step + 1, diff=diff, converged=converged)


def _heaviest_value(values, probabilities, mask):
    """Index of a real member holding the most probability among equal values, and that probability."""
    if values.shape[0] <= PAIRWISE_LIMIT:
        same = (values[None, :] == values[:, None]) & mask[None, :]
        aggregated = jnp.where(mask, same.astype(values.dtype) @ probabilities, -1)
        heaviest = jnp.argmax(aggregated)
        return heaviest, aggregated[heaviest]
    _, high = masked_extremes(values[:, None], mask)
    sort_keys = jnp.where(mask, values, high[0])
    # Real members first among equal keys, so a run's first member is a real one.
    order = jnp.lexsort((~mask, sort_keys))
    sorted_values = sort_keys[order]
    starts_run = jnp.concatenate([jnp.ones((1,), bool), sorted_values[1:] != sorted_values[:-1]])
    run_index = jnp.cumsum(starts_run) - 1
    run_weight = jax.ops.segment_sum(probabilities[order], run_index, num_segments=values.shape[0])
    heaviest_run = jnp.argmax(run_weight)
    first_of_run = jnp.argmax(run_index == heaviest_run)
    return order[first_of_run], run_weight[heaviest_run]


def _robust_start(values, probabilities, mask):
    """Weighted median and a positive spread around it (mean absolute deviation, else std)."""
    median = weighted_median(values[:, None], probabilities, mask)[0]
    deviation = jnp.where(mask, values - median, 0)
    mean_absolute = probabilities @ jnp.abs(deviation)
    standard = jnp.sqrt(probabilities @ jnp.square(deviation))
    spread = jnp.where(mean_absolute > 0, mean_absolute, standard)
    return median, jnp.where(spread > 0, spread, 1)


class LaneProblem(NamedTuple):
    """One coordinate of one group, prepared for the solver (fields of one lane).

    Attributes:
        standardised: ``[M]`` (x - median) / spread, differentiable in x.
        probabilities: ``[M]`` the g_k, differentiable in the weights.
        mask: ``[M]`` real members.
        median: the robust start's location (held constant in derivatives).
        spread: the robust start's scale (held constant in derivatives).
        point_mass: whether one value holds weight >= df / (df + 1).
        heaviest_value: that value, differentiable in x.
    """

    standardised: jax.Array
    probabilities: jax.Array
    mask: jax.Array
    median: jax.Array
    spread: jax.Array
    point_mass: jax.Array
    heaviest_value: jax.Array


def _smallest_df(options: StudentTOptions) -> float:
    return options.df_bounds[0] if options.fit_df else options.df


def _tolerances(dtype, options: StudentTOptions) -> tuple[float, float]:
    epsilon = float(jnp.finfo(dtype).eps)
    rtol = epsilon**0.5 if options.rtol is None else options.rtol
    atol = epsilon**0.5 if options.atol is None else options.atol
    return rtol, atol


def _prepare_lane(values, probabilities, mask, options: StudentTOptions) -> tuple[LaneProblem, NewtonState]:
    heaviest_member, heaviest_weight = _heaviest_value(
        jax.lax.stop_gradient(values), jax.lax.stop_gradient(probabilities), mask
    )
    smallest_df = _smallest_df(options)
    point_mass = heaviest_weight >= smallest_df / (smallest_df + 1)
    median, spread = jax.lax.stop_gradient(_robust_start(values, probabilities, mask))
    problem = LaneProblem(
        standardised=jnp.where(mask, (values - median) / spread, 0),
        probabilities=probabilities,
        mask=mask,
        median=median,
        spread=spread,
        point_mass=point_mass,
        heaviest_value=values[heaviest_member],
    )
    start = [jnp.zeros((), values.dtype), jnp.zeros((), values.dtype)]
    if options.fit_df:
        start.append(jnp.log(jnp.asarray(options.df, values.dtype)))
    y0 = jnp.stack(start)
    z, g = jax.lax.stop_gradient(problem.standardised), jax.lax.stop_gradient(probabilities)
    initial = NewtonState(
        y=y0,
        loss=loss(y0, z, g, mask, options),
        step=jnp.zeros((), jnp.int32),
        diff=jnp.full_like(y0, jnp.inf),
        converged=point_mass,
    )
    return problem, initial


def _run_lanes(states: NewtonState, problems: LaneProblem, options: StudentTOptions, step_limit: int) -> NewtonState:
    """Newton steps on a batch of lanes until each converged or took ``step_limit`` steps.

    Finished lanes are frozen explicitly, so a lane's iterates do not depend
    on which other lanes share its batch.
    """
    rtol, atol = _tolerances(states.y.dtype, options)
    z = jax.lax.stop_gradient(problems.standardised)
    g = jax.lax.stop_gradient(problems.probabilities)
    step = jax.vmap(lambda state, zl, gl, ml: _newton_step(state, zl, gl, ml, options, rtol, atol))

    def active(state):
        return ~state.converged & (state.step < step_limit)

    def body(state):
        stepped = step(state, z, g, problems.mask)
        keep = active(state)
        return jax.tree_util.tree_map(lambda new, old: jnp.where(_lane_mask(keep, new), new, old), stepped, state)

    return jax.lax.while_loop(lambda state: jnp.any(active(state)), body, states)


def _lane_mask(keep, leaf):
    return keep.reshape(keep.shape + (1,) * (leaf.ndim - 1))


_FIRST_PHASE_STEPS = 8
_STRAGGLER_FRACTION = 8


def _solve_lanes(states: NewtonState, problems: LaneProblem, options: StudentTOptions) -> NewtonState:
    """Run every lane to convergence, compacting the slow ones.

    In a batched loop every iteration costs as much as the whole batch, so a
    few lanes that need many steps (groups near a point mass) would set the
    cost for all. All lanes take up to ``_FIRST_PHASE_STEPS`` steps together;
    the stragglers are then gathered into chunks of a static size (1/8 of the
    lanes) and run to the end, chunk after chunk.
    """
    lanes = states.step.shape[0]
    states = _run_lanes(states, problems, options, min(_FIRST_PHASE_STEPS, options.max_steps))
    if options.max_steps <= _FIRST_PHASE_STEPS:
        return states
    chunk = max(1, min(lanes, -(-lanes // _STRAGGLER_FRACTION)))

    def unfinished(state):
        return ~state.converged & (state.step < options.max_steps)

    def run_chunk(state):
        index = jnp.nonzero(unfinished(state), size=chunk, fill_value=lanes)[0]
        take = lambda leaf: jnp.take(leaf, index, axis=0, mode="clip")  # noqa: E731
        sub_states = jax.tree_util.tree_map(take, state)
        # Filler slots (index == lanes) must not iterate; they are dropped on scatter.
        sub_states = sub_states._replace(converged=sub_states.converged | (index == lanes))
        sub_states = _run_lanes(sub_states, jax.tree_util.tree_map(take, problems), options, options.max_steps)
        return jax.tree_util.tree_map(lambda leaf, sub: leaf.at[index].set(sub, mode="drop"), state, sub_states)

    return jax.lax.while_loop(lambda state: jnp.any(unfinished(state)), run_chunk, states)


def _is_positive_definite(matrix):
    if matrix.shape[0] == 2:
        return (matrix[0, 0] > 0) & (matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0] > 0)
    return jnp.all(jnp.isfinite(jnp.linalg.cholesky(matrix)))


def _solve_symmetric(matrix, vector):
    """``matrix^-1 vector`` for a positive definite matrix; 2 x 2 in closed form (no batched LAPACK call)."""
    if matrix.shape[0] == 2:
        (a, b), (_, c) = matrix
        return jnp.stack([c * vector[0] - b * vector[1], a * vector[1] - b * vector[0]]) / (a * c - b * b)
    return jnp.linalg.solve(matrix, vector)


def _finish_lane(problem: LaneProblem, final: NewtonState, options: StudentTOptions):
    """Parameters in the caller's units, with the implicit-differentiation correction, and the result code."""
    dtype = final.y.dtype
    fixed_z = jax.lax.stop_gradient(problem.standardised)
    fixed_probabilities = jax.lax.stop_gradient(problem.probabilities)
    # Implicit differentiation: a Newton correction with a constant Hessian is zero
    # in value at the optimum and carries -H^{-1} d(grad)/d(theta) as derivative.
    objective = lambda y, z, g: loss(y, z, g, problem.mask, options)  # noqa: E731
    hessian = jax.hessian(objective)(final.y, fixed_z, fixed_probabilities)
    at_bound = jnp.zeros(final.y.shape, bool)
    if options.fit_df:
        # df at a bound stays there under small perturbations: differentiate (mu, sigma) only.
        lower, upper = _lower_upper(final.y, options)
        at_bound = (final.y <= lower) | (final.y >= upper)
        both_free = ~at_bound[:, None] & ~at_bound[None, :]
        hessian = jnp.where(both_free, hessian, jnp.eye(final.y.size, dtype=dtype))
    positive_definite = _is_positive_definite(hessian)
    differentiable = final.converged & ~problem.point_mass & positive_definite
    safe_hessian = jnp.where(differentiable, hessian, jnp.eye(final.y.size, dtype=dtype))
    gradient = jnp.where(at_bound, 0, jax.grad(objective)(final.y, problem.standardised, problem.probabilities))
    correction = -_solve_symmetric(safe_hessian, gradient)
    y = final.y + jnp.where(differentiable, correction, 0)

    fitted = StudentTParameters(
        location=problem.median + problem.spread * y[0],
        scale=problem.spread * jnp.exp(y[1]),
        df=_degrees_of_freedom(y, options),
    )
    collapsed = StudentTParameters(
        location=problem.heaviest_value,
        scale=jnp.zeros((), dtype),
        df=jnp.asarray(_smallest_df(options), dtype),
    )
    parameters = jax.tree_util.tree_map(lambda a, b: jnp.where(problem.point_mass, a, b), collapsed, fitted)
    result = jnp.where(final.converged, ResultCode.SUCCESSFUL, ResultCode.MAX_STEPS_REACHED).astype(RESULT_DTYPE)
    return parameters, result


def student_t_fit(values, probabilities, mask, options: StudentTOptions):
    """Fit every coordinate of a batch of groups.

    Args:
        values: ``[B, M, K]``; probabilities ``[B, M]``; mask ``[B, M]``.
        options: static solver options.

    Returns:
        ``[B, K]`` parameters, ``[B]`` worst result code, ``[B]`` most steps.
    """
    groups, members, coordinates = values.shape
    # One lane per (group, coordinate): lane b * K + k.
    lane_values = jnp.swapaxes(values, 1, 2).reshape(groups * coordinates, members)
    lane_probabilities = jnp.repeat(probabilities, coordinates, axis=0)
    lane_mask = jnp.repeat(mask, coordinates, axis=0)
    prepare = jax.vmap(lambda x, g, m: _prepare_lane(x, g, m, options))
    problems, initial = prepare(lane_values, lane_probabilities, lane_mask)
    final = _solve_lanes(initial, problems, options)
    parameters, result = jax.vmap(lambda problem, state: _finish_lane(problem, state, options))(problems, final)
    per_group = lambda leaf: leaf.reshape(groups, coordinates)  # noqa: E731
    parameters = jax.tree_util.tree_map(per_group, parameters)
    return parameters, jnp.max(per_group(result), axis=1), jnp.max(per_group(final.step), axis=1)
