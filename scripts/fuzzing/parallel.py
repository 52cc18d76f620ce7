"""Tensor parallelism and quantization (issues 20 and 21, tried as issue 22 tries every input): `sim.run --tp`
beyond what a model or a chip can take, the sweep's `tp` axis, a hwconfig's `interconnect` section malformed
(through a tensor-parallel trace, which needs it, and a plain one, which reads it all the same), `reference.demo
--tp` and `--quant` (unknown schemes, a group size that does not divide K, a quantized shard that splits a
group), and the fields trace format 5 adds (the header's `tp` and `tp_rank`, an op's `ranks`, a collective's op,
dtype and bytes). Each must be one clear line naming the flag, or the file and the field."""

from __future__ import annotations

import argparse
import json
import re

from scripts.fuzzing.bases import TP_TRACE, Base
from scripts.fuzzing.harness import Case, Generator
from scripts.fuzzing.inputs import NUMBERS, a100_text, alias_bomb, deep, set_leaf
from scripts.fuzzing.sweeps import spec_case
from scripts.fuzzing.tracefields import changed, setter
from scripts.fuzzing.traces import RUN, line_matching
from sim.run import MAX_TP

KIND = "parallel"
TP_RUN = ("--model", "tiny-4x3", "--launch", "eager", "--decoder", "sequential")  # 4 heads, 2 KV heads, d_ff 128
INTERCONNECT = re.compile(r"(?m)^interconnect:\n(?:  .*\n)+")


def run_cases() -> list[Case]:
    """`sim.run --tp` values the inputs class does not try: out of range, not integers, not dividing the KV heads,
    a chip whose interconnect cannot run the group."""
    flags = [
        (("--tp", str(MAX_TP + 1)), "reject", ("--tp",)), (("--tp", "2.5"), "reject", ("--tp",)),
        (("--tp", ""), "reject", ("--tp",)), (("--tp", "1e3"), "reject", ("--tp",)),
        (("--tp", "0x2"), "reject", ("--tp",)), (("--tp", "2", "-1"), "reject", ("--tp",)),
        (("--tp", "4"), "reject", ("--tp", "n_kv_heads")), (("--tp", "8"), "reject", ("--tp",)),
        (("--tp", "1024"), "reject", ("--tp",)),
        (("--tp", "2", "--hw", "jetson-orin", "a100"), "reject", ("jetson-orin.yaml", "'interconnect'")),
        (("--tp", "2", "--set", "interconnect.devices_per_node=1"), "reject", ("interconnect.devices_per_node",)),
        (("--tp", "2", "--set", "interconnect.link_bandwidth_bytes_per_s=.nan"), "reject",
         ("interconnect.link_bandwidth_bytes_per_s",)),
        (("--tp", "2", "--set", "interconnect.kind=carrier-pigeon"), "reject", ("interconnect.kind",)),
        (("--tp", "1", "2"), "accept", ()),
    ]
    return [Case(KIND, "sim.run " + " ".join(a), "sim.run", [*TP_RUN, *a], expect=e, where=w, timeout_s=300)
            for a, e, w in flags]


GOOD_SPEC = "grid:\n  hw: [a100]\n  model: [tiny-4x3]\n  tokens: [16]\n  launch: [eager]\n"


def sweep_cases() -> list[Case]:
    """The sweep's `tp` axis, refused when the spec is read (`sim.sweep --list`)."""
    axes = {"[0]": ("reject", "tp"), "[-1]": ("reject", "tp"), "[2.5]": ("reject", "tp"), "['2']": ("reject", "tp"),
            "[true]": ("reject", "tp"), "[.nan]": ("reject", "tp"), "[1e999]": ("reject", "tp"),
            f"[{MAX_TP + 1}]": ("reject", "tp"), "[" + "9" * 400 + "]": ("reject", "tp"), "2": ("accept", ""),
            "[]": ("reject", "tp"), "[null]": ("reject", "tp"), "{a: 1}": ("reject", "tp"),
            "[1, 1]": ("reject", "tp"), "[4]": ("reject", "n_kv_heads"), "[16]": ("reject", "devices_per_node"),
            "[1, 2]": ("accept", "")}
    cases = [spec_case(f"tp: {axis[:24]}", GOOD_SPEC + f"  tp: {axis}\n", ("--list",), expect, (field,) * bool(field))
             for axis, (expect, field) in axes.items()]
    no_link = GOOD_SPEC.replace("[a100]", "[a100, jetson-orin]") + "  tp: [2]\n"
    cases.append(spec_case("tp: [2] on a chip with no interconnect", no_link, ("--list",), "reject",
                           ("interconnect",)))
    for case in cases:  # spec_case makes a case of the sweep class
        case.kind = KIND
    return cases


