"""The hostile-input harness: what a case is, how it runs, how its outcome is classified and reported.

A case names a command (a module whose `main(argv)` runs in a forked child, or with `process` a `python -m`
subprocess started from that child), its argv, the files to make in its own folder first (`{tmp}` in argv and
paths stands for that folder), and what must happen: "reject" (the input must be refused), "accept" (it must
run) or "any" (a clear refusal or a finite result). The child runs in its own process group with an
address-space limit and a wall-clock limit, so a hang or a memory bomb costs one case; `jobs` children run at
once. Each case ends in exactly one outcome (OUTCOMES):

- accepted: exit 0, no NaN or infinity in stdout or in the JSON results the case names, for an input that may be
  used;
- clear error: non-zero exit, no traceback, an error line last that names what the case says it must (the file
  or flag, and the field where the case knows it) and is short (never an expanded value);
- unclear error: non-zero exit, no traceback, but the line does not say where (or is long, or followed by more);
- traceback: an exception escaped (a "Traceback" on stderr);
- hang: the time limit passed, or the child died of a signal (the memory limit);
- silently accepted nonsense: exit 0 for an input that must be refused, NaN or infinity in the output, a named
  JSON result missing; or a refusal, crash or hang that changed a file the case protects.

Each case's time from the command's start to its end (its time to refusal, for a refused input) is recorded,
without the time spent making its files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import stat
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import NoReturn

import tqdm as tqdm_module
from tqdm import tqdm

ACCEPTED, CLEAR, UNCLEAR, TRACEBACK, HANG, SILENT = OUTCOMES = (
    "accepted", "clear error", "unclear error", "traceback", "hang", "silently accepted nonsense")
SHORT = dict(zip(("accepted", "clear", "unclear", "traceback", "hang", "silent"), OUTCOMES))  # for --show
FAILURES = (UNCLEAR, TRACEBACK, HANG, SILENT)  # any of them makes the exit status 1
EXPECTATIONS = ("reject", "accept", "any")
TMP = "{tmp}"  # in argv, `where`, `protected` and `results`: the case's own folder
MEMORY_LIMIT_BYTES = 4 << 30  # a memory bomb ends in the child, never on the shared machine
LONGEST_MESSAGE = 600  # characters: an error line longer than this prints a value in full
LONGEST_READ_BYTES = 16 << 20  # of a child's stdout or stderr: what a flood of output leaves to judge
EXCEPTION_EXIT = 70  # the child's exit status when an exception escaped (EX_SOFTWARE)
POLL_S = 0.005  # how often the runner looks for ended children
TRACEBACK_MARK = "Traceback (most recent call last)"
CACHE_ENV = "SPEED_SIM_CACHE"  # sim.defaults.trace_cache: where traces made on demand are cached
NONFINITE = re.compile(r"(?i)(?<![a-z_])(nan|-?inf(inity)?)(?![a-z_])")  # a number as Python or JSON prints it


@dataclass(frozen=True)
class Node:
    """A file-system entry of a case that is not just bytes: a folder, a named pipe, a Unix socket, a symbolic
    or hard link, or a file with a mode (applied after every entry is made, so a read-only folder can hold
    files)."""

    kind: str = "file"  # "file" | "folder" | "fifo" | "socket" | "symlink" | "hardlink"
    data: bytes | Callable[[], bytes] = b""  # a file's contents (a callable: made in the child)
    mode: int | None = None  # e.g. 0o500: a read-only folder; 0: an unreadable file
    target: str = ""  # a link's target ({tmp}: the case's folder), made earlier in the case's files


FileSpec = bytes | Callable[[], bytes] | Node  # a callable makes the bytes in the child (heavy inputs in parallel)


@dataclass
class Case:
    """One hostile input and what must happen to it."""

    kind: str  # the class of input: a row of the table
    name: str
    command: str  # the module whose main(argv) runs (or, with `process`, that `python -m` runs)
    argv: list[str]
    _: KW_ONLY
    expect: str  # EXPECTATIONS: "reject" must be refused, "accept" must run, "any": a clear refusal or a result
    files: dict[str, FileSpec] = field(default_factory=dict)  # made in {tmp} first, in this order
    where: tuple[str | tuple[str, ...], ...] = ()  # what a clear error line names (a tuple: any one of them)
    protected: tuple[str, ...] = ()  # paths that a case that does not exit 0 must leave as they were
    results: tuple[str, ...] = ()  # JSON files that an exit 0 must write, with finite numbers only
    timeout_s: float | None = None  # None: the harness's limit
    process: bool = False  # run `python -m command argv` (exec'd in the child) instead of main(argv)
    source: str = ""  # what the input was made from, for the report
    control: bool = False  # an unmutated base: must be accepted before the other cases run; not counted

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"case {self.name!r}: expect {self.expect!r} is not one of {EXPECTATIONS}")


def nothing(*args: object) -> None:
    """The default of a generator's optional hooks."""


