"""sim.fitting.validate and sim.fitting.calibrate: known errors are reported as known, fits recover what made the data,
and traces that cannot be validated are refused clearly."""

import dataclasses

import numpy as np
import pytest
from simtraces import header, hw_dict, op

from sim.engine import Projection, project
from sim.fitting import calibrate, compiled, validate
from sim.hardware import HwConfigError, KernelFit, parse
from sim.kernels import kernel_of
from sim.trace import OpRecord, StageRecord, Trace


def test_a_trace_paired_with_itself_has_zero_error():
    pairs = [(t, t) for t in np.geomspace(1e-6, 1e-2, 50)]
    m = validate.metrics(pairs)
    assert m["median_abs_pct"] == m["mean_abs_pct"] == m["p90_abs_pct"] == m["bias_pct"] == 0
    assert m["pearson_r"] == pytest.approx(1)


def test_a_scaled_projection_reports_the_known_error():
    measured = np.geomspace(1e-6, 1e-2, 50)
    m = validate.metrics([(1.1 * t, t) for t in measured])
    assert m["median_abs_pct"] == pytest.approx(10) and m["bias_pct"] == pytest.approx(10)
    m = validate.metrics([(0.8 * t, t) for t in measured])
    assert m["mean_abs_pct"] == pytest.approx(20) and m["bias_pct"] == pytest.approx(-20)


def timed_trace(hw, ops: list[OpRecord], n_stages: int, weights: dict[str, int] | None = None,
                scale: float = 1.0) -> tuple[Trace, Projection]:
    """A trace of `ops` (each naming its stage) in `n_stages` one-row decode stages, each op's duration the
    kernel time `hw` projects for it (times `scale`); and that projection."""
    stages = [StageRecord(s, "decode", [[0, s, 1]], [[0, s + 1, 7]], []) for s in range(n_stages)]
    trace = Trace(header(weights or {}), ops, stages)
    p = project(trace, hw)
    for o, start, end in zip(trace.ops, p.start_cycles, p.end_cycles):
        o.duration_s = scale * (end - start) / p.clock_hz
    return trace, p


def measured_trace(hw, scale: float = 1.0, n_stages: int = 3) -> Trace:
    """A measured trace whose durations are the projection's own kernel times (times `scale`)."""
    ops = [op(4 * s + j, s, "aten.linear.default", f"blocks.{j}.ffn.up", flops=2 * 4096 * 4096,
              weight=2 * 4096 * 4096, act=8192, m=1, n=4096, weights=(f"w{j}",))
           for s in range(n_stages) for j in range(4)]
    trace, p = timed_trace(hw, ops, n_stages, {f"w{j}": 2 * 4096 * 4096 for j in range(4)}, scale)
    for st, cycles in zip(trace.stages, p.stage_cycles):
        st.wall_s = scale * cycles / p.clock_hz
    trace.header.measured = True
    trace.header.device, trace.header.device_name = "cuda", "NVIDIA Synthetic"
    trace.header.extra = {"end_to_end_s": {"median": scale * p.total_s}}
    return trace


def test_validate_trace_on_its_own_projection():
    hw = parse(hw_dict(), "synthetic.yaml")
    for scale, error in ((1.0, 0.0), (1.25, 20.0)):
        pairs = validate.validate_trace(measured_trace(hw, scale), hw)
        for metric in ("kernel", "stage", "end_to_end"):
            assert validate.metrics(pairs[metric])["median_abs_pct"] == pytest.approx(error)


def test_traces_that_cannot_be_validated_are_refused():
    hw = parse(hw_dict(), "synthetic.yaml")
    trace = measured_trace(hw)
    unmeasured = dataclasses.replace(trace, header=dataclasses.replace(trace.header, measured=False))
    with pytest.raises(ValueError, match="not a measured trace"):
        validate.check_pairing(unmeasured, hw, "x", False)
    with pytest.raises(ValueError, match="empty trace"):
        validate.check_pairing(Trace(trace.header, [], []), hw, "x", False)
    other = dataclasses.replace(trace, header=dataclasses.replace(trace.header, device_name="NVIDIA A100"))
    with pytest.raises(ValueError, match="measured on NVIDIA A100 but hwconfig"):
        validate.check_pairing(other, hw, "x", False)
    validate.check_pairing(other, hw, "x", any_device=True)
    on_cpu = dataclasses.replace(trace, header=dataclasses.replace(trace.header, device="cpu"))
    with pytest.raises(ValueError, match="describes a gpu"):
        validate.check_pairing(on_cpu, hw, "x", False)


