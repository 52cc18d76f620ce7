"""Weight-only quantization in the simulator (issue 21, parts 3 to 5): the quantized products' trace fields as the
capture records them, the kernel model of a weight-only GEMV/GEMM (packed bytes from memory, dequantization on the
vector/ALU units per block of rows, the product on the units the real kernel uses), the hwconfig figures it needs,
and the command lines (sim.run --quant, a Hugging Face quantization_config, the sweep's quant axis)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sim.hardware import HWCONFIG_DIR, HwConfigError, load_hwconfig, parse, to_dict
from sim.kernels import dequant_s, kernel_cost, kernel_of
from sim.opkinds import DEQUANT_OPS, QUANT_MATMUL_OPS
from sim.quantrows import main as quantrows_main
from sim.quantrows import product
from sim.trace import check_op

A100 = load_hwconfig(HWCONFIG_DIR / "a100.yaml")
H100 = load_hwconfig(HWCONFIG_DIR / "h100.yaml")
CPU = load_hwconfig(HWCONFIG_DIR / "cpu-xeon-8480.yaml")
INT4_CPU = "aten._weight_int4pack_mm_for_cpu.default"


def cost(hw, m: int, fmt: str = "bf16", n: int = 4096, k: int = 4096):
    """The kernel of a [m, k] x [k, n] product of weight format `fmt` (sim.quantrows.product), and its cost."""
    kernel = kernel_of(product(m, n, k, fmt), hw.tile.m, hw.tile.n)
    return kernel, kernel_cost(kernel, hw, kernel.bytes)


def test_the_ops_of_each_format_are_valid_trace_ops() -> None:
    for fmt in ("bf16", "int8", "int4-g32", "int4-g128"):
        check_op(product(3, 256, 256, fmt))
    assert set(QUANT_MATMUL_OPS.values()) == set(DEQUANT_OPS)


def test_an_int4_product_reads_about_a_quarter_of_the_bf16_weight_bytes() -> None:
    """int4 g128 stores 4 bits a weight and a bf16 scale and zero point per 128: 4.25 / 16 of bf16's bytes; int8
    half of them and a scale per row. The memory time of a decode GEMV shrinks with them."""
    bf16, bf16_cost = cost(A100, 1)
    int4, int4_cost = cost(A100, 1, "int4-g128")
    int8, int8_cost = cost(A100, 1, "int8")
    assert int4.weight_bytes / bf16.weight_bytes == pytest.approx(4.25 / 16)
    assert int8.weight_bytes / bf16.weight_bytes == pytest.approx(0.5, rel=1e-3)
    assert int4_cost.memory_s / bf16_cost.memory_s == pytest.approx(4.25 / 16, rel=0.02)
    assert int4_cost.time_s < int8_cost.time_s < bf16_cost.time_s


@pytest.mark.parametrize("hw", [A100, H100, CPU], ids=["a100", "h100", "cpu"])
def test_dequantization_work_grows_with_the_rows_by_the_kernels_row_tile(hw) -> None:
    """Each weight is dequantized once per block of rows_per_pass rows (tinygemm's 16-row M tile on a GPU, ATen's
    BLOCK_M = 4 on a CPU): constant within a block, proportional to the blocks beyond it."""
    tile = hw.dequant.rows_per_pass
    fit = hw.fit("matmul", "x")
    one = dequant_s(cost(hw, 1, "int4-g128")[0], hw, fit)
    assert dequant_s(cost(hw, tile, "int4-g128")[0], hw, fit) == one
    assert dequant_s(cost(hw, tile + 1, "int4-g128")[0], hw, fit) == pytest.approx(2 * one)
    assert dequant_s(cost(hw, 8 * tile, "int4-g128")[0], hw, fit) == pytest.approx(8 * one)
    # int4 does twice int8's operations per weight
    int8 = dequant_s(cost(hw, 1, "int8")[0], hw, fit)
    assert dequant_s(cost(hw, 1, "int4-g128")[0], hw, fit) == pytest.approx(2 * int8)


@pytest.mark.parametrize("hw", [A100, H100, CPU], ids=["a100", "h100", "cpu"])
def test_a_quantized_stage_turns_compute_bound_at_some_rows(hw) -> None:
    """A decode GEMV of int8 weights is bound by its bytes (or its fixed time); as a SPEED stage's rows grow, the
    dequantization (and on a CPU the product, on the vector units) grows with them until it bounds the kernel,
    while the bf16 product of as many rows is still bound by its weights."""
    bounds = {m: cost(hw, m, "int8")[1].bound for m in (1, 2, 4, 8, 16, 32, 64, 128)}
    assert bounds[1] in ("memory", "latency")
    assert bounds[128] == "compute"
    turn = min(m for m, b in bounds.items() if b == "compute")
    assert all(b == "compute" for m, b in bounds.items() if m >= turn)
    assert cost(hw, turn)[1].bound != "compute"


def test_on_a_cpu_the_quantized_product_runs_on_the_vector_units() -> None:
    """ATen's packed kernels multiply with AVX-512 FMAs (not AMX) and dequantize on the same ports: their compute
    time is the product's at the vector rate plus the dequantization."""
    kernel, c = cost(CPU, 64, "int4-g128")
    m, n, k = kernel.shape
    vector_s = 2 * m * n * k / (CPU.vector_flops("bfloat16") * CPU.efficiency.vector)
    work_s = dequant_s(kernel, CPU, CPU.fit("matmul", kernel.op))
    assert c.compute_s >= vector_s + work_s - 1e-12
    assert c.compute_s > cost(CPU, 64)[1].compute_s  # the bf16 product runs on AMX


