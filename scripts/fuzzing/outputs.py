"""Hostile output paths (issue 22, class 2): two outputs naming the same file (as written, through `./`, `..`,
a symbolic link or a hard link), an output that names an input (a hwconfig, a trace, a measured trace,
microbenchmark results, a sweep spec or a file the spec names), a location that cannot be written (/proc, /sys,
a name or a path too long), and a second output that fails after the first was written. Through `sim.run`,
`sim.fitting.validate`, `sim.fitting.calibrate` and `sim.sweep`. Each must be refused before any work and before
anything is written, the inputs and any file already there left as they were ("protected"); a failed run
replaces nothing."""

from __future__ import annotations

import argparse

from scripts.fuzzing.bases import A100, H200_CALIBRATED, MEASURED, ROOT, TRACE
from scripts.fuzzing.harness import Case, Generator, Node

KIND = "outputs"
CPU_MB = ROOT / "data" / "calibration" / "cpu.microbench.json"
H200_MB = ROOT / "data" / "calibration" / "h200.microbench.json"
OLD = b'{"old": true}'  # what an existing output holds: a refused run must leave it so
LONG_NAME = "n" * 250  # a name a folder takes, whose temporary file name (.NAME.RANDOM.tmp) it does not
RUN = ("--trace", str(TRACE), "--launch", "eager")


def link(kind: str, target: str) -> Node:
    return Node(kind, target=target)


def run_case(name: str, argv: tuple, where: tuple, files: dict | None = None, protected: tuple = (),
             expect: str = "reject") -> Case:
    return Case(KIND, f"sim.run {name}", "sim.run", [*RUN, *argv], expect=expect, where=where, files=files or {},
                protected=protected)


def same_file_cases() -> list[Case]:
    out = "{tmp}/out.json"
    existing = {"out.json": OLD}
    pairs = [
        ("--json X --perfetto X", ("--json", out, "--perfetto", out), {}),
        ("--json X --plot X", ("--json", out, "--plot", out), {}),
        ("--perfetto X --plot X (X exists)", ("--perfetto", out, "--plot", out), existing),
        ("--json X --perfetto ./X", ("--json", out, "--perfetto", "./out.json"), {}),
        ("--json X --perfetto sub/../X", ("--json", out, "--perfetto", "{tmp}/sub/../out.json"),
         {"sub": Node("folder")}),
        ("--json X --perfetto X/ (a trailing dot)", ("--json", out, "--perfetto", "{tmp}/./out.json"), {}),
        ("--json X --perfetto LINK (a symlink to X)", ("--json", out, "--perfetto", "{tmp}/link.json"),
         {**existing, "link.json": link("symlink", out)}),
        ("--json X --perfetto LINK (a symlink to X, X absent)", ("--json", out, "--perfetto", "{tmp}/link.json"),
         {"link.json": link("symlink", out)}),
        ("--json X --plot HARD (a hard link to X)", ("--json", out, "--plot", "{tmp}/hard.json"),
         {**existing, "hard.json": link("hardlink", out)}),
        ("--json X --perfetto DIRLINK/X (a symlink to X's folder)", ("--json", out, "--perfetto",
                                                                      "{tmp}/dirlink/out.json"),
         {"dirlink": link("symlink", "{tmp}")}),
    ]
    cases = [run_case(name, argv, (("{tmp}/out.json", "./out.json", "{tmp}/link.json", "{tmp}/hard.json",
                                    "{tmp}/dirlink/out.json"),), files, protected=("{tmp}/out.json",))
             for name, argv, files in pairs]
    cases.append(run_case("--json X --perfetto x (another name)", ("--json", out, "--perfetto", "{tmp}/OUT.json"),
                          (), expect="accept"))
    return cases


