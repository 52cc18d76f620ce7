"""The real SPEED speedup on this machine: a trained shared model whose shared weights exceed the last-level
cache (so batch-1 decoding reads them from memory on every pass, as a GPU does from HBM), decoded greedily by
both decoders on held-out prompts.

    python -m reference.experiments.train --preset code-wide-4x3 --steps 300 --lr 1.5e-3 --out-dir out/trained-wide
    python -m reference.experiments.speedup --checkpoint out/trained-wide/code-wide-4x3.safetensors

It prints, and writes with --json:
  amortization  the cost of a SPEED stage with r rows (r = 1..G: every in-flight row once through the shared
                group, the LM head on every row, the argmaxes to the host) over that of one row through the
                same group and head, each timed alone on a warm cache; target: at most 1.3 for r = G
  measured      sequential ms/token over SPEED ms/token, end to end (median per prompt, decoders interleaved)
  predicted     what the stage costs alone predict: tokens x the cost of a sequential step, over the sum of
                the cost of every stage SPEED ran for the number of rows it ran (the counts from the real runs,
                flushes included); the ratio measured / predicted is what the decode loop's own work leaves
                (target: at least 0.8)

--linear weight-major computes every projection as (W @ x^T)^T instead of x @ W^T. On this x86 CPU PyTorch's
x @ W^T with 2-4 rows takes an sgemm path that packs W (reading it and writing it again), so a few rows cost
far more than one; W @ x^T streams W once (16 products over 46 MB of float32 weights, 1 thread: 4.7 ms for 1
row and 7.7 ms for 3 as x @ W^T, 4.8 ms and 3.3 ms as W @ x^T). Both decoders use the same form.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from reference import decode
from reference.experiments.corpus import load_corpus
from reference.model import KVCache, SharedDecoder
from reference.pipeline import Row
from sim.files import atomic_write

NO_EOS = -1  # an id no token has: every run decodes its full length


def heldout_prompts(ids: np.ndarray, n: int, length: int) -> list[list[int]]:
    """`n` prompts of `length` tokens, evenly spaced through the held-out token ids."""
    starts = np.linspace(0, len(ids) - length, n).astype(np.int64)
    return [ids[s : s + length].tolist() for s in starts]


@contextmanager
def weight_major_linear() -> Iterator[None]:
    """Every bias-free nn.Linear computed as (W @ x^T)^T while the context lasts (see the module docstring)."""
    original = nn.Linear.forward

    def forward(self: nn.Linear, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return (self.weight @ rows.T).T.reshape(*x.shape[:-1], self.out_features)

    nn.Linear.forward = forward
    try:
        yield
    finally:
        nn.Linear.forward = original


class _RowCounts:
    """A StageObserver that counts SPEED stages by the rows they ran."""

    def __init__(self) -> None:
        self.rows: Counter[int] = Counter()

    def begin(self, kind: str) -> None:
        pass

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list, flushes: list) -> None:
        if rows:
            self.rows[len(rows)] += 1


@torch.inference_mode()
def _stage(model: SharedDecoder, cache: KVCache, position: int, groups: list[int]) -> None:
    """One stage's work, as decode.speed does it: rows at `groups` (oldest, deepest first) through the shared
    group, the head on every row, the argmaxes to the host."""
    positions = [position + k for k in range(len(groups))]
    rows = model.rows([0] * len(groups), positions)
    h = model.embed(torch.tensor([7] * len(groups), device=cache.k.device))
    h = model.run_group(h, rows, groups, cache)
    model.exit_logits(h, rows, [g + 1 for g in groups]).argmax(dim=-1).tolist()


@torch.inference_mode()
def _sequential_step(model: SharedDecoder, cache: KVCache, position: int) -> None:
    """One sequential decode step: a row through every group, then the head."""
    rows = model.rows([0], [position])
    h = model.embed(torch.tensor([7], device=cache.k.device))
    for group in range(model.config.n_groups):
        h = model.run_group(h, rows, [group], cache)
    model.exit_logits(h, rows, [model.config.n_groups]).argmax(dim=-1).tolist()


def stage_costs(model: SharedDecoder, prompt: list[int], repeats: int) -> tuple[dict[int, float], float]:
    """Seconds of a SPEED stage with r = 1..G rows, and of a sequential step, each the median of `repeats`
    runs interleaved, on a cache prefilled with `prompt` (the rows write positions after it, as real ones do)."""
    g = model.config.n_groups
    cache = model.new_cache(1, len(prompt) + g + 1)
    with torch.inference_mode():
        model.prefill(cache, 0, prompt)
    work = {r: (lambda r=r: _stage(model, cache, len(prompt), list(range(r - 1, -1, -1)))) for r in range(1, g + 1)}
    work[0] = lambda: _sequential_step(model, cache, len(prompt))
    times: dict[int, list[float]] = {r: [] for r in work}
    for repeat in range(repeats + 1):  # the first round warms up
        for r, fn in work.items():
            t0 = time.perf_counter()
            fn()
            if repeat:
                times[r].append(time.perf_counter() - t0)
    medians = {r: statistics.median(t) for r, t in times.items()}
    return {r: medians[r] for r in range(1, g + 1)}, medians[0]


def end_to_end(model: SharedDecoder, prompts: list[list[int]], tokens: int, repeats: int
               ) -> tuple[dict[str, float], Counter[int], bool]:
    """Median seconds per sequence of each decoder (decoders interleaved, one warm-up each), the rows of every
    SPEED stage (from the first round), and whether both decoders produced the same tokens."""
    seconds: dict[str, list[float]] = {"sequential": [], "speed": []}
    counts, same = _RowCounts(), True
    for fn in (decode.sequential, decode.speed):
        fn(model, [prompts[0]], tokens, eos_id=NO_EOS)
    for repeat in range(repeats):
        for prompt in prompts:
            outputs = {}
            for name, fn in (("sequential", decode.sequential), ("speed", decode.speed)):
                observer = counts if name == "speed" and repeat == 0 else None
                t0 = time.perf_counter()
                outputs[name] = fn(model, [prompt], tokens, eos_id=NO_EOS, observer=observer).tokens
                seconds[name].append(time.perf_counter() - t0)
            same &= outputs["sequential"] == outputs["speed"]
    return {name: statistics.median(s) for name, s in seconds.items()}, counts.rows, same


def measure(model: SharedDecoder, prompts: list[list[int]], tokens: int, repeats: int) -> dict:
    """Every figure of the benchmark (see the module docstring), in seconds unless named otherwise."""
    g = model.config.n_groups
    if g < 2:
        raise ValueError(f"{model.config.name} is not shared (G = 1): SPEED has nothing to pipeline")
    costs, step_s = stage_costs(model, prompts[0], repeats * 5)
    e2e, rows, same = end_to_end(model, prompts, tokens, repeats)
    n_stages = sum(rows.values())
    predicted_speed_s = sum(n * costs[r] for r, n in rows.items()) / len(prompts)  # per sequence
    predicted = tokens * step_s / predicted_speed_s
    measured = e2e["sequential"] / e2e["speed"]
    return {
        "model": model.config.name, "groups": g, "tokens": tokens, "prompts": len(prompts), "repeats": repeats,
        "threads": torch.get_num_threads(), "outputs_identical": same,
        "stage_s": {str(r): c for r, c in costs.items()}, "sequential_step_s": step_s,
        "amortization": {str(r): costs[r] / costs[1] for r in costs},
        "stages_per_token": n_stages / (len(prompts) * tokens),
        "stage_rows": {str(r): n for r, n in sorted(rows.items())},
        "ms_per_token": {name: 1e3 * s / tokens for name, s in e2e.items()},
        "measured_speedup": measured, "predicted_speedup": predicted, "measured_over_predicted": measured / predicted,
    }


def report(m: dict) -> str:
    g = m["groups"]
    lines = [f"{m['model']}: G = {g}, {m['tokens']} tokens x {m['prompts']} prompts x {m['repeats']} repeats, "
             f"{m['threads']} thread(s); outputs identical: {m['outputs_identical']}",
             "stage cost alone: " + ", ".join(f"{r} row(s) {1e3 * s:.2f} ms" for r, s in m["stage_s"].items())
             + f"; sequential step {1e3 * m['sequential_step_s']:.2f} ms",
             f"amortization: a {g}-row stage costs {m['amortization'][str(g)]:.2f}x a one-row pass (target <= 1.3)",
             f"SPEED ran {m['stages_per_token']:.2f} stages per token, rows per stage {m['stage_rows']}",
             f"ms/token: sequential {m['ms_per_token']['sequential']:.2f}, SPEED {m['ms_per_token']['speed']:.2f}",
             f"speedup: measured {m['measured_speedup']:.2f}x, predicted from stage costs "
             f"{m['predicted_speedup']:.2f}x, measured / predicted {m['measured_over_predicted']:.2f} "
             "(target >= 0.8)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from reference.experiments.train import load_checkpoint

    parser = argparse.ArgumentParser(prog="python -m reference.experiments.speedup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a trained shared model (reference.experiments.train), e.g. "
                        "out/trained-wide/code-wide-4x3.safetensors")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per sequence (default 64)")
    parser.add_argument("--prompts", type=int, default=4, help="held-out prompts (default 4)")
    parser.add_argument("--prompt-len", type=int, default=64, help="tokens per prompt (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over the prompts (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier on a shared machine)")
    parser.add_argument("--corpus", type=Path, metavar="DIR", help="corpus directory (default: this Python's stdlib)")
    parser.add_argument("--linear", choices=("torch", "weight-major"), default="torch",
                        help="how projections are computed: torch's x @ W^T (default) or (W @ x^T)^T (see above)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        for flag in ("tokens", "prompts", "prompt_len", "repeats", "threads"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
        torch.set_num_threads(args.threads)
        model, tokenizer, _ = load_checkpoint(args.checkpoint)
        corpus = load_corpus(args.corpus)
        heldout = tokenizer.encode_files([corpus.heldout[k] for k in sorted(corpus.heldout)])
        prompts = heldout_prompts(heldout, args.prompts, args.prompt_len)
        if any(m.bias is not None for m in model.modules() if isinstance(m, nn.Linear)):
            raise ValueError("--linear weight-major handles bias-free projections only")
        with weight_major_linear() if args.linear == "weight-major" else contextlib.nullcontext():
            figures = measure(model, prompts, args.tokens, args.repeats)
        figures["linear"] = args.linear
    except (ValueError, OSError) as err:
        print(f"python -m reference.experiments.speedup: error: {err}", file=sys.stderr)
        return 2
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.startswith("blocks"))
    print(f"shared weights: {weights / 2**20:.1f} MiB ({next(model.parameters()).dtype})")
    print(report(figures))
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(figures, indent=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
