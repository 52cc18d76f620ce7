"""Issue 12, finding by finding, through the command lines a user runs (in process; the signals in subprocesses):
each bad value is one error line naming the flag or file and the field, with exit status 2, and nothing is
projected or written first; interrupted commands end with one line and status 130 / 143, leaving no temporary
file."""

import ast
import gzip
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from simtraces import header, op

from reference import demo
from reference.capture import tracing
from reference.experiments import train
from sim import run
from sim.files import atomic_write, output_problem
from sim.fitting import calibrate, validate
from sim.hardware import HWCONFIG_DIR, HwConfigError, load_hwconfig
from sim.sweep import cli as sweep_cli
from sim.trace import OpRecord, StageRecord, TraceHeader, TraceWriter, read_trace

ROOT = Path(__file__).resolve().parents[1]
A100 = (HWCONFIG_DIR / "a100.yaml").read_text()
_TILE_M_LINE = A100.splitlines().index("  m: 256") + 1  # the line of tile.m in a100.yaml
A100_BARE = re.sub(r"^classes:\n(?:  .*\n)+", "", A100, flags=re.M)  # without its optional classes section
TRACE = str(ROOT / "data" / "traces" / "t5-base-4.sequential.bf16.b1.t128.jsonl.gz")
MEASURED = str(ROOT / "data" / "measured" / "h200" / "t5-base-4.sequential.bf16.b1.t128.jsonl.gz")


