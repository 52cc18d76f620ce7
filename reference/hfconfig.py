"""Hugging Face model configs (`config.json`) of the Llama family as `ModelConfig`s: Llama, Mistral and Qwen2.

    cfg = load_hf_config("path/to/config.json")                  # the model as published
    cfg = load_hf_config("path/to/config.json", share="8x4")     # 8 unique blocks applied 4 times (32 layers)

What is read: hidden_size (d_model), intermediate_size (d_ff, SwiGLU), num_attention_heads,
num_key_value_heads (grouped-query attention; default: as many as the query heads), num_hidden_layers, vocab_size,
rope_theta, tie_word_embeddings (default false, as in transformers for these three architectures), rms_norm_eps,
max_position_embeddings, eos_token_id. Qwen2 has biases on its query, key and value projections (`qkv_bias`).

What the reference decoder cannot represent is refused with `HfConfigError`, naming the file and the field:
another architecture, a missing required field, a mistyped or inconsistent one (heads that do not divide the
width, a `head_dim` other than hidden_size / num_attention_heads), an activation other than SiLU, RoPE scaling,
biases beyond Qwen2's. A sliding attention window (Mistral-7B-v0.1: 4096) is represented exactly by capping the
sequence length at the window: up to it, sliding-window attention is full causal attention.

A `quantization_config` (GPTQ / AWQ style: a weight-only quantized checkpoint) is read by `quantization_fields`:
its bits, group size (-1: a whole row) and symmetry, which `reference.quant.scheme_from_fields` maps to a scheme of
the reference decoder; what no scheme of it represents (another method, activation order, a quantized LM head) is
refused naming the field.

Pure Python, no torch: the simulator's command lines read configs without it.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
from pathlib import Path
from typing import Any

from reference.config import ConfigError, ModelConfig, parse_share, shared_variant

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
REQUIRED = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
# transformers' defaults for fields a published config may leave out (LlamaConfig, MistralConfig, Qwen2Config)
MAX_POSITIONS_DEFAULT = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768}
RMS_NORM_EPS_DEFAULT = 1e-6
ROPE_THETA_DEFAULT = 10000.0
# ModelConfig's field -> the config.json field it is read from: an error names the user's field
HF_FIELDS = {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_heads": "num_attention_heads",
             "n_kv_heads": "num_key_value_heads", "d_ff": "intermediate_size", "n_unique_layers": "num_hidden_layers",
             "max_seq_len": "max_position_embeddings", "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
             "eos_id": "eos_token_id", "tie_embeddings": "tie_word_embeddings", "name": "_name_or_path",
             "parameters": "hidden_size, intermediate_size, num_hidden_layers, vocab_size (parameters)"}


class HfConfigError(ValueError):
    """A config the reference decoder cannot represent; `path` and `field` say where."""

    def __init__(self, path: str | os.PathLike[str], field: str | None, problem: str) -> None:
        self.path, self.field = os.fspath(path), field
        super().__init__(f"model config {self.path}" + (f", field '{field}'" if field else "") + f": {problem}")


def _model_type(path: Path, raw: dict[str, Any]) -> str:
    kind = raw.get("model_type")
    archs = raw.get("architectures")
    if archs is not None and (not isinstance(archs, list) or len(archs) != 1):
        raise HfConfigError(path, "architectures", f"expected one architecture, got {reprlib.repr(archs)}")
    if kind is None and archs:
        kind = next((k for k, a in ARCHITECTURES.items() if a == archs[0]), archs[0])
    if kind is None:
        raise HfConfigError(path, "model_type", "missing (and no 'architectures' to tell it)")
    if kind not in ARCHITECTURES:
        raise HfConfigError(path, "model_type", f"architecture {reprlib.repr(kind)} is not represented; supported: "
                            f"{', '.join(ARCHITECTURES)} (the Llama family)")
    if archs and archs[0] != ARCHITECTURES[kind]:
        raise HfConfigError(path, "architectures", f"{reprlib.repr(archs[0])} does not match model_type {kind!r} "
                            f"({ARCHITECTURES[kind]} expected)")
    return kind


def _integer(path: Path, raw: dict[str, Any], field: str, default: int | None = None) -> int:
    value = raw.get(field, default)
    if value is None:
        raise HfConfigError(path, field, "missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HfConfigError(path, field, f"expected an integer >= 1, got {reprlib.repr(value)}")
    return value


def _number(path: Path, raw: dict[str, Any], field: str, default: float) -> float:
    value = raw.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise HfConfigError(path, field, f"expected a finite number > 0, got {reprlib.repr(value)}")
    return float(value)


def _flag(path: Path, raw: dict[str, Any], field: str, default: bool) -> bool:
    value = raw.get(field, default)
    if not isinstance(value, bool):
        raise HfConfigError(path, field, f"expected true or false, got {reprlib.repr(value)}")
    return value


def _refuse_unrepresented(path: Path, raw: dict[str, Any], kind: str, d_model: int, heads: int) -> None:
    """Fields whose values change what the model computes in ways the reference decoder does not."""
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise HfConfigError(path, "hidden_act", f"{reprlib.repr(act)} is not represented: the reference FFN is "
                            "SwiGLU (silu)")
    if raw.get("rope_scaling") is not None:
        raise HfConfigError(path, "rope_scaling", f"{reprlib.repr(raw['rope_scaling'])} is not represented: the "
                            "reference decoder's rotary embedding is unscaled")
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim != d_model // heads:
        raise HfConfigError(path, "head_dim", f"{reprlib.repr(head_dim)} differs from hidden_size / "
                            f"num_attention_heads = {d_model // heads}: not represented")
    for field in ("attention_bias", "mlp_bias"):
        if kind != "qwen2" and _flag(path, raw, field, False):
            raise HfConfigError(path, field, "biases are not represented outside Qwen2's query/key/value projections")


def _max_positions(path: Path, raw: dict[str, Any], kind: str) -> int:
    """max_position_embeddings, capped at a sliding attention window where one is in force (up to the window,
    sliding-window attention equals full causal attention: exact)."""
    positions = _integer(path, raw, "max_position_embeddings", MAX_POSITIONS_DEFAULT[kind])
    window = raw.get("sliding_window")
    in_force = window is not None and (kind != "qwen2" or _flag(path, raw, "use_sliding_window", False))
    return min(positions, _integer(path, raw, "sliding_window")) if in_force else positions


def _eos(path: Path, raw: dict[str, Any], vocab: int) -> int | None:
    eos = raw.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is not None and (isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < vocab):
        raise HfConfigError(path, "eos_token_id", f"expected a token id in [0, {vocab}), got "
                            f"{reprlib.repr(raw['eos_token_id'])}")
    return eos


def model_name(path: Path, raw: dict[str, Any]) -> str:
    """The model's name: its `_name_or_path` (last part), else the folder of a `config.json`, else the file stem."""
    named = raw.get("_name_or_path")
    if isinstance(named, str) and named.strip("/"):
        return named.strip("/").rsplit("/", 1)[-1].lower()
    return (path.resolve().parent.name if path.name == "config.json" else path.stem).lower()


