"""hwconfigs: every shipped file loads with a source per figure; every malformed one names file and field."""

import copy
import re

import pytest
import yaml
from simtraces import hw_dict

from sim.hardware import HWCONFIG_DIR, HwConfigError, load_hwconfig, parse

SHIPPED = sorted(HWCONFIG_DIR.glob("*.yaml"))


def test_the_devices_the_project_promises_are_there():
    names = {p.stem for p in SHIPPED}
    assert {"a100", "h100", "h200", "a5000", "l4", "jetson-orin", "cpu-xeon-8480"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_hwconfigs_load_and_cite_every_figure(path):
    hw = load_hwconfig(path)
    assert hw.peak.matrix_flops_per_s["bfloat16"] > hw.peak.vector_flops_per_s["float32"]
    assert all(source.strip() for source in hw.sources.values())


def test_datasheet_figures():
    a100, h200 = load_hwconfig(HWCONFIG_DIR / "a100.yaml"), load_hwconfig(HWCONFIG_DIR / "h200.yaml")
    assert a100.peak.matrix_flops_per_s["bfloat16"] == 312e12  # dense (624 with sparsity)
    assert a100.peak.dram_bandwidth_bytes_per_s == 2.039e12 and a100.peak.compute_units == 108
    assert h200.peak.dram_bandwidth_bytes_per_s == 4.8e12


def broken(change):
    raw = hw_dict()
    change(raw)
    return raw


CASES = {
    "peak.dram_bandwidth_bytes_per_s": (lambda r: r["peak"].pop("dram_bandwidth_bytes_per_s"), "missing"),
    "peak.hbm_speed": (lambda r: r["peak"].update(hbm_speed=1.0), "unknown field"),
    "peak.clock_hz": (lambda r: r["peak"].update(clock_hz=-1.0), "must lie in [1e+06, 1e+11], got -1.0"),
    "peak.compute_units": (lambda r: r["peak"].update(compute_units=10.5), "expected an integer"),
    "peak.l2_capacity_bytes": (lambda r: r["peak"].update(l2_capacity_bytes="40MB"), "expected a number"),
    "peak.matrix_flops_per_s.int4": (lambda r: r["peak"]["matrix_flops_per_s"].update(int4=1e15), "unknown dtype"),
    "peak.vector_flops_per_s": (lambda r: r["peak"].update(vector_flops_per_s={"bfloat16": 1e12}), "float32"),
    "efficiency.dram": (lambda r: r["efficiency"].update(dram=1.3), "must lie in [1e-06, 1], got 1.3"),
    "host.launch_eager_s": (lambda r: r["host"].update(launch_eager_s=True), "expected a number"),
    "kind": (lambda r: r.update(kind="tpu"), "must be one of"),
    "sources.peak.clock_hz": (lambda r: r["sources"].pop("peak.clock_hz"), "needs a source"),
    "tile": (lambda r: r.pop("tile"), "missing"),
    "colour": (lambda r: r.update(colour="green"), "unknown field"),
}


@pytest.mark.parametrize("field", CASES)
def test_malformed_hwconfigs_name_file_and_field(tmp_path, field):
    change, problem = CASES[field]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(broken(change)))
    with pytest.raises(HwConfigError, match=re.escape(problem)) as err:
        load_hwconfig(path)
    assert err.value.field == field and err.value.path == str(path)
    assert f"hwconfig {path}, field '{field}'" in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(HwConfigError, match=r"no such file .*a100\.yaml"):
        load_hwconfig(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("peak: [1, 2\n")
    with pytest.raises(HwConfigError, match=r"not valid YAML: .* \(line 2\)"):
        load_hwconfig(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(HwConfigError, match="mapping at the top level"):
        load_hwconfig(tmp_path / "list.yaml")


def test_numbers_as_people_write_them(tmp_path):
    raw = hw_dict()
    text = yaml.safe_dump(raw).replace("2000000000000.0", "2e12")  # YAML 1.1 would read 2e12 as a string
    assert "2e12" in text
    (tmp_path / "x.yaml").write_text(text)
    assert load_hwconfig(tmp_path / "x.yaml").peak.dram_bandwidth_bytes_per_s == 2e12


def test_overrides_for_what_if_studies():
    hw = parse(copy.deepcopy(hw_dict()), "x.yaml")
    faster = hw.with_overrides({"peak.dram_bandwidth_bytes_per_s": "4e12", "efficiency.matrix": "0.9"})
    assert faster.peak.dram_bandwidth_bytes_per_s == 4e12 and faster.efficiency.matrix == 0.9
    doubled = hw.with_overrides({"peak.compute_units": "200"})  # more units of the same kind
    assert doubled.peak.matrix_flops_per_s["bfloat16"] == 2 * hw.peak.matrix_flops_per_s["bfloat16"]
    with pytest.raises(HwConfigError, match=r"field 'peak\.warp_speed': no such figure; in peak: peak\.clock_hz"):
        hw.with_overrides({"peak.warp_speed": "9"})
    with pytest.raises(HwConfigError, match=r"field 'efficiency\.l2'"):
        hw.with_overrides({"efficiency.l2": "2"})
