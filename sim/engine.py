"""The discrete-event model (SimPy): a host that issues kernels, a device stream that runs them, an on-chip cache
that serves reused bytes; time in core-clock cycles of the device.

Each resource is a named object, each actor a plain generator process, as in SimPy's own examples:

- `HostThread` issues the stage's kernels in program order. In eager mode every kernel costs the host its op
  kind's dispatch and launch (`Host.eager_launch_s`: the hwconfig's `eager_op_s` table, else `launch_eager_s`; a
  collective's dispatch and NCCL's launch cost `launch_eager_s`; the wait after it, a stream-wait without a
  kernel, is not a trace op and costs nothing) and the stage `eager_stage_s` before its first kernel (the decode
  loop's own work), so a fast device waits for it; in
  graph mode the stage is one launch (`launch_graph_s`) and the device pays `graph_kernel_gap_s` between kernels
  instead (collectives are graph nodes: NCCL kernels can be captured in CUDA graphs); compiled mode replays, the
  same way, the fewer kernels a graph compiler generates for the stage (`sim.fusion`).
- `DeviceStream` runs kernels one after another (PyTorch eager uses one stream; the trace's program order is
  the dependency order), each for its cost from `sim.kernels`. On a CPU the host runs its own kernels, so it
  waits for each one (synchronous).
- `SharedDevice` (`streams` > 1, a what-if: a runtime that runs independent kernels concurrently, as CUDA
  streams or a graph compiler could) starts each kernel once the host has issued it, every kernel it depends
  on has finished (the trace's dependency graph, built with networkx), and fewer than `streams` kernels
  run. Kernels in flight share the device as a fluid: each needs shares of the compute units and of memory
  bandwidth (`sim.kernels.demand`); while the shares in flight add up to more than 1, the kernels using that
  resource slow down in proportion, so concurrent transfers split DRAM bandwidth and the device never does
  more than its peak. Stage time is then bounded below by the stage's critical path (longest chain of
  dependent kernels) and by its aggregate roofline (all its FLOPs and bytes at peak rates).
- `Link` (sim.interconnect; tensor parallelism): a collective runs on the rank's link to its group, a SimPy
  resource of capacity 1, for the time the interconnect model gives it (`sim.kernels.collective_cost`); the
  stream waits for it (the next kernel in program order depends on it), and with `streams` > 1 kernels that do
  not depend on it overlap it, while collectives take the link one at a time. Ranks are symmetric (one is
  simulated: every rank runs the same kernels, and each collective ends when all ranks have arrived, at the same
  time on every rank); where that stops holding, see sim.interconnect.
- `OnChipCache` (L2, or a CPU's last-level cache) holds weights by id and KV cache slices by sequence and depth
  (the trace's `kv` items), least recently used out first: bytes it holds are served on chip, the rest move
  from device memory.

Every stage ends with the host waiting for the device (the decoders read the argmax of every stage), so a
stage's timeline depends only on its kernels' durations and the launch mode: stages whose durations in cycles
are identical are provably identical and are simulated once (the cache state still advances every stage). On one
stream the projection takes the host's and the stream's timeline by the recurrence their processes step through
(`serial_timeline`, equal to `simulate_stage`: tests/test_overlap.py), four SimPy events fewer per kernel (the
built-in default's 330,000 kernels: 5 s to 2.7 s); kernels in flight together (`SharedDevice`) run as events.
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import networkx as nx
import simpy

from sim.fusion import fuse, is_fused
from sim.hardware import HwConfig
from sim.interconnect import Link
from sim.kernels import CLASSES, Kernel, KernelCost, demand, kernel_cost, kernel_of
from sim.memory import DeviceMemory, check_fits, device_memory, run_name
from sim.trace import OpRecord, Trace, gc_paused, validate

# eager: a host launch per kernel; graph: the stage's eager kernels replayed as one graph; compiled: the
# kernels a graph compiler generates for the stage (sim.fusion), replayed as one graph
LAUNCH_MODES = ("eager", "graph", "compiled")
# An op's activations were just written by the op before it, so they are read on chip while they fit in a
# share of the cache: the rest of it holds weights and KV slices. A quarter is an assumption (not fitted), the
# size below which a decode step's activations (a few KB to a few MB) never reach DRAM on any hwconfig here.
ACTIVATION_RESIDENT_SHARE = 0.25
# The longest kernel a projection accepts, in seconds (1e22 years). Only figures out of any real range (FLOPs
# near the trace format's bound of 2**60 per op, or a fused kernel's sums of them, at the slowest legal rate and
# efficiencies) come near it; a kernel beyond it, or one whose time is not finite, is refused naming the inputs,
# so that the sums of cycles stay within float range and no table ever shows NaN or infinity.
LONGEST_KERNEL_S = 1e30


class ProjectionError(ValueError):
    """A projection refused because a kernel's time is not a finite time up to LONGEST_KERNEL_S."""