@dataclass(frozen=True)
class Generator:
    """The cases of one or more classes of input, and what running them needs."""

    group: str  # what --only names for all its classes
    classes: dict[str, str]  # class -> its row in the table
    cases: Callable[[argparse.Namespace], list[Case]]  # every case of every class (seeded by args.seed)
    add_arguments: Callable[[argparse.ArgumentParser], None] = nothing  # its own flags
    preload: Callable[[], None] = nothing  # before the first fork: imports and reads the cases share


@dataclass
class Result:
    case: Case
    outcome: str
    rc: int | None  # None: killed (the time limit or a signal)
    message: str  # the line the outcome is judged by, the case's folder written {tmp}
    seconds: float  # from the command's start to its end (a hang: to the kill)


# -------------------------------------------------------------------------------------------------- the child

def fill(text: str, tmp: Path) -> str:
    return text.replace(TMP, str(tmp))


def materialize(files: dict[str, FileSpec], tmp: Path) -> None:
    """Make the case's files in `tmp`, in order, then apply their modes (last made, first)."""
    modes = []
    for name, spec in files.items():
        node = spec if isinstance(spec, Node) else Node("file", spec)
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if node.kind == "folder":
            path.mkdir(exist_ok=True)
        elif node.kind == "fifo":
            os.mkfifo(path)
        elif node.kind == "socket":
            bound = socket.socket(socket.AF_UNIX)  # bound, never listening: the file stays after it is closed
            bound.bind(str(path))
            bound.close()
        elif node.kind == "symlink":
            path.symlink_to(fill(node.target, tmp))
        elif node.kind == "hardlink":
            os.link(fill(node.target, tmp), path)
        else:
            path.write_bytes(node.data() if callable(node.data) else node.data)
        if node.mode is not None:
            modes.append((path, node.mode))
    for path, mode in reversed(modes):
        path.chmod(mode)


