"""Measure a real decoding run and write a measured trace: per-op durations, per-stage and end-to-end wall time.

    python -m reference.capture.measure --device cpu|cuda --preset P --decoder sequential|speed --tokens N --out FILE
    python -m reference.capture.measure --device cpu|cuda --job '--preset P --decoder D --out FILE' --job '...'
    python -m reference.capture.measure --device cpu --compile --preset P --decoder D --out FILE   # compiled
    python -m reference.capture.measure --device cpu --tp 2 --preset P --decoder D --out FILE     # 2 gloo ranks

    python -m reference.capture.measure --device cpu --quant int8 --dtype bfloat16 --preset P --decoder D --out FILE

Several `--job`s are measured together, their runs interleaved (each round runs every job once).

1. Warm-up runs (not timed).
2. Timed runs: end-to-end wall time (synchronized) and every stage's wall time, contiguous (`StageClock`: from its
   start to the next stage's, so the stages add up to the decode); medians and spread. On a cpu on one thread
   the clock is the thread's CPU time (reference.capture.clock: a shared machine's other processes do not count);
   `extra.clock` says which.
3. Per-op runs under the capture (reference.capture.tracing): on cpu each op is timed by the host clock (cpu ops are
   synchronous); on cuda each op runs inside a profiler range and its duration is the device time of the
   kernels it launched (CUPTI, via torch.profiler), never host timestamps of asynchronous launches. The
   median over the per-op runs is written.

Every run uses the same seeded flip oracle (or the model's own argmax with `--flips model`), so all runs
execute the same ops and their stages line up.

Compiled decoding (`--compile`, for all jobs or in one `--job`): `decode.*(compile=True)`, the static-shape stage
step under torch.compile, one compiled variant per number of rows in flight (reference.compiled).

1. The warm-up compiles every variant (so at least one warm-up run): the seconds of each variant's first call
   are recorded apart (`extra.compile_s`, `extra.compile_variants`) and excluded from every time; a timed run
   that compiled a new variant is an error, not a measurement.
2. Timed runs as above: the host clock around each stage (on cpu the compiled call is synchronous; on cuda the
   device is synchronized at both ends) and around the whole decode.
3. One capture run (no timing) of the same workload through the same static-shape step uncompiled
   (`reference.compiled.uncompiled_step`): the ops the compiler is handed, what
   `python -m sim.run --launch compiled` fuses. It runs last: the model's compiled variants are dropped by it.

Tensor-parallel decoding (`--tp N`, on the cpu; for all jobs or in one `--job`): N gloo ranks on 127.0.0.1
(reference.ranks.LocalRanks, one torch thread each), every rank holding its shard (reference.parallel), started once
for all the jobs of that degree. Every step above (warm-up, timed runs, per-op runs under the capture) runs on every
rank, interleaved with the other jobs as theirs are; rank 0's measured trace (trace format 5: header tp, tp_rank 0,
its collectives as ops of kind collective) is written once every rank has finished every run. A rank that fails or
dies stops the others (the process group's timeout, `--timeout-s`, bounds the wait) and nothing is written, by
any job: one error line, exit 1. The clock (reference.capture.tpclock, which says why): a rank's own work by its
thread's CPU time, as on one thread above, and each collective by wall time from the moment the last rank called it
to rank 0's result (gloo runs it on threads of its own; the wait for a late peer, the skew, is left out and kept in
`extra.collectives.skew_s`). The collectives are timed in the timed runs, without the capture's overhead; each
op of kind collective carries the median of its transfer (every call of that collective and size in the timed
runs), every other op its CPU time from the per-op runs (scaled per stage as above, to the stage's work). A
stage's `wall_s` is the median over the timed runs of its work, plus its collectives' times; the end to end
likewise (`extra.end_to_end_s`: the spread is the work's). `extra.end_to_end_wall_s` is rank 0's raw wall time
(skews and the scheduler's tails included); `extra.collectives` the transfers' spreads (`transfers_s`), the
collectives' raw sum per run and their skews; `extra.rank_work_s` every rank's median work (the ranks are
symmetric: one trace stands for all). Not with
`--compile`, and not on cuda: NCCL ranks need two or more GPUs, and none was at hand to measure with.

A fused kernel has no per-op time, and none is invented: a compiled measurement writes header `measured` false
(no op carries a duration), every stage record's `wall_s` from the compiled timed runs (medians), and in
`extra`: "measurement": "compiled" (what marks such a trace; `sim.fitting.validate --launch compiled` and
`sim.fitting.calibrate` read it), "formulation": "compiled", "end_to_end_s" (median, spread), "warmup",
"repeats", "compile_s", "compile_variants" and "stage_wall_spread_s". Every decode stage (a sequential step, a SPEED
stage) is one compiled call.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from tqdm import tqdm

from reference import decode
from reference.capture import tracing
from reference.capture.clock import clock_name, host_clock, spread
from reference.capture.opcapture import OpCapture
from reference.capture.tpclock import RankClock, RankRun, TimedCollectives, compose
from reference.config import get_preset
from reference.model import SharedDecoder
from reference.parallel import TensorParallel, check_degree, shard
from reference.pipeline import Row
from reference.quant import SCHEMES, check_quantizable, quantize
from reference.quant import check_tp as check_quant_tp
from reference.ranks import LocalRanks, RankFailure
from sim.command import check_outputs, integer, number, run_command
from sim.trace import OpRecord, StageRecord, Trace, TraceHeader

TP_CLOCK = ("per rank: thread cpu time (one thread) for its own work, wall time for each collective from the last "
            "rank's arrival to rank 0's result; a stage and the end to end: the median of the work plus the "
            "collectives' medians (reference/capture/tpclock.py)")


class StageClock:
    """A StageObserver that takes the wall time of every stage (synchronizing the device at its boundaries). Stage
    times are contiguous: a stage runs from its start to the next stage's start (the last one to its end), so the
    decode loop's own work between stages (the pipeline's bookkeeping, building the next stage's inputs) belongs to
    the stage before it, and the stage times add up to the decode."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times_s = device, []
        self.now = host_clock(device)
        self._t0: float | None = None
        self._t_end = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def begin(self, kind: str) -> None:
        self._sync()
        now = self.now()
        if self._t0 is not None:
            self.times_s.append(now - self._t0)
        self._t0 = now

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list, flushes: list) -> None:
        self._sync()
        self._t_end = self.now()

    def finish(self) -> None:
        """After the run: the last stage ends at its end."""
        if self._t0 is not None:
            self.times_s.append(self._t_end - self._t0)
            self._t0 = None


