#!/usr/bin/env bash
# The calibrate-measure-validate loop on this machine's CPU (CI runs it): microbenchmarks, measured runs of
# small presets (unshared and shared; sequential and SPEED), a calibrated hwconfig fitted to all of them (one
# host cost and one fit per kernel class must explain every preset; fitting to a subset made the check hostage
# to load changing between runs on a shared machine), and the validation of all of them against it. Fails when
# the median end-to-end error exceeds ${MAX_ERROR:-25}%.
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out"
measure() { python -m reference.measure --device cpu --dtype float32 --tokens 32 --warmup 1 --repeats 5 \
  --op-repeats 1 --quiet "$@"; }
measure --preset tiny-6 --decoder sequential --out "$out/tiny-6.sequential.jsonl.gz"
measure --preset tiny-4x3 --decoder speed --flips 0.09,0.04 --out "$out/tiny-4x3.speed.jsonl.gz"
measure --preset tiny-4x3 --decoder sequential --out "$out/tiny-4x3.sequential.jsonl.gz"
measure --preset tiny-2x3 --decoder speed --flips 0.15,0.06 --out "$out/tiny-2x3.speed.jsonl.gz"
measure --preset tiny-t5-2x3 --decoder speed --flips 0.09,0.04 --out "$out/tiny-t5-2x3.speed.jsonl.gz"
python -m sim.calibrate --device cpu --quick --out "$out/cpu-calibrated.yaml" --measured "$out"/*.jsonl.gz 2>&1 \
  | grep -v "it/s\]"
python -m sim.validate --hw "$out/cpu-calibrated.yaml" --measured "$out"/*.jsonl.gz --max-error "${MAX_ERROR:-25}" \
  --plot "$out/validation.png"
