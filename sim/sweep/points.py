"""From sweep points to rows: what each point needs (its hwconfig, its trace), and its projection, Ray-free.

The driver resolves every point once (`resolve`): the hwconfig with its overrides, the model config with its
sharing, and the trace it replays (`TraceKey`: the same key for every point that replays the same run, so each
trace is built once). Workers hold a `Projector`, which projects the points of one configuration (every decoder
of it) exactly as `python -m sim.run` does (same fusion, kernels, projection and summary), caching traces,
fused traces and kernels across the points it is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.defaults import resolve_hwconfig
from sim.engine import kernels_of, project
from sim.fusion import fuse
from sim.hardware import HwConfig, load_hwconfig, to_dict
from sim.memory import CapacityError, DeviceMemory, check_fits, device_memory, run_name
from sim.run import model_config, summarize
from sim.sweep.spec import SCALE, Point, SpecError
from sim.trace import Trace, read_trace

if TYPE_CHECKING:
    from reference.config import ModelConfig

RATES = re.compile(r"[0-9.eE+-]+(,[0-9.eE+-]+)*")  # flips given as rates per exit (else a profile name)
SIM_SOURCES = ("trace/*", "opkinds", "hardware", "kernels", "fusion", "engine", "memory", "run")  # trace: a package


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
    """One traced run: what `sim.run.trace_on_demand` is given."""

    model: ModelConfig
    decoder: str
    tokens: int
    batch: int
    dtype: str
    flips: str | None
    compiled: bool


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
    for field, value in point.sets:
        scale = SCALE.fullmatch(value)
        if scale:
            node: Any = raw
            for part in field.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, (int, float)) or isinstance(node, bool):
                raise SpecError(where, f"set.{field}", f"{hw.path} has no number there to scale")
            scaled = node * float(scale[1])
            value = repr(round(scaled) if isinstance(node, int) else scaled)
        out[field] = value
    return out


def flips_of(point: Point, cfg: ModelConfig, where: str) -> str | None:
    """The flips a SPEED trace is made with: a profile, rates per exit, or one rate for every exit; sequential
    decoding reads no early exit (its trace is the same whatever the flips)."""
    if point.decoder == "sequential" or cfg.n_groups == 1:
        return None
    if point.flip_rate is not None:
        return ",".join([repr(float(point.flip_rate))] * (cfg.n_groups - 1))
    if point.flips is None or not RATES.fullmatch(point.flips):  # a profile: the model's own, or a named one
        from reference.flips import FlipOracle, default_profile

        try:
            name = point.flips or default_profile(cfg.name, cfg.n_groups)
            rates = FlipOracle.from_profile(name, cfg.vocab_size).rates
        except ValueError as err:
            raise SpecError(where, "flips", f"{err} (give flips as rates per exit, or flip_rate)") from None
    else:
        rates = point.flips.split(",")
    if len(rates) != cfg.n_groups - 1:
        raise SpecError(where, "flips", f"{point.flips or 'the profile ' + cfg.name!r} gives {len(rates)} rates, but "
                        f"{cfg.name} has G = {cfg.n_groups}: it needs {cfg.n_groups - 1} (or use flip_rate)")
    return point.flips


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve(points: list[Point], where: str) -> list[Job]:
    """Every point resolved (hwconfigs and model configs read once each); a `SpecError` names what cannot be."""
    hws: dict[tuple, HwConfig] = {}
    models: dict[tuple, ModelConfig] = {}
    revision = sim_revision()
    jobs = []
    for i, p in enumerate(points):
        try:
            if p.hw not in hws:
                hws[p.hw] = load_hwconfig(resolve_hwconfig(p.hw))
            if (p.hw, p.sets) not in hws:
                hws[p.hw, p.sets] = hws[p.hw].with_overrides(overrides(p, hws[p.hw], where))
            if (p.model, p.share) not in models:
                models[p.model, p.share] = model_config(p.model, p.share, flag="model")
        except ValueError as err:  # HwConfigError, HfConfigError, an unknown preset, a bad share
            raise SpecError(where, f"point {i} ({p.hw}, {p.model}{', ' + p.share if p.share else ''})", str(err)) \
                from None
        hw, cfg = hws[p.hw, p.sets], models[p.model, p.share]
        trace = TraceKey(cfg, p.decoder, p.tokens, p.batch, p.dtype, flips_of(p, cfg, where), p.launch == "compiled")
        key = digest([p.axes(), to_dict(hw), dataclasses.asdict(cfg), trace.flips, revision])
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
            trace = read_trace(path)
        if key.compiled:
            trace = fuse(trace).trace
        self.traces[key] = (name, trace)
        self.memory[key] = device_memory(trace)

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
                    "model": job.trace.model.name, "decoder": job.point.decoder, "memory": memory.as_dict()}
        label = f"{job.trace.model.name} {job.point.decoder}"
        return {**base, "status": "ok", **summarize(p, trace), "label": label, "trace": name}

    def rows(self, configuration: list[Job]) -> list[dict[str, Any]]:
        """The rows of one configuration's jobs; SPEED rows carry their speedup over the same configuration
        decoded sequentially, where the sweep has it."""
        rows = [self.row(job) for job in configuration]
        sequential = next((r for r in rows if r["decoder"] == "sequential" and r["status"] == "ok"), None)
        for r in rows:
            if r["decoder"] == "speed" and r["status"] == "ok" and sequential is not None:
                r["speedup_vs_sequential"] = sequential["s_per_token"] / r["s_per_token"]
        return rows
