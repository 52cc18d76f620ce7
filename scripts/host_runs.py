"""The host's pace run by run in measured eager traces: whether two traces that differ in time differ in their ops.

    python scripts/host_runs.py --hw hwconfigs/h200-calibrated.yaml data/measured/h200/*.jsonl.gz

Per trace: its first stage (the encoder or the prompt's prefill) and its decode stages, each as ops per stage,
measured wall time per op (median over the stages, us), the kernels' measured device time, the spread of the timed
repeats (`extra.stage_wall_spread_s`, p90 - p10, over the stage's wall, median) and the projected stage error under
`--hw`; the end to end's fastest and slowest repeat over its median. Then the traces that run the same work (the
same aten ops with the same input shapes and dtypes, in the same order; the KV cache's zeros apart, whose shape is
the cache's depth) in their first stage, and in every decode stage, with their measured walls side by side. Same
work at different walls is a difference of the run (the machine's state while it ran), which no per-op cost
explains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from sim.engine import project
from sim.hardware import load_hwconfig
from sim.trace import Trace, read_checked

FIRST = ("encoder", "prefill")
DECODE = ("decode", "speed")


def work(trace: Trace, k: int) -> tuple:
    """Stage k's work as the host dispatches it: aten op, input shapes and dtypes, in order (memsets apart)."""
    ops = (trace.distinct[i] for i in trace.stage_op_ids[k])
    return tuple((op.op, str(op.in_shapes), str(op.in_dtypes)) for op in ops if op.kind != "memset")


def row(name: str, trace: Trace, errors: list[float], kinds: tuple[str, ...], label: str) -> str:
    """One line: the stages of `kinds`, as `label` (ops, wall per op, device, repeats' spread, projected error)."""
    ks = [k for k, s in enumerate(trace.stages) if s.kind in kinds and s.wall_s]
    spread = trace.header.extra.get("stage_wall_spread_s") or []
    walls = [trace.stages[k].wall_s for k in ks]
    per_op = statistics.median(w / len(trace.stage_op_ids[k]) * 1e6 for w, k in zip(walls, ks))
    device = statistics.median(sum(trace.distinct[i].duration_s or 0.0 for i in trace.stage_op_ids[k]) for k in ks)
    rel = statistics.median(spread[k] / trace.stages[k].wall_s for k in ks) if spread else float("nan")
    return (f"{name:42s} {label:8s} {len(ks):4d} {statistics.median(len(trace.stage_op_ids[k]) for k in ks):6.0f}"
            f" {statistics.median(walls) * 1e3:8.2f} {per_op:7.1f} {device * 1e3:8.3f} {rel:7.2f}"
            f" {statistics.median(errors[k] for k in ks):+7.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", required=True, help="hwconfig YAML to project the stages with")
    parser.add_argument("traces", nargs="+", type=Path, help="measured eager traces (.jsonl.gz)")
    args = parser.parse_args(argv)
    hw = load_hwconfig(args.hw)
    print(f"{'trace':42s} {'stages':8s} {'n':>4s} {'ops':>6s} {'wall ms':>8s} {'us/op':>7s} {'dev ms':>8s}"
          f" {'spread':>7s} {'error':>8s}   e2e min/med max/med")
    first, decode = defaultdict(list), defaultdict(list)
    for path in args.traces:
        trace, name = read_checked(path), path.name.removesuffix(".jsonl.gz")
        p = project(trace, hw, "eager")
        errors = [(c / p.clock_hz - s.wall_s) / s.wall_s * 100 if s.wall_s else 0.0
                  for s, c in zip(trace.stages, p.stage_cycles)]
        e2e = trace.header.extra["end_to_end_s"]
        print(row(name, trace, errors, FIRST, "first"))
        spread = f"   {e2e['min'] / e2e['median']:.3f} {e2e['max'] / e2e['median']:.3f}"
        print(row(name, trace, errors, DECODE, "decode") + spread)
        ks = [k for k, s in enumerate(trace.stages) if s.wall_s]
        first[work(trace, ks[0])].append((name, trace.stages[ks[0]].wall_s))
        dec = [k for k in ks if trace.stages[k].kind in DECODE]
        decode[tuple(work(trace, k) for k in dec)].append((name, sum(trace.stages[k].wall_s for k in dec)))
    for title, groups in (("the first stage", first), ("every decode stage", decode)):
        for same in (g for g in groups.values() if len(g) > 1):
            print(f"same work in {title}: " + ", ".join(f"{n} {w * 1e3:.2f} ms" for n, w in same))
    return 0


if __name__ == "__main__":
    sys.exit(main())
