"""What a collective costs on a hwconfig's interconnect, and the link resource the engine runs collectives on.

    collective_time("all_reduce", 16384, 8, "bfloat16", hw) -> CollectiveCost(time_s, algorithm, protocol, ...)

GPUs (kinds nvswitch, nvlink, pcie) follow NCCL's own tuning model (NVIDIA/nccl 2.30.7, `src/graph/tuning.cc`
ncclTopoTuneModel and ncclTopoGetAlgoTime, `src/enqueue.cc` topoGetAlgoInfo): for every algorithm (Ring, Tree,
NVLS) and protocol (LL, LL128, Simple) the collective can use on the link, time = latency + bytes / bandwidth, and
NCCL runs the one with the least time. The latency is NCCL's base latency plus its per-step hardware latency times
the steps (a ring all-reduce has 2(n-1)); the bandwidth is the bus bandwidth of NCCL's channels converted to the
algorithm's (ring all-reduce: n / 2(n-1) of it, the bus factor), LL moving half its line as data, LL128 120 of 128
bytes, each capped where NCCL caps it. At the 8-64 KiB of batch-1 decoding the latency sets the time: 8 GPUs on
NVSwitch pay ~15 us of Ring/LL, the floor of NCCL's model. The channels come from a short emulation of NCCL's
graph search (`src/graph/search.cc`) on a node whose devices each reach the others over one link bundle of
`link_bandwidth_bytes_per_s * efficiency` (NCCL's per-link figures are the start value of that efficiency); a
PCIe tree that several GPUs share behind one switch is not modelled (calibration's efficiency absorbs it). Where
that search would make a faster link slower (fewer, faster channels under a per-channel cap: no shipped device),
each bandwidth is the best the search finds at or below the link's, so more bandwidth is never slower. One node
only: NCCL's network latencies and multi-node algorithms (CollNet, NVLS-Tree, PAT) are not modelled.

NCCL's numbers are software constants, not hardware figures: they live here, named, with their source. The
hwconfig's `interconnect` section holds the hardware (link kind, devices per node, line rate, compute capability,
NVLS) and what calibration fits (`efficiency`, and `collective_latency_s`, a fixed cost per collective beyond
NCCL's model, such as what a host adds around the kernel).

A CPU hwconfig describes gloo over TCP loopback (kind loopback): gloo's ring all-reduce (pytorch/gloo
`gloo/allreduce.cc`, what torch's ProcessGroupGloo calls) splits the buffer into at least 2n segments of at most
1 MiB and sends 2(n-1)/n of it in 2(S - S/n) messages of S segments; its all-gather sends 2(n-1) half-chunks.
Time = collective_latency_s + messages * step_latency_s + bytes sent / (link_bandwidth * efficiency), every
figure fitted to the gloo microbenchmark.

Bytes: the buffer NCCL's `nBytes` counts: an all-reduce's or a broadcast's tensor, an all-gather's output (every
rank's input, `world_size` times one rank's), a reduce-scatter's input.

Ranks are symmetric: every rank runs the same kernels on the same shapes on identical devices and links, so one
rank is simulated and the collective, timed from this model, is what its compute waits for. That stops holding
where the ranks differ: a vocabulary that does not split evenly (the first V mod N ranks hold one row more), a
straggler (a rank whose host is descheduled or slower: a collective ends when the last rank arrives, so skew
adds to it), asymmetric topologies (two bridged A5000 pairs joined over PCIe; GPUs behind different PCIe
switches or sockets), mixed devices, and groups spanning nodes (refused here: no multi-node figures).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import simpy

from sim.hardware import HwConfig, HwConfigError, Interconnect
from sim.opkinds import DTYPE_BYTES, split_fault

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast")
GLOO_COLLECTIVES = ("all_reduce", "all_gather")  # what the loopback model follows gloo's code for
PROTOCOLS = ("LL", "LL128", "Simple")  # the order of NCCL's per-protocol tables

# --- NCCL's software constants: NVIDIA/nccl 2.30.7 (commit 5067397c2676d5aed50042fc39e5c8ee96eb0027) ---------------
NCCL_SOURCE = "NVIDIA/nccl 2.30.7 (5067397c), src/graph/tuning.cc, search.cc, topo.h"
# baseLatencies (us) per algorithm, per protocol (LL, LL128, Simple): ncclTunerConstantsDefaults
BASE_LATENCY_US = {"tree": (6.8, 14.0, 8.4), "ring": (6.6, 14.0, 8.4), "nvls": (0.0, 0.0, 0.0)}
# hwLatencies (us) per step: NVLINK for NVLink paths (NVSwitch or direct), PCI otherwise (one node)
HW_LATENCY_US = {"nvlink": {"tree": (0.6, 1.25, 4.0), "ring": (0.6, 1.9, 3.4), "nvls": (0.0, 0.0, 25.0)},
                 "pci": {"tree": (1.0, 1.9, 4.0), "ring": (1.0, 2.5, 5.7), "nvls": (0.0, 0.0, 0.0)}}
# Per-architecture caps in GB/s on one node (the N1 column), indexed Volta, Ampere, Hopper, Blackwell: LL's total
# (llMaxBws), and per channel Ring LL128, Tree LL128 and Tree (perChMax*Bws); NVLS's share of its channels' bandwidth
LL_MAX_GBPS = (39.0, 87.7, 141.0, 282.0)
RING_LL128_PER_CHANNEL_GBPS = (20.0, 20.0, 36.7, 40.0)
TREE_LL128_PER_CHANNEL_GBPS = (20.0, 20.0, 36.7, 55.6)
TREE_PER_CHANNEL_GBPS = (26.5, 24.0, 38.7, 70.0)
NVLS_EFFICIENCY = (0.0, 0.0, 0.85, 0.74)
LL_DATA_SHARE = 0.5  # an LL line is 4 bytes of data and a 4-byte flag
LL128_DATA_SHARE = 0.92  # an LL128 line carries 120 of its 128 bytes (tuning.cc writes .92)
TREE_SHARE = 0.92  # a tree all-reduce's bus bandwidth, of the channels'
TREE_LL_SHARE = 1 / 3.8  # Tree/LL, of the tree's
TREE_LL128_ONE_NODE_SHARE = 7 / 9  # Tree/LL128 on one node, of the tree's
TREE_ALGORITHM_SHARE = 0.5  # a tree's bus bandwidth -> algorithm bandwidth
# treeCorrectionFactor: the tree all-reduce's bandwidth at log2(bytes / 64) = 0 .. 22, per protocol
TREE_CORRECTION = {
    "LL": (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0, 1.0, 1.0, 1.0),
    "LL128": (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9, .9, .9, 1.0, 1.0),
    "Simple": (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9, .9)}
# search.cc: the per-channel speeds (GB/s) the graph search tries, fastest first
SEARCH_SPEEDS_GBPS = {60: (40.0, 30.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0),
                      90: (60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0),
                      100: (90.0, 80.0, 70.0, 60.0, 50.0, 45.0, 40.0, 30.0, 24.0, 20.0, 19.0, 18.0)}
SEARCH_SLOWDOWN_LIMIT = 0.49  # search.cc: a slower speed is tried while it is above 0.49 of the best found
MAX_RING_CHANNELS = 32  # init.cc: ringGraph->maxChannels = MAXCHANNELS / 2
MAX_NVLS_CHANNELS = 32  # device.h: NCCL_MAX_NVLS_ARITY
# ncclTopoDupChannels: channels of at least 25 GB/s are doubled at half the speed, except past sm80 below 50 GB/s
# with more than 4 channels
DUP_MIN_GBPS, DUP_SM90_MIN_GBPS, DUP_SM90_MAX_CHANNELS = 25.0, 50.0, 4

# --- gloo (pytorch/gloo 70dc360272dfc57e3617184c78ff9b06f8cd4757, gloo/allreduce.h) ---------------------------------
GLOO_MAX_SEGMENT_BYTES = 1 << 20  # AllreduceOptionsImpl::kMaxSegmentSize; torch's ProcessGroupGloo keeps it


class InterconnectError(HwConfigError):
    """A collective the hwconfig's interconnect cannot run: `field` names what limits it."""


