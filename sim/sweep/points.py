"""From sweep points to rows: what each point needs (its hwconfig, its trace), and its projection, Ray-free.

The driver resolves every point once (`resolve`): the hwconfig with its overrides, and, from one `describe` call
of the trace provider (sim.provider) for all points, the model config with its sharing and the flips its trace
is made with; hence the trace it replays (`TraceKey`: the same key for every point that replays the same run, so
each trace is built once, and the `trace` request that builds it, which carries the model's fields so that a
worker needs none of the driver's files). Workers hold a `Projector`, which projects the points of one
configuration (every decoder of it) exactly as `python -m sim.run` does (same fusion, kernels, projection and
summary), caching traces, fused traces and kernels across the points it is given.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.defaults import resolve_hwconfig
from sim.engine import kernels_of, project
from sim.fusion import fuse
from sim.hardware import HwConfig, load_hwconfig, to_dict
from sim.interconnect import interconnect_of
from sim.memory import CapacityError, DeviceMemory, check_fits, device_memory, run_name
from sim.provider import ProviderError, request
from sim.run import summarize
from sim.sweep.spec import SCALE, Point, SpecError
from sim.trace import Trace, read_trace

SIM_SOURCES = ("trace/*", "opkinds", "hardware", "interconnect", "kernels", "fusion", "engine", "memory",
               "run")  # trace: a package


def sim_revision() -> str:
    """A hash of the simulator sources a row depends on: rows of another revision are not reused."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for name in SIM_SOURCES:
        for path in sorted(root.glob(f"{name}.py")) or [root / f"{name}.py"]:  # none: reading it raises
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class TraceKey:
    """One traced run, as the trace provider's `trace` op is asked for it; equal for the same model config
    (`digest`), however the spec named it."""

    name: str = field(compare=False)  # the model's
    config: str = field(compare=False)  # the model's fields (JSON), as the provider described them
    digest: str
    decoder: str
    tokens: int
    batch: int
    dtype: str
    flips: str | None
    compiled: bool
    tp: int = 1
    quant: str | None = None

    def request(self) -> dict[str, Any]:
        """The `trace` request of this run."""
        return {"model": json.loads(self.config), "decoder": self.decoder, "tokens": self.tokens,
                "batch": self.batch, "dtype": self.dtype, "flips": self.flips, "compiled": self.compiled,
                "tp": self.tp, "quant": self.quant}


@dataclass(frozen=True)
class Job:
    """A resolved point: its index in the spec, the hwconfig it runs on and the trace it replays."""

    index: int
    point: Point
    key: str  # identifies the point's inputs in the journal (resumed sweeps skip what is done)
    hw: HwConfig
    trace: TraceKey


def overrides(point: Point, hw: HwConfig, where: str) -> dict[str, str]:
    """The point's hwconfig overrides, "x<factor>" scaled by the hwconfig's own value, as sim.run --set takes them."""
    raw = to_dict(hw)
    out = {}
    for name, value in point.sets:
        scale = SCALE.fullmatch(value)
        if scale:
            node: Any = raw
            for part in name.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, (int, float)) or isinstance(node, bool):
                raise SpecError(where, f"set.{name}", f"{hw.path} has no number there to scale")
            scaled = node * float(scale[1])
            if not math.isfinite(scaled):
                raise SpecError(where, f"set.{name}", f"{value} times {hw.path}'s {node:g} is beyond a finite number")
            value = repr(round(scaled) if isinstance(node, int) else scaled)
        out[name] = value
    return out


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe(points: list[Point]) -> dict[tuple, dict[str, Any]]:
    """The trace provider's description of every distinct (model, share, decoder, flips, flip_rate, tp, quant) of
    `points`, in one call: the model's name, fields and digest, the weight scheme and the flips its trace is made
    with, or an error (a degree the model cannot be sharded over, a scheme it cannot take, among them)."""
    asked = list(dict.fromkeys((p.model, p.share, p.decoder, p.flips, p.flip_rate, p.tp, p.quant) for p in points))
    answers = request("describe", [{"model": model, "share": share, "flag": "model", "decoder": decoder,
                                    "flips": flips, "flip_rate": flip_rate, "tp": tp, "quant": quant}
                                   for model, share, decoder, flips, flip_rate, tp, quant in asked])
    for answer in answers:
        if not ({"error", "field"} <= answer.keys() or {"name", "config", "digest", "quant", "flips"} <= answer.keys()):
            raise ProviderError(f"the trace provider answered a describe request with neither a model nor an "
                                f"error: {json.dumps(answer)[:200]}")
    return dict(zip(asked, answers))