def test_quantrows_prints_the_turn_to_compute_bound_per_chip_and_format(capsys) -> None:
    assert quantrows_main(["--hw", "a100", "cpu-xeon-8480", "--shape", "4096x4096"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[-6] for r in rows] == ["bf16", "int8", "int4-g128"] * 2
    turns = {(r[0], r[-6]): int(r[-4]) for r in rows}
    assert turns["Intel", "int8"] < turns["NVIDIA", "int8"] < turns["NVIDIA", "bf16"]  # a CPU dequantizes per 4 rows


def test_a_hwconfig_without_dequant_figures_refuses_a_quantized_product() -> None:
    raw = to_dict(A100)
    del raw["dequant"]
    bare = parse(raw, "bare.yaml")
    kernel = kernel_of(product(1, 4096, 4096, "int8"), bare.tile.m, bare.tile.n)
    with pytest.raises(HwConfigError, match=r"hwconfig bare\.yaml, field 'dequant': missing: a weight-only int8"):
        kernel_cost(kernel, bare, kernel.bytes)
    kernel_cost(*(lambda k: (k, bare, k.bytes))(kernel_of(product(1, 4096, 4096), 256, 128)))  # bf16 needs none


@pytest.mark.parametrize("change, field, text", [
    (lambda raw: raw["dequant"].update(ops_per_s=0), "dequant.ops_per_s", "must lie in"),
    (lambda raw: raw["dequant"].update(rows_per_pass=2.5), "dequant.rows_per_pass", "expected an integer"),
    (lambda raw: raw["dequant"].update(extra=1), "dequant.extra", "unknown field"),
    (lambda raw: raw["dequant"].pop("rows_per_pass"), "dequant.rows_per_pass", "missing"),
    (lambda raw: raw["sources"].pop("dequant.ops_per_s"), "sources.dequant.ops_per_s", "needs a source"),
])
def test_malformed_dequant_figures_are_refused_naming_the_field(change, field, text) -> None:
    raw = json.loads(json.dumps(to_dict(A100)))
    change(raw)
    with pytest.raises(HwConfigError) as info:
        parse(raw, "x.yaml")
    assert info.value.field == field and text in str(info.value)


def test_every_shipped_hwconfig_has_sourced_dequant_figures() -> None:
    for path in sorted(HWCONFIG_DIR.glob("*.yaml")):
        hw = load_hwconfig(path)
        assert hw.dequant is not None, path
        assert all(hw.sources.get(f"dequant.{f.name}") for f in dataclasses.fields(hw.dequant)), path


def test_a_captured_quantized_trace_holds_one_op_per_projection(tmp_path: Path) -> None:
    """The capture (meta device) of a quantized tiny model: every block projection is one packed op with its weight
    format, bytes of the packed weight and its scales (zero points for int4) as the header lists them; the fast
    capture derives the same trace as the full one; the float model's bytes shrink."""
    torch = pytest.importorskip("torch")  # noqa: F841 (the capture needs it)
    from reference.capture.tracing import capture_trace

    traces = {}
    for quant in (None, "int8", "int4-g32"):
        traces[quant], _ = capture_trace("tiny-4x3", "speed", 3, tmp_path / f"{quant}.jsonl.gz", quant=quant)
    full, _ = capture_trace("tiny-4x3", "speed", 3, tmp_path / "full.jsonl.gz", quant="int4-g32", full=True)
    assert full == traces["int4-g32"]
    cfg = traces[None].header.model
    for quant, trace in traces.items():
        packed = [op for op in trace.distinct if op.weight_dtype is not None]
        if quant is None:
            assert not packed
            continue
        assert {op.op for op in packed} == {"aten._weight_int8pack_mm.default" if quant == "int8" else INT4_CPU}
        assert trace.header.extra["quant"] == quant
        weights = trace.header.weights
        for op in packed:
            assert op.weight_bytes == sum(weights[w]["bytes"] for w in op.weights)
            assert op.scale_bytes + op.zero_bytes < op.weight_bytes
            assert (op.group_size, bool(op.zero_bytes)) == ((None, False) if quant == "int8" else (32, True))
        # wq, wk, wv, wo, gate, up, down of each unique block are quantized; the LM head is not
        assert len({op.module for op in packed}) == 7 * cfg["n_unique_layers"]
        assert all(op.kind == "matmul" for op in packed)
    total = {q: sum(w["bytes"] for w in t.header.weights.values()) for q, t in traces.items()}
    assert total["int8"] < total[None] and total["int4-g32"] < total["int8"]


# -- command lines
def small_llama(tmp_path: Path, quantization: dict | None = None, name: str = "config.json") -> str:
    """A small Llama-family config.json (64 wide, 2 layers), with a quantization_config where given."""
    raw = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256,
           "max_position_embeddings": 512, "eos_token_id": 1, "hidden_act": "silu"}
    if quantization is not None:
        raw["quantization_config"] = quantization
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return str(path)


