"""The sweep on Ray: traces built once by Ray tasks and shared through Ray's object store, points projected by a
pool of worker actors, rows journaled as they come back.

- Ray starts locally (all cores, no dashboard, its files under a temporary folder) unless `address` names a
  running cluster, whose nodes need speed-sim installed (the same version: workers import `sim`, and run the
  trace provider, `reference` and torch, to build traces). Hwconfigs and model configs are read by the driver
  (the models described by the trace provider) and shipped with the work, so files that exist only where the
  sweep starts are fine.
- Phase 1: one Ray task per distinct trace the unfinished points replay: the trace provider's `trace` op on a
  worker (sim.provider: a subprocess, so that no worker imports torch; the meta device, cached on that worker's
  disk); the trace file's bytes go to the object store, and the driver fetches only a small status per trace
  (so a cluster's workers never need the driver's disk, nor it theirs).
- Phase 2: `workers` actors, each with a `Projector` that keeps the traces it was handed parsed; every
  configuration (the decoders of one point) is one call, two calls in flight per actor. Each call's rows are
  journaled as it returns, in whatever order; the rows files are written in spec order at the end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from sim.host import address_space_room, gigabytes, physical_bytes
from sim.inputs import brief
from sim.provider import trace_files
from sim.sweep.journal import Journal
from sim.sweep.points import Job, Projector, TraceKey, configurations

INSTALL_HINT = ("sim.sweep runs on Ray, which is not installed: pip install 'speed-sim[sweep]' "
                "(from a checkout: pip install -e '.[sweep]')")
IN_FLIGHT_PER_WORKER = 2  # one call running, one queued: a worker never waits for the driver
MAX_WORKERS = 1 << 16  # --workers, --bench: Ray actors (a Python process each) beyond any cluster's cores
# worker processes per core on this machine: more only wait for a core (and each holds ~150 MB of memory)
LOCAL_WORKERS_PER_CPU = 4
CONNECT_TIMEOUT_S = 5.0  # to find a cluster's GCS port answering before Ray is asked to join it
# HOST:PORT: a host name, an IPv4 address or a bracketed IPv6 address, and a port
HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?)"
                       r":(?P<port>[0-9]{1,5})")
ADDRESS_FORMS = ("auto (the cluster started on this machine), HOST:PORT (the head's GCS address, as `ray start "
                 "--head` prints it; port 6379 by default) or ray://HOST:PORT (Ray Client, port 10001)")


class SweepError(RuntimeError):
    """A sweep that cannot go on (a trace that cannot be built); the points finished so far are journaled."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SystemExit(f"error: {INSTALL_HINT}") from None
    return ray


def check_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address (None for `auto`), or a ValueError naming the flag and the forms it
    takes: ADDRESS_FORMS; the ray:// form only where the Ray Client is installed (`ray[client]`: grpcio)."""
    if address == "auto":
        return None
    hostport = address.removeprefix("ray://")
    match = HOST_PORT.fullmatch(hostport)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"--ray-address {brief(address)}: expected {ADDRESS_FORMS}")
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise ValueError(f"--ray-address {address}: the ray:// form connects through the Ray Client, which is not "
                         "installed: pip install 'ray[client]' (grpcio), or give the head's HOST:PORT from a node of "
                         "the cluster")
    return match["host"].strip("[]"), int(match["port"])


