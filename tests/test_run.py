"""python -m sim.run: the default table, its outputs, and clear errors for bad input."""

import itertools
import json
from pathlib import Path

import pytest

from sim import run


def test_default_run_prints_the_table_and_writes_json_perfetto_and_plot(tmp_path, capsys):
    out_json, out_trace, out_png = tmp_path / "r.json", tmp_path / "t.json", tmp_path / "p.png"
    assert run.main(["--hw", "hwconfigs/a100.yaml", "hwconfigs/h200.yaml", "--json", str(out_json),
                     "--perfetto", str(out_trace), "--plot", str(out_png)]) == 0
    table = capsys.readouterr().out
    # the default shows both regimes: eager and compiled, each on both devices
    assert "NVIDIA A100" in table and "NVIDIA H200" in table and table.count("t5-base-4x3 speed") == 4
    assert table.count("eager launch") == table.count("compiled launch") == 2
    runs = json.loads(out_json.read_text())["runs"]
    assert len(runs) == 16 and {r["launch"] for r in runs} == {"eager", "compiled"}
    for r in runs:
        assert {"hardware", "model", "decoder", "tokens", "total_s", "s_per_token", "bound", "roofline_s"} <= set(r)
        assert r["tokens"] == 128 and r["total_s"] >= r["roofline_s"]
        assert r["s_per_token"] >= r["roofline_s_per_token"]  # both count the decode stages only
        assert abs(sum(r["bound"].values()) - 1) < 1e-9
    speed = {(r["hardware"], r["launch"]): r["s_per_token"] for r in runs if r["decoder"] == "speed"}
    seq = {(r["hardware"], r["launch"]): r["s_per_token"] for r in runs
           if r["model"] == "t5-base-4x3" and r["decoder"] == "sequential"}
    assert all(speed[h] < seq[h] for h in speed)  # SPEED beats decoding the same model sequentially
    # compiled, the device sets the time: far faster than eager, and the H200 (more bandwidth) beats the A100
    assert all(speed[hw, "compiled"] < speed[hw, "eager"] / 5 for hw, _ in speed)
    a100, h200 = (next(h for h, _ in speed if name in h) for name in ("A100", "H200"))
    assert speed[h200, "compiled"] < speed[a100, "compiled"]
    events = json.loads(out_trace.read_text())["traceEvents"]
    assert {e["ph"] for e in events} == {"M", "X", "i"}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_set_and_launch(capsys):
    run.main(["--hw", "hwconfigs/a100.yaml", "--launch", "graph", "--trace",
              "data/traces/t5-base-4.sequential.bf16.b1.t128.jsonl.gz"])
    base = capsys.readouterr().out
    run.main(["--hw", "hwconfigs/a100.yaml", "--launch", "graph", "--trace",
              "data/traces/t5-base-4.sequential.bf16.b1.t128.jsonl.gz", "--set", "host.graph_kernel_gap_s=0",
              "--set", "host.kernel_min_s=0"])
    assert "graph launch" in base and capsys.readouterr().out != base


