"""Validation of quantized decoding on the cpu: measured quantized decodes (reference.capture.measure --quant), the
quantized-product microbenchmarks and the fit of the hwconfig's dequant section to them (sim.fitting.dequant)."""

import dataclasses

import pytest
import torch

from reference.capture import measure
from sim.fitting.dequant import fit_dequant, quant_op
from sim.fitting.microbench import MicrobenchError, check_microbench
from sim.hardware import Dequant, load_hwconfig
from sim.kernels import kernel_cost, kernel_of
from sim.trace import one_op_trace, read_trace

XEON = "hwconfigs/cpu-xeon-8480.yaml"


def test_quantized_measurement_writes_the_quantized_products_and_validates(tmp_path, capsys):
    seq, speed = tmp_path / "seq.jsonl.gz", tmp_path / "speed.jsonl.gz"
    rc = measure.main(["--device", "cpu", "--dtype", "float32", "--tokens", "4", "--warmup", "1", "--repeats", "1",
                       "--op-repeats", "1", "--quiet", "--quant", "int4-g32",
                       "--job", f"--preset tiny-4x3 --decoder sequential --out {seq}",
                       "--job", f"--preset tiny-4x3 --decoder speed --flips 0.2,0.1 --quant int8 --out {speed}"])
    assert rc == 0
    for path, dtype, op in ((seq, "int4", "aten._weight_int4pack_mm_for_cpu.default"),
                            (speed, "int8", "aten._weight_int8pack_mm.default")):
        trace = read_trace(path)
        assert trace.header.measured and trace.header.extra["quant"] == {"int4": "int4-g32", "int8": "int8"}[dtype]
        products = [o for o in trace.ops if o.weight_dtype]
        # every block projection (wq, wk, wv, wo, gate, up, down) of every layer run is one packed op, timed
        assert products and {o.op for o in products} == {op} and {o.weight_dtype for o in products} == {dtype}
        assert all(o.duration_s > 0 and o.dequant_ops >= 1 and o.scale_bytes > 0 for o in products)
        assert not any(o.op == "aten.linear.default" and o.module.startswith("blocks.") for o in trace.ops)
    assert "seq.jsonl.gz" in capsys.readouterr().out


