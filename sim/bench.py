"""Simulator speed: kernels simulated per second on the default run and on a Llama-2-7B-shaped SPEED run.

    python -m sim.bench [--tokens 128] [--llama-tokens 64] [--hw hwconfigs/a100.yaml]

Prints, per workload, the time to read the traces, to build kernels and to project them, and kernels per
second; and the whole default four-configuration run as `python -m sim.run` does it (target: 3 s on one core),
in wall time and in this process's CPU time (the steadier figure on a shared machine).
Traces other than the committed defaults are made on demand (meta device, needs torch, cached).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sim.command import integer, run_command
from sim.defaults import DEFAULT_RUNS, DEFAULT_TOKENS, default_trace
from sim.engine import kernels_of, project
from sim.hardware import HWCONFIG_DIR, load_hwconfig
from sim.run import MAX_STREAMS, trace_on_demand
from sim.trace import read_trace


def bench(label: str, paths: list[Path], hw_path: Path, streams: int = 1) -> float:
    hw = load_hwconfig(hw_path)
    t0 = time.perf_counter()
    traces = [read_trace(p) for p in paths]
    t1 = time.perf_counter()
    kernels = [kernels_of(t, hw) for t in traces]
    t2 = time.perf_counter()
    projections = [project(t, hw, "graph" if streams > 1 else "eager", k, streams) for t, k in zip(traces, kernels)]
    t3 = time.perf_counter()
    n = sum(len(t.ops) for t in traces)
    simulated = sum(p.stats["stages_simulated"] for p in projections)
    stages = sum(p.stats["stages"] for p in projections)
    print(f"{label}: {n} kernels in {stages} stages ({simulated} simulated, the rest provably identical); read "
          f"{t1 - t0:.2f} s, build {t2 - t1:.2f} s, project {t3 - t2:.2f} s: {n / (t3 - t1):,.0f} kernels/s "
          f"simulated, {n / (t3 - t0):,.0f} kernels/s with reading; total {t3 - t0:.2f} s")
    return t3 - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=integer(1), default=DEFAULT_TOKENS,
                        help=f"tokens of the default workload (default {DEFAULT_TOKENS}: the committed traces)")
    parser.add_argument("--llama-tokens", type=integer(0), default=64, help="tokens of the Llama-2-7B 8x4 SPEED run "
                        "(default 64; 0 skips it)")
    parser.add_argument("--hw", type=Path, default=HWCONFIG_DIR / "a100.yaml", help="hwconfig (default a100)")
    parser.add_argument("--streams", type=integer(1, MAX_STREAMS), default=4,
                        help="also time the default workload with graph launch and "
                        "this many kernels at once (the overlap model; default 4; 1 skips it)")
    args = parser.parse_args(argv)

    if args.tokens == DEFAULT_TOKENS:
        paths = [default_trace(p, d) for p, d in DEFAULT_RUNS]
    else:
        paths = [trace_on_demand(p, d, args.tokens, 1, "bfloat16", None) for p, d in DEFAULT_RUNS]
    bench(f"default four configurations, {args.tokens} tokens", paths, args.hw)
    if args.streams > 1:
        bench(f"default four configurations, {args.tokens} tokens, graph launch, {args.streams} streams", paths,
              args.hw, args.streams)
    if args.llama_tokens:
        path = trace_on_demand("llama2-7b-8x4", "speed", args.llama_tokens, 1, "bfloat16", "0.09,0.04,0.02")
        bench(f"llama2-7b-8x4 SPEED, {args.llama_tokens} tokens", [path], args.hw)

    from sim import run

    t0, cpu0 = time.perf_counter(), time.process_time()
    run.main(["--hw", str(args.hw)] + ([] if args.tokens == DEFAULT_TOKENS else ["--tokens", str(args.tokens)]))
    print(f"\nwhole default run (python -m sim.run --hw {args.hw.name}, after imports): "
          f"{time.perf_counter() - t0:.2f} s wall, {time.process_time() - cpu0:.2f} s CPU (target <= 3 s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.bench"))
