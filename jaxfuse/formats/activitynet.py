"""ActivityNet-format JSON: read, check and write detection ("results") and ground-truth ("database") files.

Detections (what models write, what ``jaxfuse fuse`` reads and writes)::

    {"version": ..., "results": {video_id: [{"label": ..., "score": ...,
                                             "segment": [start, end]}, ...]},
     "external_data": ...}

Ground truth (``activity_net.v1-3.min.json``, THUMOS14 converted to it)::

    {"database": {video_id: {"subset": ..., "annotations": [{"label": ...,
                                                              "segment": [start, end]}, ...]}}}

One set of rules for both, whether the JSON comes as a file, as bytes or as
already parsed Python objects: a label is a string or an integer (not a bool;
``1`` and ``"1"`` are two labels, as they are two JSON values); a score and
each end of a segment is a finite number (not a bool, not a string); a
segment is ``[start, end]`` with ``start <= end``. A broken rule raises
:class:`DetectionFileError` naming the video and the entry (counted from 0).

Files are parsed with msgspec: typed decoding checks the entries while it
parses (3 to 5 times faster than ``json`` with a separate check), and its
zero-copy ``Raw`` values give each video's byte span, which is how a repeated
key is found: JSON parsers keep the last of two equal keys and drop the other
silently (a repeated video id, or a second ``"results"``, would lose
detections), so the bytes between consecutive kept values must hold exactly
one key each. Numbers are read as float64 and written back as the shortest
decimal that reads back as the same float64, so a value that passes through
unchanged is written exactly as it was read.

Functions for other tools (the evaluator): :func:`read_predictions`,
:func:`read_ground_truth` (a path, bytes or a parsed dict), and
:func:`encode_results`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import math
import numbers
import operator
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import msgspec
import numpy as np

from jaxfuse.formats.json_diagnosis import NON_FINITE_NOTE, encoding_problem, non_finite_token


@contextlib.contextmanager
def garbage_collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while files are parsed and coded.

    Parsed JSON holds no cycles, but its hundreds of thousands of new objects
    make the collector traverse them again and again: parsing a 5,000 x 1,000
    detection file took 29 s instead of 8 s with it on, and reading and coding
    a 200,000-prediction file for evaluation 1.56 s instead of 0.63 s.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

RESULTS = "results"
DATABASE = "database"

MAX_MAGNITUDE = 1e300
"""The largest magnitude of a score, weight or time: beyond it, segment lengths, overlaps and
softmax sums overflow even float64 (``1.7e308 - (-1.7e308)`` is inf)."""


class DetectionFileError(ValueError):
    """A malformed ActivityNet-format file; the message names the video and the entry (counted from 0)."""


class SubsetNotFoundError(DetectionFileError):
    """No ground-truth video has the subset asked for; ``reason`` is the message without the argument's name."""

    def __init__(self, reason: str):
        super().__init__(f"`subset`: {reason}")
        self.reason = reason


class DetectionTable(NamedTuple):
    """The detections of a results file as flat arrays, in file order.

    Attributes:
        video_ids: the video ids, in file order.
        counts: ``[V]`` int64, the number of detections of each video.
        labels: the distinct labels, in order of first appearance.
        label_codes: ``[P]`` int64, each detection's index into ``labels``.
        scores: ``[P]`` float64.
        segments: ``[P, 2]`` float64 (start, end), ``start <= end``.
        weights: ``[P]`` float64 softmax logits (the ``weight_field``), or None.
    """

    video_ids: list
    counts: np.ndarray
    labels: list
    label_codes: np.ndarray
    scores: np.ndarray
    segments: np.ndarray
    weights: np.ndarray | None


