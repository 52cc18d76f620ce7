"""Decode one prompt with sequential greedy decoding and with SPEED on a small preset, show that the outputs
agree, and print the pipeline statistics and what its stage count is made of.

The two decoders' tokens are equal in exact arithmetic. In floating point they batch rows differently, so their
logits differ by rounding (up to ~5e-14 in float64, ~2.5e-5 in float32 on these models); a step whose top two
logits are closer than that (a near-tie) can resolve differently. Random float64 models have no such tie: the
outputs agree, and the exit status is 1 if they do not.

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
from reference.pipeline import PipelineStats
from sim.command import integer, run_command

REPEATS = 3  # warm runs timed per decoder with --compile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-4x3",
                        help="model preset (default tiny-4x3); one of: " + ", ".join(PRESETS))
    parser.add_argument("--tokens", type=integer(1), default=48, help="tokens to generate (default 48)")
    parser.add_argument("--prompt-len", type=integer(1), default=8, help="prompt length in tokens (default 8; "
                        "prompt + tokens - 1 must fit the preset's max_seq_len)")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of the random weights and prompt (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="parameter dtype (default float64: rounding differences between the decoders ~1e-14, "
                        "so a near-tie that makes their tokens differ is far rarer than in float32)")
    parser.add_argument("--compile", action="store_true",
                        help="also decode compiled (torch.compile): compile time apart, per-token times, equal tokens")
    args = parser.parse_args(argv)
    try:
        cfg = get_preset(args.preset)
    except ValueError as err:
        parser.error(f"--preset {args.preset}: {err}")
    # the encoder-decoder presets decode from the start token, the prompt is their encoder input
    needed = args.tokens if cfg.is_encoder_decoder else args.prompt_len + args.tokens - 1
    if needed > cfg.max_seq_len or args.prompt_len > cfg.max_seq_len:
        parser.error(f"--prompt-len {args.prompt_len} and --tokens {args.tokens}: {cfg.name} holds "
                     f"{cfg.max_seq_len} positions (max_seq_len); a decoder-only run needs prompt + tokens - 1")

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
    print(f"outputs agree: {same}" + ("" if same else " (a near-tie resolved differently by rounding)"))
    stats = results["speed"].stats
    print(f"SPEED pipeline: {stats.summary()}")
    print(stage_count(stats, len(results["speed"].tokens[0])))
    if args.compile:
        same = compiled_report(model, prompt, args.tokens, encoder_inputs, results) and same
    return 0 if same else 1


def stage_count(stats: PipelineStats, tokens: int) -> str:
    """What SPEED's stage count is made of (one sequence): every stage starts at most one row, so stages = rows
    started (committed + flushed) + stages that start none, which are those where the newest row already predicts
    EOS or the last position; at least tokens + G - 1, at most G x tokens (reference.pipeline)."""
    idle = stats.stages - stats.injected
    return (f"stages {stats.stages} = rows started {stats.injected} ({stats.committed} committed + {stats.flushed} "
            f"flushed) + {idle} stages that started none (the newest row predicted EOS or the last position; the "
            f"last G - 1 = {stats.groups - 1} drain the pipeline); bounds: tokens + G - 1 = "
            f"{tokens + stats.groups - 1} <= stages <= G x tokens = {stats.groups * tokens}")


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
    sys.exit(run_command(main, "python -m reference.demo"))
