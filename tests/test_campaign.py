"""The GPU campaign (scripts/gpu_campaign.sh): its cuda plan, dry (every command parses with its module's own flags,
the default configurations and the Llama-shaped model in it, the budget arithmetic); a piece of its CPU run
(--device cpu --quick, two of its phases: CI runs all of them in .ci/run), the manifest, the commands and the
archive it writes, what a budget or SIGTERM leaves; the decode sweeps of the microbenchmark and their validation;
and the CI check of committed compiled GPU measurements."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType

import pytest

from reference.capture import measure, microbench
from reference.capture.microbench import DecodeSweep, head_layouts, run_microbenchmarks, weight_shapes
from reference.config import get_preset
from sim.fitting import validate
from sim.fitting.calibrate import microbench_traces
from sim.fitting.microbench import check_microbench
from sim.hardware import load_hwconfig
from sim.trace import read_checked

ROOT = Path(__file__).resolve().parents[1]
CPU_HW = ROOT / "hwconfigs" / "cpu-xeon-8480.yaml"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


campaign = load_script("gpu_campaign")


def campaign_cmd(*flags: str) -> list[str]:
    return ["bash", str(ROOT / "scripts" / "gpu_campaign.sh"), *flags]


def campaign_env(out: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {"PYTHON": sys.executable}
    return env | ({"OUT": str(out)} if out else {})


def test_shell_scripts_parse() -> None:
    for script in ("gpu_campaign.sh", "check_campaign.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True)


def jobs_of(argv: list[str]) -> list[tuple[str, str, str]]:
    """(preset, decoder, tokens) of each --job of a measure command."""
    flags = [dict(zip(f[::2], f[1::2])) for f in (shlex.split(argv[i + 1]) for i, a in enumerate(argv) if a == "--job")]
    return [(f["--preset"], f["--decoder"], f["--tokens"]) for f in flags]


def values_after(argv: list[str], flag: str) -> list[str]:
    """The values of a flag taking several (up to the next flag)."""
    rest = argv[argv.index(flag) + 1 :]
    return rest[: next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]


def test_cuda_plan_measures_what_the_issue_asks() -> None:
    phases = {p.name: p for p in campaign.plan("cuda", False, "data/measured/h100")}
    assert list(phases) == list(campaign.PHASES)
    compiled = phases["compiled-default"].levels[0]
    assert "--compile" in compiled.argv and values_after(compiled.argv, "--dtype") == ["bfloat16"]
    assert jobs_of(compiled.argv) == [("t5-base-4x3", "speed", "128"), ("t5-base-4x3", "sequential", "128"),
                                      ("t5-base-12", "sequential", "128"), ("t5-base-4", "sequential", "128")]
    assert compiled.files[0] == "compiled/t5-base-4x3.speed.bf16.b1.t128.jsonl.gz"
    llama = phases["compiled-llama"].levels[0]
    assert "--compile" in llama.argv
    assert jobs_of(llama.argv) == [("llama2-7b-8x4", "speed", "32"), ("llama2-7b-8x4", "sequential", "32")]
    eager = phases["eager-default"].levels[0]
    assert "--compile" not in eager.argv and jobs_of(eager.argv) == jobs_of(compiled.argv)
    assert eager.files == [f.removeprefix("compiled/") for f in compiled.files]
    mb = phases["microbench"].levels[0].argv
    assert values_after(mb, "--only") == ["resources", "all_reduce", "decode_gemm", "decode_attention"]
    assert values_after(mb, "--decode-rows") == ["1", "2", "3", "4", "8", "16"]
    assert values_after(mb, "--attention-lengths") == [str(128 << i) for i in range(9)]  # 128 .. 32k
    # the issue's Llama-7B shapes (N x K), and both head layouts
    shapes = {(n, k) for _, n, k in weight_shapes(get_preset("llama2-7b"))}
    assert {(4096, 4096), (11008, 4096), (4096, 11008), (12288, 4096)} <= shapes
    layouts = head_layouts([get_preset(p) for p in microbench.DECODE_PRESETS["cuda"]])
    assert {h == kv for _, h, kv, _ in layouts} == {True, False}  # MHA and GQA


def test_every_planned_command_parses() -> None:
    """Each command the campaign would run, cuda and cpu, is accepted by its module's own flags (jobs included)."""
    for device, quick in (("cuda", False), ("cuda", True), ("cpu", True)):
        for phase in campaign.plan(device, quick, "out"):
            for level in phase.levels:
                module = level.argv[1] if level.argv[0] == "-m" else level.argv[0]
                if module == "reference.capture.measure":
                    parser = measure._parser()
                    jobs = measure._jobs(parser, parser.parse_args(level.argv[2:]))
                    assert [f"out/{f}" for f in level.files] == [str(j.out) for j in jobs]
                elif module == "reference.capture.microbench":
                    parser = microbench._parser()
                    args = parser.parse_args(level.argv[2:])
                    assert microbench._decode_sweep(parser, args) is not None
                else:
                    assert module == "scripts/device_facts.py"


