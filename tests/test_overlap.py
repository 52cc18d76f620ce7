"""Overlapping kernels (streams > 1): one stream in program order is the single-stream simulator exactly,
dependencies are respected, the device never beats its aggregate roofline or the critical path, concurrent
transfers share DRAM bandwidth, and the trace's dependencies are the ones the decoder has."""

import dataclasses

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simtraces import header, hw_dict, hwconfigs, op, traces

from sim.engine import (
        breakdown,
    critical_path_cycles,
    project,
    serial_timeline,
    simulate_stage,
    simulate_stage_overlapped,
    stage_floors_s,
    stage_graph,
)
from sim.hardware import HWCONFIG_DIR, load_hwconfig, parse
from sim.trace import StageRecord, Trace

LAUNCHES = st.sampled_from(["eager", "graph"])


@settings(max_examples=80)
@given(durations=st.lists(st.integers(0, 10_000), min_size=1, max_size=30), launch=st.integers(0, 5_000),
       graph=st.booleans(), gap=st.integers(0, 500), data=st.data())
def test_one_stream_in_program_order_is_the_single_stream_simulator(durations, launch, graph, gap, data):
    n = len(durations)
    demands = tuple(data.draw(st.tuples(st.floats(0, 1), st.floats(0, 1))) for _ in range(n))
    chain = nx.path_graph(n, create_using=nx.DiGraph)
    a = simulate_stage(tuple(durations), launch, graph, gap)
    b = simulate_stage_overlapped(tuple(durations), demands, chain, launch, graph, gap, streams=1)
    assert (a.cycles, a.starts, a.ends, a.issues) == (b.cycles, b.starts, b.ends, b.issues)


@settings(max_examples=120)
@given(durations=st.lists(st.integers(0, 10_000), max_size=30), graph=st.booleans(), gap=st.integers(0, 500),
       synchronous=st.booleans(), stage=st.integers(0, 3_000), data=st.data())
