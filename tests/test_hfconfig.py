"""Hugging Face configs of the Llama family: public configs give their published parameter counts, shared variants
keep Nd / (Nd x G) of the block weights, and what the reference decoder cannot represent is refused by field."""

import json
from pathlib import Path

import pytest
import torch

from reference import decode
from reference.config import get_preset, parse_share, shared_variant
from reference.hfconfig import HfConfigError, from_hf_dict, load_hf_config
from reference.model import SharedDecoder

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "hfconfigs"
# parameter counts as published (the models' Hugging Face pages / safetensors metadata: "6.74B", "7.24B", ...)
PUBLISHED = {"llama-2-7b": 6_738_415_616, "mistral-7b-v0.1": 7_241_732_096, "qwen2-0.5b": 494_032_768,
             "qwen2-1.5b": 1_543_714_304, "tinyllama-1.1b": 1_100_048_384, "llama-3-8b": 8_030_261_248,
             "llama-2-70b": 68_976_648_192}


def parameters(cfg) -> int:
    return sum(p.numel() for p in SharedDecoder(cfg, device="meta").parameters())


def block_parameters(cfg) -> int:
    return sum(p.numel() for name, p in SharedDecoder(cfg, device="meta").named_parameters()
               if name.startswith("blocks."))


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_public_configs_have_their_published_parameter_counts(name):
    cfg = load_hf_config(CONFIGS / name / "config.json")
    assert cfg.name == name and cfg.n_groups == 1
    assert parameters(cfg) == pytest.approx(PUBLISHED[name], rel=0.01)


def test_public_configs_read_every_field():
    mistral = load_hf_config(CONFIGS / "mistral-7b-v0.1" / "config.json")
    assert (mistral.d_model, mistral.d_ff, mistral.n_heads, mistral.n_kv_heads, mistral.depth, mistral.vocab_size) == (
        4096, 14336, 32, 8, 32, 32000)
    assert not mistral.tie_embeddings and mistral.max_seq_len == 4096  # capped at its sliding window
    qwen = load_hf_config(CONFIGS / "qwen2-0.5b" / "config.json")
    assert qwen.tie_embeddings and qwen.qkv_bias and qwen.rope_theta == 1e6 and qwen.max_seq_len == 131072
    llama3 = load_hf_config(CONFIGS / "llama-3-8b" / "config.json")
    assert llama3.rope_theta == 5e5 and llama3.eos_id == 128001 and llama3.norm_eps == 1e-5


@pytest.mark.parametrize("name, share", [("llama-2-7b", "8x4"), ("tinyllama-1.1b", "11x2"), ("qwen2-1.5b", "7x4")])
def test_shared_variants_keep_nd_over_n_of_the_block_weights(name, share):
    full = load_hf_config(CONFIGS / name / "config.json")
    shared = load_hf_config(CONFIGS / name / "config.json", share=share)
    nd, g = parse_share(share)
    assert (shared.n_unique_layers, shared.n_groups, shared.depth) == (nd, g, full.depth)
    assert shared.name == f"{name}-{share}"
    assert block_parameters(shared) * (nd * g) == block_parameters(full) * nd
    assert parameters(full) - parameters(shared) == block_parameters(full) - block_parameters(shared)


def test_share_is_refused_unless_it_covers_every_layer():
    with pytest.raises(HfConfigError, match=r"field 'num_hidden_layers': --share 5x6: 5x6 shares 30 layers, but "
                       r"llama-2-7b has 32"):
        load_hf_config(CONFIGS / "llama-2-7b" / "config.json", share="5x6")
    with pytest.raises(ValueError, match="expected NdxG"):
        parse_share("8by4")
    assert shared_variant(get_preset("llama2-7b-8x4"), 4, 8).name == "llama2-7b-4x8"


BASE = json.loads((CONFIGS / "tinyllama-1.1b" / "config.json").read_text())


@pytest.mark.parametrize("change, field, message", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "model_type", "'gpt2' is not represented"),
    ({"architectures": ["MistralForCausalLM"]}, "architectures", "does not match model_type 'llama'"),
    ({"hidden_size": None}, "hidden_size", "missing"),
    ({"num_hidden_layers": "22"}, "num_hidden_layers", "expected an integer >= 1"),
    ({"num_attention_heads": 30}, "num_attention_heads", "30 does not divide hidden_size 2048"),
    ({"num_key_value_heads": 5}, "num_key_value_heads", "5 does not divide num_attention_heads 32"),
    ({"hidden_act": "gelu"}, "hidden_act", "'gelu' is not represented"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling", "not represented"),
    ({"head_dim": 128}, "head_dim", "differs from hidden_size / num_attention_heads = 64"),
    ({"attention_bias": True}, "attention_bias", "biases are not represented"),
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings", "expected true or false"),
    ({"rope_theta": -1}, "rope_theta", "expected a finite number > 0"),
    ({"eos_token_id": 40000}, "eos_token_id", "expected a token id in [0, 32000)"),
])
def test_malformed_or_unrepresentable_configs_are_refused_by_field(tmp_path, change, field, message):
    raw = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(HfConfigError) as err:
        load_hf_config(path)
    assert str(err.value).startswith(f"model config {path}, field '{field}': ") and message in str(err.value)


def test_unreadable_files_are_refused_naming_them(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    for path, message in [(tmp_path / "bad.json", "not valid JSON"), (tmp_path / "none.json", "no such file")]:
        with pytest.raises(HfConfigError, match=f"model config {path}: {message}"):
            load_hf_config(path)
    with pytest.raises(HfConfigError, match="expected a JSON object"):
        from_hf_dict([1, 2])


def test_a_tiny_qwen2_style_model_decodes_exactly_with_speed():
    """Biases on q/k/v and an untied head (what Qwen2 and Llama-2 add) keep SPEED's output sequential's."""
    raw = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "num_hidden_layers": 6, "vocab_size": 64, "tie_word_embeddings": False,
           "max_position_embeddings": 128}
    cfg = shared_variant(from_hf_dict(raw, name="tiny-qwen2"), 2, 3)
    model = SharedDecoder(cfg, dtype=torch.float64, seed=3)
    prompts = [[5, 6, 7], [9]]
    seq = decode.sequential(model, prompts, max_new_tokens=12)
    assert decode.speed(model, prompts, max_new_tokens=12).tokens == seq.tokens
