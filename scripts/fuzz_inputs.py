"""Hostile inputs, tried as a new user and an attacker would: hwconfigs mutated from hwconfigs/a100.yaml, bad
command-line values, measured traces with a mutated header. Each case runs through the real command line's
`main(argv)` in a forked child (so a hang or a memory bomb costs one case: a time limit and an address-space
limit), and its outcome is classified:

- accepted: exit 0 with only finite numbers in the table and the JSON, for an input that may be used;
- clear error: non-zero exit, no traceback, one error line that names the file or flag (and the field, where the
  case knows it) and is short (never an expanded value);
- unclear error: non-zero exit, no traceback, but the line does not say where (or is long, or several lines);
- traceback: an exception escaped `main`;
- hang: the time limit passed, or the child died of a signal (the memory limit);
- silently accepted nonsense: exit 0 for an input that must be refused, or NaN / inf in the output.

    python scripts/fuzz_inputs.py                      # the table, every input kind (a few minutes on 2 cores)
    python scripts/fuzz_inputs.py --only cli --show traceback unclear   # one kind, and the cases behind two columns
    python scripts/fuzz_inputs.py --json out/fuzz.json # every case and its outcome

The cases are generated deterministically (no randomness), so the table is reproducible. Exit status 1 when any
case is an unclear error, a traceback, a hang or silently accepted nonsense.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import json
import os
import re
import resource
import signal
import stat
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sim.command import check_outputs  # noqa: E402 (after the checkout is on the path)
from sim.files import atomic_write  # noqa: E402

A100 = ROOT / "hwconfigs" / "a100.yaml"
H200 = ROOT / "hwconfigs" / "h200-calibrated.yaml"
TRACE = ROOT / "data" / "traces" / "t5-base-4x3.speed.bf16.b1.t128.jsonl.gz"
MEASURED = ROOT / "data" / "measured" / "h200" / "t5-base-4.sequential.bf16.b1.t128.jsonl.gz"
MEMORY_LIMIT_BYTES = 4 << 30  # a memory bomb ends in the child, never on the shared machine
OUTCOMES = ("accepted", "clear error", "unclear error", "traceback", "hang", "silently accepted nonsense")
LONGEST_MESSAGE = 600  # characters: an error line longer than this prints a value in full


@dataclass
class Case:
    kind: str  # hwconfig | cli | measured
    name: str
    command: str  # the module whose main(argv) runs
    argv: list[str]  # "{tmp}" stands for the case's own folder
    expect: str  # reject: must be refused; accept: must run; any: a clear refusal or a finite result
    where: tuple[str, ...] = ()  # what the error line must name (file, flag, field)
    files: dict[str, bytes] = field(default_factory=dict)  # written to {tmp} first
    timeout_s: float = 60.0
    setup: str = ""  # "readonly": {tmp}/ro is made read-only; "fifo": {tmp}/fifo is a named pipe


@dataclass
class Result:
    case: Case
    outcome: str
    rc: int | None
    message: str
    seconds: float


# ------------------------------------------------------------------------------------------------- hwconfigs

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
    depth, start = 0, 0
    for i in range(start, len(lines)):
        indent = "  " * depth
        if lines[i].startswith(f"{indent}{parts[depth]}:"):
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
OPTIONAL_LEAVES = ["classes.matmul.efficiency", "classes.matmul.fixed_s", "classes.matmul.memory_efficiency",
                   "compiled.library_fixed_s", "compiled.generated.efficiency", "compiled.generated.fixed_s",
                   "compiled.generated.memory_efficiency"]


def leaves(text: str) -> list[str]:
    """The numeric fields of a hwconfig text (dotted)."""
    import yaml

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


def bomb(levels: int = 9, width: int = 9) -> str:
    """A flow sequence of nested aliases: ~1 KB of text, width**levels items when expanded."""
    items = [f"&a0 [{', '.join(['lol'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


def deep(depth: int = 5000) -> str:
    return "[" * depth + "1" + "]" * depth


def hw_case(name: str, text: str | bytes, expect: str, where: tuple[str, ...] = ()) -> Case:
    data = text.encode() if isinstance(text, str) else text
    return Case("hwconfig", name, "sim.run", ["--hw", "{tmp}/hw.yaml", "--trace", str(TRACE), "--launch", "eager",
                                              "compiled", "--json", "{tmp}/out.json"], expect,
                ("{tmp}/hw.yaml", *where), {"hw.yaml": data}, timeout_s=60)


def structural_cases(base: str) -> list[Case]:
    with_optional = base.replace("\nsources:", "\n" + OPTIONAL_SECTIONS + "sources:")
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
        hw_case("gzip-compressed file", gzip.compress(base.encode()), "reject"),
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
        hw_case("unknown kernel class", base + "classes:\n  warp:\n    efficiency: 0.5\n", "reject", ("warp",)),
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
            text = set_leaf(base, where, bomb())
        elif where in ("classes", "compiled"):
            text = base + f"{where}: {bomb()}\n"
        else:
            text = re.sub(rf"(?m)^{where}: .*$", f"{where}: {bomb()}", base)
        cases.append(hw_case(f"alias expansion bomb under {where}", text, "reject", (where,)))
        text = text.replace(bomb(), deep())
        cases.append(hw_case(f"5000-deep nesting under {where}", text, "reject", (where,)))
    cases.append(hw_case("5000-deep nesting at the top", deep() + "\n", "reject"))
    return cases


def file_cases(base: str) -> list[Case]:
    """--hw paths that are not readable regular files."""
    return [
        Case("hwconfig", "a directory", "sim.run", ["--hw", "{tmp}/dir", "--trace", str(TRACE)], "reject",
             ("{tmp}/dir",), {"dir/x": b""}),
        Case("hwconfig", "a missing file", "sim.run", ["--hw", "{tmp}/none.yaml", "--trace", str(TRACE)], "reject",
             ("{tmp}/none.yaml",)),
        Case("hwconfig", "/dev/zero (endless)", "sim.run", ["--hw", "/dev/zero", "--trace", str(TRACE)], "reject",
             ("/dev/zero",), timeout_s=30),
        Case("hwconfig", "a named pipe nobody writes", "sim.run", ["--hw", "{tmp}/fifo", "--trace", str(TRACE)],
             "reject", ("{tmp}/fifo",), setup="fifo", timeout_s=30),
        Case("hwconfig", "an unreadable file", "sim.run", ["--hw", "{tmp}/ro/hw.yaml", "--trace", str(TRACE)],
             "any", ("{tmp}/ro/hw.yaml",), {"ro/hw.yaml": base.encode()}, setup="unreadable"),
    ]


def hwconfig_cases() -> list[Case]:
    base = a100_text()
    cases = []
    for leaf in leaves(base):
        for value, expect in NUMBERS:
            cases.append(hw_case(f"{leaf}: {value[:12]}", set_leaf(base, leaf, value), expect, (leaf,)))
    with_optional = base.replace("\nsources:", "\n" + OPTIONAL_SECTIONS + "sources:")
    for leaf in OPTIONAL_LEAVES:
        for value, expect in NUMBERS:
            cases.append(hw_case(f"{leaf}: {value[:12]}", set_leaf(with_optional, leaf, value), expect, (leaf,)))
    return cases + structural_cases(base)


# --------------------------------------------------------------------------------------------- command lines

def run_case(flag_value: tuple[str, ...], expect: str, where: tuple[str, ...], **kw: object) -> Case:
    argv = ["--trace", str(TRACE), "--launch", "eager", *flag_value] if "--model" not in flag_value else list(
        flag_value)
    return Case("cli", "sim.run " + " ".join(flag_value), "sim.run", argv, expect, where, **kw)


def cli_cases() -> list[Case]:
    """Flag values and files through every command line that takes them."""
    return run_flag_cases() + other_command_cases() + sweep_cases()


def run_flag_cases() -> list[Case]:
    """`python -m sim.run`: --set, --model, output paths, counts, --share, --flips."""
    a100 = a100_text().encode()
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
        run_case(("--model", "bogus-preset"), "reject", ("--model", "bogus-preset")),
        run_case(("--model", "{tmp}"), "reject", ("--model", "{tmp}")),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"),
                 files={"m.yaml": b"d_model: [\n"}),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"),
                 files={"m.yaml": b"name: x\nname: y\n"}),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"),
                 files={"m.yaml": ("x: " + bomb()).encode()}),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"),
                 files={"m.yaml": b"\xff\xfe\x00"}),
        run_case(("--model", "{tmp}/m.yaml"), "reject", ("--model", "{tmp}/m.yaml"), files={"m.yaml": b"- 1\n"}),
        run_case(("--model", "{tmp}/config.json"), "reject", ("--model", "{tmp}/config.json"),
                 files={"config.json": b"{\"a\": NaN"}),
        run_case(("--json", "{tmp}"), "reject", ("--json", "{tmp}")),
        run_case(("--json", "{tmp}/f/out.json"), "reject", ("--json", "{tmp}/f/out.json"), files={"f": b"x"}),
        # root writes into a read-only folder: then writing is the right outcome
        run_case(("--json", "{tmp}/ro/out.json"), "any" if os.geteuid() == 0 else "reject",
                 ("--json", "{tmp}/ro/out.json"), setup="readonly"),
        run_case(("--plot", "{tmp}"), "reject", ("--plot", "{tmp}")),
        run_case(("--perfetto", "{tmp}/f/t.json"), "reject", ("--perfetto", "{tmp}/f/t.json"), files={"f": b"x"}),
        run_case(("--tokens", "-1"), "reject", ("--tokens",)),
        run_case(("--tokens", "abc"), "reject", ("--tokens",)),
        run_case(("--batch", "0"), "reject", ("--batch",)),
        run_case(("--streams", "0"), "reject", ("--streams",)),
        run_case(("--streams", "99999999999999999999"), "any", ("--streams",)),
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
             "accept", files={"hw.yaml": a100}),
    ]


def other_command_cases() -> list[Case]:
    """reference.demo, reference.capture.tracing and sim.fitting.validate flags."""
    demo = [(("--tokens", "0"), "reject", ("--tokens",)), (("--tokens", "-1"), "reject", ("--tokens",)),
            (("--prompt-len", "0"), "reject", ("--prompt-len",)),
            (("--prompt-len", "100000"), "reject", ("--prompt-len",)),
            (("--tokens", "100000"), "reject", ("--tokens",)),
            (("--preset", "bogus"), "reject", ("--preset",)), (("--tokens", "4"), "accept", ())]
    cases = [Case("cli", "reference.demo " + " ".join(a), "reference.demo", list(a), e, w) for a, e, w in demo]
    trace = [(("--preset", "tiny-4x3", "--tokens", "4", "--out", "{tmp}/t.jsonl.gz"), "accept", ()),
             (("--preset", "tiny-4x3", "--tokens", "0", "--out", "{tmp}/t.jsonl.gz"), "reject", ("--tokens",)),
             (("--preset", "tiny-4x3", "--batch", "0", "--out", "{tmp}/t.jsonl.gz"), "reject", ("--batch",)),
             (("--preset", "tiny-4x3", "--prompt-len", "0", "--out", "{tmp}/t.jsonl.gz"), "reject",
              ("--prompt-len",)),
             (("--preset", "tiny-4x3", "--tokens", "4", "--out", "{tmp}"), "reject", ("--out",)),
             (("--preset", "tiny-4x3", "--tokens", "4", "--flips", "inf,0", "--out", "{tmp}/t.jsonl.gz"), "reject",
              ("--flips",)),
             (("--preset", "nope", "--out", "{tmp}/t.jsonl.gz"), "reject", ("--preset",))]
    cases += [Case("cli", "reference.capture.tracing " + " ".join(a), "reference.capture.tracing", list(a), e, w)
              for a, e, w in trace]
    validate = [(("--hw", str(H200), "--measured", str(MEASURED), "--max-error", "nan"), "reject", ("--max-error",)),
                (("--hw", str(H200), "--measured", str(MEASURED), "--max-error", "-1"), "reject", ("--max-error",)),
                (("--hw", str(H200), "--measured", str(MEASURED), "--json", "{tmp}"), "reject", ("--json",)),
                (("--hw", str(H200), "--measured", str(MEASURED), "--plot", "{tmp}/f/p.png"), "reject",
                 ("--plot",)),
                (("--hw", str(H200), "--microbench", "{tmp}/mb.json"), "reject", ("--microbench",))]
    cases += [Case("cli", "sim.fitting.validate " + " ".join(a).replace(str(ROOT) + "/", ""), "sim.fitting.validate",
                   list(a), e, w, files={"f": b"x", "mb.json": b"{\"copy\": NaN}"}) for a, e, w in validate]
    return cases


def sweep_cases() -> list[Case]:
    good = b"grid:\n  hw: [a100]\n  model: [t5-base-4x3]\n  tokens: [128]\n  launch: [eager]\n"
    specs = {
        "valid spec, --list": (good, ("--list",), "accept", ()),
        "broken YAML": (b"grid: [\n", ("--list",), "reject", ()),
        "duplicate axis": (good + b"  tokens: [64]\n", ("--list",), "reject", ("tokens",)),
        "alias bomb": (b"grid:\n  hw: " + bomb().encode() + b"\n", ("--list",), "reject", ("grid",)),
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
    return [Case("cli", f"sim.sweep {name}", "sim.sweep.cli", ["{tmp}/spec.yaml", *argv], expect, where,
                 {"spec.yaml": text, "f": b"x"}, timeout_s=120) for name, (text, argv, expect, where) in specs.items()]


# ---------------------------------------------------------------------------------------------- measured traces

def measured_cases() -> list[Case]:
    with gzip.open(MEASURED, "rb") as f:
        first, rest = f.readline(), f.read()
    header = json.loads(first)

    def mutated(change: object) -> bytes:
        h = json.loads(json.dumps(header))
        if callable(change):
            change(h)
        return gzip.compress(json.dumps(h).encode() + b"\n" + rest, compresslevel=1)

    def e2e(value: object) -> object:
        return lambda h: h["extra"].__setitem__("end_to_end_s", value)

    variants = {
        "as measured": (None, "accept", ()),
        "end_to_end_s a number": (e2e(0.5), "reject", ("end_to_end_s",)),
        "end_to_end_s {}": (e2e({}), "reject", ("end_to_end_s",)),
        "end_to_end_s a string": (e2e("fast"), "reject", ("end_to_end_s",)),
        "end_to_end_s null": (e2e(None), "reject", ("end_to_end_s",)),
        "end_to_end_s []": (e2e([]), "reject", ("end_to_end_s",)),
        "median 0": (e2e({"median": 0}), "reject", ("end_to_end_s",)),
        "median NaN": (e2e({"median": float("nan")}), "reject", ("end_to_end_s",)),
        "median Infinity": (e2e({"median": float("inf")}), "reject", ("end_to_end_s",)),
        "median -1": (e2e({"median": -1}), "reject", ("end_to_end_s",)),
        "median 1e308": (e2e({"median": 1e308}), "any", ("end_to_end_s",)),
        "median 1e-300": (e2e({"median": 1e-300}), "any", ("end_to_end_s",)),
        "median a string": (e2e({"median": "1"}), "reject", ("end_to_end_s",)),
        "median true": (e2e({"median": True}), "reject", ("end_to_end_s",)),
        "no end_to_end_s": (lambda h: h["extra"].pop("end_to_end_s"), "reject", ("end_to_end_s",)),
        "extra null": (lambda h: h.__setitem__("extra", None), "any", ()),
        "extra a list": (lambda h: h.__setitem__("extra", [1]), "any", ()),
    }
    cases = []
    for name, (change, expect, where) in variants.items():
        for flags in ((), ("--max-error", "30", "--json", "{tmp}/v.json")):
            cases.append(Case("measured", f"{name} {' '.join(flags)}".strip(), "sim.fitting.validate",
                              ["--hw", str(H200), "--measured", "{tmp}/m.jsonl.gz", *flags], expect,
                              ("{tmp}/m.jsonl.gz", *where), {"m.jsonl.gz": mutated(change)}, timeout_s=120))
    return cases


# ----------------------------------------------------------------------------------------------------- running

def prepare(case: Case, tmp: Path) -> Case:
    for name, data in case.files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    if case.setup == "readonly":
        (tmp / "ro").mkdir()
        (tmp / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    elif case.setup == "unreadable":
        (tmp / "ro" / "hw.yaml").chmod(0)
    elif case.setup == "fifo":
        os.mkfifo(tmp / "fifo")
    fill = lambda s: s.replace("{tmp}", str(tmp))  # noqa: E731
    return Case(case.kind, case.name, case.command, [fill(a) for a in case.argv], case.expect,
                tuple(fill(w) for w in case.where), timeout_s=case.timeout_s)


def child(case: Case, out: Path, err: Path) -> None:
    """In the forked child: run the command's main(argv) with stdout and stderr to files; never returns."""
    rc = 1
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        module = importlib.import_module(case.command)
        code = module.main(case.argv)
        rc = 0 if code is None else code
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
        rc = 0 if code is None else code if isinstance(code, int) else 1
    except BaseException:
        traceback.print_exc()
        rc = 70
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(rc)


