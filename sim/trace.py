"""Trace files: the contract between the decoder (which writes them) and the simulator (which reads them).

Format, version 4 (the reader also reads versions 1 to 3: see "Older versions" below)
-------------------------------------------------------------------------------------
A trace is gzip-compressed JSON Lines (suffix ``.jsonl.gz``), one JSON object per line, keys in the order of
the dataclass fields below. Writes are byte-reproducible: no file name or time stamp in the gzip header,
compact separators, floats as Python prints them. Units: bytes, FLOPs, seconds.

Decoding repeats itself: two decode steps of the same rows run the same ops, and only those that read the KV
cache see it longer. So a trace stores every distinct op once ("op" records) and every stage as the ids of the
ops it executed, given as runs of ids or as an earlier stage with the ops that changed ("stage" records): the
file, and the time to read it, grow with the distinct work, not with tokens x layers.

Line 1, the header (`TraceHeader`):
  format "speed-sim-trace", version 4, model {config field: scalar | null}, decoder "sequential" | "speed",
  dtype str, batch int >= 1, prompt_lens [int >= 0], max_new_tokens int >= 1, device str ("cpu", "cuda",
  "meta"), device_name str, torch_version str, code_revision str, flips {"source": str, ...} (where SPEED's
  changed predictions came from: "model", an oracle's description, or "none"), weights {tensor id (parameter
  name): {"bytes": int >= 0, "shape": [int >= 0], "dtype": str}}, measured bool (ops carry measured durations),
  command str (the command line that produced the trace), extra {...} (free-form; optional, default {}).
Then records, each with a "type" key first (every number within the bounds below, "Bounds"):
  "op" (`OpRecord` without `i` and `stage`), one distinct op: id (int: = the number of op records before it),
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
  order: how many ops back, in its stage, the op that last wrote that input's memory is; 0: written before
  the stage, as weights, a cache or the residual stream carried from the last stage are; what a fusion model
  needs to tell a fused kernel's intermediates from its external inputs), deps [int >= 1] (the earlier ops of
  its stage that the op must follow, as distances back: 1 = the op just before; from the memory each op
  reads and writes: read after write, write after read, write after write), duration_s (float >= 0 or null;
  non-null in a measured trace). Distances, not indices, so that an op repeated from stage to stage is one
  record.
  "stage" (`StageRecord`), after the op records it uses: stage (int, strictly increasing through the file),
  kind "encoder" | "prefill" | "decode" | "speed", rows [[seq, position, exit]] (the rows run: the position of
  each row's input token and the exit, 1..G, it reached this stage; a sequential decode step runs all groups,
  exit G), commits [[seq, position, token]], flushes [[seq, exit, rows_flushed]] (all int >= 0), wall_s
  (float >= 0 or null: measured wall time of the stage), ops (the op ids it executed, in program order), one of
    {"runs": [[first, count], ...]}: ids first, first + 1, ..., first + count - 1 (count >= 1), run after run;
    {"like": S, "set": [[slot, id], ...]}: the ops of the earlier stage record S, with the op at each slot
      (0-based position in the stage; slots strictly increasing) replaced by op `id`.
  "end", the last line, exactly once: ops (number of op records), stages (number of stage records), executed
  (ops executed: the sum over stages of their ops).
An executed op is an op record at a slot of a stage: its index `i` counts the ops executed before it, and its
stage is the stage record's. Its srcs and deps reach back at most to its stage's first op. The writer writes
op records in order of first use, each just before the first stage that uses it, and a stage "like" an
identical earlier stage or the last one with as many ops when that takes fewer numbers than its runs.

What the capture relies on (reference.capture.tracing; tests/test_tracing.py fails when the model drifts from
it): the decoder's blocks are modules named `blocks.L` (`encoder.blocks.L` for the encoder), so an op inside
one has layer L; norms are `RMSNorm` modules (kind "norm" for the ops inside them); the LM head is the model's
`head` method (kind "lm_head" for its product); per-row attention reads a view of the KV cache tensor
`[depth, seq, ...]` (cross: `[layer, seq, ...]`), whose storage offset gives depth (layer) and sequence.

In memory
---------
`read_trace` gives a `Trace` as the file holds it: `distinct` (the op records, once each) and `stage_op_ids`
(per stage, the ids of its ops); the simulator works on these, so its time too grows with the distinct work.
`Trace.ops` lists every executed op (expanded on first use, for code that walks them all) and `ops_of_stage`
one stage's. A `Trace` built from executed ops (`Trace(header, ops, stages)`) finds the distinct ones itself.

Older versions
--------------
Versions 1 to 3 have one "op" record per executed op, with its index i and stage, before the stage record it
belongs to (previous stage record's index < op.stage <= next one's), and an "end" record without "executed".
Version 2 has no seq, kind, kv or srcs (read as [], unknown); version 1 has no deps either (its ops read as
deps null: program order). Their captures followed naming rules instead, which the reader applies once, here:
kind from the module (a product in module "head" is the LM head; ops in a module whose name ends in "norm" are
norm kernels), and `read_trace` derives each KV read's sequence from the stage records (the r-th
self-attention op of a layer belongs to the stage's r-th row, the j-th cross-attention op to its j-th sequence;
prefill and encoder stages run one sequence each, in order). Streamed with `iter_records`, such ops have seq
null and kv keyed by depth alone. `TraceWriter` always writes version 4.

Bounds
------
Every number is one a real run can have, so that nothing read overflows a float or grows without end in the
simulator: FLOPs of an op at most 2**60 (MAX_FLOPS), bytes of an op or a weight at most 2**50 (MAX_BYTES), a
shape's nonzero dimensions multiplying to at most 2**50 (MAX_ELEMENTS), every other integer (group, depth, layer,
seq, rows, batch, lengths, stage numbers, the entries of rows, commits and flushes) at most 2**31 - 1
(MAX_INDEX), a measured time 0 or within 1e-12..1e6 s (MIN_SECONDS, MAX_SECONDS), at most 2**26 ops executed
(MAX_EXECUTED) and 2**20 stage records (MAX_STAGES), a line at most 64 MiB (MAX_LINE_BYTES), the header's free-form
objects (flips, extra) nested at most 16 deep (MAX_NESTING). The kernel model reads an attention op's queries
(its first input: [..., rows, head_dim], two or more dimensions) and a matrix product's output (first output,
one or more dimensions); those shapes are checked too. A trace with no decode stage, or stages with no ops, is
readable (it projects to no tokens).

Error policy
------------
The reader validates everything as it streams (records before a problem are handed out first) and raises
`TraceError` (a ValueError) naming the file, the 1-based line (None for file-level problems) and the field
(None when no single field is at fault; a dotted path inside the header's objects): unknown format or version,
missing, unknown, mistyped or out-of-bounds field (unknown fields are errors: a format change bumps the
version), a key given twice in one object, NaN or Infinity anywhere (not JSON numbers), unknown record type,
out-of-order id, i or stage, a dep or src reaching outside its stage, unknown weight id, null duration in a
measured trace, a shape the kernel model cannot take, a stage's ops naming an op record not yet read, an
earlier stage that does not exist, a slot outside it or out of order, an op record no stage uses, a file that is
missing or not gzip (line None), a line that is not UTF-8, not a JSON object, nested past the parser's limit or
longer than the bound, a truncated file (corrupt compressed data: the first line that could not be read; no
"end" record: the line where it belongs), "end" counts that do not match, more ops or stages than the bounds.
Version 1-3 ops whose stage record never comes are reported at the next stage or end record. No KeyError,
TypeError, EOFError, OverflowError, RecursionError or JSON error escapes. `TraceWriter` validates little (the
reader is the check) but never leaves a half-written file at its path.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import io
import itertools
import json
import math
import operator
import os
import secrets
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sim.opkinds import KERNEL_CLASSES, kernel_class

TRACE_FORMAT = "speed-sim-trace"
TRACE_VERSION = 4
READS_VERSIONS = (1, 2, 3, 4)  # 3: one record per executed op; 2: no seq, kind, kv, srcs; 1: no deps either
DECODERS = ("sequential", "speed")
STAGE_KINDS = ("encoder", "prefill", "decode", "speed")

# What a real run can have. A file beyond these bounds is refused when read, so that no count overflows a float
# in the simulator, no list or loop grows without end, and no value nests past what the parser takes.
MAX_BYTES = 2**50  # bytes one op or weight moves: 1 PiB, hundreds of times the largest device memory
MAX_FLOPS = 2**60  # FLOPs of one op: 1.2e18, twenty minutes of a 1 PFLOP/s device for a single kernel
MAX_ELEMENTS = 2**50  # a tensor dimension, and a shape's elements (its nonzero dimensions' product): each >= 1 byte
MAX_INDEX = 2**31 - 1  # a group, depth, layer, sequence, row count, position, token, exit, stage number, length
MAX_SECONDS = 1e6  # a measured op or stage time: 11.6 days
MIN_SECONDS = 1e-12  # a nonzero measured time below a picosecond is no clock's reading
MAX_EXECUTED = 2**26  # ops a trace executes: 67M (a 70B model decoding 8,192 tokens eagerly executes ~37M)
MAX_STAGES = 2**20  # stage records: 1M (decode steps, plus an encoder and a prefill stage per sequence)
MAX_LINE_BYTES = 2**26  # 64 MiB: one line (the longest, a header listing a model's weights, is 24 kB for T5-Base)
MAX_NESTING = 16  # JSON nesting of the header's free-form objects (flips, extra); records nest 3 deep at most

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


_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (TraceHeader, OpRecord, StageRecord)}
BODY_FIELDS = _FIELDS[OpRecord][2:]  # what an op is, wherever it runs: every field but its index and stage
_BODY = operator.attrgetter(*BODY_FIELDS)


def body_key(op: OpRecord) -> tuple:
    """Every field of an op but `i` and `stage`, hashable: two executions of one distinct op have equal keys."""
    (group, depth, layer, seq, rows, module, kind, name, in_shapes, in_dtypes, out_shapes, out_dtypes, flops,
     weight_bytes, act_read, act_write, kv_read, kv_write, weights, kv, srcs, deps, duration_s) = _BODY(op)
    return (group, depth, layer, seq, rows, module, kind, name, tuple(map(tuple, in_shapes)), tuple(in_dtypes),
            tuple(map(tuple, out_shapes)), tuple(out_dtypes), flops, weight_bytes, act_read, act_write, kv_read,
            kv_write, tuple(weights), tuple(kv), tuple(srcs), None if deps is None else tuple(deps), duration_s)


class OpTable:
    """Distinct ops, each once, numbered in order of first `intern`: what a version 4 trace stores."""

    def __init__(self) -> None:
        self.ops: list[OpRecord] = []
        self._ids: dict[tuple, int] = {}

    def intern(self, op: OpRecord) -> int:
        """The id of `op` (by every field but i and stage), adding it if new."""
        key = body_key(op)
        k = self._ids.get(key)
        if k is None:
            k = self._ids[key] = len(self.ops)
            self.ops.append(op)
        return k


@dataclass(init=False, eq=False, repr=False)
class Trace:
    """A whole trace in memory, as a version 4 file holds it: `header`, `stages`, the distinct ops once each
    (`distinct`, each an OpRecord whose i and stage are those of its first execution) and per stage the ids of
    the ops it executed (`stage_op_ids[k]` for `stages[k]`, a tuple). `ops` lists every executed op. Treat all of
    it as read-only: a distinct op stands for all its executions. (`dataclasses.replace` works, through `ops`.)"""

    __slots__ = ("_by_stage", "_ops", "distinct", "header", "stage_op_ids", "stages")
    header: TraceHeader
    ops: list[OpRecord]  # the property below
    stages: list[StageRecord]

    def __init__(self, header: TraceHeader, ops: list[OpRecord], stages: list[StageRecord]) -> None:
        """From executed ops in stage order (each op's stage one of the stage records'): finds the distinct ops."""
        index = {s.stage: k for k, s in enumerate(stages)}
        per_stage: list[list[int]] = [[] for _ in stages]
        table, last = OpTable(), -1
        for op in ops:
            k = index.get(op.stage)
            if k is None or k < last:
                raise ValueError(f"op {op.i} of stage {op.stage}: " + (
                    "no stage record has that stage" if k is None else "ops must come in the order of their stages"))
            last = k
            per_stage[k].append(table.intern(op))
        self._init(header, stages, table.ops, [tuple(ids) for ids in per_stage])
        self._ops = ops

    @classmethod
    def compact(cls, header: TraceHeader, stages: list[StageRecord], distinct: list[OpRecord],
                stage_op_ids: Sequence[tuple[int, ...]]) -> Trace:
        """A trace from its distinct ops and, per stage, the ids of the ops it executed (ids into `distinct`)."""
        if len(stage_op_ids) != len(stages):
            raise ValueError(f"{len(stage_op_ids)} stage op id tuples for {len(stages)} stages")
        trace = cls.__new__(cls)
        trace._init(header, stages, distinct, [tuple(ids) for ids in stage_op_ids])
        return trace

    def _init(self, header: TraceHeader, stages: list[StageRecord], distinct: list[OpRecord],
              stage_op_ids: list[tuple[int, ...]]) -> None:
        self.header, self.stages, self.distinct, self.stage_op_ids = header, stages, distinct, stage_op_ids
        self._by_stage = {s.stage: k for k, s in enumerate(stages)}
        self._ops: list[OpRecord] | None = None

    @property
    def executed(self) -> int:
        """Ops executed (the length of `ops`)."""
        return sum(map(len, self.stage_op_ids))

    @property
    def ops(self) -> list[OpRecord]:
        """Every executed op in program order, i counting from 0 (expanded from the distinct ops on first use)."""
        if self._ops is None:
            values = [_BODY(op) for op in self.distinct]
            counter = itertools.count()
            self._ops = [OpRecord(next(counter), stage.stage, *values[k])
                         for stage, ids in zip(self.stages, self.stage_op_ids) for k in ids]
        return self._ops

    def ops_of_stage(self, stage: int) -> list[OpRecord]:
        """The executed ops of the stage record numbered `stage`, in program order ([] if there is none)."""
        k = self._by_stage.get(stage)
        if k is None:
            return []
        first = sum(map(len, self.stage_op_ids[:k]))
        return self.ops[first : first + len(self.stage_op_ids[k])]

    def counts(self) -> Counter[int]:
        """How many times each distinct op (by id) is executed."""
        counts: Counter[int] = Counter()
        for ids in self.stage_op_ids:
            counts.update(ids)
        return counts

    def first_executions(self) -> list[int]:
        """Per distinct op, the index in `ops` of its first execution."""
        first = [-1] * len(self.distinct)
        n = 0
        for ids in self.stage_op_ids:
            for j, k in enumerate(ids):
                if first[k] < 0:
                    first[k] = n + j
            n += len(ids)
        return first

    @property
    def total_flops(self) -> int:
        """FLOPs of all executed ops."""
        return sum(self.distinct[k].flops * n for k, n in self.counts().items())

    @property
    def total_bytes(self) -> int:
        """Bytes of all executed ops: weights + activations read and written + KV cache read and written."""
        return sum((op.weight_bytes + op.act_read_bytes + op.act_write_bytes + op.kv_read_bytes + op.kv_write_bytes)
                   * n for op, n in ((self.distinct[k], n) for k, n in self.counts().items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (self.header == other.header and self.stages == other.stages
                and _executions(self) == _executions(other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Trace({self.header.model.get('name')!r}, {self.header.decoder}, {len(self.stages)} stages, "
                f"{self.executed} ops executed, {len(self.distinct)} distinct)")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for building data that is all kept (a trace, a projection's
    tables), where collections passing over the growing heap only cost time (~40% of reading a trace)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _executions(trace: Trace) -> list[tuple]:
    """Per executed op, its body key: what two traces with the same ops have in common."""
    keys = [body_key(op) for op in trace.distinct]
    return [keys[k] for ids in trace.stage_op_ids for k in ids]


# ---------------------------------------------------------------------------------------------------- writing

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _line(obj: Any, kind: str | None, **first: Any) -> str:
    d: dict[str, Any] = {"type": kind} if kind else {}
    d.update(first)
    names = _FIELDS[type(obj)]
    for name in names[2:] if type(obj) is OpRecord else names:
        d[name] = getattr(obj, name)
    return _ENCODER.encode(d) + "\n"


def _runs(ids: tuple[int, ...]) -> list[list[int]]:
    """Consecutive ids as [first, count] runs."""
    runs: list[list[int]] = []
    for k in ids:
        if runs and runs[-1][0] + runs[-1][1] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    return runs


class TraceWriter:
    """Write a trace to `path` through a temp file in the same directory, moved onto `path` by `close()`
    (on normal exit of a `with` block); `abort()` (on an exception) deletes it, leaving `path` untouched.
    Either stream executed ops (`op`) and close each stage with `stage(record)`, or give a stage's op ids
    into this writer's `table` (`stage(record, ids)`); `write_trace` writes a whole `Trace`."""

    def __init__(self, path: PathLike, header: TraceHeader) -> None:
        self.path = Path(path)
        self.table = OpTable()
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        self._raw = open(self._tmp, "xb")  # noqa: SIM115 (closed by close/abort)
        gz = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, filename="")
        self._out = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
        self._pending: list[int] = []  # ids of the ops streamed since the last stage record
        self._written = self._stages = self._executed = 0
        self._same: dict[tuple[int, ...], int] = {}  # op ids -> the first stage that executed them
        self._last_of_length: dict[int, tuple[int, tuple[int, ...]]] = {}  # n ops -> (stage, ids) of the last
        try:
            self._out.write(_line(replace(header, version=TRACE_VERSION), None))
        except BaseException:
            self.abort()
            raise

    def op(self, record: OpRecord) -> None:
        """Append an executed op to the stage being written (its i and stage are not written: implied)."""
        self._pending.append(self.table.intern(record))

    def stage(self, record: StageRecord, ids: Sequence[int] | None = None) -> None:
        """Close a stage: the ops streamed since the last stage record, or `ids` (ids into `table`), in order."""
        ids = tuple(self._pending if ids is None else ids)
        self._pending = []
        for k in range(self._written, len(self.table.ops)):  # op records before the first stage that uses them
            self._out.write(_line(self.table.ops[k], "op", id=k))
        self._written = len(self.table.ops)
        self._out.write(_line(record, "stage")[:-2] + ',"ops":' + _ENCODER.encode(self._encode(record.stage, ids))
                        + "}\n")
        self._stages += 1
        self._executed += len(ids)

    def _encode(self, stage: int, ids: tuple[int, ...]) -> dict[str, Any]:
        """A stage's ops field: like an identical earlier stage, else like the last one with as many ops or as
        runs of ids, whichever takes fewer numbers."""
        same = self._same.setdefault(ids, stage)
        last = self._last_of_length.get(len(ids))
        self._last_of_length[len(ids)] = (stage, ids)
        if same != stage:
            return {"like": same, "set": []}
        runs = _runs(ids)
        if last is not None:
            changed = list(itertools.compress(range(len(ids)), map(operator.ne, ids, last[1])))
            if len(changed) < len(runs):
                return {"like": last[0], "set": [[j, ids[j]] for j in changed]}
        return {"runs": runs}

    def close(self) -> None:
        """Write the end record and move the finished file onto `path`."""
        if self._raw.closed:
            return
        try:
            if self._pending:
                raise ValueError(f"{len(self._pending)} ops streamed after the last stage record")
            end = {"type": "end", "ops": self._written, "stages": self._stages, "executed": self._executed}
            self._out.write(_ENCODER.encode(end) + "\n")
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