class OnChipCache:
    """LRU cache of items (key -> bytes) with a capacity; `serve` says how many bytes come from memory."""

    def __init__(self, capacity_bytes: float) -> None:
        self.capacity = capacity_bytes
        self.items: OrderedDict[str, int] = OrderedDict()
        self.used = 0
        # (reads of a stage, state before it) -> (bytes from memory per read, state after, used after)
        self._stages: dict[tuple, tuple[tuple[int, ...], tuple[tuple[str, int], ...], int]] = {}
        self._seen: set[int] = set()  # the reads_ids of the stages served so far

    def serve(self, k: Kernel) -> int:
        """Bytes of kernel `k` that move from device memory; the cache learns what `k` read."""
        return sum(self.serve_items(k.reads)) + self.resident_bytes(k)

    def serve_items(self, items: tuple[tuple[str, int], ...]) -> list[int]:
        """For each cached item read in turn (key, bytes), the bytes that move from device memory; the cache
        learns them (an item larger than the cache is never held)."""
        out = []
        cache, capacity, used = self.items, self.capacity, self.used
        for key, nbytes in items:
            held = cache.pop(key, 0)
            used -= held
            out.append(nbytes - held if held < nbytes else 0)
            size = held if held > nbytes else nbytes
            if size <= capacity:
                cache[key] = size
                used += size
                while used > capacity:
                    used -= cache.popitem(last=False)[1]
        self.used = used
        return out

    def serve_stage(self, reads_id: int, items: tuple[tuple[str, int], ...]) -> tuple[int, ...]:
        """`serve_items` of a stage's reads (`reads_id` names the sequence `items`). The state before the stage
        and its reads decide the answers and the state after: a stage met before in the same state (every stage
        of a compiled decode, once the cache has settled) is answered from memory. States are remembered only
        for reads met before."""
        if reads_id not in self._seen:  # reads met for the first time (every eager decode step: the KV grew)
            self._seen.add(reads_id)
            return tuple(self.serve_items(items))
        key = (reads_id, tuple(self.items.items()))
        known = self._stages.get(key)
        if known is not None:
            dram, state, self.used = known
            self.items = OrderedDict(state)
            return dram
        dram = tuple(self.serve_items(items))
        self._stages[key] = (dram, tuple(self.items.items()), self.used)
        return dram

    def resident_bytes(self, k: Kernel) -> int:
        """Bytes of kernel `k` besides its cached items that move from device memory, whatever the cache holds:
        activations were just written by the kernel before (on chip while they fit); new KV entries persist."""
        act_dram = k.act_bytes if k.act_bytes > self.capacity * ACTIVATION_RESIDENT_SHARE else 0
        return act_dram + k.kv_write_bytes


@dataclass
class StageTimeline:
    cycles: int  # from the stage's first host action to the end of the host-device sync
    starts: list[int]  # per kernel, device start, relative to the stage start
    ends: list[int]
    issues: list[int]  # per kernel, when the host had issued it


class HostThread:
    """Issues kernels into the stream: eager pays a launch per kernel on the host (`launch_cycles`: one figure
    for every kernel, or one per kernel) after the stage's own host work (`stage_cycles`), graph one launch per
    stage. A synchronous host (a CPU running its own kernels) waits for each kernel before the next."""

    def __init__(self, env: simpy.Environment, stream: DeviceStream | SharedDevice,
                 launch_cycles: int | tuple[int, ...], graph: bool, synchronous: bool, stage_cycles: int = 0) -> None:
        self.env, self.stream, self.launch_cycles = env, stream, launch_cycles
        self.graph, self.synchronous, self.stage_cycles = graph, synchronous, stage_cycles

    def run(self, n_kernels: int, issues: list[int]) -> Iterator[simpy.Event]:
        if self.graph:
            yield self.env.timeout(self.launch_cycles)  # one graph launch
        elif self.stage_cycles:
            yield self.env.timeout(self.stage_cycles)
        per_kernel = not isinstance(self.launch_cycles, int)
        for i in range(n_kernels):
            if not self.graph:
                yield self.env.timeout(self.launch_cycles[i] if per_kernel else self.launch_cycles)
            issues.append(self.env.now)
            self.stream.queue.put(i)
            if self.synchronous:
                yield self.stream.finished[i]