def from_hf_dict(raw: Any, path: str | os.PathLike[str] = "<config>", name: str | None = None) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face config mapping (as `config.json` holds it); `path` names it in errors."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise HfConfigError(path, None, "expected a JSON object at the top level")
    kind = _model_type(path, raw)
    d_model, d_ff, heads, layers, vocab = (_integer(path, raw, f) for f in REQUIRED)
    kv_heads = _integer(path, raw, "num_key_value_heads", heads)
    if d_model % heads:
        raise HfConfigError(path, "num_attention_heads", f"{heads} does not divide hidden_size {d_model}")
    if heads % kv_heads:
        raise HfConfigError(path, "num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
    if (d_model // heads) % 2:
        raise HfConfigError(path, "num_attention_heads", f"head size hidden_size / num_attention_heads = "
                            f"{d_model // heads} is odd: rotary embeddings need it even")
    _refuse_unrepresented(path, raw, kind, d_model, heads)
    fields = {"max_seq_len": _max_positions(path, raw, kind), "eos_id": _eos(path, raw, vocab),
              "norm_eps": _number(path, raw, "rms_norm_eps", RMS_NORM_EPS_DEFAULT),
              "rope_theta": _number(path, raw, "rope_theta", ROPE_THETA_DEFAULT),
              "tie_embeddings": _flag(path, raw, "tie_word_embeddings", False)}
    try:
        return ModelConfig(name=name or model_name(path, raw), vocab_size=vocab, d_model=d_model, n_heads=heads,
                           n_kv_heads=kv_heads, d_ff=d_ff, n_unique_layers=layers, n_groups=1, ffn="swiglu",
                           qkv_bias=kind == "qwen2", **fields)
    except ConfigError as err:  # anything ModelConfig itself refuses: named by the config.json field
        raise HfConfigError(path, HF_FIELDS.get(err.field, err.field), err.problem) from None


# GPTQ and AWQ checkpoints as transformers and AutoAWQ write them: the quant_method, and the keys that hold the
# bits, group size and symmetry (AWQ states its zero points instead: zero_point true = asymmetric)
QUANT_METHODS = ("gptq", "awq")
QUANT_KEYS = {"gptq": ("bits", "group_size", "sym"), "awq": ("bits", "group_size", "zero_point")}


def quantization_fields(path: str | os.PathLike[str]) -> tuple[object, object, object] | None:
    """(bits, group_size, sym) of the `quantization_config` of config.json `path`, None if it has none; an
    `HfConfigError` naming `quantization_config.FIELD` where no weight-only scheme of the reference decoder can
    represent it: another quant_method, GPTQ's activation order (desc_act: groups follow a permutation, g_idx, that
    the packed kernels do not take), a quantized LM head. The values themselves are checked by
    `reference.quant.scheme_from_fields`."""
    path = Path(path)
    raw = _read_json(path)
    config = raw.get("quantization_config") if isinstance(raw, dict) else None
    if config is None:
        return None
    field = "quantization_config"
    if not isinstance(config, dict):
        raise HfConfigError(path, field, f"expected an object, got {config!r}")
    method = config.get("quant_method", "gptq")
    if method not in QUANT_METHODS:
        raise HfConfigError(path, f"{field}.quant_method", f"{method!r} is not represented: weight-only "
                            f"{' and '.join(QUANT_METHODS)} checkpoints are (int8 per channel, int4 in groups)")
    if config.get("desc_act", False) is not False:
        raise HfConfigError(path, f"{field}.desc_act", f"{config['desc_act']!r} is not represented: activation-order "
                            "groups (g_idx) are not contiguous along K, as the packed kernels' groups are")
    if config.get("lm_head", False) is not False:
        raise HfConfigError(path, f"{field}.lm_head", f"{config['lm_head']!r} is not represented: the reference "
                            "decoder quantizes the block projections, never the LM head")
    bits, group, symmetry = QUANT_KEYS[method]
    for key in (bits, group):
        if key not in config:
            raise HfConfigError(path, f"{field}.{key}", "missing")
    stated = config.get(symmetry, True)  # GPTQ's sym and AWQ's zero_point both default to true
    return config[bits], config[group], (not stated if method == "awq" and isinstance(stated, bool) else stated)


def _read_json(path: Path) -> Any:
    """config.json `path` as JSON, or an `HfConfigError` naming it."""
    try:
        return json.loads(path.read_text(), parse_constant=_no_constant)
    except FileNotFoundError:
        raise HfConfigError(path, None, "no such file") from None
    except OSError as err:
        raise HfConfigError(path, None, err.strerror or str(err)) from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise HfConfigError(path, None, f"not valid JSON: {err}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON has (Python's json reads NaN and Infinity; transformers never "
                     "writes them)")


def load_hf_config(path: str | os.PathLike[str], share: str | None = None, name: str | None = None) -> ModelConfig:
    """Read a Hugging Face `config.json` of the Llama family; `share` "NdxG": its cyclically shared variant, `Nd`
    unique blocks applied `G` times (refused unless Nd x G equals num_hidden_layers)."""
    path = Path(path)
    cfg = from_hf_dict(_read_json(path), path, name)
    if share is None:
        return cfg
    try:
        return shared_variant(cfg, *parse_share(share))
    except ValueError as err:
        raise HfConfigError(path, "num_hidden_layers", f"--share {share}: {err}") from None
