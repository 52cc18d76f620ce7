"""Compiled decoding in the style of gpt-fast: the per-stage step of `decode.sequential` and `decode.speed` (the
pass of R one-token rows through the Nd shared blocks, and the LM head's argmax) under `torch.compile` with
static shapes, one compiled variant per number of rows in flight R (and per cache shape).

The eager step (`SharedDecoder.run_group`) takes positions, depths and KV lengths as Python ints, which change
every token; a compiled graph that depended on them would recompile every token. The static step here takes them
as integer tensors instead:

- positions, groups and sequence slots are int64 tensors [R]; a row's depth in layer l is `groups * Nd + l`;
- each row writes its new key/value into the preallocated cache with `index_put_` (the cache `KVCache.k` is
  [N depths, B, Hkv, max_len, head_dim]; the graph mutates it in place);
- each row attends over the whole static `max_len` of its (depth, seq) cache slice, gathered with advanced
  indexing (`k[depths, seqs]` -> [R, Hkv, max_len, hd]), under the mask `key position <= row position`;
- cross-attention (encoder-decoder presets) attends over the whole static encoder length of each row's sequence,
  masking keys at or beyond that sequence's encoder length.

Masked keys get zero weight, so the step computes what `run_group` computes, with the same ops (the same
`Attention` helpers, `scaled_dot_product_attention` with `enable_gqa` as in the eager path) and the model's own
weights (no copies); only the order of some sums may differ by rounding. Prefill and encoding stay eager (they
run once per sequence), and so does the bookkeeping (`reference.pipeline`).

Variants and compile time: `CompiledStep` compiles one function per variant, keyed by (kind, R, dtype and cache
shapes), each a fresh code object so that Dynamo's per-code recompile limit never sends a variant back to eager;
`CompiledStep.variants` records the seconds of each variant's first call (compilation plus one run), which
callers report apart from, and exclude from, decode latency. `decode.*(compile=True)` puts the variants first run
during the call on `DecodeResult.compile_variants`.

Caches: compiled decoding rounds the cache length (and the encoder length) up to a power of two (at least 16,
at most `ModelConfig.max_seq_len`), so that calls of similar lengths share variants; positions beyond a row's are
masked, so the padding changes no value. On cuda the step runs with mode="reduce-overhead" (CUDA graphs): the
cache tensors are marked as static addresses (`torch._dynamo.mark_static_address`), so that the graphs may
mutate them, and each step's hidden state is cloned out of the graph's memory pool; a CUDA graph is bound to the
addresses it was recorded with, so there one cache per shape is kept and reused by every call
(`reuse_cache`): `DecodeResult.cache` of a compiled cuda call is valid until the next compiled call of that shape.
The cuda path follows gpt-fast's recipe but has not run on a GPU yet; tests/test_compiled.py checks the CPU path.
"""

from __future__ import annotations

import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.model import Attention, KVCache, SharedDecoder, apply_rope


# -- the static-shape step: functions of the model and of tensors only
def self_attention_static(attn: Attention, x: Tensor, cos: Tensor, sin: Tensor, depths: Tensor, seqs: Tensor,
                          positions: Tensor, cache_k: Tensor, cache_v: Tensor, mask: Tensor) -> Tensor:
    """`Attention.forward_rows` with tensor indices. x: [R, d]; depths, seqs, positions: int64 [R]; mask
    [R, 1, 1, max_len], True where key position <= row position. Writes row r's key/value at (depths[r], seqs[r],
    :, positions[r]) and attends over the whole (depths[r], seqs[r]) slice."""
    q = apply_rope(attn._heads(attn.wq(x)[:, None], attn.n_heads), cos, sin)  # [R, H, 1, hd]
    k = apply_rope(attn._heads(attn.wk(x)[:, None], attn.n_kv_heads), cos, sin)  # [R, Hkv, 1, hd]
    v = attn._heads(attn.wv(x)[:, None], attn.n_kv_heads)
    cache_k[depths, seqs, :, positions] = k[:, :, 0]  # index_put_ of [R, Hkv, hd] into [N, B, Hkv, max_len, hd]
    cache_v[depths, seqs, :, positions] = v[:, :, 0]
    keys, values = cache_k[depths, seqs], cache_v[depths, seqs]  # [R, Hkv, max_len, hd]
    return attn._merge(attn._sdpa(q, keys, values, mask))[:, 0]  # [R, H, 1, hd] -> [R, d]


