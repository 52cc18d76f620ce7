"""The reference decoder: `Nd` blocks shared cyclically over `G` groups, an exit after every group, and a
preallocated KV cache per depth indexed by position.

Two ways through the model:
- `forward`: teacher-forced over whole sequences (training, checks), logits of every exit and the weighted
  exit loss;
- `prefill` + `run_group`: incremental decoding. `run_group` takes R independent rows (one token each, with
  their own sequence, position and group) through the `Nd` shared blocks *as one batch*: row r at group k
  uses the KV cache of depths `k * Nd + l`. Sequential decoding calls it G times per token with every row at
  the same group; SPEED calls it once per stage with every in-flight row at a different group.

Positions use rotary embeddings in both families (T5 proper uses bucketed relative biases; the cost of either
is negligible next to the projections, and one code path keeps the reference small).

Tensor parallelism (reference.parallel) shards a model in place through three hooks, inert in a model of its own:
`Attention.reduce` and `FeedForward.reduce` (the all-reduce after the row-parallel output projections; identity
here), the local head counts `Attention.n_heads` / `n_kv_heads` (every reshape and the KV cache use them), and
`SharedDecoder.vocab_shard` (a vocabulary-parallel LM head: `head` gives this rank's columns of the logits,
`argmax` and `logits` combine the ranks'). Unsharded, every op is the same as without the hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.config import ModelConfig


def no_reduce(x: Tensor) -> Tensor:
    """The reduce of a module that is not sharded: its output is already the whole sum."""
    return x


class VocabShard(Protocol):
    """The vocabulary rows [start, stop) of the LM head this rank holds, and how the ranks' logits combine
    (reference.parallel.VocabParallelHead)."""

    start: int
    stop: int

    def argmax(self, logits: Tensor) -> Tensor:
        """This rank's logits [R, stop - start] -> the argmax over the whole vocabulary [R] (every rank the same)."""
        ...

    def gather(self, logits: Tensor) -> Tensor:
        """This rank's logits [..., stop - start] -> the logits over the whole vocabulary [..., V]."""
        ...