class DeviceStream:
    """Runs issued kernels in order, each for its duration (plus the per-kernel gap of graph replay); a collective
    (`links[i]`) runs on the link, and the stream waits for it."""

    def __init__(self, env: simpy.Environment, gap_cycles: int, n_kernels: int) -> None:
        self.env, self.gap = env, gap_cycles
        self.queue = simpy.Store(env)
        self.finished = [env.event() for _ in range(n_kernels)]
        self.link = Link(env)  # time in cycles, as the environment counts it

    def run(self, durations: tuple[int, ...], starts: list[int], ends: list[int], links: tuple[bool, ...] = ()
            ) -> Iterator[simpy.Event]:
        for i, duration in enumerate(durations):
            yield self.queue.get()
            if self.gap:
                yield self.env.timeout(self.gap)
            starts.append(self.env.now)
            if links and links[i]:
                yield self.env.process(self.link.hold(duration))
            else:
                yield self.env.timeout(duration)
            ends.append(self.env.now)
            self.finished[i].succeed()


class SharedDevice:
    """Runs issued kernels concurrently, at most `streams` at a time, each once its predecessors finished;
    kernels in flight share compute units and memory bandwidth (see the module docstring). Under graph replay
    a kernel starts `gap_cycles` after it became ready, as on a single stream. Collectives (`links[i]`) hold the
    link, a resource of capacity 1 (as `sim.interconnect.Link`): a ready collective waits while another runs, and
    they take it in the order they became ready; they ask nothing of the compute units or memory."""

    def __init__(self, env: simpy.Environment, streams: int, gap_cycles: int, durations: tuple[int, ...],
                 demands: tuple[tuple[float, float], ...], preds: list[list[int]], links: tuple[bool, ...] = ()
                 ) -> None:
        self.env, self.streams, self.gap = env, streams, gap_cycles
        self.durations, self.demands = durations, demands
        self.links = links or (False,) * len(durations)
        self.queue = simpy.Store(env)
        self.waiting_on = [len(p) for p in preds]
        self.succs: list[list[int]] = [[] for _ in durations]
        for i, ps in enumerate(preds):
            for j in ps:
                self.succs[j].append(i)

    def _rates(self, active: dict[int, float]) -> dict[int, float]:
        """Progress per cycle of each kernel in flight, in cycles of its solo duration."""
        load_c = max(1.0, sum(self.demands[i][0] for i in active))
        load_m = max(1.0, sum(self.demands[i][1] for i in active))
        return {i: 1.0 / max(1.0, load_c if self.demands[i][0] else 1.0, load_m if self.demands[i][1] else 1.0)
                for i in active}

    def run(self, starts: list[float], ends: list[float]) -> Iterator[simpy.Event]:
        env, n = self.env, len(self.durations)
        issued = [False] * n
        ready: list[tuple[float, int]] = []  # min-heap of (when it may start, kernel): ready + the launch gap
        on_link: list[tuple[float, int]] = []  # min-heap of the ready collectives waiting for the link
        link: int | None = None  # the collective holding the link
        active: dict[int, float] = {}  # kernel -> cycles of solo work left
        done = 0
        get = self.queue.get()
        while done < n:
            while ready and len(active) < self.streams and ready[0][0] <= env.now:
                entry = heapq.heappop(ready)
                i = entry[1]
                if self.links[i]:
                    if link is not None:
                        heapq.heappush(on_link, entry)
                        continue
                    link = i
                starts[i] = env.now
                active[i] = float(self.durations[i])
            rates = self._rates(active)
            horizon = min((left / rates[i] for i, left in active.items()), default=math.inf)
            if ready and len(active) < self.streams:
                horizon = min(horizon, ready[0][0] - env.now)
            before = env.now
            yield env.any_of([get] if horizon == math.inf else [get, env.timeout(horizon)])
            elapsed = env.now - before
            for i in list(active):
                # done when due by now: computed as the horizon was, so float rounding cannot stall a kernel
                due = before + active[i] / rates[i] <= env.now
                active[i] -= rates[i] * elapsed
                if due or active[i] <= 0:
                    del active[i]
                    ends[i] = env.now
                    done += 1
                    if i == link:  # the link is free: the first collective waiting for it may start
                        link = None
                        if on_link:
                            heapq.heappush(ready, heapq.heappop(on_link))
                    for j in self.succs[i]:
                        self.waiting_on[j] -= 1
                        if issued[j] and not self.waiting_on[j]:
                            heapq.heappush(ready, (env.now + self.gap, j))
            if get.triggered:
                new = [get.value, *self.queue.items]  # all issued by now (graph replay issues a stage at once)
                self.queue.items.clear()
                for i in new:
                    issued[i] = True
                    if not self.waiting_on[i]:
                        heapq.heappush(ready, (env.now + self.gap, i))
                get = self.queue.get()


def stage_graph(ops: list[OpRecord]) -> nx.DiGraph:
    """The dependency graph of one stage's ops (node = index within the stage). A trace without dependencies
    (version 1) gives a chain: program order."""
    g = nx.DiGraph()
    g.add_nodes_from(range(len(ops)))
    for i, op in enumerate(ops):
        g.add_edges_from((i - d, i) for d in (op.deps if op.deps is not None else [1] if i else []))
    return g


