"""What the compiler really runs, against what the simulator's fusion model projects, stage for stage.

For one compiled step variant (a SPEED stage of R rows, `reference.compiled.make_speed_stage`, or a whole
sequential step of R rows, `make_token_step`: what compiled decoding compiles), this

- records the kernels inductor generated, from the code it wrote (`torch._inductor.utils.run_and_get_code`):
  each call in the compiled graph's `call()` is a generated kernel (`cpp_fused_*` on cpu, `triton_*` on cuda;
  its name lists the aten ops it fused) or a library kernel (`extern_kernels.*`, an aten fallback);
- traces the same function run eagerly under the op capture (the ops the compiler was handed) and fuses them
  with `sim.fusion.stage_groups`, the model `python -m sim.run --launch compiled` uses;
- reports both side by side: generated vs fused kernels, library vs library kernels, with their names.

    python -m reference.capture.inductor --preset tiny-4x3 --rows 1 2 3
    python -m reference.capture.inductor --preset t5-base-4x3 --rows 3 --kind stage token --json out.json
    python -m reference.capture.inductor --preset tiny-4x3 --rows 1 3 --tp 2   # rank 0's shard, a fake group
    python -m reference.capture.inductor --preset tiny-4x3 --rows 1 3 --quant int8 int4-g32 --dtype bfloat16

With --tp N both sides run rank 0's shard (reference.parallel) under torch's fake process group (no processes:
the collectives return their inputs); inductor keeps the functional collectives as graph nodes between its kernels
(`_c10d_functional.all_reduce_` in place on its buffer, `all_gather_into_tensor`), listed with the library kernels
as the fusion model lists the trace's collectives; the `wait_tensor` after each is no kernel and is not listed.

With --quant SCHEME both sides run the model with its block projections quantized (reference.quant, the packed
ops): inductor calls the packed products as library kernels (`extern_kernels._weight_int8pack_mm`,
`torch.ops.quantized.int4mm_packed_weight_cpu`), which the fusion model keeps unfused as it keeps every matrix
product.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from reference.capture.opcapture import OpCapture
from reference.capture.tracing import fake_group_scope
from reference.compiled import CompiledStep
from reference.config import PRESETS, get_preset
from reference.model import KVCache, SharedDecoder
from reference.parallel import build_shard, check_degree
from reference.quant import SCHEMES, check_quantizable, quantize
from sim.command import check_outputs, integer, run_command
from sim.files import atomic_write
from sim.fusion import UNFUSED_CLASSES, stage_groups

# a call in the compiled module's call(): a generated kernel, or a library (extern / fallback) kernel
_GENERATED = re.compile(r"^\s+((?:cpp_fused|triton_\w+?_fused)\w*?)(?:_\d+)?(?:\.run)?\(")
_WAIT = "torch.ops._c10d_functional.wait_tensor"  # a collective's wait: no kernel (the trace records none)
_LIBRARY = re.compile(r"^\s+(?:buf\w+ = )?(extern_kernels\.\w+|torch\.ops\.\w+\.\w+(?:\.\w+)?|aten\.\w+(?:\.\w+)?)\(")


@dataclass
class StageKernels:
    """The kernels of one compiled variant: inductor's and the fusion model's, each as (names of generated or
    fused kernels, names of library kernels)."""

    preset: str
    kind: str  # "stage": a SPEED stage; "token": a whole sequential step
    rows: int
    tp: int  # tensor-parallel degree: rank 0's shard
    dtype: str
    cache_length: int
    traced_ops: int
    inductor_generated: list[str] = field(default_factory=list)
    inductor_library: list[str] = field(default_factory=list)
    model_fused: list[str] = field(default_factory=list)
    model_library: list[str] = field(default_factory=list)
    compile_s: float = 0.0
    quant: str | None = None  # the weight-only scheme of the block projections; None: float weights


def inductor_kernels(code: str) -> tuple[list[str], list[str]]:
    """(generated, library) kernel calls of inductor's output module, in call order."""
    body = code[code.index("def call(") :] if "def call(" in code else code
    generated, library = [], []
    for line in body.splitlines():
        if m := _GENERATED.match(line):
            generated.append(m.group(1))
        elif (m := _LIBRARY.match(line)) and not m.group(1).startswith(_WAIT):
            library.append(m.group(1))
    return generated, library


def _variant(kind: str, model: SharedDecoder, rows: int, length: int, backend: str | None
             ) -> Callable[[], object]:
    """A call of compiled variant `kind` (through `reference.compiled.BoundStep`, as decoding calls it; `backend`
    None: uncompiled) for `rows` rows over a cache of `length` positions: a SPEED stage of one sequence in steady
    state (groups G-1 .. 0, the newest row injected), or a sequential step of one row per sequence."""
    cfg = model.config
    batch = 1 if kind == "stage" else rows
    cache: KVCache = CompiledStep(model, backend=backend).new_cache(batch, length, 8 if cfg.is_encoder_decoder else 0)
    if cfg.is_encoder_decoder:
        cache.encoder_lens = [8] * batch
    bound = CompiledStep(model, backend=backend).bind(cache)
    if kind == "token":
        return lambda: bound.token([1] * rows, list(range(rows)), [length - 1] * rows)
    groups = list(range(rows - 1, -1, -1)) if rows <= cfg.n_groups else [0] * rows
    order = [*range(rows - 1), cfg.n_groups]  # the rows carried from the previous stage, then the new token
    carry = bound.new_carry()
    return lambda: bound.stage(carry, [1], order, [0] * rows, [length - rows + r for r in range(rows)], groups)


