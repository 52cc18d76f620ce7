"""Processes for tensor-parallel decoding (reference.parallel), and the decode every rank runs.

- Under torchrun (`torchrun --nproc-per-node N -m reference.demo --tp N`): `check_world` refuses a world size other
  than `--tp`, `init_from_env` joins the env:// process group (gloo on the CPU, NCCL on CUDA).
- From Python (tests): `LocalRanks(N)` spawns N processes on this machine, one per rank, in one gloo process
  group on 127.0.0.1, that run the functions they are handed (`ranks.run(fn, *args)` calls `fn(tp, *args)` on
  every rank and returns the N results, rank 0 first), many per spawn. `decode_sharded` is the one-shot form.
- `DecodeRequest` and `run_request`: the decode a rank runs (the seeded whole model, built alike on every
  rank, sharded, decoded by each decoder), or, without a `TensorParallel`, the single-process reference;
  `compare` says whether the ranks' outputs agree with it.

Failures: a process group has a timeout (`timeout_s`), so a rank whose peer died fails its next collective
within it (at once where the dead peer's connection closes) instead of hanging. A rank of `LocalRanks` whose
function raises reports the error in one line, destroys its process group and exits non-zero; the call then
raises `RankFailure` with each rank's outcome, after every rank has reported or exited (stragglers are
terminated `GRACE_S` past the timeout), and the next call starts new processes. No process outlives the pool.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from reference import decode
from reference.config import ModelConfig
from reference.model import SharedDecoder
from reference.parallel import TensorParallel, shard
from reference.pipeline import PipelineStats, Row
from reference.quant import quantize

POLL_S = 0.1  # how often a waiting parent looks at its ranks' processes
GRACE_S = 5.0  # past the process-group timeout, how long the others of a failed rank get to report and exit
DECODERS = {"sequential": decode.sequential, "speed": decode.speed}


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]


# -- torchrun
def torchrun_world_size() -> int | None:
    """The WORLD_SIZE torchrun gave this process, or None outside torchrun."""
    value = os.environ.get("WORLD_SIZE")
    return None if value is None else int(value)


def check_world(tp_size: int) -> None:
    """A ValueError, naming --tp, unless this process runs as one of exactly `tp_size` torchrun processes (or
    alone, outside torchrun, with --tp 1)."""
    world = torchrun_world_size()
    if world is None and tp_size > 1:
        raise ValueError(f"--tp {tp_size}: needs {tp_size} processes: launch with torchrun --nproc-per-node "
                         f"{tp_size} (WORLD_SIZE is not set)")
    if world is not None and world != tp_size:
        raise ValueError(f"--tp {tp_size}: torchrun started {world} processes (WORLD_SIZE {world}); --tp must "
                         "equal --nproc-per-node")


def init_from_env(device: str, timeout_s: float) -> tuple[TensorParallel, str]:
    """Join torchrun's process group (env://): NCCL where `device` is cuda (each rank on GPU LOCAL_RANK), else
    gloo; collectives fail after `timeout_s`. Returns this rank's place and the device it computes on."""
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        backend, device = "nccl", f"cuda:{local}"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return TensorParallel.of(), device