def test_dry_run_prints_the_plan_within_the_budget() -> None:
    done = subprocess.run(campaign_cmd("--dry-run", "--gpu", "h100"), capture_output=True, text=True,
                          env=campaign_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    for name in campaign.PHASES:
        assert f"[{name}]" in done.stdout
    assert "SKIPPED" not in done.stdout.split("[compiled-llama]")[0]  # the compiled phases fit the default budget
    planned = float(done.stdout.split("planned: ~")[1].split()[0])
    assert planned <= 480 - campaign.RESERVE_S
    tight = subprocess.run(campaign_cmd("--dry-run", "--budget-s", "150"), capture_output=True, text=True,
                           env=campaign_env(), timeout=120)
    assert tight.returncode == 0 and "SKIPPED" in tight.stdout
    assert float(tight.stdout.split("planned: ~")[1].split()[0]) <= 150 - campaign.RESERVE_S


def test_gpu_folder_names() -> None:
    assert campaign.gpu_folder("NVIDIA H100 80GB HBM3") == "h100"
    assert campaign.gpu_folder("NVIDIA H200") == "h200"
    assert campaign.gpu_folder("NVIDIA H100 PCIe") == "h100-pcie"
    assert campaign.gpu_folder("NVIDIA A100-SXM4-80GB") == "a100"
    assert campaign.gpu_folder("NVIDIA L4") == "l4"
    assert campaign.gpu_folder("NVIDIA GeForce RTX 4090") == "geforce-rtx-4090"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """Two phases of the CPU quick campaign (compiled and eager decoding of tiny-4x3), with OUT set."""
    base = tmp_path_factory.mktemp("campaign")
    out, device_out = base / "cpu", base / "device-out"
    device_out.mkdir()
    done = subprocess.run(campaign_cmd("--device", "cpu", "--quick", "--out", str(out), "--phases", "compiled-llama",
                                       "eager-llama"), capture_output=True, text=True, env=campaign_env(device_out),
                          timeout=900)
    return out, device_out, done


def test_cpu_run_writes_every_file_with_its_command(cpu_run: tuple) -> None:
    out, device_out, done = cpu_run
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    phases = {p["name"]: p for p in manifest["phases"]}
    assert manifest["status"] == "complete" and manifest["device"] == "cpu"
    assert [phases[n]["status"] for n in ("env", "compiled-llama", "eager-llama")] == ["done"] * 3
    assert phases["microbench"]["note"] == campaign.NOT_SELECTED
    commands = (out / "COMMANDS.md").read_text()
    for name in ("env", "compiled-llama", "eager-llama"):
        assert phases[name]["seconds"] > 0 and phases[name]["estimate_s"] > 0
        assert phases[name]["command"] in commands
        for f in phases[name]["files"]:
            assert (out / f).is_file() and f"`{f}`" in commands
    compiled = [out / f for f in phases["compiled-llama"]["files"]]
    eager = [out / f for f in phases["eager-llama"]["files"]]
    assert [p.parent.name for p in compiled] == ["compiled"] * 2 and len(eager) == 2
    for path in compiled:
        header = read_checked(path).header
        assert header.extra["measurement"] == "compiled" and "--compile" in header.command
    assert json.loads((out / "env.json").read_text())["device"] == "cpu"
    with tarfile.open(device_out / "campaign.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"cpu/{f}" for f in ("manifest.json", "COMMANDS.md", "campaign.log", *phases["eager-llama"]["files"],
                                  *phases["compiled-llama"]["files"])} <= names
    assert not list(out.rglob(".*.tmp"))


