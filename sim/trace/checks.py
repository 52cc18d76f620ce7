"""The rules an op must keep beyond each field's own (sim.trace.schema): one src per input, and the shapes the
kernel model reads; with the header: its weights known, its duration measured in a measured trace. The reader
applies them to every op record it reads (`check_op_record`); `check_op`, `check_ops` and `validate` apply the
same schema and rules to ops built in code, so that the simulator takes no op a file could not hold
(sim/trace/FORMAT.md, "Bounds" and "Error policy")."""

from __future__ import annotations

import operator

from sim.opkinds import COLLECTIVE_OPS, DTYPE_BYTES, QUANT_MATMUL_OPS, collective_bytes, split_fault
from sim.trace.records import OpError, OpRecord, PathLike, Trace, TraceError, TraceHeader, body_values
from sim.trace.schema import OP_IN_MEMORY, show

# What the kernel model reads of an op's shapes (sim.kernels.kernel_of), by kind: (field, least dimensions of its
# first shape, why)
KERNEL_SHAPES = {
    "attention": ("in_shapes", 2, "an attention op's first input is its queries [..., rows, head_dim]"),
    "matmul": ("out_shapes", 1, "a matrix product's output is [..., n]"),
    "lm_head": ("out_shapes", 1, "the LM head's output is [..., vocabulary]"),
}


def collective_fault(op: OpRecord) -> tuple[str, str] | None:
    """What the interconnect model needs of a collective (kind "collective": a known collective op, its group size
    `ranks`, a dtype of known size and bytes it splits into whole elements per rank) or that an op of another kind
    has no group size; None if it keeps these rules."""
    if op.kind != "collective":
        return None if op.ranks is None else ("ranks", f"expected null for a {op.kind} op (only a collective has a "
                                              f"group size), got {show(op.ranks)}")
    collective = COLLECTIVE_OPS.get(op.op)
    if collective is None:
        return "op", f"expected one of the collective ops {', '.join(COLLECTIVE_OPS)}, got {show(op.op)}"
    if op.ranks is None:
        return "ranks", "expected the collective's group size (an integer >= 1), got null"
    if not op.in_dtypes or op.in_dtypes[0] not in DTYPE_BYTES:
        return "in_dtypes", f"expected a collective's dtype, one of {', '.join(DTYPE_BYTES)}, got {show(op.in_dtypes)}"
    fault = split_fault(collective, op_collective_bytes(op, collective), op.ranks, op.in_dtypes[0])
    if fault is not None:
        return "act_write_bytes" if collective == "all_gather" else "act_read_bytes", f"{collective}: {fault}"
    return None


def quant_fault(op: OpRecord) -> tuple[str, str] | None:
    """What a weight-only quantized product keeps (weight_dtype given: one of the packed ops, of that format, a
    matrix product; a group size exactly for int4; at least one dequantizing operation; scale and zero bytes
    within its weight bytes, zero bytes only for int4) or that any other op has none of these fields; None if it
    keeps these rules."""
    if op.weight_dtype is None:
        extra = next((f for f in ("group_size", "scale_bytes", "zero_bytes", "dequant_ops") if getattr(op, f)), None)
        if op.op in QUANT_MATMUL_OPS:
            return "weight_dtype", f"expected {QUANT_MATMUL_OPS[op.op]!r} for {op.op}, got null"
        return None if extra is None else (extra, f"expected {'null' if extra == 'group_size' else 0} for an op "
                                           f"that is not a quantized product (weight_dtype null), got "
                                           f"{show(getattr(op, extra))}")
    if QUANT_MATMUL_OPS.get(op.op) != op.weight_dtype:
        return "op", f"expected a packed {op.weight_dtype} product ({', '.join(QUANT_MATMUL_OPS)}), got {show(op.op)}"
    if op.kind not in ("matmul", "lm_head"):
        return "kind", f"expected matmul or lm_head for a quantized product, got {show(op.kind)}"
    if (op.group_size is None) != (op.weight_dtype == "int8"):
        return "group_size", (f"expected null for int8 (one scale per output row), got {show(op.group_size)}"
                              if op.weight_dtype == "int8" else "expected the int4 group size, got null")
    if op.zero_bytes and op.weight_dtype == "int8":
        return "zero_bytes", f"expected 0 for int8 (symmetric: no zero points), got {op.zero_bytes}"
    if op.dequant_ops < 1:
        return "dequant_ops", "expected an integer >= 1 for a quantized product, got 0"
    if op.scale_bytes + op.zero_bytes > op.weight_bytes:
        return "scale_bytes", (f"scale_bytes {op.scale_bytes} + zero_bytes {op.zero_bytes} exceed weight_bytes "
                               f"{op.weight_bytes} (which holds them)")
    return None


def op_collective_bytes(op: OpRecord, collective: str) -> int:
    """The bytes collective op `op` moves (`sim.opkinds.collective_bytes` of what it reads and writes)."""
    return collective_bytes(collective, op.weight_bytes + op.act_read_bytes + op.kv_read_bytes,
                            op.act_write_bytes + op.kv_write_bytes)


def op_fault(op: OpRecord) -> tuple[str, str] | None:
    """The first rule across an op's fields that it breaks, as (field, problem); None if it keeps them all."""
    if op.srcs and len(op.srcs) != len(op.in_shapes):
        return "srcs", f"expected one distance per input ({len(op.in_shapes)}), got {show(op.srcs)}"
    if op.kind == "collective" or op.ranks is not None:
        return collective_fault(op)
    fault = quant_fault(op)
    if fault is not None:
        return fault
    if op.kind in KERNEL_SHAPES:
        name, least, what = KERNEL_SHAPES[op.kind]
        shapes = getattr(op, name)
        if not shapes or len(shapes[0]) < least:
            return name, f"expected a first shape of {least} or more dimensions ({what}), got {show(shapes)}"
    return None


def check_op_record(op: OpRecord, header: TraceHeader, where: tuple[PathLike, int]) -> None:
    """The checks of an op record read from a file (`where`: file and line) against the header, and `op_fault`."""
    for w in op.weights:
        if w not in header.weights:
            raise TraceError(*where, "weights", f"unknown weight id {w!r} (not in the header's weights)")
    if op.duration_s is None and header.measured:
        raise TraceError(*where, "duration_s", "expected a number >= 0 in a measured trace, got null")
    fault = op_fault(op)
    if fault is not None:
        raise TraceError(*where, *fault)


def check_op(op: OpRecord) -> None:
    """Refuse (`OpError`, naming the op and the field) an op built in code that a trace file could not hold:
    every field but `i` and `stage` typed and within the format's bounds (`deps` may also be None: program
    order), and `op_fault`'s rules. What needs the rest of a file the reader alone checks: the header's weights,
    a measured trace's durations, how far back srcs and deps reach."""
    values = body_values(op)
    fields_pass = all(map(operator.call, OP_IN_MEMORY.checks, values))  # in one C-level pass
    fault = op_fault(op) if fields_pass else OP_IN_MEMORY.fault(values)
    if fault is not None:
        raise OpError(op, *fault)


def check_ops(ops: list[OpRecord]) -> None:
    """`check_op` of each op."""
    for op in ops:
        check_op(op)


def validate(trace: Trace) -> None:
    """`check_op` of each distinct op of `trace`, unless it is `checked` (read from a file, or fused from such
    ops)."""
    if not trace.checked:
        check_ops(trace.distinct)
