"""Validate projections against measured runs: error per kernel, per stage and end to end.

    python -m sim.fitting.validate --hw hwconfigs/h200.yaml --measured data/measured/h200/*.jsonl.gz [--plot OUT.png]

A measured trace (python -m reference.capture.measure) holds every op's measured duration, every stage's wall time
and the end-to-end wall time. Each is compared with the projection of the same trace:

- kernel: the op's device time (cuda: kernel time from the profiler; cpu: the host clock around the
  synchronous op, its dispatch included) against the projected kernel time;
- stage: the stage's wall time against the projected stage time;
- end to end: the median end-to-end wall time against the projected total.

Per metric (and per kernel class): mean and median absolute % error, P90, signed bias (median of
(projected - measured) / measured) and Pearson correlation. `--max-error PCT` exits 1 when the median
end-to-end absolute error over the traces exceeds PCT; `--max-stage-error PCT` when the median stage error does.

    python -m sim.fitting.validate --launch compiled --hw cpu-calibrated.yaml --measured compiled/*.jsonl.gz

validates compiled measurements (reference.capture.measure --compile: stage and end-to-end wall times, the ops of
the compiled formulation, no per-op times, so no kernel metric): each decode and SPEED stage against its compiled
projection (the trace fused by sim.fusion, one graph per stage, as `python -m sim.run --launch compiled`), and
end to end against those plus the prefill and encoder stages projected eager, as compiled decoding runs them.

    python -m sim.fitting.validate --hw hwconfigs/h200-calibrated.yaml \\
        --microbench data/calibration/h200.microbench.json

checks the resource models one by one instead, against the microbenchmarks (reference.capture.microbench): copy over
sizes (the cache knee), matrix products of two or more rows and of one row (GEMV) per dtype, an elementwise
multiply, decode attention, and the all-reduce sweep against the interconnect model (sim.interconnect; rows
`{"world_size": n, "bytes": b, "dtype": "float16", "seconds": t}`: `all_reduce` over all of them, `all_reduce xN`
per world size); the same statistics per resource. The decode sweeps (microbench --only decode_gemm
decode_attention) are checked too, per number of rows (`decode_gemm m=R <dtype>`: products of R rows by a model's
weights) and per head layout (`decode_attention 32q/4kv x64 <dtype>`: one query row over 128 to 32k keys). A row
that cannot be modelled (a product form other than x @ W^T, a projection the hwconfig refuses) is listed after the
table, never dropped unsaid; a list of rows of no known format is refused when the file is read
(sim.fitting.microbench), never ignored.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from sim.command import check_outputs, number, run_command
from sim.engine import project
from sim.files import atomic_write, staged_writes
from sim.fitting.calibrate import microbench_traces
from sim.fitting.collectives import all_reduce_pairs, all_reduce_rows, beyond_the_node
from sim.fitting.compiled import DECODE_STAGES, compiled_stage_seconds, is_compiled_measurement
from sim.fitting.microbench import MicrobenchError, load_microbench
from sim.hardware import HwConfig, HwConfigError, load_hwconfig
from sim.inputs import brief
from sim.trace import Trace, read_checked

# Measured times outside this range (seconds) are no measurement of a decoding run: below a nanosecond no clock
# resolves them (and dividing by them blows any error up to infinity), above 1e7 s (four months) nothing was
# timed. A measured end-to-end time outside it is refused; an op or stage time outside it is left out of the
# statistics, as zeros (ops too short for the profiler to see) always were.
MEASURED_S = (1e-9, 1e7)
# ops of an eager measurement that may go untimed (0 s: too short for the profiler to see) before it is no
# measurement of the run: the committed H200 measurements have 2 of 42,595; a trace of zeros would compare the
# projection with nothing
MAX_UNTIMED_SHARE = 0.1


def _measured(seconds: object) -> bool:
    return (isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
            and MEASURED_S[0] <= seconds <= MEASURED_S[1])


def metrics(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Error statistics of (projected, measured) pairs, in % (correlation in [-1, 1], NaN where it does not exist:
    fewer than two pairs, or no spread: `r_text` prints it "-", `json_safe` writes it null); pairs whose measured
    time is outside MEASURED_S are left out."""
    pairs = [(p, m) for p, m in pairs if _measured(m) and math.isfinite(p)]
    if not pairs:
        return {"n": 0}
    signed = [100 * (p / m - 1) for p, m in pairs]  # p / m first: 100 * (p - m) overflows for m near 1e308
    absolute = sorted(abs(e) for e in signed)
    projected, measured = [p for p, _ in pairs], [m for _, m in pairs]
    r = math.nan
    if len(pairs) > 1 and statistics.pstdev(projected) > 0 and statistics.pstdev(measured) > 0:
        r = statistics.correlation(projected, measured)
    return {"n": len(pairs), "mean_abs_pct": statistics.fmean(absolute), "median_abs_pct": statistics.median(absolute),
            "p90_abs_pct": absolute[min(len(absolute) - 1, math.ceil(0.9 * len(absolute)) - 1)],
            "bias_pct": statistics.median(signed), "pearson_r": r}


