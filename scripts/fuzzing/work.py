"""Inputs that ask for work beyond any real run (issue 22, class 1): model configs whose layer, width, FFN or
vocabulary sizes are in the billions and beyond or whose products overflow a tensor's size (through
`sim.run --model`, a config.json and a model YAML file), an absurd `--batch` or `--tokens`, sweep grids of a
million points and more (`sim.sweep --list`), absurd `--workers` and `--bench` counts, and the demo asked to decode
a 7B preset on this CPU. Each must be refused at once, in one line that names the field or flag and gives the
figure and the limit: never a hang, a memory error or a failure inside torch."""

from __future__ import annotations

import argparse
import json

from scripts.fuzzing.harness import Case, Generator
from scripts.fuzzing.models import HF_BASE, RUN, yaml_with

KIND = "work"
GOOD_SPEC = "grid:\n  hw: [a100]\n  model: [t5-base-4x3]\n  tokens: [128]\n  launch: [eager]\n"


def hf(**changes: int) -> bytes:
    return json.dumps({**HF_BASE, **changes}).encode()


def model_case(name: str, data: bytes, suffix: str, where: tuple, expect: str = "reject", argv: tuple = RUN,
               timeout_s: float = 120) -> Case:
    path = f"{{tmp}}/model{suffix}"
    return Case(KIND, f"sim.run --model {name}", "sim.run", ["--model", path, *argv], expect=expect,
                files={f"model{suffix}": data}, where=(path, *where), timeout_s=timeout_s)


def config_cases() -> list[Case]:
    big = [("hidden_size", v) for v in (4_096_000_000, 2**31, 2**40, 2**63, 2**64, 10**30)]
    big += [("intermediate_size", v) for v in (10**9, 2**40, 10**30)]
    big += [("vocab_size", v) for v in (10**9, 2**40, 2**63)]
    big += [("num_hidden_layers", v) for v in (3_200_000_000, 10**6, 2**31)]
    big += [("max_position_embeddings", v) for v in (2**40, 10**30)]
    cases = [model_case(f"config.json {field} {value:.3g}", hf(**{field: value}), ".json", (field,))
             for field, value in big]
    cases += [
        model_case("config.json heads 2**20 of hidden 2**21", hf(hidden_size=2**21, num_attention_heads=2**20,
                                                                  num_key_value_heads=2**20), ".json",
                   (("hidden_size", "num_attention_heads"),)),
        model_case("config.json hidden and vocabulary 2**33 (their product overflows int64)",
                   hf(hidden_size=2**33, vocab_size=2**33), ".json", (("hidden_size", "vocab_size"),)),
        model_case("config.json every size large, 2.8e14 parameters", hf(
            hidden_size=65536, intermediate_size=262144, num_attention_heads=512, num_key_value_heads=512,
            num_hidden_layers=4096, vocab_size=262144), ".json", (("parameters", "num_hidden_layers"),)),
    ]
    yaml_big = [("d_model", "1099511627776"), ("n_unique_layers", "1000000000"), ("n_groups", "1000000"),
                ("d_ff", "1000000000000"), ("vocab_size", "4611686018427387904"), ("max_seq_len", "1125899906842624"),
                ("n_heads", "4294967296"), ("n_encoder_layers", "100000000")]
    cases += [model_case(f"model.yaml {field} {value}", yaml_with(field, value).encode(), ".yaml", (field,))
              for field, value in yaml_big]
    return cases


def flag_cases() -> list[Case]:
    cases = []
    for value in ("1000000000", "2147483648", "9223372036854775808", "1" + "0" * 30):
        cases.append(Case(KIND, f"sim.run --batch {value[:12]}", "sim.run", ["--batch", value, "--launch", "eager"],
                          expect="reject", where=("--batch",), timeout_s=120))
        cases.append(Case(KIND, f"sim.run --model tiny-4x3 --tokens {value[:12]}", "sim.run",
                          ["--model", "tiny-4x3", "--tokens", value, "--launch", "eager"], expect="reject",
                          where=("--tokens",), timeout_s=120))
    cases += [
        Case(KIND, "sim.run --tokens 10**9 (the default models)", "sim.run", ["--tokens", "1000000000", "--launch",
                                                                              "eager"], expect="reject",
             where=("--tokens",), timeout_s=120),
        Case(KIND, "sim.run --model tiny-4x3 --batch 65536 --tokens 2", "sim.run",
             ["--model", "tiny-4x3", "--batch", "65536", "--tokens", "2", "--launch", "eager", "--decoder",
              "sequential"], expect="any", where=(("--batch", "peak.dram_capacity_bytes", "host memory"),),
             timeout_s=300),
    ]
    return cases


