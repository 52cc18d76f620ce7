"""The interconnect model (sim.interconnect): NCCL's choice of algorithm and protocol by size, its latency floor,
monotone in bytes, ranks and bandwidth; the hwconfig section's checks; the Link resource; the gloo microbenchmark,
its calibration round trip and its row in sim.fitting.validate."""

import dataclasses
import json
import math
import re

import pytest
import simpy
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from simtraces import hw_dict

from sim.fitting import calibrate, collectives, public_allreduce, validate
from sim.hardware import HWCONFIG_DIR, HwConfigError, load_hwconfig, parse
from sim.interconnect import (
    CollectiveCost,
    InterconnectError,
    Link,
    bus_bandwidths,
    candidates,
    channel_buses,
    collective_time,
    gloo_segments,
    nccl_table,
    ring_channels,
)

HW = {name: load_hwconfig(HWCONFIG_DIR / f"{name}.yaml") for name in ("a100", "h100", "a5000", "a5000-nvlink", "l4")}
KIB, MIB = 1 << 10, 1 << 20


def ic_raw(**fields) -> dict:
    """A hwconfig mapping with an interconnect section (NVSwitch, 8 GPUs, A100-like) updated by `fields` (None:
    leave the field out), every figure with a source."""
    raw = hw_dict()
    section = {"kind": "nvswitch", "devices_per_node": 8, "link_bandwidth_bytes_per_s": 3e11,
               "collective_latency_s": 0.0, "efficiency": 0.8, "compute_capability": 80, "nvls": False}
    section.update(fields)
    raw["interconnect"] = {k: v for k, v in section.items() if v is not None}
    raw["sources"].update({f"interconnect.{k}": "test" for k in raw["interconnect"]})
    return raw


def loopback_raw(**fields) -> dict:
    fields = {"kind": "loopback", "devices_per_node": 4, "link_bandwidth_bytes_per_s": 2e9,
              "collective_latency_s": 3e-5, "efficiency": 1.0, "compute_capability": None, "nvls": None,
              "step_latency_s": 1.2e-5} | fields
    raw = ic_raw(**fields)
    raw["kind"] = "cpu"
    return raw


def choice(hw, nbytes: int, n: int) -> tuple[str, str]:
    cost = collective_time("all_reduce", nbytes, n, "bfloat16", hw)
    return cost.algorithm, cost.protocol


def test_nccl_picks_ll_for_decoding_sizes_and_simple_or_nvls_for_large_ones():
    a100, h100 = HW["a100"], HW["h100"]
    for n in (2, 4, 8):
        assert choice(a100, 8 * KIB, n) == ("ring", "LL") and choice(h100, 64 * KIB, n) == ("ring", "LL")
    assert choice(a100, 16 * MIB, 8) == ("ring", "LL128")  # NVLink: LL128 between LL and Simple
    assert choice(a100, 256 * MIB, 8) == ("ring", "Simple")
    assert choice(h100, 4 * MIB, 8) == ("nvls", "Simple")  # NVLink SHARP from ~2 MiB on 8 H100
    assert choice(h100, 1 * MIB, 8) == ("ring", "LL")
    assert choice(HW["a5000"], 4 * MIB, 4) == ("ring", "Simple")
    on_a100 = {(c.algorithm, c.protocol) for c in candidates("all_reduce", 8 * KIB, 8, a100.interconnect)}
    assert ("tree", "LL") in on_a100 and not any(a == "nvls" for a, _ in on_a100)  # NVLS: sm90 only
    on_pcie = {c.protocol for c in candidates("all_reduce", 8 * KIB, 4, HW["l4"].interconnect)}
    assert on_pcie == {"LL", "Simple"}  # LL128 only over NVLink
    gathers = {c.algorithm for c in candidates("all_gather", 8 * 64, 8, h100.interconnect)}
    assert gathers == {"ring", "nvls"}  # no tree for an all-gather