class _Profiled:
    """Per-op device times on cuda: each recorded op runs inside a named profiler range."""

    def __init__(self) -> None:
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                           torch.profiler.ProfilerActivity.CUDA])

    @staticmethod
    def annotate(i: int) -> Any:
        return torch.profiler.record_function(f"speedsim#{i}")

    def durations(self, n_ops: int) -> list[float]:
        """Kernel time of each op: the device time of the kernels launched inside its range (the host-side
        range; the profiler also mirrors each range on the GPU timeline, which would count idle gaps)."""
        found, seen = [0.0] * n_ops, set()
        for event in self.profiler.events():
            if event.device_type == DeviceType.CPU and event.name.startswith("speedsim#"):
                i = int(event.name[9:])
                found[i] += event.device_time_total * 1e-6  # us -> s
                seen.add(i)
        if seen != set(range(n_ops)):
            raise RuntimeError(f"the profiler returned ranges for {len(seen)} of {n_ops} ops")
        return found


def deflate_host_times(ops: list[OpRecord], stages: list[StageRecord]) -> list[float]:
    """On a cpu, op times are host-clock times taken under the capture, whose own work slows every op down
    (their sum exceeds the stage's untraced wall time). Scale each stage's op times to its wall time where
    they exceed it; return the factors. Collectives (timed outside the capture: tensor parallelism) keep their
    times, and the others are scaled to what the stage leaves them."""
    by_stage: dict[int, list] = {}
    for op in ops:
        by_stage.setdefault(op.stage, []).append(op)
    scales = []
    for stage in stages:
        mine = by_stage.get(stage.stage, [])
        work = [op for op in mine if op.kind != "collective"]
        budget = (stage.wall_s or 0.0) - sum(op.duration_s for op in mine if op.kind == "collective")
        total = sum(op.duration_s for op in work)
        if total > budget > 0:
            scale = budget / total
            for op in work:
                op.duration_s *= scale
            scales.append(scale)
    return scales


