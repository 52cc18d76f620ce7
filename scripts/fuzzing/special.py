"""Inputs that are not regular files (issue 22, class 3): a named pipe nobody writes, a Unix socket, a folder,
endless devices (/dev/zero, /dev/urandom), an empty one (/dev/null) and a link to a pipe, given as every input
of every command line: a trace (`sim.run --trace`, `sim.fitting.validate --measured`, `sim.fitting.calibrate
--measured`), a hwconfig (`--hw`, `--base`), a model config (`sim.run --model`, a sweep spec's model), a sweep
spec and a file it names, and microbenchmark results (`--microbench`). Each must be refused at once, naming the
path: never read until its end, never blocked on."""

from __future__ import annotations

import argparse

from scripts.fuzzing.bases import ROOT, TRACE
from scripts.fuzzing.harness import Case, Generator, Node

KIND = "not-regular"
H200_CALIBRATED = str(ROOT / "hwconfigs" / "h200-calibrated.yaml")
CPU_MB = str(ROOT / "data" / "calibration" / "cpu.microbench.json")
SPEC = "grid:\n  hw: [{hw}]\n  model: [{model}]\n  tokens: [8]\n  launch: [eager]\n"
TIMEOUT_S = 30  # a case blocked on a pipe is a hang well before this

# the entries a case makes, by suffix: name -> (file spec, or None for a device path)
ENTRIES = {
    "fifo": Node("fifo"), "socket": Node("socket"), "folder": Node("folder"),
    "link to a fifo": None,  # made beside its fifo
}
DEVICES = ("/dev/zero", "/dev/urandom", "/dev/null")


def targets(suffix: str) -> list[tuple[str, str, dict]]:
    """(label, path, files) of each entry that is not a regular file, its name ending in `suffix`."""
    out = []
    for label, node in ENTRIES.items():
        name = f"in{suffix}"
        if node is None:
            files = {f"pipe{suffix}": Node("fifo"), name: Node("symlink", target=f"{{tmp}}/pipe{suffix}")}
        else:
            files = {name: node}
        out.append((label, f"{{tmp}}/{name}", files))
    return out + [(device, device, {}) for device in DEVICES]


# (command, argv with {path} where the input goes, its suffix, what the input is)
READERS = [
    ("sim.run", ["--trace", "{path}", "--launch", "eager"], ".jsonl.gz", "trace"),
    ("sim.run", ["--hw", "{path}", "--trace", str(TRACE), "--launch", "eager"], ".yaml", "hwconfig"),
    ("sim.run", ["--model", "{path}", "--decoder", "sequential", "--launch", "eager", "--tokens", "4"], ".json",
     "config.json"),
    ("sim.run", ["--model", "{path}", "--decoder", "sequential", "--launch", "eager", "--tokens", "4"], ".yaml",
     "model YAML"),
    ("sim.fitting.validate", ["--hw", H200_CALIBRATED, "--measured", "{path}"], ".jsonl.gz", "measured trace"),
    ("sim.fitting.validate", ["--hw", "{path}", "--microbench", CPU_MB], ".yaml", "hwconfig"),
    ("sim.fitting.validate", ["--hw", H200_CALIBRATED, "--microbench", "{path}"], ".json", "microbenchmarks"),
    ("sim.fitting.calibrate", ["--device", "cpu", "--microbench", "{path}", "--out", "{tmp}/o.yaml"], ".json",
     "microbenchmarks"),
    ("sim.fitting.calibrate", ["--device", "cpu", "--base", "{path}", "--microbench", CPU_MB, "--out",
                               "{tmp}/o.yaml"], ".yaml", "hwconfig"),
    ("sim.fitting.calibrate", ["--device", "cpu", "--microbench", CPU_MB, "--measured", "{path}", "--out",
                               "{tmp}/o.yaml"], ".jsonl.gz", "measured trace"),
    ("sim.sweep.cli", ["{path}", "--list"], ".yaml", "sweep spec"),
]


def spec_cases() -> list[Case]:
    """A sweep spec that names, as a hwconfig or a model, something that is not a regular file."""
    cases = []
    for field, suffix in (("hw", ".yaml"), ("model", ".json"), ("model", ".yaml")):
        for label, path, files in targets(suffix):
            named = path.replace("{tmp}/", "")  # relative: the case runs in {tmp}
            spec = SPEC.format(**{"hw": "a100", "model": "t5-base-4x3", field: named}).encode()
            cases.append(Case(KIND, f"sim.sweep a spec whose {field} is {label}{suffix}", "sim.sweep.cli",
                              ["{tmp}/spec.yaml", "--list"], expect="reject", files={**files, "spec.yaml": spec},
                              where=(named,), timeout_s=TIMEOUT_S))
    return cases


def cases(args: argparse.Namespace) -> list[Case]:
    out = []
    for command, argv, suffix, what in READERS:
        for label, path, files in targets(suffix):
            filled = [a.replace("{path}", path) for a in argv]
            out.append(Case(KIND, f"{command} {what} {label}", command, filled, expect="reject", files=files,
                            where=(path,), timeout_s=TIMEOUT_S))
    return out + spec_cases()


def preload() -> None:
    from scripts.fuzzing.inputs import share_default_trace

    share_default_trace()


GENERATOR = Generator(group=KIND, classes={KIND: "inputs that are not regular files (pipes, sockets, devices)"},
                      cases=cases, preload=preload)
