#!/usr/bin/env bash
# The calibrate-measure-validate loop on this machine's CPU (CI runs it): microbenchmarks, measured runs of
# small presets (unshared and shared; sequential and SPEED), a calibrated hwconfig fitted to all of them (one
# host cost and one fit per kernel class and op kind must explain every preset; fitting to a subset made the check hostage
# to load changing between runs on a shared machine), and the validation of all of them against it. Fails when
# the median end-to-end error exceeds ${MAX_ERROR:-25}%. Then the fair test, reported and not gated: a hwconfig
# fitted to three presets (unshared sequential, shared SPEED, T5 SPEED) judged on the two it did not see.
#
# The compiled regime, in the same loop: compiled decoding (torch.compile, every decode stage one graph) of
# sequential and SPEED runs, measured per stage and end to end (compile time excluded), code-wide-4x3 among them
# (d_model 512: 49 MiB of float32 shared weights, more than a 32 MiB L3). The same calibration fits the compiled
# figures (sim.fitting.compiled: the host's cost per stage, a library and a generated kernel's fixed time) to the
# tiny presets' decode stages, and `validate --launch compiled` of those four fails above ${MAX_ERROR:-25}% (median
# end to end) or ${MAX_STAGE_ERROR:-25}% (median stage); the targets are 10% and 15%. code-wide-4x3 is judged,
# not fitted: its stages are weight streams through library products, whose bandwidth per op kind (one row; a few
# rows, per row count) the microbenchmarks past the L3 anchor, at the widths this CPU decodes (reference.capture.
# microbench.CPU_GEMV_SHAPES: a GEMV pays a DRAM latency per output row, fitted as its `row_latency_s`); fitting the
# compiled figures to it would make the host's cost absorb that product error. Gated: its median end-to-end error (sequential and SPEED) above ${MAX_DRAM_ERROR:-30}%,
# a margin over the 10% target (three loop runs of issue 23.4's second pass: 8-16%, docs/cpu-dram-products.md) for
# DRAM bandwidth shared with whatever else runs (thread CPU time does not remove
# it: a stalled load counts as the thread's time; VALIDATION.md). Held out, gated above ${MAX_HELDOUT_ERROR:-30}%
# (median end to end; target 15%): the compiled figures fitted to tiny-4x3 alone, judged on the other four.
#
# Tensor parallelism, in the same loop: TP 2 decodes of tiny-4x3 (sequential and SPEED) on two gloo ranks on
# 127.0.0.1 (reference.capture.measure --tp 2: each rank's work by its thread's CPU time, each collective by wall
# time from the last rank's arrival, reference/capture/tpclock.py), validated per stage and end to end against
# cpu-tp.yaml: its interconnect section fitted to the all-reduce sweep of the same microbenchmark run (gloo, 2
# ranks, each call after a decode's gap of work), never to the decodes, and its kernels and host cost fitted to the
# sequential TP run's per-op and stage times alone (a rank's work runs 2-3x slower per op than one process's: it
# blocks in every collective and resumes with cold caches, which the single-process fit does not hold), so the
# SPEED run (G rows per all-reduce, other collectives per stage) is held out. Fails above
# ${MAX_TP_ERROR:-35}% (median end to end and median stage): gloo's all-reduce on a 2-core machine is the noisiest
# figure of the loop (four runs within an hour measured its 256-byte call at 607, 958, 608 and 858 us, and the TP
# decodes' median end-to-end error came out 3.4% in one run and 28.3% in another). Reported, not gated: the same
# traces against cpu-calibrated.yaml (the single-process kernel fit and the same interconnect), in VALIDATION.md
# (python -m sim.fitting.report --cpu-loop DIR).
#
# Weight-only quantization, in the same loop: tiny-4x3 decoded over int8 and int4-g32 weights (sequential and SPEED,
# 16 tokens), measured interleaved with the five presets (reference.capture.measure --quant) and held out of every
# kernel and host fit; their quantized products are timed by cpu-calibrated.yaml's dequant section, which
# sim.fitting.calibrate fits to the quantized-product microbenchmarks alone (sim.fitting.dequant). float32, as the
# rest of the loop: the one hwconfig fitted to float32 decodes then times every other op of them, and ATen's
# float32 packed products (a scalar path dequantizing every weight for every row, 10-30x slower than the bfloat16
# one) make the dequantization a visible share of the decode, the term under test. Fails above ${MAX_ERROR:-25}%
# (median end to end) or ${MAX_STAGE_ERROR:-25}% (median stage).
#
# Everything runs on one thread (--threads 1), timed by that thread's CPU time (reference/capture/clock.py): on a
# busy 2-core machine, two threads make a run wait for a descheduled thread at every parallel region (decode runs
# of 40 ms took 5 s), and wall times of one thread still stretched threefold while other processes ran.
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out/compiled" "$out/quant"
# one interleaved measurement: each round runs every preset once, so a slow phase of the machine (which made one
# preset 40% slower than the others in a CI run measured preset by preset) touches them all alike
job() { echo "--preset $1 --decoder $2 ${3:+--flips $3} --out $out/$1.$2.jsonl.gz"; }
qjob() { echo "--preset tiny-4x3 --decoder $2 ${3:+--flips $3} --quant $1 --tokens 16 --out $out/quant/tiny-4x3.$2.$1.jsonl.gz"; }
python -m reference.capture.measure --device cpu --threads 1 --dtype float32 --tokens 32 --warmup 1 --repeats 5 \
  --op-repeats 3 --quiet \
  --job "$(job tiny-6 sequential)" --job "$(job tiny-4x3 speed 0.09,0.04)" --job "$(job tiny-4x3 sequential)" \
  --job "$(job tiny-2x3 speed 0.15,0.06)" --job "$(job tiny-t5-2x3 speed 0.09,0.04)" \
  --job "$(qjob int8 sequential)" --job "$(qjob int8 speed 0.09,0.04)" --job "$(qjob int4-g32 sequential)" \
  --job "$(qjob int4-g32 speed 0.09,0.04)"
