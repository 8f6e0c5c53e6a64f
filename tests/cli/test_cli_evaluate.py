"""``jaxfuse evaluate`` on tiny generated files: the printed table and --json equal the library call."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from jaxfuse._evaluation.activitynet_json import evaluate_json
from jaxfuse._evaluation.evaluate import ACTIVITYNET_THRESHOLDS, THUMOS14_THRESHOLDS
from jaxfuse.cli import main

CLASSES = ["BaseballPitch", "Diving", "HighJump", "Shotput"]


def write_case(tmp_path, seed, *, quantise=True):
    """Random THUMOS-like files: Ambiguous annotations, labels only in the predictions,
    videos without ground truth, ties in score and tIoU, two subsets."""
    rng = np.random.default_rng(seed)
    database, results = {}, {}
    for v in range(6):
        annotations = []
        for _ in range(int(rng.integers(1, 6))):
            start = float(rng.integers(0, 60))
            label = "Ambiguous" if rng.random() < 0.15 else CLASSES[int(rng.integers(0, 3))]
            annotations.append({"label": label, "segment": [start, start + float(rng.integers(2, 12))]})
        database[f"video_test_{v}"] = {"subset": "test" if v < 4 else "validation", "annotations": annotations}
    for v in range(8):  # videos 6 and 7 have no ground truth
        entries = []
        for _ in range(int(rng.integers(0, 25))):
            start = float(rng.integers(0, 60)) / (2 if quantise else rng.uniform(1, 2))
            label = CLASSES[int(rng.integers(0, 4))]  # Shotput has no ground truth
            score = round(float(rng.random()), 1) if quantise else float(rng.random())
            entries.append({"label": label, "score": score, "segment": [start, start + float(rng.integers(1, 12))]})
        results[f"video_test_{v}"] = entries
    predictions, ground_truth = tmp_path / "pred.json", tmp_path / "gt.json"
    predictions.write_text(json.dumps({"version": "1.3", "results": results}))
    ground_truth.write_text(json.dumps({"database": database}))
    return str(predictions), str(ground_truth)


def run(capsys, *argv):
    code = main.main(["evaluate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(text):
    """``{row label: [values]}`` of the printed table (the separator line skipped)."""
    rows = {}
    for line in text.strip().splitlines():
        if set(line) == {"-"}:
            continue
        label, *values = line.rsplit(maxsplit=len(line.split()) - (2 if line.startswith("mAP") else 1))
        rows[label] = values
    return rows


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ambiguous", ["ignore", "drop-overlapping", "class"])
def test_table_and_json_equal_the_library(tmp_path, capsys, seed, ambiguous):
    predictions, ground_truth = write_case(tmp_path, seed)
    out_path = tmp_path / "map.json"
    code, out, err = run(capsys, predictions, ground_truth, "--subset", "test", "--ambiguous", ambiguous,
                         "--per-class", "--json", out_path)
    assert code == 0, err
    expected = evaluate_json(
        predictions, ground_truth, subset="test",
        ignore_labels=() if ambiguous == "class" else ("Ambiguous",),
        drop_ignored_overlaps=ambiguous == "drop-overlapping",
    )
    has_gt = ~np.isnan(expected.average_precision[0])
    document = json.loads(out_path.read_text())
    assert document["thresholds"] == list(THUMOS14_THRESHOLDS)
    assert document["mean_average_precision"] == expected.mean_average_precision.tolist()
    assert document["average"] == float(expected.average)
    assert document["average_precision"] == {
        str(label): expected.average_precision[:, c].tolist() for c, label in enumerate(expected.classes) if has_gt[c]
    }
    assert ("Ambiguous" in document["average_precision"]) == (ambiguous == "class" and "Ambiguous" in expected.classes)

    rows = table_rows(out)
    assert rows["tIoU"] == [f"{t:.2f}" for t in THUMOS14_THRESHOLDS] + ["Avg"]
    assert rows["mAP (%)"] == [f"{100 * v:.2f}" for v in [*expected.mean_average_precision, expected.average]]
    for c, label in enumerate(expected.classes):
        if has_gt[c]:
            ap = expected.average_precision[:, c]
            assert rows[str(label)] == [f"{100 * v:.2f}" for v in [*ap, ap.mean()]]
    assert "Shotput" not in rows  # predictions only: not a class of the table
    assert "1 label without ground truth ('Shotput')" in err  # one label: singular (issue 20)
    assert re.search(r"predictions? in [\d,]+ videos? without ground truth (is a false positive|are false positives)",
                     err)


def test_defaults_are_the_thumos14_protocol_on_every_subset(tmp_path, capsys):
    predictions, ground_truth = write_case(tmp_path, 7, quantise=False)
    code, out, err = run(capsys, predictions, ground_truth)
    assert code == 0, err
    expected = evaluate_json(predictions, ground_truth, ignore_labels=("Ambiguous",))
    assert table_rows(out)["mAP (%)"][-1] == f"{100 * float(expected.average):.2f}"
    assert "tie in score" not in err  # continuous scores: the ranking is unambiguous


def test_activitynet_preset_uses_the_official_thresholds_and_subset(tmp_path, capsys):
    predictions, ground_truth = write_case(tmp_path, 3)
    code, out, err = run(capsys, predictions, ground_truth, "--dataset", "activitynet", "--json", "-")
    assert code == 0, err
    document = json.loads(out)  # --json -: the JSON on stdout, the table on stderr
    assert document["thresholds"] == list(ACTIVITYNET_THRESHOLDS)
    assert document["thresholds"][8] == 0.8999999999999999
    expected = evaluate_json(predictions, ground_truth, thresholds=ACTIVITYNET_THRESHOLDS, subset="validation",
                             ignore_labels=("Ambiguous",))
    assert document["average"] == float(expected.average)
    assert "(subset 'validation')" in err and "mAP (%)" in err


def test_custom_thresholds_and_all_subsets(tmp_path, capsys):
    predictions, ground_truth = write_case(tmp_path, 2)
    code, out, err = run(capsys, predictions, ground_truth, "--dataset", "activitynet", "--subset", "all",
                         "--thresholds", "0.3", "0.5", "--json", tmp_path / "out.json")
    assert code == 0, err
    expected = evaluate_json(predictions, ground_truth, thresholds=(0.3, 0.5), ignore_labels=("Ambiguous",))
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["thresholds"] == [0.3, 0.5]
    assert document["mean_average_precision"] == expected.mean_average_precision.tolist()


def test_issue_8_tie_case_from_files(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps({"database": {"v": {"annotations": [
        {"label": "Diving", "segment": [0, 10]}, {"label": "Diving", "segment": [5, 15]}]}}}))
    (tmp_path / "pred.json").write_text(json.dumps({"results": {"v": [
        {"label": "Diving", "score": 0.9, "segment": [2.5, 12.5]},
        {"label": "Diving", "score": 0.8, "segment": [0, 10]}]}}))
    code, out, err = run(capsys, tmp_path / "pred.json", tmp_path / "gt.json", "--thresholds", "0.5")
    assert code == 0, err
    assert table_rows(out)["mAP (%)"] == ["100.00", "100.00"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"label": "Diving", "score": "0.9", "segment": [0, 1]}, "video 'v', entry 1: score must be a finite number"),
        ({"label": "Diving", "score": 0.9, "segment": [0, 1, 2]}, "video 'v', entry 1: segment must be"),
    ],
)
def test_malformed_input_exits_2_naming_video_and_entry(tmp_path, capsys, entry, message):
    (tmp_path / "gt.json").write_text(json.dumps({"database": {"v": {"annotations": [{"label": "Diving", "segment": [0, 1]}]}}}))
    good = {"label": "Diving", "score": 0.5, "segment": [0, 1]}
    (tmp_path / "pred.json").write_text(json.dumps({"results": {"v": [good, entry]}}))
    code, out, err = run(capsys, tmp_path / "pred.json", tmp_path / "gt.json", "--json", tmp_path / "out.json")
    assert code == 2 and out == ""
    assert err.startswith("jaxfuse evaluate: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.json").exists()


def test_unwritable_json_is_reported_before_the_work(tmp_path, capsys):
    # The input is malformed too: the output path is checked first.
    (tmp_path / "pred.json").write_text("{not json")
    code, _, err = run(capsys, tmp_path / "pred.json", tmp_path / "pred.json", "--json", tmp_path / "no" / "out.json")
    assert err == (f"jaxfuse evaluate: error: cannot write --json {tmp_path / 'no' / 'out.json'}: "
                   f"no such directory: {tmp_path / 'no'}\n") and code == 2
    code, _, err = run(capsys, tmp_path / "missing.json", tmp_path / "pred.json")
    missing = tmp_path / "missing.json"
    assert err == f"jaxfuse evaluate: error: cannot read PRED.json ({missing}): No such file or directory\n"
    assert code == 2


def test_json_is_written_through_a_symlink_keeping_the_mode(tmp_path, capsys):
    predictions, ground_truth = write_case(tmp_path, 1)
    target = tmp_path / "target.json"
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    code, _, err = run(capsys, predictions, ground_truth, "--json", link)
    assert code == 0, err
    assert link.is_symlink() and "average_precision" in json.loads(target.read_text())
    assert target.stat().st_mode & 0o777 == 0o600


def test_integer_and_string_labels_that_would_share_a_json_key(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps({"database": {"v": {"annotations": [
        {"label": 1, "segment": [0, 10]}, {"label": "1", "segment": [20, 30]}]}}}))
    (tmp_path / "pred.json").write_text(json.dumps({"results": {"v": [{"label": 1, "score": 0.9, "segment": [0, 10]}]}}))
    code, out, err = run(capsys, tmp_path / "pred.json", tmp_path / "gt.json")
    assert code == 0 and "mAP (%)" in out  # two classes: 1 found, "1" not
    assert table_rows(out)["mAP (%)"][0] == "50.00"
    code, _, err = run(capsys, tmp_path / "pred.json", tmp_path / "gt.json", "--json", tmp_path / "out.json")
    assert code == 2 and "clash" in err
    code, out, _ = run(capsys, tmp_path / "pred.json", tmp_path / "gt.json", "--per-class")
    rows = table_rows(out)
    assert rows["1"] == ["100.00"] * 8 and rows["'1'"] == ["0.00"] * 8


@pytest.mark.parametrize(
    ("predictions", "options", "message"),
    [
        (
            '{"results": {"v": [], "v": []}}',
            (),
            "PRED.json ({pred}): 'results' holds the key 'v' more than once (the second would silently replace "
            "the first)",
        ),
        (
            '{"results": {"v": ' + "[" * 100_000 + "]" * 100_000 + "}}",
            (),
            "PRED.json ({pred}): not valid JSON: nested too deeply",
        ),
        ('{"results": {}}', ("--subset", "test"),
         "GT.json ({gt}): --subset: no video has subset 'test' (subsets in the file: 'Test')"),
        ('{"results": {}}', ("--subset", "Test", "--ambiguous", "ignore"),
         "GT.json ({gt}): no annotations of --subset 'Test' to evaluate against; 1 'Ambiguous' annotations are not a "
         "class (--ambiguous class counts them)"),
    ],
)
def test_file_errors_of_the_shared_reader_exit_2_in_one_line(tmp_path, capsys, predictions, options, message):
    """Errors name the command's arguments (PRED.json, GT.json, --subset), not the Python parameters behind them."""
    label = "Ambiguous" if "--ambiguous" in options else "Diving"
    annotations = [{"label": label, "segment": [0, 1]}]
    (tmp_path / "gt.json").write_text(json.dumps({"database": {"v": {"subset": "Test", "annotations": annotations}}}))
    (tmp_path / "pred.json").write_text(predictions)
    code, out, err = run(capsys, tmp_path / "pred.json", tmp_path / "gt.json", *options)
    assert code == 2 and out == "" and err.count("\n") == 1
    expected = message.format(pred=tmp_path / "pred.json", gt=tmp_path / "gt.json")
    assert err == f"jaxfuse evaluate: error: {expected}\n"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"results": {"v": [{"label": "Diving", "score": NaN, "segment": [0, 1]}]}}',
         "PRED.json ({pred}): video 'v', entry 0: score must be a finite number, got nan; JSON has no NaN or Infinity"),
        (b"\xef\xbb\xbf" + b'{"results": {}}', "PRED.json ({pred}): starts with a UTF-8 byte-order mark (EF BB BF)"),
    ],
)
def test_nan_and_byte_order_marks_are_named_in_one_line(tmp_path, capsys, raw, message):
    annotations = [{"label": "Diving", "segment": [0, 1]}]
    (tmp_path / "gt.json").write_text(json.dumps({"database": {"v": {"annotations": annotations}}}))
    (tmp_path / "pred.json").write_bytes(raw)
    code, out, err = run(capsys, tmp_path / "pred.json", tmp_path / "gt.json")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("jaxfuse evaluate: error: " + message.format(pred=tmp_path / "pred.json"))