def resolve(points: list[Point], where: str) -> list[Job]:
    """Every point resolved (hwconfigs read once each, models described in one call); a `SpecError` names what
    cannot be."""
    hws: dict[tuple, HwConfig] = {}
    models = describe(points)
    revision = sim_revision()
    jobs = []
    for i, p in enumerate(points):
        model = models[p.model, p.share, p.decoder, p.flips, p.flip_rate, p.tp, p.quant]
        try:
            if p.hw not in hws:
                hws[p.hw] = load_hwconfig(resolve_hwconfig(p.hw))
            if (p.hw, p.sets) not in hws:
                hws[p.hw, p.sets] = hws[p.hw].with_overrides(overrides(p, hws[p.hw], where))
            if p.tp > 1:  # no interconnect section, or a node smaller than the group: the field named
                interconnect_of(hws[p.hw, p.sets], p.tp)
            if model.get("field") in ("model", "tp", "quant"):  # an unknown preset, a bad share, a config file that
                raise ValueError(model["error"])  # cannot be read, a degree or a scheme the model cannot take
        except SpecError:
            raise
        except ValueError as err:  # HwConfigError, or the model
            shard = (f", tp {p.tp}" if p.tp > 1 else "") + (f", {p.quant}" if p.quant else "")
            raise SpecError(where, f"point {i} ({p.hw}, {p.model}{', ' + p.share if p.share else ''}{shard})",
                            str(err)) from None
        if "error" in model:  # flips that do not fit the model
            raise SpecError(where, "flips", model["error"])
        hw = hws[p.hw, p.sets]
        trace = TraceKey(model["name"], json.dumps(model["config"], sort_keys=True), model["digest"], p.decoder,
                         p.tokens, p.batch, p.dtype, model["flips"], p.launch == "compiled", p.tp, model["quant"])
        key = digest([p.axes(), to_dict(hw), model["config"], trace.flips, revision])
        jobs.append(Job(i, p, key, hw, trace))
    return jobs


def configurations(jobs: list[Job]) -> list[list[Job]]:
    """The jobs grouped by configuration (every decoder of one point), in the order of their first point."""
    groups: dict[Point, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.point.configuration(), []).append(job)
    return list(groups.values())


class Projector:
    """Projects jobs as sim.run does, caching parsed and fused traces, their memory and kernels."""

    def __init__(self) -> None:
        self.traces: dict[TraceKey, tuple[str, Trace]] = {}  # key -> (trace file name, trace as projected)
        self.memory: dict[TraceKey, DeviceMemory] = {}
        self.kernels: dict[tuple[TraceKey, tuple[int, int]], list] = {}

    def add_trace(self, key: TraceKey, name: str, data: bytes) -> None:
        """A trace file's bytes (gzip JSON lines), parsed here; fused once for compiled launch."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            traced = read_trace(path)
        trace = fuse(traced).trace if key.compiled else traced
        self.traces[key] = (name, trace)
        self.memory[key] = device_memory(traced, trace if key.compiled else None)

    def row(self, job: Job) -> dict[str, Any]:
        """The row of one job: sim.run's JSON fields (`summarize`), the point, the device memory and a status:
        "ok", or "does not fit" (no projection) where the run exceeds the device's memory."""
        name, trace = self.traces[job.trace]
        memory = self.memory[job.trace]
        base = {"index": job.index, "point": job.point.axes(), "dram_capacity_bytes": job.hw.peak.dram_capacity_bytes}
        try:
            check_fits(memory, job.hw, run_name(trace))
            tile = (job.hw.tile.m, job.hw.tile.n)
            if (job.trace, tile) not in self.kernels:
                self.kernels[job.trace, tile] = kernels_of(trace, job.hw)
            p = project(trace, job.hw, job.point.launch, self.kernels[job.trace, tile], job.point.streams, memory)
        except ValueError as err:  # CapacityError: does not fit; else a request the engine refuses (streams on a CPU)
            return {**base, "status": "does not fit" if isinstance(err, CapacityError) else "refused",
                    "message": str(err), "hardware": job.hw.name, "hw_path": job.hw.path,
                    "model": job.trace.name, "decoder": job.point.decoder, "tp": job.point.tp, "quant": job.trace.quant,
                    "memory": memory.as_dict()}
        label = f"{job.trace.name} {job.point.decoder}"
        return {**base, "status": "ok", **summarize(p, trace), "label": label, "trace": name}

    def rows(self, configuration: list[Job]) -> list[dict[str, Any]]:
        """The rows of one configuration's jobs; SPEED rows carry their speedup over the same configuration
        (the same tensor-parallel degree among its axes) decoded sequentially, where the sweep has it."""
        rows = [self.row(job) for job in configuration]
        sequential = next((r for r in rows if r["decoder"] == "sequential" and r["status"] == "ok"), None)
        for r in rows:
            if r["decoder"] == "speed" and r["status"] == "ok" and sequential is not None:
                r["speedup_vs_sequential"] = sequential["s_per_token"] / r["s_per_token"]
        return rows