class GroundTruthTable(NamedTuple):
    """The annotations of a ground-truth file as flat arrays, in file order.

    Attributes:
        video_ids: the ids of the videos kept (all, or those of the subset asked for).
        counts: ``[V]`` int64, the number of annotations of each video.
        labels: the distinct labels, in order of first appearance.
        label_codes: ``[G]`` int64, each annotation's index into ``labels``.
        segments: ``[G, 2]`` float64 (start, end), ``start <= end``.
        subsets: each kept video's ``"subset"`` (None where absent).
    """

    video_ids: list
    counts: np.ndarray
    labels: list
    label_codes: np.ndarray
    segments: np.ndarray
    subsets: list


# ---------------------------------------------------------------------- the rules


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    """A finite real number (numpy scalars too); bool is not one, though Python treats it as an int."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _is_label(value: Any) -> bool:
    return isinstance(value, (str, numbers.Integral)) and not isinstance(value, (bool, np.bool_))


def entry_problem(entry: Any, *, score: bool = True, weight_field: str | None = None) -> str | None:
    """What is wrong with one detection (``score=True``) or annotation entry, or None.

    This is the definition of a valid entry; the bulk checks below accept
    exactly the same entries, faster, and fall back to this to word the error.
    """
    fields = ("label", "score", "segment") if score else ("label", "segment")
    if not isinstance(entry, Mapping):
        return f"expected an object with {', '.join(map(repr, fields[:-1]))} and {fields[-1]!r}, got {_short(entry)}"
    required = fields + (() if weight_field is None else (weight_field,))
    missing = [name for name in required if name not in entry]
    if missing:
        what = " and ".join(repr(name) for name in missing)
        hint = " (the --weight-field)" if weight_field in missing else ""
        return f"missing {what}{hint}"
    if not _is_label(entry["label"]):
        return f"label must be a string or an integer, got {_short(entry['label'])}"
    if score and not _is_number(entry["score"]):
        return f"score must be a finite number, got {_short(entry['score'])}"
    segment = entry["segment"]
    if not isinstance(segment, (list, tuple)) or len(segment) != 2 or not all(_is_number(x) for x in segment):
        return f"segment must be [start, end] with two finite numbers, got {_short(segment)}"
    if segment[0] > segment[1]:
        return f"segment must be [start, end] with start <= end, got {_short(segment)}"
    if weight_field is not None and not _is_number(entry[weight_field]):
        return f"{weight_field!r} (the --weight-field) must be a finite number, got {_short(entry[weight_field])}"
    values = [("score", entry["score"], entry["score"])] if score else []
    values.append(("segment", max(abs(segment[0]), abs(segment[1])), segment))
    if weight_field is not None:
        values.append((repr(weight_field), entry[weight_field], entry[weight_field]))
    for name, value, shown in values:
        if abs(float(value)) > MAX_MAGNITUDE:
            return f"{name} must be within +-{MAX_MAGNITUDE:g} (beyond, lengths and overlaps overflow), got {_short(shown)}"
    return None


def _raise_first_problem(videos: Mapping, entries_of, *, score: bool, weight_field: str | None, what: str) -> None:
    """Check every entry in file order and raise for the first bad one (off the fast path).

    Returns normally when every entry is fine: the bulk checks only accept
    exactly what JSON produces, so dicts built in Python with, e.g., numpy
    scalars land here and pass.
    """
    for video, value in videos.items():
        entries = entries_of(video, value)
        if not isinstance(entries, (list, tuple)):
            raise DetectionFileError(f"video {video!r}: expected a list of {what}, got {_short(entries)}")
        for index, entry in enumerate(entries):
            problem = entry_problem(entry, score=score, weight_field=weight_field)
            if problem is not None:
                raise DetectionFileError(f"video {video!r}, entry {index}: {problem}")


def _section(data: Any, key: str) -> Mapping:
    if key == RESULTS:
        shape = "an object with a 'results' object mapping each video id to a list of {'label', 'score', 'segment'} entries"
    else:
        shape = "an object with a 'database' object mapping each video id to {'annotations': [{'label', 'segment'}, ...]}"
    if not isinstance(data, Mapping) or not isinstance(data.get(key), Mapping):
        raise DetectionFileError(f"expected ActivityNet {'detection' if key == RESULTS else 'ground-truth'} JSON: {shape}")
    return data[key]


def results_of(data: Any) -> Mapping:
    """The ``"results"`` object of parsed ActivityNet detection JSON.

    Raises:
        DetectionFileError: ``data`` is not an object with a ``"results"`` object.
    """
    return _section(data, RESULTS)


class _Columns(NamedTuple):
    labels: list
    scores: list
    segments: list
    weights: list


def _table_from_columns(video_ids, counts, columns: _Columns, weight_field, first_problem) -> DetectionTable:
    """Arrays from the gathered columns; ``first_problem()`` raises for the first bad entry."""
    total = len(columns.segments)
    numbers_ = {int, float}
    well_typed = (
        set(map(type, columns.labels)) <= {str, int}
        and set(map(type, columns.scores)) <= numbers_
        and set(map(type, columns.segments)) <= {list, tuple}
        and set(map(len, columns.segments)) <= {2}
        and set(map(type, itertools.chain.from_iterable(columns.segments))) <= numbers_
        and set(map(type, columns.weights)) <= numbers_
    )
    if not well_typed:
        first_problem()
    try:
        scores = np.fromiter(columns.scores, np.float64, len(columns.scores))
        segments = np.fromiter(itertools.chain.from_iterable(columns.segments), np.float64, 2 * total).reshape(total, 2)
        weights = None if weight_field is None else np.fromiter(columns.weights, np.float64, total)
    except (OverflowError, ValueError, TypeError):  # an integer beyond the float range, or an odd Python object
        first_problem()
        raise  # pragma: no cover - the walk names what failed here
    with np.errstate(invalid="ignore"):
        in_range = lambda x: np.abs(x) <= MAX_MAGNITUDE  # noqa: E731 - False for NaN too
        bad = ~in_range(segments).all(axis=1) | (segments[:, 0] > segments[:, 1])
        if scores.size:
            bad |= ~in_range(scores)
        if weights is not None:
            bad |= ~in_range(weights)
    if bad.any():
        first_problem()
    label_index: dict = {}
    # Dense label codes in order of first appearance. The type is part of the key: 1 and "1" differ
    # (and True == 1 in Python, but bools are rejected above).
    codes = np.fromiter((label_index.setdefault(label, len(label_index)) for label in columns.labels), np.int64, total)
    return DetectionTable(
        video_ids=list(video_ids),
        counts=np.asarray(counts, np.int64).reshape(-1),
        labels=list(label_index),
        label_codes=codes,
        scores=scores if scores.size == total else np.zeros(total),
        segments=segments,
        weights=weights,
    )


# ---------------------------------------------------------------------- parsed Python objects


def _dict_table(videos: Mapping, entries_of, *, score: bool, weight_field: str | None, what: str) -> DetectionTable:
    """The table of parsed entries: ``entries_of(video, value)`` is a video's list of entries."""

    def first_problem():
        _raise_first_problem(videos, entries_of, score=score, weight_field=weight_field, what=what)

    columns = _Columns([], [], [], [])
    counts = np.zeros(len(videos), np.int64)
    try:
        for index, (video, value) in enumerate(videos.items()):
            entries = entries_of(video, value)
            if not isinstance(entries, (list, tuple)):
                raise TypeError
            columns.labels.extend([entry["label"] for entry in entries])
            if score:
                columns.scores.extend([entry["score"] for entry in entries])
            columns.segments.extend([entry["segment"] for entry in entries])
            if weight_field is not None:
                columns.weights.extend([entry[weight_field] for entry in entries])
            counts[index] = len(entries)
    except (KeyError, TypeError, IndexError):
        first_problem()
        raise  # pragma: no cover - the walk above finds what failed here
    return _table_from_columns(videos.keys(), counts, columns, weight_field, first_problem)


