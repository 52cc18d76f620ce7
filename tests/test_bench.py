"""python -m sim.bench runs its workloads and prints their figures and the targets (timings are figures it
prints, not asserted here). Small settings: tiny models, few tokens."""

from __future__ import annotations

import os

from sim import bench


def test_bench_prints_the_figures_and_the_targets(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path / "user-cache"))
    assert bench.main(["--model", "tiny-2x3", "--speed-model", "tiny-4x3", "--speed-flips", "0.2,0.1",
                       "--tokens", "6", "--long-tokens", "4", "--tp-model", "tiny-4x3", "--tp", "2"]) == 0
    out = capsys.readouterr().out
    for line in ("default (committed traces)", "default at 4 tokens, empty cache", "tiny-2x3 sequential, 6 tokens",
                 "tiny-4x3 SPEED, 6 tokens", "the same, trace cached", "reference workload:", "kernels/s",
                 "tiny-4x3 TP 2 seq compiled, 6 tok, empty cache", "tiny-4x3 TP 2, compiled: empty cache, end to end",
                 "relative target (issue 20)"):
        assert line in out, line
    assert out.count(" met") + out.count("MISSED") == len(bench.TARGETS_S) + len(bench.RELATIVE_TARGETS)
    assert os.environ["SPEED_SIM_CACHE"] == str(tmp_path / "user-cache")  # restored
    assert not (tmp_path / "user-cache").exists()  # the benchmark traced into caches of its own
