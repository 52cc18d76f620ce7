"""Measurement on the cpu: a measured trace with per-op durations and per-stage wall times."""

import time

import pytest
import torch

from reference.capture import measure
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


def test_stage_times_are_contiguous_and_add_up_to_the_decode():
    """A stage runs from its start to the next one's (the decode loop's own work between stages belongs to the
    stage before it); the last one to its end."""
    ticks = iter([0.0, 1.0, 3.0, 3.5, 7.0, 8.0])
    clock = measure.StageClock(torch.device("cpu"))
    clock.now = lambda: next(ticks)
    for kind in ("prefill", "decode", "decode"):
        clock.begin(kind)
        clock.end([], [], [], [])
    clock.finish()
    assert clock.times_s == [3.0, 4.0, 1.0] and sum(clock.times_s) == 8.0


def test_one_cpu_thread_is_timed_by_its_cpu_time():
    """On one cpu thread a measurement reads the thread's CPU time, which other processes on a shared machine do
    not stretch; with more threads, wall time."""
    from reference.capture import clock

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert clock.host_clock(torch.device("cpu")) is time.thread_time
        assert clock.clock_name(torch.device("cpu")).startswith("thread cpu time")
        torch.set_num_threads(2)
        assert clock.host_clock(torch.device("cpu")) is time.perf_counter
    finally:
        torch.set_num_threads(threads)
    assert not clock.uses_thread_time(torch.device("meta"))


def test_jobs_are_measured_interleaved_and_each_written(tmp_path, monkeypatch, capsys):
    order = []
    run = measure.Job.run
    monkeypatch.setattr(measure.Job, "run", lambda job, observer=None: (order.append(job.preset), run(job, observer)))
    rc = measure.main(["--device", "cpu", "--dtype", "float32", "--tokens", "4", "--warmup", "1", "--repeats", "2",
                       "--op-repeats", "1", "--quiet",
                       "--job", f"--preset tiny-6 --decoder sequential --out {tmp_path / 'a.jsonl.gz'}",
                       "--job", f"--preset tiny-2x3 --decoder speed --flips 0.2,0.1 --tokens 6 "
                                f"--out {tmp_path / 'b.jsonl.gz'}"])
    assert rc == 0 and order == ["tiny-6", "tiny-2x3"] * 4  # a round runs each job once: warm-up, 2 timed, per-op
    a, b = read_trace(tmp_path / "a.jsonl.gz"), read_trace(tmp_path / "b.jsonl.gz")
    assert a.header.model["name"] == "tiny-6" and a.header.decoder == "sequential" and a.header.max_new_tokens == 4
    assert b.header.model["name"] == "tiny-2x3" and b.header.max_new_tokens == 6  # a job's own flag wins
    assert a.header.extra["end_to_end_s"]["n"] == b.header.extra["end_to_end_s"]["n"] == 2
    assert "a.jsonl.gz" in capsys.readouterr().out


def test_a_job_without_its_required_flags_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        measure.main(["--device", "cpu", "--job", f"--preset tiny-6 --out {tmp_path / 'a.jsonl.gz'}"])
    assert "--decoder required in --job" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        measure.main(["--device", "cpu", "--preset", "tiny-6", "--decoder", "speed"])
    assert "--out required" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


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


@pytest.fixture
def aot_eager(monkeypatch):
    """Compiled decoding with torch.compile's aot_eager backend (Dynamo and AOTAutograd, no code generation), so
    that a test compiles in seconds; the capture's uncompiled step (reference.compiled.uncompiled_step) still
    replaces it."""
    from reference import compiled

    def step(model):
        found = compiled._STEPS.get(model)
        if found is None:
            found = compiled._STEPS[model] = compiled.CompiledStep(model, backend="aot_eager")
        return found

    monkeypatch.setattr(compiled, "compiled_step", step)


def test_compiled_measurement_writes_a_trace_that_validates(tmp_path, aot_eager, capsys):
    from sim.fitting import validate

    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    rc = measure.main(["--device", "cpu", "--dtype", "float32", "--tokens", "5", "--warmup", "1", "--repeats", "2",
                       "--op-repeats", "2", "--quiet",
                       "--job", f"--preset tiny-2x3 --decoder speed --flips 0.2,0.1 --compile --out {a}",
                       "--job", f"--preset tiny-2x3 --decoder sequential --out {b}"])
    assert rc == 0 and "variants compiled in" in capsys.readouterr().out
    trace, eager = read_trace(a), read_trace(b)
    extra = trace.header.extra
    assert not trace.header.measured and extra["measurement"] == "compiled" and extra["formulation"] == "compiled"
    assert all(op.duration_s is None for op in trace.ops)  # a fused kernel has no per-op time: none is invented
    assert any(op.op.startswith("aten.index_put") for op in trace.ops)  # the static-shape step's cache writes
    assert all(stage.wall_s is not None and stage.wall_s > 0 for stage in trace.stages)
    assert extra["end_to_end_s"]["n"] == 2 and extra["end_to_end_s"]["median"] > 0 and extra["repeats"] == 2
    assert {v["rows"] for v in extra["compile_variants"]} <= {1, 2, 3} and extra["compile_s"] > 0
    assert sum(len(s.commits) for s in trace.stages) == 5
    assert eager.header.measured and "measurement" not in eager.header.extra  # the other job stayed eager
    rc = validate.main(["--launch", "compiled", "--hw", "hwconfigs/cpu-xeon-8480.yaml", "--measured", str(a)])
    out = capsys.readouterr().out
    assert rc == 0 and "stage" in out and "end_to_end" in out and "kernel" not in out


def test_compiled_measurement_needs_its_warmup(tmp_path, aot_eager):
    with pytest.raises(ValueError, match="--compile needs --warmup >= 1"):
        measure.measure("tiny-6", "sequential", 3, tmp_path / "x.jsonl.gz", "cpu", torch.float32, warmup=0,
                        compiled=True, progress=False)
    job = measure.Job("tiny-6", "sequential", 3, tmp_path / "x.jsonl.gz", torch.float32, compiled=True)
    job.build(torch.device("cpu"))
    with pytest.raises(RuntimeError, match=r"a timed run compiled new variants .*more --warmup"):
        job.timed_run(torch.device("cpu"))  # nothing compiled before: this run compiles, so it is no measurement
    assert not list(tmp_path.iterdir())
