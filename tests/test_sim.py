"""The simulator: never below the roofline, monotone in resources, deterministic, byte accounting, waves,
on-chip reuse, G = 1 SPEED = sequential, and torch-free."""

import copy
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simtraces import OPS, header, hw_dict, hwconfigs, op, traces

from sim.engine import breakdown, project
from sim.hardware import HWCONFIG_DIR, load_hwconfig, parse
from sim.trace import StageRecord, Trace, read_trace

LAUNCHES = st.sampled_from(["eager", "graph"])


@settings(max_examples=60)
@given(trace=traces(), hw=hwconfigs(), launch=LAUNCHES)
def test_never_below_the_roofline_floor(trace, hw, launch):
    p = project(trace, hw, launch)
    for cost, start, end in zip(p.costs, p.start_cycles, p.end_cycles):
        assert cost.time_s >= cost.floor_s
        assert end - start >= cost.floor_s * hw.peak.clock_hz - 1e-6
    assert p.total_s >= breakdown(p)["roofline_s"] * (1 - 1e-12)


@settings(max_examples=60)
@given(trace=traces(), hw=hwconfigs(), launch=LAUNCHES, factor=st.floats(1.0, 8.0),
       what=st.sampled_from(["peak.dram_bandwidth_bytes_per_s", "peak.l2_bandwidth_bytes_per_s", "matrix", "vector",
                             "peak.compute_units"]))
def test_more_bandwidth_compute_or_units_is_never_slower(trace, hw, launch, factor, what):
    if what in ("matrix", "vector"):
        rates = getattr(hw.peak, f"{what}_flops_per_s")
        overrides = {f"peak.{what}_flops_per_s.{d}": str(r * factor) for d, r in rates.items()}
    elif what == "peak.compute_units":
        overrides = {what: str(int(hw.peak.compute_units * factor))}
    else:
        overrides = {what: str(getattr(hw.peak, what.split(".")[1]) * factor)}
    better = hw.with_overrides(overrides)
    assert project(trace, better, launch).total_cycles <= project(trace, hw, launch).total_cycles


def memory_bound_trace(n_stages: int = 4) -> Trace:
    weights = {f"w{j}": 400_000_000 for j in range(3)}
    ops, stages = [], []
    for s in range(n_stages):
        for j in range(3):  # GEMVs over 400 MB weights: decode at batch 1
            ops.append(op(len(ops), s, "aten.linear.default", f"blocks.{j}.ffn.up", flops=400_000_000,
                          weight=400_000_000, act=8192, m=1, n=100_000, weights=(f"w{j}",)))
        stages.append(StageRecord(s, "decode", [[0, s, 1]], [[0, s + 1, 3]], []))
    return Trace(header(weights), ops, stages)


@pytest.mark.parametrize("launch", ["eager", "graph"])
def test_doubling_bandwidth_on_a_memory_bound_trace(launch):
    hw = parse(hw_dict(), "synthetic.yaml")
    trace = memory_bound_trace()
    before = project(trace, hw, launch)
    after = project(trace, hw.with_overrides({"peak.dram_bandwidth_bytes_per_s": "4e12"}), launch)
    assert 0.5 <= after.total_s / before.total_s <= 0.6
    assert all(c.bound == "memory" for c in before.costs)


@settings(max_examples=20)
@given(trace=traces(), hw=hwconfigs(), launch=LAUNCHES)
def test_identical_inputs_give_bit_identical_results(trace, hw, launch):
    a, b = project(trace, hw, launch), project(copy.deepcopy(trace), copy.deepcopy(hw), launch)
    assert (a.start_cycles, a.end_cycles, a.issue_cycles, a.dram_bytes, a.stage_cycles) == (
        b.start_cycles, b.end_cycles, b.issue_cycles, b.dram_bytes, b.stage_cycles)
    assert breakdown(a) == breakdown(b)


@settings(max_examples=40)
@given(trace=traces(), hw=hwconfigs())
def test_bytes_from_memory_are_trace_bytes_minus_those_served_on_chip(trace, hw):
    b = breakdown(project(trace, hw))
    assert b["dram_bytes"] + b["onchip_bytes"] == trace.total_bytes
    assert 0 <= b["dram_bytes"] <= trace.total_bytes


