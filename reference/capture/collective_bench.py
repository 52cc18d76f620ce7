"""The all-reduce microbenchmark: seconds per all-reduce over message sizes and world sizes, for calibrating and
validating a hwconfig's interconnect section (sim.interconnect; `python -m sim.fitting.calibrate` fits it,
`python -m sim.fitting.validate --microbench` checks it).

Each world size runs in its own group of processes, one per rank, spawned by torch.multiprocessing and joined by
torch.distributed over 127.0.0.1 (gloo on cpu, its TCP transport on the loopback interface; nccl on cuda, one GPU
per rank). The collective is the one the tensor-parallel decoder issues (reference.parallel): the functional
op pair `torch.ops._c10d_functional.all_reduce` + `wait_tensor`, out of place (a fresh output per call, as the
decoder's row-parallel products get), so what is timed is what a decode step pays per collective, the output's
allocation included; `dist.all_reduce` would time an in-place call the decoder never makes.

Timing, on rank 0: per size a few warm-up calls, then `trials` trials of `calls` back-to-back all-reduces, each
trial after a barrier (on cuda also a synchronize) so that the ranks start together; a trial's time / calls is
the time per call, wall time (a collective waits on its peers, which no CPU clock of one thread counts): the host
clock on cpu, CUDA events on cuda (like nccl-tests: back-to-back calls, so the host's launch hides behind the
device where the device is slower). Each row keeps the median over trials (`seconds`) and its spread
(`seconds_min`, `seconds_max`). On a machine with fewer cores than ranks the ranks share cores: gloo blocks
in the kernel on its sockets rather than spinning, but a descheduled rank still stalls the ring, which the
spread shows.

Every process group ends with destroy_process_group; the ranks that do not finish within `timeout_s` are killed
and the sweep fails with one line saying so.
"""

from __future__ import annotations

import json
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

# bytes of one all-reduce: from 1 KiB through the 8-64 KiB of batch-1 decoding (one d_model row of bf16 is
# 1.5-16 KiB; a SPEED stage's G rows or a batch multiply it) to a few MiB (prefill, large batches)
SIZES_BYTES = (1 << 10, 4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20)
QUICK_SIZES_BYTES = (8 << 10, 64 << 10, 1 << 20)
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


def _time_size(x: torch.Tensor, group_name: str, trials: int, cuda: bool) -> list[float]:
    """Seconds per call of each trial (every rank runs it; rank 0's times are kept)."""
    ops = torch.ops._c10d_functional

    def reduce() -> None:
        ops.wait_tensor(ops.all_reduce(x, "sum", group_name))

    for _ in range(WARMUP_CALLS):
        reduce()
    calls, times = calls_per_trial(x.numel() * x.element_size()), []
    for _ in range(trials):
        if cuda:
            torch.cuda.synchronize()
            dist.barrier(device_ids=[x.device.index])
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                reduce()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3 / calls)
        else:
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(calls):
                reduce()
            times.append((time.perf_counter() - t0) / calls)
    return times


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
        gen = torch.Generator().manual_seed(rank)
        rows = []
        for nbytes in sizes:
            numel = nbytes // torch.empty((), dtype=dtype).element_size()
            x = torch.randn(numel, generator=gen).to(dtype).to(f"cuda:{rank}" if cuda else "cpu")
            times = _time_size(x, dist.group.WORLD.group_name, trials, cuda)
            rows.append({"world_size": world_size, "bytes": nbytes, "dtype": dtype_name,
                         "seconds": statistics.median(times), "seconds_min": min(times), "seconds_max": max(times),
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
        except mp.ProcessException as err:  # a rank raised, or died
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"all-reduce sweep: a rank of {world_size} failed: {last}") from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join(5)
        return json.loads(Path(out_path).read_text())


def all_reduce_sweep(device: str, world_sizes: tuple[int, ...] | None = None, sizes: tuple[int, ...] = SIZES_BYTES,
                     dtype: str | None = None, trials: int = 7, timeout_s: float = TIMEOUT_S,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Rows `{"world_size", "bytes", "dtype", "seconds", "seconds_min", "seconds_max", "calls", "trials"}`, one per
    world size and size: seconds per all-reduce (median over trials). dtype: float32 on cpu, bfloat16 on cuda
    (the decoders' dtypes there) unless given. Nothing to sweep (one GPU): no rows."""
    from tqdm import tqdm

    world_sizes = default_world_sizes(device) if world_sizes is None else world_sizes
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    rows: list[dict[str, Any]] = []
    for n in tqdm(world_sizes, desc=f"all-reduce on {device}", unit="world size", disable=not progress):
        rows += _run_group(n, device, tuple(sizes), dtype, trials, timeout_s)
    return rows


def backend_facts(device: str) -> dict[str, Any]:
    """What the sweep ran on, for the JSON beside its rows."""
    facts: dict[str, Any] = {"backend": "nccl" if device == "cuda" else "gloo", "transport": "127.0.0.1",
                             "api": "torch.ops._c10d_functional.all_reduce + wait_tensor (out of place)",
                             "clock": "CUDA events (rank 0)" if device == "cuda" else "wall time (rank 0)",
                             "cpu_count": os.cpu_count()}
    if device == "cuda" and torch.cuda.is_available():
        facts["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    return facts
