"""Project the latency of sequential and SPEED decoding on hardware you may not own.

    python -m sim.run --hw hwconfigs/a100.yaml

With no other flag it runs the built-in default, the paper's setting: T5-Base width, the shared 4x3 decoder
with SPEED against the same model decoded sequentially and against unshared 12- and 4-layer decoders; bf16,
batch 1, encoder input 128 tokens, 128 generated tokens, flips from the paper's Figure 4 profile. It replays
the committed traces in data/traces/ (no torch needed). Other models, lengths or flips are traced on demand
with the reference decoder on the meta device (needs torch; cached under ~/.cache/speed-sim/traces), by the trace
provider: the command SPEED_SIM_TRACER names, by default `python -m reference.capture.provider` (sim.provider).

Per configuration it prints the projected ms per token (decode stages / tokens) and per sequence (encoder,
prefill and decode), the speedup over each baseline, what bounds the time (shares of compute-, memory- and
latency-bound kernels and of the device idle waiting for the host: launch), the achieved DRAM bandwidth, the
roofline floor (every kernel at peak rates for the bytes it moves) and the device memory the run needs (weights,
KV cache at its longest, largest live activations: sim.memory); a run that does not fit a device's
dram_capacity_bytes is refused, naming the hwconfig and the figures. With --streams N > 1 independent
kernels may overlap (what a multi-stream runtime or graph compiler could do; PyTorch eager runs one stream):
the floor is then the aggregate one and a column gives the critical path of the dependency graph.

With --tp N (tensor parallelism; several values: one row per configuration and degree) the model is sharded over
N GPUs Megatron-style: the trace is rank 0's shard with its collectives (traced on demand, no processes start),
each collective timed by the hwconfig's interconnect model on the link while the rank's compute waits; ranks are
symmetric, so one is simulated. The table then gives the degree (TP) and the share of time in collectives (comm),
and memory is per GPU (the shard's weights, the replicated embedding whole, the rank's KV heads).

With --quant SCHEME (several: one row per configuration and scheme; "none" for the float weights) the block
projections' weights are quantized weight-only before tracing: int8 per output channel, int4 in groups of 32, 64
or 128 input features (reference.quant). Each quantized projection is one packed product in the trace, costed by
the kernel model with its packed bytes and its dequantization (sim.kernels), and memory counts the packed bytes.
A Hugging Face config.json with a GPTQ / AWQ `quantization_config` selects its scheme by itself. The table then
names each row's weight format (weights); speedups compare rows of the same format.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sim.command import check_outputs, integer, run_command
from sim.defaults import (
    DEFAULT_HW,
    DEFAULT_RUNS,
    DEFAULT_TOKENS,
    MAX_BATCH,
    MAX_TOKENS,
    default_trace,
    hwconfig_names,
    resolve_hwconfig,
)
from sim.engine import LAUNCH_MODES, Projection, breakdown, distinct_kernels, project
from sim.files import atomic_write, staged_writes
from sim.fusion import FusedTrace, fuse
from sim.hardware import HwConfig, HwConfigError, load_hwconfig
from sim.host import check_room
from sim.interconnect import interconnect_of
from sim.memory import device_memory
from sim.opkinds import QUANT_SCHEMES
from sim.provider import trace_files
from sim.trace import Trace, gc_paused, read_checked

MAX_STREAMS = 1024  # kernels in flight at once: more than any device runs (an H100 holds 128 hardware queues)
# host memory and time a projection takes per op executed, kept to the end (the kernels' times for the table,
# the timeline): measured on this project's 2-core machine, 1.37 GB peak and 66 s for llama2-7b's 4,000-token
# sequential trace of 5.7M ops (a single eager projection, the trace read included)
PROJECTION_BYTES_PER_OP = 240
PROJECTION_S_PER_OP = 12e-6
MAX_TP = 1 << 16  # tensor-parallel degree: the largest interconnect a hwconfig can describe (DEVICES_PER_NODE)
FLOAT_WEIGHTS = "none"  # --quant's name for the float weights (the model's dtype)


@dataclass
class Run:
    label: str  # e.g. "t5-base-4x3 speed"
    trace_path: Path
    trace: Trace  # as projected: under compiled launch, the fused trace
    projection: Projection
    summary: dict
    fused: tuple[Trace, FusedTrace] | None = None  # compiled launch: the traced trace, and the fused one

    @property
    def tp(self) -> int:
        """The tensor-parallel degree of the traced run."""
        return self.summary["tp"]

    @property
    def weights(self) -> str:
        """The weight format of the traced run: its quantization scheme, or the dtype of float weights."""
        return self.summary["quant"] or self.summary["dtype"]

    @property
    def covers(self) -> list[list[str]] | None:
        """Compiled launch: per kernel, the traced ops it covers ("module op")."""
        if self.fused is None:
            return None
        traced, fused = self.fused
        return [[f"{traced.ops[j].module} {traced.ops[j].op}" for j in group] for group in fused.covers]


def summarize(p: Projection, trace: Trace) -> dict:
    b = breakdown(p)
    tokens = max(p.tokens, 1)
    return {
        "hardware": p.hardware, "hw_path": p.hw_path, "launch": p.launch,
        "model": trace.header.model.get("name"), "decoder": trace.header.decoder, "dtype": trace.header.dtype,
        "tp": trace.header.tp, "quant": weight_format(trace), "batch": trace.header.batch, "tokens": p.tokens,
        "total_s": p.total_s,
        "decode_s": p.decode_s,
        "s_per_token": p.decode_s / tokens, "bound": b["shares"], "comm_s": b["comm_s"], "roofline_s": b["roofline_s"],
        "roofline_s_per_token": b["decode_roofline_s"] / tokens, "dram_bytes": b["dram_bytes"],
        "onchip_bytes": b["onchip_bytes"], "achieved_bandwidth_bytes_per_s": b["achieved_bandwidth_bytes_per_s"],
        "class_s": b["class_s"], "kernels": p.stats["kernels"], "stages": p.stats["stages"],
        "stages_simulated": p.stats["stages_simulated"], "streams": p.streams,
        "memory": p.memory.as_dict(),
        **({"critical_path_s": b["critical_path_s"]} if "critical_path_s" in b else {}),
    }


def weight_format(trace: Trace) -> str | None:
    """The weight-only scheme of a trace's quantized products, from their fields ("int8", "int4-g128"; formats
    that differ joined by "+"); None where it has none (float weights)."""
    formats = {op.weight_dtype if op.group_size is None else f"{op.weight_dtype}-g{op.group_size}"
               for op in trace.distinct if op.weight_dtype is not None}
    return "+".join(sorted(formats)) or None


def short(label: str) -> str:
    return label.replace(" sequential", " seq").removeprefix("t5-base-")


def print_table(runs: list[Run], baselines: list[str]) -> None:
    """One table of runs on one hwconfig; speedups are over each baseline (a sequential configuration's label) at
    the same tensor-parallel degree and weight format. A table with a run of TP > 1 gains the TP and comm (time in
    collectives) columns, one with a quantized run the weights column (each row's weight format)."""
    first = runs[0].summary
    streams = first["streams"]
    parallel = any(r.tp > 1 for r in runs)
    quantized = any(r.summary["quant"] for r in runs)
    print(f"\n{first['hardware']} ({first['hw_path']}), {first['launch']} launch"
          + (f", up to {streams} kernels at once" if streams > 1 else ""))
    width = max([16] + [len(short(b)) + 5 for b in baselines])
    speed_cols = "".join(f"{'vs ' + short(b):>{width}}" for b in baselines)
    print(f"{'configuration':<28}" + (f"{'weights':>10}" if quantized else "") + (f"{'TP':>3}" if parallel else "")
          + f"{'ms/token':>9}{'ms/seq':>9}{speed_cols}  "
          f"{'comp':>5}{'mem':>5}{'lat':>5}" + (f"{'comm':>5}" if parallel else "") + f"{'launch':>7}"
          f"{'DRAM GB/s':>10}{'floor ms/tok':>13}{'mem GB':>8}" + (f"{'path ms/tok':>12}" if streams > 1 else ""))
    per_token = {(r.label, r.tp, r.weights): r.summary["s_per_token"] for r in runs if r.summary["s_per_token"] > 0}
    for r in runs:
        s = r.summary
        decodes = s["s_per_token"] > 0  # a run with no decode stage (an encoder alone) has no per-token figure
        speedups = "".join(f"{per_token[b, r.tp, r.weights] / s['s_per_token']:>{width - 1}.2f}x"
                           if (b, r.tp, r.weights) in per_token and decodes else f"{'-':>{width}}" for b in baselines)
        shares = s["bound"]
        print(f"{r.label:<28}" + (f"{r.weights:>10}" if quantized else "") + (f"{r.tp:>3}" if parallel else "")
              + f"{_ms(s['s_per_token'], 9, 3, decodes)}"
              f"{s['total_s'] * 1e3:>9.1f}{speedups}  "
              f"{shares['compute'] * 100:>4.0f}%{shares['memory'] * 100:>4.0f}%{shares['latency'] * 100:>4.0f}%"
              + (f"{shares['comm'] * 100:>4.0f}%" if parallel else "")
              + f"{shares['launch'] * 100:>6.0f}%{s['achieved_bandwidth_bytes_per_s'] / 1e9:>10.1f}"
              f"{_ms(s['roofline_s_per_token'], 13, 4, decodes)}{s['memory']['total_bytes'] / 1e9:>8.2f}"
              + (_ms(s['critical_path_s'] / max(s['tokens'], 1), 12, 4, decodes) if streams > 1 else ""))


def _ms(seconds: float, width: int, digits: int, shown: bool) -> str:
    """Seconds as a right-aligned ms column, or "-" where the figure does not exist."""
    return f"{seconds * 1e3:>{width}.{digits}f}" if shown else f"{'-':>{width}}"


def check_finite(summary: dict, where: str) -> None:
    """Refuse a projection with a figure that is not finite, naming the run and the figure, rather than print it
    (the hwconfig ranges and the engine's guard should make this unreachable: the last line of defence)."""
    for key, value in summary.items():
        if isinstance(value, dict):
            check_finite(value, f"{where}, {key}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: the projection's {key} is {value}; refused rather than printed (the "
                             "trace's or the hwconfig's figures are out of range)")


def lanes(starts: list[int], ends: list[int]) -> list[int]:
    """A track per kernel such that kernels on one track never overlap (the lowest free track first)."""
    free: list[int] = []  # min-heap of free lanes
    busy: list[tuple[int, int]] = []  # min-heap of (end, lane)
    out, n_lanes = [0] * len(starts), 0
    for i in sorted(range(len(starts)), key=lambda i: (starts[i], i)):
        while busy and busy[0][0] <= starts[i]:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, n_lanes = n_lanes, n_lanes + 1
        out[i] = lane
        heapq.heappush(busy, (ends[i], lane))
    return out


def perfetto_events(runs: list[Run]) -> list[dict]:
    """Chrome trace events (viewable in Perfetto or chrome://tracing): per run a process with a host track
    (kernel issues), device tracks (kernels, named by class and module, with their bound; one track unless
    kernels overlap) and, for a tensor-parallel run, a link track (its collectives, with NCCL's bytes and group
    size)."""
    events: list[dict] = []
    for pid, run in enumerate(runs, start=1):
        p, all_covers = run.projection, run.covers
        us = 1e6 / p.clock_hz
        shard = f", rank 0 of TP {run.tp}" if run.tp > 1 else ""
        events.append({"ph": "M", "name": "process_name", "pid": pid,
                       "args": {"name": f"{run.label} on {p.hardware} ({p.launch}{shard})"}})
        on_link = [k.collective is not None for k in p.kernels]
        compute = [i for i, link in enumerate(on_link) if not link]
        track = dict(zip(compute, lanes([p.start_cycles[i] for i in compute], [p.end_cycles[i] for i in compute])))
        n_lanes = max(track.values(), default=0) + 1
        link_tid = 2 + n_lanes
        names = [(1, "host")] + [(2 + lane, "device" if lane == 0 else f"device {lane}") for lane in range(n_lanes)]
        for tid, name in names + ([(link_tid, "link")] if any(on_link) else []):
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
        for n, (op, k, cost, dram, issue, start, end) in enumerate(zip(
                run.trace.ops, p.kernels, p.costs, p.dram_bytes, p.issue_cycles, p.start_cycles, p.end_cycles)):
            covers = all_covers[n] if all_covers else None
            args = {"op": op.op, "bound": cost.bound, "floor_us": cost.floor_s * 1e6, "dram_bytes": dram,
                    "stage": op.stage, **({"covers": covers} if covers and len(covers) > 1 else {})}
            if k.collective is not None:
                args.update(collective=k.collective[0], bytes=k.collective[1], ranks=k.collective[2])
            name = f"{k.cls} {op.module}" + (f" (+{len(covers) - 1} ops)" if covers and len(covers) > 1 else "")
            tid = link_tid if on_link[n] else 2 + track[n]
            events.append({"ph": "X", "pid": pid, "tid": tid, "ts": start * us, "dur": (end - start) * us,
                           "name": name, "args": args})
            events.append({"ph": "i", "s": "t", "pid": pid, "tid": 1, "ts": issue * us, "name": "issue"})
    return events


def plot(runs_by_hw: list[list[Run]], out: Path) -> None:
    """Bars of ms/token per configuration, one series per (hwconfig, launch), the roofline floor marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in runs_by_hw[0]]
    width = 0.8 / len(runs_by_hw)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(labels), 4.5))
    for h, runs in enumerate(runs_by_hw):
        xs = [i + h * width for i in range(len(runs))]
        ax.bar(xs, [r.summary["s_per_token"] * 1e3 for r in runs], width,
               label=f"{runs[0].summary['hardware']}, {runs[0].summary['launch']}")
        ax.scatter(xs, [r.summary["roofline_s_per_token"] * 1e3 for r in runs], marker="_", s=300, color="black",
                   label="roofline floor" if h == 0 else None, zorder=3)
    ax.set_xticks([i + width * (len(runs_by_hw) - 1) / 2 for i in range(len(labels))], labels, rotation=15)
    ax.set_ylabel("projected decode time (ms / token)")
    ax.set_yscale("log")
    ax.set_title("speed-sim projection")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def parse_sets(items: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """--set KEY=VALUE items as {key: value text}; each key at most once."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            shown = item if len(item) <= 60 else item[:57] + "..."
            parser.error(f"--set expects key=value (e.g. peak.dram_bandwidth_bytes_per_s=4e12), got {shown!r}")
        if key in out:
            parser.error(f"--set {key}: given twice")
        out[key] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", nargs="+", default=[DEFAULT_HW], metavar="NAME_OR_FILE",
                        help=f"hwconfig(s), projected side by side: a shipped device by name ({DEFAULT_HW}, h200, ...; "
                        f"--list-hw lists them) or a YAML file (default {DEFAULT_HW})")
    parser.add_argument("--list-hw", action="store_true", help="list the shipped hwconfigs and exit")
    parser.add_argument("--trace", nargs="+", type=Path, help="replay these trace files (recorded or measured) "
                        "instead of the default configurations")
    parser.add_argument("--model", help="a model preset (e.g. llama2-7b-8x4), a Hugging Face config.json of the Llama "
                        "family (Llama, Mistral, Qwen2; e.g. data/hfconfigs/mistral-7b-v0.1/config.json) or a model "
                        "config YAML file (ModelConfig's fields): traced on demand on the meta device (needs torch)")
    parser.add_argument("--share", metavar="NdxG", help="with --model: its cyclically shared variant, Nd unique blocks "
                        "applied G times (e.g. 8x4 for 32 layers; refused unless Nd x G is the layer count)")
    parser.add_argument("--decoder", choices=("speed", "sequential", "both"), default="both",
                        help="with --model: which decoders to project (default both)")
    parser.add_argument("--tokens", type=integer(1, MAX_TOKENS), default=DEFAULT_TOKENS,
                        help=f"tokens to generate (default {DEFAULT_TOKENS}; other values trace on demand; at most "
                        f"{MAX_TOKENS:,}, and what the model's positions hold)")
    parser.add_argument("--batch", type=integer(1, MAX_BATCH), default=1, help="sequences decoded together (default "
                        f"1; others trace on demand; at most {MAX_BATCH:,})")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="model dtype (default bfloat16; others trace on demand)")
    parser.add_argument("--flips", help="SPEED flips for traces made on demand: a profile of data/flips/*.yaml "
                        "(paper-fig4.yaml: the paper's; trained.yaml: the code-* models trained here) or rates per "
                        "exit '0.09,0.04' (default: the preset's profile, else the paper's for the same G)")
    parser.add_argument("--launch", nargs="+", choices=LAUNCH_MODES,
                        help="how the decode runs, one table each: eager: the host pays a dispatch + launch per kernel "
                        "(PyTorch eager); graph: the eager kernels of a stage replayed as one CUDA graph; compiled: "
                        "compiled decoding (torch.compile / XLA): its static-shape step traced, pointwise, norm and "
                        "reduction chains fused into the kernels a compiler generates (sim.fusion), one graph per "
                        "stage. Default: eager compiled (compiled skipped, with a note, for given traces of a format "
                        "before 3, which record no data flow to fuse)")
    parser.add_argument("--streams", type=integer(1, MAX_STREAMS), default=1,
                        help="kernels that may run at once (default 1: one stream in program order, as PyTorch "
                        f"eager runs; at most {MAX_STREAMS}). N > 1: independent kernels of the trace's "
                        "dependency graph overlap and share compute units and DRAM bandwidth (a what-if; "
                        "accelerators only)")
    parser.add_argument("--tp", nargs="+", type=integer(1, MAX_TP), default=[1], metavar="N",
                        help="tensor-parallel degrees (default 1): each configuration sharded Megatron-style over N "
                        "GPUs, one row per configuration and degree; traced on demand (rank 0's shard with its "
                        "all-reduces and the vocabulary-parallel head's all-gather, on the meta device), collectives "
                        "timed by the hwconfig's interconnect section (needed for N > 1, and N at most its "
                        "devices_per_node); memory per GPU. N must divide the model's heads, KV heads and FFN size")
    parser.add_argument("--quant", nargs="+", choices=(FLOAT_WEIGHTS, *QUANT_SCHEMES), metavar="SCHEME",
                        help="weight-only quantization of the block projections, traced on demand (needs torch): "
                        f"{', '.join(QUANT_SCHEMES)} (int8 per output channel; int4 in groups of 32, 64 or 128 input "
                        f"features, with scales and zero points), or {FLOAT_WEIGHTS} (the float weights); several: one "
                        "row per configuration and scheme. The group size must divide each layer's input features "
                        "(and, with --tp, each shard's). A config.json with a quantization_config (GPTQ/AWQ) selects "
                        "its scheme by itself")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a hwconfig field for what-if studies, e.g. --set "
                        "peak.dram_bandwidth_bytes_per_s=4e12 (repeatable; compute_units scales the peak rates)")
    parser.add_argument("--json", type=Path, help="write the results as JSON: {'runs': [...]} ")
    parser.add_argument("--perfetto", type=Path, help="write the simulated timeline (Chrome trace JSON, opens in "
                        "Perfetto / chrome://tracing)")
    parser.add_argument("--plot", type=Path, help="write a bar chart of ms/token per configuration (PNG)")
    return parser


