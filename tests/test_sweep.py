"""python -m sim.sweep on a local Ray instance (one for the whole session): rows equal sim.run's point by point,
whatever the number of workers; a resumed sweep equals an uninterrupted one; runs that do not fit are rows; bad
specs and a missing Ray get one clear line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim import run
from sim.sweep import cli
from sim.sweep.journal import JOURNAL, ROWS_CSV, ROWS_JSONL

ray = pytest.importorskip("ray")

SPEC = """
grid:
  hw: [a100, a5000]
  model: [tiny-4x3]
  decoder: [speed, sequential]
  launch: [eager, compiled]
  tokens: [8]
  flip_rate: [0.1]
  set:
    peak.dram_bandwidth_bytes_per_s: [x0.5, x1]
cost: {a100: 1.8, a5000: 0.8}
"""


@pytest.fixture(scope="session")
def local_ray():
    from sim.sweep.runner import start_ray

    start_ray(None, 2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def swept(local_ray, tmp_path_factory):
    """The small spec swept with 1 and with 2 workers."""
    root = tmp_path_factory.mktemp("sweep")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    for workers in (1, 2):
        assert cli.main([str(spec), "--out", str(root / f"w{workers}"), "--workers", str(workers), "--quiet"]) == 0
    return root


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / ROWS_JSONL).read_text().splitlines()]


def test_rows_are_the_same_with_1_and_2_workers_in_spec_order(swept):
    one, two = rows(swept / "w1"), rows(swept / "w2")
    assert (swept / "w1" / ROWS_JSONL).read_bytes() == (swept / "w2" / ROWS_JSONL).read_bytes()
    assert [r["index"] for r in one] == list(range(16)) and len(two) == 16
    assert all(r["status"] == "ok" for r in one)
    assert (swept / "w1" / ROWS_CSV).read_text().splitlines()[0].startswith("index,point.hw,point.model")
    for plot in ("speedup.png", "latency-cost.png"):
        assert (swept / "w1" / plot).read_bytes()[:4] == b"\x89PNG"
    assert all(r["cost_per_million_tokens"] == pytest.approx(
        {"a100": 1.8, "a5000": 0.8}[r["point"]["hw"]] / 3600 * r["s_per_token"] * 1e6) for r in one)
    speed = [r for r in one if r["decoder"] == "speed"]
    assert all(r["speedup_vs_sequential"] > 1 for r in speed)


def test_every_row_is_what_sim_run_projects_for_that_point(swept, tmp_path):
    by_point = {}
    for r in rows(swept / "w2"):
        p = r["point"]
        by_point.setdefault((p["hw"], p["launch"], r["hw_path"].split("=")[-1]), []).append(r)
    for (hw, launch, bandwidth), got in by_point.items():
        out = tmp_path / "run.json"
        assert run.main(["--hw", hw, "--model", "tiny-4x3", "--tokens", "8", "--flips", "0.1,0.1", "--launch", launch,
                         "--set", f"peak.dram_bandwidth_bytes_per_s={bandwidth}", "--json", str(out)]) == 0
        expected = {r["decoder"]: r for r in json.loads(out.read_text())["runs"]}
        for r in got:
            want = expected[r["decoder"]]
            assert {k: r[k] for k in want if k != "trace"} == {k: v for k, v in want.items() if k != "trace"}
            assert Path(want["trace"]).name == r["trace"] or r["decoder"] == "sequential"


def test_a_resumed_sweep_equals_an_uninterrupted_one(swept, tmp_path):
    """A kill leaves whole journal lines and perhaps one cut short: the rerun keeps the first, redoes the rest."""
    lines = (swept / "w1" / JOURNAL).read_bytes().splitlines(keepends=True)
    out = tmp_path / "resumed"
    out.mkdir()
    (out / JOURNAL).write_bytes(b"".join(lines[:6]) + lines[6][:40])
    spec = swept / "spec.yaml"
    assert cli.main([str(spec), "--out", str(out), "--workers", "2", "--quiet", "--no-plots"]) == 0
    assert (out / ROWS_JSONL).read_bytes() == (swept / "w1" / ROWS_JSONL).read_bytes()
    journal = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]
    assert len(journal) == 16 and len({e["key"] for e in journal}) == 16  # nothing done twice
    # a rerun of a finished sweep projects nothing and writes the same rows
    assert cli.main([str(spec), "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert (out / ROWS_JSONL).read_bytes() == (swept / "w1" / ROWS_JSONL).read_bytes()


def test_bench_reports_points_per_second_per_worker_count(swept, capsys):
    assert cli.main([str(swept / "spec.yaml"), "--bench", "1", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 worker: 16 points in" in out and "2 workers: 16 points in" in out and "relative to 1 worker" in out


def test_points_that_do_not_fit_are_rows_saying_so(local_ray, tmp_path, capsys):
    spec = tmp_path / "fit.yaml"
    spec.write_text("points:\n  - {hw: a5000, model: tiny-4x3, tokens: 8, launch: eager, flip_rate: 0.1,\n"
                    "     set: {peak.dram_capacity_bytes: [1.0e+5, 2.4e+10]}}\n")
    assert cli.main([str(spec), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 0
    got = rows(tmp_path / "o")
    assert [r["status"] for r in got] == ["does not fit", "ok"] * 2  # speed, then sequential; 100 kB, 24 GB
    assert "does not fit on NVIDIA RTX A5000" in got[0]["message"] and got[0]["memory"]["total_bytes"] > 1e5
    assert "4 points (2 does not fit, 2 ok)" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("grid: {batch: [0]}", "field 'grid.batch': expected an integer in [1, 65536], got 0"),
    ("grid: {launch: [fast]}", "field 'grid.launch': expected one of eager, graph, compiled"),
    ("grid: {colour: [red]}", "field 'grid.colour': unknown axis"),
    ("grid: {model: [tiny-4x3], share: [5x5]}", "5x5 shares 25 layers, but tiny-4x3 has 12"),
    ("grid: {model: [tiny-4x3], flips: ['0.1']}", "field 'flips': '0.1' gives 1 rates, but tiny-4x3 has G = 3"),
    ("grid: {model: [tiny-4x3], flips: [t5-base-2x6]}", "'t5-base-2x6' gives 5 rates, but tiny-4x3 has G = 3"),
    ("grid: {model: [data/hfconfigs/qwen2-0.5b/config.json], share: [12x2]}",
     "no flip profile for qwen2-0.5b-12x2 (G = 2)"),
    ("grid: {set: {peak.nothing: [x2]}}", "field 'set.peak.nothing': "),
    ("grid: {set: {peak.clock_hz: [fast]}}",
     "field 'grid.set.peak.clock_hz': expected a finite number, or 'x<factor>'"),
    ("grid: {model: [nope.json]}", "model config nope.json: no such file"),
    ("points: []", "field 'points': expected a non-empty list"),
    ("grid: {model: [tiny-4x3], tp: [0]}", "field 'grid.tp': expected an integer in [1, 65536], got 0"),
    ("grid: {model: [tiny-4x3], tp: [3]}",
     "(a100, tiny-4x3, tp 3)': --tp 3: n_heads 4 is not divisible by 3 (tiny-4x3)"),
    ("grid: {model: [llama2-7b], tp: [16]}", "field 'interconnect.devices_per_node': a group of 16 devices"),
    ("grid: {hw: [jetson-orin], model: [tiny-4x3], tp: [2]}", "field 'interconnect': missing"),
    ("grid: {model: [tiny-4x3], tp: [1, 2, 1]}", "field 'grid.tp': 1 given twice"),
    ("points: [{set: {efficiency.dram: [0.5, 0.5]}}]",
     "field 'points[0].set.efficiency.dram': '0.5' given twice"),
    ("grid: {}\npoints: []", "either 'grid'"),
])
def test_bad_specs_are_refused_naming_the_field(tmp_path, capsys, spec, message):
    path = tmp_path / "bad.yaml"
    path.write_text(spec)
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(path), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_without_ray_the_sweep_says_how_to_install_it(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("grid: {model: [tiny-4x3], tokens: [8]}")
    code = ("import sys; sys.modules['ray'] = None; from sim.sweep.cli import main; "
            f"main([{str(spec)!r}, '--out', {str(tmp_path / 'o')!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "error: sim.sweep runs on Ray, which is not installed: pip install 'speed-sim[sweep]' "
        "(from a checkout: pip install -e '.[sweep]')"]
    assert shutil.which("true")  # (the line above is the whole output: no traceback)


def test_a_tp_axis_gives_rows_per_degree_as_sim_run_projects_them(local_ray, tmp_path):
    """The tp axis (sim.sweep.spec): rows carry their degree, SPEED's speedup is over sequential decoding at the
    same degree, and each row is what sim.run --tp projects."""
    spec = tmp_path / "tp.yaml"
    spec.write_text("grid: {hw: [a100], model: [tiny-4x3], tokens: [8], flip_rate: [0.1], launch: [compiled], "
                    "tp: [1, 2]}\n")
    assert cli.main([str(spec), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 0
    got = rows(tmp_path / "o")
    by = {(r["tp"], r["decoder"]): r for r in got}  # the last axis (tp) varies fastest
    assert [(r["point"]["tp"], r["tp"], r["decoder"]) for r in got] == [
        (1, 1, "speed"), (2, 2, "speed"), (1, 1, "sequential"), (2, 2, "sequential")]
    assert by[1, "speed"]["comm_s"] == 0 < by[2, "speed"]["comm_s"]
    for tp in (1, 2):
        assert by[tp, "speed"]["speedup_vs_sequential"] == (by[tp, "sequential"]["s_per_token"]
                                                            / by[tp, "speed"]["s_per_token"])
    out = tmp_path / "run.json"
    assert run.main(["--hw", "a100", "--model", "tiny-4x3", "--tokens", "8", "--flips", "0.1,0.1", "--launch",
                     "compiled", "--tp", "1", "2", "--json", str(out)]) == 0
    expected = json.loads(out.read_text())["runs"]  # degree by degree
    assert [(r["tp"], r["decoder"]) for r in expected] == [(1, "speed"), (1, "sequential"), (2, "speed"),
                                                           (2, "sequential")]
    for want in expected:
        row = by[want["tp"], want["decoder"]]
        assert {k: row[k] for k in ("s_per_token", "total_s", "comm_s", "memory", "bound")} == {
            k: want[k] for k in ("s_per_token", "total_s", "comm_s", "memory", "bound")}


def test_a_quant_axis_gives_rows_per_scheme_as_sim_run_projects_them(local_ray, tmp_path):
    """The quant axis: rows carry their weight scheme (null: float weights), SPEED's speedup is over sequential
    decoding with the same weights, and each row is what sim.run --quant projects."""
    spec = tmp_path / "quant.yaml"
    spec.write_text("grid: {hw: [a100], model: [tiny-4x3], tokens: [6], flip_rate: [0.1], launch: [eager], "
                    "quant: [null, int4-g32]}\n")
    assert cli.main([str(spec), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 0
    got = rows(tmp_path / "o")
    by = {(r["point"]["quant"], r["decoder"]): r for r in got}
    assert sorted((r["point"]["quant"] or "", r["quant"] or "") for r in got) == [
        ("", ""), ("", ""), ("int4-g32", "int4-g32"), ("int4-g32", "int4-g32")]
    for quant in (None, "int4-g32"):
        assert by[quant, "speed"]["speedup_vs_sequential"] == (by[quant, "sequential"]["s_per_token"]
                                                               / by[quant, "speed"]["s_per_token"])
    out = tmp_path / "run.json"
    assert run.main(["--hw", "a100", "--model", "tiny-4x3", "--tokens", "6", "--flips", "0.1,0.1", "--launch",
                     "eager", "--quant", "none", "int4-g32", "--json", str(out)]) == 0
    for want in json.loads(out.read_text())["runs"]:
        row = by[want["quant"], want["decoder"]]
        assert {k: row[k] for k in ("s_per_token", "total_s", "memory", "bound")} == {
            k: want[k] for k in ("s_per_token", "total_s", "memory", "bound")}


def test_a_quant_axis_value_no_scheme_names_is_refused(tmp_path):
    from sim.sweep.spec import SpecError, load_spec

    spec = tmp_path / "bad.yaml"
    spec.write_text("grid: {model: [tiny-4x3], quant: [int8, int4-g256]}\n")
    with pytest.raises(SpecError, match=r"field 'grid\.quant': expected one of int8, int4-g32, int4-g64, int4-g128, "
                       r"or null \(float weights\), got 'int4-g256'"):
        load_spec(spec)
