"""The discrete-event model (SimPy): a host that issues kernels, a device stream that runs them, an on-chip cache
that serves reused bytes; time in core-clock cycles of the device.

Each resource is a named object, each actor a plain generator process, as in SimPy's own examples:

- `HostThread` issues the stage's kernels in program order. In eager mode every kernel costs the host
  `launch_eager_s` (framework dispatch + launch), so a fast device waits for it; in graph mode the stage is
  one launch and the device pays `launch_graph_s` per kernel instead.
- `DeviceStream` runs kernels one after another (PyTorch eager uses one stream; the trace's program order is
  the dependency order), each for its cost from `sim.kernels`. On a CPU the host runs its own kernels, so it
  waits for each one (synchronous).
- `OnChipCache` (L2, or a CPU's last-level cache) holds weights by id and KV cache slices by depth, least
  recently used out first: bytes it holds are served on chip, the rest move from device memory.

Every stage ends with the host waiting for the device (the decoders read the argmax of every stage), so a
stage's timeline depends only on its kernels' durations and the launch mode: stages whose durations in cycles
are identical are provably identical and are simulated once (the cache state still advances every stage).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import simpy

from sim.hardware import HwConfig
from sim.kernels import CLASSES, Kernel, KernelCost, kernel_cost, kernel_of
from sim.trace import Trace

LAUNCH_MODES = ("eager", "graph")


class OnChipCache:
    """LRU cache of items (key -> bytes) with a capacity; `serve` says how many bytes come from memory."""

    def __init__(self, capacity_bytes: float) -> None:
        self.capacity = capacity_bytes
        self.items: OrderedDict[str, int] = OrderedDict()
        self.used = 0

    def serve(self, k: Kernel) -> int:
        """Bytes of kernel `k` that move from device memory; the cache learns what `k` read."""
        dram = 0
        for key, nbytes in k.reads:
            held = self.items.pop(key, 0)
            self.used -= held
            dram += nbytes - min(held, nbytes)
            size = max(held, nbytes)
            if size <= self.capacity:
                self.items[key] = size
                self.used += size
                while self.used > self.capacity:
                    self.used -= self.items.popitem(last=False)[1]
        # activations were just written by the kernel before (on chip while they fit); new KV entries persist
        act_dram = k.act_bytes if k.act_bytes > self.capacity / 4 else 0
        return dram + act_dram + k.kv_write_bytes


@dataclass
class StageTimeline:
    cycles: int  # from the stage's first host action to the end of the host-device sync
    starts: list[int]  # per kernel, device start, relative to the stage start
    ends: list[int]
    issues: list[int]  # per kernel, when the host had issued it


class HostThread:
    """Issues kernels into the stream: eager pays a launch per kernel on the host, graph one per stage. A
    synchronous host (a CPU running its own kernels) waits for each kernel before the next."""

    def __init__(self, env: simpy.Environment, stream: DeviceStream, launch_cycles: int, graph: bool,
                 synchronous: bool) -> None:
        self.env, self.stream, self.launch_cycles = env, stream, launch_cycles
        self.graph, self.synchronous = graph, synchronous

    def run(self, n_kernels: int, issues: list[int]) -> Iterator[simpy.Event]:
        if self.graph:
            yield self.env.timeout(self.launch_cycles)  # one graph launch
        for i in range(n_kernels):
            if not self.graph:
                yield self.env.timeout(self.launch_cycles)
            issues.append(self.env.now)
            self.stream.queue.put(i)
            if self.synchronous:
                yield self.stream.finished[i]


class DeviceStream:
    """Runs issued kernels in order, each for its duration (plus the per-kernel gap of graph replay)."""

    def __init__(self, env: simpy.Environment, gap_cycles: int, n_kernels: int) -> None:
        self.env, self.gap = env, gap_cycles
        self.queue = simpy.Store(env)
        self.finished = [env.event() for _ in range(n_kernels)]

    def run(self, durations: tuple[int, ...], starts: list[int], ends: list[int]) -> Iterator[simpy.Event]:
        for i, duration in enumerate(durations):
            yield self.queue.get()
            if self.gap:
                yield self.env.timeout(self.gap)
            starts.append(self.env.now)
            yield self.env.timeout(duration)
            ends.append(self.env.now)
            self.finished[i].succeed()


def simulate_stage(durations: tuple[int, ...], launch_cycles: int, graph: bool, gap_cycles: int,
                   synchronous: bool = False) -> StageTimeline:
    """One stage on a fresh timeline: host and device start idle, the stage ends at the sync."""
    env = simpy.Environment()
    stream = DeviceStream(env, gap_cycles if graph else 0, len(durations))
    host = HostThread(env, stream, launch_cycles, graph, synchronous)
    issues: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    env.process(host.run(len(durations), issues))
    device = env.process(stream.run(durations, starts, ends))
    env.run(until=device)
    return StageTimeline(env.now, starts, ends, issues)


@dataclass
class Projection:
    """What a trace takes on a device, and why. Per kernel (in trace order), parallel lists: the kernel, its
    cost, the bytes it moved from device memory, and its issue / start / end cycles on the whole timeline."""

    hardware: str
    hw_path: str
    launch: str
    clock_hz: float
    kernels: list[Kernel]
    costs: list[KernelCost]
    dram_bytes: list[int]
    issue_cycles: list[int]
    start_cycles: list[int]
    end_cycles: list[int]
    stage_cycles: list[int]
    stage_kinds: list[str]
    tokens: int  # tokens committed by decode / SPEED stages
    stats: dict = field(default_factory=dict)

    @property
    def total_cycles(self) -> int:
        return sum(self.stage_cycles)

    @property
    def total_s(self) -> float:
        return self.total_cycles / self.clock_hz

    @property
    def decode_s(self) -> float:
        return sum(c for c, k in zip(self.stage_cycles, self.stage_kinds) if k in ("decode", "speed")) / self.clock_hz


def kernels_of(trace: Trace, hw: HwConfig) -> list[Kernel]:
    """The kernel of every op. Ops that the trace reader read from one repeated line share their list
    objects, so each distinct op is built once (the key holds every field a kernel depends on)."""
    built: dict[tuple, Kernel] = {}
    out = []
    for op in trace.ops:
        key = (op.op, op.module, op.depth, op.flops, op.weight_bytes, op.act_read_bytes, op.act_write_bytes,
               op.kv_read_bytes, op.kv_write_bytes, id(op.in_shapes), id(op.out_shapes), id(op.out_dtypes),
               id(op.weights))
        kernel = built.get(key)
        if kernel is None:
            kernel = built[key] = kernel_of(op, hw.tile.m, hw.tile.n)
        out.append(kernel)
    return out


def project(trace: Trace, hw: HwConfig, launch: str = "eager", kernels: list[Kernel] | None = None) -> Projection:
    """Replay `trace` on `hw`. `kernels` (from `kernels_of`) may be passed in to reuse them across devices
    with the same tile shape."""
    if launch not in LAUNCH_MODES:
        raise ValueError(f"launch must be one of {LAUNCH_MODES}, got {launch!r}")
    kernels = kernels if kernels is not None else kernels_of(trace, hw)
    cache = OnChipCache(hw.peak.l2_capacity_bytes)
    graph = launch == "graph"
    launch_cycles = hw.cycles(hw.host.launch_graph_s if graph else hw.host.launch_eager_s)
    gap_cycles = hw.cycles(hw.host.launch_graph_s)
    costs: dict[tuple[int, int], tuple[KernelCost, int]] = {}  # (id(kernel), dram bytes) -> (cost, cycles)
    timelines: dict[tuple[int, ...], StageTimeline] = {}
    p = Projection(hw.name, hw.path, launch, hw.peak.clock_hz, kernels, [], [], [], [], [], [], [], 0)
    now, op_index = 0, 0
    for stage in trace.stages:
        n = len(trace.ops_of_stage(stage.stage))
        durations = []
        for k in kernels[op_index : op_index + n]:
            dram = cache.serve(k)
            key = (id(k), dram)
            cost = costs.get(key)
            if cost is None:
                c = kernel_cost(k, hw, dram)
                cost = costs[key] = (c, hw.cycles(c.time_s))
            p.costs.append(cost[0])
            p.dram_bytes.append(dram)
            durations.append(cost[1])
        op_index += n
        durations_key = tuple(durations)
        timeline = timelines.get(durations_key)
        if timeline is None:
            timeline = timelines[durations_key] = simulate_stage(durations_key, launch_cycles, graph, gap_cycles,
                                                                 synchronous=hw.kind == "cpu")
        p.issue_cycles += [now + t for t in timeline.issues]
        p.start_cycles += [now + t for t in timeline.starts]
        p.end_cycles += [now + t for t in timeline.ends]
        now += timeline.cycles
        p.stage_cycles.append(timeline.cycles)
        p.stage_kinds.append(stage.kind)
    p.tokens = sum(len(s.commits) for s in trace.stages if s.kind in ("decode", "speed"))
    p.stats = {"stages_simulated": len(timelines), "stages": len(trace.stages), "kernels": len(kernels)}
    return p


def breakdown(p: Projection) -> dict:
    """Where the time went: shares of the total spent in compute-, memory- and latency-bound kernels and with
    the device idle waiting for the host (launch); bytes, achieved bandwidth, the roofline floor."""
    busy = {"compute": 0, "memory": 0, "latency": 0}
    by_class = dict.fromkeys(CLASSES, 0)
    floor_s = onchip = 0.0
    for k, cost, dram, start, end in zip(p.kernels, p.costs, p.dram_bytes, p.start_cycles, p.end_cycles):
        busy[cost.bound] += end - start
        by_class[k.cls] += end - start
        floor_s += cost.floor_s
        onchip += k.bytes - dram
    dram = sum(p.dram_bytes)
    total = max(p.total_cycles, 1)
    shares = {b: c / total for b, c in busy.items()}
    shares["launch"] = max(0.0, 1.0 - sum(shares.values()))
    return {"shares": shares, "class_s": {c: v / p.clock_hz for c, v in by_class.items() if v},
            "roofline_s": floor_s, "dram_bytes": int(dram), "onchip_bytes": int(onchip),
            "achieved_bandwidth_bytes_per_s": dram / p.total_s if p.total_cycles else 0.0}