def critical_path_cycles(g: nx.DiGraph, durations: tuple[int, ...]) -> int:
    """The longest chain of dependent kernels: the stage time with unlimited streams and no launch cost."""
    finish = [0] * len(durations)
    for i in nx.topological_sort(g):
        finish[i] = durations[i] + max((finish[j] for j in g.predecessors(i)), default=0)
    return max(finish, default=0)


def simulate_stage_overlapped(durations: tuple[int, ...], demands: tuple[tuple[float, float], ...],
                              g: nx.DiGraph, launch_cycles: int | tuple[int, ...], graph: bool, gap_cycles: int,
                              streams: int, links: tuple[bool, ...] = (), stage_cycles: int = 0) -> StageTimeline:
    """One stage with up to `streams` kernels in flight (`SharedDevice`), on a fresh timeline; `links[i]`: kernel i
    is a collective (on the link); the host's costs as `HostThread` takes them."""
    env = simpy.Environment()
    device = SharedDevice(env, streams, gap_cycles if graph else 0, durations, demands,
                          [list(g.predecessors(i)) for i in range(len(durations))], links)
    host = HostThread(env, device, launch_cycles, graph, synchronous=False, stage_cycles=stage_cycles)
    issues: list[int] = []
    starts = [0.0] * len(durations)
    ends = [0.0] * len(durations)
    env.process(host.run(len(durations), issues))
    env.run(until=env.process(device.run(starts, ends)))
    return StageTimeline(math.ceil(env.now), [round(t) for t in starts], [round(t) for t in ends], issues)


def simulate_stage(durations: tuple[int, ...], launch_cycles: int | tuple[int, ...], graph: bool, gap_cycles: int,
                   synchronous: bool = False, links: tuple[bool, ...] = (), stage_cycles: int = 0) -> StageTimeline:
    """One stage on a fresh timeline: host and device start idle, the stage ends at the sync; `links[i]`: kernel i
    is a collective (on the link); the host's costs as `HostThread` takes them."""
    env = simpy.Environment()
    stream = DeviceStream(env, gap_cycles if graph else 0, len(durations))
    host = HostThread(env, stream, launch_cycles, graph, synchronous, stage_cycles)
    issues: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    env.process(host.run(len(durations), issues))
    device = env.process(stream.run(durations, starts, ends, links))
    env.run(until=device)
    return StageTimeline(env.now, starts, ends, issues)


def serial_timeline(durations: tuple[int, ...], launch_cycles: int | tuple[int, ...], graph: bool, gap_cycles: int,
                    synchronous: bool = False, stage_cycles: int = 0) -> StageTimeline:
    """`simulate_stage`'s timeline by the recurrence its processes step through, without an event per kernel: the
    host issues kernel i after its launch (eager: each kernel's, after the stage's own work; graph: one launch for
    all), a synchronous host after kernel i-1 ended; the stream starts it once issued and once i-1 ended (plus the
    graph's gap). On one stream a collective holds the link the stream waits on, so it is a kernel of its
    duration. Equal to `simulate_stage` (tests/test_overlap.py); the projection takes this path, the DES the
    overlapped one (`SharedDevice`), where kernels in flight share the device."""
    per_kernel = not isinstance(launch_cycles, int)
    gap = gap_cycles if graph else 0
    host = launch_cycles if graph else stage_cycles
    device = 0
    issues, starts, ends = [], [], []
    for i, duration in enumerate(durations):
        if not graph:
            host += launch_cycles[i] if per_kernel else launch_cycles
        issues.append(host)
        start = max(host, device) + gap
        device = start + duration
        starts.append(start)
        ends.append(device)
        if synchronous:
            host = device
    return StageTimeline(device, starts, ends, issues)


@dataclass(frozen=True, slots=True)
class CostEntry:
    """A kernel as one stage ran it: its cost when `dram_bytes` of its bytes came from device memory, in
    seconds and whole cycles, and its demand on the device when kernels overlap (None on one stream)."""

    kernel: Kernel
    dram_bytes: int
    cost: KernelCost
    cycles: int
    demand: tuple[float, float] | None


