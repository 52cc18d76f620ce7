"""Measurements and microbenchmarks that are not (issue 22, class 6): measured traces whose op durations or stage
wall times are zero or missing (through `sim.fitting.validate --measured`: refused, not an error table of
nothing), microbenchmark results of the wrong shape (a top level other than an object, a result that is not a
list of rows, rows with missing, unknown, non-finite or out-of-range fields, unknown dtypes, an unknown list or
key, a key given twice, nesting, size) through `sim.fitting.validate --microbench` and `sim.fitting.calibrate
--microbench`, and `calibrate --device cuda` where there is no GPU, or with results measured on another device.
Each must be refused in one line naming the file (or flag) and the field."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable

from scripts.fuzzing.bases import MEASURED, ROOT, Base, first_stages
from scripts.fuzzing.harness import Case, Generator
from scripts.fuzzing.mutate import gz, nested
from scripts.fuzzing.traces import TRACE_FILE, VALIDATE, trace_case

KIND = "measurements"
CPU_MB = ROOT / "data" / "calibration" / "cpu.microbench.json"
H200_MB = ROOT / "data" / "calibration" / "h200.microbench.json"
H200 = str(ROOT / "hwconfigs" / "h200.yaml")
H200_CALIBRATED = str(ROOT / "hwconfigs" / "h200-calibrated.yaml")
MB_FILE = "{tmp}/mb.json"


def records(lines: list[bytes], change: Callable[[dict], dict | None]) -> list[bytes]:
    """The trace's lines with each record after the header changed by `change` (None: unchanged)."""
    out = [lines[0]]
    for line in lines[1:]:
        record = json.loads(line)
        new = change(record)
        out.append(line if new is None else json.dumps(new, separators=(",", ":")).encode())
    return out


def measured_cases() -> list[Case]:
    base = first_stages(Base(MEASURED), 6)

    def ops(value: float, every: int = 1) -> Callable[[dict], dict | None]:
        return lambda r: {**r, "duration_s": value} if r["type"] == "op" and r["i"] % every == 0 else None

    def stages(value: float | None, only: int | None = None) -> Callable[[dict], dict | None]:
        return lambda r: ({**r, "wall_s": value} if r["type"] == "stage" and only in (None, r["stage"]) else None)

    variants = {
        "every op duration 0": (ops(0), "duration_s"),
        "every second op duration 0": (ops(0, 2), "duration_s"),
        "every stage wall time null": (stages(None), "wall_s"),
        "every stage wall time 0": (stages(0), "wall_s"),
        "one stage wall time null": (stages(None, 1), "wall_s"),
        "one stage wall time 0": (stages(0, 2), "wall_s"),
        "every op 0 and every stage null": (lambda r: ops(0)(r) or stages(None)(r), ("duration_s", "wall_s")),
    }
    cases = []
    for name, (change, field) in variants.items():
        for flags in ((), ("--json", "{tmp}/v.json")):
            case = trace_case(VALIDATE, base, f"{name} {' '.join(flags)}".strip(), "reject",
                              lambda lines, change=change: gz(records(list(lines), change)))
            case.kind, case.argv = KIND, [*case.argv[:-2], *flags]
            case.where = (TRACE_FILE, field)
            case.results = ()
            cases.append(case)
    return cases


def mb_text(mb: dict, **raw: str) -> bytes:
    """The results as JSON, each key in `raw` given that raw JSON text."""
    fields = {k: json.dumps(v) for k, v in mb.items()}
    fields.update(raw)
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


def row_changed(mb: dict, key: str, field: str, raw: str | None) -> bytes:
    """The results with field `field` of the first row of `key` given the raw JSON text (None: removed)."""
    rows = [dict(r) for r in mb[key]]
    row = {k: json.dumps(v) for k, v in rows[0].items() if k != field}
    if raw is not None:
        row[field] = raw
    text = "{" + ", ".join(f'"{k}": {v}' for k, v in row.items()) + "}"
    return mb_text(mb, **{key: "[" + ", ".join([text, *(json.dumps(r) for r in rows[1:])]) + "]"})


