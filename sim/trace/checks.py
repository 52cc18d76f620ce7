"""The rules an op must keep beyond each field's own (sim.trace.schema): one src per input, and the shapes the
kernel model reads; with the header: its weights known, its duration measured in a measured trace. The reader
applies them to every op record it reads (`check_op_record`); `check_op`, `check_ops` and `validate` apply the
same schema and rules to ops built in code, so that the simulator takes no op a file could not hold
(sim/trace/FORMAT.md, "Bounds" and "Error policy"). A stage record keeps the header's run (`StageRules`): its
rows, commits and flushes are of sequences of the batch, at exits of the model, of tokens of its vocabulary,
and no sequence commits more tokens than the run generates."""

from __future__ import annotations

import operator
from collections import Counter

from sim.opkinds import COLLECTIVE_OPS, DTYPE_BYTES, QUANT_MATMUL_OPS, collective_bytes, split_fault
from sim.trace.records import OpError, OpRecord, PathLike, StageRecord, Trace, TraceError, TraceHeader, body_values
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
    if op.ranks is not None and op.ranks != header.tp:  # a trace's collectives are its tensor-parallel group's
        raise TraceError(*where, "ranks", f"expected the header's tensor-parallel degree (tp {header.tp}) as a "
                         f"collective's group size, got {show(op.ranks)}")
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


class StageRules:
    """The checks of a trace's stage records, in file order, against its header (the reader applies them to
    every stage record it reads): each row's, commit's and flush's sequence is one of the batch; each row's and
    flush's exit one of the model's G groups; each committed token one of its vocabulary; no sequence commits
    more than max_new_tokens tokens over the trace. (Where the header's model does not say G or the vocabulary,
    those two go unchecked.)"""

    def __init__(self, header: TraceHeader) -> None:
        self.batch, self.max_new = header.batch, header.max_new_tokens
        groups, vocab = header.model.get("n_groups"), header.model.get("vocab_size")
        self.groups = groups if type(groups) is int else None
        self.vocab = vocab if type(vocab) is int else None
        self.committed: Counter[int] = Counter()  # sequence -> tokens committed so far

    def check(self, stage: StageRecord, where: tuple[PathLike, int]) -> None:
        for name, entries, exit_at in (("rows", stage.rows, 2), ("flushes", stage.flushes, 1), ("commits",
                                                                                               stage.commits, None)):
            for entry in entries:
                problem = self._entry_fault(entry, exit_at)
                if problem:
                    raise TraceError(*where, name, f"{show(entry)}: {problem}")
        self.committed.update(seq for seq, _, _ in stage.commits)
        over = next((seq for seq, _, _ in stage.commits if self.committed[seq] > self.max_new), None)
        if over is not None:
            raise TraceError(*where, "commits", f"sequence {over} has committed {self.committed[over]} tokens by this "
                             f"stage, more than the run generates (max_new_tokens {self.max_new})")

    def _entry_fault(self, entry: list[int], exit_at: int | None) -> str | None:
        """Why a row, flush (`exit_at`: the index of its exit) or commit (None) does not fit the header."""
        if entry[0] >= self.batch:
            return f"sequence {entry[0]} of a batch of {self.batch}"
        if exit_at is not None and self.groups is not None and not 1 <= entry[exit_at] <= self.groups:
            return f"exit {entry[exit_at]}, but the model's exits are 1..{self.groups} (n_groups)"
        if exit_at is None and self.vocab is not None and entry[2] >= self.vocab:
            return f"token {entry[2]} beyond the model's vocabulary of {self.vocab}"
        return None