class Projection:
    """What a trace takes on a device, and why. Per stage: its cycles, its kind, its kernels as ids of
    `entries` (`stage_costs`, one tuple shared by the stages alike) and its timeline (`stage_timelines`, one
    object per distinct timeline). The per-kernel lists, in trace order (`kernels`, `costs`, `dram_bytes`,
    `issue_cycles`, `start_cycles`, `end_cycles` on the whole timeline, and `stage_sizes`, kernels per stage)
    are expanded from them on first use."""

    def __init__(self, hw: HwConfig, launch: str, streams: int) -> None:
        self.hardware, self.hw_path, self.launch, self.clock_hz = hw.name, hw.path, launch, hw.peak.clock_hz
        self.streams = streams  # kernels that may run at once
        self.stage_cycles: list[int] = []
        self.stage_kinds: list[str] = []
        self.stage_costs: list[tuple[int, ...]] = []
        self.stage_timelines: list[StageTimeline] = []
        self.entries: list[CostEntry] = []
        self.tokens = 0  # tokens committed by decode / SPEED stages
        self.stats: dict = {}
        self.critical_path_cycles: int | None = 0 if streams > 1 else None  # sum of the stages' longest chains
        self.memory: DeviceMemory | None = None  # the device bytes the run needs (sim.memory)
        self._expanded: dict[str, list] = {}

    @property
    def total_cycles(self) -> int:
        return sum(self.stage_cycles)

    @property
    def total_s(self) -> float:
        return self.total_cycles / self.clock_hz

    @property
    def decode_s(self) -> float:
        return sum(c for c, k in zip(self.stage_cycles, self.stage_kinds) if k in ("decode", "speed")) / self.clock_hz

    def _expand(self, name: str) -> list:
        if not self._expanded:
            entries, lists = self.entries, {n: [] for n in _PER_KERNEL}
            now = 0
            for ids, timeline in zip(self.stage_costs, self.stage_timelines):
                stage = [entries[c] for c in ids]
                lists["kernels"] += [e.kernel for e in stage]
                lists["costs"] += [e.cost for e in stage]
                lists["dram_bytes"] += [e.dram_bytes for e in stage]
                lists["issue_cycles"] += [now + t for t in timeline.issues]
                lists["start_cycles"] += [now + t for t in timeline.starts]
                lists["end_cycles"] += [now + t for t in timeline.ends]
                lists["stage_sizes"].append(len(ids))
                now += timeline.cycles
            self._expanded = lists
        return self._expanded[name]

    kernels = property(lambda self: self._expand("kernels"), doc="per kernel: what it asks of the device")
    costs = property(lambda self: self._expand("costs"), doc="per kernel: its cost")
    dram_bytes = property(lambda self: self._expand("dram_bytes"), doc="per kernel: bytes from device memory")
    issue_cycles = property(lambda self: self._expand("issue_cycles"), doc="per kernel: when the host issued it")
    start_cycles = property(lambda self: self._expand("start_cycles"), doc="per kernel: when it started")
    end_cycles = property(lambda self: self._expand("end_cycles"), doc="per kernel: when it ended")
    stage_sizes = property(lambda self: self._expand("stage_sizes"), doc="per stage: its kernels")


_PER_KERNEL = ("kernels", "costs", "dram_bytes", "issue_cycles", "start_cycles", "end_cycles", "stage_sizes")


def kernel_key(op: OpRecord) -> tuple:
    """Every field of an op that its kernel depends on, by value (`kernel_of` reads no other)."""
    return (op.kind, op.op, op.flops, op.weight_bytes, op.act_read_bytes, op.act_write_bytes, op.kv_read_bytes,
            op.kv_write_bytes, tuple(op.weights), tuple(op.kv), tuple(op.in_shapes[0]) if op.in_shapes else None,
            tuple(op.out_shapes[0]) if op.out_shapes else None, (op.out_dtypes or op.in_dtypes or [None])[0],
            op.ranks, op.in_dtypes[0] if op.ranks is not None and op.in_dtypes else None)


@gc_paused()
def distinct_kernels(trace: Trace, hw: HwConfig) -> list[Kernel]:
    """The kernel of each distinct op of `trace` (`trace.distinct`); equal kernels (`kernel_key`) are one
    object, built once. The ops are checked first (`sim.trace.validate`: not again for a trace read from a file)."""
    validate(trace)
    built: dict[tuple, Kernel] = {}
    out = []
    for op in trace.distinct:
        key = kernel_key(op)
        kernel = built.get(key)
        if kernel is None:
            kernel = built[key] = kernel_of(op, hw.tile.m, hw.tile.n, checked=True)
        out.append(kernel)
    return out


def kernels_of(trace: Trace, hw: HwConfig) -> list[Kernel]:
    """The kernel of every executed op, in trace order (`trace.ops`); each distinct one built once."""
    table = distinct_kernels(trace, hw)
    return [table[k] for ids in trace.stage_op_ids for k in ids]


def _per_distinct_op(trace: Trace, kernels: list[Kernel]) -> list[Kernel]:
    """`kernels` given per distinct op (`distinct_kernels`) or per executed op (`kernels_of`), per distinct op."""
    if len(kernels) == len(trace.distinct):  # also when every op is distinct: then both lists are one
        return kernels
    if len(kernels) == trace.executed:
        return [kernels[i] for i in trace.first_executions()]
    raise ValueError(f"{len(kernels)} kernels for a trace of {trace.executed} ops ({len(trace.distinct)} distinct)")