def write_trace(path: PathLike, trace: Trace) -> None:
    """Write `trace` to `path` (atomically), as version 4."""
    with TraceWriter(path, trace.header) as writer:
        mine: dict[int, int] = {}  # the trace's op ids -> the writer's
        for stage, ids in zip(trace.stages, trace.stage_op_ids):
            for k in sorted(set(ids).difference(mine)):
                mine[k] = writer.table.intern(trace.distinct[k])
            writer.stage(stage, tuple(map(mine.__getitem__, ids)))


# ---------------------------------------------------------------------------------------------------- reading

Check = Callable[[Any], bool]


_INT, _LIST, _STR_TYPE = {int}, {list}, {str}


def _ints(v: Any, least: int = 0, most: int | None = MAX_INDEX) -> bool:
    """A list of integers in least..most (no upper bound: None; `type(x) is int` also rejects bools), checked
    with C-level passes."""
    return (type(v) is list and {*map(type, v)} <= _INT and min(v, default=least) >= least
            and (most is None or max(v, default=0) <= most))


def _shape(v: Any) -> bool:
    """A tensor shape: integers >= 0 whose nonzero ones multiply to at most MAX_ELEMENTS (so each is at most that)."""
    return (type(v) is list and {*map(type, v)} <= _INT and min(v, default=0) >= 0
            and math.prod(filter(None, v)) <= MAX_ELEMENTS)