@dataclass
class Captured:
    """What a capture recorded, as a rank hands it back (ops and stages): what `tracing.write_trace` writes."""

    ops: list[OpRecord]
    stages: list[StageRecord]

    def trace(self, header: TraceHeader) -> Trace:
        return Trace(header, self.ops, self.stages)


@dataclass
class Job:
    """One configuration to measure, and the times collected for it so far. `compiled`: compiled decoding
    (module docstring)."""

    preset: str
    decoder: str
    tokens: int
    out: Path
    dtype: torch.dtype
    batch: int = 1
    prompt_len: int = 16
    source_len: int = tracing.DEFAULT_SOURCE_LEN
    flips: str | None = None
    seed: int = 0
    command: str = ""
    compiled: bool = False
    tp: int = 1
    quant: str | None = None  # a weight-only scheme of the block projections (reference.quant.SCHEMES); None: float
    end_to_end_s: list[float] = field(default_factory=list)
    stage_times_s: list[list[float]] = field(default_factory=list)
    op_times_s: list[list[float]] = field(default_factory=list)
    variants: list[Any] = field(default_factory=list)  # compiled: the variants compiled so far (warm-up)

    def build(self, dev: torch.device, tp: TensorParallel | None = None) -> None:
        """Model (rank `tp.rank`'s shard where `tp` is given) and workload (a bad preset or --flips fails here,
        before any job runs)."""
        self.cfg = get_preset(self.preset)
        self.check_quant()
        model = SharedDecoder(self.cfg, device=dev, dtype=self.dtype, seed=self.seed)
        if self.quant is not None:  # quantized whole, then sharded (reference.quant: a rank keeps whole groups)
            quantize(model, self.quant)
        self.model = model if tp is None else shard(model, tp)
        self.prompts, self.sources = tracing.workload(self.cfg, self.batch, self.prompt_len, self.source_len,
                                                      self.seed)
        self.oracle()

    def check_quant(self) -> None:
        """A ValueError naming --quant where the preset (or its shards) cannot take the scheme."""
        if self.quant is not None:
            check_quantizable(self.cfg, self.quant)
            check_quant_tp(self.cfg, self.quant, self.tp)

    def oracle(self) -> Any:  # a fresh oracle per run: every run draws the same flips
        return tracing.flip_oracle(self.cfg, self.flips, self.seed, self.decoder == "sequential")

    def run(self, observer: Any = None) -> None:
        if not self.compiled:
            tracing.run_decoder(self.model, self.decoder, self.prompts, self.tokens, self.sources, self.oracle(),
                                observer)
            return
        fn = decode.speed if self.decoder == "speed" else decode.sequential
        result = fn(self.model, self.prompts, self.tokens, encoder_inputs=self.sources, observer=observer,
                    predictor=self.oracle(), compile=True)
        self.variants += result.compile_variants or []

    def timed_run(self, dev: torch.device) -> None:
        clock = StageClock(dev)
        compiled_before = len(self.variants)
        clock._sync()
        t0 = clock.now()
        self.run(clock)
        clock._sync()
        self.end_to_end_s.append(clock.now() - t0)
        clock.finish()
        self.stage_times_s.append(clock.times_s)
        if len(self.variants) > compiled_before:
            new = ", ".join(f"{v.kind} of {v.rows} rows" for v in self.variants[compiled_before:])
            raise RuntimeError(f"{self.out}: a timed run compiled new variants ({new}): it is not a measurement of "
                               "compiled decoding; give more --warmup runs")

    def op_run(self, dev: torch.device) -> None:
        if self.compiled:
            self.capture_compiled()
            return
        profiled = _Profiled() if dev.type == "cuda" else None
        self.capture = OpCapture(self.model, timer="host", annotate=profiled and profiled.annotate)
        if profiled is not None:
            with profiled.profiler, self.capture.attached():
                self.run(self.capture)
            self.op_times_s.append(profiled.durations(len(self.capture.ops)))
        else:
            with self.capture.attached():
                self.run(self.capture)
            self.op_times_s.append([op.duration_s for op in self.capture.ops])

    def capture_compiled(self) -> None:
        """The ops of the compiled formulation, once: the same workload through the static-shape step run
        uncompiled (what the compiler is handed); no op is timed. Drops the model's compiled variants."""
        if self.op_times_s:
            return
        self.capture = OpCapture(self.model)
        with self.capture.attached():
            tracing.run_decoder(self.model, self.decoder, self.prompts, self.tokens, self.sources, self.oracle(),
                                self.capture, compiled=True)
        self.op_times_s.append([])

    def _check_repeatable(self) -> None:
        stages = {len(s) for s in self.stage_times_s}
        ops = {len(t) for t in self.op_times_s}
        if len(ops) != 1 or len(stages) != 1 or stages != {len(self.capture.stages)}:
            raise RuntimeError(f"{self.out}: runs executed different numbers of ops or stages: the measurement is "
                               "not repeatable")

    def collect(self) -> None:
        """After every run: what the job needs to be written (here everything is at hand)."""

    def write(self, dev: torch.device, warmup: int) -> dict[str, Any]:
        """Medians into the last capture, written as the measured trace; returns a summary."""
        capture = self.capture
        self._check_repeatable()
        for stage, times in zip(capture.stages, zip(*self.stage_times_s)):
            stage.wall_s = statistics.median(times)
        e2e = spread(self.end_to_end_s)
        extra = {"end_to_end_s": e2e, "warmup": warmup, "repeats": len(self.end_to_end_s), "clock": clock_name(dev),
                 "stage_wall_spread_s": [spread(list(t))["p90"] - spread(list(t))["p10"]
                                         for t in zip(*self.stage_times_s)]}
        extra |= self._compiled_extra() if self.compiled else self._op_times(dev)
        if self.quant is not None:
            extra["quant"] = self.quant  # for people: the ops carry their weight format (sim/trace/FORMAT.md)
        tracing.write_trace(self.out, self._header(dev, extra), capture)
        return {"preset": self.preset, "decoder": self.decoder, "ops": len(capture.ops),
                "stages": len(capture.stages), "end_to_end_s": e2e, "op_time_sum_s": extra.get("op_time_sum_s"),
                "compile_s": extra.get("compile_s"), "tokens": self.tokens * self.batch}

    def _header(self, dev: torch.device, extra: dict[str, Any]) -> TraceHeader:
        return tracing.header(self.model, self.capture, self.decoder, self.prompts, self.tokens, self.oracle(),
                              str(dev), not self.compiled, self.command, extra)

    def _op_times(self, dev: torch.device) -> dict[str, Any]:
        """Per-op medians into the capture (eager); the header extras that describe them."""
        capture = self.capture
        for op, times in zip(capture.ops, zip(*self.op_times_s)):
            op.duration_s = statistics.median(times)
        scales = [] if dev.type == "cuda" else deflate_host_times(capture.ops, capture.stages)
        extra: dict[str, Any] = {
            "op_repeats": len(self.op_times_s), "op_time_sum_s": sum(op.duration_s for op in capture.ops),
            "op_timing": "cuda kernel time per op (torch.profiler/CUPTI)" if dev.type == "cuda"
            else f"host clock per op (synchronous cpu ops; {clock_name(dev)})"}
        if scales:
            extra["op_time_scale"] = {"median": statistics.median(scales), "min": min(scales),
                                      "why": "cpu op times taken under the capture, scaled per stage to the untraced "
                                             "stage wall time where they exceeded it"}
        return extra

    def _compiled_extra(self) -> dict[str, Any]:
        """What marks a compiled measurement, and its compile time (excluded from every time)."""
        return {"measurement": "compiled", "formulation": "compiled",
                "op_timing": "none: fused kernels have no per-op time; stage and end-to-end wall times only",
                "compile_s": sum(v.first_call_s for v in self.variants),
                "compile_variants": [{"kind": v.kind, "rows": v.rows, "first_call_s": v.first_call_s}
                                     for v in self.variants]}