def load_hws(names: list[str], overrides: dict[str, str], parser: argparse.ArgumentParser) -> list[HwConfig]:
    """The hwconfigs named on the command line (shipped names or files), with the --set overrides applied."""
    try:
        hws = [load_hwconfig(resolve_hwconfig(name)) for name in names]
        return [hw.with_overrides(overrides) for hw in hws] if overrides else hws
    except HwConfigError as err:
        parser.error(str(err))


def check_interconnects(hws: list[HwConfig], degrees: list[int], parser: argparse.ArgumentParser) -> None:
    """`parser.error` naming the hwconfig and its field where one cannot run a tensor-parallel group of a degree
    asked for (no interconnect section, or a group larger than its node), before any tracing."""
    for hw in hws:
        for tp in degrees:
            if tp > 1:
                try:
                    interconnect_of(hw, tp)
                except HwConfigError as err:
                    parser.error(f"--tp {tp}: {err}")


def trace_jobs(args: argparse.Namespace, launches: list[str]) -> dict[str, list[tuple[str, Path]]]:
    """Per launch, (label, trace file) of every configuration to project at every --tp degree and --quant scheme
    (degree by degree): given traces, a model traced on demand, or the built-in default (its committed traces, or
    traced on demand at other lengths, batches, dtypes, flips, degrees or weight schemes). Compiled launch projects
    the run compiled decoding makes (given traces as they are). Every trace made on demand comes from one call of
    the trace provider (sim.provider), none when all are committed or given."""
    if args.trace:
        return {launch: [(path.name.removesuffix(".jsonl.gz"), path) for path in args.trace] for launch in launches}
    if args.model:
        decoders = ("speed", "sequential") if args.decoder == "both" else (args.decoder,)
        configurations = [({"model": args.model, "share": args.share}, decoder) for decoder in decoders]
    elif (args.tokens, args.batch, args.dtype, args.flips, args.tp, args.quant) == (
            DEFAULT_TOKENS, 1, "bfloat16", None, [1], None):
        return {launch: [(f"{preset} {decoder}", default_trace(preset, decoder, launch == "compiled"))
                         for preset, decoder in DEFAULT_RUNS] for launch in launches}
    else:
        configurations = [({"model": preset}, decoder) for preset, decoder in DEFAULT_RUNS]
    quants = [None if q == FLOAT_WEIGHTS else q for q in dict.fromkeys(args.quant or [FLOAT_WEIGHTS])]
    runs = [({**model, "tp": tp, "quant": quant}, decoder) for tp in args.tp for quant in quants
            for model, decoder in configurations]
    traced = trace_files([{**model, "decoder": decoder, "tokens": args.tokens, "batch": args.batch,
                           "dtype": args.dtype, "flips": args.flips, "compiled": launch == "compiled"}
                          for launch in launches for model, decoder in runs])
    return {launch: [(f"{t.name} {decoder}", t.path) for (_, decoder), t in zip(runs, traced[n * len(runs):])]
            for n, launch in enumerate(launches)}


