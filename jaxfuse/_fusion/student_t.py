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
  start: the weighted median :math:`m_0` and half the weighted interquartile
  range :math:`s_0` (close to :math:`\sigma` for small :math:`\nu`), which a far
  outlier does not move (a mean absolute deviation would: one member 1e5
  spreads away made it 2e4 spreads, the start a hundred Newton steps away);
* takes a Newton step on :math:`(\mu, \log\sigma[, \nu])` when the Hessian is
  positive definite, otherwise a diagonally scaled gradient step, with Armijo
  backtracking; when no step length decreases the loss it falls back to the EM
  (iteratively reweighted least squares) step, which never increases it;
* stops on the Cauchy criterion :math:`|\Delta y| < atol + rtol |y|` with the
  location and scale measured in units of the current scale :math:`\sigma`:
  :math:`|\Delta\mu| < atol\,\sigma + rtol\,|\mu|` (:math:`\mu` in the caller's
  units, so the rounding of large coordinates is allowed for) and
  :math:`|\Delta\sigma| < (atol + rtol)\,\sigma`. A criterion in units of the
  start's spread stopped fits whose scale was still shrinking;
* checks the answer: every stationary point of the loss lies within
  :math:`[\min x, \max x]` (the gradient in :math:`\mu` has one sign outside),
  so a location outside it, a non-finite or a zero scale is ``DIVERGED``.

When one value carries weight :math:`\ge \nu / (\nu + 1)`, the loss is unbounded
below as :math:`\sigma \to 0` at that value: the fit is that point mass
(``scale = 0``), which is also the T -> 0 limit of the fusion.

