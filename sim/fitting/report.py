"""Write VALIDATION.md: every committed measured trace against the datasheet and the calibrated hwconfig of
its device, with scatter plots; and, when given, the CPU loop's results from this machine, eager and compiled
(its `compiled/` measurements of compiled decoding, validated per stage and end to end).

    python -m sim.fitting.report [--cpu-loop DIR]     # DIR: the output folder of scripts/cpu_validation.sh
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.command import check_outputs, run_command
from sim.defaults import CHECKOUT as ROOT
from sim.engine import breakdown, project
from sim.files import atomic_write
from sim.fitting import public_kernels
from sim.fitting.microbench import load_microbench
from sim.fitting.public import pairs as public_pairs
from sim.fitting.validate import metrics, microbench_pairs, r_text, scatter, validate_compiled, validate_trace
from sim.fusion import LIBRARY_CLASSES
from sim.hardware import HWCONFIG_DIR, HwConfig, HwConfigError, load_hwconfig
from sim.trace import Trace, TraceError, read_trace

MEASURED = ROOT / "data" / "measured"
# device folder -> (datasheet hwconfig, calibrated hwconfig, traces the kernel fits were fitted to, traces the host's
# eager costs were fitted to: sim.fitting.calibrate --measured and --host-measured, globs in the device folder)
DEVICES = {"h200": ("h200.yaml", "h200-calibrated.yaml", ("t5-base-*.b1.*",),
                    ("llama2-7b-8x4.speed.*", "t5-base-12.sequential.*", "t5-base-4x3.sequential.bf16.b1.*",
                     "t5-base-4x3.speed.bf16.b8.*"))}
MICROBENCH = {"h200": ROOT / "data" / "calibration" / "h200.microbench.json"}
HELD_OUT_FIT = ("tiny-6.sequential", "tiny-4x3.speed", "tiny-t5-2x3.speed")  # scripts/cpu_validation.sh
CPU_LOOP_FILES = ("cpu-calibrated.yaml", "cpu-heldout.yaml", "cpu-calibrated.microbench.json")


def _fit_set(device: str, globs: tuple[str, ...]) -> set[str]:
    return {p.name for pattern in globs for p in (MEASURED / device).glob(pattern)}


def section(device: str, hw_name: str, fit_globs: tuple[tuple[str, ...], tuple[str, ...]], lines: list[str],
            plots: Path) -> None:
    """One hwconfig against the device's measured traces; a calibrated one marks the traces its kernel fits
    (fit) and its host fit (host fit) saw, and is judged on the others: per kernel on those the kernel fits did not
    see, per stage and end to end on those the host fit did not see."""
    hw = load_hwconfig(HWCONFIG_DIR / hw_name)
    paths = sorted((MEASURED / device).glob("*.jsonl.gz"))
    calibrated = "calibrated" in hw_name
    fitted, host_fitted = (_fit_set(device, g) for g in fit_globs) if calibrated else (set(), set())
    lines += [f"### {hw.name} (`hwconfigs/{hw_name}`)", "",
              "| measured trace | measured ms | projected ms | end-to-end error | stage median \\|e\\| | "
              "kernel median \\|e\\| | kernel r |", "| --- | --- | --- | --- | --- | --- | --- |"]
    everything: dict[str, list] = {}
    held_out: dict[str, list] = {}
    for path in paths:
        pairs = validate_trace(read_trace(path), hw)
        (p, m), = pairs["end_to_end"]
        stage, kernel = metrics(pairs["stage"]), metrics(pairs["kernel"])
        mark = " (fit)" * (path.name in fitted) + " (host fit)" * (path.name in host_fitted)
        lines.append(f"| {path.name.removesuffix('.jsonl.gz')}{mark} | {m * 1e3:.1f} | {p * 1e3:.1f} | "
                     f"{100 * (p - m) / m:+.1f}% | {stage['median_abs_pct']:.1f}% | {kernel['median_abs_pct']:.1f}% | "
                     f"{r_text(kernel['pearson_r'], 0)} |")
        for metric, values in pairs.items():
            everything.setdefault(metric, []).extend(values)
            if path.name not in (fitted if metric.startswith("kernel") else host_fitted):
                held_out.setdefault(metric, []).extend(values)
    plot = plots / f"validation-{device}-{hw_name.removesuffix('.yaml')}.png"
    scatter(everything, plot, f"{hw.name}: {len(paths)} measured traces")
    not_seen = "traces not used by the fit (kernel: the kernel fits; stage and end to end: the host fit)"
    for label, pairs in (("all traces", everything), (not_seen, held_out)):
        if not pairs or (label == not_seen and not calibrated):
            continue
        lines += ["", f"{label}:", "", "| metric | n | median \\|e\\| | P90 \\|e\\| | bias | r |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for metric in ("end_to_end", "stage", "kernel", *sorted(k for k in pairs if k.startswith("kernel:"))):
            s = metrics(pairs[metric])
            lines.append(f"| {metric} | {s['n']} | {s['median_abs_pct']:.1f}% | {s['p90_abs_pct']:.1f}% | "
                         f"{s['bias_pct']:+.1f}% | {r_text(s['pearson_r'], 0)} |")
    lines += ["", f"![projected vs measured]({plot.relative_to(ROOT)})", ""]
    if hw.host.eager_op_s:
        lines += [host_costs_line(hw), ""]
    if device in MICROBENCH:
        resources(MICROBENCH[device], hw, lines)


def host_costs_line(hw: HwConfig) -> str:
    """The host's eager costs of a hwconfig with a table per op kind, dearest first."""
    costs = sorted(hw.host.eager_op_s.items(), key=lambda kv: -kv[1])
    return (f"Host, eager (`host.eager_op_s`, `host.eager_stage_s`; {hw.sources.get('host.eager_op_s', '')}): "
            f"{hw.host.eager_stage_s * 1e6:.0f} us per stage, and per kernel " + ", ".join(
                f"{op.removeprefix('aten.')} {s * 1e6:.1f} us" for op, s in costs)
            + f"; other op kinds and collectives {hw.host.launch_eager_s * 1e6:.1f} us.")