def test_cpu_run_outputs_are_read_by_the_simulator(cpu_run: tuple, capsys: pytest.CaptureFixture) -> None:
    out = cpu_run[0]
    assert validate.main(["--hw", str(CPU_HW), "--measured", *map(str, out.glob("*.jsonl.gz"))]) == 0
    assert validate.main(["--launch", "compiled", "--hw", str(CPU_HW), "--measured",
                          *map(str, (out / "compiled").glob("*.jsonl.gz"))]) == 0
    assert "end_to_end" in capsys.readouterr().out


def test_budget_skips_and_says_why(tmp_path: Path) -> None:
    done = subprocess.run(campaign_cmd("--device", "cpu", "--quick", "--out", str(tmp_path), "--budget-s", "8",
                                       "--phases", "eager-llama"), capture_output=True, text=True,
                          env=campaign_env(), timeout=300)
    assert done.returncode == 3, done.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    phase = next(p for p in manifest["phases"] if p["name"] == "eager-llama")
    assert manifest["status"] == "incomplete" and phase["status"] == "skipped"
    assert phase["note"].startswith("skipped for the budget") and not phase["files"]


def test_sigterm_keeps_what_finished(tmp_path: Path) -> None:
    out, device_out = tmp_path / "c", tmp_path / "o"
    device_out.mkdir()
    proc = subprocess.Popen(campaign_cmd("--device", "cpu", "--quick", "--out", str(out), "--phases", "microbench",
                                         "eager-llama"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=campaign_env(device_out))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the microbenchmark command is under way
        log = out / "campaign.log"
        if log.is_file() and "reference.capture.microbench --device" in log.read_text():
            break
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    status = {p["name"]: p["status"] for p in manifest["phases"]}
    assert (status["env"], status["microbench"], status["eager-llama"]) == ("done", "stopped", "pending")
    assert manifest["status"] == "incomplete"
    assert (out / "env.json").is_file() and not (out / "microbench.json").exists() and not list(out.rglob(".*.tmp"))
    with tarfile.open(device_out / "campaign.tar.gz") as tar:
        assert "c/env.json" in tar.getnames()
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if str(out).encode() in _cmdline(p)]
    assert not leftovers, "the stopped command outlived the campaign"


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_decode_sweeps_rows_and_schema() -> None:
    sweep = DecodeSweep(("tiny-4x3",), "float32", rows=(1, 3), lengths=(32, 64))
    result = run_microbenchmarks("cpu", progress=False, resources=False, all_reduce=False, decode=sweep)
    gemm, attention = result["decode_gemm"], result["decode_attention"]
    assert len(gemm) == 2 * len(weight_shapes(get_preset("tiny-4x3"))) == microbench.decode_steps(sweep) - 2
    assert {g["m"] for g in gemm} == {1, 3} and all(g["form"] == "linear" and g["seconds"] > 0 for g in gemm)
    assert {(a["heads"], a["kv_heads"], a["length"]) for a in attention} == {(4, 2, 32), (4, 2, 64)}
    assert "copy" not in result and "all_reduce" not in result  # only what was asked
    plain = run_microbenchmarks("cpu", progress=False, resources=False, all_reduce=False)
    assert not {"decode_gemm", "decode_attention"} & set(plain)  # not run unless selected
    assert check_microbench(json.loads(json.dumps(result)), "decode sweeps") == result  # of the one format read back


def test_cpu_microbenchmarks_take_the_widths_this_cpu_decodes_past_its_cache() -> None:
    """A CPU's GEMV streams short rows slower (docs/cpu-dram-products.md): its one-row products are timed at
    code-wide-4x3's weights (the CPU loop's decode past the L3), and SPEED's three rows among the few-row ones."""
    cfg = get_preset("code-wide-4x3")
    for quick in (True, False):
        products = microbench._sizes(False, quick).gemm
        one_row = {(n, k) for m, n, k in products if m == 1}
        assert {(cfg.d_model, cfg.d_model), (cfg.d_ff, cfg.d_model), (cfg.d_model, cfg.d_ff)} <= one_row
        assert any(m == 3 for m, _, _ in products)
    assert microbench.ROTATED_WEIGHT_BYTES >= 4 * (32 << 20)  # this CPU's L3, four times


