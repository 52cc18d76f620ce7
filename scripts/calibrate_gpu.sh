#!/usr/bin/env bash
# On a CUDA GPU: microbenchmarks for calibration, and measured traces at batch 8 (eager, bf16).
# Produced data/calibration/h200.microbench.json and the *.b8.* traces in data/measured/h200/ (device tool, OUT set).
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-data/measured/gpu}
python3 -m reference.capture.microbench --device cuda --out "$out/h200.microbench.json" 2>&1 | grep -v "it/s"
m() { python3 -m reference.capture.measure --device cuda --quiet --op-repeats 1 --repeats 3 "$@" 2>&1 | grep -v -e UserWarning -e _warn_once; }
m --preset t5-base-4x3 --decoder speed --batch 8 --out "$out/t5-base-4x3.speed.bf16.b8.t128.jsonl.gz"
m --preset t5-base-4x3 --decoder sequential --batch 8 --tokens 64 --out "$out/t5-base-4x3.sequential.bf16.b8.t64.jsonl.gz"
m --preset llama2-7b-8x4 --decoder speed --batch 8 --tokens 32 --flips 0.09,0.04,0.02 \
  --out "$out/llama2-7b-8x4.speed.bf16.b8.t32.jsonl.gz"