def cross_attention_static(attn: Attention, x: Tensor, cross_k: Tensor, cross_v: Tensor, seqs: Tensor,
                           mask: Tensor) -> Tensor:
    """`Attention.cross_rows` with tensor indices: x [R, d]; cross_k, cross_v: one block's [B, H, S, hd]; mask
    [R, 1, 1, S], True below each row's encoder length."""
    q = attn._heads(attn.wq(x)[:, None], attn.n_heads)  # [R, H, 1, hd]
    return attn._merge(attn._sdpa(q, cross_k[seqs], cross_v[seqs], mask))[:, 0]


def run_group_static(model: SharedDecoder, h: Tensor, seqs: Tensor, positions: Tensor, groups: Tensor,
                     cache_k: Tensor, cache_v: Tensor, cross_k: Tensor | None = None, cross_v: Tensor | None = None,
                     encoder_lens: Tensor | None = None) -> Tensor:
    """`SharedDecoder.run_group` with static shapes: rows h [R, d]; seqs (sequence slots), positions, groups
    (completed, 0-based): int64 [R]; encoder_lens int64 [B] with cross_k, cross_v [Nd, B, H, S, hd] for
    encoder-decoder models. Mutates cache_k, cache_v [N, B, Hkv, max_len, hd]; returns the new h [R, d]."""
    nd = model.config.n_unique_layers
    cos, sin = model.rope_cos[positions][:, None, None], model.rope_sin[positions][:, None, None]
    key_positions = torch.arange(cache_k.shape[3], device=h.device)
    self_mask = (key_positions[None] <= positions[:, None])[:, None, None]  # [R, 1, 1, max_len]
    cross_mask = None
    if cross_k is not None:
        encoder_positions = torch.arange(cross_k.shape[3], device=h.device)
        cross_mask = (encoder_positions[None] < encoder_lens[seqs][:, None])[:, None, None]  # [R, 1, 1, S]
    for layer, block in enumerate(model.blocks):
        h = h + self_attention_static(block.attn, block.attn_norm(h), cos, sin, groups * nd + layer, seqs, positions,
                                      cache_k, cache_v, self_mask)
        if cross_k is not None:
            h = h + cross_attention_static(block.cross_attn, block.cross_norm(h), cross_k[layer], cross_v[layer],
                                           seqs, cross_mask)
        h = h + block.ffn(block.ffn_norm(h))
    return h


