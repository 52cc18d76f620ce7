"""scripts/host_runs.py: the measured H200 traces whose first stage runs the same work are found as one group,
each with its own measured wall (docs/h200-eager-host.md reads its figures from it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "data" / "measured" / "h200"


def _host_runs():
    spec = importlib.util.spec_from_file_location("host_runs", ROOT / "scripts" / "host_runs.py")
    module = sys.modules["host_runs"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_encoder_work_in_two_runs(capsys) -> None:
    traces = [H200 / "t5-base-4.sequential.bf16.b1.t128.jsonl.gz", H200 / "t5-base-4x3.speed.bf16.b1.t128.jsonl.gz"]
    assert _host_runs().main(["--hw", str(ROOT / "hwconfigs" / "h200-calibrated.yaml"), *map(str, traces)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 * len(traces) + 1  # header, first and decode per trace, one group
    # the KV cache's zeros differ in shape (4 and 12 depths); the encoder's ops are the same
    assert lines[-1] == ("same work in the first stage: t5-base-4.sequential.bf16.b1.t128 12.05 ms, "
                         "t5-base-4x3.speed.bf16.b1.t128 9.69 ms")
    first = [line.split() for line in lines[1:-1] if line.split()[1] == "first"]
    assert [f[3] for f in first] == ["483", "483"]  # ops in the encoder stage
    assert not any("every decode stage" in line for line in lines)  # 211 and 240 ops per stage: not the same
