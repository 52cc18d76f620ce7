"""The interconnect model against all-reduce measurements: the `all_reduce` rows of a microbenchmark
(reference.capture.microbench), read and checked; their (projected, measured) pairs for sim.fitting.validate; the
fit of a hwconfig's `interconnect` section to them, which sim.fitting.calibrate writes; and the model's table:

    python -m sim.fitting.collectives --hw a100 h100 a5000 a5000-nvlink l4 [--world-size 2 4 8] [--bytes 8192 ...]

A row is `{"world_size": n, "bytes": b, "dtype": "float16", "seconds": t}`: seconds per all-reduce of b bytes
among n ranks (extra keys, such as the spread of the trials, are kept and not read).

The fit minimises the error relative to each measurement (a soft-L1 loss: beyond ~20 % an error counts linearly,
so that a trial a busy machine stretched does not pull the fit). GPUs (NCCL): `efficiency` (the share of the
link's line rate the collective moves) on a grid, because it reaches NCCL's model through the channel search, a
step function of the bandwidth, and for each candidate `collective_latency_s` (never negative). Loopback (gloo):
the model is linear in its three figures, so `collective_latency_s`, `step_latency_s` and the inverse of the
bandwidth come from one non-negative solve; the bandwidth is a measurement there
(no datasheet line rate), so `link_bandwidth_bytes_per_s` takes it and `efficiency` stays as it was. Rows are
split by size: every third distinct size (the 2nd, 5th, 8th, ...) is held out of the fit, and the report gives the
median absolute error on the sizes fitted and on those held out.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares, nnls

from sim.command import integer, run_command
from sim.defaults import resolve_hwconfig
from sim.hardware import BANDWIDTH_BYTES_PER_S, DTYPES, SECONDS, HwConfig, HwConfigError, Interconnect, load_hwconfig
from sim.inputs import brief
from sim.interconnect import COLLECTIVES, check_request, collective_time, gloo_segments, interconnect_of
from sim.opkinds import DTYPE_BYTES

EFFICIENCY_GRID = np.geomspace(1e-4, 1.0, 321)  # 1.2 % steps: finer than any microbenchmark resolves
HELD_OUT_EVERY = 3  # every third distinct size is held out of the fit
# seconds per call: below a nanosecond no clock resolves it (and a relative error divides by it), above 1000 s no
# all-reduce of a microbenchmark's sizes was measured
MEASURED_S = (1e-9, 1e3)


@dataclass(frozen=True)
class AllReduceRow:
    world_size: int
    nbytes: int
    dtype: str
    seconds: float


def all_reduce_rows(mb: dict[str, Any]) -> list[AllReduceRow]:
    """The microbenchmark's all_reduce rows, checked: ValueError naming the row and the field otherwise."""
    raw = mb.get("all_reduce", [])
    if not isinstance(raw, list):
        raise ValueError(f"all_reduce: expected a list of rows, got {brief(raw)}")
    rows = []
    for i, row in enumerate(raw):
        where = f"all_reduce[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a mapping, got {brief(row)}")
        for key in ("world_size", "bytes", "dtype", "seconds"):
            if key not in row:
                raise ValueError(f"{where}.{key}: missing")
        n, nbytes, dtype, seconds = row["world_size"], row["bytes"], row["dtype"], row["seconds"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"{where}.world_size: expected an integer >= 2, got {brief(n)}")
        if dtype not in DTYPES:
            raise ValueError(f"{where}.dtype: expected one of {', '.join(DTYPES)}, got {brief(dtype)}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
            raise ValueError(f"{where}.bytes: expected an integer >= 1, got {brief(nbytes)}")
        try:
            check_request("all_reduce", nbytes, n, dtype)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
        if not ok or not MEASURED_S[0] <= seconds <= MEASURED_S[1]:
            raise ValueError(f"{where}.seconds: expected seconds in [{MEASURED_S[0]:g}, {MEASURED_S[1]:g}], got "
                             f"{brief(seconds)}")
        rows.append(AllReduceRow(n, nbytes, dtype, float(seconds)))
    return rows


def beyond_the_node(rows: list[AllReduceRow], hw: HwConfig) -> tuple[list[AllReduceRow], list[AllReduceRow]]:
    """(rows the hwconfig's interconnect describes, rows of more ranks than its devices_per_node): a loopback
    node is the host's cores, and more ranks than cores measured the scheduler (a GPU node: more GPUs than one node
    has, which the model refuses). Without an interconnect section every row is kept (and refused later)."""
    ic = hw.interconnect
    if ic is None:
        return rows, []
    return ([r for r in rows if r.world_size <= ic.devices_per_node],
            [r for r in rows if r.world_size > ic.devices_per_node])


def all_reduce_pairs(rows: list[AllReduceRow], hw: HwConfig) -> dict[str, list[tuple[float, float]]]:
    """(projected, measured) seconds: "all_reduce" over every row, and "all_reduce xN" per world size."""
    out: dict[str, list[tuple[float, float]]] = {"all_reduce": []}
    for row in rows:
        pair = (collective_time("all_reduce", row.nbytes, row.world_size, row.dtype, hw).time_s, row.seconds)
        out["all_reduce"].append(pair)
        out.setdefault(f"all_reduce x{row.world_size}", []).append(pair)
    return {k: out[k] for k in ["all_reduce", *sorted((k for k in out if k != "all_reduce"),
                                                      key=lambda k: int(k.split("x")[-1]))]}


def split_rows(rows: list[AllReduceRow]) -> tuple[list[AllReduceRow], list[AllReduceRow]]:
    """(fitted, held out): every HELD_OUT_EVERY-th distinct size, starting with the second, is held out."""
    sizes = sorted({r.nbytes for r in rows})
    held = {s for i, s in enumerate(sizes) if i % HELD_OUT_EVERY == 1}
    return [r for r in rows if r.nbytes not in held], [r for r in rows if r.nbytes in held]


def _messages(row: AllReduceRow) -> int:
    """gloo's ring all-reduce: messages each rank sends (sim.interconnect.gloo_cost)."""
    segments = gloo_segments(row.nbytes, row.world_size)
    return 2 * (segments - segments // row.world_size)


def _robust_nonnegative(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """(loss, x >= 0) minimising a soft-L1 loss of a @ x - b (residuals are relative errors: beyond ~20 % they
    count linearly, so that a trial the busy machine stretched, or one that ran alone, does not pull the fit),
    started from the least-squares solution."""
    start, _ = nnls(a, b)
    fit = least_squares(lambda x: a @ x - b, start, bounds=(0.0, np.inf), loss="soft_l1", f_scale=0.2)
    return float(fit.cost), fit.x


def _fit_latency(hw: HwConfig, rows: list[AllReduceRow], ic: Interconnect) -> tuple[float, float]:
    """(loss, collective_latency_s) at `ic`'s efficiency: the fixed latency that best explains the rows on top of
    NCCL's model, not negative."""
    trial = dataclasses.replace(hw, interconnect=dataclasses.replace(ic, collective_latency_s=0.0))
    measured = np.array([r.seconds for r in rows])
    base = np.array([collective_time("all_reduce", r.nbytes, r.world_size, r.dtype, trial).time_s for r in rows])
    loss, x = _robust_nonnegative((1 / measured)[:, None], (measured - base) / measured)
    return loss, min(float(x[0]), SECONDS[1])


def _fit_loopback(rows: list[AllReduceRow], ic: Interconnect) -> Interconnect:
    """gloo's figures: seconds = collective + messages x step + bytes sent / bandwidth, solved at once. Where every
    row sends as many messages (one world size, buffers of at most 2n MiB) the two latencies cannot be told apart:
    all of it is taken per message, so that larger groups pay for their longer ring."""
    measured = np.array([r.seconds for r in rows])
    sent = np.array([2 * (r.world_size - 1) / r.world_size * r.nbytes for r in rows])
    messages = np.array([_messages(r) for r in rows], float)
    columns = np.stack([np.ones(len(rows)), messages, sent], axis=1)
    keep = [0, 1, 2] if np.ptp(messages) > 0 else [1, 2]
    _, solution = _robust_nonnegative(columns[:, keep] / measured[:, None], np.ones(len(rows)))
    fixed, step, inverse = np.insert(solution, 0, 0.0) if len(keep) == 2 else solution
    # no cost per byte seen (too few or too small sizes): the bandwidth is not measured, and stays
    bandwidth = 1 / (inverse * ic.efficiency) if inverse > 0 else ic.link_bandwidth_bytes_per_s
    return dataclasses.replace(ic, collective_latency_s=min(float(fixed), SECONDS[1]),
                               step_latency_s=min(float(step), SECONDS[1]),
                               link_bandwidth_bytes_per_s=float(np.clip(bandwidth, *BANDWIDTH_BYTES_PER_S)))


def fit_interconnect(hw: HwConfig, rows: list[AllReduceRow]) -> Interconnect:
    """`hw`'s interconnect fitted to `rows` (see the module docstring): NCCL's efficiency and collective latency,
    or gloo's latencies and bandwidth."""
    ic = interconnect_of(hw, max(r.world_size for r in rows))
    if ic.kind == "loopback":
        return _fit_loopback(rows, ic)
    trials = []
    for efficiency in EFFICIENCY_GRID:
        trial = dataclasses.replace(ic, efficiency=float(efficiency))
        loss, latency = _fit_latency(hw, rows, trial)
        trials.append((loss, dataclasses.replace(trial, collective_latency_s=latency)))
    return min(trials, key=lambda t: t[0])[1]


def median_abs_pct(pairs: list[tuple[float, float]]) -> float:
    """Median of |projected / measured - 1| in %; NaN without pairs."""
    return statistics.median(abs(100 * (p / m - 1)) for p, m in pairs) if pairs else math.nan


def calibrate_interconnect(hw: HwConfig, rows: list[AllReduceRow], source: str) -> tuple[dict, dict, dict]:
    """(interconnect section, its sources, report) fitted to the fitted split of `rows` (split_rows), with the
    median absolute error on both splits."""
    rows, beyond = beyond_the_node(rows, hw)
    if not rows:
        raise ValueError(f"{source}: no all_reduce row of at most {hw.interconnect.devices_per_node} ranks "
                         f"(interconnect.devices_per_node of {hw.path}) to fit")
    fit_rows, held_rows = split_rows(rows)
    ic = fit_interconnect(hw, fit_rows)
    fitted = dataclasses.replace(hw, interconnect=ic)
    errors = {name: median_abs_pct(all_reduce_pairs(part, fitted)["all_reduce"]) if part else math.nan
              for name, part in (("fit", fit_rows), ("held_out", held_rows))}
    sizes = sorted({r.nbytes for r in held_rows})
    note = (f"fitted: {len(fit_rows)} all_reduce rows of {source} (world sizes "
            f"{', '.join(str(n) for n in sorted({r.world_size for r in rows}))}); sizes {', '.join(map(str, sizes))} "
            f"bytes held out; median |e| {errors['fit']:.1f}% fitted, {errors['held_out']:.1f}% held out"
            + (f"; {len(beyond)} rows of more ranks than devices_per_node left out" if beyond else ""))
    section = {k: v for k, v in dataclasses.asdict(ic).items() if v is not None}
    names = (["link_bandwidth_bytes_per_s", "collective_latency_s", "step_latency_s"] if ic.kind == "loopback" else
             ["efficiency", "collective_latency_s"])
    report = {"interconnect": {k: section[k] for k in names},
              "rows": {"fit": len(fit_rows), "held_out": len(held_rows), "beyond_the_node": len(beyond)},
              "median_abs_pct": errors}
    return section, {f"interconnect.{k}": note for k in names}, report


def table(hws: list[HwConfig], world_sizes: list[int], sizes: list[int], kind: str, dtype: str) -> list[dict]:
    """The model's time for every (hwconfig, world size, size), with its algorithm and bound; a group larger than
    the hwconfig's node is left out (`refused` says why)."""
    out = []
    for hw in hws:
        for n in world_sizes:
            for nbytes in sizes:
                try:
                    cost = collective_time(kind, nbytes, n, dtype, hw)
                except HwConfigError as err:
                    out.append({"hw": hw.name, "world_size": n, "bytes": nbytes, "refused": err.field})
                    continue
                out.append({"hw": hw.name, "world_size": n, "bytes": nbytes, "seconds": cost.time_s,
                            "algorithm": cost.algorithm, "protocol": cost.protocol, "bound": cost.bound})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.fitting.collectives", description=(
        "The interconnect model's time per collective on hwconfigs, with the algorithm and protocol NCCL would pick "
        "and what bounds it (python -m sim.fitting.collectives --hw a100 h100 a5000 a5000-nvlink l4)."))
    parser.add_argument("--hw", nargs="+", required=True, help="hwconfigs (paths or shipped names) with an "
                        "interconnect section")
    parser.add_argument("--world-size", type=integer(1, 1 << 16), nargs="+", default=[2, 4, 8], metavar="N",
                        help="ranks of the group (default 2 4 8)")
    parser.add_argument("--bytes", type=integer(0), nargs="+", default=[8 << 10, 64 << 10, 1 << 20], metavar="B",
                        help="bytes of the collective's buffer (default 8 KiB, 64 KiB, 1 MiB)")
    parser.add_argument("--kind", choices=COLLECTIVES, default="all_reduce", help="collective (default all_reduce)")
    parser.add_argument("--dtype", choices=list(DTYPE_BYTES), default="bfloat16", help="element type (default "
                        "bfloat16)")
    args = parser.parse_args(argv)
    try:
        hws = [load_hwconfig(resolve_hwconfig(name)) for name in args.hw]
        rows = table(hws, args.world_size, args.bytes, args.kind, args.dtype)
    except ValueError as err:  # a HwConfigError, a request the model refuses (bytes not whole elements)
        parser.error(str(err))
    print(f"{'hwconfig':<44}{'n':>4}{'bytes':>10}{'us':>10}  algorithm      bound")
    for r in rows:
        head = f"{r['hw'][:43]:<44}{r['world_size']:>4}{r['bytes']:>10}"
        if "refused" in r:
            print(f"{head}{'-':>10}  refused ({r['refused']})")
        else:
            print(f"{head}{r['seconds'] * 1e6:>10.2f}  {r['algorithm'] + '/' + r['protocol']:<14} {r['bound']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.fitting.collectives"))