def _unpack(packed: Tensor, rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The int64 inputs of a step, sent as one tensor (one host-to-device copy per stage): seqs, positions, groups
    [R] and, after them, the stage's other indices (`order`, then the new tokens)."""
    return packed[:rows], packed[rows : 2 * rows], packed[2 * rows : 3 * rows], packed[3 * rows :]


def _argmax_of_head(model: SharedDecoder, h: Tensor) -> Tensor:
    return model.argmax(model.head(h))


def make_token_step(passes: int, head: bool) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """A sequential decode step for R rows: embed their tokens, `passes` (= G) passes through the shared blocks,
    then (`head`) the argmax of the final norm + LM head, all in one graph. The step's function:
    (model, packed int64 [4R]: seqs, positions, groups (0), tokens; caches...) -> (h [R, d], argmax [R] or None)."""

    def token_step(model: SharedDecoder, packed: Tensor, cache_k: Tensor, cache_v: Tensor,
                   cross_k: Tensor | None, cross_v: Tensor | None, encoder_lens: Tensor | None
                   ) -> tuple[Tensor, Tensor | None]:
        rows = packed.shape[0] // 4
        seqs, positions, groups, tokens = _unpack(packed, rows)
        h = model.embed(tokens)  # [R, d]
        for g in range(passes):
            h = run_group_static(model, h, seqs, positions, groups + g, cache_k, cache_v, cross_k, cross_v,
                                 encoder_lens)
        return h, _argmax_of_head(model, h) if head else None

    return token_step


def make_speed_stage(head: bool) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """A SPEED stage for R rows in one graph: the rows are picked (`order`) from the rows the previous stage
    carried out (`carry` [C, d], C = G x B, static: unused rows are padding) followed by the embeddings of the B
    new tokens (one per sequence; padding where a sequence injects none); one pass through the shared blocks, row
    r at group groups[r]; then (`head`) the argmax of every row's exit. Returns the new carry (the R rows, padded
    to C) and the argmax [R] (or None). packed: int64 [4R + B]: seqs, positions, groups, order, tokens."""

    def speed_stage(model: SharedDecoder, carry: Tensor, packed: Tensor, cache_k: Tensor, cache_v: Tensor,
                    cross_k: Tensor | None, cross_v: Tensor | None, encoder_lens: Tensor | None
                    ) -> tuple[Tensor, Tensor | None]:
        batch = cache_k.shape[1]
        rows = (packed.shape[0] - batch) // 4
        seqs, positions, groups, rest = _unpack(packed, rows)
        order, tokens = rest[:rows], rest[rows:]
        h = torch.cat([carry, model.embed(tokens)])[order]  # [R, d]
        h = run_group_static(model, h, seqs, positions, groups, cache_k, cache_v, cross_k, cross_v, encoder_lens)
        new_carry = F.pad(h, (0, 0, 0, carry.shape[0] - rows))  # [C, d]
        return new_carry, _argmax_of_head(model, h) if head else None

    return speed_stage


def _fresh(fn: Callable, name: str) -> Callable:
    """A copy of fn with a code object of its own: Dynamo keeps compiled entries (and counts recompiles against
    its limit) per code object, so every variant gets its own, compiled exactly once."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bucket(length: int, cap: int) -> int:
    """length rounded up to a power of two, at least 16, at most cap (and never below length)."""
    return max(length, min(cap, max(16, 1 << (length - 1).bit_length())))


@dataclass(frozen=True)
class Variant:
    """One compiled step variant: its kind ("token": a whole sequential decode step; "stage": a SPEED stage), the
    rows it takes, its full key, and the seconds of its first call (compilation + one run; with CUDA graphs also
    their warm-up and recording)."""

    kind: str
    rows: int
    key: tuple
    first_call_s: float


class CompiledStep:
    """The compiled steps of one model, one compiled variant per key: "token" (a whole sequential decode step of R
    rows, `make_token_step`) and "stage" (a SPEED stage of R rows, `make_speed_stage`), each with the head's argmax
    in the graph, or without it where an overridden `exit_logits` computes the logits eagerly. Every stage of a
    decode is one compiled call. Shares the model's weights: Dynamo reads the parameters as graph inputs, so the
    model may be trained or loaded afterwards (a change of shape or dtype recompiles).

    mode: torch.compile's mode (default: "reduce-overhead" on cuda, else the default mode); backend: its backend
    ("inductor"; "aot_eager" traces without generating code), or None: no compiler at all, the static-shape
    step runs as plain PyTorch (what the compiler is handed: tracing it records the compiled formulation's ops,
    on any device, meta included). reuse_cache: keep one cache per shape and hand it
    to every call (default: where CUDA graphs run)."""

    def __init__(self, model: SharedDecoder, mode: str | None = None, backend: str | None = "inductor",
                 reuse_cache: bool | None = None) -> None:
        device = model.embed.weight.device
        if device.type == "meta" and backend is not None:
            raise ValueError("compiled decoding needs values: the model is on the meta device")
        self._model = weakref.ref(model)
        self.device = device
        self.mode = mode if mode is not None else ("reduce-overhead" if device.type == "cuda" else None)
        self.backend = backend
        self.cudagraphs = (device.type == "cuda" and self.mode in ("reduce-overhead", "max-autotune")
                           and backend is not None)
        self.reuse_cache = self.cudagraphs if reuse_cache is None else reuse_cache
        self.variants: list[Variant] = []
        self._compiled: dict[tuple, Callable] = {}
        self._caches: dict[tuple, KVCache] = {}

    @property
    def model(self) -> SharedDecoder:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this CompiledStep is gone")
        return model

    @property
    def compile_s(self) -> float:
        """Seconds spent in the first calls of all variants so far."""
        return sum(v.first_call_s for v in self.variants)

    def new_cache(self, batch: int, max_len: int, encoder_len: int = 0) -> KVCache:
        """A cache for compiled decoding: lengths bucketed (see `bucket`), tensors marked as static addresses where
        CUDA graphs run; the same one for every call of that shape where `reuse_cache`."""
        model = self.model
        cap = model.config.max_seq_len
        shape = (batch, bucket(max_len, cap), bucket(encoder_len, cap) if encoder_len else 0)
        if self.reuse_cache and shape in self._caches:
            cache = self._caches[shape]
            if cache.encoder_lens is not None:
                cache.encoder_lens = [0] * batch
            return cache
        cache = model.new_cache(*shape)
        if self.cudagraphs:  # CUDA graphs may then mutate the cache in place (elsewhere the mark changes nothing)
            for t in (cache.k, cache.v, cache.cross_k, cache.cross_v):
                if t is not None:
                    torch._dynamo.mark_static_address(t)
        if self.reuse_cache:
            self._caches[shape] = cache
        return cache

    def _call(self, kind: str, make: Callable[[], Callable], key: tuple, rows: int, *args: object
              ) -> tuple[Tensor, Tensor | None]:
        """Run variant `key` (made by `make` and compiled on its first call) on args."""
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled(self.model, *args)
        if self.backend is None:  # no compiler: the step as it is
            compiled = self._compiled[key] = make()
            return compiled(self.model, *args)
        _synchronize(self.device)
        t0 = time.perf_counter()
        compiled = torch.compile(_fresh(make(), f"{kind}_step_{len(self._compiled)}"), dynamic=False,
                                 fullgraph=True, mode=self.mode, backend=self.backend)
        # CUDA graph trees warm up on a function's first call and record on its second: make both the first call
        # (the step is idempotent: the second run writes the same keys/values and returns the same rows)
        for _ in range(2 if self.cudagraphs else 1):
            out = compiled(self.model, *args)
        self._compiled[key] = compiled  # only once it compiled and ran
        _synchronize(self.device)
        self.variants.append(Variant(kind, rows, key, time.perf_counter() - t0))
        return out

    def bind(self, cache: KVCache) -> BoundStep:
        """The steps of one decode over `cache` (its encoder lengths must be final: call after encoding)."""
        return BoundStep(self, cache)


class BoundStep:
    """A CompiledStep bound to the cache of one decode: rows are given as Python lists, sent as one tensor."""

    def __init__(self, step: CompiledStep, cache: KVCache) -> None:
        self.step, self.cache = step, cache
        self.encoder_lens = (None if cache.encoder_lens is None
                             else torch.tensor(cache.encoder_lens, device=cache.k.device))
        self.shapes = (cache.k.dtype, tuple(cache.k.shape),
                       None if cache.cross_k is None else tuple(cache.cross_k.shape))

    def _caches(self) -> tuple:
        cache = self.cache
        return cache.k, cache.v, cache.cross_k, cache.cross_v, self.encoder_lens

    def _out(self, out: Tensor | None) -> Tensor | None:
        # out of the CUDA graph's pool before the next replay
        return out.clone() if self.step.cudagraphs and out is not None else out

    def token(self, tokens: list[int], seqs: list[int], positions: list[int], head: bool = True
              ) -> tuple[Tensor, Tensor | None]:
        """A whole sequential step of one row per sequence `seqs` (its token and position): the new h [R, d] after
        all G groups, and the argmax of the head (None without `head`)."""
        rows, passes = len(seqs), self.step.model.config.n_groups
        packed = torch.tensor(seqs + positions + [0] * rows + tokens, device=self.cache.k.device)
        h, ids = self.step._call("token", lambda: make_token_step(passes, head), ("token", rows, head, *self.shapes),
                                 rows, packed, *self._caches())
        return self._out(h), self._out(ids)

    def new_carry(self) -> Tensor:
        """The rows a SPEED stage carries to the next, all padding before the first: [G x B, d]."""
        model, cache = self.step.model, self.cache
        return torch.zeros(model.config.n_groups * cache.k.shape[1], model.config.d_model, device=cache.k.device,
                           dtype=cache.k.dtype)

    def stage(self, carry: Tensor, tokens: list[int], order: list[int], seqs: list[int], positions: list[int],
              groups: list[int], head: bool = True) -> tuple[Tensor, Tensor | None]:
        """A SPEED stage (`make_speed_stage`): the rows `order` picks from carry and the new tokens (one per
        sequence), at their sequences, positions and groups. Returns the new carry (its first R rows are the
        stage's rows) and the argmax of the head (None without `head`)."""
        rows = len(seqs)
        packed = torch.tensor(seqs + positions + groups + order + tokens, device=self.cache.k.device)
        carry, ids = self.step._call("stage", lambda: make_speed_stage(head), ("stage", rows, head, *self.shapes),
                                     rows, carry, packed, *self._caches())
        return self._out(carry), self._out(ids)


_STEPS: weakref.WeakKeyDictionary[SharedDecoder, CompiledStep] = weakref.WeakKeyDictionary()


def uncompiled_step(model: SharedDecoder) -> CompiledStep:
    """Make `decode.*(model, compile=True)` run the static-shape step without a compiler from now on (for tracing
    the ops a compiler is handed); returns that step."""
    step = _STEPS[model] = CompiledStep(model, backend=None)
    return step


def compiled_step(model: SharedDecoder) -> CompiledStep:
    """The CompiledStep of `model` (one per model, created on first use, kept while the model lives), so that
    later compiled decodes of the same model and shapes reuse its variants."""
    step = _STEPS.get(model)
    if step is None:
        step = _STEPS[model] = CompiledStep(model)
    return step
