"""Trace files: the contract between the decoder (which writes them) and the simulator (which reads them).

Format, version 3 (the reader also reads versions 1 and 2: see "Older versions" below)
--------------------------------------------------------------------------------------
A trace is gzip-compressed JSON Lines (suffix ``.jsonl.gz``), one JSON object per line, keys in the order of
the dataclass fields below. Writes are byte-reproducible: no file name or time stamp in the gzip header,
compact separators, floats as Python prints them. Units: bytes, FLOPs, seconds.

Line 1, the header (`TraceHeader`):
  format "speed-sim-trace", version 3, model {config field: scalar | null}, decoder "sequential" | "speed",
  dtype str, batch int >= 1, prompt_lens [int >= 0], max_new_tokens int >= 1, device str ("cpu", "cuda",
  "meta"), device_name str, torch_version str, code_revision str, flips {"source": str, ...} (where SPEED's
  changed predictions came from: "model", an oracle's description, or "none"), weights {tensor id (parameter
  name): {"bytes": int >= 0, "shape": [int >= 0], "dtype": str}}, measured bool (ops carry measured durations),
  command str (the command line that produced the trace), extra {...} (free-form; optional, default {}).
Then records, each with a "type" key first:
  "op" (`OpRecord`), one executed aten op: i (int: 0-based, = the number of op records before it), stage (int),
  group, depth, layer (int >= 0 or null: layer group, depth, layer within the group), seq (int >= 0 or null:
  the sequence of the batch the op works on alone, as its KV cache slice or its encoder / prefill stage; null
  for an op over rows of several sequences), rows (int >= 0), module (str, "" for top level: for people and
  timelines only, the simulator never reads it), kind (str: the kernel class, one of
  `sim.opkinds.KERNEL_CLASSES`), op (str, e.g. "aten.mm.default"), in_shapes [[int]], in_dtypes [str],
  out_shapes [[int]], out_dtypes [str], flops, weight_bytes, act_read_bytes, act_write_bytes, kv_read_bytes,
  kv_write_bytes (int >= 0), weights [weight id] (each a key of header.weights), kv [cache item id] (the KV
  cache slices the op reads: "k:SEQ:DEPTH" and "v:SEQ:DEPTH" for the self-attention keys and values of one
  sequence at one depth, "xk:SEQ:LAYER" and "xv:SEQ:LAYER" for its cross-attention keys and values of one
  shared layer; kv_read_bytes are split evenly between them), srcs [int >= 0] (one per input, in in_shapes
  order: how many ops back, in this stage, the op that last wrote that input's memory is; 0: written before
  the stage, as weights, a cache or the residual stream carried from the last stage are; what a fusion model
  needs to tell a fused kernel's intermediates from its external inputs), deps [int >= 1] (the earlier ops of
  the same stage that this op must follow, as distances back: 1 = the op just before; from the memory each op
  reads and writes: read after write, write after read, write after write), duration_s (float >= 0 or null;
  non-null in a measured trace). Distances, not indices,
  so that an op repeated from stage to stage writes the same line.
  "stage" (`StageRecord`), written after the ops of its stage: stage (int, strictly increasing through the
  file), kind "encoder" | "prefill" | "decode" | "speed", rows [[seq, position, exit]] (the rows run: the
  position of each row's input token and the exit, 1..G, it reached this stage; a sequential decode step runs
  all groups, exit G), commits [[seq, position, token]], flushes [[seq, exit, rows_flushed]] (all int >= 0),
  wall_s (float >= 0 or null: measured wall time of the stage).
  "end", the last line, exactly once: ops (number of op records), stages (number of stage records).
Ops belong to the stage record that follows them: previous stage record's index < op.stage <= next one's.

What the capture relies on (reference.capture.tracing; tests/test_tracing.py fails when the model drifts from
it): the decoder's blocks are modules named `blocks.L` (`encoder.blocks.L` for the encoder), so an op inside
one has layer L; norms are `RMSNorm` modules (kind "norm" for the ops inside them); the LM head is the model's
`head` method (kind "lm_head" for its product); per-row attention reads a view of the KV cache tensor
`[depth, seq, ...]` (cross: `[layer, seq, ...]`), whose storage offset gives depth (layer) and sequence.

Older versions
--------------
Version 2 has no seq, kind, kv or srcs (read as [], unknown); version 1 has no deps either (its ops read as
deps null: program order). Their captures followed naming rules instead, which the reader applies once, here:
kind from the module (a product in module "head" is the LM head; ops in a module whose name ends in "norm" are
norm kernels), and `read_trace` derives each KV read's sequence from the stage records (the r-th
self-attention op of a layer belongs to the stage's r-th row, the j-th cross-attention op to its j-th sequence;
prefill and encoder stages run one sequence each, in order). Streamed with `iter_records`, such ops have seq
null and kv keyed by depth alone.

Error policy
------------
The reader validates everything as it streams (records before a problem are handed out first) and raises
`TraceError` (a ValueError) naming the file, the 1-based line (None for file-level problems) and the field
(None when no single field is at fault): unknown format or version, missing, unknown or mistyped field
(unknown fields are errors: a format change bumps the version), unknown record type, out-of-order `i` or
stage, a dep reaching outside its stage, unknown weight id, null duration in a measured trace, a file that is
missing or not gzip (line None), a line that is not a JSON object, a truncated file (corrupt compressed data:
the first line that could not be read; no "end" record: the line where it belongs), "end" counts that do not
match. Ops whose stage record never comes are reported at the next stage or end record. No KeyError,
TypeError, EOFError or JSON error escapes. `TraceWriter` validates little (the reader is the check) but never
leaves a half-written file at its path.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import io
import json
import math
import operator
import os
import secrets
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sim.opkinds import KERNEL_CLASSES, kernel_class

TRACE_FORMAT = "speed-sim-trace"
TRACE_VERSION = 3
READS_VERSIONS = (1, 2, 3)  # version 2: no seq, kind, kv, srcs; version 1: no deps either
DECODERS = ("sequential", "speed")
STAGE_KINDS = ("encoder", "prefill", "decode", "speed")

PathLike = str | os.PathLike[str]
Scalar = str | int | float | bool | None
Triple = list[int]


class TraceError(ValueError):
    """A trace file that cannot be read: `path`, 1-based `line` and `field` say where (None: not applicable)."""

    def __init__(self, path: PathLike, line: int | None, field: str | None, problem: str) -> None:
        self.path, self.line, self.field, self.problem = os.fspath(path), line, field, problem
        where = f"trace {self.path}" + (f", line {line}" if line is not None else "")
        super().__init__(where + (f", field '{field}'" if field is not None else "") + f": {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.line, self.field, self.problem)


@dataclass(slots=True, kw_only=True)
class TraceHeader:
    """Line 1: what produced the trace (see the module docstring for each field)."""

    format: str = TRACE_FORMAT
    version: int = TRACE_VERSION
    model: dict[str, Scalar]
    decoder: str
    dtype: str
    batch: int
    prompt_lens: list[int]
    max_new_tokens: int
    device: str
    device_name: str
    torch_version: str
    code_revision: str
    flips: dict[str, Any]
    weights: dict[str, dict[str, Any]]  # id -> {"bytes": int, "shape": list[int], "dtype": str}
    measured: bool
    command: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class OpRecord:
    """One executed aten op; byte counts in bytes, `flops` in FLOPs, `duration_s` in seconds."""

    i: int
    stage: int
    group: int | None
    depth: int | None
    layer: int | None
    seq: int | None
    rows: int
    module: str
    kind: str  # kernel class (sim.opkinds.KERNEL_CLASSES)
    op: str
    in_shapes: list[list[int]]
    in_dtypes: list[str]
    out_shapes: list[list[int]]
    out_dtypes: list[str]
    flops: int
    weight_bytes: int
    act_read_bytes: int
    act_write_bytes: int
    kv_read_bytes: int
    kv_write_bytes: int
    weights: list[str]
    kv: list[str]  # KV cache items read: "k:SEQ:DEPTH", "v:SEQ:DEPTH", "xk:SEQ:LAYER", "xv:SEQ:LAYER"
    srcs: list[int]  # per input: distance back to the op of this stage that wrote it; 0: before the stage
    deps: list[int] | None = None  # distances back to the ops of this stage it must follow; None: program order
    duration_s: float | None = None


@dataclass(slots=True)
class StageRecord:
    """One stage, after its ops: rows [seq, position, exit reached], commits [seq, position, token], flushes
    [seq, exit, rows_flushed]; `wall_s` in seconds."""

    stage: int
    kind: str
    rows: list[Triple]
    commits: list[Triple]
    flushes: list[Triple]
    wall_s: float | None = None


@dataclass(slots=True)
class Trace:
    """A whole trace in memory. `ops_of_stage` uses an index built at construction (do not mutate `ops`)."""

    header: TraceHeader
    ops: list[OpRecord]
    stages: list[StageRecord]
    _by_stage: dict[int, list[OpRecord]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_stage = {}
        for op in self.ops:
            self._by_stage.setdefault(op.stage, []).append(op)

    def ops_of_stage(self, stage: int) -> list[OpRecord]:
        """The op records of stage `stage`, in file order (a shared list: do not modify)."""
        return self._by_stage.get(stage, [])

    @property
    def total_flops(self) -> int:
        """FLOPs of all ops."""
        return sum(op.flops for op in self.ops)

    @property
    def total_bytes(self) -> int:
        """Bytes of all ops: weights + activations read and written + KV cache read and written."""
        return sum(op.weight_bytes + op.act_read_bytes + op.act_write_bytes + op.kv_read_bytes + op.kv_write_bytes
                   for op in self.ops)


# ---------------------------------------------------------------------------------------------------- writing

_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (TraceHeader, OpRecord, StageRecord)}
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _line(obj: Any, kind: str | None) -> str:
    d: dict[str, Any] = {"type": kind} if kind else {}
    for name in _FIELDS[type(obj)]:
        d[name] = getattr(obj, name)
    return _ENCODER.encode(d) + "\n"


class TraceWriter:
    """Write a trace to `path` through a temp file in the same directory, moved onto `path` by `close()`
    (on normal exit of a `with` block); `abort()` (on an exception) deletes it, leaving `path` untouched."""

    def __init__(self, path: PathLike, header: TraceHeader) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        self._raw = open(self._tmp, "xb")  # noqa: SIM115 (closed by close/abort)
        gz = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, filename="")
        self._out = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
        self._ops = self._stages = 0
        try:
            self._out.write(_line(header, None))
        except BaseException:
            self.abort()
            raise

    def op(self, record: OpRecord) -> None:
        """Append an op record (the caller sets `record.i`)."""
        self._out.write(_line(record, "op"))
        self._ops += 1

    def stage(self, record: StageRecord) -> None:
        """Append a stage record, after the ops of that stage."""
        self._out.write(_line(record, "stage"))
        self._stages += 1

    def close(self) -> None:
        """Write the end record and move the finished file onto `path`."""
        if self._raw.closed:
            return
        try:
            self._out.write(_ENCODER.encode({"type": "end", "ops": self._ops, "stages": self._stages}) + "\n")
            self._out.close()  # flushes the gzip trailer; leaves self._raw open
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard what was written; `path` is left as it was."""
        if not self._raw.closed:
            with contextlib.suppress(Exception):
                self._out.close()
            self._raw.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------------------------------- reading

