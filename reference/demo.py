"""Decode one prompt with sequential greedy decoding and with SPEED on a small preset, show that the outputs
agree, and print the pipeline statistics.

    python -m reference.demo [--preset tiny-4x3] [--tokens 48] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from reference import decode
from reference.config import PRESETS, get_preset
from reference.model import SharedDecoder


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
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
