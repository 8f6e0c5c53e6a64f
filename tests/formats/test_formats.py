"""jaxfuse.formats: ActivityNet JSON reading and checking (one set of rules for files, bytes and dicts), and output files written safely."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import stat
import threading

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxfuse.formats.output as output_module
from jaxfuse.formats.activitynet import (
    DetectionFileError,
    encode_results,
    read_ground_truth,
    read_predictions,
)
from jaxfuse.formats.output import plan_output, write_output

GOOD = {"label": "a", "score": 0.5, "segment": [1.0, 2.0]}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------ repeated keys


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"results": {"v1": [], "v2": [], "v1": []}}', "v1"),
        ('{"results": {"v1": [{"label": "a", "score": 1, "segment": [0, 1]}]}, "results": {"v2": []}}', "results"),
        ('{"results": {"v\\"x": [],\n  "v\\"x"  :  []}}', 'v"x'),
    ],
)
def test_a_repeated_key_is_rejected_by_name(text, key):
    with pytest.raises(DetectionFileError, match="more than once") as error:
        read_predictions(text.encode())
    assert repr(key) in str(error.value)


def test_a_repeated_ground_truth_video_is_rejected():
    text = b'{"database": {"v1": {"annotations": []}, "v1": {"annotations": []}}}'
    with pytest.raises(DetectionFileError, match="'v1' more than once"):
        read_ground_truth(text)


@settings(max_examples=25, deadline=None)
@given(
    keys=st.lists(st.text(min_size=0, max_size=6), min_size=1, max_size=6, unique=True),
    indent=st.sampled_from([None, 0, 2]),
    repeat=st.booleans(),
)
def test_keys_with_any_characters_and_layout_pass_unless_repeated(keys, indent, repeat):
    """Escapes, unicode and whitespace in keys never look like a repeat; a real repeat is always found."""
    body = ", ".join(f"{json.dumps(key)}: []" for key in keys + (keys[:1] if repeat else []))
    text = json.dumps({"version": 1, "results": None}, indent=indent).replace("null", "{" + body + "}")
    if repeat:
        with pytest.raises(DetectionFileError, match="more than once"):
            read_predictions(text.encode())
    else:
        assert read_predictions(text.encode()).table.video_ids == keys


def test_deep_nesting_is_an_input_error():
    deep = b'{"results": {"v": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(DetectionFileError, match="nested too deeply"):
        read_predictions(deep)


# ------------------------------------------------------------------ one set of rules


BAD_ENTRIES = [
    ({"label": "a", "score": "0.5", "segment": [1, 2]}, "score must be a finite number"),
    ({"label": "a", "score": True, "segment": [1, 2]}, "score must be a finite number"),
    ({"label": "a", "score": 0.5, "segment": ["1", "2"]}, "segment must be [start, end] with two finite numbers"),
    ({"label": "a", "score": 0.5, "segment": [1, 2, 3]}, "segment must be [start, end] with two finite numbers"),
    ({"label": True, "score": 0.5, "segment": [1, 2]}, "label must be a string or an integer"),
    ({"label": "a", "score": 1e39 * 1e262, "segment": [1, 2]}, "score must be within +-1e+300"),
    ({"label": "a", "segment": [1, 2]}, "missing 'score'"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_ENTRIES)
def test_files_and_dicts_are_checked_alike(entry, message):
    data = {"results": {"ok": [GOOD], "bad video": [GOOD, entry]}}
    expected = f"video 'bad video', entry 1: {message}"
    for source in (data, json.dumps(data).encode()):
        with pytest.raises(DetectionFileError) as error:
            read_predictions(source)
        assert expected in str(error.value)


def test_labels_keep_their_json_type():
    data = {"results": {"v": [{**GOOD, "label": 1}, {**GOOD, "label": "1"}, {**GOOD, "label": 1}]}}
    for source in (data, json.dumps(data).encode()):
        table = read_predictions(source).table
        assert table.labels == [1, "1"] and table.label_codes.tolist() == [0, 1, 0]


def test_ground_truth_subset_and_errors():
    data = {"database": {
        "v1": {"subset": "validation", "annotations": [{"label": "Jump", "segment": [1, 4]}]},
        "v2": {"subset": "training", "annotations": [{"label": "Run", "segment": [0, 2]}, {"label": "Jump", "segment": [5, 6]}]},
    }}
    for source in (data, json.dumps(data).encode()):
        table = read_ground_truth(source, subset="validation")
        assert table.video_ids == ["v1"] and table.labels == ["Jump"] and table.segments.tolist() == [[1.0, 4.0]]
        assert read_ground_truth(source).counts.tolist() == [1, 2]
    bad = {"database": {"v1": {"annotations": [{"label": "a", "segment": [1, 2]}, {"label": "a", "segment": [3, 2]}]}}}
    for source in (bad, json.dumps(bad).encode()):
        with pytest.raises(DetectionFileError, match=r"video 'v1', entry 1: segment must be \[start, end\] with start <= end"):
            read_ground_truth(source)
    with pytest.raises(DetectionFileError, match="video 'v1': expected an object with an 'annotations' list"):
        read_ground_truth(b'{"database": {"v1": {"subset": "x"}}}')


def test_a_subset_that_selects_no_video_names_the_subsets_there_are():
    """A misspelt subset is an error, not an empty table; other subsets' annotations are not checked."""
    data = {"database": {
        "v1": {"subset": "Test", "annotations": [{"label": "a", "segment": [0, 1]}]},
        "v2": {"subset": "validation", "annotations": [{"label": "a", "segment": [3, 2]}]},
        "v3": {"annotations": []},
    }}
    for source in (data, json.dumps(data).encode()):
        with pytest.raises(DetectionFileError, match=r"`subset`: no video has subset 'test' \(subsets in the file: 'Test', 'validation'\)"):
            read_ground_truth(source, subset="test")
        assert read_ground_truth(source, subset="Test").video_ids == ["v1"]  # v2's reversed segment is not read
    with pytest.raises(DetectionFileError, match=r"subsets in the file: none"):
        read_ground_truth({"database": {}}, subset="validation")


