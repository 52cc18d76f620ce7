"""Tensor parallelism for the reference decoder, Megatron style: `shard(model, tp)` turns a whole `SharedDecoder`
into rank r's shard in place (as gpt-fast's tp.py does), `build_shard(cfg, tp)` builds one (on the meta device
without values, for tracing any `--tp` in one process).

The sharding of rank r of N (reference.model's hooks carry it):
- attention (self- and cross-attention, the encoder's too): wq, wk, wv column-parallel, rank r holds the output
  rows of query heads [r H/N, (r+1) H/N) and of KV heads [r Hkv/N, (r+1) Hkv/N) (and their biases), which are the
  KV heads those query heads use under grouped-query attention; wo row-parallel, its input columns of those
  query heads; one all-reduce (sum) of wo's output. The KV cache of a rank holds its KV heads only.
- FFN: gate and up column-parallel (d_ff / N rows each), down row-parallel (its d_ff / N input columns), one
  all-reduce of down's output.
- norms and the embedding replicated: a decode step gathers one embedding row per token, so a
  vocabulary-parallel embedding would add an all-reduce per stage and save nothing a step reads.
- the LM head vocabulary-parallel: rank r holds the rows [start_r, stop_r) of the vocabulary (the first V mod N
  ranks one more where N does not divide V); of a tied head, a view of those rows of the replicated embedding.
  So the head's bytes split across ranks as the layers' do, which matters for SPEED: the head runs on every
  row of every stage (for T5-Base ~40% of a layer group's bytes). The argmax is distributed: every rank takes
  the maximum and its (global) index over its columns of each row, the [R] pairs of all ranks are all-gathered,
  and the first rank holding the largest maximum wins: shards are in vocabulary order, so that is the lowest
  index among tied maxima, what torch.argmax over the whole logits gives. Full logits (teacher-forced
  `forward`, tests' early exits) are all-gathered.

Quantized models (reference.quant) shard the same way, their packed weights with their scales: a column-parallel
layer keeps its output rows' int8 scales or int4 scales and zero points, a row-parallel one its input columns (int8:
every scale, one per output row; int4: whole groups, so the group size must divide d_model / N and d_ff / N,
`reference.quant.check_tp`). A model is quantized whole, then sharded: a rank's shard is then exactly its slice of
the single-process quantized model.

Every rank decides the same, with no broadcast: an all-reduce returns the same bits on every rank (gloo and
NCCL reduce each chunk once, on one rank, and then copy it to the others), so the replicated computations
(embedding, norms, residual adds) start from identical inputs and compute identical values; and every token
is chosen by the same deterministic function (an argmax) of the all-gathered maxima and indices, which are the
same bytes on every rank. So every rank's argmaxes are identical, and with them every accept, commit and flush
of reference.pipeline (a pure function of the argmaxes), the rows each stage runs and every stage's shapes.
tests/test_parallel.py checks it: every rank's tokens, pipeline statistics and per-stage decisions are equal.

Collectives are the functional collective ops of torch.distributed (`_c10d_functional.all_reduce`,
`all_gather_into_tensor`, each followed by `wait_tensor`): one code path for eager and `torch.compile`, where
they are graph nodes between fused kernels. They are called directly rather than through
`_functional_collectives.all_reduce`, which in eager mode wraps its result in an AsyncCollectiveTensor whose wait
is issued inside the subclass's own dispatch, unseen by a TorchDispatchMode (the capture): called directly,
eager and compiled decoding issue the same op pair. Both run on the meta device under torch's fake process group
(shapes only), so a trace of any `--tp` needs no processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reference.config import ModelConfig
from reference.model import Attention, FeedForward, SharedDecoder
from reference.quant import QuantizedLinear, Scheme, check_tp, quantize, scheme_of


def check_degree(cfg: ModelConfig, world_size: int) -> None:
    """A ValueError naming the figure where `world_size` ranks cannot shard `cfg` evenly: it must divide the
    query heads (of self-, cross- and encoder attention alike), the KV heads and the FFN size; the vocabulary
    needs at least one row per rank (its shards may be uneven)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"--tp {world_size}: must be an integer >= 1")
    figures = [("n_heads", cfg.n_heads), ("n_kv_heads", cfg.n_kv_heads), ("d_ff", cfg.d_ff)]
    for field, value in figures:
        if value % world_size:
            where = "self-, cross- and encoder attention of " if cfg.is_encoder_decoder and field == "n_heads" else ""
            raise ValueError(f"--tp {world_size}: {field} {value} is not divisible by {world_size} ({where}{cfg.name})")
    if cfg.vocab_size < world_size:
        raise ValueError(f"--tp {world_size}: vocab_size {cfg.vocab_size} gives a rank no vocabulary rows "
                         f"({cfg.name})")


