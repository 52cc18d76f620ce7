"""Hostile inputs to the command lines' readers and flags: hwconfigs mutated from hwconfigs/a100.yaml (every
numeric field given hostile numbers; encodings, duplicate and unknown keys, missing sections, alias bombs, deep
nesting, paths that are not regular files) through `sim.run --hw`; flag values, model configs and sweep specs
through `sim.run`, `reference.demo`, `reference.capture.tracing`, `sim.fitting.validate` and `sim.sweep`; a
measured trace whose header's end-to-end times are damaged through `sim.fitting.validate`. Every case is listed
here (none drawn at random)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from functools import partial
from pathlib import Path

import yaml

from scripts.fuzzing.bases import A100, H200_CALIBRATED, MEASURED, ROOT, TRACE, trace_lines
from scripts.fuzzing.harness import Case, Generator, Node
from scripts.fuzzing.mutate import alias_bomb, dumps, gz, gzipped, nested, put

NUMBERS = [  # (YAML text, expectation): hostile values for a number
    (".nan", "reject"), (".NaN", "reject"), (".inf", "reject"), ("-.inf", "reject"), ("1e999", "reject"),
    ("-1e999", "reject"), ("-1", "reject"), ("0", "any"), ("1e308", "any"), ("1e-300", "any"), ("5e-324", "any"),
    ("1" + "0" * 400, "reject"), ("'1e12'", "reject"), ("true", "reject"), ("null", "reject"), ("[]", "reject"),
    ("{}", "reject"), ("0144", "reject"), ("1:30", "reject"), ("2.5", "any"), ("1_000", "any"),
]


def a100_text() -> str:
    return A100.read_text()


def set_leaf(text: str, dotted: str, value: str) -> str:
    """`text` with the value of `dotted` (a field of a100.yaml, at most three levels) replaced."""
    lines = text.splitlines()
    parts = dotted.split(".")
    depth = 0
    for i, line in enumerate(lines):
        indent = "  " * depth
        if line.startswith(f"{indent}{parts[depth]}:"):
            if depth == len(parts) - 1:
                lines[i] = f"{indent}{parts[depth]}: {value}"
                return "\n".join(lines) + "\n"
            depth += 1
    raise KeyError(dotted)


OPTIONAL_SECTIONS = """classes:
  matmul:
    efficiency: 0.8
    fixed_s: 1.0e-6
    memory_efficiency: 0.9
ops:
  matmul:
    aten.mm.default:
      efficiency: 0.7
      fixed_s: 2.0e-6
compiled:
  library_fixed_s: 1.0e-6
  generated:
    efficiency: 0.6
    fixed_s: 1.0e-6
    memory_efficiency: 0.8
