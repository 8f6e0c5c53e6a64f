"""``jaxfuse plot``: one video's timeline per class, checked on the figure's artists and the PNG's header."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from jaxfuse._runtime import compilation_cache
from jaxfuse.cli import main
from jaxfuse.cli import plot as plot_command
from jaxfuse.tools import timeline

LABELS = ["Jump", "Run", 7]  # an integer label too: JSON labels may be numbers


def _random_entries(rng, count: int, *, scored: bool = True) -> list[dict]:
    entries = []
    for _ in range(count):
        start = float(rng.uniform(0, 100))
        entry = {"label": LABELS[rng.integers(len(LABELS))], "segment": [start, start + float(rng.uniform(0.5, 20))]}
        if scored:
            entry["score"] = float(rng.uniform())
        entries.append(entry)
    return entries


@pytest.fixture
def files(tmp_path):
    """Random prediction, fused and ground-truth files of three videos, and the entries of video "b"."""
    rng = np.random.default_rng()
    predictions = {video: _random_entries(rng, int(rng.integers(5, 30))) for video in "abc"}
    fused = {video: _random_entries(rng, int(rng.integers(1, 6))) for video in "abc"}
    truth = {video: _random_entries(rng, int(rng.integers(1, 5)), scored=False) for video in "ab"}
    paths = {name: tmp_path / f"{name}.json" for name in ("pred", "fused", "gt")}
    paths["pred"].write_text(json.dumps({"results": predictions}))
    paths["fused"].write_text(json.dumps({"results": fused}))
    paths["gt"].write_text(json.dumps({"database": {v: {"subset": "test", "annotations": a} for v, a in truth.items()}}))
    return paths, {"pred": predictions["b"], "fused": fused["b"], "gt": truth["b"]}


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``jaxfuse plot`` saves, kept for inspection."""
    figures = []
    original = plot_command.png_bytes

    def keep(figure):
        figures.append(figure)
        return original(figure)

    monkeypatch.setattr(plot_command, "png_bytes", keep)
    return figures


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _layer_counts(axes) -> dict[str, int]:
    return {collection.get_gid(): len(collection.get_paths()) for collection in axes.collections}


def test_plot_draws_every_segment_of_the_video_once(files, drawn, tmp_path, capsys):
    paths, entries = files
    output = tmp_path / "figure.png"
    status = main.main(["plot", str(paths["pred"]), "--gt", str(paths["gt"]), "--fused", str(paths["fused"]),
                        "--video", "b", "-o", str(output), "--width", "8", "--dpi", "50"])
    assert status == 0, capsys.readouterr().err
    present = [label for label in LABELS if any(e["label"] == label for group in entries.values() for e in group)]
    (figure,) = drawn
    axes = figure.axes
    assert len(axes) == len(present)
    for label in present:
        count = {name: sum(e["label"] == label for e in entries[name]) for name in entries}
        assert _layer_counts(axes[axes_index(axes, label)]) == {
            timeline.TRUTH: count["gt"], plot_command.RAW_TRACK: count["pred"], plot_command.FUSED_TRACK: count["fused"],
        }
    # Every raw stroke sits at its detection's score, from its start to its end.
    strokes = sorted(tuple(np.ravel(s)) for a in axes for c in a.collections
                     if c.get_gid() == plot_command.RAW_TRACK for s in c.get_segments())
    expected = sorted((e["segment"][0], e["score"], e["segment"][1], e["score"]) for e in entries["pred"])
    np.testing.assert_allclose(strokes, expected, rtol=0, atol=0)
    height = timeline.HEADER_INCHES + timeline.PANEL_INCHES * len(present) + timeline.FOOTER_INCHES
    assert _png_size(output) == (8 * 50, round(height * 50))
    assert "first run" not in capsys.readouterr().err


def axes_index(axes, label) -> int:
    """Which panel shows ``label`` (titles start with the label)."""
    return next(i for i, a in enumerate(axes) if a.get_title(loc="left").startswith(f"{label}:"))