def measured_end_to_end(trace: Trace, path: Path) -> float:
    """The trace's measured end-to-end time (header extra.end_to_end_s.median, as reference.capture.measure
    writes it), checked: a mapping whose median is a number of seconds in MEASURED_S."""
    extra = trace.header.extra if isinstance(trace.header.extra, dict) else {}
    if "end_to_end_s" not in extra:
        raise ValueError(f"{path}: header 'extra' has no 'end_to_end_s' (not written by reference.capture.measure)")
    e2e = extra["end_to_end_s"]
    median = e2e.get("median") if isinstance(e2e, dict) else None
    if not _measured(median):
        raise ValueError(f"{path}, field 'extra.end_to_end_s': expected a mapping with a 'median' in seconds in "
                         f"[{MEASURED_S[0]:g}, {MEASURED_S[1]:g}], got {brief(e2e)}")
    return float(median)


def check_pairing(trace: Trace, hw: HwConfig, path: Path, any_device: bool, launch: str = "eager") -> None:
    """Refuse a trace that cannot be validated against `hw` in `launch` mode, saying why."""
    compiled = is_compiled_measurement(trace)
    if launch == "compiled" and not compiled:
        eager = " (an eager measurement: validate it with --launch eager)" if trace.header.measured else ""
        raise ValueError(f"{path}: not a compiled measurement{eager}; header extra 'measurement' is not 'compiled' "
                         "(measure one with python -m reference.capture.measure --compile)")
    if launch != "compiled" and compiled:
        raise ValueError(f"{path}: a compiled measurement (no per-op times): validate it with --launch compiled")
    if not (trace.header.measured or compiled):
        raise ValueError(f"{path}: not a measured trace (header 'measured' is false, no durations); measure one "
                         "with python -m reference.capture.measure")
    if not trace.ops:
        raise ValueError(f"{path}: empty trace (no op records)")
    measured_end_to_end(trace, path)
    check_measured_times(trace, path, compiled)
    measured_cpu = trace.header.device == "cpu"
    if measured_cpu != (hw.kind == "cpu"):
        raise ValueError(f"{path}: measured on {trace.header.device} ({trace.header.device_name}) but hwconfig "
                         f"{hw.path} describes a {hw.kind}")
    models = re.findall(r"\b[A-Z]+\d+[A-Za-z0-9]*\b", trace.header.device_name)
    if not any_device and models and not any(m in hw.name for m in models):
        raise ValueError(f"{path}: measured on {trace.header.device_name} but hwconfig {hw.path} is {hw.name!r}; "
                         "pass --any-device to compare anyway")


def check_measured_times(trace: Trace, path: Path, compiled: bool) -> None:
    """Refuse a measurement whose times are not one: a stage (of a compiled measurement: a decode stage) whose
    wall time is not a time in MEASURED_S (missing, 0), or an eager measurement with more than
    MAX_UNTIMED_SHARE of its ops untimed (0 s)."""
    stage = next((s for s in trace.stages if (not compiled or s.kind in DECODE_STAGES) and not _measured(s.wall_s)),
                 None)
    if stage is not None:
        raise ValueError(f"{path}, stage {stage.stage}, field 'wall_s': expected a measured wall time in "
                         f"[{MEASURED_S[0]:g}, {MEASURED_S[1]:g}] s, got {stage.wall_s}: not a measurement")
    if not compiled:
        untimed = sum(not op.duration_s for op in trace.ops)
        if untimed > MAX_UNTIMED_SHARE * len(trace.ops):
            raise ValueError(f"{path}, field 'duration_s': {untimed:,} of {len(trace.ops):,} ops have no measured "
                             f"duration (0 s), more than {MAX_UNTIMED_SHARE:.0%}: not a measurement of the run")