"""
def with_optional_sections(text: str) -> str:
    """`text` (a hwconfig) with OPTIONAL_SECTIONS in place of the optional sections it has (a100.yaml ships a
    classes section: two would be a key given twice)."""
    bare = re.sub(r"^(classes|ops|compiled):\n(?:  .*\n)+", "", text, flags=re.M)
    return bare.replace("\nsources:", "\n" + OPTIONAL_SECTIONS + "sources:")


OPTIONAL_LEAVES = ["classes.matmul.efficiency", "classes.matmul.fixed_s", "classes.matmul.memory_efficiency",
                   "compiled.library_fixed_s", "compiled.generated.efficiency", "compiled.generated.fixed_s",
                   "compiled.generated.memory_efficiency"]


def leaves(text: str) -> list[str]:
    """The numeric fields of a hwconfig text (dotted)."""
    out = []

    def walk(node: object, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(prefix + k)

    raw = yaml.safe_load(text)
    walk({k: v for k, v in raw.items() if k in ("peak", "host", "efficiency", "tile")}, "")
    return out


def deep() -> str:
    return nested(5000, "1")


def hw_path_case(name: str, path: str, expect: str = "reject", **kw: object) -> Case:
    """`sim.run --hw PATH` for a path that is not a readable regular file."""
    return Case("hwconfig", name, "sim.run", ["--hw", path, "--trace", str(TRACE)], expect=expect, where=(path,),
                **kw)


def hw_case(name: str, text: str | bytes, expect: str, where: tuple[str, ...] = ()) -> Case:
    data = text.encode() if isinstance(text, str) else text
    return Case("hwconfig", name, "sim.run", ["--hw", "{tmp}/hw.yaml", "--trace", str(TRACE), "--launch", "eager",
                                              "compiled", "--json", "{tmp}/out.json"], expect=expect,
                where=("{tmp}/hw.yaml", *where), files={"hw.yaml": data}, results=("{tmp}/out.json",))


def structural_cases(base: str) -> list[Case]:
    with_optional = with_optional_sections(base)
    cases = [
        hw_case("a100 as shipped", base, "accept"),
        hw_case("a100 with classes, ops, compiled", with_optional, "accept"),
        hw_case("utf-8 with a BOM", "\ufeff" + base, "accept"),
        hw_case("duplicate key peak.clock_hz", base.replace("  clock_hz: 1.41e+9\n",
                                                             "  clock_hz: 1.41e+9\n  clock_hz: 2.0e+9\n"),
                "reject", ("clock_hz",)),
        hw_case("duplicate top-level key name", base + 'name: "other"\n', "reject", ("name",)),
        hw_case("non-UTF-8: latin-1 name", base.replace('"NVIDIA A100', '"NVIDIA \xe9A100').encode("latin-1"),
                "reject"),
        hw_case("UTF-16 file", base.encode("utf-16"), "reject"),
        hw_case("gzip-compressed file", gzipped(base.encode()), "reject"),
        hw_case("binary bytes", bytes(range(256)) * 16, "reject"),
        hw_case("NUL byte in a value", base.replace("kind: gpu", "kind: g\x00pu"), "reject"),
        hw_case("empty file", "", "reject"),
        hw_case("only a comment", "# nothing\n", "reject"),
        hw_case("two documents", base + "---\n" + base, "reject"),
        hw_case("top-level list", "- 1\n- 2\n", "reject"),
        hw_case("top-level scalar", "42\n", "reject"),
        hw_case("tab indentation", base.replace("  clock_hz", "\tclock_hz"), "reject"),
        hw_case("unclosed bracket", base.replace("name: ", "name: ["), "reject"),
        hw_case("unknown top-level key", base + "colour: green\n", "reject", ("colour",)),
        hw_case("unknown dtype", base.replace("    float32: 1.95e+13\n  vector", "    float32: 1.95e+13\n    int4: "
                                              "1.0e+15\n  vector"), "reject", ("int4",)),
        hw_case("unknown kernel class", re.sub(r"(?m)^classes:\n(?:  .*\n)+", "", base) +
                "classes:\n  warp:\n    efficiency: 0.5\n", "reject", ("warp",)),  # in place of a100's classes
        hw_case("compiled: null (optional)", base + "compiled: null\n", "accept"),
        hw_case("compiled without generated", base + "compiled:\n  library_fixed_s: 1.0e-6\n", "reject",
                ("compiled.generated",)),
        hw_case("huge notes (20 MB)", base.replace("notes: ", "notes: " + '"' + "x" * (20 << 20) + '" #'),
                "any"),
        hw_case("10 MB of nested flow mappings", base + "colour: " + "{a: " * 200_000 + "1" + "}" * 200_000 + "\n",
                "reject"),
        hw_case("an alias of a scalar (harmless)", base.replace("kind: gpu", "kind: &k gpu").replace(
            "notes: ", "notes: *k #"), "accept"),
    ]
    return cases + section_cases(base) + file_cases(base)


def section_cases(base: str) -> list[Case]:
    """Sections missing or of the wrong type; alias bombs and deep nesting under each place that takes a value."""
    cases = []
    for section in ("peak", "host", "efficiency", "tile", "sources"):
        kept = re.sub(rf"(?m)^{section}:\n(  .*\n)+", "", base)
        cases.append(hw_case(f"section {section} missing", kept, "reject", (section,)))
        cases.append(hw_case(f"section {section} a list", re.sub(rf"(?m)^{section}:\n(  .*\n)+",
                                                                 f"{section}: [1, 2]\n", base), "reject", (section,)))
    for where in ("name", "kind", "notes", "peak.clock_hz", "classes", "compiled", "tile.m"):
        if "." in where:
            text = set_leaf(base, where, alias_bomb())
        elif where in ("classes", "compiled"):  # in place of the section a100.yaml may ship
            text = re.sub(rf"(?m)^{where}:\n(  .*\n)+", "", base) + f"{where}: {alias_bomb()}\n"
        else:
            text = re.sub(rf"(?m)^{where}: .*$", f"{where}: {alias_bomb()}", base)
        cases.append(hw_case(f"alias expansion bomb under {where}", text, "reject", (where,)))
        text = text.replace(alias_bomb(), deep())
        cases.append(hw_case(f"5000-deep nesting under {where}", text, "reject", (where,)))
    cases.append(hw_case("5000-deep nesting at the top", deep() + "\n", "reject"))
    return cases


def file_cases(base: str) -> list[Case]:
    """--hw paths that are not readable regular files."""
    return [
        hw_path_case("a directory", "{tmp}/dir", files={"dir/x": b""}),
        hw_path_case("a missing file", "{tmp}/none.yaml"),
        hw_path_case("/dev/zero (endless)", "/dev/zero", timeout_s=30),
        hw_path_case("a named pipe nobody writes", "{tmp}/fifo", files={"fifo": Node("fifo")}, timeout_s=30),
        # root reads a file of mode 0: then reading it is the right outcome
        hw_path_case("an unreadable file", "{tmp}/ro/hw.yaml", "any", files={"ro/hw.yaml": Node(data=base.encode(),
                                                                                                 mode=0)}),
    ]


def hwconfig_cases() -> list[Case]:
    base = a100_text()
    cases = []
    for leaf in leaves(base):
        for value, expect in NUMBERS:
            cases.append(hw_case(f"{leaf}: {value[:12]}", set_leaf(base, leaf, value), expect, (leaf,)))
    with_optional = with_optional_sections(base)
    for leaf in OPTIONAL_LEAVES:
        for value, expect in NUMBERS:
            cases.append(hw_case(f"{leaf}: {value[:12]}", set_leaf(with_optional, leaf, value), expect, (leaf,)))
    return cases + structural_cases(base)


# --------------------------------------------------------------------------------------------- command lines

def run_case(flag_value: tuple[str, ...], expect: str, where: tuple[str, ...], **kw: object) -> Case:
    argv = ["--trace", str(TRACE), "--launch", "eager", *flag_value] if "--model" not in flag_value else list(
        flag_value)
    return Case("cli", "sim.run " + " ".join(flag_value), "sim.run", argv, expect=expect, where=where, **kw)


def cli_cases() -> list[Case]:
    """Flag values and files through every command line that takes them."""
    return run_flag_cases() + other_command_cases() + sweep_cases()


def set_flag_cases() -> list[Case]:
    """`python -m sim.run --set KEY=VALUE`: values no hwconfig may hold, YAML that must not be read, bad keys."""
    return [
        run_case(("--set", "peak.dram_bandwidth_bytes_per_s=.nan"), "reject", ("--set", "peak.dram_bandwidth")),
        run_case(("--set", "efficiency.dram=.nan"), "reject", ("--set", "efficiency.dram")),
        run_case(("--set", "efficiency.l2=1e-300"), "any", ("--set", "efficiency.l2")),
        run_case(("--set", "host.kernel_min_s=.inf"), "reject", ("--set", "host.kernel_min_s")),
        run_case(("--set", "host.launch_eager_s=1e308"), "any", ("--set", "host.launch_eager_s")),
        run_case(("--set", "peak.clock_hz=1e-300"), "any", ("--set", "peak.clock_hz")),
        run_case(("--set", "peak.clock_hz=["), "reject", ("--set", "peak.clock_hz")),
        run_case(("--set", "peak.clock_hz=*a"), "reject", ("--set", "peak.clock_hz")),
        run_case(("--set", "peak.clock_hz=" + deep()), "reject", ("--set", "peak.clock_hz")),
        run_case(("--set", "peak.compute_units=0144"), "reject", ("--set", "peak.compute_units")),
        run_case(("--set", "peak.compute_units=" + "9" * 400), "reject", ("--set", "peak.compute_units")),
        run_case(("--set", "peak.compute_units=" + "9" * 5000), "reject", ("--set", "peak.compute_units")),
        run_case(("--set", "peak.compute_units=1e999"), "reject", ("--set", "peak.compute_units")),
        run_case(("--set", "peak.matrix_flops_per_s.bfloat16=-1"), "reject", ("--set", "bfloat16")),
        run_case(("--set", "tile.m=1e308"), "reject", ("--set", "tile.m")),
        run_case(("--set", "peak=1"), "reject", ("--set", "peak")),
        run_case(("--set", "=1"), "reject", ("--set",)),
    ]


def run_flag_cases() -> list[Case]:
    """`python -m sim.run`: --set, --model, output paths, counts, --share, --flips."""
    a100 = a100_text().encode()
    return [
        *set_flag_cases(),
        run_case(("--model", "bogus-preset"), "reject", ("--model", "bogus-preset")),
        run_case(("--model", "{tmp}"), "reject", ("--model", "{tmp}")),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"),
                 files={"m.yaml": b"d_model: [\n"}),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"),
                 files={"m.yaml": b"name: x\nname: y\n"}),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"),
                 files={"m.yaml": ("x: " + alias_bomb()).encode()}),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"),
                 files={"m.yaml": b"\xff\xfe\x00"}),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"), files={"m.yaml": b"- 1\n"}),
        run_case(("--model", "{tmp}/config.json"), "reject", ("--model", "{tmp}/config.json"),
                 files={"config.json": b"{\"a\": NaN"}),
        run_case(("--json", "{tmp}"), "reject", ("--json", "{tmp}")),
        run_case(("--json", "{tmp}/f/out.json"), "reject", ("--json", "{tmp}/f/out.json"), files={"f": b"x"}),
        # root writes into a read-only folder: then writing is the right outcome
        run_case(("--json", "{tmp}/ro/out.json"), "any" if os.geteuid() == 0 else "reject",
                 ("--json", "{tmp}/ro/out.json"), files={"ro": Node("folder", mode=0o500)}),
        run_case(("--plot", "{tmp}"), "reject", ("--plot", "{tmp}")),
        run_case(("--perfetto", "{tmp}/f/t.json"), "reject", ("--perfetto", "{tmp}/f/t.json"), files={"f": b"x"}),
        run_case(("--tokens", "-1"), "reject", ("--tokens",)),
        run_case(("--tokens", "abc"), "reject", ("--tokens",)),
        run_case(("--batch", "0"), "reject", ("--batch",)),
        run_case(("--streams", "0"), "reject", ("--streams",)),
        run_case(("--streams", "99999999999999999999"), "any", ("--streams",)),
        # tensor parallelism (issue 20): the flag, the model's heads, the hwconfig's interconnect, a given trace
        run_case(("--tp", "0"), "reject", ("--tp",)),
        run_case(("--tp", "-2"), "reject", ("--tp",)),
        run_case(("--tp", "99999999999999999999"), "reject", ("--tp",)),
        run_case(("--tp", "2"), "reject", ("--trace", "--tp")),
        run_case(("--model", "tiny-4x3", "--tp", "3", "--launch", "eager"), "reject", ("--tp", "n_heads")),
        run_case(("--model", "tiny-4x3", "--tp", "2", "16", "--launch", "eager"), "reject",
                 ("--tp 16", "interconnect.devices_per_node")),
        run_case(("--model", "tiny-4x3", "--hw", "jetson-orin", "--tp", "2", "--launch", "eager"), "reject",
                 ("jetson-orin.yaml", "'interconnect'")),
        run_case(("--trace", "{tmp}"), "reject", ("{tmp}",)),
        run_case(("--share", "4x3"), "reject", ("--share",)),
        run_case(("--model", "tiny-4x3", "--share", "5x5", "--launch", "eager"), "reject", ("--share",)),
        run_case(("--model", "tiny-4x3", "--flips", "nan,0.1", "--launch", "eager", "--decoder", "speed"),
                 "reject", ("--flips",)),
        run_case(("--model", "tiny-4x3", "--flips", "2,0.1", "--launch", "eager", "--decoder", "speed"),
                 "reject", ("--flips",)),
        run_case(("--model", "tiny-4x3", "--flips", "nosuchprofile", "--launch", "eager", "--decoder", "speed"),
                 "reject", ("--flips",)),
        run_case(("--model", "tiny-4x3", "--tokens", "100000", "--launch", "eager", "--decoder", "sequential"),
                 "reject", ("--tokens",)),
        Case("cli", "sim.run --hw FILE --set (valid file)", "sim.run",
             ["--hw", "{tmp}/hw.yaml", "--trace", str(TRACE), "--launch", "eager", "--set", "efficiency.dram=0.5"],
             expect="accept", files={"hw.yaml": a100}),
    ]


def other_command_cases() -> list[Case]:
    """reference.demo, reference.capture.tracing and sim.fitting.validate flags."""
    demo = [(("--tokens", "0"), "reject", ("--tokens",)), (("--tokens", "-1"), "reject", ("--tokens",)),
            (("--prompt-len", "0"), "reject", ("--prompt-len",)),
            (("--prompt-len", "100000"), "reject", ("--prompt-len",)),
            (("--tokens", "100000"), "reject", ("--tokens",)),
            (("--preset", "bogus"), "reject", ("--preset",)), (("--tokens", "4"), "accept", ())]
    cases = [Case("cli", "reference.demo " + " ".join(a), "reference.demo", list(a), expect=e, where=w)
             for a, e, w in demo]
    trace = [(("--preset", "tiny-4x3", "--tokens", "4", "--out", "{tmp}/t.jsonl.gz"), "accept", ()),
             (("--preset", "tiny-4x3", "--tokens", "0", "--out", "{tmp}/t.jsonl.gz"), "reject", ("--tokens",)),
             (("--preset", "tiny-4x3", "--batch", "0", "--out", "{tmp}/t.jsonl.gz"), "reject", ("--batch",)),
             (("--preset", "tiny-4x3", "--prompt-len", "0", "--out", "{tmp}/t.jsonl.gz"), "reject",
              ("--prompt-len",)),
             (("--preset", "tiny-4x3", "--tokens", "4", "--out", "{tmp}"), "reject", ("--out",)),
             (("--preset", "tiny-4x3", "--tokens", "4", "--flips", "inf,0", "--out", "{tmp}/t.jsonl.gz"), "reject",
              ("--flips",)),
             (("--preset", "nope", "--out", "{tmp}/t.jsonl.gz"), "reject", ("--preset",))]
    cases += [Case("cli", "reference.capture.tracing " + " ".join(a), "reference.capture.tracing", list(a),
                   expect=e, where=w) for a, e, w in trace]
    hw = ("--hw", str(H200_CALIBRATED))
    measured = (*hw, "--measured", str(MEASURED))
    validate = [((*measured, "--max-error", "nan"), "reject", ("--max-error",)),
                ((*measured, "--max-error", "-1"), "reject", ("--max-error",)),
                ((*measured, "--json", "{tmp}"), "reject", ("--json",)),
                ((*measured, "--plot", "{tmp}/f/p.png"), "reject", ("--plot",)),
                ((*hw, "--microbench", "{tmp}/mb.json"), "reject", ("--microbench",))]
    cases += [Case("cli", "sim.fitting.validate " + " ".join(a).replace(str(ROOT) + "/", ""), "sim.fitting.validate",
                   list(a), expect=e, where=w, files={"f": b"x", "mb.json": b"{\"copy\": NaN}"})
              for a, e, w in validate]
    return cases


def sweep_cases() -> list[Case]:
    good = b"grid:\n  hw: [a100]\n  model: [t5-base-4x3]\n  tokens: [128]\n  launch: [eager]\n"
    specs = {
        "valid spec, --list": (good, ("--list",), "accept", ()),
        "broken YAML": (b"grid: [\n", ("--list",), "reject", ()),
        "duplicate axis": (good + b"  tokens: [64]\n", ("--list",), "reject", ("tokens",)),
        "alias bomb": (b"grid:\n  hw: " + alias_bomb().encode() + b"\n", ("--list",), "reject", ("grid",)),
        "deep nesting": (b"grid:\n  hw: " + deep().encode() + b"\n", ("--list",), "reject", ("grid",)),
        "not UTF-8": (b"grid:\n  hw: [\xe9]\n", ("--list",), "reject", ()),
        "set: nan": (good + b"  set:\n    peak.clock_hz: [.nan]\n", ("--list",), "reject", ("peak.clock_hz",)),
        "set: x1e999": (good + b"  set:\n    peak.clock_hz: [x1e999]\n", ("--list",), "reject", ("peak.clock_hz",)),
        "set: 1e-300": (good + b"  set:\n    efficiency.dram: [1.0e-300]\n", ("--list",), "any", ("efficiency.dram",)),
        "flip_rate: nan": (good.replace(b"launch", b"flip_rate: [.nan]\n  launch"), ("--list",), "reject",
                           ("flip_rate",)),
        "tokens: 0144": (good.replace(b"[128]", b"[0144]"), ("--list",), "reject", ("tokens",)),
        "tokens: 10**400": (good.replace(b"[128]", b"[1" + b"0" * 400 + b"]"), ("--list",), "reject", ("tokens",)),
        "cost: nan": (good + b"cost: {a100: .nan}\n", ("--list",), "reject", ("cost",)),
        "accuracy: inf": (good + b"accuracy: {x: .inf}\n", ("--list",), "reject", ("accuracy",)),
        "--set nan": (good, ("--list", "--set", "peak.clock_hz=.nan"), "reject", ("peak.clock_hz",)),
        "--set broken YAML": (good, ("--list", "--set", "peak.clock_hz=["), "reject", ("peak.clock_hz",)),
        "--out a file": (good, ("--out", "{tmp}/f"), "reject", ("--out",)),
        "--workers 0": (good, ("--workers", "0", "--out", "{tmp}/o"), "reject", ("--workers",)),
    }
    return [Case("cli", f"sim.sweep {name}", "sim.sweep.cli", ["{tmp}/spec.yaml", *argv], expect=expect, where=where,
                 files={"spec.yaml": text, "f": b"x"}, timeout_s=120)
            for name, (text, argv, expect, where) in specs.items()]


# ---------------------------------------------------------------------------------------------- measured traces

def measured_cases() -> list[Case]:
    """A measured trace whose header's end-to-end times are missing, of the wrong type or out of range, through
    `sim.fitting.validate` (with and without --json)."""
    lines = trace_lines(MEASURED)
    header = json.loads(lines[0])
    e2e = ("extra", "end_to_end_s")
    no_e2e = {k: v for k, v in header["extra"].items() if k != "end_to_end_s"}
    variants = {
        "as measured": (header, "accept", ()),
        "end_to_end_s a number": (put(header, e2e, 0.5), "reject", ("end_to_end_s",)),
        "end_to_end_s {}": (put(header, e2e, {}), "reject", ("end_to_end_s",)),
        "end_to_end_s a string": (put(header, e2e, "fast"), "reject", ("end_to_end_s",)),
        "end_to_end_s null": (put(header, e2e, None), "reject", ("end_to_end_s",)),
        "end_to_end_s []": (put(header, e2e, []), "reject", ("end_to_end_s",)),
        "median 0": (put(header, e2e, {"median": 0}), "reject", ("end_to_end_s",)),
        "median NaN": (put(header, e2e, {"median": math.nan}), "reject", ("end_to_end_s",)),
        "median Infinity": (put(header, e2e, {"median": math.inf}), "reject", ("end_to_end_s",)),
        "median -1": (put(header, e2e, {"median": -1}), "reject", ("end_to_end_s",)),
        "median 1e308": (put(header, e2e, {"median": 1e308}), "any", ("end_to_end_s",)),
        "median 1e-300": (put(header, e2e, {"median": 1e-300}), "any", ("end_to_end_s",)),
        "median a string": (put(header, e2e, {"median": "1"}), "reject", ("end_to_end_s",)),
        "median true": (put(header, e2e, {"median": True}), "reject", ("end_to_end_s",)),
        "no end_to_end_s": (put(header, ("extra",), no_e2e), "reject", ("end_to_end_s",)),
        "extra null": (put(header, ("extra",), None), "any", ()),
        "extra a list": (put(header, ("extra",), [1]), "any", ()),
    }
    cases = []
    for name, (changed, expect, where) in variants.items():
        data = partial(gz, [dumps(changed), *lines[1:]], 1)  # made in the child; level 1: fast, for a big trace
        for flags in ((), ("--max-error", "30", "--json", "{tmp}/v.json")):
            cases.append(Case("measured-header", f"{name} {' '.join(flags)}".strip(), "sim.fitting.validate",
                              ["--hw", str(H200_CALIBRATED), "--measured", "{tmp}/m.jsonl.gz", *flags], expect=expect,
                              where=("{tmp}/m.jsonl.gz", *where), files={"m.jsonl.gz": data},
                              results=("{tmp}/v.json",) if flags else (), timeout_s=120))
    return cases


# ----------------------------------------------------------------------------------------------- the generator

def share_default_trace() -> None:
    """Read (and fuse) the trace most cases project once, before forking (after the harness imported the
    commands), so that each case costs only its own work: every loaded module that holds `read_checked`
    (sim.trace) or `fuse` (sim.fusion) gets a version that returns the parent's copy for that trace."""
    import sim.fusion
    import sim.trace

    if getattr(sim.trace.read_checked, "shared", False):
        return  # another generator shared it already
    read, fuse = sim.trace.read_checked, sim.fusion.fuse
    trace = read(TRACE)
    fused = fuse(trace)

    def read_shared(path: str | os.PathLike) -> object:
        return trace if Path(path).resolve() == TRACE else read(path)

    def fuse_shared(t: object) -> object:
        return fused if t is trace else fuse(t)

    read_shared.shared = True  # type: ignore[attr-defined]

    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", {})
        for name, original, shared in (("read_checked", read, read_shared), ("fuse", fuse, fuse_shared)):
            if names.get(name) is original:
                setattr(module, name, shared)


def cases(args: argparse.Namespace) -> list[Case]:
    return hwconfig_cases() + cli_cases() + measured_cases()


GENERATOR = Generator(
    group="inputs",
    classes={"hwconfig": "hwconfigs through `sim.run --hw`", "cli": "CLI flag values and spec files",
             "measured-header": "measured-trace headers through `sim.fitting.validate`"},
    cases=cases, preload=share_default_trace)