def at_least_fp32(x: Tensor) -> Tensor:
    """x in float32, or in float64 if it already is (norms and losses of bf16 models run in fp32)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, **factory: object) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **factory))

    def forward(self, x: Tensor) -> Tensor:
        xf = at_least_fp32(x)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def rope_tables(cfg: ModelConfig, length: int, device: torch.device | str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin: [length, head_dim / 2]."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [..., T, head_dim]; cos, sin broadcast to [..., T, head_dim / 2] (rotate-half convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


@dataclass
class KVCache:
    """Preallocated keys and values (of a tensor-parallel rank: its own heads). A rollback is a position reset:
    entries written by flushed tokens sit beyond the committed positions and are overwritten before any row
    attends to them."""

    k: Tensor  # [N, B, Hkv, max_len, head_dim], one slice per depth
    v: Tensor
    cross_k: Tensor | None = None  # [Nd, B, H, S, head_dim]: per shared block, computed once from the encoder
    cross_v: Tensor | None = None
    encoder_lens: list[int] | None = None  # real encoder positions of each sequence

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


@dataclass
class Rows:
    """R independent one-token rows decoded together, ordered by sequence: what every layer needs, built once
    per stage. Each row attends to a view of its own cache slice, so no key/value byte is copied."""

    seqs: list[int]  # the sequence (cache slot) of each row
    positions: list[int]  # the position of each row's token
    cos: Tensor  # [R, 1, 1, head_dim / 2]
    sin: Tensor

    def segments(self) -> list[tuple[int, int, int]]:
        """(seq, start, stop): the runs of rows that belong to one sequence."""
        runs: list[tuple[int, int, int]] = []
        for r, s in enumerate(self.seqs):
            if runs and runs[-1][0] == s:
                runs[-1] = (s, runs[-1][1], r + 1)
            else:
                runs.append((s, r, r + 1))
        return runs


class Attention(nn.Module):
    """Multi-head attention; grouped-query when n_kv_heads < n_heads. `cross` attends to the encoder. n_heads and
    n_kv_heads are the heads this module holds (a tensor-parallel shard: its rank's); `reduce` sums the output
    projection over the ranks (identity unsharded)."""

    def __init__(self, cfg: ModelConfig, cross: bool, **factory: object) -> None:
        super().__init__()
        self.reduce: Callable[[Tensor], Tensor] = no_reduce
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.n_kv_heads = cfg.n_heads if cross else cfg.n_kv_heads
        kv_dim = self.n_kv_heads * self.head_dim
        bias = cfg.qkv_bias and not cross
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=bias, **factory)
        self.wk = nn.Linear(cfg.d_model, kv_dim, bias=bias, **factory)
        self.wv = nn.Linear(cfg.d_model, kv_dim, bias=bias, **factory)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False, **factory)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        return x.unflatten(-1, (n, self.head_dim)).transpose(-3, -2)  # [..., T, n*hd] -> [..., n, T, hd]

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              enable_gqa=self.n_kv_heads != self.n_heads)

    def _merge(self, out: Tensor) -> Tensor:
        return self.reduce(self.wo(out.transpose(-3, -2).flatten(-2)))  # [..., H, T, hd] -> [..., T, d]

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, causal: bool, mask: Tensor | None = None,
                write: tuple[KVCache, int, int] | None = None) -> Tensor:
        """Self-attention over whole sequences. x: [B, T, d]. `write` = (cache, depth, seq) stores the keys and
        values of positions 0..T-1 (prefill of one sequence, B = 1)."""
        q = apply_rope(self._heads(self.wq(x), self.n_heads), cos, sin)
        k = apply_rope(self._heads(self.wk(x), self.n_kv_heads), cos, sin)
        v = self._heads(self.wv(x), self.n_kv_heads)
        if write is not None:
            cache, depth, seq = write
            cache.k[depth, seq, :, : x.shape[1]] = k[0]
            cache.v[depth, seq, :, : x.shape[1]] = v[0]
        return self._merge(self._sdpa(q, k, v, mask, causal))

    def cross(self, x: Tensor, memory_k: Tensor, memory_v: Tensor, mask: Tensor | None) -> Tensor:
        """Cross-attention of x: [B, T, d] to precomputed encoder keys/values [B, H, S, hd]."""
        return self._merge(self._sdpa(self._heads(self.wq(x), self.n_heads), memory_k, memory_v, mask))

    def encoder_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the encoder output memory: [B, S, d] -> 2 x [B, H, S, hd]."""
        return self._heads(self.wk(memory), self.n_kv_heads), self._heads(self.wv(memory), self.n_kv_heads)

    def forward_rows(self, x: Tensor, rows: Rows, depths: list[int], cache: KVCache) -> Tensor:
        """Self-attention of one-token rows x: [R, d]. Row r writes its key/value at (depths[r], seq, pos) and
        attends to positions 0..pos of its own depth."""
        q = apply_rope(self._heads(self.wq(x)[:, None], self.n_heads), rows.cos, rows.sin)  # [R, H, 1, hd]
        k = apply_rope(self._heads(self.wk(x)[:, None], self.n_kv_heads), rows.cos, rows.sin)  # [R, Hkv, 1, hd]
        v = self._heads(self.wv(x)[:, None], self.n_kv_heads)
        out = []
        for r, (depth, seq, pos) in enumerate(zip(depths, rows.seqs, rows.positions)):
            cache.k[depth, seq, :, pos : pos + 1] = k[r]
            cache.v[depth, seq, :, pos : pos + 1] = v[r]
            # a batch dim of 1 for SDPA: its fused kernels need 4-D inputs, 3-D ones fall back to the math path
            k_r, v_r = cache.k[depth, seq, :, : pos + 1], cache.v[depth, seq, :, : pos + 1]  # [Hkv, pos+1, hd]
            out.append(self._sdpa(q[r][None], k_r[None], v_r[None])[0])  # [H, 1, hd]
        return self._merge(out[0][None] if len(out) == 1 else torch.stack(out))[:, 0]  # [R, H, 1, hd] -> [R, d]

    def cross_rows(self, x: Tensor, rows: Rows, cache: KVCache, layer: int) -> Tensor:
        """Cross-attention of one-token rows x: [R, d]; the rows of one sequence share its encoder keys, so they
        attend together as a query sequence of their own."""
        q = self._heads(self.wq(x)[None], self.n_heads)  # [1, H, R, hd]
        out = []
        for seq, start, stop in rows.segments():
            n = cache.encoder_lens[seq]
            out.append(self._sdpa(q[:, :, start:stop], cache.cross_k[layer, seq : seq + 1, :, :n],
                                  cache.cross_v[layer, seq : seq + 1, :, :n]))
        return self._merge(out[0] if len(out) == 1 else torch.cat(out, dim=2))[0]  # [1, H, R, hd] -> [R, d]


class FeedForward(nn.Module):
    """Gated FFN: down(act(gate(x)) * up(x)); GELU (tanh) for T5 v1.1, SiLU for Llama (SwiGLU). `reduce` sums the
    down projection over tensor-parallel ranks (identity unsharded)."""

    def __init__(self, cfg: ModelConfig, **factory: object) -> None:
        super().__init__()
        self.reduce: Callable[[Tensor], Tensor] = no_reduce
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False, **factory)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False, **factory)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False, **factory)
        self.act = F.silu if cfg.ffn == "swiglu" else lambda t: F.gelu(t, approximate="tanh")

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(self.down(self.act(self.gate(x)) * self.up(x)))


