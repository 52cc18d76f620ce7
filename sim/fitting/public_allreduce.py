"""The independent check of the interconnect model: datasheet hwconfigs, never fitted, against public all-reduce
measurements (no GPU, no network).

    python -m sim.fitting.public_allreduce [--a100 hwconfigs/a100.yaml] [--h100 hwconfigs/h100.yaml] [--json OUT]

- Vidur's profiled all-reduce times on a DGX A100 and a DGX H100 (microsoft/vidur, data/profiling/network,
  copied to data/public/vidur-allreduce/ with its MIT license): the NCCL kernel's time from the profiler
  (torch.distributed.all_reduce of float16, CUDA graphs off), per size from 2 KiB to 64 MiB and 2, 4 and 8 GPUs
  of one node; per row the median and the minimum of three measurements. The project keeps them as its check on
  the interconnect model and never fits to them.
- Published small-message figures (data/public/allreduce-published.csv, each row with its source): 8 H100 through
  torch.distributed, 8 H20 (NVLink 4 and NVSwitch as the H100) through nccl-tests, 4 RTX A5000 over PCIe.

The report gives, per GPU and world size, the error of the model against Vidur's medians and minima (all sizes,
and the batch-1 decoding band up to 64 KiB), then against each published figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from sim.command import check_outputs, run_command
from sim.defaults import CHECKOUT
from sim.files import atomic_write
from sim.fitting.validate import json_safe, metrics, print_report
from sim.hardware import HwConfig, load_hwconfig
from sim.interconnect import collective_time

DATA = CHECKOUT / "data" / "public"
VIDUR = {"a100": DATA / "vidur-allreduce" / "a100_dgx.all_reduce.csv",
         "h100": DATA / "vidur-allreduce" / "h100_dgx.all_reduce.csv"}
PUBLISHED = DATA / "allreduce-published.csv"
DECODE_BAND_BYTES = 64 << 10  # batch-1 decoding's all-reduces: 8-64 KiB


def _csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError as err:
        raise ValueError(f"public measurements {path}: {err.strerror}") from None


def vidur_rows(path: Path) -> list[dict[str, Any]]:
    """One node's rows (num_workers == devices_per_node) of a Vidur all_reduce.csv: world size, bytes, and the
    median and minimum time in seconds (Vidur writes milliseconds)."""
    out = []
    for row in _csv(path):
        if row["num_workers"] != row["devices_per_node"]:
            continue
        out.append({"world_size": int(row["num_workers"]), "bytes": int(row["size"]),
                    "median_s": float(row["time_stats.all_reduce.median"]) * 1e-3,
                    "min_s": float(row["time_stats.all_reduce.min"]) * 1e-3})
    return out


def vidur_report(gpu: str, hw: HwConfig) -> dict[str, dict[str, float]]:
    """Error statistics of the model on `hw` against Vidur's rows of `gpu`: per world size, against the medians
    and the minima, over every size and over the decoding band."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for row in vidur_rows(VIDUR[gpu]):
        model = collective_time("all_reduce", row["bytes"], row["world_size"], "float16", hw).time_s
        for stat in ("median", "min"):
            key = f"x{row['world_size']} vs {stat}"
            pairs.setdefault(key, []).append((model, row[f"{stat}_s"]))
            if row["bytes"] <= DECODE_BAND_BYTES:
                pairs.setdefault(f"{key} <=64K", []).append((model, row[f"{stat}_s"]))
    return {key: metrics(pairs[key]) for key in sorted(pairs, key=lambda k: (k.split()[0], "<=" in k, k))}


def published_report(hws: dict[str, HwConfig]) -> list[dict[str, Any]]:
    """The model beside every published figure whose hwconfig is given."""
    out = []
    for row in _csv(PUBLISHED):
        if row["hwconfig"] not in hws:
            continue
        n, nbytes, measured = int(row["world_size"]), int(row["bytes"]), float(row["seconds"])
        cost = collective_time("all_reduce", nbytes, n, row["dtype"], hws[row["hwconfig"]])
        out.append({"system": row["system"], "world_size": n, "bytes": nbytes, "measured_s": measured,
                    "model_s": cost.time_s, "algorithm": f"{cost.algorithm}/{cost.protocol}",
                    "error_pct": 100 * (cost.time_s / measured - 1), "tool": row["tool"], "source": row["source"]})
    return out


def _print_published(rows: list[dict[str, Any]]) -> None:
    print("\npublished all-reduce times (model: datasheet hwconfig, not fitted)")
    print(f"{'system':<34}{'n':>3}{'bytes':>9}{'measured us':>13}{'model us':>10}{'e%':>8}  algorithm")
    for r in rows:
        print(f"{r['system'][:33]:<34}{r['world_size']:>3}{r['bytes']:>9}{r['measured_s'] * 1e6:>13.2f}"
              f"{r['model_s'] * 1e6:>10.2f}{r['error_pct']:>+8.1f}  {r['algorithm']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.fitting.public_allreduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a100", type=Path, default=Path("hwconfigs/a100.yaml"),
                        help="hwconfig judged against Vidur's DGX A100 rows (default hwconfigs/a100.yaml)")
    parser.add_argument("--h100", type=Path, default=Path("hwconfigs/h100.yaml"),
                        help="hwconfig judged against Vidur's DGX H100 rows and the published H100/H20 figures "
                        "(default hwconfigs/h100.yaml)")
    parser.add_argument("--a5000", type=Path, default=Path("hwconfigs/a5000.yaml"),
                        help="hwconfig judged against the published 4x RTX A5000 PCIe figure "
                        "(default hwconfigs/a5000.yaml)")
    parser.add_argument("--json", type=Path, help="write the statistics and the published comparison as JSON")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--json": args.json})
    try:
        hws = {name: load_hwconfig(getattr(args, name)) for name in ("a100", "h100", "a5000")}
        reports = {gpu: vidur_report(gpu, hws[gpu]) for gpu in VIDUR}
        published = published_report(hws)
    except ValueError as err:  # a HwConfigError (no interconnect section, too few devices), a missing data file
        parser.error(str(err))
    for gpu, report in reports.items():
        print_report(f"Vidur {gpu}_dgx all_reduce (NCCL kernel time, fp16) vs the model on {hws[gpu].name} "
                     f"({hws[gpu].path})", report)
    _print_published(published)
    if args.json:
        text = json.dumps(json_safe({"vidur": reports, "published": published}), indent=1, allow_nan=False)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.fitting.public_allreduce"))