def test_validate_command_refuses_a_trace_without_durations(capsys):
    with pytest.raises(SystemExit):
        validate.main(["--hw", "hwconfigs/a100.yaml", "--measured",
                       "data/traces/t5-base-4.sequential.bf16.b1.t128.jsonl.gz"])
    assert "not a measured trace" in capsys.readouterr().err


def test_validate_checks_each_resource_against_the_microbenchmarks(tmp_path, capsys):
    assert validate.main(["--hw", "hwconfigs/h200-calibrated.yaml", "--microbench",
                          "data/calibration/h200.microbench.json"]) == 0
    out = capsys.readouterr().out
    assert all(resource in out for resource in ("copy", "gemm bfloat16", "gemv float32", "attention bfloat16"))
    bad = tmp_path / "mb.json"
    bad.write_text('{"copy": [{"bytes": 1}]}')
    with pytest.raises(SystemExit):
        validate.main(["--hw", "hwconfigs/h200.yaml", "--microbench", str(bad)])
    assert f"--microbench {bad}, field 'gemm': missing: the resource benchmarks come together" in \
        capsys.readouterr().err  # sim.fitting.microbench: one format


def synthetic_microbench(hw) -> dict:
    """Microbenchmark results the way the model says `hw` would produce them."""
    bw = hw.peak.dram_bandwidth_bytes_per_s * hw.efficiency.dram
    rate = hw.peak.matrix_flops_per_s["bfloat16"] * hw.efficiency.matrix
    sizes = [1 << s for s in range(20, 31)]
    return {"device_name": "synthetic", "torch_version": "-",
            "copy": [{"bytes": b, "bytes_moved": 2 * b, "seconds": 2 * b / bw + 2e-6} for b in sizes],
            "gemm": [{"m": n, "n": n, "k": n, "dtype": "bfloat16", "seconds": 2 * n**3 / rate} for n in (4096, 8192)],
            "elementwise": [], "attention": [], "launch_eager_s": 7e-6, "kernel_min_s": 1.5e-6,
            "graph_per_kernel_s": 2.0e-6}


def test_calibration_recovers_the_figures_that_made_the_measurements():
    truth = parse(hw_dict(), "truth.yaml")  # efficiencies 0.85 dram, 0.7 matrix
    measured = calibrate.peaks_from_microbench(synthetic_microbench(truth))
    assert measured["dram_bandwidth_bytes_per_s"] == pytest.approx(2e12 * 0.85, rel=0.05)
    assert measured["matrix_flops_per_s"]["bfloat16"] == pytest.approx(300e12 * 0.7, rel=0.05)
    assert measured["kernel_min_s"] == 1.5e-6 and measured["graph_kernel_gap_s"] == pytest.approx(0.5e-6)
    _, report = calibrate.calibrate(truth, synthetic_microbench(truth), [], "synthetic.json")
    assert report["efficiency"]["dram"] == pytest.approx(0.85, rel=0.05)
    assert report["efficiency"]["matrix"] == pytest.approx(0.7, rel=0.05)


@pytest.mark.parametrize("efficiency, fixed_s", [(0.6, 0.0), (0.35, 4e-6), (0.9, 2e-5)])
def test_class_fits_recover_efficiency_and_fixed_time(efficiency, fixed_s):
    work = np.geomspace(1e-6, 1e-3, 200)  # compute or memory time at unit class efficiency
    samples = [(w, w / 3, max(w / efficiency, 1e-6) + fixed_s) for w in work]
    e, e_m, f = calibrate.fit_class(samples, kernel_min_s=1e-6)
    assert e == e_m == pytest.approx(efficiency, rel=0.05)
    assert f == pytest.approx(fixed_s, abs=2e-7)


def test_anchors_tell_compute_and_memory_efficiency_apart():
    """Large products pin the compute efficiency, memory-bound ones the memory efficiency; samples that never reach
    the compute bound leave it to the caller."""
    compute, memory = np.geomspace(1e-5, 1e-2, 12), np.geomspace(1e-5, 1e-2, 12)
    samples = [(c, c / 50, c / 0.8 + 1e-6) for c in compute] + [(m / 50, m, m / 0.35 + 1e-6) for m in memory]
    e_c, e_m = calibrate.anchor_efficiencies(samples, kernel_min_s=1e-7)
    assert e_c == pytest.approx(0.8, rel=0.03) and e_m == pytest.approx(0.35, rel=0.03)
    e_c, e_m = calibrate.anchor_efficiencies(samples[12:], kernel_min_s=1e-7, compute=0.6)
    assert e_c == 0.6 and e_m == pytest.approx(0.35, rel=0.03)