def detection_table(data: Any, weight_field: str | None = None) -> DetectionTable:
    """Check parsed ActivityNet detection JSON and turn it into flat arrays.

    The common case is checked in bulk (per-column type sets and vectorised
    value checks); only when something is wrong is the data walked entry by
    entry, to name the first bad one.

    Args:
        data: the parsed JSON (``{"results": {video_id: [entry, ...]}, ...}``).
        weight_field: an entry field to use as softmax weights, or None.

    Returns:
        A :class:`DetectionTable`.

    Raises:
        DetectionFileError: naming the video and the entry (counted from 0).
    """
    return _dict_table(results_of(data), lambda video, entries: entries, score=True, weight_field=weight_field, what="detections")


def _require_subset_found(subset: str | None, kept: Mapping, subsets: list) -> None:
    """A subset that selects no video is a misspelling (``"test"`` for ``"Test"``), not an empty evaluation."""
    if subset is not None and not kept:
        found = ", ".join(sorted({repr(name) for name in subsets if name is not None})) or "none"
        raise SubsetNotFoundError(f"no video has subset {subset!r} (subsets in the file: {found})")


def ground_truth_table(data: Any, subset: str | None = None) -> GroundTruthTable:
    """Check parsed ActivityNet ground-truth JSON and turn it into flat arrays.

    Args:
        data: the parsed JSON (``{"database": {video_id: {"annotations": [...], "subset": ...}}}``).
        subset: keep only the videos whose ``"subset"`` equals this (e.g.
            ``"validation"``); None keeps all. Only the kept videos' annotations
            are checked, as the reference evaluator only reads those.

    Returns:
        A :class:`GroundTruthTable`.

    Raises:
        DetectionFileError: naming the video and the annotation (counted from 0);
            no video has ``subset`` (the message lists the subsets there are).
    """
    database = _section(data, DATABASE)
    for video, value in database.items():
        if not isinstance(value, Mapping) or not isinstance(value.get("annotations"), (list, tuple)):
            raise DetectionFileError(
                f"video {video!r}: expected an object with an 'annotations' list, got {_short(value)}"
            )
    kept = {video: value for video, value in database.items() if subset is None or value.get("subset") == subset}
    _require_subset_found(subset, kept, [value.get("subset") for value in database.values()])
    table = _dict_table(kept, lambda video, value: value["annotations"], score=False, weight_field=None, what="annotations")
    return GroundTruthTable(
        video_ids=table.video_ids,
        counts=table.counts,
        labels=table.labels,
        label_codes=table.label_codes,
        segments=table.segments,
        subsets=[value.get("subset") for value in kept.values()],
    )