# -- local ranks
class RankFailure(RuntimeError):
    """A call on `LocalRanks` failed on some rank: `outcomes[r]` says what became of rank r ("ok" or one line),
    `reported_s[r]` when (seconds from the call's start), `exitcodes[r]` how its process ended (None: still
    running when given up; negative: killed by that signal)."""

    def __init__(self, outcomes: dict[int, str], reported_s: dict[int, float], exitcodes: dict[int, int | None]
                 ) -> None:
        self.outcomes, self.reported_s, self.exitcodes = outcomes, reported_s, exitcodes
        lines = "; ".join(f"rank {r}: {outcomes.get(r, 'no report')} (exit code {exitcodes.get(r)})"
                          for r in sorted(exitcodes))
        super().__init__(f"tensor-parallel ranks failed: {lines}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank: int, world_size: int, port: int, timeout_s: float, threads: int, tasks: mp.Queue,
           results: mp.Queue) -> None:
    """A rank's process: join the gloo group on 127.0.0.1, run tasks until told to stop or one fails."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(threads)
    status = 0
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    except Exception as err:
        results.put((rank, False, f"joining the process group: {one_line(err)}"))
        raise SystemExit(1) from None
    try:
        tp = TensorParallel.of()
        while (task := tasks.get()) is not None:
            fn, args = task
            try:
                results.put((rank, True, pickle.dumps(fn(tp, *args))))
            except Exception as err:  # the group may be broken: report, leave it and exit
                results.put((rank, False, one_line(err)))
                status = 1
                break
    finally:
        dist.destroy_process_group()
    raise SystemExit(status)


def _stop(processes: list[mp.Process], tasks: list[mp.Queue], grace_s: float) -> None:
    """Tell every rank to stop, wait `grace_s` seconds in all, kill what is left."""
    for q in tasks:
        q.put(None)
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()


class LocalRanks:
    """`world_size` processes on this machine, one per rank of one gloo process group, each running the functions
    it is handed: `run(fn, *args)` calls `fn(tp, *args)` (fn and args picklable, fn importable) on every rank.
    `timeout_s`: the process group's timeout (a collective waiting longer on a peer fails); `threads`: torch
    threads per rank (1, as torchrun sets OMP_NUM_THREADS). Processes start on the first call and after a
    failed one; `close()` (or leaving the `with` block, or the pool being collected) ends them."""

    def __init__(self, world_size: int, timeout_s: float = 60.0, threads: int = 1) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size, self.timeout_s, self.threads = world_size, timeout_s, threads
        self._processes: list[mp.Process] = []
        self._tasks: list[mp.Queue] = []
        self._results: mp.Queue | None = None
        self._finalizer: weakref.finalize | None = None

    def __enter__(self) -> LocalRanks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        context = mp.get_context("spawn")
        port = free_port()
        self._results = context.Queue()
        self._tasks = [context.Queue() for _ in range(self.world_size)]
        self._processes = [context.Process(target=_serve, name=f"tp-rank-{r}", args=(
            r, self.world_size, port, self.timeout_s, self.threads, self._tasks[r], self._results))
            for r in range(self.world_size)]
        for p in self._processes:
            p.start()
        # the processes end with the pool even if it is never closed
        self._finalizer = weakref.finalize(self, _stop, self._processes, self._tasks, GRACE_S)

    def close(self, grace_s: float = GRACE_S) -> None:
        """End the processes: wait up to `grace_s` for them to stop, kill those that do not."""
        if self._finalizer is not None and self._finalizer.detach() is not None:
            _stop(self._processes, self._tasks, grace_s)
        self._processes, self._tasks, self._results, self._finalizer = [], [], None, None

    @property
    def pids(self) -> list[int]:
        """The processes' ids, rank 0 first (empty before the first call)."""
        return [p.pid for p in self._processes]

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """fn(tp, *args) on every rank: the results, rank 0 first; a RankFailure where a rank failed."""
        if not self._processes:
            self._start()
        for q in self._tasks:
            q.put((fn, args))
        outcomes, reported_s, payloads = self._collect()
        if len(payloads) == self.world_size:
            return [pickle.loads(payloads[r]) for r in range(self.world_size)]
        processes = self._processes
        self.close(grace_s=1.0)  # every rank had its time to report: those left are stuck
        raise RankFailure(outcomes, reported_s, {r: p.exitcode for r, p in enumerate(processes)})

    def _collect(self) -> tuple[dict[int, str], dict[int, float], dict[int, bytes]]:
        """Every rank's result, until all have reported or, once one failed, all have reported or exited (or
        GRACE_S past the group's timeout). Returns each rank's outcome, when it came, and the results."""
        t0 = time.monotonic()
        outcomes: dict[int, str] = {}
        reported_s: dict[int, float] = {}
        payloads: dict[int, bytes] = {}
        while True:
            try:
                rank, ok, payload = self._results.get(timeout=POLL_S)
                outcomes[rank], reported_s[rank] = "ok" if ok else payload, time.monotonic() - t0
                if ok:
                    payloads[rank] = payload
                continue
            except queue.Empty:
                pass
            for rank, p in enumerate(self._processes):
                if rank not in outcomes and not p.is_alive():
                    outcomes[rank] = f"process exited with code {p.exitcode} without a result"
                    reported_s[rank] = time.monotonic() - t0
            if len(payloads) == self.world_size:
                return outcomes, reported_s, payloads
            failed = [reported_s[r] for r in outcomes if r not in payloads]
            done = [r for r, p in enumerate(self._processes) if r in payloads or not p.is_alive()]
            if failed and (len(done) == self.world_size or time.monotonic() - t0 > min(failed) + self.timeout_s
                           + GRACE_S):
                return outcomes, reported_s, payloads


