"""What a trace request would cost, estimated from the model config before any tracing: the trace provider
(reference.capture.provider) refuses a request beyond these bounds with the figure and the limit, rather than
trace for minutes what the simulator then refuses, fail inside torch, or be killed out of memory.

- lengths: the decoder's prompt plus the tokens, and the encoder's input, within the model's positions
  (ModelConfig.max_seq_len), as the decoders check them (reference.decode), before a model is built;
- ops executed: at least tokens x layers x MIN_OPS_PER_LAYER (sequential decoding runs every layer every step;
  SPEED runs its Nd shared blocks once per stage, at least one stage per token), against the trace format's
  MAX_EXECUTED;
- the largest op: a matrix product over the batch's widest stage (its prompts at prefill, or its encoder inputs),
  d_model by the widest of d_ff and the vocabulary, its FLOPs against the format's MAX_FLOPS;
- host memory: the rotary tables the model builds on the host whatever its device (float64 angles
  [max_seq_len, head_dim / 2], and their cosines and sines), against what this process may hold (sim.host).

Pure Python: no torch is imported to refuse a request.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference.config import ModelConfig
from sim.host import check_room
from sim.trace.limits import MAX_EXECUTED, MAX_FLOPS

# ops per layer per stage, at least: two norms (several ops each), the q/k/v/o projections, the rotary embedding,
# the cache writes, attention, the FFN's three products and its activation, two residual adds. Every default
# trace executes more (57 per layer and step for T5-Base sequential decoding): tests/test_provider.py
MIN_OPS_PER_LAYER = 16
ROPE_TABLES = 3  # float64 [max_seq_len, head_dim / 2] arrays alive at once while the tables are built
FLOAT64_BYTES = 8


@dataclass(frozen=True)
class Estimate:
    """A trace request's cost, estimated before tracing."""

    positions: int  # decoder positions the run needs
    executed_ops: int  # a lower bound on the ops the trace executes
    largest_flops: int  # FLOPs of the widest matrix product
    host_bytes: int  # host memory of the rotary tables

    @classmethod
    def of(cls, cfg: ModelConfig, decoder: str, tokens: int, batch: int, prompt_len: int,
           source_len: int) -> Estimate:
        prompt = 1 if cfg.is_encoder_decoder else prompt_len  # an encoder-decoder starts from its start token
        layers = cfg.n_unique_layers if decoder == "speed" else cfg.depth
        rows = batch * max(prompt, source_len if cfg.is_encoder_decoder else 1)
        widest = max(cfg.d_ff, cfg.vocab_size, cfg.d_model)
        return cls(positions=prompt + tokens - 1, executed_ops=tokens * layers * MIN_OPS_PER_LAYER,
                   largest_flops=2 * rows * cfg.d_model * widest,
                   host_bytes=ROPE_TABLES * cfg.max_seq_len * (cfg.head_dim // 2) * FLOAT64_BYTES)


def check_request(cfg: ModelConfig, decoder: str, tokens: int, batch: int, prompt_len: int, source_len: int) -> None:
    """A ValueError naming the flag and giving the figure and the limit, where tracing `tokens` tokens of
    `cfg` with `decoder` over a batch of `batch` would pass a bound of the module docstring."""
    e = Estimate.of(cfg, decoder, tokens, batch, prompt_len, source_len)
    what = f"--tokens {tokens} with {cfg.name}"
    if e.positions > cfg.max_seq_len:
        prompt = "its start token" if cfg.is_encoder_decoder else f"a {prompt_len}-token prompt"
        raise ValueError(f"{what}: {prompt} + {tokens} tokens - 1 = {e.positions:,} positions, more than the model's "
                         f"{cfg.max_seq_len:,} (max_seq_len)")
    if cfg.is_encoder_decoder and source_len > cfg.max_seq_len:
        raise ValueError(f"{cfg.name}: an encoder input of {source_len} tokens, more than its {cfg.max_seq_len} "
                         "positions (max_seq_len)")
    if e.executed_ops > MAX_EXECUTED:
        raise ValueError(f"{what}: its trace would execute at least {e.executed_ops:,} ops ({tokens:,} tokens x "
                         f"{e.executed_ops // tokens // MIN_OPS_PER_LAYER:,} layers x {MIN_OPS_PER_LAYER}), more than "
                         f"a trace holds ({MAX_EXECUTED:,}, beyond any real run): trace fewer tokens")
    if e.largest_flops > MAX_FLOPS:
        raise ValueError(f"--batch {batch} with {cfg.name}: its widest matrix product would do {e.largest_flops:.3g} "
                         f"FLOPs, more than one op of a trace holds ({MAX_FLOPS:.3g}): decode a smaller batch")
    check_room(f"{cfg.name}'s rotary tables ({cfg.max_seq_len:,} positions, max_seq_len)", e.host_bytes)