@dataclass(frozen=True)
class CollectiveCost:
    """One collective's time on one rank, split into the part that does not grow with bytes and the part that
    does; `algorithm` and `protocol` are NCCL's choice (ring | tree | nvls x LL | LL128 | Simple), "gloo-ring" and
    "-" for gloo, "none" and "-" where nothing moves (one rank, or no bytes)."""

    kind: str
    nbytes: int
    world_size: int
    algorithm: str
    protocol: str
    latency_s: float  # the algorithm's latency plus the interconnect's collective_latency_s
    bandwidth_s: float  # bytes over the algorithm's bandwidth

    @property
    def time_s(self) -> float:
        return self.latency_s + self.bandwidth_s

    @property
    def bound(self) -> str:
        """What sets the time: "latency" or "bandwidth"."""
        return "latency" if self.latency_s >= self.bandwidth_s else "bandwidth"


def collective_time(kind: str, nbytes: int, world_size: int, dtype: str, hw: HwConfig) -> CollectiveCost:
    """The cost of collective `kind` over `nbytes` (see the module docstring for which buffer) of `dtype` among
    `world_size` ranks on `hw`'s interconnect: the cheapest of `candidates` (what NCCL picks), zero for one rank
    or no bytes. ValueError on a malformed request; InterconnectError naming the hwconfig field where the
    interconnect cannot run it (none given, or a group larger than a node)."""
    check_request(kind, nbytes, world_size, dtype)
    if world_size == 1 or nbytes == 0:
        return CollectiveCost(kind, nbytes, world_size, "none", "-", 0.0, 0.0)
    return min(candidates(kind, nbytes, world_size, interconnect_of(hw, world_size, kind)), key=lambda c: c.time_s)


