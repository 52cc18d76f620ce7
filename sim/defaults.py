"""Where the shipped data lives and what the built-in default workload is (simulator core: no torch).

The hwconfigs and the default traces ship as package data (`sim/hwconfigs`, `sim/traces` in an installed
wheel, mapped from the checkout's `hwconfigs/` and `data/traces/` by pyproject.toml), so `python -m sim.run`
works from any directory after a plain `pip install .`. In a checkout (editable install or none) they are read
in place.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
CHECKOUT = _PACKAGE.parent  # the source tree, when running from one (absent from an installed wheel)


def _shipped(package_dir: str, checkout_dir: str) -> Path:
    """A data folder: inside the installed package when it is there, else in the checkout."""
    installed = _PACKAGE / package_dir
    return installed if installed.is_dir() else CHECKOUT / checkout_dir


HWCONFIG_DIR = _shipped("hwconfigs", "hwconfigs")
DEFAULT_TRACES = _shipped("traces", "data/traces")
# measured data, calibration inputs and reports: only in a checkout (not shipped)
MEASURED_DIR = CHECKOUT / "data" / "measured"
CALIBRATION_DIR = CHECKOUT / "data" / "calibration"


def trace_cache() -> Path:
    """Where traces made on demand (sim.run --model, other lengths) are cached: $SPEED_SIM_CACHE/traces, by
    default ~/.cache/speed-sim/traces (read at each call, so a process may point it elsewhere)."""
    return Path(os.environ.get("SPEED_SIM_CACHE", Path.home() / ".cache" / "speed-sim")) / "traces"


# The built-in default, the paper's setting: T5-Base width, bf16, batch 1, 128-token encoder input, 128 new
# tokens. (preset, decoder) of the default table: the first is the subject, the others its baselines.
DEFAULT_TOKENS, DEFAULT_SOURCE_LEN = 128, 128
DEFAULT_PROMPT_LEN = 16  # a decoder-only model's prompt in a trace made on demand
# the largest batch and token count a run may ask for: far beyond any run worth projecting (a batch of 65,536
# sequences; a million tokens), and small enough that no count a trace holds overflows (sim.trace.limits)
MAX_BATCH, MAX_TOKENS = 1 << 16, 1 << 20
DEFAULT_RUNS = (("t5-base-4x3", "speed"), ("t5-base-4x3", "sequential"), ("t5-base-12", "sequential"),
                ("t5-base-4", "sequential"))
DEFAULT_HW = "a100"


def default_trace_name(preset: str, decoder: str, compiled: bool = False) -> str:
    """File name of a default trace (`python -m reference.capture.tracing --defaults` writes them); `compiled`:
    of the run compiled decoding makes (its static-shape step, as the compiler is handed it)."""
    return f"{preset}.{decoder}{'.compiled' if compiled else ''}.bf16.b1.t{DEFAULT_TOKENS}.jsonl.gz"


def default_trace(preset: str, decoder: str, compiled: bool = False) -> Path:
    """The committed (or shipped) default trace of one (preset, decoder), eager or compiled."""
    return DEFAULT_TRACES / default_trace_name(preset, decoder, compiled)


def hwconfig_names() -> list[str]:
    """The shipped devices, by name (the file stem: `a100` for hwconfigs/a100.yaml)."""
    return sorted(p.stem for p in HWCONFIG_DIR.glob("*.yaml"))


def resolve_hwconfig(name_or_path: str | os.PathLike[str]) -> Path:
    """A hwconfig given by path (any file that exists) or by the name of a shipped one (`a100`, `a100.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = HWCONFIG_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return shipped if shipped.is_file() and path.parent == Path(".") else path
