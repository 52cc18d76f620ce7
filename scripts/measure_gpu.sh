#!/usr/bin/env bash
# Measured traces on a CUDA GPU (bf16, batch 1, eager): the simulator's default presets and a Llama-shaped one.
# Writes to ${OUT:-data/measured/<gpu>}; produced data/measured/h200/ with the device tool (OUT set there).
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-data/measured/$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())")}
mkdir -p "$out"
# one interleaved measurement (each round runs every configuration once), so that host-side jitter of a shared
# virtual machine touches all alike: measured one by one, t5-base-12 and t5-base-4x3 sequential, which run the same
# kernels, came out at 1398 and 1909 ms
job() { echo "--preset $1 --decoder $2 --tokens $3 ${4:+--flips $4} --out $out/$1.$2.bf16.b1.t$3.jsonl.gz"; }
python3 -m reference.capture.measure --device cuda --quiet --repeats 7 --op-repeats 1 \
  --job "$(job t5-base-4 sequential 128)" --job "$(job t5-base-4x3 sequential 128)" \
  --job "$(job t5-base-12 sequential 128)" --job "$(job t5-base-4x3 speed 128)" \
  --job "$(job llama2-7b-8x4 speed 32 0.09,0.04,0.02)" --job "$(job llama2-7b-8x4 sequential 32)"
