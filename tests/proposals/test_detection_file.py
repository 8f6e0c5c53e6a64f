"""``jaxfuse fuse``: ActivityNet-format detection files in, fused detections out.

Every fused detection is checked against a plain numpy copy of the published
rule, run item by item. Compiles dominate the run time of these tests, so the
batch height is pinned (one program per padded item size) and the files are
built so that a handful of shapes cover every test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxfuse._proposals.detection_file as detection_file
import jaxfuse._proposals.item_batches as item_batches
import jaxfuse.formats.output as output_module
from jaxfuse._proposals.detection_file import (
    DetectionFileError,
    batch_rows,
    detection_table,
    fuse_detection_file,
    fuse_detections_json,
    merged_buckets,
    pack_items,
)
from jaxfuse._proposals.proposal_lists import pack_proposals
from jaxfuse.cli import main

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def pinned_batch_height(monkeypatch):
    """Batches of 16 items whatever the file size: every test file reuses the same few programs."""
    monkeypatch.setattr(item_batches, "batch_rows", lambda size, num_items: 16)


# ------------------------------------------------------------------ reference


def reference_item(segments, scores, weights, *, temperature, threshold=0.25, overlap="candidate", discrete=False):
    """The published rule on one (video, label), Gaussian template, in float64: ``[groups, 3]`` (start, end, score)."""
    segments, scores, weights = (np.asarray(x, np.float64) for x in (segments, scores, weights))
    offset = 1.0 if discrete else 0.0
    remaining = np.argsort(-scores, kind="stable")
    starts, ends = segments[:, 0], segments[:, 1]
    fused = []
    while remaining.size:
        leader = remaining[0]
        intersection = np.maximum(
            0, np.minimum(ends[leader], ends[remaining]) - np.maximum(starts[leader], starts[remaining]) + offset
        )
        length = ends[remaining] - starts[remaining] + offset
        if overlap == "iou":
            length = length + (ends[leader] - starts[leader] + offset) - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(length > 0, intersection / np.where(length > 0, length, 1), 0)
        absorbed = ratio > threshold
        absorbed[0] = True
        members = remaining[absorbed]
        remaining = remaining[~absorbed]
        logits = weights[members] / temperature
        g = np.exp(logits - logits.max())
        g /= g.sum()
        fused.append([g @ starts[members], g @ ends[members], g @ scores[members]])
    return np.asarray(fused, np.float64).reshape(-1, 3)


def reference_results(data, *, temperature=0.2, weight_field=None, top_k=None, min_score=None, **options):
    """``{video: [(label, start, end, score), ...]}`` in the output's order: by descending score within
    a video, ties by label (first appearance in the file), then leader order."""
    label_order = {}
    for entries in data["results"].values():
        for entry in entries:
            label_order.setdefault(entry["label"], len(label_order))
    expected = {}
    for video, entries in data["results"].items():
        rows = []
        for label in sorted({entry["label"] for entry in entries}, key=label_order.get):
            members = [entry for entry in entries if entry["label"] == label]
            segments = np.array([entry["segment"] for entry in members], np.float64)
            scores = np.array([entry["score"] for entry in members], np.float64)
            weights = scores if weight_field is None else np.array([entry[weight_field] for entry in members], np.float64)
            for start, end, score in reference_item(segments, scores, weights, temperature=temperature, **options):
                rows.append((label, start, end, score))
        rows.sort(key=lambda row: -row[3])  # stable: ties keep label, then leader order
        if min_score is not None:
            rows = [row for row in rows if row[3] >= min_score]
        expected[video] = rows[:top_k]
    return expected


def assert_matches_reference(output, data, **options):
    expected = reference_results(data, **options)
    assert list(output["results"]) == list(data["results"])  # every video, in file order
    for video, rows in expected.items():
        got = output["results"][video]
        assert [entry["label"] for entry in got] == [row[0] for row in rows], video
        if rows:
            values = np.array([[entry["segment"][0], entry["segment"][1], entry["score"]] for entry in got])
            want = np.array([row[1:] for row in rows])
            # float64 throughout: a few ulps of the largest coordinate.
            np.testing.assert_allclose(values, want, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(want).max()))


# ------------------------------------------------------------------ data


def random_results(seed=0, videos=12, max_detections=14, labels=("Long Jump", "Run", "Ski", 7)):
    """Small ActivityNet-style results: a few labels per video, clustered segments in seconds.

    One video holds 40 detections of one label, so that every item is padded to
    64 (smaller buckets merge into it) and the whole file is one batch shape.
    """
    rng = np.random.default_rng(seed)
    results = {}
    for video in range(videos):
        count = 40 if video == 3 else int(rng.integers(0, max_detections + 1))
        duration = rng.uniform(20, 200)
        centres = rng.uniform(0, duration, 3)
        entries = []
        for _ in range(count):
            centre = centres[rng.integers(3)] + rng.normal(0, 2)
            length = rng.uniform(1, 15)
            start = round(max(0.0, centre - length / 2), 2)
            end = round(max(start, centre + length / 2), 2)
            label = labels[0] if video == 3 else labels[int(rng.integers(len(labels)))]
            entries.append({
                "label": label,
                "score": round(float(rng.uniform(0, 1)), 4),
                "segment": [start, end],
                "inner": round(float(rng.uniform(-1, 1)), 3),
            })
        results[f"v_{video:03d}"] = entries
    return {"version": "VERSION 1.3", "results": results, "external_data": {"used": True, "details": "none"}}


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def cli(*argv):
    return main.main(["fuse", *map(str, argv)])


# ------------------------------------------------------------------ the command


def test_fused_file_matches_the_published_rule_item_by_item(tmp_path):
    data = random_results()
    output = tmp_path / "fused.json"
    assert cli(write(tmp_path / "in.json", data), "-o", output) == 0
    fused = json.loads(output.read_text())
    assert fused["version"] == "VERSION 1.3" and fused["external_data"] == data["external_data"]
    assert list(fused) == list(data)  # top-level key order kept
    assert_matches_reference(fused, data, temperature=0.2)
    # Fusion only merges: never more detections than came in, never fewer than one per item.
    for video, entries in data["results"].items():
        assert len({e["label"] for e in entries}) <= len(fused["results"][video]) <= len(entries)
    assert fused["results"]["v_003"] and all(set(e) == {"label", "score", "segment"} for e in fused["results"]["v_003"])


def test_options_reach_the_kernels(tmp_path):
    data = random_results(seed=1)
    source = write(tmp_path / "in.json", data)
    output = tmp_path / "out.json"
    assert cli(source, "-o", output, "--temperature", "0.05", "--overlap", "iou", "--threshold", "0.1", "--discrete") == 0
    assert_matches_reference(
        json.loads(output.read_text()), data, temperature=0.05, overlap="iou", threshold=0.1, discrete=True
    )
    assert cli(source, "-o", output, "--weight-field", "inner", "--continuous") == 0
    assert_matches_reference(json.loads(output.read_text()), data, temperature=0.2, weight_field="inner")


def test_nms_keeps_each_leader(tmp_path):
    data = {"results": {"v": [
        {"label": "a", "score": 0.5, "segment": [1.0, 9.0]},
        {"label": "a", "score": 0.9, "segment": [0.0, 10.0]},
        {"label": "b", "score": 0.3, "segment": [0.0, 10.0]},
        {"label": "a", "score": 0.2, "segment": [50.0, 60.0]},
    ]}}
    output = tmp_path / "out.json"
    assert cli(write(tmp_path / "in.json", data), "-o", output, "--method", "nms") == 0
    assert json.loads(output.read_text())["results"]["v"] == [
        {"label": "a", "score": 0.9, "segment": [0.0, 10.0]},
        {"label": "b", "score": 0.3, "segment": [0.0, 10.0]},
        {"label": "a", "score": 0.2, "segment": [50.0, 60.0]},
    ]


def test_python_api_gives_the_file_contents(tmp_path):
    data = random_results(seed=2)
    output = tmp_path / "out.json"
    report = fuse_detection_file(write(tmp_path / "in.json", data), output, progress=False)
    from_file = json.loads(output.read_text())
    assert fuse_detections_json(data) == from_file
    assert report.videos == len(data["results"])
    assert report.detections == sum(len(v) for v in data["results"].values())
    assert report.fused_detections == sum(len(v) for v in from_file["results"].values())
    assert set(report.seconds) == {"read", "fuse", "compile", "write", "total"}


def test_numbers_are_written_as_short_float64_decimals_and_other_keys_verbatim(tmp_path):
    source = tmp_path / "in.json"
    source.write_text('{"version": [1.50, "x"], "results": {"v": [{"label": "a", "score": 0.1, "segment": [0.1, 0.3]}]}}')
    output = tmp_path / "out.json"
    assert cli(source, "-o", output) == 0
    assert output.read_text() == '{"version":[1.50, "x"],"results":{"v":[{"label":"a","score":0.1,"segment":[0.1,0.3]}]}}\n'


def test_empty_results_and_empty_videos(tmp_path):
    output = tmp_path / "out.json"
    assert cli(write(tmp_path / "in.json", {"results": {}}), "-o", output) == 0
    assert json.loads(output.read_text()) == {"results": {}}
    assert cli(write(tmp_path / "in.json", {"results": {"a": [], "b": []}, "x": 1}), "-o", output) == 0
    assert json.loads(output.read_text()) == {"results": {"a": [], "b": []}, "x": 1}


def test_summary_line_always_progress_bar_when_asked(tmp_path, capsys):
    data = random_results(seed=3)
    source, output = write(tmp_path / "in.json", data), tmp_path / "out.json"
    # A first run on this machine (this session's cache) adds the one-time compile notice: take it first.
    assert cli(source, "-o", output) == 0
    capsys.readouterr()
    assert cli(source, "-o", output) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    detections = sum(len(v) for v in data["results"].values())
    fused = sum(len(v) for v in json.loads(output.read_text())["results"].values())
    assert len(lines) == 1 and f"{detections} detections of 12 videos" in lines[0] and f"-> {fused} in" in lines[0]
    assert "of which compile" in lines[0]
    assert cli(source, "-o", output, "--progress") == 0
    assert "fusing" in capsys.readouterr().err  # the bar
    assert cli(source, "-o", output, "--quiet") == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ malformed input


GOOD = {"label": "a", "score": 0.5, "segment": [1.0, 2.0]}


@pytest.mark.parametrize(
    ("bad_entry", "message"),
    [
        ({"label": "a", "score": 0.5, "segment": [3.0, 2.0]},
         "video 'v_abc', entry 3: segment must be [start, end] with start <= end, got [3.0, 2.0]"),
        ({"label": "a", "score": 0.5}, "video 'v_abc', entry 3: missing 'segment'"),
        ({"label": "a", "score": "0.5", "segment": [1, 2]}, "video 'v_abc', entry 3: score must be a finite number, got '0.5'"),
        ({"label": "a", "score": True, "segment": [1, 2]}, "video 'v_abc', entry 3: score must be a finite number"),
        ({"label": "a", "score": float("nan"), "segment": [1, 2]},
         "video 'v_abc', entry 3: score must be a finite number, got nan; JSON has no NaN or Infinity"),
        ({"label": "a", "score": 1e301, "segment": [1, 2]}, "video 'v_abc', entry 3: score must be within +-1e+300"),
        ({"label": "a", "score": 1, "segment": [-1.7e308, 1.7e308]}, "video 'v_abc', entry 3: segment must be within +-1e+300"),
        ({"label": "a", "score": 10**400, "segment": [1, 2]}, "video 'v_abc', entry 3: score must be a finite number"),
        ({"label": "a", "score": 0.5, "segment": [1, 2, 3]}, "video 'v_abc', entry 3: segment must be [start, end] with two"),
        ({"label": "a", "score": 0.5, "segment": [1, float("inf")]},
         "video 'v_abc', entry 3: segment must be [start, end] with two finite numbers, got [1, inf]; JSON has no NaN"),
        ({"label": "a", "score": 0.5, "segment": ["1", 2]}, "video 'v_abc', entry 3: segment must be [start, end] with two finite"),
        ({"label": False, "score": 0.5, "segment": [1, 2]}, "video 'v_abc', entry 3: label must be a string or an integer"),
        ({"label": "a", "score": 0.5, "segment": "1-2"}, "video 'v_abc', entry 3: segment must be [start, end]"),
        ({"label": None, "score": 0.5, "segment": [1, 2]}, "video 'v_abc', entry 3: label must be a string or an integer"),
        ([1, 2], "video 'v_abc', entry 3: expected an object with 'label', 'score' and 'segment'"),
    ],
)
def test_malformed_entry_is_named_and_nothing_is_written(tmp_path, capsys, bad_entry, message):
    data = {"results": {"v_ok": [GOOD] * 2, "v_abc": [GOOD, GOOD, GOOD, bad_entry, {"oops": 1}]}}
    output = tmp_path / "out.json"
    output.write_text("previous contents")
    assert cli(write(tmp_path / "in.json", data), "-o", output) == 2
    assert message in capsys.readouterr().err
    assert output.read_text() == "previous contents"
    assert sorted(os.listdir(tmp_path)) == ["in.json", "out.json"]  # no temporary file left behind


def test_the_first_bad_entry_in_file_order_is_named():
    data = {"results": {"v1": [GOOD, {"label": "a", "score": 0.5, "segment": [5, 4]}], "v2": [{"label": []}]}}
    with pytest.raises(DetectionFileError, match=r"video 'v1', entry 1: segment must be"):
        detection_table(data)


def test_missing_weight_field_is_named():
    data = {"results": {"v": [{**GOOD, "w": 1.0}, GOOD]}}
    with pytest.raises(DetectionFileError, match=r"video 'v', entry 1: missing 'w' \(the --weight-field\)"):
        detection_table(data, weight_field="w")
    with pytest.raises(DetectionFileError, match=r"video 'v', entry 0: 'w' \(the --weight-field\) must be a finite"):
        detection_table({"results": {"v": [{**GOOD, "w": None}]}}, weight_field="w")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"version": 1}', "an object with a 'results' object"),
        ("[1, 2]", "an object with a 'results' object"),
        ('{"results": {"v": {"label": "a"}}}', "video 'v': expected a list of detections"),
    ],
)
def test_malformed_file_exits_2(tmp_path, capsys, text, message):
    source = tmp_path / "in.json"
    source.write_text(text)
    assert cli(source, "-o", tmp_path / "out.json") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_unreadable_input_exits_2(tmp_path, capsys):
    assert cli(tmp_path / "missing.json", "-o", tmp_path / "out.json") == 2
    assert "missing.json" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path):
    for argv in (["--temperature", "0"], ["--temperature", "nan"], ["--overlap", "dice"], ["--method", "mean"],
                 ["--discrete", "--continuous"]):
        with pytest.raises(SystemExit) as exit_info:
            cli(tmp_path / "in.json", "-o", tmp_path / "out.json", *argv)
        assert exit_info.value.code == 2


def test_write_failure_leaves_no_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(output_module.os, "replace", fail)
    output = tmp_path / "out.json"
    assert cli(write(tmp_path / "in.json", {"results": {"v": [GOOD]}}), "-o", output) == 2
    assert sorted(os.listdir(tmp_path)) == ["in.json"]


def test_console_entry_point_reports_malformed_input(tmp_path):
    """The real command line, in a fresh interpreter (no kernel runs: the file is rejected first)."""
    source = write(tmp_path / "in.json", {"results": {"v_abc": [GOOD, GOOD, GOOD, {**GOOD, "segment": [2, 1]}]}})
    completed = subprocess.run(
        [sys.executable, "-m", "jaxfuse.cli.main", "fuse", source, "-o", str(tmp_path / "out.json")],
        capture_output=True, text=True, cwd=REPOSITORY, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPOSITORY},
    )
    assert completed.returncode == 2, completed.stderr
    assert "video 'v_abc', entry 3: segment must be [start, end] with start <= end" in completed.stderr
    assert not (tmp_path / "out.json").exists()


# ------------------------------------------------------------------ packing


def test_pack_items_matches_pack_proposals():
    rng = np.random.default_rng(4)
    sizes = rng.integers(0, 70, size=30)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    total = int(sizes.sum())
    segments = rng.uniform(0, 100, (total, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, total).astype(np.float32)
    weights = rng.uniform(0, 1, total).astype(np.float32)
    split = lambda x: [x[s : s + n] for s, n in zip(starts, sizes)]  # noqa: E731
    # pack_items buckets by powers of two: pack_proposals with growth=2 (its default is 4).
    expected = pack_proposals(split(segments), split(scores), split(weights), growth=2)
    got = pack_items(segments, scores, weights, starts, sizes, rows=lambda size, n: 1 << 20, merge_budget=0)
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        real = ours.items >= 0
        assert real.sum() == len(theirs.items)
        np.testing.assert_array_equal(ours.items[real], theirs.items)
        np.testing.assert_array_equal(ours.sizes[real], theirs.sizes)
        for name in ("segments", "scores", "weights", "valid"):
            np.testing.assert_array_equal(getattr(ours, name)[real], getattr(theirs, name), err_msg=name)
        assert not ours.valid[~real].any()


def test_pack_items_tops_batches_up_to_one_height():
    sizes = np.array([3, 20, 5, 1])
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    segments = np.zeros((sizes.sum(), 2), np.float32)
    scores = np.zeros(sizes.sum(), np.float32)
    batches = pack_items(segments, scores, None, starts, sizes, rows=lambda size, n: 2, merge_budget=0)
    assert [(b.segments.shape, b.items.tolist()) for b in batches] == [
        ((2, 16, 2), [0, 2]), ((2, 16, 2), [3, -1]), ((2, 32, 2), [1, -1])
    ]
    merged = pack_items(segments, scores, None, starts, sizes, rows=lambda size, n: 4)
    assert [(b.segments.shape, b.items.tolist()) for b in merged] == [((4, 32, 2), [0, 1, 2, 3])]


def test_merged_buckets_keeps_a_bucket_whose_padding_would_cost_too_much():
    assert merged_buckets({16: 100, 64: 10, 1024: 5}, budget=10_000) == {1024: 1024, 64: 1024, 16: 16}
    assert merged_buckets({16: 100}, budget=0) == {16: 16}
    assert merged_buckets({}, budget=10) == {}


def test_batch_rows_are_powers_of_two_within_bounds():
    # `batch_rows` was imported before the autouse fixture pinned the module's copy: the real one.
    for size in (16, 64, 512, 1024, 4096, 1 << 16):
        for items in (1, 3, 100, 10**6):
            height = batch_rows(size, items)
            assert height & (height - 1) == 0
            assert height <= 1 << (items - 1).bit_length()  # no taller than the bucket needs
    assert batch_rows(1024, 10**6) == 64 and batch_rows(16, 10**6) == 1024 and batch_rows(1 << 16, 10**6) == 16


def test_python_dicts_may_hold_numpy_scalars_and_tuples():
    data = {"results": {"v": [
        {"label": np.str_("a"), "score": np.float32(0.9), "segment": (np.float32(0.0), 10)},
        {"label": "a", "score": 0.9, "segment": [2.0, np.int64(12)]},
        {"label": 3, "score": 0.4, "segment": [0, 1]},
    ]}}
    got = fuse_detections_json(data, temperature=1.0)["results"]["v"]
    # Equal weights (softmax of float32(0.9) and 0.9 differ by 1e-8 / T): the mean, in float64.
    g = np.exp([float(np.float32(0.9)), 0.9])
    g /= g.sum()
    assert [e["label"] for e in got] == ["a", 3] and got[1] == {"label": 3, "score": 0.4, "segment": [0.0, 1.0]}
    np.testing.assert_allclose(
        [*got[0]["segment"], got[0]["score"]], [2 * g[1], 10 + 2 * g[1], g @ [float(np.float32(0.9)), 0.9]], rtol=1e-15
    )


# ------------------------------------------------------------------ issue 8: file safety, precision, options


def test_an_unwritable_output_is_reported_before_the_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("fused before checking the output")

    monkeypatch.setattr(detection_file, "_fuse_checked", no_work)
    given = tmp_path / "no such dir" / "out.json"
    assert cli(write(tmp_path / "in.json", {"results": {"v": [GOOD]}}), "-o", given) == 2
    assert capsys.readouterr().err == f"jaxfuse fuse: error: cannot write {given}: no such directory: {given.parent}\n"


def test_the_command_writes_through_a_symlink_and_keeps_the_mode(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert cli(write(tmp_path / "in.json", {"results": {"v": [GOOD]}}), "-o", link, "--quiet") == 0
    assert link.is_symlink() and json.loads(target.read_text())["results"]["v"] == [GOOD]
    assert target.stat().st_mode & 0o777 == 0o600


def test_sigterm_during_the_write_cleans_up_and_exits_143(tmp_path, capsys, monkeypatch):
    import signal

    output = tmp_path / "out.json"
    output.write_text("old")
    real_replace = os.replace

    def terminated_while_writing(source, destination, **directories):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode, before the rename
        real_replace(source, destination, **directories)

    monkeypatch.setattr(output_module.os, "replace", terminated_while_writing)
    assert cli(write(tmp_path / "in.json", {"results": {"v": [GOOD]}}), "-o", output) == 143
    assert capsys.readouterr().err == "jaxfuse fuse: terminated\n"
    assert sorted(os.listdir(tmp_path)) == ["in.json", "out.json"] and output.read_text() == "old"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_ctrl_c_during_compilation_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(detection_file, "_run_batches", interrupted)
    output = tmp_path / "out.json"
    assert cli(write(tmp_path / "in.json", {"results": {"v": [GOOD]}}), "-o", output) == 130
    assert capsys.readouterr().err == "jaxfuse fuse: interrupted\n" and not output.exists()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads the child's CPU time from /proc")
def test_ctrl_c_in_a_real_process_during_compilation(tmp_path):
    """SIGINT a fresh interpreter while it compiles: exit 130, one line, no traceback, no file."""
    import signal
    import time

    source = write(tmp_path / "in.json", random_results(seed=5))
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxfuse.cli.main", "fuse", source, "-o", str(tmp_path / "out.json"), "--method", "student_t"],
        stderr=subprocess.PIPE, text=True, cwd=REPOSITORY,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPOSITORY},
    )
    # Wait by CPU time, not wall time (steady under load): imports take about 1 s of CPU, compiling the
    # Student-t program about 9 s.
    deadline = time.monotonic() + 120
    while _cpu_seconds(process.pid) < 2.5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    # "jaxfuse: interrupted" if a very loaded machine was still importing.
    assert stderr in ("jaxfuse fuse: interrupted\n", "jaxfuse: interrupted\n")
    assert sorted(os.listdir(tmp_path)) == ["in.json"]


def test_epoch_times_come_back_exactly_or_to_float64_accuracy(tmp_path):
    data = {"results": {"v": [
        {"label": "a", "score": 0.9, "segment": [1700000000.25, 1700000042.75]},
        {"label": "a", "score": 0.7, "segment": [1700000001.5, 1700000040.125]},
        {"label": "b", "score": 0.5, "segment": [3600.123456, 3700.000001]},
        {"label": "a", "score": 0.3, "segment": [1700000100.1, 1700000100.2]},
    ]}}
    output = tmp_path / "out.json"
    assert cli(write(tmp_path / "in.json", data), "-o", output, "--quiet") == 0
    fused = json.loads(output.read_text())["results"]["v"]
    # Not fused: exactly as given.
    assert fused[1:] == [data["results"]["v"][2], data["results"]["v"][3]]
    # Fused: the float64 reference, to a few float64 ulps (2.4e-7 at 1.7e9), not float32's 128 s.
    g = np.exp(np.array([0.9, 0.7]) / 0.2)
    g /= g.sum()
    want = g @ np.array([[1700000000.25, 1700000042.75], [1700000001.5, 1700000040.125]])
    np.testing.assert_allclose(fused[0]["segment"], want, rtol=0, atol=1e-6)
    assert fused[0]["segment"][1] - fused[0]["segment"][0] > 38


@settings(max_examples=15, deadline=None)
@given(
    values=st.lists(
        st.tuples(st.floats(-1e12, 1e12), st.floats(0, 1e6), st.floats(-1e3, 1e3)), min_size=1, max_size=12
    )
)
def test_nms_survivors_are_bit_exact(values):
    entries = [{"label": "a", "score": q, "segment": [s, s + length]} for s, length, q in values]
    fused = fuse_detections_json({"results": {"v": entries}}, method="nms")["results"]["v"]
    assert all(entry in entries for entry in fused)


def test_threshold_outside_0_1_is_rejected(tmp_path, capsys):
    for value in ("1.5", "-1", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            cli(tmp_path / "in.json", "-o", tmp_path / "out.json", "--threshold", value)
        assert exit_info.value.code == 2
        assert "--threshold: must be" in capsys.readouterr().err
    with pytest.raises(ValueError, match="overlap_threshold"):
        fuse_detections_json({"results": {}}, overlap_threshold=1.5)


def test_top_k_and_min_score_cut_each_video_after_sorting(tmp_path):
    data = random_results(seed=6)
    output = tmp_path / "out.json"
    assert cli(write(tmp_path / "in.json", data), "-o", output, "--top-k", "3", "--min-score", "0.3", "--quiet") == 0
    fused = json.loads(output.read_text())
    assert_matches_reference(fused, data, temperature=0.2, top_k=3, min_score=0.3)
    for entries in fused["results"].values():
        scores = [entry["score"] for entry in entries]
        assert scores == sorted(scores, reverse=True) and len(scores) <= 3 and min(scores, default=1) >= 0.3


def test_soft_nms_options_reach_the_kernel(tmp_path):
    import jax

    from jaxfuse import fuse_proposals

    entries = [{"label": "a", "score": q, "segment": [s, s + 10.0]} for s, q in ((0.0, 0.9), (3.0, 0.8), (6.0, 0.7), (40.0, 0.2))]
    data = {"results": {"v": entries}}
    segments = np.array([e["segment"] for e in entries])
    scores = np.array([e["score"] for e in entries])
    for options in ({"sigma": 0.1}, {"decay": "linear"}, {"sigma": 0.3, "min_score": 0.25}):
        got = fuse_detections_json(data, method="soft_nms", overlap="iou", **options)["results"]["v"]
        kernel_options = {k: v for k, v in options.items() if k != "min_score"}
        if "min_score" in options:
            kernel_options["min_score"] = options["min_score"]
        with jax.enable_x64(True):
            want = fuse_proposals(segments, scores, method="soft_nms", overlap="iou", discrete=False, temperature=0.2, **kernel_options)
        kept = np.asarray(want.valid)
        rows = sorted(zip(np.asarray(want.scores)[kept], np.asarray(want.segments)[kept].tolist()), key=lambda r: -r[0])
        assert [(e["score"], e["segment"]) for e in got] == [(float(q), s) for q, s in rows], options
    with pytest.raises(ValueError, match="soft_nms"):
        fuse_detections_json(data, sigma=0.1)


def test_published_preset_is_the_five_published_settings(tmp_path):
    data = random_results(seed=7)
    source = write(tmp_path / "in.json", data)
    by_name, by_flags = tmp_path / "preset.json", tmp_path / "flags.json"
    assert cli(source, "-o", by_name, "--preset", "published", "--quiet") == 0
    assert cli(source, "-o", by_flags, "--overlap", "candidate", "--discrete", "--threshold", "0.25",
               "--temperature", "0.2", "--method", "gaussian", "--weight-field", "inner", "--quiet") == 0
    assert by_name.read_text() == by_flags.read_text()
    assert_matches_reference(json.loads(by_name.read_text()), data, temperature=0.2, weight_field="inner", discrete=True)
    # An explicit option overrides the preset's value.
    assert cli(source, "-o", by_name, "--preset", "published", "--continuous", "--quiet") == 0
    assert_matches_reference(json.loads(by_name.read_text()), data, temperature=0.2, weight_field="inner", discrete=False)


def test_a_failed_group_names_its_leader():
    table = detection_table({"results": {"v0": [GOOD], "v1": [GOOD, GOOD, GOOD]}})
    items = detection_file.table_items(table)
    found = detection_file._Found(
        item=np.array([0, 1]), leader=np.array([0, 2]), single=np.array([True, False]),
        segments=np.zeros((2, 2)), scores=np.zeros(2), result=np.array([0, 5]),
    )
    with pytest.raises(DetectionFileError, match=r"video 'v1', entry 1 \(label 'a'\): fusing the group it leads gave OVERFLOW"):
        detection_file._raise_for_failures(found, table, items)


def test_values_beyond_float32_are_fused_in_float64(tmp_path):
    """1e39 is finite in JSON and in float64 (inf in float32): fused, not an error from a padded batch."""
    data = {"results": {"v": [
        {"label": "a", "score": 1e39, "segment": [0.0, 1e39]},
        {"label": "a", "score": 5e38, "segment": [1e30, 1e39]},
    ]}}
    fused = fuse_detections_json(data, temperature=1e38)["results"]["v"]
    g = np.exp(np.array([10.0, 5.0]) - 10.0)
    g /= g.sum()
    np.testing.assert_allclose([*fused[0]["segment"], fused[0]["score"]], [g @ [0.0, 1e30], 1e39, g @ [1e39, 5e38]], rtol=1e-12)


def test_dash_reads_standard_input_and_writes_standard_output(monkeypatch, capsys):
    import io

    data = {"results": {"v": [GOOD, {**GOOD, "segment": [1.5, 2.0]}]}}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(data).encode())))
    assert cli("-", "-o", "-", "--method", "nms", "--quiet") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"results": {"v": [GOOD]}} and captured.err == ""


# ------------------------------------------------------------------ issue 16: weight fields, inputs alike


def test_the_weight_field_may_be_the_score(tmp_path):
    """--weight-field score crashed ("Multiple fields rename to the same name"), also under --preset published."""
    data = random_results(seed=8)
    source = write(tmp_path / "in.json", data)
    output = tmp_path / "out.json"
    assert cli(source, "-o", output, "--weight-field", "score", "--quiet") == 0
    assert_matches_reference(json.loads(output.read_text()), data, temperature=0.2, weight_field="score")
    assert cli(source, "-o", output, "--preset", "published", "--weight-field", "score", "--quiet") == 0
    assert_matches_reference(json.loads(output.read_text()), data, temperature=0.2, weight_field="score", discrete=True)
    # Integer labels are numbers: as weights they are read like any numeric field.
    numbered = {"results": {"v": [{**GOOD, "label": 3}, {**GOOD, "label": 3, "segment": [1.5, 2.5]}]}}
    assert fuse_detections_json(json.dumps(numbered).encode(), weight_field="label", temperature=1.0) == (
        fuse_detections_json(numbered, weight_field="label", temperature=1.0)
    )


@pytest.mark.parametrize(("field", "value"), [("label", "'a'"), ("segment", r"\[1.0, 2.0\]")])
def test_a_non_numeric_entry_field_as_weights_is_named(tmp_path, capsys, field, value):
    source = write(tmp_path / "in.json", {"results": {"v": [GOOD]}})
    assert cli(source, "-o", tmp_path / "out.json", "--weight-field", field) == 2
    assert re.fullmatch(
        rf"jaxfuse fuse: error: {re.escape(source)}: video 'v', entry 0: '{field}' \(the --weight-field\) must be a "
        rf"finite number, got {value}\n",
        capsys.readouterr().err,
    )
    for data in ({"results": {"v": [GOOD]}}, json.dumps({"results": {"v": [GOOD]}}).encode()):
        with pytest.raises(DetectionFileError, match=rf"'{field}' \(the --weight-field\) must be a finite number"):
            fuse_detections_json(data, weight_field=field)


def test_fuse_detections_json_accepts_what_evaluate_json_accepts(tmp_path):
    """The parsed dict, the file's bytes or its path: the same result, by the same rules."""
    data = random_results(seed=9)
    source = write(tmp_path / "in.json", data)
    expected = fuse_detections_json(data, weight_field="inner")
    assert fuse_detections_json(json.dumps(data).encode(), weight_field="inner") == expected
    assert fuse_detections_json(bytearray(json.dumps(data).encode()), weight_field="inner") == expected
    assert fuse_detections_json(source, weight_field="inner") == expected
    assert expected["external_data"] == data["external_data"] and list(expected) == list(data)
    with pytest.raises(DetectionFileError, match="holds the key 'v' more than once"):
        fuse_detections_json(b'{"results": {"v": [], "v": []}}')


def test_soft_nms_options_without_soft_nms_are_named_as_options(tmp_path, capsys):
    source = write(tmp_path / "in.json", {"results": {"v": [GOOD]}})
    assert cli(source, "-o", tmp_path / "out.json", "--sigma", "0.3", "--decay", "linear") == 2
    assert capsys.readouterr().err == (
        "jaxfuse fuse: error: --sigma and --decay apply to --method soft_nms only, got --method gaussian\n"
    )
