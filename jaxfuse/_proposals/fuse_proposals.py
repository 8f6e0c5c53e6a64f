"""Raw proposals in, fused detections out: grouping and fusion for a whole dataset at once.

:func:`fuse_proposals` runs the published post-processing of Zhou et al. (CVPR
2023) on a padded batch of items ((video, class) pairs): greedy grouping (see
:mod:`jaxfuse._proposals.grouping`), then one fused instance per group. NMS and Soft-NMS
are available through the same call for comparison.

How each method fuses a group (``g_k = softmax(w / T)`` over the group):

* ``"gaussian"`` and ``"exponential"``: start and end are ``sum g_k x_k``
  (both templates have the same location, erratum 3 of the spec; they differ
  in their spread parameter).
* ``"uniform"``: ``(min + max) / 2`` of the members' starts and ends.
* ``"laplace"`` and ``"student_t"``: :func:`jaxfuse.fuse_groups` on the
  groups packed by size bucket (:mod:`jaxfuse._proposals.bucketed_templates`).
* ``"nms"``: the leader's segment and score.
* ``"soft_nms"``: no groups; see :mod:`jaxfuse._proposals.soft_nms`.

For every fusion template the fused score is ``sum g_k q_k``, the weighted
average of the ordering scores, as in the published code.

The closed-form templates are computed in segment form
(:mod:`jaxfuse._proposals.group_fusion`): every member carries its group id and
segment reductions (``jax.ops.segment_*``) give the per-group sums, so memory
stays O(items x N) whatever the group sizes. Ragged lists of items go through
:mod:`jaxfuse._proposals.proposal_lists`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.deprecation import renamed_option
from jaxfuse._core.interop import array_kind, from_jax, is_traced
from jaxfuse._core.result_codes import RESULT_DTYPE, ResultCode
from jaxfuse._core.settings import FusionSettings, resolve_settings
from jaxfuse._core.validation import choice, positive_scalar
from jaxfuse._fusion.templates import PADDED_TEMPLATES, TEMPLATE_NAMES, template_options
from jaxfuse._proposals.bucketed_templates import fuse_padded_templates
from jaxfuse._proposals.group_fusion import FusedProposals, finish_fused_groups, group_and_fuse, temperature_code
from jaxfuse._proposals.grouping import (
    ProposalGroups,
    overlap_settings,
    proposal_flags,
    raise_for_value_problems,
    threshold_code,
    validate_overlap,
    validate_proposals,
    validate_threshold,
)
from jaxfuse._proposals.grouping_entry import group_batch_checked
from jaxfuse._proposals.soft_nms import DECAYS, DEFAULT_SCORE_FLOOR, DEFAULT_SIGMA, soft_nms_batch
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache
from jaxfuse._runtime.executable_store import stored_executable

METHODS = TEMPLATE_NAMES + ("nms", "soft_nms")


# ------------------------------------------------------------------ Soft-NMS


@functools.partial(jax.jit, static_argnames=("linear",))
def _soft_nms_checked(segments, scores, valid, threshold, sigma, floor, use_iou, offset, extra, *, linear):
    problems, codes, sound = proposal_flags(segments, scores, valid, extra)
    kept = soft_nms_batch(segments, scores, sound, threshold, sigma, floor, use_iou, offset, linear=linear)
    dtype = scores.dtype
    options_ok = (temperature_code(sigma, dtype) == ResultCode.SUCCESSFUL) & jnp.isfinite(jnp.asarray(floor, dtype))
    option_code = jnp.where(options_ok, threshold_code(threshold), ResultCode.INVALID_OPTION).astype(RESULT_DTYPE)
    return kept, problems, jnp.maximum(codes, option_code)


@functools.partial(stored_executable, static_argnames=("linear",))
@functools.partial(jax.jit, static_argnames=("linear",))
def _soft_nms_program(segments, scores, valid, threshold, sigma, floor, use_iou, offset, extra, *, linear):
    """Soft-NMS, value checks and the output in one program: one compile, one dispatch."""
    kept, problems, codes = _soft_nms_checked(
        segments, scores, valid, threshold, sigma, floor, use_iou, offset, extra, linear=linear
    )
    groups = ProposalGroups(kept.slot, kept.order, kept.count)
    return _soft_nms_output(segments, kept.scores, groups, codes), problems


@jax.jit
def _soft_nms_output(segments, kept, groups: ProposalGroups, codes):
    items, size = kept.shape
    num = items * size
    leader = jnp.maximum(groups.leader, 0)
    kept_segments = jnp.take_along_axis(segments, leader[..., None], axis=1)
    success = jnp.full((num,), ResultCode.SUCCESSFUL, RESULT_DTYPE)
    return finish_fused_groups(
        kept_segments.reshape(num, 2), kept.reshape(num), None, None, success, groups, codes
    )


def _soft_nms_options(options: dict) -> tuple[bool, float, float]:
    # `min_score`, as in jaxfuse fuse --min-score, fuse_detection_file and ActionFormer; `score_floor` until 0.2.
    options = renamed_option(options, "score_floor", "min_score", "fuse_proposals(method='soft_nms')")
    unknown = set(options) - {"decay", "sigma", "min_score"}
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for method 'soft_nms'; expected decay, sigma, min_score")
    decay = choice(options.get("decay", "gaussian"), "decay", DECAYS)
    sigma = positive_scalar(options.get("sigma", DEFAULT_SIGMA), "sigma")
    floor = options.get("min_score", DEFAULT_SCORE_FLOOR)
    if not isinstance(floor, jax.core.Tracer):
        if np.ndim(floor) != 0 or not np.isfinite(floor):
            raise ValueError(f"`min_score` must be a finite scalar, got {floor!r}")
        floor = float(floor)
    return decay == "linear", sigma, floor


def check_method_options(method: str, options: dict):
    if method == "soft_nms":
        return _soft_nms_options(options)
    if method == "student_t":
        template_options(method, dict(options))  # raises on unknown or bad options
        return options
    if options:
        raise TypeError(f"method {method!r} takes no options, got {sorted(options)}")
    return options


# ------------------------------------------------------------------ public API


class _Resolved(NamedTuple):
    threshold: Any
    overlap: str
    discrete: bool
    method: str
    temperature: Any


def resolve_fusion_settings(preset=None, **explicit) -> _Resolved:
    """The preset's settings overridden by the explicit ones that are not None, each checked.

    Raises:
        ValueError, TypeError: an unknown preset or method, a threshold outside
            [0, 1], a temperature that is not positive and finite, a
            non-bool ``discrete``; the message names the argument. Traced
            threshold and temperature pass (the kernels give them result codes).
    """
    for name in ("method", "overlap", "discrete", "preset"):
        if is_traced(explicit.get(name)) or (name == "preset" and is_traced(preset)):
            raise TypeError(f"`{name}` must be static (a Python value), not a traced value")
    settings = resolve_settings(preset, **explicit)
    method = choice(settings.method, "method", METHODS)
    threshold = validate_threshold(settings.overlap_threshold)
    overlap, discrete = validate_overlap(settings.overlap, settings.discrete)
    temperature = positive_scalar(settings.temperature, "temperature")
    return _Resolved(threshold, overlap, discrete, method, temperature)



def fuse_proposals(
    segments,
    scores,
    weights=None,
    valid=None,
    *,
    overlap_threshold: float | None = None,
    overlap: str | None = None,
    discrete: bool | None = None,
    method: str | None = None,
    temperature: float | None = None,
    preset: str | FusionSettings | None = None,
    **options,
) -> FusedProposals:
    """Group raw proposals and fuse each group, for a whole padded batch of items.

    The published rule (Zhou et al., CVPR 2023), per item: the highest-scoring
    remaining proposal leads a group and absorbs every remaining proposal whose
    overlap with it is strictly greater than ``overlap_threshold``; each group
    is fused into one instance by the template ``method`` under softmax
    weights ``softmax(weights / temperature)``; fused instances come out in
    leader order. Score ties go to the lower input index.

    Args:
        segments: ``[..., N, 2]`` (start, end) floats; leading dims are items,
            e.g. ``[videos, classes, N, 2]``.
        scores: ``[..., N]`` ordering scores (the published outer-inner
            contrast); also fused, as a weighted average, into the fused score.
        weights: ``[..., N]`` softmax logits of the members (the published inner
            score); default: ``scores``.
        valid: ``[..., N]`` bool marking real proposals of ragged items;
            default all. Invalid rows may hold anything and change nothing.
        overlap_threshold: membership is ``overlap > overlap_threshold``; in
            [0, 1]. Default 0.25.
        overlap: ``"candidate"``: intersection / the candidate's length (the
            published grouping measure); ``"iou"``: intersection over union.
            Default (None) by method under the default preset: ``"iou"`` for
            ``"nms"`` and ``"soft_nms"`` (the measure every (Soft-)NMS
            uses), ``"candidate"`` for the templates; the published preset
            keeps ``"candidate"`` for every method.
        discrete: the published ``+1`` frame convention (``length = end -
            start + 1``) if True; continuous lengths if False (default: right
            for times in seconds, where ``+1`` would merge ``[10, 12]`` and
            ``[12.2, 13]``).
        method: ``"gaussian"`` (default), ``"uniform"``, ``"exponential"``,
            ``"laplace"``, ``"student_t"`` (templates), ``"nms"`` (keep each
            leader) or ``"soft_nms"`` (Bodla et al.; decays by ``overlap``
            with the ``discrete`` convention: by default the usual continuous
            tIoU, with ``preset="published"`` candidate overlap with ``+1``).
        temperature: softmax temperature T > 0; default 0.2 (the published
            evaluation value; 0.02 down to 0.0016 for pseudo labels). Changing
            it does not recompile.
        preset: ``"default"`` (:data:`jaxfuse.DEFAULT`), ``"published"``
            (:data:`jaxfuse.PUBLISHED`: candidate overlap > 0.25 with the
            ``+1`` frame convention, Gaussian at T = 0.2; pass the inner scores
            as ``weights``, as the published code does) or a
            :class:`jaxfuse.FusionSettings`. The five setting arguments above
            default to None, which means "the preset's value"; an explicit
            value beside a preset wins (``preset="published",
            temperature=0.02`` is the published rule at a training temperature).
        **options: ``"student_t"``: the options of :func:`jaxfuse.fuse_groups`
            (``df``, ``fit_df``, ``df_bounds``, ``max_steps``, ``rtol``,
            ``atol``). ``"soft_nms"``: ``decay`` (``"gaussian"``, default, or
            ``"linear"``), ``sigma`` (0.5; Gaussian decay
            ``exp(-overlap**2 / sigma)``), ``min_score`` (0.001; a proposal
            whose decayed score falls below it is dropped, so negative scores
            never survive; ``score_floor`` is its deprecated name). Linear decay
            multiplies by ``1 - overlap`` where ``overlap > overlap_threshold``.

    Dtypes: the computation follows the input's float dtype. float64 needs
    ``jax_enable_x64``; without it float64 input is computed in float32 (a
    warning says so, once per process).

    Inside a caller's ``jax.jit`` (arrays closed over or passed in, options
    such as ``temperature`` and ``overlap_threshold`` traced), values cannot be
    checked before tracing; they get result codes instead of errors: see
    ``result`` and ``item_result`` of :class:`FusedProposals`. ``method``,
    ``overlap``, ``discrete`` and ``preset`` must be static.

    Returns:
        A :class:`FusedProposals`: numpy arrays for numpy input, JAX arrays for
        JAX input or under a caller's ``jit`` (torch tensors for torch input).

    Raises:
        TypeError: non-float arrays, a non-bool ``valid``, unknown options.
        ValueError: wrong shapes, ``start > end`` or non-finite values in a
            valid proposal, a threshold outside [0, 1], a temperature that is
            not positive and finite, an unknown method or preset; the message
            names the argument.

    Example:
        >>> import numpy as np
        >>> fused = fuse_proposals(np.array([[0., 10.], [2., 12.], [40., 50.]], np.float32),
        ...                        np.array([0.9, 0.8, 0.5], np.float32), temperature=1.0)
        >>> int(fused.count), fused.group.tolist()
        (2, [0, 0, 1])
        >>> fused.segments[:2].astype(float).round(2).tolist()
        [[0.95, 10.95], [40.0, 50.0]]
    """
    ensure_compilation_cache()  # before this call's first compilation
    kind = array_kind(segments, scores, weights, valid)
    settings = resolve_fusion_settings(
        preset, overlap_threshold=overlap_threshold, overlap=overlap, discrete=discrete, method=method,
        temperature=temperature,
    )
    threshold, overlap, discrete, method, temperature = settings
    options = check_method_options(method, options)
    inputs = validate_proposals(segments, scores, valid, extra=[("weights", weights)])
    batch_shape, size = inputs.scores.shape[:-1], inputs.scores.shape[-1]
    items = math.prod(batch_shape)
    # Reshape only when needed: on already-flat input each no-op would still be a dispatch.
    flat = lambda x, *tail: x if x.shape == (items, size, *tail) else x.reshape(items, size, *tail)  # noqa: E731
    segments, scores, valid = flat(inputs.segments, 2), flat(inputs.scores), flat(inputs.valid)
    weights = None if inputs.extra[0] is None else flat(inputs.extra[0])
    checked = () if weights is None else (weights,)
    use_iou, offset = overlap_settings(overlap, discrete)

    if method == "soft_nms":
        linear, sigma, floor = options
        fused, problems = _soft_nms_program(
            segments, scores, valid, threshold, sigma, floor, use_iou, offset, checked, linear=linear
        )
    elif method in PADDED_TEMPLATES:
        groups, problems, codes = group_batch_checked(segments, scores, valid, threshold, use_iou, offset, checked)
        weights = scores if weights is None else weights
        fused = fuse_padded_templates(segments, scores, weights, groups, temperature, codes, method, options)
    else:
        # NMS (whose fusion needs no temperature; 1.0 keeps the program's signature) and the closed forms.
        fused, problems = group_and_fuse(
            segments, scores, weights, valid, threshold, use_iou, offset, 1.0 if method == "nms" else temperature,
            method=method,
        )
    if inputs.check_on_device and not is_traced(problems):
        # Checked after the kernels are queued: one small transfer, no extra round trip.
        raise_for_value_problems(problems, segments, scores, valid, [("weights", w) for w in checked])

    if batch_shape != (items,):
        fused = jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), fused)
    return from_jax(fused, kind)