def _shapes(v: Any) -> bool:
    """A list of shapes, checked in a few C-level passes over all their dimensions: when the nonzero ones of all
    shapes multiply to at most MAX_ELEMENTS, so do each shape's (the common case); else shape by shape."""
    if type(v) is not list or not {*map(type, v)} <= _LIST:
        return False
    dims = list(itertools.chain.from_iterable(v))
    if not ({*map(type, dims)} <= _INT and min(dims, default=0) >= 0):
        return False
    return math.prod(filter(None, dims)) <= MAX_ELEMENTS or all(math.prod(filter(None, s)) <= MAX_ELEMENTS for s in v)


_WEIGHT = "{bytes: an integer in 0..2**50, shape: a shape, dtype: a string}"


def _weight(v: Any) -> bool:
    return (type(v) is dict and v.keys() == {"bytes", "shape", "dtype"} and type(v["bytes"]) is int
            and 0 <= v["bytes"] <= MAX_BYTES and _shape(v["shape"]) and type(v["dtype"]) is str)


def _scalar(v: Any) -> bool:
    return v is None or type(v) in (str, int, bool) or (type(v) is float and math.isfinite(v))


def _free_form(v: Any) -> bool:
    """JSON nested at most MAX_NESTING deep, every number finite (1e999 reads as infinity)."""
    level = [v]
    for _ in range(MAX_NESTING):
        inner = []
        for x in level:
            if type(x) is dict:
                inner += x.values()
            elif type(x) is list:
                inner += x
            elif type(x) is float and not math.isfinite(x):
                return False
        if not inner:
            return True
        level = inner
    return False


