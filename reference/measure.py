"""Measure a real decoding run and write a measured trace: per-op durations, per-stage and end-to-end wall time.

    python -m reference.measure --device cpu|cuda --preset P --decoder sequential|speed --tokens N --out FILE

1. Warm-up runs (not timed).
2. Timed runs: end-to-end wall time (synchronized) and every stage's wall time; medians and spread.
3. Per-op runs under the capture (reference.tracing): on cpu each op is timed by the host clock (cpu ops are
   synchronous); on cuda each op runs inside a profiler range and its duration is the device time of the
   kernels it launched (CUPTI, via torch.profiler), never host timestamps of asynchronous launches. The
   median over the per-op runs is written.

Every run uses the same seeded flip oracle (or the model's own argmax with `--flips model`), so all runs
execute the same ops and their stages line up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from tqdm import tqdm

from reference import tracing
from reference.config import get_preset
from reference.model import SharedDecoder
from reference.pipeline import Row


class StageClock:
    """A StageObserver that takes the wall time of every stage (synchronizing the device at its end)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times_s = device, []
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def begin(self, kind: str) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list, flushes: list) -> None:
        self._sync()
        self.times_s.append(time.perf_counter() - self._t0)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and the 10th/90th percentiles of a list of seconds."""
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "p10": pick(0.1),
            "p90": pick(0.9), "n": len(ordered)}


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


def deflate_host_times(capture: tracing.OpCapture) -> list[float]:
    """On a cpu, op times are host-clock times taken under the capture, whose own work slows every op down
    (their sum exceeds the stage's untraced wall time). Scale each stage's op times to its wall time where
    they exceed it; return the factors."""
    by_stage: dict[int, list] = {}
    for op in capture.ops:
        by_stage.setdefault(op.stage, []).append(op)
    scales = []
    for stage in capture.stages:
        ops = by_stage.get(stage.stage, [])
        total = sum(op.duration_s for op in ops)
        if total > stage.wall_s > 0:
            scale = stage.wall_s / total
            for op in ops:
                op.duration_s *= scale
            scales.append(scale)
    return scales


def measure(preset: str, decoder: str, tokens: int, out: Path, device: str, dtype: torch.dtype, batch: int = 1,
            prompt_len: int = 16, source_len: int = tracing.DEFAULT_SOURCE_LEN, flips: str | None = None,
            seed: int = 0, warmup: int = 2, repeats: int = 5, op_repeats: int = 3, command: str = "",
            progress: bool = True) -> dict[str, Any]:
    """Measure one configuration and write its measured trace to `out`; returns a summary."""
    cfg = get_preset(preset)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda to measure, got {device!r}")
    model = SharedDecoder(cfg, device=dev, dtype=dtype, seed=seed)
    prompts, sources = tracing.workload(cfg, batch, prompt_len, source_len, seed)

    sequential = decoder == "sequential"
    tracing.flip_oracle(cfg, flips, seed, sequential)  # a bad --flips fails before any work

    def run(observer: Any = None) -> None:  # a fresh oracle per run: every run draws the same flips
        tracing.run_decoder(model, decoder, prompts, tokens, sources,
                            tracing.flip_oracle(cfg, flips, seed, sequential), observer)

    bar = tqdm(total=warmup + repeats + op_repeats, desc=f"{preset} {decoder} on {device}", disable=not progress)
    for _ in range(warmup):
        run()
        bar.update()
    end_to_end, stage_times = [], []
    for _ in range(repeats):
        clock = StageClock(dev)
        clock._sync()
        t0 = time.perf_counter()
        run(clock)
        clock._sync()
        end_to_end.append(time.perf_counter() - t0)
        stage_times.append(clock.times_s)
        bar.update()
    op_times, capture = [], None
    for _ in range(op_repeats):
        profiled = _Profiled() if dev.type == "cuda" else None
        capture = tracing.OpCapture(model, timer="host", annotate=profiled and profiled.annotate)
        if profiled is not None:
            with profiled.profiler, capture.attached():
                run(capture)
            op_times.append(profiled.durations(len(capture.ops)))
        else:
            with capture.attached():
                run(capture)
            op_times.append([op.duration_s for op in capture.ops])
        bar.update()
    bar.close()
    if len({len(t) for t in op_times}) != 1 or len({len(s) for s in stage_times}) != 1:
        raise RuntimeError("runs executed different numbers of ops or stages: the measurement is not repeatable")
    for op, times in zip(capture.ops, zip(*op_times)):
        op.duration_s = statistics.median(times)
    for stage, times in zip(capture.stages, zip(*stage_times)):
        stage.wall_s = statistics.median(times)
    scales = [] if dev.type == "cuda" else deflate_host_times(capture)
    e2e = spread(end_to_end)
    device_busy = sum(op.duration_s for op in capture.ops)
    extra = {"end_to_end_s": e2e, "warmup": warmup, "repeats": repeats, "op_repeats": op_repeats,
             "op_time_sum_s": device_busy,
             "op_timing": "cuda kernel time per op (torch.profiler/CUPTI)" if dev.type == "cuda"
             else "host clock per op (synchronous cpu ops)",
             "stage_wall_spread_s": [spread(list(t))["p90"] - spread(list(t))["p10"] for t in zip(*stage_times)]}
    if scales:
        extra["op_time_scale"] = {"median": statistics.median(scales), "min": min(scales),
                                  "why": "cpu op times taken under the capture, scaled per stage to the untraced "
                                         "stage wall time where they exceeded it"}
    head = tracing.header(model, capture, decoder, prompts, tokens, tracing.flip_oracle(cfg, flips, seed, sequential),
                          str(dev), True, command, extra)
    tracing.write_trace(out, head, capture)
    return {"preset": preset, "decoder": decoder, "ops": len(capture.ops), "stages": len(capture.stages),
            "end_to_end_s": e2e, "op_time_sum_s": device_busy, "tokens": tokens * batch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.measure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", required=True, choices=("cpu", "cuda"), help="device to measure on")
    tracing.add_workload_arguments(parser, required=True)
    parser.add_argument("--out", type=Path, required=True, help="measured trace to write (.jsonl.gz)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs for wall times (default 5)")
    parser.add_argument("--op-repeats", type=int, default=3, help="runs timing every op (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if min(args.repeats, args.op_repeats) < 1 or args.warmup < 0:
        parser.error("--repeats and --op-repeats must be >= 1, --warmup >= 0")
    try:
        summary = measure(args.preset, args.decoder, args.tokens, args.out, args.device, getattr(torch, args.dtype),
                          args.batch, args.prompt_len, args.source_len, args.flips, args.seed, args.warmup,
                          args.repeats, args.op_repeats, " ".join(["python -m reference.measure", *sys.argv[1:]]),
                          progress=not args.quiet)
    except ValueError as err:
        parser.error(str(err))
    e2e = summary["end_to_end_s"]
    print(f"{args.out}: {summary['ops']} ops, {summary['stages']} stages; end to end {e2e['median'] * 1e3:.1f} ms "
          f"median ({e2e['min'] * 1e3:.1f}-{e2e['max'] * 1e3:.1f}), {e2e['median'] / summary['tokens'] * 1e3:.2f} "
          f"ms/token; sum of op times {summary['op_time_sum_s'] * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
