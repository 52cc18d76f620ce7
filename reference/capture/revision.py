"""The code revision of a trace: a hash of the sources that decide what a trace holds (torch-free, so that
`python -m sim.run` finds a trace it made before without importing torch).

A regenerated default trace is byte-identical until one of these sources changes; a trace cached by
`sim.run` under a name with the revision is not reused once one has.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # holds reference/ and sim/: the checkout or site-packages
# files, or patterns of files (every module of a package), relative to SOURCE_ROOT
TRACE_SOURCES = ("reference/config.py", "reference/model.py", "reference/decode.py", "reference/pipeline.py",
                 "reference/compiled.py", "reference/flips.py", "reference/parallel.py", "reference/quant.py",
                 "reference/capture/tracing.py", "reference/capture/opcapture.py", "reference/capture/fastcapture.py",
                 "reference/capture/metaops.py", "reference/capture/placement.py", "reference/capture/accesses.py",
                 "sim/opkinds.py", "sim/trace/*.py")


def code_revision() -> str:
    """A hash of the sources that decide what a trace holds."""
    digest = hashlib.sha256()
    for name in TRACE_SOURCES:
        for path in sorted(SOURCE_ROOT.glob(name)) or [SOURCE_ROOT / name]:  # none: reading it raises
            digest.update(path.read_bytes())
    return "src-" + digest.hexdigest()[:12]