def validate_compiled(trace: Trace, hw: HwConfig) -> dict[str, list[tuple[float, float]]]:
    """(projected, measured) seconds of a compiled measurement: 'stage' (its decode and SPEED stages, compiled)
    and 'end_to_end' (every stage as compiled decoding runs it: prefill and encoder eager)."""
    seconds = compiled_stage_seconds(trace, hw)
    stages = [(p, s.wall_s) for p, s in zip(seconds, trace.stages) if s.kind in DECODE_STAGES and s.wall_s is not None]
    return {"stage": stages, "end_to_end": [(sum(seconds), trace.header.extra["end_to_end_s"]["median"])]}


def validate_trace(trace: Trace, hw: HwConfig, launch: str = "eager") -> dict[str, list[tuple[float, float]]]:
    """(projected, measured) seconds per metric: 'kernel', 'kernel:<class>', 'stage', 'end_to_end'. A kernel is
    its own time on both sides: on a cpu the measured op time includes the op's dispatch (the host clock runs
    around the call), and the projected host cost per kernel is the gap between ops, which no op time holds.
    `launch` "compiled": a compiled measurement, stage and end to end only (`validate_compiled`)."""
    if launch == "compiled":
        return validate_compiled(trace, hw)
    p = project(trace, hw, launch)
    clock = p.clock_hz
    out: dict[str, list[tuple[float, float]]] = {"kernel": [], "stage": [], "end_to_end": []}
    for op, k, start, end in zip(trace.ops, p.kernels, p.start_cycles, p.end_cycles):
        pair = ((end - start) / clock, op.duration_s)
        out["kernel"].append(pair)
        out.setdefault(f"kernel:{k.cls}", []).append(pair)
    for stage, cycles in zip(trace.stages, p.stage_cycles):
        if stage.wall_s is not None:
            out["stage"].append((cycles / clock, stage.wall_s))
    out["end_to_end"].append((p.total_s, trace.header.extra["end_to_end_s"]["median"]))
    return out


# The decode sweeps' lists of rows (reference.capture.microbench), each read as the resource list whose rows it holds
DECODE_LISTS = {"decode_gemm": "gemm", "decode_attention": "attention"}
DECODE_GEMM_FORMS = ("linear",)  # products the kernel model takes: x @ W^T (F.linear), as the decoder computes them


def _kernel_seconds(trace: Trace, hw: HwConfig) -> float:
    """The projected time of a microbenchmark trace's last call (the measured one), without launch."""
    p = project(trace, hw)
    return (p.end_cycles[-1] - p.start_cycles[-1]) / p.clock_hz


def decode_resource(name: str, row: dict[str, Any]) -> str:
    """The resource a decode-sweep row is reported under: products per number of rows, attention per head layout."""
    if name == "decode_gemm":
        return f"decode_gemm m={row['m']} {row['dtype']}"
    return f"decode_attention {row['heads']}q/{row.get('kv_heads', row['heads'])}kv x{row['head_dim']} {row['dtype']}"


