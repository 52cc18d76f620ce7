"""The real SPEED speedup on this machine: a shared model whose shared weights exceed the last-level cache (so
batch-1 decoding reads them from memory on every pass, as a GPU does from HBM), decoded greedily by both decoders.

    python -m reference.experiments.speedup                       # code-wide-4x3, random weights, eager
    python -m reference.experiments.speedup --compile             # the same, compiled (and eager, interleaved)
    python -m reference.experiments.train --preset code-wide-4x3 --steps 300 --lr 1.5e-3 --out-dir out/trained-wide
    python -m reference.experiments.speedup --checkpoint out/trained-wide/code-wide-4x3.safetensors [--compile]

Weights: a trained checkpoint (--checkpoint; prompts from the held-out corpus, flips from the model's own exits),
or, without one, the random weights of --preset (seeded; prompts of random token ids). Random weights' early exits
mean nothing, so SPEED's flips then come from a flip profile (--flips: default the paper's Figure 4 for a 4x3 model)
drawn by reference.flips.FlipOracle, seeded afresh for every run, so every run flushes the same rows; the cost of a
stage does not depend on the values, so the timings are those of a model that flips so.

Times are read on reference.capture.clock's clock: on one CPU thread (--threads 1, the default) the thread's CPU
time, which the other processes of a shared machine do not stretch.

It prints, and writes with --json:
  amortization  the cost of a SPEED stage with r rows (r = 1..G: every in-flight row once through the shared
                group, the LM head on every row, the argmaxes to the host) over that of one row through the
                same group and head, each timed alone on a warm cache (the median of rounds run between the
                decodes below, so that both see the same load); target: at most 1.2 for r = G
  measured      sequential ms/token over SPEED ms/token, end to end: prefill and decode (median over prompts and
                repeats, decoders interleaved)
  predicted     what the stage costs alone predict, end to end: the prefill plus tokens x the cost of a
                sequential step, over the prefill plus the sum of the cost of every stage SPEED ran for the number
                of rows it ran (the counts from the real runs, flushes included; the prefill, which both decoders
                run eagerly, timed alone too); the ratio measured / predicted is what the decode loop's own work
                leaves (target: at least 0.9)
  decode phase  the measured speedup of the decode phase alone (first decode stage to last, prefill excluded)
                and its ratio to the decode phase's prediction (the same without the prefill)

--compile times everything compiled (reference.compiled): the stages alone as compiled decoding runs them
(`BoundStep.stage` for a SPEED stage, `BoundStep.token` for a whole sequential step: one graph each), and the decodes
with decode.sequential / decode.speed(compile=True). Every compiled variant is warmed up (compiled) before any
timing; the compile time is printed and written apart. Unless --no-eager, the eager figures are measured too,
interleaved with the compiled ones (this machine is shared), under "eager" in the JSON. --inductor KEY=VALUE sets
torch._inductor.config entries while compiling, e.g. `--inductor freezing=True --inductor max_autotune=True
--inductor max_autotune_gemm_backends=CPP`: weights folded into the graphs and inductor's own C++ GEMM template
(weights prepacked at compile time) instead of the library's x @ W^T (freezing bakes the weights into the graphs:
fine here, where the model never changes after compiling; data/speedup/cpu-compiled-cpp-gemm.json).

--linear weight-major computes every projection of two or more rows as (W @ x^T)^T with x row-major, one row as
x @ W^T (a GEMV), as one opaque op (`rows_linear`). On this x86 CPU PyTorch's x @ W^T with 2-4 rows takes an sgemm
path that packs W (reading it and writing it again), so a few rows cost far more than one; W @ x^T with x
row-major streams W once. Opaque, because inside a compiled graph inductor lays x out for the product itself
and picks the layout that packs again (code-wide-4x3's SPEED stage compiled, 1 thread: 3 rows over 1 row 1.58x as
x @ W^T, 1.83x as an inlined (W @ x^T)^T, 1.11x as the opaque op). Both decoders use the same form.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import shlex
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference import compiled, decode
from reference.capture.clock import clock_name, host_clock
from reference.experiments.corpus import load_corpus
from reference.flips import FlipOracle
from reference.model import KVCache, SharedDecoder
from reference.pipeline import Row
from reference.quant import scheme_of, weight_bytes
from sim.command import check_outputs, random_seed, run_command
from sim.files import atomic_write

NO_EOS = -1  # an id no token has: every run decodes its full length
STAGE_ROUNDS = 2  # timed rounds of the stages alone after every prompt's decodes
DEFAULT_PRESET = "code-wide-4x3"
DEFAULT_FLIPS = "t5-base-4x3"  # the paper's Figure 4 profile of a 4x3 model (data/flips/paper-fig4.yaml)
DECODERS: tuple[tuple[str, Callable[..., decode.DecodeResult]], ...] = (
    ("sequential", decode.sequential), ("speed", decode.speed))
FlipSource = Callable[[], FlipOracle | None]  # a fresh predictor for one SPEED run (None: the model's own argmax)


def heldout_prompts(ids: np.ndarray, n: int, length: int) -> list[list[int]]:
    """`n` prompts of `length` tokens, evenly spaced through the held-out token ids."""
    starts = np.linspace(0, len(ids) - length, n).astype(np.int64)
    return [ids[s : s + length].tolist() for s in starts]


def random_prompts(vocab_size: int, n: int, length: int, seed: int, avoid: tuple[int, ...] = ()) -> list[list[int]]:
    """`n` prompts of `length` pseudo-random token ids (none in `avoid`), seeded."""
    rng, allowed = random.Random(seed), [t for t in range(vocab_size) if t not in avoid]
    return [[rng.choice(allowed) for _ in range(length)] for _ in range(n)]


@torch.library.custom_op("speedsim::rows_linear", mutates_args=())
def rows_linear(x: Tensor, weight: Tensor) -> Tensor:
    """x [R, K] times W^T: one row as x @ W^T (a GEMV); more rows as (W @ x^T)^T with x row-major, which streams W
    once on this CPU's BLAS. An opaque op: a compiler calls it as it is, and cannot re-lay x (module docstring)."""
    if x.shape[0] == 1:
        return F.linear(x, weight)
    return (weight @ x.contiguous().T).T.contiguous()


