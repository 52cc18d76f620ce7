"""The hostile-input harness (scripts/fuzz.py over scripts/fuzzing/) keeps running against the code it fuzzes: a
small sample of each group of generators through the real command lines, every outcome clear or accepted, the
table printed, the cases written as JSON; and the harness's own rules (each outcome, the time to refusal, the
protected files, a named pipe that costs one case) on a probe command. (The full runs are in the README's "Bad
input"; the suite's own fuzzing is tests/test_hostile_inputs.py and tests/test_trace_hostile.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # scripts/ is not installed: the harness is imported from the checkout
from scripts.fuzzing.harness import (  # noqa: E402
    ACCEPTED,
    CLEAR,
    HANG,
    SILENT,
    TRACEBACK,
    UNCLEAR,
    Case,
    Node,
    Result,
    refusal_seconds,
    run_cases,
    table,
)

PROBE = '''"""A command for the harness's tests: argv[0] says what it does."""
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def refuse(name: str) -> int:
    print(f"probe: error: {name}: refused", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    what, *rest = argv
    if what == "refuse":  # after rest[1] seconds, naming rest[0]
        time.sleep(float(rest[1]))
        return refuse(rest[0])
    if what == "clobber":  # replace the file rest[0], then refuse naming it
        Path(rest[0]).write_text("new")
        return refuse(rest[0])
    if what == "read":  # read the file rest[0] (a named pipe nobody writes: blocks)
        Path(rest[0]).read_bytes()
        return 0
    if what == "write":  # write rest[1] into the file rest[0], and succeed
        Path(rest[0]).write_text(rest[1])
        return 0
    if what == "raise":
        raise RuntimeError("boom")
    print(" ".join(rest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The module name of the probe command, importable here and in the harness's forked children."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / "fuzz_probe.py").write_text(PROBE)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setenv("PYTHONPATH", str(folder), prepend=os.pathsep)  # for a case with process=True
        yield "fuzz_probe"
    sys.modules.pop("fuzz_probe", None)


def case(probe: str, name: str, argv: list[str], expect: str = "any", **kw: object) -> Case:
    return Case("probe", name, probe, argv, expect=expect, **kw)


def test_each_outcome_of_a_probe_command(probe: str) -> None:
    cases = [
        case(probe, "names the file", ["refuse", "{tmp}/in.yaml", "0"], "reject", where=("{tmp}/in.yaml",)),
        case(probe, "names another", ["refuse", "elsewhere", "0"], "reject", where=("{tmp}/in.yaml",)),
        case(probe, "names an alternative", ["refuse", "peak.x", "0"], where=(("{tmp}/in.yaml", "peak.x"),)),
        case(probe, "refuses a valid input", ["refuse", "{tmp}/in.yaml", "0"], "accept", where=("{tmp}/in.yaml",)),
        case(probe, "finite output", ["print", "1.5 s"], "accept"),
        case(probe, "NaN printed", ["print", "nan s"]),
        case(probe, "accepts nonsense", ["print", "1.5 s"], "reject"),
        case(probe, "NaN in a result", ["write", "{tmp}/out.json", '{"a": [1, NaN]}'], results=("{tmp}/out.json",)),
        case(probe, "a result missing", ["print", "1"], results=("{tmp}/out.json",)),
        case(probe, "a finite result", ["write", "{tmp}/out.json", '{"a": [1, 2]}'], results=("{tmp}/out.json",)),
        case(probe, "an exception", ["raise"]),
        case(probe, "an exception in a subprocess", ["raise"], process=True),
        case(probe, "a subprocess names the file", ["refuse", "{tmp}/in.yaml", "0"], where=("{tmp}/in.yaml",),
             process=True),
        case(probe, "a named pipe nobody writes", ["read", "{tmp}/fifo"], files={"fifo": Node("fifo")},
             protected=("{tmp}/fifo",), timeout_s=1),
    ]
    results = run_cases(cases, jobs=2, timeout_s=30)
    outcomes = {r.case.name: r.outcome for r in results}
    assert outcomes == {
        "names the file": CLEAR, "names another": UNCLEAR, "names an alternative": CLEAR,
        "refuses a valid input": UNCLEAR, "finite output": ACCEPTED, "NaN printed": SILENT,
        "accepts nonsense": SILENT, "NaN in a result": SILENT, "a result missing": SILENT,
        "a finite result": ACCEPTED, "an exception": TRACEBACK, "an exception in a subprocess": TRACEBACK,
        "a subprocess names the file": CLEAR, "a named pipe nobody writes": HANG}, results
    message = {r.case.name: r.message for r in results}
    assert message["names the file"] == "probe: error: {tmp}/in.yaml: refused"  # the case's folder written {tmp}
    assert "no answer in 1 s" in message["a named pipe nobody writes"]
    assert "RuntimeError: boom" in message["an exception"]


def test_a_protected_file_changed_by_a_refusal_is_silent_damage(probe: str) -> None:
    keep = {"keep.json": b"old"}
    cases = [
        case(probe, "refused, file kept", ["refuse", "{tmp}/keep.json", "0"], files=keep,
             where=("{tmp}/keep.json",), protected=("{tmp}/keep.json",)),
        case(probe, "refused, file replaced", ["clobber", "{tmp}/keep.json"], files=keep,
             where=("{tmp}/keep.json",), protected=("{tmp}/keep.json",)),
        case(probe, "refused, output left behind", ["clobber", "{tmp}/new.json"], where=("{tmp}/new.json",),
             protected=("{tmp}/new.json",)),
        case(probe, "succeeded, output replaced", ["write", "{tmp}/keep.json", "{}"], files=keep,
             protected=("{tmp}/keep.json",), results=("{tmp}/keep.json",)),
    ]
    results = {r.case.name: r for r in run_cases(cases, jobs=2, timeout_s=30)}
    assert results["refused, file kept"].outcome == CLEAR
    assert results["succeeded, output replaced"].outcome == ACCEPTED  # a result may replace what it replaces
    replaced, left = results["refused, file replaced"], results["refused, output left behind"]
    assert replaced.outcome == left.outcome == SILENT
    assert "{tmp}/keep.json was 3 bytes" in replaced.message and "is 3 bytes" in replaced.message
    assert "{tmp}/new.json was absent" in left.message


def test_the_time_to_refusal_counts_the_command_not_making_its_files(probe: str) -> None:
    def slow_file() -> bytes:
        time.sleep(2.0)
        return b"x"

    [result] = run_cases([case(probe, "slow", ["refuse", "{tmp}/in", "0.3"], files={"in": slow_file},
                               where=("{tmp}/in",))], timeout_s=30)
    assert result.outcome == CLEAR
    assert 0.3 <= result.seconds < 2.0  # the sleep in the command, not the two seconds making its file


def test_the_table_counts_outcomes_and_times_to_refusal() -> None:
    def result(outcome: str, seconds: float, kind: str = "a") -> Result:
        return Result(Case(kind, "c", "m", [], expect="any"), outcome, 2, "", seconds)

    results = [result(CLEAR, 0.1), result(CLEAR, 0.3), result(UNCLEAR, 2.0), result(ACCEPTED, 9.0),
               result(HANG, 60.0), result(ACCEPTED, 1.0, "b")]
    assert refusal_seconds(results) == "0.30 / 2.00"  # refusals only: clear and unclear errors
    lines = table(results, {"a": "class a", "b": "class b"}).splitlines()
    assert lines[2] == "| class a | 5 | 1 | 2 | 1 | 0 | 1 | 0 | 0.30 / 2.00 |"
    assert lines[3] == "| class b | 1 | 1 | 0 | 0 | 0 | 0 | 0 | - |"


# issue 22's classes: a few fast cases of each (the full run's table is the README's)
ISSUE_22 = ["--only", "work", "outputs", "not-regular", "model-config", "trace-fields", "measurements", "sweep-ray",
            "flags", "--match", "vocab_size 1e+09", "--perfetto X", "sim.run trace", "given twice",
            "header device 'tpu'", "unknown", "--ray-address 'ray:", "flips ("]


# tensor parallelism and quantization: a few fast cases of each of its parts
PARALLEL = ["--only", "parallel", "--match", "sim.run --tp 0x2", "tp: [0]", "tp: [4]", "interconnect.efficiency: .nan",
            "hwconfig a list", "reference.demo --quant bogus", "--tp 3", "trace header tp 3", "collective ranks 16"]


@pytest.mark.parametrize("argv", [
    ["--only", "inputs", "--match", "duplicate"],
    ["--only", "traces", "--trace-cases", "24", "--measured-trace-cases", "8"],
    ISSUE_22,
    PARALLEL,
])
def test_a_sample_runs_clean(tmp_path: Path, argv: list[str]) -> None:
    out = tmp_path / "cases.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), *argv, "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| inputs | tried |" in proc.stdout
    cases = json.loads(out.read_text())
    assert len(cases) >= 3
    assert {c["outcome"] for c in cases} <= {"accepted", "clear error"}, cases
    if argv is ISSUE_22:  # every class of the issue sampled
        assert {c["class"] for c in cases} == set(ISSUE_22[1:ISSUE_22.index("--match")]), cases
    if argv is PARALLEL:  # the flag, the sweep axis, the hwconfig section, the demo and the trace fields
        assert {c["name"].split(" ")[0] for c in cases} >= {"sim.run", "sim.sweep", "hwconfig", "reference.demo",
                                                           "trace"}, cases


def test_an_unwritable_output_is_refused_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--json", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"--json {tmp_path}: is a folder" in proc.stderr, proc.stderr
