"""Traces on demand from the trace provider, a command (simulator core: no torch, nothing of `reference/`).

The simulator consumes trace files and knows nothing of who makes them. Where a command line needs a trace it has
not got, a model described, or microbenchmarks run, it asks the trace provider: the command SPEED_SIM_TRACER names
(split as a shell would), by default `<this python> -m reference.capture.provider`, whose docstring has the ops,
requests and answers. `request(op, requests)` runs it once for a whole batch:

- the requests go to its stdin as a JSON list, its answers come back on its stdout as a JSON list;
- its stderr is copied to ours as it comes (progress bars and notes reach the user's terminal; when ours is a
  terminal the provider writes to a pseudo-terminal of the same size, so that its bars draw as they would here),
  except its error line: exit status 2 with a last line `error: ...` becomes a `ProviderError` (a ValueError)
  with that line, which a command line reports as its own (`parser.error`), exactly as if it had found it;
- a provider that cannot be started, or ends otherwise (a crash: its output is above), is a `ProviderError`
  naming the command and SPEED_SIM_TRACER;
- Ctrl-C reaches the provider too (one process group) and it ends with a line of its own, which is not copied: the
  caller's `sim.command.run_command` says the one line. A provider still running when we stop for any other
  reason (SIGTERM to this process alone) is terminated, so that it removes what it was writing.

Why a command (not an import): the trace file stays the only thing that crosses from capture to the simulator;
torch never loads into a simulator process (the sweep's driver and Ray workers included); the same works from a
checkout, an editable install, a wheel or a Ray task; and another tracer plugs in by naming its command. The cost
is an interpreter start per call (about 0.1 s), so callers batch: one call per command line for all its traces.
"""

from __future__ import annotations

import codecs
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from sim.defaults import CHECKOUT

TRACER_ENV = "SPEED_SIM_TRACER"
ERROR_PREFIX = b"error: "  # the protocol's error line, the provider's last output when it exits with status 2
ERROR_STATUS = 2
INTERRUPT_GRACE_S = 3.0  # after Ctrl-C: time the provider (which got it too) has to clean up and end on its own
TERMINATE_GRACE_S = 10.0  # after SIGTERM: time to remove what it was writing before it is killed


class ProviderError(ValueError):
    """A request the trace provider refused (its error line), or a provider that could not answer."""


def tracer_command() -> list[str]:
    """The trace provider's command: SPEED_SIM_TRACER split as a shell would, else the reference decoder's."""
    named = os.environ.get(TRACER_ENV, "").strip()
    return shlex.split(named) if named else [sys.executable, "-m", "reference.capture.provider"]


