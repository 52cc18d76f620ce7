"""The speedup benchmark's bookkeeping (its timings are figures it prints, not asserted here)."""

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
    assert m["predicted_speedup"] == pytest.approx(6 * m["sequential_step_s"] / speed_s)
    assert m["measured_over_predicted"] == pytest.approx(m["measured_speedup"] / m["predicted_speedup"])
    assert m["measured_speedup"] == pytest.approx(m["ms_per_token"]["sequential"] / m["ms_per_token"]["speed"])


def test_an_unshared_model_or_a_bad_path_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="not shared"):
        measure(SharedDecoder(get_preset("tiny-6"), dtype=torch.float32), [[1, 2]], 4, 1)
    assert main(["--checkpoint", str(tmp_path / "nope.safetensors")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_weight_major_linear_computes_the_same_projection():
    layer = torch.nn.Linear(16, 24, bias=False, dtype=torch.float64)
    x = torch.randn(3, 1, 16, dtype=torch.float64)
    expected, original = layer(x), torch.nn.Linear.forward
    with weight_major_linear():
        got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.nn.Linear.forward is original  # restored on leaving