def _answers(address: str, host: str, port: int) -> None:
    """A ValueError unless something accepts a connection at host:port within CONNECT_TIMEOUT_S (Ray itself would
    wait minutes for a cluster that is not there)."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else err.strerror or str(err)
        raise ValueError(f"--ray-address {address}: no Ray cluster answers at {host}:{port} ({why}); start one "
                         "with `ray start --head` (README.md, \"Sweeps on a cluster\")") from None


def _join_error(ray: Any, err: Exception) -> str:
    """Why joining a cluster failed, in one line (a refused token: how to join one that authenticates)."""
    refused = getattr(ray.exceptions, "AuthenticationError", None)  # Ray 2.52 and later
    if refused is not None and isinstance(err, refused):
        return ("the cluster refused this process's token: a cluster with token authentication is joined with "
                "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN (README.md, \"Sweeps on a cluster\")")
    return " ".join(str(err).split())[:300]


# A Ray node's object store, by default 30% of its memory (ray._private.ray_constants
# DEFAULT_OBJECT_STORE_MEMORY_PROPORTION), is shared memory that every process joining the node maps whole
RAY_OBJECT_STORE_SHARE = 0.3


def check_address_space(flag: str) -> None:
    """A ValueError naming `flag` where this process's address-space limit (`ulimit -v`) cannot map a Ray node's
    default object store: Ray would abort in C++ (`shared_memory.cc: mmap failed`), not raise."""
    room, host = address_space_room(), physical_bytes()
    if room is not None and host is not None and room < RAY_OBJECT_STORE_SHARE * host:
        raise ValueError(f"{flag}: this process may map only {gigabytes(room)} more (ulimit -v), less than a Ray "
                         f"node's object store ({RAY_OBJECT_STORE_SHARE:.0%} of this host's {gigabytes(host)}), which "
                         "joining Ray maps: raise the limit (ulimit -v unlimited)")


def start_ray(address: str | None, workers: int | None) -> int:
    """Connect to the cluster at `address` (checked first: `check_address`, and that it answers), or start a
    small local Ray instance; the number of workers to use (`workers`, or every CPU Ray has). A ValueError naming
    the flag where the address cannot be joined or the workers cannot all run (local: more than
    LOCAL_WORKERS_PER_CPU per core; a cluster: more than its CPUs, each worker taking one)."""
    ray = import_ray()
    cores = os.cpu_count() or 1
    if not address and workers and workers > LOCAL_WORKERS_PER_CPU * cores:
        raise ValueError(f"--workers {workers}: more than {LOCAL_WORKERS_PER_CPU} per core of this machine's {cores} "
                         "(each a Python process; more only wait for a core): give fewer, or --ray-address a cluster")
    if not ray.is_initialized():
        if address:
            where = check_address(address)
            if where is not None:
                _answers(address, *where)
            check_address_space(f"--ray-address {brief(address)}")
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as err:  # no cluster there
                raise ValueError(f"--ray-address {brief(address)}: {_join_error(ray, err)}") from None
        else:
            check_address_space("sim.sweep (a local Ray instance)")
            ray.init(num_cpus=max(workers or 0, cores), include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if workers and address and workers > cpus:
        raise ValueError(f"--workers {workers}: the cluster at {address} has {cpus} CPUs, one per worker (more would "
                         "never be scheduled)")
    return workers or cpus


def _build_trace(key: TraceKey) -> tuple[dict[str, Any], bytes]:
    """A Ray task: the trace of `key` (made on demand, cached on this worker) as (status, file bytes)."""
    t0 = time.perf_counter()
    try:
        [traced] = trace_files([key.request()])
    except ValueError as err:  # the provider's error line, or no provider
        return {"error": str(err)}, b""
    return {"name": traced.path.name, "seconds": time.perf_counter() - t0}, traced.path.read_bytes()


class _Worker:
    """A Ray actor: projects configurations, keeping every trace it is handed."""

    def __init__(self) -> None:
        self.projector = Projector()

    def rows(self, configuration: list[Job], traces: dict[TraceKey, tuple[str, list]]) -> list[dict[str, Any]]:
        import ray

        for key, (name, (ref,)) in traces.items():  # the ref inside a list: fetched here, once per worker
            if key not in self.projector.traces:
                self.projector.add_trace(key, name, ray.get(ref))
        return self.projector.rows(configuration)


@dataclass
class Timing:
    traces: int
    trace_s: float  # building (or reading from each worker's cache) the traces
    points: int
    project_s: float  # projecting the points, from the first call to the last row
    workers: int


def build_traces(jobs: list[Job], progress: bool) -> tuple[dict[TraceKey, tuple[str, Any]], float]:
    """Phase 1: every distinct trace of `jobs`, built by Ray tasks; key -> (file name, object ref of its bytes)."""
    ray = import_ray()
    build = ray.remote(num_cpus=1, num_returns=2)(_build_trace)
    keys = list(dict.fromkeys(job.trace for job in jobs))
    t0 = time.perf_counter()
    refs = {key: build.remote(key) for key in keys}
    out = {}
    for key in tqdm(keys, desc="traces", unit="trace", disable=not progress or None, leave=False):
        status = ray.get(refs[key][0])
        if "error" in status:
            raise SweepError(status["error"])
        out[key] = (status["name"], refs[key][1])
    return out, time.perf_counter() - t0


def project_jobs(jobs: list[Job], traces: dict[TraceKey, tuple[str, Any]], workers: int,
                 record: Callable[[list[tuple[str, dict]]], None], progress: bool) -> float:
    """Phase 2: every configuration of `jobs` projected by `workers` actors; `record` gets each call's (key, row)
    pairs as it returns. Returns the seconds it took."""
    ray = import_ray()
    pending = configurations(jobs)[::-1]  # popped from the end: spec order
    workers = min(workers, len(pending))  # no worker without a configuration to project
    pool = [ray.remote(num_cpus=1)(_Worker).remote() for _ in range(workers)]
    in_flight: dict[Any, tuple[int, list[Job]]] = {}
    bar = tqdm(total=len(jobs), desc="sweep", unit="point", disable=not progress or None)
    t0 = time.perf_counter()

    def submit(worker: int) -> None:
        configuration = pending.pop()
        shipped = {job.trace: (traces[job.trace][0], [traces[job.trace][1]]) for job in configuration}
        in_flight[pool[worker].rows.remote(configuration, shipped)] = (worker, configuration)

    try:
        for worker in [w for w in range(workers) for _ in range(IN_FLIGHT_PER_WORKER)]:
            if pending:
                submit(worker)
        while in_flight:
            [done], _ = ray.wait(list(in_flight), num_returns=1)
            worker, configuration = in_flight.pop(done)
            rows = ray.get(done)
            record([(job.key, row) for job, row in zip(configuration, rows)])
            bar.update(len(rows))
            if pending:
                submit(worker)
    finally:
        bar.close()
        for actor in pool:
            ray.kill(actor)
    return time.perf_counter() - t0


def run_jobs(jobs: list[Job], journal: Journal, workers: int, progress: bool = True) -> Timing:
    """Project the jobs not in the journal yet, journaling every row as it comes back."""
    todo = [job for job in jobs if job.key not in journal.done]
    if not todo:
        return Timing(0, 0.0, 0, 0.0, workers)
    traces, trace_s = build_traces(todo, progress)
    project_s = project_jobs(todo, traces, workers, journal.append, progress)
    return Timing(len(traces), trace_s, len(todo), project_s, workers)
