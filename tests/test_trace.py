"""Tests of the trace file format (sim/trace/, specified in sim/trace/FORMAT.md): round trips, reproducibility,
the compact stages of version 4, validation with errors that name line and field (and the same checks of ops
built in code), versions 1 to 3 still read, atomic writes."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.defaults import resolve_hwconfig
from sim.engine import project
from sim.fusion import fuse
from sim.hardware import load_hwconfig
from sim.opkinds import DTYPE_BYTES, KERNEL_CLASSES
from sim.trace import (
    TRACE_VERSION,
    OpError,
    OpRecord,
    StageRecord,
    Trace,
    TraceError,
    TraceHeader,
    TraceWriter,
    check_op,
    iter_records,
    limits,
    read_trace,
    validate,
    write_trace,
)
from sim.trace.schema import END_V4, HEADER, OP, OP_V4, OP_V5, OP_V6, QUANT_FIELDS, STAGE_V4

ROOT = Path(__file__).resolve().parents[1]
V5_HEADER = ("format", "tp", "tp_rank")  # header fields a version 3 or 4 file does not write (format: first)
V6_OP = tuple(QUANT_FIELDS)  # op fields new in version 6
V5_OP = ("ranks", *V6_OP)  # op fields new in versions 5 and 6
WEIGHTS = {
    "blocks.0.attn.wq.weight": {"bytes": 2048, "shape": [32, 32], "dtype": "bfloat16"},
    "blocks.0.mlp.w1.weight": {"bytes": 8192, "shape": [128, 32], "dtype": "bfloat16"},
    "embed.weight": {"bytes": 6400, "shape": [100, 32], "dtype": "bfloat16"},
}


def make_header(measured: bool = False, version: int = TRACE_VERSION) -> TraceHeader:
    return TraceHeader(model={"name": "tiny", "d_model": 32, "n_layers": 2, "rope_theta": 10000.0, "bias": False,
                              "eos_id": None},
                       version=version, decoder="speed", dtype="bfloat16", batch=2, prompt_lens=[5, 3],
                       max_new_tokens=4, device="cpu", device_name="test cpu", torch_version="2.4.0",
                       code_revision="abc123", flips={"source": "model"}, weights=WEIGHTS, measured=measured,
                       command="python -m reference.demo --trace x.jsonl.gz")


def make_op(i: int, stage: int, measured: bool = False, weight: str = "blocks.0.attn.wq.weight") -> OpRecord:
    return OpRecord(i=i, stage=stage, group=0, depth=i % 2, layer=0, seq=None, rows=3, module="blocks.0.attn.wq",
                    kind="matmul", op="aten.mm.default", in_shapes=[[3, 32], [32, 32]],
                    in_dtypes=["bfloat16", "bfloat16"],
                    out_shapes=[[3, 32]], out_dtypes=["bfloat16"], flops=2 * 3 * 32 * 32, weight_bytes=2048,
                    act_read_bytes=192, act_write_bytes=192, kv_read_bytes=0, kv_write_bytes=0, weights=[weight], kv=[],
                    srcs=[1, 0] if i % 4 else [0, 0], deps=[1] if i % 4 else [],
                    duration_s=1.5e-05 * (i + 1) if measured else None)


def make_trace(measured: bool = False, n_stages: int = 3, ops_per_stage: int = 4, version: int = TRACE_VERSION
               ) -> Trace:
    """Ops 0-3 of each stage repeat from stage to stage (three distinct ops: the 2nd and 4th are alike) unless
    `measured` (every op its own duration)."""
    ops, stages = [], []
    kinds = ["prefill", "decode", "speed"]
    for s in range(n_stages):
        ops += [make_op(len(ops) + k, s, measured) for k in range(ops_per_stage)]
        stages.append(StageRecord(stage=s, kind=kinds[s % 3], rows=[[0, 4 + s, 0], [1, 2 + s, 1]],
                                  commits=[[0, 5 + s, 17]], flushes=[[1, 0, 2]] if s == 2 else [],
                                  wall_s=0.001 * (s + 1) if measured else None))
    return Trace(make_header(measured, version), ops, stages)


def write(path: Path, trace: Trace) -> Path:
    write_trace(path, trace)
    return path


def write_v3(path: Path, trace: Trace) -> Path:
    """A version 3 file of `trace` (one op record per executed op), as the writer before version 4 wrote it."""
    head = {"format": "speed-sim-trace", **{f.name: getattr(trace.header, f.name)
                                            for f in dataclasses.fields(TraceHeader) if f.name not in V5_HEADER}}
    lines = [{**head, "version": 3}]
    for stage in trace.stages:
        lines += [{"type": "op", **{k: v for k, v in dataclasses.asdict(op).items() if k not in V5_OP}}
                  for op in trace.ops_of_stage(stage.stage)]
        lines.append({"type": "stage", **dataclasses.asdict(stage)})
    lines.append({"type": "end", "ops": trace.executed, "stages": len(trace.stages)})
    return rewrite(path, lines)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines()]


def rewrite(path: Path, lines: list[dict]) -> Path:
    path.write_bytes(gzip.compress(b"".join(json.dumps(x, separators=(",", ":")).encode() + b"\n" for x in lines),
                                   mtime=0))
    return path


def rewrite_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def expect_error(path: Path, line: int | None, field: str | None, text: str = "") -> TraceError:
    with pytest.raises(TraceError) as info:
        read_trace(path)
    err = info.value
    assert (err.line, err.field) == (line, field), str(err)
    assert text in str(err)
    assert str(path) in str(err)
    return err


@pytest.mark.parametrize("measured", [False, True])
def test_round_trip_and_reproducible(tmp_path: Path, measured: bool) -> None:
    trace = make_trace(measured)
    a, b = write(tmp_path / "a.jsonl.gz", trace), write(tmp_path / "b.jsonl.gz", trace)
    back = read_trace(a)
    assert back == trace and back.ops == trace.ops
    assert a.read_bytes() == b.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl.gz", "b.jsonl.gz"]
    lines = lines_of(a)
    distinct = 12 if measured else 3
    assert list(lines[0])[:2] == ["format", "version"] and lines[0]["version"] == TRACE_VERSION
    assert lines[-1] == {"type": "end", "ops": distinct, "stages": 3, "executed": 12}
    assert list(lines[1]) == ["type", "id", *[f.name for f in dataclasses.fields(OpRecord)][2:]]
    assert b'"flops":6144,' in gzip.decompress(a.read_bytes())  # compact separators
    assert gzip.decompress(a.read_bytes()).endswith(b"\n")
    recs = list(iter_records(a))
    assert recs[0] == trace.header and recs[1:5] == trace.ops[:4] and recs[5] == trace.stages[0]
    assert len(recs) == 1 + 12 + 3


def test_distinct_ops_are_stored_once_and_stages_refer_to_them(tmp_path: Path) -> None:
    trace = make_trace()
    assert (len(trace.distinct), trace.stage_op_ids) == (3, [(0, 1, 2, 1)] * 3)
    lines = lines_of(write(tmp_path / "t.jsonl.gz", trace))
    assert [x.get("type") for x in lines] == [None, "op", "op", "op", "stage", "stage", "stage", "end"]
    assert [x["ops"] for x in lines[4:7]] == [{"runs": [[0, 3], [1, 1]]}, {"like": 0, "set": []},
                                              {"like": 0, "set": []}]
    # the third stage's second op reads a longer input: a new op record, and the stage is the last one but it
    ops = [dataclasses.replace(op, flops=op.flops * 2) if op.i == 9 else op for op in trace.ops]
    path = write(tmp_path / "u.jsonl.gz", Trace(trace.header, ops, trace.stages))
    lines = lines_of(path)
    assert [x.get("type") for x in lines] == [None, "op", "op", "op", "stage", "stage", "op", "stage", "end"]
    assert lines[6]["id"] == 3 and lines[6]["flops"] == 2 * 6144 and lines[7]["ops"] == {"like": 1, "set": [[1, 3]]}
    assert read_trace(path).ops == ops


def test_trace_helpers() -> None:
    trace = make_trace(ops_per_stage=2)
    assert [op.i for op in trace.ops_of_stage(1)] == [2, 3]
    assert trace.ops_of_stage(7) == []
    assert trace.total_flops == 6 * 6144
    assert trace.total_bytes == 6 * (2048 + 192 + 192)
    assert trace.executed == 6 and trace.counts() == {0: 2, 1: 3, 2: 1} and trace.first_executions() == [0, 1, 2]
    with pytest.raises(ValueError, match="no stage record"):
        Trace(trace.header, [make_op(0, 5)], trace.stages)
    with pytest.raises(ValueError, match="order of their stages"):
        Trace(trace.header, [make_op(0, 1), make_op(1, 0)], trace.stages)


def test_extra_defaults_to_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    del lines[0]["extra"]
    assert read_trace(rewrite(path, lines)).header.extra == {}


# ------------------------------------------------------------------------------ version 5: tensor parallelism

ALL_REDUCE, ALL_GATHER = "_c10d_functional.all_reduce.default", "_c10d_functional.all_gather_into_tensor.default"


def collective(i: int, stage: int, name: str = ALL_REDUCE, ranks: int = 2, rows: int = 3) -> OpRecord:
    """An all-reduce of [rows, 32] bf16 (the row-parallel product's output) or an all-gather of the argmax's
    [rows, 2] float64 pairs, as the capture records them."""
    gather = name == ALL_GATHER
    shape, dtype, size = ([rows, 2], "float64", 8) if gather else ([rows, 32], "bfloat16", 2)
    nbytes = shape[0] * shape[1] * size
    return OpRecord(i=i, stage=stage, group=0, depth=0, layer=0, seq=None, rows=rows, module="blocks.0.attn",
                    kind="collective", op=name, in_shapes=[shape], in_dtypes=[dtype],
                    out_shapes=[[shape[0] * ranks, shape[1]] if gather else shape], out_dtypes=[dtype], flops=0,
                    weight_bytes=0, act_read_bytes=nbytes, act_write_bytes=nbytes * (ranks if gather else 1),
                    kv_read_bytes=0, kv_write_bytes=0, weights=[], kv=[], srcs=[1], deps=[1], ranks=ranks)


# first shapes of two or more dimensions: what the kernel model reads of every kind (attention's queries, a
# product's output); counts within the reader's bounds (MAX_ELEMENTS, MAX_BYTES, MAX_INDEX)
shapes = st.lists(st.lists(st.integers(0, 1 << 12), min_size=2, max_size=4), min_size=1, max_size=4)
names = st.text(max_size=20)
dtypes = st.sampled_from(sorted(DTYPE_BYTES))
nat = st.integers(0, 1 << 50)
seconds = st.just(0.0) | st.floats(1e-12, 1e3)
opt = st.none() | st.integers(0, 100)
NOT_COLLECTIVES = [k for k in KERNEL_CLASSES if k != "collective"]  # a collective's fields: test_collective_*
op_records = st.builds(
    OpRecord, i=st.just(0), stage=st.integers(0, 3), group=opt, depth=opt, layer=opt, seq=opt,
    rows=st.integers(0, 4096), module=names, kind=st.sampled_from(NOT_COLLECTIVES), op=names, in_shapes=shapes,
    in_dtypes=st.lists(dtypes, max_size=4), out_shapes=shapes,
    out_dtypes=st.lists(dtypes, max_size=4), flops=nat, weight_bytes=nat, act_read_bytes=nat, act_write_bytes=nat,
    kv_read_bytes=nat, kv_write_bytes=nat, weights=st.lists(st.sampled_from(sorted(WEIGHTS)), max_size=3),
    kv=st.lists(names, max_size=2), srcs=st.just([]), deps=st.lists(st.integers(1, 4), max_size=3),
    duration_s=st.none() | seconds)
# [seq, ..., ...]: a sequence of make_header's batch of 2 (its model says no G or vocabulary: the rest is free)
triples = st.lists(st.tuples(st.integers(0, 1), st.integers(0, (1 << 31) - 1), st.integers(0, (1 << 31) - 1)).map(
    list), max_size=4)
kinds = st.sampled_from(["encoder", "prefill", "decode", "speed"])
stage_records = st.builds(StageRecord, stage=st.just(0), kind=kinds, rows=triples, commits=triples, flushes=triples,
                          wall_s=st.none() | seconds)


@given(st.lists(op_records | st.builds(lambda *a: dataclasses.replace(collective(0, *a), srcs=[0], deps=[]),
                                       st.integers(0, 3), st.sampled_from([ALL_REDUCE, ALL_GATHER]),
                                       st.shared(st.integers(1, 64), key="tp"), st.integers(0, 100)),
                min_size=1, max_size=6),
       st.lists(st.tuples(st.lists(st.integers(0, 5), max_size=8), stage_records), min_size=1, max_size=6))
def test_random_records_round_trip(pool: list[OpRecord], stages: list[tuple[list[int], StageRecord]]) -> None:
    """Stages drawn from a small pool of ops, so that ops and whole stages repeat (runs, like, set); the
    collectives of one group size, the header's degree."""
    ops, records = [], []
    for s, (picks, record) in enumerate(stages):
        ops += [dataclasses.replace(pool[p % len(pool)], i=len(ops) + k, stage=s,
                                    deps=[d for d in pool[p % len(pool)].deps if d <= k]) for k, p in enumerate(picks)]
        records.append(dataclasses.replace(record, stage=s))
    tp = next((op.ranks for op in pool if op.ranks is not None), 1)  # one group: the header's degree
    trace = Trace(dataclasses.replace(make_header(), max_new_tokens=64, tp=tp), ops, records)  # 6 stages of 4 commits
    with tempfile.TemporaryDirectory() as d:
        back = read_trace(write(Path(d) / "t.jsonl.gz", trace))
        assert back == trace and back.ops == ops
        assert list(iter_records(Path(d) / "t.jsonl.gz"))[1:] == [
            x for s in records for x in [*(op for op in ops if op.stage == s.stage), s]]
        if not any(op.kind == "collective" for op in ops):  # version 3 cannot hold a collective
            v3 = read_trace(write_v3(Path(d) / "v3.jsonl.gz", trace))  # the same trace written as version 3
            assert v3.ops == ops and v3.stages == records


def test_truncated_compressed_data(tmp_path: Path) -> None:
    data = write(tmp_path / "t.jsonl.gz", make_trace(measured=True, n_stages=3, ops_per_stage=200)).read_bytes()
    cut = data[: len(data) // 2]  # the reader delivers every complete line, then fails on the next
    complete = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    expect_error(rewrite_bytes(tmp_path / "cut.jsonl.gz", cut), complete + 1, None, "truncated")
    with pytest.raises(TraceError, match="truncated"):
        list(iter_records(tmp_path / "cut.jsonl.gz"))
    bad_crc = data[:-8] + bytes([data[-8] ^ 1]) + data[-7:]  # every line decompresses; the trailer check fails
    n_lines = gzip.decompress(data).count(b"\n")
    expect_error(rewrite_bytes(tmp_path / "crc.jsonl.gz", bad_crc), n_lines + 1, None, "CRC check failed")


def test_streaming_hands_out_every_stage_before_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    lines[6]["ops"] = {"like": 9, "set": []}  # the third stage names a stage that does not exist
    streamed = []
    with pytest.raises(TraceError, match="no earlier stage record 9"):
        streamed.extend(iter_records(rewrite(path, lines)))
    assert len(streamed) == 1 + 2 * (4 + 1)  # header, then two stages of four ops each


def test_missing_end_record(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    expect_error(rewrite(path, lines[:-1]), len(lines), None, "truncated: no end record")
    expect_error(rewrite(path, []), 1, None, "truncated")


def damaged(tmp_path: Path, line: int, change, measured: bool = False) -> Path:
    path = write(tmp_path / "t.jsonl.gz", make_trace(measured))
    lines = lines_of(path)
    change(lines[line - 1])
    return rewrite(path, lines)


# make_trace(), version 5: line 1 header, 2-4 op records 0-2, 5-7 stages 0-2 (ops 0 1 2 1; the others "like"
# stage 0), 8 end
@pytest.mark.parametrize("line, field, change, text", [
    (1, "version", lambda h: h.update(version=7), "unsupported version 7"),
    (1, "format", lambda h: h.update(format="other-trace"), "expected 'speed-sim-trace'"),
    (1, "format", lambda h: h.pop("format"), ""),
    (1, "batch", lambda h: h.update(batch=0), "expected an integer in 1..2**31 - 1, got 0"),
    (1, "weights.embed.weight", lambda h: h["weights"]["embed.weight"].pop("bytes"), "expected {bytes: an integer"),
    (1, "flips", lambda h: h.update(flips={}), ""),
    (1, "measured", lambda h: h.update(measured="yes"), ""),
    (1, "bogus", lambda h: h.update(bogus=1), "unknown field"),
    (3, "flops", lambda op: op.pop("flops"), "missing"),
    (3, "flops", lambda op: op.update(flops="12"), 'expected an integer in 0..2**60, got "12"'),
    (3, "rows", lambda op: op.update(rows=True), "got true"),
    (3, "in_shapes", lambda op: op.update(in_shapes=[[3, "a"]]), ""),
    (3, "duration_s", lambda op: op.update(duration_s=-1.0), ""),
    (3, "type", lambda op: op.update(type="kernel"), "expected 'op', 'stage' or 'end', got \"kernel\""),
    (3, "type", lambda op: op.pop("type"), "missing"),
    (3, "id", lambda op: op.update(id=5), "expected 1 (the number of op records before it)"),
    (3, "i", lambda op: op.update(i=1), "unknown field"),
    (3, "weights", lambda op: op.update(weights=["nope.weight"]), "unknown weight id 'nope.weight'"),
    (3, "deps", lambda op: op.update(deps=[0]), "expected a list of integers >= 1, got [0]"),
    (3, "deps", lambda op: op.update(deps=None), "got null"),
    (3, "srcs", lambda op: op.update(srcs=[1]), "one distance per input (2)"),
    (3, "kind", lambda op: op.update(kind="gemm"), "expected one of"),
    (3, "kv", lambda op: op.pop("kv"), "missing"),
    (5, "ops", lambda s: s.update(ops={"runs": [[0, 9]]}), "names ops up to id 8, but only 3 op records"),
    (5, "ops", lambda s: s.update(ops={"runs": [[0, 0]]}), "expected runs"),
    (5, "ops", lambda s: s.update(ops={"runs": [[0, 3]], "set": []}), "expected {'runs'"),
    (5, "ops", lambda s: s.update(ops={"runs": [[1, 1], [0, 1], [2, 1], [1, 1]]}),
     "op 1 at slot 0 has srcs or deps reaching 1 ops back, but only 0"),
    (5, "ops", lambda s: s.pop("ops"), "missing"),
    (6, "ops", lambda s: s.update(ops={"like": 7, "set": []}), "no earlier stage record 7"),
    (6, "ops", lambda s: s.update(ops={"like": 1, "set": []}), "no earlier stage record 1"),
    (6, "ops", lambda s: s.update(ops={"like": 0, "set": [[4, 0]]}), "lie below 4"),
    (6, "ops", lambda s: s.update(ops={"like": 0, "set": [[2, 0], [1, 0]]}), "must increase"),
    (6, "ops", lambda s: s.update(ops={"like": 0, "set": [[0, 3]]}), "names op 3, but only 3 op records"),
    (6, "ops", lambda s: s.update(ops={"like": 0, "set": [[0, 1]]}), "op 1 at slot 0 has srcs or deps"),
    (6, "ops", lambda s: s.update(ops={"like": 0, "set": [[0]]}), "expected 'set' [[slot, id], ...]"),
    (6, "stage", lambda s: s.update(stage=0), "expected > 0 (the previous stage record)"),
    (6, "kind", lambda s: s.update(kind="verify"), ""),
    (6, "rows", lambda s: s.update(rows=[[0, 1]]), ""),
    (6, "wall_s", lambda s: s.update(wall_s="1"), ""),
    (8, "ops", lambda e: e.update(ops=4), "expected 3 (the op records read)"),
    (8, "stages", lambda e: e.update(stages=4), "expected 3"),
    (8, "executed", lambda e: e.update(executed=11), "expected 12 (the ops the stages executed)"),
    (8, "executed", lambda e: e.pop("executed"), "missing"),
])
def test_damaged_records(tmp_path: Path, line: int, field: str, change, text: str) -> None:
    expect_error(damaged(tmp_path, line, change), line, field, text)


def tp_trace(tp: int = 2, rank: int = 1) -> Trace:
    """make_trace()'s stages with an all-reduce after each product and an all-gather at the end of each stage."""
    ops, stages = [], []
    for s, stage in enumerate(make_trace().stages):
        for k in range(2):  # the first product of a stage reads what came before it
            product = dataclasses.replace(make_op(len(ops), s), srcs=[1, 0] if k else [0, 0], deps=[1] if k else [])
            ops += [product, collective(len(ops) + 1, s, ranks=tp)]
        ops.append(collective(len(ops), s, ALL_GATHER, ranks=tp))
        stages.append(stage)
    return Trace(dataclasses.replace(make_header(), tp=tp, tp_rank=rank), ops, stages)


def as_version_4(lines: list[dict]) -> list[dict]:
    """A version 5 trace's records as version 4 wrote them (no tp, tp_rank, ranks)."""
    return [{k: v for k, v in x.items() if k not in V5_HEADER[1:] + V5_OP} | ({"version": 4} if i == 0 else {})
            for i, x in enumerate(lines)]


def test_a_tensor_parallel_trace_round_trips(tmp_path: Path) -> None:
    trace = tp_trace()
    back = read_trace(write(tmp_path / "t.jsonl.gz", trace))
    assert back == trace and back.ops == trace.ops and (back.header.tp, back.header.tp_rank) == (2, 1)
    lines = lines_of(tmp_path / "t.jsonl.gz")
    assert list(lines[0])[:7] == ["format", "version", "model", "decoder", "dtype", "tp", "tp_rank"]
    ops = [x for x in lines if x.get("type") == "op"]
    assert [x["ranks"] for x in ops] == [2 if x["kind"] == "collective" else None for x in ops]
    assert [x["op"] for x in ops[:4]] == ["aten.mm.default", ALL_REDUCE, "aten.mm.default", ALL_GATHER]


def test_version_4_reads_as_one_rank_and_refuses_the_fields_it_did_not_have(tmp_path: Path) -> None:
    trace = make_trace()
    lines = as_version_4(lines_of(write(tmp_path / "t.jsonl.gz", trace)))
    old = read_trace(rewrite(tmp_path / "v4.jsonl.gz", lines))
    assert old.header.version == 4 and (old.header.tp, old.header.tp_rank) == (1, 0)
    assert old.ops == trace.ops and all(op.ranks is None for op in old.ops)
    expect_error(rewrite(tmp_path / "v4.jsonl.gz", [{**lines[0], "tp": 2}, *lines[1:]]), 1, "tp", "unknown field")
    expect_error(rewrite(tmp_path / "v4.jsonl.gz", [lines[0], {**lines[1], "ranks": None}, *lines[2:]]), 2, "ranks",
                 "unknown field")


# tp_trace(): line 1 header, 2 the first product, 3 the all-reduce, 4 the second product, 5 the all-gather
@pytest.mark.parametrize("line, field, change, text", [
    (1, "tp", lambda h: h.update(tp=0), "expected an integer in 1..2**31 - 1, got 0"),
    (1, "tp", lambda h: h.pop("tp"), "missing"),
    (1, "tp_rank", lambda h: h.update(tp_rank=2), "expected a rank in 0..1 (tp 2), got 2"),
    (1, "tp_rank", lambda h: h.update(tp_rank=-1), "expected an integer in 0..2**31 - 1"),
    (2, "ranks", lambda op: op.update(ranks=2), "expected null for a matmul op (only a collective has a group size)"),
    (2, "ranks", lambda op: op.pop("ranks"), "missing"),
    (3, "ranks", lambda op: op.update(ranks=None), "expected the collective's group size"),
    (3, "ranks", lambda op: op.update(ranks=0), "expected an integer in 1..2**31 - 1 or null, got 0"),
    (3, "ranks", lambda op: op.update(ranks=True), "got true"),
    (3, "op", lambda op: op.update(op="_c10d_functional.all_to_all_single.default"),
     "expected one of the collective ops"),
    (3, "op", lambda op: op.update(op="aten.add.Tensor"), "expected one of the collective ops"),
    (3, "in_dtypes", lambda op: op.update(in_dtypes=["complex32"]), "expected a list of dtypes, each one of"),
    (3, "in_dtypes", lambda op: op.update(in_dtypes=[]), "expected a collective's dtype"),
    (3, "act_read_bytes", lambda op: op.update(act_read_bytes=193), "all_reduce: 193 bytes is not a whole number of "
     "bfloat16 elements"),
    (5, "act_write_bytes", lambda op: op.update(act_write_bytes=104), "all_gather: 104 bytes is not a whole number "
     "of float64 elements for each of 2 ranks"),
    (5, "ranks", lambda op: op.update(kind="elementwise"), "expected null for a elementwise op"),
])
def test_damaged_tensor_parallel_records(tmp_path: Path, line: int, field: str, change, text: str) -> None:
    """The fields version 5 adds are checked as every other: a degree, a rank within it, and a collective's group
    size, collective and bytes (what the interconnect model needs), in the reader and, for ops, `check_op`."""
    path = write(tmp_path / "t.jsonl.gz", tp_trace())
    lines = lines_of(path)
    change(lines[line - 1])
    expect_error(rewrite(path, lines), line, field, text)
    if line > 1 and field in lines[line - 1]:
        record = lines[line - 1]
        op = OpRecord(0, 0, *(record.get(f.name) for f in dataclasses.fields(OpRecord)[2:]))
        with pytest.raises(OpError, match=f"field '{field}'"):
            check_op(op)


@pytest.mark.parametrize("tp, ranks", [(1, 2), (3, 2), (16, 2), (2, 3), (2, 16)])
def test_a_collective_is_of_the_headers_tensor_parallel_group(tmp_path: Path, tp: int, ranks: int) -> None:
    """A collective's group size is the header's degree: a header of another degree than its collectives (or a
    collective of another group) is refused at the first collective, naming its ranks and the header's tp."""
    path = write(tmp_path / "t.jsonl.gz", tp_trace())
    lines = lines_of(path)
    lines[0]["tp"], lines[0]["tp_rank"] = tp, 0
    for record in lines[1:]:
        if record.get("ranks") is not None:
            record["ranks"] = ranks
    expect_error(rewrite(path, lines), 3, "ranks", f"expected the header's tensor-parallel degree (tp {tp})")


def test_an_op_record_no_stage_uses_and_records_after_the_end(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    unused = {**lines[1], "id": 3, "flops": 1}
    expect_error(rewrite(path, [*lines[:7], unused, {**lines[-1], "ops": 4}]), 8, "id",
                 "op record 3 is used by no stage")
    expect_error(rewrite(path, [*lines, lines[-1]]), 9, None, "after the end record")


def test_message_format(tmp_path: Path) -> None:
    path = damaged(tmp_path, 2, lambda op: op.update(act_read_bytes=-3))
    err = expect_error(path, 2, "act_read_bytes")
    assert str(err) == f"trace {path}, line 2, field 'act_read_bytes': expected an integer in 0..2**50, got -3"


def test_measured_trace_needs_durations(tmp_path: Path) -> None:
    expect_error(damaged(tmp_path, 4, lambda op: op.update(duration_s=None), measured=True), 4, "duration_s", "null")


@pytest.mark.parametrize("line", [3, 300, 603])  # the error still names the line
@pytest.mark.parametrize("bad, text", [(b"{not json", "not valid JSON"), (b"", "not valid JSON"),
                                       (b"[1, 2]", "expected a JSON object"), (b"\xff", "not valid JSON"),
                                       (b'{"type":"end","ops":0,"stages":0},{}', "not valid JSON")])
def test_bad_json_line(tmp_path: Path, line: int, bad: bytes, text: str) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace(measured=True, ops_per_stage=200))
    raw = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    raw[line - 1] = bad + b"\n"
    expect_error(rewrite_bytes(path, gzip.compress(b"".join(raw))), line, None, text)


def test_not_gzip_or_missing(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    raw = gzip.decompress(path.read_bytes())
    expect_error(rewrite_bytes(path, raw), None, None, "not a gzip file")
    missing = tmp_path / "nope" / "x.jsonl.gz"
    with pytest.raises(TraceError, match="no such file") as info:
        iter_records(missing)  # raised eagerly, before iteration
    assert str(missing) in str(info.value) and info.value.line is None


def test_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(b"previous contents")
    with pytest.raises(RuntimeError, match="boom"), TraceWriter(path, make_header()) as w:
        w.op(make_op(0, 0))
        raise RuntimeError("boom")
    assert path.read_bytes() == b"previous contents"
    assert os.listdir(tmp_path) == ["t.jsonl.gz"]
    with pytest.raises(ValueError, match="after the last stage record"), TraceWriter(path, make_header()) as w:
        w.op(make_op(0, 0))  # an op no stage record closes: refused, nothing written
    assert path.read_bytes() == b"previous contents"
    write(path, make_trace())  # a normal write replaces the file, and leaves no temp file either
    assert read_trace(path) == make_trace() and os.listdir(tmp_path) == ["t.jsonl.gz"]


def test_the_writer_streams_ops_as_the_capture_hands_them_out(tmp_path: Path) -> None:
    trace = make_trace()
    with TraceWriter(tmp_path / "t.jsonl.gz", trace.header) as w:
        for stage in trace.stages:
            for op in trace.ops_of_stage(stage.stage):
                w.op(op)
            w.stage(stage)
    assert (tmp_path / "t.jsonl.gz").read_bytes() == write(tmp_path / "u.jsonl.gz", trace).read_bytes()


# ------------------------------------------------------------------------------------- versions 1 to 3

def damaged_v3(tmp_path: Path, line: int, change, measured: bool = False) -> Path:
    path = write_v3(tmp_path / "t.jsonl.gz", make_trace(measured))
    lines = lines_of(path)
    change(lines[line - 1])
    return rewrite(path, lines)


def test_version_3_reads_as_it_did(tmp_path: Path) -> None:
    for measured in (False, True):
        trace = make_trace(measured)
        back = read_trace(write_v3(tmp_path / f"v3{measured}.jsonl.gz", trace))
        assert back.header == make_header(measured, version=3) and back.ops == trace.ops
        assert back.stages == trace.stages and len(back.distinct) == (12 if measured else 3)
        assert list(iter_records(tmp_path / f"v3{measured}.jsonl.gz"))[1:] == list(iter_records(
            write(tmp_path / f"v4{measured}.jsonl.gz", trace)))[1:]


# make_trace() as version 3: line 1 header, 2-5 ops of stage 0, 6 its stage record, 7-10 and 11 stage 1, 12-15
# and 16 stage 2, 17 end
@pytest.mark.parametrize("line, field, change, text", [
    (3, "flops", lambda op: op.update(flops="12"), 'expected an integer in 0..2**60, got "12"'),
    (3, "i", lambda op: op.update(i=5), "expected 1"),
    (3, "weights", lambda op: op.update(weights=["nope.weight"]), "unknown weight id 'nope.weight'"),
    (3, "deps", lambda op: op.update(deps=[2]), "reaches 2 ops back, but only 1 ops of its stage"),
    (7, "deps", lambda op: op.update(deps=[1]), "reaches 1 ops back, but only 0"),
    (3, "srcs", lambda op: op.update(srcs=[2, 0]), "each at most 1"),
    (7, "stage", lambda op: op.update(stage=0), "expected > 0 (the previous stage record)"),
    (11, "stage", lambda s: s.update(stage=0), "expected > 0"),
    (17, "ops", lambda e: e.update(ops=11), "expected 12"),
    (17, "stages", lambda e: e.update(stages=4), "expected 3"),
    (17, "executed", lambda e: e.update(executed=12), "unknown field"),
])
def test_damaged_version_3_records(tmp_path: Path, line: int, field: str, change, text: str) -> None:
    expect_error(damaged_v3(tmp_path, line, change), line, field, text)


def test_version_3_ops_must_precede_their_stage_record(tmp_path: Path) -> None:
    # an op of stage 1 before the stage record of stage 0: reported at that stage record (line 6)
    expect_error(damaged_v3(tmp_path, 3, lambda op: op.update(stage=1)), 6, "stage", "expected >= 1 (its ops)")
    path = write_v3(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    extra_op = {**lines[1], "i": 12, "stage": 3}
    expect_error(rewrite(path, [*lines[:-1], extra_op, {**lines[-1], "ops": 13}]), 18, None, "no stage record")


def as_version(lines: list[dict], version: int, absent: tuple[str, ...]) -> None:
    """Rewrite a version 3 trace's records in place as an older `version`, whose op records lack `absent`."""
    lines[0]["version"] = version
    for rec in lines:
        if rec.get("type") == "op":
            for name in absent:
                del rec[name]


def test_version_1_reads_as_program_order(tmp_path: Path) -> None:
    path = write_v3(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    as_version(lines, 1, ("deps", "seq", "kind", "kv", "srcs"))
    old = read_trace(rewrite(path, lines))
    assert old.header.version == 1 and all(op.deps is None for op in old.ops)
    # kind from the module by the old naming rules; a prefill stage runs one sequence: the first
    expected = make_trace()
    prefill = {s.stage for s in expected.stages if s.kind == "prefill"}
    assert [dataclasses.replace(op, deps=None, srcs=[], seq=0 if op.stage in prefill else None)
            for op in expected.ops] == old.ops
    lines[2]["deps"] = []  # version 1 has no such field
    expect_error(rewrite(path, lines), 3, "deps", "unknown field")


def test_version_2_reads_with_the_old_naming_rules(tmp_path: Path) -> None:
    path = write_v3(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    as_version(lines, 2, ("seq", "kind", "kv", "srcs"))
    old = read_trace(rewrite(path, lines))
    expected = make_trace()
    prefill = {s.stage for s in expected.stages if s.kind == "prefill"}
    assert [dataclasses.replace(op, srcs=[], seq=0 if op.stage in prefill else None) for op in expected.ops] == old.ops


def test_committed_measurements_read() -> None:
    """The H200 measurements in data/measured/ are version 1 files: they still read, and repeat enough to be
    stored compactly in memory."""
    measured = sorted((ROOT / "data" / "measured" / "h200").glob("*.jsonl.gz"))
    assert measured
    for path in measured:
        trace = read_trace(path)
        assert trace.header.version == 1 and trace.header.measured and trace.executed == len(trace.ops) > 0
        assert all(op.duration_s is not None for op in trace.distinct) and len(trace.distinct) < trace.executed


def test_no_torch_import() -> None:
    code = "import sys, sim.trace; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# a value the format refuses, per field of an op (the op: make_op(0, 0), a matmul with two inputs)
REFUSED = [("flops", 2**60 + 1), ("act_read_bytes", -1), ("rows", 2**31), ("seq", "0"), ("module", None),
           ("kind", "warp"), ("in_shapes", [[-1], [32, 32]]), ("out_shapes", [[2**26, 2**25]]), ("weights", [7]),
           ("deps", [0]), ("srcs", [0]), ("out_shapes", [[]]), ("out_shapes", []), ("duration_s", 1e-13)]


@pytest.mark.parametrize("field, value", REFUSED)
def test_an_op_built_in_code_is_refused_as_the_reader_refuses_it(tmp_path: Path, field: str, value) -> None:
    """Every field is checked in one place: the reader (TraceError, naming file and line) and `check_op` (OpError,
    naming the op), for ops built in code, say the same of the same value."""
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    assert lines[1]["type"] == "op" and lines[1]["id"] == 0
    lines[1][field] = value
    err = expect_error(rewrite(path, lines), 2, field)
    op = dataclasses.replace(make_op(0, 0), **{field: value})
    with pytest.raises(OpError) as info:
        check_op(op)
    # in memory, deps may also be null (program order)
    problem = err.problem.replace("expected a", "expected null or a") if field == "deps" else err.problem
    assert (info.value.field, info.value.problem, info.value.index) == (field, problem, 0)
    assert str(info.value) == f"op 0 ({op.kind} aten.mm.default), field '{field}': {problem}"


def test_a_trace_read_is_checked_and_one_built_in_code_is_checked_when_simulated(tmp_path: Path) -> None:
    trace = make_trace()
    assert not trace.checked
    validate(trace)  # a legal trace built in code passes
    back = read_trace(write(tmp_path / "t.jsonl.gz", trace))
    assert back.checked and read_trace(write_v3(tmp_path / "v3.jsonl.gz", trace)).checked
    assert not dataclasses.replace(back, ops=back.ops).checked  # a trace made from it is built in code
    assert fuse(back).trace.checked  # made of checked ops
    bad = dataclasses.replace(trace, ops=[dataclasses.replace(trace.ops[0], flops=2**61), *trace.ops[1:]])
    where = r"op 0 \(matmul aten\.mm\.default\), field 'flops': expected an integer in 0\.\.2\*\*60, got 2305"
    for simulate in (validate, fuse, lambda t: project(t, load_hwconfig(resolve_hwconfig("a100")), "eager")):
        with pytest.raises(OpError, match=where):
            simulate(bad)
    assert check_op(dataclasses.replace(trace.ops[0], deps=None)) is None  # null deps: program order, in memory


def test_the_format_document_names_every_field_and_bound() -> None:
    """sim/trace/FORMAT.md is the specification: a field or a bound the code has and it lacks is a test failure."""
    text = (ROOT / "sim" / "trace" / "FORMAT.md").read_text()
    for schema in (HEADER, OP, OP_V4, OP_V5, OP_V6, STAGE_V4, END_V4):
        missing = [name for name in schema.fields if f"`{name}`" not in text]
        assert not missing, f"FORMAT.md does not name {missing}"
    bounds = [name for name in dir(limits) if name.startswith(("MAX_", "MIN_"))]
    assert len(bounds) == 11 and not [name for name in bounds if f"`{name}`" not in text]
    assert f"version {TRACE_VERSION}" in text and all(kind in text for kind in KERNEL_CLASSES)


QUANT_WEIGHTS = {
    "blocks.0.attn.wq.weight": {"bytes": 512, "shape": [32, 16], "dtype": "uint8"},
    "blocks.0.attn.wq.scales_and_zeros": {"bytes": 256, "shape": [2, 32, 2], "dtype": "bfloat16"},
    "blocks.0.mlp.w1.weight": {"bytes": 4096, "shape": [128, 32], "dtype": "int8"},
    "blocks.0.mlp.w1.scales": {"bytes": 256, "shape": [128], "dtype": "bfloat16"},
}


def quantized_op(i: int, stage: int, dtype: str = "int4") -> OpRecord:
    """A packed int4 (groups of 16) or int8 product of 3 rows: [3, 32] times a [32 or 128, 32] weight."""
    if dtype == "int4":
        name, n, layer, fields = "aten._weight_int4pack_mm_for_cpu.default", 32, "blocks.0.attn.wq", dict(
            weight_dtype="int4", group_size=16, scale_bytes=128, zero_bytes=128, dequant_ops=4)
        shapes, dtypes, weights = [[3, 32], [32, 16], [2, 32, 2]], ["bfloat16", "uint8", "bfloat16"], 512 + 256
        ids = [f"{layer}.scales_and_zeros", f"{layer}.weight"]
    else:
        name, n, layer, fields = "aten._weight_int8pack_mm.default", 128, "blocks.0.mlp.w1", dict(
            weight_dtype="int8", group_size=None, scale_bytes=256, zero_bytes=0, dequant_ops=2)
        shapes, dtypes, weights = [[3, 32], [128, 32], [128]], ["bfloat16", "int8", "bfloat16"], 4096 + 256
        ids = [f"{layer}.scales", f"{layer}.weight"]
    return OpRecord(i=i, stage=stage, group=0, depth=0, layer=0, seq=None, rows=3, module=layer, kind="matmul",
                    op=name, in_shapes=shapes, in_dtypes=dtypes, out_shapes=[[3, n]], out_dtypes=["bfloat16"],
                    flops=2 * 3 * n * 32, weight_bytes=weights, act_read_bytes=192, act_write_bytes=6 * n,
                    kv_read_bytes=0, kv_write_bytes=0, weights=ids, kv=[], srcs=[0, 0, 0], deps=[], **fields)


def quant_trace() -> Trace:
    """Two stages, each an int4 product, an int8 product and a bf16 product (make_op)."""
    ops, stages = [], make_trace(n_stages=2).stages
    for s in range(2):
        ops += [quantized_op(len(ops), s), quantized_op(len(ops) + 1, s, "int8"),
                dataclasses.replace(make_op(len(ops) + 2, s), srcs=[0, 0], deps=[])]
    weights = {**WEIGHTS, **QUANT_WEIGHTS}
    return Trace(dataclasses.replace(make_header(), weights=weights), ops, stages)


def test_a_quantized_trace_round_trips(tmp_path: Path) -> None:
    """Version 6's fields are written after `ranks`, read back as written; a float product has them all null or 0."""
    trace = quant_trace()
    back = read_trace(write(tmp_path / "q.jsonl.gz", trace))
    assert back == trace and back.ops == trace.ops and back.header.version == 6
    ops = [x for x in lines_of(tmp_path / "q.jsonl.gz") if x.get("type") == "op"]
    assert list(ops[0])[-6:] == ["ranks", *V6_OP]
    assert [(x["weight_dtype"], x["group_size"], x["dequant_ops"]) for x in ops[:3]] == [
        ("int4", 16, 4), ("int8", None, 2), (None, None, 0)]
    assert [x["weight_bytes"] - x["scale_bytes"] - x["zero_bytes"] for x in ops[:3]] == [512, 4096, 2048]


def test_version_5_reads_as_float_weights_and_refuses_the_fields_it_did_not_have(tmp_path: Path) -> None:
    """A version 5 file (no quantized-product fields) reads with weight_dtype null and 0 dequantizing work: what
    every trace before quantization held."""
    trace = make_trace()
    lines = lines_of(write(tmp_path / "t.jsonl.gz", trace))
    v5 = [{k: v for k, v in x.items() if k not in V6_OP} | ({"version": 5} if i == 0 else {})
          for i, x in enumerate(lines)]
    old = read_trace(rewrite(tmp_path / "v5.jsonl.gz", v5))
    assert old.header.version == 5 and old.ops == trace.ops
    assert all((op.weight_dtype, op.group_size, op.scale_bytes, op.zero_bytes, op.dequant_ops)
               == (None, None, 0, 0, 0) for op in old.ops)
    expect_error(rewrite(tmp_path / "v5.jsonl.gz", [v5[0], {**v5[1], "weight_dtype": None}, *v5[2:]]), 2,
                 "weight_dtype", "unknown field")


# quant_trace(): line 1 header, 2 the int4 product, 3 the int8 product, 4 the float product
@pytest.mark.parametrize("line, field, change, text", [
    (2, "weight_dtype", lambda op: op.update(weight_dtype="int3"), "expected null or one of ('int8', 'int4')"),
    (2, "weight_dtype", lambda op: op.update(weight_dtype=None), "expected 'int4' for aten._weight_int4pack_mm"),
    (2, "op", lambda op: op.update(weight_dtype="int8", group_size=None, zero_bytes=0), "expected a packed int8"),
    (2, "group_size", lambda op: op.update(group_size=None), "expected the int4 group size, got null"),
    (2, "group_size", lambda op: op.update(group_size=0), "expected an integer in 1..2**31 - 1 or null, got 0"),
    (2, "dequant_ops", lambda op: op.update(dequant_ops=0), "expected an integer >= 1 for a quantized product"),
    (2, "dequant_ops", lambda op: op.update(dequant_ops=65), "expected an integer in 0..64, got 65"),
    (2, "scale_bytes", lambda op: op.update(scale_bytes=700), "exceed weight_bytes 768"),
    (2, "kind", lambda op: op.update(kind="elementwise"), "expected matmul or lm_head"),
    (2, "zero_bytes", lambda op: op.pop("zero_bytes"), "missing"),
    (3, "group_size", lambda op: op.update(group_size=32), "expected null for int8"),
    (3, "zero_bytes", lambda op: op.update(zero_bytes=2), "expected 0 for int8"),
    (4, "group_size", lambda op: op.update(group_size=32), "expected null for an op that is not a quantized"),
    (4, "dequant_ops", lambda op: op.update(dequant_ops=2), "expected 0 for an op that is not a quantized"),
    (4, "scale_bytes", lambda op: op.update(scale_bytes=-1), "expected an integer in 0..2**50"),
])
def test_damaged_quantized_records(tmp_path: Path, line: int, field: str, change, text: str) -> None:
    """The fields version 6 adds are checked as every other, in the reader and, for ops built in code, check_op."""
    lines = lines_of(write(tmp_path / "q.jsonl.gz", quant_trace()))
    change(lines[line - 1])
    expect_error(rewrite(tmp_path / "bad.jsonl.gz", lines), line, field, text)
    if line > 1 and field in lines[line - 1]:
        values = {k: v for k, v in lines[line - 1].items() if k not in ("type", "id")}
        with pytest.raises(OpError) as info:
            check_op(OpRecord(0, 0, **values))
        assert info.value.field == field and text in str(info.value)
