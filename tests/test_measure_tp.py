"""Tensor-parallel measurement (`reference.capture.measure --tp N`) on gloo CPU ranks, and its clock
(reference.capture.tpclock): a rank's work by thread CPU time, a collective from the last rank's arrival."""

import pytest
import torch

from reference.capture import measure
from reference.capture.tpclock import RankRun, collective_seconds, compose
from sim.trace import read_trace

AR = ("all_reduce", 256)


def test_a_collective_is_timed_from_the_last_ranks_arrival():
    """Rank 0 arrives at 1.0 and waits for rank 1 (at 1.5): its collective took 0.2 s from there, 0.5 s skew."""
    logs = [[(1.0, 1.7, 0.0, AR), (3.0, 3.1, 0.0, AR)], [(1.5, 1.7, 0.0, AR), (2.9, 3.1, 0.0, AR)]]
    times, skews = collective_seconds(logs)
    assert times == pytest.approx([0.2, 0.1]) and skews == pytest.approx([0.5, 0.0])
    with pytest.raises(ValueError, match="the ranks ran 2, 1 collectives"):
        collective_seconds([logs[0], logs[1][:1]])


def _run(work_s: float, collective_s: float, arrival: float = 0.0) -> RankRun:
    """A run of two stages, one all-reduce in each, on one rank: work before each collective, 1 ms of CPU time
    inside each collective (not work)."""
    log = [(arrival + t, arrival + t + collective_s, 1e-3, AR) for t in (1.0, 2.0)]
    marks = [(0.0, 0), (0.0, 0), (work_s + 1e-3, 1), (2 * work_s + 2e-3, 2)]  # start, stage 1, stage 2, end
    return RankRun(marks, log, wall_s=9.9)


def test_stages_and_end_to_end_are_work_plus_the_collectives_medians():
    """A stage's time is its work (CPU time less that inside collectives) plus the median of its collectives'
    transfer over every timed run: the one slow call (a scheduler tail) does not set it."""
    runs = [[_run(0.01, c), _run(0.01, c)] for c in (0.002, 0.002, 0.050)]
    composed = compose(runs)
    assert composed.collective_s == pytest.approx([0.002, 0.002])
    assert composed.transfer_s[AR]["n"] == 6 and composed.transfer_s[AR]["max"] == pytest.approx(0.05)
    assert composed.stage_s[0] == pytest.approx([0.012, 0.012])
    assert composed.end_to_end_s == pytest.approx([0.024] * 3)
    assert composed.collectives_per_run_s == pytest.approx([0.004, 0.004, 0.1])
    short = RankRun([(0.0, 0), (0.0, 0), (0.1, 1)], [(1.0, 1.1, 0.0, AR)], 1.0)  # one stage, one collective
    with pytest.raises(ValueError, match="not repeatable"):
        compose([runs[0], [short, short]])


def test_tp_measurement_writes_rank_zeros_trace(tmp_path):
    """Two gloo ranks decode tiny-4x3 with SPEED; rank 0's trace carries the degree, its collectives with their
    measured times, stages that are work plus collectives, and every rank's work (the ranks are alike)."""
    out = tmp_path / "tp.jsonl.gz"
    summary = measure.measure("tiny-4x3", "speed", 4, out, "cpu", torch.float32, flips="0.2,0.1", warmup=1,
                              repeats=2, op_repeats=1, progress=False, tp=2, timeout_s=60)
    trace = read_trace(out)
    assert trace.header.tp == 2 and trace.header.tp_rank == 0 and trace.header.measured
    collectives = [op for op in trace.ops if op.kind == "collective"]
    extra = trace.header.extra
    assert collectives and extra["collectives"]["count"] == len(collectives) and extra["clock"] == measure.TP_CLOCK
    assert all(op.duration_s and op.duration_s > 0 for op in trace.ops)
    assert all(op.ranks == 2 for op in collectives)
    for stage in trace.stages:  # a stage's ops fit in its time: its collectives plus its work, scaled to fit
        assert sum(op.duration_s for op in trace.ops if op.stage == stage.stage) <= stage.wall_s * (1 + 1e-9)
    assert len(extra["rank_work_s"]) == 2 and all(w > 0 for w in extra["rank_work_s"])
    assert extra["end_to_end_s"]["n"] == 2 and 0 < summary["collective_s"] < summary["end_to_end_s"]["median"]


@pytest.mark.parametrize("flags, message", [
    (["--tp", "2", "--compile"], "--tp 2 with --compile"),
    (["--tp", "2", "--threads", "2"], "--threads 2 with --tp"),
    (["--tp", "3"], "--tp 3: n_heads 4 is not divisible by 3 (tiny-4x3)"),
    (["--tp", "0"], "--tp"),
])
def test_tp_measurement_refuses_what_it_cannot_measure(tmp_path, capsys, flags, message):
    """One line naming the flag, exit 2, no process started and nothing written."""
    out = tmp_path / "tp.jsonl.gz"
    with pytest.raises(SystemExit) as exit_:
        measure.main(["--device", "cpu", "--preset", "tiny-4x3", "--decoder", "speed", "--tokens", "4", "--quiet",
                      "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_calibration_leaves_a_tp_traces_collectives_to_the_interconnect(tmp_path):
    """A measured tensor-parallel trace's collectives carry times, but the kernel fit takes none of them (the
    interconnect section, fitted to the all-reduce sweep, times them): no class or op kind of theirs is fitted."""
    from reference.capture import tracing
    from sim.fitting.calibrate import fit_kernels, op_samples
    from sim.hardware import HWCONFIG_DIR, load_hwconfig

    trace, _ = tracing.capture_trace("tiny-4x3", "sequential", 3, tmp_path / "t.jsonl.gz", tp=2,
                                     dtype=torch.float32)
    for i, op in enumerate(trace.ops):
        op.duration_s = 1e-5 * (1 + i % 7)
    hw = load_hwconfig(HWCONFIG_DIR / "a100.yaml")
    assert any(op.kind == "collective" for op in trace.ops)
    assert not [key for key in op_samples([trace], hw) if key[0] == "collective"]
    classes, ops = fit_kernels([trace], hw)
    assert "collective" not in classes and "collective" not in ops and "matmul" in classes
