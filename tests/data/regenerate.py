"""Regenerate default-projections.json: what `python -m sim.run --hw a100 h200` projects for the default
traces today. Run it (from the checkout) only when a change to the model is meant to move the projections,
and say in the commit which and by how much."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

FIELDS = ("hardware", "launch", "label", "total_s", "s_per_token", "dram_bytes", "kernels")

with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "runs.json"
    subprocess.run([sys.executable, "-m", "sim.run", "--hw", "a100", "h200", "--json", str(out)], check=True,
                   capture_output=True)
    runs = [{k: r[k] for k in FIELDS} for r in json.loads(out.read_text())["runs"]]
payload = {"command": "python tests/data/regenerate.py (python -m sim.run --hw a100 h200 --json ..., these fields)",
           "runs": runs}
(Path(__file__).parent / "default-projections.json").write_text(json.dumps(payload, indent=1) + "\n")