def sweep_case(name: str, spec: str, argv: tuple = ("--list",), where: tuple = ("{tmp}/spec.yaml",),
               expect: str = "reject") -> Case:
    return Case(KIND, f"sim.sweep {name}", "sim.sweep.cli", ["{tmp}/spec.yaml", *argv], expect=expect,
                files={"spec.yaml": spec.encode()}, where=where, timeout_s=120)


def axis(n: int, start: int = 1) -> str:
    return "[" + ", ".join(str(start + i) for i in range(n)) + "]"


def sweep_cases() -> list[Case]:
    million = f"grid:\n  batch: {axis(1000)}\n  tokens: {axis(1000)}\n  launch: [eager]\n"
    trillion = "grid:\n" + "".join(f"  {a}: {axis(100)}\n" for a in ("batch", "tokens", "streams")) + \
        "  set:\n" + "".join(f"    {f}: [{', '.join(f'x{1 + i / 100}' for i in range(100))}]\n"
                             for f in ("peak.clock_hz", "efficiency.dram", "efficiency.l2"))
    sets = "grid:\n  set:\n" + "".join(f"    {f}: [{', '.join(f'x{1 + i / 10}' for i in range(10))}]\n" for f in (
        "peak.clock_hz", "efficiency.dram", "efficiency.l2", "efficiency.matrix", "efficiency.vector",
        "host.launch_eager_s", "host.kernel_min_s", "peak.dram_bandwidth_bytes_per_s", "peak.l2_capacity_bytes",
        "peak.l2_bandwidth_bytes_per_s"))
    listed = "points:\n" + f"  - {{batch: {axis(1000)}, tokens: {axis(1000)}}}\n" * 3
    many = "points:\n" + "".join(f"  - {{batch: {b}, tokens: {t}}}\n" for b in range(1, 501) for t in range(1, 3))
    cases = [sweep_case("a grid of 10**6 points, --list", million, where=("{tmp}/spec.yaml", "points")),
             sweep_case("a grid of 10**6 points", million, ("--out", "{tmp}/out"), ("{tmp}/spec.yaml", "points")),
             sweep_case("a grid of 10**12 points, --list", trillion, where=("{tmp}/spec.yaml", "points")),
             sweep_case("10 set axes of 10 values (10**10 points)", sets, where=("{tmp}/spec.yaml", "points")),
             sweep_case("3 listed points of 10**6 each", listed, where=("{tmp}/spec.yaml", "points")),
             sweep_case("1,000 listed points, --list", many, expect="any")]
    for value in ("1000000", "100000", "9223372036854775808", "1" + "0" * 30):
        cases.append(sweep_case(f"--workers {value[:12]}", GOOD_SPEC, ("--workers", value, "--out", "{tmp}/o"),
                                ("--workers",)))
        cases.append(sweep_case(f"--bench {value[:12]}", GOOD_SPEC, ("--bench", "1", value), ("--bench",)))
    return cases


def demo_cases() -> list[Case]:
    demo = [(("--preset", "llama2-7b"), "reject", ("--preset", "llama2-7b")),
            (("--preset", "llama2-7b", "--dtype", "bfloat16"), "reject", ("--preset", "llama2-7b")),
            (("--preset", "llama2-7b-8x4", "--compile"), "reject", ("--preset",)),
            (("--preset", "llama-1b"), "reject", ("--preset", "llama-1b")),
            (("--preset", "llama-1b", "--tokens", "2000"), "reject", ("--preset",)),
            (("--preset", "t5-base-12", "--tokens", "4"), "any", ("--preset",))]
    return [Case(KIND, "reference.demo " + " ".join(a), "reference.demo", list(a), expect=e, where=w, timeout_s=300)
            for a, e, w in demo]


def cases(args: argparse.Namespace) -> list[Case]:
    return config_cases() + flag_cases() + sweep_cases() + demo_cases()


GENERATOR = Generator(group=KIND, classes={KIND: "work beyond any real run (sizes, counts, grids, the demo)"},
                      cases=cases)