def hw_case(name: str, text: str, expect: str, where: tuple[str, ...], tp_trace: bool = True) -> Case:
    """`sim.run` on the hwconfig `text`, over the tensor-parallel trace (or, not `tp_trace`, a tiny-4x3 run at TP 1
    traced on demand, which reads the section as well)."""
    run = ["--trace", str(TP_TRACE)] if tp_trace else list(TP_RUN)
    return Case(KIND, f"hwconfig {name}" + ("" if tp_trace else " (TP 1)"), "sim.run",
                ["--hw", "{tmp}/hw.yaml", *run, "--launch", "eager", "--json", "{tmp}/out.json"], expect=expect,
                where=("{tmp}/hw.yaml", *where), files={"hw.yaml": text.encode()}, results=("{tmp}/out.json",),
                timeout_s=300)


def interconnect_cases() -> list[Case]:
    """The `interconnect` section's fields given every hostile number, then the section malformed as a whole."""
    base = a100_text()
    cases = [hw_case(f"interconnect.{leaf}: {value[:12]}", set_leaf(base, f"interconnect.{leaf}", value), expect,
                     (f"interconnect.{leaf}",))
             for leaf in ("devices_per_node", "link_bandwidth_bytes_per_s", "collective_latency_s", "efficiency",
                          "compute_capability") for value, expect in NUMBERS]
    whole = {
        "missing": (INTERCONNECT.sub("", base), "reject", ("interconnect",)),
        "a list": (INTERCONNECT.sub("interconnect: [1, 2]\n", base), "reject", ("interconnect",)),
        "a string": (INTERCONNECT.sub("interconnect: nvswitch\n", base), "reject", ("interconnect",)),
        "an alias bomb": (INTERCONNECT.sub(f"interconnect: {alias_bomb()}\n", base), "reject", ("interconnect",)),
        "5000 deep": (INTERCONNECT.sub(f"interconnect: {deep()}\n", base), "reject", ("interconnect",)),
        "an unknown field": (base.replace("  nvls: false\n", "  nvls: false\n  hops: 2\n"), "reject", ("hops",)),
        "a field twice": (base.replace("  nvls: false\n", "  nvls: false\n  nvls: true\n"), "reject", ("nvls",)),
        "link bandwidth missing": (re.sub(r"(?m)^  link_bandwidth_bytes_per_s: .*\n", "", base), "reject",
                                   ("link_bandwidth_bytes_per_s",)),
        "kind unknown": (set_leaf(base, "interconnect.kind", "carrier-pigeon"), "reject", ("interconnect.kind",)),
        "kind a number": (set_leaf(base, "interconnect.kind", "3"), "reject", ("interconnect.kind",)),
        "kind loopback on a GPU": (set_leaf(base, "interconnect.kind", "loopback"), "reject", ("interconnect",)),
        "nvls 'yes'": (set_leaf(base, "interconnect.nvls", "'yes'"), "reject", ("interconnect.nvls",)),
        "nvls on compute capability 80": (set_leaf(base, "interconnect.nvls", "true"), "reject",
                                          ("interconnect.nvls",)),
        "devices_per_node 1 (the group of 2 beyond it)": (set_leaf(base, "interconnect.devices_per_node", "1"),
                                                          "reject", ("interconnect.devices_per_node",)),
        "a field's source missing": (re.sub(r"(?m)^  interconnect.efficiency: .*\n", "", base), "reject",
                                     ("sources.interconnect.efficiency",)),
        "null (no interconnect)": (INTERCONNECT.sub("interconnect: null\n", base), "reject", ("interconnect",)),
    }
    for name, (text, expect, where) in whole.items():
        cases.append(hw_case(name, text, expect, where))
    for name in ("a list", "kind unknown", "an unknown field", "nvls on compute capability 80"):
        text, expect, where = whole[name]
        cases.append(hw_case(name, text, expect, where, tp_trace=False))
    cases.append(hw_case("missing", whole["missing"][0], "accept", (), tp_trace=False))  # a single device
    return cases


