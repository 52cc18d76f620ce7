"""Flag values beyond what their use takes (issue 22, class 8): seeds beyond 64 bits (`reference.demo`), many
flip rates or a long flip profile name (`sim.run --flips`, a sweep's `flips`), names derived from inputs (a
model's name, its flips) that reach a cache file's name, long `--set` keys, thread and stream counts beyond any
machine. Each must be refused in one short line naming the flag, or run with every derived name bounded (never a
file name too long, a path outside the cache, a message that prints the whole value)."""

from __future__ import annotations

import argparse

from scripts.fuzzing.harness import Case, Generator
from scripts.fuzzing.models import yaml_with

KIND = "flags"
MANY_RATES = ",".join(["0.01"] * 10_000)
TINY = ("--model", "tiny-4x3", "--decoder", "speed", "--launch", "eager", "--tokens", "4")


def seed_cases() -> list[Case]:
    seeds = [(str(2**64), "reject"), (str(2**64 + 1), "reject"), (str(2**100), "reject"), ("1" + "0" * 30, "reject"),
             ("9" * 5000, "reject"), (str(2**64 - 1), "any"), (str(2**63), "any"), ("-1", "reject"),
             ("0x10", "reject"), ("1e3", "reject")]
    return [Case(KIND, f"reference.demo --seed {seed[:24]}", "reference.demo", ["--seed", seed, "--tokens", "4"],
                 expect=expect, where=("--seed",), timeout_s=120) for seed, expect in seeds]


def run_case(name: str, argv: tuple, expect: str, where: tuple, files: dict | None = None) -> Case:
    return Case(KIND, f"sim.run {name}", "sim.run", list(argv), expect=expect, where=where, files=files or {},
                timeout_s=120)


def flips_cases() -> list[Case]:
    profile = "p" * 10_000
    return [
        run_case("--flips (10,000 rates)", (*TINY, "--flips", MANY_RATES), "reject", ("--flips",)),
        run_case("--flips (3 rates for G = 3)", (*TINY, "--flips", "0.1,0.1,0.1"), "reject", ("--flips",)),
        run_case("--flips (a 10,000-character profile)", (*TINY, "--flips", profile), "reject", ("--flips",)),
        run_case("--flips (a path as a profile)", (*TINY, "--flips", "../../../../etc/passwd"), "reject",
                 ("--flips",)),
        run_case("--flips (1,000 rates of 1e-9)", (*TINY, "--flips", ",".join(["1e-9"] * 1000)), "reject",
                 ("--flips",)),
        run_case("--flips 0.1,0.2 (valid)", (*TINY, "--flips", "0.1,0.2"), "accept", ()),
        run_case("--flips 1e-300,0 (valid)", (*TINY, "--flips", "1e-300,0"), "any", ("--flips",)),
        run_case("--flips with 100 digits of precision", (*TINY, "--flips", "0." + "1" * 100 + ",0.1"), "any",
                 ("--flips",)),
    ]


def name_cases() -> list[Case]:
    """Model names that become part of a trace's cache file name."""
    names = {"5,000 characters": "n" * 5000, "a path up": "../../../../tmp/escaped", "a slash": "a/b",
             "a newline": '"a\\nb"', "NUL": '"a\\0b"', "dots": "..", "empty": '""', "spaces": '"  "',
             "unicode": '"\u00e9\u00e9\u00e9"'}
    cases = []
    for label, name in names.items():
        text = yaml_with("name", name)
        cases.append(run_case(f"--model YAML named {label}", ("--model", "{tmp}/m.yaml", "--decoder", "sequential",
                                                              "--launch", "eager", "--tokens", "4"),
                              "any", (("{tmp}/m.yaml", "name"),), {"m.yaml": text.encode()}))
    cases.append(run_case("--model YAML named 5,000 characters, --flips 0.1,0.2",
                          ("--model", "{tmp}/m.yaml", "--decoder", "speed", "--launch", "eager", "--tokens", "4",
                           "--flips", "0.1,0.2"), "any", (("{tmp}/m.yaml", "name"),),
                          {"m.yaml": yaml_with("name", "n" * 5000).encode()}))
    cases.append(run_case("--model config.json with _name_or_path of 5,000 characters",
                          ("--model", "{tmp}/config.json", "--decoder", "sequential", "--launch", "eager", "--tokens",
                           "4"), "any", (("{tmp}/config.json", "_name_or_path"),),
                          {"config.json": ('{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, '
                                           '"num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 256, '
                                           f'"_name_or_path": "org/{"n" * 5000}"}}').encode()}))
    return cases


def count_cases() -> list[Case]:
    return [
        run_case("--set (a 10,000-character key)", ("--launch", "eager", "--set", "k" * 10_000 + "=1"), "reject",
                 ("--set",)),
        run_case("--set (10,000 keys)", ("--launch", "eager", *(a for k in range(10_000) for a in (
            "--set", f"peak.k{k}=1"))), "reject", ("--set",)),
        run_case("--streams 2**64", ("--launch", "eager", "--streams", str(2**64)), "reject", ("--streams",)),
        Case(KIND, "sim.fitting.calibrate --threads 10**9", "sim.fitting.calibrate",
             ["--device", "cpu", "--threads", "1000000000", "--out", "{tmp}/o.yaml", "--quick"], expect="reject",
             where=("--threads",), timeout_s=120),
        Case(KIND, "sim.sweep flips of 10,000 rates", "sim.sweep.cli", ["{tmp}/s.yaml", "--list"], expect="reject",
             files={"s.yaml": f"grid:\n  model: [tiny-4x3]\n  flips: ['{MANY_RATES}']\n".encode()},
             where=("flips",), timeout_s=120),
        Case(KIND, "sim.sweep flips a 10,000-character profile", "sim.sweep.cli", ["{tmp}/s.yaml", "--list"],
             expect="reject", files={"s.yaml": f"grid:\n  model: [tiny-4x3]\n  flips: [{'p' * 10_000}]\n".encode()},
             where=("flips",), timeout_s=120),
        Case(KIND, "sim.sweep a model named 5,000 characters", "sim.sweep.cli", ["{tmp}/s.yaml", "--list"],
             expect="any", files={"s.yaml": b"grid:\n  model: [m.yaml]\n",  # relative: the case runs in {tmp}
                                  "m.yaml": yaml_with("name", "n" * 5000).encode()},
             where=("name",), timeout_s=120),
    ]


def cases(args: argparse.Namespace) -> list[Case]:
    return seed_cases() + flips_cases() + name_cases() + count_cases()


GENERATOR = Generator(group=KIND, classes={KIND: "flag values (seeds, flips, derived names, counts)"},
                      cases=cases)