Check = Callable[[Any], bool]


def _ints(v: Any) -> bool:
    return type(v) is list and all(type(x) is int and x >= 0 for x in v)


def _weight(v: Any) -> bool:
    return (type(v) is dict and v.keys() == {"bytes", "shape", "dtype"} and type(v["bytes"]) is int
            and v["bytes"] >= 0 and _ints(v["shape"]) and type(v["dtype"]) is str)


# Field checkers: (predicate, what it expects). `type(v) is int` also rejects bools.
_NAT = (lambda v: type(v) is int and v >= 0, "an integer >= 0")
_POS = (lambda v: type(v) is int and v >= 1, "an integer >= 1")
_OPT_NAT = (lambda v: v is None or (type(v) is int and v >= 0), "an integer >= 0 or null")
_STR = (lambda v: type(v) is str, "a string")
_STRS = (lambda v: type(v) is list and {*map(type, v)} <= {str}, "a list of strings")
_SHAPES = (lambda v: type(v) is list and all(map(_ints, v)), "a list of shapes (lists of integers >= 0)")
_TRIPLES = (lambda v: type(v) is list and all(_ints(t) and len(t) == 3 for t in v),
            "a list of [int, int, int] (integers >= 0)")
_SECONDS = (lambda v: v is None or (type(v) in (float, int) and 0 <= v < math.inf), "a number >= 0 or null")
_OBJECT = (lambda v: type(v) is dict, "an object")
_HEADER: dict[str, tuple[Check, str]] = {
    "format": _STR, "version": _NAT,
    "model": (lambda v: type(v) is dict and all(x is None or type(x) in (str, int, float, bool) for x in v.values()),
              "an object of scalars"),
    "decoder": (lambda v: v in DECODERS, f"one of {DECODERS}"), "dtype": _STR, "batch": _POS,
    "prompt_lens": (_ints, "a list of integers >= 0"), "max_new_tokens": _POS, "device": _STR, "device_name": _STR,
    "torch_version": _STR, "code_revision": _STR,
    "flips": (lambda v: type(v) is dict and type(v.get("source")) is str, "an object with a string 'source'"),
    "weights": (lambda v: type(v) is dict and all(map(_weight, v.values())),
                "an object of {id: {bytes: int >= 0, shape: [int >= 0], dtype: str}}"),
    "measured": (lambda v: type(v) is bool, "true or false"), "command": _STR, "extra": _OBJECT,
}
_OP: dict[str, tuple[Check, str]] = {
    "i": _NAT, "stage": _NAT, "group": _OPT_NAT, "depth": _OPT_NAT, "layer": _OPT_NAT, "seq": _OPT_NAT, "rows": _NAT,
    "module": _STR, "kind": (lambda v: v in KERNEL_CLASSES, f"one of {KERNEL_CLASSES}"), "op": _STR,
    "in_shapes": _SHAPES, "in_dtypes": _STRS, "out_shapes": _SHAPES, "out_dtypes": _STRS,
    "flops": _NAT, "weight_bytes": _NAT, "act_read_bytes": _NAT, "act_write_bytes": _NAT, "kv_read_bytes": _NAT,
    "kv_write_bytes": _NAT, "weights": _STRS, "kv": _STRS,
    "srcs": (lambda v: type(v) is list and all(type(x) is int and x >= 0 for x in v), "a list of integers >= 0"),
    "deps": (lambda v: type(v) is list and all(type(x) is int and x >= 1 for x in v), "a list of integers >= 1"),
    "duration_s": _SECONDS,
}
_OP_V2 = {k: v for k, v in _OP.items() if k not in ("seq", "kind", "kv", "srcs")}
_OP_V1 = {k: v for k, v in _OP_V2.items() if k != "deps"}
_STAGE: dict[str, tuple[Check, str]] = {
    "stage": _NAT, "kind": (lambda v: v in STAGE_KINDS, f"one of {STAGE_KINDS}"), "rows": _TRIPLES,
    "commits": _TRIPLES, "flushes": _TRIPLES, "wall_s": _SECONDS,
}
_END: dict[str, tuple[Check, str]] = {"ops": _NAT, "stages": _NAT}
_GETTERS = {id(schema): operator.itemgetter(*schema) for schema in (_HEADER, _OP, _OP_V2, _OP_V1, _STAGE, _END)}
_MISSING = object()