class _StageReplay:
    """What `project` keeps from stage to stage: the on-chip cache, the distinct kernels, the costs of kernels
    by (kernel, DRAM bytes), and the timelines of the stages simulated so far, by what decides them.

    A stage is given as the ids of its distinct ops. Every step over a stage's kernels is a C-level pass of
    tuple and dict operations; Python runs only for the kernels that read cached items (the cache's LRU),
    for kernels and costs not met before, and for timelines not simulated before."""

    def __init__(self, trace: Trace, hw: HwConfig, launch: str, streams: int, kernels: list[Kernel]) -> None:
        self.trace, self.hw, self.streams = trace, hw, streams
        self.cache = OnChipCache(hw.peak.l2_capacity_bytes)
        self.graph = launch in ("graph", "compiled")
        self.compiled = launch == "compiled"
        self.launch_cycles = hw.cycles(hw.host.launch_graph_s if self.graph else hw.host.launch_eager_s)
        self.per_op_launch = not self.graph and bool(hw.host.eager_op_s)  # launch cycles per cost id, else one
        self.stage_launch_cycles = 0 if self.graph else hw.cycles(hw.host.eager_stage_s)
        self.gap_cycles = hw.cycles(hw.host.graph_kernel_gap_s)
        index: dict[Kernel, int] = {}
        self.kernel_of_op = [index.setdefault(k, len(index)) for k in kernels]  # distinct op -> kernel
        self.kernels = list(index)
        self.resident = [self.cache.resident_bytes(k) for k in self.kernels]  # DRAM bytes besides its reads
        self.has_reads = [bool(k.reads) for k in self.kernels]
        # a stage's kernels -> the cached items they read in turn, the slot of the kernel reading each, and an id
        self.reading: dict[tuple[int, ...], tuple[list[int], int, tuple]] = {}
        self.cost_ids: dict[tuple[int, int], int] = {}  # (kernel, DRAM bytes) -> id in `entries`
        self.entries: list[CostEntry] = []
        self.cycles: list[int] = []  # per cost id
        self.on_link: list[bool] = []  # per cost id: a collective
        self.launches: list[int] = []  # per cost id: the host's eager launch cycles (per_op_launch)
        self.demands: list[tuple[float, float] | None] = []
        self.stage_costs: dict[tuple[int, ...], tuple[int, ...]] = {}  # interned: stages alike share one tuple
        self.timelines: dict[tuple, StageTimeline] = {}
        if streams > 1:
            deps: dict[tuple | None, int] = {}
            self.deps_of_op = [deps.setdefault(None if op.deps is None else tuple(op.deps), len(deps))
                               for op in trace.distinct]
            self.graphs: dict[tuple, tuple[nx.DiGraph, dict[tuple[int, ...], int]]] = {}  # deps -> graph, paths

    def _cost_id(self, kernel: int, dram: int) -> int:
        k = self.kernels[kernel]
        c = kernel_cost(k, self.hw, dram, self.compiled)
        if not 0 <= c.time_s <= LONGEST_KERNEL_S:  # also false for NaN
            raise ProjectionError(
                f"{run_name(self.trace)} on {self.hw.name} ({self.hw.path}): op {kernel} of the trace's distinct ops "
                f"({k.cls} {k.op}, {k.flops:,} FLOPs, {k.bytes:,} bytes, {k.dtype}) would take {c.time_s:.3g} s, not "
                f"a finite time up to {LONGEST_KERNEL_S:g} s: the trace's figures or the hwconfig's rates are out "
                "of any real range")
        self.cost_ids[kernel, dram] = len(self.entries)
        entry = CostEntry(k, dram, c, self.hw.cycles(c.time_s), demand(k, c, self.hw) if self.streams > 1 else None)
        self.entries.append(entry)
        self.cycles.append(entry.cycles)
        self.demands.append(entry.demand)
        self.on_link.append(k.collective is not None)
        self.launches.append(self.hw.cycles(self.hw.host.eager_launch_s(k.cls, k.op)))
        return len(self.entries) - 1

    def costs_of(self, op_ids: tuple[int, ...]) -> tuple[int, ...]:
        """The cost ids of a stage's kernels, in order; the cache learns the stage."""
        kernels = tuple(map(self.kernel_of_op.__getitem__, op_ids))
        reading = self.reading.get(kernels)
        if reading is None:  # the items read in turn, the slot of the kernel reading each, an id for the cache
            slots = itertools.compress(range(len(kernels)), map(self.has_reads.__getitem__, kernels))
            owners = [(j, item) for j in slots for item in self.kernels[kernels[j]].reads]
            reading = self.reading[kernels] = ([j for j, _ in owners], len(self.reading),
                                               tuple(item for _, item in owners))
        owners, reads_id, items = reading
        dram = list(map(self.resident.__getitem__, kernels))
        for j, from_memory in zip(owners, self.cache.serve_stage(reads_id, items)):
            dram[j] += from_memory
        ids = list(map(self.cost_ids.get, zip(kernels, dram)))
        for j in list(itertools.compress(range(len(ids)), map(operator.is_, ids, itertools.repeat(None)))):
            known = self.cost_ids.get((kernels[j], dram[j]))  # met earlier in this stage
            ids[j] = self._cost_id(kernels[j], dram[j]) if known is None else known
        costs = tuple(ids)
        return self.stage_costs.setdefault(costs, costs)

    def timeline(self, op_ids: tuple[int, ...], costs: tuple[int, ...]) -> tuple[StageTimeline, int]:
        """The stage's timeline and (streams > 1) its critical path in cycles, simulated once per distinct
        stage."""
        durations = tuple(map(self.cycles.__getitem__, costs))
        launch = tuple(map(self.launches.__getitem__, costs)) if self.per_op_launch else self.launch_cycles
        if self.streams == 1:  # a collective is a kernel of its duration there (serial_timeline)
            key = (durations, launch)
            timeline = self.timelines.get(key)
            if timeline is None:
                timeline = self.timelines[key] = serial_timeline(
                    durations, launch, self.graph, self.gap_cycles, synchronous=self.hw.kind == "cpu",
                    stage_cycles=self.stage_launch_cycles)
            return timeline, 0
        deps_key = tuple(map(self.deps_of_op.__getitem__, op_ids))
        if deps_key not in self.graphs:
            self.graphs[deps_key] = (stage_graph([self.trace.distinct[k] for k in op_ids]), {})
        g, paths = self.graphs[deps_key]
        if durations not in paths:
            paths[durations] = critical_path_cycles(g, durations)
        demands = tuple(map(self.demands.__getitem__, costs))
        links = tuple(map(self.on_link.__getitem__, costs))
        key = (durations, demands, deps_key, links, launch)
        timeline = self.timelines.get(key)
        if timeline is None:
            timeline = self.timelines[key] = simulate_stage_overlapped(
                durations, demands, g, launch, self.graph, self.gap_cycles, self.streams, links,
                self.stage_launch_cycles)
        return timeline, paths[durations]