def check_request(kind: str, nbytes: int, world_size: int, dtype: str) -> None:
    """ValueError naming the argument unless the collective is well formed: a known kind and dtype, a whole
    number of ranks (>= 1) and of elements (>= 0), split evenly among the ranks where the kind splits it."""
    if kind not in COLLECTIVES:
        raise ValueError(f"collective kind {kind!r}: expected one of {', '.join(COLLECTIVES)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"collective world_size {world_size!r}: expected an integer >= 1")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"collective dtype {dtype!r}: expected one of {', '.join(DTYPE_BYTES)}")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"collective bytes {nbytes!r}: expected an integer >= 0")
    fault = split_fault(kind, nbytes, world_size, dtype)
    if fault is not None:
        raise ValueError(f"collective bytes {nbytes}: {fault.removeprefix(f'{nbytes} bytes is ')}")


def interconnect_of(hw: HwConfig, world_size: int, kind: str = "all_reduce") -> Interconnect:
    """`hw`'s interconnect section, refused (InterconnectError naming the field) where it cannot run collective
    `kind` among `world_size` devices: no section, more devices than one node holds, or a collective gloo's model
    does not follow."""
    ic = hw.interconnect
    if ic is None:
        raise InterconnectError(hw.path, "interconnect", f"missing: a group of {world_size} devices needs the "
                                "hwconfig's interconnect section (hwconfigs/README.md)")
    if world_size > ic.devices_per_node:
        raise InterconnectError(hw.path, "interconnect.devices_per_node", f"a group of {world_size} devices spans "
                                f"more than one node of {ic.devices_per_node}, and the interconnect has no "
                                "multi-node figures")
    if ic.kind == "loopback" and kind not in GLOO_COLLECTIVES:
        raise InterconnectError(hw.path, "interconnect.kind", f"loopback (gloo) models "
                                f"{', '.join(GLOO_COLLECTIVES)}, not {kind}")
    return ic


def candidates(kind: str, nbytes: int, world_size: int, ic: Interconnect) -> list[CollectiveCost]:
    """Every way the collective can run on `ic`, with its cost: NCCL's algorithm x protocol pairs, or gloo's ring."""
    if ic.kind == "loopback":
        return [gloo_cost(kind, nbytes, world_size, ic)]
    out = []
    for algorithm, protocol, latency_us, bandwidth_gbps in nccl_table(kind, world_size, ic):
        if algorithm == "tree":
            log_size = (nbytes >> 6).bit_length() - 1  # log2i(nBytes >> 6): -1 below 64 bytes
            if 0 <= log_size < len(TREE_CORRECTION[protocol]):
                bandwidth_gbps *= TREE_CORRECTION[protocol][log_size]
        out.append(CollectiveCost(kind, nbytes, world_size, algorithm, protocol,
                                  latency_us * 1e-6 + ic.collective_latency_s, nbytes / (bandwidth_gbps * 1e9)))
    return out


def _arch(compute_capability: int) -> int:
    """NCCL's architecture index of its per-architecture tables: Volta (below sm80), Ampere, Hopper, Blackwell."""
    return 3 if compute_capability >= 100 else 2 if compute_capability >= 90 else 1 if compute_capability >= 80 else 0


def _speeds(compute_capability: int) -> tuple[float, ...]:
    return SEARCH_SPEEDS_GBPS[max(cc for cc in SEARCH_SPEEDS_GBPS if cc <= max(compute_capability, 60))]


def ring_channels(usable_gbps: float, compute_capability: int) -> tuple[int, float]:
    """(channels, GB/s each) of NCCL's ring graph on one node where every device reaches the next over
    `usable_gbps` each way: the search tries its speeds fastest first, fits as many channels as the link carries,
    keeps the best total and stops once a speed falls to 0.49 of the best's (or the link is full); then fast
    channels are doubled at half the speed (ncclTopoDupChannels), which changes only the per-channel caps. A link
    below the slowest speed: one channel at what it carries."""
    feasible = [s for s in _speeds(compute_capability) if s <= usable_gbps * (1 + 1e-9)]
    if not feasible:
        return 1, usable_gbps
    channels, speed = 0, 0.0
    for s in feasible:
        if channels and s / speed <= SEARCH_SLOWDOWN_LIMIT:
            break
        fit = min(MAX_RING_CHANNELS, int(usable_gbps / s + 1e-9))
        if fit * s > channels * speed:
            channels, speed = fit, s
        if channels * speed >= usable_gbps * (1 - 1e-9):
            break
    # doubled only where twice the channels fit (NCCL caps them at 32 and halves the speed anyway, losing bandwidth
    # on a link of over 500 GB/s: no device's, and more bandwidth would then be slower)
    if (speed >= DUP_MIN_GBPS and 2 * channels <= MAX_RING_CHANNELS
            and not (compute_capability > 80 and speed < DUP_SM90_MIN_GBPS and channels > DUP_SM90_MAX_CHANNELS)):
        channels, speed = 2 * channels, speed / 2
    return channels, speed


def nvls_channels(usable_gbps: float, world_size: int, compute_capability: int) -> tuple[int, float, float] | None:
    """(channels, intra-node GB/s, 'inter' GB/s per channel) of NCCL's NVLS graph on one node, or None where it finds
    none: one channel per GPU (at least 2), the fastest speed at which all fit in the link; its second pass raises
    the inter speed until it reaches twice the intra one (or the fastest speed)."""
    channels = min(MAX_NVLS_CHANNELS, world_size)
    speeds = _speeds(compute_capability)
    feasible = [s for s in speeds if channels * s <= usable_gbps * (1 + 1e-9)]
    if channels < 2 or not feasible:
        return None
    intra = feasible[0]
    inter = min((s for s in speeds if s >= 2 * intra), default=speeds[0])
    return channels, intra, inter


def channel_buses(channels: int, per_channel_gbps: float, arch: int) -> dict[tuple[str, str], float]:
    """Bus bandwidth (GB/s) of Ring and of Tree (all-reduce) per protocol on `channels` channels of
    `per_channel_gbps` each, with NCCL's caps (ncclTopoTuneModel)."""
    total = channels * per_channel_gbps
    tree = min(total * TREE_SHARE, channels * TREE_PER_CHANNEL_GBPS[arch])
    return {("ring", "LL"): min(LL_MAX_GBPS[arch], total * LL_DATA_SHARE),
            ("ring", "LL128"): min(total * LL128_DATA_SHARE, channels * RING_LL128_PER_CHANNEL_GBPS[arch]),
            ("ring", "Simple"): total,
            ("tree", "LL"): min(tree * TREE_LL_SHARE, LL_MAX_GBPS[arch]),
            ("tree", "LL128"): min(tree * TREE_LL128_ONE_NODE_SHARE, channels * TREE_LL128_PER_CHANNEL_GBPS[arch]),
            ("tree", "Simple"): tree}


@lru_cache(maxsize=4096)
def bus_bandwidths(usable_gbps: float, compute_capability: int) -> dict[tuple[str, str], float]:
    """Bus bandwidth (GB/s) per (algorithm, protocol) of Ring and Tree on a link of `usable_gbps`: the best each
    reaches on the ring graph NCCL's search finds for a link of at most `usable_gbps`. NCCL's search is not
    monotone in the bandwidth (a faster link can give fewer, faster channels that LL128's per-channel cap then
    holds back, so more bandwidth would be slower); on every shipped device this is the search's own graph at
    `usable_gbps` (tests/test_interconnect.py). Shared (cached): not to be changed."""
    arch = _arch(compute_capability)
    links = {usable_gbps} | {k * s for s in _speeds(compute_capability) for k in range(1, MAX_RING_CHANNELS + 1)
                             if k * s <= usable_gbps}
    best: dict[tuple[str, str], float] = {}
    for link in links:
        for key, bus in channel_buses(*ring_channels(link, compute_capability), arch).items():
            best[key] = max(best.get(key, 0.0), bus)
    return best


@lru_cache(maxsize=4096)
def nccl_table(kind: str, world_size: int, ic: Interconnect) -> tuple[tuple[str, str, float, float], ...]:
    """NCCL's (algorithm, protocol, latency us, algorithm bandwidth GB/s) of every pair it can run `kind` with among
    `world_size` GPUs of one node on `ic` (before the tree's size correction): ncclTopoTuneModel's tables."""
    arch, n, cc = _arch(ic.compute_capability), world_size, ic.compute_capability
    usable = ic.link_bandwidth_bytes_per_s * ic.efficiency / 1e9
    link = "pci" if ic.kind == "pcie" else "nvlink"
    # LL128 is on by default only over NVLink paths (path type <= PATH_NVB), from sm70
    protocols = ("LL", "LL128", "Simple") if link == "nvlink" and cc >= 70 else ("LL", "Simple")
    buses = bus_bandwidths(usable, cc)
    steps = {"all_reduce": 2 * (n - 1), "all_gather": n - 1, "reduce_scatter": n - 1, "broadcast": n}[kind]
    out = []
    for p in protocols:
        i = PROTOCOLS.index(p)
        # a broadcast's channels all follow one ring (sameChannels): one step's latency
        hops = 1 if kind == "broadcast" else steps
        out.append(("ring", p, BASE_LATENCY_US["ring"][i] + hops * HW_LATENCY_US[link]["ring"][i],
                    buses["ring", p] * n / steps))
    for p in protocols if kind == "all_reduce" else ():
        i = PROTOCOLS.index(p)
        latency = BASE_LATENCY_US["tree"][i] + 2 * (n - 1) * HW_LATENCY_US[link]["tree"][i]
        out.append(("tree", p, latency, buses["tree", p] * TREE_ALGORITHM_SHARE))
    graph = nvls_channels(usable, n, cc) if ic.nvls and NVLS_EFFICIENCY[arch] > 0 and kind != "broadcast" else None
    if graph is not None:
        heads, intra, inter = graph  # one channel per GPU
        intra_bw = intra * NVLS_EFFICIENCY[arch] * (heads - 1) / heads
        intra_bw *= 2 if kind == "all_reduce" else (n - 1) / n  # an all-reduce pipelines its two halves
        bus = heads * min(intra_bw, inter)
        # NVLS's latency is its hardware latency alone (tuning.cc sets, not adds, it); only the all-reduce's bus
        # bandwidth converts by n / steps
        out.append(("nvls", "Simple", HW_LATENCY_US["nvlink"]["nvls"][2], bus * n / steps if kind == "all_reduce"
                    else bus))
    return tuple(out)


def gloo_segments(nbytes: int, world_size: int) -> int:
    """Segments gloo's ring all-reduce splits `nbytes` into: at least two per rank, at most 1 MiB each, a multiple
    of the ranks (gloo/allreduce.cc)."""
    needed = max(-(-nbytes // GLOO_MAX_SEGMENT_BYTES), 2 * world_size)
    return -(-needed // world_size) * world_size


def gloo_cost(kind: str, nbytes: int, world_size: int, ic: Interconnect) -> CollectiveCost:
    """gloo's ring over loopback: messages x step latency + the bytes each rank sends over the fitted bandwidth."""
    if kind not in GLOO_COLLECTIVES:
        raise ValueError(f"loopback (gloo) models {', '.join(GLOO_COLLECTIVES)}, not {kind}")
    n = world_size
    if kind == "all_reduce":
        segments = gloo_segments(nbytes, n)
        messages, sent = 2 * (segments - segments // n), 2 * (n - 1) / n * nbytes
    else:  # all_gather: n - 1 steps of two half-chunks
        messages, sent = 2 * (n - 1), (n - 1) / n * nbytes
    step_s = ic.step_latency_s or 0.0  # sim.hardware requires it of kind loopback
    return CollectiveCost(kind, nbytes, n, "gloo-ring", "-", ic.collective_latency_s + messages * step_s,
                          sent / (ic.link_bandwidth_bytes_per_s * ic.efficiency))


class Link:
    """One rank's link to the rest of its tensor-parallel group, a SimPy resource of capacity 1: the collectives of
    one rank's stream run one at a time, in the order they ask for it (NCCL runs a communicator's collectives in
    stream order). Time is counted as the environment counts it: seconds by default, whole cycles (rounded up, as
    HwConfig.cycles) when `clock_hz` is given. `log` keeps (start, end, cost) of every collective run (cost None
    for one given by its duration alone)."""

    def __init__(self, env: simpy.Environment, clock_hz: float | None = None, name: str = "link") -> None:
        self.env, self.clock_hz, self.name = env, clock_hz, name
        self.resource = simpy.Resource(env, capacity=1)
        self.log: list[tuple[float, float, CollectiveCost | None]] = []

    def duration(self, cost: CollectiveCost) -> float:
        """The collective's time in the environment's unit."""
        return cost.time_s if self.clock_hz is None else math.ceil(cost.time_s * self.clock_hz)

    def run(self, cost: CollectiveCost) -> Iterator[simpy.Event]:
        """A process: wait for the link, hold it for the collective's time. The rank's compute waits for it
        (`yield env.process(link.run(cost))`)."""
        return self.hold(self.duration(cost), cost)

    def hold(self, duration: float, cost: CollectiveCost | None = None) -> Iterator[simpy.Event]:
        """A process: wait for the link, hold it for `duration` in the environment's unit (a collective whose time
        is known already: the engine's cycles); `cost` is what the log keeps of it."""
        with self.resource.request() as turn:
            yield turn
            start = self.env.now
            yield self.env.timeout(duration)
            self.log.append((start, self.env.now, cost))
