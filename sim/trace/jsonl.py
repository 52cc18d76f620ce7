"""A trace file as lines: a gzip stream of UTF-8 lines, each at most MAX_LINE_BYTES, each strict JSON (no NaN or
Infinity, no key twice in an object), every problem a `TraceError` naming the file and the line
(sim/trace/FORMAT.md, "Error policy")."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from sim.inputs import InputError, open_regular
from sim.trace.limits import MAX_LINE_BYTES
from sim.trace.records import PathLike, TraceError
from sim.trace.schema import show


def _open(path: PathLike) -> BinaryIO:
    """The trace file, opened if it is a regular file (`sim.inputs.open_regular`: a pipe, a socket or a device is
    refused unread); TraceError otherwise."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise TraceError(path, None, None, "no such file") from None
    except InputError as e:
        raise TraceError(path, None, None, e.problem) from None


def check_gzip(path: PathLike) -> None:
    """Raise TraceError if `path` cannot be opened, is not a regular file or is not gzip."""
    try:
        with _open(path) as f:
            magic = f.read(2)
    except OSError as e:
        raise TraceError(path, None, None, f"cannot open: {e.strerror or e}") from None
    if magic != b"\x1f\x8b":
        raise TraceError(path, None, None, "not a gzip file")


class _DuplicateKey(ValueError):
    """A JSON object that names a key twice (a plain parser keeps the last one silently)."""


class _NotJsonNumber(ValueError):
    """NaN or Infinity: Python's parser takes them, JSON has no such numbers."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return obj


def _no_constant(name: str) -> Any:
    raise _NotJsonNumber(name)


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def loads(data: bytes) -> Any:
    """A line as JSON, strictly: UTF-8, no NaN or Infinity, no key twice in an object (RecursionError when it
    nests past the parser's limit)."""
    return _DECODER.decode(data.decode())


def _where_not_finite(data: bytes) -> str | None:
    """Where in a line the first NaN or Infinity is ("extra.end_to_end_s.median", "in_shapes[0]"), for the error."""
    try:
        stack: list[tuple[str, Any]] = [("", json.loads(data, parse_constant=float))]
    except (ValueError, RecursionError):
        return None
    while stack:
        where, v = stack.pop()
        if type(v) is float and not math.isfinite(v):
            return where or None
        if type(v) is dict:
            stack += [(f"{where}.{k}" if where else k, x) for k, x in reversed(v.items())]
        elif type(v) is list:
            stack += [(f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v)))]
    return None


def parse(path: PathLike, line: int, data: bytes) -> dict[str, Any]:
    """One line as a JSON object, or a TraceError naming the line (and the field, where one is at fault)."""
    try:
        obj = loads(data)
    except _DuplicateKey as e:
        raise TraceError(path, line, e.args[0], "given twice in one object") from None
    except _NotJsonNumber as e:
        raise TraceError(path, line, _where_not_finite(data), f"{e.args[0]} is not a JSON number (a trace holds "
                         "finite numbers only)") from None
    except RecursionError:
        raise TraceError(path, line, None, "not valid JSON (nested deeper than the parser goes)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, or an integer of over 4,300 digits
        if isinstance(e, json.JSONDecodeError):
            why = f"{e.msg} at column {e.colno}"
        elif isinstance(e, UnicodeDecodeError):
            why = f"not UTF-8: byte {e.object[e.start]:#04x} at byte {e.start + 1} of the line"
        else:
            why = str(e).split(":")[0]
        raise TraceError(path, line, None, f"not valid JSON ({why})") from None
    if type(obj) is not dict:
        raise TraceError(path, line, None, f"expected a JSON object, got {show(obj)}")
    return obj


def read_lines(path: PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw line) for each line; a damaged compressed stream is a TraceError."""
    with _open(path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        line = 0
        while True:
            try:
                data = gz.readline(MAX_LINE_BYTES + 1)
            except (EOFError, OSError, zlib.error) as e:
                raise TraceError(path, line + 1, None, f"truncated or corrupt data ({e})") from None
            if not data:
                return
            if len(data) > MAX_LINE_BYTES:
                raise TraceError(path, line + 1, None, f"a line longer than {MAX_LINE_BYTES >> 20} MiB (no record is "
                                 "that long)")
            line += 1
            yield line, data