def _count(most: int, bound: str, least: int = 0, null: bool = False) -> tuple[Check, str]:
    """A field holding an integer in least..most (or null, when `null`), `bound` naming `most`."""
    desc = f"an integer in {least}..{bound}" + (" or null" if null else "")
    if null:
        return (lambda v: v is None or (type(v) is int and least <= v <= most)), desc
    return (lambda v: type(v) is int and least <= v <= most), desc


def _seconds(v: Any) -> bool:
    return v is None or (type(v) in (float, int) and (v == 0 or MIN_SECONDS <= v <= MAX_SECONDS))


# Field checkers: (predicate, what it expects). `type(v) is int` also rejects bools.
_KERNEL_CLASSES = frozenset(KERNEL_CLASSES)
_KIND = (lambda v: type(v) is str and v in _KERNEL_CLASSES, f"one of {KERNEL_CLASSES}")
_NAT = (lambda v: type(v) is int and v >= 0, "an integer >= 0")  # a count compared with what was read
_INDEX = _count(MAX_INDEX, "2**31 - 1")
_POS = _count(MAX_INDEX, "2**31 - 1", least=1)
_OPT_INDEX = _count(MAX_INDEX, "2**31 - 1", null=True)
_BYTES = _count(MAX_BYTES, "2**50")
_STR = (lambda v: type(v) is str, "a string")
_STRS = (lambda v: type(v) is list and {*map(type, v)} <= _STR_TYPE, "a list of strings")
_SHAPES = (_shapes, "a list of shapes (lists of integers >= 0 whose nonzero ones multiply to at most 2**50)")
_TRIPLES = (lambda v: type(v) is list and all(_ints(t) and len(t) == 3 for t in v),
            "a list of [int, int, int] (integers in 0..2**31 - 1)")