def test_nccl_latency_floor_at_batch_1_sizes():
    """NCCL 2.30.7: Ring/LL = baseLat 6.6 us + 2(n-1) steps x 0.6 us (NVLink) or 1.0 us (PCIe)."""
    eight = collective_time("all_reduce", 8 * KIB, 8, "bfloat16", HW["a100"])
    assert eight.latency_s == pytest.approx((6.6 + 14 * 0.6) * 1e-6) and eight.bound == "latency"
    assert collective_time("all_reduce", 8, 4, "float32", HW["a5000"]).time_s == pytest.approx((6.6 + 6 * 1.0) * 1e-6,
                                                                                               rel=1e-3)
    pair = collective_time("all_reduce", 8 * KIB, 2, "bfloat16", HW["a5000-nvlink"])
    assert pair.latency_s == pytest.approx((6.6 + 2 * 0.6) * 1e-6)


def test_channels_and_bus_bandwidths_as_nccls_graph_search_finds_them():
    assert ring_channels(240.0, 80) == (12, 20.0)  # A100: 6 x 40 GB/s, doubled at half the speed
    assert ring_channels(370.8, 90) == (12, 30.0)  # H100: 6 x 60 of 370.8, doubled
    assert ring_channels(24.0, 86) == (2, 12.0)  # PCIe Gen4 x16 (NCCL: 24 GB/s)
    assert ring_channels(48.0, 86) == (2, 20.0)  # an A5000 bridge (4 x 12 GB/s): 1 x 40, doubled
    nvls = dict(((a, p), bw) for a, p, _, bw in nccl_table("all_reduce", 8, HW["h100"].interconnect))
    assert nvls["nvls", "Simple"] * 14 / 8 == pytest.approx(476, rel=0.01)  # NVLink SHARP bus bandwidth (GTC: 480)


@pytest.mark.parametrize("name", sorted(HW))
def test_the_monotone_envelope_is_the_search_itself_on_shipped_devices(name):
    ic = HW[name].interconnect
    usable = ic.link_bandwidth_bytes_per_s * ic.efficiency / 1e9
    arch = 2 if ic.compute_capability >= 90 else 1
    assert bus_bandwidths(usable, ic.compute_capability) == channel_buses(*ring_channels(usable, ic.compute_capability),
                                                                          arch)


def test_one_rank_or_no_bytes_cost_nothing():
    for hw in (HW["a100"], load_hwconfig(HWCONFIG_DIR / "cpu-xeon-8480.yaml")):  # no section: one device is fine
        cost = collective_time("all_reduce", 64 * KIB, 1, "bfloat16", hw)
        assert cost.time_s == 0 and cost.algorithm == "none"
    assert collective_time("all_gather", 0, 8, "float64", HW["h100"]).time_s == 0


SIZES = st.integers(0, 1 << 31).map(lambda b: b - b % 16)


@settings(max_examples=150)
@given(name=st.sampled_from(sorted(HW)), n=st.integers(2, 8), small=SIZES, large=SIZES,
       kind=st.sampled_from(["all_reduce", "all_gather", "reduce_scatter", "broadcast"]))
def test_more_bytes_never_take_less_time(name, n, small, large, kind):
    hw = HW[name]
    n = min(n, hw.interconnect.devices_per_node)
    small, large = sorted((small - small % (16 * n), large - large % (16 * n)))
    assert (collective_time(kind, small, n, "bfloat16", hw).time_s
            <= collective_time(kind, large, n, "bfloat16", hw).time_s)


@settings(max_examples=100)
@given(name=st.sampled_from(sorted(HW)), nbytes=SIZES)
def test_more_ranks_never_take_less_time_without_nvls(name, nbytes):
    hw = HW[name]
    hw = dataclasses.replace(hw, interconnect=dataclasses.replace(hw.interconnect, nvls=False))
    times = [collective_time("all_reduce", nbytes, n, "bfloat16", hw).time_s
             for n in range(1, hw.interconnect.devices_per_node + 1)]
    assert times == sorted(times)


def test_with_nvls_eight_h100_can_beat_four_at_large_sizes():
    """Where monotone in ranks stops holding: NVLS (8 GPUs) reduces in the switch, faster than a 4-GPU ring."""
    h100 = HW["h100"]
    assert collective_time("all_reduce", 64 * MIB, 8, "bfloat16", h100).time_s < \
        collective_time("all_reduce", 64 * MIB, 4, "bfloat16", h100).time_s


@settings(max_examples=100)
@given(name=st.sampled_from(sorted(HW)), n=st.integers(2, 8), nbytes=SIZES, low=st.floats(1e8, 1e13),
       high=st.floats(1e8, 1e13), latency=st.floats(0, 1e-4))