class Block(nn.Module):
    """Pre-norm residual block: self-attention, optional cross-attention, gated FFN."""

    def __init__(self, cfg: ModelConfig, cross: bool, **factory: object) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, **factory)
        self.attn = Attention(cfg, cross=False, **factory)
        if cross:
            self.cross_norm = RMSNorm(cfg.d_model, cfg.norm_eps, **factory)
            self.cross_attn = Attention(cfg, cross=True, **factory)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, **factory)
        self.ffn = FeedForward(cfg, **factory)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, causal: bool, mask: Tensor | None = None,
                memory: tuple[Tensor, Tensor, Tensor | None] | None = None,
                write: tuple[KVCache, int, int] | None = None) -> Tensor:
        """Whole sequences x: [B, T, d]; memory = (cross keys, cross values, cross mask) of the encoder."""
        x = x + self.attn(self.attn_norm(x), cos, sin, causal, mask, write)
        if memory is not None:
            x = x + self.cross_attn.cross(self.cross_norm(x), *memory)
        return x + self.ffn(self.ffn_norm(x))

    def forward_rows(self, x: Tensor, rows: Rows, depths: list[int], cache: KVCache, layer: int) -> Tensor:
        """One-token rows x: [R, d]; `layer` is this block's index in the group (its cross-attention slot)."""
        x = x + self.attn.forward_rows(self.attn_norm(x), rows, depths, cache)
        if cache.cross_k is not None:
            x = x + self.cross_attn.cross_rows(self.cross_norm(x), rows, cache, layer)
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    """Bidirectional encoder of unshared blocks (T5 style), with its own final norm."""

    def __init__(self, cfg: ModelConfig, **factory: object) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, cross=False, **factory) for _ in range(cfg.n_encoder_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, **factory)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = block(x, cos, sin, causal=False, mask=mask)
        return self.norm(x)


