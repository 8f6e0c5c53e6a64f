"""Draw the documentation's figures into docs/images/ (committed; rerun after changing what they show).

    python docs/scripts/make_figures.py        # from the repository root; needs pip install -e ".[plot]"

* ``fusion-vs-nms.png``: one class of one video of ``jaxfuse study``'s synthetic
  data (seed 0) under the study's settings: the CAS proposals, what NMS and
  Soft-NMS keep of them, and what Gaussian fusion makes of them.
* ``plot-example.png``: ``jaxfuse plot`` itself, on detection files of the same
  video written here (the proposals as raw detections, the fusion as fused ones).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # draw with this checkout's jaxfuse

import jaxfuse  # noqa: E402
from jaxfuse.cli.main import main as jaxfuse_main  # noqa: E402
from jaxfuse.tools.study import SOFT_NMS_OPTIONS  # noqa: E402
from jaxfuse.tools.timeline import Panel, Track, draw_panels, png_bytes, require_matplotlib  # noqa: E402

IMAGES = ROOT / "docs" / "images"
VIDEO, CLASS = 4, 0  # of the study's 200 videos: five actions of class 0 (and others of class 2)
TEMPERATURE = 0.2
CLASS_NAMES = ["ClassA", "ClassB", "ClassC", "ClassD", "ClassE"]


def one_video():
    """The study's synthetic videos (defaults, seed 0), cut to video ``VIDEO``."""
    videos = jaxfuse.synthetic_videos()
    length = int(videos.length[VIDEO])
    cas = videos.cas[VIDEO : VIDEO + 1, :length]
    truth = videos.ground_truth
    in_video = truth.video == VIDEO
    return cas, videos.video_scores[VIDEO : VIDEO + 1], truth.segments[in_video], truth.label[in_video]


def detections(cas, video_scores, method: str):
    """``jaxfuse.detect`` as ``jaxfuse study`` runs it: segments ``[C][N, 2]`` and scores ``[C][N]`` per class."""
    options = SOFT_NMS_OPTIONS if method == "soft_nms" else {}
    found = jaxfuse.detect(cas, video_scores, preset="published", method=method, temperature=TEMPERATURE, **options)
    valid = np.asarray(found.valid[0])
    return ([np.asarray(found.segments[0, c])[valid[c]] for c in range(cas.shape[-1])],
            [np.asarray(found.scores[0, c])[valid[c]] for c in range(cas.shape[-1])])


def proposals(cas):
    """Every proposal of the CAS at the published 20 levels, per class: segments and contrast (the ordering score)."""
    found = jaxfuse.proposals_from_cas(cas[0], jaxfuse.PUBLISHED_THRESHOLDS, classes_last=True)
    valid = np.asarray(found.valid)
    return ([np.asarray(found.segments[c])[valid[c]] for c in range(cas.shape[-1])],
            [np.asarray(found.contrast[c])[valid[c]] for c in range(cas.shape[-1])])


def comparison_figure(cas, video_scores, truth_segments, truth_labels) -> bytes:
    raw_segments, raw_scores = proposals(cas)
    truth = truth_segments[truth_labels == CLASS]
    raw = Track("proposals", raw_segments[CLASS], raw_scores[CLASS], raw=True)
    panels = [Panel(f"{len(raw.scores)} proposals of the CAS at 20 levels (score: inner - outer contrast)", truth, (raw,))]
    for method, name, what in [
        ("nms", "NMS", "keeps each group's best proposal"),
        ("soft_nms", "Soft-NMS", "keeps every proposal, scores decayed by overlap"),
        ("gaussian", "Gaussian fusion", f"fuses each group under softmax(inner / {TEMPERATURE})"),
    ]:
        segments, scores = detections(cas, video_scores, method)
        kept = Track(name, segments[CLASS], scores[CLASS])
        panels.append(Panel(f"{name}: {what} ({len(kept.scores)} detections)", truth, (raw, kept)))
    figure = draw_panels(panels, title=f"Video {VIDEO} of jaxfuse study's synthetic data, class {CLASS}",
                         time_label="snippets", width=10, dpi=90)
    data = png_bytes(figure)
    require_matplotlib("make_figures").close(figure)
    return data


def _results(segments, scores) -> dict:
    entries = [{"label": CLASS_NAMES[c], "score": float(q), "segment": [float(s), float(e)]}
               for c in range(len(segments)) for (s, e), q in zip(segments[c].tolist(), scores[c].tolist())]
    return {"results": {f"video_test_{VIDEO:07d}": entries}}


def plot_command_figure(cas, video_scores, truth_segments, truth_labels, directory: Path) -> None:
    """``jaxfuse plot`` on files of this video: the proposals of every selected class, fused by Gaussian fusion."""
    selected = np.asarray(video_scores[0]) >= jaxfuse.PUBLISHED_CLASS_THRESHOLD
    raw_segments, raw_scores = proposals(cas)
    fused_segments, fused_scores = detections(cas, video_scores, "gaussian")
    keep = lambda arrays: [a if selected[c] else a[:0] for c, a in enumerate(arrays)]  # noqa: E731
    files = {
        "pred.json": _results(keep(raw_segments), keep(raw_scores)),
        "fused.json": _results(keep(fused_segments), keep(fused_scores)),
        "gt.json": {"database": {f"video_test_{VIDEO:07d}": {"subset": "test", "annotations": [
            {"label": CLASS_NAMES[c], "segment": [float(s), float(e)]}
            for (s, e), c in zip(truth_segments.tolist(), truth_labels.tolist())]}}},
    }
    for name, document in files.items():
        (directory / name).write_text(json.dumps(document))
    status = jaxfuse_main(["plot", str(directory / "pred.json"), "--gt", str(directory / "gt.json"),
                           "--fused", str(directory / "fused.json"), "--video", f"video_test_{VIDEO:07d}",
                           "-o", str(IMAGES / "plot-example.png"), "--dpi", "90"])
    if status != 0:
        raise SystemExit(status)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    cas, video_scores, truth_segments, truth_labels = one_video()
    (IMAGES / "fusion-vs-nms.png").write_bytes(comparison_figure(cas, video_scores, truth_segments, truth_labels))
    with tempfile.TemporaryDirectory() as directory:
        plot_command_figure(cas, video_scores, truth_segments, truth_labels, Path(directory))
    for image in sorted(IMAGES.glob("*.png")):
        print(f"{image.relative_to(ROOT)}: {image.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