def resources(path: Path, hw: HwConfig, lines: list[str]) -> None:
    """One resource at a time: the microbenchmarks (reference.capture.microbench) against their projection."""
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    lines += [f"Microbenchmarks, one resource at a time (`{where}`, `python -m sim.fitting.validate --microbench`):",
              "", "| resource | n | median \\|e\\| | bias | r |", "| --- | --- | --- | --- | --- |"]
    for resource, values in microbench_pairs(load_microbench(path), hw).items():
        m = metrics(values)
        lines.append(f"| {resource} | {m['n']} | {m['median_abs_pct']:.1f}% | {m['bias_pct']:+.1f}% | "
                     f"{r_text(m['pearson_r'], 0)} |")
    lines.append("")


def cpu_section(loop: Path, lines: list[str]) -> None:
    """The CPU loop's traces against the hwconfig fitted to all of them and against the one fitted to three
    (`cpu-heldout.yaml`), which is judged on the two it did not see."""
    every = load_hwconfig(loop / "cpu-calibrated.yaml")
    held = load_hwconfig(loop / "cpu-heldout.yaml")
    fitted = set(HELD_OUT_FIT)
    lines += ["## A CPU: the CI loop (`bash scripts/cpu_validation.sh DIR`)", "",
              f"One run of the loop on {every.name}, {every.peak.compute_units} thread(s) (the development machine; CI "
              "runs it on its own CPU), float32, 32 tokens, every time the thread's CPU time "
              f"({read_trace(next(loop.glob('*.jsonl.gz'))).header.extra.get('clock', 'wall time')}: "
              "reference/capture/clock.py). Two calibrated hwconfigs: one fitted to all five measured "
              "presets (CI fails when its median end-to-end error passes 25%), and one fitted to the three marked "
              "(fit), so the other two are a fair test.", "",
              "| measured trace | end-to-end error, fit to all | kernel median \\|e\\|, fit to all | "
              "end-to-end error, fit to three | kernel median \\|e\\|, fit to three |",
              "| --- | --- | --- | --- | --- |"]
    totals: dict[str, list] = {}
    for path in sorted(loop.glob("*.jsonl.gz")):
        name = path.name.removesuffix(".jsonl.gz")
        trace = read_trace(path)
        cells = []
        for label, hw in (("all", every), ("three", held)):
            pairs = validate_trace(trace, hw)
            (p, m), = pairs["end_to_end"]
            cells += [f"{100 * (p - m) / m:+.1f}%", f"{metrics(pairs['kernel'])['median_abs_pct']:.1f}%"]
            key = label if label == "all" or name in fitted else "held out"
            totals.setdefault(key, []).extend(pairs["kernel"])
        lines.append(f"| {name}{' (fit)' if name in fitted else ''} | {' | '.join(cells)} |")
    lines += ["", "Kernel median |e| over the traces: " + ", ".join(
        f"{label} {metrics(values)['median_abs_pct']:.1f}%" for label, values in (
            ("fit to all, all five", totals["all"]), ("fit to three, the two held out", totals["held out"]))), ""]
    resources(loop / "cpu-calibrated.microbench.json", every, lines)
    if list((loop / "compiled").glob("*.jsonl.gz")):
        compiled_section(loop, every, held, lines)
    if list((loop / "tp").glob("*.jsonl.gz")) and (loop / "cpu-tp.yaml").is_file():
        tp_section(loop, every, lines)
    if list((loop / "quant").glob("*.jsonl.gz")):
        quant_section(loop, every, lines)