@pytest.mark.parametrize("argv, message", [
    (["--hw", "hwconfigs/nope.yaml"], "hwconfig hwconfigs/nope.yaml: no such file"),
    (["--trace", "README.md"], "not a gzip file"),
    (["--set", "peak.clock_hz"], "--set expects key=value"),
    (["--set", "peak.nothing=1"], "field 'peak.nothing': no such figure; in peak: peak.clock_hz, "),
    (["--tokens", "0"], "argument --tokens: expected an integer in [1, 1048576], got '0'"),
    (["--streams", "0"], "argument --streams: expected an integer in [1, 1024], got '0'"),
    (["--hw", "hwconfigs/cpu-xeon-8480.yaml", "--streams", "2"], "describes a CPU, whose host runs its own kernels"),
])
def test_bad_input_gets_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_streams_overlap_kernels_and_report_the_critical_path(tmp_path, capsys):
    trace = "data/traces/t5-base-4x3.speed.bf16.b1.t128.jsonl.gz"
    out_json = tmp_path / "r.json"
    for streams in ("1", "4"):
        assert run.main(["--hw", "hwconfigs/h100.yaml", "--launch", "graph", "--trace", trace, "--streams", streams,
                         "--json", str(out_json), "--perfetto", str(tmp_path / "t.json")]) == 0
        [r] = json.loads(out_json.read_text())["runs"]
        if streams == "1":
            one = r
    assert "up to 4 kernels at once" in capsys.readouterr().out and r["streams"] == 4 and one["streams"] == 1
    # independent kernels (the rows' attention, Q/K/V projections) overlap: faster, but never below the
    # dependency chain or the aggregate roofline
    assert max(r["critical_path_s"], r["roofline_s"]) <= r["total_s"] < one["total_s"]
    assert "critical_path_s" not in one
    kernels = [e for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e["ph"] == "X"]
    by_track: dict[int, list] = {}
    for e in kernels:
        by_track.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    assert 1 < len(by_track) <= 4  # overlapping kernels on separate tracks, never more than the streams
    for spans in by_track.values():
        spans.sort()
        assert all(end <= next_start + 1e-6 for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_outputs_are_written_atomically(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        run.atomic_write(target, lambda tmp: (tmp.write_text("half"), (_ for _ in ()).throw(RuntimeError("x"))))
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_default_projections_are_the_recorded_ones(tmp_path):
    """A refactor must not move a projection: the default table's figures equal those recorded in
    tests/data/default-projections.json (regenerate it with tests/data/regenerate.py only for a change meant to
    move them)."""
    recorded = json.loads((Path(__file__).parent / "data" / "default-projections.json").read_text())["runs"]
    out = tmp_path / "runs.json"
    assert run.main(["--hw", "a100", "h200", "--json", str(out)]) == 0
    now = json.loads(out.read_text())["runs"]
    assert [(r["hardware"], r["launch"], r["label"]) for r in now] == [
        (r["hardware"], r["launch"], r["label"]) for r in recorded]
    for a, b in zip(now, recorded):
        assert (a["total_s"], a["s_per_token"], a["dram_bytes"], a["kernels"]) == pytest.approx(
            (b["total_s"], b["s_per_token"], b["dram_bytes"], b["kernels"]), rel=1e-9), a["label"]


def test_compiled_projections_order_gpus_as_their_memory_systems_do(tmp_path):
    """Compiled, the device sets the time of these decodes (their kernels' fixed times, the same on these GPUs, and
    their bytes): each default configuration is slowest on the A5000 (768 GB/s) and fastest on the H200 (4.8 TB/s),
    in the order of their DRAM bandwidth."""
    out = tmp_path / "runs.json"
    assert run.main(["--hw", "a5000", "a100", "h100", "h200", "--launch", "compiled", "--json", str(out)]) == 0
    by_label: dict[str, list[float]] = {}
    for r in json.loads(out.read_text())["runs"]:
        by_label.setdefault(r["label"], []).append(r["s_per_token"])
    for label, seconds in by_label.items():
        assert seconds == sorted(seconds, reverse=True) and seconds[0] > 1.1 * seconds[-1], (label, seconds)


def test_older_traces_are_projected_eager_by_default_and_say_why(tmp_path, capsys):
    """A format-1 trace records no data flow to fuse: with no --launch it is projected eager with a note; asked for
    compiled, it is refused."""
    old = "data/measured/h200/t5-base-4.sequential.bf16.b1.t128.jsonl.gz"
    out = tmp_path / "runs.json"
    assert run.main(["--hw", "h200", "--trace", old, "--json", str(out)]) == 0
    assert [r["launch"] for r in json.loads(out.read_text())["runs"]] == ["eager"]
    assert "records no data flow to fuse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["--hw", "h200", "--trace", old, "--launch", "compiled"])
