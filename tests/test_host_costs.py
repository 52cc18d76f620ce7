"""The host's eager cost per op kind (hwconfig `host.eager_op_s`, `host.eager_stage_s`): parsed and refused by
field, used by the engine per kernel, fitted by calibration."""

import random
import re
from pathlib import Path

import pytest
import yaml
from simtraces import header, hw_dict, op

from sim.engine import project
from sim.fitting import calibrate
from sim.hardware import HwConfigError, load_hwconfig, parse, to_dict
from sim.trace import StageRecord, Trace

TABLE = {"aten.mul.Tensor": 3e-5, "aten.copy_.default": 8e-5}


def with_host(**host: object) -> dict:
    raw = hw_dict()
    raw["host"].update(host)
    raw["sources"].update({f"host.{k}": "test" for k in host})
    return raw


def test_the_table_parses_and_kinds_absent_take_launch_eager_s():
    hw = parse(with_host(eager_op_s=TABLE, eager_stage_s=5e-4), "x.yaml")
    assert hw.host.eager_op_s == TABLE and hw.host.eager_stage_s == 5e-4
    assert hw.host.eager_launch_s("elementwise", "aten.mul.Tensor") == 3e-5
    assert hw.host.eager_launch_s("elementwise", "aten.add.Tensor") == hw.host.launch_eager_s == 1e-5
    # a collective keeps launch_eager_s whatever the table says of its op kind
    table = {"_c10d_functional.all_reduce.default": 1e-3}
    hw = parse(with_host(eager_op_s=table), "x.yaml")
    assert hw.host.eager_launch_s("collective", "_c10d_functional.all_reduce.default") == 1e-5
    # unset, the fields stay out of the mapping written back (old hwconfigs round-trip unchanged)
    plain = parse(hw_dict(), "x.yaml")
    assert plain.host.eager_op_s == {} and plain.host.eager_stage_s == 0.0
    assert set(to_dict(plain)["host"]) == {"launch_eager_s", "launch_graph_s", "graph_kernel_gap_s", "kernel_min_s"}
    assert parse(to_dict(hw), "again.yaml").host == hw.host
    assert plain.with_overrides({"host.eager_stage_s": "2e-4"}).host.eager_stage_s == 2e-4


BAD = {
    "host.eager_op_s": ({"eager_op_s": [1e-5]}, "expected a mapping of op kind"),
    "host.eager_op_s.aten.mul.Tensor": ({"eager_op_s": {"aten.mul.Tensor": -1e-5}}, "must lie in [0, 1]"),
    "host.eager_op_s.aten.add.Tensor": ({"eager_op_s": {"aten.add.Tensor": "fast"}}, "expected a number"),
    "host.eager_stage_s": ({"eager_stage_s": 2.0}, "must lie in [0, 1], got 2.0"),
}


@pytest.mark.parametrize("field", BAD)
def test_malformed_tables_name_file_and_field(tmp_path, field):
    host, problem = BAD[field]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_host(**host)))
    with pytest.raises(HwConfigError, match=re.escape(problem)) as err:
        load_hwconfig(path)
    assert err.value.field == field and f"hwconfig {path}, field '{field}'" in str(err.value)


def test_the_table_needs_a_source(tmp_path):
    raw = with_host(eager_op_s=TABLE)
    del raw["sources"]["host.eager_op_s"]
    with pytest.raises(HwConfigError, match="needs a source") as err:
        parse(raw, "x.yaml")
    assert err.value.field == "sources.host.eager_op_s"
    raw["sources"] |= {f"host.eager_op_s.{k}": "test" for k in TABLE}  # or one per op kind
    assert parse(raw, "x.yaml").host.eager_op_s == TABLE


def mixed_trace(counts: list[dict[str, int]]) -> Trace:
    """One decode stage per entry: that many tiny ops of each kind (host-bound on any hwconfig here)."""
    ops, i = [], 0
    for s, kinds in enumerate(counts):
        for name, n in kinds.items():
            for _ in range(n):
                ops.append(op(i, s, name, "blocks.0.ffn", flops=64, act=256))
                i += 1
    stages = [StageRecord(s, "decode", [[0, s, 1]], [[0, s + 1, 7]], []) for s in range(len(counts))]
    return Trace(header({}), ops, stages)


