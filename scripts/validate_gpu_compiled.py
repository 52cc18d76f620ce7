"""CI: every committed compiled GPU measurement validated against its GPU's hwconfig, with a gate.

    python scripts/validate_gpu_compiled.py [--measured-root data/measured] [--hwconfigs hwconfigs] [--max-error 25]

A compiled measurement is a measured trace (reference.capture.measure --compile; scripts/gpu_campaign.sh writes
them under data/measured/<gpu>/compiled/) whose header says extra.measurement "compiled"; every *.jsonl.gz under
the root is read for it, wherever it lies. Those of each GPU folder measured on a GPU (CPU ones are the CPU loop's,
scripts/cpu_validation.sh) go through `python -m sim.fitting.validate --launch compiled --hw HW --max-error PCT`:
each decode stage and the end-to-end time against the compiled projection. HW is hwconfigs/<gpu>-calibrated.yaml
where one was calibrated, else hwconfigs/<gpu>.yaml (the datasheet); a folder of compiled traces with neither
fails.

The gate: the median end-to-end absolute error over a GPU's compiled traces must not exceed --max-error (default
25%, the CPU loop's gate for compiled decoding; its target is 10%); the median stage error is reported, not
gated. Exit status 1 when a GPU fails it (or its traces cannot be validated), 0 otherwise; with none committed it
says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's packages
    sys.path.insert(0, str(ROOT))

from sim.command import number, run_command  # noqa: E402
from sim.fitting import validate  # noqa: E402
from sim.trace import TraceError, iter_records  # noqa: E402

DEFAULT_MAX_ERROR_PCT = 25.0


def compiled_gpu_traces(folder: Path) -> list[Path]:
    """The compiled measurements made on a GPU under `folder` (header read only)."""
    found = []
    for path in sorted(folder.rglob("*.jsonl.gz")):
        try:
            header = next(iter_records(path))
        except (TraceError, OSError, StopIteration) as err:
            raise ValueError(f"{path}: not a readable trace ({err})") from None
        extra = header.extra if isinstance(header.extra, dict) else {}
        if extra.get("measurement") == "compiled" and header.device != "cpu":
            found.append(path)
    return found


def hwconfig_of(gpu: str, hwconfigs: Path) -> Path | None:
    """The GPU's calibrated hwconfig, else its datasheet one, else None."""
    return next((p for p in (hwconfigs / f"{gpu}-calibrated.yaml", hwconfigs / f"{gpu}.yaml") if p.is_file()), None)


def validate_gpu(gpu: str, traces: list[Path], hwconfigs: Path, max_error: float) -> bool:
    """sim.fitting.validate --launch compiled of one GPU's traces; whether they pass the gate."""
    hw = hwconfig_of(gpu, hwconfigs)
    if hw is None:
        print(f"{gpu}: FAIL: {len(traces)} compiled traces but neither {hwconfigs}/{gpu}-calibrated.yaml nor "
              f"{hwconfigs}/{gpu}.yaml", file=sys.stderr)
        return False
    print(f"{gpu}: {len(traces)} compiled traces against {hw}, gate: median end-to-end error <= {max_error:g}%")
    argv = ["--launch", "compiled", "--hw", str(hw), "--max-error", str(max_error), "--measured", *map(str, traces)]
    try:
        return validate.main(argv) == 0
    except SystemExit as exit_:  # a trace or hwconfig it refused: its one line is already on stderr
        return exit_.code == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/validate_gpu_compiled.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured-root", type=Path, default=ROOT / "data" / "measured",
                        help="folder of per-GPU folders of measured traces (default data/measured)")
    parser.add_argument("--hwconfigs", type=Path, default=ROOT / "hwconfigs",
                        help="folder of the hwconfigs, <gpu>[-calibrated].yaml (default hwconfigs)")
    parser.add_argument("--max-error", type=number(0), default=DEFAULT_MAX_ERROR_PCT, metavar="PCT",
                        help=f"the gate: median end-to-end absolute error in %% (default {DEFAULT_MAX_ERROR_PCT:g})")
    args = parser.parse_args(argv)
    if not args.measured_root.is_dir():
        parser.error(f"--measured-root {args.measured_root}: not a folder")
    try:
        per_gpu = {d.name: compiled_gpu_traces(d) for d in sorted(args.measured_root.iterdir()) if d.is_dir()}
    except ValueError as err:
        parser.error(str(err))
    per_gpu = {gpu: traces for gpu, traces in per_gpu.items() if traces}
    if not per_gpu:
        print(f"compiled GPU measurements under {args.measured_root}: none committed yet")
        return 0
    failed = [gpu for gpu, traces in per_gpu.items() if not validate_gpu(gpu, traces, args.hwconfigs, args.max_error)]
    print(f"compiled GPU measurements: {len(per_gpu) - len(failed)} of {len(per_gpu)} GPUs pass"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python scripts/validate_gpu_compiled.py"))