_SECONDS = (_seconds, f"0, a number of seconds in {MIN_SECONDS:g}..{MAX_SECONDS:g}, or null")
_OBJECT = (lambda v: type(v) is dict, "an object")
_FREE = (lambda v: type(v) is dict and _free_form(v),
         f"an object nested at most {MAX_NESTING} deep, its numbers finite")
_HEADER: dict[str, tuple[Check, str]] = {
    "format": _STR, "version": _NAT,
    "model": (lambda v: type(v) is dict and all(map(_scalar, v.values())), "an object of scalars (numbers finite)"),
    "decoder": (lambda v: v in DECODERS, f"one of {DECODERS}"), "dtype": _STR, "batch": _POS,
    "prompt_lens": (_ints, "a list of integers in 0..2**31 - 1"), "max_new_tokens": _POS, "device": _STR,
    "device_name": _STR, "torch_version": _STR, "code_revision": _STR,
    "flips": (lambda v: _FREE[0](v) and type(v.get("source")) is str,
              f"an object with a string 'source', nested at most {MAX_NESTING} deep, its numbers finite"),
    "weights": (lambda v: type(v) is dict and all(map(_weight, v.values())), f"an object of {{id: {_WEIGHT}}}"),
    "measured": (lambda v: type(v) is bool, "true or false"), "command": _STR, "extra": _FREE,
}
_OP: dict[str, tuple[Check, str]] = {
    "i": _NAT, "stage": _INDEX, "group": _OPT_INDEX, "depth": _OPT_INDEX, "layer": _OPT_INDEX, "seq": _OPT_INDEX,
    "rows": _INDEX, "module": _STR, "kind": _KIND, "op": _STR,
    "in_shapes": _SHAPES, "in_dtypes": _STRS, "out_shapes": _SHAPES, "out_dtypes": _STRS,
    "flops": _count(MAX_FLOPS, "2**60"), "weight_bytes": _BYTES, "act_read_bytes": _BYTES, "act_write_bytes": _BYTES,
    "kv_read_bytes": _BYTES, "kv_write_bytes": _BYTES, "weights": _STRS, "kv": _STRS,
    # distances back in the stage: bounded by the ops of the stage before the op (checked with the stage)
    "srcs": (lambda v: _ints(v, 0, None), "a list of integers >= 0"),
    "deps": (lambda v: _ints(v, 1, None), "a list of integers >= 1"),
    "duration_s": _SECONDS,
}
_OP_V2 = {k: v for k, v in _OP.items() if k not in ("seq", "kind", "kv", "srcs")}
_OP_V1 = {k: v for k, v in _OP_V2.items() if k != "deps"}
_STAGE: dict[str, tuple[Check, str]] = {
    "stage": _INDEX, "kind": (lambda v: v in STAGE_KINDS, f"one of {STAGE_KINDS}"), "rows": _TRIPLES,
    "commits": _TRIPLES, "flushes": _TRIPLES, "wall_s": _SECONDS,
}
_END: dict[str, tuple[Check, str]] = {"ops": _NAT, "stages": _NAT}
# version 4: an op record is a distinct op, numbered by `id`; a stage names its ops; the end counts executions
_OP_V4 = {"id": _NAT, **{k: c for k, c in _OP.items() if k not in ("i", "stage")}}
_STAGE_V4 = {**_STAGE, "ops": _OBJECT}
_END_V4 = {**_END, "executed": _NAT}
_GETTERS = {id(schema): operator.itemgetter(*schema)
            for schema in (_HEADER, _OP, _OP_V2, _OP_V1, _STAGE, _END, _OP_V4, _STAGE_V4, _END_V4)}
_CHECKS = {id(schema): tuple(ok for ok, _ in schema.values())
           for schema in (_HEADER, _OP, _OP_V2, _OP_V1, _STAGE, _END, _OP_V4, _STAGE_V4, _END_V4)}
_MISSING = object()


def _show(v: Any) -> str:
    try:
        text = json.dumps(v)
    except (ValueError, RecursionError):  # nested deeper than the encoder goes, or an integer too long to print
        text = f"a {type(v).__name__} too large to show"
    return text if len(text) <= 80 else text[:77] + "..."


