"""What weight-only quantization (reference.quant) costs the trained code-* models: per scheme, held-out loss,
perplexity and next-token accuracy against the float model, greedy-token agreement with the float model's
decoding, the flip rates SPEED's speculation depends on, and a check that SPEED decodes exactly what sequential
decoding decodes over the same quantized weights.

    python -m reference.experiments.quality        # every checkpoint in data/trained, every scheme, a few minutes

Writes data/trained/quant-quality.json (atomically) and prints one line per model and scheme.

Held-out figures: teacher forced over the same evenly spaced windows as reference.experiments.paper (final exit:
loss, perplexity exp(loss), accuracy; flip rates between consecutive group exits). Greedy agreement: each held-out
prompt decoded sequentially by the float model and by the quantized one (a fixed number of new tokens, EOS does
not stop), the share of generated tokens equal position by position (a sequence that diverges once usually
differs from there on), the mean number of leading tokens equal, and the sequences identical throughout.
Exactness: SPEED's tokens equal sequential decoding's over the same quantized weights on every prompt (float32).

Kernels: the float32 figures are the same with either form of the quantized product (dequantize-then-matmul or
the packed ops; they differ by float32 rounding only), and on this x86 CPU the packed ops' float32 paths are scalar
loops (vectorized for bfloat16 only), 10-25x slower than dequantize-then-matmul: --kernel dequant (the default)
keeps a run to minutes; --kernel packed measures through `_weight_int8pack_mm` / `_weight_int4pack_mm_for_cpu`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reference import decode
from reference.experiments.corpus import load_corpus
from reference.experiments.paper import (
    NO_EOS,
    add_checkpoint_arguments,
    add_heldout_arguments,
    checkpoints,
    cpu_name,
    evaluate,
)
from reference.experiments.speedup import heldout_prompts
from reference.experiments.train import ROOT, eval_windows, load_checkpoint, save_checkpoint
from reference.model import SharedDecoder
from reference.quant import KERNELS, SCHEMES, describe, parse_scheme, projection_bytes, quantize
from reference.ranks import token_match
from sim.command import check_outputs, integer, run_command
from sim.files import atomic_write

SETTINGS = ("eval_windows", "context", "prompts", "prompt_len", "tokens", "threads")


def held_out(model: SharedDecoder, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Final-exit loss, perplexity and accuracy, and the flip rates, teacher forced."""
    figures = evaluate(model, inputs, targets)
    return {"loss": figures["loss"], "perplexity": math.exp(figures["loss"]), "accuracy": figures["accuracy"],
            "flip_rates": figures["flip_rates"]}