def _check_request(hw: HwConfig, launch: str, streams: int) -> None:
    if launch not in LAUNCH_MODES:
        raise ValueError(f"launch must be one of {LAUNCH_MODES}, got {launch!r}")
    if type(streams) is not int or streams < 1:
        raise ValueError(f"streams must be an integer >= 1, got {streams!r}")
    if streams > 1 and hw.kind == "cpu":
        raise ValueError(f"streams > 1 overlaps kernels on an accelerator; {hw.path} describes a CPU, whose host "
                         "runs its own kernels one at a time")


@gc_paused()
def project(trace: Trace, hw: HwConfig, launch: str = "eager", kernels: list[Kernel] | None = None,
            streams: int = 1, memory: DeviceMemory | None = None) -> Projection:
    """Replay `trace` on `hw`. `kernels` (from `distinct_kernels`, or `kernels_of`) may be passed in to reuse them
    across devices with the same tile shape. `streams` > 1 lets independent kernels overlap (`SharedDevice`).
    Work grows with the distinct kernels and stages, not with their repetitions (`_StageReplay`). A run whose
    device memory (`memory`, by default `sim.memory.device_memory` of the traced run, with the fused kernels'
    activations under compiled launch; give it for a trace fused already) exceeds the device's is refused
    (`sim.memory.CapacityError`)."""
    _check_request(hw, launch, streams)
    traced = trace
    if launch == "compiled" and not is_fused(trace):
        if kernels is not None:
            raise ValueError("compiled launch: pass the kernels of the fused trace (sim.fusion.fuse), or none")
        trace = fuse(trace).trace
    memory = memory if memory is not None else device_memory(traced, trace if trace is not traced else None)
    check_fits(memory, hw, run_name(trace))
    kernels = distinct_kernels(trace, hw) if kernels is None else _per_distinct_op(trace, kernels)
    replay = _StageReplay(trace, hw, launch, streams, kernels)
    p = Projection(hw, launch, streams)
    p.memory = memory
    for stage, op_ids in zip(trace.stages, trace.stage_op_ids):
        costs = replay.costs_of(op_ids)
        timeline, path = replay.timeline(op_ids, costs)
        if streams > 1:
            p.critical_path_cycles += path
        p.stage_costs.append(costs)
        p.stage_timelines.append(timeline)
        p.stage_cycles.append(timeline.cycles)
        p.stage_kinds.append(stage.kind)
    p.entries = replay.entries
    p.tokens = sum(len(s.commits) for s in trace.stages if s.kind in ("decode", "speed"))
    p.stats = {"stages_simulated": len(replay.timelines), "stages": len(trace.stages), "kernels": trace.executed,
               "distinct_kernels": len(replay.kernels), "distinct_stages": len(replay.stage_costs)}
    return p


