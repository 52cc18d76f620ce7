"""Hostile model configs (issue 22, class 4), through `sim.run --model FILE` (the trace provider reads them): a
Hugging Face config.json with a key given twice, numbers JSON has not (NaN, Infinity) or that overflow to
infinity, an absurd norm epsilon or RoPE base, negative or zero counts, values of the wrong type, nesting far
deeper than any config, integers of thousands of digits and values long enough that an error printing them in
full floods the terminal; a model config YAML file with the same faults in ModelConfig's fields. Each must be
refused in one line that names the file and the field, never an internal file, a value cut short.

A small valid config of each kind runs first (a control)."""

from __future__ import annotations

import argparse
import json

from scripts.fuzzing.harness import Case, Generator
from scripts.fuzzing.mutate import nested

KIND = "model-config"
# a tiny Llama-family config.json: traced on the meta device in seconds
HF_BASE = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
           "vocab_size": 256, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "eos_token_id": 1, "hidden_act": "silu", "tie_word_embeddings": False}
# ModelConfig's fields, as a model config YAML file holds them
YAML_BASE = ("name: fuzz-tiny\nvocab_size: 256\nd_model: 64\nn_heads: 4\nn_kv_heads: 2\nd_ff: 128\n"
             "n_unique_layers: 2\nn_groups: 3\nmax_seq_len: 512\nnorm_eps: 1.0e-6\nrope_theta: 10000.0\neos_id: 1\n")
LONG = "x" * 100_000  # a value whose repr would flood an error line
RUN = ["--decoder", "sequential", "--launch", "eager", "--tokens", "4"]


def hf_text(changes: dict[str, str], drop: tuple[str, ...] = ()) -> bytes:
    """HF_BASE as JSON text, each field in `changes` given the raw JSON text there (added when new)."""
    fields = {k: json.dumps(v) for k, v in HF_BASE.items() if k not in drop}
    fields.update(changes)
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


def hf_case(name: str, data: bytes, expect: str, field: str | tuple[str, ...] | None) -> Case:
    where: tuple = ("{tmp}/config.json",) + ((field,) if field else ())
    return Case(KIND, f"config.json {name}", "sim.run", ["--model", "{tmp}/config.json", *RUN], expect=expect,
                files={"config.json": data}, where=where, timeout_s=120)


def yaml_case(name: str, text: str, expect: str, field: str | None) -> Case:
    where: tuple = ("{tmp}/model.yaml",) + ((field,) if field else ())
    return Case(KIND, f"model.yaml {name}", "sim.run", ["--model", "{tmp}/model.yaml", *RUN], expect=expect,
                files={"model.yaml": text.encode()}, where=where, timeout_s=120)


def yaml_with(field: str, value: str) -> str:
    lines = [line for line in YAML_BASE.splitlines() if not line.startswith(f"{field}:")]
    return "\n".join([*lines, f"{field}: {value}"]) + "\n"