def nonfinite(text: str) -> bool:
    return re.search(r"(?i)(?<![a-z_])(nan|-?inf(inity)?)(?![a-z_])", text) is not None


def classify(case: Case, rc: int | None, out: str, err: str, json_text: str | None) -> tuple[str, str]:
    if rc is None:
        return "hang", err.strip()[-200:]
    if "Traceback (most recent call last)" in err:
        return "traceback", err.strip().splitlines()[-1][:300]
    if rc == 0:
        bad = case.expect == "reject" or nonfinite(out) or (json_text is not None and nonfinite(json_text))
        return ("silently accepted nonsense" if bad else "accepted"), out.strip().splitlines()[-1][:200] if out else ""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    message = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
    after = err[err.rfind(message) + len(message):].strip() if message else ""
    clear = (message and not after and len(message) <= LONGEST_MESSAGE and case.expect != "accept"
             and all(w in message for w in case.where))
    return ("clear error" if clear else "unclear error"), message[:300]


def execute(case: Case) -> Result:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp_name:
        tmp = Path(tmp_name)
        ready = prepare(case, tmp)
        out, err = tmp / ".stdout", tmp / ".stderr"
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            child(ready, out, err)
        rc: int | None = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                rc = None if rc < 0 else rc  # killed by a signal: the memory limit
                break
            if time.monotonic() - t0 > case.timeout_s:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        seconds = time.monotonic() - t0
        json_out = next((tmp / n for n in ("out.json", "v.json") if (tmp / n).exists()), None)
        outcome, message = classify(ready, rc, out.read_text(errors="replace"), err.read_text(errors="replace"),
                                    json_out.read_text(errors="replace") if json_out else None)
        for path in tmp.rglob("*"):  # let the folder go, whatever a case made read-only
            with contextlib.suppress(OSError):
                path.chmod(0o700 if path.is_dir() else 0o600)
    return Result(case, outcome, rc, message, seconds)