def test_validate_reads_decode_rows_and_says_what_it_cannot_model(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    gemm = [{"m": m, "n": 512, "k": 256, "dtype": "float32", "form": "linear", "seconds": 2e-5, "preset": "p",
             "weight": "q/o"} for m in (1, 4)]
    attention = [{"heads": 4, "kv_heads": 2, "length": 64, "head_dim": 16, "dtype": "float32",
                  "query_shape": [1, 4, 1, 16], "seconds": 1e-5, "preset": "p"}]
    mb = {"decode_gemm": [*gemm, gemm[0] | {"form": "baddbmm"}], "decode_attention": attention}
    unmodelled: list[str] = []
    pairs = validate.microbench_pairs(mb, load_hwconfig(CPU_HW), unmodelled)
    assert set(pairs) == {"decode_gemm m=1 float32", "decode_gemm m=4 float32", "decode_attention 4q/2kv x16 float32"}
    assert len(unmodelled) == 1 and "baddbmm" in unmodelled[0]
    path = tmp_path / "mb.json"
    path.write_text(json.dumps(mb))
    assert validate.main(["--hw", str(CPU_HW), "--microbench", str(path)]) == 0
    assert "not modelled (1)" in capsys.readouterr().out
    # a list of rows of no known format is refused in one line naming it (sim.fitting.microbench), never ignored
    path.write_text(json.dumps(mb | {"future_sweep": [{"x": 1}]}))
    with pytest.raises(SystemExit) as exit_info:
        validate.main(["--hw", str(CPU_HW), "--microbench", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "field 'future_sweep': unknown" in err[-1]
    # a decode row's fields are checked as the resource rows' are
    path.write_text(json.dumps(mb | {"decode_attention": [attention[0] | {"kv_heads": 3}]}))
    with pytest.raises(SystemExit):
        validate.main(["--hw", str(CPU_HW), "--microbench", str(path)])
    assert "decode_attention[0].kv_heads" in capsys.readouterr().err


def test_grouped_query_attention_reads_only_its_kv_heads() -> None:
    row = {"heads": 32, "length": 32768, "head_dim": 128, "dtype": "bfloat16", "query_shape": [1, 32, 1, 128],
           "seconds": 1e-4}
    [(_, mha, _)], [(_, gqa, _)] = (microbench_traces({"attention": [row | {"kv_heads": kv}]}) for kv in (32, 4))
    assert mha.ops[-1].kv_read_bytes == 8 * gqa.ops[-1].kv_read_bytes
    assert gqa.ops[-1].in_shapes[1] == [1, 4, 32768, 128]


def _as_gpu_trace(src: Path, dst: Path) -> None:
    """A CPU compiled trace relabelled as measured on an H100 (the check's plumbing, not its figures)."""
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines()
    header = json.loads(lines[0]) | {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dst, "wt") as f:
        f.write("\n".join([json.dumps(header), *lines[1:]]) + "\n")


def test_ci_check_of_committed_compiled_gpu_traces(cpu_run: tuple, tmp_path: Path) -> None:
    script = [sys.executable, str(ROOT / "scripts" / "validate_gpu_compiled.py")]
    none = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert none.returncode == 0 and "none committed yet" in none.stdout  # the H200 data is eager
    compiled = sorted((cpu_run[0] / "compiled").glob("*.jsonl.gz"))
    _as_gpu_trace(compiled[0], tmp_path / "h100" / "compiled" / compiled[0].name)
    eager = cpu_run[0] / "tiny-4x3.speed.fp32.b1.t16.jsonl.gz"  # not compiled: not read for the check
    (tmp_path / "h100" / "eager.jsonl.gz").write_bytes(eager.read_bytes())
    root = ["--measured-root", str(tmp_path)]
    passed = subprocess.run([*script, *root, "--max-error", "1e9"], capture_output=True, text=True, timeout=120)
    assert passed.returncode == 0 and "h100: 1 compiled traces against" in passed.stdout, passed.stderr
    gated = subprocess.run([*script, *root, "--max-error", "0"], capture_output=True, text=True, timeout=120)
    assert gated.returncode == 1 and "FAIL: median end-to-end error" in gated.stderr
    (tmp_path / "h100").rename(tmp_path / "x999")
    orphan = subprocess.run([*script, *root], capture_output=True, text=True, timeout=120)
    assert orphan.returncode == 1 and "neither" in orphan.stderr
