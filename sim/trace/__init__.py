"""Trace files: the contract between the decoder (which writes them) and the simulator (which reads them). The
format, version 5 (versions 1 to 4 still read), its bounds and its error policy: sim/trace/FORMAT.md.

One concept per module: `limits` (format name, versions, bounds), `records` (the records and the in-memory
`Trace`), `schema` (every field with its check), `checks` (the rules across an op's fields, and the checks of ops
built in code), `jsonl` (the file as strict JSON lines), `writer`, `reader` (version 4 and the entry points),
`legacy` (versions 1 to 3), `synthetic` (traces built for single-op measurements). Import from `sim.trace`.
"""

from sim.trace.checks import check_op, check_ops, op_collective_bytes, validate
from sim.trace.legacy import legacy_kind
from sim.trace.limits import (
    DECODERS,
    MAX_BYTES,
    MAX_ELEMENTS,
    MAX_EXECUTED,
    MAX_FLOPS,
    MAX_INDEX,
    MAX_LINE_BYTES,
    MAX_NESTING,
    MAX_SECONDS,
    MAX_STAGES,
    MIN_SECONDS,
    READS_VERSIONS,
    STAGE_KINDS,
    TRACE_FORMAT,
    TRACE_VERSION,
)
from sim.trace.reader import iter_records, read_checked, read_trace
from sim.trace.records import (
    BODY_FIELDS,
    QUANT_FIELD_NAMES,
    OpError,
    OpRecord,
    OpTable,
    PathLike,
    Scalar,
    StageRecord,
    Trace,
    TraceError,
    TraceHeader,
    Triple,
    body_key,
    gc_paused,
    quant_fields,
)
from sim.trace.synthetic import one_op_trace
from sim.trace.writer import TraceWriter, write_trace

__all__ = [
    "BODY_FIELDS", "DECODERS", "MAX_BYTES", "MAX_ELEMENTS", "MAX_EXECUTED", "MAX_FLOPS", "MAX_INDEX", "MAX_LINE_BYTES",
    "MAX_NESTING", "MAX_SECONDS", "MAX_STAGES", "MIN_SECONDS", "QUANT_FIELD_NAMES", "READS_VERSIONS", "STAGE_KINDS",
    "TRACE_FORMAT",
    "TRACE_VERSION", "OpError", "OpRecord", "OpTable", "PathLike", "Scalar", "StageRecord", "Trace", "TraceError",
    "TraceHeader", "TraceWriter", "Triple", "body_key", "check_op", "check_ops", "gc_paused", "iter_records",
    "legacy_kind", "one_op_trace", "op_collective_bytes", "quant_fields", "read_checked", "read_trace", "validate",
    "write_trace",
]