def decode_pairs(mb: dict[str, Any], hw: HwConfig, unmodelled: list[str]) -> dict[str, list[tuple[float, float]]]:
    """(projected, measured) seconds of the decode sweeps' rows, per `decode_resource`; a row that cannot be modelled
    (its product form, or a projection refused) is said in `unmodelled`, with why."""
    out: dict[str, list[tuple[float, float]]] = {}
    for name, read_as in DECODE_LISTS.items():
        rows = mb.get(name, [])
        if not isinstance(rows, list):
            raise ValueError(f"'{name}': expected a list of rows, got {brief(rows)}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"'{name}[{i}]': expected a mapping of a row's fields, got {brief(row)}")
            if name == "decode_gemm" and row.get("form", "linear") not in DECODE_GEMM_FORMS:
                unmodelled.append(f"{name}[{i}]: form {row.get('form')!r}: the kernel model takes products x @ W^T "
                                  f"(form {', '.join(DECODE_GEMM_FORMS)})")
                continue
            [(_, trace, measured_s)] = microbench_traces({read_as: [row]})
            try:
                projected_s = _kernel_seconds(trace, hw)
            except ValueError as err:  # a shape or a size the hwconfig cannot run
                unmodelled.append(f"{name}[{i}]: {err}")
                continue
            out.setdefault(decode_resource(name, row), []).append((projected_s, measured_s))
    return out


def microbench_pairs(mb: dict[str, Any], hw: HwConfig, unmodelled: list[str] | None = None
                     ) -> dict[str, list[tuple[float, float]]]:
    """(projected, measured) seconds per call of each microbenchmark (results checked by `sim.fitting.microbench`,
    measured on the hwconfig's kind of device), per resource. The microbenchmarks time back-to-back calls (cuda: a
    graph between events; cpu: the host clock, dispatch included), so the projection is the kernel's time, without
    launch (of the last call, the measured one). All-reduce rows of more ranks than the hwconfig's node holds are left
    out (sim.fitting.collectives). Rows not modelled (`decode_pairs`) are said in `unmodelled`."""
    if not isinstance(mb, dict):
        raise ValueError(f"expected a JSON object, got {brief(mb)}")
    device = mb.get("device")
    if device is not None and (device == "cpu") != (hw.kind == "cpu"):
        raise ValueError(f"measured on {device} ({mb.get('device_name', '?')}) but hwconfig {hw.path} describes a "
                         f"{hw.kind}")
    unmodelled = [] if unmodelled is None else unmodelled
    out: dict[str, list[tuple[float, float]]] = {}
    for resource, trace, measured_s in microbench_traces(mb):
        out.setdefault(resource, []).append((_kernel_seconds(trace, hw), measured_s))
    rows, beyond = beyond_the_node(all_reduce_rows(mb), hw)  # beyond: groups the hwconfig's node does not hold
    if rows:
        out.update(all_reduce_pairs(rows, hw))
    out.update(decode_pairs(mb, hw, unmodelled))
    if not out and not beyond:
        raise ValueError("no microbenchmark results (copy, gemm, elementwise, attention, all_reduce, decode_gemm or "
                         "decode_attention)")
    return out


def print_resources(name: str, pairs: dict[str, list[tuple[float, float]]]) -> None:
    print(f"\n{name}")
    width = max([21, *(len(resource) + 1 for resource in pairs)])
    print(f"{'resource':<{width}}{'n':>4}{'median|e|%':>12}{'mean|e|%':>10}{'bias%':>8}{'r':>7}")
    for resource, values in pairs.items():
        m = metrics(values)
        if m["n"]:
            print(f"{resource:<{width}}{m['n']:>4}{m['median_abs_pct']:>12.1f}{m['mean_abs_pct']:>10.1f}"
                  f"{m['bias_pct']:>+8.1f}{r_text(m['pearson_r'])}")


def print_report(name: str, report: dict[str, dict[str, float]]) -> None:
    print(f"\n{name}")
    print(f"{'metric':<22}{'n':>7}{'mean|e|%':>10}{'median|e|%':>12}{'P90|e|%':>9}{'bias%':>8}{'r':>7}")
    for metric, m in report.items():
        if m["n"]:
            print(f"{metric:<22}{m['n']:>7}{m['mean_abs_pct']:>10.1f}{m['median_abs_pct']:>12.1f}"
                  f"{m['p90_abs_pct']:>9.1f}{m['bias_pct']:>+8.1f}{r_text(m['pearson_r'])}")


def r_text(r: float, width: int = 7) -> str:
    """A correlation as a table shows it: "-" where there is none (one pair, or no spread)."""
    return f"{r:>{width}.3f}" if math.isfinite(r) else f"{'-':>{width}}"


def json_safe(value: Any) -> Any:
    """`value` with every float that is not finite (a correlation that does not exist) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def scatter(pairs: dict[str, list[tuple[float, float]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for metric, values in pairs.items():
        if metric.startswith("kernel:") or not values:
            continue
        ax.scatter([m for _, m in values], [p for p, _ in values], s=4 if metric == "kernel" else 14, alpha=0.4,
                   label=metric)
    lo = min(min(v) for values in pairs.values() for v in values if min(v) > 0)
    hi = max(max(v) for values in pairs.values() for v in values)
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="projected = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (s)")
    ax.set_ylabel("projected (s)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.fitting.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", type=Path, required=True, help="hwconfig of the device the traces were measured on")
    parser.add_argument("--measured", type=Path, nargs="+", default=[], help="measured trace files")
    parser.add_argument("--microbench", type=Path,
                        help="microbenchmark results (JSON, from reference.capture.microbench or "
                        "sim.fitting.calibrate) to check the resource models against, one by one")
    parser.add_argument("--launch", choices=("eager", "graph", "compiled"), default="eager",
                        help="launch mode the traces were measured in (default eager); compiled: measurements of "
                        "compiled decoding (reference.capture.measure --compile), validated per stage and end to "
                        "end, no kernel metric")
    parser.add_argument("--max-error", type=number(0), metavar="PCT",
                        help="exit 1 when the median end-to-end absolute error over the traces exceeds PCT")
    parser.add_argument("--max-stage-error", type=number(0), metavar="PCT",
                        help="exit 1 when the median stage absolute error over the traces exceeds PCT")
    parser.add_argument("--plot", type=Path, help="scatter plot, projected vs measured (PNG)")
    parser.add_argument("--json", type=Path, help="write the error statistics as JSON")
    parser.add_argument("--any-device", action="store_true",
                        help="compare even when the trace's device differs from the hwconfig's")
    return parser


def gate_status(failed: list[str]) -> int:
    """A gate's exit status: 1, with one FAIL line on stderr naming every limit passed, when `failed` holds any;
    else 0."""
    if failed:
        print("FAIL: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def _failed(overall: dict[str, dict[str, Any]], max_error: float | None, max_stage_error: float | None) -> bool:
    """Whether a median error passes its limit, or there is nothing to hold to it (each failure is said on stderr)."""
    failed = False
    for metric, limit in (("end_to_end", max_error), ("stage", max_stage_error)):
        if limit is None:
            continue
        name = metric.replace("_", "-")
        m = overall.get(metric, {"n": 0})
        if not m["n"]:
            print(f"FAIL: no measured {name} time to hold to {limit}%", file=sys.stderr)
            failed = True
        elif m["median_abs_pct"] > limit:
            print(f"FAIL: median {name} error {m['median_abs_pct']:.1f}% > {limit}%", file=sys.stderr)
            failed = True
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.measured and not args.microbench:
        parser.error("give --measured traces, --microbench results, or both")
    check_outputs(parser, {"--json": args.json, "--plot": args.plot},
                  inputs={"--hw": [args.hw], "--measured": args.measured, "--microbench": [args.microbench]})
    try:
        hw = load_hwconfig(args.hw)
    except HwConfigError as err:
        parser.error(str(err))
    if args.microbench:
        where = f"--microbench {args.microbench}"
        unmodelled: list[str] = []
        try:
            mb = load_microbench(args.microbench, where)
            pairs = microbench_pairs(mb, hw, unmodelled)
        except HwConfigError as err:  # the hwconfig cannot run what was measured (no interconnect, too few devices)
            parser.error(f"{where}: {err}")
        except ValueError as err:  # not microbenchmark results (MicrobenchError names the field), another device
            parser.error(str(err) if isinstance(err, MicrobenchError) else f"{where}: {err}")
        print_resources(f"microbenchmarks {args.microbench} on {hw.name} ({args.hw})", pairs)
        beyond = beyond_the_node(all_reduce_rows(mb), hw)[1]
        if beyond:
            print(f"all_reduce: {len(beyond)} rows of more ranks than interconnect.devices_per_node "
                  f"({hw.interconnect.devices_per_node}) left out")
        if unmodelled:
            print(f"not modelled ({len(unmodelled)}):\n  " + "\n  ".join(unmodelled))
        if not args.measured:
            return 0
    everything: dict[str, list[tuple[float, float]]] = {}
    per_trace = {}
    for path in args.measured:
        try:  # a TraceError, a shape the kernel model cannot take, a pairing or a projection refused
            trace = read_checked(path)
            check_pairing(trace, hw, path, args.any_device, args.launch)
            pairs = validate_trace(trace, hw, args.launch)
        except ValueError as err:
            parser.error(str(err))
        report = {metric: metrics(values) for metric, values in pairs.items()}
        per_trace[str(path)] = report
        print_report(f"{path.name} on {hw.name}", {k: v for k, v in report.items() if not k.startswith("kernel:")})
        for metric, values in pairs.items():
            everything.setdefault(metric, []).extend(values)
    overall = {metric: metrics(values) for metric, values in everything.items()}
    print_report(f"all {len(args.measured)} traces on {hw.name} ({args.hw})", overall)
    with staged_writes():  # all or none: a failing output replaces nothing
        if args.json:
            text = json.dumps(json_safe({"overall": overall, "traces": per_trace}), indent=1, allow_nan=False)
            atomic_write(args.json, lambda tmp: tmp.write_text(text))
        if args.plot:
            scatter(everything, args.plot, f"{hw.name}: {len(args.measured)} measured traces")
    return 1 if _failed(overall, args.max_error, args.max_stage_error) else 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.fitting.validate"))
