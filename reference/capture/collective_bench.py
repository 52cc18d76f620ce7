"""The all-reduce microbenchmark: seconds per all-reduce over message sizes and world sizes, for calibrating and
validating a hwconfig's interconnect section (sim.interconnect; `python -m sim.fitting.calibrate` fits it,
`python -m sim.fitting.validate --microbench` checks it).

Each world size runs in its own group of processes, one per rank, spawned by torch.multiprocessing and joined by
torch.distributed over 127.0.0.1 (gloo on cpu, its TCP transport on the loopback interface; nccl on cuda, one GPU
per rank). The collective is the one the tensor-parallel decoder issues (reference.parallel): the functional
op pair `torch.ops._c10d_functional.all_reduce` + `wait_tensor`, out of place (a fresh output per call, as the
decoder's row-parallel products get), so what is timed is what a decode step pays per collective, the output's
allocation included; `dist.all_reduce` would time an in-place call the decoder never makes.

Timing, on rank 0, on cuda: per size a few warm-up calls, then `trials` trials of `calls` back-to-back
all-reduces, each trial after a barrier and a synchronize so that the ranks start together; a trial's time / calls
is the time per call, by CUDA events (like nccl-tests: back-to-back calls, so the host's launch hides behind the
device where the device is slower). Each row keeps the median over trials (`seconds`) and its spread
(`seconds_min`, `seconds_max`).

On cpu each call is timed as a tensor-parallel decode's collectives are (reference.capture.tpclock): every rank
does `DECODE_GAP_S` of its own work (CPU time on its thread) before each call, as a decode step computes a layer's
half between two all-reduces, and a call's time is wall time from the last rank's arrival to rank 0's result (the
ranks' arrival times exchanged after each trial). Back-to-back calls measure something else there: gloo's
threads stay awake and the ranks arrive together (on the development machine back-to-back calls of 256 bytes
averaged 0.6-1.9 ms per call, tails included, against medians of 0.3-0.4 ms per call after a gap and 0.5 ms for
the decode's own collectives). `seconds` is the median over every call of every trial (a scheduler time slice
that one call in four or five waits on a shared machine is the machine's other work: tpclock says why the
median); `seconds_min` and `seconds_max` the least and largest median of a trial. With fewer cores than ranks
the ranks share cores: gloo blocks in the kernel on its sockets rather than spinning, but a descheduled rank
still stalls the ring, which the spread shows.

Every process group ends with destroy_process_group; the ranks that do not finish within `timeout_s` are killed
and the sweep fails with one line saying so.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reference.capture.tpclock import TimedCollectives, collective_seconds
from reference.parallel import TensorParallel

# bytes of one all-reduce: from 1 KiB through the 8-64 KiB of batch-1 decoding (one d_model row of bf16 is
# 1.5-16 KiB; a SPEED stage's G rows or a batch multiply it) to a few MiB (prefill, large batches)
SIZES_BYTES = (1 << 10, 4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20)
QUICK_SIZES_BYTES = (8 << 10, 64 << 10, 1 << 20)
# on a cpu the sweep starts at the all-reduces of the tiny presets' decodes (d_model 64, float32: one row is 256
# bytes, a SPEED stage's rows 512-768, a 16-token prefill 4 KiB; the argmax's all-gather 16-48 bytes)
CPU_SIZES_BYTES = (256, *SIZES_BYTES)
CPU_QUICK_SIZES_BYTES = (256, 1 << 10, 4 << 10, 64 << 10, 1 << 20)
# a rank's own work before each all-reduce on cpu: the median CPU time between two collectives of the tiny presets'
# tensor-parallel decodes (tiny-4x3 sequential and SPEED, tiny-t5-2x3 SPEED: 170-260 us on the development machine)
DECODE_GAP_S = 200e-6
WARMUP_CALLS = 3
CALL_BUDGET_BYTES = 4 << 20  # calls per trial: about this many bytes reduced, between 3 and 200 calls
TIMEOUT_S = 600.0


def calls_per_trial(nbytes: int) -> int:
    """Back-to-back calls per trial: many for small messages (whose time is a few tens of microseconds), at least 3.
    The same on every rank (every rank must make the same calls)."""
    return max(3, min(200, CALL_BUDGET_BYTES // max(nbytes, 1)))


def default_world_sizes(device: str) -> tuple[int, ...]:
    """Ranks to sweep: every power of two up to the GPUs present (cuda) or the cores (cpu, at least 2): more ranks
    than cores wait for the scheduler at every step of the ring, which measures the host's load, not gloo (on a
    busy 2-core machine 4 ranks took 6-8 times as long as 2); `--world-sizes` runs them anyway."""
    count = torch.cuda.device_count() if device == "cuda" else max(2, os.cpu_count() or 1)
    return tuple(n for n in (2, 4, 8, 16) if n <= count)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_cuda(x: torch.Tensor, tp: TensorParallel, trials: int) -> tuple[float, list[float]]:
    """(seconds per call, each trial's) of back-to-back calls between CUDA events (every rank runs it; rank 0's
    times are kept): the median over trials."""
    for _ in range(WARMUP_CALLS):
        tp.all_reduce(x)
    calls, times = calls_per_trial(x.numel() * x.element_size()), []
    for _ in range(trials):
        torch.cuda.synchronize()
        dist.barrier(device_ids=[x.device.index])
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            tp.all_reduce(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / calls)
    return statistics.median(times), times


def _own_work(seconds: float) -> None:
    """`seconds` of this thread's CPU time: a rank's work between two collectives."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _time_cpu(x: torch.Tensor, tp: TimedCollectives, trials: int) -> tuple[float, list[float]]:
    """(seconds per call, each trial's median) of calls each after DECODE_GAP_S of the rank's own work, timed as a
    decode's collectives (reference.capture.tpclock): the median over every call (module docstring)."""
    for _ in range(WARMUP_CALLS):
        tp.all_reduce(x)
    calls, every, medians = calls_per_trial(x.numel() * x.element_size()), [], []
    for _ in range(trials):
        dist.barrier()
        tp.log.clear()
        for _ in range(calls):
            _own_work(DECODE_GAP_S)
            tp.all_reduce(x)
        mine = torch.tensor([stamp[0] for stamp in tp.log], dtype=torch.float64)
        arrivals = torch.empty(tp.world_size * calls, dtype=torch.float64)
        dist.all_gather_into_tensor(arrivals, mine)  # every rank's arrivals, rank order
        logs = [tp.log if r == tp.rank else [(a, math.nan, 0.0, tp.log[0][3])
                                             for a in arrivals[r * calls:(r + 1) * calls].tolist()]
                for r in range(tp.world_size)]
        times = collective_seconds(logs, tp.rank)[0]
        every += times
        medians.append(statistics.median(times))
    return statistics.median(every), medians