def test_the_engine_charges_each_kernel_its_kinds_cost():
    counts = [{"aten.mul.Tensor": 3, "aten.copy_.default": 2, "aten.add.Tensor": 4}]
    trace = mixed_trace(counts)
    plain = parse(hw_dict(), "x.yaml")
    table = parse(with_host(eager_op_s=TABLE, eager_stage_s=5e-4), "x.yaml")
    base, per_kind = project(trace, plain), project(trace, table)
    extra_s = 3 * (3e-5 - 1e-5) + 2 * (8e-5 - 1e-5) + 5e-4  # the add keeps launch_eager_s
    assert (per_kind.total_cycles - base.total_cycles) / plain.peak.clock_hz == pytest.approx(extra_s, rel=1e-3)
    issues = [c / plain.peak.clock_hz for c in per_kind.issue_cycles]
    assert issues[0] == pytest.approx(5e-4 + 3e-5, rel=1e-3)  # the stage's own work, then the first kernel's
    for launch in ("graph", "compiled"):  # one launch per stage: the table is eager's alone
        assert project(trace, table, launch).total_cycles == project(trace, plain, launch).total_cycles
    assert project(trace, parse(with_host(eager_op_s={}), "x.yaml")).stage_timelines == base.stage_timelines


TRUTH = {"aten.mul.Tensor": 1.2e-5, "aten.copy_.default": 6e-5, "aten.add.Tensor": 2.5e-5}


def measured_mixed(truth, counts: list[dict[str, int]]) -> Trace:
    """A measured trace of `counts` whose kernel and stage times are `truth`'s projection of it."""
    trace = mixed_trace(counts)
    p = project(trace, truth)
    for o, start, end in zip(trace.ops, p.start_cycles, p.end_cycles):
        o.duration_s = (end - start) / p.clock_hz
    for stage, cycles in zip(trace.stages, p.stage_cycles):
        stage.wall_s = cycles / p.clock_hz
    trace.header.measured = True
    return trace


def random_mixes(n: int) -> list[dict[str, int]]:
    rng = random.Random(7)
    return [{name: rng.randint(2, 12) for name in TRUTH} for _ in range(n)]


def test_calibration_recovers_the_costs_that_made_the_stage_times():
    truth = parse(with_host(eager_op_s=TRUTH, eager_stage_s=4e-4, launch_eager_s=2e-5), "truth.yaml")
    counts = random_mixes(64)
    samples = calibrate.host_samples([measured_mixed(truth, counts)], parse(hw_dict(), "start.yaml"))
    assert [s.kernels for s in samples] == counts
    table, _, stage_s = calibrate.fit_host(samples, shrink=0.0)
    assert table == pytest.approx(TRUTH, rel=0.01)
    assert stage_s == pytest.approx(4e-4, rel=0.02)  # the last kernel's time after the last launch: not host time
    # the pull toward a common cost (a prior for kinds the stages cannot tell apart) bends what the stages tell
    # a little, and keeps their order
    table, default_s, _ = calibrate.fit_host(samples)
    assert table == pytest.approx(TRUTH, rel=0.25)
    assert sorted(table, key=table.get) == sorted(TRUTH, key=TRUTH.get)
    assert min(table.values()) < default_s < max(table.values())  # no other kind: the default sits among them


def test_calibrate_fits_the_host_to_its_own_traces_and_the_result_loads():
    truth = parse(with_host(eager_op_s=TRUTH, eager_stage_s=4e-4), "truth.yaml")
    start = parse(hw_dict(), "start.yaml")
    raw, report = calibrate.calibrate(start, {}, [], "none.json", host_traces=[measured_mixed(truth, random_mixes(32))])
    fitted = parse(raw, "fitted.yaml")
    assert fitted.host.eager_op_s == pytest.approx(TRUTH, rel=0.25)
    assert report["eager_op_s"] == raw["host"]["eager_op_s"]
    assert fitted.host.eager_stage_s == pytest.approx(4e-4, rel=0.25)
    assert fitted.sources["host.eager_op_s"].startswith("fitted: stage wall times of synthetic/sequential")


def test_host_measured_must_be_measured(tmp_path, capsys):
    unmeasured = Path("data/traces/t5-base-4.sequential.bf16.b1.t128.jsonl.gz")  # a default trace: no durations
    with pytest.raises(SystemExit) as err:
        calibrate.main(["--device", "cuda", "--base", "hwconfigs/h200.yaml", "--out", str(tmp_path / "o.yaml"),
                        "--host-measured", str(unmeasured)])
    assert err.value.code == 2
    assert f"--host-measured {unmeasured}: not a measured eager trace" in capsys.readouterr().err