def _show(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(obj: dict[str, Any], schema: dict[str, tuple[Check, str]], path: PathLike, line: int) -> tuple[Any, ...]:
    """Validate `obj` (a record without its "type") against `schema`; return its values in schema order."""
    try:
        values = _GETTERS[id(schema)](obj)
    except KeyError as e:
        raise TraceError(path, line, e.args[0], "missing") from None
    if len(obj) != len(schema):
        raise TraceError(path, line, next(k for k in obj if k not in schema), "unknown field")
    for (name, (ok, desc)), v in zip(schema.items(), values):
        if not ok(v):
            raise TraceError(path, line, name, f"expected {desc}, got {_show(v)}")
    return values


def _open(path: PathLike) -> None:
    """Raise TraceError if `path` cannot be opened or is not gzip."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except FileNotFoundError:
        raise TraceError(path, None, None, "no such file") from None
    except OSError as e:
        raise TraceError(path, None, None, f"cannot open: {e.strerror or e}") from None
    if magic != b"\x1f\x8b":
        raise TraceError(path, None, None, "not a gzip file")


def _parse(path: PathLike, line: int, data: bytes) -> dict[str, Any]:
    """One line as a JSON object, or a TraceError naming the line."""
    try:
        obj = json.loads(data)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError
        why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise TraceError(path, line, None, f"not valid JSON ({why})") from None
    if type(obj) is not dict:
        raise TraceError(path, line, None, f"expected a JSON object, got {_show(obj)}")
    return obj


_OP_PREFIX = b'{"type":"op","i":'
_OP_SCHEMAS = {3: _OP, 2: _OP_V2, 1: _OP_V1}  # version -> op schema
_OP_REST = {v: {k: c for k, c in schema.items() if k not in ("i", "stage")} for v, schema in _OP_SCHEMAS.items()}
for _schema in _OP_REST.values():
    _GETTERS[id(_schema)] = operator.itemgetter(*_schema)


def legacy_kind(op: str, module: str) -> str:
    """The kernel class of a version 1 or 2 op, by the naming rules of the capture that wrote it."""
    role = "head" if module == "head" else "norm" if module.endswith("norm") else None
    return kernel_class(op, role)


def _legacy_kv_item(module: str, depth: int | None, layer: int | None, seq: int | None) -> str:
    """The KV item a version 1 or 2 op reads: cross-attention ran in modules named "*cross_attn"."""
    who = "?" if seq is None else seq
    return f"xkv:{who}:{layer}" if module.endswith("cross_attn") else f"kv:{who}:{depth}"


def _legacy_sequences(trace: Trace) -> None:
    """Version 1 and 2 ops: the sequence of each one-sequence stage's ops and of each KV read (module docstring,
    "Older versions"), and their KV items keyed by it."""
    groups = trace.header.model.get("n_groups")
    nd = trace.header.model.get("n_unique_layers")
    encoders = prefills = 0
    for stage in trace.stages:
        ops = trace.ops_of_stage(stage.stage)
        if stage.kind in ("encoder", "prefill"):  # one sequence each, in order (a prefill after its encoder)
            encoders += stage.kind == "encoder"
            seq = encoders - 1 if stage.kind == "encoder" or encoders else prefills
            prefills += stage.kind == "prefill"
            for op in ops:
                op.seq = seq
                if op.kv:
                    op.kv = [_legacy_kv_item(op.module, op.depth, op.layer, seq)]
            continue
        seen: dict[tuple[str, int | None], int] = {}
        for op in ops:
            if not op.kv:
                continue
            j = seen.get((op.module, op.depth), 0)
            seen[op.module, op.depth] = j + 1
            if op.module.endswith("cross_attn"):  # one call per sequence of the stage's rows
                pool = list(dict.fromkeys(r[0] for r in stage.rows))
            elif stage.kind == "speed" and type(nd) is int and nd and type(groups) is int and op.depth is not None:
                pool = [r[0] for r in stage.rows if r[2] == op.depth // nd + 1]  # rows at this op's group
            else:  # a sequential step: every row at every group
                pool = [r[0] for r in stage.rows]
            if j < len(pool):
                op.seq = pool[j]
                op.kv = [_legacy_kv_item(op.module, op.depth, op.layer, op.seq)]


def _op_values(values: tuple[Any, ...], version: int) -> tuple[Any, ...]:
    """Validated op values in `OpRecord` field order (version 3). An older op gets seq None, its kind by the
    old naming rules, KV items keyed by depth (or module) alone, and, from version 1, deps None."""
    if version >= 3:
        return values
    if version == 1:
        values = (*values[:-1], None, values[-1])
    # indexed from the end: the fast path's values lack i and stage. ... layer, rows, module, op, in_shapes,
    # in_dtypes, out_shapes, out_dtypes, flops, weight_bytes, act_read, act_write, kv_read, kv_write, weights,
    # deps, duration_s
    layer, depth, module, op, kv_read = values[-17], values[-18], values[-15], values[-14], values[-5]
    kv = [_legacy_kv_item(module, depth, layer, None)] if kv_read else []
    return (*values[:-16], None, values[-16], module, legacy_kind(op, module), *values[-14:-2], kv, [],
            *values[-2:])


def _plain_int(text: bytes) -> bool:
    """An integer >= 0 as JSON writes it: digits, no sign, no leading zero."""
    return text.isdigit() and (text == b"0" or not text.startswith(b"0"))


def _fast_op(data: bytes, memo: dict[bytes, tuple[Any, ...]], version: int
             ) -> tuple[int, int, tuple[Any, ...]] | None:
    """(i, stage, other fields) of an op line as TraceWriter writes it, or None (then the general path reads
    it and names any error). Decoding repeats the same op stage after stage: each line differs from the same
    op's line in another stage only in `i` and `stage`, so the rest is parsed and validated once."""
    if not data.startswith(_OP_PREFIX):
        return None
    a = len(_OP_PREFIX)
    b = data.find(b",", a)
    if data[b : b + 9] != b',"stage":':
        return None
    c = data.find(b",", b + 9)
    i_text, stage_text = data[a:b], data[b + 9 : c]
    if not (_plain_int(i_text) and _plain_int(stage_text)):
        return None
    rest = data[c + 1 :]
    values = memo.get(rest)
    if values is None:
        try:
            obj = json.loads(b"{" + rest)
            values = _check(obj, _OP_REST[version], "", 0) if type(obj) is dict else None
        except (ValueError, TraceError):
            return None
        if values is None:
            return None
        values = memo[rest] = _op_values(values, version)
    return int(i_text), int(stage_text), values


