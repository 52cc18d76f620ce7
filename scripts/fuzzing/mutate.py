"""The mutations that the generators share: gzip streams of JSON lines, JSON records with a value replaced or a
key given twice or dropped, lines replaced, YAML alias bombs and deep nesting."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable

PLACEHOLDER = "\x00HOSTILE\x00"  # stands for a raw JSON text in a record until `dumps` writes it


def joined(lines: Iterable[bytes]) -> bytes:
    """The text of `lines`, each ended by a newline."""
    return b"".join(x + b"\n" for x in lines)


def gzipped(data: bytes, level: int = 9) -> bytes:
    """A gzip stream of `data` (mtime 0: the same data give the same bytes)."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def gz(lines: Iterable[bytes], level: int = 9) -> bytes:
    """A gzip stream of `lines`, each ended by a newline: a trace file."""
    return gzipped(joined(lines), level)


def dumps(obj: object, raw: str | None = None) -> bytes:
    """Compact JSON of `obj`, the placeholder string (if any) replaced by the raw JSON text `raw`."""
    text = json.dumps(obj, separators=(",", ":"))
    return (text.replace(json.dumps(PLACEHOLDER), raw) if raw is not None else text).encode()


def get(obj: object, path: tuple) -> object:
    """The value at `path` (keys and indices) in `obj`."""
    for p in path:
        obj = obj[p]  # type: ignore[index]
    return obj


def put(obj: dict, path: tuple, value: object) -> dict:
    """A deep copy of `obj` with the value at `path` replaced."""
    copy = json.loads(json.dumps(obj))
    node = copy
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return copy


def replace_line(lines: list[bytes], line: int, data: bytes) -> list[bytes]:
    """`lines` with the 1-based `line` replaced by `data`."""
    return [*lines[: line - 1], data, *lines[line:]]


def with_key_first(line: bytes, key: str, raw: str) -> bytes:
    """The JSON record with `"key":raw` inserted first (a duplicate when the record has the key already)."""
    return b'{"' + key.encode() + b'":' + raw.encode() + b"," + line[1:]


def without_key(line: bytes, key: str) -> bytes:
    """The JSON record without `key`."""
    record = json.loads(line)
    record.pop(key)
    return dumps(record)


def nested(depth: int, inner: str = "") -> str:
    """`inner` inside `depth` brackets: JSON and YAML flow text deeper than any reader should follow."""
    return "[" * depth + inner + "]" * depth


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML flow sequence of nested aliases: ~1 KB of text, width**levels items when expanded."""
    items = [f"&a0 [{', '.join(['lol'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"
