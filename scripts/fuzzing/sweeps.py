"""Sweep specs and Ray addresses (issue 22, class 7): malformed "x" multipliers of a hwconfig field, plots on axes
the grid lacks (refused when the spec is read, before any point runs: through `sim.sweep --list`), and every
kind of malformed `--ray-address` (no port, a port out of range, another scheme, the `ray://` form without the
Ray client installed, an address where no cluster answers, `auto` with no cluster running). Each must be one
clear line naming the field or the flag."""

from __future__ import annotations

import argparse
import json

from scripts.fuzzing.harness import Case, Generator

KIND = "sweep-ray"
GOOD = "grid:\n  hw: [a100]\n  model: [t5-base-4x3]\n  batch: [1, 2]\n  tokens: [128]\n  launch: [eager]\n"
# three swept axes besides the decoder: a heatmap takes two, `where` fixes the third
SWEPT = GOOD.replace("[128]", "[64, 128]") + "  dtype: [bfloat16, float32]\n"
FACTORS = ["x", "x.", "x..", "x1.2.3", "x-1", "x0", "x0.0", "xx2", "x1e999", "x1e-400", "X2", "2x", "x+1",
           "x\u0663", "x1_0", "x1e309", "x 2", "x2 ", " x2", "x1e300", "x1e-300", "x-0", "x.e1", "x1e", "xe5",
           "x" + "9" * 400, "x0x10", "x\t2", "x1,5"]
# factors that scale a field to a value in range: accepted
GOOD_FACTORS = {"x 2", "x2 ", " x2", "x\t2"}
RAY_ADDRESSES = ["garbage", "", " ", "ray://", "ray://127.0.0.1:10001", "ray://:1", "ray://host:1:2",
                 "127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:-1", "localhost:abc",
                 "http://127.0.0.1:8265", "a:b:c", "[::1]:1", "::1", "127.0.0.1", "256.1.1.1:6379",
                 "host name:1", "127.0.0.1:6379\n", "-1", ":6379", "x" * 10_000, "no-such-host.invalid:6379",
                 "127.0.0.1:1/path", "ray://127.0.0.1:10001?x=1", "auto"]


def spec_case(name: str, text: str, argv: tuple, expect: str, where: tuple, timeout_s: float = 60,
              names_spec: bool = True) -> Case:
    """`sim.sweep` on the spec `text`; a refusal names `where`, and the spec's path where `names_spec`."""
    return Case(KIND, f"sim.sweep {name}", "sim.sweep.cli", ["{tmp}/spec.yaml", *argv], expect=expect,
                files={"spec.yaml": text.encode()}, where=("{tmp}/spec.yaml",) * names_spec + where,
                timeout_s=timeout_s)


def factor_cases() -> list[Case]:
    cases = []
    for factor in FACTORS:
        text = GOOD + f"  set:\n    peak.clock_hz: [x1, {json.dumps(factor)}]\n"  # a JSON string is a YAML one
        expect = "any" if factor in GOOD_FACTORS else "reject"
        cases.append(spec_case(f"set: {factor[:16]!r}", text, ("--list",), expect, ("peak.clock_hz",)))
    cases.append(spec_case("set: x2 on a field with no number", GOOD + "  set:\n    name: [x2]\n", ("--list",),
                           "reject", ("name",)))
    cases.append(spec_case("set: x2 on tile.m (an integer)", GOOD + "  set:\n    tile.m: [x0.5, x1e30]\n",
                           ("--list",), "reject", ("tile.m",)))
    return cases


def plot_cases() -> list[Case]:
    plots = {
        "x on an unknown axis": ("{x: bogus, y: batch}", "bogus"),
        "y on an axis the grid does not sweep": ("{x: batch, y: streams}", "streams"),
        "x on a set field the grid lacks": ("{x: set.peak.clock_hz, y: batch}", "set.peak.clock_hz"),
        "x and y the same axis": ("{x: batch, y: batch}", "batch"),
        "y on the decoder (the speedup is between decoders)": ("{x: batch, y: decoder}", "decoder"),
        "where on an unknown axis": ("{x: batch, y: tokens, where: {bogus: 1}}", "bogus"),
        "where a value the axis lacks": ("{x: batch, y: tokens, where: {dtype: float16}}", "dtype"),
        "where on the x axis": ("{x: batch, y: tokens, where: {batch: 1}}", "batch"),
        "where not a mapping": ("{x: batch, y: tokens, where: [1]}", "where"),
        "x a list": ("{x: [batch], y: tokens}", "x"),
        "heatmap a string": ("batch", "heatmap"),
        "an unknown plot": (None, "scatter"),
        "no y": ("{x: batch}", "y"),
    }
    cases = []
    for name, (heatmap, field) in plots.items():
        text = SWEPT + ("plots:\n  scatter: {x: batch}\n" if heatmap is None else f"plots:\n  heatmap: {heatmap}\n")
        cases.append(spec_case(f"plots: {name}", text, ("--list",), "reject", (field,)))
    cases.append(spec_case("plots: a heatmap of two swept axes, the third fixed", SWEPT + "plots:\n  heatmap: "
                           "{x: batch, y: tokens, where: {dtype: float32}}\n", ("--list",), "accept", ()))
    return cases


def ray_cases() -> list[Case]:
    cases = []
    for address in RAY_ADDRESSES:
        expect = "any" if address == "auto" else "reject"  # a cluster may be running here
        cases.append(spec_case(f"--ray-address {address[:24]!r}", GOOD, ("--out", "{tmp}/out", "--ray-address",
                                                                          address), expect, ("--ray-address",),
                               names_spec=False))
    return cases


def cases(args: argparse.Namespace) -> list[Case]:
    return factor_cases() + plot_cases() + ray_cases()


GENERATOR = Generator(group=KIND, classes={KIND: "sweep specs (x factors, plots) and --ray-address"}, cases=cases)