def _lines(path: PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw line) for each line; a damaged compressed stream is a TraceError."""
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        line = 0
        while True:
            try:
                data = gz.readline()
            except (EOFError, OSError, zlib.error) as e:
                raise TraceError(path, line + 1, None, f"truncated or corrupt data ({e})") from None
            if not data:
                return
            line += 1
            yield line, data


def _header(path: PathLike, line: int, obj: dict[str, Any]) -> TraceHeader:
    if obj.get("format") != TRACE_FORMAT:
        raise TraceError(path, line, "format", f"expected {TRACE_FORMAT!r}, got {_show(obj.get('format'))}")
    if type(obj.get("version")) is not int or obj["version"] not in READS_VERSIONS:
        raise TraceError(path, line, "version",
                         f"unsupported version {_show(obj.get('version'))} (this reader reads {READS_VERSIONS})")
    obj.setdefault("extra", {})
    _check(obj, _HEADER, path, line)
    return TraceHeader(**obj)


def _check_op_in_place(op: OpRecord, header: TraceHeader, where: tuple[PathLike, int], n_ops: int, last: int,
                       since_stage: int) -> None:
    """The checks of an op record against the records before it: its index, stage, weights, duration, and
    how far back in its stage (`since_stage` ops) its srcs and deps reach; `last` is the last stage record."""
    if op.i != n_ops:
        raise TraceError(*where, "i", f"expected {n_ops} (the number of op records before it), got {op.i}")
    if op.stage <= last:
        raise TraceError(*where, "stage", f"expected > {last} (the previous stage record), got {op.stage}")
    for w in op.weights:
        if w not in header.weights:
            raise TraceError(*where, "weights", f"unknown weight id {w!r} (not in the header's weights)")
    if op.duration_s is None and header.measured:
        raise TraceError(*where, "duration_s", "expected a number >= 0 in a measured trace, got null")
    if op.srcs and (len(op.srcs) != len(op.in_shapes) or max(op.srcs) > since_stage):
        raise TraceError(*where, "srcs", f"expected one distance per input ({len(op.in_shapes)}), each at most "
                         f"{since_stage} (the ops of its stage before it), got {_show(op.srcs)}")
    if op.deps and max(op.deps) > since_stage:
        raise TraceError(*where, "deps", f"a dep reaches {max(op.deps)} ops back, but only {since_stage} ops of its "
                         "stage come before it")


def _records(path: PathLike) -> Iterator[TraceHeader | OpRecord | StageRecord]:
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise TraceError(path, 1, None, "truncated: empty file, no header")
    header = _header(path, first[0], _parse(path, *first))
    yield header
    n_ops = n_stages = 0
    last, pending = -1, -1  # index of the last stage record; highest stage of the ops since then
    since_stage = 0  # op records since the last stage record: how far back a dep may reach
    version = header.version
    line, ended = 1, False
    memo: dict[bytes, tuple[Any, ...]] = {}
    for line, data in lines:
        if ended:
            raise TraceError(path, line, None, "record after the end record")
        fast = _fast_op(data, memo, version)
        if fast is not None:
            kind, obj = "op", None
        else:
            obj = _parse(path, line, data)
            kind = obj.pop("type", _MISSING)
        if kind == "op":
            # positional: 10x faster than keywords
            op = (OpRecord(fast[0], fast[1], *fast[2]) if fast
                  else OpRecord(*_op_values(_check(obj, _OP_SCHEMAS[version], path, line), version)))
            _check_op_in_place(op, header, (path, line), n_ops, last, since_stage)
            pending = max(pending, op.stage)
            n_ops += 1
            since_stage += 1
            yield op
        elif kind == "stage":
            st = StageRecord(*_check(obj, _STAGE, path, line))
            if st.stage <= last or st.stage < pending:
                bound = f"> {last} (the previous stage record)" if st.stage <= last else f">= {pending} (its ops)"
                raise TraceError(path, line, "stage", f"expected {bound}, got {st.stage}")
            last, pending, since_stage = st.stage, -1, 0
            n_stages += 1
            yield st
        elif kind == "end":
            _check(obj, _END, path, line)
            for name, n in (("ops", n_ops), ("stages", n_stages)):
                if obj[name] != n:
                    raise TraceError(path, line, name, f"expected {n} (the {name[:-1]} records read), got {obj[name]}")
            if pending >= 0:
                raise TraceError(path, line, None, f"op records of stage {pending} have no stage record")
            ended = True
        else:
            problem = "missing" if kind is _MISSING else f"expected 'op', 'stage' or 'end', got {_show(kind)}"
            raise TraceError(path, line, "type", problem)
    if not ended:
        raise TraceError(path, line + 1, None, "truncated: no end record")


def iter_records(path: PathLike) -> Iterator[TraceHeader | OpRecord | StageRecord]:
    """Stream a trace, validating as it goes: the header, then op and stage records in file order.
    A missing or non-gzip file raises TraceError here; other problems when the reader reaches them."""
    _open(path)
    return _records(path)


def read_trace(path: PathLike) -> Trace:
    """Read and validate a whole trace file."""
    records = iter_records(path)
    ops: list[OpRecord] = []
    stages: list[StageRecord] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the records are all kept: cyclic GC passes over them would only cost time (~40%)
    try:
        header = next(records)
        for rec in records:
            (ops if type(rec) is OpRecord else stages).append(rec)  # type: ignore[arg-type]
    finally:
        if gc_was_enabled:
            gc.enable()
    assert isinstance(header, TraceHeader)
    trace = Trace(header, ops, stages)
    if header.version < 3:
        _legacy_sequences(trace)
    return trace


def one_op_trace(op: str, module: str, in_shapes: list[list[int]], out_shape: list[int], dtype: str, flops: int,
                 act_bytes: int, weight_bytes: int = 0, kv_read_bytes: int = 0, calls: int = 1,
                 role: str | None = None) -> Trace:
    """A trace of `calls` back-to-back calls of `op` on the same tensors (a single-operator measurement or a
    microbenchmark as the simulator sees it; after the first call, what fits on chip is served there):
    `act_bytes` split evenly between read and written; `weight_bytes` of one weight, `kv_read_bytes` of cache;
    `role` as in `sim.opkinds.kernel_class` ("norm" for a norm kernel)."""
    weights = {"B": {"bytes": weight_bytes, "shape": [weight_bytes // 2], "dtype": dtype}} if weight_bytes else {}
    head = TraceHeader(model={"name": "single op"}, decoder="sequential", dtype=dtype, batch=1, prompt_lens=[1],
                       max_new_tokens=1, device="meta", device_name="-", torch_version="-", code_revision="-",
                       flips={"source": "none"}, weights=weights, measured=False, command="one op")
    records = [OpRecord(i, 0, None, None, None, 0, out_shape[0], module, kernel_class(op, role), op, in_shapes,
                        [dtype] * len(in_shapes), [out_shape], [dtype], flops, weight_bytes, act_bytes // 2,
                        act_bytes - act_bytes // 2, kv_read_bytes, 0, ["B"] if weight_bytes else [],
                        ["kv:0:0"] if kv_read_bytes else [], [0] * len(in_shapes)) for i in range(calls)]
    return Trace(head, records, [StageRecord(0, "decode", [], [], [])])
