"""The executable store's files: one self-describing entry per program, checked before use, bounded in size.

An entry (``<sha256 of its key>.bin``) is, in a layout parsed here and
nowhere unpickled by jaxfuse::

    b"JAXFUSE-EXECUTABLE\\n"                 magic
    4 bytes, big-endian                      length of the header
    header, UTF-8 JSON                       {"format", "key", "payload_sha256",
                                              "payload_bytes", "out_tree"}
    payload                                  jax.experimental.serialize_executable's bytes

The header repeats the entry's full key, so an entry copied or renamed under
another key's name is recognised and never used; the payload's SHA-256
catches a damaged file (a bit flip, a truncated write) before any byte of it
is deserialized. ``out_tree`` describes the result's tree in JSON (tuples,
lists, dicts with string keys, None and named tuples, the last found among
classes already imported, never by importing); the argument tree is rebuilt
from the call itself. A digest is no signature: anyone who can write the
entry can write a matching one, which is why the directory must be the
user's alone (:mod:`jaxfuse._runtime.private_files`).

The store is bounded: after each write, entries beyond
``$JAXFUSE_EXECUTABLE_STORE_MAX_BYTES`` (default :data:`DEFAULT_MAX_BYTES`;
``0`` turns the store off) are deleted least recently used first, by
modification time, which each load renews. Temporary files that a killed
writer left (older than :data:`STALE_TEMPORARY_SECONDS`) are deleted when a
process first opens the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax

from jaxfuse._runtime.private_files import (
    TEMPORARY_SUFFIX,
    read_private_file,
    write_private_file,
)

MAGIC = b"JAXFUSE-EXECUTABLE\n"
FORMAT = 2
"""Layout version; bumped when the layout changes (1: a pickle of jax's serialization, without key or digest)."""

ENVIRONMENT_VARIABLE = "JAXFUSE_EXECUTABLE_STORE_MAX_BYTES"
DEFAULT_MAX_BYTES = 512 * 2**20
"""A grouping + fusion program's entry is about 0.7 MB, so this holds hundreds of shapes and versions."""

STALE_TEMPORARY_SECONDS = 600.0
"""A write takes well under a second; a temporary file this old belongs to a writer that was killed."""

ENTRY_SUFFIX = ".bin"
_MAX_HEADER_BYTES = 1 << 20


class EntryError(ValueError):
    """A file that is not a usable entry for the key asked for: foreign, damaged, or of another format."""


class Entry(NamedTuple):
    """A checked entry: the serialized executable and the description of its result tree."""

    payload: bytes
    out_tree: Any


def max_bytes() -> int:
    """The store's size cap from ``$JAXFUSE_EXECUTABLE_STORE_MAX_BYTES`` (bytes; 0 turns the store off).

    Raises:
        ValueError: the variable is set to something other than a non-negative integer.
    """
    setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not setting:
        return DEFAULT_MAX_BYTES
    try:
        value = int(setting)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be a number of bytes (0 turns the store off), got {setting!r}")
    return value


# ----------------------------------------------------------------- the layout


def encode_entry(key: str, payload: bytes, out_tree: Any) -> bytes:
    """An entry's bytes for ``key``: magic, header (key, payload digest, ``out_tree`` description), payload."""
    header = json.dumps({"format": FORMAT, "key": key, "payload_sha256": hashlib.sha256(payload).hexdigest(),
                         "payload_bytes": len(payload), "out_tree": out_tree}).encode()
    return MAGIC + len(header).to_bytes(4, "big") + header + payload


def decode_entry(data: bytes, key: str) -> Entry:
    """The entry in ``data``, checked against ``key`` and its digest.

    Raises:
        EntryError: another format, another key, a damaged header or payload.
    """
    if not data.startswith(MAGIC):
        raise EntryError("not an entry of this layout")
    start = len(MAGIC) + 4
    size = int.from_bytes(data[len(MAGIC):start], "big")
    if size > _MAX_HEADER_BYTES or start + size > len(data):
        raise EntryError("damaged header")
    try:
        header = json.loads(data[start:start + size])
        stored_format, stored_key = header["format"], header["key"]
        digest, payload_bytes = header["payload_sha256"], header["payload_bytes"]
        out_tree = header["out_tree"]
    except (ValueError, KeyError, TypeError) as error:
        raise EntryError(f"damaged header ({error})") from None
    if stored_format != FORMAT:
        raise EntryError(f"format {stored_format!r}, not {FORMAT}")
    if stored_key != key:
        raise EntryError("stored under another program's name")
    payload = data[start + size:]
    if len(payload) != payload_bytes or hashlib.sha256(payload).hexdigest() != digest:
        raise EntryError("payload does not match its digest")
    return Entry(payload, out_tree)


# ------------------------------------------------------------- result trees


def describe_tree(treedef) -> Any:
    """A JSON description of ``treedef``, or None when it holds a node :func:`rebuild_tree` cannot rebuild."""
    description = _describe(treedef)
    try:
        same = description is not None and _rebuild(description) == treedef
    except (TypeError, ValueError):  # a named tuple that cannot be rebuilt from its fields alone
        same = False
    return description if same else None


def _describe(treedef) -> Any:
    node = treedef.node_data()
    if node is None:
        return "*"
    kind, data = node
    children = [_describe(child) for child in treedef.children()]
    if any(child is None for child in children):
        return None
    if kind is type(None):
        return ["none"]
    if kind is tuple:
        return ["tuple", children]
    if kind is list:
        return ["list", children]
    if kind is dict and all(isinstance(key, str) for key in data):
        return ["dict", list(data), children]
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields") and "<" not in kind.__qualname__:
        return ["namedtuple", f"{kind.__module__}:{kind.__qualname__}", children]
    return None


def _loaded_named_tuple(name: str) -> type:
    """The named tuple class ``module:qualname``, from modules already imported (nothing is imported here)."""
    module_name, _, qualified_name = name.partition(":")
    found: Any = sys.modules.get(module_name)
    for part in qualified_name.split("."):
        found = getattr(found, part, None)
    if not (isinstance(found, type) and issubclass(found, tuple) and hasattr(found, "_fields")):
        raise EntryError(f"result type {name!r} is not a loaded named tuple")
    return found


def _example(description: Any) -> Any:
    """A pytree of zeros shaped as ``description``."""
    if description == "*":
        return 0
    if not isinstance(description, list) or not description:
        raise EntryError("damaged result tree")
    kind, *rest = description
    if kind == "none":
        return None
    if kind in ("tuple", "list"):
        children = [_example(child) for child in rest[0]]
        return tuple(children) if kind == "tuple" else children
    if kind == "dict":
        return {key: _example(child) for key, child in zip(rest[0], rest[1], strict=True)}
    if kind == "namedtuple":
        return _loaded_named_tuple(rest[0])(*(_example(child) for child in rest[1]))
    raise EntryError(f"unknown result tree node {kind!r}")


def _rebuild(description: Any):
    return jax.tree_util.tree_structure(_example(description))


def rebuild_tree(description: Any):
    """The ``PyTreeDef`` that :func:`describe_tree` described.

    Raises:
        EntryError: the description is damaged or names a class not loaded.
    """
    try:
        return _rebuild(description)
    except (TypeError, ValueError) as error:
        raise EntryError(f"damaged result tree ({error})") from None


# -------------------------------------------------------------- the directory


class StoreDirectory:
    """The store's directory: read, write and forget entries, keep it under its size cap.

    Callers check the directory with :func:`jaxfuse._runtime.private_files.directory_problem` first.
    """

    def __init__(self, path: Path):
        self.path = path
        self._opened = False

    def entry_path(self, key: str) -> Path:
        """Where the entry for ``key`` lives: its name is the key's SHA-256."""
        return self.path / (hashlib.sha256(key.encode()).hexdigest() + ENTRY_SUFFIX)

    def read(self, key: str) -> Entry | None:
        """The checked entry for ``key`` (its use recorded for eviction), or None when there is none.

        Raises:
            EntryError: what is there is not a usable entry for ``key``.
            OSError: it cannot be read, or is not the user's private regular file.
        """
        self._open()
        data = read_private_file(self.entry_path(key), touch=True)
        return None if data is None else decode_entry(data, key)

    def write(self, key: str, payload: bytes, out_tree: Any, cap: int) -> None:
        """Store an entry for ``key``, then evict least recently used entries beyond ``cap`` bytes.

        Raises:
            OSError: it cannot be written (a full disk); nothing is left behind.
        """
        self._open()
        data = encode_entry(key, payload, out_tree)
        if len(data) > cap:
            return  # it could not stay: writing it would only evict the others
        path = self.entry_path(key)
        write_private_file(path, data)
        self.evict(cap, keep=path)

    def forget(self, key: str) -> None:
        """Delete whatever is at ``key``'s entry path (a link or FIFO is removed, never followed)."""
        try:
            os.unlink(self.entry_path(key))
        except OSError:
            pass

    def _scan(self) -> list[tuple[float, int, Path]]:
        """(modification time, size, path) of the regular files in the store."""
        found = []
        try:
            names = os.listdir(self.path)
        except OSError:
            return found
        for name in names:
            path = self.path / name
            try:
                status = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(status.st_mode):
                found.append((status.st_mtime, status.st_size, path))
        return found

    def evict(self, cap: int, keep: Path | None = None) -> None:
        """Delete entries, least recently used first, until they take at most ``cap`` bytes (``keep`` last)."""
        entries = [e for e in self._scan() if e[2].name.endswith(ENTRY_SUFFIX)]
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda e: (e[2] == keep, e[0])):
            if total <= cap:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # evicted by another process meanwhile
            except OSError:
                continue
            total -= size

    def _open(self) -> None:
        """Once per process: delete the temporary files of writers killed mid-write."""
        if self._opened:
            return
        self._opened = True
        now = time.time()
        for modified, _, path in self._scan():
            # Any temporary name: also those of earlier jaxfuse versions ("<entry>XXXX.tmp").
            if path.name.endswith(TEMPORARY_SUFFIX) and now - modified > STALE_TEMPORARY_SECONDS:
                try:
                    os.unlink(path)
                except OSError:
                    pass