The fit is differentiable with respect to values and weights by implicit
differentiation, :math:`d y^* / d\theta = -H^{-1} \partial_\theta \nabla_y L`
at the optimum, in a custom JVP rule: the Hessian solve runs only when
derivatives are asked for. With :math:`\nu` fixed, the gradient and Hessian of
the two-parameter problem are analytic (see :func:`_gradient_and_hessian`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode
from jaxfuse._fusion.closed_forms import PAIRWISE_LIMIT, masked_extremes, weighted_quantiles

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
        diff: ``[P]`` the last change of ``y``, for the Cauchy criterion.
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


def _gradient_and_hessian(y, z, probabilities, mask, options: StudentTOptions):
    r"""Gradient and Hessian of :func:`loss` in ``y``.

    With :math:`\nu` fixed, in closed form: with :math:`r_k = (z_k - \mu) e^{-s}`,
    :math:`s = \log\sigma`, :math:`d_k = \nu + r_k^2`,

    .. math::
        \partial_\mu L = -e^{-s} \sum_k g_k \frac{(\nu + 1) r_k}{d_k}, \qquad
        \partial_s L = 1 - \sum_k g_k \frac{(\nu + 1) r_k^2}{d_k},

        \partial^2_{\mu\mu} L = e^{-2s} \sum_k g_k \frac{(\nu + 1)(\nu - r_k^2)}{d_k^2}, \quad
        \partial^2_{\mu s} L = e^{-s} \sum_k g_k \frac{2\nu(\nu + 1) r_k}{d_k^2}, \quad
        \partial^2_{ss} L = \sum_k g_k \frac{2\nu(\nu + 1) r_k^2}{d_k^2},

    each ratio written so that a residual whose square overflows gives its limit
    (zero, or :math:`\nu + 1`) rather than NaN. Autodiff when :math:`\nu` is fitted.
    """
    if options.fit_df:
        objective = lambda y: loss(y, z, probabilities, mask, options)  # noqa: E731
        return jax.grad(objective)(y), jax.hessian(objective)(y)
    df = jnp.asarray(options.df, y.dtype)
    inverse_scale = jnp.exp(-y[1])
    residual = jnp.where(mask, (z - y[0]) * inverse_scale, 0)
    # r / (df + r^2), and its limit 1 / r where r^2 would overflow (the inner
    # where keeps derivatives finite at r = 0).
    huge = jnp.abs(residual) > np.sqrt(jnp.finfo(y.dtype).max) / 4
    reciprocal = jnp.where(huge, 1 / jnp.where(huge, residual, 1), residual / (df + jnp.square(residual)))
    g = jnp.where(mask, probabilities, 0)
    weighted_residual = g @ reciprocal  # sum g r / d
    weighted_square = g @ (residual * reciprocal)  # sum g r^2 / d
    weighted_square_2 = g @ jnp.square(reciprocal)  # sum g r^2 / d^2
    weighted_cube = g @ (reciprocal / (df + jnp.square(residual)))  # sum g r / d^2
    inverse_square = g @ jnp.square(1 / (df + jnp.square(residual)))  # sum g / d^2
    gradient = jnp.stack([-(df + 1) * inverse_scale * weighted_residual, 1 - (df + 1) * weighted_square])
    mixed = 2 * df * (df + 1) * inverse_scale * weighted_cube
    hessian = jnp.stack([
        jnp.stack([(df + 1) * jnp.square(inverse_scale) * (df * inverse_square - weighted_square_2), mixed]),
        jnp.stack([mixed, 2 * df * (df + 1) * weighted_square_2]),
    ])
    return gradient, hessian


def _converged(y, diff, offset, rtol, atol):
    """The Cauchy criterion in units of the current scale (see the module docstring).

    ``offset`` is the start's location over its spread, so ``offset + mu`` is the
    location in the caller's units over that spread: its rounding is allowed for.
    """
    scale = jnp.exp(y[1])
    location_ok = jnp.abs(diff[0]) < atol * scale + rtol * jnp.abs(offset + y[0])
    rest_ok = jnp.abs(diff[1:]) < atol + rtol * jnp.abs(y[1:]).at[0].set(1)
    return location_ok & jnp.all(rest_ok)


def _newton_step(state: NewtonState, z, probabilities, mask, offset, options, rtol, atol) -> NewtonState:
    objective = lambda y: loss(y, z, probabilities, mask, options)  # noqa: E731
    gradient, hessian = _gradient_and_hessian(state.y, z, probabilities, mask, options)
    # Projected Newton: a coordinate held at its bound by a gradient pointing
    # outwards is frozen for this step, the others take the reduced Newton step.
    lower, upper = _lower_upper(state.y, options)
    frozen = ((state.y <= lower) & (gradient > 0)) | ((state.y >= upper) & (gradient < 0))
    gradient = jnp.where(frozen, 0, gradient)
    both_free = ~frozen[:, None] & ~frozen[None, :]
    hessian = jnp.where(both_free, hessian, jnp.eye(gradient.size, dtype=gradient.dtype))
    # In units of the current scale: the location's curvature is 1 / sigma^2,
    # far from the others' O(1) when sigma is far from the start's spread, and
    # the eigenvalue floor of the direction would then cut the location's step.
    units = jnp.ones_like(state.y).at[0].set(jnp.exp(state.y[1]))
    direction = units * _newton_direction(units * gradient, units[:, None] * hessian * units[None, :])
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
    diff = y - state.y
    converged = _converged(y, diff, offset, rtol, atol)
    return state._replace(y=y, loss=new_loss, step=state.step + 1, diff=diff, converged=converged)


def _robust_start(values, probabilities, mask):
    """Weighted median and a positive spread: half the weighted interquartile range.

    Quartiles ignore a far outlier, as the median does. When the middle half of
    the weight sits on one value (a zero range), the mean absolute deviation from
    the median is taken, else the standard deviation, else 1. Halves are
    subtracted so that coordinates near the dtype's limit do not overflow.
    """
    lower, median, upper = weighted_quantiles(values[:, None], probabilities, mask, (0.25, 0.5, 0.75))[:, 0]
    half_range = upper / 2 - lower / 2
    deviation = jnp.where(mask, values - median, 0)
    mean_absolute = probabilities @ jnp.abs(deviation)
    standard = jnp.sqrt(probabilities @ jnp.square(deviation))
    spread = jnp.where(half_range > 0, half_range, jnp.where(mean_absolute > 0, mean_absolute, standard))
    return median, jnp.where(spread > 0, spread, 1)


class LaneProblem(NamedTuple):
    """One coordinate of one group, prepared for the solver (fields of one lane).

    Attributes:
        standardised: ``[M]`` (x - median) / spread.
        probabilities: ``[M]`` the g_k.
        mask: ``[M]`` real members.
        median: the robust start's location.
        spread: the robust start's scale.
        point_mass: whether one value holds weight >= df / (df + 1).
        heaviest_member: index of a real member holding that value.
    """

    standardised: jax.Array
    probabilities: jax.Array
    mask: jax.Array
    median: jax.Array
    spread: jax.Array
    point_mass: jax.Array
    heaviest_member: jax.Array


def _smallest_df(options: StudentTOptions) -> float:
    return options.df_bounds[0] if options.fit_df else options.df


def _tolerances(dtype, options: StudentTOptions) -> tuple[float, float]:
    epsilon = float(jnp.finfo(dtype).eps)
    rtol = epsilon**0.5 if options.rtol is None else options.rtol
    atol = epsilon**0.5 if options.atol is None else options.atol
    return rtol, atol


def _heaviest_value(values, probabilities, mask, median, options: StudentTOptions):
    """A real member holding the most weight on one value when that can be a point mass, and the weight.

    A point mass needs weight >= df / (df + 1), which is at least 1/2 for
    df >= 1: such a value is the weighted median, whose weight is one pass.
    Smaller df compare the members pairwise (or sort them).
    """
    if _smallest_df(options) >= 1:
        at_median = mask & (values == median)
        return jnp.argmax(at_median), probabilities @ at_median.astype(values.dtype)
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


def _prepare_lane(values, probabilities, mask, options: StudentTOptions) -> tuple[LaneProblem, NewtonState]:
    median, spread = _robust_start(values, probabilities, mask)
    heaviest_member, heaviest_weight = _heaviest_value(values, probabilities, mask, median, options)
    smallest_df = _smallest_df(options)
    point_mass = heaviest_weight >= smallest_df / (smallest_df + 1)
    # Halves first: x - median overflows for coordinates near the dtype's limit.
    standardised = jnp.where(mask, (values / 2 - median / 2) / (spread / 2), 0)
    problem = LaneProblem(
        standardised=standardised,
        probabilities=probabilities,
        mask=mask,
        median=median,
        spread=spread,
        point_mass=point_mass,
        heaviest_member=heaviest_member,
    )
    start = [jnp.zeros((), values.dtype), jnp.zeros((), values.dtype)]
    if options.fit_df:
        start.append(jnp.log(jnp.asarray(options.df, values.dtype)))
    y0 = jnp.stack(start)
    initial = NewtonState(
        y=y0,
        loss=loss(y0, standardised, probabilities, mask, options),
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
    offsets = problems.median / problems.spread
    step = jax.vmap(lambda state, z, g, m, o: _newton_step(state, z, g, m, o, options, rtol, atol))

    def active(state):
        return ~state.converged & (state.step < step_limit)

    def body(state):
        stepped = step(state, problems.standardised, problems.probabilities, problems.mask, offsets)
        keep = active(state)
        return jax.tree_util.tree_map(lambda new, old: jnp.where(_lane_mask(keep, new), new, old), stepped, state)

    return jax.lax.while_loop(lambda state: jnp.any(active(state)), body, states)


def _lane_mask(keep, leaf):
    return keep.reshape(keep.shape + (1,) * (leaf.ndim - 1))


# Joint steps before the stragglers are compacted, and the chunk they are run
# in (a fraction of the lanes). Most lanes converge in 3-5 steps (median 4 on
# THUMOS-like groups). On 10,000 x 32 x 3 (2-core CPU): 8 steps and chunks of
# 1/8 took 118 ms; 5 and 1/8, 86-92 ms; 5 and 1/12 to 1/32, 80-83 ms (1/48:
# 86 ms); 4 or 6 steps were no better.
_FIRST_PHASE_STEPS = 5
_STRAGGLER_FRACTION = 16


def _solve_lanes(states: NewtonState, problems: LaneProblem, options: StudentTOptions) -> NewtonState:
    """Run every lane to convergence, compacting the slow ones.

    In a batched loop every iteration costs as much as the whole batch, so a
    few lanes that need many steps (groups near a point mass) would set the
    cost for all. All lanes take up to ``_FIRST_PHASE_STEPS`` steps together;
    the stragglers are then gathered into chunks of a static size (1/16 of the
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


def _polish(problem: LaneProblem, final: NewtonState, options: StudentTOptions) -> NewtonState:
    """One last full Newton step from a converged iterate, kept only if it is within the tolerance.

    The Cauchy criterion leaves an error of about ``atol`` scales; near the
    optimum one more Newton step squares it, for one gradient and Hessian pass.
    A step larger than the tolerance means the quadratic model is not yet
    trusted there, and the iterate is kept as it is.
    """
    if options.fit_df:
        return final
    rtol, atol = _tolerances(final.y.dtype, options)
    gradient, hessian = _gradient_and_hessian(
        final.y, problem.standardised, problem.probabilities, problem.mask, options
    )
    usable = final.converged & ~problem.point_mass & _is_positive_definite(hessian)
    correction = -_solve_symmetric(jnp.where(usable, hessian, jnp.eye(2, dtype=hessian.dtype)), gradient)
    small = _converged(final.y + correction, correction, problem.median / problem.spread, rtol, atol)
    return final._replace(y=jnp.where(usable & small, final.y + correction, final.y))


def _finish_lane(values, problem: LaneProblem, final: NewtonState, options: StudentTOptions):
    """Parameters in the caller's units, the result code, and whether the lane's outputs are kept."""
    dtype = final.y.dtype
    final = _polish(problem, final, options)
    fitted = StudentTParameters(
        location=problem.median + problem.spread * final.y[0],
        scale=problem.spread * jnp.exp(final.y[1]),
        df=_degrees_of_freedom(final.y, options),
    )
    collapsed = StudentTParameters(
        location=values[problem.heaviest_member],
        scale=jnp.zeros((), dtype),
        df=jnp.asarray(_smallest_df(options), dtype),
    )
    parameters = jax.tree_util.tree_map(lambda a, b: jnp.where(problem.point_mass, a, b), collapsed, fitted)
    low, high = masked_extremes(values[:, None], problem.mask)
    # Every stationary point lies in the members' hull and has a positive scale.
    valid = (
        (parameters.location >= low[0])
        & (parameters.location <= high[0])
        & jnp.isfinite(parameters.scale)
        & ((parameters.scale > 0) | problem.point_mass)
    )
    representable = jnp.isfinite(problem.spread) & (jnp.isfinite(final.loss) | problem.point_mass)
    result = jnp.where(final.converged, ResultCode.SUCCESSFUL, ResultCode.MAX_STEPS_REACHED)
    result = jnp.where(valid, result, ResultCode.DIVERGED)
    result = jnp.where(representable, result, ResultCode.OVERFLOW).astype(RESULT_DTYPE)
    keep = valid & representable
    parameters = jax.tree_util.tree_map(lambda leaf: jnp.where(keep, leaf, 0), parameters)
    return parameters, result, keep, final


class _Lanes(NamedTuple):
    """Per-lane state the derivative rule reuses: lane b * K + k is coordinate k of group b."""

    problems: LaneProblem
    final: NewtonState
    keep: jax.Array


def _lane_view(values, probabilities, mask):
    groups, members, coordinates = values.shape
    lane_values = jnp.swapaxes(values, 1, 2).reshape(groups * coordinates, members)
    return lane_values, jnp.repeat(probabilities, coordinates, axis=0), jnp.repeat(mask, coordinates, axis=0)


def _fit_lanes(values, probabilities, mask, options: StudentTOptions):
    groups, _, coordinates = values.shape
    lane_values, lane_probabilities, lane_mask = _lane_view(values, probabilities, mask)
    problems, initial = jax.vmap(lambda x, g, m: _prepare_lane(x, g, m, options))(
        lane_values, lane_probabilities, lane_mask
    )
    final = _solve_lanes(initial, problems, options)
    parameters, result, keep, final = jax.vmap(lambda x, p, f: _finish_lane(x, p, f, options))(
        lane_values, problems, final
    )
    per_group = lambda leaf: leaf.reshape(groups, coordinates)  # noqa: E731
    parameters = jax.tree_util.tree_map(per_group, parameters)
    steps = jnp.max(per_group(final.step), axis=1)
    return parameters, jnp.max(per_group(result), axis=1), steps, _Lanes(problems, final, keep)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def student_t_fit(values, probabilities, mask, options: StudentTOptions):
    """Fit every coordinate of a batch of groups.

    Args:
        values: ``[B, M, K]``; probabilities ``[B, M]``; mask ``[B, M]``.
        options: static solver options.

    Returns:
        ``[B, K]`` parameters, ``[B]`` worst result code, ``[B]`` most steps.
        Lanes whose code is ``DIVERGED`` or ``OVERFLOW`` have zero parameters.
    """
    parameters, result, steps, _ = _fit_lanes(values, probabilities, mask, options)
    return parameters, result, steps


def _lane_tangent(value_tangent, probability_tangent, problem: LaneProblem, final: NewtonState, keep, options):
    """Implicit-function-theorem tangent of one lane's parameters."""
    dtype = final.y.dtype
    standardised_tangent = jnp.where(problem.mask, value_tangent / problem.spread, 0)

    def gradient_at_optimum(z, g):
        return _gradient_and_hessian(final.y, z, g, problem.mask, options)[0]

    _, gradient_tangent = jax.jvp(
        gradient_at_optimum, (problem.standardised, problem.probabilities), (standardised_tangent, probability_tangent)
    )
    _, hessian = _gradient_and_hessian(final.y, problem.standardised, problem.probabilities, problem.mask, options)
    at_bound = jnp.zeros(final.y.shape, bool)
    if options.fit_df:
        # df at a bound stays there under small perturbations: differentiate (mu, sigma) only.
        lower, upper = _lower_upper(final.y, options)
        at_bound = (final.y <= lower) | (final.y >= upper)
        both_free = ~at_bound[:, None] & ~at_bound[None, :]
        hessian = jnp.where(both_free, hessian, jnp.eye(final.y.size, dtype=dtype))
    differentiable = keep & final.converged & ~problem.point_mass & _is_positive_definite(hessian)
    safe_hessian = jnp.where(differentiable, hessian, jnp.eye(final.y.size, dtype=dtype))
    y_tangent = -_solve_symmetric(safe_hessian, jnp.where(at_bound, 0, gradient_tangent))
    y_tangent = jnp.where(differentiable, y_tangent, 0)
    scale = problem.spread * jnp.exp(final.y[1])
    fitted = StudentTParameters(
        location=problem.spread * y_tangent[0],
        scale=scale * y_tangent[1],
        df=_degrees_of_freedom(final.y, options) * y_tangent[2] if options.fit_df else jnp.zeros((), dtype),
    )
    collapsed = StudentTParameters(
        location=jnp.where(keep, value_tangent[problem.heaviest_member], 0),
        scale=jnp.zeros((), dtype),
        df=jnp.zeros((), dtype),
    )
    return jax.tree_util.tree_map(lambda a, b: jnp.where(problem.point_mass, a, b), collapsed, fitted)


@student_t_fit.defjvp
def _student_t_fit_jvp(options, primals, tangents):
    values, probabilities, mask = primals
    value_tangents, probability_tangents, _ = tangents
    parameters, result, steps, lanes = _fit_lanes(values, probabilities, mask, options)
    groups, _, coordinates = values.shape
    lane_value_tangents, lane_probability_tangents, _ = _lane_view(value_tangents, probability_tangents, mask)
    lane_tangents = jax.vmap(lambda dx, dg, p, f, k: _lane_tangent(dx, dg, p, f, k, options))(
        lane_value_tangents, lane_probability_tangents, lanes.problems, lanes.final, lanes.keep
    )
    parameter_tangents = jax.tree_util.tree_map(lambda leaf: leaf.reshape(groups, coordinates), lane_tangents)
    integer_tangent = lambda x: np.zeros(x.shape, jax.dtypes.float0)  # noqa: E731
    return (parameters, result, steps), (parameter_tangents, integer_tangent(result), integer_tangent(steps))
