"""One name for the Soft-NMS floor: ``min_score``, as in ``jaxfuse fuse --min-score`` and ActionFormer;
``score_floor`` keeps working for one release with a DeprecationWarning (issue 20)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jaxfuse


def soft_nms_case():
    rng = np.random.default_rng(41)
    starts = rng.uniform(0, 100, size=(3, 20))
    segments = np.stack([starts, starts + rng.uniform(1, 30, size=(3, 20))], axis=-1).astype(np.float32)
    return segments, rng.uniform(size=(3, 20)).astype(np.float32)


def test_soft_nms_floor_is_min_score_and_score_floor_still_works_with_a_warning():
    segments, scores = soft_nms_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        kept = jaxfuse.fuse_proposals(segments, scores, method="soft_nms", min_score=0.4)
    default = jaxfuse.fuse_proposals(segments, scores, method="soft_nms")
    assert (kept.count < default.count).any() and (kept.scores[kept.valid] >= 0.4).all()
    with pytest.warns(DeprecationWarning, match="`score_floor` is deprecated, use `min_score`") as record:
        old = jaxfuse.fuse_proposals(segments, scores, method="soft_nms", score_floor=0.4)
    assert record[0].filename == __file__  # it points at the caller's line, so Python shows it
    for new, previous in zip(kept, old):
        np.testing.assert_array_equal(new, previous)
    with pytest.raises(TypeError, match="not both"):
        jaxfuse.fuse_proposals(segments, scores, method="soft_nms", min_score=0.4, score_floor=0.4)
