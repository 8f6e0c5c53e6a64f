"""Fused segments back to snippet labels: the published segment-to-snippet LP, batched on device.

The published GauFuse_WSTAL training code (``utils/utils.py``,
``compute_score_matrix`` and ``convert_segment_to_tensor``) turns the fused
segments ``[s_r, e_r, q_r]`` of one (video, class) into snippet labels ``p`` of a
video of ``L`` snippets by the linear program::

    min  sum_t p_t   s.t.   A p = q,   0 <= p <= 1,

row ``r`` of ``A`` being ``+1`` on the snippets ``[s, e)`` and ``-1`` on its outer
margins ``[max(0, int(s - m)), s)`` and ``[e, min(L - 1, int(e + m + 1)))``, with
``s = int(s_r)``, ``e = int(e_r)``, ``m = 0.0785 (e - s)^0.9``: the labels inside
a segment minus those around it add up to its fused score. It is solved per
(video, class) by ``scipy.optimize.linprog`` (HiGHS) there; here every LP of a
batch is solved at once by :mod:`jaxfuse._labels.pdhg` (restarted PDHG whose
products are prefix sums, O(L + R) per iteration).

Conventions, as in the published code:

* ``int()`` truncates: ``s = floor(start)``, ``e = floor(end)`` for the
  non-negative segments of a video. So the left margin holds ``ceil(m)``
  snippets and the right one ``floor(m) + 1``, and the last snippet of the
  video is never in a right margin. Margins are computed on the host in
  float64 exactly as the published ``0.0785 * n ** 0.9``.
* Indices past the video are clipped, as Python slicing clips them; snippets
  at or after ``length`` are fixed at 0.

The LP optimum is often not unique (any spread of ``q_r`` over a segment that
touches no other row is optimal): HiGHS returns a vertex, PDHG a point of the
optimal face near its start (the even spread). Objectives, residuals and
bounds agree; labels agree where the optimum is unique.

When no ``p`` in the bounds satisfies ``A p = q`` (a segment at the video's edge
with a negative score and no margin to hold it; overlapping segments that
contradict each other) the published code gets no solution and writes NaN.
Here the item gets ``ResultCode.INFEASIBLE`` and the ``fallback`` labels.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import array_kind, from_jax, is_traced, to_jax
from jaxfuse._labels.pdhg import apply_rows, solve_interval_lp
from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode, raise_for_results, repr_with_code_names
from jaxfuse._core.settings import MARGIN_POWER, MARGIN_SCALE
from jaxfuse._core.validation import checked_length, choice, float_array, positive_int
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache

METHODS = ("lp", "paint")
FALLBACKS = ("paint", "zeros")
DEFAULT_MAX_STEPS = 4096
DEFAULT_CHECK_EVERY = 16


class SnippetLabels(NamedTuple):
    """Snippet labels of a batch of items (``[...]`` the items' batch shape).

    Attributes:
        snippets: ``[..., L]`` labels in ``[0, 1]``; zero at and after each
            item's ``length``.
        result: ``[...]`` int32 :class:`jaxfuse.ResultCode`: ``SUCCESSFUL``,
            ``MAX_STEPS_REACHED`` (the last PDHG iterate, within the bounds),
            ``INFEASIBLE`` or ``DIVERGED`` (the ``fallback`` labels),
            ``EMPTY_GROUP`` (no valid segment: zeros), ``NONFINITE_INPUT`` and
            ``INVALID_INPUT`` (a bad segment inside a caller's ``jit``: zeros).
            ``method="paint"`` gives ``SUCCESSFUL`` or ``EMPTY_GROUP``.
        objective: ``[...]`` ``sum_t snippets_t``.
        primal_residual: ``[...]`` ``max_r |(A p - q)_r|`` of the returned labels
            (large where the fallback or ``"paint"`` was used: they do not
            solve the LP).
        steps: ``[...]`` int32 PDHG iterations (0 for ``"paint"``).
        restarts: ``[...]`` int32 PDHG restarts.
        num_segments: ``[...]`` int32 valid segments (LP rows) of each item.
    """

    snippets: Any
    result: Any
    objective: Any
    primal_residual: Any
    steps: Any
    restarts: Any
    num_segments: Any

    __repr__ = repr_with_code_names  # result codes by name; still a NamedTuple (a pytree)


@functools.lru_cache(maxsize=64)
def margin_tables(num_snippets: int, scale: float, power: float) -> tuple[np.ndarray, np.ndarray]:
    """Left and right margin widths, in snippets, for every segment length ``0 .. num_snippets + 1``.

    Left: ``s - int(s - m) = ceil(m)``; right: ``int(e + m + 1) - e = floor(m) + 1``;
    ``m = scale * n ** power`` in float64 (Python floats), as published.
    """
    left = np.zeros(num_snippets + 2, np.int32)
    right = np.ones(num_snippets + 2, np.int32)
    for n in range(1, num_snippets + 2):
        margin = min(scale * n**power, float(num_snippets + 1))
        left[n] = math.ceil(margin)
        right[n] = math.floor(margin) + 1
    return left, right


def row_breaks(start, end, valid, length, left_table, right_table):
    """``[..., R, 4]`` int32 breakpoints of the LP rows of integer segments ``[start, end)``.

    Row ``r``: ``-1`` on ``[b0, b1)``, ``+1`` on ``[b1, b2)``, ``-1`` on ``[b2, b3)``,
    all clipped to ``[0, length]``; invalid rows collapse to a point (no entry).
    """
    num_lengths = left_table.shape[0]
    length = length[..., None]
    size = jnp.clip(end - start, 0, num_lengths - 1)
    b1 = jnp.clip(start, 0, length)
    b2 = jnp.maximum(b1, jnp.minimum(end, length))
    b0 = jnp.minimum(jnp.maximum(start - left_table[size], 0), b1)
    b3 = jnp.maximum(b2, jnp.minimum(jnp.minimum(length - 1, end + right_table[size]), length))
    breaks = jnp.stack([b0, b1, b2, b3], axis=-1).astype(jnp.int32)
    return jnp.where(valid[..., None], breaks, 0)


def paint(breaks, scores, valid, num_snippets: int):
    """``[B, L]``: each snippet's largest score among the segments covering it, clipped to ``[0, 1]``."""
    positions = jnp.arange(num_snippets, dtype=jnp.int32)
    level = jnp.clip(scores, 0, 1)

    def one_row(r, painted):
        begin, end = breaks[:, r, 1][:, None], breaks[:, r, 2][:, None]
        inside = (positions >= begin) & (positions < end) & valid[:, r][:, None]
        return jnp.where(inside, jnp.maximum(painted, level[:, r][:, None]), painted)

    return jax.lax.fori_loop(0, scores.shape[1], one_row, jnp.zeros((scores.shape[0], num_snippets), scores.dtype))


@functools.partial(
    jax.jit, static_argnames=("num_snippets", "method", "fallback", "max_steps", "check_every", "margin_scale", "margin_power")
)
def snippets_from_integer_segments(
    start, end, scores, valid, length, status, rtol, atol, *, num_snippets: int, method: str, fallback: str,
    max_steps: int, check_every: int, margin_scale: float, margin_power: float,
) -> SnippetLabels:
    """The kernel on flat ``[B, R]`` integer segments (``status``: a code known beforehand, per item).

    ``status`` other than ``SUCCESSFUL`` (bad input found by the caller) gives
    zeros with that code.
    """
    left, right = margin_tables(num_snippets, margin_scale, margin_power)
    breaks = row_breaks(start, end, valid, length, jnp.asarray(left), jnp.asarray(right))
    target = jnp.where(valid, scores, 0)
    count = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    status = jnp.where((status == ResultCode.SUCCESSFUL) & (count == 0), ResultCode.EMPTY_GROUP, status)
    upper = (jnp.arange(num_snippets, dtype=jnp.int32) < length[:, None]).astype(scores.dtype)
    batch = scores.shape[0]
    zeros_int = jnp.zeros((batch,), jnp.int32)
    if method == "paint":
        snippets = jnp.where((status == ResultCode.SUCCESSFUL)[:, None], paint(breaks, target, valid, num_snippets), 0)
        steps = restarts = zeros_int
        result = status
    else:
        solution = solve_interval_lp(
            breaks, target, upper, status, max_steps=max_steps, check_every=check_every, rtol=rtol, atol=atol
        )
        failed = (solution.result == ResultCode.INFEASIBLE) | (solution.result == ResultCode.DIVERGED)
        if fallback == "paint":
            replacement = jax.lax.cond(
                jnp.any(failed), lambda: paint(breaks, target, valid, num_snippets), lambda: jnp.zeros_like(solution.x)
            )
        else:
            replacement = jnp.zeros_like(solution.x)
        snippets = jnp.where(failed[:, None], replacement, solution.x)
        steps, restarts, result = solution.steps, solution.restarts, solution.result
    residual = jnp.max(jnp.abs(apply_rows(breaks, snippets) - target), axis=-1, initial=0)
    return SnippetLabels(
        snippets=snippets * upper,
        result=result.astype(RESULT_DTYPE),
        objective=jnp.sum(snippets, axis=-1),
        primal_residual=residual,
        steps=steps,
        restarts=restarts,
        num_segments=count,
    )


def _nonnegative_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"`{name}` must be non-negative and finite, got {number}")
    return number


def check_solver_options(method, fallback, max_steps, check_every, rtol, atol, margin_scale, margin_power):
    """Validated static options (raises naming the argument)."""
    method = choice(method, "method", METHODS)
    fallback = choice(fallback, "fallback", FALLBACKS)
    max_steps = positive_int(max_steps, "max_steps")
    check_every = positive_int(check_every, "check_every")
    rtol = _nonnegative_float(rtol, "rtol")
    atol = _nonnegative_float(atol, "atol")
    if rtol == 0 and atol == 0:
        raise ValueError("`rtol` and `atol` cannot both be 0 (the solver would never stop before max_steps)")
    margin_scale = _nonnegative_float(margin_scale, "margin_scale")
    if isinstance(margin_power, bool) or not isinstance(margin_power, (int, float, np.integer, np.floating)):
        raise TypeError(f"`margin_power` must be a real number, got {margin_power!r}")
    margin_power = float(margin_power)
    if not math.isfinite(margin_power) or margin_power < 0:
        raise ValueError(f"`margin_power` must be non-negative and finite, got {margin_power}")
    return method, fallback, max_steps, check_every, rtol, atol, margin_scale, margin_power


def segments_to_snippets(
    segments,
    scores,
    valid=None,
    *,
    length=None,
    num_snippets: int,
    method: str = "lp",
    fallback: str = "paint",
    margin_scale: float = MARGIN_SCALE,
    margin_power: float = MARGIN_POWER,
    max_steps: int = DEFAULT_MAX_STEPS,
    check_every: int = DEFAULT_CHECK_EVERY,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    throw: bool = False,
) -> SnippetLabels:
    """Snippet labels from fused segments, for a whole batch of (video, class) items at once.

    ``method="lp"`` solves the published LP (see the module docstring) of
    every item: ``min sum_t p_t`` s.t. ``A p = q``, ``0 <= p <= 1``, with
    ``q_r`` the segments' scores. ``method="paint"`` is the closed-form
    alternative: each snippet gets the largest score (clipped to ``[0, 1]``) of
    the segments ``[int(start), int(end))`` covering it.

    The LP stops when ``max_r |(A p - q)_r| <= atol + rtol max |q|`` and the
    duality gap is at most ``atol + rtol (|primal| + |dual|)``; the objective is
    then within about ``rtol`` of HiGHS's, and ``p`` is within the bounds
    exactly.

    Args:
        segments: ``[..., R, 2]`` (start, end) in snippets (fused segments);
            leading dims are items, e.g. ``[videos, classes]``.
        scores: ``[..., R]`` fused scores ``q_r`` (the published contrast).
        valid: optional ``[..., R]`` bool; invalid rows are ignored.
        length: optional int ``[...]`` (broadcastable) snippets per item, in
            ``[0, num_snippets]``; default ``num_snippets``.
        num_snippets: ``L``, the (padded) length of the output.
        method: ``"lp"`` (published) or ``"paint"``.
        fallback: labels of infeasible items with ``method="lp"``:
            ``"paint"`` (default) or ``"zeros"`` (the published code has NaN).
        margin_scale, margin_power: the margin ``m = margin_scale * n **
            margin_power`` (published 0.0785 and 0.9).
        max_steps: most PDHG iterations per item (static).
        check_every: PDHG iterations between convergence and restart checks.
        rtol, atol: termination tolerances.
        throw: raise ``RuntimeError`` when an item is not solved
            (``MAX_STEPS_REACHED``, ``INFEASIBLE``, ``DIVERGED``, bad input;
            ``EMPTY_GROUP`` is fine) instead of returning its code. Needs
            concrete values: ignored inside a caller's ``jit``.

    Returns:
        A :class:`SnippetLabels` (numpy in, numpy out; JAX in, JAX out).

    Raises:
        TypeError: non-float segments or scores, non-bool ``valid``, non-integer
            ``length``.
        ValueError: wrong shapes, a non-finite value or ``start > end`` in a
            valid segment, ``length`` out of range, a bad option (the message
            names the argument). Inside a caller's ``jit`` value problems give
            the item ``NONFINITE_INPUT`` or ``INVALID_INPUT`` instead.

    Example:
        >>> import numpy as np
        >>> labels = segments_to_snippets(np.array([[2.0, 6.0]], np.float32), np.array([1.5], np.float32),
        ...                               num_snippets=10)
        >>> round(float(labels.objective), 3), int(labels.result)
        (1.5, 0)
    """
    ensure_compilation_cache()  # before this call's first compilation
    kind = array_kind(segments, scores, valid)
    num_snippets = positive_int(num_snippets, "num_snippets")
    options = check_solver_options(method, fallback, max_steps, check_every, rtol, atol, margin_scale, margin_power)
    method, fallback, max_steps, check_every, rtol, atol, margin_scale, margin_power = options
    segments = float_array(segments, "segments", min_ndim=2)
    scores = float_array(scores, "scores", min_ndim=1)
    if segments.shape[-1] != 2:
        raise ValueError(f"`segments` must have shape [..., R, 2], got {segments.shape}")
    if scores.shape != segments.shape[:-1]:
        raise ValueError(f"`scores` must have shape {segments.shape[:-1]} (segments without the last axis), got {scores.shape}")
    batch_shape, rows = scores.shape[:-1], scores.shape[-1]
    if valid is None:
        valid = jnp.ones(scores.shape, bool)
    else:
        valid = to_jax(valid)
        if valid.dtype != jnp.bool_:
            raise TypeError(f"`valid` must be a bool array, got dtype {valid.dtype}")
        if valid.shape != scores.shape:
            raise ValueError(f"`valid` must have shape {scores.shape}, got {valid.shape}")
    length = checked_length(length, batch_shape, num_snippets, unit="item")
    dtype = jnp.float32 if scores.dtype in (jnp.float16, jnp.bfloat16) else scores.dtype
    items = math.prod(batch_shape)
    flat_segments = segments.astype(dtype).reshape(items, rows, 2)
    flat_scores = scores.astype(dtype).reshape(items, rows)
    flat_valid = valid.reshape(items, rows)
    flat_length = jnp.asarray(length).reshape(items)

    if not is_traced(flat_segments, flat_scores, flat_valid):
        _raise_for_bad_rows(np.asarray(flat_segments), np.asarray(flat_scores), np.asarray(flat_valid), batch_shape)
    finite = jnp.isfinite(flat_segments).all(-1) & jnp.isfinite(flat_scores)
    ordered = flat_segments[..., 0] <= flat_segments[..., 1]
    status = jnp.where(
        jnp.any(flat_valid & ~finite, axis=-1),
        ResultCode.NONFINITE_INPUT,
        jnp.where(jnp.any(flat_valid & ~ordered, axis=-1), ResultCode.INVALID_INPUT, ResultCode.SUCCESSFUL),
    ).astype(jnp.int32)
    safe = jnp.where((flat_valid & finite)[..., None], flat_segments, 0)
    # int() of the published code; ends past the video only matter through their length, capped at L + 1.
    bounded = jnp.clip(jnp.floor(safe), 0, num_snippets + 1).astype(jnp.int32)
    result = snippets_from_integer_segments(
        bounded[..., 0], bounded[..., 1], jnp.where(flat_valid & finite, flat_scores, 0), flat_valid & finite,
        flat_length, status, rtol, atol, num_snippets=num_snippets, method=method, fallback=fallback,
        max_steps=max_steps, check_every=check_every, margin_scale=margin_scale, margin_power=margin_power,
    )
    result = jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), result)
    if throw and not is_traced(result.result):
        raise_for_results(result.result, "segments_to_snippets", unit="item")
    return from_jax(result, kind)


def _raise_for_bad_rows(segments, scores, valid, batch_shape) -> None:
    finite = np.isfinite(segments).all(-1) & np.isfinite(scores)
    bad = valid & ~finite
    if bad.any():
        item, row = np.argwhere(bad)[0]
        where = tuple(int(i) for i in np.unravel_index(item, batch_shape)) + (int(row),)
        raise ValueError(f"`segments` and `scores` must be finite in valid rows; first non-finite at index {where}")
    reversed_rows = valid & (segments[..., 0] > segments[..., 1])
    if reversed_rows.any():
        item, row = np.argwhere(reversed_rows)[0]
        where = tuple(int(i) for i in np.unravel_index(item, batch_shape)) + (int(row),)
        raise ValueError(f"`segments` must have start <= end in valid rows; got {segments[item, row].tolist()} at index {where}")
