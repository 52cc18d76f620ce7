"""What users hand in, read within bounds (simulator core: no torch): files and YAML.

Files (`read_file`): regular files only (a folder, a named pipe or a device such as /dev/zero is refused without
being read: reading one could block or never end), at most a given size, UTF-8 text (`decode_utf8`).

YAML (`load_yaml`), as PyYAML's safe loader reads it, within these bounds and rules:

- one document of at most MAX_YAML_BYTES, nested at most MAX_DEPTH levels deep and standing for at most
  MAX_VALUES values, both counted with aliases expanded: an alias (`*name`) repeats an anchored value (`&name`),
  and a kilobyte of nested aliases can stand for billions of values, so such a document is refused, never
  expanded and never printed; an alias of a value that contains it is refused too;
- a key at most once per mapping (YAML loaders keep the last one silently);
- numbers as written: integers in decimal (`_` separators allowed) of at most MAX_INT_DIGITS digits, floats with
  or without a dot (`1e9` and `1.41e+9`, which YAML 1.1 would read as a string and a float) and `.inf`, `.nan`
  (whether a field may be infinite is the caller's check: it knows the field). YAML 1.1's other integers are
  refused: a leading zero (`0144`, octal 100 in YAML 1.1, 144 in YAML 1.2), `0x`, `0o`, `0b` and base 60
  (`1:30`, which YAML 1.1 reads as 90).

JSON (`load_json`: model configs, microbenchmark results), strictly: one value of at most MAX_JSON_BYTES, a key
at most once per object, numbers JSON has (not NaN or Infinity, none that overflows a double: 1e999), integers of
at most MAX_INT_DIGITS digits, nested at most MAX_DEPTH levels.

Every problem is an `InputError` (a ValueError) with the dotted `field` where it lies (None: the whole input)
and the 1-based `line` where known; callers wrap it in their own error, which names the file or the flag.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# 1 MiB: a hwconfig is about 6 KB and a sweep spec or model config under 10 KB; anything a thousand times larger
# is not one, and reading it whole should not be what tells
MAX_YAML_BYTES = 1 << 20
# 4 MiB: a model config.json is about 1 KB, microbenchmark results about 10 KB
MAX_JSON_BYTES = 1 << 22
# levels of nesting: a hwconfig has four (ops.CLASS.KIND.field), a sweep spec five
MAX_DEPTH = 32
# values with aliases expanded: a hwconfig has about 100, a large sweep spec a few thousand
MAX_VALUES = 100_000
# no count, size or rate any input here holds needs more (10**30 bytes, FLOPs, FLOP/s); far longer integers
# are the start of a denial of service (Python refuses to convert more than 4300 digits at all)
MAX_INT_DIGITS = 30

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_OTHER_BASE = "tag:speed-sim,2025:other-base-int"  # refused with the rule, naming the field
_DECIMAL = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_OTHER_BASE_RE = re.compile(r"^[-+]?(?:0[0-9_]+|0[bBoOxX][0-9a-fA-F_]*|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?)$")
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$"
                       r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")


class InputError(ValueError):
    """An input that cannot be used: `field` (dotted, None: the whole input) and 1-based `line` say where."""

    def __init__(self, field: str | None, problem: str, line: int | None = None) -> None:
        self.field, self.problem, self.line = field, problem, line
        super().__init__((f"field '{field}': " if field else "") + self.located)

    @property
    def located(self) -> str:
        """The problem with its line, for an error of a file's own kind that names the field itself."""
        return self.problem + (f" (line {self.line})" if self.line else "")


