"""The model: cyclic sharing, parameter count, exits and the weighted exit loss, cache vs teacher forcing."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import tiny_configs

from reference.config import PRESETS, ModelConfig, get_preset
from reference.model import SharedDecoder


def expected_parameters(cfg: ModelConfig) -> int:
    d, hd = cfg.d_model, cfg.head_dim
    attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # wq, wo; wk, wv
    attn += (cfg.n_heads + 2 * cfg.n_kv_heads) * hd if cfg.qkv_bias else 0
    ffn = 3 * d * cfg.d_ff
    block = attn + ffn + 2 * d  # + two norms
    cross = (4 * d * cfg.n_heads * hd + d) if cfg.is_encoder_decoder else 0
    encoder = cfg.n_encoder_layers * block + (d if cfg.is_encoder_decoder else 0)
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d  # an untied LM head is a matrix of its own
    return cfg.vocab_size * d + cfg.n_unique_layers * (block + cross) + d + encoder + head


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count_is_nd_blocks_plus_embedding_norms_encoder(name):
    cfg = get_preset(name)
    model = SharedDecoder(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(cfg)


@settings(max_examples=30)
@given(cfg=tiny_configs())
def test_parameter_count_with_untied_heads_and_biases(cfg):
    model = SharedDecoder(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(cfg)


def test_known_preset_sizes():
    count = {name: expected_parameters(get_preset(name)) for name in ("llama2-7b", "llama-1b", "t5-base-12")}
    assert 6.6e9 < count["llama2-7b"] < 6.8e9  # Llama-2-7B is 6.74e9 with its untied head (+0.13e9)
    assert 0.9e9 < count["llama-1b"] < 1.2e9
    # sharing: 4x3 holds a third of the 12-layer decoder's block weights
    big, shared = get_preset("llama2-7b"), get_preset("llama2-7b-8x4")
    assert expected_parameters(big) - expected_parameters(shared) == 24 * (
        (expected_parameters(big) - big.vocab_size * big.d_model - big.d_model) // 32)


def test_layer_at_depth_is_the_same_shared_block():
    model = SharedDecoder(get_preset("tiny-2x3"))
    assert [model.layer(i) is model.blocks[i % 2] for i in range(6)] == [True] * 6
    assert len(model.blocks) == 2


@settings(max_examples=20)
@given(cfg=tiny_configs(), seed=st.integers(0, 100))
def test_weighted_exit_loss_is_the_weighted_sum_of_exit_losses(cfg, seed):
    model = SharedDecoder(cfg, dtype=torch.float64, seed=seed)
    tokens = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(seed))
    targets = tokens.roll(-1, dims=1)
    targets[:, -1] = -100
    source = tokens.flip(1) if cfg.is_encoder_decoder else None
    logits, loss = model(tokens, targets, encoder_tokens=source)
    assert logits.shape == (cfg.n_groups, 2, 7, cfg.vocab_size)
    weights = [g / (cfg.n_groups * (cfg.n_groups + 1) / 2) for g in range(1, cfg.n_groups + 1)]
    expected = sum(w * F.cross_entropy(lg.flatten(0, 1), targets.flatten(), ignore_index=-100)
                   for w, lg in zip(weights, logits))
    torch.testing.assert_close(loss, expected)
    assert abs(sum(cfg.exit_weights) - 1) < 1e-12


@settings(max_examples=30)
@given(cfg=tiny_configs(), seed=st.integers(0, 100), length=st.integers(2, 9))
def test_rows_through_the_cache_equal_teacher_forcing_at_every_exit(cfg, seed, length):
    """Prefill, then one row per group: each exit's logits equal the teacher-forced ones at that position."""
    model = SharedDecoder(cfg, dtype=torch.float64, seed=seed)
    tokens = torch.randint(0, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))
    source = [2, 3, 5, 7] if cfg.is_encoder_decoder else None
    full, _ = model(tokens, encoder_tokens=None if source is None else torch.tensor([source]))
    cache = model.new_cache(1, length, encoder_len=len(source or []))
    if source:
        model.encode_into(cache, 0, source)
    model.prefill(cache, 0, tokens[0, :-1].tolist())
    rows = model.rows([0], [length - 1])
    h = model.embed(tokens[0, -1:])
    for group in range(cfg.n_groups):
        h = model.run_group(h, rows, [group], cache)
        torch.testing.assert_close(model.head(h)[0], full[group, 0, -1], rtol=1e-9, atol=1e-9)