def test_anchor_fixed_time_is_bounded_so_slow_short_rows_stay_work():
    """One-row products that stream short rows slower (a CPU's GEMV) look like a fixed time plus fast streaming; the
    anchor's fixed time bounded by the tiniest call keeps that slowness in the efficiency the decoders use."""
    rows = [(1e-4, 0.5), (3e-4, 0.5), (1e-3, 0.7), (3e-3, 0.7)]  # (memory s at unit efficiency, achieved share)
    samples = [(m / 50, m, m / share + 2e-6) for m, share in rows]
    _, free = calibrate.anchor_efficiencies(samples, kernel_min_s=1e-7, compute=1.0)
    _, bounded = calibrate.anchor_efficiencies(samples, kernel_min_s=1e-7, compute=1.0, max_fixed_s=3e-6)
    assert bounded == pytest.approx(0.6, abs=0.07) and free > bounded + 0.05


def test_row_latency_fit_holds_one_gemv_model_across_widths():
    """GEMVs of narrow and wide rows (a CPU's: one DRAM latency per output row beyond the bytes) give back the
    latency and the streaming efficiency, where one efficiency alone would average them."""
    shapes = [(512, 512), (1408, 512), (512, 1408), (2048, 768), (4096, 4096)]  # (output rows, row length)
    bandwidth, latency = 20e9, 83e-9
    samples = [(4 * n * k / bandwidth, n, n * latency + 4 * n * k / (0.6 * bandwidth)) for n, k in shapes]
    e_m, fitted = calibrate.row_latency_fit(samples, max_fixed_s=1e-6)
    assert e_m == pytest.approx(0.6, rel=0.03) and fitted == pytest.approx(latency, rel=0.05)


def test_host_cost_fit_recovers_the_launch_time():
    truth = parse(hw_dict(), "truth.yaml").with_overrides({"host.launch_eager_s": "3.3e-5"})
    start = truth.with_overrides({"host.launch_eager_s": "1e-6"})
    fitted = calibrate.fit_launch([measured_trace(truth)], start)
    assert fitted == pytest.approx(3.3e-5, rel=0.05)


def test_class_fits_load_and_are_validated(tmp_path):
    raw = hw_dict()
    raw["classes"] = {"attention": {"efficiency": 0.5, "fixed_s": 2e-5}}
    hw = parse(raw, "x.yaml")
    assert hw.classes["attention"] == KernelFit(0.5, 2e-5)
    raw["classes"] = {"attention": {"efficiency": 1.5, "fixed_s": 0}}
    with pytest.raises(HwConfigError, match=r"classes\.attention\.efficiency"):
        parse(raw, "x.yaml")
    raw["classes"] = {"softmaxx": {"efficiency": 0.5, "fixed_s": 0}}
    with pytest.raises(HwConfigError, match="unknown kernel class"):
        parse(raw, "x.yaml")


def test_op_fits_refine_their_class_fit_and_are_validated():
    raw = hw_dict()
    raw["classes"] = {"norm": {"efficiency": 0.5, "fixed_s": 1e-6}}
    raw["ops"] = {"norm": {"aten.mean.dim": {"efficiency": 0.25, "fixed_s": 4e-6}}}
    hw = parse(raw, "x.yaml")
    assert hw.fit("norm", "aten.mean.dim") == KernelFit(0.25, 4e-6)
    assert hw.fit("norm", "aten.mul.Tensor") == KernelFit(0.5, 1e-6)  # no fit of its own: the class's
    assert hw.fit("gather", "aten.embedding.default") == KernelFit()  # neither
    raw["ops"] = {"norm": {"aten.mean.dim": {"efficiency": 0, "fixed_s": 0}}}
    with pytest.raises(HwConfigError, match=r"ops\.norm\.aten\.mean\.dim\.efficiency"):
        parse(raw, "x.yaml")
    raw["ops"] = {"normm": {"aten.mean.dim": {"efficiency": 0.5, "fixed_s": 0}}}
    with pytest.raises(HwConfigError, match=r"ops\.normm'.*unknown kernel class"):
        parse(raw, "x.yaml")
    raw["ops"] = {"norm": ["aten.mean.dim"]}
    with pytest.raises(HwConfigError, match=r"field 'ops\.norm': expected a mapping of op kind"):
        parse(raw, "x.yaml")


