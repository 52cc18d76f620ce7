"""Decode one prompt with sequential greedy decoding and with SPEED on a small preset, show that the outputs
agree, and print the pipeline statistics and what its stage count is made of.

The two decoders' tokens are equal in exact arithmetic. In floating point they batch rows differently, so their
logits differ by rounding (up to ~5e-14 in float64, ~2.5e-5 in float32 on these models); a step whose top two
logits are closer than that (a near-tie) can resolve differently. Random float64 models have no such tie: the
outputs agree, and the exit status is 1 if they do not.

    python -m reference.demo [--preset tiny-4x3] [--tokens 48] [--seed 0] [--compile] [--quant int8]

--compile also decodes with both decoders compiled (torch.compile, static shapes: reference.compiled), reports
the compile time (the first call of every compiled step variant) apart, and the per-token time of warm compiled
runs against warm eager runs, and checks that the compiled tokens equal the eager ones.

--quant SCHEME (int8, int4-g32, int4-g64, int4-g128) quantizes the block projections first (reference.quant), once,
from the float weights, and says what the weights became and which kernels multiply; both decoders then decode the
quantized model (float32 by default: PyTorch's packed int8/int4 ops take float32 and bfloat16, not float64), and
the exit status says whether they agree, as above. It composes with --tp (the model is quantized whole, then
sharded) and --compile.

Tensor parallelism (reference.parallel), N processes launched by torchrun, gloo on the CPU, NCCL with --device cuda:

    torchrun --nproc-per-node N -m reference.demo --tp N [--preset ...] [--compile]

Every rank builds the same seeded model, decodes it whole in its own process (the reference), shards it and
decodes again with both decoders; rank 0 prints whether the sharded tokens, every stage's rows, accepts and
flushes equal single-process decoding's and are the same on every rank, and the largest differences of the
logits and of the KV caches. The exit status is 1 if they do not agree (bf16 may: near-ties, README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import IO

import torch
import torch.distributed as dist

from reference import decode, quant, ranks
from reference.config import PRESETS, ModelConfig, get_preset
from reference.model import SharedDecoder
from reference.parallel import TensorParallel, check_degree, shard
from reference.pipeline import PipelineStats
from sim.command import MAX_SEED, integer, number, random_seed, run_command
from sim.host import check_room

REPEATS = 3  # warm runs timed per decoder with --compile
HOST_SHARE = 0.5  # of the host memory a process may hold (sim.host): the rest is torch's, the decoders' and the OS's
Say = Callable[[str], None]


class RankZeroParser(argparse.ArgumentParser):
    """Under torchrun every rank parses the same flags and refuses the same: only rank 0 prints (usage, help,
    the error line)."""

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        if os.environ.get("RANK", "0") == "0":
            super()._print_message(message, file)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, ModelConfig]:
    """The flags and the preset, every value checked (one error line and exit status 2 otherwise)."""
    parser = RankZeroParser(prog="python -m reference.demo", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-4x3",
                        help="model preset (default tiny-4x3); one of: " + ", ".join(PRESETS))
    parser.add_argument("--tokens", type=integer(1), default=48, help="tokens to generate (default 48)")
    parser.add_argument("--prompt-len", type=integer(1), default=8, help="prompt length in tokens (default 8; "
                        "prompt + tokens - 1 must fit the preset's max_seq_len)")
    parser.add_argument("--seed", type=random_seed(), default=0, help="seed of the random weights and prompt (default "
                        f"0; at most 2**64 - 1 = {MAX_SEED})")
    parser.add_argument("--quant", metavar="SCHEME",
                        help="quantize the block projections' weights first (reference.quant), once, from the float "
                        f"weights: one of {', '.join(quant.SCHEMES)}; both decoders then decode the quantized model")
    parser.add_argument("--quant-kernel", choices=quant.KERNELS, default="packed",
                        help="with --quant: packed (default: PyTorch's packed int8/int4 ops where the device and "
                        "dtype have one) or dequant (dequantize, then matmul)")
    parser.add_argument("--dtype", choices=("float32", "float64", "bfloat16"),
                        help="parameter dtype (default float64, with --quant float32: the packed ops take float32 "
                        "and bfloat16, not float64; float64: rounding differences between the decoders ~1e-14, "
                        "so a near-tie that makes their tokens differ is far rarer than in float32 or bfloat16)")
    parser.add_argument("--compile", action="store_true",
                        help="also decode compiled (torch.compile): compile time apart, per-token times, equal tokens")
    parser.add_argument("--tp", type=integer(1), default=1,
                        help="tensor-parallel degree N (default 1): run as torchrun --nproc-per-node N -m "
                        "reference.demo --tp N; it must divide the preset's heads, KV heads and d_ff")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to decode (default cpu); with --tp: gloo on cpu, NCCL on cuda (GPU LOCAL_RANK)")
    parser.add_argument("--force", action="store_true", help="decode even where the run's estimated host memory "
                        f"passes {HOST_SHARE:.0%} of what this process may hold (it may then be killed out of memory)")
    parser.add_argument("--timeout-s", type=number(1), default=120.0,
                        help="with --tp: seconds a collective waits for the other ranks before it fails (default "
                        "120): a rank that dies or hangs stops the others within this")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.quant else "float64")
    try:
        cfg = get_preset(args.preset)
    except ValueError as err:
        parser.error(f"--preset {args.preset}: {err}")
    try:
        if args.quant is not None:
            quant.check_quantizable(cfg, args.quant)
        if args.tp > 1 or ranks.torchrun_world_size() is not None:
            check_degree(cfg, args.tp)
            quant.check_tp(cfg, args.quant, args.tp)
            ranks.check_world(args.tp)
    except ValueError as err:
        parser.error(str(err))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    # the encoder-decoder presets decode from the start token, the prompt is their encoder input
    needed = args.tokens if cfg.is_encoder_decoder else args.prompt_len + args.tokens - 1
    if needed > cfg.max_seq_len or args.prompt_len > cfg.max_seq_len:
        parser.error(f"--prompt-len {args.prompt_len} and --tokens {args.tokens}: {cfg.name} holds "
                     f"{cfg.max_seq_len} positions (max_seq_len); a decoder-only run needs prompt + tokens - 1")
    if not args.force:
        try:
            check_room(f"{cfg.name} in {args.dtype} ({cfg.parameters:,} parameters" + (
                f", a whole copy in each of {args.tp} ranks" if args.tp > 1 else "") + ")",
                host_bytes(cfg, args), HOST_SHARE)
        except ValueError as err:
            parser.error(f"--preset {args.preset}: {err}; give --force to try anyway")
    return args, cfg


def host_bytes(cfg: ModelConfig, args: argparse.Namespace) -> int:
    """The host memory a demo run holds, estimated before building the model: its weights (every rank builds the
    whole model before sharding it), the KV cache of the longest run, and the rotary tables (built in float64)."""
    size = torch.finfo(getattr(torch, args.dtype)).bits // 8
    positions = args.prompt_len + args.tokens
    cache = 2 * cfg.depth * cfg.n_kv_heads * positions * cfg.head_dim * size
    rope = cfg.max_seq_len * cfg.head_dim // 2 * (2 * size + 3 * 8)
    return args.tp * (cfg.parameters * size + cache + rope)


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(2, cfg.vocab_size, (args.prompt_len,), generator=generator).tolist()
    encoder_inputs = None
    if cfg.is_encoder_decoder:
        encoder_inputs, prompt = [prompt], [cfg.decoder_start_id]
    if args.tp > 1:
        return parallel_demo(args, cfg, prompt, encoder_inputs)
    return single_demo(args, cfg, prompt, encoder_inputs)


def single_demo(args: argparse.Namespace, cfg: ModelConfig, prompt: list[int],
                encoder_inputs: list[list[int]] | None) -> int:
    """Both decoders in this process: 0 where their outputs agree."""
    model = SharedDecoder(cfg, device=args.device, dtype=getattr(torch, args.dtype), seed=args.seed)
    describe(model, args, prompt, encoder_inputs, print)
    if args.quant is not None:
        quantize_report(model, args, print)

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


def describe(model: SharedDecoder, args: argparse.Namespace, prompt: list[int], encoder_inputs: list[list[int]] | None,
             say: Say) -> None:
    cfg = model.config
    say(f"model {cfg.name}: Nd={cfg.n_unique_layers} x G={cfg.n_groups} (depth {cfg.depth}), d_model "
        f"{cfg.d_model}, {sum(p.numel() for p in model.parameters()):,} parameters, random weights (seed "
        f"{args.seed}), {args.dtype}")
    say(f"prompt: {prompt}" + (f" (encoder input {encoder_inputs[0]})" if encoder_inputs else ""))


def quantize_report(model: SharedDecoder, args: argparse.Namespace, say: Say) -> None:
    """Quantize `model` in place with --quant and say what its weights became."""
    before = {"blocks": quant.projection_bytes(model), "model": quant.weight_bytes(model)}
    quant.quantize(model, args.quant, args.quant_kernel)
    blocks = quant.projection_bytes(model)
    say(f"quantized {quant.describe(model)}")
    say(f"weights: block projections {before['blocks']:,} B -> {blocks:,} B ({before['blocks'] / blocks:.2f}x less; "
        f"packed weights, scales{'' if args.quant == 'int8' else ', zero points'}); whole model {before['model']:,} B "
        f"-> {quant.weight_bytes(model):,} B (embedding, LM head, norms and biases stay {args.dtype})")


def parallel_demo(args: argparse.Namespace, cfg: ModelConfig, prompt: list[int],
                  encoder_inputs: list[list[int]] | None) -> int:
    """This rank's part of `--tp N` under torchrun: exit status 0 where the sharded outputs agree with
    single-process decoding on every rank; a failed collective (a rank died, or hung past --timeout-s) ends it
    with one line and status 1."""
    tp, device = ranks.init_from_env(args.device, args.timeout_s)
    say: Say = print if tp.rank == 0 else (lambda line: None)
    try:
        return sharded_report(args, cfg, prompt, encoder_inputs, tp, device, say)
    except RuntimeError as err:  # gloo and NCCL (DistBackendError) raise these when a peer fails
        print(f"python -m reference.demo: rank {tp.rank} of {tp.world_size}: a collective failed: "
              f"{ranks.one_line(err)}", file=sys.stderr)
        return 1
    finally:
        dist.destroy_process_group()


def sharded_report(args: argparse.Namespace, cfg: ModelConfig, prompt: list[int],
                   encoder_inputs: list[list[int]] | None, tp: TensorParallel, device: str, say: Say) -> int:
    """Decode whole (the reference, in this process), shard, decode again, gather every rank's outputs, compare."""
    request = ranks.DecodeRequest(cfg, [prompt], args.tokens, seed=args.seed, dtype=args.dtype, device=device,
                                  encoder_inputs=encoder_inputs, keep_cache=True, record_logits=True)
    model = ranks.build_model(request)
    describe(model, args, prompt, encoder_inputs, say)
    if args.quant is not None:
        quantize_report(model, args, say)
    reference, reference_s = _timed(ranks.decode_model, model, request)
    shard(model, tp)
    attn, vocab = model.blocks[0].attn, model.vocab_shard
    say(f"tensor parallel: {tp.world_size} ranks ({dist.get_backend()}, timeout {args.timeout_s:g} s); rank 0 holds "
        f"{attn.n_heads} of {cfg.n_heads} query heads, {attn.n_kv_heads} of {cfg.n_kv_heads} KV heads, "
        f"{model.blocks[0].ffn.gate.out_features} of {cfg.d_ff} FFN rows, vocabulary rows [{vocab.start}, "
        f"{vocab.stop}) of {cfg.vocab_size}; embedding and norms replicated")
    mine, sharded_s = _timed(ranks.decode_model, model, request, tp)
    outputs: list[ranks.RankOutput | None] = [None] * tp.world_size
    dist.all_gather_object(outputs, mine)
    agreement = ranks.compare(reference, outputs, [prompt])
    for name in request.decoders:
        ref, out = reference.decoders[name], outputs[0].decoders[name]
        say(f"{name:>10}: 1 process {ref.stages:4d} stages {ref.tokens[0]}")
        say(f"{'':>10}  {tp.world_size} ranks  {out.stages:4d} stages: tokens equal {agreement.tokens_equal[name]} "
            f"({100 * agreement.token_match[name]:.1f}% of positions), every stage's rows, accepts and flushes equal "
            f"{agreement.decisions_equal[name]}; max |logit diff| {agreement.logits_max_abs[name]:.3g}, max |KV "
            f"diff| {agreement.cache_max_abs[name]:.3g}")
    say(f"decode time: 1 process {1e3 * reference_s:.1f} ms, {tp.world_size} ranks {1e3 * sharded_s:.1f} ms (both "
        "decoders, logits recorded)")
    say(f"every rank the same tokens, statistics and stage decisions: {agreement.ranks_agree}")
    say(f"sharded outputs agree with single-process decoding: {agreement.exact}" + (
        "" if agreement.exact else " (in bf16/fp32 a near-tie can resolve differently by rounding: README)"))
    say(f"SPEED pipeline: {outputs[0].decoders['speed'].stats.summary()}")
    same = agreement.exact
    if args.compile:
        eager = {name: outputs[0].decoders[name] for name in request.decoders}
        same = compiled_report(model, prompt, args.tokens, encoder_inputs, eager, say) and same
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
                    eager: dict[str, decode.DecodeResult | ranks.DecoderOutput], say: Say = print) -> bool:
    """Decode compiled with both decoders: a first call (compiles the variants it needs), then warm calls timed
    against warm eager calls (the best of REPEATS each). True when every compiled output equals the eager one."""
    say(f"compiled (torch.compile, {torch.get_num_threads()} threads; per-token times: the best of {REPEATS} warm "
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
        say(f"{name:>10}: compile {first.compile_s:6.1f} s in {len(first.compile_variants)} variants ({variants}); "
              f"first call {1e3 * (first_s - first.compile_s):.1f} ms besides")
        say(f"{'':>10}  per token: eager {1e3 * eager_s / n:.3f} ms, compiled {1e3 * warm_s / n:.3f} ms "
              f"({eager_s / warm_s:.2f}x); compiled tokens equal eager: {same}")
    return agree


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.demo"))
