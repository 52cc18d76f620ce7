"""Check a hwconfig against public single-operator measurements of a real GPU (no GPU needed).

    python -m sim.public --hw hwconfigs/a100.yaml [--max-error-matmul PCT] [--max-error-other PCT]

The measurements (../shared/data/public-measurements/llmcompass-a100/, from LLMCompass, ISCA 2024) time one
eager PyTorch call between host clocks with a synchronisation: bf16 matrix products, fp16 softmax, layer
norm and GELU on an A100 80GB. Each becomes a one-op trace, projected with an eager launch; the report gives
the error per operator kind (median and mean absolute %, signed bias, Pearson r).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from sim.engine import project
from sim.hardware import HWCONFIG_DIR, HwConfig, HwConfigError, load_hwconfig
from sim.run import ROOT
from sim.trace import OpRecord, StageRecord, Trace, TraceHeader
from sim.validate import metrics

DATA = ROOT.parent / "shared" / "data" / "public-measurements" / "llmcompass-a100"


def one_op(hw: HwConfig, op: str, module: str, shape: list[int], dtype: str, flops: int, act_bytes: int,
           weight_bytes: int = 0) -> float:
    """Projected seconds of one eager call of `op` (launch included, as the measurements include it)."""
    weights = {"B": {"bytes": weight_bytes, "shape": [weight_bytes // 2], "dtype": dtype}} if weight_bytes else {}
    head = TraceHeader(model={"name": "single op"}, decoder="sequential", dtype=dtype, batch=1, prompt_lens=[1],
                       max_new_tokens=1, device="meta", device_name="-", torch_version="-", code_revision="-",
                       flips={"source": "none"}, weights=weights, measured=False, command="sim.public")
    record = OpRecord(0, 0, None, None, None, shape[0], module, op, [shape], [dtype], [shape], [dtype], flops,
                      weight_bytes, act_bytes // 2, act_bytes - act_bytes // 2, 0, 0, ["B"] if weight_bytes else [])
    return project(Trace(head, [record], [StageRecord(0, "decode", [], [], [])]), hw, "eager").total_s


def _rows(name: str) -> list[list[str]]:
    path = DATA / name
    try:
        with path.open() as f:
            return [[c.strip() for c in row] for row in csv.reader(f) if row]
    except OSError as err:
        raise ValueError(f"public measurements {path}: {err.strerror}") from None


def pairs(hw: HwConfig) -> dict[str, list[tuple[float, float]]]:
    """(projected, measured) seconds per operator kind."""
    out: dict[str, list[tuple[float, float]]] = {"matmul": [], "softmax": [], "layernorm": [], "gelu": []}
    for m, n, k, latency, _ in _rows("matmul_A100.csv"):
        m, n, k = int(m), int(n), int(k)  # (M, K) @ (K, N); B is the weight-like operand
        projected = one_op(hw, "aten.mm.default", "public.matmul", [m, n], "bfloat16", 2 * m * n * k,
                           2 * (m * k + m * n), weight_bytes=2 * k * n)
        out["matmul"].append((projected, float(latency.removesuffix("ms")) * 1e-3))
    for kind, op, module, flops_per_element in (("softmax", "aten._softmax.default", "public.softmax", 5),
                                                ("layernorm", "aten.native_layer_norm.default", "public.norm", 8)):
        for m, n, throughput in _rows(f"{kind}_A100.csv"):
            m, n = int(m), int(n)
            projected = one_op(hw, op, module, [m, n], "float16", flops_per_element * m * n, 4 * m * n)
            out[kind].append((projected, m * n / (float(throughput) * 1e9)))
    for m, throughput in _rows("gelu_A100.csv"):
        m = int(m)
        out["gelu"].append((one_op(hw, "aten.gelu.default", "public.gelu", [m], "float16", 8 * m, 4 * m),
                            m / (float(throughput) * 1e9)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.public", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", type=Path, default=HWCONFIG_DIR / "a100.yaml", help="hwconfig (default a100)")
    parser.add_argument("--max-error-matmul", type=float, metavar="PCT",
                        help="exit 1 when the median absolute error of the matrix products exceeds PCT")
    parser.add_argument("--max-error-other", type=float, metavar="PCT",
                        help="exit 1 when the median absolute error of softmax, layer norm or GELU exceeds PCT")
    args = parser.parse_args(argv)
    try:
        hw = load_hwconfig(args.hw)
        results = {kind: metrics(values) for kind, values in pairs(hw).items()}
    except (HwConfigError, ValueError) as err:
        parser.error(str(err))
    print(f"{hw.name} ({args.hw}) against LLMCompass's A100 80GB single-operator measurements")
    print(f"{'operator':<11}{'n':>4}{'median|e|%':>12}{'mean|e|%':>10}{'bias%':>8}{'r':>7}")
    for kind, m in results.items():
        print(f"{kind:<11}{m['n']:>4}{m['median_abs_pct']:>12.1f}{m['mean_abs_pct']:>10.1f}{m['bias_pct']:>+8.1f}"
              f"{m['pearson_r']:>7.3f}")
    failed = []
    if args.max_error_matmul is not None and results["matmul"]["median_abs_pct"] > args.max_error_matmul:
        failed.append(f"matmul {results['matmul']['median_abs_pct']:.1f}% > {args.max_error_matmul}%")
    for kind in ("softmax", "layernorm", "gelu"):
        if args.max_error_other is not None and results[kind]["median_abs_pct"] > args.max_error_other:
            failed.append(f"{kind} {results[kind]['median_abs_pct']:.1f}% > {args.max_error_other}%")
    if failed:
        print("FAIL: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