# ---------------------------------------------------------------------- files and bytes


_WHITESPACE = rb"[ \t\n\r]*"
_STRING = rb'"(?:[^"\\]|\\.)*"'
_FIRST_KEY = re.compile(_WHITESPACE + rb"\{" + _WHITESPACE + _STRING + _WHITESPACE + rb":" + _WHITESPACE, re.DOTALL)
_NEXT_KEY = re.compile(_WHITESPACE + rb"," + _WHITESPACE + _STRING + _WHITESPACE + rb":" + _WHITESPACE, re.DOTALL)
_OBJECT_OF_RAW = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _address(buffer) -> int:
    return np.frombuffer(buffer, np.uint8).ctypes.data


class _NotAnObject(DetectionFileError):
    """A value that had to be a JSON object is not one."""


def _object_of_raw(raw, where: str) -> dict[str, msgspec.Raw]:
    """Decode one JSON object into ``{key: Raw value}``, rejecting a repeated key.

    The values are zero-copy views into ``raw``; the bytes between two
    consecutive values (by position) must be exactly ``, "key":``. A dropped
    duplicate leaves a whole ``"key": value`` pair there instead.
    """
    try:
        values = _OBJECT_OF_RAW.decode(raw)
    except msgspec.ValidationError:
        raise _NotAnObject(f"{where} must be a JSON object") from None
    base = _address(raw)
    spans = sorted((_address(value) - base, len(memoryview(value))) for value in values.values())
    text = memoryview(raw)
    position = 0
    for index, (start, length) in enumerate(spans):
        gap = bytes(text[position:start])
        if not (_FIRST_KEY if index == 0 else _NEXT_KEY).fullmatch(gap):
            raise DetectionFileError(f"{where} holds the key {_repeated_key(gap)!r} more than once (the second would silently replace the first)")
        position = start + length
    return values


