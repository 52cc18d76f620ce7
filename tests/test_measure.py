"""Measurement on the cpu: a measured trace with per-op durations and per-stage wall times."""

import pytest
import torch

from reference import measure
from sim.trace import read_trace


def test_cpu_measurement_writes_a_measured_trace(tmp_path):
    out = tmp_path / "m.jsonl.gz"
    summary = measure.measure("tiny-2x3", "speed", 6, out, "cpu", torch.float32, flips="0.2,0.1", warmup=1,
                              repeats=2, op_repeats=2, progress=False)
    trace = read_trace(out)
    assert trace.header.measured and trace.header.device == "cpu"
    assert all(op.duration_s is not None and op.duration_s > 0 for op in trace.ops)
    assert all(stage.wall_s is not None and stage.wall_s > 0 for stage in trace.stages)
    e2e = trace.header.extra["end_to_end_s"]
    assert e2e["n"] == 2 and e2e["min"] <= e2e["median"] <= e2e["max"]
    assert summary["ops"] == len(trace.ops) and sum(len(s.commits) for s in trace.stages) == 6


def test_measurement_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="cpu or cuda"):
        measure.measure("tiny-2x3", "speed", 4, tmp_path / "x.jsonl.gz", "meta", torch.float32)
    with pytest.raises(ValueError, match="unknown model preset"):
        measure.measure("tiny-9x9", "speed", 4, tmp_path / "x.jsonl.gz", "cpu", torch.float32)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            measure.measure("tiny-2x3", "speed", 4, tmp_path / "x.jsonl.gz", "cuda", torch.float32)
    assert not list(tmp_path.iterdir())


def test_spread_summarises_seconds():
    s = measure.spread([3.0, 1.0, 2.0, 10.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (3.0, 1.0, 10.0, 5)
