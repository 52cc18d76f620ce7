"""Check a hwconfig against public single-operator measurements of a real GPU (no GPU needed).

    python -m sim.fitting.public --hw hwconfigs/a100.yaml [--max-error-matmul PCT] [--max-error-other PCT]
    python -m sim.fitting.public --hw hwconfigs/a100.yaml \\
        --fit hwconfigs/a100-public.yaml   # fit on half, check the rest
    python -m sim.fitting.public --hw hwconfigs/a100-public.yaml --held-out --max-error-matmul 10 --max-error-other 20

The measurements (../shared/data/public-measurements/llmcompass-a100/, from LLMCompass, ISCA 2024) time one
eager PyTorch call between host clocks with a synchronisation: bf16 matrix products, fp16 softmax, layer
norm and GELU on an A100 80GB. Each becomes a one-op trace, projected with an eager launch; the report gives
the error per operator kind (median and mean absolute %, signed bias, Pearson r).

--fit calibrates against half of the points, every other one of each operator in file order (so both halves span
the sizes), and --held-out then checks only the other half: no point that set a figure judges it. Fitted: the
bare call's host cost (dispatch, launch, synchronisation: the fastest call measured, less the shortest kernel)
as host.launch_eager_s, and per kernel class an efficiency and a fixed time (sim.fitting.calibrate.fit_class, on the
error relative to each call, as each call is judged), on top of global efficiencies of 1. The fixed times belong
to these bare calls of whole operators (a layer norm or GELU call here costs ~50 us however small), not to the
decoders' op-by-op traces.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import yaml

from sim.command import check_outputs, number, run_command
from sim.defaults import CHECKOUT as ROOT
from sim.engine import project
from sim.files import atomic_write
from sim.fitting.calibrate import fit_class
from sim.fitting.validate import gate_status, metrics, r_text
from sim.hardware import HWCONFIG_DIR, HwConfig, HwConfigError, load_hwconfig, parse, to_dict
from sim.trace import Trace, one_op_trace

DATA = ROOT.parent / "shared" / "data" / "public-measurements" / "llmcompass-a100"


def _rows(name: str) -> list[list[str]]:
    path = DATA / name
    try:
        with path.open() as f:
            return [[c.strip() for c in row] for row in csv.reader(f) if row]
    except OSError as err:
        raise ValueError(f"public measurements {path}: {err.strerror}") from None


def measurements() -> dict[str, list[tuple[Trace, float]]]:
    """Per operator kind, in file order: (one-op trace, measured seconds)."""
    out: dict[str, list[tuple[Trace, float]]] = {"matmul": [], "softmax": [], "layernorm": [], "gelu": []}
    for m, n, k, latency, _ in _rows("matmul_A100.csv"):
        m, n, k = int(m), int(n), int(k)  # (M, K) @ (K, N); B is the weight-like operand
        trace = one_op_trace("aten.mm.default", "public.matmul", [[m, k], [k, n]], [m, n], "bfloat16", 2 * m * n * k,
                             2 * (m * k + m * n), weight_bytes=2 * k * n)
        out["matmul"].append((trace, float(latency.removesuffix("ms")) * 1e-3))
    for kind, op, role, flops_per_element in (("softmax", "aten._softmax.default", None, 5),
                                              ("layernorm", "aten.native_layer_norm.default", "norm", 8)):
        for m, n, throughput in _rows(f"{kind}_A100.csv"):
            m, n = int(m), int(n)
            trace = one_op_trace(op, f"public.{kind}", [[m, n]], [m, n], "float16", flops_per_element * m * n,
                                 4 * m * n, role=role)
            out[kind].append((trace, m * n / (float(throughput) * 1e9)))
    for m, throughput in _rows("gelu_A100.csv"):
        m = int(m)
        out["gelu"].append((one_op_trace("aten.gelu.default", "public.gelu", [[m]], [m], "float16", 8 * m, 4 * m),
                            m / (float(throughput) * 1e9)))
    return out


def split(points: list, held_out: bool) -> list:
    """The calibration half (every other point from the first) or the held-out half."""
    return points[1::2] if held_out else points[0::2]


def pairs(hw: HwConfig, held_out: bool = False) -> dict[str, list[tuple[float, float]]]:
    """(projected, measured) seconds per operator kind: every point, or the held-out half only. Projected: one
    eager call, launch included, as the measurements include it."""
    return {kind: [(project(trace, hw, "eager").total_s, measured)
                   for trace, measured in (split(points, True) if held_out else points)]
            for kind, points in measurements().items()}


def fit(base: HwConfig, command: str) -> dict:
    """A hwconfig (as a mapping) fitted to the calibration half (see the module docstring)."""
    raw = to_dict(base)
    raw["efficiency"] = dict.fromkeys(raw["efficiency"], 1.0)
    unit = dataclasses.replace(parse(raw, base.path), classes={}, ops={})
    samples: dict[str, list[tuple[float, float, float]]] = {}
    for points in measurements().values():
        for trace, measured in split(points, False):
            p = project(trace, unit, "eager")
            samples.setdefault(p.kernels[0].cls, []).append((p.costs[0].compute_s, p.costs[0].memory_s, measured))
    kernel_min = unit.host.kernel_min_s
    call_s = max(0.0, min(t for points in samples.values() for *_, t in points) - kernel_min)
    raw["host"]["launch_eager_s"] = float(f"{call_s:.4g}")
    raw["classes"], raw["ops"] = {}, {}
    for cls, points in sorted(samples.items()):
        e, _, fixed = fit_class([(c, m, t - call_s) for c, m, t in points], kernel_min, relative=True)
        raw["classes"][cls] = {"efficiency": round(e, 4), "fixed_s": float(f"{fixed:.4g}")}
    src = f"fitted: every other LLMCompass A100 single-operator measurement ({command})"
    raw["sources"]["host.launch_eager_s"] = src
    raw["sources"]["classes"] = src
    raw["sources"].update({f"efficiency.{k}": "1 (the per-class fits carry the efficiencies)"
                           for k in raw["efficiency"]})
    raw["name"] = f"{base.name} (fitted to public single-operator calls)"
    raw["notes"] = ("Fitted to bare single-operator eager calls (LLMCompass's A100 measurements, the even-indexed "
                    "half; python -m sim.fitting.public --held-out checks the other half). Its host cost and per-class "
                    "fixed times are those of whole operators called one at a time, not of a decoding loop's ops: "
                    f"project decoding with {base.path}.")
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.fitting.public", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", type=Path, default=HWCONFIG_DIR / "a100.yaml", help="hwconfig (default a100)")
    parser.add_argument("--fit", type=Path, metavar="OUT",
                        help="fit a hwconfig to the calibration half of the points, starting from --hw, write it to "
                        "OUT, and report it on the held-out half")
    parser.add_argument("--held-out", action="store_true",
                        help="compare the held-out half of the points only (for a config made by --fit)")
    parser.add_argument("--max-error-matmul", type=number(0), metavar="PCT",
                        help="exit 1 when the median absolute error of the matrix products exceeds PCT")
    parser.add_argument("--max-error-other", type=number(0), metavar="PCT",
                        help="exit 1 when the median absolute error of softmax, layer norm or GELU exceeds PCT")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--fit": args.fit})
    try:
        hw = load_hwconfig(args.hw)
        if args.fit:
            text = (f"# Generated by: python -m sim.fitting.public {' '.join(sys.argv[1:])}\n"
                    + yaml.safe_dump(fit(hw, f"python -m sim.fitting.public --hw {args.hw} --fit {args.fit}"),
                                     sort_keys=False))
            atomic_write(args.fit, lambda tmp: tmp.write_text(text))
            hw, args.hw, args.held_out = load_hwconfig(args.fit), args.fit, True
        results = {kind: metrics(values) for kind, values in pairs(hw, args.held_out).items()}
    except (HwConfigError, ValueError) as err:
        parser.error(str(err))
    half = ", the held-out half" if args.held_out else ""
    print(f"{hw.name} ({args.hw}) against LLMCompass's A100 80GB single-operator measurements{half}")
    print(f"{'operator':<11}{'n':>4}{'median|e|%':>12}{'mean|e|%':>10}{'bias%':>8}{'r':>7}")
    for kind, m in results.items():
        print(f"{kind:<11}{m['n']:>4}{m['median_abs_pct']:>12.1f}{m['mean_abs_pct']:>10.1f}{m['bias_pct']:>+8.1f}"
              f"{r_text(m['pearson_r'])}")
    failed = []
    if args.max_error_matmul is not None and results["matmul"]["median_abs_pct"] > args.max_error_matmul:
        failed.append(f"matmul {results['matmul']['median_abs_pct']:.1f}% > {args.max_error_matmul}%")
    for kind in ("softmax", "layernorm", "gelu"):
        if args.max_error_other is not None and results[kind]["median_abs_pct"] > args.max_error_other:
            failed.append(f"{kind} {results[kind]['median_abs_pct']:.1f}% > {args.max_error_other}%")
    return gate_status(failed)


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.fitting.public"))
