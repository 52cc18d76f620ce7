"""The trace provider, a command (reference.capture.provider) run by sim.provider: requests and answers, the
error line crossing as the caller's own, a provider without torch or that cannot start, its stderr copied (a
pseudo-terminal when ours is a terminal), and Ctrl-C or SIGTERM while it traces: one line, no traceback, no
provider left running."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pty
import shlex
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from test_hostile_cli import one_error_line

from reference.capture import provider as reference_provider
from reference.config import get_preset
from sim import provider, run

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH_TRACER = shlex.join([sys.executable, "-c", "import runpy, sys; sys.modules['torch'] = None; "
                              "runpy.run_module('reference.capture.provider', run_name='__main__')"])


def describe(**request) -> dict:
    return reference_provider.describe(reference_provider.checked_requests("describe", [request]))[0]


def test_describe_gives_the_model_its_fields_digest_and_flips():
    cfg = get_preset("tiny-4x3")
    answer = describe(model="tiny-4x3", decoder="speed", flip_rate=0.1)
    assert answer == {"name": "tiny-4x3", "config": dataclasses.asdict(cfg),
                      "digest": reference_provider.config_digest(cfg), "quant": None, "flips": "0.1,0.1"}
    assert describe(model="tiny-4x3", quant="int4-g32")["quant"] == "int4-g32"
    assert describe(model="tiny-4x3", decoder="sequential", flips="0.1")["flips"] is None  # reads no exit
    assert describe(model="tiny-4x3", decoder="speed")["flips"] is None  # the model's profile
    assert describe(model=dataclasses.asdict(cfg))["config"] == dataclasses.asdict(cfg)  # fields, as answered
    assert describe(model="tiny-4x3", share="2x6")["name"] == "tiny-2x6"


@pytest.mark.parametrize("request_, field, message", [
    ({"model": "bogus", "flag": "model"}, "model", "model bogus: unknown model preset 'bogus'"),
    ({"model": "tiny-4x3", "share": "5x5"}, "model", "--share 5x5: 5x5 shares 25 layers, but tiny-4x3 has 12"),
    ({"model": "tiny-4x3", "decoder": "speed", "flips": "0.1"}, "flips",
     "'0.1' gives 1 rates, but tiny-4x3 has G = 3: it needs 2 (or use flip_rate)"),
    ({"model": "tiny-4x3", "decoder": "speed", "flips": "nope"}, "flips", "no profile 'nope'"),
    ({"model": "tiny-4x3", "tp": 3}, "tp", "--tp 3: n_heads 4 is not divisible by 3 (tiny-4x3)"),
    ({"model": "tiny-4x3", "quant": "int4-g128"}, "quant", "--quant int4-g128: d_model 64 (the input features of "
     "wq, wk, wv, wo, gate and up) is not a multiple of the group size 128 (tiny-4x3)"),
    ({"model": "tiny-4x3", "quant": "int4-g64", "tp": 2}, "quant", "--quant int4-g64 with --tp 2: d_model 64 / 2 = "
     "32 is not a multiple of the group size 64"),
    ({"model": "tiny-t5-2x3", "tp": 8}, "tp", "--tp 8: n_heads 4 is not divisible by 8 (self-, cross- and encoder "
     "attention of tiny-t5-2x3)"),
])
def test_describe_answers_what_it_cannot_describe_with_the_field_at_fault(request_, field, message):
    answer = describe(**request_)
    assert answer["field"] == field and message in answer["error"], answer


def test_requests_are_checked_against_the_ops_schema():
    for raw, message in [
        ([{"model": "tiny-4x3", "decoder": "speed", "tokens": 4, "sparsity": "2:4"}],
         "trace request 0: unknown key 'sparsity': this provider cannot serve it (keys: model, share, flag, decoder"),
        ([{"model": "tiny-4x3", "decoder": "speed", "tokens": 4, "quant": "int3"}], "'quant' must be one of int8, "
         "int4-g32, int4-g64, int4-g128, or null, got 'int3'"),
        ([{"model": "tiny-4x3", "decoder": "speed", "tokens": 4, "tp": 0}], "'tp' must be an integer >= 1 (the "
         "tensor-parallel degree), got 0"),
        ([{"model": "tiny-4x3", "decoder": "speed"}], "trace request 0: key 'tokens' is required"),
        ([{"model": "tiny-4x3", "decoder": "fast", "tokens": 4}], "trace request 0: 'decoder' must be speed or "
         "sequential, got 'fast'"),
        ([{"model": "tiny-4x3", "decoder": "speed", "tokens": True}],
         "'tokens' must be an integer in 1..1048576, got True"),
        ({"model": "tiny-4x3"}, "trace: expected a JSON list of requests"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            reference_provider.checked_requests("trace", raw)


def test_an_error_line_crosses_as_the_callers_own_and_is_not_shown_twice(capsys):
    with pytest.raises(provider.ProviderError) as error:
        provider.request("trace", [{"model": "tiny-4x3", "decoder": "speed", "tokens": 4, "sparsity": "2:4"}])
    assert str(error.value).startswith("trace request 0: unknown key 'sparsity'")
    assert capsys.readouterr().err == ""  # held back: the caller reports it
    [answer] = provider.request("describe", [{"model": "tiny-4x3"}])
    assert answer["name"] == "tiny-4x3" and answer["config"] == dataclasses.asdict(get_preset("tiny-4x3"))


def test_a_cached_trace_is_found_without_torch_and_a_missing_one_needs_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path))
    asked = [{"model": "tiny-4x3", "decoder": "sequential", "tokens": 3}]
    monkeypatch.setenv(provider.TRACER_ENV, NO_TORCH_TRACER)
    with pytest.raises(provider.ProviderError, match=r"^tracing 'tiny-4x3' on demand needs torch and the reference "
                       r"decoder \(.*\); replay a recorded trace with --trace FILE instead$"):
        provider.trace_files(asked)
    line = one_error_line(capsys, run.main, ["--model", "tiny-4x3", "--tokens", "3", "--launch", "eager"])
    assert "error: tracing 'tiny-4x3' on demand needs torch" in line
    monkeypatch.delenv(provider.TRACER_ENV)
    [(name, path, capture_s)] = provider.trace_files(asked)
    assert name == "tiny-4x3" and path.parent == tmp_path / "traces" and path.is_file() and capture_s > 0
    assert "tracing tiny-4x3 (sequential, 3 tokens, batch 1) on the meta device ..." in capsys.readouterr().err
    monkeypatch.setenv(provider.TRACER_ENV, NO_TORCH_TRACER)
    assert provider.trace_files(asked) == [(name, path, 0.0)]  # found, not traced


@pytest.mark.parametrize("tracer, message", [
    ("/nonexistent/tracer --flag", "the trace provider `/nonexistent/tracer --flag trace` (set by SPEED_SIM_TRACER) "
     "cannot be started: No such file or directory"),
    (shlex.join([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]),
     "failed with exit status 3 (its output is above)"),
    (shlex.join([sys.executable, "-c", "print('not json')"]), "answered no JSON on stdout"),
    (shlex.join([sys.executable, "-c", "print('[{}]')"]),
     "answered trace request 0 without a 'name', a 'path' and a 'capture_s'"),
])
def test_a_provider_that_cannot_answer_is_one_clear_line(monkeypatch, capsys, tracer, message):
    monkeypatch.setenv(provider.TRACER_ENV, tracer)
    with pytest.raises(provider.ProviderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        provider.trace_files([{"model": "tiny-4x3", "decoder": "speed", "tokens": 4}])
    assert capsys.readouterr().err == ("boom\n" if "boom" in tracer else "")


def test_the_relay_copies_everything_but_a_final_error_line_however_it_is_cut(capsys):
    stream = b"tracing x ...\n\rbar 1/3\rbar 2/3\r\nerror: not the last line\nerr\nerror\xc3\xa9 ok\nerror: the one\n"
    shown = stream[:-len(b"error: the one\n")].decode()
    for cut in range(len(stream) + 1):
        for cut2 in (cut, (cut + len(stream)) // 2):
            relay = provider._Relay()
            for piece in (stream[:cut], stream[cut:cut2], stream[cut2:]):
                relay.feed(piece)
            assert relay.finish() == "the one"
            assert capsys.readouterr().err == shown, (cut, cut2)
    relay = provider._Relay()
    relay.feed(b"error: a line but more follows")
    relay.feed(b"\nthe end")
    assert relay.finish() is None and capsys.readouterr().err == "error: a line but more follows\nthe end"


def test_on_a_terminal_the_provider_writes_to_a_terminal_of_the_same_size(monkeypatch):
    """Its progress bars (tqdm draws only on a terminal) reach ours as they would be drawn here."""
    main, other = pty.openpty()
    fcntl.ioctl(other, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 97, 0, 0))
    attrs = termios.tcgetattr(other)
    attrs[1] &= ~termios.OPOST  # what reaches `main` is what the relay wrote
    termios.tcsetattr(other, termios.TCSANOW, attrs)
    probe = ("import os, sys; sys.stdin.read(); "
             "print('tty', sys.stderr.isatty(), os.get_terminal_size(2).columns, end='\\n\\r', file=sys.stderr); "
             "print('[]')")
    monkeypatch.setenv(provider.TRACER_ENV, shlex.join([sys.executable, "-c", probe]))
    try:
        with open(other, "w") as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            assert provider.request("describe", []) == []
            terminal.flush()
            assert os.read(main, 1000) == b"tty True 97\n\r"  # bytes as written: no newline translation
    finally:
        os.close(main)


def _start_tracing(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """sim.run tracing a long run on demand, in a process group of its own, once the provider is tracing: the
    process and the provider's pid."""
    env = {**os.environ, "SPEED_SIM_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sim.run", "--model", "llama2-7b-8x4", "--tokens", "4000",
                             "--flips", "0.05,0.05,0.05", "--launch", "eager", "--decoder", "speed"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            # Ctrl-C's default: a test worker (pytest-xdist) may ignore SIGINT, and a child that
                            # starts with it ignored installs no KeyboardInterrupt handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stderr.readline().startswith("tracing llama2-7b-8x4 (speed, 4000 tokens")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
    except BaseException:
        proc.kill()
        raise
    return proc, int(children[0])


@pytest.mark.parametrize("signum, status, line", [
    (signal.SIGINT, 130, "python -m sim.run: interrupted (Ctrl-C); files being written were removed"),
    (signal.SIGTERM, 143, "python -m sim.run: terminated (SIGTERM); files being written were removed"),
])
def test_a_signal_while_the_provider_traces_ends_with_one_line_and_no_provider_left(tmp_path, signum, status,
                                                                                     line):
    """Ctrl-C reaches the whole process group (the provider too); SIGTERM only sim.run, which stops the provider."""
    proc, child = _start_tracing(tmp_path)
    try:
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status
    assert [x for x in err.splitlines() if x.strip()] == [line], err
    assert not Path(f"/proc/{child}").exists()  # the provider ended (and was waited for) before sim.run did
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing half-written is left in the cache



def test_a_tensor_parallel_trace_is_asked_for_checked_and_cached_by_its_degree(tmp_path, monkeypatch, capsys):
    """`tp` in a trace request: rank 0's shard traced on meta (no processes), cached under a name with its degree
    and found without torch; a degree the model cannot be sharded over is refused before any tracing."""
    monkeypatch.setenv("SPEED_SIM_CACHE", str(tmp_path))
    asked = [{"model": "tiny-4x3", "decoder": "sequential", "tokens": 3, "tp": tp} for tp in (1, 2)]
    one, two = provider.trace_files(asked)
    assert ".tp1." in one.path.name and ".tp2." in two.path.name
    assert "tracing tiny-4x3 (sequential, 3 tokens, batch 1, rank 0 of TP 2) on the meta device" in \
        capsys.readouterr().err
    from sim.trace import read_trace

    assert (read_trace(one.path).header.tp, read_trace(two.path).header.tp) == (1, 2)
    monkeypatch.setenv(provider.TRACER_ENV, NO_TORCH_TRACER)
    assert provider.trace_files(asked) == [(one.name, one.path, 0.0), (two.name, two.path, 0.0)]
    monkeypatch.delenv(provider.TRACER_ENV)
    with pytest.raises(provider.ProviderError, match=r"^--tp 3: n_heads 4 is not divisible by 3 \(tiny-4x3\)$"):
        provider.trace_files([*asked, {"model": "tiny-4x3", "decoder": "speed", "tokens": 3, "tp": 3}])
    assert len(list((tmp_path / "traces").iterdir())) == 2  # nothing traced for the batch refused
