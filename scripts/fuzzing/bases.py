"""The shipped files the generators start from: hwconfigs, default traces, a measured trace."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from scripts.fuzzing.mutate import dumps

ROOT = Path(__file__).resolve().parents[2]
A100 = ROOT / "hwconfigs" / "a100.yaml"
H200_CALIBRATED = ROOT / "hwconfigs" / "h200-calibrated.yaml"
TRACE = ROOT / "data" / "traces" / "t5-base-4x3.speed.bf16.b1.t128.jsonl.gz"  # what most input cases project
DEFAULT_TRACES = sorted((ROOT / "data" / "traces").glob("*.jsonl.gz"))
# a tensor-parallel trace (format 5: header tp and tp_rank, collectives with their group size): tiny-4x3, TP 2
TP_TRACE = ROOT / "tests" / "data" / "tiny-4x3.speed.tp2.bf16.b1.t16.jsonl.gz"
MEASURED = ROOT / "data" / "measured" / "h200" / "t5-base-4.sequential.bf16.b1.t128.jsonl.gz"


def trace_lines(path: Path) -> list[bytes]:
    """The JSON lines of a gzip trace file."""
    return gzip.decompress(path.read_bytes()).splitlines()


def relative(path: Path) -> str:
    """`path` as the report names it: relative to the checkout where it lies in it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass
class Base:
    """A trace that mutations start from: its path, how the report names it, its JSON lines."""

    path: Path
    label: str = ""  # default: the path, relative to the checkout
    lines: list[bytes] = field(default_factory=list)  # default: read from the path

    def __post_init__(self) -> None:
        self.label = self.label or relative(self.path)
        self.lines = self.lines or trace_lines(self.path)


def first_stages(base: Base, stages: int) -> Base:
    """The first `stages` stages of a format-1 trace, its end record recounted (a base whose cases run fast)."""
    kept, n_ops, n_stages = [base.lines[0]], 0, 0
    for line in base.lines[1:]:
        kind = json.loads(line)["type"]
        if kind == "end" or n_stages == stages:
            break
        kept.append(line)
        n_ops += kind == "op"
        n_stages += kind == "stage"
    kept.append(dumps({"type": "end", "ops": n_ops, "stages": n_stages}))
    return Base(base.path, f"{base.label}, its first {stages} stages", kept)