def greedy(model: SharedDecoder, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    """Each prompt's sequential greedy decoding (no EOS)."""
    return [decode.sequential(model, [p], tokens, eos_id=NO_EOS).tokens[0] for p in prompts]


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens a and b share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def speed_is_sequential(model: SharedDecoder, prompts: list[list[int]], tokens: int,
                        sequential: list[list[int]]) -> dict:
    """SPEED over `model` on every prompt against its sequential tokens: prompts identical, rows flushed."""
    identical, flushed, committed = 0, 0, 0
    for prompt, expected in zip(prompts, sequential):
        out = decode.speed(model, [prompt], tokens, eos_id=NO_EOS)
        identical += out.tokens[0] == expected
        flushed, committed = flushed + out.stats.flushed, committed + out.stats.committed
    return {"identical": identical, "sequences": len(prompts), "rows_flushed": flushed, "rows_committed": committed}


def measure_scheme(float_model: SharedDecoder, scheme: str, kernel: str, inputs: torch.Tensor,
                   targets: torch.Tensor, prompts: list[list[int]], tokens: int,
                   float_tokens: list[list[int]]) -> tuple[SharedDecoder, dict]:
    """The quantized copy of `float_model` and its figures against the float model's."""
    model = quantize(copy.deepcopy(float_model), scheme, kernel)
    sequential = greedy(model, prompts, tokens)
    return model, {"kernels": describe(model), "layer_bytes": projection_bytes(model),
                   "heldout": held_out(model, inputs, targets),
                   "greedy_agreement": token_match(float_tokens, sequential),
                   "greedy_identical": sum(a == b for a, b in zip(float_tokens, sequential)),
                   "greedy_common_prefix": sum(map(common_prefix, float_tokens, sequential)) / len(prompts),
                   "speed_equals_sequential": speed_is_sequential(model, prompts, tokens, sequential)}


def summary(name: str, scheme: str, figures: dict, reference: dict) -> str:
    """One line of a scheme's figures beside the float model's."""
    held, ref = figures["heldout"], reference["heldout"]
    exact = figures.get("speed_equals_sequential")
    line = (f"{name:>9} {scheme:>9}: perplexity {held['perplexity']:7.3f} "
            f"({100 * (held['perplexity'] / ref['perplexity'] - 1):+6.2f}%), accuracy {100 * held['accuracy']:5.2f}% "
            f"({100 * (held['accuracy'] - ref['accuracy']):+5.2f} pt)")
    if exact is None:
        return line + f", block weights {figures['layer_bytes'] / 2**20:.2f} MiB"
    return (line + f", greedy tokens as float {100 * figures['greedy_agreement']:5.1f}% (first "
            f"{figures['greedy_common_prefix']:4.1f} on average; {figures['greedy_identical']}/{exact['sequences']} "
            f"sequences throughout), block weights {figures['layer_bytes'] / 2**20:.2f} MiB "
            f"({reference['layer_bytes'] / figures['layer_bytes']:.1f}x less), SPEED = sequential on "
            f"{exact['identical']}/{exact['sequences']}")


def measure_model(float_model: SharedDecoder, meta: dict, heldout: np.ndarray, schemes: list[str],
                  args: argparse.Namespace) -> dict:
    """One trained model: its float figures and every scheme's; prints a line per scheme."""
    inputs, targets = eval_windows(heldout, args.eval_windows, args.context)
    prompts = heldout_prompts(heldout, args.prompts, args.prompt_len)
    float_tokens = greedy(float_model, prompts, args.tokens)
    reference = {"layer_bytes": projection_bytes(float_model), "heldout": held_out(float_model, inputs, targets)}
    name = float_model.config.name
    print(summary(name, "float32", reference, reference))
    figures = {"groups": float_model.config.n_groups, "float32": reference}
    for scheme in schemes:
        t0 = time.perf_counter()
        model, figures[scheme] = measure_scheme(float_model, scheme, args.kernel, inputs, targets, prompts,
                                                args.tokens, float_tokens)
        print(summary(name, scheme, figures[scheme], reference) + f" [{time.perf_counter() - t0:.0f} s]")
        if args.save_dir is not None:
            save_checkpoint(model, args.save_dir / f"{name}.{scheme}.safetensors", meta)
    return figures


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reference.experiments.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), metavar="SCHEME",
                        help=f"schemes to measure (default all: {', '.join(SCHEMES)})")
    parser.add_argument("--kernel", choices=KERNELS, default="dequant",
                        help="the quantized product: dequant (dequantize, then matmul; default: the same figures as "
                        "packed up to float32 rounding, and 10-25x faster on this CPU in float32) or packed "
                        "(_weight_int8pack_mm, _weight_int4pack_mm_for_cpu)")
    parser.add_argument("--json", type=Path, default=ROOT / "data" / "trained" / "quant-quality.json",
                        help="where the figures go (default data/trained/quant-quality.json)")
    parser.add_argument("--save-dir", type=Path,
                        help="also write every quantized model there as PRESET.SCHEME.safetensors (load_checkpoint "
                        "reads them back quantized)")
    add_heldout_arguments(parser, "held-out prompts for greedy agreement and exactness")
    parser.add_argument("--threads", type=integer(1), default=1, help="torch CPU threads (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure every checkpoint and scheme; 1 if SPEED differs from sequential decoding, 2 on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        schemes = [parse_scheme(s, flag="--schemes").name for s in args.schemes]
    except ValueError as err:
        parser.error(str(err))
    check_outputs(parser, {"--json": args.json, "--save-dir": args.save_dir}, folders=("--save-dir",))
    try:
        torch.set_num_threads(args.threads)
        paths = checkpoints(args.models, args.presets)
        corpus = load_corpus(args.corpus)
        models = {}
        for path in paths:
            float_model, tokenizer, meta = load_checkpoint(path)
            heldout = tokenizer.encode_files([corpus.heldout[n] for n in sorted(corpus.heldout)])
            models[float_model.config.name] = measure_model(float_model, meta, heldout, schemes, args)
    except (ValueError, OSError) as err:
        print(f"python -m reference.experiments.quality: error: {err}", file=sys.stderr)
        return 2
    settings = {k: getattr(args, k) for k in SETTINGS}
    report = {"command": "python -m reference.experiments.quality" + (f" --kernel {args.kernel}"
                                                                       if args.kernel != "dequant" else ""),
              "settings": {**settings, "kernel": args.kernel, "schemes": schemes},
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "torch": torch.__version__},
              "models": models}
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    print(f"wrote {args.json}")
    inexact = [f"{name} {s}" for name, m in models.items() for s in schemes
               if m[s]["speed_equals_sequential"]["identical"] != args.prompts]
    if inexact:
        print(f"error: SPEED differs from sequential decoding over the quantized weights of {', '.join(inexact)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.experiments.quality"))