def run_json(tmp_path: Path, *argv: str) -> list[dict]:
    from sim import run

    out = tmp_path / "r.json"
    assert run.main(["--hw", "a100", *argv, "--json", str(out)]) == 0
    return json.loads(out.read_text())["runs"]


def refused(capsys, *argv: str) -> str:
    """The one error line sim.run exits 2 with."""
    from sim import run

    with pytest.raises(SystemExit) as exit_:
        run.main(["--hw", "a100", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "Traceback" not in "\n".join(err)
    return err[-1]


def test_sim_run_quant_with_share_and_tp(tmp_path, capsys, monkeypatch) -> None:
    """--quant none int4-g32 with --share and --tp 1 2: a row per configuration, scheme and degree, the table naming
    the weight format; speedups compare rows of one format and degree; --json carries quant; memory counts the
    packed bytes (per GPU at TP 2)."""
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path / "cache"))
    runs = run_json(tmp_path, "--model", "tiny-6", "--share", "2x3", "--tokens", "4", "--flips", "0.2,0.1", "--quant",
                    "none", "int4-g32", "--tp", "1", "2", "--launch", "eager")
    lines = capsys.readouterr().out.splitlines()
    head = next(line for line in lines if line.startswith("configuration"))
    assert head.split()[:3] == ["configuration", "weights", "TP"]
    rows = [line.split() for line in lines if line.startswith("tiny-6-2x3")]
    assert [(r[2], r[3]) for r in rows] == [("bfloat16", "1"), ("bfloat16", "1"), ("int4-g32", "1"), ("int4-g32", "1"),
                                            ("bfloat16", "2"), ("bfloat16", "2"), ("int4-g32", "2"), ("int4-g32", "2")]
    assert all(r[6] == "1.00x" for r in rows if r[1] == "sequential")
    assert [r["quant"] for r in runs] == [None, None, "int4-g32", "int4-g32"] * 2
    weights = {(r["quant"], r["tp"]): r["memory"]["weights_bytes"] for r in runs}
    for tp in (1, 2):
        assert weights["int4-g32", tp] < weights[None, tp]
    assert weights["int4-g32", 2] < weights["int4-g32", 1]
    assert all(r["s_per_token"] > 0 for r in runs)


