"""The speedup benchmark's bookkeeping (its timings are figures it prints, not asserted here)."""

import json

import pytest
import torch

from reference import decode
from reference.config import get_preset
from reference.experiments.speedup import NO_EOS, main, measure, weight_major_linear
from reference.model import SharedDecoder


def test_figures_follow_from_the_stage_counts_and_costs():
    model = SharedDecoder(get_preset("tiny-4x3"), dtype=torch.float32, seed=0)
    prompts = [[5, 9, 13, 2, 8], [3, 3, 7]]
    m = measure(model, prompts, tokens=6, repeats=1)
    assert m["outputs_identical"] and m["amortization"]["1"] == 1.0
    stages = sum(decode.speed(model, [p], 6, eos_id=NO_EOS).stages for p in prompts)
    assert sum(m["stage_rows"].values()) == stages == round(m["stages_per_token"] * 6 * len(prompts))
    assert set(m["stage_rows"]) <= {"1", "2", "3"}
    speed_s = sum(n * m["stage_s"][r] for r, n in m["stage_rows"].items()) / len(prompts)
    prefill_s = m["prefill_s"]
    assert m["predicted_speedup"] == pytest.approx((prefill_s + 6 * m["sequential_step_s"]) / (prefill_s + speed_s))
    assert m["predicted_decode_speedup"] == pytest.approx(6 * m["sequential_step_s"] / speed_s)
    assert m["measured_over_predicted"] == pytest.approx(m["measured_speedup"] / m["predicted_speedup"])
    assert m["measured_speedup"] == pytest.approx(m["ms_per_token"]["sequential"] / m["ms_per_token"]["speed"])


def test_an_unshared_model_or_a_bad_path_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="not shared"):
        measure(SharedDecoder(get_preset("tiny-6"), dtype=torch.float32), [[1, 2]], 4, 1)
    assert main(["--checkpoint", str(tmp_path / "nope.safetensors")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_weight_major_linear_computes_the_same_projection():
    layer = torch.nn.Linear(16, 24, bias=False, dtype=torch.float64)
    original = torch.nn.Linear.forward
    for x in (torch.randn(3, 1, 16, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)):
        expected = layer(x)
        with weight_major_linear(), torch.inference_mode():  # as decoding runs it: no autograd
            got = layer(x)
            compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)  # an opaque op in a graph
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(compiled, expected, rtol=1e-12, atol=1e-12)
    assert torch.nn.Linear.forward is original  # restored on leaving


def test_a_compiled_run_writes_its_figures_and_decodes_the_eager_tokens(tmp_path, capsys):
    # random weights of a tiny preset, flips from rates, one cache shape: one set of compiled variants
    out = tmp_path / "compiled.json"
    argv = ["--preset", "tiny-2x3", "--compile", "--tokens", "5", "--prompts", "2", "--prompt-len", "4",
            "--repeats", "1", "--flips", "0.3,0.2", "--json", str(out)]
    assert main(argv) == 0
    m = json.loads(out.read_text())
    assert m["mode"] == "compiled" and m["command"] == "python -m reference.experiments.speedup " + " ".join(argv)
    # sequential and SPEED (with the model's own exits), eager and compiled: the same tokens
    assert m["outputs_identical"] is True
    assert m["flips"]["rates"] == [0.3, 0.2] and m["weights"].startswith("random (seed 0)")
    for figures in (m, m["eager"]):
        assert set(figures["amortization"]) == {"1", "2", "3"} and figures["amortization"]["1"] == 1.0
        assert figures["measured_speedup"] > 0 and figures["predicted_speedup"] > 0
        assert figures["measured_over_predicted"] == pytest.approx(
            figures["measured_speedup"] / figures["predicted_speedup"])
    assert m["stage_rows"] == m["eager"]["stage_rows"]  # the same flips, the same stages
    assert {(v["kind"], v["rows"]) for v in m["compile_variants"]} == {("stage", 1), ("stage", 2), ("stage", 3),
                                                                      ("token", 1)}
    assert m["compile_s"] == pytest.approx(sum(v["first_call_s"] for v in m["compile_variants"]))
    assert set(m["compiled_over_eager"]) == {"sequential", "speed"}
    printed = capsys.readouterr().out
    assert "amortization" in printed and "measured / predicted" in printed and "compile time" in printed


@pytest.mark.parametrize("argv, message", [
    (["--no-eager"], "need --compile"),
    (["--inductor", "freezing=True"], "need --compile"),
    (["--compile", "--inductor", "no_such_entry=1"], "no entry 'no_such_entry'"),
    (["--compile", "--inductor", "freezing"], "KEY=VALUE"),
    (["--preset", "tiny-2x3", "--flips", "0.1"], "needs 2 rates"),
    (["--preset", "no-such-preset"], "unknown model preset"),
    (["--preset", "tiny-2x3", "--checkpoint", "x.safetensors"], "not allowed with"),
    (["--tokens", "0"], "must be >= 1"),
])
def test_bad_flags_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
