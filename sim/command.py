"""What every command line shares (simulator core: no torch): how it ends, and flag values checked up front.

- `run_command(main, prog)`: Ctrl-C ends a command with one line and exit status 130 (SIGTERM: 143, as shells
  count 128 + the signal), never a traceback; SIGTERM is raised as an exception, so files being written
  (`sim.files.atomic_write`, trace writers) are removed on the way out; a closed stdout (`| head`) ends it
  quietly.
- `number(low, high)`, `integer(low, high)`: argparse types that refuse NaN, infinity and values out of range,
  naming the flag (argparse adds it).
- `check_outputs(parser, {"--json": path, ...}, inputs={"--hw": [path, ...]})`: the plan of a command line's
  outputs, checked before any work starts and before anything is written: each can be written
  (`sim.files.output_problem`), no two name the same file, none names an input (`sim.files.same_file`: as
  written, through `./`, `..`, a symbolic or a hard link). The outputs themselves are then written within
  `sim.files.staged_writes()`, so that a run that fails replaces nothing.
- `random_seed()`: an argparse type for seeds, 0..2**64 - 1 (what torch's and NumPy's generators take).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType

from sim.files import output_problem, same_file

INTERRUPTED = 130  # 128 + SIGINT
TERMINATED = 143  # 128 + SIGTERM
MAX_SEED = 2**64 - 1  # the largest seed torch.Generator.manual_seed and numpy's generators take


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


def random_seed() -> Callable[[str], int]:
    """An argparse type: a seed, an integer in 0..MAX_SEED."""
    return integer(0, MAX_SEED)


def check_outputs(parser: argparse.ArgumentParser, outputs: Mapping[str, Path | None],
                  folders: Mapping[str, Iterable[str]] | Iterable[str] = (),
                  inputs: Mapping[str, Iterable[str | os.PathLike[str] | None]] | None = None) -> None:
    """`parser.error` naming the flag and the path of the first output (flag -> path; None: not asked for) that
    cannot be written, that names the same file as another output, or that names an input (`inputs`: flag ->
    the files it gives; a run would overwrite what it reads). `folders`: the flags that name a folder to write
    files into (-> the names of those files, each an output of that flag, where a mapping)."""
    folders = dict(folders) if isinstance(folders, Mapping) else dict.fromkeys(folders, ())
    written: list[tuple[str, Path]] = []  # (flag, file) of everything the run would write
    for flag, path in outputs.items():
        if path is None:
            continue
        files = [Path(path) / name for name in folders[flag]] if flag in folders else [Path(path)]
        for where, folder in ((path, flag in folders), *((f, False) for f in files if flag in folders)):
            problem = output_problem(where, folder=folder)  # the folder, then each file in it
            if problem:
                parser.error(f"{flag} {_shown(where)}: {problem}")
        written += [(flag, f) for f in files]
    given = [(flag, Path(p)) for flag, paths in (inputs or {}).items() for p in paths if p is not None]
    for n, (flag, path) in enumerate(written):
        for other_flag, other in written[:n]:
            if same_file(path, other):
                parser.error(f"{flag} {_shown(path)}: the same file as {other_flag} {_shown(other)}; one would "
                             "overwrite the other: give each output its own path")
        for in_flag, read in given:
            if same_file(path, read):
                parser.error(f"{flag} {_shown(path)}: the file {in_flag} {_shown(read)} reads; the run would "
                             "overwrite its own input: write elsewhere")


def _shown(path: str | os.PathLike[str]) -> str:
    """A path for an error line, cut short past 200 characters."""
    text = os.fspath(path)
    return text if len(text) <= 200 else text[:100] + "..." + text[-97:]