def input_cases() -> list[Case]:
    hw = {"hw.yaml": A100.read_bytes()}
    trace = {"t.jsonl.gz": TRACE.read_bytes()}
    cases = [
        Case(KIND, f"sim.run --hw X {flag} X", "sim.run", ["--hw", "{tmp}/hw.yaml", *RUN, flag, path], expect="reject",
             files={**hw, **extra}, where=((path, "{tmp}/hw.yaml"), "--hw"), protected=("{tmp}/hw.yaml",))
        for flag, path, extra in (("--json", "{tmp}/hw.yaml", {}), ("--perfetto", "./hw.yaml", {}),
                                  ("--plot", "{tmp}/hwlink.yaml", {"hwlink.yaml": link("symlink", "{tmp}/hw.yaml")}),
                                  ("--json", "{tmp}/hwhard.yaml", {"hwhard.yaml": link("hardlink", "{tmp}/hw.yaml")}))]
    cases += [
        Case(KIND, f"sim.run --trace X {flag} X", "sim.run", ["--trace", "{tmp}/t.jsonl.gz", "--launch", "eager",
                                                              flag, path], expect="reject", files=trace,
             where=((path, "{tmp}/t.jsonl.gz"), "--trace"), protected=("{tmp}/t.jsonl.gz",))
        for flag, path in (("--json", "{tmp}/t.jsonl.gz"), ("--plot", "t.jsonl.gz"),
                           ("--perfetto", "{tmp}/./t.jsonl.gz"))]
    cases.append(Case(KIND, "sim.run --trace X --trace Y --json Y", "sim.run",
                      ["--trace", str(TRACE), "{tmp}/t.jsonl.gz", "--launch", "eager", "--json", "{tmp}/t.jsonl.gz"],
                      expect="reject", files=trace, where=("{tmp}/t.jsonl.gz", "--trace"),
                      protected=("{tmp}/t.jsonl.gz",)))
    return cases


def unwritable_cases() -> list[Case]:
    keep = {"keep.json": OLD}
    long_path = "{tmp}/" + "d/" * 2100 + "x.json"
    cases = [run_case(f"--json {path}", ("--json", path), ("--json", path)) for path in (
        "/proc/version", "/proc/self/status", "/proc/new.json", "/sys/kernel/new.json", "/sys/kernel/profiling")]
    cases += [
        run_case("--json NAME (256 characters)", ("--json", "{tmp}/" + "n" * 256), ("--json",)),
        run_case("--json PATH (over 4,096 characters)", ("--json", long_path), ("--json",)),
        run_case("--json NAME (250 characters: its temporary's name is longer)", ("--json", f"{{tmp}}/{LONG_NAME}"),
                 ("--json",), expect="any"),
        run_case("--json OLD --plot NAME (250 characters): a second output that fails", (
            "--json", "{tmp}/keep.json", "--plot", f"{{tmp}}/{LONG_NAME}"), (("--plot", "--json"),), keep,
                 protected=("{tmp}/keep.json",), expect="any"),
        run_case("--json OLD --perfetto /proc/new.json", ("--json", "{tmp}/keep.json", "--perfetto", "/proc/new.json"),
                 ("--perfetto",), keep, protected=("{tmp}/keep.json",)),
        run_case("--json OLD --plot DIR (a folder)", ("--json", "{tmp}/keep.json", "--plot", "{tmp}/dir"),
                 ("--plot",), {**keep, "dir": Node("folder")}, protected=("{tmp}/keep.json",)),
        run_case("--json a new folder's file", ("--json", "{tmp}/new/dir/out.json"), (), expect="accept"),
    ]
    return cases


def validate_cases() -> list[Case]:
    measured = {"m.jsonl.gz": MEASURED.read_bytes(), "hw.yaml": H200_CALIBRATED.read_bytes(),
                "mb.json": H200_MB.read_bytes()}
    base = ["--hw", "{tmp}/hw.yaml", "--measured", "{tmp}/m.jsonl.gz"]
    variants = [
        ("--json X --plot X", ["--json", "{tmp}/o.json", "--plot", "{tmp}/o.json"], ("{tmp}/o.json",)),
        ("--json over --measured", ["--json", "{tmp}/m.jsonl.gz"], ("{tmp}/m.jsonl.gz", "--measured")),
        ("--plot over --hw", ["--plot", "./hw.yaml"], (("./hw.yaml", "{tmp}/hw.yaml"), "--hw")),
        ("--json over --microbench", ["--microbench", "{tmp}/mb.json", "--json", "{tmp}/mb.json"],
         ("{tmp}/mb.json", "--microbench")),
        ("--json OLD --plot NAME (250 characters)", ["--json", "{tmp}/keep.json", "--plot", f"{{tmp}}/{LONG_NAME}"],
         ()),
    ]
    return [Case(KIND, f"sim.fitting.validate {name}", "sim.fitting.validate", [*base, *argv],
                 expect="any" if "250" in name else "reject", files={**measured, "keep.json": OLD}, where=where,
                 protected=("{tmp}/m.jsonl.gz", "{tmp}/hw.yaml", "{tmp}/mb.json", "{tmp}/keep.json"), timeout_s=120)
            for name, argv, where in variants]