def test_more_link_bandwidth_or_less_latency_is_never_slower(name, n, nbytes, low, high, latency):
    hw = HW[name]
    n = min(n, hw.interconnect.devices_per_node)

    def time(bandwidth: float, fixed: float) -> float:
        ic = dataclasses.replace(hw.interconnect, link_bandwidth_bytes_per_s=bandwidth, collective_latency_s=fixed)
        return collective_time("all_reduce", nbytes, n, "bfloat16", dataclasses.replace(hw, interconnect=ic)).time_s

    low, high = sorted((low, high))
    assert time(high, 0.0) <= time(low, 0.0) <= time(low, latency)


def test_groups_beyond_what_the_interconnect_joins_are_refused_naming_the_field():
    with pytest.raises(InterconnectError, match=r"hwconfigs/a100\.yaml, field 'interconnect\.devices_per_node': a "
                       r"group of 16 devices spans more than one node of 8") as err:
        collective_time("all_reduce", 8 * KIB, 16, "bfloat16", HW["a100"])
    assert err.value.field == "interconnect.devices_per_node"
    with pytest.raises(InterconnectError, match=r"field 'interconnect': missing: a group of 2 devices"):
        collective_time("all_reduce", 8 * KIB, 2, "bfloat16", load_hwconfig(HWCONFIG_DIR / "jetson-orin.yaml"))
    with pytest.raises(InterconnectError, match=re.escape("'interconnect.kind': loopback (gloo) models all_reduce")):
        collective_time("reduce_scatter", 64, 2, "float32", parse(loopback_raw(), "loop.yaml"))


@pytest.mark.parametrize("request_, problem", [
    (("all_to_all", 64, 2, "float32"), "collective kind 'all_to_all'"),
    (("all_reduce", 64, 0, "float32"), "world_size 0: expected an integer >= 1"),
    (("all_reduce", 64, True, "float32"), "world_size True"),
    (("all_reduce", 64, 2.0, "float32"), "world_size 2.0"),
    (("all_reduce", -4, 2, "float32"), "bytes -4: expected an integer >= 0"),
    (("all_reduce", 6, 2, "float32"), "bytes 6: not a whole number of float32 elements"),
    (("all_gather", 12, 2, "float32"), "for each of 2 ranks"),
    (("all_reduce", 64, 2, "int4"), "dtype 'int4'"),
])
def test_malformed_collectives_are_refused_in_one_line(request_, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        collective_time(*request_, HW["a100"])


SECTION_CASES = {
    "interconnect.kind": (dict(kind="infiniband"), "must be one of nvswitch, nvlink, pcie, loopback"),
    "interconnect.devices_per_node": (dict(devices_per_node=0), "must lie in [1, 65536], got 0"),
    "interconnect.link_bandwidth_bytes_per_s": (dict(link_bandwidth_bytes_per_s=-1.0), "must lie in [1e+06, 1e+17]"),
    "interconnect.efficiency": (dict(efficiency=0.0), "must lie in [1e-06, 1], got 0.0"),
    "interconnect.collective_latency_s": (dict(collective_latency_s=float("nan")), "expected a finite number"),
    "interconnect.compute_capability": (dict(compute_capability=None), "missing: kind nvswitch needs it"),
    "interconnect.step_latency_s": (dict(step_latency_s=1e-6), "only for kind loopback, not nvswitch"),
    "interconnect.nvls": (dict(nvls=True), "NVLS needs kind nvswitch and compute_capability >= 90"),
    "interconnect.hops": (dict(hops=3), "unknown field; allowed: kind, devices_per_node"),
}


@pytest.mark.parametrize("field", SECTION_CASES)
def test_malformed_interconnect_sections_name_file_and_field(tmp_path, field):
    change, problem = SECTION_CASES[field]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(ic_raw(**change)))
    with pytest.raises(HwConfigError, match=re.escape(problem)) as err:
        load_hwconfig(path)
    assert err.value.field == field and f"hwconfig {path}, field '{field}'" in str(err.value)