def _repeated_key(gap: bytes) -> str:
    """The first key in the bytes between two kept values: a pair whose key was later repeated."""
    body = gap.lstrip(b" \t\n\r{,")
    pairs = json.loads(b"{" + body + b"null}", object_pairs_hook=list)
    return pairs[0][0]


def _line_and_column(raw: bytes, message: str) -> str:
    found = re.search(r"\(byte (\d+)\)", message)
    if found is None:
        return ""
    offset = int(found.group(1))
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return f" (line {line}, column {column})"


class _NonFiniteToken(DetectionFileError):
    """The parser stopped at NaN or Infinity: rereading with Python's parser can name the entry."""


def _invalid_json(raw: bytes, error: msgspec.DecodeError) -> DetectionFileError:
    """The error for bytes that do not parse, naming the cause where it is known (see ``json_diagnosis``)."""
    message = str(error)
    problem = encoding_problem(raw)
    if problem is not None:
        return DetectionFileError(problem)
    found = re.search(r"\(byte (\d+)\)", message)
    token = None if found is None else non_finite_token(raw, int(found.group(1)))
    if token is not None:
        return _NonFiniteToken(f"not valid JSON: {token}{_line_and_column(raw, message)}: {NON_FINITE_NOTE}")
    return DetectionFileError(f"not valid JSON: {error}{_line_and_column(raw, message)}")


def _name_the_non_finite_entry(raw: bytes, check) -> None:
    """Python's parser reads NaN and Infinity: ``check`` (the entry rules) on its result names the video and entry.

    Returns normally when the token is not in an entry (or the file has other
    faults Python's parser stops at): the caller raises the token's own error.
    """
    try:
        with garbage_collector_paused():
            data = json.loads(raw)
    except (ValueError, RecursionError):
        return
    try:
        check(data)
    except DetectionFileError as error:
        raise DetectionFileError(f"{error}; {NON_FINITE_NOTE}") from None


def _read_bytes(source: Any) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    with open(source, "rb") as handle:
        return handle.read()


def _parse_sections(raw: bytes, key: str) -> tuple[dict[str, msgspec.Raw], dict[str, msgspec.Raw]]:
    """The top-level object (values raw) and its ``key`` object (values raw), duplicate-checked."""
    try:
        top = _object_of_raw(raw, "the top-level object")
    except _NotAnObject:
        _section(None, key)  # raises, describing the expected shape
    except msgspec.DecodeError as error:
        raise _invalid_json(raw, error) from None
    except RecursionError:
        raise DetectionFileError("not valid JSON: nested too deeply") from None
    if key not in top:
        _section({}, key)  # raises, describing the expected shape
    try:
        section = _object_of_raw(top[key], repr(key))
    except _NotAnObject:
        _section({key: None}, key)  # raises, describing the expected shape
    return top, section


ENTRY_FIELDS = ("label", "score", "segment")


def _weight_attribute(weight_field: str | None) -> str | None:
    """The decoded entry's attribute holding the weights: an entry field of its own (``score`` may be the
    weight field; ``label`` or ``segment`` then fail the number rule), else a separate ``weight``."""
    if weight_field is None:
        return None
    return weight_field if weight_field in ENTRY_FIELDS else "weight"


@functools.lru_cache(maxsize=8)
def _entries_decoder(weight_field: str | None, score: bool) -> msgspec.json.Decoder:
    fields: list = [("label", str | int)]
    if score:
        fields.append(("score", float))
    fields.append(("segment", tuple[float, float]))
    if _weight_attribute(weight_field) == "weight":  # two struct fields may not read one JSON key
        fields.append(("weight", float, msgspec.field(name=weight_field)))
    entry = msgspec.defstruct("Entry", fields)
    return msgspec.json.Decoder(list[entry])