def hf_cases() -> list[Case]:
    dup = b'{"hidden_size": 64, ' + hf_text({})[1:]
    cases = [
        hf_case("hidden_size given twice", dup, "reject", "hidden_size"),
        hf_case("model_type given twice", b'{"model_type": "mistral", ' + hf_text({})[1:], "reject", "model_type"),
        hf_case("rope_scaling given twice (nested key)", hf_text({"rope_scaling": '{"type": "linear", "type": 2}'}),
                "reject", "rope_scaling"),
    ]
    for value in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        for field in ("rms_norm_eps", "rope_theta", "hidden_size"):
            cases.append(hf_case(f"{field} {value}", hf_text({field: value}), "reject", field))
    for value in ("1e300", "1e-300", "0", "-1e-6", "1.0", "0.5", "5e-324"):
        cases.append(hf_case(f"rms_norm_eps {value}", hf_text({"rms_norm_eps": value}), "reject", "rms_norm_eps"))
    for value in ("1e300", "1e-300", "0.001"):
        cases.append(hf_case(f"rope_theta {value}", hf_text({"rope_theta": value}), "reject", "rope_theta"))
    counts = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
              "vocab_size", "max_position_embeddings")
    for field in counts:
        for value in ("-1", "0", "-9223372036854775809", "true", "2.5", '"64"', "null", "[]", "{}"):
            expect = "reject"
            cases.append(hf_case(f"{field} {value}", hf_text({field: value}), expect, field))
    cases += [
        hf_case("eos_token_id -1", hf_text({"eos_token_id": "-1"}), "reject", "eos_token_id"),
        hf_case("eos_token_id true", hf_text({"eos_token_id": "true"}), "reject", "eos_token_id"),
        hf_case("eos_token_id 10**40", hf_text({"eos_token_id": "1" + "0" * 40}), "reject", "eos_token_id"),
        hf_case("tie_word_embeddings 1", hf_text({"tie_word_embeddings": "1"}), "reject", "tie_word_embeddings"),
        hf_case("hidden_size of 5000 digits", hf_text({"hidden_size": "1" * 5000}), "reject", "hidden_size"),
        hf_case("vocab_size of 400 digits", hf_text({"vocab_size": "9" * 400}), "reject", "vocab_size"),
        hf_case("rope_scaling 100,000 deep", hf_text({"rope_scaling": nested(100_000)}), "reject", "rope_scaling"),
        hf_case("rope_scaling 500 deep", hf_text({"rope_scaling": nested(500, "1")}), "reject", "rope_scaling"),
        hf_case("an unused key 100 deep", hf_text({"quantization_config": nested(100, "1")}), "reject",
                "quantization_config"),
        hf_case("an unused key with NaN", hf_text({"initializer_range": "NaN"}), "reject", "initializer_range"),
        hf_case("model_type 100,000 characters", hf_text({"model_type": json.dumps(LONG)}), "reject", "model_type"),
        hf_case("hidden_act 100,000 characters", hf_text({"hidden_act": json.dumps(LONG)}), "reject", "hidden_act"),
        hf_case("architectures of 100,000 names", hf_text({"architectures": json.dumps(["X"] * 100_000)}),
                "reject", "architectures"),
        hf_case("rope_scaling a long list", hf_text({"rope_scaling": json.dumps(list(range(100_000)))}), "reject",
                "rope_scaling"),
        hf_case("a top-level list", b"[1, 2, 3]", "reject", None),
        hf_case("a top-level string", b'"llama"', "reject", None),
        hf_case("empty", b"", "reject", None),
        hf_case("not UTF-8", hf_text({}).replace(b'"llama"', b'"ll\xe9ama"'), "reject", None),
        hf_case("UTF-16", hf_text({}).decode().encode("utf-16"), "reject", None),
        hf_case("a 20 MB config", hf_text({"padding": json.dumps("x" * (20 << 20))}), "reject", None),
    ]
    return cases


def yaml_cases() -> list[Case]:
    cases = [yaml_case("d_model given twice", YAML_BASE + "d_model: 128\n", "reject", "d_model")]
    for field in ("vocab_size", "d_model", "n_heads", "n_kv_heads", "d_ff", "n_unique_layers", "n_groups",
                  "max_seq_len"):
        for value in ("-1", "0", ".nan", "true", "2.5", "'64'", "null", "1e999"):
            cases.append(yaml_case(f"{field} {value}", yaml_with(field, value), "reject", field))
    for field in ("norm_eps", "rope_theta"):
        for value in (".nan", ".inf", "-1.0", "0", "1.0e+300", "1.0e-300", "true", "'1e-6'"):
            cases.append(yaml_case(f"{field} {value}", yaml_with(field, value), "reject", field))
    cases += [
        yaml_case("n_encoder_layers -1", yaml_with("n_encoder_layers", "-1"), "reject", "n_encoder_layers"),
        yaml_case("eos_id true", yaml_with("eos_id", "true"), "reject", "eos_id"),
        yaml_case("eos_id 1e3", yaml_with("eos_id", "1.0e+3"), "reject", "eos_id"),
        yaml_case("ffn 100,000 characters", yaml_with("ffn", LONG), "reject", "ffn"),
        yaml_case("an unknown field 100,000 characters long", YAML_BASE + LONG + ": 1\n", "reject", None),
        yaml_case("name a list", yaml_with("name", "[a, b]"), "reject", "name"),
        yaml_case("qkv_bias 'yes'", yaml_with("qkv_bias", "'yes'"), "reject", "qkv_bias"),
    ]
    return cases


def cases(args: argparse.Namespace) -> list[Case]:
    controls = [hf_case("as given", hf_text({}), "accept", None), yaml_case("as given", YAML_BASE, "accept", None)]
    for c in controls:
        c.control = True
    return controls + hf_cases() + yaml_cases()


GENERATOR = Generator(group=KIND, classes={KIND: "model configs through `sim.run --model`"}, cases=cases)