def _busy_cycles(starts: list[int], ends: list[int]) -> int:
    """Cycles in which at least one kernel runs (the union of the kernels' intervals)."""
    busy, reach = 0, -1
    for start, end in sorted(zip(starts, ends)):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def stage_floors_s(p: Projection) -> list[float]:
    """The roofline floor of each stage: the sum of its kernels' floors on one stream (a collective's: its time at
    the link's line rate, sim.kernels); with overlapping kernels (streams > 1) no kernel's own floor bounds the
    stage, so all its FLOPs, DRAM bytes and bytes through L2 at peak rates, or its collectives one after another on
    the link at line rate, whichever takes longest (the aggregate floor). Each distinct stage is summed once."""
    costs = [e.cost for e in p.entries]
    if p.streams == 1:
        floor = [c.floor_s for c in costs]
        per = lambda ids: sum(map(floor.__getitem__, ids))  # noqa: E731
    else:
        parts = [[c.floor_compute_s for c in costs], [c.floor_dram_s for c in costs], [c.floor_l2_s for c in costs],
                 [c.floor_link_s for c in costs]]
        per = lambda ids: max(sum(map(part.__getitem__, ids)) for part in parts)  # noqa: E731
    done: dict[int, float] = {}
    return [done[id(ids)] if id(ids) in done else done.setdefault(id(ids), per(ids)) for ids in p.stage_costs]


def _stage_busy(p: Projection, ids: tuple[int, ...], timeline: StageTimeline) -> tuple[Counter, Counter]:
    """Cycles each bound and each kernel class kept the device busy in one stage of overlapping kernels."""
    by_bound: Counter[str] = Counter()
    by_class: Counter[str] = Counter()
    for c, start, end in zip(ids, timeline.starts, timeline.ends):
        e = p.entries[c]
        by_bound[e.cost.bound] += end - start
        by_class[e.kernel.cls] += end - start
    return by_bound, by_class


def breakdown(p: Projection) -> dict:
    """Where the time went: shares of the total spent in compute-, memory- and latency-bound kernels, in
    collectives (comm; `comm_s`: their seconds) and with the device idle waiting for the host (launch); bytes,
    achieved bandwidth, the roofline floor of the whole run and of its decode stages (`stage_floors_s`). With
    overlapping kernels (streams > 1) the kernel shares split the time the device is busy in proportion to the
    kernels' durations, and `critical_path_s` is the dependency bound. Computed over distinct kernels and stages,
    each weighted by how often it runs."""
    busy = {"compute": 0, "memory": 0, "latency": 0, "comm": 0}
    by_class = dict.fromkeys(CLASSES, 0)
    counts: Counter[int] = Counter()
    for ids in p.stage_costs:
        counts.update(ids)
    onchip, dram = 0.0, 0
    for c, n in counts.items():
        e = p.entries[c]
        onchip += (e.kernel.bytes - e.dram_bytes) * n
        dram += e.dram_bytes * n
        if p.streams == 1:  # a kernel alone on the stream runs for its cycles
            busy[e.cost.bound] += e.cycles * n
            by_class[e.kernel.cls] += e.cycles * n
    overlap = 1.0
    if p.streams > 1:
        stages: Counter[tuple[int, int]] = Counter((id(ids), id(t)) for ids, t in zip(p.stage_costs, p.stage_timelines))
        union = 0
        for ids, timeline in {(id(i), id(t)): (i, t) for i, t in zip(p.stage_costs, p.stage_timelines)}.values():
            n = stages[id(ids), id(timeline)]
            by_bound, classes = _stage_busy(p, ids, timeline)
            for name, cycles in by_bound.items():
                busy[name] += cycles * n
            for cls, cycles in classes.items():
                by_class[cls] += cycles * n
            union += _busy_cycles(timeline.starts, timeline.ends) * n
        overlap = union / max(sum(busy.values()), 1)
    floors = stage_floors_s(p)
    total = max(p.total_cycles, 1)
    shares = {b: c * overlap / total for b, c in busy.items()}
    shares["launch"] = max(0.0, 1.0 - sum(shares.values()))
    out = {"shares": shares, "class_s": {c: v / p.clock_hz for c, v in by_class.items() if v},
           "roofline_s": sum(floors),
           "decode_roofline_s": sum(f for f, kind in zip(floors, p.stage_kinds) if kind in ("decode", "speed")),
           "comm_s": busy["comm"] / p.clock_hz, "dram_bytes": int(dram), "onchip_bytes": int(onchip),
           "achieved_bandwidth_bytes_per_s": dram / p.total_s if p.total_cycles else 0.0}
    if p.critical_path_cycles is not None:
        out["critical_path_s"] = p.critical_path_cycles / p.clock_hz
    return out
