"""Decode one prompt with sequential greedy decoding and with SPEED on a small preset, show that the outputs
agree, and print the pipeline statistics.

    python -m reference.demo [--preset tiny-4x3] [--tokens 48] [--seed 0] [--compile]

--compile also decodes with both decoders compiled (torch.compile, static shapes: reference.compiled), reports
the compile time (the first call of every compiled step variant) apart, and the per-token time of warm compiled
runs against warm eager runs, and checks that the compiled tokens equal the eager ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from reference import decode
from reference.config import PRESETS, get_preset
from reference.model import SharedDecoder

REPEATS = 3  # warm runs timed per decoder with --compile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-4x3",
                        help="model preset (default tiny-4x3); one of: " + ", ".join(PRESETS))
    parser.add_argument("--tokens", type=int, default=48, help="tokens to generate (default 48)")
    parser.add_argument("--prompt-len", type=int, default=8, help="prompt length in tokens (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompt (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="parameter dtype (default float64, so that no near-tie can split the two outputs)")
    parser.add_argument("--compile", action="store_true",
                        help="also decode compiled (torch.compile): compile time apart, per-token times, equal tokens")
    args = parser.parse_args(argv)
    try:
        cfg = get_preset(args.preset)
    except ValueError as err:
        parser.error(str(err))

    torch.manual_seed(args.seed)
    model = SharedDecoder(cfg, dtype=getattr(torch, args.dtype), seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(2, cfg.vocab_size, (args.prompt_len,), generator=generator).tolist()
    encoder_inputs = None
    if cfg.is_encoder_decoder:
        encoder_inputs, prompt = [prompt], [cfg.decoder_start_id]
    print(f"model {cfg.name}: Nd={cfg.n_unique_layers} x G={cfg.n_groups} (depth {cfg.depth}), d_model "
          f"{cfg.d_model}, {sum(p.numel() for p in model.parameters()):,} parameters, random weights (seed "
          f"{args.seed}), {args.dtype}")
    print(f"prompt: {prompt}" + (f" (encoder input {encoder_inputs[0]})" if encoder_inputs else ""))

    results = {}
    for name, fn in (("sequential", decode.sequential), ("speed", decode.speed)):
        t0 = time.perf_counter()
        results[name] = fn(model, [prompt], args.tokens, encoder_inputs=encoder_inputs)
        elapsed = time.perf_counter() - t0
        print(f"{name:>10}: {results[name].stages:4d} stages, {elapsed * 1e3:7.1f} ms  {results[name].tokens[0]}")
    same = results["sequential"].tokens == results["speed"].tokens
    print(f"outputs agree: {same}")
    stats = results["speed"].stats
    print(f"SPEED pipeline: {stats.summary()}")
    print(f"stages with no flush would be tokens + G - 1 = {len(results['speed'].tokens[0]) + cfg.n_groups - 1}")
    if args.compile:
        same = compiled_report(model, prompt, args.tokens, encoder_inputs, results) and same
    return 0 if same else 1


def _timed(fn: Callable[..., decode.DecodeResult], *args: object,
           **kwargs: object) -> tuple[decode.DecodeResult, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def compiled_report(model: SharedDecoder, prompt: list[int], tokens: int, encoder_inputs: list[list[int]] | None,
                    eager: dict[str, decode.DecodeResult]) -> bool:
    """Decode compiled with both decoders: a first call (compiles the variants it needs), then warm calls timed
    against warm eager calls (the best of REPEATS each). True when every compiled output equals the eager one."""
    print(f"compiled (torch.compile, {torch.get_num_threads()} threads; per-token times: the best of {REPEATS} warm "
          "runs; compile time apart):")
    agree = True
    for name, fn in (("sequential", decode.sequential), ("speed", decode.speed)):
        first, first_s = _timed(fn, model, [prompt], tokens, encoder_inputs=encoder_inputs, compile=True)
        warm, warm_s = min((_timed(fn, model, [prompt], tokens, encoder_inputs=encoder_inputs, compile=True)
                            for _ in range(REPEATS)), key=lambda run: run[1])
        eager_s = min(_timed(fn, model, [prompt], tokens, encoder_inputs=encoder_inputs)[1] for _ in range(REPEATS))
        n = len(eager[name].tokens[0])
        same = first.tokens == warm.tokens == eager[name].tokens
        agree = agree and same
        variants = ", ".join(f"{v.kind} R={v.rows} {v.first_call_s:.1f} s" for v in first.compile_variants)
        print(f"{name:>10}: compile {first.compile_s:6.1f} s in {len(first.compile_variants)} variants ({variants}); "
              f"first call {1e3 * (first_s - first.compile_s):.1f} ms besides")
        print(f"{'':>10}  per token: eager {1e3 * eager_s / n:.3f} ms, compiled {1e3 * warm_s / n:.3f} ms "
              f"({eager_s / warm_s:.2f}x); compiled tokens equal eager: {same}")
    return agree


if __name__ == "__main__":
    sys.exit(main())
