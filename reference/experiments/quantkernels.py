"""Time one projection in every form reference.quant computes it, eager and under torch.compile, on this CPU: the
float product, and per scheme the packed op and dequantize-then-matmul; and list the kernels inductor generated
for each compiled form (what it fuses, what it calls).

    python -m reference.experiments.quantkernels                       # d_model 512 -> d_ff 1408 (code-wide), 1 thread
    python -m reference.experiments.quantkernels --k 768 --n 2048 --rows 1 4 --dtypes bfloat16

Rows are the rows one product takes: 1 for sequential decoding at batch 1, G for a full SPEED stage. Each time is
microseconds per call, the best of `--rounds` rounds that time every form in turn (a shared machine only adds
time); `vs float` is the float product's time over the form's, in the same regime. The figures show which form
suits which regime; reference.quant's `kernel` argument chooses.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

import torch
from torch import nn
from torch._inductor.utils import run_and_get_code
from torch.utils.benchmark import Timer

from reference import quant
from sim.command import integer, number, run_command

DTYPES = ("float32", "bfloat16", "float16")
FORMS = ("float", *(f"{s} {k}" for s in quant.SCHEMES if s in ("int8", "int4-g32", "int4-g128")
                    for k in quant.KERNELS))
CALIBRATE_S = 0.05  # seconds of calls that estimate one call's time, which sets the calls per round
# lines of inductor's output code that call a kernel: generated (cpp_fused_*), library (extern_kernels.*) or op
KERNEL_CALL = re.compile(r"^\s+(?:\w+ = )?((?:cpp_fused\w*|extern_kernels\.\w+|torch\.ops\.[\w.]+))\(", re.M)


def make_form(form: str, linear: nn.Linear) -> nn.Module:
    """The projection `linear` computed as `form` ("float", or "SCHEME KERNEL")."""
    if form == "float":
        return linear
    scheme, kernel = form.split()
    group = quant.SCHEMES[scheme].group_size
    if group is None:
        return quant.Int8Linear.from_linear(linear, kernel)
    return quant.Int4Linear.from_linear(linear, group, kernel)


def best_us(calls: dict, rounds: int, min_run_s: float) -> dict:
    """Microseconds per call of each of `calls` (key -> function of no arguments), the best of `rounds` rounds that
    time every call in turn for about `min_run_s` each: on a shared machine other work only ever adds time, and
    interleaving spreads its bursts over every form alike."""
    timers = {key: Timer("fn()", globals={"fn": fn}) for key, fn in calls.items()}
    best = {key: math.inf for key in timers}
    with torch.inference_mode():
        once = {key: timer.blocked_autorange(min_run_time=CALIBRATE_S).mean for key, timer in timers.items()}
        number = {key: max(1, round(min_run_s / once[key])) for key in timers}
        for _ in range(rounds):
            for key, timer in timers.items():
                best[key] = min(best[key], timer.timeit(number[key]).mean * 1e6)
    return best


def compiled_kernels(fn: nn.Module, x: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """fn compiled (static shapes, whole graph) and the kernels its output code calls, in order."""
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        _, code = run_and_get_code(compiled, x)
    return compiled, KERNEL_CALL.findall(code[0])


def measure(k: int, n: int, dtype: torch.dtype, rows: int, rounds: int, min_run_s: float, seed: int) -> list[dict]:
    """Every form at one dtype and row count: eager and compiled microseconds, the compiled kernels, and the
    largest difference from the float product relative to its largest magnitude."""
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(k, n, bias=False, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=gen) / k**0.5)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    with torch.inference_mode():
        exact = linear(x).double()
    results, calls = [], {}
    for form in FORMS:
        fn = make_form(form, linear)
        compiled, kernels = compiled_kernels(fn, x)
        with torch.inference_mode():
            error = float((fn(x).double() - exact).abs().max() / exact.abs().max())
        calls[form, "eager"], calls[form, "compiled"] = (lambda fn=fn: fn(x)), (lambda fn=compiled: fn(x))
        results.append({"form": form, "kernel": getattr(fn, "kernel", "F.linear"), "error": error,
                        "compiled_kernels": kernels})
    best = best_us(calls, rounds, min_run_s)
    for r in results:
        r["eager_us"], r["compiled_us"] = best[r["form"], "eager"], best[r["form"], "compiled"]
    return results


def table(results: list[dict], dtype: str, rows: int) -> list[str]:
    float_ = next(r for r in results if r["form"] == "float")
    lines = [f"{dtype}, {rows} row{'s' if rows > 1 else ''}:"]
    for r in results:
        eager, compiled = float_["eager_us"] / r["eager_us"], float_["compiled_us"] / r["compiled_us"]
        lines.append(f"  {r['form']:>17}  eager {r['eager_us']:8.1f} us ({eager:5.2f}x vs float)  compiled "
                     f"{r['compiled_us']:8.1f} us ({compiled:5.2f}x)  error {r['error']:.1e}  inductor: "
                     f"{' + '.join(r['compiled_kernels'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.experiments.quantkernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=integer(128), default=512,
                        help="input features (default 512, code-wide's d_model); a multiple of 128")
    parser.add_argument("--n", type=integer(16), default=1408,
                        help="output features (default 1408, code-wide's d_ff); a multiple of 16 (the cpu int4 packer)")
    parser.add_argument("--rows", type=integer(1), nargs="+", default=[1, 3],
                        help="rows per product (default 1 3: sequential decoding and a 3-group SPEED stage)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32", "bfloat16"],
                        help="activation dtypes (default float32 bfloat16)")
    parser.add_argument("--rounds", type=integer(1), default=5,
                        help="rounds of timing every form in turn; each form's best round counts (default 5)")
    parser.add_argument("--min-run-s", type=number(0.01), default=0.2,
                        help="seconds of calls per form and round (default 0.2)")
    parser.add_argument("--threads", type=integer(1), default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of the weights and inputs (default 0)")
    args = parser.parse_args(argv)
    if args.k % 128:
        parser.error(f"--k {args.k}: must be a multiple of 128 (every int4 group size divides it)")
    if args.n % 16:
        parser.error(f"--n {args.n}: must be a multiple of 16 (the cpu int4 packer's rows)")
    torch.set_num_threads(args.threads)
    print(f"projection {args.k} -> {args.n}, {args.threads} thread(s), torch {torch.__version__}")
    for dtype in args.dtypes:
        for rows in args.rows:
            results = measure(args.k, args.n, getattr(torch, dtype), rows, args.rounds, args.min_run_s, args.seed)
            print("\n".join(table(results, dtype, rows)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.experiments.quantkernels"))
