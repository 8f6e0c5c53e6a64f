"""Class activation sequences to fused detections, for a whole batch of videos at once.

:func:`detect` runs the weakly supervised TAL post-processing of the published
GauFuse_WSTAL code (``utils/utils.py``, ``generate_segs_eval``) on a padded
batch of videos:

1. every class whose video-level score is at least ``class_threshold`` is an
   *item* (a (video, class) pair); the others are skipped, as in the
   published loop (``if vid_cls_score < class_threshold: continue``);
2. the CAS of every item is thresholded at every level
   (:func:`jaxfuse.proposals_from_cas`): each run is a proposal with an inner
   score (the mean CAS inside) and a contrast ``inner - outer``;
3. the proposals of each item are grouped and fused
   (:func:`jaxfuse.fuse_proposals`) with the contrast as the ordering score and
   (``weights="inner"``, or ``preset="published"``) the inner score as the
   softmax logit, as published;
4. the fused instances are written back per (video, class), padded.

How it maps onto compiled programs. Per batch, whatever the number of videos,
classes or proposals, the work is four compiled programs: (a) gather the
items' sequences (a numpy CAS is gathered on the host: only the selected
classes are copied) and count the proposals each will have, from the number
of levels below each snippet (O(L) per item); (b) the proposals
(``proposals_from_cas``) in as many slots as the busiest item needs, with
each proposal's first occurrence (the same run found at a lower level); (c)
the grouping and fusion (as ``fuse_proposals``; Laplace and Student-t size
their padded groups with one more host read); (d) the scatter to ``[V, C,
N]``. The host reads a few integers on the way (the largest proposal count,
after (a); the largest numbers of proposals and of first occurrences, after
(b); the largest fused count, after (c)) to size the next program: grouping
works on a few hundred slots per item instead of the static bound (3,420 for
512 snippets), and, for the closed forms and NMS, on first occurrences only
(180 columns instead of 491 on THUMOS-like data: a repeat joins its first
occurrence's group, :func:`jaxfuse._proposals.grouping.group_batch_distinct`).

Shapes are bucketed, so a dataset compiles a handful of programs: the snippet
axis ``L`` is padded to a power of two (>= 16), and the numbers of items,
proposal slots and detection slots to 16 x 1, 1.5, 2, 3, 4, 6, ... (two sizes
per octave: padding is at most a third of the work). :func:`detect_videos`
takes a list of videos of any lengths and groups them into such buckets.

Convention choices (all documented in the SPEC or the published code):

* A class passes when ``video_score >= class_threshold`` (the published test is
  ``< threshold: skip``); its default 0.16 is the published evaluation value.
* Proposals follow ``proposals_from_cas``; its ``convention="spec"`` (default:
  the run ``[s, e + 1)``, symmetric ceil margins) or ``"published"`` (the
  published off-by-one, to reproduce published numbers).
* Ordering score: the contrast ``inner - outer``; fusion weights: the
  contrast by default, the inner score with ``weights="inner"`` or
  ``preset="published"`` (as published); fused score: the softmax-weighted average of the
  contrasts (the leader's contrast for NMS, the decayed one for Soft-NMS).
* Fused instances of each (video, class) come out in leader order (descending
  contrast of the leaders). The published code then re-sorts each class by
  fused score; that changes no mAP (the evaluation sorts all predictions of a
  class by score), only which instances ``max_detections`` keeps: here the
  ones with the best leaders.
* Segments are in snippets (end exclusive). Convert to seconds with the
  feature stride, e.g. ``16 / 25`` s per snippet for I3D features of 25 fps
  THUMOS14 video (:meth:`VideoDetections.to_activitynet_json` takes it).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import array_kind, from_jax, to_host, to_jax
from jaxfuse._core.padding import bucket_size, two_per_octave
from jaxfuse._core.settings import (
    MARGIN_POWER,
    MARGIN_SCALE,
    PUBLISHED_CLASS_THRESHOLD,
    PUBLISHED_THRESHOLDS,
    resolve_settings,
)
from jaxfuse._core.validation import (
    checked_length,
    choice,
    float_array,
    float_dtype,
    positive_int,
    positive_scalar,
)
from jaxfuse._detection.cas_proposals import (
    CONVENTIONS,
    batch_proposals,
    max_runs_per_threshold,
)
from jaxfuse._evaluation.evaluate import Detections
from jaxfuse._fusion.templates import SEGMENT_SUM_TEMPLATES
from jaxfuse._proposals.fuse_proposals import check_method_options, fuse_proposals, resolve_fusion_settings
from jaxfuse._proposals.group_fusion import group_and_fuse
from jaxfuse._proposals.grouping import overlap_settings, raise_for_value_problems
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache
from jaxfuse._runtime.executable_store import stored_executable

WEIGHT_COLUMNS = ("scores", "inner")


# Smallest padded size of every bucketed axis: below it, padding costs less
# than one more compiled program.
_MIN_BUCKET = 16


class VideoDetections(NamedTuple):
    """Fused detections of a batch of videos, per (video, class), padded to N slots.

    ``V`` videos, ``C`` classes, ``N`` detection slots (``max_detections``, or
    the largest fused count rounded up to a power of two >= 16).

    Attributes:
        segments: ``[V, C, N, 2]`` float (start, end) in snippets, end
            exclusive, of the ``j``-th fused instance of each (video, class)
            for ``j < count``; zeros beyond.
        scores: ``[V, C, N]`` fused scores (see :func:`detect`); zeros beyond
            ``count``.
        valid: ``[V, C, N]`` bool, ``j < count``.
        count: ``[V, C]`` int32, number of detections kept (0 for classes
            that did not pass the class threshold).
        spread: ``[V, C, N, 2]`` the template's spread of the group's starts and
            ends (standard deviation for ``"gaussian"``, ...; zero for NMS and
            Soft-NMS), as in :class:`jaxfuse._proposals.fuse_proposals.FusedProposals`.
        selected: ``[V, C]`` bool, which classes passed the class threshold.
        num_proposals: ``[V, C]`` int32, proposals found in the CAS (all
            thresholds together).
        truncated: ``[V, C]`` bool, whether proposals (``max_proposals``) or
            detections (``max_detections``) were dropped for lack of slots.
    """

    segments: Any
    scores: Any
    valid: Any
    count: Any
    spread: Any
    selected: Any
    num_proposals: Any
    truncated: Any

    def to_predictions(self, video_ids=None) -> Detections:
        """Flat prediction arrays for :func:`jaxfuse.evaluate_detections`.

        Args:
            video_ids: optional ``[V]`` integer id of each row (e.g. the
                videos' indices in a dataset); default ``0 .. V - 1``.

        Returns:
            A :class:`jaxfuse.Detections` of numpy arrays, one entry per valid
            detection, ordered by video, class, then slot; ``label`` is the
            class index.

        Raises:
            ValueError: ``video_ids`` does not have one id per video.

        Example:
            >>> predictions = detections.to_predictions()  # doctest: +SKIP
            >>> jaxfuse.evaluate_detections(predictions, ground_truth)  # doctest: +SKIP
        """
        valid = np.asarray(self.valid)
        num_videos = valid.shape[0]
        ids = np.arange(num_videos) if video_ids is None else np.asarray(video_ids)
        if ids.shape != (num_videos,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"`video_ids` must be {num_videos} integers (one per video), got {ids.shape} {ids.dtype}")
        video, label, slot = np.nonzero(valid)
        return Detections(
            video=ids[video].astype(np.int64),
            label=label.astype(np.int64),
            score=np.asarray(self.scores)[video, label, slot],
            segments=np.asarray(self.segments)[video, label, slot],
        )

    def to_activitynet_json(self, video_names: Sequence[str], class_names: Sequence[str], *, snippet_seconds: float = 1.0) -> dict:
        """ActivityNet result JSON (``{"results": {video: [{label, score, segment}]}}``).

        Args:
            video_names: ``V`` names, one per row.
            class_names: ``C`` names, one per class.
            snippet_seconds: seconds per snippet (``16 / 25`` for I3D
                features of 25 fps THUMOS14 video); segments are multiplied by it.

        Returns:
            A dict ready for ``json.dump`` or :func:`jaxfuse.evaluate_json`;
            every video gets an entry, empty when it has no detection.

        Raises:
            ValueError: wrong number of names, or a non-positive ``snippet_seconds``.
        """
        valid = np.asarray(self.valid)
        num_videos, num_classes = valid.shape[:2]
        if len(video_names) != num_videos or len(class_names) != num_classes:
            raise ValueError(
                f"need {num_videos} `video_names` and {num_classes} `class_names`, got "
                f"{len(video_names)} and {len(class_names)}"
            )
        seconds = float(positive_scalar(snippet_seconds, "snippet_seconds"))
        scores, segments = np.asarray(self.scores), np.asarray(self.segments)
        results: dict[str, list] = {str(name): [] for name in video_names}
        for video, klass, slot in zip(*np.nonzero(valid)):
            start, end = segments[video, klass, slot]
            results[str(video_names[video])].append(
                {
                    "label": str(class_names[klass]),
                    "score": float(scores[video, klass, slot]),
                    "segment": [float(start) * seconds, float(end) * seconds],
                }
            )
        return {"version": "jaxfuse", "results": results, "external_data": {}}


# ------------------------------------------------------------------ kernels


@functools.partial(stored_executable, static_argnames=("padded_length", "min_length"))
@functools.partial(jax.jit, static_argnames=("padded_length", "min_length"))
def _item_sequences(cas, length, video_index, class_index, item_valid, levels, *, padded_length, min_length):
    """Each item's CAS ``[I, padded_length]`` (zero outside its video), and how many proposal slots it needs.

    The levels are sorted, so a snippet is above level ``t`` exactly when ``t <
    k``, ``k`` the number of levels below it. A run of at least ``min_length``
    snippets at level ``t`` starts at ``i`` when ``t`` is below the smallest ``k``
    of snippets ``i .. i + min_length - 1`` but not below ``k[i - 1]``: every
    start of every level is counted from ``k`` in O(L) per item instead of
    O(T x L). Sizing the proposal kernel from the largest count (a few hundred
    on THUMOS-like data) instead of its static bound (3,420 slots for 512
    snippets) divides the scoring and the grouping work several times.

    Returns:
        The sequences, each item's length, the largest proposal count of any
        item, and the flat ``[I, padded_length]`` index of the first non-finite
        value inside a video (-1 if none).
    """
    if cas.dtype in (jnp.float16, jnp.bfloat16):
        cas = cas.astype(jnp.float32)
    sequences = cas[video_index, :, class_index]  # [I, L]
    sequences = jnp.pad(sequences, ((0, 0), (0, padded_length - sequences.shape[1])))
    item_length = jnp.where(item_valid, length[video_index], 0)
    inside = jnp.arange(padded_length, dtype=jnp.int32) < item_length[:, None]
    bad = (inside & ~jnp.isfinite(sequences)).reshape(-1)
    first_bad = jnp.where(jnp.any(bad), jnp.argmax(bad), -1)
    sequences = jnp.where(inside, sequences, 0)

    levels_below = jnp.sum(sequences[:, :, None] > levels.astype(sequences.dtype), axis=-1, dtype=jnp.int32)
    levels_below = jnp.where(inside, levels_below, 0)
    window = jnp.pad(levels_below, ((0, 0), (0, min_length - 1)))
    # The init value must be an int32 array: a Python int is int64 under jax_enable_x64.
    smallest_ahead = jax.lax.reduce_window(
        window, np.int32(np.iinfo(np.int32).max), jax.lax.min, (1, min_length), (1, 1), "VALID"
    )
    before = jnp.pad(levels_below, ((0, 0), (1, 0)))[:, :-1]
    starts = jnp.maximum(smallest_ahead - before, 0)
    largest_count = jnp.max(jnp.sum(starts, axis=-1), initial=0)
    return sequences, item_length, largest_count, first_bad


@functools.partial(stored_executable, static_argnames=("convention", "min_length", "max_proposals"))
@functools.partial(jax.jit, static_argnames=("convention", "min_length", "max_proposals"))
def _item_proposals(sequences, item_length, levels, *, convention, min_length, max_proposals):
    """:func:`jaxfuse.proposals_from_cas` of the items, with ``max_proposals`` slots each.

    Also each proposal's first occurrence (the same run found at a lower
    level, see :func:`jaxfuse._proposals.grouping.group_batch_distinct`), and the
    largest numbers of proposals and of first occurrences of any item, which
    size the grouping.
    """
    found, first_slot = batch_proposals(
        sequences, item_length, levels, classes_last=False, min_length=min_length, margin_scale=MARGIN_SCALE,
        margin_power=MARGIN_POWER, margin_rounding="ceil", convention=convention, num_slots=max_proposals,
        first_slots=True,
    )
    is_first = found.valid & (first_slot == jnp.arange(max_proposals, dtype=jnp.int32))
    most_distinct = jnp.max(jnp.sum(is_first, axis=-1, dtype=jnp.int32), initial=0)
    return found, first_slot, jnp.max(found.num_found, initial=0), most_distinct


def _comparable_levels(levels: tuple[float, ...], dtype) -> np.ndarray:
    """The levels in ``dtype``, rounded toward -inf as ``proposals_from_cas`` compares them.

    ``cas > level`` in ``dtype`` then agrees with the float64 comparison for
    every ``cas`` of that dtype (no value lies between a level and its rounding).
    """
    exact = np.asarray(levels, np.float64)
    narrow = exact.astype(dtype)
    return np.where(narrow > exact, np.nextafter(narrow, np.array(-np.inf, dtype)), narrow)


@functools.partial(stored_executable, static_argnames=("num_videos", "num_classes", "size"))
@functools.partial(jax.jit, static_argnames=("num_videos", "num_classes", "size"))
def _dense_detections(fused_segments, fused_scores, fused_spread, fused_count, num_found, num_kept,
                      video_index, class_index, item_valid, *, num_videos, num_classes, size):
    """Fused items ``[I, P]`` scattered to ``[V, C, size]`` (one flat scatter per field)."""
    items, slots = fused_scores.shape
    if size > slots:
        pad = lambda x: jnp.pad(x, [(0, 0), (0, size - slots)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
        fused_segments, fused_scores, fused_spread = pad(fused_segments), pad(fused_scores), pad(fused_spread)
    num_rows = num_videos * num_classes
    row = jnp.where(item_valid, video_index * num_classes + class_index, num_rows)

    def scatter(values, fill=0):
        dense = jnp.full((num_rows,) + values.shape[1:], fill, values.dtype)
        return dense.at[row].set(values, mode="drop").reshape((num_videos, num_classes) + values.shape[1:])

    count = jnp.minimum(fused_count, size)
    valid = jnp.arange(size, dtype=jnp.int32) < count[:, None]
    keep = lambda x: jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x[:, :size], 0)  # noqa: E731
    return VideoDetections(
        segments=scatter(keep(fused_segments)),
        scores=scatter(keep(fused_scores)),
        valid=scatter(valid, False),
        count=scatter(count.astype(jnp.int32)),
        spread=scatter(keep(fused_spread)),
        selected=scatter(item_valid, False),
        num_proposals=scatter(num_found.astype(jnp.int32)),
        truncated=scatter((num_found > num_kept) | (fused_count > size), False),
    )


# ------------------------------------------------------------------ validation


def _checked_video_scores(video_scores: Any, shape: tuple[int, int]) -> np.ndarray:
    if video_scores is None:
        raise TypeError("`video_scores` is required, got None")
    scores = to_host(video_scores)
    if scores.dtype == np.bool_ or not np.issubdtype(scores.dtype, np.floating):
        raise TypeError(f"`video_scores` must be floating point, got dtype {scores.dtype}")
    if scores.shape != shape:
        raise ValueError(f"`video_scores` must have shape {shape} (videos, classes), got {scores.shape}")
    if not np.isfinite(scores).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(scores))[0])
        raise ValueError(f"`video_scores` must be finite; got {scores[index]} at index {index}")
    return scores


def _checked_levels(thresholds: Any) -> tuple[float, ...]:
    if thresholds is None:
        raise TypeError("`thresholds` is required, got None")
    levels = to_host(thresholds)
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"`thresholds` must be a non-empty 1-D array of levels, got shape {levels.shape}")
    if levels.dtype == np.bool_ or not (np.issubdtype(levels.dtype, np.integer) or np.issubdtype(levels.dtype, np.floating)):
        raise TypeError(f"`thresholds` must be real numbers, got dtype {levels.dtype}")
    if not np.isfinite(levels).all():
        raise ValueError(f"`thresholds` must be finite, got {levels.tolist()}")
    # Python floats: hashable (a static argument), and exactly the caller's values.
    return tuple(float(level) for level in levels.astype(np.float64))


def _real_scalar(value: Any, name: str) -> float:
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    if not np.isfinite(array):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return float(array)


# ------------------------------------------------------------------ public API


class _DetectRequest(NamedTuple):
    """detect's arguments once checked: the CAS (on device, or None beside its host copy) and resolved settings."""

    cas: Any
    host_cas: np.ndarray | None
    dtype: Any
    scores: np.ndarray
    levels: tuple
    class_threshold: float
    video_length: np.ndarray
    overlap_threshold: float
    overlap: str
    discrete: bool
    method: str
    temperature: float
    weight_column: str
    convention: str
    min_length: int
    max_detections: int | None
    max_proposals: int | None


