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
(video, class) by ``scipy.optimize.linprog`` (HiGHS) there. Here every LP of a
batch is solved at once, on device:

* ``method="lp"`` (default), exactly (:mod:`jaxfuse._labels.exact_lp`): the rows split
  into independent components, one-row components in closed form (HiGHS's own
  vertex), the others by a batched dual simplex over their "atoms"; a component
  past the simplex's pivot cap (none in the benchmarks) is solved by PDHG and
  its item flagged ``fallback``;
* ``method="pdhg"``: restarted PDHG over the whole LP (:mod:`jaxfuse._labels.pdhg`,
  products by prefix sums, O(L + R) per iteration), optimal to ``rtol``/``atol``.

Conventions, as in the published code (:mod:`jaxfuse._labels.lp_rows`):

* ``int()`` truncates: ``s = floor(start)``, ``e = floor(end)`` for the
  non-negative segments of a video. So the left margin holds ``ceil(m)``
  snippets and the right one ``floor(m) + 1``, and the last snippet of the
  video is never in a right margin. ``m = 0.0785 n^0.9`` comes from the
  segment as given (a segment running past the video keeps its margin), in
  float64 as published.
* Indices past the video are then clipped, as Python slicing clips them;
  snippets at or after ``length`` are fixed at 0.

The LP optimum is often not unique (any spread of ``q_r`` over a segment that
touches no other row is optimal). ``"lp"`` returns a vertex: HiGHS's own on
one-row components, and on most multi-row ones (88 % of those of the
published chain's data; elsewhere another vertex of the same optimal face).
``"pdhg"`` returns a point of the optimal face near its start (the even
spread). Objectives, residuals and bounds agree.

When no ``p`` in the bounds satisfies ``A p = q`` (a segment at the video's edge
with a negative score and no margin to hold it; overlapping segments that
contradict each other) the published code gets no solution and writes NaN.
Here the item gets ``ResultCode.INFEASIBLE`` and the ``fallback`` labels.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import array_kind, from_jax, is_traced, to_jax
from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode, raise_for_results, repr_with_code_names
from jaxfuse._core.settings import MARGIN_POWER, MARGIN_SCALE
from jaxfuse._core.validation import checked_length, choice, float_array, positive_int
from jaxfuse._labels.exact_lp import LPProgress, first_stage, last_stage, second_stage
from jaxfuse._labels.lp_rows import published_breaks, published_breaks_host
from jaxfuse._labels.pdhg import apply_rows, solve_interval_lp
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache

METHODS = ("lp", "pdhg", "paint")
FALLBACKS = ("paint", "zeros")
DEFAULT_MAX_STEPS = 4096
DEFAULT_CHECK_EVERY = 16


class SnippetLabels(NamedTuple):
    """Snippet labels of a batch of items (``[...]`` the items' batch shape).

    Attributes:
        snippets: ``[..., L]`` labels in ``[0, 1]``; zero at and after each
            item's ``length``.
        result: ``[...]`` int32 :class:`jaxfuse.ResultCode`: ``SUCCESSFUL``,
            ``MAX_STEPS_REACHED`` (``"pdhg"``, or a ``"lp"`` component that
            went to PDHG: its last iterate, within the bounds),
            ``INFEASIBLE`` or ``DIVERGED`` (the ``fallback`` labels),
            ``EMPTY_GROUP`` (no valid segment: zeros), ``NONFINITE_INPUT`` and
            ``INVALID_INPUT`` (a bad segment inside a caller's ``jit``: zeros).
            ``method="paint"`` gives ``SUCCESSFUL`` or ``EMPTY_GROUP``.
        objective: ``[...]`` ``sum_t snippets_t``.
        primal_residual: ``[...]`` ``max_r |(A p - q)_r|`` of the returned labels
            (large where the fallback or ``"paint"`` was used: they do not
            solve the LP).
        steps: ``[...]`` int32 iterations: for ``"lp"`` the most simplex
            pivots of one component (PDHG iterations for a ``fallback``
            component); for ``"pdhg"`` PDHG iterations; 0 for ``"paint"``.
        restarts: ``[...]`` int32 PDHG restarts.
        num_segments: ``[...]`` int32 valid segments (LP rows) of each item.
        fallback: ``[...]`` bool, ``"lp"`` only: a component of the item went
            past the simplex's pivot cap and was solved by PDHG (optimal to
            ``rtol``/``atol``, not exactly).
    """

    snippets: Any
    result: Any
    objective: Any
    primal_residual: Any
    steps: Any
    restarts: Any
    num_segments: Any
    fallback: Any

    __repr__ = repr_with_code_names  # result codes by name; still a NamedTuple (a pytree)


def paint(breaks, scores, valid, num_snippets: int):
    """``[B, L]``: each snippet's largest score among the segments covering it, clipped to ``[0, 1]``."""
    positions = jnp.arange(num_snippets, dtype=jnp.int32)
    level = jnp.clip(scores, 0, 1)

    def one_row(r, painted):
        begin, end = breaks[:, r, 1][:, None], breaks[:, r, 2][:, None]
        inside = (positions >= begin) & (positions < end) & valid[:, r][:, None]
        return jnp.where(inside, jnp.maximum(painted, level[:, r][:, None]), painted)

    return jax.lax.fori_loop(0, scores.shape[1], one_row, jnp.zeros((scores.shape[0], num_snippets), scores.dtype))


_PAINT_CHUNK = 8


def paint_some(breaks, scores, valid, chosen, num_snippets: int):
    """``[B, L]`` :func:`paint` of the ``chosen`` items (zeros elsewhere), ``_PAINT_CHUNK`` items at a time.

    The fallback labels are for the few infeasible items: painting every item
    of a large batch would cost ``B L R`` for them.
    """
    batch = scores.shape[0]
    chunk = min(_PAINT_CHUNK, batch)
    count = jnp.sum(chosen, dtype=jnp.int32)
    order = jnp.argsort(~chosen, stable=True).astype(jnp.int32)
    order = jnp.concatenate([order, jnp.full((-(-batch // chunk) * chunk - batch,), batch, jnp.int32)])

    def one_chunk(index, painted):
        item = jax.lax.dynamic_slice(order, (index * chunk,), (chunk,))
        safe = jnp.minimum(item, batch - 1)
        target = jnp.where(index * chunk + jnp.arange(chunk) < count, item, batch)
        return painted.at[target].set(paint(breaks[safe], scores[safe], valid[safe], num_snippets), mode="drop")

    return jax.lax.fori_loop(0, -(-count // chunk), one_chunk, jnp.zeros((batch, num_snippets), scores.dtype))


def _item_status(valid, status):
    """The known codes, with ``EMPTY_GROUP`` for items without a row."""
    count = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    return jnp.where((status == ResultCode.SUCCESSFUL) & (count == 0), ResultCode.EMPTY_GROUP, status), count


def _labels(breaks, target, valid, length, status, count, x, result, steps, restarts, pdhg_used, *, num_snippets: int,
            fallback: str) -> SnippetLabels:
    """The :class:`SnippetLabels` of solved items: known codes kept, infeasible items given the ``fallback`` labels."""
    used = status == ResultCode.SUCCESSFUL
    result = jnp.where(used, result, status)
    failed = (result == ResultCode.INFEASIBLE) | (result == ResultCode.DIVERGED)
    if fallback == "paint":
        replacement = paint_some(breaks, target, valid, failed, num_snippets)
    else:
        replacement = jnp.zeros_like(x)
    upper = (jnp.arange(num_snippets, dtype=jnp.int32) < length[:, None]).astype(x.dtype)
    snippets = jnp.where(failed[:, None], replacement, jnp.where(used[:, None], x, 0)) * upper
    residual = jnp.max(jnp.abs(apply_rows(breaks, snippets) - target), axis=-1, initial=0)
    return SnippetLabels(
        snippets=snippets,
        result=result.astype(RESULT_DTYPE),
        objective=jnp.sum(snippets, axis=-1),
        primal_residual=residual,
        steps=steps,
        restarts=restarts,
        num_segments=count,
        fallback=pdhg_used,
    )


def approximate_snippets(breaks, scores, valid, length, status, rtol, atol, *, num_snippets: int, method: str,
                         fallback: str, max_steps: int, check_every: int) -> SnippetLabels:
    """``method="paint"`` or ``"pdhg"`` on flat ``[B, R, 4]`` row breakpoints (one program; see :func:`snippets_from_breaks`)."""
    target = jnp.where(valid, scores, 0)
    status, count = _item_status(valid, status)
    batch = scores.shape[0]
    zeros = jnp.zeros((batch,), jnp.int32)
    if method == "paint":
        x = paint(breaks, target, valid, num_snippets)
        result, steps, restarts = status, zeros, zeros
    else:
        upper = (jnp.arange(num_snippets, dtype=jnp.int32) < length[:, None]).astype(scores.dtype)
        solution = solve_interval_lp(
            breaks, target, upper, status, max_steps=max_steps, check_every=check_every, rtol=rtol, atol=atol
        )
        x, result, steps, restarts = solution.x, solution.result, solution.steps, solution.restarts
    return _labels(
        breaks, target, valid, length, status, count, x, result, steps, restarts, jnp.zeros((batch,), bool),
        num_snippets=num_snippets, fallback=fallback,
    )


def exact_first_stage(breaks, scores, valid, status, *, num_snippets: int) -> LPProgress:
    """The exact solver's first stage (:func:`jaxfuse._labels.exact_lp.first_stage`) on the items still to solve."""
    solvable = valid & (_item_status(valid, status)[0] == ResultCode.SUCCESSFUL)[:, None]
    return first_stage(breaks, jnp.where(solvable, scores, 0), solvable, num_snippets=num_snippets)


def exact_labels(progress: LPProgress, breaks, scores, valid, length, status, *, num_snippets: int,
                 fallback: str) -> SnippetLabels:
    """The exact solver's last stage, as :class:`SnippetLabels`."""
    target = jnp.where(valid, scores, 0)
    status, count = _item_status(valid, status)
    solution = last_stage(progress, num_snippets=num_snippets)
    return _labels(
        breaks, target, valid, length, status, count, solution.x, solution.result, solution.steps, solution.restarts,
        solution.fallback, num_snippets=num_snippets, fallback=fallback,
    )


approximate_program = jax.jit(
    approximate_snippets, static_argnames=("num_snippets", "method", "fallback", "max_steps", "check_every")
)
first_stage_program = jax.jit(exact_first_stage, static_argnames=("num_snippets",))
second_stage_program = jax.jit(second_stage, static_argnames=("max_steps", "check_every", "max_pivots"))
exact_labels_program = jax.jit(exact_labels, static_argnames=("num_snippets", "fallback"))


def finish_exact(progress: LPProgress, rtol, atol, *, max_steps: int, check_every: int) -> LPProgress:
    """The exact solver's second stage (:func:`jaxfuse._labels.exact_lp.second_stage`) when it has work.

    Outside a caller's ``jit`` that is known on the host (one scalar read), so
    its program is only compiled for data that needs it; inside, it is part of
    the caller's program.
    """
    if is_traced(progress.rest) or int(progress.rest) > 0:
        return second_stage_program(progress, max_steps=max_steps, check_every=check_every, rtol=rtol, atol=atol)
    return progress


def snippets_from_breaks(
    breaks, scores, valid, length, status, rtol, atol, *, num_snippets: int, method: str, fallback: str,
    max_steps: int, check_every: int,
) -> SnippetLabels:
    """The kernel on flat ``[B, R, 4]`` row breakpoints (:mod:`jaxfuse._labels.lp_rows`) and ``status``, a code known beforehand.

    ``status`` other than ``SUCCESSFUL`` (bad input found by the caller) gives
    zeros with that code. ``method="lp"`` runs the exact solver's stages as
    separate programs, the second one (larger components, the fallback) only
    when it has work; inside a caller's ``jit`` all of them are one program.
    """
    if method != "lp":
        return approximate_program(
            breaks, scores, valid, length, status, rtol, atol, num_snippets=num_snippets, method=method,
            fallback=fallback, max_steps=max_steps, check_every=check_every,
        )
    progress = first_stage_program(breaks, scores, valid, status, num_snippets=num_snippets)
    progress = finish_exact(progress, rtol, atol, max_steps=max_steps, check_every=check_every)
    return exact_labels_program(progress, breaks, scores, valid, length, status, num_snippets=num_snippets, fallback=fallback)


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
    every item exactly: ``min sum_t p_t`` s.t. ``A p = q``, ``0 <= p <= 1``,
    with ``q_r`` the segments' scores; the labels are a vertex (HiGHS's on
    one-row components). ``method="pdhg"`` solves it by restarted PDHG, which
    stops when ``max_r |(A p - q)_r| <= atol + rtol max |q|`` and the
    duality gap is at most ``atol + rtol (|primal| + |dual|)`` (the objective
    then within about ``rtol`` of HiGHS's); ``"lp"`` uses it only for a
    component past its pivot cap (``fallback``). ``method="paint"`` is the
    closed-form alternative: each snippet gets the largest score (clipped to
    ``[0, 1]``) of the segments ``[int(start), int(end))`` covering it.

    Args:
        segments: ``[..., R, 2]`` (start, end) in snippets (fused segments);
            leading dims are items, e.g. ``[videos, classes]``.
        scores: ``[..., R]`` fused scores ``q_r`` (the published contrast).
        valid: optional ``[..., R]`` bool; invalid rows are ignored.
        length: optional int ``[...]`` (broadcastable) snippets per item, in
            ``[0, num_snippets]``; default ``num_snippets``.
        num_snippets: ``L``, the (padded) length of the output.
        method: ``"lp"`` (the published LP, exactly), ``"pdhg"`` (the same LP by
            PDHG, to ``rtol``/``atol``) or ``"paint"``.
        fallback: labels of infeasible items with ``"lp"`` or ``"pdhg"``:
            ``"paint"`` (default) or ``"zeros"`` (the published code has NaN).
        margin_scale, margin_power: the margin ``m = margin_scale * n **
            margin_power`` (published 0.0785 and 0.9).
        max_steps: most PDHG iterations per item (``"pdhg"``) or per fallback
            component (``"lp"``) (static).
        check_every: PDHG iterations between convergence and restart checks.
        rtol, atol: PDHG's termination tolerances.
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
    if not is_traced(segments, scores, valid, length):
        # Concrete input: checked, and the rows built by the published float64 expressions, on the host.
        flat_segments = np.asarray(segments).astype(dtype).reshape(items, rows, 2)
        flat_scores = np.asarray(scores).astype(dtype).reshape(items, rows)
        usable = np.asarray(valid).reshape(items, rows)
        flat_length = np.asarray(length, np.int32).reshape(items)
        _raise_for_bad_rows(flat_segments, flat_scores, usable, batch_shape)
        status = np.zeros(items, np.int32)
        breaks = published_breaks_host(
            flat_segments[..., 0], flat_segments[..., 1], usable, flat_length, num_snippets=num_snippets,
            scale=margin_scale, power=margin_power,
        )
    else:
        flat_segments = segments.astype(dtype).reshape(items, rows, 2)
        flat_scores = scores.astype(dtype).reshape(items, rows)
        flat_valid = valid.reshape(items, rows)
        flat_length = jnp.asarray(length).reshape(items)
        finite = jnp.isfinite(flat_segments).all(-1) & jnp.isfinite(flat_scores)
        ordered = flat_segments[..., 0] <= flat_segments[..., 1]
        status = jnp.where(
            jnp.any(flat_valid & ~finite, axis=-1),
            ResultCode.NONFINITE_INPUT,
            jnp.where(jnp.any(flat_valid & ~ordered, axis=-1), ResultCode.INVALID_INPUT, ResultCode.SUCCESSFUL),
        ).astype(jnp.int32)
        usable = flat_valid & finite & ordered
        breaks = published_breaks(
            flat_segments[..., 0], flat_segments[..., 1], usable, flat_length, num_snippets=num_snippets,
            scale=margin_scale, power=margin_power,
        )
        flat_scores = jnp.where(usable, flat_scores, 0)
    result = snippets_from_breaks(
        breaks, flat_scores, usable, flat_length, status, rtol, atol, num_snippets=num_snippets, method=method,
        fallback=fallback, max_steps=max_steps, check_every=check_every,
    )
    if batch_shape != (items,):
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
