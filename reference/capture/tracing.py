"""Capture: record every op a real decoding run executes, with what a hardware model needs, as a trace file
(format: sim/trace/FORMAT.md).

How: a `TorchDispatchMode` sees every aten op the run dispatches, on cpu, cuda or the meta device (where no
values exist, so a 7B-shaped decoder is traced in seconds without its weights). Each op gets

- where it ran: the stage (from the decoders' `StageObserver` hooks), the module (forward hooks, and wrappers
  of the row methods that the decoders call directly), the layer, group, depth and sequence, and its kernel
  class (`sim.opkinds`), by the rules `reference.capture.placement` states and checks;
- FLOPs from its shapes (multiply-add = 2; one per element for elementwise ops and reductions), equal to
  `torch.utils.flop_counter` for the matrix products and attention;
- bytes read and written, split into weights / activations / KV cache by where each tensor came from: every
  tensor is tagged with its origin (a parameter, the KV cache, or computed), and views inherit the tag;
  gathers (embedding, index) read only the rows they gather; an in-place copy writes its destination; the KV
  cache slices (sequence and depth) each op reads;
- its dependencies: the earlier ops of its stage whose memory it reads (read after write) or overwrites (write
  after read or write), found from the storage and element range of every tensor it touches, so two rows
  writing and reading different depths or positions of one KV cache tensor stay independent. Stages need no
  edges between them: each ends with the host reading the argmaxes, a full synchronization.

Views (no kernel, no bytes) are not recorded; a view op that copies instead (`to` a new dtype, `flatten` of a
strided tensor) is. `scaled_dot_product_attention` is recorded as one op whatever
backend it lowers to (a fused kernel on cpu and cuda, a dozen math ops on meta), so traces of one run on
different devices have the same op sequence. The capture itself is `reference.capture.opcapture.OpCapture`;
this module runs it over a decoding run and writes the trace.

On the meta device the capture is fast by default (`reference.capture.fastcapture.FastCapture`): each distinct
stage structure is recorded as the decoder executes it, and its repetitions (decode steps that differ only in
KV length) are derived, field for field what the full capture records (`--full-capture` records every stage,
for checking; tests/test_fastcapture.py compares the two).

    python -m reference.capture.tracing --preset t5-base-4x3 --decoder speed --device meta --tokens 128 --out FILE
    python -m reference.capture.tracing --defaults     # regenerate the simulator's default traces under data/traces/
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from reference import compiled as compiled_steps
from reference import decode
from reference.capture.fastcapture import FastCapture
from reference.capture.opcapture import OpCapture
from reference.capture.revision import code_revision
from reference.config import PRESETS, ModelConfig, get_preset
from reference.flips import FlipOracle, default_profile
from reference.model import SharedDecoder
from reference.parallel import TensorParallel, build_shard, check_degree, fake_group
from reference.pipeline import Row
from reference.quant import SCHEMES, check_quantizable, quantize
from reference.quant import check_tp as check_quant_tp
from reference.ranks import LocalRanks, RankFailure
from sim.command import check_outputs, integer, number, run_command
from sim.defaults import DEFAULT_RUNS, DEFAULT_SOURCE_LEN, DEFAULT_TOKENS, DEFAULT_TRACES, default_trace_name
from sim.trace import Trace, TraceHeader
from sim.trace import write_trace as write_trace_file

RANK_TIMEOUT_S = 60.0  # a gloo capture's process-group timeout: a collective waiting longer on a peer fails


def workload(cfg: Any, batch: int, prompt_len: int, source_len: int, seed: int = 0
             ) -> tuple[list[list[int]], list[list[int]] | None]:
    """Seeded random prompts (and encoder inputs for an encoder-decoder model, whose decoder prompt is then
    the start token), avoiding EOS."""
    generator = torch.Generator().manual_seed(seed)
    low = 2  # ids 0 and 1 are pad/start and EOS in every family here

    def tokens(n: int) -> list[int]:
        return torch.randint(low, cfg.vocab_size, (n,), generator=generator).tolist()

    if cfg.is_encoder_decoder:
        return [[cfg.decoder_start_id] for _ in range(batch)], [tokens(source_len) for _ in range(batch)]
    return [tokens(prompt_len) for _ in range(batch)], None


def flip_oracle(cfg: Any, flips: str | None, seed: int = 0, sequential: bool = False) -> FlipOracle | None:
    """The predictor of a traced run: a named profile of data/flips/*.yaml, comma-separated rates
    ("0.09,0.04"), "model" (None: the model's own argmax; needs values, so not on meta), or, when None, the
    profile named like the preset, else the paper's of the same G (`reference.flips.default_profile`; zero flips
    when G = 1)."""
    if flips == "model":
        return None
    avoid = [cfg.eos_id] if cfg.eos_id is not None else []
    if flips is None:
        if cfg.n_groups == 1 or sequential:  # every prediction is a final one: no flips to draw
            return FlipOracle([], cfg.vocab_size, seed, avoid, source="none (no early exits read)")
        flips = default_profile(cfg.name, cfg.n_groups)
    try:
        if re.fullmatch(r"[0-9.eE+-]+(,[0-9.eE+-]+)*", flips):
            rates = [float(r) for r in flips.split(",")]
            if len(rates) != cfg.n_groups - 1:
                raise ValueError(f"{cfg.name} has G = {cfg.n_groups}, so it needs {cfg.n_groups - 1} rates, got "
                                 f"{len(rates)}")
            return FlipOracle(rates, cfg.vocab_size, seed, avoid, source=f"rates {flips}")
        return FlipOracle.from_profile(flips, cfg.vocab_size, seed, avoid)
    except ValueError as err:
        raise ValueError(f"--flips {flips}: {err}") from None


def header(model: SharedDecoder, capture: OpCapture, decoder: str, prompts: list[list[int]], tokens: int,
           predictor: FlipOracle | None, device: str, measured: bool, command: str, extra: dict | None = None,
           tp: TensorParallel | None = None) -> TraceHeader:
    p = next(model.parameters())
    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(p.device)
    elif device == "meta":
        device_name = "meta (shapes only)"
    else:
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    if decoder == "sequential":
        flips = {"source": "none"}
    else:
        flips = predictor.describe() if predictor is not None else {"source": "model"}
    return TraceHeader(
        model=dict(vars(model.config)),
        decoder=decoder, dtype=str(p.dtype)[6:], tp=1 if tp is None else tp.world_size,
        tp_rank=0 if tp is None else tp.rank, batch=len(prompts), prompt_lens=[len(x) for x in prompts],
        max_new_tokens=tokens, device=device.split(":")[0], device_name=device_name,
        torch_version=torch.__version__.split("+")[0], code_revision=code_revision(), flips=flips,
        weights=capture.weights, measured=measured, command=command, extra=extra or {})


def run_decoder(model: SharedDecoder, decoder: str, prompts: list[list[int]], tokens: int,
                encoder_inputs: list[list[int]] | None, predictor: Any, observer: Any = None,
                compiled: bool = False) -> decode.DecodeResult:
    """Decode with `decoder`; `compiled`: through the static-shape step compiled decoding runs (uncompiled, so
    that a capture sees the ops a compiler is handed)."""
    fn = decode.speed if decoder == "speed" else decode.sequential
    if compiled:
        compiled_steps.uncompiled_step(model)
    return fn(model, prompts, tokens, encoder_inputs=encoder_inputs, observer=observer, predictor=predictor,
              compile=compiled)


class Progress:
    """A StageObserver that hands the decoders' stage hooks on to the capture and counts the tokens committed
    on a progress bar (tqdm; shown on a terminal)."""

    def __init__(self, capture: OpCapture, total_tokens: int, label: str, enabled: bool = True) -> None:
        self.capture = capture
        self.bar = tqdm(total=total_tokens, desc=label, unit="token", leave=False, disable=None if enabled else True)

    def begin(self, kind: str) -> None:
        self.capture.begin(kind)

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list[tuple[int, int, int]],
            flushes: list[tuple[int, int, int]]) -> None:
        self.capture.end(rows, predictions, commits, flushes)
        self.bar.update(len(commits))


@dataclass(frozen=True)
class CaptureJob:
    """One decoding run to trace (what `capture_trace` is asked), as every rank of a tensor-parallel capture gets
    it (picklable)."""

    cfg: ModelConfig
    decoder: str
    tokens: int
    device: str = "meta"
    dtype: torch.dtype = torch.bfloat16
    batch: int = 1
    prompt_len: int = 16
    source_len: int = DEFAULT_SOURCE_LEN
    flips: str | None = None
    seed: int = 0
    command: str = ""
    compiled: bool = False
    full: bool = False
    progress: bool = False
    quant: str | None = None  # a weight-only quantization scheme (reference.quant.SCHEMES), None: float weights


def capture_trace(preset: str | ModelConfig, decoder: str, tokens: int, out: Path, device: str = "meta",
                  dtype: torch.dtype = torch.bfloat16, batch: int = 1, prompt_len: int = 16,
                  source_len: int = DEFAULT_SOURCE_LEN, flips: str | None = None, seed: int = 0,
                  command: str = "", compiled: bool = False, full: bool = False, progress: bool = False,
                  tp: int = 1, timeout_s: float = RANK_TIMEOUT_S, quant: str | None = None) -> tuple[Trace, float]:
    """Trace one decoding run of a preset (or a config) and write it to `out`; `compiled`: the run compiled
    decoding makes (static shapes: the whole padded cache attended under a mask, tensor-indexed cache writes),
    as the compiler is handed it. On the meta device stage repetitions are derived (`FastCapture`) unless
    `full`; elsewhere every op is recorded. `progress`: a progress bar of the tokens committed. `tp` > 1: rank 0's
    shard of the model sharded over `tp` ranks (reference.parallel), its collectives recorded: on meta under torch's
    fake process group, in this process (no other process starts); on the cpu, `tp` gloo ranks (LocalRanks, whose
    group fails a collective after `timeout_s`) each decode and capture their shard, and rank 0's trace is written
    once every rank has finished (a rank that fails stops the others; nothing is written: `RankFailure`). `quant`:
    the block projections quantized first (reference.quant: its packed products traced as one op each, with their
    weight format). Returns the trace and the capture's time in s."""
    cfg = preset if isinstance(preset, ModelConfig) else get_preset(preset)
    check_degree(cfg, tp)
    if quant is not None:
        check_quantizable(cfg, quant)
        check_quant_tp(cfg, quant, tp)
    predictor = flip_oracle(cfg, flips, seed, decoder == "sequential")
    if predictor is None and device == "meta":
        raise ValueError("--flips model needs real values: the meta device has none; give a profile or rates")
    job = CaptureJob(cfg, decoder, tokens, device, dtype, batch, prompt_len, source_len, flips, seed, command,
                     compiled, full, progress, quant)
    if tp == 1 or device == "meta":
        with fake_group_scope(tp) as group:
            trace, elapsed = capture_run(job, group)
    elif device.split(":")[0] == "cpu":
        with LocalRanks(tp, timeout_s=timeout_s) as ranks:
            trace, elapsed = ranks.run(capture_on_rank, job)[0]
    else:
        raise ValueError(f"--tp {tp} --device {device}: a tensor-parallel capture runs on the meta device (no "
                         "processes) or on the cpu (gloo ranks)")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_trace_file(out, trace)
    return trace, elapsed


@contextmanager
def fake_group_scope(tp: int) -> Iterator[TensorParallel | None]:
    """Rank 0 of a fake process group of `tp` ranks (torch's fake backend: collectives return their shapes, no other
    process exists) for the length of a `with`, destroyed after it; None for one rank."""
    if tp == 1:
        yield None
        return
    group = fake_group(tp)
    try:
        yield group
    finally:
        dist.destroy_process_group()


def capture_on_rank(tp: TensorParallel, job: CaptureJob) -> tuple[Trace, float] | None:
    """One rank's part of a tensor-parallel capture (`LocalRanks.run`): its shard decoded and captured; rank 0's
    trace and time (the others' are not needed: ranks are symmetric but for rank 0's widest vocabulary shard)."""
    # tqdm's default lock is a multiprocessing semaphore, registered with the resource tracker the ranks share: a
    # rank killed mid-capture would leave it registered, and the tracker would warn at exit. One process, one lock.
    tqdm.set_lock(threading.RLock())
    result = capture_run(replace(job, progress=job.progress and tp.rank == 0), tp)
    return result if tp.rank == 0 else None


def capture_run(job: CaptureJob, tp: TensorParallel | None) -> tuple[Trace, float]:
    """Capture `job` in this process: the whole model, or this rank's shard of it where `tp` is given (its
    process group running, real or fake). Returns the trace (not written) and the capture's time in s."""
    cfg = job.cfg
    predictor = flip_oracle(cfg, job.flips, job.seed, job.decoder == "sequential")
    if tp is None:
        model = SharedDecoder(cfg, device=job.device, dtype=job.dtype, seed=job.seed)
        if job.quant is not None:
            quantize(model, job.quant)
    else:
        model = build_shard(cfg, tp, device=job.device, dtype=job.dtype, seed=job.seed, quant=job.quant)
    prompts, sources = workload(cfg, job.batch, job.prompt_len, job.source_len, job.seed)
    capture = OpCapture(model) if job.full or job.device != "meta" else FastCapture(model)
    t0 = time.perf_counter()
    observer = Progress(capture, job.tokens * job.batch, f"tracing {cfg.name} {job.decoder}", job.progress)
    with capture.attached():
        run_decoder(model, job.decoder, prompts, job.tokens, sources, predictor, observer=observer,
                    compiled=job.compiled)
    observer.bar.close()
    elapsed = time.perf_counter() - t0
    extra = {"formulation": "compiled"} if job.compiled else {}
    if job.quant is not None:
        extra["quant"] = job.quant  # for people: the ops carry their weight format (sim/trace/FORMAT.md)
    head = header(model, capture, job.decoder, prompts, job.tokens, predictor, job.device, False, job.command, extra,
                  tp)
    return captured_trace(head, capture), elapsed


def captured_trace(head: TraceHeader, capture: OpCapture) -> Trace:
    """What `capture` recorded, as a trace with `head`."""
    try:
        return capture.trace(head)
    except ValueError as err:
        raise RuntimeError(f"ops outside any stage: the decoder's observer hooks were not called ({err})") from None


def write_trace(out: Path, head: TraceHeader, capture: OpCapture) -> Trace:
    """Write what `capture` recorded as a trace with `head` to `out`; returns the trace."""
    out.parent.mkdir(parents=True, exist_ok=True)
    trace = captured_trace(head, capture)
    write_trace_file(out, trace)
    return trace


def write_defaults(out_dir: Path = DEFAULT_TRACES, progress: bool = True, full: bool = False) -> list[Path]:
    """The simulator's default traces (meta device, so byte-reproducible on any machine); `full`: every stage
    recorded (the same files, slower)."""
    paths = []
    runs = [(preset, decoder, compiled) for compiled in (False, True) for preset, decoder in DEFAULT_RUNS]
    for preset, decoder, compiled in tqdm(runs, desc="default traces", disable=not progress):
        path = out_dir / default_trace_name(preset, decoder, compiled)
        capture_trace(preset, decoder, DEFAULT_TOKENS, path, compiled=compiled, full=full,
                      command="python -m reference.capture.tracing --defaults")
        paths.append(path)
    return paths


def add_workload_arguments(parser: argparse.ArgumentParser, required: bool, decoder_default: str | None = "speed"
                           ) -> None:
    """The flags that say which run to trace or measure (shared by the tracing and measure commands)."""
    parser.add_argument("--preset", required=required, help="model preset; one of: " + ", ".join(PRESETS))
    default = None if required else decoder_default
    parser.add_argument("--decoder", choices=("sequential", "speed"), default=default, required=required,
                        help="decoder" + (f" (default {default})" if default else ""))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32", "float64"),
                        help="parameter dtype (default bfloat16)")
    parser.add_argument("--tokens", type=integer(1), default=DEFAULT_TOKENS,
                        help=f"tokens to generate per sequence (default {DEFAULT_TOKENS})")
    parser.add_argument("--batch", type=integer(1), default=1, help="sequences decoded together (default 1)")
    parser.add_argument("--prompt-len", type=integer(1), default=16, help="decoder-only prompt length (default 16)")
    parser.add_argument("--source-len", type=integer(1), default=DEFAULT_SOURCE_LEN,
                        help=f"encoder input length of encoder-decoder presets (default {DEFAULT_SOURCE_LEN})")
    parser.add_argument("--flips", help="SPEED flips: a profile of data/flips/*.yaml (the paper's, the trained "
                        "models'), rates per exit '0.09,0.04', or 'model' (the model's own argmax; not on meta); "
                        "default: the preset's profile, else the paper's for the same G (t5-base-4x3's for G = 3, "
                        "t5-base-2x6's for G = 6)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of weights, prompts and flips (default 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.capture.tracing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser, required=False)
    parser.add_argument("--device", default="meta", help="cpu, cuda or meta (default meta: shapes only, no weights)")
    parser.add_argument("--out", type=Path, help="trace file to write (.jsonl.gz)")
    parser.add_argument("--compiled", action="store_true", help="trace the run compiled decoding makes (its "
                        "static-shape step, as torch.compile is handed it: masked attention over the padded cache, "
                        "tensor-indexed cache writes), for python -m sim.run --launch compiled")
    parser.add_argument("--defaults", action="store_true", help="regenerate the default traces under data/traces/ "
                        "(eager and compiled)")
    parser.add_argument("--full-capture", action="store_true", help="on the meta device, record every stage as the "
                        "decoder executes it instead of deriving the repetitions of each stage structure (the same "
                        "trace, slower: for checking the fast capture)")
    parser.add_argument("--tp", type=integer(1), default=1, help="tensor-parallel degree (default 1): rank 0's shard "
                        "of the model sharded over N ranks (reference.parallel), its collectives recorded; on the meta "
                        "device under a fake process group (no processes), on the cpu over N gloo ranks started here "
                        "(rank 0's trace written once every rank has finished)")
    parser.add_argument("--quant", choices=SCHEMES, help="quantize the block projections' weights first "
                        "(reference.quant, round to nearest): int8 per output channel or int4 in groups of 32, 64 or "
                        "128 input features; the packed products are traced as one op each, with their weight format")
    parser.add_argument("--timeout-s", type=number(1.0), default=RANK_TIMEOUT_S, help="with --tp N > 1 on the cpu: "
                        "the process group's timeout, after which a collective waiting on a failed rank fails "
                        f"(default {RANK_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    if args.defaults:
        t0 = time.perf_counter()
        for path in write_defaults(full=args.full_capture):
            print(f"{path}  {path.stat().st_size / 1e6:.3f} MB")
        print(f"regenerated in {time.perf_counter() - t0:.1f} s")
        return 0
    if args.preset is None or args.out is None:
        parser.error("--preset and --out are required (or --defaults)")
    try:
        check_degree(get_preset(args.preset), args.tp)
        if args.quant is not None:
            check_quantizable(get_preset(args.preset), args.quant)
            check_quant_tp(get_preset(args.preset), args.quant, args.tp)
    except ValueError as err:
        parser.error(f"--preset {args.preset}: {err}" if not str(err).startswith("--") else str(err))
    check_outputs(parser, {"--out": args.out})
    try:
        trace, elapsed = capture_trace(args.preset, args.decoder, args.tokens, args.out, args.device,
                                       getattr(torch, args.dtype), args.batch, args.prompt_len, args.source_len,
                                       args.flips, args.seed, compiled=args.compiled, full=args.full_capture,
                                       progress=True, tp=args.tp, timeout_s=args.timeout_s, quant=args.quant,
                                       command=" ".join(["python -m reference.capture.tracing", *sys.argv[1:]]))
    except ValueError as err:
        parser.error(str(err))
    except RankFailure as err:  # a rank died or failed: the others stopped, nothing was written
        print(f"{parser.prog}: error: the tensor-parallel capture stopped, no trace written ({args.out}): {err}",
              file=sys.stderr)
        return 1
    weight_bytes = sum(trace.distinct[k].weight_bytes * n for k, n in trace.counts().items())
    print(f"{args.out}: {trace.executed} ops ({len(trace.distinct)} distinct) in {len(trace.stages)} stages, "
          f"{trace.total_flops / 1e9:.2f} GFLOP, {weight_bytes / 1e9:.2f} GB of weights read; captured in "
          f"{elapsed:.1f} s, {args.out.stat().st_size / 1e6:.3f} MB on disk")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.capture.tracing"))