def fingerprint(path: Path) -> str:
    """What a protected path is: absent, a regular file's contents (a digest), or another entry's type and mode
    (never opened: a named pipe would block)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISREG(info.st_mode):
        return f"{stat.filemode(info.st_mode)} (not a regular file)"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{info.st_size} bytes, sha256 {digest.hexdigest()[:16]}"


def fingerprints(case: Case, tmp: Path) -> dict[str, str]:
    return {p: fingerprint(Path(fill(p, tmp))) for p in case.protected}


def child(case: Case, folder: Path, tmp: Path) -> NoReturn:
    """In the forked child: make the case's files, note the protected ones, run the command with stdout and
    stderr to files in `folder`; never returns."""
    rc = EXCEPTION_EXIT
    try:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)  # the runner kills the group: whatever the command starts goes too
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        # new streams on those descriptors: the parent's may write elsewhere (a test runner's capture)
        sys.stdout, sys.stderr = (open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
                                  for fd in (1, 2))
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # a command that reads stdin reads nothing, never a terminal
        # traces made on demand go to the run's own cache: hostile models never reach the user's
        os.environ[CACHE_ENV] = str(folder.parent / "cache")
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
        os.chdir(tmp)  # a relative output lands in the case's folder
        materialize(case.files, tmp)
        (folder / "protected.json").write_text(json.dumps(fingerprints(case, tmp)))
        (folder / "started").write_text(repr(time.monotonic()))
        rc = command(case, [fill(a, tmp) for a in case.argv])
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(rc)


def command(case: Case, argv: list[str]) -> int:
    """Run the case's command (in this process, or exec'd) and return its exit status."""
    if case.process:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        os.execve(sys.executable, [sys.executable, "-m", case.command, *argv], env)
    try:
        code = importlib.import_module(case.command).main(argv)
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):
            print(code, file=sys.stderr)  # as the interpreter prints it
            code = 1
    return 0 if code is None else code if isinstance(code, int) else 1


# ----------------------------------------------------------------------------------------- the classification

def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def names(message: str, where: tuple[str | tuple[str, ...], ...]) -> bool:
    """Whether `message` names every item of `where` (a tuple item: any one of its alternatives)."""
    return all(any(w in message for w in ((item,) if isinstance(item, str) else item)) for item in where)


def classify(case: Case, rc: int | None, ended: str, out: str, err: str, tmp: Path) -> tuple[str, str]:
    """(outcome, message) of a case that ended with exit status `rc` (None: killed, `ended` says why), given its
    stdout and stderr (the case's folder written {tmp})."""
    if rc is None:
        return HANG, f"{ended}; {last_line(err)[:200]}".rstrip("; ")
    if TRACEBACK_MARK in err:
        return TRACEBACK, last_line(err)[:300]
    if rc == 0:
        return judge_exit_0(case, out, tmp)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    message = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
    after = err[err.rfind(message) + len(message):].strip() if message else ""
    clear = (message and not after and len(message) <= LONGEST_MESSAGE and case.expect != "accept"
             and names(message, case.where))
    return (CLEAR if clear else UNCLEAR), message[:300]


def judge_exit_0(case: Case, out: str, tmp: Path) -> tuple[str, str]:
    said = last_line(out)[:200]
    if case.expect == "reject":
        return SILENT, f"exit 0 for an input that must be refused: {said}"
    if NONFINITE.search(out):
        return SILENT, f"a non-finite number in its output: {said}"
    for name in case.results:
        problem = result_problem(Path(fill(name, tmp)))
        if problem:
            return SILENT, f"{name}: {problem}"
    return ACCEPTED, said


def result_problem(path: Path) -> str | None:
    """Why a JSON result of an exit 0 is not one (missing, not a regular file, not JSON, not finite), or None."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return "not a regular file"
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return "exit 0 without it"
    except (OSError, ValueError) as e:
        return f"not JSON ({e})"
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return f"a non-finite number ({v})"
        stack += v.values() if isinstance(v, dict) else v if isinstance(v, list) else []
    return None


def damage(case: Case, before_json: Path, tmp: Path) -> str | None:
    """What changed among the protected paths since the child noted them, or None (nothing, or never noted)."""
    try:
        before = json.loads(before_json.read_text())
    except (OSError, ValueError):
        return None  # the child ended before its files were made: nothing of them to compare
    changed = [f"{p} was {was}, is {now}" for p, was in before.items()
               if (now := fingerprint(Path(fill(p, tmp)))) != was]
    return "; ".join(changed) or None


# ------------------------------------------------------------------------------------------------- the runner

@dataclass
class Running:
    n: int  # the case's index
    pid: int
    folder: Path  # the harness's files of the case (stdout, stderr, protected.json, started)
    tmp: Path  # the case's own folder ({tmp})
    forked: float  # time.monotonic() at the fork
    deadline: float


def start(case: Case, n: int, session: Path, timeout_s: float) -> Running:
    folder = session / str(n)
    tmp = folder / "case"
    tmp.mkdir(parents=True)
    sys.stdout.flush()
    sys.stderr.flush()
    forked = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(case, folder, tmp)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # also here: the group exists before the runner may kill it
    return Running(n, pid, folder, tmp, forked, forked + (case.timeout_s or timeout_s))


def kill(pid: int) -> None:
    """SIGKILL the process group of a case (its child and whatever the child started)."""
    for send in (os.killpg, os.kill):
        with contextlib.suppress(OSError):
            send(pid, signal.SIGKILL)


def read_tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - LONGEST_READ_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def finish(case: Case, run: Running, rc: int | None, ended: str) -> Result:
    """Classify an ended case, then remove its folders."""
    try:
        started = float((run.folder / "started").read_text())
    except (OSError, ValueError):
        started = run.forked
    seconds = time.monotonic() - started
    out, err = (read_tail(run.folder / name).replace(str(run.tmp), TMP) for name in ("stdout", "stderr"))
    outcome, message = classify(case, rc, ended, out, err, run.tmp)
    if rc != 0:
        changed = damage(case, run.folder / "protected.json", run.tmp)
        if changed:
            outcome, message = SILENT, f"{outcome} ({message[:200]}), and {changed}"
    remove(run.folder)
    return Result(case, outcome, rc, message, seconds)


def remove(folder: Path) -> None:
    """Remove a case's folders, whatever modes the case gave them."""
    for root, dirs, _ in os.walk(folder):  # top-down: each folder is made listable before it is walked
        for d in dirs:
            path = os.path.join(root, d)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o700)
    shutil.rmtree(folder, ignore_errors=True)


