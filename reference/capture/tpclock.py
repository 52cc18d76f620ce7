"""The clock of a tensor-parallel measurement on cpu ranks (`reference.capture.measure --tp N`, and the gloo
all-reduce microbenchmark, reference.capture.collective_bench): what a rank's time is made of, and how it is read.

A rank's time is its own work plus its collectives:

- its work (every op but the collectives, and the decode loop between them) by its thread's CPU time, as a
  single-process measurement on one thread reads it (reference.capture.clock): every rank runs one torch thread,
  and the other processes of a shared machine, which deschedule it, do not count;
- a collective by wall time, from the moment the last rank called it to the moment this rank holds the result.
  No CPU clock of the calling thread sees a collective: gloo runs it on threads of its own while the caller
  blocks. The time before the last rank arrives (the skew: this rank waiting for a slower or descheduled peer) is
  left out and reported apart; the simulator takes ranks as symmetric (sim.interconnect), so a collective is
  timed from the moment every rank is in it. Timestamps are `time.perf_counter` (CLOCK_MONOTONIC on Linux:
  system-wide, so the ranks' processes read one clock).

Collectives log themselves (`TimedCollectives`, the rank's `TensorParallel`: the same functional op pair, timed
around it), the stage boundaries are marked on the work clock with the number of collectives run so far
(`RankClock`), and the times are put together from every rank's log (`collective_seconds`, `RankRun.work_s`).

Why medians of parts (`compose`): on a shared machine a collective waits for gloo's threads on two ranks to get a
core. On the 2-core development machine (load 5-12) most gloo all-reduces of a few hundred bytes took 0.2-0.6 ms
from the last arrival, and one in four or five a whole scheduler time slice more (3-5 ms), whichever bytes they
moved: the tail measures the machine's other work, not gloo. A stage of nine collectives then holds a couple of
tails in most runs, so a median over runs of whole stages is set by the tails' count; and a median over five runs
of one call is a tail in about one call of seven. Each part is taken at its own median instead: a collective's
time is the median of its transfer (every call of the same collective and size in the timed runs: hundreds of
samples of the same work), a stage's time the median over the timed runs of its work plus its collectives' times,
the end to end likewise; the all-reduce microbenchmark reports the median per call of the same clock, so the
interconnect model fitted to it is judged against the same statistic. The raw wall time of rank 0 (skews and
tails included) is kept beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from reference.capture.clock import spread
from reference.parallel import TensorParallel
from reference.pipeline import Row

# one collective: (arrival, done) wall s, CPU s of the calling thread inside it, (collective, bytes of its input)
Stamp = tuple[float, float, float, tuple[str, int]]


@dataclass(frozen=True)
class TimedCollectives(TensorParallel):
    """A rank's `TensorParallel` whose collectives log `(arrival, done, cpu_in, (collective, bytes))`: the wall time
    the rank called it and got the result, its thread's CPU time inside (what the work clock subtracts), and which
    transfer it was (its input's bytes)."""

    log: list[Stamp] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def on(cls, tp: TensorParallel) -> TimedCollectives:
        """The rank `tp` is, with an empty log."""
        return cls(tp.world_size, tp.rank, tp.group_name)

    def _timed(self, name: str, collective: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        arrival, cpu = time.perf_counter(), time.thread_time()
        out = collective(x)
        self.log.append((arrival, time.perf_counter(), time.thread_time() - cpu, (name, x.numel() * x.element_size())))
        return out

    def all_reduce(self, x: Tensor) -> Tensor:
        return self._timed("all_reduce", super().all_reduce, x)

    def all_gather(self, x: Tensor) -> Tensor:
        return self._timed("all_gather", super().all_gather, x)


@dataclass
class RankRun:
    """One run on one rank: `marks` (work clock s, collectives so far) at its start, at every stage's start and at
    its end; its collectives' `log`; its wall time in s."""

    marks: list[tuple[float, int]]
    log: list[Stamp]
    wall_s: float

    def work_s(self) -> tuple[list[float], float]:
        """(each stage's work, the run's work) in s: CPU time outside collectives. Stages are contiguous (a stage
        runs from its start to the next one's, as reference.capture.measure.StageClock), the run from its start."""
        def work(a: tuple[float, int], b: tuple[float, int]) -> float:
            return b[0] - a[0] - sum(stamp[2] for stamp in self.log[a[1]:b[1]])

        stages = [work(a, b) for a, b in zip(self.marks[1:], self.marks[2:])]
        return stages, work(self.marks[0], self.marks[-1])

    def stage_collectives(self) -> list[range]:
        """The indices of each stage's collectives in the log."""
        return [range(a[1], b[1]) for a, b in zip(self.marks[1:], self.marks[2:])]


class RankClock:
    """A StageObserver that marks a run's stage boundaries on the work clock (reference.capture.clock: the thread's
    CPU time) with the number of collectives `tp` logged so far: `start()`, the run, `stop()` gives its RankRun."""

    def __init__(self, tp: TimedCollectives) -> None:
        self.tp = tp
        self.marks: list[tuple[float, int]] = []
        self._wall0 = 0.0

    def _mark(self) -> tuple[float, int]:
        return time.thread_time(), len(self.tp.log)

    def start(self) -> None:
        self.tp.log.clear()
        self._wall0 = time.perf_counter()
        self.marks = [self._mark()]

    def begin(self, kind: str) -> None:
        self.marks.append(self._mark())

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list, flushes: list) -> None:
        pass

    def stop(self) -> RankRun:
        end = self._mark()
        return RankRun([*self.marks, end], list(self.tp.log), time.perf_counter() - self._wall0)


def collective_seconds(logs: list[list[Stamp]], rank: int = 0) -> tuple[list[float], list[float]]:
    """(time, skew) in s of each collective of one run, from every rank's log (rank order): from the last rank's
    arrival to `rank`'s result, and how long `rank` waited before the last rank arrived. A ValueError where the
    ranks ran different numbers of collectives."""
    if len({len(log) for log in logs}) != 1:
        raise ValueError(f"the ranks ran {', '.join(str(len(log)) for log in logs)} collectives: not the same run")
    times, skews = [], []
    for stamps in zip(*logs):
        last = max(stamp[0] for stamp in stamps)
        arrival, done = stamps[rank][:2]
        times.append(max(0.0, done - last))
        skews.append(last - arrival)
    return times, skews


@dataclass
class Composed:
    """A tensor-parallel measurement's times (module docstring): per collective its time (s: the median of its
    transfer, `transfer_s`), per stage and end to end per timed run the work plus the collectives' times (s), the
    skews (s)."""

    collective_s: list[float]
    stage_s: list[list[float]]  # [run][stage]
    end_to_end_s: list[float]  # per run
    collectives_per_run_s: list[float]  # per run: the sum of its collectives' own times (tails included)
    skew_s: list[float]  # per collective: its median skew on rank 0
    rank_work_s: list[float]  # per rank: the median work of a run (a check that the ranks are alike)
    transfer_s: dict[tuple[str, int], dict[str, float]]  # per (collective, bytes): the spread of its times (s)


def compose(runs: list[list[RankRun]]) -> Composed:
    """Rank 0's times from the timed runs of every rank (`runs[run][rank]`); a ValueError where the runs or ranks
    do not line up (other numbers of stages or collectives). A collective's time is the median over every call of
    the same transfer (collective and bytes) in the timed runs: the same transfer, hundreds of samples, where a
    median over the few runs of one call keeps a scheduler tail in one call of seven or so."""
    per_run = [collective_seconds([r.log for r in ranks]) for ranks in runs]
    if len({len(times) for times, _ in per_run}) != 1 or len({len(ranks[0].marks) for ranks in runs}) != 1:
        raise ValueError("the timed runs ran different numbers of collectives or stages: not repeatable")
    keys = [stamp[3] for stamp in runs[0][0].log]
    samples: dict[tuple[str, int], list[float]] = {}
    for (times, _), ranks in zip(per_run, runs):
        if [stamp[3] for stamp in ranks[0].log] != keys:
            raise ValueError("the timed runs ran other collectives: not repeatable")
        for key, seconds in zip(keys, times):
            samples.setdefault(key, []).append(seconds)
    transfer = {key: spread(values) for key, values in samples.items()}
    medians = [transfer[key]["median"] for key in keys]
    skews = [statistics.median(s) for s in zip(*(skew for _, skew in per_run))]
    fixed_stage = [sum(medians[i] for i in group) for group in runs[0][0].stage_collectives()]
    stage_s, end_to_end_s = [], []
    for ranks in runs:
        stages, total = ranks[0].work_s()
        stage_s.append([w + c for w, c in zip(stages, fixed_stage)])
        end_to_end_s.append(total + sum(medians))
    rank_work_s = [statistics.median(ranks[r].work_s()[1] for ranks in runs) for r in range(len(runs[0]))]
    return Composed(medians, stage_s, end_to_end_s, [sum(times) for times, _ in per_run], skews, rank_work_s,
                    transfer)