def test_attention_off_the_fused_path_is_an_op_kind_of_its_own():
    fused = op(0, 0, "aten.scaled_dot_product_attention", "blocks.0.attn", flops=10**6)  # q: [1, 4, 1, 64]
    math = dataclasses.replace(fused, in_shapes=[s[1:] for s in fused.in_shapes])  # q: [4, 1, 64]
    assert kernel_of(fused, 128, 128).op == "aten.scaled_dot_product_attention"
    assert kernel_of(math, 128, 128).op == "aten.scaled_dot_product_attention.math"
    assert kernel_of(math, 128, 128).cls == "attention"


def test_calibration_recovers_per_op_fixed_times_within_a_class():
    """Three op kinds of one class that differ only in fixed time (as a CPU's dispatch costs do): the class
    fit alone cannot explain them, the op fits recover each."""
    truth_raw = hw_dict()
    fixed = {"aten.mean.dim": 9e-6, "aten.mul.Tensor": 1e-6, "aten.rsqrt.default": 3e-6}
    truth_raw["ops"] = {"norm": {o: {"efficiency": 0.5, "fixed_s": f} for o, f in fixed.items()}}
    truth = parse(truth_raw, "truth.yaml")
    ops = [op(3 * s + j, s, name, f"blocks.{j}.attn_norm", flops=10**6 * (1 + s % 7), act=10**6 * (1 + s))
           for s in range(40) for j, name in enumerate(fixed)]
    trace, _ = timed_trace(truth, ops, 40)
    classes, by_op = calibrate.fit_kernels([trace], parse(hw_dict(), "start.yaml"))
    assert set(classes) == {"norm"} and set(by_op["norm"]) == set(fixed)
    for name, f in fixed.items():
        assert by_op["norm"][name]["fixed_s"] == pytest.approx(f, rel=0.05)
        assert by_op["norm"][name]["efficiency"] == pytest.approx(0.5, rel=0.05)


def test_class_efficiency_comes_from_the_microbenchmarks_that_cover_the_class():
    """Tiny decoder kernels are all fixed time and cannot tell an efficiency; large copies can. (A fixed time above
    the shortest kernel, 2 us: a kernel's fixed time and its work add up, floored at the shortest kernel.)"""
    truth_raw = hw_dict()
    truth_raw["classes"] = {"elementwise": {"efficiency": 0.4, "fixed_s": 4e-6}}
    truth = parse(truth_raw, "truth.yaml")
    mb = {"copy": [{"bytes": size, "bytes_moved": 2 * size, "seconds": 0.0} for size in (1 << 24, 1 << 27, 1 << 30)],
          "gemm": [], "elementwise": [], "attention": []}
    for entry, (projected, _) in zip(mb["copy"], validate.microbench_pairs(mb, truth)["copy"]):
        entry["seconds"] = projected
    ops = [op(s, s, "aten.mul.Tensor", "blocks.0.ffn", flops=64, act=64 * (1 + s % 5)) for s in range(30)]
    trace, _ = timed_trace(truth, ops, 30)
    start = parse(hw_dict(), "start.yaml")
    classes, _ = calibrate.fit_kernels([trace], start, calibrate.microbench_samples(mb, start, {"bfloat16"}))
    # copies are memory-bound: they tell the memory efficiency, and leave the compute one at 1
    assert classes["elementwise"]["memory_efficiency"] == pytest.approx(0.4, rel=0.05)
    assert classes["elementwise"]["efficiency"] == 1.0
    assert classes["elementwise"]["fixed_s"] == pytest.approx(4e-6, rel=0.05)
    errors = validate.microbench_pairs(mb, parse(dict(hw_dict(), classes=classes), "fitted.yaml"))["copy"]
    assert validate.metrics(errors)["median_abs_pct"] < 5


