"""Named sets of grouping and fusion settings: the library default and the paper's evaluation rule."""

from __future__ import annotations

from typing import NamedTuple


class FusionSettings(NamedTuple):
    """The grouping and fusion settings a preset fixes.

    Attributes:
        overlap: ``"candidate"`` (intersection over the candidate's length, the
            published measure) or ``"iou"``.
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

    overlap: str
    discrete: bool
    overlap_threshold: float
    temperature: float
    method: str
    weights: str


DEFAULT = FusionSettings(
    overlap="candidate", discrete=False, overlap_threshold=0.25, temperature=0.2, method="gaussian", weights="scores"
)
"""The library's defaults: the published rule, but with continuous lengths, safe for times in seconds."""

PUBLISHED = FusionSettings(
    overlap="candidate", discrete=True, overlap_threshold=0.25, temperature=0.2, method="gaussian", weights="inner"
)
"""The published evaluation rule of Zhou et al. (CVPR 2023): candidate overlap > 0.25 with the ``+1``
frame convention, Gaussian fusion at T = 0.2 with the inner scores as weights."""

PRESETS: dict[str, FusionSettings] = {"default": DEFAULT, "published": PUBLISHED}
"""Presets by name, as ``preset=`` arguments and the CLI's ``--preset`` take them."""
