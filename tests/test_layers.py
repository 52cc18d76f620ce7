"""The layers follow the data flow and never import back up; there is no import cycle; nothing under sim/
imports reference/ (the trace provider is a command: sim.provider); the simulator never imports torch; and the
shipped data is found where an installed package has it."""

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# (layer, module prefixes), lowest first. A module may import its own layer and the layers below it, except
# that the two cores are independent of each other: the trace file is what crosses between them.
LAYERS = [
    ("decoder core", ("reference.config", "reference.model", "reference.pipeline", "reference.decode",
                      "reference.flips", "reference.compiled", "reference.hfconfig", "reference.parallel",
                      "reference.quant", "reference.ranks")),
    ("simulator core", ("sim.trace", "sim.opkinds", "sim.hardware", "sim.interconnect", "sim.kernels", "sim.matmul",
                        "sim.fusion", "sim.engine", "sim.defaults", "sim.files", "sim.memory", "sim.inputs",
                        "sim.command", "sim.provider", "sim.host")),
    ("capture", ("reference.capture",)),
    ("experiments", ("reference.experiments",)),
    ("fitting and validation", ("sim.fitting",)),
    ("command lines", ("sim.run", "sim.bench", "sim.sweep", "sim.quantrows", "reference.demo")),
]
CORES = ("decoder core", "simulator core")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def modules() -> dict[str, Path]:
    return {module_name(p): p for d in ("reference", "sim") for p in (ROOT / d).rglob("*.py")}


def imported(source: str) -> set[str]:
    """Every module name `source` imports, anywhere in it (lazy imports too): `import x`, `from x import y` (x and
    x.y), and a string literal handed to importlib.import_module or __import__."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.add(node.args[0].value)
    return found


def project_imports() -> dict[str, set[str]]:
    """Every module of reference/ and sim/ -> the project modules it imports, anywhere in it (lazy ones too)."""
    known = modules()
    return {name: {m for m in imported(path.read_text()) if m in known and m != name and not name.startswith(m + ".")}
            for name, path in known.items()}


def test_every_module_has_a_layer() -> None:
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    unplaced = [m for m in modules() if m not in packages and layer_of(m) is None]
    assert not unplaced, f"modules in no layer of tests/test_layers.py: {unplaced}"


def test_no_import_cycle() -> None:
    g = nx.DiGraph([(a, b) for a, bs in project_imports().items() for b in bs])
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_runs_up_a_layer() -> None:
    bad = []
    for module, imports in project_imports().items():
        mine = layer_of(module)
        for other in imports:
            theirs = layer_of(other)
            if mine is None or theirs is None:
                continue
            if theirs > mine or (mine != theirs and LAYERS[mine][0] in CORES and LAYERS[theirs][0] in CORES):
                bad.append(f"{module} ({LAYERS[mine][0]}) imports {other} ({LAYERS[theirs][0]})")
    assert not bad, "\n".join(bad)


def test_nothing_under_sim_imports_reference() -> None:
    """The simulator consumes traces and knows nothing of who makes them: it reaches the reference decoder only by
    running the trace provider's command (sim.provider), at any layer."""
    bad = sorted(f"{name} imports {m}" for name, path in modules().items() if name.split(".")[0] == "sim"
                 for m in imported(path.read_text()) if m.split(".")[0] == "reference")
    assert not bad, "\n".join(bad)


def test_the_import_finder_sees_every_way_to_import() -> None:
    source = """
import os
def f():
    from reference.config import ModelConfig
    import reference.flips as flips
    importlib.import_module("reference.capture.tracing")
    import_module("reference.hfconfig")
    __import__("reference.model")
    run(["python", "-m", "reference.capture.provider"])  # a command, not an import
"""
    assert imported(source) == {"os", "reference.config", "reference.config.ModelConfig", "reference.flips",
                                "reference.capture.tracing", "reference.hfconfig", "reference.model"}


@pytest.mark.parametrize("core", ["sim.trace", "sim.opkinds", "sim.hardware", "sim.interconnect", "sim.kernels",
                                  "sim.matmul", "sim.engine", "sim.defaults", "sim.files", "sim.memory", "sim.inputs",
                                  "sim.command", "sim.provider", "sim.host"])
def test_the_simulator_core_never_imports_torch(core: str) -> None:
    import subprocess
    import sys

    code = f"import sys; sys.modules['torch'] = None; import {core}"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_simulators_command_lines_never_import_torch() -> None:
    """Not even to trace a model: the sweep's driver and its Ray workers, sim.run, sim.bench and calibration stay
    torch-free processes (the trace provider is another process)."""
    import subprocess
    import sys

    commands = ("sim.run", "sim.bench", "sim.quantrows", "sim.sweep.cli", "sim.sweep.runner", "sim.fitting.calibrate",
                "sim.fitting.validate")
    code = "import sys; sys.modules['torch'] = None; " + "; ".join(f"import {m}" for m in commands)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_readme_map_names_every_module() -> None:
    """The README's map of the code (its Layout block) names every module of reference/ and sim/ in its folder's
    row, so the map a newcomer reads first matches the tree."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("reference/                  1 decoder core"):]
    block = block[:block.index("```")]
    rows: dict[str, str] = {}  # folder -> the text of its row (continuation lines included)
    for line in block.splitlines():
        if not line.startswith(" "):
            rows[line.split()[0].rstrip(",")] = ""
            key = line.split()[0].rstrip(",")
        rows[key] += " " + line
    missing = []
    for folder in ("reference/", "reference/capture/", "reference/experiments/", "sim/", "sim/fitting/"):
        for path in sorted((ROOT / folder).glob("*.py")):
            name = path.stem
            if name in ("__init__", "__main__") or (folder in ("sim/", "reference/") and name in
                                                    ("run", "bench", "quantrows", "demo")):
                continue
            if name not in rows.get(folder, "").replace(",", " ").split():
                missing.append(folder + path.name)
    assert not missing, f"README's Layout block does not name: {missing}"
