"""``jaxfuse study`` and ``jaxfuse bench`` write reports to a per-user directory by default, never into the current
directory, and a missing optional dependency stops them before any work with one line saying what to install."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from jaxfuse.bench import command as bench_command
from jaxfuse.cli.main import main
from jaxfuse.tools import study
from jaxfuse.tools.report_files import default_report_directory, report_directory


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """A fresh ``XDG_DATA_HOME``, and a fresh current directory shaped like a clone (``benchmarks/results``)."""
    home = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    clone = tmp_path / "clone"
    (clone / "benchmarks" / "results").mkdir(parents=True)
    monkeypatch.chdir(clone)
    return home


@pytest.fixture
def study_rows(monkeypatch):
    """The study's measurements replaced by one fixed row: where the report goes is under test, not the study."""
    row = study.StudyRow("nms", None, np.full(7, 0.5), 0.5, 10, 0.1)
    monkeypatch.setattr(study, "run_study", lambda *args, **kwargs: [row])


def _no_work(*args, **kwargs):
    raise AssertionError("the command started working before checking what it needs")


def test_default_report_directory_follows_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_report_directory() == tmp_path / "jaxfuse" / "reports"
    # A relative XDG_DATA_HOME is ignored (XDG base directory spec): it would follow the current directory.
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_report_directory() == tmp_path / "home" / ".local" / "share" / "jaxfuse" / "reports"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_report_directory() == tmp_path / "home" / ".local" / "share" / "jaxfuse" / "reports"
    assert report_directory(tmp_path / "chosen") == tmp_path / "chosen"


def test_study_writes_to_the_user_directory_not_the_current_one(data_home, study_rows, tmp_path, capsys):
    assert main(["study", "--videos", "2", "--no-sensitivity", "--methods", "nms", "--no-plot"]) == 0
    written = data_home / "jaxfuse" / "reports" / "study.md"
    assert "| nms |" in written.read_text()
    assert str(written) in capsys.readouterr().out
    assert not list((tmp_path / "clone").rglob("*.*")), "the study wrote into the current directory"


def test_study_output_dir_is_kept(data_home, study_rows, tmp_path):
    chosen = tmp_path / "chosen"
    assert main(["study", "--videos", "2", "--no-sensitivity", "--methods", "nms", "--no-plot",
                 "--output-dir", str(chosen)]) == 0
    assert (chosen / "study.md").is_file() and not data_home.exists()


def test_study_without_matplotlib_says_what_to_install_before_any_work(data_home, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setattr(study, "run_study", _no_work)
    monkeypatch.setattr(study, "synthetic_videos", _no_work)
    assert main(["study"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert 'pip install "jaxfuse[plot]"' in error and "--no-plot" in error and "matplotlib" in error
    assert not data_home.exists()


def test_bench_writes_to_the_user_directory_not_the_current_one(data_home, tmp_path):
    assert main(["bench", "--smoke", "--sections", "floors", "--no-plots", "--machine", "m"]) == 0
    assert (data_home / "jaxfuse" / "reports" / "m.md").is_file()
    assert (data_home / "jaxfuse" / "reports" / "m.json").is_file()
    assert not list((tmp_path / "clone").rglob("*.*")), "the bench wrote into the current directory"


@pytest.mark.parametrize("hidden, sections, flags, expected", [
    ("matplotlib", "floors", [], ["matplotlib", "--no-plots"]),
    ("scipy", "student_t", ["--no-plots"], ["scipy", "--sections without student_t"]),
])
def test_bench_without_an_extra_says_what_to_install_before_any_work(data_home, monkeypatch, capsys, hidden,
                                                                     sections, flags, expected):
    monkeypatch.setitem(sys.modules, hidden, None)
    monkeypatch.setattr(bench_command, "run_benchmarks", _no_work)
    assert main(["bench", "--smoke", "--sections", sections, *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and 'pip install "jaxfuse[bench]"' in error
    assert all(text in error for text in expected), error
    assert not data_home.exists()