def test_classes_with_ground_truth_come_first_then_by_best_score(tmp_path, drawn):
    results = {"v": [{"label": "low", "score": 0.2, "segment": [0, 1]}, {"label": "high", "score": 0.9, "segment": [0, 1]},
                     {"label": "truth", "score": 0.1, "segment": [0, 1]}]}
    (tmp_path / "p.json").write_text(json.dumps({"results": results}))
    (tmp_path / "g.json").write_text(json.dumps({"database": {"v": {"annotations": [{"label": "truth", "segment": [0, 1]}]}}}))
    assert main.main(["plot", str(tmp_path / "p.json"), "--gt", str(tmp_path / "g.json"), "--video", "v",
                      "-o", str(tmp_path / "f.png")]) == 0
    assert [a.get_title(loc="left").split(":")[0] for a in drawn[0].axes] == ["truth", "high", "low"]


def test_labels_and_max_classes_choose_the_panels(files, drawn, tmp_path, capsys):
    paths, entries = files
    base = ["plot", str(paths["pred"]), "--video", "b", "-o", str(tmp_path / "f.png")]
    present = list(dict.fromkeys(e["label"] for e in entries["pred"]))
    wanted = [str(label) for label in reversed(present)]
    assert main.main(base + ["--labels", *wanted]) == 0
    assert [a.get_title(loc="left").split(":")[0] for a in drawn[-1].axes] == wanted
    capsys.readouterr()
    assert main.main(base + ["--max-classes", "1"]) == 0
    assert len(drawn[-1].axes) == 1
    if len(present) > 1:
        assert f"drawing 1 of the {len(present)} classes" in capsys.readouterr().err


def test_a_label_not_in_the_video_is_an_error_naming_it(files, tmp_path, capsys):
    paths, _ = files
    status = main.main(["plot", str(paths["pred"]), "--video", "b", "--labels", "Swim", "-o", str(tmp_path / "f.png")])
    assert status == 2
    assert "label 'Swim' has no detections or annotations in video 'b'" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("where", ["pred", "fused"])
def test_a_video_not_in_the_file_is_an_error_naming_it_and_the_file(files, tmp_path, capsys, where):
    paths, _ = files
    video = "zz" if where == "pred" else "a"
    fused = tmp_path / "fused-other.json"
    fused.write_text(json.dumps({"results": {"b": []}}))
    output = tmp_path / "f.png"
    output.write_bytes(b"old")
    status = main.main(["plot", str(paths["pred"]), "--fused", str(fused), "--video", video, "-o", str(output)])
    assert status == 2
    named = paths["pred"] if where == "pred" else fused
    assert f"video {video!r} is not in {named}" in capsys.readouterr().err
    assert output.read_bytes() == b"old"  # a failed run leaves the output as it was


def test_a_malformed_file_is_reported_with_its_video_and_entry(tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps({"results": {"v": [{"label": "a", "score": "high", "segment": [0, 1]}]}}))
    assert main.main(["plot", str(tmp_path / "p.json"), "--video", "v", "-o", str(tmp_path / "f.png")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("jaxfuse plot: ") and "'v'" in error and "0" in error


def test_missing_matplotlib_is_one_line_naming_the_extra_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    status = main.main(["plot", str(tmp_path / "does-not-exist.json"), "--video", "v", "-o", str(tmp_path / "f.png")])
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ['jaxfuse plot needs matplotlib: pip install "jaxfuse[plot]"']


def test_plot_says_nothing_about_compiling_on_a_fresh_machine(files, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "cache" / "compiled-marker"
    monkeypatch.setattr(compilation_cache, "_marker", lambda directory: marker)
    monkeypatch.setattr(compilation_cache, "compilation_cache_status",
                        lambda: compilation_cache.CompilationCacheStatus(str(tmp_path / "cache"), "jaxfuse"))
    paths, _ = files
    assert main.main(["plot", str(paths["pred"]), "--video", "a", "-o", str(tmp_path / "f.png")]) == 0
    assert "first run" not in capsys.readouterr().err
    assert not marker.exists()  # a later `jaxfuse fuse` still announces its first compilation


def test_draw_panels_rejects_nothing_to_draw():
    with pytest.raises(ValueError, match="`panels` is empty"):
        timeline.draw_panels([])
