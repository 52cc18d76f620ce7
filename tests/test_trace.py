"""Tests of the trace file format (sim/trace.py): round trips, reproducibility, validation, atomic writes."""

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

from sim.opkinds import KERNEL_CLASSES
from sim.trace import OpRecord, StageRecord, Trace, TraceError, TraceHeader, TraceWriter, iter_records, read_trace

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {
    "blocks.0.attn.wq.weight": {"bytes": 2048, "shape": [32, 32], "dtype": "bfloat16"},
    "blocks.0.mlp.w1.weight": {"bytes": 8192, "shape": [128, 32], "dtype": "bfloat16"},
    "embed.weight": {"bytes": 6400, "shape": [100, 32], "dtype": "bfloat16"},
}


def make_header(measured: bool = False) -> TraceHeader:
    return TraceHeader(model={"name": "tiny", "d_model": 32, "n_layers": 2, "rope_theta": 10000.0, "bias": False,
                              "eos_id": None},
                       decoder="speed", dtype="bfloat16", batch=2, prompt_lens=[5, 3], max_new_tokens=4,
                       device="cpu", device_name="test cpu", torch_version="2.4.0", code_revision="abc123",
                       flips={"source": "model"}, weights=WEIGHTS, measured=measured,
                       command="python -m reference.demo --trace x.jsonl.gz")


def make_op(i: int, stage: int, measured: bool = False, weight: str = "blocks.0.attn.wq.weight") -> OpRecord:
    return OpRecord(i=i, stage=stage, group=0, depth=i % 2, layer=0, seq=None, rows=3, module="blocks.0.attn.wq",
                    kind="matmul", op="aten.mm.default", in_shapes=[[3, 32], [32, 32]],
                    in_dtypes=["bfloat16", "bfloat16"],
                    out_shapes=[[3, 32]], out_dtypes=["bfloat16"], flops=2 * 3 * 32 * 32, weight_bytes=2048,
                    act_read_bytes=192, act_write_bytes=192, kv_read_bytes=0, kv_write_bytes=0, weights=[weight], kv=[],
                    srcs=[1, 0] if i % 4 else [0, 0], deps=[1] if i % 4 else [],
                    duration_s=1.5e-05 * (i + 1) if measured else None)


def make_trace(measured: bool = False, n_stages: int = 3, ops_per_stage: int = 4) -> Trace:
    ops, stages = [], []
    kinds = ["prefill", "decode", "speed"]
    for s in range(n_stages):
        ops += [make_op(len(ops) + k, s, measured) for k in range(ops_per_stage)]
        stages.append(StageRecord(stage=s, kind=kinds[s % 3], rows=[[0, 4 + s, 0], [1, 2 + s, 1]],
                                  commits=[[0, 5 + s, 17]], flushes=[[1, 0, 2]] if s == 2 else [],
                                  wall_s=0.001 * (s + 1) if measured else None))
    return Trace(make_header(measured), ops, stages)


def write(path: Path, trace: Trace) -> Path:
    with TraceWriter(path, trace.header) as w:
        by_stage = {st_.stage: st_ for st_ in trace.stages}
        for s in sorted({op.stage for op in trace.ops} | set(by_stage)):
            for op in trace.ops_of_stage(s):
                w.op(op)
            if s in by_stage:
                w.stage(by_stage[s])
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines()]


def rewrite(path: Path, lines: list[dict]) -> Path:
    path.write_bytes(gzip.compress(b"".join(json.dumps(x).encode() + b"\n" for x in lines), mtime=0))
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
    assert back == trace
    assert a.read_bytes() == b.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl.gz", "b.jsonl.gz"]
    lines = lines_of(a)
    assert list(lines[0])[:2] == ["format", "version"] and lines[-1] == {"type": "end", "ops": 12, "stages": 3}
    assert list(lines[1]) == ["type", *(f.name for f in dataclasses.fields(OpRecord))]
    assert b'"flops":6144,' in gzip.decompress(a.read_bytes())  # compact separators
    assert gzip.decompress(a.read_bytes()).endswith(b"\n")
    recs = list(iter_records(a))
    assert recs[0] == trace.header and recs[1:5] == trace.ops[:4] and recs[5] == trace.stages[0]


def test_trace_helpers() -> None:
    trace = make_trace(ops_per_stage=2)
    assert [op.i for op in trace.ops_of_stage(1)] == [2, 3]
    assert trace.ops_of_stage(7) == []
    assert trace.total_flops == 6 * 6144
    assert trace.total_bytes == 6 * (2048 + 192 + 192)