def test_a_config_json_with_a_quantization_config_selects_its_scheme(tmp_path, capsys, monkeypatch) -> None:
    """GPTQ (bits, group_size, sym) and AWQ (bits, group_size, zero_point) configs trace their scheme without
    --quant; a --quant that agrees is taken, one that contradicts is refused."""
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path / "cache"))
    gptq = small_llama(tmp_path, {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True,
                                  "desc_act": False})
    awq = small_llama(tmp_path, {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
                                 "version": "GEMM"}, "awq.json")
    int8 = small_llama(tmp_path, {"bits": 8, "group_size": -1, "sym": True}, "int8.json")
    for model, scheme in ((gptq, "int4-g32"), (awq, "int4-g64"), (int8, "int8")):
        runs = run_json(tmp_path, "--model", model, "--decoder", "sequential", "--tokens", "3", "--launch", "eager")
        assert runs[0]["quant"] == scheme
    assert run_json(tmp_path, "--model", gptq, "--decoder", "sequential", "--tokens", "3", "--launch", "eager",
                    "--quant", "int4-g32")[0]["quant"] == "int4-g32"
    line = refused(capsys, "--model", gptq, "--tokens", "3", "--quant", "int8")
    assert f"--quant int8: {gptq} is a int4-g32 checkpoint (its quantization_config)" in line


@pytest.mark.parametrize("config, field, text", [
    ({"bits": 3, "group_size": 128}, "quantization_config.bits", "3: the schemes have 8 or 4 bits"),
    ({"bits": 4, "group_size": 256}, "quantization_config.group_size", "256 with 4 bits: int4 groups are 32, 64, 128"),
    ({"bits": 8, "group_size": 128}, "quantization_config.group_size", "int8 has one scale per output channel"),
    ({"bits": 8, "group_size": -1, "sym": False}, "quantization_config.sym", "int8 is symmetric"),
    ({"bits": 4, "group_size": 32, "desc_act": True}, "quantization_config.desc_act", "activation-order groups"),
    ({"bits": 4, "group_size": 32, "lm_head": True}, "quantization_config.lm_head", "never the LM head"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quantization_config.quant_method", "'bitsandbytes'"),
    ({"quant_method": "gptq", "bits": 4}, "quantization_config.group_size", "missing"),
    ("4bit", "quantization_config", "expected an object"),
])
def test_a_quantization_config_no_scheme_represents_is_refused_naming_the_field(tmp_path, capsys, monkeypatch, config,
                                                                               field, text) -> None:
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path / "cache"))
    model = small_llama(tmp_path, config)
    line = refused(capsys, "--model", model, "--tokens", "3")
    assert f"model config {model}, field '{field}'" in line and text in line


@pytest.mark.parametrize("argv, text", [
    (["--model", "tiny-6", "--quant", "int4-g64", "--tp", "2"], "--quant int4-g64 with --tp 2: d_model 64 / 2 = 32 is "
     "not a multiple of the group size 64"),
    (["--model", "tiny-6", "--quant", "int4-g128"], "--quant int4-g128: d_model 64 (the input features of wq, wk, wv, "
     "wo, gate and up) is not a multiple of the group size 128"),
    (["--model", "tiny-6", "--quant", "int4-g256"], "argument --quant: invalid choice: 'int4-g256'"),
    (["--model", "tiny-6", "--quant", "int3"], "argument --quant: invalid choice: 'int3'"),
    (["--trace", "x.jsonl.gz", "--quant", "int8"], "--quant describe a run to trace: give one or the other"),
])
def test_bad_quant_flags_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, text) -> None:
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path / "cache"))
    assert text in refused(capsys, *argv, "--tokens", "3")


def test_the_simulators_schemes_are_the_reference_decoders() -> None:
    quant = pytest.importorskip("reference.quant")
    from sim.opkinds import QUANT_SCHEMES

    assert tuple(quant.SCHEMES) == QUANT_SCHEMES
    assert {s.bits for s in quant.SCHEMES.values()} == {8, 4}
