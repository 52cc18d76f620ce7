#!/usr/bin/env bash
# Smoke test of the measurement on a CUDA machine: environment, decoder exactness in bf16, profiler attribution.
set -euo pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))"
python3 - <<'PY'
import torch
from reference import decode
from reference.config import get_preset
from reference.model import SharedDecoder
for name in ("tiny-4x3", "tiny-t5-2x3"):
    m = SharedDecoder(get_preset(name), device="cuda", dtype=torch.float32, seed=0)
    src = [[5, 6, 7, 8]] if m.config.is_encoder_decoder else None
    a = decode.sequential(m, [[3, 4, 5]], 40, encoder_inputs=src)
    b = decode.speed(m, [[3, 4, 5]], 40, encoder_inputs=src)
    print(name, "cuda fp32 speed == sequential:", a.tokens == b.tokens, b.stats.summary())
PY
python3 -m reference.capture.measure --device cuda --preset tiny-4x3 --decoder speed --tokens 16 --flips 0.09,0.04 --dtype float32 --out $OUT/smoke.jsonl.gz --quiet
python3 - <<'PY'
import os
from sim.trace import read_trace
t = read_trace(os.environ["OUT"] + "/smoke.jsonl.gz")
ops = t.ops
print("ops", len(ops), "zero-duration ops", sum(o.duration_s == 0 for o in ops))
print("sum op device time ms", sum(o.duration_s for o in ops) * 1e3, "sum stage wall ms", sum(s.wall_s for s in t.stages) * 1e3)
from collections import defaultdict
d = defaultdict(list)
for o in ops: d[o.op].append(o.duration_s)
for k, v in sorted(d.items(), key=lambda kv: -sum(kv[1]))[:12]: print(f"{k:45s} n={len(v):5d} median_us={sorted(v)[len(v)//2]*1e6:8.2f}")
PY
# one full-size configuration, timed, to plan the rest
time python3 -m reference.capture.measure --device cuda --preset t5-base-4x3 --decoder speed --out $OUT/t5-4x3-speed.jsonl.gz --quiet