def calibrate_cases() -> list[Case]:
    files = {"hw.yaml": (ROOT / "hwconfigs" / "cpu-xeon-8480.yaml").read_bytes(), "mb.json": CPU_MB.read_bytes(),
             "m.jsonl.gz": MEASURED.read_bytes()}
    base = ["--device", "cpu", "--microbench", "{tmp}/mb.json"]
    variants = [
        ("--out over --base", ["--base", "{tmp}/hw.yaml", "--out", "{tmp}/hw.yaml"], ("{tmp}/hw.yaml", "--base")),
        ("--out over --base, through a link", ["--base", "{tmp}/hw.yaml", "--out", "{tmp}/l.yaml"],
         (("{tmp}/l.yaml", "{tmp}/hw.yaml"), "--base")),
        ("--out over --microbench", ["--out", "./mb.json"], (("./mb.json", "{tmp}/mb.json"), "--microbench")),
        ("--out over --measured", ["--measured", "{tmp}/m.jsonl.gz", "--out", "{tmp}/m.jsonl.gz"],
         ("{tmp}/m.jsonl.gz", "--measured")),
        ("--out /proc/x.yaml", ["--out", "/proc/x.yaml"], ("--out",)),
    ]
    cases = [Case(KIND, f"sim.fitting.calibrate {name}", "sim.fitting.calibrate", [*base, *argv], expect="reject",
                  files={**files, "l.yaml": link("symlink", "{tmp}/hw.yaml")}, where=where,
                  protected=("{tmp}/hw.yaml", "{tmp}/mb.json", "{tmp}/m.jsonl.gz"), timeout_s=120)
             for name, argv, where in variants]
    cases.append(Case(KIND, "sim.fitting.calibrate --out a new file", "sim.fitting.calibrate",
                      [*base, "--out", "{tmp}/cpu.yaml"], expect="accept", files=files, timeout_s=300))
    return cases


SPEC = "grid:\n  hw: [a100]\n  model: [t5-base-4x3]\n  tokens: [128]\n  launch: [eager]\n"


def sweep_cases() -> list[Case]:
    variants = [
        ("the spec is --out's rows.csv", "o/rows.csv", SPEC, ("{tmp}/o/rows.csv", "--out")),
        ("the spec is --out's journal", "o/journal.jsonl", SPEC, ("{tmp}/o/journal.jsonl", "--out")),
        ("the spec is --out's rows.jsonl, through ./", "o/rows.jsonl", SPEC, ("rows.jsonl", "--out")),
        ("a hwconfig of the spec is --out's rows.jsonl", "spec.yaml",
         SPEC.replace("[a100]", "[o/rows.jsonl]"), (("{tmp}/o/rows.jsonl", "o/rows.jsonl"),)),
        ("a model of the spec is --out's speedup.png", "spec.yaml",
         SPEC.replace("[t5-base-4x3]", "[o/speedup.png]"), (("{tmp}/o/speedup.png", "o/speedup.png"),)),
    ]
    cases = []
    for name, spec_name, text, where in variants:
        spec_path = f"{{tmp}}/{spec_name}"
        files = {"o": Node("folder"), spec_name: text.encode(), "o/rows.jsonl": A100.read_bytes(),
                 "o/speedup.png": b"{}"}
        out = "{tmp}/o" if "./" not in name else "./o"
        cases.append(Case(KIND, f"sim.sweep {name}", "sim.sweep.cli", [spec_path, "--out", out], expect="reject",
                          files=files, where=where, protected=(spec_path, "{tmp}/o/rows.jsonl", "{tmp}/o/speedup.png"),
                          timeout_s=120))
    return cases


def cases(args: argparse.Namespace) -> list[Case]:
    return same_file_cases() + input_cases() + unwritable_cases() + validate_cases() + calibrate_cases() + \
        sweep_cases()


def preload() -> None:
    from scripts.fuzzing.inputs import share_default_trace

    share_default_trace()


GENERATOR = Generator(group=KIND, classes={KIND: "output paths (same file, an input, unwritable)"}, cases=cases,
                      preload=preload)