def test_a_scheme_the_preset_cannot_take_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        measure.main(["--device", "cpu", "--preset", "tiny-4x3", "--decoder", "speed", "--quant", "int4-g128",
                      "--out", str(tmp_path / "a.jsonl.gz")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--quant int4-g128" in err and "d_model" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_quantized_product_microbenchmarks_name_their_weight_format():
    from tqdm import tqdm

    from reference.capture import microbench

    dev = torch.device("cpu")
    bench = microbench._Bench(dev, microbench.Timer(dev, trials=1), torch.Generator().manual_seed(0),
                              tqdm(disable=True))
    rows = microbench._bench_quant(bench, "bfloat16", shapes=((64, 64),), rows=(1, 4))
    assert len(rows) == 2 * len(microbench.QUANT_SCHEMES)
    assert {r["op"] for r in rows} == {"aten._weight_int8pack_mm.default", "aten._weight_int4pack_mm_for_cpu.default"}
    check_microbench({"quant": rows, "device": "cpu"}, "test")  # the format calibration reads
    int4 = next(r for r in rows if r["weight_dtype"] == "int4")
    assert int4["group_size"] == 32 and int4["weight_bytes"] == 64 * 64 // 2 and int4["zero_bytes"] == int4[
        "scale_bytes"] == 64 * 64 // 32 * 2  # a bf16 scale and zero point per group of 32 and output channel
    with pytest.raises(MicrobenchError, match=r"quant\[0\]\.dequant_ops"):
        check_microbench({"quant": [rows[0] | {"dequant_ops": 0}]}, "test")


def _rows(hw, ops_per_s: float, rows_per_pass: int, fixed_s: float = 5e-6) -> list[dict]:
    """Quantized-product rows whose seconds the kernel model gives at a known dequant rate and row block."""
    truth = dataclasses.replace(hw, dequant=Dequant(ops_per_s, rows_per_pass))
    rows = []
    for n, k in ((512, 512), (2048, 1024)):
        for m in (1, 2, 4, 8, 16):
            int8 = {"scheme": "int8", "op": "aten._weight_int8pack_mm.default", "weight_dtype": "int8",
                    "group_size": None, "weight_shape": [n, k], "scales_shape": [n], "weight_bytes": n * k,
                    "scale_bytes": 4 * n, "zero_bytes": 0, "dequant_ops": 2}
            int4 = {"scheme": "int4-g32", "op": "aten._weight_int4pack_mm_for_cpu.default", "weight_dtype": "int4",
                    "group_size": 32, "weight_shape": [n, k // 2], "scales_shape": [k // 32, n, 2],
                    "weight_bytes": n * k // 2, "scale_bytes": 4 * n * k // 32, "zero_bytes": 4 * n * k // 32,
                    "dequant_ops": 4}
            for row in (int8, int4):
                row |= {"m": m, "n": n, "k": k, "dtype": "float32", "seconds": 1.0}
                kernel = kernel_of(quant_op(row), hw.tile.m, hw.tile.n)
                row["seconds"] = kernel_cost(kernel, truth, kernel.bytes).time_s + fixed_s
                rows.append(row)
    return rows


@pytest.mark.parametrize("ops_per_s, rows_per_pass", [(2e9, 1), (3e10, 4), (1e11, 16)])
def test_the_dequant_fit_recovers_a_known_rate_and_row_block(ops_per_s, rows_per_pass):
    hw = dataclasses.replace(load_hwconfig(XEON), classes={}, ops={})
    mb = {"quant": _rows(hw, ops_per_s, rows_per_pass)}
    section, sources, report = fit_dequant(mb, hw, {"float32"}, "synthetic.json")
    assert section["rows_per_pass"] == rows_per_pass
    assert section["ops_per_s"] == pytest.approx(ops_per_s, rel=0.02)
    assert report["fixed_s"] == {op: pytest.approx(5e-6, rel=0.05) for op in (
        "aten._weight_int8pack_mm.default", "aten._weight_int8pack_mm.default.gemv",
        "aten._weight_int4pack_mm_for_cpu.default", "aten._weight_int4pack_mm_for_cpu.default.gemv")}
    assert sources["dequant.ops_per_s"].startswith("fitted: 20 quantized products of synthetic.json")
    assert fit_dequant(mb, hw, {"bfloat16"}, "synthetic.json") is None  # none in the decodes' dtype


def test_calibration_fits_dequant_and_refuses_quantized_traces_without_it(tmp_path):
    from sim.fitting.calibrate import _calibrate_dequant
    from sim.hardware import to_dict

    hw = dataclasses.replace(load_hwconfig(XEON), classes={}, ops={})
    raw = to_dict(hw)
    report: dict = {}
    _calibrate_dequant(raw, hw, {"quant": _rows(hw, 4e9, 2)}, [], "mb.json", report)
    assert raw["dequant"] == {"ops_per_s": pytest.approx(4e9, rel=0.02), "rows_per_pass": 2}
    assert raw["sources"]["dequant.ops_per_s"].startswith("fitted:") and report["dequant"]["rows"] == 20
    row = _rows(hw, 4e9, 2)[0]
    quantized = dataclasses.replace(one_op_trace("aten.linear.default", "x", [[1, 8], [8, 8]], [1, 8], "float32",
                                                 128, 64), ops=[quant_op(row)])
    bare = dataclasses.replace(hw, dequant=None)
    with pytest.raises(ValueError, match=r"no quantized-product rows \(quant\) in float32 to fit the dequant section"):
        _calibrate_dequant(to_dict(bare), bare, {"quant": []}, [quantized], "mb.json", {})