_ON_RANK: dict[str, Job] = {}  # in a rank's process: the jobs it measures, by their --out


def _rank_step(tp: TensorParallel, key: str, step: str, spec: Job | None = None) -> Any:
    """One step of job `key` on this rank (`LocalRanks.run` calls it on every rank): "build" (from `spec`), "warmup",
    "timed" (its RankRun), "op" (rank 0: its op times), "collect" (rank 0: the trace header, its ops and stages)."""
    if step == "build":
        spec.collectives = TimedCollectives.on(tp)
        spec.build(torch.device("cpu"), spec.collectives)
        _ON_RANK[key] = spec
        return None
    job = _ON_RANK[key]
    job.collectives.log.clear()
    if step == "warmup":
        job.run()
    elif step == "timed":
        clock = RankClock(job.collectives)
        clock.start()
        job.run(clock)
        return clock.stop()
    elif step == "op":
        job.op_run(torch.device("cpu"))
        return job.op_times_s[-1] if tp.rank == 0 else None
    elif step == "collect" and tp.rank == 0:
        head = tracing.header(job.model, job.capture, job.decoder, job.prompts, job.tokens, job.oracle(), "cpu",
                              True, job.command, tp=job.collectives)
        return head, Captured(job.capture.ops, job.capture.stages)
    return None