def project_all(hws: list[HwConfig], traces: list[tuple[str, Path, Trace]], launch: str, streams: int
                ) -> list[list[Run]]:
    """Every trace on every hwconfig: per hwconfig, the runs in trace order. Kernels are built once per trace
    and tile shape, and reused by every hwconfig with that tile shape."""
    runs_by_hw: list[list[Run]] = []
    kernels_cache: dict[tuple[int, tuple[int, int]], list] = {}
    fused: list[tuple[Trace, FusedTrace] | None] = [None] * len(traces)
    if launch == "compiled":  # fused once per trace, whatever the hwconfigs
        fused = [(trace, fuse(trace)) for _, _, trace in traces]
        traces = [(label, path, f[1].trace) for (label, path, _), f in zip(traces, fused)]
    executed = len(hws) * sum(trace.executed for _, _, trace in traces)
    check_room(f"projecting {executed:,} ops ({len(traces)} traces on {len(hws)} hwconfigs, {launch} launch)",
               executed * PROJECTION_BYTES_PER_OP)
    if executed * PROJECTION_S_PER_OP > 30:
        print(f"note: projecting {executed:,} ops ({launch} launch): about {executed * PROJECTION_S_PER_OP:.0f} s",
              file=sys.stderr)
    # refused where it exceeds a device's capacity: what the traced run allocates, the fused kernels' activations
    memory = [device_memory(f[0] if f else trace, f[1].trace if f else None) for (_, _, trace), f in zip(traces, fused)]
    progress = tqdm(total=len(hws) * len(traces), desc="projecting", leave=False, disable=None)
    for hw in hws:
        runs = []
        for t, (label, path, trace) in enumerate(traces):
            key = (t, (hw.tile.m, hw.tile.n))
            if key not in kernels_cache:
                kernels_cache[key] = distinct_kernels(trace, hw)
            projection = project(trace, hw, launch, kernels_cache[key], streams, memory[t])
            summary = summarize(projection, trace)
            check_finite(summary, f"{label} ({path}) on {hw.name} ({hw.path}), {launch} launch")
            runs.append(Run(label, path, trace, projection, summary, fused[t]))
            progress.update()
        runs_by_hw.append(runs)
    progress.close()
    return runs_by_hw