def one_error_line(capsys, main, argv: list[str]) -> str:
    """Run a command line's main on `argv`: it must exit 2 with one error line (after argparse's usage) and no
    traceback; the line is returned."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and len(errors[0]) < 600, err
    return errors[0]


def bomb(levels: int = 9, width: int = 9) -> str:
    items = [f"&a0 [{', '.join(['lol'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


# 1-6: hwconfigs: NaN and infinity, alias bombs, encodings, huge integers, nesting, values that overflow later,
# and the YAML rules of finding 11 (duplicate keys, octal-looking integers)
HWCONFIG_CASES = {
    "nan": (A100.replace("dram_bandwidth_bytes_per_s: 2.039e+12", "dram_bandwidth_bytes_per_s: .nan"),
            "field 'peak.dram_bandwidth_bytes_per_s': expected a finite number, got nan"),
    "1e999": (A100.replace("l2: 0.7", "l2: 1e999"), "field 'efficiency.l2': expected a finite number, got inf"),
    "bomb under kind": (A100.replace("kind: gpu", f"kind: {bomb()}"),
                        "field 'kind[5]': stands for 597,871 values with its aliases expanded"),
    "bomb under classes": (A100_BARE + f"classes: {bomb()}\n", "field 'classes[5]': stands for 597,871 values"),
    "latin-1": (A100.replace("NVIDIA A100", "NVIDIA \xe9A100").encode("latin-1"),
                "not UTF-8 text: byte 0xe9 at offset"),
    "UTF-16": (A100.encode("utf-16"), "UTF-16 text: byte 0xff at offset 0 is not UTF-8"),
    "gzip": (gzip.compress(A100.encode()), "gzip-compressed data"),
    "10**400": (A100.replace("compute_units: 108", "compute_units: 1" + "0" * 400),
                "field 'peak.compute_units': an integer of 401 digits (at most 30)"),
    "5000 deep": (A100.replace("m: 256", "m: " + "[" * 5000 + "1" + "]" * 5000),
                  "field 'tile.m': nested deeper than 32 levels"),
    "launch 1e308": (A100.replace("launch_eager_s: 2.0e-5", "launch_eager_s: 1.0e+308"),
                     "field 'host.launch_eager_s': must lie in [0, 1], got 1e+308"),
    "clock 1e-300": (A100.replace("clock_hz: 1.41e+9", "clock_hz: 1.0e-300"),
                     "field 'peak.clock_hz': must lie in [1e+06, 1e+11], got 1e-300"),
    "fixed_s inf": (A100_BARE + "classes:\n  norm: {efficiency: 0.5, fixed_s: .inf}\n",
                    "field 'classes.norm.fixed_s': expected a finite number, got inf"),
    "generated memory_efficiency": (
        A100 + "compiled:\n  library_fixed_s: 0.0\n  generated: {efficiency: 0.5, fixed_s: 0.0, "
        "memory_efficiency: 2.0}\n", "field 'compiled.generated.memory_efficiency': must lie in [1e-06, 1]"),
    "duplicate key": (A100.replace("  m: 256\n", "  m: 256\n  m: 64\n"),
                      f"field 'tile.m': given twice (lines {_TILE_M_LINE} and {_TILE_M_LINE + 1}); YAML would keep "
                      "the last one silently"),
    "octal": (A100.replace("compute_units: 108", "compute_units: 0144"),
              "field 'peak.compute_units': '0144': YAML 1.1 reads it in octal (100); write integers in decimal"),
}


@pytest.mark.parametrize("case", HWCONFIG_CASES)
def test_hwconfig_findings_are_one_line_naming_file_and_field(tmp_path, capsys, case):
    text, message = HWCONFIG_CASES[case]
    path = tmp_path / "hw.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = one_error_line(capsys, run.main, ["--hw", str(path), "--trace", TRACE, "--launch", "eager"])
    assert f"hwconfig {path}" in line and message in line, line
    assert "lol, lol" not in line  # an expanded value is never printed


def test_a_harmless_alias_still_reads(tmp_path):
    (tmp_path / "hw.yaml").write_text(A100.replace("  m: 256", "  m: &side 256").replace("  n: 128", "  n: *side"))
    assert load_hwconfig(tmp_path / "hw.yaml").tile.n == 256


def test_files_that_are_not_regular_are_refused_unread(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would wait for a writer forever
    for path, problem in ((tmp_path / "fifo", "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                          (tmp_path, "a folder, not a file")):
        with pytest.raises(HwConfigError, match=problem):
            load_hwconfig(path)


# 10: command-line values; output paths checked before any work
@pytest.mark.parametrize("argv, message", [
    (["--set", "peak.dram_bandwidth_bytes_per_s=.nan"], "field 'peak.dram_bandwidth_bytes_per_s': expected a finite"),
    (["--set", "peak.clock_hz=["], "with --set peak.clock_hz=[, field 'peak.clock_hz': not valid YAML"),
    (["--set", "efficiency.dram=1e-300"], "field 'efficiency.dram': must lie in [1e-06, 1], got 1e-300"),
    (["--set", "peak.compute_units=9", "--set", "peak.compute_units=10"], "--set peak.compute_units: given twice"),
    (["--model", "bogus-preset"], "--model bogus-preset: unknown model preset 'bogus-preset'"),
    (["--model", "{tmp}"], "--model {tmp}: a folder, not a preset or a config file"),
    (["--model", "{tmp}/m.yaml"], "--model {tmp}/m.yaml: model config field 'd_model': given twice"),
    (["--json", "{tmp}"], "--json {tmp}: is a folder"),
    (["--json", "{tmp}/file/out.json"], "--json {tmp}/file/out.json: {tmp}/file is a file, not a folder"),
    (["--perfetto", "{tmp}/fifo"], "--perfetto {tmp}/fifo: exists and is not a regular file"),
    (["--plot", "/dev/null"], "--plot /dev/null: exists and is not a regular file"),
    (["--tokens", "-1"], "argument --tokens: expected an integer in [1, 1048576], got '-1'"),
    (["--streams", "0"], "argument --streams: expected an integer in [1, 1024], got '0'"),
    (["--trace", TRACE, "--tokens", "64"], "--trace replays recorded runs as they are; --tokens describe a run"),
    (["--decoder", "speed"], "--decoder applies to a --model; give one"),
    # issue 20: tensor-parallel degrees the model, the hwconfig or the flag cannot take
    (["--tp", "0"], "argument --tp: expected an integer in [1, 65536], got '0'"),
    (["--tp", "-2"], "argument --tp: expected an integer in [1, 65536], got '-2'"),
    (["--model", "llama2-7b", "--tp", "3"], "--tp 3: n_heads 32 is not divisible by 3 (llama2-7b)"),
    (["--model", "llama2-7b", "--tp", "2", "16"], "--tp 16: hwconfig {hw}/a100.yaml, field "
     "'interconnect.devices_per_node': a group of 16 devices spans more than one node of 8"),
    (["--hw", "a100", "jetson-orin", "--tp", "2"], "--tp 2: hwconfig {hw}/jetson-orin.yaml, field 'interconnect': "
     "missing: a group of 2 devices needs the hwconfig's interconnect section"),
    (["--trace", TRACE, "--tp", "2"], "--trace replays recorded runs as they are; --tp describe a run to trace"),
])
def test_bad_run_values_are_refused_before_any_projection(tmp_path, capsys, monkeypatch, argv, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "m.yaml").write_text("d_model: 8\nd_model: 16\n")
    os.mkfifo(tmp_path / "fifo")
    monkeypatch.setattr(run, "project_all", lambda *a: pytest.fail("projected before refusing"))
    # the trace provider resolves every model before it traces any: a model it refuses leaves its cache empty
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path / "cache"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    line = one_error_line(capsys, run.main, argv)
    assert message.replace("{tmp}", str(tmp_path)).replace("{hw}", str(HWCONFIG_DIR)) in line, line
    assert not (tmp_path / "cache").exists(), "traced before refusing"


def write_trace(path: Path, stages: list[tuple[str, list[OpRecord]]]) -> Path:
    head = header({"w0": 1024})
    with TraceWriter(path, head) as writer:
        i = 0
        for s, (kind, ops) in enumerate(stages):
            for record in ops:
                record.i, record.stage, record.deps = i, s, record.deps or []
                writer.op(record)
                i += 1
            commits = [[0, s + 1, 5]] if kind in ("decode", "speed") else []
            writer.stage(StageRecord(s, kind, [[0, s, 1]] if kind != "encoder" else [], commits, []))
    return path


# 8: traces with nothing to project, or no decode time
def test_a_trace_of_nothing_is_refused_and_one_without_decode_time_has_no_per_token_figure(tmp_path, capsys):
    empty = write_trace(tmp_path / "empty.jsonl.gz", [])
    line = one_error_line(capsys, run.main, ["--trace", str(empty), "--launch", "eager"])
    assert f"trace {empty}: no op records, nothing to project" in line
    encoder = write_trace(tmp_path / "encoder.jsonl.gz", [("encoder", [op(0, 0, "aten.mul.Tensor", "enc", 10**6,
                                                                          act=10**6)]), ("prefill", [])])
    out = tmp_path / "r.json"
    assert run.main(["--trace", str(encoder), "--launch", "eager", "compiled", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("encoder"))
    assert row.split()[1] == "-" and "nan" not in table.lower() and "inf" not in table.lower()
    runs = __import__("json").loads(out.read_text())["runs"]
    assert all(r["s_per_token"] == 0 and r["tokens"] == 0 and r["total_s"] > 0 for r in runs)


# 7: shapes the kernel model cannot take
@pytest.mark.parametrize("field, shapes", [("in_shapes", [[5]]), ("in_shapes", [[]]), ("in_shapes", [[0]]),
                                           ("out_shapes", [[]])])
def test_shapes_the_kernel_model_cannot_take_name_the_op_and_field(tmp_path, capsys, field, shapes):
    name = "aten.scaled_dot_product_attention" if field == "in_shapes" else "aten.linear.default"
    record = op(0, 0, name, "blocks.0.attn", 10**6, kv=1024)
    setattr(record, field, shapes)
    record.srcs = [0] * len(record.in_shapes)  # one producer per input, as the reader checks
    path = write_trace(tmp_path / "t.jsonl.gz", [("decode", [op(0, 0, "aten.mul.Tensor", "x", 10), record])])
    line = one_error_line(capsys, run.main, ["--trace", str(path), "--launch", "eager"])
    # the reader refuses it, naming the op's line (1 header, 2 the mul); sim.trace.check_op refuses it by the same
    # rule in traces built in code (tests/test_hostile_inputs.py)
    assert f"trace {path}, line 3, field '{field}': expected a first shape of" in line, line


# 9: sim.fitting.validate
def test_validate_writes_strict_json_and_prints_no_nan(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert validate.main(["--hw", "hwconfigs/h200-calibrated.yaml", "--measured", MEASURED, "--json", str(out),
                          "--max-error", "30"]) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed.lower()
    text = out.read_text()
    report = __import__("json").loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert report["overall"]["end_to_end"]["pearson_r"] is None  # one pair: no correlation, and it says so


@pytest.mark.parametrize("argv, message", [
    (["--max-error", "nan"], "argument --max-error: expected a finite number in [0, inf], got 'nan'"),
    (["--max-error", "-1"], "argument --max-error: expected a finite number"),
    (["--json", "{tmp}"], "--json {tmp}: is a folder"),
])
def test_validate_flags(tmp_path, capsys, argv, message):
    argv = ["--hw", "hwconfigs/h200-calibrated.yaml", "--measured", MEASURED,
            *[a.replace("{tmp}", str(tmp_path)) for a in argv]]
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(capsys, validate.main, argv)


def test_validate_checks_the_measured_end_to_end_time(tmp_path, capsys):
    with gzip.open(MEASURED, "rb") as f:
        first, rest = f.readline(), f.read()
    head = __import__("json").loads(first)
    for e2e in (0.5, {}, "fast", None, {"median": 0}, {"median": float("nan")}, {"median": 1e308}):
        head["extra"]["end_to_end_s"] = e2e
        path = tmp_path / "m.jsonl.gz"
        path.write_bytes(gzip.compress(__import__("json").dumps(head).encode() + b"\n" + rest, compresslevel=1))
        line = one_error_line(capsys, validate.main, ["--hw", "hwconfigs/h200-calibrated.yaml", "--measured",
                                                      str(path)])
        # NaN is no JSON number: the trace reader refuses it, naming the line and where in the header it is
        expected = ("line 1, field 'extra.end_to_end_s.median': NaN is not a JSON number"
                    if isinstance(e2e, dict) and e2e.get("median") != e2e.get("median") else
                    "field 'extra.end_to_end_s': expected a mapping with a 'median' in seconds")
        assert f"{path}, {expected}" in line, line


def test_validate_and_calibrate_refuse_a_measured_trace_with_nothing_to_project(tmp_path, capsys):
    with gzip.open(MEASURED, "rb") as f:
        header = f.readline()
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(gzip.compress(header + b'{"type":"end","ops":0,"stages":0}\n'))
    for main, argv in [(validate.main, ["--hw", "hwconfigs/h200-calibrated.yaml"]),
                       (calibrate.main, ["--base", "hwconfigs/h200.yaml", "--device", "cuda",
                                         "--out", str(tmp_path / "c.yaml")])]:
        line = one_error_line(capsys, main, [*argv, "--measured", str(path)])
        assert f"trace {path}: no op records, nothing to project" in line, line


# 10: reference.demo and reference.capture.tracing
@pytest.mark.parametrize("argv, message", [
    (["--tokens", "0"], "argument --tokens: expected an integer >= 1, got '0'"),
    (["--tokens", "-1"], "argument --tokens: expected an integer >= 1, got '-1'"),
    (["--prompt-len", "0"], "argument --prompt-len: expected an integer >= 1, got '0'"),
    (["--prompt-len", "100000"], "--prompt-len 100000 and --tokens 48: tiny-4x3 holds 512 positions"),
    (["--preset", "bogus"], "--preset bogus: unknown model preset 'bogus'"),
    (["--tp", "0"], "argument --tp: expected an integer >= 1, got '0'"),
    (["--tp", "-2"], "argument --tp: expected an integer >= 1, got '-2'"),
    (["--preset", "llama2-7b", "--tp", "3"], "--tp 3: n_heads 32 is not divisible by 3 (llama2-7b)"),
    (["--preset", "tiny-t5-2x3", "--tp", "2"], "--tp 2: needs 2 processes: launch with torchrun --nproc-per-node 2"),
    (["--timeout-s", "0"], "argument --timeout-s: expected a finite number in [1, inf], got '0'"),
])
def test_demo_values(capsys, argv, message):
    assert message in one_error_line(capsys, demo.main, argv)


@pytest.mark.parametrize("argv, message", [
    (["--tp", "0"], "argument --tp: expected an integer >= 1, got '0'"),
    (["--tp", "3"], "--tp 3: n_heads 4 is not divisible by 3 (tiny-4x3)"),
    (["--tp", "2", "--device", "cuda"], "--tp 2 --device cuda: a tensor-parallel capture runs on the meta device"),
])
def test_tracing_refuses_a_degree_it_cannot_capture(tmp_path, capsys, argv, message):
    out = tmp_path / "t.jsonl.gz"
    line = one_error_line(capsys, tracing.main, ["--preset", "tiny-4x3", "--tokens", "4", "--out", str(out), *argv])
    assert message in line, line
    assert not os.listdir(tmp_path)


def test_tracing_without_flips_takes_the_profile_its_help_promises(tmp_path, capsys):
    out = tmp_path / "t.jsonl.gz"
    assert tracing.main(["--preset", "tiny-4x3", "--tokens", "4", "--out", str(out)]) == 0
    flips = read_trace(out).header.flips
    assert flips["source"].startswith("paper-fig4.yaml:t5-base-4x3") and flips["rates"] == [0.09, 0.04]
    line = one_error_line(capsys, tracing.main, ["--preset", "llama2-7b-8x4", "--tokens", "4", "--out", str(out)])
    assert "no flip profile for llama2-7b-8x4 (G = 4)" in line and "3 rates per exit" in line
    assert "--tokens" in one_error_line(capsys, tracing.main, ["--preset", "tiny-4x3", "--tokens", "0", "--out",
                                                               str(out)])


# sweeps: spec files and flags, refused before Ray starts
@pytest.mark.parametrize("spec, argv, message", [
    ("grid: {tokens: [64], tokens: [128]}", [], "field 'grid.tokens': given twice"),
    ("grid: {tokens: [0144]}", [], "field 'grid.tokens[0]': '0144': YAML 1.1 reads it in octal (100)"),
    (f"grid: {{hw: {bomb()}}}", [], "field 'grid.hw': stands for 597,871 values"),
    ("grid: {set: {peak.clock_hz: [.nan]}}", [], "field 'grid.set.peak.clock_hz': expected a finite number"),
    ("grid: {hw: [a100]}\ncost: {a100: .nan}", [], "field 'cost': expected a mapping of name to a finite number"),
    ("grid: {hw: [a100]}", ["--out", "{tmp}/file"], "--out {tmp}/file: exists and is not a folder"),
    ("grid: {hw: [a100]}", ["--set", "peak.clock_hz=.inf"], "field 'peak.clock_hz': expected a finite number"),
])
def test_sweep_specs_and_flags(tmp_path, capsys, spec, argv, message):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    argv = [str(path), *[a.replace("{tmp}", str(tmp_path)) for a in argv]]
    if "--out" not in argv:
        argv.append("--list")
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(capsys, sweep_cli.main, argv)


# 11: written files get the usual permissions, and nothing half-written or temporary is left
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.json", lambda tmp: tmp.write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode


def test_output_paths_that_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    assert output_problem(tmp_path) == "is a folder"
    assert output_problem(Path("/dev/null")).startswith("exists and is not a regular file")  # never replaced
    assert output_problem(tmp_path / "file" / "x.json") == f"{tmp_path / 'file'} is a file, not a folder"
    assert output_problem(tmp_path / "new" / "deeper" / "x.json") is None  # folders on the way are made
    assert output_problem(tmp_path / "file", folder=True) == "exists and is not a folder"


def test_checkpoints_and_logs_are_written_atomically(tmp_path, monkeypatch):
    log = tmp_path / "m.log.jsonl"
    log.write_text('{"step": 0}\n{"step": 5}\n{"step": 9, "lo')  # a line a kill cut short
    train._truncate_log(log, 6)
    assert log.read_text() == '{"step": 0}\n{"step": 5}\n'
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")

    def failing_save(tensors, filename, metadata):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(train, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train._write_safetensors({}, {}, target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.log.jsonl",
                                                                                            "m.safetensors"]


WRITER = """
import sys, time
from pathlib import Path
from sim.command import run_command
from sim.files import atomic_write

