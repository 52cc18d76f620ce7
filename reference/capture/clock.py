"""The clock host-side measurements read.

On a cpu running on one thread (torch.get_num_threads() == 1) the decoder's work, eager ops and compiled kernels
alike, runs on the calling thread, so that thread's CPU time (`time.thread_time`) is the time the work took on its
core whatever else a shared machine runs: the other processes that deschedule it do not count (on a busy 2-core
machine, wall times of the same compiled decodes stretched threefold between two runs). They still share the
caches and the memory bandwidth, which no clock separates. With more threads (whose work that clock would miss),
or on cuda (where the host waits for the device), it is wall time (`time.perf_counter`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def uses_thread_time(device: torch.device) -> bool:
    """Whether measurements on `device` read the calling thread's CPU time (see the module docstring)."""
    return device.type == "cpu" and torch.get_num_threads() == 1


def host_clock(device: torch.device) -> Callable[[], float]:
    """Seconds of the clock measurements on `device` read: thread CPU time or wall time."""
    return time.thread_time if uses_thread_time(device) else time.perf_counter


def clock_name(device: torch.device) -> str:
    """What `host_clock(device)` measures, for the files measurements write."""
    return "thread cpu time (one thread)" if uses_thread_time(device) else "wall time"


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and the 10th/90th percentiles of a list of readings (seconds), and their count."""
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "p10": pick(0.1),
            "p90": pick(0.9), "n": len(ordered)}