def vocab_range(vocab_size: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the vocabulary rank `rank` holds: contiguous, in rank order, the first V mod N ranks one
    row more than the others."""
    base, extra = divmod(vocab_size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass(frozen=True)
class TensorParallel:
    """Rank `rank` of `world_size` ranks of the process group the functional collectives call `group_name`."""

    world_size: int
    rank: int
    group_name: str

    @classmethod
    def of(cls, group: dist.ProcessGroup | None = None) -> TensorParallel:
        """The calling process's place in `group` (default: the whole world of init_process_group)."""
        group = dist.group.WORLD if group is None else group
        return cls(dist.get_world_size(group), dist.get_rank(group), group.group_name)

    def all_reduce(self, x: Tensor) -> Tensor:
        """The sum of x over the ranks (the same bits on every rank)."""
        return torch.ops._c10d_functional.wait_tensor(torch.ops._c10d_functional.all_reduce(x, "sum", self.group_name))

    def all_gather(self, x: Tensor) -> Tensor:
        """Every rank's x [n, ...] stacked in rank order: [world_size * n, ...]."""
        gathered = torch.ops._c10d_functional.all_gather_into_tensor(x.contiguous(), self.world_size, self.group_name)
        return torch.ops._c10d_functional.wait_tensor(gathered)


@dataclass(frozen=True)
class VocabParallelHead:
    """The LM head's vocabulary rows [start, stop) of one rank (reference.model.VocabShard)."""

    tp: TensorParallel
    start: int
    stop: int
    vocab_size: int

    def argmax(self, logits: Tensor) -> Tensor:
        """This rank's logits [R, stop - start] -> the global argmax [R], ties to the lowest index."""
        best, index = logits.max(dim=-1)  # [R]; ties: the first index
        # one collective: maxima and global indices as float64 pairs (exact for bf16/fp32/fp64 values and for ids)
        pairs = torch.stack((best.to(torch.float64), (index + self.start).to(torch.float64)), dim=-1)  # [R, 2]
        gathered = self.tp.all_gather(pairs).unflatten(0, (self.tp.world_size, -1))  # [N, R, 2]
        winner = gathered[..., 0].argmax(dim=0)  # [R]: the first rank with the largest maximum
        return gathered[..., 1].gather(0, winner[None])[0].to(torch.int64)

    def gather(self, logits: Tensor) -> Tensor:
        """This rank's logits [..., stop - start] -> the whole vocabulary's [..., V]; shards are padded to the
        widest for the all-gather and trimmed after it."""
        world = self.tp.world_size
        width = vocab_range(self.vocab_size, world, 0)[1]  # rank 0's shard is the widest
        padded = nn.functional.pad(logits, (0, width - logits.shape[-1])).movedim(-1, 0)  # [W, ...]
        every = self.tp.all_gather(padded).unflatten(0, (world, width))  # [N, W, ...]
        shards = [every[r, : stop - start] for r, (start, stop) in
                  ((r, vocab_range(self.vocab_size, world, r)) for r in range(world))]
        return torch.cat(shards).movedim(0, -1)


def _keep_rows(linear: nn.Linear | QuantizedLinear, start: int, size: int) -> None:
    """Column-parallel: keep output rows [start, start + size) of the weight, and of the bias (of a quantized
    layer: of its packed weight, scales and bias)."""
    if isinstance(linear, QuantizedLinear):
        linear.keep_rows(start, size)
        return
    linear.weight = nn.Parameter(linear.weight.detach()[start : start + size].clone(),
                                 requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[start : start + size].clone(),
                                   requires_grad=linear.bias.requires_grad)
    linear.out_features = size


def _keep_columns(linear: nn.Linear | QuantizedLinear, start: int, size: int) -> None:
    """Row-parallel: keep input columns [start, start + size) of the weight (the output is a partial sum); of a
    quantized layer, of its packed weight (int4: whole groups, with their scales and zero points)."""
    if isinstance(linear, QuantizedLinear):
        linear.keep_columns(start, size)
        return
    linear.weight = nn.Parameter(linear.weight.detach()[:, start : start + size].clone(),
                                 requires_grad=linear.weight.requires_grad)
    linear.in_features = size


def _shard_attention(attn: Attention, tp: TensorParallel) -> None:
    heads, kv_heads, hd = attn.n_heads // tp.world_size, attn.n_kv_heads // tp.world_size, attn.head_dim
    _keep_rows(attn.wq, tp.rank * heads * hd, heads * hd)
    _keep_rows(attn.wk, tp.rank * kv_heads * hd, kv_heads * hd)
    _keep_rows(attn.wv, tp.rank * kv_heads * hd, kv_heads * hd)
    _keep_columns(attn.wo, tp.rank * heads * hd, heads * hd)
    attn.n_heads, attn.n_kv_heads = heads, kv_heads
    attn.reduce = tp.all_reduce


def _shard_ffn(ffn: FeedForward, tp: TensorParallel) -> None:
    size = ffn.gate.out_features // tp.world_size
    _keep_rows(ffn.gate, tp.rank * size, size)
    _keep_rows(ffn.up, tp.rank * size, size)
    _keep_columns(ffn.down, tp.rank * size, size)
    ffn.reduce = tp.all_reduce


def shard(model: SharedDecoder, tp: TensorParallel) -> SharedDecoder:
    """Make `model` (whole: every rank builds the same, e.g. from the same seed) rank `tp.rank`'s shard, in place,
    and return it. Every attention module (self-, cross-, encoder) and FFN is sharded, the LM head by vocabulary;
    a ValueError (`check_degree`) where the degree does not divide the model. A quantized model's packed weights
    shard with their scales; a ValueError (`reference.quant.check_tp`) where a shard would split an int4 group.
    One rank: the model unchanged."""
    cfg = model.config
    check_degree(cfg, tp.world_size)
    check_tp(cfg, scheme_of(model), tp.world_size)
    if not 0 <= tp.rank < tp.world_size:
        raise ValueError(f"rank {tp.rank} is not in [0, {tp.world_size})")
    if model.vocab_shard is not None:
        raise ValueError(f"model {cfg.name!r} is already sharded")
    if tp.world_size == 1:
        return model
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Attention):
                _shard_attention(module, tp)
            elif isinstance(module, FeedForward):
                _shard_ffn(module, tp)
        start, stop = vocab_range(cfg.vocab_size, tp.world_size, tp.rank)
        if model.lm_head is not None:  # untied: a weight of its own; tied: `head` takes a view of the embedding
            _keep_rows(model.lm_head, start, stop - start)
        model.vocab_shard = VocabParallelHead(tp, start, stop, cfg.vocab_size)
    return model


def build_shard(cfg: ModelConfig, tp: TensorParallel, device: torch.device | str = "meta",
                dtype: torch.dtype = torch.float32, seed: int | None = 0, quant: str | Scheme | None = None
                ) -> SharedDecoder:
    """Rank `tp.rank`'s shard of `cfg` at its local shapes, its block projections quantized with `quant`
    (reference.quant) where given. On the meta device (the default) nothing is allocated at any step, so a
    70B-shaped shard costs nothing; on another device the whole seeded model is built (and quantized) first (the
    same on every rank) and its slices kept, so it lives only until sharded."""
    check_degree(cfg, tp.world_size)
    check_tp(cfg, quant, tp.world_size)
    model = SharedDecoder(cfg, device=device, dtype=dtype, seed=seed)
    return shard(model if quant is None else quantize(model, quant), tp)


def fake_group(world_size: int, rank: int = 0) -> TensorParallel:
    """Rank `rank` of a process group of `world_size` that is not there (torch's fake backend): collectives
    return their input's shapes without communicating, so a shard runs alone (on the meta device: tracing).
    Initializes the default process group of this process; `dist.destroy_process_group()` ends it."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    return TensorParallel.of()