def test_a_gemv_and_a_few_row_product_stream_weights_at_their_own_rates():
    """Libraries run a one-row product (GEMV) and a few-row one as different kernels (on a CPU the few-row product
    packs its weights and streams them at half the rate): each op kind takes its memory efficiency from the
    microbenchmarks of its own shapes, the class its compute efficiency from the large products."""
    truth_raw = hw_dict()
    # fixed times above the shortest kernel (2 us), which the decoder's small products would otherwise sit on
    truth_raw["classes"] = {"matmul": {"efficiency": 0.9, "fixed_s": 3e-6}}
    truth_raw["ops"] = {"matmul": {
        "aten.linear.default.gemv": {"efficiency": 0.9, "memory_efficiency": 0.6, "fixed_s": 3e-6},
        "aten.linear.default": {"efficiency": 0.9, "memory_efficiency": 0.3, "fixed_s": 3e-6}}}
    truth = parse(truth_raw, "truth.yaml")
    shapes = [(4096, 4096, 4096), (8192, 8192, 8192), (1, 4096, 4096), (1, 11008, 4096), (1, 32128, 768),
              (4, 4096, 4096), (8, 4096, 4096), (4, 4096, 11008)]
    mb = {"copy": [], "elementwise": [], "attention": [],
          "gemm": [{"m": m, "n": n, "k": k, "dtype": "bfloat16", "seconds": 0.0} for m, n, k in shapes]}
    pairs = validate.microbench_pairs(mb, truth)
    by_resource = {r: iter(v) for r, v in pairs.items()}
    for g in mb["gemm"]:
        g["seconds"] = next(by_resource["gemv bfloat16" if g["m"] == 1 else "gemm bfloat16"])[0]
    ops = []
    for s in range(40):
        m = 1 if s % 2 else 3
        ops.append(op(s, s, "aten.linear.default", "blocks.0.ffn.up", flops=2 * m * 512 * 512, weight=2 * 512 * 512,
                      act=2 * m * 1024, m=m, n=512, weights=(f"w{s % 8}",)))
    trace, _ = timed_trace(truth, ops, 40, {f"w{j}": 2 * 512 * 512 for j in range(8)})
    start = parse(hw_dict(), "start.yaml")
    classes, by_op = calibrate.fit_kernels([trace], start, calibrate.microbench_samples(mb, start, {"bfloat16"}))
    assert classes["matmul"]["efficiency"] == pytest.approx(0.9, rel=0.05)
    gemv, few = by_op["matmul"]["aten.linear.default.gemv"], by_op["matmul"]["aten.linear.default"]
    assert gemv["memory_efficiency"] == pytest.approx(0.6, rel=0.05)
    assert few["memory_efficiency"] == pytest.approx(0.3, rel=0.05)
    assert gemv["fixed_s"] == pytest.approx(3e-6, rel=0.1) and few["fixed_s"] == pytest.approx(3e-6, rel=0.1)


def test_public_a100_measurements_are_read_and_projected():
    from sim.fitting import public

    if not public.DATA.exists():
        pytest.skip(f"public measurements not beside the checkout ({public.DATA})")
    hw = parse(hw_dict(), "synthetic.yaml")
    results = public.pairs(hw)
    assert {k: len(v) for k, v in results.items()} == {"matmul": 20, "softmax": 22, "layernorm": 22, "gelu": 20}
    assert all(p > 0 and m > 0 for values in results.values() for p, m in values)
    assert validate.metrics(results["matmul"])["pearson_r"] > 0.99  # bigger products take longer in both


def test_public_fit_is_judged_only_on_points_it_did_not_see(tmp_path):
    from sim.fitting import public

    points = list(range(11))
    fit_half, held_out = public.split(points, False), public.split(points, True)
    assert sorted(fit_half + held_out) == points and not set(fit_half) & set(held_out)
    if not public.DATA.exists():
        pytest.skip(f"public measurements not beside the checkout ({public.DATA})")
    base = parse(hw_dict(), "synthetic.yaml")  # a start far from an A100: the fit, not the start, must carry it
    fitted = parse(public.fit(base, "test"), "fitted.yaml")
    assert set(fitted.classes) == {"matmul", "reduction", "norm", "elementwise"}
    errors = {k: validate.metrics(v)["median_abs_pct"] for k, v in public.pairs(fitted, held_out=True).items()}
    before = {k: validate.metrics(v)["median_abs_pct"] for k, v in public.pairs(base, held_out=True).items()}
    assert all(errors[k] < before[k] for k in errors), (errors, before)
    assert errors["matmul"] <= 10 and max(errors.values()) <= 20, errors