# -- the decode of one rank
@dataclass(frozen=True)
class DecodeRequest:
    """One decode on every rank: the whole model of `config` with random weights from `seed` (the same on every
    rank) in `dtype` on `device`, its block projections quantized with `quant` (reference.quant: "int8",
    "int4-g32", ...) where given, sharded where a TensorParallel is given; the decoders run in order.
    keep_cache: return the KV caches (this rank's heads); record_logits: return the logits of every stage over
    the whole vocabulary (gathered across ranks; the decoders still pick tokens from `head`, eagerly)."""

    config: ModelConfig
    prompts: list[list[int]]
    max_new_tokens: int
    seed: int = 0
    dtype: str = "float64"
    device: str = "cpu"
    encoder_inputs: list[list[int]] | None = None
    eos_id: int | None = None
    decoders: tuple[str, ...] = ("sequential", "speed")
    compile: bool = False
    keep_cache: bool = False
    record_logits: bool = False
    quant: str | None = None


@dataclass
class Decisions:
    """A StageObserver keeping what each decode stage ran and decided: ((seq, position, token, group) of each row,
    predictions, commits, flushes)."""

    stages: list[tuple[list[tuple[int, int, int, int]], list[int], list, list]] = field(default_factory=list)

    def begin(self, kind: str) -> None:
        pass

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list[tuple[int, int, int]],
            flushes: list[tuple[int, int, int]]) -> None:
        if rows:
            self.stages.append(([(b, r.position, r.token, r.group) for b, r in rows], list(predictions),
                                list(commits), list(flushes)))


@dataclass
class DecoderOutput:
    """What one decoder produced on one rank."""

    tokens: list[list[int]]
    stages: int
    stats: PipelineStats | None
    per_sequence: list[PipelineStats] | None
    decisions: Decisions
    cache: tuple[Tensor, Tensor, Tensor | None, Tensor | None] | None = None  # k, v, cross_k, cross_v (CPU)
    logits: list[Tensor] | None = None  # every stage's logits [R, V] (CPU), record_logits only
    compile_s: float = 0.0


@dataclass
class RankOutput:
    rank: int
    world_size: int
    decoders: dict[str, DecoderOutput]


def build_model(request: DecodeRequest) -> SharedDecoder:
    """The whole seeded model of `request` (the same on every rank), quantized where it asks."""
    model = SharedDecoder(request.config, device=request.device, dtype=getattr(torch, request.dtype),
                          seed=request.seed)
    return model if request.quant is None else quantize(model, request.quant)


def decode_model(model: SharedDecoder, request: DecodeRequest, tp: TensorParallel | None = None) -> RankOutput:
    """`request`'s decoders run on `model`: rank `tp.rank`'s shard, or without `tp` a whole model."""
    outputs = {name: _run_decoder(model, name, request) for name in request.decoders}
    return RankOutput(0 if tp is None else tp.rank, 1 if tp is None else tp.world_size, outputs)


def run_request(request: DecodeRequest, tp: TensorParallel | None = None) -> RankOutput:
    """The decode of `request` on one rank (sharded by `tp`), or in one process without `tp`."""
    model = build_model(request)
    return decode_model(model if tp is None else shard(model, tp), request, tp)


def _run_decoder(model: SharedDecoder, name: str, request: DecodeRequest) -> DecoderOutput:
    recorded: list[Tensor] = []
    if request.record_logits:
        def exit_logits(h: Tensor, rows: object, exits: list[int]) -> Tensor:
            recorded.append(model.logits(h).cpu())
            return model.head(h)
        model.exit_logits = exit_logits
    decisions = Decisions()
    try:
        out = DECODERS[name](model, request.prompts, request.max_new_tokens, eos_id=request.eos_id,
                             encoder_inputs=request.encoder_inputs, observer=decisions, compile=request.compile)
    finally:
        vars(model).pop("exit_logits", None)
    cache = None
    if request.keep_cache:
        c = out.cache
        cache = tuple(None if t is None else t.cpu().clone() for t in (c.k, c.v, c.cross_k, c.cross_v))
    return DecoderOutput(out.tokens, out.stages, out.stats, out.per_sequence, decisions, cache,
                         recorded if request.record_logits else None, out.compile_s)


def decode_sharded(request: DecodeRequest, world_size: int, timeout_s: float = 60.0) -> list[RankOutput]:
    """`request` decoded by `world_size` local gloo ranks (spawned and ended here): every rank's output."""
    with LocalRanks(world_size, timeout_s) as ranks:
        return ranks.run(decode_on_rank, request)


