"""The two hostile-input harnesses (scripts/fuzz_inputs.py, scripts/fuzz_traces.py) keep running against the code
they fuzz: a small sample of each through the real command lines, every outcome clear or accepted, the table
printed, the cases written as JSON. (The full runs are in the README's "Bad input"; the suite's own fuzzing is
tests/test_hostile_inputs.py and tests/test_trace_hostile.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, argv", [
    ("fuzz_inputs.py", ["--match", "duplicate"]),
    ("fuzz_traces.py", ["--cases", "24", "--validate-cases", "8", "--jobs", "1"]),
])
def test_a_harness_runs_clean_on_a_small_sample(tmp_path: Path, script: str, argv: list[str]) -> None:
    out = tmp_path / "cases.json"
    flag = "--json" if script == "fuzz_inputs.py" else "--out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *argv, flag, str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| inputs | tried |" in proc.stdout
    cases = json.loads(out.read_text())
    assert len(cases) >= 3
    assert {c["outcome"] for c in cases} <= {"accepted", "clear error"}, cases


def test_a_harness_refuses_an_unwritable_output_before_any_work(tmp_path: Path) -> None:
    for script, flag in (("fuzz_inputs.py", "--json"), ("fuzz_traces.py", "--out")):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), flag, str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and f"{flag} {tmp_path}: is a folder" in proc.stderr, proc.stderr