def test_report_refuses_an_incomplete_cpu_loop_folder(tmp_path, capsys):
    from sim.fitting import report

    with pytest.raises(SystemExit):
        report.main(["--cpu-loop", str(tmp_path), "--out", str(tmp_path / "V.md")])
    assert "not a complete output of scripts/cpu_validation.sh" in capsys.readouterr().err
    assert not (tmp_path / "V.md").exists()


# -- the compiled regime: stage times of compiled measurements, no per-op times


def compiled_trace(hw, n_stages: int = 24, seed: int = 0) -> Trace:
    """A compiled measurement whose stage wall times are `hw`'s compiled projection of it: stages of library
    products and chains of pointwise ops (srcs link them, so they fuse), in numbers and sizes that vary from stage
    to stage (so that the host's cost per stage and the fixed times of library and generated kernels can be told
    apart); a prefill stage first, which compiled decoding runs eagerly."""
    rng = np.random.default_rng(seed)
    ops, stages = [], []
    for s in range(n_stages + 1):
        for _ in range(1 + s % 3 if s else 2):
            first = len(ops)
            ops.append(op(len(ops), s, "aten.linear.default", "blocks.0.ffn.up", flops=2 * 64 * 64, weight=2 * 64 * 64,
                          act=256, m=1, n=64, weights=("w0",), deps=[1] if ops and ops[-1].stage == s else []))
            for _ in range(int(rng.integers(0, 4))):  # a chain of pointwise ops (one fused kernel), or none
                act = int(rng.choice([10**3, 10**5, 3 * 10**6]))
                ops.append(dataclasses.replace(op(len(ops), s, "aten.mul.Tensor", "blocks.0.ffn", flops=act // 4,
                                                  act=act, m=1, deps=[1]), srcs=[1, 0]))
            assert ops[first].stage == s
        stages.append(StageRecord(s, "prefill" if s == 0 else "speed", [[0, s, 1]], [[0, s + 1, 7]], []))
    trace = Trace(header({"w0": 2 * 64 * 64}), ops, stages)
    seconds = compiled.compiled_stage_seconds(trace, hw)
    for st, t in zip(trace.stages, seconds):
        st.wall_s = t
    trace.header.device, trace.header.device_name = "cpu", "cpu (1 threads)"
    trace.header.extra = {"measurement": "compiled", "formulation": "compiled",
                          "end_to_end_s": {"median": sum(seconds)}}
    return trace


def cpu_hw(launch_graph_s: float = 4e-5, library_fixed_s: float = 2e-6, generated_fixed_s: float = 3e-6,
           generated_efficiency: float = 0.3, kind: str = "cpu", compiled: bool = True):
    """A small cpu-like device. Its eager matmul fit (4 us fixed) must not apply under compiled launch, where the
    compiled section (when `compiled`) gives a library kernel `library_fixed_s` and a generated one
    `generated_fixed_s`."""
    raw = hw_dict(clock_hz=3e9, compute_units=1, l2_capacity_bytes=1e6, dram_bandwidth_bytes_per_s=2e10,
                  l2_bandwidth_bytes_per_s=1e11)
    raw["kind"] = kind
    raw["host"] = {"launch_eager_s": 3e-6, "launch_graph_s": launch_graph_s, "graph_kernel_gap_s": 0.0,
                   "kernel_min_s": 1e-7}
    raw["classes"] = {"matmul": {"efficiency": 0.8, "fixed_s": 4e-6},
                      "elementwise": {"efficiency": generated_efficiency, "fixed_s": 1e-5}}
    if compiled:
        raw["compiled"] = {"library_fixed_s": library_fixed_s,
                           "generated": {"efficiency": generated_efficiency, "fixed_s": generated_fixed_s}}
    return parse(raw, "cpu.yaml")


def test_compiled_fits_apply_only_under_compiled_launch():
    hw = cpu_hw()
    trace = compiled_trace(hw)
    eager, compiled = project(trace, hw, "eager"), project(trace, hw, "compiled")
    assert hw.fit("matmul", "aten.linear.default").fixed_s == 4e-6
    assert hw.fit("matmul", "aten.linear.default", compiled=True).fixed_s == 2e-6
    assert hw.fit("norm", "aten.mul.Tensor", compiled=True) == hw.fit("norm", "aten.mul.Tensor")  # none: no override
    assert {k.cls for k in compiled.kernels} == {"matmul", "fused"}  # every generated kernel is of class fused
    assert compiled.total_s < eager.total_s


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_the_linear_stage_model_is_the_compiled_projection(kind):
    """On a synchronous cpu host as under an accelerator's graph replay, a compiled stage is a launch plus its
    kernels one after another: the fit's linear model is the engine's projection."""
    hw = cpu_hw(kind=kind)
    trace = compiled_trace(hw)
    generated = compiled.generated_fit(hw)
    assert generated == KernelFit(0.3, 0.0)  # the elementwise class's efficiency
    stages = compiled.compiled_stages([trace], hw, generated)
    projected = [t for t, s in zip(compiled.compiled_stage_seconds(trace, hw), trace.stages) if s.kind == "speed"]
    assert stages.n_generated.sum() > 0 and stages.n_library.sum() == 48  # the chains fused, one per product
    np.testing.assert_allclose(stages.predict(4e-5, 2e-6, 3e-6), projected, rtol=1e-5, atol=1e-8)  # whole cycles


