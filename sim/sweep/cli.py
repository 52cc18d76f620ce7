"""Sweep a design space: every point of a spec projected on Ray, one row per point, resumable, with plots.

    python -m sim.sweep SPEC.yaml --out DIR

The spec (YAML; `sim/sweep/spec.py` documents it, README.md has an example) is a grid, or a list, over
hwconfigs, models (presets, Hugging Face config.json files, model YAML files), shared variants (NdxG), decoders,
launch modes, batch, tokens, dtypes, flip profiles or rates, streams, tensor-parallel degrees (tp) and hwconfig
fields (`set:`, absolute or "x0.5" relative to the hwconfig). Each point is projected exactly as
`python -m sim.run` projects it.

DIR gets rows.jsonl (every field of `sim.run --json` per point, plus the point, its device memory, a status
and, for SPEED, the speedup over the same configuration decoded sequentially), rows.csv (the same, flattened),
journal.jsonl (the finished points, appended as they finish: rerunning the command skips them, and a killed
sweep loses none), speedup.png (SPEED's speedup over two swept axes) and, where the spec gives costs or
accuracies, latency-cost.png and latency-accuracy.png. Points whose run does not fit the device's memory are
rows with status "does not fit". The rows are in spec order and the same whatever the number of workers.

Needs Ray (pip install 'speed-sim[sweep]'); traces made on demand need torch (the reference decoder, reached
through the trace provider: sim.provider).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from sim.command import check_outputs, integer
from sim.files import staged_writes
from sim.provider import ProviderError
from sim.run import parse_sets
from sim.sweep.journal import JOURNAL, ROWS_CSV, ROWS_JSONL, Journal, write_rows
from sim.sweep.plots import PLOT_FILES, plot_all
from sim.sweep.points import Job, resolve
from sim.sweep.runner import (
    ADDRESS_FORMS,
    LOCAL_WORKERS_PER_CPU,
    MAX_WORKERS,
    SweepError,
    Timing,
    check_address,
    import_ray,
    run_jobs,
    start_ray,
)
from sim.sweep.spec import Point, Spec, SpecError, load_spec

OUTPUT_FILES = (JOURNAL, ROWS_JSONL, ROWS_CSV, *PLOT_FILES)  # what a sweep writes into --out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="the sweep spec (YAML): a grid or a list of points")
    parser.add_argument("--out", type=Path, help="output folder (rows, journal, plots); rerunning with the same "
                        "folder resumes, skipping the points already there. Required unless --list or --bench")
    parser.add_argument("--workers", type=integer(1, MAX_WORKERS), help="worker processes projecting points "
                        f"(default: every CPU of the local machine or of the cluster; at most {LOCAL_WORKERS_PER_CPU} "
                        "per core of this machine, or the cluster's CPUs)")
    parser.add_argument("--ray-address", help=f"a running Ray cluster to use: {ADDRESS_FORMS}; default: start Ray "
                        "on this machine. The cluster's nodes need speed-sim installed (README: Sweeps on a cluster)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hwconfig "
                        "field at every point, as sim.run --set (repeatable; a spec axis of the same field wins)")
    parser.add_argument("--list", action="store_true", help="print the points and exit (nothing is run)")
    parser.add_argument("--no-plots", action="store_true", help="write the rows only")
    parser.add_argument("--bench", type=integer(1, MAX_WORKERS), nargs="+", metavar="WORKERS",
                        help="measure points per second with each of these worker counts (e.g. --bench 1 2): every "
                        "point projected afresh per count, traces built once, nothing written to --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def spec_files(spec: Spec) -> dict[str, list[Path]]:
    """The files a spec names (its hwconfigs and models that are files), by the axis that names them."""
    return {f"the spec's {axis}": [Path(v) for v in dict.fromkeys(getattr(p, axis) for p in spec.points)
                                   if Path(v).is_file()] for axis in ("hw", "model")}


def with_cli_sets(spec: Spec, sets: dict[str, str]) -> Spec:
    """The spec with the command line's --set added to every point (where the spec does not set the field)."""
    if not sets:
        return spec
    for i, p in enumerate(spec.points):
        merged = {**sets, **dict(p.sets)}
        spec.points[i] = Point(**{**p.__dict__, "sets": tuple(sorted(merged.items()))})
    return spec