def _decode_entries(video: str, raw: msgspec.Raw, decoder, *, score: bool, weight_field: str | None, what: str):
    """The typed entries of one video; on a type error, the rules name the first bad entry."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        entries = json.loads(bytes(raw))  # Python's parser keeps what msgspec refuses to hold (huge integers)
        _raise_first_problem({video: entries}, lambda v, e: e, score=score, weight_field=weight_field, what=what)
        raise DetectionFileError(f"video {video!r}: {error}") from None  # pragma: no cover - the rules word every case
    except RecursionError:
        raise DetectionFileError(f"video {video!r}: nested too deeply") from None


def _as_dict(entry, weight_field: str | None) -> dict:
    """A decoded entry as the dict the rules read (to word a value error)."""
    out = {"label": entry.label, "segment": list(entry.segment)}
    if hasattr(entry, "score"):
        out["score"] = entry.score
    if _weight_attribute(weight_field) == "weight":
        out[weight_field] = entry.weight
    return out


def _typed_table(video_entries: dict[str, list], weight_field: str | None, *, score: bool) -> DetectionTable:
    columns = _Columns([], [], [], [])
    weight_of = operator.attrgetter(_weight_attribute(weight_field) or "label")
    counts = np.zeros(len(video_entries), np.int64)
    for index, entries in enumerate(video_entries.values()):
        columns.labels.extend([entry.label for entry in entries])
        if score:
            columns.scores.extend([entry.score for entry in entries])
        columns.segments.extend([entry.segment for entry in entries])
        if weight_field is not None:
            columns.weights.extend(map(weight_of, entries))
        counts[index] = len(entries)

    def first_problem():
        flat = [(video, index, entry) for video, entries in video_entries.items() for index, entry in enumerate(entries)]
        for video, index, entry in flat:
            problem = entry_problem(_as_dict(entry, weight_field), score=score, weight_field=weight_field)
            if problem is not None:
                raise DetectionFileError(f"video {video!r}, entry {index}: {problem}")

    return _table_from_columns(video_entries.keys(), counts, columns, weight_field, first_problem)


class PredictionFile(NamedTuple):
    """A detection file as read: its table and its other top-level values (raw JSON, order kept).

    Attributes:
        table: the :class:`DetectionTable`.
        top_level: ``{key: msgspec.Raw or None}`` in file order; ``"results"`` maps to None.
    """

    table: DetectionTable
    top_level: dict


def read_predictions(source: Any, weight_field: str | None = None) -> PredictionFile:
    """Read and check ActivityNet detections from a path, bytes or a parsed dict.

    Args:
        source: a path (``str`` or ``os.PathLike``), the file's bytes, or the
            parsed JSON (a dict: checked by the same rules).
        weight_field: an entry field to read as softmax weights, or None.

    Returns:
        A :class:`PredictionFile`.

    Raises:
        DetectionFileError: invalid JSON, a repeated key, a malformed entry
            (naming the video and the entry, counted from 0).
        OSError: the file cannot be read.

    Example:
        >>> table = read_predictions(b'{"results": {"v": [{"label": "a", "score": 0.5, "segment": [1, 2]}]}}').table
        >>> table.video_ids, table.segments.tolist()
        (['v'], [[1.0, 2.0]])
    """
    if isinstance(source, Mapping):
        top = {key: None if key == RESULTS else value for key, value in source.items()}
        return PredictionFile(detection_table(source, weight_field), top)
    raw = _read_bytes(source)
    try:
        top, results = _parse_sections(raw, RESULTS)
    except _NonFiniteToken:
        _name_the_non_finite_entry(raw, lambda data: detection_table(data, weight_field))
        raise
    decoder = _entries_decoder(weight_field, True)
    video_entries = {
        video: _decode_entries(video, raw, decoder, score=True, weight_field=weight_field, what="detections")
        for video, raw in results.items()
    }
    top[RESULTS] = None
    return PredictionFile(_typed_table(video_entries, weight_field, score=True), top)


class _GroundTruthVideo(msgspec.Struct):
    annotations: msgspec.Raw
    subset: Any = None


def read_ground_truth(source: Any, subset: str | None = None) -> GroundTruthTable:
    """Read and check ActivityNet ground truth from a path, bytes or a parsed dict.

    Args:
        source: a path, the file's bytes, or the parsed JSON (a dict).
        subset: keep only videos whose ``"subset"`` equals this; None keeps all.
            Only the kept videos' annotations are checked.

    Returns:
        A :class:`GroundTruthTable`.

    Raises:
        DetectionFileError: invalid JSON, a repeated key, a malformed
            annotation (naming the video and the annotation, counted from 0),
            no video with ``subset`` (naming the subsets there are).
        OSError: the file cannot be read.
    """
    if isinstance(source, Mapping):
        return ground_truth_table(source, subset)
    raw = _read_bytes(source)
    try:
        _, database = _parse_sections(raw, DATABASE)
    except _NonFiniteToken:
        _name_the_non_finite_entry(raw, lambda data: ground_truth_table(data, subset))
        raise
    video_decoder = msgspec.json.Decoder(_GroundTruthVideo)
    decoder = _entries_decoder(None, False)
    videos = {}
    for video, raw in database.items():
        try:
            videos[video] = video_decoder.decode(raw)
        except msgspec.ValidationError:
            raise DetectionFileError(
                f"video {video!r}: expected an object with an 'annotations' list, got {_short(msgspec.json.decode(raw))}"
            ) from None
    kept = {video: value for video, value in videos.items() if subset is None or value.subset == subset}
    _require_subset_found(subset, kept, [value.subset for value in videos.values()])
    entries = {
        video: _decode_entries(video, value.annotations, decoder, score=False, weight_field=None, what="annotations")
        for video, value in kept.items()
    }
    table = _typed_table(entries, None, score=False)
    return GroundTruthTable(
        video_ids=table.video_ids,
        counts=table.counts,
        labels=table.labels,
        label_codes=table.label_codes,
        segments=table.segments,
        subsets=[value.subset for value in kept.values()],
    )


# ---------------------------------------------------------------------- writing


def encode_results(
    top_level: Mapping,
    video_ids: list,
    counts: np.ndarray,
    labels: list,
    label_codes: np.ndarray,
    scores: np.ndarray,
    segments: np.ndarray,
) -> bytes:
    """ActivityNet detection JSON: ``top_level`` with ``"results"`` filled from the arrays.

    Args:
        top_level: the document's top-level keys in order; values are parsed
            JSON or ``msgspec.Raw`` (written verbatim); ``"results"``'s is replaced.
        video_ids: one per video, in output order.
        counts: ``[V]`` detections of each video (consecutive in the arrays).
        labels: the label of each code.
        label_codes: ``[F]`` codes into ``labels``.
        scores: ``[F]`` float64.
        segments: ``[F, 2]`` float64.

    Returns:
        UTF-8 JSON (compact, a trailing newline); numbers are the shortest
        decimals that read back as the same float64.
    """
    entries = [
        {"label": label, "score": score, "segment": segment}
        for label, score, segment in zip(
            [labels[code] for code in np.asarray(label_codes).tolist()],
            np.asarray(scores, np.float64).tolist(),
            np.asarray(segments, np.float64).reshape(-1, 2).tolist(),
        )
    ]
    ends = np.cumsum(np.asarray(counts, np.int64)).tolist()
    results = {video: entries[first:last] for video, first, last in zip(video_ids, [0] + ends[:-1], ends)}
    document = {key: results if key == RESULTS else value for key, value in top_level.items()}
    if RESULTS not in document:
        document[RESULTS] = results
    return msgspec.json.encode(document) + b"\n"


def source_name(source: Any) -> str:
    """How to name ``source`` in a message: its path, or what it is."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else "<data>"