def test_encode_results_round_trips_float64_and_keeps_raw_values():
    top = {"version": msgspec.Raw(b'"1.3"'), "results": None, "extra": {"a": 1}}
    text = encode_results(top, ["v", "w"], [2, 0], ["x", 7], [1, 0], [0.1, 1700000000.25], [[3600.123456, 3601.0], [1.0, 2.0]])
    assert json.loads(text) == {"version": "1.3", "results": {"v": [
        {"label": 7, "score": 0.1, "segment": [3600.123456, 3601.0]},
        {"label": "x", "score": 1700000000.25, "segment": [1.0, 2.0]},
    ], "w": []}, "extra": {"a": 1}}


# ------------------------------------------------------------------ output files


def test_a_symlink_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_output(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]


def test_a_hard_linked_file_is_written_in_place(tmp_path):
    first = tmp_path / "a.json"
    first.write_text("old")
    second = tmp_path / "b.json"
    os.link(first, second)
    inode = first.stat().st_ino
    write_output(first, b"new")
    assert second.read_bytes() == b"new" and first.stat().st_ino == inode and first.stat().st_nlink == 2


def test_an_existing_file_keeps_its_mode_and_a_new_one_gets_the_umask(tmp_path):
    private = tmp_path / "private.json"
    private.write_text("old")
    private.chmod(0o600)
    write_output(private, b"new")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_bytes() == b"new"
    umask = os.umask(0o027)
    try:
        write_output(tmp_path / "fresh.json", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == 0o640


def test_a_fifo_and_a_device_are_written_directly(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_output(fifo, b"through the pipe")
    reader.join(10)
    assert received == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)
    if os.access("/dev/null", os.W_OK):
        write_output("/dev/null", b"discarded")
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_dash_is_standard_output(capsys):
    write_output("-", b'{"results": {}}\n')
    assert capsys.readouterr().out == '{"results": {}}\n'


def test_unwritable_outputs_are_named_before_any_work(tmp_path):
    with pytest.raises(OSError) as error:
        plan_output(tmp_path / "missing" / "out.json")
    assert error.value.filename == str(tmp_path / "missing" / "out.json") and "no such directory" in str(error.value)
    with pytest.raises(OSError) as error:
        plan_output(tmp_path)
    assert error.value.filename == str(tmp_path) and "directory" in str(error.value).lower()
    if not IS_ROOT:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(OSError, match="cannot create files"):
            plan_output(locked / "out.json")


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit, OSError])
def test_an_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch, interruption):
    output = tmp_path / "out.json"
    output.write_text("old")

    def interrupted(*args, **kwargs):
        raise interruption(28, "interrupted") if interruption is OSError else interruption()

    monkeypatch.setattr(output_module.os, "replace", interrupted)
    with pytest.raises(interruption) as error:
        write_output(output, b"new")
    assert os.listdir(tmp_path) == ["out.json"] and output.read_text() == "old"
    if interruption is OSError:
        assert error.value.filename == str(output)  # the path given, not the temporary file


# ------------------------------------------------------------------ issue 16: why a file does not parse, in words


