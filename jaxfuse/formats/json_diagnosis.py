"""Why bytes that should be ActivityNet JSON do not parse: a byte-order mark, UTF-16/32, compression, NaN or Infinity.

The parser says "invalid character (byte 0)" for all of the first four, and
points at the token for the last; these functions name each case and its
fix. They run only once parsing has failed, so they cost nothing on good
files.

Decisions (issue 16):

* A UTF-8 byte-order mark is refused, named. The ActivityNet evaluator reads
  with ``json.load`` on a text file opened in the default encoding, which
  refuses a leading BOM ("Unexpected UTF-8 BOM"): a file jaxfuse accepted
  would fail there.
* UTF-16 and UTF-32 text (with or without a byte-order mark, told apart by
  the zero bytes of its first characters, as RFC 4627 does) and gzip, bzip2,
  xz, zstd or zip files are named, with the conversion to make.
* ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON, but Python's ``json``
  writes them for non-finite floats and reads them back (the evaluator
  does). jaxfuse refuses them as values: a NaN score cannot be ranked (the
  evaluator's ``argsort()[::-1]`` puts NaN first), an infinite score ranks
  nothing, a non-finite time makes no segment. Where the token is a value of
  an entry, :mod:`jaxfuse.formats.activitynet` names the video and the entry
  (it rereads the file with Python's parser and applies the entry rules);
  elsewhere the message gives its line and column.
"""

from __future__ import annotations

NON_FINITE_NOTE = (
    "JSON has no NaN or Infinity (Python's json writes them for non-finite floats), and jaxfuse refuses them: "
    "a NaN score cannot be ranked, an infinite one ranks nothing, a non-finite time makes no segment"
)

_BYTE_ORDER_MARKS = (  # longest first: the UTF-32 LE mark begins with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)", "UTF-32"),
    (b"\xff\xfe", "UTF-16 (little-endian)", "UTF-16"),
    (b"\xfe\xff", "UTF-16 (big-endian)", "UTF-16"),
)

_COMPRESSED = (
    (b"\x1f\x8b", "gzip", "gunzip FILE"),
    (b"BZh", "bzip2", "bunzip2 FILE"),
    (b"\xfd7zXZ\x00", "xz", "unxz FILE"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd FILE"),
    (b"PK\x03\x04", "zip", "unzip FILE"),
)


def _hex(data: bytes) -> str:
    return " ".join(f"{byte:02X}" for byte in data)


def _wide_text(head: bytes) -> tuple[str, str] | None:
    """UTF-16 or UTF-32 without a byte-order mark, from the zero bytes of the first (ASCII) characters."""
    if len(head) < 4 or head[0] and head[1] and head[2] and head[3]:
        return None
    zeros = tuple(byte == 0 for byte in head[:4])
    return {
        (True, True, True, False): ("UTF-32 (big-endian)", "UTF-32BE"),
        (False, True, True, True): ("UTF-32 (little-endian)", "UTF-32LE"),
        (True, False, True, False): ("UTF-16 (big-endian)", "UTF-16BE"),
        (False, True, False, True): ("UTF-16 (little-endian)", "UTF-16LE"),
    }.get(zeros)


def encoding_problem(raw: bytes) -> str | None:
    """What is wrong with the encoding of ``raw`` (a BOM, UTF-16/32, compression), or None.

    Example:
        >>> encoding_problem(b"\\xef\\xbb\\xbf{}")[:47]
        'starts with a UTF-8 byte-order mark (EF BB BF),'
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        return (
            "starts with a UTF-8 byte-order mark (EF BB BF), which the ActivityNet evaluator's json.load refuses "
            "too; save the file as UTF-8 without it (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' FILE)"
        )
    for mark, name, source in _BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            return (
                f"is {name} text (byte-order mark {_hex(mark)}); JSON files must be UTF-8: convert it, "
                f"e.g. iconv -f {source} -t UTF-8 FILE"
            )
    wide = _wide_text(raw[:4])
    if wide is not None:
        name, source = wide
        return (
            f"is {name} text (zero bytes between its characters); JSON files must be UTF-8: convert it, "
            f"e.g. iconv -f {source} -t UTF-8 FILE"
        )
    for magic, name, command in _COMPRESSED:
        if raw.startswith(magic):
            return f"is {name}-compressed (starts with {_hex(magic)}); decompress it first ({command})"
    return None


def non_finite_token(raw: bytes, offset: int) -> str | None:
    """``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` if the parser stopped at one (``offset``), else None.

    Example:
        >>> non_finite_token(b"[1, -Infinity]", 5)
        '-Infinity'
    """
    for token in ("NaN", "Infinity"):
        if raw.startswith(token.encode(), offset):
            negative = token == "Infinity" and offset > 0 and raw[offset - 1 : offset] == b"-"
            return "-" + token if negative else token
    return None