def test_section_level_refusals():
    with pytest.raises(HwConfigError, match=re.escape("'interconnect.step_latency_s': missing: kind loopback needs")):
        parse(loopback_raw(step_latency_s=None), "x.yaml")
    with pytest.raises(HwConfigError, match=re.escape("field 'interconnect.nvls': expected true or false, got 1")):
        parse(ic_raw(nvls=1, compute_capability=90), "x.yaml")
    raw = ic_raw()
    del raw["sources"]["interconnect.efficiency"]
    with pytest.raises(HwConfigError, match=re.escape("'sources.interconnect.efficiency': missing: every")):
        parse(raw, "x.yaml")
    with pytest.raises(HwConfigError, match=re.escape("field 'interconnect': expected a mapping")):
        parse(dict(hw_dict(), interconnect=[1, 2]), "x.yaml")


NUMERIC = {"devices_per_node": ((1, 1 << 16), True), "link_bandwidth_bytes_per_s": ((1e6, 1e17), False),
           "collective_latency_s": ((0.0, 1.0), False), "efficiency": ((1e-6, 1.0), False),
           "compute_capability": ((60, 199), True)}


@settings(max_examples=120)
@given(field=st.sampled_from(sorted(NUMERIC)), value=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                                               st.integers(-10**20, 10**20)))
def test_every_interconnect_figure_is_held_to_its_range(field, value):
    (low, high), integer = NUMERIC[field]
    fits = (isinstance(value, int) or not integer) and math.isfinite(value) and low <= value <= high
    if fits:
        assert getattr(parse(ic_raw(**{field: value}), "x.yaml").interconnect, field) == pytest.approx(value)
    else:
        with pytest.raises(HwConfigError, match=f"field 'interconnect.{field}'"):
            parse(ic_raw(**{field: value}), "x.yaml")


def test_set_overrides_reach_the_interconnect():
    a100 = HW["a100"]
    faster = a100.with_overrides({"interconnect.link_bandwidth_bytes_per_s": "6e11",
                                  "interconnect.collective_latency_s": "2e-6"})
    assert faster.interconnect.link_bandwidth_bytes_per_s == 6e11
    assert (collective_time("all_reduce", 64 * MIB, 8, "bfloat16", faster).time_s
            < collective_time("all_reduce", 64 * MIB, 8, "bfloat16", a100).time_s)
    with pytest.raises(HwConfigError, match=r"with --set interconnect\.link_bandwidth_bytes_per_s=0, field "
                       r"'interconnect\.link_bandwidth_bytes_per_s': must lie in"):
        a100.with_overrides({"interconnect.link_bandwidth_bytes_per_s": "0"})
    with pytest.raises(HwConfigError, match=re.escape("field 'interconnect.nvls': NVLS needs")):
        a100.with_overrides({"interconnect.nvls": "true"})
    off = HW["h100"].with_overrides({"interconnect.nvls": "false"})
    assert choice(off, 64 * MIB, 8)[0] == "ring"
    with pytest.raises(HwConfigError, match=re.escape("field 'interconnect.hops': no such figure; in interconnect")):
        a100.with_overrides({"interconnect.hops": "2"})