SMALL = json.dumps({"results": {"v": [GOOD]}})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xef\xbb\xbf" + SMALL.encode(), "starts with a UTF-8 byte-order mark (EF BB BF), which the ActivityNet"),
        (b"\xff\xfe" + SMALL.encode("utf-16-le"), "is UTF-16 (little-endian) text (byte-order mark FF FE); JSON files"),
        (b"\xfe\xff" + SMALL.encode("utf-16-be"), "is UTF-16 (big-endian) text (byte-order mark FE FF)"),
        (SMALL.encode("utf-16-le"), "is UTF-16 (little-endian) text (zero bytes between its characters)"),
        (SMALL.encode("utf-16-be"), "is UTF-16 (big-endian) text (zero bytes between its characters)"),
        (b"\xff\xfe\x00\x00" + SMALL.encode("utf-32-le"), "is UTF-32 (little-endian) text (byte-order mark FF FE 00"),
        (SMALL.encode("utf-32-be"), "is UTF-32 (big-endian) text (zero bytes"),
        (gzip.compress(SMALL.encode()), "is gzip-compressed (starts with 1F 8B); decompress it first (gunzip FILE)"),
        (bz2.compress(SMALL.encode()), "is bzip2-compressed (starts with 42 5A 68)"),
        (lzma.compress(SMALL.encode()), "is xz-compressed"),
    ],
)
def test_byte_order_marks_wide_encodings_and_compression_are_named(tmp_path, raw, message):
    """They all said "invalid character (byte 0)"."""
    path = tmp_path / "in.json"
    path.write_bytes(raw)
    for read, source in ((read_predictions, raw), (read_predictions, path), (read_ground_truth, raw)):
        with pytest.raises(DetectionFileError) as error:
            read(source)
        assert str(error.value).startswith(message) and "byte 0" not in str(error.value)


def test_a_byte_order_mark_is_refused_as_the_reference_evaluator_refuses_it():
    """The evaluator's json.load on a UTF-8 text file: the same decision, so no file passes here and fails there."""
    with pytest.raises(json.JSONDecodeError, match="Unexpected UTF-8 BOM"):
        json.loads((b"\xef\xbb\xbf" + SMALL.encode()).decode("utf-8"))
    assert json.loads(SMALL.encode().decode("utf-8")) == {"results": {"v": [GOOD]}}


GOOD_TEXT = json.dumps(GOOD)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('{"label": "a", "score": NaN, "segment": [1, 2]}', "score must be a finite number, got nan"),
        ('{"label": "a", "score": Infinity, "segment": [1, 2]}', "score must be a finite number, got inf"),
        ('{"label": "a", "score": 0.5, "segment": [-Infinity, 2]}',
         r"segment must be \[start, end\] with two finite numbers, got \[-inf, 2\]"),
        (
            '{"label": "a", "score": 0.5, "segment": [1, 2], "w": NaN}',
            r"'w' \(the --weight-field\) must be a finite number, got nan",
        ),
    ],
)
def test_nan_and_infinity_tokens_name_the_video_and_the_entry(entry, problem):
    weight_field = "w" if '"w"' in entry else None
    first = json.dumps({**GOOD, "w": 0.1}) if weight_field else GOOD_TEXT
    raw = '{"results": {"v0": [], "v1": [' + first + ", " + entry + "]}}"
    assert json.loads(raw)  # Python's json reads them (and writes them: json.dumps(float("nan")) == "NaN")
    with pytest.raises(DetectionFileError, match=rf"^video 'v1', entry 1: {problem}") as error:
        read_predictions(json.loads(raw), weight_field)  # what the rules say of the parsed value
    with pytest.raises(DetectionFileError, match=rf"^video 'v1', entry 1: {problem}; JSON has no NaN or Inf") as error:
        read_predictions(raw.encode(), weight_field)
    why = "a NaN score cannot be ranked, an infinite one ranks nothing, a non-finite time makes no segment"
    assert str(error.value).endswith(why)


def test_nan_in_ground_truth_and_outside_entries():
    truth = b'{"database": {"v": {"subset": "a", "annotations": [{"label": "x", "segment": [NaN, 1]}]}}}'
    with pytest.raises(DetectionFileError, match=r"^video 'v', entry 0: segment must be \[start, end\] with two"):
        read_ground_truth(truth)
    with pytest.raises(DetectionFileError, match=r"^not valid JSON: NaN \(line 1, column 13\): JSON has no NaN"):
        read_predictions(b'{"version": NaN, "results": {}}')
    with pytest.raises(DetectionFileError, match=r"^not valid JSON: -Infinity \(line 2, column 12\): JSON has no NaN"):
        read_predictions(b'{"results": {},\n "extra": -Infinity}')
