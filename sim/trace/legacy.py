"""Reading versions 1 to 3: one op record per executed op, with its index and stage, before its stage record
(`records_v3`, with a memo that parses and checks an op repeated stage after stage once: `_fast_op`), and the
naming rules the captures of versions 1 and 2 followed, which stand in for the fields they lack (`legacy_kind`,
`legacy_sequences`; sim/trace/FORMAT.md, "Older versions")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sim.opkinds import kernel_class
from sim.trace.checks import StageRules, check_op_record
from sim.trace.jsonl import loads, parse
from sim.trace.limits import MAX_EXECUTED, MAX_INDEX, MAX_STAGES, TOO_MANY_OPS, TOO_MANY_STAGES
from sim.trace.records import OpRecord, PathLike, StageRecord, TraceError, TraceHeader
from sim.trace.schema import END, MISSING, OP_REST, OP_SCHEMAS, STAGE, check, show, type_error

_OP_PREFIX = b'{"type":"op","i":'


def legacy_kind(op: str, module: str) -> str:
    """The kernel class of a version 1 or 2 op, by the naming rules of the capture that wrote it."""
    role = "head" if module == "head" else "norm" if module.endswith("norm") else None
    return kernel_class(op, role)


def _legacy_kv_item(module: str, depth: int | None, layer: int | None, seq: int | None) -> str:
    """The KV item a version 1 or 2 op reads: cross-attention ran in modules named "*cross_attn"."""
    who = "?" if seq is None else seq
    return f"xkv:{who}:{layer}" if module.endswith("cross_attn") else f"kv:{who}:{depth}"


def legacy_sequences(header: TraceHeader, all_ops: list[OpRecord], stages: list[StageRecord]) -> None:
    """Version 1 and 2 ops: the sequence of each one-sequence stage's ops and of each KV read (sim/trace/FORMAT.md,
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
            obj = loads(b"{" + rest)
            values = check(obj, OP_REST[version], "", 0) if type(obj) is dict else None
        except (ValueError, RecursionError, TraceError):  # the general path names the problem
            return None
        if values is None:
            return None
        values = memo[rest] = _op_values(values, version)
    return int(i_text), int(stage_text), values


def _check_op_in_place(op: OpRecord, header: TraceHeader, where: tuple[PathLike, int], n_ops: int, last: int,
                       since_stage: int) -> None:
    """The checks of a version 1-3 op record against the records before it: its index, stage, weights,
    duration, and how far back in its stage (`since_stage` ops) its srcs and deps reach; `last` is the last
    stage record."""
    if op.i != n_ops:
        raise TraceError(*where, "i", f"expected {n_ops} (the number of op records before it), got {op.i}")
    if n_ops >= MAX_EXECUTED:
        raise TraceError(*where, None, TOO_MANY_OPS)
    if op.stage <= last:
        raise TraceError(*where, "stage", f"expected > {last} (the previous stage record), got {op.stage}")
    check_op_record(op, header, where)
    if op.srcs and max(op.srcs) > since_stage:
        raise TraceError(*where, "srcs", f"expected one distance per input ({len(op.in_shapes)}), each at most "
                         f"{since_stage} (the ops of its stage before it), got {show(op.srcs)}")
    if op.deps and max(op.deps) > since_stage:
        raise TraceError(*where, "deps", f"a dep reaches {show(max(op.deps))} ops back, but only {since_stage} ops "
                         "of its stage come before it")


def records_v3(path: PathLike, lines: Iterator[tuple[int, bytes]], header: TraceHeader
               ) -> Iterator[OpRecord | StageRecord]:
    """The op and stage records of a version 1 to 3 trace (one op record per executed op), after its header."""
    n_ops = n_stages = 0
    last, pending = -1, -1  # index of the last stage record; highest stage of the ops since then
    since_stage = 0  # op records since the last stage record: how far back a dep may reach
    version = header.version
    line, ended = 1, False
    memo: dict[bytes, tuple[Any, ...]] = {}
    rules = StageRules(header)
    for line, data in lines:
        if ended:
            raise TraceError(path, line, None, "record after the end record")
        fast = _fast_op(data, memo, version)
        if fast is not None:
            kind, obj = "op", None
        else:
            obj = parse(path, line, data)
            kind = obj.pop("type", MISSING)
        if kind == "op":
            # positional: 10x faster than keywords
            op = (OpRecord(fast[0], fast[1], *fast[2]) if fast
                  else OpRecord(*_op_values(check(obj, OP_SCHEMAS[version], path, line), version)))
            _check_op_in_place(op, header, (path, line), n_ops, last, since_stage)
            pending = max(pending, op.stage)
            n_ops += 1
            since_stage += 1
            yield op
        elif kind == "stage":
            st = StageRecord(*check(obj, STAGE, path, line))
            if st.stage <= last or st.stage < pending:
                bound = f"> {last} (the previous stage record)" if st.stage <= last else f">= {pending} (its ops)"
                raise TraceError(path, line, "stage", f"expected {bound}, got {st.stage}")
            if n_stages >= MAX_STAGES:
                raise TraceError(path, line, None, TOO_MANY_STAGES)
            rules.check(st, (path, line))
            last, pending, since_stage = st.stage, -1, 0
            n_stages += 1
            yield st
        elif kind == "end":
            check(obj, END, path, line)
            for name, n in (("ops", n_ops), ("stages", n_stages)):
                if obj[name] != n:
                    raise TraceError(path, line, name, f"expected {n} (the {name[:-1]} records read), got "
                                     f"{show(obj[name])}")
            if pending >= 0:
                raise TraceError(path, line, None, f"op records of stage {pending} have no stage record")
            ended = True
        else:
            raise type_error(path, line, kind)
    if not ended:
        raise TraceError(path, line + 1, None, "truncated: no end record")
