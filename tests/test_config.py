"""Configs and presets: shapes of the paper's family and Llama's, and clear errors for impossible ones."""

import pytest

from reference.config import PRESETS, ModelConfig, get_preset


def test_paper_family_shapes():
    for name, (nd, g) in {"t5-base-2": (2, 1), "t5-base-4": (4, 1), "t5-base-12": (12, 1), "t5-base-2x6": (2, 6),
                          "t5-base-2x8": (2, 8), "t5-base-4x3": (4, 3), "t5-base-4x4": (4, 4)}.items():
        cfg = get_preset(name)
        assert (cfg.n_unique_layers, cfg.n_groups) == (nd, g)
        assert (cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size, cfg.n_encoder_layers) == (
            768, 12, 64, 2048, 32128, 12)
        assert cfg.ffn == "gated-gelu" and cfg.is_encoder_decoder


def test_llama_family_shapes():
    cfg = get_preset("llama2-7b")
    assert (cfg.depth, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.vocab_size, cfg.ffn) == (32, 4096, 32, 11008, 32000,
                                                                                       "swiglu")
    assert get_preset("llama2-7b-8x4").depth == get_preset("llama2-7b-4x8").depth == 32
    assert get_preset("llama-1b").n_kv_heads < get_preset("llama-1b").n_heads  # grouped-query attention
    assert not cfg.is_encoder_decoder


def test_preset_names_say_their_sharing():
    for name, cfg in PRESETS.items():
        suffix = name.rsplit("-", 1)[1]
        if "x" in suffix:
            assert suffix == f"{cfg.n_unique_layers}x{cfg.n_groups}"
        elif suffix.isdigit():
            assert cfg.n_groups == 1 and int(suffix) == cfg.n_unique_layers


@pytest.mark.parametrize("change, field", [
    ({"n_unique_layers": 0}, "n_unique_layers"),
    ({"n_groups": 0}, "n_groups"),
    ({"n_groups": -2}, "n_groups"),
    ({"d_model": 100}, "d_model"),  # 100 is not divisible by 8 heads
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"ffn": "relu"}, "ffn"),
    ({"eos_id": 9999}, "eos_id"),
    ({"n_encoder_layers": -1}, "n_encoder_layers"),
    ({"vocab_size": 2.5}, "vocab_size"),
])
def test_impossible_configs_name_the_field(change, field):
    base = ModelConfig(name="t", vocab_size=64, d_model=64, n_heads=8, n_kv_heads=8, d_ff=32, n_unique_layers=2,
                       n_groups=2)
    with pytest.raises(ValueError, match=field):
        base.replace(**change)


def test_divisibility_error_lists_what_is_allowed():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        get_preset("tiny-2x3").replace(d_model=66)


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"allowed presets: .*t5-base-4x3"):
        get_preset("t5-large")


def test_exit_weights():
    assert get_preset("t5-base-4x3").exit_weights == [1 / 6, 2 / 6, 3 / 6]
    assert get_preset("t5-base-12").exit_weights == [1.0]