def _environment() -> dict[str, str]:
    """The provider's environment: ours, with this checkout first on PYTHONPATH when running from one (so that
    `-m reference.capture.provider` finds the reference decoder beside this `sim`, from any directory; an
    installed package has both in site-packages already)."""
    env = dict(os.environ)
    if (CHECKOUT / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def request(op: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the trace provider's `op` on `requests`: its answers, one mapping per request, in their order."""
    command = [*tracer_command(), op]
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout:
        stdin.write(json.dumps(requests).encode())
        stdin.seek(0)
        status, error = _run(command, stdin, stdout)
        stdout.seek(0)
        text = stdout.read()
    where = f"the trace provider `{shlex.join(command)}` (set by {TRACER_ENV})"
    if status == ERROR_STATUS and error is not None:
        raise ProviderError(error)
    if status != 0:
        raise ProviderError(f"{where} failed with exit status {status}" + (f": {error}" if error else
                                                                               " (its output is above)"))
    try:
        answers = json.loads(text)
    except ValueError as err:
        raise ProviderError(f"{where} answered no JSON on stdout ({err})") from None
    if not isinstance(answers, list) or len(answers) != len(requests) or not all(isinstance(a, dict)
                                                                                 for a in answers):
        raise ProviderError(f"{where} answered {len(requests)} requests with something other than a list of "
                            f"{len(requests)} mappings")
    return answers


def _run(command: list[str], stdin: Any, stdout: Any) -> tuple[int, str | None]:
    """Run the provider to its end, its stderr copied to ours: (exit status, its error line or None)."""
    read_fd, write_fd = _stderr_channel()
    try:
        proc = subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=write_fd, env=_environment())
    except OSError as err:
        os.close(read_fd)
        raise ProviderError(f"the trace provider `{shlex.join(command)}` (set by {TRACER_ENV}) cannot be started: "
                            f"{err.strerror or err}") from None
    finally:
        os.close(write_fd)
    try:
        error = _relay(read_fd)
        return proc.wait(), error
    except KeyboardInterrupt:  # the provider got it too: it ends with a line of its own, not shown
        _stop(proc, INTERRUPT_GRACE_S)
        raise
    except BaseException:  # SIGTERM (sim.command.Terminated) or an error here: the provider may not know
        _stop(proc, 0.0)
        raise
    finally:
        os.close(read_fd)


def _stderr_channel() -> tuple[int, int]:
    """(read end, write end) of the provider's stderr: a pseudo-terminal of our terminal's size when our stderr is
    a terminal (so that the provider's progress bars draw as on a terminal, which they do only there), else a
    pipe. The pseudo-terminal passes bytes as written (no newline translation)."""
    if not (hasattr(os, "openpty") and sys.stderr.isatty()):
        return os.pipe()
    import fcntl
    import termios

    read_fd, write_fd = os.openpty()
    attrs = termios.tcgetattr(write_fd)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(write_fd, termios.TCSANOW, attrs)
    try:
        size = fcntl.ioctl(sys.stderr.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(write_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass  # no size to copy: the provider draws at its default width
    return read_fd, write_fd


class _Relay:
    """Copies the provider's stderr to ours as it comes, but for a line starting with ERROR_PREFIX that nothing
    follows: held back (the protocol's error line, reported by the caller in its own words, not twice)."""

    def __init__(self) -> None:
        self.held = b""  # the start of a line that is or may become an error line, not copied yet
        self.line_start = True
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        data, self.held = self.held + data, b""
        out, i = [], 0
        while i < len(data):
            end = data.find(b"\n", i)
            error_line = self.line_start and data[i:i + len(ERROR_PREFIX)] == ERROR_PREFIX[:len(data) - i]
            if error_line and end in (-1, len(data) - 1):  # the last output so far: held
                self.held = data[i:]
                break
            out.append(data[i:] if end == -1 else data[i:end + 1])
            self.line_start = end != -1
            i = len(data) if end == -1 else end + 1
        self._write(b"".join(out))

    def finish(self) -> str | None:
        """At the provider's end: its error line (without the prefix), or None (what was held is copied)."""
        if self.held.startswith(ERROR_PREFIX):
            return self.held[len(ERROR_PREFIX):].decode(errors="replace").strip()
        self._write(self.held)
        return None

    def _write(self, data: bytes) -> None:
        text = self.decoder.decode(data)
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()


def _relay(fd: int) -> str | None:
    """Copy the provider's stderr (`fd`) to ours until it ends; its error line, if its last output is one."""
    relay = _Relay()
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # a pseudo-terminal whose other side has closed (EIO on Linux)
            data = b""
        if not data:
            return relay.finish()
        relay.feed(data)


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """End the provider: `grace_s` to end on its own, then SIGTERM (it removes what it was writing), then kill."""
    for signal_it, wait_s in ((None, grace_s), (proc.terminate, TERMINATE_GRACE_S), (proc.kill, None)):
        if signal_it is not None:
            signal_it()
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class TraceFile(NamedTuple):
    """A trace the provider made or found: the model's name, the file, and the provider's time tracing it (s; 0
    when it was cached)."""

    name: str
    path: Path
    capture_s: float


def trace_files(requests: list[dict[str, Any]]) -> list[TraceFile]:
    """The provider's `trace` op: per request its trace."""
    answers = request("trace", requests)
    for i, a in enumerate(answers):
        if not (isinstance(a.get("name"), str) and isinstance(a.get("path"), str)
                and isinstance(a.get("capture_s"), (int, float))):
            raise ProviderError(f"the trace provider `{shlex.join(tracer_command())}` answered trace request {i} "
                                f"without a 'name', a 'path' and a 'capture_s': {json.dumps(a)[:200]}")
    return [TraceFile(a["name"], Path(a["path"]), float(a["capture_s"])) for a in answers]
