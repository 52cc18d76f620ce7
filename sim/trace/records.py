"""The records of a trace and a whole trace in memory: `TraceHeader`, `OpRecord`, `StageRecord`, the compact
`Trace` (its distinct ops once, each stage as their ids) and `OpTable`, which finds the distinct ops; the errors
that name where a trace is at fault (`TraceError` in a file, `OpError` in an op built in code). What each field
holds: sim/trace/FORMAT.md."""

from __future__ import annotations

import contextlib
import gc
import itertools
import operator
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sim.trace.limits import TRACE_FORMAT, TRACE_VERSION

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


class OpError(ValueError):
    """An op built in code that breaks the format's rules (`sim.trace.check_op`): `index` (the op's `i`) and
    `field` say which and where, `problem` what (in the words a `TraceError` uses for the same value)."""

    def __init__(self, op: OpRecord, field: str, problem: str) -> None:
        self.index, self.field, self.problem = op.i, field, problem
        super().__init__(f"op {op.i} ({op.kind} {op.op}), field '{field}': {problem}")


@dataclass(slots=True, kw_only=True)
class TraceHeader:
    """Line 1: what produced the trace (sim/trace/FORMAT.md says what each field holds)."""

    format: str = TRACE_FORMAT
    version: int = TRACE_VERSION
    model: dict[str, Scalar]
    decoder: str
    dtype: str
    tp: int = 1  # tensor-parallel degree: the ranks the model is sharded over (version 5; older versions: 1)
    tp_rank: int = 0  # the rank whose ops the trace holds, in 0..tp - 1
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
    ranks: int | None = None  # a collective's group size (its process group's ranks); None: not a collective
    # a weight-only quantized product (version 6; older versions: None, 0: weights in the activation dtype):
    weight_dtype: str | None = None  # the weights' stored format, one of sim.opkinds.QUANT_DTYPES ("int8", "int4")
    group_size: int | None = None  # input features (K) sharing one scale and zero point; None: one per output row
    scale_bytes: int = 0  # bytes of scales in weight_bytes (which holds packed weights + scales + zero points)
    zero_bytes: int = 0  # bytes of zero points in weight_bytes
    dequant_ops: int = 0  # ALU operations dequantizing one weight for one row (sim.opkinds.DEQUANT_OPS)


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


FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (TraceHeader, OpRecord, StageRecord)}
BODY_FIELDS = FIELDS[OpRecord][2:]  # what an op is, wherever it runs: every field but its index and stage
body_values = operator.attrgetter(*BODY_FIELDS)  # an op's BODY_FIELDS, as a tuple
QUANT_FIELD_NAMES = BODY_FIELDS[BODY_FIELDS.index("weight_dtype"):]  # a quantized product's fields (version 6)
quant_fields = operator.attrgetter(*QUANT_FIELD_NAMES)  # an op's QUANT_FIELD_NAMES, as a tuple


def body_key(op: OpRecord) -> tuple:
    """Every field of an op but `i` and `stage`, hashable: two executions of one distinct op have equal keys."""
    (group, depth, layer, seq, rows, module, kind, name, in_shapes, in_dtypes, out_shapes, out_dtypes, flops,
     weight_bytes, act_read, act_write, kv_read, kv_write, weights, kv, srcs, deps, duration_s, ranks,
     *quantized) = body_values(op)
    return (group, depth, layer, seq, rows, module, kind, name, tuple(map(tuple, in_shapes)), tuple(in_dtypes),
            tuple(map(tuple, out_shapes)), tuple(out_dtypes), flops, weight_bytes, act_read, act_write, kv_read,
            kv_write, tuple(weights), tuple(kv), tuple(srcs), None if deps is None else tuple(deps), duration_s,
            ranks, *quantized)


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
    it as read-only: a distinct op stands for all its executions. (`dataclasses.replace` works, through `ops`.)
    `checked`: its ops are known to be ones the simulator takes (read from a file, whose reader checked them by
    `sim.trace.check_op`'s rules, or fused from such ops), so it does not check them again; False for a trace
    built in code."""

    __slots__ = ("_by_stage", "_ops", "checked", "distinct", "header", "stage_op_ids", "stages")
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
                stage_op_ids: Sequence[tuple[int, ...]], checked: bool = False) -> Trace:
        """A trace from its distinct ops and, per stage, the ids of the ops it executed (ids into `distinct`);
        `checked`: the ops are known to be ones the simulator takes (`Trace`)."""
        if len(stage_op_ids) != len(stages):
            raise ValueError(f"{len(stage_op_ids)} stage op id tuples for {len(stages)} stages")
        trace = cls.__new__(cls)
        trace._init(header, stages, distinct, [tuple(ids) for ids in stage_op_ids])
        trace.checked = checked
        return trace

    def _init(self, header: TraceHeader, stages: list[StageRecord], distinct: list[OpRecord],
              stage_op_ids: list[tuple[int, ...]]) -> None:
        self.header, self.stages, self.distinct, self.stage_op_ids = header, stages, distinct, stage_op_ids
        self._by_stage = {s.stage: k for k, s in enumerate(stages)}
        self._ops: list[OpRecord] | None = None
        self.checked = False

    @property
    def executed(self) -> int:
        """Ops executed (the length of `ops`)."""
        return sum(map(len, self.stage_op_ids))

    @property
    def ops(self) -> list[OpRecord]:
        """Every executed op in program order, i counting from 0 (expanded from the distinct ops on first use)."""
        if self._ops is None:
            values = [body_values(op) for op in self.distinct]
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