def preload() -> None:
    """Import what the commands import and read the shared trace once, before forking, so each case costs only
    its own work."""
    import reference.capture.tracing
    import reference.demo  # noqa: F401
    import sim.fitting.validate
    import sim.run
    import sim.sweep.cli

    read, fuse = sim.run.read_checked, sim.run.fuse
    trace = read(TRACE)
    fused = {id(trace): fuse(trace)}
    sim.run.read_checked = lambda path: trace if Path(path).resolve() == TRACE else read(path)
    sim.run.fuse = lambda t: fused[id(t)] if id(t) in fused else fuse(t)


def table(results: list[Result]) -> str:
    kinds = {"hwconfig": "hwconfigs through `sim.run --hw`", "cli": "CLI flag values and spec files",
             "measured": "measured traces through `sim.fitting.validate`"}
    lines = ["| inputs | tried | " + " | ".join(OUTCOMES) + " |", "| --- " * (len(OUTCOMES) + 2) + "|"]
    for kind, label in kinds.items():
        mine = [r for r in results if r.case.kind == kind]
        if mine:
            counts = [sum(r.outcome == o for r in mine) for o in OUTCOMES]
            lines.append(f"| {label} | {len(mine)} | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=("hwconfig", "cli", "measured"),
                        default=["hwconfig", "cli", "measured"], help="which kinds of input (default all)")
    parser.add_argument("--show", nargs="+", default=[], metavar="OUTCOME", help="list the cases with these "
                        "outcomes (first word: accepted, clear, unclear, traceback, hang, silently)")
    parser.add_argument("--match", help="only the cases whose name contains this text")
    parser.add_argument("--json", type=Path, help="write every case and its outcome here")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--json": args.json})
    makers = {"hwconfig": hwconfig_cases, "cli": cli_cases, "measured": measured_cases}
    cases = [c for kind in args.only for c in makers[kind]()]
    if args.match:
        cases = [c for c in cases if args.match in c.name]
    preload()
    from tqdm import tqdm

    results = [execute(c) for c in tqdm(cases, desc="hostile inputs", disable=None)]
    print(table(results))
    for r in results:
        if any(r.outcome.startswith(s) for s in args.show):
            print(f"[{r.outcome}] {r.case.kind}: {r.case.name} (expect {r.case.expect}, rc {r.rc}, "
                  f"{r.seconds:.1f} s): {r.message}")
    if args.json:
        rows = [{**{k: v for k, v in asdict(r.case).items() if k != "files"}, "outcome": r.outcome, "rc": r.rc,
                 "message": r.message, "seconds": round(r.seconds, 2)} for r in results]
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))
    return 1 if any(r.outcome not in ("accepted", "clear error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
