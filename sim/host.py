"""What this machine lets a process hold (simulator core: no torch), for the estimates a command makes before it
starts work that could outgrow it (`sim.run` before projecting, the trace provider before tracing, the demo
before building a model): refused with the figure and the limit, never an out-of-memory kill minutes in.

`memory_bytes()`: the bytes this process may still allocate, the least of
- the memory available to new work (/proc/meminfo MemAvailable: free, plus caches the kernel can drop),
- its control group's limit less what the group uses (cgroup v2 memory.max, memory.current), and
- its address-space limit (RLIMIT_AS, `ulimit -v`) less the address space it already maps.
Where none can be read (not Linux), the physical memory (os.sysconf), else None: nothing to hold a run to.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")
STATUS = Path("/proc/self/status")


def _meminfo_kb(text: str, key: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _available() -> int | None:
    """MemAvailable, else the physical memory."""
    kb = _meminfo_kb(_read(MEMINFO) or "", "MemAvailable")
    return kb * 1024 if kb is not None else physical_bytes()


def _cgroup_room() -> int | None:
    """The control group's memory.max less memory.current (None: no limit, or not cgroup v2)."""
    limit, used = _read(CGROUP / "memory.max"), _read(CGROUP / "memory.current")
    if not limit or not used or limit.strip() == "max":
        return None
    return max(0, int(limit) - int(used))


def physical_bytes() -> int | None:
    """This host's physical memory (None where os.sysconf cannot say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def address_space_room() -> int | None:
    """RLIMIT_AS less the address space already mapped (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    mapped_kb = _meminfo_kb(_read(STATUS) or "", "VmSize") or 0
    return max(0, soft - mapped_kb * 1024)


def memory_bytes() -> int | None:
    """The bytes this process may still allocate (the module docstring), or None where nothing says."""
    known = [b for b in (_available(), _cgroup_room(), address_space_room()) if b is not None]
    return min(known) if known else None


def gigabytes(n: float) -> str:
    """A byte count as an error line shows it: "13.5 GB"."""
    return f"{n / 1e9:.3g} GB"


def check_room(what: str, need_bytes: float, share: float = 1.0) -> None:
    """A ValueError, saying `what` needs `need_bytes` and what this process may hold, where `need_bytes` exceeds
    `share` of `memory_bytes()` (the rest left to the process's own working memory and the system)."""
    room = memory_bytes()
    if room is not None and need_bytes > share * room:
        limit = f"{share:.0%} of " if share < 1 else ""
        raise ValueError(f"{what} needs about {gigabytes(need_bytes)} of host memory, more than {limit}the "
                         f"{gigabytes(room)} this process may still use")
