"""The `dequant` section of a hwconfig fitted to the quantized-product microbenchmarks (reference.capture.microbench
`quant` rows: int8 and int4 packed products at decode rows), never to decodes.

    section, sources, report = fit_dequant(mb, hw, {"float32"}, "cpu.microbench.json")

sim.kernels times a weight-only product as its product's work plus its dequantization (on a cpu the same vector
ports do both: `compute_s = product + dequant_s`), the dequantization `dequant_ops` operations per weight, once per
block of `rows_per_pass` rows, at `ops_per_s` (times the vector efficiency). Per candidate row block
(ROWS_PER_PASS), the rate and a fixed time per op kind (the packed int8 and int4 ops, one row or more: ATen's dispatch
and the kernel's set-up, far below F.linear's on a cpu) are fitted (least squares on relative error, as the kernel
classes are); the block whose fit explains the rows best is kept, and its fixed times become the op kinds' fits (`ops`
section, at unit efficiency: the rate is the achieved one) where the decodes' traces fit none. Which block fits is a
property of the kernel the dtype runs: on this x86 cpu ATen's float32 path dequantizes per row (time grows with every
row), its bfloat16 path per block of rows (vectorized; sim.hardware's `dequant.rows_per_pass` source for the Xeon:
BLOCK_M = 4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from sim.hardware import Dequant, HwConfig
from sim.kernels import kernel_cost, kernel_of, op_kind
from sim.trace import OpRecord, one_op_trace

ROWS_PER_PASS = (1, 2, 4, 8, 16)  # the row blocks tried: per row, up to a 16-row tile (tinygemm's on a GPU)
NO_DEQUANT_OPS_PER_S = 1e30  # a rate that makes the dequantization free: the product's own time alone
START_OPS_PER_S = 1e9  # where the fit starts (a scalar cpu path; a vector one is some 10x more)
FIXED_S_BOUNDS = (0.0, 1e-2)  # a fitted fixed time per call, s (sim.fitting.calibrate's bounds)


def quant_op(row: dict[str, Any]) -> OpRecord:
    """One microbenchmark row as the op a quantized decode's trace carries: the packed product of m rows by n x k,
    its weight bytes (packed weight, scales and zero points, as the capture counts them) and its format."""
    m, n, k, dtype = row["m"], row["n"], row["k"], row["dtype"]
    size = 2 if dtype in ("bfloat16", "float16") else 4
    packed = row["weight_bytes"] + row["scale_bytes"] + row["zero_bytes"]
    trace = one_op_trace(row["op"], "micro.quant", [[m, k], row["weight_shape"], row["scales_shape"]], [m, n], dtype,
                         2 * m * n * k, size * (m * k + m * n), weight_bytes=packed)
    op = trace.ops[0]
    return dataclasses.replace(op, in_dtypes=[dtype, "int8" if row["weight_dtype"] == "int8" else "uint8", dtype],
                               weight_dtype=row["weight_dtype"], group_size=row["group_size"],
                               scale_bytes=row["scale_bytes"], zero_bytes=row["zero_bytes"],
                               dequant_ops=row["dequant_ops"])


def _samples(rows: list[dict[str, Any]], hw: HwConfig) -> tuple[np.ndarray, ...]:
    """(product compute_s, memory_s, dequantizing operations per row block of one, measured_s) per row, at unit
    efficiency (no class or op-kind fit) and no dequantization cost; operations for rows_per_pass 1."""
    free = dataclasses.replace(hw, classes={}, ops={}, dequant=Dequant(NO_DEQUANT_OPS_PER_S, 1))
    compute, memory, work, measured = [], [], [], []
    for row in rows:
        kernel = kernel_of(quant_op(row), hw.tile.m, hw.tile.n)
        cost = kernel_cost(kernel, free, kernel.bytes)  # the weights stream from memory (rotated past the cache)
        compute.append(cost.compute_s)
        memory.append(max(cost.memory_s, cost.floor_s))
        work.append(row["dequant_ops"] * row["n"] * row["k"] / hw.efficiency.vector)
        measured.append(row["seconds"])
    return tuple(map(np.array, (compute, memory, work, measured)))


def _fit_block(rows_per_pass: int, m: np.ndarray, kind: np.ndarray, samples: tuple[np.ndarray, ...]
               ) -> tuple[float, list[float], float]:
    """(ops_per_s, fixed_s per op kind (index `kind`), cost) of one row block: max(product + work x passes / rate,
    memory) + the op kind's fixed time."""
    compute, memory, work, measured = samples
    passes = np.ceil(m / rows_per_pass)
    kinds = int(kind.max()) + 1

    def residuals(x: np.ndarray) -> np.ndarray:
        rate, fixed = 10 ** x[0], x[1:][kind]
        return (np.maximum(compute + work * passes / rate, memory) + fixed - measured) / measured

    fit = least_squares(residuals, x0=[np.log10(START_OPS_PER_S)] + [1e-6] * kinds, x_scale=[1.0] + [1e-6] * kinds,
                        loss="soft_l1", f_scale=0.2,
                        bounds=([6.0] + [FIXED_S_BOUNDS[0]] * kinds, [15.0] + [FIXED_S_BOUNDS[1]] * kinds))
    return float(10 ** fit.x[0]), [float(f) for f in fit.x[1:]], float(fit.cost)


def fit_dequant(mb: dict[str, Any], hw: HwConfig, dtypes: set[str], mb_path: str
                ) -> tuple[dict[str, float], dict[str, str], dict[str, Any]] | None:
    """The dequant section (ops_per_s, rows_per_pass), its sources and a report (per row block tried: rate, fixed
    times, cost; `fixed_s`: the kept block's fixed time per op kind), fitted to the `quant` rows of `mb` in `dtypes`
    (the decodes' dtypes); None where there are none."""
    rows = [r for r in mb.get("quant", []) if r["dtype"] in dtypes]
    if not rows:
        return None
    samples = _samples(rows, hw)
    m = np.array([r["m"] for r in rows], dtype=float)
    names = [op_kind(quant_op(r)) for r in rows]
    kinds = sorted(set(names))
    kind = np.array([kinds.index(n) for n in names])
    fits = {block: _fit_block(block, m, kind, samples) for block in ROWS_PER_PASS}
    block = min(fits, key=lambda b: fits[b][2])
    rate, fixed, _ = fits[block]
    section = {"ops_per_s": float(f"{rate:.4g}"), "rows_per_pass": block}
    where = (f"fitted: {len(rows)} quantized products of {mb_path} ({', '.join(sorted({r['scheme'] for r in rows}))}"
             f"; {', '.join(sorted(dtypes))}; rows {', '.join(map(str, sorted({r['m'] for r in rows})))})")
    sources = {"dequant.ops_per_s": where,
               "dequant.rows_per_pass": f"{where}: the row block of {ROWS_PER_PASS} whose fit explains them best"}
    report = {"rows": len(rows), "ops_per_s": section["ops_per_s"], "rows_per_pass": block,
              "fits": {b: {"ops_per_s": r, "cost": c} for b, (r, _, c) in fits.items()},
              "fixed_s": dict(zip(kinds, fixed))}
    return section, sources, report