def _checked_request(cas, video_scores, thresholds, class_threshold, length, preset, options, convention, min_length,
                     max_detections, max_proposals, **settings) -> _DetectRequest:
    """Check every argument of :func:`detect` before anything is traced; resolve the preset."""
    method, temperature, overlap_threshold = settings["method"], settings["temperature"], settings["overlap_threshold"]
    if isinstance(cas, jax.core.Tracer) or isinstance(video_scores, jax.core.Tracer):
        raise TypeError("detect cannot run under jax.jit: it sizes its programs from the data on the host")
    # A numpy CAS stays on the host until the selected items are gathered
    # (a few of its classes: several times fewer bytes to copy).
    host_cas = cas if isinstance(cas, np.ndarray) else None
    if host_cas is None:
        cas = float_array(cas, "cas")
        dtype = cas.dtype
    else:
        dtype = jax.dtypes.canonicalize_dtype(float_dtype(cas, "cas"))
    if cas.ndim != 3:
        raise ValueError(f"`cas` must have shape [videos, snippets, classes], got {cas.shape}")
    num_videos, num_snippets, num_classes = cas.shape
    if num_snippets == 0:
        raise ValueError(f"`cas` must have at least one snippet, got shape {cas.shape}")
    scores = _checked_video_scores(video_scores, (num_videos, num_classes))
    levels = _checked_levels(thresholds)
    class_threshold = _real_scalar(class_threshold, "class_threshold")
    video_length = checked_length(length, (num_videos,), num_snippets, unit="video")
    for name, value in (("temperature", temperature), ("overlap_threshold", overlap_threshold)):
        if isinstance(value, jax.core.Tracer):
            raise TypeError(f"detect cannot take a traced `{name}`: it sizes its programs on the host; pass a Python float")
    settings = resolve_settings(preset, **settings)
    overlap_threshold, overlap, discrete, method, temperature = resolve_fusion_settings(settings)
    weight_column = choice(settings.weights, "weights", WEIGHT_COLUMNS)
    check_method_options(method, dict(options))
    convention = choice(convention, "convention", CONVENTIONS)
    min_length = positive_int(min_length, "min_length")
    if max_detections is not None:
        max_detections = positive_int(max_detections, "max_detections")
    if max_proposals is not None:
        max_proposals = positive_int(max_proposals, "max_proposals")

    return _DetectRequest(
        cas, host_cas, dtype, scores, levels, class_threshold, video_length, overlap_threshold, overlap, discrete,
        method, temperature, weight_column, convention, min_length, max_detections, max_proposals,
    )