@dataclass
class ParallelJob(Job):
    """A job of `tp` ranks (module docstring, "Tensor-parallel decoding"): every step runs on every rank of `ranks`;
    rank 0's measured trace is put together here, from every rank's timed runs and rank 0's per-op runs."""

    ranks: LocalRanks | None = field(default=None, repr=False)
    runs: list[list[RankRun]] = field(default_factory=list)  # [timed run][rank]
    captured: tuple[TraceHeader, Captured] | None = None

    def spec(self) -> Job:
        """The job as a rank builds it (picklable: no pool)."""
        return Job(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Job)})

    def build(self, dev: torch.device, tp: TensorParallel | None = None) -> None:
        if dev.type != "cpu":
            raise ValueError(f"--tp {self.tp}: a tensor-parallel measurement runs gloo ranks on the cpu (NCCL ranks "
                             "need two or more GPUs; not measured here)")
        if self.compiled:
            raise ValueError(f"--tp {self.tp} with --compile: compiled tensor-parallel decoding is not measured")
        self.cfg = get_preset(self.preset)
        check_degree(self.cfg, self.tp)
        self.check_quant()
        self.oracle()  # a bad --flips fails here, not on the ranks
        self.ranks.run(_rank_step, str(self.out), "build", self.spec())

    def run(self, observer: Any = None) -> None:
        self.ranks.run(_rank_step, str(self.out), "warmup")

    def timed_run(self, dev: torch.device) -> None:
        self.runs.append(self.ranks.run(_rank_step, str(self.out), "timed"))

    def op_run(self, dev: torch.device) -> None:
        self.op_times_s.append(self.ranks.run(_rank_step, str(self.out), "op")[0])

    def collect(self) -> None:
        self.captured = self.ranks.run(_rank_step, str(self.out), "collect")[0]

    def write(self, dev: torch.device, warmup: int) -> dict[str, Any]:
        """Rank 0's times (reference.capture.tpclock.compose) into its capture, written as the measured trace."""
        self.capture = self.captured[1]
        try:
            self.times = compose(self.runs)
        except ValueError as err:
            raise RuntimeError(f"{self.out}: {err}") from None
        collectives = [i for i, op in enumerate(self.capture.ops) if op.kind == "collective"]
        if len(collectives) != len(self.times.collective_s):
            raise RuntimeError(f"{self.out}: the per-op runs ran {len(collectives)} collectives, the timed runs "
                               f"{len(self.times.collective_s)}: the measurement is not repeatable")
        for times in self.op_times_s:  # each collective at its median over the timed runs
            for i, seconds in zip(collectives, self.times.collective_s):
                times[i] = seconds
        self.stage_times_s, self.end_to_end_s = self.times.stage_s, self.times.end_to_end_s
        return super().write(dev, warmup) | {"collective_s": sum(self.times.collective_s),
                                             "wall_s": spread([r[0].wall_s for r in self.runs])}

    def _header(self, dev: torch.device, extra: dict[str, Any]) -> TraceHeader:
        times = self.times
        extra |= {"clock": TP_CLOCK, "op_timing": "thread cpu time per op (one thread per rank; the capture's host "
                  "clock); collectives: wall time from the last rank's arrival to rank 0's result, median over the "
                  "timed runs (no capture)",
                  "end_to_end_wall_s": spread([ranks[0].wall_s for ranks in self.runs]),
                  "collectives": {"count": len(times.collective_s), "sum_s": sum(times.collective_s),
                                  "per_run_s": spread(times.collectives_per_run_s), "skew_s": spread(times.skew_s),
                                  "transfers_s": [{"collective": kind, "bytes": nbytes, **figures}
                                                  for (kind, nbytes), figures in sorted(times.transfer_s.items())]},
                  "rank_work_s": times.rank_work_s}
        return dataclasses.replace(self.captured[0], extra=extra)


