"""Hostile inputs, tried as a new user and an attacker would, thrown at the real command lines: each case runs
the command's `main(argv)` in a forked child (a time limit and an address-space limit: a hang or a memory bomb
costs one case), and its outcome is classified and tabulated per class of input.

    python scripts/fuzz.py                                  # every class, ~2,100 cases
    python scripts/fuzz.py --only inputs --show unclear traceback   # one group, and the cases behind two columns
    python scripts/fuzz.py --only trace --trace-cases 1000 --seed 3 --json out/fuzz.json
    python scripts/fuzz.py --only work outputs --match fifo "given twice"   # cases whose names hold either

Classes of input (--only takes classes or groups):

- inputs (scripts/fuzzing/inputs.py): hwconfig (hwconfigs mutated from hwconfigs/a100.yaml through
  `sim.run --hw`), cli (flag values, model configs and sweep specs through every command line that takes them),
  measured-header (a measured trace's header through `sim.fitting.validate`);
- traces (scripts/fuzzing/traces.py): trace (default traces mutated, through `sim.run --trace`), measured-trace
  (a measured trace mutated, through `sim.fitting.validate --measured`); drawn cases seeded by --seed;
- issue 22's classes, a generator each (a group of one class): work (work.py: sizes, counts, grids and models
  beyond any real run), outputs (outputs.py: the same file twice, an output over an input, unwritable places, a
  second output that fails), not-regular (special.py: pipes, sockets, devices, folders as every input),
  model-config (models.py: config.json and model YAML files), trace-fields (tracefields.py: the fields a
  projection does not use), measurements (measurements.py: measured times, microbenchmark results, devices),
  sweep-ray (sweeps.py: x factors, plots, --ray-address), flags (flags.py: seeds, flips, derived names, counts);
- parallel (parallel.py): tensor parallelism and quantization (sim.run --tp, the sweep's tp axis, a hwconfig's
  interconnect section, reference.demo --tp and --quant, the fields trace format 5 adds).

Outcomes (scripts/fuzzing/harness.py): accepted (exit 0, finite output, for an input that may be used); clear
error (non-zero exit, one short line last that names the file or flag, and the field where the case knows
it); unclear error; traceback; hang (the time limit, or killed by a signal: the memory limit); silently accepted
nonsense (exit 0 for an input that must be refused, NaN or infinity in the output, or a refusal that changed a
file the case protects). The table also gives each class's median and maximum seconds to a refusal.

Exit status 1 when any case is an unclear error, a traceback, a hang or silently accepted nonsense.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts.fuzzing import (  # noqa: E402 (after the checkout is on the path)
    flags,
    inputs,
    measurements,
    models,
    outputs,
    parallel,
    special,
    sweeps,
    tracefields,
    traces,
    work,
)
from scripts.fuzzing.harness import (  # noqa: E402
    FAILURES,
    SHORT,
    Case,
    Generator,
    listing,
    rows,
    run_cases,
    table,
)
from sim.command import check_outputs, integer, number, run_command  # noqa: E402
from sim.files import atomic_write  # noqa: E402

# issue 12's inputs and traces; issue 22's classes, one generator each; tensor parallelism and quantization
GENERATORS: tuple[Generator, ...] = (inputs.GENERATOR, traces.GENERATOR, work.GENERATOR, outputs.GENERATOR,
                                     special.GENERATOR, models.GENERATOR, tracefields.GENERATOR,
                                     measurements.GENERATOR, sweeps.GENERATOR, flags.GENERATOR, parallel.GENERATOR)
PROG = "python scripts/fuzz.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = [g.group for g in GENERATORS] + [kind for g in GENERATORS for kind in g.classes]
    parser.add_argument("--only", nargs="+", choices=choices, metavar="CLASS",
                        help=f"the classes of input, or groups of them, to try (of {', '.join(choices)}; default all)")
    parser.add_argument("--match", nargs="+", metavar="TEXT",
                        help="only the cases whose name contains one of these texts")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of the drawn cases (default 0)")
    parser.add_argument("--jobs", type=integer(1), default=2, help="cases run at once (default 2)")
    parser.add_argument("--timeout", type=number(0.1, 86400), default=60.0,
                        help="seconds before a case is a hang, for cases that set no limit of their own (default 60)")
    parser.add_argument("--show", nargs="*", choices=list(SHORT), default=["unclear", "traceback", "hang", "silent"],
                        metavar="OUTCOME", help=f"list the cases of these outcomes (of {', '.join(SHORT)}; default "
                        "unclear traceback hang silent; none: --show with no outcome)")
    parser.add_argument("--json", type=Path, help="write every case and its outcome here (atomically)")
    for generator in GENERATORS:
        generator.add_arguments(parser)
    return parser


def selected_cases(args: argparse.Namespace) -> tuple[list[Case], list[Case], dict[str, str]]:
    """(the controls, the cases, class -> table row) of the classes --only picks, filtered by --match."""
    only = set(args.only or [g.group for g in GENERATORS])
    used = [g for g in GENERATORS if g.group in only or only & g.classes.keys()]
    labels = {k: label for g in used for k, label in g.classes.items() if g.group in only or k in only}
    made = [c for g in used for c in g.cases(args) if c.kind in labels]
    cases = [c for c in made if not c.control and (args.match is None or any(m in c.name for m in args.match))]
    tried = {c.kind for c in cases}
    controls = [c for c in made if c.control and c.kind in tried]
    for generator in used:
        generator.preload()
    return controls, cases, labels


def check_controls(controls: list[Case], args: argparse.Namespace) -> None:
    """Every control (an unmutated base) must be accepted: else the fuzzing would judge the base, not the
    mutations."""
    failed = [r for r in run_cases(controls, args.jobs, args.timeout, desc="controls") if r.outcome != "accepted"]
    if failed:
        r = failed[0]
        raise SystemExit(f"{PROG}: error: a base does not run clean: {r.case.source} ({r.case.kind}): {r.outcome}: "
                         f"{r.message}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, {"--json": args.json})
    controls, cases, labels = selected_cases(args)
    check_controls(controls, args)
    results = run_cases(cases, args.jobs, args.timeout)
    print(f"\n{table(results, labels)}\n\n(seed {args.seed}; refused in s: from the command's start to its refusal, "
          "clear and unclear errors)")
    shown = [SHORT[s] for s in args.show]
    if any(r.outcome in shown for r in results):
        print("\n" + listing(results, shown))
    if args.json:
        text = json.dumps(rows(results), indent=1)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return 1 if any(r.outcome in FAILURES for r in results) else 0


if __name__ == "__main__":
    sys.exit(run_command(main, PROG))
