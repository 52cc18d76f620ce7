"""The simulator reuses distinct work (sim.engine: distinct kernels, costs, cache answers and stage timelines,
each once; sim.fusion: each stage structure fused once) and gets what the plain loop gets, kernel for kernel:
every op its own kernel, the cache served kernel by kernel, every stage fused and simulated afresh. Compared on
the default traces for every launch mode, and with overlapping kernels, on random traces (tensor-parallel ones
with collectives among them), and on tensor-parallel traces of the reference decoder (tests/test_tp.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simtraces import hwconfigs, traces

from sim.defaults import DEFAULT_RUNS, default_trace, resolve_hwconfig
from sim.engine import (
    OnChipCache,
    _busy_cycles,
    breakdown,
    critical_path_cycles,
    demand,
    project,
    simulate_stage,
    simulate_stage_overlapped,
    stage_graph,
)
from sim.fusion import _preds, fused_op, stage_groups
from sim.hardware import load_hwconfig
from sim.kernels import kernel_cost, kernel_of
from sim.trace import Trace


def plain_fuse(trace: Trace) -> Trace:
    """Every stage fused on its own (sim.fusion's rules, no reuse), as a trace of expanded ops."""
    out = []
    for stage in trace.stages:
        ops = trace.ops_of_stage(stage.stage)
        groups = stage_groups(ops)
        consumers = [{c for c, o in enumerate(ops) for s in o.srcs if s and c - s == j} for j in range(len(ops))]
        kernel_of_op = {j: k for k, group in enumerate(groups) for j in group}
        preds = _preds(ops)
        for k, group in enumerate(groups):
            before = {kernel_of_op[p] for j in group for p in preds[j]} - {k}
            out.append(replace(fused_op(ops, group, consumers), i=len(out), stage=stage.stage,
                               deps=sorted(k - b for b in before), srcs=[], duration_s=None))
    return Trace(trace.header, out, trace.stages)


def plain_projection(trace: Trace, hw, launch: str, streams: int) -> dict:
    """The projection kernel by kernel and stage by stage, and its breakdown summed kernel by kernel."""
    if launch == "compiled":
        trace = plain_fuse(trace)
    graph = launch != "eager"
    launch_cycles = hw.cycles(hw.host.launch_graph_s if graph else hw.host.launch_eager_s)
    gap = hw.cycles(hw.host.graph_kernel_gap_s)
    cache = OnChipCache(hw.peak.l2_capacity_bytes)
    out = {name: [] for name in ("kernels", "costs", "dram_bytes", "start_cycles", "end_cycles", "stage_cycles")}
    floors, path, now = [], 0, 0
    for stage in trace.stages:
        ops = trace.ops_of_stage(stage.stage)
        kernels = [kernel_of(op, hw.tile.m, hw.tile.n) for op in ops]
        drams = [cache.serve(k) for k in kernels]
        costs = [kernel_cost(k, hw, d) for k, d in zip(kernels, drams)]
        durations = tuple(hw.cycles(c.time_s) for c in costs)
        links = tuple(k.collective is not None for k in kernels)  # collectives: on the link
        if streams == 1:
            timeline = simulate_stage(durations, launch_cycles, graph, gap, synchronous=hw.kind == "cpu", links=links)
            floors.append(sum(c.floor_s for c in costs))
        else:
            g = stage_graph(ops)
            timeline = simulate_stage_overlapped(durations, tuple(demand(k, c, hw) for k, c in zip(kernels, costs)),
                                                 g, launch_cycles, graph, gap, streams, links)
            path += critical_path_cycles(g, durations)
            floors.append(max(sum(c.floor_compute_s for c in costs), sum(c.floor_dram_s for c in costs),
                              sum(c.floor_l2_s for c in costs), sum(c.floor_link_s for c in costs)))
        out["kernels"] += kernels
        out["costs"] += costs
        out["dram_bytes"] += drams
        out["start_cycles"] += [now + t for t in timeline.starts]
        out["end_cycles"] += [now + t for t in timeline.ends]
        out["stage_cycles"].append(timeline.cycles)
        now += timeline.cycles
    busy, by_class, onchip = Counter(), Counter(), 0.0
    for k, c, d, s, e in zip(out["kernels"], out["costs"], out["dram_bytes"], out["start_cycles"], out["end_cycles"]):
        busy[c.bound] += e - s
        by_class[k.cls] += e - s
        onchip += k.bytes - d
    out["breakdown"] = {"busy": busy, "class": by_class, "onchip": int(onchip), "dram": sum(out["dram_bytes"]),
                        "roofline_s": sum(floors), "critical_path": path if streams > 1 else None}
    return out


def compare(trace: Trace, hw, launch: str, streams: int = 1) -> None:
    p = project(trace, hw, launch, streams=streams)
    plain = plain_projection(trace, hw, launch, streams)
    for name in ("kernels", "costs", "dram_bytes", "start_cycles", "end_cycles", "stage_cycles"):
        assert getattr(p, name) == plain[name], name
    b, ref = breakdown(p), plain["breakdown"]
    total = max(p.total_cycles, 1)
    busy = sum(ref["busy"].values())
    overlap = 1.0
    if streams > 1:
        overlap = _busy_cycles(plain["start_cycles"], plain["end_cycles"]) / max(busy, 1)
    shares = {k: ref["busy"][k] * overlap / total for k in ("compute", "memory", "latency", "comm")}
    assert b["shares"] == {**shares, "launch": max(0.0, 1.0 - sum(shares.values()))}
    assert b["comm_s"] == ref["busy"]["comm"] / p.clock_hz
    assert b["class_s"] == {c: v / p.clock_hz for c, v in ref["class"].items() if v}
    assert (b["dram_bytes"], b["onchip_bytes"], b["roofline_s"]) == (ref["dram"], ref["onchip"], ref["roofline_s"])
    if streams > 1:
        assert p.critical_path_cycles == ref["critical_path"]


@pytest.fixture(scope="module")
def default_traces():
    from sim.trace import read_trace

    return {(preset, decoder, compiled): read_trace(default_trace(preset, decoder, compiled))
            for preset, decoder in DEFAULT_RUNS for compiled in (False, True)}


@pytest.mark.parametrize("preset, decoder", DEFAULT_RUNS)
def test_default_traces_project_as_the_plain_loop_does(default_traces, preset, decoder):
    a100 = load_hwconfig(resolve_hwconfig("a100"))
    compare(default_traces[preset, decoder, False], a100, "eager")
    compare(default_traces[preset, decoder, True], a100, "compiled")


def test_default_traces_project_as_the_plain_loop_does_in_graph_mode_with_streams_and_on_a_cpu(default_traces):
    h100, cpu = (load_hwconfig(resolve_hwconfig(name)) for name in ("h100", "cpu-xeon-8480"))
    compare(default_traces["t5-base-4x3", "speed", False], h100, "graph", streams=4)
    compare(default_traces["t5-base-4x3", "speed", True], h100, "compiled", streams=4)
    compare(default_traces["t5-base-4", "sequential", False], cpu, "graph")


@settings(max_examples=60)
@given(trace=traces(), hw=hwconfigs(), launch=st.sampled_from(["eager", "graph"]), streams=st.sampled_from([1, 3]))
def test_random_traces_project_as_the_plain_loop_does(trace, hw, launch, streams):
    compare(trace, hw, launch, streams)
