"""Atomic file writes (simulator core): an existing file is never half-written, a failed write leaves nothing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# what a plain open() would give under the usual umask: mkstemp creates 0600, which other users cannot read
_FILE_MODE = 0o644


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` with a temporary path in the same folder, then rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, _FILE_MODE & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