class SharedDecoder(nn.Module):
    """Token embedding, optional encoder, `Nd` blocks reused cyclically over `G` groups, one final norm and an
    LM head (tied to the embedding, or `lm_head` where the config unties it), applied after any group (exit g)."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int | None = 0) -> None:
        super().__init__()
        self.config = cfg
        factory = {"device": device, "dtype": dtype}
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, **factory)
        self.encoder = Encoder(cfg, **factory) if cfg.is_encoder_decoder else None
        self.blocks = nn.ModuleList(Block(cfg, cross=cfg.is_encoder_decoder, **factory)
                                    for _ in range(cfg.n_unique_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, **factory)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False, **factory)
        self.vocab_shard: VocabShard | None = None  # tensor parallelism: the LM head's rows this rank holds
        cos, sin = rope_tables(cfg, cfg.max_seq_len, device, dtype)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if seed is not None and torch.device(device).type != "meta":
            self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                continue
            if name.endswith(".bias"):
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.02)
                continue
            std = 1.0 if name == "embed.weight" else 1.0 / math.sqrt(p.shape[1])
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * std)

    # -- one place that says which block a depth uses
    def layer(self, depth: int) -> Block:
        """The block at depth `depth`: block `depth mod Nd`, the same object in every group."""
        return self.blocks[depth % self.config.n_unique_layers]

    def head(self, h: Tensor) -> Tensor:
        """Final norm + LM head (the embedding's, unless untied): [..., d] -> [..., V]; with a vocabulary shard,
        this rank's columns [..., stop - start] (of a tied head, its rows of the replicated embedding)."""
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        if self.vocab_shard is not None and self.lm_head is None:
            weight = weight[self.vocab_shard.start : self.vocab_shard.stop]
        return F.linear(self.norm(h), weight)

    def logits(self, h: Tensor) -> Tensor:
        """`head` over the whole vocabulary [..., V]: with a vocabulary shard, every rank's columns gathered."""
        return self.head(h) if self.vocab_shard is None else self.vocab_shard.gather(self.head(h))

    def argmax(self, logits: Tensor) -> Tensor:
        """The greedy token of every row [R] (ties to the lowest id, as torch.argmax) from logits [R, V] over the
        whole vocabulary, or, with a vocabulary shard, from this rank's columns [R, stop - start] (what `head`
        gives): the one place the decoders (decode, compiled) pick tokens."""
        if self.vocab_shard is None or logits.shape[-1] == self.config.vocab_size:
            return logits.argmax(dim=-1)
        return self.vocab_shard.argmax(logits)

    def exit_logits(self, h: Tensor, rows: Rows, exits: list[int]) -> Tensor:
        """Logits of rows h: [R, d] at their exits (1..G), for `argmax`. The decoders call this for every
        prediction they make; tests override it to model early exits of any quality (only exit G decides the
        output), with the whole vocabulary's logits (`logits`) where the model is sharded."""
        return self.head(h)

    # -- teacher-forced forward
    def encode(self, encoder_tokens: Tensor, encoder_mask: Tensor | None = None) -> Tensor:
        """[B, S] token ids -> encoder output [B, S, d]; encoder_mask [B, S] True where real."""
        length = encoder_tokens.shape[1]
        attn_mask = None if encoder_mask is None else encoder_mask[:, None, None, :]
        return self.encoder(self.embed(encoder_tokens), self.rope_cos[:length], self.rope_sin[:length], attn_mask)

    def forward(self, tokens: Tensor, targets: Tensor | None = None, encoder_tokens: Tensor | None = None,
                encoder_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """tokens: [B, T] -> (logits of every exit [G, B, T, V], weighted exit loss or None).

        loss = sum_g w_g * CE(exit g), w_g = g / sum(1..G); targets equal to -100 are ignored."""
        cfg = self.config
        length = tokens.shape[1]
        if length > cfg.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds ModelConfig.max_seq_len {cfg.max_seq_len}")
        memory = None
        if cfg.is_encoder_decoder:
            if encoder_tokens is None:
                raise ValueError(f"model {cfg.name!r} is encoder-decoder: encoder_tokens is required")
            cross_mask = None if encoder_mask is None else encoder_mask[:, None, None, :]
            enc = self.encode(encoder_tokens, encoder_mask)
        cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        x = self.embed(tokens)
        exits = []
        for depth in range(cfg.depth):
            block = self.layer(depth)
            if cfg.is_encoder_decoder:
                memory = (*block.cross_attn.encoder_kv(enc), cross_mask)
            x = block(x, cos, sin, causal=True, memory=memory)
            if (depth + 1) % cfg.n_unique_layers == 0:
                exits.append(self.logits(x))
        logits = torch.stack(exits)
        if targets is None:
            return logits, None
        losses = [F.cross_entropy(at_least_fp32(exit_logits.flatten(0, 1)), targets.flatten(), ignore_index=-100)
                  for exit_logits in logits]
        return logits, sum(w * loss for w, loss in zip(cfg.exit_weights, losses))

    # -- incremental decoding
    def new_cache(self, batch: int, max_len: int, encoder_len: int = 0) -> KVCache:
        """Zeroed keys and values of the heads this model holds (a tensor-parallel shard: its rank's)."""
        cfg = self.config
        p = self.embed.weight
        shape = (cfg.depth, batch, self.blocks[0].attn.n_kv_heads, max_len, cfg.head_dim)
        cache = KVCache(torch.zeros(shape, device=p.device, dtype=p.dtype),
                        torch.zeros(shape, device=p.device, dtype=p.dtype))
        if cfg.is_encoder_decoder:
            cross = (cfg.n_unique_layers, batch, self.blocks[0].cross_attn.n_kv_heads, encoder_len, cfg.head_dim)
            cache.cross_k = torch.zeros(cross, device=p.device, dtype=p.dtype)
            cache.cross_v = torch.zeros(cross, device=p.device, dtype=p.dtype)
            cache.encoder_lens = [0] * batch
        return cache

    def encode_into(self, cache: KVCache, seq: int, encoder_tokens: list[int]) -> None:
        """Encode one sequence's input and store every shared block's cross keys/values in slot `seq`."""
        tokens = torch.tensor([encoder_tokens], device=cache.k.device)
        memory = self.encode(tokens)
        length = len(encoder_tokens)
        for layer, block in enumerate(self.blocks):
            k, v = block.cross_attn.encoder_kv(memory)
            cache.cross_k[layer, seq, :, :length] = k[0]
            cache.cross_v[layer, seq, :, :length] = v[0]
        cache.encoder_lens[seq] = length

    def prefill(self, cache: KVCache, seq: int, tokens: list[int]) -> None:
        """Write keys/values of positions 0..T-1 of one sequence at every depth (no logits are needed)."""
        cfg = self.config
        length = len(tokens)
        x = self.embed(torch.tensor([tokens], device=cache.k.device))
        cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        memory = None
        for depth in range(cfg.depth):
            block = self.layer(depth)
            if cfg.is_encoder_decoder:
                layer, n = depth % cfg.n_unique_layers, cache.encoder_lens[seq]
                memory = (cache.cross_k[layer, seq : seq + 1, :, :n], cache.cross_v[layer, seq : seq + 1, :, :n], None)
            x = block(x, cos, sin, causal=True, memory=memory, write=(cache, depth, seq))

    def rows(self, seqs: list[int], positions: list[int]) -> Rows:
        """The rows of one stage or step, ordered by sequence."""
        pos = torch.tensor(positions, device=self.rope_cos.device)
        return Rows(seqs, positions, self.rope_cos[pos][:, None, None], self.rope_sin[pos][:, None, None])

    def run_group(self, h: Tensor, rows: Rows, groups: list[int], cache: KVCache) -> Tensor:
        """One pass of rows h: [R, d] through the Nd shared blocks, row r at group groups[r] (0-based), so in
        layer l it uses the cache of depth groups[r] * Nd + l. The weights are read once for all rows."""
        nd = self.config.n_unique_layers
        for layer, block in enumerate(self.blocks):
            h = block.forward_rows(h, rows, [g * nd + layer for g in groups], cache, layer)
        return h