def test_weights_reused_while_they_fit_on_chip():
    weights = {"w": 1_000_000}
    ops = [op(s, s, "aten.linear.default", "blocks.0.ffn.up", flops=2_000_000, weight=1_000_000, m=1, n=500,
              weights=("w",)) for s in range(3)]
    trace = Trace(header(weights), ops, [StageRecord(s, "decode", [], [], []) for s in range(3)])
    small, big = parse(hw_dict(l2_capacity_bytes=1e5), "s.yaml"), parse(hw_dict(l2_capacity_bytes=4e6), "b.yaml")
    assert project(trace, small).dram_bytes == [1_000_000] * 3
    assert project(trace, big).dram_bytes == [1_000_000, 0, 0]


def test_wave_quantization_shows():
    hw = parse(hw_dict(compute_units=10, dram_bandwidth_bytes_per_s=1e15, l2_bandwidth_bytes_per_s=1e16), "w.yaml")

    def time_of(n_tiles):  # compute-bound GEMMs of 128 x (128 * n_tiles) outputs, K = 4096
        n = 128 * n_tiles
        trace = Trace(header({}), [op(0, 0, "aten.linear.default", "blocks.0.ffn.up", flops=2 * 128 * n * 4096,
                                      m=128, n=n)], [StageRecord(0, "prefill", [], [], [])])
        return project(trace, hw, "graph").costs[0].compute_s

    # grids that fill the 10 units run in whole waves of the largest tile: twice the tiles, twice the time
    assert time_of(20) == pytest.approx(2 * time_of(10))
    assert time_of(40) == pytest.approx(4 * time_of(10))
    # one tile more than a wave costs far more than its share of 1.1 (a second wave, or smaller, slower tiles)
    assert time_of(11) > 1.3 * time_of(10)
    # a grid that leaves units idle is split along K (split-K): one tile's work is spread over the units
    assert time_of(1) < 0.25 * time_of(10)


def test_one_group_speed_projects_exactly_as_sequential(tmp_path):
    pytest.importorskip("torch")
    from reference.capture.tracing import capture_trace
    from sim.trace import read_trace

    hw = load_hwconfig(HWCONFIG_DIR / "a100.yaml")
    projections = []
    for decoder in ("sequential", "speed"):
        capture_trace("tiny-6", decoder, 12, tmp_path / f"{decoder}.jsonl.gz")
        projections.append(project(read_trace(tmp_path / f"{decoder}.jsonl.gz"), hw))
    seq, speed = projections
    assert (seq.start_cycles, seq.end_cycles, seq.stage_cycles, seq.dram_bytes) == (
        speed.start_cycles, speed.end_cycles, speed.stage_cycles, speed.dram_bytes)
    assert seq.decode_s == speed.decode_s and seq.tokens == speed.tokens == 12


def test_sim_runs_where_torch_cannot_be_imported():
    trace = "data/traces/t5-base-4.sequential.bf16.b1.t128.jsonl.gz"
    code = ("import sys, runpy; sys.modules['torch'] = None; import sim, sim.engine, sim.run; "
            f"sys.argv = ['sim.run', '--trace', '{trace}']; runpy.run_module('sim.run', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "t5-base-4.sequential" in out.stdout and "ms/token" in out.stdout


def test_ops_of_every_kind_get_a_class():
    from sim.kernels import kernel_of

    assert {kernel_of(op(0, 0, name, module, 1), 128, 128).cls for name, module in OPS} == {
        "matmul", "lm_head", "attention", "elementwise", "norm", "gather", "memset", "reduction"}


def test_kv_reads_at_batch_8_are_charged_per_sequence():
    """Each sequence has its own KV cache slice at each depth: with an on-chip cache that holds two slices but
    not a stage's worth, every KV byte an attention kernel reads comes from DRAM (keyed by depth alone, the
    second sequence's read at a depth was served on chip)."""
    trace = read_trace("data/measured/h200/t5-base-4x3.speed.bf16.b8.t128.jsonl.gz")
    largest = max(op.kv_read_bytes for op in trace.ops)
    hw = load_hwconfig(HWCONFIG_DIR / "h200.yaml").with_overrides({"peak.l2_capacity_bytes": str(2 * largest)})
    p = project(trace, hw)
    attention = [(k, dram) for k, dram in zip(p.kernels, p.dram_bytes) if k.cls == "attention" and k.kv_read_bytes]
    assert len(attention) > 1000
    assert sum(dram for _, dram in attention) == sum(k.kv_read_bytes for k, _ in attention)
    seqs = {op.seq for op in trace.ops if op.kv_read_bytes and trace.header.batch == 8}
    assert seqs == set(range(8))  # the legacy (version 1) trace's sequences, derived from its stage records
