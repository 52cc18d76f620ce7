"""What a trace request would cost, estimated from the model config before any tracing: the trace provider
(reference.capture.provider) refuses a request beyond these bounds with the figure and the limit, rather than
trace for minutes what the simulator then refuses, fail inside torch, or be killed out of memory.

- lengths: the decoder's prompt plus the tokens, and the encoder's input, within the model's positions
  (ModelConfig.max_seq_len), as the decoders check them (reference.decode), before a model is built;
- ops executed: at least tokens x layers x (MIN_OPS_PER_LAYER + batch), as sequential decoding runs every layer
  every step (SPEED its Nd shared blocks once per stage, at least one stage per token) and each sequence attends
  to its own KV cache at every layer, plus each sequence's own prefill (or encoder) stage; against the trace
  format's MAX_EXECUTED;
- tracing time: the capture records every distinct op in full, and each sequence's prefill (or encoder) stage is
  distinct (its own KV slices): at least batch x its layers x MIN_OPS_PER_LAYER distinct ops, at
  TRACE_S_PER_DISTINCT_OP each, against MAX_TRACE_S;
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
# the capture's time per distinct op on the meta device: 0.81 ms here (tiny-4x3 sequential, 2 tokens, batch 256:
# 142,085 distinct ops captured in 115 s on this busy 2-core machine); taken three times faster, so that the
# estimate stays below what a faster machine takes
TRACE_S_PER_DISTINCT_OP = 2.5e-4
MAX_TRACE_S = 1800.0  # half an hour of tracing before the first projection: a batch no study needs traced
ROPE_TABLES = 3  # float64 [max_seq_len, head_dim / 2] arrays alive at once while the tables are built
FLOAT64_BYTES = 8


@dataclass(frozen=True)
class Estimate:
    """A trace request's cost, estimated before tracing."""

    positions: int  # decoder positions the run needs
    executed_ops: int  # a lower bound on the ops the trace executes
    distinct_ops: int  # a lower bound on its distinct ops (what the capture records in full)
    largest_flops: int  # FLOPs of the widest matrix product
    host_bytes: int  # host memory of the rotary tables

    @property
    def trace_s(self) -> float:
        """A lower bound on the time the capture takes (s)."""
        return self.distinct_ops * TRACE_S_PER_DISTINCT_OP

    @classmethod
    def of(cls, cfg: ModelConfig, decoder: str, tokens: int, batch: int, prompt_len: int,
           source_len: int) -> Estimate:
        prompt = 1 if cfg.is_encoder_decoder else prompt_len  # an encoder-decoder starts from its start token
        layers = cfg.n_unique_layers if decoder == "speed" else cfg.depth
        own = cfg.n_encoder_layers if cfg.is_encoder_decoder else cfg.depth  # each sequence's own first stage
        rows = batch * max(prompt, source_len if cfg.is_encoder_decoder else 1)
        widest = max(cfg.d_ff, cfg.vocab_size, cfg.d_model)
        distinct = batch * own * MIN_OPS_PER_LAYER
        return cls(positions=prompt + tokens - 1,
                   executed_ops=tokens * layers * (MIN_OPS_PER_LAYER + batch) + distinct, distinct_ops=distinct,
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
        raise ValueError(f"{what} and --batch {batch}: its trace would execute at least {e.executed_ops:,} ops, more "
                         f"than a trace holds ({MAX_EXECUTED:,}, beyond any real run): trace fewer tokens or a "
                         "smaller batch")
    if e.trace_s > MAX_TRACE_S:
        stage = "encoder" if cfg.is_encoder_decoder else "prefill"
        raise ValueError(f"--batch {batch} with {cfg.name}: tracing would record at least {e.distinct_ops:,} "
                         f"distinct ops (each sequence's own {stage} stage), about {e.trace_s:,.0f} s at "
                         f"{TRACE_S_PER_DISTINCT_OP * 1e3:g} ms each, more than {MAX_TRACE_S:,.0f} s: trace a smaller "
                         "batch")
    if e.largest_flops > MAX_FLOPS:
        raise ValueError(f"--batch {batch} with {cfg.name}: its widest matrix product would do {e.largest_flops:.3g} "
                         f"FLOPs, more than one op of a trace holds ({MAX_FLOPS:.3g}): decode a smaller batch")
    check_room(f"{cfg.name}'s rotary tables ({cfg.max_seq_len:,} positions, max_seq_len)", e.host_bytes)
