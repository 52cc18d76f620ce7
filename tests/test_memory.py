"""Device memory: weights, the KV cache as allocated and the largest live activations, read from the trace; a run
that does not fit a device's DRAM is refused there, naming the hwconfig and the figures, and accepted on a larger
one."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simtraces import header, op

from reference.config import get_preset
from sim import run
from sim.defaults import default_trace
from sim.engine import project
from sim.hardware import load_hwconfig, parse
from sim.memory import CapacityError, _peaks_of_structure, _stage_peak, activation_bytes, device_memory
from sim.trace import StageRecord, Trace, read_trace


def test_default_trace_memory_is_the_models_weights_and_its_allocated_cache():
    cfg = get_preset("t5-base-12")
    memory = device_memory(read_trace(default_trace("t5-base-12", "sequential")))
    from reference.model import SharedDecoder

    params = sum(p.numel() for p in SharedDecoder(cfg, device="meta").parameters())
    assert memory.weights_bytes == 2 * params  # bf16
    # keys and values of 12 depths over 1 + 128 - 1 positions, and cross-attention ones of 12 layers over the
    # 128-token encoder input, 12 heads of 64, bf16
    assert memory.kv_cache_bytes == 2 * 2 * (12 * 12 * 128 * 64 + 12 * 12 * 128 * 64)
    assert 0 < memory.activation_bytes < memory.kv_cache_bytes
    assert memory.total_bytes == memory.weights_bytes + memory.kv_cache_bytes + memory.activation_bytes


def test_live_activations_follow_each_input_to_its_last_reader():
    ops = [op(i, 0, "aten.mul.Tensor", "blocks.0.ffn", 1) for i in range(4)]
    # op 0 writes A (100 B); op 1 reads A, writes B (10); op 2 reads B, writes C (1); op 3 reads A and C
    for o, act_read, act_write, srcs in zip(ops, (0, 100, 10, 101), (100, 10, 1, 5), ([0], [1], [1], [3, 1])):
        o.act_read_bytes, o.act_write_bytes, o.srcs = act_read, act_write, srcs
    # at op 2, A (still read by op 3) is live beside B and C: 100 + 10 + 1; at op 3: A + C + its output
    assert _stage_peak(ops) == max(0 + 100, 100 + 10, 10 + 1 + 100, 101 + 5)
    for o in ops:  # no producers recorded (trace versions 1, 2): each op's own reads and writes
        o.srcs = []
    assert _stage_peak(ops) == 100 + 10


@st.composite
def stages_of_one_structure(draw) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """The srcs of n ops (distances back, 0 for an input from outside the stage, some reaching past its start as
    code-built traces may) and, per stage, each op's (read, write) bytes."""
    n = draw(st.integers(1, 12))
    srcs = [draw(st.lists(st.integers(0, j + 1), max_size=3)) for j in range(n)]
    size = st.integers(0, 10**12)
    return srcs, draw(st.lists(st.lists(st.tuples(size, size), min_size=n, max_size=n), min_size=1, max_size=4))


@settings(max_examples=200, derandomize=True)
@given(stages_of_one_structure())
def test_the_stages_of_one_structure_peak_as_one_stage_at_a_time(case) -> None:
    srcs, stages = case
    ops = [op(k, 0, "aten.mul.Tensor", "x", 1) for k in range(len(stages) * len(srcs))]
    for k, o in enumerate(ops):
        o.act_read_bytes, o.act_write_bytes = stages[k // len(srcs)][k % len(srcs)]
        o.srcs = srcs[k % len(srcs)]
    ids = np.arange(len(ops)).reshape(len(stages), len(srcs))
    read = np.array([o.act_read_bytes for o in ops], np.int64)
    write = np.array([o.act_write_bytes for o in ops], np.int64)
    expected = [_stage_peak([ops[k] for k in row]) for row in ids]
    assert _peaks_of_structure(ids, srcs, read, write).tolist() == expected


def test_committed_traces_peak_as_the_plain_loop_does() -> None:
    root = Path(__file__).resolve().parents[1] / "data"
    # the default traces (format 4, with srcs) and a measured SPEED one (format 1: no srcs)
    for path in [*sorted((root / "traces").glob("*.jsonl.gz")),
                 root / "measured" / "h200" / "llama2-7b-8x4.speed.bf16.b1.t32.jsonl.gz"]:
        trace = read_trace(path)
        plain = max((_stage_peak([trace.distinct[k] for k in ids]) for ids in set(trace.stage_op_ids)), default=0)
        assert activation_bytes(trace) == plain, path


def heavy_trace(weight_bytes: int) -> Trace:
    ops = [op(0, 0, "aten.linear.default", "blocks.0.attn.wq", 10**9, weight=weight_bytes, weights=("w",))]
    return Trace(header({"w": weight_bytes}), ops, [StageRecord(0, "decode", [[0, 0, 1]], [[0, 1, 5]], [])])


def test_a_model_too_big_for_a_device_is_refused_there_and_accepted_on_a_larger_one():
    trace = heavy_trace(30 * 10**9)  # 30 GB of weights: over an RTX A5000's 24 GB, under an A100's 80 GB
    with pytest.raises(CapacityError) as err:
        project(trace, load_hwconfig("hwconfigs/a5000.yaml"))
    message = str(err.value)
    assert "does not fit on NVIDIA RTX A5000 (hwconfigs/a5000.yaml)" in message
    assert "weights 30.00 GB" in message and "> peak.dram_capacity_bytes 24.00 GB" in message
    p = project(trace, load_hwconfig("hwconfigs/a100.yaml"))
    assert p.memory.weights_bytes == 30 * 10**9 and p.total_s > 0


def test_sim_run_refuses_what_does_not_fit_and_reports_what_it_needs(tmp_path, capsys):
    out = tmp_path / "r.json"
    trace = str(default_trace("t5-base-4", "sequential"))
    assert run.main(["--hw", "a5000", "--trace", trace, "--launch", "eager", "--json", str(out)]) == 0
    [r] = json.loads(out.read_text())["runs"]
    assert r["memory"]["total_bytes"] == sum(r["memory"][k] for k in ("weights_bytes", "kv_cache_bytes",
                                                                        "activation_bytes"))
    assert "mem GB" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        run.main(["--hw", "a5000", "--trace", trace, "--launch", "eager", "--set", "peak.dram_capacity_bytes=2e8"])
    assert exit_.value.code == 2
    assert f"does not fit on NVIDIA RTX A5000 ({run.resolve_hwconfig('a5000')} with --set" in capsys.readouterr().err


def test_a_hwconfig_without_capacity_is_refused():
    from simtraces import hw_dict

    raw = hw_dict()
    del raw["peak"]["dram_capacity_bytes"]
    with pytest.raises(ValueError, match=r"peak\.dram_capacity_bytes"):
        parse(raw, "x.yaml")
