"""Tensor parallelism, from capture to projection (issue 20): collectives as trace ops, captured on the meta device
under a fake process group (no processes) and from real gloo ranks with the same ops; the fast capture exact under
TP; fusion keeps collectives as graph nodes; the engine runs them on the link (the plain loop agrees, the comm share
is their time, more link bandwidth is never slower, TP 1 unchanged); memory per GPU (Llama-2-70B fits at TP 2, not
at TP 1); a rank killed mid-capture leaves no trace."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch
from simtraces import interconnect
from test_reuse import compare

from reference.capture import tracing
from reference.capture.fastcapture import FastCapture
from reference.config import get_preset
from reference.parallel import build_shard
from sim import run
from sim.defaults import resolve_hwconfig
from sim.engine import breakdown, project
from sim.fusion import fuse
from sim.hardware import load_hwconfig, parse, to_dict
from sim.opkinds import COLLECTIVE_OPS
from sim.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]
LLAMA_70B = str(ROOT / "data" / "hfconfigs" / "llama-2-70b" / "config.json")
A100 = load_hwconfig(resolve_hwconfig("a100"))


def capture(preset: str, tmp_path: Path, tp: int = 2, compiled: bool = False, device: str = "meta",
            full: bool = False, decoder: str = "speed", tokens: int = 8):
    flips = ",".join(["0.3"] * (get_preset(preset).n_groups - 1)) or None
    path = tmp_path / f"{preset}.{device}.{tp}.{compiled}.{full}.jsonl.gz"
    trace, _ = tracing.capture_trace(preset, decoder, tokens, path, device=device, dtype=torch.float32,
                                     flips=flips if decoder == "speed" else None, compiled=compiled, full=full,
                                     source_len=6, tp=tp)
    return trace, path


@pytest.mark.parametrize("preset, compiled", [("tiny-4x3", False), ("tiny-4x3", True), ("tiny-t5-2x3", False)])
def test_a_tp_trace_holds_the_collectives_of_every_layer_and_the_head(tmp_path, preset, compiled):
    """Per decode stage: one all-reduce after each row-parallel product (wo, down; cross-attention's wo too) of
    every layer run, one all-gather of the argmax's [R, 2] pairs; each with its group size, dtype and bytes; the
    ops that read a collective's result depend on it (wait_tensor is no op); the header says the degree."""
    trace, path = capture(preset, tmp_path, compiled=compiled)
    cfg = get_preset(preset)
    assert (trace.header.tp, trace.header.tp_rank) == (2, 0) and read_trace(path) == trace
    assert not [op for op in trace.ops if "wait_tensor" in op.op]
    for stage in trace.stages:
        if stage.kind not in ("decode", "speed"):
            continue
        ops = trace.ops_of_stage(stage.stage)
        kinds = Counter(COLLECTIVE_OPS[op.op] for op in ops if op.kind == "collective")
        passes = cfg.n_groups if stage.kind == "decode" else 1  # a SPEED stage: one pass through the Nd blocks
        per_layer = 3 if cfg.is_encoder_decoder else 2
        assert kinds == {"all_reduce": per_layer * cfg.n_unique_layers * passes, "all_gather": 1}, stage
        for j, op in enumerate(ops):
            if op.kind != "collective":
                continue
            assert op.ranks == 2 and op.flops == 0
            if COLLECTIVE_OPS[op.op] == "all_gather":  # the argmax's pairs, packed as float64
                assert op.in_shapes == [[len(stage.rows), 2]] and op.out_shapes == [[2 * len(stage.rows), 2]]
                assert op.in_dtypes == ["float64"] and op.act_write_bytes == 2 * len(stage.rows) * 2 * 8
            else:
                assert op.in_shapes == op.out_shapes and op.act_read_bytes == op.act_write_bytes
                assert op.in_dtypes == ["float32"]
            readers = [k for k in range(j + 1, len(ops)) if j in {k - s for s in ops[k].srcs if s}]
            assert readers and all(k - j in ops[k].deps for k in readers)  # the consumers wait for it
            assert 1 in op.deps  # and it for its input's producer (the product just before it)


def test_meta_and_gloo_captures_of_a_tp_run_have_the_same_ops(tmp_path):
    """Rank 0's trace from two real gloo ranks equals the meta capture under a fake group op for op and field for
    field (both record every op: the full capture), apart from what legitimately differs: the device, and the
    copy the cpu's math attention fallback makes when merging heads in prefill and encoder stages
    (test_tracing.py's cpu-vs-meta rule), whose removal shifts the distances of those stages' srcs and deps, and the
    index `i` of every later op (it counts the ops before it)."""
    for preset, compiled in (("tiny-4x3", False), ("tiny-t5-2x3", True)):
        gloo, _ = capture(preset, tmp_path, compiled=compiled, device="cpu")
        meta, _ = capture(preset, tmp_path, compiled=compiled, full=True)
        assert gloo.stages == meta.stages
        assert (gloo.header.device, meta.header.device, gloo.header.tp) == ("cpu", "meta", 2)
        assert dataclasses.replace(gloo.header, device="meta", device_name="", command="") == dataclasses.replace(
            meta.header, device_name="", command="")
        for stage in gloo.stages:
            a, b = gloo.ops_of_stage(stage.stage), meta.ops_of_stage(stage.stage)
            if stage.kind in ("decode", "speed"):
                assert [dataclasses.replace(op, i=0, duration_s=None) for op in a] == [  # i: counts the ops before
                    dataclasses.replace(op, i=0) for op in b], (preset, stage)
            else:
                same = lambda ops: [dataclasses.replace(op, i=0, srcs=[], deps=[], duration_s=None)  # noqa: E731
                                    for op in ops if op.op != "aten.flatten.using_ints"]
                assert same(a) == same(b), (preset, stage)
        assert sum(op.kind == "collective" for op in gloo.ops) > 20


def test_a_meta_tp_capture_starts_no_process_and_leaves_no_process_group(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    capture("tiny-t5-2x3", tmp_path, tp=4)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("preset, decoder, compiled", [
    ("tiny-4x3", "speed", False), ("tiny-4x3", "sequential", True), ("tiny-t5-2x3", "speed", True),
    ("llama-1b-11x2", "speed", False)])
def test_the_fast_capture_is_exact_under_tp(tmp_path, preset, decoder, compiled):
    fast, _ = capture(preset, tmp_path, compiled=compiled, decoder=decoder, tokens=12)
    full, _ = capture(preset, tmp_path, compiled=compiled, decoder=decoder, tokens=12, full=True)
    assert fast == full and fast.ops == full.ops


def test_the_fast_capture_derives_tp_stages_with_the_shards_head_width():
    """A derived stage's LM head placeholder has this rank's vocabulary width (the head a shard runs)."""
    cfg = dataclasses.replace(get_preset("tiny-4x3"), n_heads=6, n_kv_heads=3, d_ff=96, d_model=96)
    with tracing.fake_group_scope(3) as tp:  # 3 ranks: 256 rows split 86, 85, 85
        model = build_shard(cfg, tp, dtype=torch.bfloat16)
        capture = FastCapture(model)
        with capture.attached():
            capture._mode = "derive"
            logits = model.head(torch.empty(2, cfg.d_model, device="meta", dtype=torch.bfloat16))
    assert logits.shape == (2, 86)


def test_fusion_keeps_every_collective_as_a_graph_node_of_its_own(tmp_path):
    trace, _ = capture("tiny-4x3", tmp_path, compiled=True)
    fused = fuse(trace)
    collectives = [k for k, op in enumerate(fused.trace.ops) if op.kind == "collective"]
    assert len(collectives) == sum(op.kind == "collective" for op in trace.ops)
    assert all(len(fused.covers[k]) == 1 and trace.ops[fused.covers[k][0]].kind == "collective" for k in collectives)
    assert all(trace.ops[j].kind != "collective" for k, group in enumerate(fused.covers) if k not in collectives
               for j in group)
    assert [fused.trace.ops[k].op for k in collectives] == [op.op for op in trace.ops if op.kind == "collective"]


def hw_with_link(bandwidth: float, efficiency: float = 0.8, latency_s: float = 0.0):
    raw = to_dict(A100)
    raw["interconnect"] = interconnect(bandwidth, efficiency, latency_s)
    raw["sources"] = {**raw["sources"], **{f"interconnect.{k}": "test" for k in raw["interconnect"]}}
    return parse(raw, "a100-link.yaml")


def test_a_tp_projection_is_the_plain_loop_with_collectives_on_the_link(tmp_path):
    """The engine's distinct-work reuse gets what the plain loop gets (tests/test_reuse.py), kernel for kernel,
    for TP traces in every launch mode and with overlapping kernels; the comm share is the collectives' time."""
    eager, _ = capture("tiny-4x3", tmp_path, tokens=10)
    compiled, _ = capture("tiny-t5-2x3", tmp_path, compiled=True, tokens=10)
    h100 = load_hwconfig(resolve_hwconfig("h100"))
    compare(eager, A100, "eager")
    compare(eager, h100, "graph", streams=4)
    compare(compiled, A100, "compiled")
    compare(compiled, h100, "compiled", streams=3)
    p = project(compiled, A100, "compiled")
    b = breakdown(p)
    comm = sum(e.cycles for ids in p.stage_costs for e in map(p.entries.__getitem__, ids) if e.kernel.collective)
    assert b["comm_s"] == comm / p.clock_hz > 0 and b["shares"]["comm"] == comm / p.total_cycles
    assert b["class_s"]["collective"] == b["comm_s"]
    assert all(e.cost.bound == "comm" and 0 < e.cost.floor_s <= e.cost.time_s for e in p.entries if e.kernel.collective)


def test_more_link_bandwidth_is_never_slower_and_collectives_set_the_tp_overhead(tmp_path):
    trace, _ = capture("tiny-4x3", tmp_path, compiled=True)
    times = [project(trace, hw_with_link(bw), "compiled").total_s for bw in (1e9, 1e10, 1e11, 3e11, 1e12)]
    assert times == sorted(times, reverse=True) and times[0] > times[-1]
    slow = [project(trace, hw_with_link(3e11, latency_s=s), "compiled") for s in (0.0, 1e-5)]
    n = sum(op.kind == "collective" for op in fuse(trace).trace.ops)
    # each collective's fitted latency adds to the stream that waits for it
    assert slow[1].total_cycles - slow[0].total_cycles == pytest.approx(n * 1e-5 * A100.peak.clock_hz, rel=1e-3)


def test_a_collective_holds_the_link_and_independent_kernels_overlap_it():
    """With streams > 1 two ready collectives run one after the other (the link is a resource of capacity 1), and a
    kernel that does not depend on them runs beside them."""
    import networkx as nx

    from sim.engine import simulate_stage_overlapped

    g = nx.DiGraph()
    g.add_nodes_from(range(3))  # three independent kernels: two collectives, one compute kernel
    timeline = simulate_stage_overlapped((100, 100, 150), ((0.0, 0.0), (0.0, 0.0), (1.0, 1.0)), g, 0, True, 0, 4,
                                         (True, True, False))
    assert (timeline.starts, timeline.ends) == ([0, 100, 0], [100, 200, 150])


def test_the_table_json_and_perfetto_of_a_tp_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path / "cache"))
    out, timeline = tmp_path / "r.json", tmp_path / "p.json"
    assert run.main(["--hw", "a100", "--model", "tiny-4x3", "--tokens", "6", "--flips", "0.2,0.1", "--tp", "1", "2",
                     "--launch", "compiled", "--json", str(out), "--perfetto", str(timeline)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("configuration"))
    assert head.split()[:2] == ["configuration", "TP"] and "comm" in head
    rows = [line.split() for line in lines if line.startswith("tiny-4x3")]
    assert [(r[1], r[2]) for r in rows] == [("speed", "1"), ("sequential", "1"), ("speed", "2"), ("sequential", "2")]
    assert rows[1][5] == rows[3][5] == "1.00x"  # speedups over sequential decoding at the same degree
    runs = json.loads(out.read_text())["runs"]
    assert [(r["tp"], r["comm_s"] > 0) for r in runs] == [(1, False), (1, False), (2, True), (2, True)]
    assert runs[2]["memory"]["weights_bytes"] < runs[0]["memory"]["weights_bytes"]  # per GPU
    events = json.loads(timeline.read_text())["traceEvents"]
    for pid in (1, 3):  # a TP 1 run has no link track; a TP 2 run has its collectives there
        tracks = {e["tid"]: e["args"]["name"] for e in events if e["pid"] == pid and e["name"] == "thread_name"}
        on_link = [e for e in events if e["pid"] == pid and e["ph"] == "X" and tracks[e["tid"]] == "link"]
        kernels = [e for e in events if e["pid"] == pid and e["ph"] == "X"]
        assert ("link" in tracks.values()) == (pid == 3)
        assert [e["name"].startswith("collective") for e in kernels].count(True) == len(on_link)
        assert all(e["args"]["ranks"] == 2 and e["args"]["bytes"] > 0 for e in on_link)


def test_tp_1_projections_are_what_they_were(tmp_path):
    """A TP 1 trace has no collective; its projection and table are those of before tensor parallelism (the
    recorded default projections: tests/test_run.py), and a version 4 trace reads as TP 1."""
    from sim.defaults import default_trace

    trace = read_trace(default_trace("t5-base-4x3", "speed"))
    assert trace.header.tp == 1 and not [op for op in trace.distinct if op.kind == "collective"]
    assert breakdown(project(trace, A100))["comm_s"] == 0


def test_llama_2_70b_fits_on_80_gb_at_tp_2_and_is_refused_at_tp_1(tmp_path, capsys, monkeypatch):
    """Memory is per GPU: rank 0's shard (the embedding replicated whole) and its KV heads. Llama-2-70B's 138 GB of
    bf16 weights do not fit one A100 80GB (today's refusal, word for word); 69 GB per GPU at TP 2 do. (Its shared
    20x4 variant holds a quarter of the layers, 35 GB: it fits one GPU already.)"""
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_:
        run.main(["--hw", "a100", "--model", LLAMA_70B, "--decoder", "sequential", "--tokens", "4", "--launch",
                  "compiled"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: llama-2-70b (sequential, bfloat16, batch 1, 4 tokens) does not fit on " \
        "NVIDIA A100 SXM4 80GB" in err and "> peak.dram_capacity_bytes 80.00 GB" in err
    out = tmp_path / "r.json"
    assert run.main(["--hw", "a100", "--model", LLAMA_70B, "--decoder", "sequential", "--tokens", "4", "--tp", "2",
                     "8", "--launch", "compiled", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    weights = {r["tp"]: r["memory"]["weights_bytes"] for r in runs}
    embedding = 32000 * 8192 * 2  # replicated: each GPU holds it whole (the untied head is vocabulary-parallel)
    rest = 137_953_296_384 - embedding - 8192 * 2  # the whole model less the embedding and the final norm
    for tp in (2, 8):  # the layers' norms are replicated too: a few MB
        assert weights[tp] - embedding - 8192 * 2 == pytest.approx(rest / tp, rel=2e-3)
    assert 60e9 < runs[0]["memory"]["total_bytes"] < 80e9
    assert all(r["memory"]["kv_cache_bytes"] > 0 for r in runs)


def test_a_rank_killed_mid_capture_stops_the_others_and_leaves_no_trace(tmp_path):
    """`python -m reference.capture.tracing --tp 2 --device cpu`: rank 1's process killed while the ranks decode;
    rank 0 fails its next collective at once (the connection is reset), the command says so in one line and exits
    1 within seconds, no process is left, and neither the trace nor a temporary file is written."""
    out = tmp_path / "t.jsonl.gz"
    command = [sys.executable, "-m", "reference.capture.tracing", "--preset", "tiny-4x3", "--decoder", "sequential",
               "--device", "cpu", "--dtype", "float32", "--tokens", "480", "--tp", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        ranks: list[psutil.Process] = []
        while time.monotonic() < deadline and len(ranks) < 2:  # the two rank processes (not the resource tracker)
            ranks = [p for p in parent.children() if "spawn_main" in " ".join(p.cmdline())
                     and "resource_tracker" not in " ".join(p.cmdline())]
            time.sleep(0.2)
        assert len(ranks) == 2, "the ranks did not start"
        time.sleep(8)  # imports, the model, the first stages: the ranks are decoding
        assert proc.poll() is None, proc.communicate()
        ranks[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - killed < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line]
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("python -m reference.capture.tracing: error: the tensor-parallel capture stopped, "
                                f"no trace written ({out})"), err
    assert "rank 1: process exited with code -9" in lines[-1] and "rank 0:" in lines[-1]
    assert not os.listdir(tmp_path)
    assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
