"""Greedy decoding: `sequential` (the baseline) and `speed` (pipelined speculation: sequential's tokens in exact
arithmetic; in floating point the same except where rounding resolves a near-tie differently, README "Exactness").

Both share one convention: the prompt minus its last token is prefilled at every depth; every generated token
is then produced by one row whose input is the token before it (a decode step in `sequential`, a pipeline row
in `speed`). So with G = 1 the two run the same rows, stage for stage.

With `compile=True` both run their per-stage step under `torch.compile` with static shapes (reference.compiled):
one compiled variant per number of rows in flight, its compile time reported on `DecodeResult.compile_variants`
apart from decode time; prefill, encoding and the bookkeeping stay eager. The tokens are the eager ones.

A batch is a list of prompts of any lengths. Each sequence has its own SPEED pipeline; the rows of all
sequences of a stage run through the shared group together, and every sequence's output is its own sequential
decoding's (in exact arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from reference import compiled
from reference.model import KVCache, SharedDecoder
from reference.pipeline import PipelineStats, Row, SpeedPipeline

# Says what a row predicts at an exit instead of the argmax (the meta device has no values): (seq, row, exit)
# -> token. row.guess is the row's previous prediction (None at its first exit). See reference.flips.
Predictor = Callable[[int, Row, int], int]


class StageObserver(Protocol):
    """Told where each stage begins and ends (tracing, measuring, tests). Stage kinds: "encoder" and
    "prefill" (one per sequence, before decoding), then "decode" steps (sequential) or "speed" stages."""

    def begin(self, kind: str) -> None: ...

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list[tuple[int, int, int]],
            flushes: list[tuple[int, int, int]]) -> None:
        """rows: (seq, row) as run; commits: (seq, position, token); flushes: (seq, exit, rows flushed)."""


@dataclass
class DecodeResult:
    tokens: list[list[int]]  # generated tokens of each sequence (EOS included when produced)
    cache: KVCache  # the KV cache after decoding (committed positions are exact)
    stages: int  # stages (speed) or decode steps (sequential) run
    stats: PipelineStats | None = None  # speed only: all sequences' pipeline statistics merged
    per_sequence: list[PipelineStats] | None = None
    # compile=True only: the compiled step variants first run (compiled) during this call, each with the seconds of
    # that first call; calls that reuse earlier variants have none
    compile_variants: list[compiled.Variant] | None = None

    @property
    def compile_s(self) -> float:
        """Seconds of this call spent in first calls of compiled variants (compilation + one run): report apart
        from, and subtract from, the decode time."""
        return sum(v.first_call_s for v in self.compile_variants or [])


def _check_inputs(model: SharedDecoder, prompts: list[list[int]], max_new_tokens: int,
                  encoder_inputs: list[list[int]] | None) -> None:
    cfg = model.config
    if not prompts:
        raise ValueError("prompts: need at least one prompt")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    for b, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompts[{b}] is empty: a prompt needs at least one token "
                             "(an encoder-decoder model starts from ModelConfig.decoder_start_id)")
        if len(prompt) + max_new_tokens - 1 > cfg.max_seq_len:
            raise ValueError(f"prompts[{b}]: length {len(prompt)} + max_new_tokens {max_new_tokens} - 1 exceeds "
                             f"the cache, ModelConfig.max_seq_len = {cfg.max_seq_len}")
        bad = [t for t in prompt if not (isinstance(t, int) and 0 <= t < cfg.vocab_size)]
        if bad:
            raise ValueError(f"prompts[{b}]: token ids must be in [0, {cfg.vocab_size}), got {bad[:5]}")
    if cfg.is_encoder_decoder:
        if encoder_inputs is None or len(encoder_inputs) != len(prompts):
            raise ValueError(f"model {cfg.name!r} is encoder-decoder: encoder_inputs must give one input per prompt")
        for b, source in enumerate(encoder_inputs):
            if len(source) == 0 or len(source) > cfg.max_seq_len:
                raise ValueError(f"encoder_inputs[{b}]: length must be in [1, {cfg.max_seq_len}], got {len(source)}")
            bad = [t for t in source if not (isinstance(t, int) and 0 <= t < cfg.vocab_size)]
            if bad:
                raise ValueError(f"encoder_inputs[{b}]: token ids must be in [0, {cfg.vocab_size}), got {bad[:5]}")
    elif encoder_inputs is not None:
        raise ValueError(f"model {cfg.name!r} is decoder-only: encoder_inputs must be None")


def start(model: SharedDecoder, prompts: list[list[int]], max_new_tokens: int,
          encoder_inputs: list[list[int]] | None = None, observer: StageObserver | None = None,
          new_cache: Callable[[int, int, int], KVCache] | None = None) -> KVCache:
    """Validate inputs, allocate the cache (with `new_cache(batch, max_len, encoder_len)`, by default the model's),
    encode, and prefill every prompt but its last token."""
    _check_inputs(model, prompts, max_new_tokens, encoder_inputs)
    max_len = max(len(p) for p in prompts) + max_new_tokens - 1
    encoder_len = max(len(s) for s in encoder_inputs) if encoder_inputs else 0
    cache = (model.new_cache if new_cache is None else new_cache)(len(prompts), max_len, encoder_len)
    for b, prompt in enumerate(prompts):
        if encoder_inputs is not None:
            _observed(observer, "encoder", lambda b=b: model.encode_into(cache, b, encoder_inputs[b]))
        if len(prompt) > 1:
            _observed(observer, "prefill", lambda b=b, prompt=prompt: model.prefill(cache, b, prompt[:-1]))
    return cache


def _observed(observer: StageObserver | None, kind: str, work: Callable[[], None]) -> None:
    if observer is not None:
        observer.begin(kind)
    work()
    if observer is not None:
        observer.end([], [], [], [])


def _predict(model: SharedDecoder, logits: Tensor, run: list[tuple[int, Row]], exits: list[int],
             predictor: Predictor | None) -> list[int]:
    """The argmax of every row (`SharedDecoder.argmax`: across ranks where the model is sharded), or the
    predictor's word where one is given. The argmax and its copy to the host still run (but on the meta device,
    which has no values), so a run with a predictor does the same work."""
    return _chosen(model.argmax(logits), run, exits, predictor)


def _chosen(argmax: Tensor, run: list[tuple[int, Row]], exits: list[int], predictor: Predictor | None) -> list[int]:
    values = argmax.tolist() if argmax.device.type != "meta" else None
    if predictor is None:
        return values
    return [predictor(seq, row, exit_) for (seq, row), exit_ in zip(run, exits)]


def _custom_exits(model: SharedDecoder) -> bool:
    """Whether `exit_logits` is overridden (tests model early exits so): compiled decoding then calls it eagerly
    on the compiled hidden states instead of running the compiled head."""
    return type(model).exit_logits is not SharedDecoder.exit_logits or "exit_logits" in vars(model)


def _compiled_start(model: SharedDecoder, prompts: list[list[int]], max_new_tokens: int,
                    encoder_inputs: list[list[int]] | None, observer: StageObserver | None,
                    compile: bool) -> tuple[KVCache, compiled.BoundStep | None, int]:
    """start(), with the compiled step's cache and the step bound to it where `compile`; the number of variants
    compiled before."""
    if not compile:
        return start(model, prompts, max_new_tokens, encoder_inputs, observer), None, 0
    step = compiled.compiled_step(model)
    cache = start(model, prompts, max_new_tokens, encoder_inputs, observer, new_cache=step.new_cache)
    return cache, step.bind(cache), len(step.variants)


def _compile_variants(bound: compiled.BoundStep | None, before: int) -> list[compiled.Variant] | None:
    return None if bound is None else bound.step.variants[before:]


@torch.inference_mode()
def sequential(model: SharedDecoder, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None = None,
               encoder_inputs: list[list[int]] | None = None, observer: StageObserver | None = None,
               predictor: Predictor | None = None, compile: bool = False) -> DecodeResult:
    """Greedy decoding, each token through all N = Nd * G layers before the next starts. `eos_id` defaults to
    the config's; generation of a sequence stops after EOS or max_new_tokens. `compile`: run each step (the
    embedding, every group and the head) as one compiled graph (reference.compiled), one variant per number of
    active sequences."""
    cfg = model.config
    eos_id = cfg.eos_id if eos_id is None else eos_id
    cache, bound, before = _compiled_start(model, prompts, max_new_tokens, encoder_inputs, observer, compile)
    custom_exits = _custom_exits(model)
    inputs = [(len(p) - 1, p[-1]) for p in prompts]  # per sequence: (position, token) of the next row
    tokens: list[list[int]] = [[] for _ in prompts]
    step = 0
    while True:
        active = [b for b, out in enumerate(tokens)
                  if len(out) < max_new_tokens and not (out and out[-1] == eos_id)]
        if not active:
            break
        if observer is not None:
            observer.begin("decode")
        run = [(b, Row(*inputs[b], group=cfg.n_groups)) for b in active]  # a step runs every group
        exits = [cfg.n_groups] * len(active)
        if bound is None:
            rows = model.rows(active, [row.position for _, row in run])
            h = model.embed(torch.tensor([row.token for _, row in run], device=cache.k.device))
            for group in range(cfg.n_groups):
                h = model.run_group(h, rows, [group] * len(active), cache)
            predictions = _predict(model, model.exit_logits(h, rows, exits), run, exits, predictor)
        else:  # the whole step (every group, and the head unless exits are custom) in one compiled graph
            positions = [row.position for _, row in run]
            h, argmax = bound.token([row.token for _, row in run], active, positions, head=not custom_exits)
            if custom_exits:
                predictions = _predict(model, model.exit_logits(h, model.rows(active, positions), exits), run,
                                       exits, predictor)
            else:
                predictions = _chosen(argmax, run, exits, predictor)
        for (b, row), prediction in zip(run, predictions):
            tokens[b].append(prediction)
            inputs[b] = (row.position + 1, prediction)
        if observer is not None:
            observer.end(run, predictions, [(b, row.position + 1, p) for (b, row), p in zip(run, predictions)], [])
        step += 1
    return DecodeResult(tokens, cache, step, compile_variants=_compile_variants(bound, before))


def _stage_rows(model: SharedDecoder, cache: KVCache, active: list[int], staged: dict[int, list[Row]],
                hidden: list[Tensor | None]) -> Tensor:
    """The residual stream of a stage's rows [R, d], sequence by sequence: each one's rows still in flight,
    then its newly injected token's embedding (all injected tokens embedded at once)."""
    new = [row for b in active for row in staged[b] if row.group == 0]
    embedded = model.embed(torch.tensor([row.token for row in new], device=cache.k.device)) if new else None
    pieces, n_new = [], 0
    for b in active:
        if hidden[b] is not None:
            pieces.append(hidden[b])
        if staged[b][-1].group == 0:
            pieces.append(embedded[n_new : n_new + 1])
            n_new += 1
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _end_stage(pipes: list[SpeedPipeline], active: list[int], staged: dict[int, list[Row]], predictions: list[int]
               ) -> tuple[dict[int, range], list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Hand each sequence's predictions to its pipeline. Returns, per sequence, the rows of the stage (indices
    into its rows, all sequences' in order) that stay in flight, and the stage's commits (seq, position, token) and
    flushes (seq, exit, rows flushed)."""
    offset, kept, commits, flushes = 0, {}, [], []
    for b in active:
        n = len(staged[b])
        outcome = pipes[b].end_stage(predictions[offset : offset + n])
        kept[b] = range(offset + outcome.kept.start, offset + outcome.kept.stop)
        if outcome.committed is not None:
            commits.append((b, staged[b][0].position + 1, outcome.committed))
        if outcome.flushed:
            flushes.append((b, outcome.flush_exit, outcome.flushed))
        offset += n
    return kept, commits, flushes


def _eager_stage(model: SharedDecoder, cache: KVCache, active: list[int], staged: dict[int, list[Row]],
                 hidden: list[Tensor | None], run: list[tuple[int, Row]], exits: list[int],
                 predictor: Predictor | None) -> tuple[Tensor, list[int]]:
    """A SPEED stage run eagerly: its rows' new residual stream [R, d] and their predictions."""
    h = _stage_rows(model, cache, active, staged, hidden)
    rows = model.rows([b for b, _ in run], [row.position for _, row in run])
    h = model.run_group(h, rows, [row.group for _, row in run], cache)
    return h, _predict(model, model.exit_logits(h, rows, exits), run, exits, predictor)


def _compiled_stage(model: SharedDecoder, bound: compiled.BoundStep, carry: Tensor, active: list[int],
                    staged: dict[int, list[Row]], carried: list[list[int]], run: list[tuple[int, Row]],
                    exits: list[int], predictor: Predictor | None, custom_exits: bool) -> tuple[Tensor, list[int]]:
    """A SPEED stage as one compiled call: each sequence's rows still in flight (rows `carried[b]` of the carry),
    then its newly injected token. Returns the new carry and the rows' predictions."""
    batch, carry_rows = len(carried), carry.shape[0]
    tokens = [0] * batch  # padding where a sequence injects no token this stage
    order = []
    for b in active:
        order += carried[b]
        if staged[b][-1].group == 0:
            tokens[b] = staged[b][-1].token
            order.append(carry_rows + b)
    seqs, positions = [b for b, _ in run], [row.position for _, row in run]
    carry, argmax = bound.stage(carry, tokens, order, seqs, positions, [row.group for _, row in run],
                                head=not custom_exits)
    if custom_exits:
        logits = model.exit_logits(carry[: len(run)], model.rows(seqs, positions), exits)
        return carry, _predict(model, logits, run, exits, predictor)
    return carry, _chosen(argmax, run, exits, predictor)


@torch.inference_mode()
def speed(model: SharedDecoder, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None = None,
          encoder_inputs: list[list[int]] | None = None, observer: StageObserver | None = None,
          predictor: Predictor | None = None, compile: bool = False) -> DecodeResult:
    """SPEED: up to G tokens in flight per sequence, one per group; each stage runs every in-flight row once
    through the Nd shared blocks as one batch, the LM head on every row, then compares, flushes and commits
    (see reference.pipeline). The output equals `sequential`'s in exact arithmetic; in floating point the two batch
    rows differently, so their logits differ by rounding and a step whose top two logits are closer than that (a
    near-tie) can pick another token (README, "Exactness"). `compile`: run each stage (the new tokens'
    embedding, the group pass and the head) as one compiled graph (reference.compiled), one variant per number
    of rows in flight."""
    cfg = model.config
    eos_id = cfg.eos_id if eos_id is None else eos_id
    cache, bound, before = _compiled_start(model, prompts, max_new_tokens, encoder_inputs, observer, compile)
    custom_exits = _custom_exits(model)
    pipes = [SpeedPipeline(cfg.n_groups, p[-1], len(p) - 1, max_new_tokens, eos_id) for p in prompts]
    hidden: list[Tensor | None] = [None] * len(prompts)  # eager: residual stream of each sequence's in-flight rows
    carried: list[list[int]] = [[] for _ in prompts]  # compiled: the rows of the carry each sequence has in flight
    carry = bound.new_carry() if bound is not None else None
    stage = 0
    while True:
        active = [b for b, pipe in enumerate(pipes) if not pipe.done]
        if not active:
            break
        if observer is not None:
            observer.begin("speed")
        staged = {b: pipes[b].begin_stage() for b in active}
        run = [(b, row) for b in active for row in staged[b]]
        exits = [row.group + 1 for _, row in run]
        if bound is None:
            h, predictions = _eager_stage(model, cache, active, staged, hidden, run, exits, predictor)
        else:
            carry, predictions = _compiled_stage(model, bound, carry, active, staged, carried, run, exits, predictor,
                                                 custom_exits)
        kept, commits, flushes = _end_stage(pipes, active, staged, predictions)
        for b, rows in kept.items():
            if bound is None:
                hidden[b] = h[rows.start : rows.stop] if rows else None
            else:
                carried[b] = list(rows)
        if observer is not None:
            observer.end(run, predictions, commits, flushes)
        stage += 1
    stats = [pipe.stats for pipe in pipes]
    merged = stats[0]
    for other in stats[1:]:
        merged = merged.merge(other)
    return DecodeResult([pipe.committed for pipe in pipes], cache, stage, merged, stats,
                        _compile_variants(bound, before))