def test_the_sim_command_line_names_a_bad_interconnect_figure(capsys):
    from sim import run

    with pytest.raises(SystemExit) as exit_:
        run.main(["--hw", "a100", "--set", "interconnect.efficiency=.nan"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "field 'interconnect.efficiency': expected a finite number, got nan" in err


def cost(seconds: float) -> CollectiveCost:
    return CollectiveCost("all_reduce", 8192, 2, "ring", "LL", seconds, 0.0)


def test_collectives_of_one_rank_serialize_on_its_link_and_compute_waits_for_them():
    env = simpy.Environment()
    link, done = Link(env), []

    def rank_stream(name: str, start: float, seconds: float):
        yield env.timeout(start)  # compute before the collective
        yield env.process(link.run(cost(seconds)))
        done.append((name, env.now))

    env.process(rank_stream("a", 1.0, 3.0))
    env.process(rank_stream("b", 2.0, 2.0))  # asks while a holds the link
    env.run()
    assert done == [("a", 4.0), ("b", 6.0)]
    assert [(start, end) for start, end, _ in link.log] == [(1.0, 4.0), (4.0, 6.0)]
    in_cycles = Link(simpy.Environment(), clock_hz=1e9)
    assert in_cycles.duration(cost(2.5e-9)) == 3  # whole cycles, a partial one costs one


def test_gloo_segments_and_model():
    assert gloo_segments(8 * KIB, 2) == 4 and gloo_segments(4 * MIB, 2) == 4  # at least 2 per rank
    assert gloo_segments(5 * MIB, 4) == 8 and gloo_segments(9 * MIB, 4) == 12  # <= 1 MiB each, a multiple of 4
    hw = parse(loopback_raw(), "loop.yaml")
    small = collective_time("all_reduce", 8 * KIB, 4, "float32", hw)
    sent = 2 * 3 / 4 * 8 * KIB
    assert small.algorithm == "gloo-ring"
    assert small.time_s == pytest.approx(3e-5 + 2 * (8 - 2) * 1.2e-5 + sent / 2e9)


def synthetic_rows(hw, dtype: str, world_sizes: tuple[int, ...]) -> list[dict]:
    sizes = (KIB, 4 * KIB, 8 * KIB, 16 * KIB, 32 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB, 16 * MIB)
    return [{"world_size": n, "bytes": b, "dtype": dtype,
             "seconds": collective_time("all_reduce", b, n, dtype, hw).time_s} for n in world_sizes for b in sizes]


def test_calibration_recovers_the_interconnect_that_made_the_measurements():
    truth = HW["a100"].with_overrides({"interconnect.efficiency": "0.6", "interconnect.collective_latency_s": "5e-6"})
    rows = collectives.all_reduce_rows({"all_reduce": synthetic_rows(truth, "bfloat16", (2, 4, 8))})
    section, sources, report = collectives.calibrate_interconnect(HW["a100"], rows, "synthetic.json")
    assert section["collective_latency_s"] == pytest.approx(5e-6, rel=0.02)
    assert section["efficiency"] == pytest.approx(0.6, rel=0.05)  # NCCL's channel search: a step function
    assert report["median_abs_pct"]["held_out"] < 1 and report["rows"]["held_out"] > 0
    assert "held out" in sources["interconnect.efficiency"]
    loop = parse(loopback_raw(), "loop.yaml")
    rows = collectives.all_reduce_rows({"all_reduce": synthetic_rows(loop, "float32", (2, 3, 4))})
    start = parse(loopback_raw(link_bandwidth_bytes_per_s=1e9, collective_latency_s=0.0, step_latency_s=0.0), "s.yaml")
    section, _, report = collectives.calibrate_interconnect(start, rows, "synthetic.json")
    assert section["link_bandwidth_bytes_per_s"] == pytest.approx(2e9, rel=1e-6)
    assert section["collective_latency_s"] == pytest.approx(3e-5, rel=1e-6)
    assert section["step_latency_s"] == pytest.approx(1.2e-5, rel=1e-6)


def test_one_world_size_puts_the_latency_per_message_and_larger_groups_are_left_out(capsys):
    """Two ranks on a 2-core host: every buffer up to 4 MiB is 4 messages, so the per-collective and per-message
    latencies are one figure, taken per message; the rows of 4 ranks (more than the cores) are not fitted."""
    truth = parse(loopback_raw(devices_per_node=2), "loop.yaml")
    rows = [r for r in synthetic_rows(truth, "float32", (2,)) if r["bytes"] <= 4 * MIB]
    rows.append({"world_size": 4, "bytes": 8 * KIB, "dtype": "float32", "seconds": 1e-2})
    start = parse(loopback_raw(devices_per_node=2, collective_latency_s=0.0, step_latency_s=0.0), "s.yaml")
    section, _, report = collectives.calibrate_interconnect(start, collectives.all_reduce_rows({"all_reduce": rows}),
                                                            "x.json")
    assert report["rows"]["beyond_the_node"] == 1 and section["collective_latency_s"] == 0
    assert section["step_latency_s"] == pytest.approx((3e-5 + 4 * 1.2e-5) / 4, rel=1e-3)
    assert collectives.beyond_the_node(collectives.all_reduce_rows({"all_reduce": rows}), start)[1][0].world_size == 4


def test_calibrate_fits_the_section_from_an_all_reduce_only_microbenchmark(tmp_path, capsys):
    truth = HW["h100"].with_overrides({"interconnect.efficiency": "0.7", "interconnect.collective_latency_s": "4e-6"})
    mb = tmp_path / "h100.allreduce.json"
    mb.write_text(json.dumps({"device": "cuda", "all_reduce": synthetic_rows(truth, "bfloat16", (2, 4, 8))}))
    out = tmp_path / "h100-cal.yaml"
    assert calibrate.main(["--device", "cuda", "--base", "hwconfigs/h100.yaml", "--microbench", str(mb),
                           "--out", str(out)]) == 0
    fitted = load_hwconfig(out)
    assert fitted.interconnect.collective_latency_s == pytest.approx(4e-6, rel=0.05)
    assert fitted.peak == HW["h100"].peak  # nothing else measured, nothing else changed
    assert "interconnect fitted to" in capsys.readouterr().out
    assert validate.main(["--hw", str(out), "--microbench", str(mb)]) == 0
    table = capsys.readouterr().out
    assert all(row in table for row in ("all_reduce ", "all_reduce x2", "all_reduce x8"))


def test_validate_refuses_bad_all_reduce_rows_in_one_line(tmp_path, capsys):
    good = {"world_size": 2, "bytes": 8192, "dtype": "float32", "seconds": 1e-4}
    cases = {"all_reduce[0].seconds": dict(good, seconds=-1.0), "all_reduce[0].world_size": dict(good, world_size=1),
             "all_reduce[0].dtype": dict(good, dtype="int3"), "all_reduce[0].bytes": dict(good, bytes="8K"),
             "all_reduce[0]: collective bytes 6": dict(good, bytes=6)}
    for where, row in cases.items():
        path = tmp_path / "mb.json"
        path.write_text(json.dumps({"all_reduce": [row]}))
        with pytest.raises(SystemExit):
            validate.main(["--hw", "hwconfigs/a100.yaml", "--microbench", str(path)])
        assert where in capsys.readouterr().err
    path.write_text(json.dumps({"all_reduce": [good]}))
    with pytest.raises(SystemExit):
        validate.main(["--hw", "hwconfigs/jetson-orin.yaml", "--microbench", str(path)])
    assert "field 'interconnect': missing" in capsys.readouterr().err
    path.write_text("{}")
    with pytest.raises(SystemExit):
        validate.main(["--hw", "hwconfigs/a100.yaml", "--microbench", str(path)])
    assert "no results: neither the resource benchmarks" in capsys.readouterr().err


def test_the_independent_check_against_public_measurements_runs_offline(capsys):
    assert public_allreduce.main([]) == 0
    out = capsys.readouterr().out
    assert "Vidur a100_dgx" in out and "Vidur h100_dgx" in out and "x8 vs median <=64K" in out
    assert "4x RTX A5000 PCIe" in out
    rows = public_allreduce.vidur_rows(public_allreduce.VIDUR["h100"])
    assert {r["world_size"] for r in rows} == {2, 4, 8} and min(r["bytes"] for r in rows) == 2048


def test_the_table_command(capsys):
    assert collectives.main(["--hw", "a100", "a5000-nvlink", "--world-size", "2", "8", "--bytes", "8192"]) == 0
    out = capsys.readouterr().out
    assert "ring/LL" in out and "refused (interconnect.devices_per_node)" in out


def test_gloo_microbenchmark_smoke(tmp_path, capsys):
    """The all-reduce sweep through its command line: two gloo ranks on 127.0.0.1, the quick sizes, rows in the
    format validate and calibrate read."""
    from reference.capture import microbench

    out = tmp_path / "ar.json"
    assert microbench.main(["--device", "cpu", "--quick", "--only", "all_reduce", "--world-sizes", "2",
                            "--out", str(out)]) == 0
    assert "all-reduce x2: 256 B" in capsys.readouterr().out
    mb = json.loads(out.read_text())
    assert "copy" not in mb and mb["all_reduce_setup"]["backend"] == "gloo"
    assert "last rank's arrival" in mb["all_reduce_setup"]["clock"]
    rows = mb["all_reduce"]
    # from the tiny presets' decode sizes (a row of d_model 64 in float32) to 1 MiB
    assert [(r["world_size"], r["bytes"], r["dtype"]) for r in rows] == [
        (2, n, "float32") for n in (256, KIB, 4 * KIB, 64 * KIB, MIB)]
    # seconds: the median over every call; min and max: the least and largest median of a trial
    assert all(0 < r["seconds_min"] <= r["seconds"] <= r["seconds_max"] < 10 for r in rows)
    assert len(collectives.all_reduce_rows(mb)) == 5