def measure_jobs(jobs: list[Job], device: str, warmup: int = 2, repeats: int = 5, op_repeats: int = 3,
                 progress: bool = True, threads: int | None = None, timeout_s: float = tracing.RANK_TIMEOUT_S
                 ) -> list[dict[str, Any]]:
    """Measure every job and write its measured trace; returns their summaries. Runs are interleaved: each
    round runs every job once, so a slow phase of a shared machine (or a throttled GPU) touches all of them
    alike instead of one, and the jobs stay comparable. `threads`: torch's intra-op threads for every run (a
    tensor-parallel job's ranks: one each). Tensor-parallel jobs (`ParallelJob`) share one pool of local gloo ranks
    per degree, whose process group fails a collective after `timeout_s`; nothing is written unless every run of
    every job finished (a RankFailure otherwise)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda to measure, got {device!r}")
    if warmup < 1 and any(job.compiled for job in jobs):
        raise ValueError("--compile needs --warmup >= 1: the warm-up compiles every variant, untimed")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        if threads > 1 and any(job.tp > 1 for job in jobs):
            raise ValueError(f"--threads {threads} with --tp: every rank runs one torch thread (its work is timed "
                             "by that thread's CPU time)")
        torch.set_num_threads(threads)
    steps = ([lambda j: j.run()] * warmup + [lambda j: j.timed_run(dev)] * repeats
             + [lambda j: j.op_run(dev)] * op_repeats + [lambda j: j.collect()])
    names = ", ".join(f"{j.preset} {j.decoder}{' compiled' if j.compiled else ''}{f' tp{j.tp}' if j.tp > 1 else ''}"
                      for j in jobs)
    with ExitStack() as pools:
        by_degree: dict[int, LocalRanks] = {}
        for job in jobs:
            if isinstance(job, ParallelJob):
                if job.tp not in by_degree and dev.type == "cpu":
                    by_degree[job.tp] = pools.enter_context(LocalRanks(job.tp, timeout_s))
                job.ranks = by_degree.get(job.tp)
        for job in jobs:
            job.build(dev)
        with tqdm(total=len(steps) * len(jobs), desc=f"{names} on {device}", disable=not progress) as bar:
            for step in steps:
                for job in jobs:
                    step(job)
                    bar.update()
    return [job.write(dev, warmup) for job in jobs]


def make_job(preset: str, decoder: str, tokens: int, out: Path, dtype: torch.dtype, batch: int = 1,
             prompt_len: int = 16, source_len: int = tracing.DEFAULT_SOURCE_LEN, flips: str | None = None,
             seed: int = 0, command: str = "", compiled: bool = False, tp: int = 1, quant: str | None = None) -> Job:
    """A Job, or a ParallelJob of `tp` > 1 ranks; `quant`: its block projections quantized (reference.quant)."""
    return (ParallelJob if tp > 1 else Job)(preset, decoder, tokens, out, dtype, batch, prompt_len, source_len, flips,
                                            seed, command, compiled, tp, quant)


def measure(preset: str, decoder: str, tokens: int, out: Path, device: str, dtype: torch.dtype, batch: int = 1,
            prompt_len: int = 16, source_len: int = tracing.DEFAULT_SOURCE_LEN, flips: str | None = None,
            seed: int = 0, warmup: int = 2, repeats: int = 5, op_repeats: int = 3, command: str = "",
            progress: bool = True, compiled: bool = False, threads: int | None = None, tp: int = 1,
            timeout_s: float = tracing.RANK_TIMEOUT_S, quant: str | None = None) -> dict[str, Any]:
    """Measure one configuration and write its measured trace to `out`; returns a summary. `compiled`: compiled
    decoding; `tp` > 1: on that many local gloo ranks (module docstring); `quant`: quantized weights."""
    job = make_job(preset, decoder, tokens, out, dtype, batch, prompt_len, source_len, flips, seed, command, compiled,
                   tp, quant)
    return measure_jobs([job], device, warmup, repeats, op_repeats, progress, threads, timeout_s)[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reference.capture.measure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", required=True, choices=("cpu", "cuda"), help="device to measure on")
    tracing.add_workload_arguments(parser, required=False, decoder_default=None)  # --preset, --decoder: needed
    parser.add_argument("--out", type=Path, help="measured trace to write (.jsonl.gz); --preset, --decoder and "
                        "--out are needed, for all or in each --job")
    parser.add_argument("--compile", action="store_true", help="measure compiled decoding (decode.*(compile=True): "
                        "the static-shape stage step under torch.compile, one variant per rows in flight): the "
                        "warm-up compiles every variant (compile time reported apart, excluded), the timed runs "
                        "give stage and end-to-end wall times, one uncompiled capture run the ops of the compiled "
                        "formulation; no per-op times (header measured false, extra.measurement 'compiled'); "
                        "for all jobs, or inside one --job")
    parser.add_argument("--job", action="append", default=[], metavar="FLAGS",
                        help="one of several configurations to measure together, as its own flags in one string, "
                        "e.g. --job '--preset tiny-6 --decoder sequential --out a.jsonl.gz' (repeatable; the "
                        "flags outside every --job apply to all). Runs are interleaved, a round runs each job once, "
                        "so a slow phase of a shared machine touches every configuration alike")
    parser.add_argument("--warmup", type=integer(0), default=2,
                        help="untimed warm-up runs (default 2; >= 1 with --compile)")
    parser.add_argument("--repeats", type=integer(1), default=5, help="timed runs for wall times (default 5)")
    parser.add_argument("--op-repeats", type=integer(1), default=3,
                        help="runs timing every op (default 3); a compiled job "
                        "makes one capture run, untimed, whatever the number")
    parser.add_argument("--threads", type=integer(1), help="torch intra-op threads for every run (default: torch's, "
                        "usually the cores); 1 keeps a busy shared machine's other work from stalling the runs")
    parser.add_argument("--tp", type=integer(1), default=1, help="tensor-parallel degree (default 1): N gloo ranks on "
                        "127.0.0.1 on the cpu, one torch thread each, every rank running every run; rank 0's trace is "
                        "written once every rank has finished (module docstring: what is timed); for all jobs, or "
                        "inside one --job")
    parser.add_argument("--timeout-s", type=number(1.0), default=tracing.RANK_TIMEOUT_S,
                        help="with --tp N > 1: the process group's timeout, after which a collective waiting on a "
                        f"failed rank fails (default {tracing.RANK_TIMEOUT_S:g})")
    parser.add_argument("--quant", choices=SCHEMES, help="quantize the block projections' weights first "
                        "(reference.quant, round to nearest): int8 per output channel or int4 in groups of 32, 64 or "
                        "128 along K; the packed products are timed as one op each, with their weight format "
                        "(trace format 6); in bfloat16 on this cpu ATen's packed kernels are vectorized, in float32 "
                        "they run scalar paths; for all jobs, or inside one --job")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _jobs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Job]:
    """The --job configurations (or the one the flags outside them give)."""
    job_parser = argparse.ArgumentParser(prog="python -m reference.capture.measure --job", add_help=False)
    tracing.add_workload_arguments(job_parser, required=False, decoder_default=None)
    job_parser.add_argument("--out", type=Path)
    job_parser.add_argument("--compile", action="store_true")
    job_parser.add_argument("--tp", type=integer(1))
    job_parser.add_argument("--quant", choices=SCHEMES)
    command = " ".join(["python -m reference.capture.measure", *sys.argv[1:]])
    jobs = []
    for text in args.job or [""]:
        # flags the job does not give keep their values from outside it (argparse skips defaults then)
        flags = job_parser.parse_args(shlex.split(text), namespace=argparse.Namespace(**vars(args)))
        missing = [f"--{name}" for name in ("preset", "decoder", "out") if getattr(flags, name) is None]
        if missing:
            parser.error(f"{' and '.join(missing)} required" + (f" in --job {text!r}" if text else ""))
        jobs.append(make_job(flags.preset, flags.decoder, flags.tokens, flags.out, getattr(torch, flags.dtype),
                             flags.batch, flags.prompt_len, flags.source_len, flags.flips, flags.seed, command,
                             flags.compile, flags.tp, flags.quant))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    jobs = _jobs(parser, args)
    check_outputs(parser, {f"--out (job {i + 1})" if len(jobs) > 1 else "--out": job.out for i, job in enumerate(jobs)})
    try:
        summaries = measure_jobs(jobs, args.device, args.warmup, args.repeats, args.op_repeats,
                                 progress=not args.quiet, threads=args.threads, timeout_s=args.timeout_s)
    except ValueError as err:
        parser.error(str(err))
    except RankFailure as err:  # a rank died or failed: the others stopped, nothing was written
        outs = ", ".join(str(job.out) for job in jobs)
        print(f"{parser.prog}: error: the tensor-parallel measurement stopped, no trace written ({outs}): {err}",
              file=sys.stderr)
        return 1
    except RuntimeError as err:  # a measurement that did not repeat, or compiled during a timed run
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    for job, summary in zip(jobs, summaries):
        e2e = summary["end_to_end_s"]
        line = (f"{job.out}: {summary['ops']} ops, {summary['stages']} stages; end to end {e2e['median'] * 1e3:.1f} ms "
                f"median ({e2e['min'] * 1e3:.1f}-{e2e['max'] * 1e3:.1f}), "
                f"{e2e['median'] / summary['tokens'] * 1e3:.2f} ms/token; ")
        if job.compiled:
            line += f"compiled, {len(job.variants)} variants compiled in {summary['compile_s']:.1f} s (excluded)"
        else:
            line += f"sum of op times {summary['op_time_sum_s'] * 1e3:.1f} ms"
        if job.tp > 1:
            line += (f"; TP {job.tp}: collectives {summary['collective_s'] * 1e3:.1f} ms of it, rank 0's wall time "
                     f"{summary['wall_s']['median'] * 1e3:.1f} ms median")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.capture.measure"))