def _check(obj: dict[str, Any], schema: dict[str, tuple[Check, str]], path: PathLike, line: int) -> tuple[Any, ...]:
    """Validate `obj` (a record without its "type") against `schema`; return its values in schema order."""
    try:
        values = _GETTERS[id(schema)](obj)
    except KeyError as e:
        raise TraceError(path, line, e.args[0], "missing") from None
    if len(obj) != len(schema):
        raise TraceError(path, line, next(k for k in obj if k not in schema), "unknown field")
    if all(map(operator.call, _CHECKS[id(schema)], values)):  # the common case, in one C-level pass
        return values
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


def _loads(data: bytes) -> Any:
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


def _parse(path: PathLike, line: int, data: bytes) -> dict[str, Any]:
    """One line as a JSON object, or a TraceError naming the line (and the field, where one is at fault)."""
    try:
        obj = _loads(data)
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
        raise TraceError(path, line, None, f"expected a JSON object, got {_show(obj)}")
    return obj


_OP_PREFIX = b'{"type":"op","i":'
_OP_SCHEMAS = {3: _OP, 2: _OP_V2, 1: _OP_V1}  # version -> op schema
_OP_REST = {v: {k: c for k, c in schema.items() if k not in ("i", "stage")} for v, schema in _OP_SCHEMAS.items()}
for _schema in _OP_REST.values():
    _GETTERS[id(_schema)] = operator.itemgetter(*_schema)
    _CHECKS[id(_schema)] = tuple(ok for ok, _ in _schema.values())


def legacy_kind(op: str, module: str) -> str:
    """The kernel class of a version 1 or 2 op, by the naming rules of the capture that wrote it."""
    role = "head" if module == "head" else "norm" if module.endswith("norm") else None
    return kernel_class(op, role)


def _legacy_kv_item(module: str, depth: int | None, layer: int | None, seq: int | None) -> str:
    """The KV item a version 1 or 2 op reads: cross-attention ran in modules named "*cross_attn"."""
    who = "?" if seq is None else seq
    return f"xkv:{who}:{layer}" if module.endswith("cross_attn") else f"kv:{who}:{depth}"


def _legacy_sequences(header: TraceHeader, all_ops: list[OpRecord], stages: list[StageRecord]) -> None:
    """Version 1 and 2 ops: the sequence of each one-sequence stage's ops and of each KV read (module docstring,
    "Older versions"), and their KV items keyed by it."""
    groups = header.model.get("n_groups")
    nd = header.model.get("n_unique_layers")
    by_stage: dict[int, list[OpRecord]] = {}
    for op in all_ops:
        by_stage.setdefault(op.stage, []).append(op)
    encoders = prefills = 0
    for stage in stages:
        ops = by_stage.get(stage.stage, [])
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
    # short enough to be a count and a stage number (the general path names what is not)
    if not (_plain_int(i_text) and _plain_int(stage_text) and len(i_text) <= 19 and len(stage_text) <= 10
            and int(stage_text) <= MAX_INDEX):
        return None
    rest = data[c + 1 :]
    values = memo.get(rest)
    if values is None:
        try:
            obj = _loads(b"{" + rest)
            values = _check(obj, _OP_REST[version], "", 0) if type(obj) is dict else None
        except (ValueError, RecursionError, TraceError):  # the general path names the problem
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


def _header(path: PathLike, line: int, obj: dict[str, Any]) -> TraceHeader:
    if obj.get("format") != TRACE_FORMAT:
        raise TraceError(path, line, "format", f"expected {TRACE_FORMAT!r}, got {_show(obj.get('format'))}")
    if type(obj.get("version")) is not int or obj["version"] not in READS_VERSIONS:
        raise TraceError(path, line, "version",
                         f"unsupported version {_show(obj.get('version'))} (this reader reads {READS_VERSIONS})")
    obj.setdefault("extra", {})
    weights = obj.get("weights")
    if type(weights) is dict:  # name the weight at fault, not the whole object
        bad = next((k for k, v in weights.items() if not _weight(v)), None)
        if bad is not None:
            raise TraceError(path, line, f"weights.{bad}", f"expected {_WEIGHT}, got {_show(weights[bad])}")
    _check(obj, _HEADER, path, line)
    return TraceHeader(**obj)


def _check_op_fields(op: OpRecord, header: TraceHeader, where: tuple[PathLike, int]) -> None:
    """The checks of an op record against the header, and of its srcs against its inputs."""
    for w in op.weights:
        if w not in header.weights:
            raise TraceError(*where, "weights", f"unknown weight id {w!r} (not in the header's weights)")
    if op.duration_s is None and header.measured:
        raise TraceError(*where, "duration_s", "expected a number >= 0 in a measured trace, got null")
    if op.srcs and len(op.srcs) != len(op.in_shapes):
        raise TraceError(*where, "srcs", f"expected one distance per input ({len(op.in_shapes)}), got "
                         f"{_show(op.srcs)}")
    if op.kind in _KERNEL_SHAPES:
        name, least, what = _KERNEL_SHAPES[op.kind]
        shapes = getattr(op, name)
        if not shapes or len(shapes[0]) < least:
            raise TraceError(*where, name, f"expected a first shape of {least} or more dimensions ({what}), got "
                             f"{_show(shapes)}")


# What the kernel model reads of an op's shapes (sim.kernels.kernel_of), by kind: (field, least dimensions of its
# first shape, why)
_KERNEL_SHAPES = {
    "attention": ("in_shapes", 2, "an attention op's first input is its queries [..., rows, head_dim]"),
    "matmul": ("out_shapes", 1, "a matrix product's output is [..., n]"),
    "lm_head": ("out_shapes", 1, "the LM head's output is [..., vocabulary]"),
}