def write(tmp):
    tmp.write_text("half")
    print("writing", flush=True)
    time.sleep(60)

sys.exit(run_command(lambda: atomic_write(Path(sys.argv[1]), write), "python -m writer"))
"""


@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGTERM, 143, "terminated")])
def test_an_interrupted_command_says_one_line_and_leaves_no_temporary_file(tmp_path, signum, status, word):
    # SIGINT at its default in the child: a shell starts background jobs with it ignored, and Python then installs
    # no Ctrl-C handler (as for any program a user cannot Ctrl-C)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "out.json")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "writing\n"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status
    assert err.strip().splitlines() == [f"python -m writer: {word} ({'Ctrl-C' if status == 130 else 'SIGTERM'}); "
                                        "files being written were removed"]
    assert list(tmp_path.iterdir()) == []


def test_every_command_line_ends_through_run_command():
    mains = []
    for path in [*ROOT.glob("sim/**/*.py"), *ROOT.glob("reference/**/*.py")]:
        tree = ast.parse(path.read_text())
        blocks = [tree] if path.name == "__main__.py" else [
            node for node in tree.body if isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and getattr(node.test.left, "id", None) == "__name__"]
        for block in blocks:
            mains.append(path)
            assert "run_command" in ast.unparse(block), f"{path}: its __main__ does not go through run_command"
    assert len(mains) >= 15, mains  # every command line of the README is among them


def test_model_config_yaml_is_read_within_bounds(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "x"}) + f"d_model: {bomb()}\n")
    line = one_error_line(capsys, run.main, ["--model", str(path), "--launch", "eager"])
    assert f"--model {path}: model config field 'd_model[5]': stands for 597,871 values" in line


def test_measured_header_types_are_the_readers(tmp_path):
    # extra that is not a mapping is the trace reader's to refuse (issue 12 part 2); validate never crashes on it
    head = TraceHeader(model={"name": "m"}, decoder="sequential", dtype="bfloat16", batch=1, prompt_lens=[1],
                       max_new_tokens=1, device="cuda", device_name="x", torch_version="-", code_revision="-",
                       flips={"source": "none"}, weights={}, measured=True, command="-", extra=None)
    from sim.fitting.compiled import is_compiled_measurement
    from sim.trace import Trace

    assert not is_compiled_measurement(Trace(head, [], []))
    with pytest.raises(ValueError, match="header 'extra' has no 'end_to_end_s'"):
        validate.measured_end_to_end(Trace(head, [], []), tmp_path / "m.jsonl.gz")
