"""Reading a trace: `read_trace` (a whole file, in time that grows with its distinct ops), `iter_records` (a
stream of every executed op) and `read_checked` (a file to project), validating everything as they go: the
header, the version 4 compact records (`_CompactReader`), and versions 1 to 3 through `sim.trace.legacy`
(sim/trace/FORMAT.md, "Error policy")."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from sim.trace.checks import StageRules, check_op_record
from sim.trace.jsonl import check_gzip, parse, read_lines
from sim.trace.legacy import legacy_sequences, records_v3
from sim.trace.limits import MAX_EXECUTED, MAX_STAGES, READS_VERSIONS, TOO_MANY_OPS, TOO_MANY_STAGES, TRACE_FORMAT
from sim.trace.records import (
    OpRecord,
    PathLike,
    StageRecord,
    Trace,
    TraceError,
    TraceHeader,
    body_values,
    gc_paused,
)
from sim.trace.schema import (
    END_V4,
    HEADER,
    HEADER_V4,
    MISSING,
    OP_BY_VERSION,
    STAGE_V4,
    WEIGHT,
    check,
    ints,
    model_size_fault,
    show,
    type_error,
    weight,
)


def _header(path: PathLike, line: int, obj: dict[str, Any]) -> TraceHeader:
    if obj.get("format") != TRACE_FORMAT:
        raise TraceError(path, line, "format", f"expected {TRACE_FORMAT!r}, got {show(obj.get('format'))}")
    if type(obj.get("version")) is not int or obj["version"] not in READS_VERSIONS:
        raise TraceError(path, line, "version",
                         f"unsupported version {show(obj.get('version'))} (this reader reads {READS_VERSIONS})")
    obj.setdefault("extra", {})
    weights = obj.get("weights")
    if type(weights) is dict:  # name the weight at fault, not the whole object
        bad = next((k for k, v in weights.items() if not weight(v)), None)
        if bad is not None:
            raise TraceError(path, line, f"weights.{bad}", f"expected {WEIGHT}, got {show(weights[bad])}")
    model = obj.get("model")
    size = model_size_fault(model) if type(model) is dict else None
    if size is not None:  # name the size at fault
        raise TraceError(path, line, f"model.{size}", f"expected an integer >= {int(size != 'n_encoder_layers')}, "
                         f"got {show(model[size])}")
    check(obj, HEADER if obj["version"] >= 5 else HEADER_V4, path, line)
    if obj.get("tp_rank", 0) >= obj.get("tp", 1):
        raise TraceError(path, line, "tp_rank", f"expected a rank in 0..{obj['tp'] - 1} (tp {obj['tp']}), got "
                         f"{obj['tp_rank']}")
    if len(obj["prompt_lens"]) != obj["batch"]:
        raise TraceError(path, line, "prompt_lens", f"expected one prompt length per sequence of the batch "
                         f"({obj['batch']}), got {len(obj['prompt_lens'])}")
    return TraceHeader(**obj)  # versions before 5: tp 1, rank 0 (TraceHeader's defaults)


def _first(path: PathLike, lines: Iterator[tuple[int, bytes]]) -> TraceHeader:
    """The header, from the first line."""
    first = next(lines, None)
    if first is None:
        raise TraceError(path, 1, None, "truncated: empty file, no header")
    return _header(path, first[0], parse(path, *first))


def _ops_error(path: PathLike, line: int, problem: str) -> TraceError:
    return TraceError(path, line, "ops", problem)


class _CompactReader:
    """The records of a version 4 trace after its header, validated as they come: op records fill `distinct`
    (each OpRecord's i and stage are set at its first execution), `stages` yields each stage record with the
    ids of its ops."""

    def __init__(self, path: PathLike, header: TraceHeader) -> None:
        self.path, self.header = path, header
        self.op_schema = OP_BY_VERSION[header.version]
        self.distinct: list[OpRecord] = []
        self._reach: list[int] = []  # per op record: how far back in its stage its srcs and deps reach
        self._lines: list[int] = []  # per op record: its line
        self._ids_of: dict[int, tuple[int, ...]] = {}  # stage number -> the ids of its ops
        self._last = -1  # the last stage number read
        self._executed = 0
        self._rules = StageRules(header)

    def stages(self, lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[StageRecord, tuple[int, ...]]]:
        line, ended = 1, False
        for line, data in lines:
            if ended:
                raise TraceError(self.path, line, None, "record after the end record")
            obj = parse(self.path, line, data)
            kind = obj.pop("type", MISSING)
            if kind == "op":
                self._op(obj, line)
            elif kind == "stage":
                yield self._stage(obj, line)
            elif kind == "end":
                self._end(obj, line)
                ended = True
            else:
                raise type_error(self.path, line, kind)
        if not ended:
            raise TraceError(self.path, line + 1, None, "truncated: no end record")

    def _op(self, obj: dict[str, Any], line: int) -> None:
        values = check(obj, self.op_schema, self.path, line)
        if values[0] != len(self.distinct):
            raise TraceError(self.path, line, "id",
                             f"expected {len(self.distinct)} (the number of op records before it), got {values[0]}")
        if values[0] >= MAX_EXECUTED:  # each op record is executed at least once
            raise TraceError(self.path, line, None, TOO_MANY_OPS)
        op = OpRecord(values[0], -1, *values[1:])  # version 4: ranks None (OpRecord's default)
        check_op_record(op, self.header, (self.path, line))
        self.distinct.append(op)
        self._reach.append(max(max(op.srcs, default=0), max(op.deps or (0,))))
        self._lines.append(line)

    def _stage(self, obj: dict[str, Any], line: int) -> tuple[StageRecord, tuple[int, ...]]:
        values = check(obj, STAGE_V4, self.path, line)
        stage = StageRecord(*values[:-1])
        if stage.stage <= self._last:
            raise TraceError(self.path, line, "stage", f"expected > {self._last} (the previous stage record), got "
                             f"{stage.stage}")
        if len(self._ids_of) >= MAX_STAGES:
            raise TraceError(self.path, line, None, TOO_MANY_STAGES)
        self._rules.check(stage, (self.path, line))
        ids, slots = self._ids(values[-1], line)
        if self._executed + len(ids) > MAX_EXECUTED:
            raise _ops_error(self.path, line, TOO_MANY_OPS)
        reach = self._reach
        bad = next((j for j in slots if reach[ids[j]] > j), None)
        if bad is not None:
            raise _ops_error(self.path, line, f"op {ids[bad]} at slot {bad} has srcs or deps reaching "
                             f"{show(reach[ids[bad]])} ops back, but only {bad} ops of its stage come before it")
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
            if not (type(runs) is list and all(ints(r) and len(r) == 2 and r[1] >= 1 for r in runs)):
                raise _ops_error(self.path, line, f"expected runs [[first id, count >= 1], ...], got {show(runs)}")
            beyond = next((r for r in runs if r[0] + r[1] > n), None)
            if beyond is not None:
                raise _ops_error(self.path, line, f"run {beyond} names ops up to id {beyond[0] + beyond[1] - 1}, but "
                                 f"only {n} op records come before it")
            if sum(count for _, count in runs) > MAX_EXECUTED - self._executed:  # before expanding them
                raise _ops_error(self.path, line, TOO_MANY_OPS)
            ids = tuple(itertools.chain.from_iterable(range(first, first + count) for first, count in runs))
            return ids, range(len(ids))
        if ops.keys() == {"like", "set"}:
            base = self._ids_of.get(ops["like"]) if type(ops["like"]) is int else None
            if base is None:
                raise _ops_error(self.path, line, f"'like': no earlier stage record {show(ops['like'])}")
            changes = ops["set"]
            if not (type(changes) is list and all(ints(c) and len(c) == 2 for c in changes)):
                raise _ops_error(self.path, line, f"expected 'set' [[slot, id], ...], got {show(changes)}")
            slots = [slot for slot, _ in changes]
            if any(b <= a for a, b in itertools.pairwise(slots)) or (slots and slots[-1] >= len(base)):
                raise _ops_error(self.path, line, f"'set' slots must increase and lie below {len(base)} (the ops of "
                                 f"stage {ops['like']}), got {show(slots)}")
            beyond = next((k for _, k in changes if k >= n), None)
            if beyond is not None:
                raise _ops_error(self.path, line, f"'set' names op {beyond}, but only {n} op records come before it")
            if not changes:
                return base, slots  # the same ops: the same tuple
            ids = list(base)
            for slot, k in changes:
                ids[slot] = k
            return tuple(ids), slots
        raise _ops_error(self.path, line, f"expected {{'runs': ...}} or {{'like': ..., 'set': ...}}, got {show(ops)}")

    def _end(self, obj: dict[str, Any], line: int) -> None:
        check(obj, END_V4, self.path, line)
        counts = {"ops": (len(self.distinct), "op records read"), "stages": (len(self._ids_of), "stage records read"),
                  "executed": (self._executed, "ops the stages executed")}
        for name, (n, what) in counts.items():
            if obj[name] != n:
                raise TraceError(self.path, line, name, f"expected {n} (the {what}), got {show(obj[name])}")
        unused = next((op for op in self.distinct if op.stage < 0), None)
        if unused is not None:
            raise TraceError(self.path, self._lines[unused.i], "id", f"op record {unused.i} is used by no stage")


def _stream(path: PathLike) -> Iterator[TraceHeader | OpRecord | StageRecord]:
    lines = read_lines(path)
    header = _first(path, lines)
    yield header
    if header.version < 4:
        yield from records_v3(path, lines, header)
        return
    reader = _CompactReader(path, header)
    executed = itertools.count()
    for stage, ids in reader.stages(lines):
        for k in ids:
            yield OpRecord(next(executed), stage.stage, *body_values(reader.distinct[k]))
        yield stage


def iter_records(path: PathLike) -> Iterator[TraceHeader | OpRecord | StageRecord]:
    """Stream a trace, validating as it goes: the header, then every executed op and stage record in program
    order (each stage record after its ops), whatever the version. A missing or non-gzip file raises TraceError
    here; other problems when the reader reaches them."""
    check_gzip(path)
    return _stream(path)


def read_trace(path: PathLike) -> Trace:
    """Read and validate a whole trace file; a version 4 file in time that grows with its distinct ops. Its ops
    pass `sim.trace.check_op` (the reader's bounds and rules are the same), so the trace is `checked`."""
    check_gzip(path)
    lines = read_lines(path)
    header = _first(path, lines)
    with gc_paused():  # the records are all kept
        if header.version >= 4:
            reader = _CompactReader(path, header)
            stages, stage_op_ids = [], []
            for stage, ids in reader.stages(lines):
                stages.append(stage)
                stage_op_ids.append(ids)
            return Trace.compact(header, stages, reader.distinct, stage_op_ids, checked=True)
        ops: list[OpRecord] = []
        old_stages: list[StageRecord] = []
        for rec in records_v3(path, lines, header):
            (ops if type(rec) is OpRecord else old_stages).append(rec)  # type: ignore[arg-type]
        if header.version < 3:
            legacy_sequences(header, ops, old_stages)
        trace = Trace(header, ops, old_stages)
        trace.checked = True
        return trace


def read_checked(path: PathLike) -> Trace:
    """A trace file read to project: `read_trace` (its ops checked as `sim.trace.check_op` checks ops built in
    code: tests/test_trace_hostile.py), and at least one op (else nothing to project). Errors are ValueErrors
    naming the file."""
    trace = read_trace(path)
    if not trace.executed:
        raise ValueError(f"trace {path}: no op records, nothing to project")
    return trace