def demo_cases() -> list[Case]:
    """`reference.demo --tp` and `--quant`, refused before any model is built (outside torchrun: --tp > 1 needs
    it, and says so, after the degree and the scheme are checked)."""
    demo = [
        (("--quant", "bogus"), "reject", ("--quant",)), (("--quant", ""), "reject", ("--quant",)),
        (("--quant", "INT8"), "reject", ("--quant",)), (("--quant", "int4-g33"), "reject", ("--quant",)),
        (("--quant", "int4-g0"), "reject", ("--quant",)), (("--quant", "int4-g-32"), "reject", ("--quant",)),
        (("--quant", "int4-g" + "9" * 400), "reject", ("--quant",)), (("--quant", "int2"), "reject", ("--quant",)),
        (("--quant", "int4-g128"), "reject", ("int4-g128",)),  # tiny-4x3: K = 64, 128 does not divide it
        (("--quant", "int8", "--quant-kernel", "bogus"), "reject", ("--quant-kernel",)),
        (("--tp", "0"), "reject", ("--tp",)), (("--tp", "-1"), "reject", ("--tp",)),
        (("--tp", "99999999999999999999"), "reject", ("--tp",)), (("--tp", "x"), "reject", ("--tp",)),
        (("--tp", "3"), "reject", ("--tp",)), (("--tp", "4"), "reject", ("--tp",)),
        (("--tp", "2"), "reject", ("--tp", "torchrun")),
        (("--tp", "2", "--timeout-s", "0"), "reject", ("--timeout-s",)),
        (("--tp", "2", "--timeout-s", "nan"), "reject", ("--timeout-s",)),
        (("--tp", "2", "--quant", "bogus"), "reject", ("--quant",)),
        (("--preset", "code-wide-4x3", "--tp", "2", "--quant", "int4-g128"), "reject", ("--tp", "128")),
        (("--quant", "int8", "--tokens", "4"), "accept", ()),
        (("--quant", "int4-g32", "--quant-kernel", "dequant", "--tokens", "4"), "accept", ()),
    ]
    out = []
    for argv, expect, where in demo:
        full = list(argv) if "--preset" in argv else ["--preset", "tiny-4x3", *argv]
        out.append(Case(KIND, "reference.demo " + " ".join(a[:24] for a in argv), "reference.demo", full,
                        expect=expect, where=where, timeout_s=300))
    return out


def trace_cases() -> list[Case]:
    """The fields format 5 adds, damaged in the tensor-parallel trace (through `sim.run --trace`)."""
    base = Base(TP_TRACE)
    collective = line_matching(base.lines, lambda r: r.get("type") == "op" and r["kind"] == "collective")
    matmul = line_matching(base.lines, lambda r: r.get("type") == "op" and r["kind"] == "matmul")
    record = json.loads(base.lines[collective - 1])

    edits = {
        **{f"header tp {v!r}": (1, setter(("tp",), v), "tp") for v in (0, -1, "2", 2.5, None, True, 1 << 40)},
        "header tp missing": (1, lambda r: {k: v for k, v in r.items() if k != "tp"}, "tp"),
        "header tp 1 with collectives of 2": (1, setter(("tp",), 1), ("tp", "ranks")),
        "header tp 3 with collectives of 2": (1, setter(("tp",), 3), ("tp", "ranks")),
        "header tp 16 (beyond the node)": (1, setter(("tp",), 16), ("tp", "devices_per_node")),
        **{f"header tp_rank {v!r}": (1, setter(("tp_rank",), v), "tp_rank") for v in (2, -1, "0", None, 0.5)},
        **{f"collective ranks {v!r}": (collective, setter(("ranks",), v), "ranks")
           for v in (0, -1, None, True, "2", 2.5, 3, 16, 1 << 40)},
        "collective ranks missing": (collective, lambda r: {k: v for k, v in r.items() if k != "ranks"}, "ranks"),
        "ranks on a matmul": (matmul, setter(("ranks",), 2), "ranks"),
        "collective op unknown": (collective, setter(("op",), "_c10d_functional.all_to_all.default"), "op"),
        "collective op an aten op": (collective, setter(("op",), "aten.add.Tensor"), "op"),
        "collective dtype unknown": (collective, setter(("in_dtypes",), ["complex32"]), "in_dtypes"),
        "collective dtype missing": (collective, setter(("in_dtypes",), []), "in_dtypes"),
        "collective bytes not whole elements": (collective, setter(("act_read_bytes",), record["act_read_bytes"] + 1),
                                                "act_read_bytes"),
        "a collective of kind matmul": (collective, setter(("kind",), "matmul"), ("ranks", "kind")),
    }
    out = []
    for name, (line, change, field) in edits.items():
        case = changed(RUN, base, f"trace {name}", line, change, field)
        case.kind = KIND
        out.append(case)
    return out


def cases(args: argparse.Namespace) -> list[Case]:
    return run_cases() + sweep_cases() + interconnect_cases() + demo_cases() + trace_cases()


GENERATOR = Generator(group=KIND, classes={KIND: "tensor parallelism and quantization (--tp, tp axis, interconnect, "
                                                  "--quant, trace v5 fields)"}, cases=cases)