def _fuse_items(request: _DetectRequest, found, first_slot, num_distinct: int, options):
    """Group and fuse every item's proposals: on first occurrences only where the method allows it."""
    overlap_threshold, overlap, discrete = request.overlap_threshold, request.overlap, request.discrete
    method, temperature = request.method, request.temperature
    weights = found.inner if request.weight_column == "inner" else None
    ascending = all(low <= high for low, high in itertools.pairwise(request.levels))
    if (method in SEGMENT_SUM_TEMPLATES or method == "nms") and overlap_threshold < 1 and ascending:
        # Repeated proposals (the same run at several levels) join their first
        # occurrence's group: the greedy loop runs on first occurrences only,
        # in as many columns as the item with the most of them needs. (The
        # first occurrence is found from the levels' order: ascending levels.)
        fused, problems = group_and_fuse(
            found.segments, found.contrast, weights, found.valid, overlap_threshold,
            *overlap_settings(overlap, discrete), 1.0 if method == "nms" else temperature, first_slot,
            method=method, num_distinct=num_distinct,
        )
        extra = [] if weights is None else [("weights", weights)]
        raise_for_value_problems(problems, found.segments, found.contrast, found.valid, extra)
        return fused
    return fuse_proposals(
        found.segments, found.contrast, weights, found.valid,
        overlap_threshold=overlap_threshold, overlap=overlap, discrete=discrete,
        method=method, temperature=temperature, **options,
    )


