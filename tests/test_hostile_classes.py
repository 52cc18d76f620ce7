"""Issue 22, the mechanism behind each class of hostile input (scripts/fuzz.py has a generator per class; the
trace fields of class 5 are tests/test_trace_hostile.py's): work estimated and bounded before it starts, one plan
for a command line's outputs, one regular-file check for every reader, strict bounded JSON, microbenchmark
results of one format, Ray addresses and sweep specs checked when read, bounded seeds and derived names."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_hostile_cli import one_error_line

from reference import demo
from reference.capture import estimate, provider
from reference.config import MAX_PARAMETERS, PRESETS, SIZES, ConfigError, ModelConfig, get_preset
from reference.hfconfig import HF_FIELDS, from_hf_dict
from sim import host, run
from sim.command import MAX_SEED, check_outputs, random_seed
from sim.files import atomic_write, output_problem, same_file, staged_writes
from sim.fitting import calibrate, validate
from sim.fitting.microbench import MicrobenchError, check_microbench, load_microbench
from sim.inputs import InputError, load_json, open_regular, read_file
from sim.sweep import cli as sweep_cli
from sim.sweep import runner
from sim.sweep.spec import MAX_POINTS, SpecError, load_spec
from sim.trace import MAX_EXECUTED, read_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = str(ROOT / "data" / "traces" / "t5-base-4x3.speed.bf16.b1.t128.jsonl.gz")
CPU_MB = ROOT / "data" / "calibration" / "cpu.microbench.json"
HF = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
      "num_hidden_layers": 2, "vocab_size": 256}


# ------------------------------------------------------------------------------ 1. work beyond any real run

@pytest.mark.parametrize("field", sorted(SIZES))
def test_a_config_size_beyond_its_bound_is_refused_by_the_config_naming_figure_and_limit(field):
    least, most, _ = SIZES[field]
    cfg = dataclasses.asdict(get_preset("tiny-4x3"))
    with pytest.raises(ConfigError) as info:
        ModelConfig(**{**cfg, field: most * 4})
    assert info.value.field == field and f"{most:,}" in str(info.value) and str(most * 4) in str(info.value)
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**{**cfg, field: least - 1})


def test_the_whole_models_size_and_depth_are_bounded_too():
    cfg = get_preset("tiny-4x3")
    with pytest.raises(ConfigError, match=r"field 'parameters': .* parameters .* more than 2.2e\+12"):
        cfg.replace(d_model=65536, n_heads=512, n_kv_heads=512, d_ff=262144, n_unique_layers=4096, n_groups=1)
    with pytest.raises(ConfigError, match="field 'n_groups': depth Nd x G = 4096 x 2"):
        cfg.replace(n_unique_layers=4096, n_groups=2)
    assert all(c.parameters <= MAX_PARAMETERS for c in PRESETS.values())


def test_a_config_json_size_is_refused_naming_the_users_field():
    for hf_field, value in (("hidden_size", 4_096_000_000), ("num_hidden_layers", 3_200_000_000),
                            ("vocab_size", 2**63), ("max_position_embeddings", 2**40)):
        with pytest.raises(ValueError) as info:
            from_hf_dict({**HF, hf_field: value}, "x/config.json")
        assert f"model config x/config.json, field '{hf_field}': expected an integer in 1.." in str(info.value)
    assert set(HF_FIELDS) >= set(SIZES) - {"n_groups", "n_encoder_layers"}


def test_the_parameter_count_is_the_models():
    import torch  # noqa: F401 (the reference decoder)

    from reference.model import SharedDecoder

    for name in ("tiny-t5-2x3", "llama-1b", "t5-base-4x3"):
        cfg = PRESETS[name]
        assert cfg.parameters == sum(p.numel() for p in SharedDecoder(cfg, device="meta").parameters()), name


def test_a_trace_request_is_estimated_before_tracing():
    tiny, llama = get_preset("tiny-4x3"), get_preset("llama2-7b")
    with pytest.raises(ValueError, match=r"--tokens 600 with tiny-4x3: a 16-token prompt \+ 600 tokens - 1 = 615 "
                                         r"positions, more than the model's 512"):
        estimate.check_request(tiny, "sequential", 600, 1, 16, 128)
    deep = llama.replace(n_unique_layers=4096, max_seq_len=1 << 20)
    with pytest.raises(ValueError, match=rf"at least [\d,]+ ops, more than a trace holds \({MAX_EXECUTED:,}"):
        estimate.check_request(deep, "sequential", 4000, 1, 16, 128)
    with pytest.raises(ValueError, match=r"--batch 65536 with tiny-4x3: tracing would record at least 12,582,912 "
                                         r"distinct ops \(each sequence's own prefill stage\), about 3,146 s"):
        estimate.check_request(tiny, "sequential", 2, 65536, 16, 128)
    wide = get_preset("t5-base-4x3").replace(d_model=1 << 17, n_heads=1024, n_kv_heads=1024, d_ff=1 << 19,
                                             n_encoder_layers=1)
    with pytest.raises(ValueError, match=r"--batch 65536 with .* FLOPs, more than one op of a trace holds"):
        estimate.check_request(wide, "sequential", 4, 65536, 16, 256)  # encoder inputs of 256 tokens
    estimate.check_request(llama, "speed", 128, 8, 16, 128)  # a real run passes


TRACES = [*sorted((ROOT / "data" / "traces").glob("*.jsonl.gz")),
          *sorted((ROOT / "data" / "measured" / "h200").glob("*.b8.*.jsonl.gz"))]  # batches of 8


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_the_estimate_is_a_lower_bound_of_what_a_trace_executes_and_records(path):
    trace = read_trace(path)
    model = {k: v for k, v in trace.header.model.items() if k in {f.name for f in dataclasses.fields(ModelConfig)}}
    h = trace.header
    e = estimate.Estimate.of(ModelConfig(**model), h.decoder, h.max_new_tokens, h.batch, max(h.prompt_lens), 128)
    assert e.executed_ops <= trace.executed and e.distinct_ops <= len(trace.distinct)


def test_host_memory_counts_the_address_space_limit():
    code = ("import resource; from sim import host; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "print(host.memory_bytes())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout) < 2 << 30
    with pytest.raises(ValueError, match=r"needs about 1e\+12 GB of host memory, more than 50% of the [\d.]+ GB"):
        host.check_room("a test", 1e21, 0.5)


@pytest.mark.parametrize("argv, message", [
    (["--batch", "1000000000"], "argument --batch: expected an integer in [1, 65536]"),
    (["--tokens", "9223372036854775808"], "argument --tokens: expected an integer in [1, 1048576]"),
])
def test_run_counts_are_bounded(capsys, argv, message):
    assert message in one_error_line(capsys, run.main, argv)


def test_a_sweep_of_too_many_points_is_refused_before_any_point_is_made(tmp_path, monkeypatch):
    spec = tmp_path / "s.yaml"
    axis = lambda n: "[" + ", ".join(map(str, range(1, n + 1))) + "]"  # noqa: E731
    spec.write_text(f"grid:\n  batch: {axis(1000)}\n  tokens: {axis(1000)}\n")
    monkeypatch.setattr("sim.sweep.spec._point", lambda axes: pytest.fail("a point was made"))
    with pytest.raises(SpecError, match=rf"field 'grid': 2,000,000 points \(2 decoder x 1,000 batch x 1,000 tokens\), "
                                        rf"more than {MAX_POINTS:,}"):
        load_spec(spec)
    spec.write_text("points:\n" + f"  - {{batch: {axis(400)}, tokens: {axis(200)}}}\n" * 2)
    with pytest.raises(SpecError, match=r"field 'points': 320,000 points \(2 decoder x 400 batch x 200 tokens in the"):
        load_spec(spec)


def test_workers_beyond_the_machine_or_the_cluster_are_refused():
    too_many = runner.LOCAL_WORKERS_PER_CPU * (os.cpu_count() or 1) + 1
    with pytest.raises(ValueError, match=f"--workers {too_many}: more than {runner.LOCAL_WORKERS_PER_CPU} per core"):
        runner.start_ray(None, too_many)  # before Ray starts


def test_the_demo_refuses_a_model_beyond_the_hosts_memory(capsys, monkeypatch):
    monkeypatch.setattr(host, "memory_bytes", lambda: 16e9)
    line = one_error_line(capsys, demo.main, ["--preset", "llama2-7b"])
    assert ("--preset llama2-7b: llama2-7b in float64 (6,607,343,616 parameters) needs about 53 GB of host memory, "
            "more than 50% of the 16 GB this process may still use; give --force to try anyway") in line
    args, cfg = demo.parse(["--preset", "llama2-7b", "--force"])  # --force: the user's call
    assert args.force and cfg.name == "llama2-7b"
    assert demo.host_bytes(cfg, args) > 50e9  # 6.6e9 float64 parameters, and the KV cache and rotary tables


# ------------------------------------------------------------------------------------------------ 2. outputs

def test_same_file_sees_through_dots_links_and_hard_links(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("{}")
    (tmp_path / "link.json").symlink_to(out)
    os.link(out, tmp_path / "hard.json")
    (tmp_path / "dir").symlink_to(tmp_path)
    for other in (tmp_path / "." / "out.json", tmp_path / "sub" / ".." / "out.json", tmp_path / "link.json",
                  tmp_path / "hard.json", tmp_path / "dir" / "out.json"):
        assert same_file(out, other), other
    assert not same_file(out, tmp_path / "OUT.json")
    (tmp_path / "absent-link").symlink_to(tmp_path / "absent")
    assert same_file(tmp_path / "absent", tmp_path / "absent-link")  # neither exists yet


def test_the_output_plan_refuses_two_outputs_of_one_file_and_an_output_over_an_input(tmp_path):
    import argparse

    parser = argparse.ArgumentParser(prog="p")
    out, hw = tmp_path / "out.json", tmp_path / "hw.yaml"
    hw.write_text("x")

    def error(*args, **kwargs) -> str:
        with pytest.raises(SystemExit):
            check_outputs(parser, *args, **kwargs)
        return ""

    check_outputs(parser, {"--json": out, "--plot": tmp_path / "p.png"}, inputs={"--hw": [hw]})
    for outputs, inputs in (({"--json": out, "--perfetto": tmp_path / "." / "out.json"}, {}),
                            ({"--json": hw}, {"--hw": [hw]}),
                            ({"--out": tmp_path}, {"the spec": [tmp_path / "rows.csv"]})):
        error(outputs, folders={"--out": ["rows.csv"]}, inputs=inputs)


@pytest.mark.parametrize("argv, message", [
    (["--json", "{tmp}/x.json", "--perfetto", "{tmp}/x.json"],
     "--perfetto {tmp}/x.json: the same file as --json {tmp}/x.json; one would overwrite the other"),
    (["--hw", "{tmp}/hw.yaml", "--json", "{tmp}/hw.yaml"],
     "--json {tmp}/hw.yaml: the file --hw {tmp}/hw.yaml reads; the run would overwrite its own input"),
    (["--json", "/proc/version"], "--json /proc/version: no file can be made in /proc"),
])
def test_run_refuses_an_output_plan_before_any_work(tmp_path, capsys, argv, message):
    (tmp_path / "hw.yaml").write_text((ROOT / "hwconfigs" / "a100.yaml").read_text())
    before = sorted(tmp_path.iterdir())
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    line = one_error_line(capsys, run.main, ["--trace", TRACE, "--launch", "eager", *argv])
    assert message.replace("{tmp}", str(tmp_path)) in line
    assert sorted(tmp_path.iterdir()) == before and (tmp_path / "hw.yaml").read_text().startswith("#")


def test_a_failed_run_replaces_nothing(tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text("old")

    def fail(tmp: Path) -> None:
        raise OSError("the disk is full")

    with pytest.raises(OSError), staged_writes():
        atomic_write(first, lambda tmp: tmp.write_text("new"))
        atomic_write(second, fail)
    assert first.read_text() == "old" and not second.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["first.json"]  # no temporary left
    with staged_writes():
        atomic_write(first, lambda tmp: tmp.write_text("new"))
        assert first.read_text() == "old"  # nothing in place before every output is written
    assert first.read_text() == "new"


def test_a_name_a_folder_takes_has_a_temporary_it_takes_too(tmp_path):
    long = tmp_path / ("n" * 250)
    assert output_problem(long) is None
    atomic_write(long, lambda tmp: tmp.write_text("x"))
    assert long.read_text() == "x"
    assert output_problem(tmp_path / ("n" * 256)) == "File name too long"


def test_calibrate_refuses_an_output_over_its_base(tmp_path, capsys):
    base = tmp_path / "hw.yaml"
    base.write_text((ROOT / "hwconfigs" / "cpu-xeon-8480.yaml").read_text())
    line = one_error_line(capsys, calibrate.main, ["--device", "cpu", "--base", str(base), "--microbench",
                                                   str(CPU_MB), "--out", str(base)])
    assert f"--out {base}: the file --base {base} reads" in line
    assert base.read_text() == (ROOT / "hwconfigs" / "cpu-xeon-8480.yaml").read_text()


def test_a_sweep_refuses_a_spec_inside_its_output(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    spec = tmp_path / "o" / "rows.csv"
    spec.write_text("grid: {hw: [a100]}\n")
    line = one_error_line(capsys, sweep_cli.main, [str(spec), "--out", str(tmp_path / "o")])
    assert f"--out {tmp_path / 'o' / 'rows.csv'}: the file the spec {spec} reads" in line


# --------------------------------------------------------------------------- 3. inputs that are not files

@pytest.mark.parametrize("kind", ["fifo", "socket", "folder", "/dev/zero", "/dev/null"])
def test_every_reader_opens_regular_files_only_and_never_blocks(tmp_path, kind):
    path = tmp_path / "in"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "folder":
        path.mkdir()
    else:
        path = Path(kind)
    done = threading.Event()

    def read() -> None:
        with pytest.raises(InputError, match=r"not a regular file|a folder, not a file"):
            open_regular(path)
        done.set()

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set(), f"{kind}: blocked"
    with pytest.raises(InputError):
        read_file(path)


def test_a_trace_model_or_microbenchmark_that_is_a_pipe_is_refused_unread(tmp_path, capsys):
    for name in ("t.jsonl.gz", "config.json", "m.yaml", "mb.json"):
        os.mkfifo(tmp_path / name)
    assert "not a regular file" in one_error_line(capsys, run.main, ["--trace", str(tmp_path / "t.jsonl.gz")])
    for model in ("config.json", "m.yaml"):
        with pytest.raises(ValueError, match="not a regular file"):
            provider.model_config(str(tmp_path / model))
    with pytest.raises(MicrobenchError, match="not a regular file"):
        load_microbench(tmp_path / "mb.json")


# ------------------------------------------------------------------------------------------ 4. model configs

@pytest.mark.parametrize("text, field, problem", [
    ('{"a": 1, "a": 2}', "a", "given twice"),
    ('{"x": {"y": [1, NaN]}}', "x.y[1]", "NaN is not a JSON number"),
    ('{"a": -Infinity}', "a", "-Infinity is not a JSON number"),
    ('{"a": 1e999}', "a", "beyond a double's range"),
    ('{"a": ' + "1" * 5000 + "}", "a", "an integer of 5000 digits (at most 30)"),
    ('{"r": ' + "[" * 100_000 + "]" * 100_000 + "}", "r", "nested deeper than 32 levels"),
    ('{"r": ' + "[" * 100 + "]" * 100 + "}", "r[0]", "nested deeper than 32 levels"),
])
def test_json_is_read_strictly_and_within_bounds_naming_the_field(text, field, problem):
    with pytest.raises(InputError) as info:
        load_json(text)
    assert info.value.field == field and problem in info.value.problem


@pytest.mark.parametrize("changes, field", [
    ({"rms_norm_eps": 1e300}, "rms_norm_eps"), ({"rms_norm_eps": 0.5}, "rms_norm_eps"),
    ({"rms_norm_eps": 1e-300}, "rms_norm_eps"), ({"rope_theta": 1e300}, "rope_theta"),
    ({"num_hidden_layers": -1}, "num_hidden_layers"), ({"num_key_value_heads": 0}, "num_key_value_heads"),
    ({"eos_token_id": -1}, "eos_token_id"), ({"model_type": "x" * 100_000}, "model_type"),
    ({"hidden_act": "x" * 100_000}, "hidden_act"), ({"architectures": ["X"] * 100_000}, "architectures"),
])
def test_a_config_json_is_refused_naming_the_file_and_field_with_values_cut_short(tmp_path, changes, field):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**HF, **changes}))
    with pytest.raises(ValueError) as info:
        provider.model_config(str(path))
    message = str(info.value)
    assert f"model config {path}, field '{field}'" in message and len(message) < 400, message


def test_a_config_json_with_a_key_twice_or_nan_names_the_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 64, ' + json.dumps(HF)[1:])
    with pytest.raises(ValueError, match=f"--model {path}: model config {path}, field 'hidden_size': given twice"):
        provider.model_config(str(path))
    path.write_text(json.dumps(HF)[:-1] + ', "rms_norm_eps": NaN}')
    with pytest.raises(ValueError, match="field 'rms_norm_eps': NaN is not a JSON number"):
        provider.model_config(str(path))


def test_a_model_yaml_field_unknown_or_long_is_cut_short(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in dataclasses.asdict(get_preset("tiny-4x3")).items())
                    + "\n" + "x" * 1000 + ": 1\n")
    with pytest.raises(ValueError) as info:
        provider.model_config(str(path))
    assert "unknown; ModelConfig's fields" in str(info.value) and len(str(info.value)) < 600


# ------------------------------------------------------------------------- 6. measurements, microbenchmarks

def microbench(**changes: object) -> dict:
    return {**json.loads(CPU_MB.read_text()), **changes}


@pytest.mark.parametrize("changes, field, problem", [
    ({"copyy": []}, "copyy", "unknown; results hold"),
    ({"copy": {}}, "copy", "expected a non-empty list of rows"),
    ({"copy": [{"bytes": 1, "bytes_moved": 2}]}, "copy[0].seconds", "missing"),
    ({"copy": [{"bytes": 1, "bytes_moved": 2, "seconds": 0}]}, "copy[0].seconds", "expected seconds in"),
    ({"gemm": [{"m": 1, "n": 1, "k": 1, "dtype": "float7", "seconds": 1e-6}]}, "gemm[0].dtype", "expected one of"),
    ({"gemm": [{"m": 1, "n": 1, "k": 1, "dtype": "float32", "seconds": 1e-6, "bogus": 1}]}, "gemm[0].bogus",
     "unknown field"),
    ({"kernel_min_s": -1}, "kernel_min_s", "expected seconds in"),
    ({"device": "tpu"}, "device", "expected one of cpu, cuda"),
])
def test_microbenchmark_results_have_one_format(changes, field, problem):
    with pytest.raises(MicrobenchError) as info:
        check_microbench(microbench(**changes), "results")
    assert info.value.field == field and problem in info.value.problem, str(info.value)
    check_microbench(microbench(), "results")
    with pytest.raises(MicrobenchError, match="field 'launch_eager_s': missing: the resource benchmarks come "):
        check_microbench({k: v for k, v in microbench().items() if k != "launch_eager_s"}, "results")


def test_validate_and_calibrate_read_microbenchmarks_by_that_format(tmp_path, capsys):
    path = tmp_path / "mb.json"
    path.write_text(json.dumps(microbench(copyy=[])))
    hw = str(ROOT / "hwconfigs" / "h200-calibrated.yaml")
    assert f"--microbench {path}, field 'copyy': unknown" in one_error_line(capsys, validate.main,
                                                                          ["--hw", hw, "--microbench", str(path)])
    line = one_error_line(capsys, validate.main, ["--hw", hw, "--microbench", str(CPU_MB)])
    assert "measured on cpu (cpu (1 threads)) but hwconfig" in line
    line = one_error_line(capsys, calibrate.main, ["--device", "cuda", "--base", str(ROOT / "hwconfigs" / "h200.yaml"),
                                                   "--microbench", str(CPU_MB), "--out", str(tmp_path / "o.yaml")])
    assert "--device cuda: --microbench" in line and "was measured on cpu" in line


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here")
def test_microbenchmarks_of_cuda_without_a_gpu_are_one_line():
    requests = provider.checked_requests("microbench", [{"device": "cuda"}])
    with pytest.raises(ValueError, match=r"--device cuda: torch .* sees no CUDA device here"):
        provider.microbench(requests)


@pytest.mark.parametrize("change, field", [
    (lambda stages, ops: [dataclasses.replace(s, wall_s=None) for s in stages], "wall_s"),
    (lambda stages, ops: [dataclasses.replace(s, wall_s=0.0) if s.stage == 1 else s for s in stages], "wall_s"),
    (None, "duration_s"),
])
def test_validate_refuses_a_measurement_with_times_missing_or_zero(change, field):
    trace = read_trace(ROOT / "data" / "measured" / "h200" / "t5-base-4.sequential.bf16.b1.t128.jsonl.gz")
    if change is not None:
        trace.stages = change(trace.stages, trace.ops)
    else:
        for op in trace.ops:
            op.duration_s = 0.0
    with pytest.raises(ValueError, match=rf"field '{field}'.*not a measurement"):
        validate.check_measured_times(trace, Path("m.jsonl.gz"), compiled=False)


# -------------------------------------------------------------------------------- 7. sweeps and Ray addresses

@pytest.mark.parametrize("address", ["garbage", "", " ", "ray://", "127.0.0.1:0", "127.0.0.1:99999", "a:b:c",
                                     "http://127.0.0.1:8265", "127.0.0.1", "x" * 10_000, "127.0.0.1:6379\n"])
def test_a_malformed_ray_address_is_one_line(address):
    with pytest.raises(ValueError) as info:
        runner.check_address(address)
    assert str(info.value).startswith("--ray-address") and "expected auto" in str(info.value)
    assert len(str(info.value)) < 400


def test_well_formed_ray_addresses(monkeypatch):
    assert runner.check_address("auto") is None
    assert runner.check_address("head-1.example:6379") == ("head-1.example", 6379)
    assert runner.check_address("[::1]:6379") == ("::1", 6379)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # no Ray Client
    with pytest.raises(ValueError, match=r"ray://h:10001: the ray:// form .* pip install 'ray\[client\]'"):
        runner.check_address("ray://h:10001")


def test_an_address_where_no_cluster_answers_is_refused_at_once():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ValueError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        runner.start_ray(f"127.0.0.1:{port}", None)


@pytest.mark.parametrize("factor", ["x", "x.", "x..", "x1.2.3", "x-1", "x0", "x1e999", "x1e-400", "X2", "2x"])
def test_a_malformed_x_factor_is_refused_when_the_spec_is_read(tmp_path, factor):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"grid:\n  set:\n    peak.clock_hz: [x1, {json.dumps(factor)}]\n")
    with pytest.raises(SpecError, match=r"field 'grid\.set\.peak\.clock_hz'"):
        load_spec(spec)


@pytest.mark.parametrize("heatmap, message", [
    ("{x: bogus, y: batch}", "plots.heatmap bogus': not an axis the spec sweeps"),
    ("{x: batch, y: streams}", "plots.heatmap streams': not an axis the spec sweeps"),
    ("{x: batch, y: batch}", "x and y are the same axis"),
    ("{x: batch, y: decoder}", "not an axis the spec sweeps"),
    ("{x: batch, y: tokens, where: {dtype: float16}}", "float16' is not a value the axis takes"),
    ("{x: batch, y: tokens, where: {batch: 1}}", "plotted, so it cannot be fixed by where too"),
    ("{x: batch}", "expected {x: AXIS, y: AXIS"),
])
def test_a_plot_on_an_axis_the_grid_lacks_is_refused_when_the_spec_is_read(tmp_path, heatmap, message):
    spec = tmp_path / "s.yaml"
    grid = "grid: {batch: [1, 2], tokens: [64, 128], dtype: [bfloat16, float32]}\n"
    spec.write_text(grid + f"plots:\n  heatmap: {heatmap}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert message in str(info.value).replace('"', "'"), str(info.value)
    spec.write_text(grid + "plots:\n  scatter: {x: batch}\n")
    with pytest.raises(SpecError, match=r"field 'plots.scatter': expected a mapping of plots"):
        load_spec(spec)
    spec.write_text(grid + "plots:\n  heatmap: {x: batch, y: tokens, where: {dtype: float32}}\n")
    assert load_spec(spec).heatmap["where"] == {"dtype": "float32"}


# ------------------------------------------------------------------------------------------------- 8. flags

def test_seeds_are_at_most_64_bits():
    parse = random_seed()
    assert parse(str(MAX_SEED)) == 2**64 - 1
    for text in (str(2**64), "-1", "9" * 5000):
        with pytest.raises(Exception, match="expected an integer"):
            parse(text)


@pytest.mark.parametrize("name", ["n" * 5000, "../../../../tmp/escaped", "a/b", "a\u00e9b", ".."])
def test_a_cache_files_name_stays_in_the_cache_and_bounded(tmp_path, monkeypatch, name):
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path))
    cfg = get_preset("tiny-4x3").replace(name=name)
    request = provider.checked_requests("trace", [{"model": "tiny-4x3", "decoder": "speed", "tokens": 4}])[0]
    path = provider.cached_trace(cfg, request, ",".join(["0.01"] * 10_000))
    assert path.parent == tmp_path / "traces" and len(path.name) < 200 and "/" not in path.name
    assert provider.cached_trace(cfg, request, "0.1,0.2") != provider.cached_trace(cfg, request, "0.1,0.3")


def test_names_with_control_characters_are_refused():
    with pytest.raises(ConfigError, match="field 'name': expected a name"):
        get_preset("tiny-4x3").replace(name="a\nb")


def test_many_flip_rates_are_one_short_line(capsys):
    line = one_error_line(capsys, run.main, ["--model", "tiny-4x3", "--decoder", "speed", "--launch", "eager",
                                             "--tokens", "4", "--flips", ",".join(["0.01"] * 10_000)])
    assert "--flips" in line and "gives 10000 rates" in line and len(line) < 400


def test_the_address_space_limit_is_real():
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    assert host.memory_bytes() is None or host.memory_bytes() > 0
    assert soft == resource.RLIM_INFINITY or host.address_space_room() <= soft


def test_ray_is_not_joined_where_the_address_space_cannot_map_its_object_store(monkeypatch):
    """Under a `ulimit -v` below a Ray node's default object store Ray aborts in C++ (shared_memory.cc: mmap
    failed) on joining; the sweep refuses first, in one line naming the flag and the limit."""
    monkeypatch.setattr(runner, "address_space_room", lambda: 4 << 30)
    monkeypatch.setattr(runner, "physical_bytes", lambda: 64 << 30)
    with pytest.raises(ValueError, match=r"--ray-address auto: this process may map only 4.29 GB more \(ulimit -v\)"):
        runner.check_address_space("--ray-address auto")
    monkeypatch.setattr(runner, "address_space_room", lambda: None)  # unlimited
    runner.check_address_space("--ray-address auto")


def test_a_refused_token_says_how_to_join_a_cluster_that_authenticates():
    import ray

    line = runner._join_error(ray, ray.exceptions.AuthenticationError("token mismatch"))
    assert "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN" in line
    assert runner._join_error(ray, ConnectionError("no\n   cluster here")) == "no cluster here"
