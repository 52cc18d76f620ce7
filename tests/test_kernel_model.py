"""The GPU kernel model (issue 23): the library's matrix-product kernel by shape (sim.matmul), fused decode
attention with split-KV and grouped-query heads, a kernel's fixed time, and the public per-op measurements it is
fitted to and judged on (sim.fitting.public_kernels)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simtraces import hw_dict

from sim import matmul
from sim.fitting import public_kernels
from sim.hardware import HWCONFIG_DIR, HwConfigError, KernelFit, load_hwconfig, parse, to_dict
from sim.kernels import (
    attention_shape,
    fit_kind,
    kernel_cost,
    kernel_of,
    kv_split_block,
    kv_splits,
    rows_kind,
    streamed_rows,
)
from sim.trace import one_op_trace

H100 = load_hwconfig(HWCONFIG_DIR / "h100.yaml")
A100 = load_hwconfig(HWCONFIG_DIR / "a100.yaml")


def product_cost(hw, m: int, n: int, k: int, dtype: str = "bfloat16"):
    trace = one_op_trace("aten.linear.default", "t.linear", [[m, k], [n, k]], [m, n], dtype, 2 * m * n * k,
                         2 * (m * k + m * n), weight_bytes=2 * n * k)
    kernel = kernel_of(trace.ops[0], hw.tile.m, hw.tile.n)
    return kernel, kernel_cost(kernel, hw, kernel.bytes)


def attention_cost(hw, batch: int, heads: int, kv_heads: int, length: int, dim: int = 128):
    q, kv = [batch, heads, 1, dim], [batch, kv_heads, length, dim]
    trace = one_op_trace("aten.scaled_dot_product_attention", "t.attn", [q, kv, kv], q, "bfloat16",
                         4 * batch * heads * length * dim, 4 * batch * heads * dim,
                         kv_read_bytes=4 * batch * kv_heads * length * dim)
    kernel = kernel_of(trace.ops[0], hw.tile.m, hw.tile.n)
    return kernel, kernel_cost(kernel, hw, kernel.bytes)


def test_decoding_products_stream_their_weights_once():
    """1 to 16 rows (decoding, a SPEED stage) run the skinny path: the weights streamed at the achieved DRAM
    bandwidth plus the fixed time, whatever the rows; memory-bound."""
    bandwidth = H100.peak.dram_bandwidth_bytes_per_s * H100.efficiency.dram
    weight = 2 * 8192 * 8192
    times = []
    for rows in (1, 2, 4, 8, 16):
        _, cost = product_cost(H100, rows, 8192, 8192)
        assert cost.bound == "memory"
        times.append(cost.time_s)
    assert max(times) / min(times) < 1.01
    assert times[0] == pytest.approx(weight / bandwidth + H100.classes["matmul"].fixed_s, rel=0.01)


def test_large_products_are_compute_bound_at_the_largest_tiles_efficiency():
    kernel, cost = product_cost(H100, 8192, 8192, 8192)
    assert cost.bound == "compute"
    ideal = kernel.flops / (H100.matrix_flops("bfloat16") * H100.efficiency.matrix)
    waves = math.ceil(8192 // 128 * 8192 // 256 / H100.peak.compute_units)
    burst_s = ideal * waves * H100.peak.compute_units / (8192 // 128 * 8192 // 256)
    assert burst_s > matmul.POWER_WINDOW_S  # 1.4 ms: past the power window, at the sustained clock after it
    assert cost.compute_s == pytest.approx(matmul.POWER_WINDOW_S + (burst_s - matmul.POWER_WINDOW_S)
                                           / H100.efficiency.matrix_sustained)


def test_tensor_core_work_past_the_power_window_runs_at_the_sustained_share():
    window = matmul.POWER_WINDOW_S
    assert matmul.sustained_compute_s(window / 2, 0.8) == window / 2  # short work: the burst rate
    assert matmul.sustained_compute_s(3 * window, 0.8) == pytest.approx(window + 2 * window / 0.8)
    assert matmul.sustained_compute_s(3 * window, 1.0) == 3 * window
    # a hwconfig without the figure sustains its matrix rate; the H100's fitted share slows a long product only
    raw = hw_dict()
    assert parse(raw, "plain.yaml").efficiency.matrix_sustained == 1.0
    raw["efficiency"]["matrix_sustained"] = 0.0
    with pytest.raises(HwConfigError, match=r"efficiency\.matrix_sustained"):
        parse(raw, "zero.yaml")
    assert 0.5 < H100.efficiency.matrix_sustained < 1.0
    _, short = product_cost(H100, 1024, 8192, 8192)
    _, full = product_cost(dataclasses.replace(H100, efficiency=dataclasses.replace(
        H100.efficiency, matrix_sustained=1.0)), 1024, 8192, 8192)
    assert short.compute_s == full.compute_s  # 0.19 ms of work: within the window


def test_split_k_fills_the_units_only_when_the_tiles_leave_them_idle():
    skinny = matmul.plan(256, 8192, 8192, 108, 1.41e9, (256, 128), 2.5e12, True, 2 * 8192 * 8192, 1.7e12)
    assert skinny.split_k > 1 and skinny.ctas > 64  # 64 tiles of 256 x 128 on 108 SMs: split along K
    large = matmul.plan(4096, 8192, 8192, 108, 1.41e9, (256, 128), 2.5e12, True, 2 * 8192 * 8192, 1.7e12)
    assert large.split_k == 1  # a grid that fills the SMs runs its waves


def test_a_lone_cta_does_not_stream_at_full_bandwidth():
    full = 3e12
    assert matmul.stream_bandwidth(1000, 132, 2e9, full) == full
    assert matmul.stream_bandwidth(1, 132, 2e9, full) == pytest.approx(matmul.CTA_STREAM_BYTES_PER_CYCLE * 2e9)
    assert matmul.stream_bandwidth(8, 132, 2e9, full) < matmul.stream_bandwidth(16, 132, 2e9, full) <= full


def test_smaller_tiles_are_less_efficient_and_the_hwconfig_tile_bounds_the_choice():
    assert matmul.tile_efficiency(64, 64) < matmul.tile_efficiency(128, 128) < matmul.tile_efficiency(128, 256)
    assert (256, 128) not in matmul.candidate_tiles((128, 128))
    assert matmul.candidate_tiles((16, 32)) == [(16, 32)]  # no library tile that small: the hwconfig's own


@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 70000), n=st.integers(1, 70000), k=st.integers(1, 70000), units=st.integers(1, 200),
       padded=st.booleans())
def test_no_plan_beats_the_roofline(m, n, k, units, padded):
    rate, bandwidth, dram = 1e12, 1e12, 2.0 * (m * k + n * k + m * n)
    p = matmul.plan(m, n, k, units, 1.5e9, (128, 256), rate, padded, dram, bandwidth)
    assert p.compute_s >= 2.0 * m * n * k / (rate * units) * (1 - 1e-12)
    assert p.memory_s >= dram / bandwidth * (1 - 1e-12)
    assert p.ctas >= 1 and p.waves == math.ceil(p.ctas / units)


def test_flash_decoding_splits_the_keys_when_few_ctas_leave_units_idle():
    assert kv_splits(128, 64, 132) == 1  # batch x heads fill the SMs
    splits = kv_splits(8, 64, 132)  # one sequence, 8 heads, 8192 keys
    waves = 8 * splits / 132
    assert 1 < splits <= 64 and waves / math.ceil(waves) >= 0.85  # one wave, nearly full
    assert kv_splits(8, 2, 132) == 2  # never more splits than blocks of keys
    assert kv_splits(1, 10**6, 132) <= 128
    assert kv_splits(48, 1000, 108) == 2  # flash_api.cpp's example: 48 CTAs on 108 SMs, 2 splits (efficiency 0.89)
    assert [kv_split_block(d) for d in (64, 128, 256)] == [256, 128, 64]


def test_decode_attention_reads_the_kv_cache_once_per_kv_head_and_ramps_with_length():
    gqa, mha = attention_cost(H100, 1, 32, 8, 8192)[1], attention_cost(H100, 1, 32, 32, 8192)[1]
    assert gqa.time_s < mha.time_s and gqa.memory_s == pytest.approx(mha.memory_s / 4, rel=0.05)
    short, long_ = attention_cost(H100, 1, 32, 8, 128)[1], attention_cost(H100, 1, 32, 8, 32768)[1]
    assert short.bound == "latency" and long_.bound == "memory"
    kv_bytes = 4 * 8 * 32768 * 128
    assert long_.time_s > kv_bytes / H100.peak.dram_bandwidth_bytes_per_s


def test_attention_shape_takes_grouped_heads_and_missing_dims():
    assert attention_shape([[2, 32, 1, 128], [2, 8, 4096, 128], [2, 8, 4096, 128]]) == (2, 32, 8, 1, 4096, 128)
    assert attention_shape([[12, 1, 64], [12, 512, 64]]) == (1, 12, 12, 1, 512, 64)
    assert attention_shape([[1, 64]]) == (1, 1, 1, 1, 1, 64)  # queries only: as many keys as queries
    assert attention_shape([[0, 4, 0, 8]]) == (1, 4, 4, 1, 1, 8)  # empty dims count as one


def test_a_kernels_fixed_time_adds_to_its_work_floored_at_the_shortest_kernel():
    raw = hw_dict()
    raw["classes"] = {"elementwise": {"efficiency": 1.0, "fixed_s": 3e-6}}
    hw = parse(raw, "fixed.yaml")
    tiny = one_op_trace("aten.mul.Tensor", "t.mul", [[4]], [4], "bfloat16", 4, 16)
    big = one_op_trace("aten.mul.Tensor", "t.mul", [[1 << 28]], [1 << 28], "bfloat16", 1 << 28, 3 << 29)
    for trace in (tiny, big):
        k = kernel_of(trace.ops[0], hw.tile.m, hw.tile.n)
        cost = kernel_cost(k, hw, k.bytes)
        assert cost.time_s == pytest.approx(max(max(cost.compute_s, cost.memory_s) + 3e-6, hw.host.kernel_min_s))
    raw["classes"] = {"elementwise": {"efficiency": 1.0, "fixed_s": 0.0}}
    k = kernel_of(tiny.ops[0], hw.tile.m, hw.tile.n)
    assert kernel_cost(k, parse(raw, "none.yaml"), k.bytes).time_s == hw.host.kernel_min_s


def test_a_cpu_gemv_pays_its_row_latency_per_row_streamed_from_dram():
    """A fitted `row_latency_s` adds that latency per output row whose weights come from DRAM (none when they sit on
    chip, half the rows when half the weights do); fits without one cost what they did."""
    raw = hw_dict() | {"kind": "cpu"}
    plain = parse(raw, "plain.yaml")
    raw["ops"] = {"matmul": {"aten.linear.default.gemv": {"efficiency": 1.0, "fixed_s": 0.0, "row_latency_s": 8e-8}}}
    hw = parse(raw, "rows.yaml")
    trace = one_op_trace("aten.linear.default", "t.linear", [[1, 512], [1408, 512]], [1, 1408], "float32",
                         2 * 1408 * 512, 4 * (512 + 1408), weight_bytes=4 * 1408 * 512)
    kernel = kernel_of(trace.ops[0], hw.tile.m, hw.tile.n)
    assert kernel.op.endswith(".gemv") and streamed_rows(kernel, kernel.weight_bytes // 2) == 704
    for dram_bytes, rows in ((kernel.bytes, 1408), (kernel.weight_bytes // 2, 704), (0, 0)):
        with_rows, without = kernel_cost(kernel, hw, dram_bytes), kernel_cost(kernel, plain, dram_bytes)
        assert with_rows.memory_s == pytest.approx(without.memory_s + rows * 8e-8)
    assert "row_latency_s" not in to_dict(plain)["classes"].get("matmul", {})


def test_a_cpu_few_row_product_takes_its_row_counts_fit_where_there_is_one():
    """On a CPU a product of 2-4 rows is timed by its row count's fit (`aten.linear.default.rows3`) where the
    hwconfig has one, else by its op kind's; a GPU keeps its op kind's fit."""
    raw = hw_dict() | {"kind": "cpu"}
    raw["ops"] = {"matmul": {"aten.linear.default": {"efficiency": 1.0, "fixed_s": 0.0, "memory_efficiency": 0.5},
                             "aten.linear.default.rows3": {"efficiency": 1.0, "fixed_s": 0.0,
                                                           "memory_efficiency": 0.25}}}
    cpu, gpu = parse(raw, "cpu.yaml"), parse(raw | {"kind": "gpu"}, "gpu.yaml")
    three, three_cost = product_cost(cpu, 3, 1408, 512, "float32")
    two, two_cost = product_cost(cpu, 2, 1408, 512, "float32")
    assert rows_kind(three) == "aten.linear.default.rows3" and fit_kind(three, cpu) == "aten.linear.default.rows3"
    assert fit_kind(two, cpu) == "aten.linear.default" and fit_kind(three, gpu) == "aten.linear.default"
    assert three_cost.memory_s == pytest.approx(2 * two_cost.memory_s, rel=0.01)
    assert rows_kind(product_cost(cpu, 8, 1408, 512, "float32")[0]) is None


def test_the_cpu_keeps_its_own_tile_model():
    cpu = load_hwconfig(HWCONFIG_DIR / "cpu-xeon-8480.yaml")
    kernel, cost = product_cost(cpu, 3, 4096, 4096, "float32")
    waves = math.ceil(kernel.tiles / cpu.peak.compute_units)
    assert cost.compute_s == pytest.approx(waves * kernel.tile_flops / kernel.padding / (
        cpu.matrix_flops("float32") / cpu.peak.compute_units * cpu.efficiency.matrix))


def test_public_measurements_are_read_and_split_by_shape():
    pts = public_kernels.points()
    counts = {}
    for p in pts:
        counts[p.gpu, p.kernel] = counts.get((p.gpu, p.kernel), 0) + 1
    assert counts == {("a100", "matmul"): 19, ("h100", "matmul"): 33, ("h200", "matmul"): 15,
                      ("a100", "attention"): 5, ("h100", "attention"): 12, ("a100", "small-op"): 19,
                      ("h100", "small-op"): 39}
    sides = public_kernels.held_out(pts)
    for gpu, kernel in counts:
        mine = [(p.shape, out) for p, out in zip(pts, sides) if (p.gpu, p.kernel) == (gpu, kernel)]
        shapes = {shape: out for shape, out in mine}
        assert all(shapes[shape] == out for shape, out in mine)  # a shape measured twice: one side
        assert 0 < sum(shapes.values()) < len(shapes)  # both sets (the H200 fits its sustained matrix share)
        assert [shapes[s] for s in sorted(shapes)] == [i % 2 == 1 for i in range(len(shapes))]  # alternate by size
    assert all(p.seconds > 0 and p.harness in public_kernels.HARNESSES for p in pts)


def test_vidurs_projections_are_the_independent_check_and_never_fitted():
    vidur = public_kernels.vidur_points()
    assert len(vidur) == 960 and {p.gpu for p in vidur} == {"a100", "h100"}
    assert not {p.source for p in public_kernels.points()} & {p.source for p in vidur}
    checks = public_kernels.vidur_report({"a100": A100})["a100"]
    assert checks["vidur all"]["n"] == 480 and checks["vidur all, 1-16 rows"]["n"] == 160


def test_the_datasheet_hwconfigs_hold_their_fitted_figures_and_efficiencies_at_most_one():
    for hw in (A100, H100, load_hwconfig(HWCONFIG_DIR / "h200.yaml")):
        for fit in hw.classes.values():
            assert isinstance(fit, KernelFit) and 0 < fit.efficiency <= 1 and 0 < fit.bandwidth_share <= 1
            assert 0 <= fit.fixed_s <= public_kernels.KERNEL_FIXED_MAX_S
        assert "efficiency.dram" in hw.sources and "efficiency.matrix" in hw.sources


def test_the_shipped_figures_are_what_the_fit_gives():
    """The fit of `python -m sim.fitting.public_kernels --fit` at the model's fitted constants (the grid point it
    chose) reproduces the datasheet hwconfigs' figures and the harness times (as written: 4 significant digits)."""
    hws = {gpu: load_hwconfig(HWCONFIG_DIR / f"{gpu}.yaml") for gpu in public_kernels.GPUS}
    pts = public_kernels.points()
    fit_sets = {gpu: [p for p, out in zip(pts, public_kernels.held_out(pts)) if p.gpu == gpu and not out]
                for gpu in hws}
    assert matmul.CTA_STREAM_BYTES_PER_CYCLE in public_kernels.STREAM_GRID
    assert matmul.TILE_LOAD_ROWS in public_kernels.TILE_LOAD_ROWS_GRID
    assert matmul.POWER_WINDOW_S in public_kernels.POWER_WINDOW_GRID
    figures, _ = public_kernels.fit_all(fit_sets, hws)
    for gpu, v in figures.items():
        hw = hws[gpu]
        assert hw.efficiency.dram == pytest.approx(v["dram"], abs=1e-4)
        assert hw.efficiency.matrix_sustained == pytest.approx(v["matrix_sustained"], abs=1e-4)
        assert hw.classes["matmul"].fixed_s == pytest.approx(v["matmul_s"], rel=1e-3, abs=1e-12)
        assert hw.classes["attention"].fixed_s == pytest.approx(v["attention_s"], rel=1e-3, abs=1e-12)
        assert hw.classes["attention"].bandwidth_share == pytest.approx(v["attention_memory"], abs=1e-4)
        assert hw.classes["fused"].fixed_s == pytest.approx(v["small_s"], rel=1e-3, abs=1e-9)  # 0: < 1 ns
        for harness in ("do_bench", "onnxruntime op"):
            assert public_kernels.HARNESS_S[gpu][harness] == pytest.approx(v[harness], rel=1e-3, abs=1e-12)


def test_the_public_report_and_its_gate():
    hws = {"h100": H100}
    pts = [p for p in public_kernels.points() if p.gpu == "h100"]
    report = public_kernels.report(pts, hws)["h100"]
    assert set(report) == {f"{c} {s}" for c in public_kernels.CLASSES for s in ("fit", "held-out")}
    assert public_kernels._failures({"h100": report}, 0.0, None)  # nothing is that exact
    assert not public_kernels._failures({"h100": report}, 1000.0, 1000.0)
    failed = public_kernels._failures({"h100": report}, 0.0, None, ("attention",))
    assert failed and all(line.startswith("h100 attention held-out") for line in failed)


def test_the_command_refuses_a_bad_hw_argument(capsys):
    with pytest.raises(SystemExit) as err:
        public_kernels.main(["--hw", "v100=hwconfigs/a100.yaml"])
    assert err.value.code == 2
    assert "expected GPU=PATH with GPU one of a100, h100, h200" in capsys.readouterr().err