def _check_op_in_place(op: OpRecord, header: TraceHeader, where: tuple[PathLike, int], n_ops: int, last: int,
                       since_stage: int) -> None:
    """The checks of a version 1-3 op record against the records before it: its index, stage, weights,
    duration, and how far back in its stage (`since_stage` ops) its srcs and deps reach; `last` is the last
    stage record."""
    if op.i != n_ops:
        raise TraceError(*where, "i", f"expected {n_ops} (the number of op records before it), got {op.i}")
    if n_ops >= MAX_EXECUTED:
        raise TraceError(*where, None, _TOO_MANY_OPS)
    if op.stage <= last:
        raise TraceError(*where, "stage", f"expected > {last} (the previous stage record), got {op.stage}")
    _check_op_fields(op, header, where)
    if op.srcs and max(op.srcs) > since_stage:
        raise TraceError(*where, "srcs", f"expected one distance per input ({len(op.in_shapes)}), each at most "
                         f"{since_stage} (the ops of its stage before it), got {_show(op.srcs)}")
    if op.deps and max(op.deps) > since_stage:
        raise TraceError(*where, "deps", f"a dep reaches {_show(max(op.deps))} ops back, but only {since_stage} ops "
                         "of its stage come before it")


_TOO_MANY_OPS = f"more than {MAX_EXECUTED:,} ops executed (2**26, beyond any real run)"
_TOO_MANY_STAGES = f"more than {MAX_STAGES:,} stage records (2**20, beyond any real run)"


def _first(path: PathLike, lines: Iterator[tuple[int, bytes]]) -> TraceHeader:
    """The header, from the first line."""
    first = next(lines, None)
    if first is None:
        raise TraceError(path, 1, None, "truncated: empty file, no header")
    return _header(path, first[0], _parse(path, *first))


def _records_v3(path: PathLike, lines: Iterator[tuple[int, bytes]], header: TraceHeader
                ) -> Iterator[OpRecord | StageRecord]:
    """The op and stage records of a version 1 to 3 trace (one op record per executed op), after its header."""
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
            if n_stages >= MAX_STAGES:
                raise TraceError(path, line, None, _TOO_MANY_STAGES)
            last, pending, since_stage = st.stage, -1, 0
            n_stages += 1
            yield st
        elif kind == "end":
            _check(obj, _END, path, line)
            for name, n in (("ops", n_ops), ("stages", n_stages)):
                if obj[name] != n:
                    raise TraceError(path, line, name, f"expected {n} (the {name[:-1]} records read), got "
                                     f"{_show(obj[name])}")
            if pending >= 0:
                raise TraceError(path, line, None, f"op records of stage {pending} have no stage record")
            ended = True
        else:
            problem = "missing" if kind is _MISSING else f"expected 'op', 'stage' or 'end', got {_show(kind)}"
            raise TraceError(path, line, "type", problem)
    if not ended:
        raise TraceError(path, line + 1, None, "truncated: no end record")




def _ops_error(path: PathLike, line: int, problem: str) -> TraceError:
    return TraceError(path, line, "ops", problem)


