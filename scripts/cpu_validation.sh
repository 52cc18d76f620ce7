#!/usr/bin/env bash
# The calibrate-measure-validate loop on this machine's CPU (CI runs it): microbenchmarks, measured runs of
# small presets (unshared and shared; sequential and SPEED), a calibrated hwconfig fitted to all of them (one
# host cost and one fit per kernel class and op kind must explain every preset; fitting to a subset made the check hostage
# to load changing between runs on a shared machine), and the validation of all of them against it. Fails when
# the median end-to-end error exceeds ${MAX_ERROR:-25}%. Then the fair test, reported and not gated: a hwconfig
# fitted to three presets (unshared sequential, shared SPEED, T5 SPEED) judged on the two it did not see.
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out"
# one interleaved measurement: each round runs every preset once, so a slow phase of the machine (which made one
# preset 40% slower than the others in a CI run measured preset by preset) touches them all alike
job() { echo "--preset $1 --decoder $2 ${3:+--flips $3} --out $out/$1.$2.jsonl.gz"; }
python -m reference.capture.measure --device cpu --dtype float32 --tokens 32 --warmup 1 --repeats 5 --op-repeats 3 --quiet \
  --job "$(job tiny-6 sequential)" --job "$(job tiny-4x3 speed 0.09,0.04)" --job "$(job tiny-4x3 sequential)" \
  --job "$(job tiny-2x3 speed 0.15,0.06)" --job "$(job tiny-t5-2x3 speed 0.09,0.04)"
python -m sim.fitting.calibrate --device cpu --quick --out "$out/cpu-calibrated.yaml" --measured "$out"/*.jsonl.gz 2>&1 \
  | grep -v "it/s\]"
python -m sim.fitting.validate --hw "$out/cpu-calibrated.yaml" --measured "$out"/*.jsonl.gz --max-error "${MAX_ERROR:-25}" \
  --plot "$out/validation.png"
python -m sim.fitting.calibrate --device cpu --microbench "$out/cpu-calibrated.microbench.json" --out "$out/cpu-heldout.yaml" \
  --measured "$out"/{tiny-6.sequential,tiny-4x3.speed,tiny-t5-2x3.speed}.jsonl.gz >"$out/cpu-heldout.txt"
echo "held out: fitted to tiny-6.sequential, tiny-4x3.speed, tiny-t5-2x3.speed"
python -m sim.fitting.validate --hw "$out/cpu-heldout.yaml" --measured "$out"/{tiny-4x3.sequential,tiny-2x3.speed}.jsonl.gz \
  | sed -n '/^all 2 traces/,/^end_to_end/p'