def test_the_one_stream_recurrence_is_the_simpy_processes(durations, graph, gap, synchronous, stage, data):
    """serial_timeline, which the projection runs on one stream, steps to the SimPy host and stream's timeline:
    eager launches one per kernel or one for all, the stage's own host work, a synchronous host, collectives."""
    n = len(durations)
    launch = data.draw(st.integers(0, 5_000) if graph else
                       st.one_of(st.integers(0, 5_000), st.tuples(*[st.integers(0, 5_000)] * n)))
    links = tuple(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    a = simulate_stage(tuple(durations), launch, graph, gap, synchronous, links, stage)
    b = serial_timeline(tuple(durations), launch, graph, gap, synchronous, stage)
    assert (a.cycles, a.starts, a.ends, a.issues) == (b.cycles, b.starts, b.ends, b.issues)


@settings(max_examples=60)
@given(trace=traces(), hw=hwconfigs(), launch=LAUNCHES, streams=st.integers(2, 8))
def test_overlap_respects_dependencies_and_bounds(trace, hw, launch, streams):
    p = project(trace, hw, launch, streams=streams)
    first = 0
    for stage, n, cycles in zip(trace.stages, p.stage_sizes, p.stage_cycles):
        ops = trace.ops_of_stage(stage.stage)
        g = stage_graph(ops)
        for j, i in g.edges:  # a kernel starts after every kernel it depends on ended
            assert p.start_cycles[first + i] >= p.end_cycles[first + j] - 1  # times are rounded to cycles
        durations = tuple(round(p.end_cycles[first + i] - p.start_cycles[first + i]) for i in range(n))
        assert cycles >= critical_path_cycles(g, durations) - n  # at most one cycle of rounding per kernel
        first += n
    b = breakdown(p)
    assert b["roofline_s"] == pytest.approx(sum(stage_floors_s(p)))
    assert b["decode_roofline_s"] <= b["roofline_s"]
    assert p.decode_s >= b["decode_roofline_s"] * (1 - 1e-9)
    assert p.total_s >= b["roofline_s"] * (1 - 1e-9)
    assert p.critical_path_cycles <= p.total_cycles
    assert b["dram_bytes"] + b["onchip_bytes"] == trace.total_bytes
    assert 0 <= b["shares"]["launch"] <= 1 and sum(b["shares"].values()) == pytest.approx(1)


@settings(max_examples=40)
@given(trace=traces(), hw=hwconfigs(), launch=LAUNCHES)
def test_a_chain_gains_nothing_from_streams(trace, hw, launch):
    chained = Trace(trace.header, [dataclasses.replace(o, deps=[1] if k else []) for s in trace.stages
                                   for k, o in enumerate(trace.ops_of_stage(s.stage))], trace.stages)
    one, four = project(chained, hw, launch), project(chained, hw, launch, streams=4)
    assert (one.start_cycles, one.end_cycles, one.stage_cycles) == (four.start_cycles, four.end_cycles,
                                                                      four.stage_cycles)


@settings(max_examples=150, derandomize=True)  # checked on examples: list scheduling has no such theorem
@given(trace=traces(), hw=hwconfigs(), launch=LAUNCHES, factor=st.floats(1.0, 8.0),
       what=st.sampled_from(["peak.dram_bandwidth_bytes_per_s", "peak.compute_units"]))
def test_more_bandwidth_or_units_is_not_slower_with_overlap(trace, hw, launch, factor, what):
    value = int(hw.peak.compute_units * factor) if what == "peak.compute_units" else \
        hw.peak.dram_bandwidth_bytes_per_s * factor
    better = hw.with_overrides({what: str(value)})
    assert project(trace, better, launch, streams=3).total_cycles <= project(trace, hw, launch, streams=3).total_cycles


def two_kernel_stage(first: str, second: str) -> Trace:
    """Two independent kernels in one stage: "memory" (a GEMV over 400 MB of weights) or "compute" (a large
    GEMM over small weights)."""
    shapes = {"memory": dict(flops=400_000_000, weight=400_000_000, m=1, n=100_000),
              "compute": dict(flops=2 * 4096 * 4096 * 1536, weight=2_000_000, m=4096, n=4096)}
    weights = {"w0": shapes[first]["weight"], "w1": shapes[second]["weight"]}
    ops = [op(i, 0, "aten.linear.default", f"blocks.{i}.ffn.up", weights=(f"w{i}",), deps=[], **shapes[kind])
           for i, kind in enumerate((first, second))]
    return Trace(header(weights), ops, [StageRecord(0, "decode", [], [], [])])


def test_concurrent_transfers_share_dram_bandwidth():
    hw = parse(hw_dict(l2_capacity_bytes=0), "synthetic.yaml").with_overrides(
        {"host.launch_graph_s": "0", "host.graph_kernel_gap_s": "0", "host.kernel_min_s": "0"})
    both_memory = two_kernel_stage("memory", "memory")
    one, two = project(both_memory, hw, "graph"), project(both_memory, hw, "graph", streams=2)
    assert all(c.bound == "memory" for c in one.costs)
    # both run at once, each at half the bandwidth: nothing gained
    assert two.start_cycles == [0, 0] and two.total_cycles == pytest.approx(one.total_cycles, abs=2)
    mixed = two_kernel_stage("memory", "compute")
    one, two = project(mixed, hw, "graph"), project(mixed, hw, "graph", streams=2)
    assert [c.bound for c in one.costs] == ["memory", "compute"]
    longest = max(e - s for s, e in zip(one.start_cycles, one.end_cycles))
    # a memory-bound and a compute-bound kernel overlap: close to the longer one alone (each also takes a little
    # of the other's resource: the GEMV keeps the units busy ~13% of its time, its M padded to a 16-row tile)
    assert two.total_cycles < 0.65 * one.total_cycles and longest <= two.total_cycles <= 1.15 * longest


def test_streams_need_an_accelerator_and_a_positive_count():
    trace = two_kernel_stage("memory", "memory")
    with pytest.raises(ValueError, match=r"cpu-xeon-8480\.yaml describes a CPU"):
        project(trace, load_hwconfig(HWCONFIG_DIR / "cpu-xeon-8480.yaml"), streams=2)
    with pytest.raises(ValueError, match="streams must be an integer >= 1, got 0"):
        project(trace, parse(hw_dict(), "synthetic.yaml"), streams=0)


def test_a_speed_stage_runs_its_rows_attention_side_by_side(tmp_path):
    """The captured dependencies of a SPEED stage: each row's attention depends on its own KV writes, not on
    another row's (their depths differ), and everything the head reads flows from the stage's embedding."""
    pytest.importorskip("torch")
    from reference.capture.tracing import capture_trace
    from sim.trace import read_trace

    capture_trace("tiny-4x3", "speed", 10, tmp_path / "t.jsonl.gz", flips="0,0")
    trace = read_trace(tmp_path / "t.jsonl.gz")
    stage = next(s for s in trace.stages if s.kind == "speed" and len(s.rows) == 3)
    ops = trace.ops_of_stage(stage.stage)
    g = stage_graph(ops)
    assert nx.is_directed_acyclic_graph(g)
    attention = [i for i, o in enumerate(ops) if o.op == "aten.scaled_dot_product_attention" and o.layer == 0]
    assert len(attention) == 3 and len({ops[i].depth for i in attention}) == 3
    for a in attention:
        writes = [j for j in nx.ancestors(g, a) if ops[j].kv_write_bytes and ops[j].layer == 0]
        assert {ops[j].depth for j in writes} == {ops[a].depth}  # its own K and V, at its own depth
        assert not any(nx.has_path(g, a, b) or nx.has_path(g, b, a) for b in attention if b != a)
    embed = next(i for i, o in enumerate(ops) if o.module == "embed")
    head = next(i for i, o in enumerate(ops) if o.module == "head")
    assert nx.has_path(g, embed, head)
    argmax = len(ops) - 1
    assert nx.ancestors(g, argmax) >= {head, *attention}
    hw = load_hwconfig(HWCONFIG_DIR / "h100.yaml")
    serial, overlapped = project(trace, hw, "graph"), project(trace, hw, "graph", streams=4)
    assert overlapped.total_cycles < serial.total_cycles
