"""One prepared measurement campaign on a CUDA GPU, within a time budget; on this CPU, with --device cpu --quick, the
same phases at tiny sizes, so that it is known to work before a GPU sees it (CI runs that).

    bash scripts/gpu_campaign.sh                          # a CUDA machine: data/measured/<gpu>/, at most 480 s
    bash scripts/gpu_campaign.sh --dry-run                # the plan: every command, the budget per phase; runs nothing
    bash scripts/gpu_campaign.sh --device cpu --quick --out /tmp/campaign   # this CPU, tiny presets (CI)

Phases, in order of value, each one command whose files are written when it ends:

1. env: the machine (scripts/device_facts.py) -> env.json.
2. microbench: reference.capture.microbench, the resources (copy ... graph_gap), the all-reduce sweep (GPUs present)
   and the decode sweeps (decode_gemm: products of 1, 2, 3, 4, 8, 16 rows by Llama-2-7B's, T5-Base's and
   TinyLlama's weights; decode_attention: one query row over 128 to 32k keys, MHA and GQA) -> microbench.json.
3. compiled-default, compiled-llama: compiled decoding (reference.capture.measure --compile; on cuda CUDA graphs,
   reference/compiled.py), bf16, batch 1, jobs interleaved: t5-base-4x3 SPEED and sequential, t5-base-12, t5-base-4
   at 128 tokens; llama2-7b-8x4 SPEED and sequential at 32 -> compiled/*.jsonl.gz (compile time excluded).
4. eager-default, eager-llama: the same eager, per-op CUDA kernel times -> *.jsonl.gz.

Budget (--budget-s, default 480 s on cuda): before each phase its seconds are estimated (the Pace figures below,
corrected by how earlier phases of its kind ran against their estimates); the first of its settings that fits
what is left runs (full; fewer repeats; fewer jobs; the SPEED job alone), else it is skipped; a phase still running
when the budget ends is stopped. Each choice is recorded. The estimates for cuda are in part guesses (no GPU ran
compiled decoding yet): the manifest records each phase's seconds, to replace them.

Output: the folder (--out, default data/measured/<gpu>, the name from torch.cuda.get_device_name) holds every
phase's files, manifest.json (per phase: status, setting, estimated and taken seconds, command, files, why it was
scaled or skipped), COMMANDS.md (the command that made each file) and campaign.log (all output); when $OUT is set
(the device tool) or --archive is given, the folder as one archive (campaign.tar.gz, members under <gpu>/),
refreshed after every phase, so that what finished comes back even when the call is cut off.

On this 2-core CPU the quick run took 90 s with inductor's cache warm, 195 s right after the CPU loop
(scripts/cpu_validation.sh, whose compiled variants it shares) at a load of 6, 414 s cold at a load of 5-7.

Stopping: Ctrl-C or SIGTERM stops the command in flight (its partial files are removed), writes the manifest,
COMMANDS.md and the archive of what finished, and exits 130 / 143. Exit status otherwise: 0 every phase done;
1 a phase failed (the others still ran); 3 a phase skipped or stopped for the budget.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

START = time.monotonic()  # the budget counts from here, before torch is imported
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's packages
    sys.path.insert(0, str(ROOT))

from reference.capture.microbench import (  # noqa: E402
    ATTENTION_LENGTHS,
    DECODE_PRESETS,
    DECODE_ROWS,
    DecodeSweep,
    decode_steps,
)
from reference.capture.revision import code_revision  # noqa: E402
from reference.config import ModelConfig, get_preset  # noqa: E402
from sim.command import number, run_command  # noqa: E402
from sim.files import atomic_write, output_problem  # noqa: E402

DEFAULT_BUDGET_S = {"cuda": 480.0, "cpu": 900.0}  # cuda: a device-tool call of <= 10 min, its start included
DEVICE_TOOL_FILE_BYTES = 16 << 20  # the largest file the device tool brings back from $OUT (its README)
RESERVE_S = 5.0  # kept back from the budget for the last manifest and archive
# the env phase always runs (its facts name the output folder): it gets at least this long, past the budget if need
# be, since importing torch on a busy machine takes tens of seconds
ENV_MIN_TIMEOUT_S = 60.0
GRACE_S = 20.0  # a stopped command's time to remove its partial files (it gets SIGTERM) before it is killed
PHASES = ("env", "microbench", "compiled-default", "compiled-llama", "eager-default", "eager-llama")
# Op records per layer a token passes, eager: ~36 for a decoder-only block (the H200 traces); a T5 block's third
# attention (cross) makes its work, and its records, about half as much again
OPS_PER_LAYER = 36
CROSS_ATTENTION = 1.5
NOT_SELECTED = "not among --phases"
# Tokens of compiled decoding on a cpu: the CPU loop's (scripts/cpu_validation.sh), so that the cache length and the
# compiled variants are the same, and inductor's cache (on disk) serves the loop's compilations: on a busy 2-core
# machine a cold compile of a tiny preset's variants takes 1-3 minutes, a cached one seconds
CPU_COMPILED_TOKENS = 128
DTYPE_TAG = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
PROGRESS_LINE = re.compile(r"\d+(\.\d+)?(it/s|s/it)\]|\|\s*\d+/\d+ \[")  # a tqdm refresh: kept out of the log


@dataclass(frozen=True)
class Pace:
    """The seconds the plan assumes, per device. cuda: eager figures fitted to the H200 runs of data/measured/h200
    (t5-base-4 / -12 sequential, 128 tokens: 0.84 / 1.40 s; llama2-7b-8x4 sequential, 32 tokens: 0.75 s); the
    copy rate the H100 gave (3.0 TB/s, the device tool's notes); compile figures guessed from this CPU's inductor
    (1.1-1.3 s per layer of a variant's graph) and gpt-fast's minute for Llama-7B; cpu: measured on this 2-core
    machine, one thread, tiny presets."""

    process_s: float  # a command's start: Python, torch, the device's context
    build_s_per_gparam: float  # building a model's seeded random weights, per 1e9 parameters
    compile_variant_s: float  # one compiled variant: Dynamo, Inductor and (cuda) CUDA graph recording, fixed part
    compile_layer_s: float  # ... and per layer in its graph (a layer with cross-attention counts CROSS_ATTENTION)
    eager_fixed_s: float  # an eager run's prompt, encoder and setup
    eager_token_s: float  # per token outside the layers (embedding, head, pipeline bookkeeping)
    eager_layer_s: float  # per token per layer it passes
    compiled_token_s: float  # per token of a compiled run: a graph replay and the host's bookkeeping
    stream_bytes_per_s: float  # weight bytes read per second (a compiled step streams every layer it passes)
    op_run_factor: float  # an eager per-op run (profiled on cuda, host-timed on cpu) over a timed run
    record_s: float  # capturing and writing one op record
    resources_s: float  # the resource microbenchmarks (copy ... graph_gap)
    resources_quick_s: float  # the same with --quick
    all_reduce_s: float  # the all-reduce sweep (cuda: one GPU has none)
    gemm_row_s: float  # one decode_gemm row
    attention_row_s: float  # one decode_attention row


PACE = {
    "cuda": Pace(process_s=12, build_s_per_gparam=2, compile_variant_s=8, compile_layer_s=1.5, eager_fixed_s=0.3,
                 eager_token_s=2e-3, eager_layer_s=0.36e-3, compiled_token_s=0.5e-3, stream_bytes_per_s=3.0e12,
                 op_run_factor=3, record_s=60e-6, resources_s=40, resources_quick_s=15, all_reduce_s=3,
                 gemm_row_s=0.1, attention_row_s=0.1),
    "cpu": Pace(process_s=4, build_s_per_gparam=20, compile_variant_s=3, compile_layer_s=1.1, eager_fixed_s=2e-3,
                eager_token_s=0.3e-3, eager_layer_s=0.2e-3, compiled_token_s=1.5e-3, stream_bytes_per_s=2e10,
                op_run_factor=5, record_s=300e-6, resources_s=90, resources_quick_s=22, all_reduce_s=20,
                gemm_row_s=0.03, attention_row_s=0.03),
}


@dataclass(frozen=True)
class Job:
    """One measured configuration: batch 1, the measure command's prompt and encoder lengths."""

    preset: str
    decoder: str
    tokens: int
    flips: str | None = None

    @property
    def cfg(self) -> ModelConfig:
        return get_preset(self.preset)

    def file(self, dtype: str) -> str:
        return f"{self.preset}.{self.decoder}.{DTYPE_TAG[dtype]}.b1.t{self.tokens}.jsonl.gz"

    def flags(self, out: str) -> str:
        flips = f" --flips {self.flips}" if self.flips else ""
        return f"--preset {self.preset} --decoder {self.decoder} --tokens {self.tokens}{flips} --out {shlex.quote(out)}"

    @property
    def passes(self) -> int:
        """Layers each stage's work passes: a sequential step all N = Nd x G; a SPEED stage the Nd shared ones."""
        return self.cfg.depth if self.decoder == "sequential" else self.cfg.n_unique_layers

    @property
    def graphs(self) -> list[int]:
        """Layers in each compiled variant's graph: one whole-step variant (sequential), or one stage variant per
        rows in flight, 1 to G (SPEED)."""
        return [self.cfg.depth] if self.decoder == "sequential" else [self.cfg.n_unique_layers] * self.cfg.n_groups


@dataclass(frozen=True)
class MicrobenchSetup:
    """What the microbenchmark command runs: `only` (its --only), quick sizes, threads, and the decode sweeps'
    rows and key lengths (at reference.capture.microbench's default presets of the device)."""

    only: tuple[str, ...]
    quick: bool = False
    threads: int | None = None
    rows: tuple[int, ...] = DECODE_ROWS
    lengths: tuple[int, ...] = ATTENTION_LENGTHS

    def flags(self) -> list[str]:
        flags = ["--quick"] if self.quick else []
        flags += ["--threads", str(self.threads)] if self.threads else []
        flags += ["--only", *self.only]
        if {"decode_gemm", "decode_attention"} & set(self.only):
            flags += ["--decode-rows", *map(str, self.rows), "--attention-lengths", *map(str, self.lengths)]
        return flags

    def sweep(self, device: str) -> DecodeSweep:
        return DecodeSweep(DECODE_PRESETS[device], "float32", self.rows, self.lengths, "decode_gemm" in self.only,
                           "decode_attention" in self.only)


@dataclass(frozen=True)
class Settings:
    """What the campaign measures on a device: dtype, jobs, runs, and the microbenchmark (full, and reduced)."""

    dtype: str
    default_jobs: tuple[Job, ...]  # the simulator's default configurations (or their tiny stand-ins)
    llama_jobs: tuple[Job, ...]  # a Llama-shaped model (or a tiny decoder-only one)
    warmup: int
    repeats: int
    op_repeats: int
    threads: int | None
    microbench: MicrobenchSetup
    microbench_reduced: MicrobenchSetup
    eager_tokens: int | None = None  # the eager jobs' tokens where they differ from the compiled ones'


SWEEPS = ("decode_gemm", "decode_attention")


def settings(device: str, quick: bool) -> Settings:
    """cuda: the default configurations and llama2-7b-8x4 (bf16), two warm-up runs (the first compiles; the
    second replays the graphs once before timing); cpu: tiny stand-ins (float32, one thread) of an
    encoder-decoder (tiny-t5-2x3) and a grouped-query decoder-only model (tiny-4x3), no all-reduce sweep (CI's
    CPU loop has it), compiled at CPU_COMPILED_TOKENS, eager at 16 (--quick) or 32. --quick: fewer tokens and
    runs, the microbenchmark's quick sizes."""
    if device == "cuda":
        tokens, llama_tokens = (32, 16) if quick else (128, 32)
        default = (Job("t5-base-4x3", "speed", tokens), Job("t5-base-4x3", "sequential", tokens),
                   Job("t5-base-12", "sequential", tokens), Job("t5-base-4", "sequential", tokens))
        llama = (Job("llama2-7b-8x4", "speed", llama_tokens, "0.09,0.04,0.02"),
                 Job("llama2-7b-8x4", "sequential", llama_tokens))
        full = MicrobenchSetup(("resources", "all_reduce", *SWEEPS))
        reduced = replace(full, quick=True, rows=(1, 2, 4, 16), lengths=(128, 2048, 32768))
        return Settings("bfloat16", default, llama, 2, 3 if quick else 5, 1, None, reduced if quick else full, reduced)
    default = (Job("tiny-t5-2x3", "speed", CPU_COMPILED_TOKENS, "0.09,0.04"),
               Job("tiny-t5-2x3", "sequential", CPU_COMPILED_TOKENS))
    llama = (Job("tiny-4x3", "speed", CPU_COMPILED_TOKENS, "0.09,0.04"), Job("tiny-4x3", "sequential",
                                                                            CPU_COMPILED_TOKENS))
    reduced = MicrobenchSetup(("resources", *SWEEPS), True, 1, (1, 2, 4, 16), (128, 1024))
    full = reduced if quick else replace(reduced, quick=False, lengths=(128, 1024, 8192))
    return Settings("float32", default, llama, 1, 3 if quick else 5, 1, 1, full, reduced, 16 if quick else 32)


@dataclass
class Level:
    """One setting of a phase: its command (argv after the interpreter), the files it writes (relative to the
    output folder), its estimated seconds and what they are made of."""

    label: str
    argv: list[str]
    files: list[str]
    estimate_s: float
    detail: list[str]
    stdout_file: str | None = None  # the command's stdout is this file (env)


@dataclass
class Phase:
    """A phase and, once run, its outcome."""

    name: str
    family: str  # phases of one family correct each other's estimates: env, microbench, compiled, eager
    what: str
    levels: list[Level]
    status: str = "pending"  # pending, done, failed, skipped, stopped
    level: Level | None = None
    seconds: float | None = None
    note: str = ""
    exit_code: int | None = None
    output_tail: list[str] = field(default_factory=list)


def layer_params(cfg: ModelConfig) -> int:
    """Parameters of one decoder block: attention (q, k, v, o; cross-attention's four too) and the FFN."""
    d, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
    attention = 2 * d * d + 2 * d * kv + (4 * d * d if cfg.is_encoder_decoder else 0)
    return attention + (3 if cfg.ffn in ("swiglu", "gated-gelu") else 2) * d * cfg.d_ff


def model_params(cfg: ModelConfig) -> int:
    """Parameters of the model (shared blocks, encoder, embeddings and head), roughly: what building it costs."""
    return (cfg.n_unique_layers + cfg.n_encoder_layers) * layer_params(cfg) + 2 * cfg.vocab_size * cfg.d_model


def job_estimate(job: Job, s: Settings, pace: Pace, compiled: bool, repeats: int) -> dict[str, float]:
    """Seconds of one job in a measure command: build, compile, timed and warm-up runs, the per-op or capture run."""
    cfg = job.cfg
    cross = CROSS_ATTENTION if cfg.is_encoder_decoder else 1.0
    eager_run = pace.eager_fixed_s + job.tokens * (pace.eager_token_s + job.passes * cross * pace.eager_layer_s)
    records = job.tokens * job.passes * cross * OPS_PER_LAYER * pace.record_s
    out = {"build": model_params(cfg) / 1e9 * pace.build_s_per_gparam}
    if compiled:
        stream = job.passes * layer_params(cfg) * DTYPE_BYTES[s.dtype] / pace.stream_bytes_per_s
        out["compile"] = sum(pace.compile_variant_s + layers * cross * pace.compile_layer_s for layers in job.graphs)
        out["runs"] = (s.warmup + repeats) * (pace.eager_fixed_s + job.tokens * (pace.compiled_token_s + stream))
        out["capture"] = eager_run + records  # one uncompiled run under the capture
    else:
        out["runs"] = (s.warmup + repeats) * eager_run
        out["capture"] = s.op_repeats * (pace.op_run_factor * eager_run + records)
    return out


def measure_level(label: str, jobs: tuple[Job, ...], compiled: bool, repeats: int, device: str, s: Settings,
                  pace: Pace, out: str) -> Level:
    """A measure command of `jobs`, interleaved, into `out` (compiled traces under compiled/)."""
    sub = "compiled/" if compiled else ""
    argv = ["-m", "reference.capture.measure", "--device", device, "--quiet", "--dtype", s.dtype, "--warmup",
            str(s.warmup), "--repeats", str(repeats), "--op-repeats", str(s.op_repeats)]
    argv += ["--threads", str(s.threads)] if s.threads else []
    argv += ["--compile"] if compiled else []
    files, detail, total = [], [], pace.process_s
    for job in jobs:
        files.append(sub + job.file(s.dtype))
        argv += ["--job", job.flags(f"{out}/{files[-1]}")]
        parts = job_estimate(job, s, pace, compiled, repeats)
        total += sum(parts.values())
        n = len(job.graphs)
        variants = f" ({n} variant{'s' if n > 1 else ''})" if compiled else ""
        detail.append(f"{job.preset} {job.decoder}, {job.tokens} tokens: " + ", ".join(
            f"{k}{variants if k == 'compile' else ''} {v:.1f} s" for k, v in parts.items()))
    return Level(label, argv, files, total, detail)


def measure_levels(jobs: tuple[Job, ...], compiled: bool, device: str, s: Settings, pace: Pace,
                   out: str) -> list[Level]:
    """A measure phase's settings, most complete first: all jobs; fewer repeats; the shared model's SPEED and
    sequential pair (the comparison); the SPEED job alone."""
    cut = min(3, s.repeats)
    choices = [("full", jobs, s.repeats), (f"{cut} repeats", jobs, cut),
               (f"SPEED and sequential of {jobs[0].preset}, {cut} repeats", jobs[:2], cut),
               (f"SPEED alone, {cut} repeats", jobs[:1], cut)]
    levels, seen = [], set()
    for label, js, repeats in choices:
        if (len(js), repeats) not in seen:
            seen.add((len(js), repeats))
            levels.append(measure_level(label, js, compiled, repeats, device, s, pace, out))
    return levels


def microbench_level(label: str, setup: MicrobenchSetup, device: str, pace: Pace, out: str) -> Level:
    """A microbenchmark command and its estimate (resources, all-reduce, the decode sweeps' rows)."""
    sweep = setup.sweep(device)
    gemm_rows = decode_steps(replace(sweep, attention=False)) if sweep.gemm else 0
    attention_rows = decode_steps(replace(sweep, gemm=False)) if sweep.attention else 0
    parts = {"start": pace.process_s,
             "resources": (pace.resources_quick_s if setup.quick else pace.resources_s) * ("resources" in setup.only),
             "all_reduce": pace.all_reduce_s * ("all_reduce" in setup.only),
             f"decode_gemm {gemm_rows} rows": gemm_rows * pace.gemm_row_s,
             f"decode_attention {attention_rows} rows": attention_rows * pace.attention_row_s}
    argv = ["-m", "reference.capture.microbench", "--device", device, *setup.flags(), "--out", f"{out}/microbench.json"]
    return Level(label, argv, ["microbench.json"], sum(parts.values()),
                 [", ".join(f"{k} {v:.1f} s" for k, v in parts.items() if v)])


def env_phase(device: str) -> Phase:
    """The machine's facts (its name names the output folder)."""
    level = Level("-", ["scripts/device_facts.py", "--device", device], ["env.json"], PACE[device].process_s,
                  ["torch's view of the device, nvidia-smi's"], stdout_file="env.json")
    return Phase("env", "env", "the machine: versions, the device as torch and nvidia-smi see it", [level])


def plan(device: str, quick: bool, out: str) -> list[Phase]:
    """Every phase with its settings, in order of value."""
    s, pace = settings(device, quick), PACE[device]
    what = {"default": "the default configurations", "llama": "a Llama-2-7B-shaped model" if device == "cuda"
            else "a grouped-query decoder-only model"}
    phases = [env_phase(device),
              Phase("microbench", "microbench", "microbenchmarks with the decode sweeps",
                    [microbench_level("full", s.microbench, device, pace, out),
                     microbench_level("reduced", s.microbench_reduced, device, pace, out)])]
    for compiled in (True, False):
        mode = "compiled" if compiled else "eager"
        for key, jobs in (("default", s.default_jobs), ("llama", s.llama_jobs)):
            if not compiled and s.eager_tokens:
                jobs = tuple(replace(job, tokens=s.eager_tokens) for job in jobs)
            how = ("compiled decoding (CUDA graphs)" if device == "cuda" else "compiled decoding") if compiled else \
                "eager decoding, per-op times"
            phases.append(Phase(f"{mode}-{key}", mode, f"{how} of {what[key]}",
                                measure_levels(jobs, compiled, device, s, pace, out)))
    for phase in phases:  # one setting per distinct estimate (the reduced microbenchmark may equal the full one)
        phase.levels = [lv for i, lv in enumerate(phase.levels) if all(lv.argv != o.argv for o in phase.levels[:i])]
    return phases


def gpu_folder(name: str) -> str:
    """A folder name for a GPU: its model (H100, A100, L4), lower case, with -pcie or -nvl for those variants
    ('NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA H100 PCIe' -> 'h100-pcie'); else the whole name, sanitized."""
    bare = name.replace("NVIDIA", "")
    model = re.search(r"\b([A-Z]+\d+[A-Za-z]?)(?=\b|-)", bare)
    if not model:
        return re.sub(r"[^a-z0-9]+", "-", bare.lower()).strip("-") or "gpu"
    variant = "".join(f"-{v.lower()}" for v in ("PCIe", "NVL") if re.search(rf"\b{v}\b", name))
    return model[1].lower() + variant


def shown_path(path: Path) -> str:
    """A path as commands show it: relative to the repository root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def shown(argv: list[str], stdout_file: str | None = None, out: str = "") -> str:
    """A command as it can be run again from the repository root."""
    line = shlex.join(["python", *argv])
    return f"{line} > {out}/{stdout_file}" if stdout_file else line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bash scripts/gpu_campaign.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to measure (default cuda)")
    parser.add_argument("--quick", action="store_true", help="fewer tokens, runs and microbenchmark sizes (cpu: the "
                        "CI run, 1.5-3.5 min on 2 busy cores after the CPU loop)")
    parser.add_argument("--out", type=Path, help="output folder (default data/measured/<gpu>: the GPU's model from "
                        "torch.cuda.get_device_name, e.g. h100; data/measured/cpu on cpu)")
    parser.add_argument("--gpu", help="the folder name under data/measured instead of the one made from the device")
    parser.add_argument("--budget-s", type=number(1, 86400), help="seconds for the whole campaign (default 480 on "
                        "cuda, 900 on cpu); phases are scaled down or skipped to fit, the one running stopped at it")
    parser.add_argument("--phases", nargs="+", choices=PHASES[1:], metavar="PHASE",
                        help=f"run only these phases (env always runs): {', '.join(PHASES[1:])}")
    parser.add_argument("--archive", type=Path, help="the output folder as a .tar.gz, refreshed after every phase "
                        "(default: $OUT/campaign.tar.gz when OUT is set, as on the device tool's machine)")
    parser.add_argument("--dry-run", "--print", action="store_true", help="print every phase's command, settings and "
                        "estimated seconds against the budget; run nothing")
    return parser


def print_plan(phases: list[Phase], device: str, budget_s: float, out: str, archive: Path | None) -> None:
    """The dry run: per phase the setting the a priori estimates choose, its command and the budget arithmetic."""
    print(f"campaign plan on {device} (dry run: nothing runs); budget {budget_s:.0f} s, {RESERVE_S:.0f} s of it kept "
          f"for the manifest and the archive")
    print(f"output: {out}/ (manifest.json, COMMANDS.md, campaign.log); archive: {archive or 'none (OUT not set)'}")
    left = budget_s - RESERVE_S
    for phase in phases:
        level = next((lv for lv in phase.levels if lv.estimate_s <= left), None)
        if level is None:
            print(f"\n[{phase.name}] SKIPPED: the smallest setting needs {phase.levels[-1].estimate_s:.0f} s, "
                  f"{left:.0f} s left")
            continue
        left -= level.estimate_s
        print(f"\n[{phase.name}] {phase.what}; setting {level.label!r}: ~{level.estimate_s:.0f} s "
              f"(ends at ~{budget_s - RESERVE_S - left:.0f} s, {left:.0f} s left)")
        print("  " + shown(level.argv, level.stdout_file, out))
        for line in level.detail:
            print(f"    {line}")
        others = [f"{lv.label} ~{lv.estimate_s:.0f} s" for lv in phase.levels if lv is not level]
        if others:
            print("    other settings: " + "; ".join(others))
    print(f"\nplanned: ~{budget_s - RESERVE_S - left:.0f} s of {budget_s:.0f} s")


class Campaign:
    """Runs the phases against the budget and keeps the record (manifest, COMMANDS.md, log, archive) current."""

    def __init__(self, args: argparse.Namespace, budget_s: float, archive: Path | None) -> None:
        self.args, self.budget_s, self.archive = args, budget_s, archive
        self.phases = [env_phase(args.device)]  # the rest once the output folder is known
        self.t0 = START
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.out: Path | None = None
        self.facts: dict[str, Any] = {}
        self.log: TextIO | None = None
        self.pending_log: list[str] = []
        self.ratios: dict[str, list[tuple[float, float]]] = {}  # family -> (taken, estimated) seconds
        self.finished = False  # the campaign ended (done, or stopped): no phase still to run

    def remaining_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def say(self, text: str) -> None:
        line = f"[campaign {time.monotonic() - self.t0:6.1f} s] {text}\n"
        sys.stdout.write(line)
        self.write_log(line)

    def write_log(self, text: str) -> None:
        if self.log is None:
            self.pending_log.append(text)
        else:
            self.log.write(text)
            self.log.flush()

    def open_output(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "campaign.log", "w")  # noqa: SIM115 (open for the whole campaign)
        self.log.write("".join(self.pending_log))

    def pace_factor(self, family: str) -> float:
        """How this family's finished phases ran against their estimates (taken / estimated, within 0.5 to 4)."""
        done = self.ratios.get(family)
        if not done:
            return 1.0
        return min(4.0, max(0.5, sum(t for t, _ in done) / max(1e-9, sum(e for _, e in done))))

    def choose(self, phase: Phase) -> Level | None:
        """The first setting whose corrected estimate fits what is left; the reason for the choice in phase.note."""
        factor, left = self.pace_factor(phase.family), self.remaining_s() - RESERVE_S
        scaled = f" (estimates x{factor:.2f}, from the {phase.family} phases so far)" if factor != 1.0 else ""
        for i, level in enumerate(phase.levels):
            if level.estimate_s * factor <= left:
                if i:
                    phase.note = (f"reduced to {level.label!r}: {phase.levels[0].label!r} needs "
                                  f"~{phase.levels[0].estimate_s * factor:.0f} s, {left:.0f} s left{scaled}")
                return level
        smallest = phase.levels[-1].estimate_s * factor
        phase.note = f"skipped for the budget: the smallest setting needs ~{smallest:.0f} s, {left:.0f} s left{scaled}"
        return None

    def run(self) -> int:
        try:
            self.run_env()
            self.phases[1:] = plan(self.args.device, self.args.quick, shown_path(self.out))[1:]
            for phase in self.phases[1:]:
                if self.args.phases and phase.name not in self.args.phases:
                    phase.status, phase.note = "skipped", NOT_SELECTED
            for phase in self.phases[1:]:
                if phase.status == "pending":
                    self.run_phase(phase)
        finally:
            self.finished = True
            self.record()
            if self.log is not None:
                self.log.close()
        return {"complete": 0, "failed": 1}.get(self.status(), 3)

    def status(self) -> str:
        """running, complete (every selected phase done), failed (one failed) or incomplete (skipped, stopped)."""
        statuses = {p.status for p in self.phases if p.note != NOT_SELECTED}
        if "pending" in statuses and self.out is not None and not self.finished:
            return "running"
        return "complete" if statuses == {"done"} else "failed" if "failed" in statuses else "incomplete"

    def run_env(self) -> None:
        """The env phase: the device's facts name the output folder."""
        phase = self.phases[0]
        level = phase.level = phase.levels[0]
        self.say(f"env: {shown(level.argv)}")
        t0 = time.monotonic()
        try:
            done = subprocess.run([sys.executable, *level.argv], cwd=ROOT, capture_output=True, text=True,
                                  env=child_env(), timeout=max(ENV_MIN_TIMEOUT_S, self.remaining_s()))
        except subprocess.TimeoutExpired:
            raise CampaignError(f"{shown(level.argv)} did not answer within the budget") from None
        phase.seconds, phase.exit_code = time.monotonic() - t0, done.returncode
        if done.returncode:
            phase.status = "failed"
            raise CampaignError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                                f"{shown(level.argv)} exited {done.returncode}")
        self.facts = json.loads(done.stdout)
        out = self.args.out or ROOT / "data" / "measured" / (
            self.args.gpu or (gpu_folder(self.facts["name"]) if self.args.device == "cuda" else "cpu"))
        problem = output_problem(out, folder=True)
        if problem:
            raise CampaignError(f"--out {out}: {problem}")
        self.open_output(out)
        atomic_write(out / "env.json", lambda tmp: tmp.write_text(done.stdout))
        phase.status = "done"
        self.say(f"env: {self.facts['name']}, torch {self.facts['torch']}; writing to {out}/")
        self.record()

    def run_phase(self, phase: Phase) -> None:
        level = self.choose(phase)
        if level is None:
            phase.status = "skipped"
            self.say(f"{phase.name}: {phase.note}")
            self.record()
            return
        phase.level = level
        self.say(f"{phase.name}: {phase.what}, setting {level.label!r}, ~{level.estimate_s:.0f} s "
                 f"({self.remaining_s():.0f} s left){'; ' + phase.note if phase.note else ''}\n  {shown(level.argv)}")
        t0 = time.monotonic()
        try:
            code, tail = run_child(level.argv, self.write_log, time.monotonic() + self.remaining_s() - RESERVE_S)
        except BaseException:  # Ctrl-C, SIGTERM: the command was stopped; keep the record, then end
            phase.status, phase.seconds = "stopped", time.monotonic() - t0
            phase.note = "interrupted (Ctrl-C or SIGTERM)"
            raise
        phase.seconds, phase.exit_code, phase.output_tail = time.monotonic() - t0, code, tail
        missing = [f for f in level.files if not (self.out / f).is_file()]
        if code is None:
            phase.status, phase.note = "stopped", f"stopped at the end of the budget after {phase.seconds:.0f} s"
        elif code or missing:
            phase.status = "failed"
            phase.note = f"exit {code}" + (f"; missing {', '.join(missing)}" if missing else "")
        else:
            phase.status = "done"
            self.ratios.setdefault(phase.family, []).append((phase.seconds, level.estimate_s))
        self.say(f"{phase.name}: {phase.status} in {phase.seconds:.1f} s (estimated {level.estimate_s:.0f} s)"
                 + (f": {phase.note}" if phase.status != "done" else ""))
        self.record()

    def record(self) -> None:
        """manifest.json, COMMANDS.md and the archive, as they stand now."""
        if self.out is None:
            return
        manifest = json.dumps(self.manifest(), indent=1)
        atomic_write(self.out / "manifest.json", lambda tmp: tmp.write_text(manifest))
        commands = self.commands_md()
        atomic_write(self.out / "COMMANDS.md", lambda tmp: tmp.write_text(commands))
        if self.archive is not None:
            if self.log is not None:
                self.log.flush()
            atomic_write(self.archive, lambda tmp: pack(self.out, tmp))
            size = self.archive.stat().st_size
            if size > DEVICE_TOOL_FILE_BYTES:
                self.say(f"warning: {self.archive} is {size / 2**20:.1f} MiB; the device tool brings back files of at "
                         f"most {DEVICE_TOOL_FILE_BYTES / 2**20:.0f} MiB")

    def manifest(self) -> dict[str, Any]:
        out = str(self.out)
        return {"campaign": "scripts/gpu_campaign.sh", "command": shlex.join(["bash", "scripts/gpu_campaign.sh",
                                                                              *sys.argv[1:]]),
                "device": self.args.device, "quick": self.args.quick, "device_name": self.facts.get("name"),
                "folder": self.out.name, "code_revision": code_revision(), "started_utc": self.started,
                "elapsed_s": round(time.monotonic() - self.t0, 1), "budget_s": self.budget_s, "reserve_s": RESERVE_S,
                "status": self.status(),
                "pace": asdict(PACE[self.args.device]) | {"factors": {f: self.pace_factor(f) for f in self.ratios}},
                "phases": [{"name": p.name, "what": p.what, "status": p.status,
                            "setting": p.level.label if p.level else None,
                            "estimate_s": round(p.level.estimate_s, 1) if p.level else None,
                            "seconds": None if p.seconds is None else round(p.seconds, 1), "note": p.note,
                            "exit_code": p.exit_code,
                            "command": shown(p.level.argv, p.level.stdout_file, out) if p.level else None,
                            "files": p.level.files if p.level and p.status == "done" else [],
                            "output_tail": p.output_tail} for p in self.phases]}

    def commands_md(self) -> str:
        lines = [f"# Campaign of {self.started} on {self.facts.get('name', self.args.device)}", "",
                 f"`{self.manifest()['command']}` (scripts/gpu_campaign.sh), code revision {code_revision()}. Every "
                 "command runs from the repository root with `PYTHONPATH=.`; the files are relative to this folder.",
                 ""]
        for p in self.phases:
            seconds = f" in {p.seconds:.1f} s" if p.seconds is not None else ""
            lines += [f"## {p.name}: {p.status}{seconds}" + (f" ({p.level.label})" if p.level else ""), "", p.what +
                      (f"; {p.note}" if p.note else "") + ".", ""]
            if p.level:
                lines += ["```", shown(p.level.argv, p.level.stdout_file, str(self.out)), "```", ""]
                if p.status == "done":
                    lines += [f"- `{f}`" for f in p.level.files] + [""]
        return "\n".join(lines)


class CampaignError(Exception):
    """A campaign that cannot go on (no device, an unusable output folder): one line."""


def child_env() -> dict[str, str]:
    """The environment of every command: unbuffered output, the repository's packages importable."""
    path = os.environ.get("PYTHONPATH")
    return os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def run_child(argv: list[str], log: Any, deadline: float) -> tuple[int | None, list[str]]:
    """Run `python argv` from the repository root, its output to the console and `log` (progress bars left out),
    until `deadline` (time.monotonic): its exit status (None: stopped at the deadline) and last lines. Ctrl-C and
    SIGTERM stop it (SIGTERM: it removes its partial files) before they end the campaign."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # text mode: a carriage return ends a line too
            if line.strip() and not PROGRESS_LINE.search(line):
                sys.stdout.write(line)
                log(line)
                tail[:] = [*tail[-7:], line.rstrip()]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                stop(proc)
                reader.join(timeout=5)
                return None, tail
            time.sleep(min(0.5, max(0.01, deadline - time.monotonic())))
    except BaseException:
        stop(proc)
        raise
    reader.join(timeout=5)
    return proc.returncode, tail


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group (its compile workers too), SIGKILL after GRACE_S."""
    for sig, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def pack(folder: Path, tmp: Path) -> None:
    """`folder` as a gzipped tar, members under its name; temporary files (a dot first) left out."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
                tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder)}")
    tmp.write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    budget_s = args.budget_s or DEFAULT_BUDGET_S[args.device]
    archive = args.archive or (Path(os.environ["OUT"]) / "campaign.tar.gz" if os.environ.get("OUT") else None)
    archive = archive and archive.resolve()  # the commands run from the repository root; paths stay the caller's
    args.out = args.out and args.out.resolve()
    for flag, path, folder in (("--out", args.out, True), ("--archive", archive, False)):
        problem = path is not None and output_problem(path, folder=folder)
        if problem:
            parser.error(f"{flag} {path}: {problem}")
    if args.gpu is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.gpu):
        parser.error(f"--gpu {args.gpu!r}: a folder name of letters, digits, '.', '_' and '-'")
    gpu = args.gpu or ("<gpu>" if args.device == "cuda" else "cpu")
    out = shown_path(args.out) if args.out else f"data/measured/{gpu}"
    if args.dry_run:
        print_plan(plan(args.device, args.quick, out), args.device, budget_s, out, archive)
        return 0
    try:
        return Campaign(args, budget_s, archive).run()
    except CampaignError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run_command(main, "bash scripts/gpu_campaign.sh"))