@rows_linear.register_fake
def _rows_linear_shape(x: Tensor, weight: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


@contextmanager
def weight_major_linear() -> Iterator[None]:
    """Every bias-free nn.Linear computed by `rows_linear` while the context lasts (see the module docstring)."""
    original = nn.Linear.forward

    def forward(self: nn.Linear, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return rows_linear(rows, self.weight).reshape(*x.shape[:-1], self.out_features)

    nn.Linear.forward = forward
    try:
        yield
    finally:
        nn.Linear.forward = original


class _Clock:
    """A StageObserver that keeps when the decode phase began (the first decode stage, after encoding and prefill)
    and ended (the last stage), and counts the stages by the rows they ran."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.rows: Counter[int] = Counter()
        self.first: float | None = None
        self.last = 0.0

    def begin(self, kind: str) -> None:
        if self.first is None and kind in ("decode", "speed"):
            self.first = self.now()

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list, flushes: list) -> None:
        self.last = self.now()
        if rows:
            self.rows[len(rows)] += 1


@torch.inference_mode()
def _stage(model: SharedDecoder, cache: KVCache, position: int, groups: list[int],
           bound: compiled.BoundStep | None = None, carry: Tensor | None = None) -> None:
    """One stage's work, as decode.speed does it: rows at `groups` (oldest, deepest first) through the shared
    group, the head on every row, the argmaxes to the host; compiled where `bound` is given (the rows in flight
    picked from `carry`, the newest one embedded: one compiled call)."""
    positions = [position + k for k in range(len(groups))]
    if bound is not None:
        order = [*range(len(groups) - 1), carry.shape[0]]
        bound.stage(carry, [7], order, [0] * len(groups), positions, groups)[1].tolist()
        return
    h = model.embed(torch.tensor([7] * len(groups), device=cache.k.device))
    rows = model.rows([0] * len(groups), positions)
    h = model.run_group(h, rows, groups, cache)
    model.exit_logits(h, rows, [g + 1 for g in groups]).argmax(dim=-1).tolist()


@torch.inference_mode()
def _sequential_step(model: SharedDecoder, cache: KVCache, position: int,
                     bound: compiled.BoundStep | None = None) -> None:
    """One sequential decode step: a row through every group, then the head; compiled (the whole step in one graph,
    as decode.sequential does) where `bound` is given."""
    g = model.config.n_groups
    if bound is not None:
        bound.token([7], [0], [position])[1].tolist()
        return
    h = model.embed(torch.tensor([7], device=cache.k.device))
    rows = model.rows([0], [position])
    for group in range(g):
        h = model.run_group(h, rows, [group], cache)
    model.exit_logits(h, rows, [g]).argmax(dim=-1).tolist()


PREFILL = -1  # the key of the prefill among the timed work


@torch.inference_mode()
def _prefill(model: SharedDecoder, cache: KVCache, prompt: list[int]) -> None:
    model.prefill(cache, 0, prompt[:-1])  # as both decoders do, eagerly


def _stage_work(model: SharedDecoder, prompt: list[int], tokens: int, mode: str) -> dict[int, Callable[[], None]]:
    """The timed work of one mode on a cache prefilled with `prompt` (its rows write the positions after it, as
    real ones do): key r = 1..G a SPEED stage of r rows, key 0 a sequential step, key PREFILL the prefill of the
    prompt (into a cache of its own). Compiled, the cache has the shape a decode of `tokens` tokens uses (its
    attention spans the whole static length), so the variants are shared."""
    g = model.config.n_groups
    bound = None
    if mode == "compiled":
        step = compiled.compiled_step(model)
        cache = step.new_cache(1, len(prompt) + max(tokens - 1, g + 1))
    else:
        cache = model.new_cache(1, len(prompt) + g + 1)
    with torch.inference_mode():
        model.prefill(cache, 0, prompt)
    carry = None
    if mode == "compiled":
        bound = step.bind(cache)
        carry = bound.new_carry()
    p = len(prompt)
    work = {r: functools.partial(_stage, model, cache, p, list(range(r - 1, -1, -1)), bound, carry)
            for r in range(1, g + 1)}
    work[0] = functools.partial(_sequential_step, model, cache, p, bound)
    fresh = step.new_cache(1, p + tokens - 1) if mode == "compiled" else model.new_cache(1, p + tokens - 1)
    work[PREFILL] = functools.partial(_prefill, model, fresh, prompt)
    return work


class StageTimer:
    """Times the stages alone (see `_stage_work`) of every mode, in rounds that the caller interleaves with its
    other timings, so that both see the same load of a shared machine."""

    def __init__(self, model: SharedDecoder, prompt: list[int], tokens: int, modes: tuple[str, ...]) -> None:
        self.groups = model.config.n_groups
        self.now = host_clock(model.embed.weight.device)
        self.work = {mode: _stage_work(model, prompt, tokens, mode) for mode in modes}
        self.times: dict[tuple[str, int], list[float]] = {(mode, r): [] for mode in modes for r in self.work[mode]}
        self.rounds = 0

    def round(self, n: int = 1, timed: bool = True) -> None:
        """n rounds of every stage of every mode, interleaved, each round starting one stage further on (so that no
        stage is always the first after other work); untimed (a warm-up, which compiles) unless `timed`."""
        order = list(self.times)
        for _ in range(n):
            self.rounds += 1
            start = self.rounds % len(order)
            for mode, r in order[start:] + order[:start]:
                t0 = self.now()
                self.work[mode][r]()
                if timed:
                    self.times[mode, r].append(self.now() - t0)

    def costs(self) -> dict[str, tuple[dict[int, float], float, float]]:
        """Per mode: the median seconds of a SPEED stage with r = 1..G rows, of a sequential step and of the
        prefill."""
        med = {key: statistics.median(t) for key, t in self.times.items()}
        return {mode: ({r: med[mode, r] for r in range(1, self.groups + 1)}, med[mode, 0], med[mode, PREFILL])
                for mode in self.work}


def _decode(fn: Callable[..., decode.DecodeResult], model: SharedDecoder, prompt: list[int], tokens: int, mode: str,
            predictor: FlipOracle | None = None) -> tuple[dict[str, float], list[int], Counter[int]]:
    """Seconds of one decode ("total": end to end; "decode": the decode phase alone, prefill excluded), both without
    any compilation the call did; its tokens; its stages counted by rows."""
    clock = _Clock(host_clock(model.embed.weight.device))
    t0 = clock.now()
    out = fn(model, [prompt], tokens, eos_id=NO_EOS, observer=clock, predictor=predictor, compile=mode == "compiled")
    seconds = {"total": clock.now() - t0 - out.compile_s, "decode": clock.last - clock.first - out.compile_s}
    return seconds, out.tokens[0], clock.rows


def _warm_up(model: SharedDecoder, prompts: list[list[int]], tokens: int, modes: tuple[str, ...],
             flips: FlipSource) -> None:
    """Run both decoders once per mode: on the first prompt, and compiled also on the first prompt of every other
    cache shape, so that every compiled variant a timed run needs exists before any timing."""
    cap = model.config.max_seq_len
    shapes: dict[int, list[int]] = {}
    for prompt in prompts:
        shapes.setdefault(compiled.bucket(len(prompt) + tokens - 1, cap), prompt)
    for mode in modes:
        for prompt in list(shapes.values()) if mode == "compiled" else prompts[:1]:
            for name, fn in DECODERS:
                _decode(fn, model, prompt, tokens, mode, flips() if name == "speed" else None)


def end_to_end(model: SharedDecoder, prompts: list[list[int]], tokens: int, repeats: int,
               modes: tuple[str, ...] = ("eager",), flips: FlipSource = lambda: None,
               between: Callable[[], None] = lambda: None
               ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Counter[int]], bool]:
    """Per mode and phase ("total", "decode", see `_decode`): median seconds per sequence of each decoder (decoders
    and modes interleaved, after a warm-up; `between` runs after every prompt's decodes); per mode the rows of every
    SPEED stage (from the first round); and whether
    every decoder in every mode produced the model's tokens (with flips from a predictor, SPEED's own tokens come
    from one more, untimed, run per prompt and mode)."""
    _warm_up(model, prompts, tokens, modes, flips)
    seconds: dict[tuple[str, str, str], list[float]] = {(name, mode, phase): [] for name, _ in DECODERS
                                                        for mode in modes for phase in ("total", "decode")}
    counts: dict[str, Counter[int]] = {mode: Counter() for mode in modes}
    same, oracle = True, flips() is not None
    for repeat in range(repeats):
        for prompt in prompts:
            outputs = []
            for (name, fn), mode in ((d, m) for d in DECODERS for m in modes):
                predictor = flips() if name == "speed" else None
                elapsed, out, rows = _decode(fn, model, prompt, tokens, mode, predictor)
                for phase, s in elapsed.items():
                    seconds[name, mode, phase].append(s)
                if name == "speed" and repeat == 0:
                    counts[mode].update(rows)
                if predictor is None:
                    outputs.append(out)
            if repeat == 0 and oracle:
                outputs += [_decode(decode.speed, model, prompt, tokens, mode)[1] for mode in modes]
            same &= all(out == outputs[0] for out in outputs)
            between()
    medians = {mode: {phase: {name: statistics.median(seconds[name, mode, phase]) for name, _ in DECODERS}
                      for phase in ("total", "decode")} for mode in modes}
    return medians, counts, same


def _figures(costs: dict[int, float], step_s: float, prefill_s: float, e2e: dict[str, dict[str, float]],
             rows: Counter[int], tokens: int, n_prompts: int) -> dict:
    """One mode's figures from its costs (stages, sequential step, prefill), end-to-end seconds (per phase) and
    stage counts."""
    predicted_speed_s = sum(n * costs[r] for r, n in rows.items()) / n_prompts  # per sequence
    predicted_decode = tokens * step_s / predicted_speed_s
    predicted = (prefill_s + tokens * step_s) / (prefill_s + predicted_speed_s)
    measured = e2e["total"]["sequential"] / e2e["total"]["speed"]
    decode_measured = e2e["decode"]["sequential"] / e2e["decode"]["speed"]
    return {
        "stage_s": {str(r): c for r, c in costs.items()}, "sequential_step_s": step_s, "prefill_s": prefill_s,
        "amortization": {str(r): costs[r] / costs[1] for r in costs},
        "stages_per_token": sum(rows.values()) / (n_prompts * tokens),
        "stage_rows": {str(r): n for r, n in sorted(rows.items())},
        "ms_per_token": {name: 1e3 * s / tokens for name, s in e2e["total"].items()},
        "measured_speedup": measured, "predicted_speedup": predicted, "measured_over_predicted": measured / predicted,
        "decode_ms_per_token": {name: 1e3 * s / tokens for name, s in e2e["decode"].items()},
        "predicted_decode_speedup": predicted_decode, "decode_speedup": decode_measured,
        "decode_over_predicted": decode_measured / predicted_decode,
    }


def measure(model: SharedDecoder, prompts: list[list[int]], tokens: int, repeats: int, compile: bool = False,
            flips: FlipSource = lambda: None, eager: bool = True) -> dict:
    """Every figure of the benchmark (see the module docstring), in seconds unless named otherwise: eager, or
    compiled (with the compile time apart, and, where `eager`, the eager figures measured interleaved)."""
    import torch._inductor.config as inductor_config

    g = model.config.n_groups
    if g < 2:
        raise ValueError(f"{model.config.name} is not shared (G = 1): SPEED has nothing to pipeline")
    modes = ("eager", "compiled") if compile and eager else ("compiled",) if compile else ("eager",)
    step = compiled.compiled_step(model) if compile else None
    before = len(step.variants) if step is not None else 0
    timer = StageTimer(model, prompts[0], tokens, modes)
    timer.round(timed=False)
    e2e, rows, same = end_to_end(model, prompts, tokens, repeats, modes, flips, lambda: timer.round(STAGE_ROUNDS))
    costs = timer.costs()
    per_mode = {mode: _figures(*costs[mode], e2e[mode], rows[mode], tokens, len(prompts)) for mode in modes}
    mode = modes[-1]
    oracle = flips()
    m = {"model": model.config.name, "groups": g, "tokens": tokens, "prompts": len(prompts), "repeats": repeats,
         "threads": torch.get_num_threads(), "clock": clock_name(model.embed.weight.device), "mode": mode,
         "flips": oracle.describe() if oracle is not None else {"source": "the model's own exits"},
         "outputs_identical": same, **per_mode[mode]}
    if step is not None:
        variants = step.variants[before:]
        m["compile_s"] = sum(v.first_call_s for v in variants)
        m["fx_graph_cache"] = bool(inductor_config.fx_graph_cache)  # a warm on-disk cache compiles faster
        m["compile_variants"] = [{"kind": v.kind, "rows": v.rows, "first_call_s": v.first_call_s} for v in variants]
    if compile and eager:
        m["eager"] = per_mode["eager"]
        m["compiled_over_eager"] = {name: e2e["eager"]["total"][name] / e2e["compiled"]["total"][name]
                                    for name, _ in DECODERS}
    return m


def _mode_lines(m: dict, g: int, label: str) -> list[str]:
    return [f"[{label}] stage cost alone: " + ", ".join(f"{r} row(s) {1e3 * s:.2f} ms" for r, s in m["stage_s"].items())
            + f"; sequential step {1e3 * m['sequential_step_s']:.2f} ms",
            f"[{label}] amortization: a {g}-row stage costs {m['amortization'][str(g)]:.2f}x a one-row pass "
            "(target <= 1.2)",
            f"[{label}] SPEED ran {m['stages_per_token']:.2f} stages per token, rows per stage {m['stage_rows']}",
            f"[{label}] ms/token: sequential {m['ms_per_token']['sequential']:.2f}, "
            f"SPEED {m['ms_per_token']['speed']:.2f}",
            f"[{label}] speedup: measured {m['measured_speedup']:.2f}x, predicted from stage costs "
            f"{m['predicted_speedup']:.2f}x, measured / predicted {m['measured_over_predicted']:.2f} (target >= 0.9)",
            f"[{label}] decode phase alone (prefill excluded): ms/token sequential "
            f"{m['decode_ms_per_token']['sequential']:.2f}, SPEED {m['decode_ms_per_token']['speed']:.2f}; "
            f"{m['decode_speedup']:.2f}x, predicted {m['predicted_decode_speedup']:.2f}x, measured / predicted "
            f"{m['decode_over_predicted']:.2f}"]


def report(m: dict) -> str:
    """The printed summary of `measure`'s figures."""
    lines = [f"{m['model']}: G = {m['groups']}, {m['tokens']} tokens x {m['prompts']} prompts x {m['repeats']} "
             f"repeats, {m['threads']} thread(s), {m['mode']}; flips: {m['flips']['source']}; "
             f"outputs identical: {m['outputs_identical']}"]
    if "compile_s" in m:
        variants = ", ".join(f"{v['kind']} {v['rows']} row(s) {v['first_call_s']:.1f} s" for v in m["compile_variants"])
        cache = "warm or cold on-disk FX graph cache" if m["fx_graph_cache"] else "no FX graph cache"
        lines.append(f"compile time (excluded from every timing; {cache}): {m['compile_s']:.1f} s "
                     f"[{variants or 'none new'}]")
    lines += _mode_lines(m, m["groups"], m["mode"])
    if "eager" in m:
        lines += _mode_lines(m["eager"], m["groups"], "eager")
        lines.append("compiled over eager (ms/token, measured interleaved): " + ", ".join(
            f"{name} {x:.2f}x" for name, x in m["compiled_over_eager"].items()))
    return "\n".join(lines)


def _inductor_setting(text: str) -> tuple[str, object]:
    """`KEY=VALUE` of a torch._inductor.config entry; VALUE parsed as the entry's type (bool, int, float, str)."""
    import torch._inductor.config as inductor_config

    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        current = functools.reduce(getattr, key.split("."), inductor_config)
    except AttributeError:
        raise argparse.ArgumentTypeError(f"torch._inductor.config has no entry {key!r}") from None
    if isinstance(current, bool) or raw in ("True", "False"):
        if raw not in ("True", "False"):
            raise argparse.ArgumentTypeError(f"{key} is a bool: True or False, got {raw!r}")
        return key, raw == "True"
    for kind in (int, float):
        if isinstance(current, kind):
            try:
                return key, kind(raw)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{key} is {kind.__name__}, got {raw!r}") from None
    return key, raw


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reference.experiments.speedup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, help="a trained shared model (reference.experiments.train), "
                         "e.g. out/trained-wide/code-wide-4x3.safetensors (default: random weights of --preset)")
    weights.add_argument("--preset", help=f"without --checkpoint: the preset whose random weights are timed "
                         f"(default {DEFAULT_PRESET})")
    parser.add_argument("--seed", type=random_seed(), default=0,
                        help="seed of the random weights, random prompts and flip draws (default 0)")
    parser.add_argument("--flips", metavar="SPEC", help="where SPEED's flips come from: 'model' (the model's own "
                        "exits), a profile of data/flips/*.yaml, or G - 1 comma-separated rates (default: 'model' "
                        f"with --checkpoint, else {DEFAULT_FLIPS}, the paper's Figure 4 for a 4x3 model)")
    parser.add_argument("--compile", action="store_true",
                        help="time compiled stages and decodes (torch.compile, reference.compiled); compile time "
                        "is reported apart")
    parser.add_argument("--no-eager", action="store_true",
                        help="with --compile: do not also measure eager, interleaved (halves the time)")
    parser.add_argument("--inductor", type=_inductor_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="with --compile: a torch._inductor.config entry set while compiling (repeatable), "
                        "e.g. freezing=True")
    parser.add_argument("--tokens", type=_positive, default=64, help="new tokens per sequence (default 64)")
    parser.add_argument("--prompts", type=_positive, default=4, help="prompts (default 4)")
    parser.add_argument("--prompt-len", type=_positive, default=64, help="tokens per prompt (default 64)")
    parser.add_argument("--repeats", type=_positive, default=3,
                        help="timed rounds over the prompts (default 3); the stages alone are timed "
                        f"{STAGE_ROUNDS} times after every prompt's decodes")
    parser.add_argument("--threads", type=_positive, default=1,
                        help="torch CPU threads (default 1: steadier on a shared machine)")
    parser.add_argument("--corpus", type=Path, metavar="DIR",
                        help="with --checkpoint: corpus directory of the held-out prompts (default: this Python's "
                        "stdlib)")
    parser.add_argument("--linear", choices=("torch", "weight-major"), default="torch",
                        help="how projections are computed: torch's x @ W^T (default) or (W @ x^T)^T (see above)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    return parser


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.compile and (args.no_eager or args.inductor):
        parser.error("--no-eager and --inductor need --compile")
    if args.corpus is not None and args.checkpoint is None:
        parser.error("--corpus needs --checkpoint (random weights decode random prompts)")
    if args.preset is not None:
        from reference.config import get_preset

        try:
            get_preset(args.preset)
        except ValueError as err:
            parser.error(f"--preset: {err}")


def _flip_source(parser: argparse.ArgumentParser, model: SharedDecoder, spec: str, seed: int) -> FlipSource:
    """A fresh predictor per SPEED run, from --flips; a bad spec is a flag error."""
    from reference.capture.tracing import flip_oracle

    cfg = model.config
    try:
        oracle = flip_oracle(cfg, spec, seed)
    except ValueError as err:
        parser.error(f"--flips: {str(err).removeprefix('--flips: ')}")
    if oracle is not None and len(oracle.rates) != cfg.n_groups - 1:
        parser.error(f"--flips: {spec} has {len(oracle.rates)} rates, {cfg.name} (G = {cfg.n_groups}) needs "
                     f"{cfg.n_groups - 1}")
    return lambda: flip_oracle(cfg, spec, seed)


def _load(args: argparse.Namespace) -> tuple[SharedDecoder, list[list[int]], str]:
    """The model, the prompts and a description of the weights."""
    if args.checkpoint is None:
        from reference.config import get_preset

        cfg = get_preset(args.preset or DEFAULT_PRESET)
        model = SharedDecoder(cfg, dtype=torch.float32, seed=args.seed).eval()
        avoid = (cfg.eos_id,) if cfg.eos_id is not None else ()
        return model, random_prompts(cfg.vocab_size, args.prompts, args.prompt_len, args.seed, avoid), \
            f"random (seed {args.seed}), random prompts"
    from reference.experiments.train import load_checkpoint

    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    corpus = load_corpus(args.corpus)
    heldout = tokenizer.encode_files([corpus.heldout[k] for k in sorted(corpus.heldout)])
    return model, heldout_prompts(heldout, args.prompts, args.prompt_len), f"{args.checkpoint}, held-out prompts"


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures (and write --json); 2 on bad input."""
    import torch._inductor.config as inductor_config

    parser = _parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    check_outputs(parser, {"--json": args.json})
    torch.set_num_threads(args.threads)
    try:
        model, prompts, weights = _load(args)
        if args.linear == "weight-major" and any(m.bias is not None for m in model.modules()
                                                 if isinstance(m, nn.Linear)):
            raise ValueError("--linear weight-major handles bias-free projections only")
        flips = _flip_source(parser, model, args.flips or ("model" if args.checkpoint else DEFAULT_FLIPS), args.seed)
        with (weight_major_linear() if args.linear == "weight-major" else contextlib.nullcontext(),
              inductor_config.patch(dict(args.inductor))):
            figures = measure(model, prompts, args.tokens, args.repeats, args.compile, flips, not args.no_eager)
    except (ValueError, OSError) as err:
        print(f"python -m reference.experiments.speedup: error: {err}", file=sys.stderr)
        return 2
    figures.update(weights=weights, linear=args.linear, inductor=dict(args.inductor),
                   command=shlex.join(["python", "-m", "reference.experiments.speedup",
                                       *(sys.argv[1:] if argv is None else argv)]))
    shared = weight_bytes(model.blocks)  # a quantized checkpoint's packed weights and scales too
    scheme = scheme_of(model)
    print(f"shared weights: {shared / 2**20:.1f} MiB ({next(model.parameters()).dtype}"
          f"{'' if scheme is None else ', ' + scheme.name}), {weights}")
    print(report(figures))
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(figures, indent=1) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.experiments.speedup"))
