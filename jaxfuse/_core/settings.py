"""Named sets of grouping and fusion settings: the library default and the paper's evaluation rule."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FusionSettings(NamedTuple):
    """The grouping and fusion settings a preset fixes.

    Attributes:
        overlap: ``"candidate"`` (intersection over the candidate's length, the
            published grouping measure), ``"iou"``, or None: by method (see
            :func:`overlap_for_method`), IoU for ``"nms"`` and ``"soft_nms"``
            as every (Soft-)NMS measures it, ``"candidate"`` for the fusion
            templates' grouping.
        discrete: the ``+1`` frame convention (``length = end - start + 1``) if
            True; continuous lengths (right for times in seconds) if False.
        overlap_threshold: a proposal joins a leader's group when its overlap is
            strictly greater than this.
        temperature: the softmax temperature T of the member weights.
        method: the template (``"gaussian"``, ...), ``"nms"`` or ``"soft_nms"``.
        weights: which per-proposal column weights the softmax: ``"scores"`` (the
            ordering scores themselves) or ``"inner"`` (the inner CAS score, as
            the published code does; used where an inner score exists, e.g.
            :func:`jaxfuse.detect` and the file's weight field).
    """

    overlap: str | None
    discrete: bool
    overlap_threshold: float
    temperature: float
    method: str
    weights: str


NMS_METHODS = ("nms", "soft_nms")
"""The methods that suppress instead of fusing: IoU is their overlap unless a preset or an argument says otherwise."""

DEFAULT = FusionSettings(
    overlap=None, discrete=False, overlap_threshold=0.25, temperature=0.2, method="gaussian", weights="scores"
)
"""The library's defaults: the published rule, but with continuous lengths, safe for times in seconds, and
IoU (not the published candidate overlap) for NMS and Soft-NMS."""

PUBLISHED = FusionSettings(
    overlap="candidate", discrete=True, overlap_threshold=0.25, temperature=0.2, method="gaussian", weights="inner"
)
"""The published evaluation rule of Zhou et al. (CVPR 2023): candidate overlap > 0.25 with the ``+1``
frame convention, Gaussian fusion at T = 0.2 with the inner scores as weights."""

PRESETS: dict[str, FusionSettings] = {"default": DEFAULT, "published": PUBLISHED}
"""Presets by name, as ``preset=`` arguments and the CLI's ``--preset`` take them."""


def overlap_for_method(overlap: str | None, method) -> str | None:
    """The overlap measure: ``overlap`` when given, else IoU for NMS and Soft-NMS and candidate overlap otherwise.

    Soft-NMS (Bodla et al.) and NMS decay or suppress by IoU everywhere they are
    used; the published candidate overlap (intersection over the candidate's
    length) is the paper's grouping rule for fusion. A preset with ``overlap``
    None (:data:`DEFAULT`) takes this rule; :data:`PUBLISHED` names
    ``"candidate"``, so the published rule keeps its measure for every method.

    Example:
        >>> [overlap_for_method(None, "soft_nms"), overlap_for_method(None, "gaussian")]
        ['iou', 'candidate']
        >>> overlap_for_method("candidate", "nms")
        'candidate'
    """
    if overlap is not None:
        return overlap
    return "iou" if method in NMS_METHODS else "candidate"


def resolve_settings(preset, **explicit) -> FusionSettings:
    """The settings of ``preset`` (a name, a :class:`FusionSettings` or None for the default), overridden
    by every explicit value that is not None, with the overlap measure resolved.

    The rule of every function taking ``preset=``: its setting arguments default
    to None, which means "the preset's value"; a value given beside the preset
    wins. ``fuse_proposals(..., preset="published", temperature=0.02)`` is the
    published rule at the training temperature. A preset whose ``overlap`` is
    None (the default preset) measures overlap by method
    (:func:`overlap_for_method`): IoU for ``"nms"`` and ``"soft_nms"``,
    candidate overlap for the fusion templates; the returned settings always
    name the measure.

    Raises:
        ValueError: an unknown preset name.
        TypeError: a preset that is neither a name nor a :class:`FusionSettings`.
    """
    if preset is None:
        settings = DEFAULT
    elif isinstance(preset, FusionSettings):
        settings = preset
    elif isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown `preset` {preset!r}; expected one of {sorted(PRESETS)}")
        settings = PRESETS[preset]
    else:
        raise TypeError(f"`preset` must be a name ({sorted(PRESETS)}) or a FusionSettings, got {preset!r}")
    settings = settings._replace(**{name: value for name, value in explicit.items() if value is not None})
    return settings._replace(overlap=overlap_for_method(settings.overlap, settings.method))


# The published code's constants (GauFuse_WSTAL), one home for every module that follows it.

PUBLISHED_THRESHOLDS: tuple[float, ...] = tuple(float(level) for level in np.arange(0.001, 0.04, 0.002))
"""The published CAS levels ``np.arange(0.001, 0.04, 0.002)``: 0.001, 0.003, ..., 0.039 (20 levels)."""

PUBLISHED_CLASS_THRESHOLD = 0.16
"""The published video-level class threshold (``--class-threshold`` in GauFuse_WSTAL)."""

MARGIN_SCALE, MARGIN_POWER = 0.0785, 0.9
"""The published outer margin of a segment of ``n`` snippets, ``0.0785 * n ** 0.9``: for proposals' outer
scores and for the pseudo-label LP's rows alike."""
