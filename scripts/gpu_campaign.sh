#!/usr/bin/env bash
# One prepared measurement campaign on a CUDA GPU within a time budget (default 480 s): microbenchmarks with the
# decode sweeps, compiled decoding (CUDA graphs) and eager decoding of the default configurations and a
# Llama-2-7B-shaped model, into data/measured/<gpu>/ with the command that made each file (COMMANDS.md,
# manifest.json); with $OUT set (the device tool) also $OUT/campaign.tar.gz, refreshed after every phase.
#
#   bash scripts/gpu_campaign.sh                       # on the GPU machine, from the repository root
#   bash scripts/gpu_campaign.sh --dry-run             # the plan and the budget per phase, nothing run
#   bash scripts/gpu_campaign.sh --device cpu --quick --out "$(mktemp -d)"   # the same phases on this CPU (CI)
#
# Every flag: bash scripts/gpu_campaign.sh --help (scripts/gpu_campaign.py). PYTHON picks the interpreter
# (default python3, the one with torch on the device tool's machines).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$root/scripts/gpu_campaign.py" "$@"