def brief(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: an error message never prints a large value in full."""
    text = repr(value)  # bounded: inputs are (MAX_YAML_BYTES, MAX_VALUES)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut(text: Any, limit: int = 40) -> str:
    """A name for an error line (a key, a flag's value): as it is if a short printable string, else `brief`."""
    return text if isinstance(text, str) and len(text) <= limit and text.isprintable() else brief(text, limit)


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file: a folder, a named pipe, a socket or a device
    (/dev/zero, /dev/stdin) is refused without being read (reading one could block or never end). Opened without
    blocking (a named pipe nobody writes would block the open itself), then checked on the open descriptor (so a
    link swapped between a check and the open cannot slip one through). A missing file raises
    FileNotFoundError (callers say what exists instead); anything else that cannot be read is an InputError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as err:  # a socket cannot be opened at all (ENXIO): say what it is
        try:
            special = not stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            special = False
        raise InputError(None, "not a regular file (a pipe, a socket or a device): refused unread" if special else
                         f"cannot be read: {err.strerror or err}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(None, "a folder, not a file")
        if not stat.S_ISREG(mode):
            raise InputError(None, "not a regular file (a pipe, a socket or a device): refused unread")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path: str | os.PathLike[str], max_bytes: int = MAX_YAML_BYTES) -> bytes:
    """The bytes of a regular file (`open_regular`) of at most `max_bytes`."""
    with open_regular(path) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as err:
            raise InputError(None, f"cannot be read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise InputError(None, f"larger than {max_bytes:,} bytes: not an input of this kind")
    return data


def decode_utf8(data: bytes) -> str:
    """`data` as UTF-8 text (a leading byte-order mark dropped); otherwise an InputError that says what it is."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        guess = ("gzip-compressed data" if data[:2] == b"\x1f\x8b" else
                 "UTF-16 text" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8 text")
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(None, f"{guess}: byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8; "
                         "save the file as UTF-8", line) from None
    return text.removeprefix("\ufeff")


def _dotted(path: list[str]) -> str | None:
    """["peak", "clock_hz"] -> "peak.clock_hz"; sequence items as "[i]"."""
    out = ""
    for part in filter(None, path):
        out += part if part.startswith("[") or not out else "." + part
    return out or None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with numbers as written (see the module docstring) and nesting counted as it
    composes (its composer recurses once per level: a 5,000-deep document would overflow the stack)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if len(self._path) >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise InputError(_dotted([p for p in self._path if p][:2]), f"nested deeper than {MAX_DEPTH} levels",
                             mark.line + 1)
        part = ("" if parent is None else index.value if isinstance(index, ScalarNode) else f"[{index}]"
                if isinstance(index, int) else "(key)")
        self._path.append(part)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, _regexp in ((_INT, _DECIMAL), (_OTHER_BASE, _OTHER_BASE_RE), (_FLOAT, _FLOAT_RE)):
    _Loader.add_implicit_resolver(_tag, _regexp, list("-+0123456789."))


def _construct_float(loader: yaml.SafeLoader, node: ScalarNode) -> float:
    text = node.value.replace("_", "").lower()
    try:
        return float({".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".nan": "nan"}.get(text, text))
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"{brief(node.value)} is not a number",
                                                node.start_mark) from None


_Loader.add_constructor(_FLOAT, _construct_float)


class _Bounds:
    """One pass over a composed document, each node once (an alias is the node it names): the values and the
    depth it stands for with aliases expanded, duplicate keys and numbers written in another base."""

    def __init__(self) -> None:
        self.memo: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded
        self.open: set[int] = set()  # nodes being counted: meeting one again is an alias of a value holding it

    def check(self, node: Node, path: list[str]) -> tuple[int, int]:
        key = id(node)
        if key in self.memo:
            return self.memo[key]
        if key in self.open:
            raise InputError(_dotted(path), "an alias of a value that contains it (recursive)",
                             node.start_mark.line + 1)
        self.open.add(key)
        values, depth = 1, 0
        for child, where in self._children(node, path):
            n, d = self.check(child, where)
            values, depth = values + n, max(depth, d)
        depth += 1
        if values > MAX_VALUES or depth > MAX_DEPTH:
            what = f"{values:,} values" if values > MAX_VALUES else f"{depth} levels of nesting"
            raise InputError(_dotted(path[:2]), f"stands for {what} with its aliases expanded (at most {MAX_VALUES:,} "
                             f"values, {MAX_DEPTH} levels): refused unexpanded", node.start_mark.line + 1)
        self.open.discard(key)
        self.memo[key] = (values, depth)
        return values, depth

    @staticmethod
    def _children(node: Node, path: list[str]) -> list[tuple[Node, list[str]]]:
        if isinstance(node, SequenceNode):
            return [(child, [*path, f"[{i}]"]) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode):
            seen: dict[tuple[str, str], int] = {}
            out = []
            for k, v in node.value:
                name = k.value if isinstance(k, ScalarNode) else "(key)"
                if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    line = k.start_mark.line + 1
                    if (k.tag, k.value) in seen:
                        raise InputError(_dotted([*path, name]), f"given twice (lines {seen[k.tag, k.value]} and "
                                         f"{line}); YAML would keep the last one silently", line)
                    seen[k.tag, k.value] = line
                out += [(k, path), (v, [*path, name])]
            return out
        if node.tag == _OTHER_BASE:
            raise InputError(_dotted(path), f"{brief(node.value)}: {_yaml11_reading(node.value)}; write integers in "
                             "decimal, without a leading 0", node.start_mark.line + 1)
        if node.tag == _INT and len(node.value.lstrip("+-").replace("_", "")) > MAX_INT_DIGITS:
            raise InputError(_dotted(path), f"an integer of {len(node.value)} digits (at most {MAX_INT_DIGITS})",
                             node.start_mark.line + 1)
        return []


def _yaml11_reading(text: str) -> str:
    """What YAML 1.1 makes of an integer written in another base (the reason it is refused)."""
    digits = text.lstrip("+-").replace("_", "")
    try:
        if ":" in digits:
            value, base = 0.0, "base 60"
            for part in digits.split(":"):
                value = value * 60 + float(part)
        elif digits[1:2].isdigit():
            value, base = int(digits, 8), "octal"
        else:
            value, base = int(digits, 0), {"x": "hexadecimal", "o": "octal", "b": "binary"}[digits[1].lower()]
    except (ValueError, IndexError, KeyError):
        return "YAML 1.1 reads no number there"
    return f"YAML 1.1 reads it in {base} ({value:g})"


def load_yaml(text: str) -> Any:
    """One YAML document, read within the bounds of the module docstring; InputError otherwise."""
    if len(text) > MAX_YAML_BYTES:
        raise InputError(None, f"larger than {MAX_YAML_BYTES:,} characters: not an input of this kind")
    loader = None
    try:
        loader = _Loader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _Bounds().check(node, [])
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(None, f"not valid YAML: {problem}", mark.line + 1 if mark is not None else None) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: str | os.PathLike[str], max_bytes: int = MAX_YAML_BYTES) -> Any:
    """`load_yaml` of a file read with `read_file` and `decode_utf8`."""
    return load_yaml(decode_utf8(read_file(Path(path), max_bytes)))


class _Twice(dict):
    """A JSON object that names a key more than once (`twice`: the first such key)."""

    twice = ""


class _NotJsonNumber:
    """NaN, Infinity or -Infinity where JSON has no such number (Python's parser takes them)."""

    def __init__(self, name: str) -> None:
        self.name = name


class _LongInteger:
    """An integer of more than MAX_INT_DIGITS digits, never converted (Python refuses past 4,300 digits)."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    twice = _Twice(obj)
    twice.twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return twice


def _integer(text: str) -> int | _LongInteger:
    return _LongInteger(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


_JSON = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_NotJsonNumber, parse_int=_integer)
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


def _json_fault(value: Any) -> InputError | None:
    """The first value (depth first) that breaks load_json's rules, as an InputError naming where, or None."""
    stack: list[tuple[Any, list[str]]] = [(value, [])]
    while stack:
        v, path = stack.pop()
        if len(path) > MAX_DEPTH:
            return InputError(_dotted(path[:2]), f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(v, _Twice):
            return InputError(_dotted([*path, v.twice]), "given twice; a JSON reader would keep the last silently")
        if isinstance(v, _NotJsonNumber):
            return InputError(_dotted(path), f"{v.name} is not a JSON number")
        if isinstance(v, _LongInteger):
            return InputError(_dotted(path), f"an integer of {v.digits} digits (at most {MAX_INT_DIGITS})")
        if type(v) is float and not math.isfinite(v):
            return InputError(_dotted(path), "a number beyond a double's range (it reads as infinity)")
        if type(v) is dict:
            stack += [(x, [*path, k]) for k, x in reversed(v.items())]
        elif type(v) is list:
            stack += [(x, [*path, f"[{i}]"]) for i, x in reversed(list(enumerate(v)))]
    return None


def _too_deep(text: str) -> InputError:
    """A document nested past the parser's recursion limit, refused naming its top-level key (found by a scan
    of its brackets and keys, outside strings)."""
    depth, top, last = 0, None, ""
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token[0] == '"':
            last = token
        elif token == ":" and depth == 1:
            top = json.loads(last)
        elif token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                break
        elif token in "]}":
            depth -= 1
    return InputError(top if isinstance(top, str) else None, f"nested deeper than {MAX_DEPTH} levels")


def load_json(text: str) -> Any:
    """One JSON value, read by the rules of the module docstring; InputError otherwise."""
    if len(text) > MAX_JSON_BYTES:
        raise InputError(None, f"larger than {MAX_JSON_BYTES:,} characters: not an input of this kind")
    try:
        value = _JSON.decode(text)
    except RecursionError:
        raise _too_deep(text) from None
    except json.JSONDecodeError as err:
        raise InputError(None, f"not valid JSON: {err.msg} at column {err.colno}", err.lineno) from None
    fault = _json_fault(value)
    if fault is not None:
        raise fault
    return value


def load_json_file(path: str | os.PathLike[str], max_bytes: int = MAX_JSON_BYTES) -> Any:
    """`load_json` of a file read with `read_file` and `decode_utf8`."""
    return load_json(decode_utf8(read_file(Path(path), max_bytes)))
