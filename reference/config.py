"""Model configurations: one dataclass, named presets.

A decoder has `n_unique_layers` (Nd) blocks applied `n_groups` (G) times: the layer at depth `i` is block
`i mod Nd` ("CYCLE" sharing), total depth `N = Nd * G`. A preset named `Nd x G` (e.g. `t5-base-4x3`) is
shared; a plain number (`t5-base-12`) is an unshared decoder, `G = 1`. The final norm and the LM head (tied
to the embedding unless `tie_embeddings` is False) can be applied after every group: exit `g` of `G`.
Hugging Face configs of the Llama family become a `ModelConfig` in `reference.hfconfig`.
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
from dataclasses import dataclass

FFN_KINDS = ("gated-gelu", "swiglu")
# Each size's bounds and why: far beyond any published decoder (the largest dense models have d_model 18,432 and
# d_ff 73,728 (PaLM 540B), 126 layers (Llama 3.1 405B), 128 heads, vocabularies of 262,144 (Gemma 3) and
# context windows of 128k positions), and small enough that no tensor's size, no FLOP or byte count a trace
# holds overflows (sim.trace.limits), and that building the model's modules on the meta device takes seconds.
SIZES = {
    "vocab_size": (1, 1 << 22, "4M tokens"), "d_model": (1, 1 << 17, "131,072 wide"),
    "n_heads": (1, 1 << 12, "4,096 heads"), "n_kv_heads": (1, 1 << 12, "4,096 heads"),
    "d_ff": (1, 1 << 19, "524,288 wide"), "n_unique_layers": (1, 1 << 12, "4,096 blocks"),
    "n_groups": (1, 1 << 12, "4,096 applications"), "n_encoder_layers": (0, 1 << 12, "4,096 blocks"),
    "max_seq_len": (1, 1 << 22, "4M positions: the rotary tables alone are 2 GB"),
}
# the norm's epsilon and the RoPE base: published models use 1e-12..1e-5 and 1e4..1e7
NUMBERS = {"norm_eps": (1e-12, 1e-2, "an RMSNorm epsilon"), "rope_theta": (1.0, 1e10, "a RoPE base")}
MAX_DEPTH = 1 << 12  # layers a token passes through, Nd x G: 4,096 (the deepest published decoder has 126)
MAX_PARAMETERS = 1 << 41  # 2.2e12: four times the largest dense model (PaLM, 540B)


class ConfigError(ValueError):
    """A ModelConfig field that cannot be: `field` names it (a ModelConfig field, or "parameters" for the size
    of the whole), `problem` says why (values cut short: an error never prints a long one)."""

    def __init__(self, name: object, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"ModelConfig {reprlib.repr(name)}, field {field!r}: {problem}")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    d_model: int
    n_heads: int
    n_kv_heads: int  # < n_heads: grouped-query attention
    d_ff: int
    n_unique_layers: int  # Nd: blocks in one layer group
    n_groups: int  # G: times the group is applied
    n_encoder_layers: int = 0  # > 0: encoder-decoder (T5 style) with cross-attention
    ffn: str = "swiglu"
    max_seq_len: int = 2048  # decoder positions the KV cache can hold
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    eos_id: int | None = None
    decoder_start_id: int = 0  # first decoder token of an encoder-decoder model (T5: pad = 0)
    tie_embeddings: bool = True  # the LM head is the embedding; False: a weight of its own (Llama-2, Mistral)
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)

    def __post_init__(self) -> None:
        for field, (least, most, reason) in SIZES.items():
            value = getattr(self, field)
            if type(value) is not int or not least <= value <= most:
                raise ConfigError(self.name, field, f"expected an integer in {least}..{most:,} ({reason}), got "
                                  f"{reprlib.repr(value)}")
        self._check_shapes()
        for field, (least, most, reason) in NUMBERS.items():
            value = getattr(self, field)
            if type(value) not in (int, float) or not least <= value <= most:  # NaN fails both comparisons
                raise ConfigError(self.name, field, f"expected a number in [{least:g}, {most:g}] ({reason}), got "
                                  f"{reprlib.repr(value)}")
        if not isinstance(self.name, str) or not self.name.strip() or not self.name.isprintable():
            raise ConfigError(self.name, "name", "expected a name: a string of printable characters")
        if self.ffn not in FFN_KINDS:
            raise ConfigError(self.name, "ffn", f"expected one of {FFN_KINDS}, got {reprlib.repr(self.ffn)}")
        for field in ("tie_embeddings", "qkv_bias"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(self.name, field, f"expected true or false, got {reprlib.repr(getattr(self, field))}")
        for field in ("eos_id", "decoder_start_id"):
            value = getattr(self, field)
            if value is not None and (type(value) is not int or not 0 <= value < self.vocab_size):
                raise ConfigError(self.name, field, f"expected a token id in [0, {self.vocab_size}), got "
                                  f"{reprlib.repr(value)}")
        if self.parameters > MAX_PARAMETERS:
            raise ConfigError(self.name, "parameters", f"{self.parameters:.3g} parameters (d_model {self.d_model}, "
                              f"d_ff {self.d_ff}, {self.n_unique_layers} unique layers, vocabulary {self.vocab_size})"
                              f": more than {MAX_PARAMETERS:.3g}, beyond any dense model")

    def _check_shapes(self) -> None:
        """The sizes that must divide one another."""
        if self.d_model % self.n_heads:
            raise ConfigError(self.name, "n_heads", f"d_model ({self.d_model}) must be divisible by n_heads "
                              f"({self.n_heads}); allowed n_heads: divisors of d_model")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(self.name, "n_kv_heads", f"n_heads ({self.n_heads}) must be divisible by n_kv_heads "
                              f"({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(self.name, "n_heads", f"head_dim = d_model / n_heads = {self.head_dim} must be even "
                              "for rotary position embeddings")
        if self.depth > MAX_DEPTH:
            raise ConfigError(self.name, "n_groups", f"depth Nd x G = {self.n_unique_layers} x {self.n_groups} = "
                              f"{self.depth:,} layers: more than {MAX_DEPTH:,}")

    @property
    def depth(self) -> int:
        """N = Nd * G: layers a token passes through."""
        return self.n_unique_layers * self.n_groups

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def parameters(self) -> int:
        """The model's parameters (`SharedDecoder`'s, whole): embedding, the unique decoder blocks (and encoder
        blocks) with their norms, the final norm(s), an untied LM head."""
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        attention = d * d * 2 + 2 * d * kv + (d + 2 * kv if self.qkv_bias else 0)
        block = attention + 3 * d * self.d_ff + 2 * d  # q, k, v, o; gate, up, down; two norms
        cross = (4 * d * d + d) if self.is_encoder_decoder else 0  # cross-attention (all heads) and its norm
        encoder = self.n_encoder_layers * block + (d if self.is_encoder_decoder else 0)
        return (self.vocab_size * d * (1 if self.tie_embeddings else 2) + self.n_unique_layers * (block + cross)
                + encoder + d)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.n_encoder_layers > 0

    @property
    def exit_weights(self) -> list[float]:
        """w_g = g / sum(1..G): the weight of exit g in the training loss (CALM style)."""
        total = self.n_groups * (self.n_groups + 1) / 2
        return [g / total for g in range(1, self.n_groups + 1)]

    def replace(self, **changes: object) -> ModelConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)


def _t5_base(layers: int, groups: int) -> ModelConfig:
    # T5 v1.1 Base shapes: d_model 768, 12 heads of 64, gated-GELU FFN 2048, vocab 32128, 12-layer encoder.
    name = f"t5-base-{layers}" if groups == 1 else f"t5-base-{layers}x{groups}"
    return ModelConfig(name=name, vocab_size=32128, d_model=768, n_heads=12, n_kv_heads=12, d_ff=2048,
                       n_unique_layers=layers, n_groups=groups, n_encoder_layers=12, ffn="gated-gelu",
                       max_seq_len=1024, eos_id=1, decoder_start_id=0)


def _llama2_7b(layers: int, groups: int) -> ModelConfig:
    name = "llama2-7b" if groups == 1 else f"llama2-7b-{layers}x{groups}"
    return ModelConfig(name=name, vocab_size=32000, d_model=4096, n_heads=32, n_kv_heads=32, d_ff=11008,
                       n_unique_layers=layers, n_groups=groups, max_seq_len=4096, norm_eps=1e-5, eos_id=2)


def _llama_1b(layers: int, groups: int) -> ModelConfig:
    # TinyLlama-1.1B shapes: 22 layers, d 2048, 32 query heads sharing 4 KV heads, SwiGLU 5632, vocab 32000.
    name = "llama-1b" if groups == 1 else f"llama-1b-{layers}x{groups}"
    return ModelConfig(name=name, vocab_size=32000, d_model=2048, n_heads=32, n_kv_heads=4, d_ff=5632,
                       n_unique_layers=layers, n_groups=groups, max_seq_len=2048, norm_eps=1e-5, eos_id=2)


def _tiny(layers: int, groups: int, encoder_layers: int = 0) -> ModelConfig:
    kind = "tiny-t5" if encoder_layers else "tiny"
    name = f"{kind}-{layers}" if groups == 1 else f"{kind}-{layers}x{groups}"
    return ModelConfig(name=name, vocab_size=256, d_model=64, n_heads=4, n_kv_heads=2 if not encoder_layers else 4,
                       d_ff=128, n_unique_layers=layers, n_groups=groups, n_encoder_layers=encoder_layers,
                       ffn="gated-gelu" if encoder_layers else "swiglu", max_seq_len=512, eos_id=1)


def _code(layers: int, groups: int) -> ModelConfig:
    # The family trained on this machine's CPU (reference.experiments.train): decoder-only, d_model 128, 4 heads of 32,
    # SwiGLU 256, byte-level BPE vocabulary of 1024 whose id 256 ends a file.
    name = f"code-{layers}" if groups == 1 else f"code-{layers}x{groups}"
    return ModelConfig(name=name, vocab_size=1024, d_model=128, n_heads=4, n_kv_heads=4, d_ff=256,
                       n_unique_layers=layers, n_groups=groups, max_seq_len=512, eos_id=256)


def _code_wide(layers: int, groups: int) -> ModelConfig:
    # code-* at d_model 512: the float32 shared weights of 4 layers (51 MB) exceed this CPU's 32 MiB last-level
    # cache, so batch-1 decoding reads them from DRAM on every pass, as a GPU does from HBM
    # (reference.experiments.speedup)
    return _code(layers, groups).replace(name=f"code-wide-{layers}x{groups}", d_model=512, n_heads=8, n_kv_heads=8,
                                         d_ff=1408)


PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        *(_t5_base(n, 1) for n in (2, 4, 12)),
        *(_t5_base(nd, g) for nd, g in ((2, 6), (2, 8), (4, 3), (4, 4))),
        _llama2_7b(32, 1), _llama2_7b(8, 4), _llama2_7b(4, 8),
        _llama_1b(22, 1), _llama_1b(11, 2),
        _tiny(6, 1), _tiny(2, 3), _tiny(4, 3), _tiny(2, 3, encoder_layers=2),
        *(_code(n, 1) for n in (2, 4, 12)),
        *(_code(nd, g) for nd, g in ((2, 6), (4, 3), (2, 8), (4, 4))),
        _code_wide(4, 3),
    ]
}


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; a ValueError lists the allowed names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {reprlib.repr(name)}; allowed presets: {', '.join(PRESETS)}") from None


def parse_share(text: str) -> tuple[int, int]:
    """"NdxG" (e.g. "8x4") -> (Nd, G); a ValueError says what is expected."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(f"expected NdxG with integers >= 1 (e.g. 8x4: 8 unique blocks applied 4 times), got "
                         f"{reprlib.repr(text)}")
    return int(match[1]), int(match[2])


def shared_variant(cfg: ModelConfig, unique: int, groups: int) -> ModelConfig:
    """`cfg` with its `depth` layers as `unique` blocks applied `groups` times, named `<name>-<Nd>x<G>` (a sharing
    suffix already in the name is replaced); a ValueError when unique x groups is not the depth."""
    if unique * groups != cfg.depth:
        raise ValueError(f"{unique}x{groups} shares {unique * groups} layers, but {cfg.name} has {cfg.depth}: "
                         f"Nd x G must equal the layer count")
    base = cfg.name.removesuffix(f"-{cfg.n_unique_layers}x{cfg.n_groups}")
    return cfg.replace(name=f"{base}-{unique}x{groups}", n_unique_layers=unique, n_groups=groups)
