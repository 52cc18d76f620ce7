"""Calibrate a hwconfig: measured peak figures from microbenchmarks, efficiency factors fitted to measured
kernel times.

    python -m sim.fitting.calibrate --device cuda --base hwconfigs/h200.yaml --measured data/measured/h200/*.b1.* \\
        --out hwconfigs/h200-calibrated.yaml [--microbench data/calibration/h200.microbench.json]

1. Microbenchmarks (reference.capture.microbench, run by the trace provider, sim.provider, unless `--microbench`
   gives a saved run; needs torch):
   streaming copy bandwidth over sizes, GEMM/GEMV per dtype, decode attention, eager launch, kernel time.
2. Peaks measured: DRAM bandwidth (best large copy), matrix rate (best GEMM); host figures: the shortest
   kernel, the per-kernel gap of graph replay. Global efficiencies: measured / datasheet peak (1 when there
   is no datasheet figure: the measured peak is the peak).
3. Fitted (scipy least squares): per kernel class an efficiency (against the microbenchmarks of the classes
   they exercise, in the traces' dtype: copies, products, elementwise, attention; else against the traces) and
   a fixed time, and a fixed time per op kind seen often enough, against the measured kernel times of
   `--measured` traces; the host's eager costs against their stage wall times, or those of `--host-measured`
   traces (on a GPU per op kind and per stage, `fit_host`: an attention call or an indexed KV write costs the
   host more than an add, and a batch runs more of them per stage; on a cpu one cost per kernel, `fit_launch`,
   log error). Traces not given to the fit are the fair test of the result (python -m sim.fitting.validate).
4. Compiled measurements among `--measured` (reference.capture.measure --compile: stage wall times, no per-op
   times) fit what compiled projections need and eager fits do not give (sim.fitting.compiled): the host's cost
   per stage (`host.launch_graph_s`) and the fixed times of library and generated kernels called from a compiled
   graph (the `compiled` section), on the wall times of their decode stages.
5. The quantized-product microbenchmarks (`quant` rows, cpu) in the traces' dtypes fit the `dequant` section
   (sim.fitting.dequant: the rate of the dequantizing arithmetic and the rows one pass serves), before the kernel
   fits, which time the traces' quantized products with it.
6. The microbenchmark's all-reduce sweep fits the `interconnect` section (sim.fitting.collectives: NCCL's link
   efficiency and fixed latency per collective; gloo over loopback its latencies per collective and per message
   and its bandwidth), every third size held out of the fit. A cpu without an interconnect section gets one of
   kind loopback.

    python -m sim.fitting.calibrate --device cpu --base this-cpu.yaml \\
        --microbench data/calibration/cpu-gloo.allreduce.json --out cpu-gloo.yaml

fits only the interconnect section where the microbenchmark has nothing else (reference.capture.microbench
--only all_reduce).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares, minimize_scalar

from sim.command import check_outputs, integer, run_command
from sim.engine import OnChipCache, kernels_of, project
from sim.files import atomic_write
from sim.fitting.collectives import all_reduce_rows, calibrate_interconnect
from sim.fitting.compiled import fit_compiled, is_compiled_measurement
from sim.fitting.dequant import fit_dequant
from sim.fitting.microbench import MAX_THREADS, check_microbench, load_microbench
from sim.hardware import HwConfig, load_hwconfig, parse, to_dict
from sim.kernels import Kernel, KernelCost, kernel_cost, rows_kind, streamed_rows
from sim.opkinds import DTYPE_BYTES
from sim.provider import request
from sim.trace import Trace, one_op_trace, read_checked

MAX_SAMPLES = 4000  # per fit: a deterministic stride over the measured kernels keeps the fit fast
MIN_OP_SAMPLES = 30  # measured kernels of an op kind below which it keeps its class's fit


def peaks_from_microbench(mb: dict[str, Any]) -> dict[str, float]:
    """Measured figures: DRAM bandwidth (bytes read + written per s of the best copy past the cache), the best
    matrix rate per dtype, the shortest kernel and graph replay's per-kernel gap."""
    copies = sorted(mb["copy"], key=lambda c: c["bytes"])
    large = [c for c in copies if c["bytes"] >= copies[-1]["bytes"] // 16] or copies
    matrix = {}
    for g in mb["gemm"]:
        rate = 2 * g["m"] * g["n"] * g["k"] / g["seconds"]
        matrix[g["dtype"]] = max(matrix.get(g["dtype"], 0.0), rate)
    return {"dram_bandwidth_bytes_per_s": max(c["bytes_moved"] / c["seconds"] for c in large),
            "matrix_flops_per_s": matrix, "kernel_min_s": mb["kernel_min_s"],
            "graph_kernel_gap_s": max(0.0, mb["graph_per_kernel_s"] - mb["kernel_min_s"]),
            "launch_eager_s": mb["launch_eager_s"]}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_base(mb: dict[str, Any], mb_path: str) -> dict[str, Any]:
    """A hwconfig of this machine's CPU where no datasheet is at hand: every peak is a measurement (so the
    global efficiencies are 1) or read from /proc and /sys."""
    cpuinfo = _read("/proc/cpuinfo")
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                "this machine's CPU")
    mhz = [float(line.split(":", 1)[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
    llc = 0
    for index in range(4, -1, -1):
        size = _read(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size").strip()
        if size:
            llc = int(size.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
            break
    mem = next((int(line.split()[1]) * 1024 for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal")), 1 << 34)
    # bytes moved per second by copies and multiplies (x * y -> z: 3 tensors) whose tensors fit in the cache
    streams = [(c["bytes"], c["bytes_moved"] / c["seconds"]) for c in mb["copy"]] + [
        (3 * e["numel"] * DTYPE_BYTES[e["dtype"]], 3 * e["numel"] * DTYPE_BYTES[e["dtype"]] / e["seconds"])
        for e in mb["elementwise"]]
    in_cache = [rate for size, rate in streams if 0 < size <= llc / 2] or [rate for _, rate in streams]
    matrix = {g["dtype"]: 0.0 for g in mb["gemm"]}
    for g in mb["gemm"]:
        matrix[g["dtype"]] = max(matrix[g["dtype"]], 2 * g["m"] * g["n"] * g["k"] / g["seconds"])
    matrix.setdefault("float32", max(matrix.values()))
    measured = peaks_from_microbench(mb)
    src = f"measurement: {mb_path}"
    peak = {"clock_hz": (mhz[0] * 1e6) if mhz else 1e9, "compute_units": int(mb.get("threads", 1)),
            "matrix_flops_per_s": matrix, "vector_flops_per_s": dict(matrix),
            "dram_bandwidth_bytes_per_s": measured["dram_bandwidth_bytes_per_s"], "dram_capacity_bytes": float(mem),
            "l2_capacity_bytes": float(llc), "l2_bandwidth_bytes_per_s": max(in_cache)}
    sources = {f"peak.{k}": src for k in peak} | {
        "peak.clock_hz": "/proc/cpuinfo (cpu MHz)", "peak.dram_capacity_bytes": "/proc/meminfo",
        "peak.l2_capacity_bytes": "/sys/devices/system/cpu/cpu0/cache (last level)",
        "peak.compute_units": f"{src} (torch threads)",
        "peak.vector_flops_per_s": "assumption: the measured matrix rate (the same FMA units)"}
    # a cpu runs its own kernels: the tiny-op time is dispatch (host), not a device floor
    host = {"launch_eager_s": measured["launch_eager_s"], "kernel_min_s": 1e-7, "launch_graph_s": 0.0,
            "graph_kernel_gap_s": 0.0}
    sources |= {f"host.{k}": src for k in host} | {
        "host.kernel_min_s": "assumption: on a cpu the time of a tiny op is dispatch, counted in launch_eager_s",
        "host.launch_graph_s": "assumption: no graph replay on a cpu",
        "host.graph_kernel_gap_s": "assumption: no graph replay on a cpu"}
    raw = {"name": name, "kind": "cpu", "peak": peak, "host": host,
           "efficiency": {"matrix": 1.0, "vector": 1.0, "dram": 1.0, "l2": 1.0}, "tile": {"m": 16, "n": 64},
           "sources": sources}
    if mb.get("all_reduce"):
        raw["interconnect"], loopback_sources = loopback_section(mb)
        sources |= loopback_sources
    return raw


def loopback_section(mb: dict[str, Any]) -> tuple[dict, dict]:
    """A start interconnect section of kind loopback (gloo between processes of this host, as the microbenchmark
    ran them) and its sources; calibration fits its latencies and bandwidth (efficiency stays 1: the bandwidth
    is a measurement, there is no line rate)."""
    recorded = (mb.get("all_reduce_setup") or {}).get("cpu_count")
    cores, where = ((recorded, "measurement: os.cpu_count() of the microbenchmark's host") if recorded else
                    (mb.get("threads", 1), "assumption: the microbenchmark's torch threads (no core count recorded)"))
    section = {"kind": "loopback", "devices_per_node": max(2, int(cores)),
               "link_bandwidth_bytes_per_s": 1e9, "collective_latency_s": 0.0, "efficiency": 1.0,
               "step_latency_s": 0.0}
    return section, {"interconnect.kind": "gloo over TCP on 127.0.0.1 (reference.capture.collective_bench)",
                     "interconnect.devices_per_node": f"the host's cores (at least 2), {where}: the model "
                     "describes ranks that each have a core (more wait for the scheduler at every ring step)",
                     "interconnect.efficiency": "1: the bandwidth is fitted as a whole (no line rate to share)"} | {
        f"interconnect.{k}": "start value, fitted by calibration"
        for k in ("link_bandwidth_bytes_per_s", "collective_latency_s", "step_latency_s")}


def microbench_traces(mb: dict[str, Any]) -> list[tuple[str, Trace, float]]:
    """Each microbenchmark (reference.capture.microbench) as (resource, one-op trace, measured seconds per call): copy
    over sizes, and per dtype matrix products of two or more rows (gemm) and of one row (gemv), elementwise
    multiply, decode attention (runs without a `query_shape` passed 3-D inputs; grouped-query ones read the keys
    and values of their `kv_heads`, default all heads). Copies and products rotate their buffers past the cache;
    attention repeats on the same keys, so its trace has two calls and the second is the one measured."""
    out = []
    for c in mb.get("copy", []):  # float32; bytes read + written
        n = c["bytes"] // 4
        out.append(("copy", one_op_trace("aten.copy_.default", "micro.copy", [[n]] * 2, [n], "float32", 0,
                                         c["bytes_moved"]), c["seconds"]))
    for g in mb.get("gemm", []):  # x @ W^T as the decoder computes it (older files: torch.mm, the same kernels)
        m, n, k, size = g["m"], g["n"], g["k"], DTYPE_BYTES[g["dtype"]]
        out.append((f"{'gemv' if m == 1 else 'gemm'} {g['dtype']}", one_op_trace(
            "aten.linear.default", "micro.linear", [[m, k], [n, k]], [m, n], g["dtype"], 2 * m * n * k,
            size * (m * k + m * n), weight_bytes=size * k * n), g["seconds"]))
    for e in mb.get("elementwise", []):
        numel, size = e["numel"], DTYPE_BYTES[e["dtype"]]
        out.append((f"elementwise {e['dtype']}", one_op_trace(
            "aten.mul.Tensor", "micro.mul", [[numel]] * 2, [numel], e["dtype"], numel, 3 * numel * size), e["seconds"]))
    for a in mb.get("attention", []):  # one query row over `length` keys, the same tensors call after call: the second
        h, length, d, size = a["heads"], a["length"], a["head_dim"], DTYPE_BYTES[a["dtype"]]
        h_kv = a.get("kv_heads", h)
        q = a.get("query_shape", [h, 1, d])
        kv = [*q[:-3], h_kv, length, d]
        out.append((f"attention {a['dtype']}", one_op_trace(
            "aten.scaled_dot_product_attention", "micro.attn", [q, kv, kv], q, a["dtype"], 4 * h * length * d,
            2 * h * d * size, kv_read_bytes=2 * h_kv * length * d * size, calls=2), a["seconds"]))
    return out


Samples = list[tuple[float, float, float]]  # (compute_s, memory_s, measured_s)


def unit_costs(trace: Trace, hw: HwConfig) -> list[tuple[Kernel, KernelCost]]:
    """Each op's kernel and its cost with no class or op-kind fit (unit efficiency), the on-chip cache
    advancing op by op as in a projection."""
    base = dataclasses.replace(hw, classes={}, ops={})
    cache = OnChipCache(hw.peak.l2_capacity_bytes)
    return [(k, kernel_cost(k, base, cache.serve(k))) for k in kernels_of(trace, hw)]


def op_samples(traces: list[Trace], hw: HwConfig) -> dict[tuple[str, str], Samples]:
    """Per (kernel class, op kind): (compute_s, memory_s, measured_s) at unit efficiency, from measured traces;
    a deterministic stride keeps at most MAX_SAMPLES of each. Collectives (a tensor-parallel measurement's) are
    left out: the interconnect section times them, fitted to the all-reduce sweep."""
    out: dict[tuple[str, str], Samples] = {}
    for trace in traces:
        for op, (k, cost) in zip(trace.ops, unit_costs(trace, hw)):
            if op.duration_s and k.collective is None:
                out.setdefault((k.cls, k.op), []).append((cost.compute_s, cost.memory_s, op.duration_s))
    return {key: samples[:: max(1, len(samples) // MAX_SAMPLES)] for key, samples in out.items()}


def microbench_samples(mb: dict[str, Any], hw: HwConfig, dtypes: set[str]) -> dict[tuple[str, str | None], Samples]:
    """(compute_s, memory_s, measured_s) at unit efficiency of the microbenchmarks in `dtypes` (copies move bytes,
    any dtype), which reach the sizes where efficiency, not fixed time, sets the time: per kernel class (key
    (class, None)) and, for matrix products, per op kind too (a GEMV and a few-row product are different kernels);
    attention per op kind only (fused FlashAttention and PyTorch's unfused math path are different kernels: a
    microbenchmark of one path says nothing of the other's efficiency)."""
    out: dict[tuple[str, str | None], Samples] = {}
    for resource, trace, measured_s in microbench_traces(mb):
        if resource == "copy" or trace.ops[-1].out_dtypes[0] in dtypes:
            k, cost = unit_costs(trace, hw)[-1]  # the last call is the measured one
            sample = (cost.compute_s, cost.memory_s, measured_s)
            if k.cls != "attention":
                out.setdefault((k.cls, None), []).append(sample)
            if k.cls in ("matmul", "attention"):
                out.setdefault((k.cls, k.op), []).append(sample)
            if hw.kind == "cpu" and rows_kind(k) is not None:  # a CPU's few-row products, per row count too
                out.setdefault((k.cls, rows_kind(k)), []).append(sample)
    return out


RowSamples = list[tuple[float, float, float]]  # (memory_s at unit efficiency, output rows streamed, measured_s)


def microbench_row_samples(mb: dict[str, Any], hw: HwConfig, dtypes: set[str]) -> dict[str, RowSamples]:
    """Per op kind of the one-row products (GEMV) among the microbenchmarks in `dtypes`: (memory_s at unit
    efficiency, output rows whose weights stream from DRAM, measured_s), for `row_latency_fit`."""
    out: dict[str, RowSamples] = {}
    for _, trace, measured_s in microbench_traces(mb):
        if trace.ops[-1].out_dtypes[0] in dtypes:
            k, cost = unit_costs(trace, hw)[-1]
            if k.cls == "matmul" and k.op.endswith(".gemv"):
                dram_bytes = round(cost.floor_dram_s * hw.peak.dram_bandwidth_bytes_per_s)
                out.setdefault(k.op, []).append((cost.memory_s, streamed_rows(k, dram_bytes), measured_s))
    return out


def row_latency_fit(samples: RowSamples, max_fixed_s: float) -> tuple[float, float]:
    """(memory efficiency, row_latency_s) of one-row products that best explain microbenchmark samples, error
    relative to each: measured = memory_s / efficiency + rows x latency + a fixed time of at most `max_fixed_s`
    (fitted, not kept). A CPU's GEMV streams short rows slower: its time fits about one DRAM latency per output
    row beyond its bytes (docs/cpu-dram-products.md: rows x 83 ns + bytes / 15.8 GB/s on the development
    machine), so one fit holds across widths where an efficiency alone averaged them."""
    work_m, rows, measured = (np.array(column) for column in zip(*samples))

    def residuals(x: np.ndarray) -> np.ndarray:
        e_m, latency, fixed = x
        return (work_m / e_m + rows * latency + fixed - measured) / measured

    fit = least_squares(residuals, x0=[0.5, 1e-8, 0.0], bounds=([1e-3, 0.0, 0.0], [1.0, 1e-6, max(max_fixed_s, 1e-9)]),
                        x_scale=[0.1, 1e-8, 1e-6], loss="soft_l1", f_scale=0.2)
    return float(fit.x[0]), float(fit.x[1])


Efficiencies = tuple[float, float]  # (compute, memory)
FIXED_S_BOUNDS = (0.0, 1e-2)  # a fitted fixed time per kernel, s


def fixed_start(work_c: np.ndarray, work_m: np.ndarray, measured: np.ndarray,
                max_fixed_s: float = FIXED_S_BOUNDS[1]) -> float:
    """Where a fit of the fixed time starts: the median of measured minus work at unit efficiency. A start below
    the shortest kernel would sit where max(work + fixed, kernel_min) does not move with the fixed time, and the
    fit would not move from it."""
    return float(np.clip(np.median(measured - np.maximum(work_c, work_m)), 1e-9, max_fixed_s))


def anchor_efficiencies(samples: Samples, kernel_min_s: float, compute: float | None = None,
                        max_fixed_s: float = FIXED_S_BOUNDS[1]) -> Efficiencies:
    """(compute, memory) efficiencies that best explain microbenchmark samples, error relative to each (their fixed
    time is fitted too, at most `max_fixed_s`, and not kept: the decoders' kernels fit theirs). Large products pin
    the compute efficiency, memory-bound calls the memory one; `compute` given (samples that never reach the
    compute bound cannot tell it), only the memory efficiency is fitted. `max_fixed_s`: what a call costs beyond
    its work, at most (calibrate, on a cpu: the microbenchmark's tiniest call); a free one took up to 53 us of the
    memory-bound products' time on a CPU, whose one-row products stream short rows slower (reference.capture.
    microbench.CPU_GEMV_SHAPES), and the efficiency kept was a quarter too high for the decoders' products."""
    work_c = np.array([c for c, _, _ in samples])
    work_m = np.array([m for _, m, _ in samples])
    measured = np.array([t for _, _, t in samples])

    def residuals(x: np.ndarray) -> np.ndarray:
        e_c, e_m, fixed = (compute, *x) if compute is not None else x
        return (np.maximum(np.maximum(work_c / e_c, work_m / e_m) + fixed, kernel_min_s) - measured) / measured

    x0, lower, upper = [1.0, 1.0, fixed_start(work_c, work_m, measured, max_fixed_s)], [
        1e-3, 1e-3, FIXED_S_BOUNDS[0]], [1.0, 1.0, max_fixed_s]
    x_scale = [0.1, 0.1, 1e-6]
    keep = slice(1, 3) if compute is not None else slice(0, 3)
    fit = least_squares(residuals, x0=x0[keep], bounds=(lower[keep], upper[keep]), x_scale=x_scale[keep],
                        loss="soft_l1", f_scale=0.2)
    e_c, e_m = (compute, fit.x[0]) if compute is not None else (fit.x[0], fit.x[1])
    return float(e_c), float(e_m)


def fit_kernels(traces: list[Trace], hw: HwConfig, anchors: dict[tuple[str, str | None], Samples] | None = None,
                max_anchor_fixed_s: float = FIXED_S_BOUNDS[1],
                row_anchors: dict[str, RowSamples] | None = None) -> tuple[dict, dict]:
    """(classes, ops) sections of a hwconfig: efficiencies and a fixed time per kernel class, and a fixed time
    of its own for each op kind seen at least MIN_OP_SAMPLES times. A class with `anchors` (microbench_samples)
    takes its compute and memory efficiencies from them, and a matrix product's op kind its own memory efficiency
    (a GEMV streams weights at another rate than a few-row product): the decoders' kernels of a small model are
    all fixed time, and an efficiency fitted to them alone says nothing about large ones (on a CPU it made large
    copies 25x too slow). Op kinds of a class differ in fixed cost (on a GPU a mean is a two-pass kernel, a
    multiply one pass; on a CPU each op kind has its own dispatch cost). The LM head's products are matrix
    products: the matmul anchors serve them. `max_anchor_fixed_s`: anchor_efficiencies' `max_fixed_s`.
    `row_anchors` (microbench_row_samples; calibrate, on a cpu): an op kind there takes its memory efficiency and
    a latency per output row from them (row_latency_fit) instead."""
    def entry(samples: Samples, efficiencies: Efficiencies | None = None) -> dict[str, float]:
        e_c, e_m, fixed = fit_class(samples, hw.host.kernel_min_s, efficiencies=efficiencies)
        out = {"efficiency": round(e_c, 4), "fixed_s": float(f"{fixed:.4g}")}
        return out | ({"memory_efficiency": round(e_m, 4)} if round(e_m, 4) != out["efficiency"] else {})

    def row_entry(samples: Samples, compute: float, rows: RowSamples) -> dict[str, float]:
        e_m, latency = row_latency_fit(rows, max_anchor_fixed_s)
        return entry(samples, (compute, e_m)) | {"row_latency_s": float(f"{latency:.4g}")}

    anchors, row_anchors = anchors or {}, row_anchors or {}
    kmin = hw.host.kernel_min_s
    by_op = op_samples(traces, hw)
    classes, ops = {}, {}
    for cls in sorted({cls for cls, _ in by_op}):
        source = "matmul" if cls == "lm_head" else cls
        mine = {op: samples for (c, op), samples in sorted(by_op.items()) if c == cls}
        pooled = [s for samples in mine.values() for s in samples]
        class_eff = (anchor_efficiencies(anchors[source, None], kmin, max_fixed_s=max_anchor_fixed_s)
                     if (source, None) in anchors else None)
        classes[cls] = entry(pooled[:: max(1, len(pooled) // MAX_SAMPLES)], class_eff)
        fitted = {}
        for op, samples in mine.items():
            own = (source, op) in anchors
            if op in row_anchors:
                fitted[op] = row_entry(samples, classes[cls]["efficiency"], row_anchors[op])
            elif len(samples) >= MIN_OP_SAMPLES or own:
                inherited = (classes[cls]["efficiency"], classes[cls].get("memory_efficiency",
                                                                           classes[cls]["efficiency"]))
                fitted[op] = entry(samples, anchor_efficiencies(anchors[source, op], kmin, compute=classes[cls][
                    "efficiency"], max_fixed_s=max_anchor_fixed_s) if own else inherited)
        for (c, op), samples in sorted(anchors.items(), key=str):  # a few-row product's fit per row count
            base = op.rsplit(".rows", 1)[0] if c == source and op and ".rows" in op else None
            if base in mine:
                fitted[op] = entry(mine[base], anchor_efficiencies(samples, kmin, compute=classes[cls][
                    "efficiency"], max_fixed_s=max_anchor_fixed_s))
        if fitted:
            ops[cls] = fitted
    return classes, ops


def fit_class(samples: Samples, kernel_min_s: float, relative: bool = False,
              efficiencies: Efficiencies | None = None) -> tuple[float, float, float]:
    """(compute efficiency, memory efficiency, fixed_s) minimising the error of max(max(c / e_c, m / e_m) + fixed,
    kernel_min) (sim.kernels.kernel_cost's time), in units of the mean measured time: absolute, not log, error, so
    that the fitted times add up to the measured stage and end-to-end times (a log fit follows the median kernel and
    misses the sums); a soft-L1 loss,
    so that the few kernels a busy machine stretched (preempted, page faults) do not pull the fit. `relative`: the
    error relative to each measurement instead, for samples that are judged one by one (single-operator calls).
    `efficiencies` given: only the fixed time is fitted; else one efficiency serves both bounds."""
    work_c = np.array([c for c, _, _ in samples])
    work_m = np.array([m for _, m, _ in samples])
    measured = np.array([t for _, _, t in samples])
    scale = measured if relative else measured.mean()

    def residuals(x: np.ndarray) -> np.ndarray:
        (e_c, e_m), fixed = ((x[0], x[0]), x[1]) if efficiencies is None else (efficiencies, x[0])
        return (np.maximum(np.maximum(work_c / e_c, work_m / e_m) + fixed, kernel_min_s) - measured) / scale

    x0, lower, upper = [1.0, fixed_start(work_c, work_m, measured)], [1e-3, FIXED_S_BOUNDS[0]], [1.0, FIXED_S_BOUNDS[1]]
    x_scale = [0.1, 1e-6]
    if efficiencies is not None:
        x0, lower, upper, x_scale = x0[1:], lower[1:], upper[1:], x_scale[1:]
    fit = least_squares(residuals, x0=x0, bounds=(lower, upper), x_scale=x_scale, loss="soft_l1", f_scale=0.2)
    if efficiencies is None:
        return float(fit.x[0]), float(fit.x[0]), float(fit.x[1])
    return efficiencies[0], efficiencies[1], float(fit.x[0])


def fit_launch(traces: list[Trace], hw: HwConfig) -> float:
    """The host's eager cost per kernel that best explains the measured stage wall times (log error)."""
    pairs = [(t, s.wall_s) for t in traces for s in t.stages if s.wall_s]
    kernels = {id(t): kernels_of(t, hw) for t in traces}

    def loss(log_launch: float) -> float:
        trial = hw.with_overrides({"host.launch_eager_s": repr(float(np.exp(log_launch)))})
        errors = []
        for t in traces:
            p = project(t, trial, "eager", kernels[id(t)])
            errors += [(np.log(c / p.clock_hz) - np.log(s.wall_s)) ** 2
                       for s, c in zip(t.stages, p.stage_cycles) if s.wall_s]
        return float(np.mean(errors))

    if not pairs:
        return hw.host.launch_eager_s
    result = minimize_scalar(loss, bounds=(np.log(1e-7), np.log(1e-3)), method="bounded", options={"xatol": 0.01})
    return float(np.exp(result.x))


MIN_HOST_KERNELS = 30  # kernels of an op kind in the fit's stages below which it takes the default eager cost
# Pull of each op kind's log host cost toward the mean of them all, against relative stage errors: op kinds the
# fit's stages cannot tell apart (they always run in the same proportion, as a norm's pow, mean and rsqrt) stay at
# a common cost instead of trading time between them; a kind whose count varies apart from the others (per-row
# attention and KV writes grow with the batch) moves away from it as far as the stage times ask. Weak: a prior the
# stages overrule wherever they tell kinds apart (at 1.0 a synthetic fit of 64 stages kept costs 50% off the truth;
# on the H200 fit traces 0.1, 0.3, 1.0 and 3.0 put the median stage error at 9.4, 9.3, 8.8, 8.9%).
HOST_SHRINK = 0.1
HOST_S_BOUNDS = (1e-7, 1e-1)  # a fitted host cost per kernel or per stage, s


@dataclass(frozen=True)
class StageHost:
    """One measured eager stage as the host fit reads it."""

    kernels: dict[str | None, int]  # op kind -> the stage's kernels of it (None: collectives, launch_eager_s)
    wall_s: float  # measured stage wall time
    device_s: float  # its kernels' measured device times, summed


def host_samples(traces: list[Trace], hw: HwConfig) -> list[StageHost]:
    """The stages of measured eager traces that have a wall time, with their kernels counted by op kind."""
    out = []
    for trace in traces:
        kernels = kernels_of(trace, hw)
        start = 0
        for stage, ids in zip(trace.stages, trace.stage_op_ids):
            mine, start = kernels[start:start + len(ids)], start + len(ids)
            if stage.wall_s:
                counts = Counter(None if k.collective is not None else k.op for k in mine)
                device_s = sum(trace.distinct[i].duration_s or 0.0 for i in ids)
                out.append(StageHost(dict(counts), stage.wall_s, device_s))
    return out


def fit_host(samples: list[StageHost], shrink: float = HOST_SHRINK) -> tuple[dict[str, float], float, float]:
    """(eager cost per op kind seen at least MIN_HOST_KERNELS times, the default eager cost of the other kinds and
    of collectives, the host's cost per stage), in s, that best explain the stage wall times (relative error,
    soft-L1 loss). A stage's host time is its cost plus its kernels' costs; it takes the longer of that and its
    kernels' measured device time, as the engine's stage does when one of the two bounds it (every H200 stage is
    host-bound: its kernels are busy under a third of its wall time). `shrink` (HOST_SHRINK) pulls each op kind's
    log cost toward the mean of them all."""
    totals: Counter[str | None] = Counter()
    for s in samples:
        totals.update(s.kernels)
    kinds = sorted(k for k, n in totals.items() if k is not None and n >= MIN_HOST_KERNELS)
    column = {k: i for i, k in enumerate(kinds)}  # the rest share the default's column, len(kinds)
    counts = np.zeros((len(samples), len(kinds) + 1))
    for row, s in enumerate(samples):
        for kind, n in s.kernels.items():
            counts[row, column.get(kind, len(kinds))] += n
    wall = np.array([s.wall_s for s in samples])
    device = np.array([s.device_s for s in samples])

    def residuals(x: np.ndarray) -> np.ndarray:
        host = counts @ np.exp(x[:-1]) + np.exp(x[-1])
        return np.concatenate([(np.maximum(host, device) - wall) / wall, shrink * (x[:-1] - x[:-1].mean())])

    per_kernel = float(np.median((wall - device.clip(max=wall / 2)) / counts.sum(axis=1).clip(min=1)))
    x0 = np.log(np.clip([per_kernel] * (len(kinds) + 1) + [per_kernel], *HOST_S_BOUNDS))
    fit = least_squares(residuals, x0, bounds=np.log(HOST_S_BOUNDS), loss="soft_l1", f_scale=0.1)
    costs = np.exp(fit.x)
    return {k: float(f"{c:.4g}") for k, c in zip(kinds, costs)}, float(f"{costs[-2]:.4g}"), float(f"{costs[-1]:.4g}")


def calibrate(base: HwConfig, mb: dict[str, Any], traces: list[Trace], mb_path: str,
              host_traces: list[Trace] | None = None) -> tuple[dict, dict]:
    """The calibrated hwconfig (as a mapping) and a report of what was measured and fitted; the host's eager costs
    fitted to `host_traces` (measured eager traces) where given, else to the measured eager traces of `traces`."""
    raw = to_dict(base)
    report: dict[str, Any] = {}
    if "copy" in mb:
        report = _calibrate_peaks(raw, base, mb, mb_path)
    rows = all_reduce_rows(mb)
    if rows:
        if "interconnect" not in raw:
            if base.kind != "cpu":
                raise ValueError(f"hwconfig {base.path}: no interconnect section to fit the all_reduce rows of "
                                 f"{mb_path} to; add one (hwconfigs/README.md)")
            raw["interconnect"], loopback_sources = loopback_section(mb)
            raw["sources"] |= loopback_sources
        section, sources, report["interconnect"] = calibrate_interconnect(parse(raw, base.path), rows, mb_path)
        raw["interconnect"] = section
        raw["sources"] |= sources
    _calibrate_dequant(raw, parse(raw, base.path), mb, traces, mb_path, report)
    hw = parse(raw, base.path)
    eager = [t for t in traces if t.header.measured]
    compiled = [t for t in traces if is_compiled_measurement(t)]
    if (eager or compiled) and "copy" not in mb:
        raise ValueError(f"{mb_path}: no resource microbenchmarks (copy, gemm, ...) to anchor the kernel fits of "
                         "--measured traces; run reference.capture.microbench without --only all_reduce")
    if eager:
        anchors = microbench_samples(mb, hw, {t.header.dtype for t in eager})
        # on a cpu a microbenchmark call costs at most its tiniest call beyond its work (its dispatch and an empty
        # kernel; docs/cpu-dram-products.md); a GPU's library products keep a free fixed time (not measured here)
        max_fixed_s = max(mb["kernel_min_s"], 1e-8) if hw.kind == "cpu" else FIXED_S_BOUNDS[1]
        # on a cpu a GEMV pays a DRAM latency per output row beyond its bytes (row_latency_fit)
        row_anchors = microbench_row_samples(mb, hw, {t.header.dtype for t in eager}) if hw.kind == "cpu" else {}
        raw["classes"], raw["ops"] = fit_kernels(eager, hw, anchors, max_fixed_s, row_anchors)
        _quantized_op_fits(raw, report)
        raw["sources"]["classes"] = "fitted: the kernel times of " + _names(eager) + " (and the microbenchmarks)"
        report["classes"], report["ops"] = raw["classes"], raw["ops"]
    host_traces = eager if host_traces is None else host_traces
    if host_traces:
        _calibrate_host(raw, parse(raw, base.path), host_traces, report)
    if compiled:
        fit = fit_compiled(compiled, parse(raw, base.path))
        raw["host"]["launch_graph_s"], raw["compiled"] = fit["launch_graph_s"], fit["compiled"]
        raw["sources"]["host.launch_graph_s"] = ("fitted: decode stage wall times of compiled runs of "
                                                 + _names(compiled))
        report["compiled"] = fit
    return raw, report


def _calibrate_dequant(raw: dict[str, Any], hw: HwConfig, mb: dict[str, Any], traces: list[Trace], mb_path: str,
                       report: dict[str, Any]) -> None:
    """The dequant section, into `raw`, fitted to the quantized-product microbenchmarks in the traces' dtypes
    (sim.fitting.dequant; all of them without traces), before the kernel fits that time the traces' quantized
    products with it. A ValueError where quantized traces need the section and neither the microbenchmarks nor
    the base hwconfig give it."""
    dtypes = {t.header.dtype for t in traces} or {r["dtype"] for r in mb.get("quant", [])}
    fitted = fit_dequant(mb, hw, dtypes, mb_path)
    if fitted is not None:
        raw["dequant"], sources, report["dequant"] = fitted
        raw["sources"] |= sources
    elif hw.dequant is None and any(op.weight_dtype for t in traces for op in t.ops):
        raise ValueError(f"{mb_path}: no quantized-product rows (quant) in {', '.join(sorted(dtypes))} to fit the "
                         "dequant section that --measured quantized traces need, and the base hwconfig has none; "
                         "run reference.capture.microbench on the cpu")


def _quantized_op_fits(raw: dict[str, Any], report: dict[str, Any]) -> None:
    """The quantized products' op kinds, into `raw`'s ops section, at unit efficiency with their fixed times from
    the dequant fit (sim.fitting.dequant: its rate is the achieved one), where the traces' kernel fits gave them
    none: the matmul class's fixed time is F.linear's, and a packed op's dispatch costs far less."""
    fixed = report.get("dequant", {}).get("fixed_s", {})
    ops = raw["ops"].setdefault("matmul", {}) if fixed else {}
    for op, fixed_s in fixed.items():
        ops.setdefault(op, {"efficiency": 1.0, "fixed_s": float(f"{fixed_s:.4g}")})


def _calibrate_host(raw: dict[str, Any], hw: HwConfig, traces: list[Trace], report: dict[str, Any]) -> None:
    """The host's eager costs, into `raw`, fitted to the stage wall times of measured eager `traces`: on a GPU per op
    kind and per stage (fit_host), on a cpu one cost per kernel (fit_launch: the host runs each op itself, and its
    dispatch is in the op's measured time)."""
    host, source = raw["host"], "fitted: stage wall times of " + _names(traces, batch=True)
    if hw.kind == "cpu":
        host["launch_eager_s"] = float(f"{fit_launch(traces, hw):.4g}")
    else:
        host["eager_op_s"], host["launch_eager_s"], host["eager_stage_s"] = fit_host(host_samples(traces, hw))
        report["eager_op_s"], report["eager_stage_s"] = host["eager_op_s"], host["eager_stage_s"]
    for field in ("launch_eager_s", "eager_op_s", "eager_stage_s"):
        if field in host:
            raw["sources"][f"host.{field}"] = source
    report["launch_eager_s"] = host["launch_eager_s"]


def _calibrate_peaks(raw: dict[str, Any], base: HwConfig, mb: dict[str, Any], mb_path: str) -> dict[str, Any]:
    """Step 2 of the module docstring, into `raw`: measured peaks and host figures, global efficiencies."""
    measured = peaks_from_microbench(mb)
    src = f"measurement: {mb_path} ({mb['device_name']}, torch {mb['torch_version']})"
    peak, host, eff, sources = raw["peak"], raw["host"], raw["efficiency"], raw["sources"]
    eff["dram"] = min(1.0, measured["dram_bandwidth_bytes_per_s"] / peak["dram_bandwidth_bytes_per_s"])
    sources["efficiency.dram"] = f"{src}: the best large copy over the datasheet bandwidth"
    best = measured["matrix_flops_per_s"]
    ratios = [best[d] / peak["matrix_flops_per_s"][d] for d in best if d in peak["matrix_flops_per_s"]]
    if ratios:
        eff["matrix"] = min(1.0, max(ratios))
        sources["efficiency.matrix"] = f"{src}: the best GEMM over the datasheet matrix rate"
    if base.kind != "cpu":  # on a cpu these are host time (cpu_base)
        for field in ("kernel_min_s", "graph_kernel_gap_s"):
            host[field] = measured[field]
            sources[f"host.{field}"] = src
        # the microbenchmarks time a replayed graph per kernel, not its launch apart
        host["launch_graph_s"] = measured["graph_kernel_gap_s"]
        sources["host.launch_graph_s"] = ("assumption: one graph launch taken to cost as much as one kernel node "
                                          "of the replay (host.graph_kernel_gap_s); not measured apart from it")
    return {"measured": measured, "efficiency": dict(eff)}


def _names(traces: list[Trace], batch: bool = False) -> str:
    """The traces as model/decoder (sim.fitting.report reads them back from the compiled sources), and `batch`: with
    the batch where it is not 1."""
    return ", ".join(sorted({t.header.model.get("name", "?") + "/" + t.header.decoder
                             + (f" (batch {t.header.batch})" if batch and t.header.batch != 1 else "")
                             for t in traces}))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.fitting.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True, help="device to calibrate")
    parser.add_argument("--base", type=Path, help="hwconfig with the device's datasheet figures to start from "
                        "(default on cpu: one built from the measurements and /proc, /sys)")
    parser.add_argument("--out", type=Path, required=True, help="calibrated hwconfig to write (YAML)")
    parser.add_argument("--microbench", type=Path, help="saved microbenchmark results (JSON) instead of running them")
    parser.add_argument("--measured", type=Path, nargs="*", default=[],
                        help="measured traces to fit per-class efficiencies and the host cost to; compiled "
                        "measurements among them (reference.capture.measure --compile) fit the compiled figures: "
                        "host.launch_graph_s and the compiled section, on their decode stage times")
    parser.add_argument("--host-measured", type=Path, nargs="+",
                        help="measured eager traces to fit the host's eager costs to (on a GPU per op kind and per "
                        "stage) instead of the eager traces of --measured: the host fit needs stages whose op mixes "
                        "differ (a batch whose per-row ops grow apart from the rest), the kernel fits do not")
    parser.add_argument("--quick", action="store_true", help="fewer microbenchmark sizes")
    parser.add_argument("--threads", type=integer(1, MAX_THREADS),
                        help="torch intra-op threads for the microbenchmarks run here (default: "
                        "torch's); give the measured traces' count (the cpu hwconfig's compute units follow it)")
    return parser


def _microbench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The microbenchmark results, loaded from --microbench or run here (and saved beside --out), and their path."""
    if args.microbench:
        try:
            mb = load_microbench(args.microbench, f"--microbench {args.microbench}")
        except ValueError as err:  # MicrobenchError: names the field
            parser.error(str(err))
        if mb.get("device", args.device) != args.device:
            parser.error(f"--device {args.device}: --microbench {args.microbench} was measured on {mb['device']} "
                         f"({mb.get('device_name', '?')}); calibrate --device {mb['device']}, or give results of "
                         f"{args.device}")
        return mb, args.microbench
    try:  # run by the trace provider (sim.provider): torch never loads here
        [mb] = request("microbench", [{"device": args.device, "quick": args.quick, "threads": args.threads}])
        check_microbench(mb, f"the trace provider's microbenchmarks of --device {args.device}")
    except ValueError as err:  # the provider's error line (no GPU, torch missing: give --microbench FILE)
        parser.error(str(err))
    mb_path = args.out.with_suffix(".microbench.json")
    atomic_write(mb_path, lambda tmp: tmp.write_text(json.dumps(mb, indent=1)))
    return mb, mb_path


def _fit_line(fit: dict[str, float]) -> str:
    memory = fit.get("memory_efficiency", fit["efficiency"])
    return f"efficiency {fit['efficiency']:.3f} (memory {memory:.3f})  fixed {fit['fixed_s'] * 1e6:7.2f} us"


def _print_report(out: Path, report: dict[str, Any]) -> None:
    print(f"{out}:")
    if "measured" in report:
        m = report["measured"]
        print(f"DRAM {m['dram_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s measured (efficiency "
              f"{report['efficiency']['dram']:.3f}), matrix {max(m['matrix_flops_per_s'].values()) / 1e12:.3g} "
              f"TFLOP/s (efficiency {report['efficiency']['matrix']:.3f}), kernel {m['kernel_min_s'] * 1e6:.2f} us, "
              f"graph gap {m['graph_kernel_gap_s'] * 1e6:.2f} us")
    if "interconnect" in report:
        ic, rows, errors = (report["interconnect"][k] for k in ("interconnect", "rows", "median_abs_pct"))
        figures = (f"{ic['link_bandwidth_bytes_per_s'] / 1e9:.3g} GB/s, {ic['step_latency_s'] * 1e6:.2f} us per "
                   "message" if "step_latency_s" in ic else f"efficiency {ic['efficiency']:.4g}")
        print(f"interconnect fitted to {rows['fit']} all-reduce rows: {figures}, "
              f"{ic['collective_latency_s'] * 1e6:.2f} us per collective; median |e| {errors['fit']:.1f}% fitted, "
              f"{errors['held_out']:.1f}% on {rows['held_out']} rows held out"
              + (f"; {rows['beyond_the_node']} rows of more ranks than cores left out" if rows["beyond_the_node"]
                 else ""))
    if "dequant" in report:
        d = report["dequant"]
        print(f"dequant fitted to {d['rows']} quantized products: {d['ops_per_s'] / 1e9:.3g} Gop/s, one pass per "
              f"{d['rows_per_pass']} rows (fit cost per row block: " + ", ".join(
                  f"{b}: {f['cost']:.3g}" for b, f in d["fits"].items()) + "); fixed per op kind: " + ", ".join(
                  f"{op} {s * 1e6:.2f} us" for op, s in d["fixed_s"].items()))
    if "launch_eager_s" in report:
        print(f"host eager cost per kernel fitted: {report['launch_eager_s'] * 1e6:.2f} us "
              + (f"(microbenchmark: {report['measured']['launch_eager_s'] * 1e6:.2f} us)" if "measured" in report
                 else ""))
        if "eager_op_s" in report:
            print(f"  per stage {report['eager_stage_s'] * 1e6:.1f} us; per op kind: " + ", ".join(
                f"{op} {s * 1e6:.1f} us" for op, s in report["eager_op_s"].items()))
        for cls, fit in report.get("classes", {}).items():
            print(f"  {cls:<40} {_fit_line(fit)}")
            for op, fit in report["ops"].get(cls, {}).items():
                print(f"    {op:<38} {_fit_line(fit)}")
    if "compiled" in report:
        c = report["compiled"]
        print(f"compiled, fitted to {c['stages']} decode stages (median |e| {c['median_abs_pct']:.1f}%): host "
              f"{c['launch_graph_s'] * 1e6:.2f} us per stage, a library kernel {c['library_fixed_s'] * 1e6:.2f} us and "
              f"a generated kernel {c['generated_fixed_s'] * 1e6:.2f} us fixed (generated efficiency "
              f"{c['compiled']['generated']['efficiency']:.3f})")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    saved = None if args.microbench else args.out.with_suffix(".microbench.json")  # the measurements made here
    check_outputs(parser, {"--out": args.out, "--out (the microbenchmarks run here, beside it)": saved},
                  inputs={"--base": [args.base], "--microbench": [args.microbench], "--measured": args.measured})
    if args.base is None and args.device != "cpu":
        parser.error("--base is required for cuda: the hwconfig with the GPU's datasheet figures")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        base = load_hwconfig(args.base) if args.base else None
        traces = [read_checked(p) for p in args.measured]
        host_traces = [read_checked(p) for p in args.host_measured] if args.host_measured else None
    except ValueError as err:  # a HwConfigError, a TraceError, a shape the kernel model cannot take
        parser.error(str(err))
    for path, t in zip(args.measured, traces):
        if not (t.header.measured or is_compiled_measurement(t)):
            parser.error(f"{path}: not a measured trace (no durations, and not a compiled measurement)")
    for path, t in zip(args.host_measured or [], host_traces or []):
        if not t.header.measured:
            parser.error(f"--host-measured {path}: not a measured eager trace (no per-op durations)")
    mb, mb_path = _microbench(parser, args)
    if base is None:
        if "copy" not in mb:
            parser.error(f"--microbench {mb_path}: no resource microbenchmarks (copy, gemm, ...) to build this "
                         "machine's hwconfig from; give --base")
        base = parse(cpu_base(mb, str(mb_path)), "this machine")
    try:
        raw, report = calibrate(base, mb, traces, str(mb_path), host_traces)
    except ValueError as err:
        parser.error(str(err))
    raw["name"] = f"{base.name} (calibrated {date.today().isoformat()})"
    raw["notes"] = (f"Calibrated from {base.path}: host figures and efficiencies measured or fitted (sources say "
                    f"which); fits per kernel class and per op kind from {len(traces)} measured traces"
                    + (f", host costs from {len(host_traces)}." if host_traces else "."))
    text = (f"# Generated by: python -m sim.fitting.calibrate {' '.join(sys.argv[1:])}\n"
            + yaml.safe_dump(raw, sort_keys=False))
    atomic_write(args.out, lambda tmp: tmp.write_text(text))
    load_hwconfig(args.out)  # what was written loads
    _print_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.fitting.calibrate"))