def reap(cases: list[Case], running: dict[int, Running], results: list[Result | None]) -> int:
    """Classify the cases that ended or ran out of time; the number of them."""
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid in running:
        run = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        kill(pid)  # what the command left running
        ended = f"killed by {signal.Signals(-code).name}" if code < 0 else ""
        results[run.n] = finish(cases[run.n], run, code if code >= 0 else None, ended)
        return 1
    now, done = time.monotonic(), 0
    for run in [r for r in running.values() if now > r.deadline]:
        kill(run.pid)
        os.waitpid(run.pid, 0)
        del running[run.pid]
        results[run.n] = finish(cases[run.n], run, None, f"no answer in {run.deadline - run.forked:.0f} s")
        done += 1
    return done


def run_cases(cases: list[Case], jobs: int = 2, timeout_s: float = 60.0, desc: str = "fuzzing") -> list[Result]:
    """Every case in its own forked child, `jobs` at a time, each killed after its time limit (a hang)."""
    tqdm_module.tqdm.monitor_interval = 0  # no monitor thread in a process that forks
    for module in sorted({c.command for c in cases if not c.process}):
        with contextlib.suppress(Exception):  # imported once, here; a module that fails fails again in its cases
            importlib.import_module(module)
    results: list[Result | None] = [None] * len(cases)
    pending = list(range(len(cases)))[::-1]
    running: dict[int, Running] = {}
    with tempfile.TemporaryDirectory(prefix="fuzz-") as name, tqdm(total=len(cases), desc=desc, unit="case",
                                                                     disable=None) as progress:
        session = Path(name).resolve()
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    n = pending.pop()
                    run = start(cases[n], n, session, timeout_s)
                    running[run.pid] = run
                done = reap(cases, running, results)
                progress.update(done)
                if not done:
                    time.sleep(POLL_S)
        finally:
            for run in running.values():
                kill(run.pid)
                os.waitpid(run.pid, 0)
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------------------------- the report

def refusal_seconds(results: list[Result]) -> str:
    """Median and maximum time to refusal (clear and unclear errors) of a class, in seconds: "-" if none."""
    seconds = [r.seconds for r in results if r.outcome in (CLEAR, UNCLEAR)]
    return f"{statistics.median(seconds):.2f} / {max(seconds):.2f}" if seconds else "-"


def table(results: list[Result], labels: dict[str, str]) -> str:
    """The markdown table: per class of input (in the order of `labels`: class -> row label), the cases tried,
    each outcome, and the median / maximum seconds to a refusal."""
    lines = ["| inputs | tried | " + " | ".join(OUTCOMES) + " | refused in s (median / max) |",
             "|" + " --- |" * (len(OUTCOMES) + 3)]
    for kind, label in labels.items():
        mine = [r for r in results if r.case.kind == kind]
        if mine:
            counts = [sum(r.outcome == o for r in mine) for o in OUTCOMES]
            lines.append(f"| {label} | {len(mine)} | " + " | ".join(map(str, counts))
                         + f" | {refusal_seconds(mine)} |")
    return "\n".join(lines)


def listing(results: list[Result], outcomes: list[str]) -> str:
    """The cases whose outcome is one of `outcomes`, a line each."""
    return "\n".join(f"[{r.outcome}] {r.case.kind}: {r.case.name} (expect {r.case.expect}, rc {r.rc}, "
                     f"{r.seconds:.2f} s): {r.message}" for r in results if r.outcome in outcomes)


def rows(results: list[Result]) -> list[dict]:
    """Every case and its outcome, as the --json file holds them (files by name only)."""
    return [{"class": r.case.kind, "name": r.case.name, "command": r.case.command, "argv": r.case.argv,
             "files": list(r.case.files), "expect": r.case.expect, "where": r.case.where,
             "protected": r.case.protected, "source": r.case.source, "outcome": r.outcome, "rc": r.rc,
             "message": r.message, "seconds": round(r.seconds, 3)} for r in results]