def detect(
    cas,
    video_scores,
    *,
    thresholds=PUBLISHED_THRESHOLDS,
    class_threshold: float = PUBLISHED_CLASS_THRESHOLD,
    length=None,
    method: str | None = None,
    temperature: float | None = None,
    overlap_threshold: float | None = None,
    overlap: str | None = None,
    discrete: bool | None = None,
    weights: str | None = None,
    preset=None,
    max_detections: int | None = None,
    max_proposals: int | None = None,
    convention: str = "spec",
    min_length: int = 2,
    **options,
) -> VideoDetections:
    """Fused detections of a batch of videos from their class activation sequences.

    For every (video, class) whose video score is ``>= class_threshold``: the
    multi-threshold proposals of its CAS (:func:`jaxfuse.proposals_from_cas`),
    grouped by the published greedy rule and fused by ``method``
    (:func:`jaxfuse.fuse_proposals` with ``scores=contrast``,
    ``weights`` per ``weights=``). The whole batch goes through a few compiled programs
    (see the module docstring); the result equals calling those two functions
    item by item.

    Args:
        cas: ``[V, L, C]`` floating class activation sequences, videos padded to
            ``L`` snippets (numpy, JAX or torch). Must be finite within each
            video's ``length``; padding may hold anything.
        video_scores: ``[V, C]`` video-level class scores; classes scoring
            below ``class_threshold`` are skipped (no proposals, no detections).
        thresholds: ``[T]`` CAS levels (default: the published 20,
            ``0.001, 0.003, ..., 0.039``).
        class_threshold: a class is detected in a video when its video score is
            ``>= class_threshold`` (published: 0.16).
        length: optional ``[V]`` int, real snippets per video (default ``L``).
        method: ``"gaussian"`` (default), ``"uniform"``, ``"exponential"``,
            ``"laplace"``, ``"student_t"``, ``"nms"`` or ``"soft_nms"``.
        temperature: softmax temperature T > 0 of the fusion weights (default
            0.2, the published evaluation value).
        overlap_threshold: grouping rule: a proposal joins a leader when their
            overlap is ``> overlap_threshold``, in [0, 1] (default 0.25).
        overlap: ``"candidate"`` (published: intersection / candidate
            length) or ``"iou"``; default: ``"iou"`` for ``"nms"`` and
            ``"soft_nms"``, ``"candidate"`` otherwise and under the published
            preset (see :func:`jaxfuse.fuse_proposals`).
        discrete: the ``+1`` frame convention for lengths (published); default
            False, continuous lengths.
        weights: the softmax logits of the members: ``"scores"`` (default:
            the contrast, the ordering score) or ``"inner"`` (the inner CAS
            score, as the published code does).
        preset: ``"default"``, ``"published"`` (candidate overlap > 0.25 with
            the ``+1`` convention, Gaussian at T = 0.2, inner-score weights: the
            published evaluation) or a :class:`jaxfuse.FusionSettings`; the six
            setting arguments above default to None, "the preset's value", and
            an explicit value beside a preset wins.
        max_detections: detection slots ``N`` per (video, class); the first
            ``N`` in leader order are kept and the rest flagged in
            ``truncated``. Default: enough for every detection (one host read).
        max_proposals: proposal slots per (video, class); default: the static
            bound ``T * ((L + 1) // (min_length + 1))``, which drops nothing.
        convention: ``"spec"`` (default) or ``"published"``, see
            :func:`jaxfuse.proposals_from_cas`.
        min_length: shortest run, in snippets, that makes a proposal (2).
        **options: method options of :func:`jaxfuse.fuse_proposals`
            (``student_t``: ``df``, ...; ``soft_nms``: ``sigma``, ``decay``,
            ``min_score``).

    ``detect`` itself is not traceable (it sizes its programs from the data,
    on the host): call it outside ``jax.jit``. ``"laplace"`` and
    ``"student_t"`` fit padded groups sized by the largest group count and
    size in the batch (see :func:`jaxfuse.fuse_proposals`), which costs far more
    than the closed forms on noisy CAS (tens of seconds for 200 videos on 2
    CPU cores with Student-t); smaller batches pad less.

    Returns:
        A :class:`VideoDetections` of the array kind of ``cas`` (numpy in,
        numpy out). ``to_predictions()`` gives the flat arrays of
        :func:`jaxfuse.evaluate_detections`.

    Raises:
        TypeError: non-float ``cas`` or ``video_scores``, non-integer
            ``length``, unknown options.
        ValueError: wrong shapes, non-finite scores, CAS values or thresholds,
            ``length`` outside ``[0, L]``, a bad method, temperature, overlap
            threshold or slot count. The message names the argument. All but
            the non-finite CAS check run before any computation.

    Example:
        >>> import numpy as np
        >>> cas = np.zeros((1, 32, 2), np.float32)
        >>> cas[0, 4:12, 1] = 0.05                   # one action of class 1
        >>> found = detect(cas, np.array([[0.1, 0.9]], np.float32))
        >>> found.count.tolist(), found.segments[0, 1, 0].tolist()
        ([[0, 1]], [4.0, 12.0])
    """
    ensure_compilation_cache()  # before this call's first compilation
    kind = array_kind(cas)
    request = _checked_request(
        cas, video_scores, thresholds, class_threshold, length, preset, options, convention, min_length,
        max_detections, max_proposals, method=method, temperature=temperature, overlap_threshold=overlap_threshold,
        overlap=overlap, discrete=discrete, weights=weights,
    )
    (cas, host_cas, dtype, scores, levels, class_threshold, video_length, overlap_threshold, overlap, discrete,
     method, temperature, weight_column, convention, min_length, max_detections, max_proposals) = request
    num_videos, num_snippets, num_classes = cas.shape

    # Items: the selected (video, class) pairs, video-major, padded to a bucketed count.
    video_index, class_index = np.nonzero(scores >= class_threshold)
    num_items = video_index.size
    item_slots = two_per_octave(num_items, _MIN_BUCKET)
    pad = lambda x: np.pad(x.astype(np.int32), (0, item_slots - num_items))  # noqa: E731
    video_index, class_index = pad(video_index), pad(class_index)
    item_valid = np.arange(item_slots) < num_items
    padded_length = bucket_size(num_snippets, _MIN_BUCKET)
    compute_dtype = np.float32 if dtype in (jnp.float16, jnp.bfloat16) else np.dtype(dtype)

    levels_in_dtype = _comparable_levels(levels, compute_dtype)
    if host_cas is None:
        gathered = (cas, video_length, video_index, class_index)
    else:
        items_cas = to_jax(np.ascontiguousarray(host_cas[video_index, :, class_index])[:, :, None])
        zeros = np.zeros(item_slots, np.int32)
        gathered = (items_cas, video_length[video_index], np.arange(item_slots, dtype=np.int32), zeros)
    sequences, item_length, largest_count, first_bad = _item_sequences(
        *gathered, item_valid, levels_in_dtype, padded_length=padded_length, min_length=min_length,
    )
    largest_count, first_bad = (int(x) for x in jax.device_get((largest_count, first_bad)))
    if first_bad >= 0:
        item, snippet = divmod(first_bad, padded_length)
        index = (int(video_index[item]), snippet, int(class_index[item]))
        raise ValueError(f"`cas` must be finite inside each video; first non-finite value at index {index}")
    sound_bound = len(levels) * max_runs_per_threshold(padded_length, min_length)
    proposal_slots = min(two_per_octave(largest_count, _MIN_BUCKET), sound_bound) if max_proposals is None else max_proposals

    def item_proposals(slots):
        found, first_slot, most_found, most_distinct = _item_proposals(
            sequences, item_length, levels_in_dtype, convention=convention, min_length=min_length, max_proposals=slots
        )
        return found, first_slot, *(int(x) for x in jax.device_get((most_found, most_distinct)))

    found, first_slot, most_found, most_distinct = item_proposals(proposal_slots)
    if max_proposals is None and most_found > proposal_slots:
        # The count above and proposals_from_cas disagree: never seen, but never drop proposals for it.
        proposal_slots = sound_bound
        found, first_slot, most_found, most_distinct = item_proposals(proposal_slots)
    fused = _fuse_items(request, found, first_slot, min(two_per_octave(most_distinct, _MIN_BUCKET), proposal_slots),
                        options)
    # One host read of [items] counts: no extra compiled program.
    most_fused = int(np.max(np.asarray(fused.count), initial=0))
    detection_slots = two_per_octave(most_fused, _MIN_BUCKET) if max_detections is None else max_detections
    result = _dense_detections(
        fused.segments, fused.scores, fused.spread, fused.count, found.num_found, found.count,
        video_index, class_index, item_valid,
        num_videos=num_videos, num_classes=num_classes, size=detection_slots,
    )
    return from_jax(result, kind)


