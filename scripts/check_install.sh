#!/usr/bin/env bash
# A plain (non-editable) install works like a library: from another directory, `python -m sim.run --hw a100`
# runs the main job, the hwconfigs and default traces coming from the installed package data. The simulator
# imports no torch, so the wheel goes into a fresh virtual environment without its dependencies, and only the
# simulator's own are added (torch would be the one slow install, and is not needed for this).
#
#     bash scripts/check_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps . -w "$work/wheel"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q numpy simpy networkx pyyaml tqdm matplotlib scipy
"$work/venv/bin/pip" install -q --no-deps "$work"/wheel/*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import sim, sim.defaults
assert "site-packages" in sim.__file__, sim.__file__
assert sim.defaults.HWCONFIG_DIR.is_relative_to(sim.defaults.CHECKOUT / "sim"), sim.defaults.HWCONFIG_DIR
print(f"installed: {sim.__file__}; hwconfigs {sim.defaults.HWCONFIG_DIR}; traces {sim.defaults.DEFAULT_TRACES}")
PY
"$work/venv/bin/python" -m sim.run --list-hw | tr '\n' ' ' && echo
"$work/venv/bin/python" -m sim.run --hw a100