def write_outputs(args: argparse.Namespace, runs_by_hw: list[list[Run]]) -> None:
    all_runs = [r for runs in runs_by_hw for r in runs]
    if args.json:
        payload = {"runs": [dict(r.summary, label=r.label, trace=str(r.trace_path)) for r in all_runs]}
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))
    if args.perfetto:
        events = perfetto_events(all_runs)
        atomic_write(args.perfetto, lambda tmp: tmp.write_text(json.dumps({"traceEvents": events})))
    if args.plot:
        plot(runs_by_hw, args.plot)


def main(argv: list[str] | None = None) -> int:
    with gc_paused():  # a short command whose data is all kept to the end: no cyclic collections
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_hw:
        for name in hwconfig_names():
            print(name)
        return 0
    overrides = parse_sets(args.set, parser)
    for flag, given in (("--share", args.share), ("--decoder", args.decoder != "both")):
        if given and not args.model:
            parser.error(f"{flag} applies to a --model; give one")
    args.tp = list(dict.fromkeys(args.tp))
    traced = {"--model": args.model, "--tokens": args.tokens != DEFAULT_TOKENS, "--batch": args.batch != 1,
              "--dtype": args.dtype != "bfloat16", "--flips": args.flips, "--decoder": args.decoder != "both",
              "--tp": args.tp != [1], "--quant": args.quant}
    if args.trace and any(traced.values()):
        given = ", ".join(flag for flag, value in traced.items() if value)
        parser.error(f"--trace replays recorded runs as they are; {given} describe a run to trace: give one or the "
                     "other")
    model_file = [args.model] if args.model and Path(args.model).is_file() else []
    check_outputs(parser, {"--json": args.json, "--perfetto": args.perfetto, "--plot": args.plot},
                  inputs={"--hw": map(resolve_hwconfig, args.hw), "--trace": args.trace or [], "--model": model_file})
    hws = load_hws(args.hw, overrides, parser)
    check_interconnects(hws, args.tp, parser)
    launches = list(dict.fromkeys(args.launch or ["eager", "compiled"]))
    try:
        jobs = trace_jobs(args, launches)
    except ValueError as err:  # the trace provider's error line, or no provider
        parser.error(str(err))
    tables: list[list[Run]] = []  # per (launch, hwconfig)
    for launch in launches:
        try:
            traces = [(label, path, read_checked(path)) for label, path in jobs[launch]]
            if launch == "compiled" and not args.launch:  # by default only what can be fused
                for _, path, t in traces:
                    if t.header.version < 3:
                        print(f"note: {path} is trace format {t.header.version}, which records no data flow to fuse: "
                              "projected eager only (re-trace it for --launch compiled)", file=sys.stderr)
                traces = [x for x in traces if x[2].header.version >= 3]
            if traces:
                tables += project_all(hws, traces, launch, args.streams)
        except ValueError as err:  # a TraceError, or a request the engine refuses
            parser.error(str(err))
    for runs in tables:
        print_table(runs, list(dict.fromkeys(r.label for r in runs if r.summary["decoder"] == "sequential")))
    with staged_writes():  # all or none: a failing output replaces nothing
        write_outputs(args, tables)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.run"))