class _CompactReader:
    """The records of a version 4 trace after its header, validated as they come: op records fill `distinct`
    (each OpRecord's i and stage are set at its first execution), `stages` yields each stage record with the
    ids of its ops."""

    def __init__(self, path: PathLike, header: TraceHeader) -> None:
        self.path, self.header = path, header
        self.distinct: list[OpRecord] = []
        self._reach: list[int] = []  # per op record: how far back in its stage its srcs and deps reach
        self._lines: list[int] = []  # per op record: its line
        self._ids_of: dict[int, tuple[int, ...]] = {}  # stage number -> the ids of its ops
        self._last = -1  # the last stage number read
        self._executed = 0

    def stages(self, lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[StageRecord, tuple[int, ...]]]:
        line, ended = 1, False
        for line, data in lines:
            if ended:
                raise TraceError(self.path, line, None, "record after the end record")
            obj = _parse(self.path, line, data)
            kind = obj.pop("type", _MISSING)
            if kind == "op":
                self._op(obj, line)
            elif kind == "stage":
                yield self._stage(obj, line)
            elif kind == "end":
                self._end(obj, line)
                ended = True
            else:
                problem = "missing" if kind is _MISSING else f"expected 'op', 'stage' or 'end', got {_show(kind)}"
                raise TraceError(self.path, line, "type", problem)
        if not ended:
            raise TraceError(self.path, line + 1, None, "truncated: no end record")

    def _op(self, obj: dict[str, Any], line: int) -> None:
        values = _check(obj, _OP_V4, self.path, line)
        if values[0] != len(self.distinct):
            raise TraceError(self.path, line, "id",
                             f"expected {len(self.distinct)} (the number of op records before it), got {values[0]}")
        if values[0] >= MAX_EXECUTED:  # each op record is executed at least once
            raise TraceError(self.path, line, None, _TOO_MANY_OPS)
        op = OpRecord(values[0], -1, *values[1:])
        _check_op_fields(op, self.header, (self.path, line))
        self.distinct.append(op)
        self._reach.append(max(max(op.srcs, default=0), max(op.deps or (0,))))
        self._lines.append(line)

    def _stage(self, obj: dict[str, Any], line: int) -> tuple[StageRecord, tuple[int, ...]]:
        values = _check(obj, _STAGE_V4, self.path, line)
        stage = StageRecord(*values[:-1])
        if stage.stage <= self._last:
            raise TraceError(self.path, line, "stage", f"expected > {self._last} (the previous stage record), got "
                             f"{stage.stage}")
        if len(self._ids_of) >= MAX_STAGES:
            raise TraceError(self.path, line, None, _TOO_MANY_STAGES)
        ids, slots = self._ids(values[-1], line)
        if self._executed + len(ids) > MAX_EXECUTED:
            raise _ops_error(self.path, line, _TOO_MANY_OPS)
        reach = self._reach
        bad = next((j for j in slots if reach[ids[j]] > j), None)
        if bad is not None:
            raise _ops_error(self.path, line, f"op {ids[bad]} at slot {bad} has srcs or deps reaching "
                             f"{_show(reach[ids[bad]])} ops back, but only {bad} ops of its stage come before it")
        for j in slots:  # an op's first execution gives it its index and stage
            op = self.distinct[ids[j]]
            if op.stage < 0:
                op.i, op.stage = self._executed + j, stage.stage
        self._ids_of[stage.stage] = ids
        self._last = stage.stage
        self._executed += len(ids)
        return stage, ids

    def _ids(self, ops: dict[str, Any], line: int) -> tuple[tuple[int, ...], Sequence[int]]:
        """The op ids of a stage's ops field, and the slots that hold ops not checked in an earlier stage."""
        n = len(self.distinct)
        if ops.keys() == {"runs"}:
            runs = ops["runs"]
            if not (type(runs) is list and all(_ints(r) and len(r) == 2 and r[1] >= 1 for r in runs)):
                raise _ops_error(self.path, line, f"expected runs [[first id, count >= 1], ...], got {_show(runs)}")
            beyond = next((r for r in runs if r[0] + r[1] > n), None)
            if beyond is not None:
                raise _ops_error(self.path, line, f"run {beyond} names ops up to id {beyond[0] + beyond[1] - 1}, but "
                                 f"only {n} op records come before it")
            if sum(count for _, count in runs) > MAX_EXECUTED - self._executed:  # before expanding them
                raise _ops_error(self.path, line, _TOO_MANY_OPS)
            ids = tuple(itertools.chain.from_iterable(range(first, first + count) for first, count in runs))
            return ids, range(len(ids))
        if ops.keys() == {"like", "set"}:
            base = self._ids_of.get(ops["like"]) if type(ops["like"]) is int else None
            if base is None:
                raise _ops_error(self.path, line, f"'like': no earlier stage record {_show(ops['like'])}")
            changes = ops["set"]
            if not (type(changes) is list and all(_ints(c) and len(c) == 2 for c in changes)):
                raise _ops_error(self.path, line, f"expected 'set' [[slot, id], ...], got {_show(changes)}")
            slots = [slot for slot, _ in changes]
            if any(b <= a for a, b in itertools.pairwise(slots)) or (slots and slots[-1] >= len(base)):
                raise _ops_error(self.path, line, f"'set' slots must increase and lie below {len(base)} (the ops of "
                                 f"stage {ops['like']}), got {_show(slots)}")
            beyond = next((k for _, k in changes if k >= n), None)
            if beyond is not None:
                raise _ops_error(self.path, line, f"'set' names op {beyond}, but only {n} op records come before it")
            if not changes:
                return base, slots  # the same ops: the same tuple
            ids = list(base)
            for slot, k in changes:
                ids[slot] = k
            return tuple(ids), slots
        raise _ops_error(self.path, line, f"expected {{'runs': ...}} or {{'like': ..., 'set': ...}}, got {_show(ops)}")

    def _end(self, obj: dict[str, Any], line: int) -> None:
        _check(obj, _END_V4, self.path, line)
        counts = {"ops": (len(self.distinct), "op records read"), "stages": (len(self._ids_of), "stage records read"),
                  "executed": (self._executed, "ops the stages executed")}
        for name, (n, what) in counts.items():
            if obj[name] != n:
                raise TraceError(self.path, line, name, f"expected {n} (the {what}), got {_show(obj[name])}")
        unused = next((op for op in self.distinct if op.stage < 0), None)
        if unused is not None:
            raise TraceError(self.path, self._lines[unused.i], "id", f"op record {unused.i} is used by no stage")


def _stream(path: PathLike) -> Iterator[TraceHeader | OpRecord | StageRecord]:
    lines = _lines(path)
    header = _first(path, lines)
    yield header
    if header.version < 4:
        yield from _records_v3(path, lines, header)
        return
    reader = _CompactReader(path, header)
    executed = itertools.count()
    for stage, ids in reader.stages(lines):
        for k in ids:
            yield OpRecord(next(executed), stage.stage, *_BODY(reader.distinct[k]))
        yield stage


def iter_records(path: PathLike) -> Iterator[TraceHeader | OpRecord | StageRecord]:
    """Stream a trace, validating as it goes: the header, then every executed op and stage record in program
    order (each stage record after its ops), whatever the version. A missing or non-gzip file raises TraceError
    here; other problems when the reader reaches them."""
    _open(path)
    return _stream(path)


def read_trace(path: PathLike) -> Trace:
    """Read and validate a whole trace file; a version 4 file in time that grows with its distinct ops."""
    _open(path)
    lines = _lines(path)
    header = _first(path, lines)
    with gc_paused():  # the records are all kept
        if header.version >= 4:
            reader = _CompactReader(path, header)
            stages, stage_op_ids = [], []
            for stage, ids in reader.stages(lines):
                stages.append(stage)
                stage_op_ids.append(ids)
            return Trace.compact(header, stages, reader.distinct, stage_op_ids)
        ops: list[OpRecord] = []
        old_stages: list[StageRecord] = []
        for rec in _records_v3(path, lines, header):
            (ops if type(rec) is OpRecord else old_stages).append(rec)  # type: ignore[arg-type]
        if header.version < 3:
            _legacy_sequences(header, ops, old_stages)
        return Trace(header, ops, old_stages)


def read_checked(path: PathLike) -> Trace:
    """A trace file read to project: `read_trace`, whose bounds and shape rules admit only ops that
    `sim.kernels.check_op` passes (tests/test_trace_hostile.py), and at least one op (else nothing to project).
    Errors are ValueErrors naming the file."""
    trace = read_trace(path)
    if not trace.executed:
        raise ValueError(f"trace {path}: no op records, nothing to project")
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
