"""What every command line shares (simulator core: no torch): how it ends, and flag values checked up front.

- `run_command(main, prog)`: Ctrl-C ends a command with one line and exit status 130 (SIGTERM: 143, as shells
  count 128 + the signal), never a traceback; SIGTERM is raised as an exception, so files being written
  (`sim.files.atomic_write`, trace writers) are removed on the way out; a closed stdout (`| head`) ends it
  quietly.
- `number(low, high)`, `integer(low, high)`: argparse types that refuse NaN, infinity and values out of range,
  naming the flag (argparse adds it).
- `check_outputs(parser, {"--json": path, ...})`: every output path checked before any work starts
  (`sim.files.output_problem`).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from sim.files import output_problem

INTERRUPTED = 130  # 128 + SIGINT
TERMINATED = 143  # 128 + SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised where the program is (a BaseException, as KeyboardInterrupt: cleanup runs, handlers of
    Exception do not swallow it)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def run_command(main: Callable[[], int | None], prog: str) -> int:
    """`main()`'s exit status; Ctrl-C, SIGTERM and a closed stdout end it with one line (or none) instead."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return main() or 0
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted (Ctrl-C); files being written were removed", file=sys.stderr)
        return INTERRUPTED
    except Terminated:
        print(f"\n{prog}: terminated (SIGTERM); files being written were removed", file=sys.stderr)
        return TERMINATED
    except BrokenPipeError:  # stdout closed early (| head): nothing more to say, and nowhere to say it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def number(low: float = -math.inf, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a finite number in [{low:g}, {high:g}], got {text!r}")
        return value
    return parse


def integer(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when `high` is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {text[:40]!r}")
        return value
    return parse


def check_outputs(parser: argparse.ArgumentParser, outputs: dict[str, Path | None], folders: tuple[str, ...] = ()
                  ) -> None:
    """`parser.error` naming the flag and the path of the first output (flag -> path; None: not asked for) that
    cannot be written; the flags in `folders` name folders to write files into."""
    for flag, path in outputs.items():
        if path is not None:
            problem = output_problem(path, folder=flag in folders)
            if problem:
                parser.error(f"{flag} {path}: {problem}")
