#!/usr/bin/env bash
# What a campaign (scripts/gpu_campaign.sh) wrote, read back by the simulator: its eager traces, its compiled traces
# (--launch compiled) and its microbenchmarks (the decode sweeps too) validated against a hwconfig: the one given,
# else (a --device cpu campaign) cpu-calibrated.yaml, calibrated here from the campaign's own microbenchmarks and
# traces. Reports, gates no error: it fails when a file cannot be read or validated.
#
#   bash scripts/check_campaign.sh data/measured/h100 hwconfigs/h100.yaml    # after unpacking a GPU campaign
#   bash scripts/check_campaign.sh /tmp/campaign                             # a CPU campaign (CI)
set -euo pipefail
dir=${1:?usage: bash scripts/check_campaign.sh CAMPAIGN_FOLDER [HWCONFIG]}
hw=${2:-}
shopt -s nullglob
eager=("$dir"/*.jsonl.gz)
compiled=("$dir"/compiled/*.jsonl.gz)
if [ ! -f "$dir/manifest.json" ]; then
  echo "scripts/check_campaign.sh: $dir has no manifest.json (not written by scripts/gpu_campaign.sh)" >&2
  exit 1
fi
python - "$dir/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"campaign {m['command']!r} on {m['device_name']}: {m['status']} in {m['elapsed_s']} s of {m['budget_s']:.0f}")
for p in m["phases"]:
    print(f"  {p['name']:<17}{p['status']:<9}{p['seconds'] if p['seconds'] is not None else '-':>7} s  {p['note']}")
PY
if [ -z "$hw" ]; then
  hw="$dir/cpu-calibrated.yaml"
  python -m sim.fitting.calibrate --device cpu --microbench "$dir/microbench.json" --out "$hw" \
    --measured "${eager[@]}" "${compiled[@]}" >"$dir/cpu-calibrated.txt" 2>&1
  echo "calibrated $hw from the campaign's microbenchmarks and ${#eager[@]} + ${#compiled[@]} traces"
fi
# the statistics of all traces together: per metric n, mean, median and P90 absolute error in %, bias in %, Pearson r
summary() { awk '/^all [0-9]+ traces/ {on = 1; next} on && /^(stage|end_to_end|kernel) /'; }
if [ ${#eager[@]} -gt 0 ]; then
  echo "eager, ${#eager[@]} traces against $hw:"
  python -m sim.fitting.validate --hw "$hw" --measured "${eager[@]}" | summary
fi
if [ ${#compiled[@]} -gt 0 ]; then
  echo "compiled, ${#compiled[@]} traces against $hw:"
  python -m sim.fitting.validate --launch compiled --hw "$hw" --measured "${compiled[@]}" | summary
fi
if [ -f "$dir/microbench.json" ]; then
  python -m sim.fitting.validate --hw "$hw" --microbench "$dir/microbench.json" | tail -n +2
fi