def decode_on_rank(tp: TensorParallel, request: DecodeRequest) -> RankOutput:
    """`run_request` in the argument order of `LocalRanks.run`: `ranks.run(decode_on_rank, request)`."""
    return run_request(request, tp)


# -- agreement
@dataclass
class Agreement:
    """How the ranks' outputs compare with the single-process reference, per decoder: tokens equal, the share of
    generated tokens equal position by position (bf16 tells it), pipeline statistics and every stage's rows and
    decisions equal; every rank the same; the largest absolute differences of recorded logits (over the stages
    that ran the same rows) and of the KV caches over committed positions (None where not recorded)."""

    tokens_equal: dict[str, bool]
    token_match: dict[str, float]
    decisions_equal: dict[str, bool]
    ranks_agree: bool
    logits_max_abs: dict[str, float | None]
    cache_max_abs: dict[str, float | None]

    @property
    def exact(self) -> bool:
        return self.ranks_agree and all(self.tokens_equal.values()) and all(self.decisions_equal.values())


def _same_on_every_rank(outputs: Sequence[RankOutput], name: str) -> bool:
    first = outputs[0].decoders[name]
    return all((o.decoders[name].tokens, o.decoders[name].stats, o.decoders[name].decisions)
               == (first.tokens, first.stats, first.decisions) for o in outputs[1:])


def token_match(reference: list[list[int]], tokens: list[list[int]]) -> float:
    """The share of `reference`'s tokens that `tokens` has at the same position of the same sequence."""
    pairs = [(a, b) for ref, out in zip(reference, tokens) for a, b in zip(ref, out)]
    total = max(sum(len(r) for r in reference), 1)
    return sum(a == b for a, b in pairs) / total


def _logits_diff(reference: DecoderOutput, outputs: Sequence[DecoderOutput]) -> float | None:
    """Largest difference of the recorded logits over the stages both runs ran alike (all of them unless a
    token differed: then the stages up to the first that ran other rows)."""
    if reference.logits is None or outputs[0].logits is None:
        return None
    worst = 0.0
    for a, b, rows_a, rows_b in zip(reference.logits, outputs[0].logits, reference.decisions.stages,
                                    outputs[0].decisions.stages):
        if rows_a[0] != rows_b[0]:
            break
        worst = max(worst, float((a.double() - b.double()).abs().max()))
    return worst


def _cache_diff(reference: DecoderOutput, outputs: Sequence[DecoderOutput], prompts: list[list[int]]) -> float | None:
    """Largest difference of keys and values (the ranks' heads side by side) over the positions each sequence
    committed alike (all unless a token differed), and of the cross-attention keys and values."""
    if reference.cache is None or outputs[0].cache is None:
        return None
    worst = 0.0
    for i, ref in enumerate(reference.cache):
        if ref is None:
            continue
        whole = torch.cat([o.cache[i] for o in outputs], dim=2)
        for b, prompt in enumerate(prompts):
            mine, theirs = reference.tokens[b], outputs[0].tokens[b]
            alike = next((k for k, (x, y) in enumerate(zip(mine, theirs)) if x != y), min(len(mine), len(theirs)))
            span = len(prompt) + min(alike, len(mine) - 1) if i < 2 else ref.shape[3]
            worst = max(worst, float((whole[:, b, :, :span].double() - ref[:, b, :, :span].double()).abs().max()))
    return worst


def compare(reference: RankOutput, outputs: Sequence[RankOutput], prompts: list[list[int]]) -> Agreement:
    """The agreement of the ranks' `outputs` with the single-process `reference` (same request)."""
    names = list(reference.decoders)
    per_rank = {name: [o.decoders[name] for o in outputs] for name in names}
    return Agreement(
        tokens_equal={n: per_rank[n][0].tokens == reference.decoders[n].tokens for n in names},
        token_match={n: token_match(reference.decoders[n].tokens, per_rank[n][0].tokens) for n in names},
        decisions_equal={n: (per_rank[n][0].stats, per_rank[n][0].decisions)
                         == (reference.decoders[n].stats, reference.decoders[n].decisions) for n in names},
        ranks_agree=all(_same_on_every_rank(outputs, n) for n in names),
        logits_max_abs={n: _logits_diff(reference.decoders[n], per_rank[n]) for n in names},
        cache_max_abs={n: _cache_diff(reference.decoders[n], per_rank[n], prompts) for n in names})