def print_points(jobs: list[Job]) -> None:
    for job in jobs:
        p = job.point
        sets = " ".join(f"{k}={v}" for k, v in p.sets)
        print(f"{job.index:>5}  {p.hw:<10} {job.trace.name:<22} {p.decoder:<10} {p.launch:<8} b{p.batch:<3} "
              f"t{p.tokens:<4} {p.dtype:<8} flips {job.trace.flips or '-'}  {sets}")
    print(f"{len(jobs)} points")


def finished_rows(jobs: list[Job], journal: Journal, spec: Spec) -> list[dict[str, Any]]:
    """The rows of the spec's points, in spec order, with the spec's costs and accuracies beside them."""
    rows = []
    for job in jobs:
        row = dict(journal.done[job.key], index=job.index)
        price = spec.cost.get(job.point.hw)
        if price is not None and row["status"] == "ok":
            row["cost_per_million_tokens"] = price / 3600 * row["s_per_token"] * 1e6
        if row.get("model") in spec.accuracy:
            row["accuracy"] = spec.accuracy[row["model"]]
        rows.append(row)
    return rows


def report(timing: Timing, rows: list[dict[str, Any]]) -> str:
    status = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    counts = ", ".join(f"{n} {s}" for s, n in status.items())
    if not timing.points:
        return f"{len(rows)} points ({counts}), all already done"
    return (f"{len(rows)} points ({counts}); projected {timing.points} in {timing.project_s:.1f} s with "
            f"{timing.workers} workers: {timing.points / timing.project_s:.2f} points/s "
            f"({timing.traces} traces built or read in {timing.trace_s:.1f} s before)")


def bench(jobs: list[Job], counts: list[int], progress: bool) -> None:
    """Points per second per worker count, each a fresh projection of every point (traces built once)."""
    rates = {}
    for workers in counts:
        with tempfile.TemporaryDirectory() as tmp:
            journal = Journal(Path(tmp))
            timing = run_jobs(jobs, journal, workers, progress)
            journal.close()
        rates[workers] = timing.points / timing.project_s
        print(f"{workers} worker{'s' if workers > 1 else ''}: {timing.points} points in {timing.project_s:.1f} s: "
              f"{rates[workers]:.2f} points/s (traces {timing.trace_s:.1f} s before)", flush=True)
    if len(rates) > 1:
        first = rates[counts[0]]
        ratios = ", ".join(f"{w}: {r / first:.2f}x" for w, r in rates.items())
        print(f"points per second relative to {counts[0]} worker(s): {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and not (args.list or args.bench):
        parser.error("--out DIR is required (the folder the rows, journal and plots go to)")
    try:
        if args.ray_address is not None:
            check_address(args.ray_address)
    except ValueError as err:
        parser.error(str(err))
    outputs = {"--out": None if args.list or args.bench else args.out}
    check_outputs(parser, outputs, folders={"--out": OUTPUT_FILES}, inputs={"the spec": [args.spec]})
    ray = None if args.list else import_ray()  # first: without Ray, say how to install it before anything else
    try:
        spec = with_cli_sets(load_spec(args.spec), parse_sets(args.set, parser))
        check_outputs(parser, outputs, folders={"--out": OUTPUT_FILES}, inputs=spec_files(spec))
        jobs = resolve(spec.points, str(args.spec))
    except (SpecError, ProviderError) as err:  # ProviderError: no trace provider to describe the models
        parser.error(str(err))
    if args.list:
        print_points(jobs)
        return 0
    try:
        workers = start_ray(args.ray_address, max([args.workers or 0, *(args.bench or [])]) or None)
    except ValueError as err:  # an address that cannot be joined, more workers than can run
        parser.error(str(err))
    progress = not args.quiet
    try:
        if args.bench:
            bench(jobs, args.bench, progress)
            return 0
        journal = Journal(args.out)
        try:
            timing = run_jobs(jobs, journal, workers, progress)
        finally:
            journal.close()
    except (SweepError, ray.exceptions.RayError) as err:
        print(f"error: {err} (finished points are kept in {args.out}; rerun to resume)", file=sys.stderr)
        return 1
    rows = finished_rows(jobs, journal, spec)
    with staged_writes():  # rows and plots all or none (the journal keeps every finished point regardless)
        write_rows(args.out, rows)
        plotted = [] if args.no_plots else plot_all(rows, spec, args.out)
    print(report(timing, rows))
    for line in plotted:
        print(line)
    return 0