@pytest.mark.parametrize("truth", [(4e-5, 2e-6, 3e-6), (1e-5, 0.0, 6e-6), (2e-4, 5e-6, 0.0)])
@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_compiled_fit_recovers_the_figures_that_made_the_stage_times(truth, kind):
    traces = [compiled_trace(cpu_hw(*truth, kind=kind), seed=seed) for seed in range(3)]
    start = cpu_hw(0.0, kind=kind, compiled=False)  # the eager fits known, the compiled figures not
    fit = compiled.fit_compiled(traces, start)
    launch, library, generated = truth
    assert fit["launch_graph_s"] == pytest.approx(launch, rel=0.02)
    assert fit["library_fixed_s"] == pytest.approx(library, rel=0.05, abs=2e-8)
    assert fit["generated_fixed_s"] == pytest.approx(generated, rel=0.05, abs=2e-8)
    assert fit["compiled"] == {"library_fixed_s": fit["library_fixed_s"],
                               "generated": {"efficiency": 0.3, "fixed_s": fit["generated_fixed_s"]}}
    assert fit["median_abs_pct"] < 0.5 and fit["stages"] == 3 * 24


def test_calibrate_writes_the_compiled_figures_and_validate_judges_them(tmp_path, capsys):
    truth = cpu_hw()
    trace = compiled_trace(truth)
    raw, report = calibrate.calibrate(cpu_hw(0.0, compiled=False), synthetic_microbench(truth), [trace], "mb.json")
    fitted = parse(raw, "fitted.yaml")
    assert fitted.host.launch_graph_s == pytest.approx(4e-5, rel=0.02) and "compiled" in report
    assert fitted.compiled.generated.fixed_s == pytest.approx(3e-6, rel=0.05)
    assert fitted.compiled.library_fixed_s == pytest.approx(2e-6, rel=0.05)
    assert fitted.fit("attention", "aten.scaled_dot_product_attention", compiled=True).fixed_s == pytest.approx(
        2e-6, rel=0.05)
    assert fitted.sources["host.launch_graph_s"].startswith("fitted: decode stage wall times of compiled runs")
    pairs = validate.validate_trace(trace, fitted, "compiled")
    assert set(pairs) == {"stage", "end_to_end"} and len(pairs["stage"]) == 24  # the decode stages; no kernels
    assert validate.metrics(pairs["end_to_end"])["median_abs_pct"] < 1


def test_compiled_and_eager_measurements_are_validated_only_in_their_own_mode():
    hw = cpu_hw()
    trace = compiled_trace(hw)
    validate.check_pairing(trace, hw, "c", False, "compiled")
    with pytest.raises(ValueError, match=r"a compiled measurement .*--launch compiled"):
        validate.check_pairing(trace, hw, "c", False, "eager")
    eager = measured_trace(parse(hw_dict(), "synthetic.yaml"))
    with pytest.raises(ValueError, match=r"not a compiled measurement .*--launch eager"):
        validate.check_pairing(eager, parse(hw_dict(), "synthetic.yaml"), "e", False, "compiled")


def test_report_reads_which_compiled_traces_a_hwconfig_was_fitted_to():
    from sim.fitting import report

    raw = hw_dict()
    raw["sources"]["host.launch_graph_s"] = ("fitted: decode stage wall times of compiled runs of tiny-4x3/speed, "
                                             "tiny-6/sequential")
    assert report.compiled_fit_set(parse(raw, "x.yaml")) == {"tiny-4x3.speed", "tiny-6.sequential"}
    assert report.compiled_fit_set(parse(hw_dict(), "x.yaml")) == set()  # an assumption, not a fit