def quant_section(loop: Path, hw: HwConfig, lines: list[str]) -> None:
    """The loop's quantized measurements (`quant/`, reference.capture.measure --quant) against `cpu-calibrated.yaml`,
    whose dequant section is fitted to the quantized-product microbenchmarks alone (sim.fitting.dequant)."""
    d = hw.dequant
    lines += ["### Weight-only quantization (`reference.capture.measure --quant`)", "",
              "The same run of the loop: tiny-4x3 decoded over int8 (per channel) and int4-g32 weights (float32 "
              "activations, ATen's packed cpu products; in float32 they run a scalar path that dequantizes every "
              "weight for every row), interleaved with the five presets above and held out of every kernel and host "
              "fit: the quantized products are timed with `cpu-calibrated.yaml`'s `dequant` section, fitted to the "
              f"quantized-product microbenchmarks alone ({d.ops_per_s / 1e9:.3g} Gop/s, one pass per "
              f"{d.rows_per_pass} row(s)), and the matmul class's fit. CI fails when the median end-to-end or stage "
              "error passes 25%. Per op, the measured times are the capture's, scaled per stage to the untraced "
              "stage time (`extra.op_time_scale`): the scale takes capture overhead from every op alike, and the "
              "products, mostly work, read faster than they ran.", "",
              "| quantized trace | measured ms | projected ms | end-to-end error | stage median \\|e\\| | quantized "
              "product median \\|e\\| (bias) |", "| --- | --- | --- | --- | --- | --- |"]
    every: dict[str, list] = {}
    for path in sorted((loop / "quant").glob("*.jsonl.gz")):
        pairs = validate_trace(read_trace(path), hw)
        (p, m), = pairs["end_to_end"]
        for key in ("end_to_end", "stage", "kernel:matmul"):
            every.setdefault(key, []).extend(pairs[key])
        products = metrics(pairs["kernel:matmul"])
        lines.append(f"| {path.name.removesuffix('.jsonl.gz')} | {m * 1e3:.1f} | {p * 1e3:.1f} | "
                     f"{100 * (p / m - 1):+.1f}% | {metrics(pairs['stage'])['median_abs_pct']:.1f}% | "
                     f"{products['median_abs_pct']:.1f}% ({products['bias_pct']:+.1f}%) |")
    lines += ["", "Over all: " + ", ".join(f"{'quantized products' if key == 'kernel:matmul' else key} median |e| "
                                          f"{metrics(v)['median_abs_pct']:.1f}% (n {metrics(v)['n']})"
                                          for key, v in every.items()), ""]