def test_extra_defaults_to_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    del lines[0]["extra"]
    assert read_trace(rewrite(path, lines)).header.extra == {}


shapes = st.lists(st.lists(st.integers(0, 1 << 20), max_size=4), max_size=4)
names = st.text(max_size=20)
nat = st.integers(0, 1 << 60)
opt = st.none() | st.integers(0, 100)
op_records = st.builds(
    OpRecord, i=st.just(0), stage=st.integers(0, 3), group=opt, depth=opt, layer=opt, seq=opt,
    rows=st.integers(0, 4096), module=names, kind=st.sampled_from(KERNEL_CLASSES), op=names, in_shapes=shapes,
    in_dtypes=st.lists(names, max_size=4), out_shapes=shapes,
    out_dtypes=st.lists(names, max_size=4), flops=nat, weight_bytes=nat, act_read_bytes=nat, act_write_bytes=nat,
    kv_read_bytes=nat, kv_write_bytes=nat, weights=st.lists(st.sampled_from(sorted(WEIGHTS)), max_size=3),
    kv=st.lists(names, max_size=2), srcs=st.just([]), deps=st.lists(st.integers(1, 4), max_size=3),
    duration_s=st.none() | st.floats(0, 1e3, allow_nan=False, allow_infinity=False))
triples = st.lists(st.lists(st.integers(0, 1 << 31), min_size=3, max_size=3), max_size=4)
kinds = st.sampled_from(["encoder", "prefill", "decode", "speed"])
stage_records = st.builds(StageRecord, stage=st.just(0), kind=kinds, rows=triples, commits=triples, flushes=triples,
                          wall_s=st.none() | st.floats(0, 10, allow_nan=False))


@given(st.lists(st.tuples(st.lists(op_records, max_size=4), stage_records), min_size=1, max_size=4))
def test_random_records_round_trip(stages: list[tuple[list[OpRecord], StageRecord]]) -> None:
    ops, records = [], []
    for s, (stage_ops, record) in enumerate(stages):
        ops += [dataclasses.replace(op, i=len(ops) + k, stage=s, deps=[d for d in op.deps if d <= k])
                for k, op in enumerate(stage_ops)]
        records.append(dataclasses.replace(record, stage=s))
    trace = Trace(make_header(), ops, records)
    with tempfile.TemporaryDirectory() as d:
        assert read_trace(write(Path(d) / "t.jsonl.gz", trace)) == trace


