"""Where a decoding run is, for every op the capture records: stage, module, layer, group, depth, sequence.

The capture learns it from the model without changing it, through rules on the model's structure (written
in the trace format's specification, sim/trace/FORMAT.md, and checked by `check_model` before every capture and
by a test, so a renamed module fails loudly instead of silently mislabelling kernels):

- blocks are modules named `blocks.L` (`encoder.blocks.L` in the encoder): an op inside one has layer L;
- norms are `RMSNorm` modules: the ops inside one are norm kernels (role "norm");
- the LM head is the model's `head` method: its product is the LM head (role "head");
- the decoders call the row methods `run_group(h, rows, groups, cache)`, `prefill(cache, seq, tokens)` and
  `encode_into(cache, seq, tokens)`, and the per-row methods `forward_rows`, `cross_rows`, `encoder_kv`,
  `rows` and `new_cache`, which are wrapped to name where the run is;
- the KV cache is `KVCache.k / .v` of shape [depth, seq, ...] and `.cross_k / .cross_v` of shape
  [layer, seq, ...]: a view of one of them names its depth (layer) and sequence by its storage offset;
- compiled decoding (reference.compiled) runs `BoundStep.token(tokens, seqs, positions, head)` (a sequential
  step: G passes, pass g at group g) and `BoundStep.stage(carry, tokens, order, seqs, positions, groups, head)`
  (a SPEED stage: one pass), each pass a call of `run_group_static`, whose `self_attention_static(attn, ...)` and
  `cross_attention_static(attn, ...)` gather every row's cache slices from the whole cache: the rows and the
  pass say which slices.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from reference import compiled
from reference.model import KVCache, RMSNorm, Rows, SharedDecoder

BLOCK_NAME = re.compile(r"(encoder\.)?blocks\.(\d+)(\..+)?")  # a block, or a module inside one
ROW_METHODS = ("forward_rows", "cross_rows", "encoder_kv")  # per-module methods the decoders call directly
MODEL_METHODS = ("head", "rows", "new_cache", "run_group", "prefill", "encode_into")
KV_FIELDS = {"k": "k", "v": "v", "cross_k": "xk", "cross_v": "xv"}  # KVCache field -> item prefix
STATIC_ATTENTION = ("self_attention_static", "cross_attention_static")  # reference.compiled, per block


def check_model(model: SharedDecoder) -> None:
    """Raise if the model no longer has the structure the capture relies on (module docstring)."""
    names = dict(model.named_modules())
    cfg = model.config
    wanted = [f"blocks.{i}" for i in range(cfg.n_unique_layers)]
    wanted += [f"encoder.blocks.{i}" for i in range(cfg.n_encoder_layers)] if cfg.is_encoder_decoder else []
    missing = [n for n in wanted if n not in names]
    missing += [f"method {m}" for m in MODEL_METHODS if not callable(getattr(model, m, None))]
    missing += [f"{n}.attn.forward_rows" for n in wanted[: cfg.n_unique_layers]
                if n in names and not callable(getattr(getattr(names[n], "attn", None), "forward_rows", None))]
    if not any(isinstance(m, RMSNorm) for m in names.values()):
        missing.append("RMSNorm modules")
    if missing:
        raise RuntimeError(f"the capture's rules no longer match the model (reference.capture.placement): "
                           f"missing {', '.join(missing)}")


class Placement:
    """Where the run is now. `module`, `role` and `place` tag each op the capture records."""

    def __init__(self, n_unique_layers: int) -> None:
        self.nd = n_unique_layers
        self.stage, self.kind = -1, "decode"
        self.rows = 0  # tokens each op of this stage processes (rows of a decode stage, length of a prefill)
        self.groups: list[int] | None = None  # groups of the rows of the current run_group call
        self.seq: int | None = None  # the one sequence of an encoder or prefill stage
        self.layer: int | None = None
        self.depth: int | None = None  # prefill: depth of the block being run
        self.static_rows: tuple[list[int], list[int]] | None = None  # compiled pass: (seqs, groups) of its rows
        self.static_passes: list[tuple[list[int], list[int]]] = []  # compiled step: (seqs, groups) of passes to come
        self.modules: list[tuple[str, str | None]] = []  # (name, role) from the outermost in

    def begin_stage(self, kind: str) -> None:
        self.stage += 1
        self.kind, self.rows, self.seq = kind, 0, None

    @property
    def module(self) -> str:
        return self.modules[-1][0] if self.modules else ""

    @property
    def role(self) -> str | None:
        """The innermost role ("norm" inside a norm, "head" inside the LM head), or None."""
        return next((role for _, role in reversed(self.modules) if role), None)

    def enter(self, name: str, role: str | None) -> None:
        self.modules.append((name, role))
        match = BLOCK_NAME.fullmatch(name)
        if match:
            self.layer = int(match.group(2))
            if self.depth is not None and not match.group(1) and not match.group(3):
                self.depth += 1  # prefill runs the blocks in depth order

    def leave(self) -> None:
        self.modules.pop()

    def place(self, kv_view: tuple[int, int] | None) -> tuple[int | None, int | None, int | None, int | None, int]:
        """(group, depth, layer, seq, rows) of an op; `kv_view` = (depth, seq) of the self-attention cache
        slice it touches, if any."""
        module, nd = self.module, self.nd
        layer = self.layer if module.startswith(("blocks.", "encoder.blocks.")) else None
        if module.startswith("encoder"):
            return None, None, layer, self.seq, self.rows
        if self.depth is not None and self.depth >= 0 and layer is not None:  # prefill
            return self.depth // nd, self.depth, layer, self.seq, self.rows
        if self.groups is not None and layer is not None:
            if kv_view is not None:  # per-row attention work touches one depth of the cache
                depth, seq = kv_view
                return depth // nd, depth, layer, seq, 1
            if len(set(self.groups)) == 1:
                return self.groups[0], self.groups[0] * nd + layer, layer, self.seq, self.rows
        return None, None, layer, self.seq, self.rows


class ModelHooks:
    """Installs, for the length of a `with`, the hooks and wrappers that keep a `Placement` current and tag the
    KV cache as the model allocates it; nothing of the model is changed after it."""

    def __init__(self, model: SharedDecoder, where: Placement, tag_cache: Callable[[KVCache], None]) -> None:
        check_model(model)
        self.model, self.where, self.tag_cache = model, where, tag_cache
        self._undo: list[Callable[[], None]] = []

    @contextmanager
    def installed(self) -> Iterator[None]:
        model, where = self.model, self.where
        try:
            for name, module in model.named_modules():
                if name:
                    role = "norm" if isinstance(module, RMSNorm) else None
                    pre = module.register_forward_pre_hook(lambda m, a, name=name, role=role: where.enter(name, role))
                    post = module.register_forward_hook(lambda m, a, o: where.leave())
                    self._undo += [pre.remove, post.remove]
                for method in ROW_METHODS:
                    if hasattr(module, method):
                        self._wrap(module, method, name)
            self._wrap(model, "head", "head", role="head")
            self._wrap(model, "rows", "rows")
            self._wrap(model, "new_cache", "kv_cache", after=self.tag_cache)
            self._around(model, "run_group", self._run_group)
            self._around(model, "prefill", self._one_sequence(prefill=True))
            self._around(model, "encode_into", self._one_sequence(prefill=False))
            for method, around in (("token", self._static_token), ("stage", self._static_stage)):
                self._around(compiled.BoundStep, method, around, restore=getattr(compiled.BoundStep, method))
            self._around(compiled, "run_group_static", self._static_pass, restore=compiled.run_group_static)
            names = {id(m): n for n, m in model.named_modules()}
            for function in STATIC_ATTENTION:
                self._around(compiled, function, lambda inner, attn, *a: self._named(names[id(attn)], inner, attn, *a),
                             restore=getattr(compiled, function))
            yield
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()

    def _run_group(self, inner: Callable[..., Any], h: torch.Tensor, rows: Rows, groups: list[int],
                   cache: KVCache) -> torch.Tensor:
        self.where.groups, self.where.rows = groups, len(groups)
        try:
            return inner(h, rows, groups, cache)
        finally:
            self.where.groups = None

    def _static_token(self, inner: Callable[..., Any], bound: compiled.BoundStep, tokens: list[int], seqs: list[int],
                      positions: list[int], head: bool = True) -> Any:
        passes = bound.step.model.config.n_groups
        return self._static_step(lambda: inner(bound, tokens, seqs, positions, head),
                                 [(seqs, [g] * len(seqs)) for g in range(passes)])

    def _static_stage(self, inner: Callable[..., Any], bound: compiled.BoundStep, carry: torch.Tensor,
                      tokens: list[int], order: list[int], seqs: list[int], positions: list[int], groups: list[int],
                      head: bool = True) -> Any:
        return self._static_step(lambda: inner(bound, carry, tokens, order, seqs, positions, groups, head),
                                 [(seqs, groups)])

    def _static_step(self, call: Callable[[], Any], passes: list[tuple[list[int], list[int]]]) -> Any:
        """A compiled step whose passes through the shared blocks run the rows (seqs, groups) of `passes`."""
        self.where.static_passes, self.where.rows = list(passes), len(passes[0][0])
        try:
            return call()
        finally:
            self.where.static_passes = []

    def _static_pass(self, inner: Callable[..., Any], *args: Any) -> Any:
        """One `run_group_static` pass of a compiled step: its rows' sequences and groups name the cache slices
        its ops touch, and a pass whose rows are all at one group names their group and depth."""
        seqs, groups = self.where.static_passes.pop(0)
        self.where.static_rows, self.where.groups = (seqs, groups), groups
        try:
            return inner(*args)
        finally:
            self.where.static_rows = self.where.groups = None

    def _named(self, name: str, inner: Callable[..., Any], *args: Any) -> Any:
        """A call that counts as module `name` (the static step's per-block attention functions)."""
        self.where.enter(name, None)
        try:
            return inner(*args)
        finally:
            self.where.leave()

    def _one_sequence(self, prefill: bool) -> Callable[..., Any]:
        """A wrapper of `prefill(cache, seq, tokens)` or `encode_into(cache, seq, tokens)`."""

        def around(inner: Callable[..., Any], cache: KVCache, seq: int, tokens: list[int]) -> None:
            self.where.seq = seq
            if prefill:
                self.where.depth, self.where.rows = -1, len(tokens)
            try:
                return inner(cache, seq, tokens)
            finally:
                self.where.depth = None

        return around

    def _around(self, obj: Any, method: str, around: Callable[..., Any], restore: Any = None) -> None:
        """Route calls of `obj.method` through `around(inner, *args)`; undone by deleting the instance attribute,
        or, for a class or module attribute, by restoring `restore`."""
        inner = getattr(obj, method)
        setattr(obj, method, lambda *args, **kwargs: around(inner, *args, **kwargs))
        self._undo.append(lambda: delattr(obj, method) if restore is None else setattr(obj, method, restore))

    def _wrap(self, obj: Any, method: str, name: str, role: str | None = None,
              after: Callable[[Any], None] | None = None) -> None:
        """Make calls of `obj.method` count as module `name` (with `role`)."""
        inner, where = getattr(obj, method), self.where

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            where.enter(name, role)
            try:
                out = inner(*args, **kwargs)
            finally:
                where.leave()
            if after is not None:
                after(out)
            return out

        setattr(obj, method, wrapper)
        self._undo.append(lambda: delattr(obj, method))