def tp_section(loop: Path, single: HwConfig, lines: list[str]) -> None:
    """The loop's tensor-parallel measurements (`tp/`, reference.capture.measure --tp 2) against `cpu-tp.yaml`
    (gated) and against the single-process kernel fit (`single`), per stage and end to end."""
    hw = load_hwconfig(loop / "cpu-tp.yaml")
    ic = hw.interconnect
    lines += ["### Tensor parallelism (`reference.capture.measure --tp 2`, gloo on 127.0.0.1)", "",
              "The same run of the loop: TP 2 decodes on two gloo ranks (one torch thread each, float32), timed by "
              "reference/capture/tpclock.py: a rank's work by its thread's CPU time, each collective by wall time "
              "from the last rank's arrival to rank 0's result, a stage the median of its work plus its "
              "collectives' medians. `cpu-tp.yaml`'s interconnect (gloo's ring over loopback: "
              f"{ic.link_bandwidth_bytes_per_s / 1e9:.3g} GB/s, {(ic.step_latency_s or 0) * 1e6:.1f} us per "
              f"message, {ic.collective_latency_s * 1e6:.1f} us per collective) is fitted to the all-reduce rows "
              "of the microbenchmarks above (each call after a decode's gap of work), never to these decodes; its "
              "kernels and host cost to the per-op and stage times of the trace marked (fit) alone (host "
              f"{hw.host.launch_eager_s * 1e6:.2f} us per kernel, against {single.host.launch_eager_s * 1e6:.2f} us "
              "for one process: a rank's work runs slower per op, as it blocks in every collective and resumes with "
              "cold caches, and the host cost also takes what the link model misses of the fitted trace's "
              "collectives), so the SPEED run (G rows per all-reduce, other collectives per stage) is held out. The "
              "single-process fit (`cpu-calibrated.yaml`, the same interconnect) is shown beside it. CI fails when "
              "the median end-to-end or stage error against `cpu-tp.yaml` passes 35% (gloo's all-reduce on a 2-core "
              "machine: its 256-byte call measured 607 to 958 us in four runs within an hour).", "",
              "| TP trace | tokens | measured ms | collectives ms (share) | projected ms | end-to-end error | stage "
              "median \\|e\\| | collective median \\|e\\| | end-to-end error, single-process fit | stage median "
              "\\|e\\|, single-process fit |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    every: dict[str, list] = {}
    for path in sorted((loop / "tp").glob("*.jsonl.gz")):
        trace = read_trace(path)
        cells = []
        for fit in (hw, single):
            pairs = validate_trace(trace, fit)
            (p, m), = pairs["end_to_end"]
            cells.append((p, m, pairs))
            if fit is hw:
                for key in ("end_to_end", "stage", "kernel:collective"):
                    every.setdefault(key, []).extend(pairs[key])
        (p, m, pairs), (p1, _, pairs1) = cells
        comm = trace.header.extra["collectives"]["sum_s"]
        tokens = sum(len(stage.commits) for stage in trace.stages)
        fit_to = hw.sources.get("host.launch_eager_s", "").removeprefix("fitted: stage wall times of ").split(", ")
        fitted = f"{trace.header.model.get('name')}/{trace.header.decoder}" in fit_to
        name = path.name.removesuffix(".jsonl.gz") + (" (fit)" if fitted else "")
        lines.append(f"| {name} | {tokens} | {m * 1e3:.1f} | {comm * 1e3:.1f} "
                     f"({comm / m:.0%}) | {p * 1e3:.1f} | {100 * (p / m - 1):+.1f}% | "
                     f"{metrics(pairs['stage'])['median_abs_pct']:.1f}% | "
                     f"{metrics(pairs['kernel:collective'])['median_abs_pct']:.1f}% | {100 * (p1 / m - 1):+.1f}% | "
                     f"{metrics(pairs1['stage'])['median_abs_pct']:.1f}% |")
    lines += ["", "Over both, against `cpu-tp.yaml`: " + ", ".join(
        f"{key} median |e| {metrics(values)['median_abs_pct']:.1f}% (n {metrics(values)['n']})"
        for key, values in every.items()), ""]


def compiled_fit_set(hw: HwConfig) -> set[str]:
    """The compiled traces (preset.decoder) `hw`'s compiled figures were fitted to, as its sources say."""
    source = hw.sources.get("host.launch_graph_s", "")
    marker = "compiled runs of "
    if marker not in source:
        return set()
    return {name.strip().replace("/", ".") for name in source.split(marker, 1)[1].split(",")}


def _compiled_row(name: str, trace: Trace, hws: tuple[HwConfig, HwConfig], fits: tuple[set[str], set[str]],
                  totals: dict[str, list]) -> str:
    """One trace's row of the compiled table; its pairs join `totals` (per hwconfig: all; held out)."""
    extra = trace.header.extra
    cells = [str(trace.header.max_new_tokens), f"{extra['end_to_end_s']['median'] * 1e3:.1f}",
             f"{sum(s.wall_s or 0 for s in trace.stages) * 1e3:.1f}"]
    for label, hw, fit in zip(("all", "held"), hws, fits):
        pairs = validate_compiled(trace, hw)
        (p, m), = pairs["end_to_end"]
        stage = metrics(pairs["stage"])
        if label == "all":
            cells.append(f"{p * 1e3:.1f}")
        cells += [f"{100 * (p - m) / m:+.1f}%", f"{stage['median_abs_pct']:.1f}%"]
        groups = ([label, "fit"] if name in fit else [label]) if label == "all" else ([] if name in fit else [label])
        for group in groups:
            for metric, values in pairs.items():
                totals.setdefault(f"{group} {metric}", []).extend(values)
    cells.append(f"{extra['compile_s']:.1f} ({len(extra['compile_variants'])})")
    marks = "".join(mark for mark, fit in zip((" (fit)", " (fit to two)"), fits) if name in fit)
    return f"| {name}{marks} | " + " | ".join(cells) + " |"


def library_shares(paths: list[Path], hw: HwConfig) -> str:
    """A sentence: the share of each compiled trace's projected decode time in library kernels (matrix products,
    attention), whose model is the eager calibration's."""
    shares = []
    for path in paths:
        p = project(read_trace(path), hw, "compiled")
        library_s = sum(breakdown(p)["class_s"].get(c, 0.0) for c in LIBRARY_CLASSES)
        shares.append(f"{path.name.removesuffix('.jsonl.gz')} {100 * library_s / p.total_s:.0f}%")
    return ("Library kernels (products, attention: their model is the eager calibration's) take, of each projected "
            "compiled run: " + ", ".join(shares) + ".")


def product_rates(mb: dict, hw: HwConfig) -> str:
    """A sentence: the weight bytes per second of the float32 products of few rows in the microbenchmark `mb`,
    per number of rows and weight (rows x columns), and what `hw` (calibrated to them) fitted: the GEMV's latency
    per output row and bandwidth, a few-row product's bandwidth per row count."""
    rates = [f"{g['m']} row{'s' * (g['m'] > 1)} {g['n']}x{g['k']} {g['n'] * g['k'] * 4 / g['seconds'] / 1e9:.1f}"
             for g in mb.get("gemm", []) if g["dtype"] == "float32" and g["m"] <= 8]
    bandwidth = hw.peak.dram_bandwidth_bytes_per_s * hw.efficiency.dram / 1e9
    fits = hw.ops.get("matmul", {})
    gemv = fits.get("aten.linear.default.gemv")
    fitted = [f"{op.rsplit('.', 1)[1]} {bandwidth * fit.bandwidth_share:.1f} GB/s" for op, fit in sorted(fits.items())
              if ".rows" in op]
    if gemv is not None and gemv.row_latency_s:
        fitted.insert(0, f"GEMV {gemv.row_latency_s * 1e9:.0f} ns per output row + bytes at "
                         f"{bandwidth * gemv.bandwidth_share:.1f} GB/s")
    return ("Products of few rows past the L3 (`cpu-calibrated.microbench.json`, weights rotated past the cache; GB/s "
            "of weights read): " + ", ".join(rates) + ". A one-row product (BLAS's GEMV) streams short rows slower "
            "(about one DRAM latency per row beyond its bytes: `row_latency_s`, fitted with its bandwidth to these "
            "GEMVs, so one fit holds across widths), and a few-row product streams at a rate of its own per row count "
            "(three rows slowest; `aten.linear.default.rowsR`); the fits' fixed time is bounded by the tiniest call, "
            "so that this slowness stays in the products' work. Fitted: " + (", ".join(fitted) or "none") + ".")


def compiled_section(loop: Path, every: HwConfig, held: HwConfig, lines: list[str]) -> None:
    """The CPU loop's compiled measurements against both calibrated hwconfigs, per stage and end to end."""
    fits = (compiled_fit_set(every), compiled_fit_set(held))
    paths = sorted((loop / "compiled").glob("*.jsonl.gz"))
    first = read_trace(paths[0]).header
    host, generated, library_fixed_s = every.host, every.compiled.generated, every.compiled.library_fixed_s
    lines += ["### Compiled decoding (`reference.capture.measure --compile`, `sim.fitting.validate --launch compiled`)",
              "", f"The same run of the loop: compiled decoding (`decode.*(compile=True)`, inductor, "
              f"{first.dtype}, {first.device_name}), each variant compiled in the "
              "warm-up (compile seconds and variants below, excluded from every time), then "
              f"{first.extra['repeats']} timed runs interleaved; no per-op times, so per stage (decode and SPEED "
              "stages, compiled) and end to end (those plus the prefill or encoder stage, projected eager as "
              "compiled decoding runs it). Stage times are contiguous: a stage runs from its start to the next "
              "one's, so they add up to the decode, the loop's own work included. The compiled figures of "
              "`cpu-calibrated.yaml` (sim.fitting.compiled), fitted to the decode stages of the traces marked (fit): "
              f"the host costs {host.launch_graph_s * 1e6:.1f} us per stage (the graph call and the decode loop), a "
              f"library kernel {library_fixed_s * 1e6:.2f} us and a generated kernel {generated.fixed_s * 1e6:.2f} us "
              f"beyond their work (generated kernels at the elementwise class's efficiency, "
              f"{generated.efficiency:.3f}; library kernels at the eager calibration's). Traces not marked are judged, "
              "not fitted; `cpu-heldout.yaml` has the compiled figures fitted to the two marked (fit to two) and is "
              "judged on the others. CI fails when the median end-to-end or stage error of the traces marked (fit) "
              "against `cpu-calibrated.yaml` passes 25% (targets: 10% end to end, 15% per stage), when "
              "code-wide-4x3's (weights past the L3, judged) median end-to-end error passes 30%, and when the held-out "
              "median end-to-end error against `cpu-heldout.yaml` passes 30% (targets 10% and 15%; margins for DRAM "
              "bandwidth shared with other processes).", "",
              "| compiled trace | tokens | measured ms | stages summed ms | projected ms | end-to-end error | "
              "stage median \\|e\\| | end-to-end error, fit to two | stage median \\|e\\|, fit to two | "
              "compile s (variants) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    totals: dict[str, list] = {}
    for path in paths:
        name = path.name.removesuffix(".jsonl.gz")
        lines.append(_compiled_row(name, read_trace(path), (every, held), fits, totals))
    lines += ["", "Measured: the median end-to-end time of the timed runs; stages summed: the medians of its "
              "stages, summed (a gap between the two is the time before the first stage, or runs that a busy machine "
              "stretched). " + library_shares(paths, every), "",
              product_rates(load_microbench(loop / "cpu-calibrated.microbench.json"), every), "",
              "| hwconfig, traces | metric | n | median \\|e\\| | P90 \\|e\\| | bias | r |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, what in (("fit", "`cpu-calibrated.yaml`, the traces fitted (gated)"),
                        ("all", "`cpu-calibrated.yaml`, all"), ("held", "`cpu-heldout.yaml`, held out")):
        for metric in ("end_to_end", "stage"):
            m = metrics(totals.get(f"{label} {metric}", []))
            if not m["n"]:
                continue
            lines.append(f"| {what} | {metric} | {m['n']} | {m['median_abs_pct']:.1f}% | {m['p90_abs_pct']:.1f}% | "
                         f"{m['bias_pct']:+.1f}% | {r_text(m['pearson_r'], 0)} |")
    lines.append("")


def public_kernels_section(lines: list[str]) -> None:
    """The datasheet GPU hwconfigs against the public per-op measurements (sim.fitting.public_kernels)."""
    hws = {gpu: load_hwconfig(HWCONFIG_DIR / f"{gpu}.yaml") for gpu in public_kernels.GPUS}
    lines += ["## GPU kernels against public per-op measurements (`python -m sim.fitting.public_kernels`)", "",
              "Matrix products (1 to 16384 rows), decode attention and one-kernel norms, rotary and activations of "
              "A100, H100 and H200 GPUs from public benchmarks (`data/public/README.md`), against the datasheet "
              "hwconfigs, whose DRAM efficiency, sustained matrix share and fixed times per class were fitted to "
              "the fit set (`--fit`); the held-out shapes judge them (the H200 takes the H100's figures but the "
              "sustained matrix share, fitted to its own fit set).", "",
              "| hwconfig | kernel class | set | n | median \\|e\\| | P90 \\|e\\| | bias | r |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for gpu, by_key in public_kernels.report(public_kernels.points(), hws).items():
        for key, m in by_key.items():
            cls, side = key.rsplit(" ", 1)
            lines.append(f"| `{gpu}.yaml` | {cls} | {side} | {m['n']} | {m['median_abs_pct']:.1f}% | "
                         f"{m['p90_abs_pct']:.1f}% | {m['bias_pct']:+.1f}% | {r_text(m['pearson_r'], 0)} |")
    lines += ["", "The independent check, never fitted (`--vidur`): Vidur's profiled Llama-2-7B and -70B projections "
              "(QKV, O, gate-up, down; 1 to 4096 tokens, tensor-parallel shards of 1 to 8; `data/public/vidur-mlp/`).",
              "", "| hwconfig | rows | n | median \\|e\\| | P90 \\|e\\| | bias | r |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for gpu, by_key in public_kernels.vidur_report(hws).items():
        for key in ("vidur all", "vidur all, 1-16 rows", "vidur all, 17-4096 rows"):
            m = by_key[key]
            lines.append(f"| `{gpu}.yaml` | {key.removeprefix('vidur all').lstrip(', ') or 'all'} | {m['n']} | "
                         f"{m['median_abs_pct']:.1f}% | {m['p90_abs_pct']:.1f}% | {m['bias_pct']:+.1f}% | "
                         f"{r_text(m['pearson_r'], 0)} |")
    lines.append("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.fitting.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-loop", type=Path, help="output folder of scripts/cpu_validation.sh to include")
    parser.add_argument("--out", type=Path, default=ROOT / "VALIDATION.md", help="default VALIDATION.md")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out": args.out})
    if args.cpu_loop:  # before the long part: the files the loop writes
        missing = [name for name in CPU_LOOP_FILES if not (args.cpu_loop / name).is_file()]
        if missing or not list(args.cpu_loop.glob("*.jsonl.gz")):
            parser.error(f"--cpu-loop {args.cpu_loop}: not a complete output of scripts/cpu_validation.sh (missing: "
                         f"{', '.join(missing) or 'measured traces *.jsonl.gz'})")
    plots = ROOT / "docs"
    lines = ["# Validation", "",
             "Generated by `python -m sim.fitting.report" + (" --cpu-loop DIR" if args.cpu_loop else "") +
             "`. Errors are (projected - measured) / measured; |e| its absolute value; r the Pearson correlation of "
             "projected and measured times. Kernel: measured kernel time (cuda: CUPTI) vs projected; stage: stage "
             "wall time; end to end: median wall time of the timed runs. Traces marked (fit) were used to fit the "
             "calibrated hwconfig's kernel figures, (host fit) its host's eager costs (per op kind and per stage: "
             "stage wall times); each metric is judged again on the traces its fit did not see.", ""]
    for device, (datasheet, calibrated, kernel_globs, host_globs) in DEVICES.items():
        lines += [f"## {device}: measured traces in `data/measured/{device}/`", ""]
        for hw_name in (datasheet, calibrated):
            section(device, hw_name, (kernel_globs, host_globs), lines, plots)
    lines += ["## A100 single operators (public measurements, `python -m sim.fitting.public`)", "",
              "LLMCompass's A100 80GB measurements (one eager call between host clocks, synchronised) against the "
              "datasheet `hwconfigs/a100.yaml` (not calibrated, every point) and against `hwconfigs/a100-public.yaml` "
              "(fitted to every other point by `python -m sim.fitting.public --fit`, judged on the other half only; "
              "targets 10% for the matrix products, 20% for the others).", "",
              "| hwconfig | points | operator | n | median \\|e\\| | bias | r |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, held_out in (("a100.yaml", False), ("a100-public.yaml", True)):
        for kind, values in public_pairs(load_hwconfig(HWCONFIG_DIR / name), held_out).items():
            m = metrics(values)
            lines.append(f"| `{name}` | {'held-out half' if held_out else 'all'} | {kind} | {m['n']} | "
                         f"{m['median_abs_pct']:.1f}% | {m['bias_pct']:+.1f}% | {r_text(m['pearson_r'], 0)} |")
    lines.append("")
    public_kernels_section(lines)
    if args.cpu_loop:
        try:
            cpu_section(args.cpu_loop, lines)
        except (HwConfigError, TraceError, OSError) as err:
            parser.error(f"--cpu-loop {args.cpu_loop}: {err}")
    atomic_write(args.out, lambda tmp: tmp.write_text("\n".join(lines)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.fitting.report"))