def test_truncated_compressed_data(tmp_path: Path) -> None:
    data = write(tmp_path / "t.jsonl.gz", make_trace(n_stages=3, ops_per_stage=200)).read_bytes()
    cut = data[: len(data) // 2]  # the reader delivers every complete line, then fails on the next
    complete = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    expect_error(rewrite_bytes(tmp_path / "cut.jsonl.gz", cut), complete + 1, None, "truncated")
    streamed = []
    with pytest.raises(TraceError, match="truncated"):
        streamed.extend(iter_records(tmp_path / "cut.jsonl.gz"))
    assert len(streamed) == complete  # streaming hands out every complete record before the error
    bad_crc = data[:-8] + bytes([data[-8] ^ 1]) + data[-7:]  # every line decompresses; the trailer check fails
    n_lines = gzip.decompress(data).count(b"\n")
    expect_error(rewrite_bytes(tmp_path / "crc.jsonl.gz", bad_crc), n_lines + 1, None, "CRC check failed")


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


@pytest.mark.parametrize("line, field, change, text", [
    (1, "version", lambda h: h.update(version=4), "unsupported version 4"),
    (1, "format", lambda h: h.update(format="other-trace"), "expected 'speed-sim-trace'"),
    (1, "format", lambda h: h.pop("format"), ""),
    (1, "batch", lambda h: h.update(batch=0), "expected an integer >= 1, got 0"),
    (1, "weights", lambda h: h["weights"]["embed.weight"].pop("bytes"), ""),
    (1, "flips", lambda h: h.update(flips={}), ""),
    (1, "measured", lambda h: h.update(measured="yes"), ""),
    (1, "bogus", lambda h: h.update(bogus=1), "unknown field"),
    (3, "flops", lambda op: op.pop("flops"), "missing"),
    (3, "flops", lambda op: op.update(flops="12"), 'expected an integer >= 0, got "12"'),
    (3, "rows", lambda op: op.update(rows=True), "got true"),
    (3, "in_shapes", lambda op: op.update(in_shapes=[[3, "a"]]), ""),
    (3, "duration_s", lambda op: op.update(duration_s=-1.0), ""),
    (3, "type", lambda op: op.update(type="kernel"), "expected 'op', 'stage' or 'end', got \"kernel\""),
    (3, "type", lambda op: op.pop("type"), "missing"),
    (3, "i", lambda op: op.update(i=5), "expected 1"),
    (3, "weights", lambda op: op.update(weights=["nope.weight"]), "unknown weight id 'nope.weight'"),
    (3, "deps", lambda op: op.update(deps=[0]), "expected a list of integers >= 1, got [0]"),
    (3, "deps", lambda op: op.update(deps=None), "got null"),
    (3, "deps", lambda op: op.update(deps=[2]), "reaches 2 ops back, but only 1 ops of its stage"),
    (7, "deps", lambda op: op.update(deps=[1]), "reaches 1 ops back, but only 0"),
    (6, "kind", lambda s: s.update(kind="verify"), ""),
    (3, "kind", lambda op: op.update(kind="gemm"), "expected one of"),
    (3, "kv", lambda op: op.pop("kv"), "missing"),
    (6, "rows", lambda s: s.update(rows=[[0, 1]]), ""),
    (6, "wall_s", lambda s: s.update(wall_s="1"), ""),
    (7, "stage", lambda op: op.update(stage=0), "expected > 0 (the previous stage record)"),
    (11, "stage", lambda s: s.update(stage=0), "expected > 0"),
    (17, "ops", lambda e: e.update(ops=11), "expected 12"),
    (17, "stages", lambda e: e.update(stages=4), "expected 3"),
])
def test_damaged_records(tmp_path: Path, line: int, field: str, change, text: str) -> None:
    expect_error(damaged(tmp_path, line, change), line, field, text)


def test_version_1_reads_as_program_order(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    lines[0]["version"] = 1
    for rec in lines:
        if rec.get("type") == "op":
            for name in ("deps", "seq", "kind", "kv", "srcs"):
                del rec[name]
    old = read_trace(rewrite(path, lines))
    assert old.header.version == 1 and all(op.deps is None for op in old.ops)
    # kind from the module by the old naming rules; a prefill stage runs one sequence: the first
    expected = make_trace()
    prefill = {s.stage for s in expected.stages if s.kind == "prefill"}
    assert [dataclasses.replace(op, deps=None, srcs=[], seq=0 if op.stage in prefill else None)
            for op in expected.ops] == old.ops
    lines[2]["deps"] = []  # version 1 has no such field
    expect_error(rewrite(path, lines), 3, "deps", "unknown field")


def test_message_format(tmp_path: Path) -> None:
    path = damaged(tmp_path, 2, lambda op: op.update(act_read_bytes=-3))
    err = expect_error(path, 2, "act_read_bytes")
    assert str(err) == f"trace {path}, line 2, field 'act_read_bytes': expected an integer >= 0, got -3"


def test_measured_trace_needs_durations(tmp_path: Path) -> None:
    expect_error(damaged(tmp_path, 4, lambda op: op.update(duration_s=None), measured=True), 4, "duration_s", "null")


def test_ops_must_precede_their_stage_record(tmp_path: Path) -> None:
    # an op of stage 1 before the stage record of stage 0: reported at that stage record (line 6)
    expect_error(damaged(tmp_path, 3, lambda op: op.update(stage=1)), 6, "stage", "expected >= 1 (its ops)")
    path = write(tmp_path / "t.jsonl.gz", make_trace())
    lines = lines_of(path)
    extra_op = {**lines[1], "i": 12, "stage": 3}
    expect_error(rewrite(path, [*lines[:-1], extra_op, {**lines[-1], "ops": 13}]), 18, None, "no stage record")
    expect_error(rewrite(path, [*lines, lines[-1]]), 18, None, "after the end record")


@pytest.mark.parametrize("line", [3, 300, 603])  # lines are parsed in batches: the error still names the line
@pytest.mark.parametrize("bad, text", [(b"{not json", "not valid JSON"), (b"", "not valid JSON"),
                                       (b"[1, 2]", "expected a JSON object"), (b"\xff", "not valid JSON"),
                                       (b'{"type":"end","ops":0,"stages":0},{}', "not valid JSON")])
def test_bad_json_line(tmp_path: Path, line: int, bad: bytes, text: str) -> None:
    path = write(tmp_path / "t.jsonl.gz", make_trace(ops_per_stage=200))
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
    write(path, make_trace())  # a normal write replaces the file, and leaves no temp file either
    assert read_trace(path) == make_trace() and os.listdir(tmp_path) == ["t.jsonl.gz"]


def test_no_torch_import() -> None:
    code = "import sys, sim.trace; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
