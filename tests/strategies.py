"""Hypothesis strategies and helpers shared by the model and decoder tests."""

import torch
from hypothesis import strategies as st

from reference.config import ModelConfig
from reference.model import Rows, SharedDecoder


@st.composite
def tiny_configs(draw, max_groups: int = 6, encoder: bool | None = None) -> ModelConfig:
    """Random tiny configs: Nd 1..4, G 1..max_groups, decoder-only or encoder-decoder, MHA or GQA, the LM head tied
    or not, query/key/value biases (Qwen2) or not."""
    n_heads = draw(st.sampled_from([2, 4]))
    enc = draw(st.integers(0, 2)) if encoder is None else (draw(st.integers(1, 2)) if encoder else 0)
    return ModelConfig(
        name="random-tiny", vocab_size=draw(st.sampled_from([24, 48])), d_model=n_heads * draw(st.sampled_from([4, 8])),
        n_heads=n_heads, n_kv_heads=draw(st.sampled_from([1, n_heads])), d_ff=draw(st.sampled_from([16, 32])),
        n_unique_layers=draw(st.integers(1, 4)), n_groups=draw(st.integers(1, max_groups)), n_encoder_layers=enc,
        ffn=draw(st.sampled_from(["swiglu", "gated-gelu"])), max_seq_len=64, eos_id=None,
        tie_embeddings=draw(st.booleans()), qkv_bias=draw(st.booleans()))


class PredictorModel(SharedDecoder):
    """A SharedDecoder whose early exits (1..G-1) have a chosen quality; exit G, which alone decides the output,
    stays the model's own. `truth[(seq, position)]` is the token at position + 1 of the sequential output.

    modes: "model" (its own early exits), "oracle" (always the final answer), "random" (uniform noise),
    "mixed" (oracle or random, a coin per prediction)."""

    def __init__(self, cfg: ModelConfig, mode: str, seed: int) -> None:
        super().__init__(cfg, dtype=torch.float64, seed=seed)
        self.mode, self.truth = mode, {}
        self.rng = torch.Generator().manual_seed(seed)

    def exit_logits(self, h: torch.Tensor, rows: Rows, exits: list[int]) -> torch.Tensor:
        logits = self.head(h)
        if self.mode == "model":
            return logits
        for r, (seq, pos, exit_) in enumerate(zip(rows.seqs, rows.positions, exits)):
            if exit_ == self.config.n_groups:
                continue
            oracle = self.mode == "oracle" or (self.mode == "mixed" and torch.rand(1, generator=self.rng) < 0.5)
            if oracle and (seq, pos) in self.truth:
                logits[r] = -1.0
                logits[r, self.truth[seq, pos]] = 1.0
            else:
                logits[r] = torch.randn(logits.shape[1], generator=self.rng, dtype=logits.dtype)
        return logits
