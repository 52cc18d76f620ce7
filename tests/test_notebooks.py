"""The analysis notebooks run top to bottom on small settings, and are committed with their outputs stripped.

Each notebook is executed with nbclient in a kernel of this interpreter (a kernelspec written to a temporary
folder, pointing at sys.executable, so it is this environment's packages that run), with the working directory
notebooks/ and SPEED_SIM_SMALL=1 (the notebooks read it and shrink their sweeps). Traces made on demand go to a
temporary cache, so a stale cache never hides a tracing problem.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

KernelSpecManager = pytest.importorskip("jupyter_client.kernelspec").KernelSpecManager
KernelManager = pytest.importorskip("jupyter_client.manager").KernelManager

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "speed-sim-test"
CELL_TIMEOUT_S = int(os.environ.get("SPEED_SIM_NOTEBOOK_TIMEOUT", "600"))


def _strip_module():
    spec = importlib.util.spec_from_file_location("strip_notebooks", ROOT / "scripts" / "strip_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def kernel_manager(tmp_path, monkeypatch):
    """A kernel of this interpreter, with the small settings and a private cache, runtime and IPython folder."""
    spec_dir = tmp_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({sys.executable})", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    for name, value in {"SPEED_SIM_SMALL": "1", "SPEED_SIM_CACHE": str(tmp_path / "cache"),
                        "PYTHONPATH": os.pathsep.join(path), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
                        "IPYTHONDIR": str(tmp_path / "ipython"), "MPLBACKEND": "module://matplotlib_inline.backend_inline"
                        }.items():
        monkeypatch.setenv(name, value)
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_manager):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, km=kernel_manager, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the traceback without its terminal colours
        pytest.fail(f"{path.name}: a cell failed\n{plain}", pytrace=False)
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: cell {i} has outputs or an execution count; run python scripts/strip_notebooks.py")
    assert not _strip_module().strip(nb), f"{path.name}: run metadata left; run python scripts/strip_notebooks.py"