def _rank(rank: int, world_size: int, port: int, device: str, sizes: tuple[int, ...], dtype_name: str, trials: int,
          out_path: str, timeout_s: float) -> None:
    """One rank of one world size: join the group, time every size, rank 0 writes the rows to `out_path`."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        dtype = getattr(torch, dtype_name)
        tp = TimedCollectives.of()  # the decoder's op pair (reference.parallel), with a log of its calls
        gen = torch.Generator().manual_seed(rank)
        rows = []
        for nbytes in sizes:
            numel = nbytes // torch.empty((), dtype=dtype).element_size()
            x = torch.randn(numel, generator=gen).to(dtype).to(f"cuda:{rank}" if cuda else "cpu")
            seconds, times = _time_cuda(x, tp, trials) if cuda else _time_cpu(x, tp, trials)
            rows.append({"world_size": world_size, "bytes": nbytes, "dtype": dtype_name,
                         "seconds": seconds, "seconds_min": min(times), "seconds_max": max(times),
                         "calls": calls_per_trial(nbytes), "trials": trials})
        if rank == 0:
            Path(out_path).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def _run_group(world_size: int, device: str, sizes: tuple[int, ...], dtype: str, trials: int,
               timeout_s: float) -> list[dict[str, Any]]:
    """Spawn `world_size` ranks, wait at most `timeout_s` for them (killing them past it), return rank 0's rows."""
    with tempfile.TemporaryDirectory(prefix="allreduce-") as tmp:
        out_path = str(Path(tmp) / "rows.json")
        args = (world_size, _free_port(), device, sizes, dtype, trials, out_path, timeout_s)
        context = mp.start_processes(_rank, args=args, nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"all-reduce sweep: {world_size} {device} ranks did not finish within "
                                       f"{timeout_s:g} s")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:  # a rank raised, or died
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"all-reduce sweep: a rank of {world_size} failed: {last}") from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join(5)
        return json.loads(Path(out_path).read_text())


def default_sizes(device: str, quick: bool = False) -> tuple[int, ...]:
    """Bytes to sweep on `device`; `quick`: fewer."""
    if device == "cuda":
        return QUICK_SIZES_BYTES if quick else SIZES_BYTES
    return CPU_QUICK_SIZES_BYTES if quick else CPU_SIZES_BYTES


def all_reduce_sweep(device: str, world_sizes: tuple[int, ...] | None = None, sizes: tuple[int, ...] | None = None,
                     dtype: str | None = None, trials: int = 7, timeout_s: float = TIMEOUT_S,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Rows `{"world_size", "bytes", "dtype", "seconds", "seconds_min", "seconds_max", "calls", "trials"}`, one per
    world size and size: seconds per all-reduce (module docstring: cuda the median over trials, cpu over calls).
    sizes: `default_sizes(device)` unless given; dtype: float32 on cpu, bfloat16 on cuda (the decoders' dtypes
    there) unless given. Nothing to sweep (one GPU): no rows."""
    from tqdm import tqdm

    world_sizes = default_world_sizes(device) if world_sizes is None else world_sizes
    sizes = default_sizes(device) if sizes is None else sizes
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    rows: list[dict[str, Any]] = []
    for n in tqdm(world_sizes, desc=f"all-reduce on {device}", unit="world size", disable=not progress):
        rows += _run_group(n, device, tuple(sizes), dtype, trials, timeout_s)
    return rows


def backend_facts(device: str) -> dict[str, Any]:
    """What the sweep ran on, for the JSON beside its rows."""
    facts: dict[str, Any] = {"backend": "nccl" if device == "cuda" else "gloo", "transport": "127.0.0.1",
                             "api": "torch.ops._c10d_functional.all_reduce + wait_tensor (out of place)",
                             "clock": "CUDA events (rank 0), back-to-back calls" if device == "cuda" else
                             f"wall time from the last rank's arrival to rank 0's result, each call after "
                             f"{DECODE_GAP_S * 1e6:g} us of work per rank (reference.capture.tpclock); median "
                             "over calls",
                             "cpu_count": os.cpu_count()}
    if device == "cuda" and torch.cuda.is_available():
        facts["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    return facts