def microbench_variants(mb: dict) -> list[tuple[str, bytes, str | None]]:
    """(name, the results file, the field a refusal names) of results mutated from `mb`."""
    out: list[tuple[str, bytes, str | None]] = [
        (f"top level {raw}", raw.encode(), None) for raw in ("[]", '"copy"', "1", "null", "{}")]
    for value in ("{}", '"x"', "null", "[1]", "[{}]", "[[]]", "1"):
        out.append((f"copy {value}", mb_text(mb, copy=value), "copy"))
    for key, field, values in (
            ("copy", "seconds", ("0", "-1", "NaN", "1e999", '"1e-6"', "null", "true", "1e300")),
            ("copy", "bytes", ("0", "-1", "1.5", "1" + "0" * 30)),
            ("copy", "bytes_moved", ("0", "-5")),
            ("gemm", "m", ("0", "-1", "1" + "0" * 30, "2.5")),
            ("gemm", "dtype", ('"float7"', '""', "1")),
            ("elementwise", "numel", ("0", "-3")),
            ("elementwise", "dtype", ('"q4"',)),
            ("attention", "heads", ("0", "-1")),
            ("attention", "query_shape", ('"x"', "[1]", "[-1, 1, 1, 64]", "[]")),
            ("attention", "seconds", ("Infinity",))):
        for value in values:
            out.append((f"{key}[0].{field} {value[:12]}", row_changed(mb, key, field, value), field))
    for key, field in (("copy", "seconds"), ("gemm", "k"), ("attention", "head_dim"), ("elementwise", "seconds")):
        out.append((f"{key}[0] without {field}", row_changed(mb, key, field, None), field))
    out += [
        ("gemm[0] with an unknown field", row_changed(mb, "gemm", "bogus", "1"), "bogus"),
        ("an unknown list 'copyy'", mb_text(mb, copyy=json.dumps(mb["copy"])), "copyy"),
        ("an unknown list 'all_reduces'", mb_text(mb, all_reduces="[]"), "all_reduces"),
        ("an unknown key 'bogus'", mb_text(mb, bogus="1"), "bogus"),
        ("'copy' given twice", mb_text(mb)[:-1] + b', "copy": []}', "copy"),
        ("kernel_min_s NaN", mb_text(mb, kernel_min_s="NaN"), "kernel_min_s"),
        ("kernel_min_s -1", mb_text(mb, kernel_min_s="-1"), "kernel_min_s"),
        ("launch_eager_s a string", mb_text(mb, launch_eager_s='"fast"'), "launch_eager_s"),
        ("graph_per_kernel_s -1", mb_text(mb, graph_per_kernel_s="-1"), "graph_per_kernel_s"),
        ("threads 0", mb_text(mb, threads="0"), "threads"),
        ("device 'tpu'", mb_text(mb, device='"tpu"'), "device"),
        ("all_reduce_setup a list", mb_text(mb, all_reduce_setup="[1]"), "all_reduce_setup"),
        ("nested 100,000 deep", mb_text(mb, attention=nested(100_000)), "attention"),
        ("nested 100 deep", mb_text(mb, attention=nested(100, "1")), "attention"),
        ("20 MB", mb_text(mb, padding=json.dumps("x" * (20 << 20))), None),
        ("not UTF-8", mb_text(mb, device='"c\xe9pu"').replace(b"\xc3\xa9", b"\xe9"), None),
        ("gzip", gz([mb_text(mb)]), None),
    ]
    return out


def microbench_cases() -> list[Case]:
    commands = (("sim.fitting.validate", ["--hw", H200_CALIBRATED, "--microbench", MB_FILE], H200_MB),
                ("sim.fitting.calibrate", ["--device", "cpu", "--microbench", MB_FILE, "--out", "{tmp}/o.yaml"],
                 CPU_MB))
    cases = []
    for command, argv, base in commands:
        mb = json.loads(base.read_text())
        cases.append(Case(KIND, f"{command} --microbench as measured", command, argv, expect="accept",
                          files={"mb.json": base.read_bytes()}, timeout_s=120, control=True))
        for name, data, field in microbench_variants(mb):
            where = (MB_FILE,) + ((field,) if field else ())
            cases.append(Case(KIND, f"{command} --microbench {name}", command, argv, expect="reject",
                              files={"mb.json": data}, where=where, protected=("{tmp}/o.yaml",), timeout_s=60))
    return cases


def device_cases() -> list[Case]:
    gpu = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
    cases = [
        Case(KIND, "calibrate --device cuda --microbench (cpu measurements)", "sim.fitting.calibrate",
             ["--device", "cuda", "--base", H200, "--microbench", str(CPU_MB), "--out", "{tmp}/o.yaml"],
             expect="reject", where=("--device", str(CPU_MB)), timeout_s=60),
        Case(KIND, "calibrate --device cpu --microbench (cuda measurements)", "sim.fitting.calibrate",
             ["--device", "cpu", "--microbench", str(H200_MB), "--out", "{tmp}/o.yaml"],
             expect="reject", where=("--device", str(H200_MB)), timeout_s=60),
    ]
    if not gpu:  # with a GPU it would calibrate it
        cases.append(Case(KIND, "calibrate --device cuda without a GPU", "sim.fitting.calibrate",
                          ["--device", "cuda", "--base", H200, "--out", "{tmp}/o.yaml", "--quick"], expect="reject",
                          where=("--device",), timeout_s=120))
    return cases


def cases(args: argparse.Namespace) -> list[Case]:
    return measured_cases() + microbench_cases() + device_cases()


GENERATOR = Generator(group=KIND, classes={KIND: "measurements and microbenchmark results"}, cases=cases)
