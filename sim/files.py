"""Atomic file writes (simulator core): an existing file is never half-written, a failed or interrupted write
leaves nothing behind, and an output path is checked before any work starts (`output_problem`).

The temporary file is `.NAME.RANDOM.tmp` beside the target (unique: two runs never collide), removed on any
exception, Ctrl-C and SIGTERM included (command lines turn SIGTERM into an exception: `sim.command`); only a
SIGKILL or a power cut can leave one behind, hidden, and never in the target's place. The written file gets the
mode a plain open() would give (0666 less the umask: 0644 under the usual umask 022).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

_FILE_MODE = 0o666  # what open() asks for; the umask takes its share (mkstemp creates 0600)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` with a temporary path in the same folder, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _FILE_MODE & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_problem(path: Path, folder: bool = False) -> str | None:
    """Why `atomic_write` (or, with `folder`, writing files into the folder `path`) could not write there, or
    None: the target is a folder (or, with `folder`, a file), or not a regular file (a device or a pipe: renaming
    onto /dev/null would replace the device), a folder on its way is a file, or the nearest existing folder is
    not writable. Checked before any work starts, so that a long run never ends in an unusable path."""
    path = Path(path)
    try:
        if path.exists() or path.is_symlink():
            mode = path.stat().st_mode
            if folder:
                return None if stat.S_ISDIR(mode) else "exists and is not a folder"
            if stat.S_ISDIR(mode):
                return "is a folder"
            if not stat.S_ISREG(mode):
                return "exists and is not a regular file (a device or a pipe): refused"
        parent = path if folder else path.parent
        while not parent.exists():
            if parent.is_symlink():
                return f"{parent} is a broken link"
            parent = parent.parent
        if not parent.is_dir():
            return f"{parent} is a file, not a folder"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"the folder {parent} is not writable"
    except OSError as err:
        return err.strerror or str(err)
    return None
