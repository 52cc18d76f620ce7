"""Atomic file writes (simulator core): an existing file is never half-written, a failed or interrupted write
leaves nothing behind, and an output path is checked before any work starts (`output_problem`, `same_file`).

The temporary file is `.NAME.RANDOM.tmp` beside the target (unique: two runs never collide; NAME cut to
TMP_STEM_CHARS, so that a target whose name a folder takes has a temporary it takes too), removed on any
exception, Ctrl-C and SIGTERM included (command lines turn SIGTERM into an exception: `sim.command`); only a
SIGKILL or a power cut can leave one behind, hidden, and never in the target's place. The written file gets the
mode a plain open() would give (0666 less the umask: 0644 under the usual umask 022).

Within `staged_writes()` the outputs of a command are written to their temporaries and moved into place only
when every one was written: a run that fails (an exception, a refusal) replaces nothing.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_FILE_MODE = 0o666  # what open() asks for; the umask takes its share (mkstemp creates 0600)
TMP_STEM_CHARS = 100  # of the target's name in its temporary's: with the rest, far within a folder's 255
_staged: list[list[tuple[Path, Path]]] = []  # per open staged_writes(): (temporary, target) written so far


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary(folder: Path, name: str) -> Path:
    """A new empty hidden file beside `name` in `folder`, for writing it atomically."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name[:TMP_STEM_CHARS]}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` with a temporary path in the same folder, then rename it onto `path` (within
    `staged_writes()`: when every output of the stage is written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path.parent, path.name)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE & ~_umask())
        if _staged:
            _staged[-1].append((tmp, path))
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_writes() -> Iterator[None]:
    """Every `atomic_write` within moves into place only when the block ends without an exception, all
    together; on an exception (a failed write, a refusal, Ctrl-C) every temporary is removed and nothing is
    replaced."""
    _staged.append([])
    try:
        yield
    except BaseException:
        for tmp, _ in _staged.pop():
            tmp.unlink(missing_ok=True)
        raise
    written = _staged.pop()
    for n, (tmp, path) in enumerate(written):
        try:
            os.replace(tmp, path)
        except BaseException:
            for later, _ in written[n:]:
                later.unlink(missing_ok=True)
            raise


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once links, `.` and `..` are resolved, or (both
    existing) the same file by device and inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): by path alone
        return False


def output_problem(path: Path, folder: bool = False) -> str | None:
    """Why `atomic_write` (or, with `folder`, writing files into the folder `path`) could not write there, or
    None: the target is a folder (or, with `folder`, a file), or not a regular file (a device or a pipe: renaming
    onto /dev/null would replace the device), a folder on its way is a file, or no file can be made in the
    nearest existing folder (tried: permissions, a read-only file system, /proc, a name too long; root passes
    every permission check). Checked before any work starts, so that a long run never ends in an unusable
    path."""
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
    try:  # what atomic_write will make: that it can be made there
        _temporary(parent, path.name).unlink()
    except OSError as err:
        return f"no file can be made in {parent} ({err.strerror or err})"
    return None
