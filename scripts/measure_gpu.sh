#!/usr/bin/env bash
# Measured traces on a CUDA GPU (bf16, batch 1, eager): the simulator's default presets and a Llama-shaped one.
# Writes to ${OUT:-data/measured/<gpu>}; produced data/measured/h200/ with the device tool (OUT set there).
# The t5-base-4x3 SPEED trace was measured with --op-repeats 3 (scripts/gpu_smoke.sh), the rest with 1.
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-data/measured/$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())")}
mkdir -p "$out"
m() { python3 -m reference.measure --device cuda --quiet --op-repeats 1 "$@"; }
m --preset t5-base-4 --decoder sequential --out "$out/t5-base-4.sequential.bf16.b1.t128.jsonl.gz"
m --preset t5-base-4x3 --decoder sequential --out "$out/t5-base-4x3.sequential.bf16.b1.t128.jsonl.gz"
m --preset llama2-7b-8x4 --decoder speed --tokens 32 --flips 0.09,0.04,0.02 \
  --out "$out/llama2-7b-8x4.speed.bf16.b1.t32.jsonl.gz"
m --preset llama2-7b-8x4 --decoder sequential --tokens 32 --out "$out/llama2-7b-8x4.sequential.bf16.b1.t32.jsonl.gz"
m --preset t5-base-12 --decoder sequential --out "$out/t5-base-12.sequential.bf16.b1.t128.jsonl.gz"