def detect_videos(
    cas_list: Sequence[Any],
    video_scores,
    *,
    max_videos: int | None = None,
    **detect_options,
) -> Detections:
    """:func:`detect` over a dataset of videos of any lengths, in power-of-two buckets.

    Videos are grouped by their length rounded up to a power of two (>= 16),
    and each group is padded to a power-of-two number of videos, so a dataset
    compiles one set of programs per bucket (e.g. 5 buckets for THUMOS14's 60
    to 5000 snippets), not one per video.

    Args:
        cas_list: per video, a ``[L_i, C]`` floating CAS (numpy, JAX or torch).
        video_scores: ``[V, C]`` video-level class scores.
        max_videos: at most this many videos per call (bounds memory; each
            distinct batch size is one more compile). Rounded up to a power of two.
        **detect_options: keyword arguments of :func:`detect` (not ``length``).

    Returns:
        A :class:`jaxfuse.Detections` of numpy arrays whose ``video`` is the
        index in ``cas_list``, ordered by video, class, then slot.

    Raises:
        ValueError: ``video_scores`` does not have one row per video, videos
            disagree on the number of classes, or as :func:`detect`.

    Example:
        >>> import jaxfuse
        >>> videos = jaxfuse.synthetic_videos(num_videos=2, seed=0)
        >>> cas_list = [videos.cas[i, :n] for i, n in enumerate(videos.length)]  # two lengths
        >>> predictions = jaxfuse.detect_videos(cas_list, videos.video_scores, preset="published")
        >>> sorted(set(predictions.video.tolist()))
        [0, 1]
        >>> result = jaxfuse.evaluate_detections(predictions, videos.ground_truth)
        >>> bool(0 < result.average <= 1)
        True
    """
    if "length" in detect_options:
        raise TypeError("`length` is taken from each video's CAS; do not pass it to detect_videos")
    sequences = [to_host(c) for c in cas_list]
    for i, sequence in enumerate(sequences):
        if sequence.ndim != 2:
            raise ValueError(f"`cas_list[{i}]` must have shape [snippets, classes], got {sequence.shape}")
    num_classes = {s.shape[1] for s in sequences}
    if len(num_classes) > 1:
        raise ValueError(f"every video must have the same number of classes, got {sorted(num_classes)}")
    scores = to_host(video_scores)
    if scores.ndim != 2 or scores.shape[0] != len(sequences) or (sequences and scores.shape[1] not in num_classes):
        raise ValueError(f"`video_scores` must have shape [{len(sequences)}, classes], got {scores.shape}")
    if max_videos is not None:
        max_videos = bucket_size(positive_int(max_videos, "max_videos"), 1)

    lengths = np.array([s.shape[0] for s in sequences], dtype=np.int64)
    padded = np.array([bucket_size(n, _MIN_BUCKET) for n in lengths], dtype=np.int64)
    parts = []
    for padded_length in np.unique(padded):
        members = np.flatnonzero(padded == padded_length)
        step = len(members) if max_videos is None else max_videos
        for first in range(0, len(members), step):
            chunk = members[first : first + step]
            rows = bucket_size(len(chunk), 1)
            dtype = np.result_type(*(sequences[i].dtype for i in chunk))
            batch = np.zeros((rows, int(padded_length), scores.shape[1]), dtype)
            for row, video in enumerate(chunk):
                batch[row, : lengths[video]] = sequences[video]
            # Padding rows score the lowest finite value: never selected, so they cost no work.
            batch_scores = np.full((rows, scores.shape[1]), np.finfo(scores.dtype).min, scores.dtype)
            batch_scores[: len(chunk)] = scores[chunk]
            batch_length = np.zeros(rows, np.int32)
            batch_length[: len(chunk)] = lengths[chunk]
            found = detect(batch, batch_scores, length=batch_length, **detect_options)
            ids = np.full(rows, -1, np.int64)
            ids[: len(chunk)] = chunk
            parts.append(found.to_predictions(ids))
    if not parts:
        empty = np.zeros(0, np.int64)
        return Detections(empty, empty, np.zeros(0), np.zeros((0, 2)))
    merged = Detections(*(np.concatenate(field) for field in zip(*parts)))
    order = np.lexsort((np.arange(merged.video.size), merged.video))  # by video, stable
    return Detections(*(field[order] for field in merged))