def model_kernels(model: SharedDecoder, kind: str, rows: int, length: int) -> tuple[int, list[str], list[str]]:
    """(traced ops, fused kernels, library kernels) of variant `kind` run eagerly under the op capture and fused
    by the simulator's fusion model."""
    capture = OpCapture(model)
    with torch.inference_mode(), capture.attached():
        call = _variant(kind, model, rows, length, backend=None)
        capture.begin("speed")
        call()
    ops = [op for op in capture.ops if op.stage == capture.where.stage]
    fused, library = [], []
    for group in stage_groups(ops):
        if ops[group[0]].kind in UNFUSED_CLASSES:  # library kernels and collectives
            library.append(ops[group[0]].op)
        else:
            fused.append("+".join(sorted({ops[j].op.split(".")[1] for j in group})))
    return len(ops), fused, library


def compare(preset: str, kind: str, rows: int, dtype: torch.dtype = torch.float32, length: int = 32, tp: int = 1,
            quant: str | None = None) -> StageKernels:
    """Inductor's kernels and the fusion model's for one variant of `preset` (random weights, cpu; the fusion
    model's side traced on the meta device, as `sim.run --launch compiled` traces); `tp` > 1: rank 0's shard,
    both sides under a fake process group of `tp` ranks; `quant`: the block projections quantized (both sides)."""
    from torch._inductor.utils import run_and_get_code

    cfg = get_preset(preset)
    check_degree(cfg, tp)
    with fake_group_scope(tp) as group:
        def build(**kwargs: object) -> SharedDecoder:
            if group is not None:
                return build_shard(cfg, group, quant=quant, **kwargs)
            model = SharedDecoder(cfg, **kwargs)
            return model if quant is None else quantize(model, quant)

        traced, fused, library = model_kernels(build(device="meta", dtype=dtype), kind, rows, length)
        model = build(device="cpu", dtype=dtype, seed=0)
        torch._dynamo.reset()
        t0 = time.perf_counter()
        with torch.inference_mode():
            _, codes = run_and_get_code(_variant(kind, model, rows, length, backend="inductor"))
    generated, extern = [], []
    for code in codes:
        g, e = inductor_kernels(code)
        generated += g
        extern += e
    return StageKernels(preset, kind, rows, tp, str(dtype).removeprefix("torch."), length, traced, generated, extern,
                        fused, library, time.perf_counter() - t0, quant)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.capture.inductor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["tiny-4x3"],
                        help="model presets (default tiny-4x3); any of: " + ", ".join(PRESETS))
    parser.add_argument("--rows", nargs="+", type=integer(1), default=[1, 3],
                        help="rows in flight of the variants compared (default 1 3)")
    parser.add_argument("--kind", nargs="+", choices=("stage", "token"), default=["stage"],
                        help="variants compared: stage (a SPEED stage of R rows of one sequence), token (a whole "
                        "sequential step of R sequences); default stage")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="default float32")
    parser.add_argument("--tp", nargs="+", type=integer(1), default=[1], help="tensor-parallel degrees (default 1): "
                        "rank 0's shard under a fake process group of N ranks, collectives among the library kernels")
    parser.add_argument("--quant", nargs="+", choices=SCHEMES, help="weight-only schemes: each variant also with its "
                        "block projections quantized (reference.quant, the packed ops)")
    parser.add_argument("--json", type=Path, help="write the kernels of every variant as JSON")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--json": args.json})
    if any(r < 1 for r in args.rows):
        parser.error("--rows must be >= 1")
    quants = args.quant or [None]
    try:
        for p in args.preset:
            for q in filter(None, quants):
                check_quantizable(get_preset(p), q)
        results = [compare(p, k, r, getattr(torch, args.dtype), tp=t, quant=q) for p in args.preset for t in args.tp
                   for q in quants for k in args.kind for r in args.rows]
    except ValueError as err:
        parser.error(str(err))
    print(f"{'preset':<16}{'quant':>10}{'TP':>3}{'kind':>6}{'rows':>5}{'traced ops':>11}{'fused: model':>14}"
          f"{'inductor':>10}{'library: model':>16}{'inductor':>10}{'collectives':>13}{'compile s':>11}")
    for r in results:
        collectives = sum("_c10d_functional" in name for name in r.inductor_library)
        print(f"{r.preset:<16}{r.quant or '-':>10}{r.tp:>3}{r.kind:>6}{r.rows:>5}{r.traced_ops:>11}"
              f"{len(r.model_fused):>14}{len(r.inductor_generated):>10}{len(r.model_library):>16}{len(r.inductor_library):>10}"
              f"{collectives:>13}{r.compile_s:>11.1f}")
    if args.json:
        payload = {"command": " ".join(["python -m reference.capture.inductor", *sys.argv[1:]]),
                   "torch": torch.__version__, "variants": [asdict(r) for r in results]}
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(payload, indent=1) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.capture.inductor"))
