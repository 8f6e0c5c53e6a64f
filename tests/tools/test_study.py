"""The study command and the synthetic videos behind it."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from jaxfuse._evaluation.evaluate import THUMOS14_THRESHOLDS
from jaxfuse.cli.main import main
from jaxfuse.tools import study
from jaxfuse.tools.study import BASELINES, SENSITIVITY, SENSITIVITY_METHODS, TEMPLATES, run_study
from jaxfuse.tools.videos import VideoParameters, synthetic_videos

# Small videos, few classes: every run shares these shapes (and so its compiled programs).
TINY = dict(num_videos=10, num_classes=3, min_length=130, max_length=250, seed=3)
TINY_ARGUMENTS = ["--videos", "10", "--classes", "3", "--min-length", "130", "--max-length", "250", "--seed", "3"]


# ---------------------------------------------------------------- synthetic videos


def test_videos_are_seeded_and_match_their_parameters():
    a = synthetic_videos(**TINY)
    b = synthetic_videos(VideoParameters(**TINY))
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert a.cas.shape == (10, a.length.max(), 3) and a.cas.dtype == np.float32
    assert ((a.length >= 130) & (a.length <= 250)).all()
    assert ((a.cas >= 0) & (a.cas <= 1)).all()
    padding = np.arange(a.cas.shape[1])[None, :] >= a.length[:, None]
    assert not a.cas[padding].any()
    truth = a.ground_truth
    per_video = np.bincount(truth.video, minlength=10)
    assert ((per_video >= 1) & (per_video <= 5)).all()
    durations = truth.segments[:, 1] - truth.segments[:, 0]
    assert ((durations >= 8) & (durations <= 80)).all()
    assert (truth.segments[:, 1] <= a.length[truth.video]).all()
    # Every action's class is above the class threshold in its video.
    assert (a.video_scores[truth.video, truth.label] >= 0.5).all()
    c = synthetic_videos(**(TINY | {"seed": 4}))
    assert not np.array_equal(a.length, c.length)


def test_actions_never_overlap_and_clean_activation_is_their_indicator():
    videos = synthetic_videos(**TINY, noise=0.0, ramp=0, spurious_rate=0.0, confusion=0.0, background_logit=-30.0)
    truth = videos.ground_truth
    for video in range(10):
        segments = np.sort(truth.segments[truth.video == video], axis=0)
        assert (segments[1:, 0] - segments[:-1, 1] >= 12).all()
    inside = np.zeros(videos.cas.shape, bool)
    for video, label, (start, end) in zip(truth.video, truth.label, truth.segments.astype(int)):
        inside[video, start:end, label] = True
    assert (videos.cas[inside] > 0.25).all() and (videos.cas[~inside] < 1e-12).all()
    np.testing.assert_array_equal(videos.cas, videos.clean)


def test_ramps_blur_boundaries_symmetrically():
    videos = synthetic_videos(**TINY, noise=0.0, ramp=9, spurious_rate=0.0, confusion=0.0)
    truth = videos.ground_truth
    video, label, (start, end) = truth.video[0], truth.label[0], truth.segments[0].astype(int)
    sequence = videos.clean[video, :, label]
    # Linear ramps of 9 snippets centred on each boundary: rising from start - 4 to start + 4.
    assert sequence[start - 5] == pytest.approx(sequence[start - 10])
    assert sequence[start - 4] > sequence[start - 5] and sequence[start + 4] == pytest.approx(sequence[(start + end) // 2])


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="min_length"):
        synthetic_videos(max_actions=5, min_action_length=40, min_length=100, max_length=100)
    with pytest.raises(ValueError, match="min_actions"):
        synthetic_videos(min_actions=0)


# ---------------------------------------------------------------- the study


def test_clean_rectangular_cas_gives_perfect_map_for_every_method():
    """No noise, no blur, no spurious peaks: every level cuts exactly the actions.

    All 20 proposals of an action are the action itself, so every method returns it
    exactly (Soft-NMS keeps decayed duplicates, but at most 0.135 x 0.88 < 0.27, below
    every true action's score), and every tIoU threshold is met.
    """
    videos = synthetic_videos(**TINY, noise=0.0, ramp=0, spurious_rate=0.0, confusion=0.0, background_logit=-30.0)
    rows = run_study(videos, BASELINES + TEMPLATES, [0.2], log=None)
    assert [row.method for row in rows] == list(BASELINES + TEMPLATES)
    for row in rows:
        assert row.mean_average_precision.tolist() == [1.0] * len(THUMOS14_THRESHOLDS), row.method


def test_sensitivity_settings_are_easier_and_harder():
    defaults = VideoParameters()
    easier, harder = (defaults._replace(**SENSITIVITY[name]) for name in ("easier", "harder"))
    assert set(SENSITIVITY) == {"easier", "harder"}
    assert easier.noise < defaults.noise < harder.noise and easier.ramp < harder.ramp
    assert easier.spurious_rate < harder.spurious_rate
    assert set(SENSITIVITY_METHODS) <= set(BASELINES + TEMPLATES)


def test_study_command_writes_a_sane_table(tmp_path, capsys, monkeypatch):
    # The sensitivity reruns are wired as usual but with settings equal to the main one (the real
    # settings change the CAS, hence the padded shapes, and would compile every method twice more;
    # they are checked above): each rerun must then reproduce the main rows exactly.
    monkeypatch.setattr(study, "SENSITIVITY", {"easier": {"seed": TINY["seed"]}, "harder": {"noise": VideoParameters().noise}})
    arguments = ["study", *TINY_ARGUMENTS, "--methods", "nms", "gaussian", "exponential", "uniform",
                 "--temperatures", "0.05", "0.2", "--output-dir", str(tmp_path)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "Best average mAP" in printed

    report = (tmp_path / "study.md").read_text()
    assert (tmp_path / "study.png").stat().st_size > 1000
    assert "![study](study.png)" in report and "--videos 10" in report
    # The sensitivity reruns: nms and gaussian (both temperatures) in three settings.
    sensitivity = [line for line in report.splitlines() if re.match(r"\| (main|easier|harder) \|", line)]
    assert len(sensitivity) == 3 * (1 + 2)
    settings = {line.split("|")[1].strip(): [] for line in sensitivity}
    for line in sensitivity:
        settings[line.split("|")[1].strip()].append(line.split("|")[2:])
    assert settings["easier"] == settings["main"] == settings["harder"]
    rows = [line for line in report.splitlines() if re.match(r"\| (nms|gaussian|exponential|uniform) \|", line)]
    assert len(rows) == 1 + 3 * 2
    table = {}
    for line in rows:
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        values = np.array([float(cell) for cell in cells[2:]])
        assert values.shape == (len(THUMOS14_THRESHOLDS) + 1,)
        assert ((values >= 0) & (values <= 100)).all()
        assert values[-1] == pytest.approx(values[:-1].mean(), abs=0.011)  # avg column (rounded cells)
        table[cells[0], cells[1]] = values
    # Erratum 3: exponential and Gaussian share location and score, hence mAP.
    for temperature in ("0.05", "0.2"):
        np.testing.assert_array_equal(table["exponential", temperature], table["gaussian", temperature])
    # Noisy but informative CAS: far better than chance at loose tIoU.
    assert table["nms", "-"][0] > 50


def test_study_defaults_are_the_documented_ones():
    parser = argparse.ArgumentParser()
    from jaxfuse.tools.study import configure

    configure(parser)
    args = parser.parse_args([])
    assert args.temperatures == [0.05, 0.2, 1.0]
    assert args.methods == ["nms", "soft_nms", "gaussian", "uniform", "exponential", "laplace", "student_t"]
    assert args.output_dir is None  # the per-user report directory (tests/test_report_files.py)