# compiled: the warm-up compiles every variant (one per rows in flight; reported, excluded), then timed runs.
# 128 tokens for the tiny presets: the first stages after eager work (and after a change of rows in flight) run
# with cold caches, a share of the decode that shrinks with its length; code-wide-4x3's stages take milliseconds
cjob() { echo "--preset $1 --decoder $2 ${3:+--flips $3} --out $out/compiled/$1.$2.jsonl.gz"; }
python -m reference.capture.measure --device cpu --threads 1 --dtype float32 --tokens 128 --compile --warmup 1 \
  --repeats 7 --op-repeats 1 --quiet \
  --job "$(cjob tiny-6 sequential)" --job "$(cjob tiny-4x3 speed 0.09,0.04)" --job "$(cjob tiny-4x3 sequential)" \
  --job "$(cjob tiny-t5-2x3 speed 0.09,0.04)" --job "$(cjob code-wide-4x3 speed 0.09,0.04) --tokens 32" \
  --job "$(cjob code-wide-4x3 sequential) --tokens 32"
python -m sim.fitting.calibrate --device cpu --quick --threads 1 --out "$out/cpu-calibrated.yaml" \
  --measured "$out"/*.jsonl.gz "$out"/compiled/tiny-*.jsonl.gz 2>&1 | grep -v "it/s\]"
python -m sim.fitting.calibrate --device cpu --microbench "$out/cpu-calibrated.microbench.json" --out "$out/cpu-heldout.yaml" \
  --measured "$out"/{tiny-6.sequential,tiny-4x3.speed,tiny-t5-2x3.speed}.jsonl.gz \
  "$out"/compiled/tiny-4x3.{speed,sequential}.jsonl.gz >"$out/cpu-heldout.txt"
# the full reports go to files; what is printed is a summary (CI shows the last 22 lines): per metric n, mean,
# median and P90 absolute error in %, signed bias in %, Pearson r
summary() { awk '/^all [0-9]+ traces/ {on = 1; next} on && /^(kernel|stage|end_to_end) /'; }
echo "eager, all five, fitted to all (full report: $out/validation.txt):"
python -m sim.fitting.validate --hw "$out/cpu-calibrated.yaml" --measured "$out"/*.jsonl.gz --max-error "${MAX_ERROR:-25}" \
  --plot "$out/validation.png" | tee "$out/validation.txt" | summary
echo "compiled, the four tiny presets, fitted to them (gated; full report: $out/validation-compiled.txt):"
python -m sim.fitting.validate --launch compiled --hw "$out/cpu-calibrated.yaml" --measured "$out"/compiled/tiny-*.jsonl.gz \
  --max-error "${MAX_ERROR:-25}" --max-stage-error "${MAX_STAGE_ERROR:-25}" | tee "$out/validation-compiled.txt" | summary
echo "compiled, all six, code-wide-4x3 (weights past the L3) judged, not fitted:"
python -m sim.fitting.validate --launch compiled --hw "$out/cpu-calibrated.yaml" --measured "$out"/compiled/*.jsonl.gz \
  --plot "$out/validation-compiled.png" | tee "$out/validation-compiled-all.txt" | summary
echo "compiled, code-wide-4x3 (weights past the L3), judged, not fitted (gated):"
python -m sim.fitting.validate --launch compiled --hw "$out/cpu-calibrated.yaml" \
  --measured "$out"/compiled/code-wide-4x3.*.jsonl.gz --max-error "${MAX_DRAM_ERROR:-30}" | summary
echo "quantized, int8 and int4-g32 tiny-4x3, held out but the dequant microbenchmarks (gated; full report: $out/validation-quant.txt):"
python -m sim.fitting.validate --hw "$out/cpu-calibrated.yaml" --measured "$out"/quant/*.jsonl.gz \
  --max-error "${MAX_ERROR:-25}" --max-stage-error "${MAX_STAGE_ERROR:-25}" | tee "$out/validation-quant.txt" \
  | awk '/^all [0-9]+ traces/ {on = 1; next} on && /^(stage|end_to_end|kernel:matmul) /'
# tensor parallelism: 16 tokens, 2 ranks (57 s with the validation on the development machine at load 10)
tpjob() { echo "--preset tiny-4x3 --decoder $1 ${2:+--flips $2} --out $out/tp/tiny-4x3.$1.tp2.jsonl.gz"; }
mkdir -p "$out/tp"
python -m reference.capture.measure --device cpu --tp 2 --dtype float32 --tokens 16 --warmup 1 --repeats 5 \
  --op-repeats 1 --quiet --job "$(tpjob sequential)" --job "$(tpjob speed 0.09,0.04)" >"$out/tp/measure.txt"
python -m sim.fitting.calibrate --device cpu --microbench "$out/cpu-calibrated.microbench.json" --out "$out/cpu-tp.yaml" \
  --measured "$out/tp/tiny-4x3.sequential.tp2.jsonl.gz" >"$out/cpu-tp.txt"
tpsummary() { awk '/^all [0-9]+ traces/ {on = 1; next} on && /^(stage|end_to_end|kernel:collective) /'; }
echo "tensor-parallel, TP 2 gloo, tiny-4x3 sequential (fit) and SPEED (held out; gated; full report: $out/validation-tp.txt):"
python -m sim.fitting.validate --hw "$out/cpu-tp.yaml" --measured "$out"/tp/*.jsonl.gz --max-error "${MAX_TP_ERROR:-35}" \
  --max-stage-error "${MAX_TP_ERROR:-35}" | tee "$out/validation-tp.txt" | tpsummary
echo "held out, eager: fitted to tiny-6.sequential, tiny-4x3.speed, tiny-t5-2x3.speed, judged on the other two:"
python -m sim.fitting.validate --hw "$out/cpu-heldout.yaml" --measured "$out"/{tiny-4x3.sequential,tiny-2x3.speed}.jsonl.gz \
  | summary
echo "held out, compiled: fitted to tiny-4x3, judged on tiny-6, tiny-t5-2x3, code-wide-4x3 (gated):"
python -m sim.fitting.validate --launch compiled --hw "$out/cpu-heldout.yaml" \
  --measured "$out"/compiled/{tiny-6.sequential,tiny-t5-2x3.speed,code-wide-4x3.speed,code-wide-4x3.sequential}.jsonl.gz \
  --max-error "${MAX_HELDOUT_ERROR:-30}" | summary
