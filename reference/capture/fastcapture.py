"""Fast capture: each distinct stage structure is recorded as the decoder executes it, its repetitions derived.

Decoding repeats itself: two decode stages that run the same rows execute the same ops, and only the ops that
read the KV cache see it longer. A `FastCapture` is an `OpCapture` (it records every op it lets run, the same
way) that learns this per stage structure and stops executing what it can derive:

- A stage runs its prologue (embedding the tokens, the rows' rotary tables: recorded as always) up to its
  first group pass (`run_group`, or the compiled step's `token` / `stage`), where its structure is known: the
  stage kind, the pass, the prologue's ops, and the rows' sequences, groups and positions relative to the first
  row's. Stages of one structure differ only in that first position `p`.
- Every field of every op after the prologue is then an affine function of `p` (a row's KV length is `p` plus
  a constant: the shapes, FLOPs and KV bytes of the ops that read the cache grow with it; everything else is
  constant). So per structure the first two stages are recorded in full and give each field's slope; the third
  is recorded too and must equal the rule's prediction, field for field, before the rule is trusted. A
  structure whose slopes are not whole numbers, or whose third stage disagrees, is recorded in full from then on.
- Later stages of a trusted structure are derived: the group passes and the LM head are not executed (they
  return placeholders of the right shapes: the meta device has no values, and the flip oracle, which is still
  called for every prediction, decides the tokens), and their ops are the rule's. Encoder and prefill stages
  (one per sequence) are always recorded.

It runs on the meta device only (elsewhere the values matter); `tests/test_fastcapture.py` checks that its
traces equal the full capture's, op for op and field for field. The result is compact (`sim.trace`): the
distinct ops (`table`) and per stage their ids (`stage_ids`), the stage records as the full capture has them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from reference import compiled
from reference.capture.opcapture import OpCapture
from reference.model import SharedDecoder
from reference.pipeline import Row
from sim.trace import OpRecord, OpTable, Trace, TraceHeader, body_key, quant_fields

# how a stage is handled once its structure is known
RECORD, DERIVE = "record", "derive"
# the stages of a structure recorded in full: two give the slopes, the third checks them
LEARNING_STAGES = 3


def _numbers(op: OpRecord) -> tuple[tuple, list[int]]:
    """(what must stay equal, the integers that may move) of an op's fields but i and stage: the shapes, the
    optional placement ints, rows, FLOPs, bytes, srcs and deps; everything else (names, dtypes, weights, KV
    items, duration, a collective's group size, a quantized product's weight format, list lengths, which
    optionals are null) is in the first part."""
    numbers: list[int] = []
    for shapes in (op.in_shapes, op.out_shapes):
        for shape in shapes:
            numbers += shape
    optional = (op.group, op.depth, op.layer, op.seq)
    numbers += [v for v in optional if v is not None]
    numbers += [op.rows, op.flops, op.weight_bytes, op.act_read_bytes, op.act_write_bytes, op.kv_read_bytes,
                op.kv_write_bytes, *op.srcs, *(op.deps or ())]
    fixed = (op.module, op.kind, op.op, tuple(op.in_dtypes), tuple(op.out_dtypes), tuple(op.weights), tuple(op.kv),
             op.duration_s, op.ranks, quant_fields(op), tuple(map(len, op.in_shapes)), tuple(map(len, op.out_shapes)),
             tuple(v is None for v in optional), len(op.srcs), None if op.deps is None else len(op.deps))
    return fixed, numbers


def _rebuild(like: OpRecord, numbers: list[int]) -> OpRecord:
    """`like` with the integers of `_numbers` replaced by `numbers` (in the same order)."""
    it = iter(numbers)
    take = lambda n: list(itertools.islice(it, n))  # noqa: E731
    in_shapes = [take(len(s)) for s in like.in_shapes]
    out_shapes = [take(len(s)) for s in like.out_shapes]
    group, depth, layer, seq = (None if v is None else next(it) for v in (like.group, like.depth, like.layer, like.seq))
    rows, flops, weight, act_read, act_write, kv_read, kv_write = take(7)
    srcs = take(len(like.srcs))
    deps = None if like.deps is None else take(len(like.deps))
    return OpRecord(like.i, like.stage, group, depth, layer, seq, rows, like.module, like.kind, like.op, in_shapes,
                    list(like.in_dtypes), out_shapes, list(like.out_dtypes), flops, weight, act_read, act_write,
                    kv_read, kv_write, list(like.weights), list(like.kv), srcs, deps, like.duration_s, like.ranks,
                    *quant_fields(like))


class _Rule:
    """The ops after the prologue of a stage structure as affine functions of its first row's position: from
    the stages recorded at positions `a` and `b`. None where the two disagree in more than integers or where a
    slope is not a whole number."""

    def __init__(self, table: OpTable, a: tuple[int, tuple[int, ...]], b: tuple[int, tuple[int, ...]]) -> None:
        (self.base, self.ids), (other, other_ids) = a, b
        self.moving: list[tuple[int, OpRecord, list[int], list[int]]] = []  # slot, op at base, its ints, slopes
        self.valid = len(self.ids) == len(other_ids) and other != self.base
        for j, (x, y) in enumerate(zip(self.ids, other_ids)):
            if x == y or not self.valid:
                continue
            (fixed_x, at_a), (fixed_y, at_b) = _numbers(table.ops[x]), _numbers(table.ops[y])
            delta = other - self.base
            if fixed_x != fixed_y or len(at_a) != len(at_b) or any((v - u) % delta for u, v in zip(at_a, at_b)):
                self.valid = False
                break
            self.moving.append((j, table.ops[x], at_a, [(v - u) // delta for u, v in zip(at_a, at_b)]))

    def at(self, position: int) -> list[OpRecord | int] | None:
        """The ops after the prologue for a stage whose first row is at `position`: an id for an op that does not
        move, a derived OpRecord for one that does; None if a derived integer would be negative."""
        out: list[OpRecord | int] = list(self.ids)
        steps = position - self.base
        for j, like, numbers, slopes in self.moving:
            moved = [n + steps * s for n, s in zip(numbers, slopes)]
            if min(moved, default=0) < 0:
                return None
            out[j] = _rebuild(like, moved)
        return out


class _Structure:
    """What is known of one stage structure: the stages recorded so far (first row's position, op ids after the
    prologue), and the rule once checked (`trusted`), or `broken`."""

    def __init__(self) -> None:
        self.recorded: list[tuple[int, tuple[int, ...]]] = []
        self.rule: _Rule | None = None
        self.trusted = self.broken = False

    def learn(self, position: int, ids: tuple[int, ...], table: OpTable) -> None:
        """A stage of this structure recorded in full: learn from it, or check the rule on it."""
        if self.broken or self.trusted or any(p == position for p, _ in self.recorded):
            return
        self.recorded.append((position, ids))
        if len(self.recorded) == LEARNING_STAGES - 1:
            self.rule = _Rule(table, *self.recorded)
            self.broken = not self.rule.valid
        elif len(self.recorded) == LEARNING_STAGES:
            predicted = self.rule.at(position)
            self.trusted = predicted is not None and [
                op if type(op) is int else table.intern(op) for op in predicted] == list(ids)
            self.broken = not self.trusted


class FastCapture(OpCapture):
    """An OpCapture of a decoding run on the meta device that records each stage structure's first stages and
    derives the rest (module docstring). After the run: `stages` (the stage records), `table` (the distinct ops)
    and `stage_ids` (per stage, the ids of its ops); `trace(header)` puts them together. `derived` counts the
    stages derived, `structures` the structures met."""

    def __init__(self, model: SharedDecoder) -> None:
        if model.embed.weight.device.type != "meta":
            raise ValueError("the fast capture runs on the meta device (no values; a flip oracle decides the "
                             "predictions); capture a run with values in full (OpCapture)")
        super().__init__(model)
        self.table = OpTable()
        self.stage_ids: list[tuple[int, ...]] = []
        self.structures: dict[tuple, _Structure] = {}
        self.derived = 0
        self._executed = 0  # ops executed before the current stage
        self._first = 0  # index in `ops` of the current stage's first recorded op
        self._ended = 0  # index in `ops` where the last stage ended
        self._mode: str | None = None  # RECORD or DERIVE once the stage's structure is known
        self._prologue = 0  # ops recorded before the structure was known
        self._structure: _Structure | None = None
        self._position = 0
        self._derived: list[OpRecord | int] | None = None

    # -- the decoders' StageObserver hooks
    def begin(self, kind: str) -> None:
        self._close_gap()
        super().begin(kind)
        first = len(self.ops) if self.where.stage > 0 else 0  # ops before the first stage belong to it
        self._first, self._mode, self._structure, self._derived = first, None, None, None

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list[tuple[int, int, int]],
            flushes: list[tuple[int, int, int]]) -> None:
        super().end(rows, predictions, commits, flushes)
        known = len(self.table.ops)
        recorded = [self.table.intern(op) for op in self.ops[self._first :]]
        if self._mode == DERIVE:
            ids = (*recorded, *(op if type(op) is int else self.table.intern(op) for op in self._derived))
            self.derived += 1
        else:
            ids = tuple(recorded)
            if self._mode == RECORD:
                self._structure.learn(self._position, ids[self._prologue :], self.table)
        self._number(ids, known)
        self.stage_ids.append(ids)
        self._executed += len(ids)
        self._ended, self._mode = len(self.ops), None  # what runs before the next stage is recorded

    def _number(self, ids: tuple[int, ...], known: int) -> None:
        """An op new to the table (an id from `known` on): this is its first execution."""
        for j, k in enumerate(ids):
            if k >= known:
                self.table.ops[k].i, self.table.ops[k].stage = self._executed + j, self.where.stage

    def _close_gap(self) -> None:
        """Ops recorded after a stage ended and before the next one begins belong to the stage before (as the full
        capture has them: compiled SPEED decoding allocates its carry there)."""
        if self.stage_ids and len(self.ops) > self._ended:
            known = len(self.table.ops)
            extra = tuple(self.table.intern(op) for op in self.ops[self._ended :])
            self._number(extra, known)
            self.stage_ids[-1] += extra
            self._executed += len(extra)
            self._ended = len(self.ops)

    def trace(self, header: TraceHeader) -> Trace:
        """The captured run as a (compact) trace with `header`."""
        self._close_gap()
        return Trace.compact(header, self.stages, self.table.ops, self.stage_ids)

    # -- the first group pass of a stage: where its structure is known
    def _decide(self, method: str, seqs: list[int], positions: list[int], groups: list[int]) -> None:
        prologue = self.ops[self._first :]
        key = (self.where.kind, method, tuple(map(body_key, prologue)), tuple(seqs), tuple(groups),
               tuple(p - positions[0] for p in positions))
        self._structure = self.structures.setdefault(key, _Structure())
        self._position, self._prologue = positions[0], len(prologue)
        self._derived = self._structure.rule.at(self._position) if self._structure.trusted else None
        self._mode = RECORD if self._derived is None else DERIVE

    def _group_pass(self, method: str, inner: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A group pass: the stage's structure is known at the first; a derived stage does not run it (nor, compiled,
        the step it is part of: placeholders of the step's outputs stand in)."""
        if method == "run_group":  # (h, rows, groups, cache)
            rows, groups = args[1], args[2]
            seqs, positions = rows.seqs, rows.positions
        elif method == "token":  # BoundStep.token: (bound, tokens, seqs, positions[, head]): every group
            seqs, positions = args[2], args[3]
            groups = [0] * len(seqs)
        else:  # BoundStep.stage: (bound, carry, tokens, order, seqs, positions, groups[, head])
            seqs, positions, groups = args[4], args[5], args[6]
        if self._mode is None:
            self._decide(method, seqs, positions, groups)
        if self._mode != DERIVE:
            return inner(*args, **kwargs)
        if method == "run_group":
            return args[0]
        head = kwargs.get("head", args[-1] if len(args) > (4 if method == "token" else 7) else True)
        first = args[0].cache.k  # the step's device and dtype
        ids = torch.empty(len(seqs), dtype=torch.int64, device=first.device) if head else None
        if method == "token":  # (h [R, d], argmax)
            return first.new_empty(len(seqs), self.model.config.d_model), ids
        return args[1], ids  # (the carry, argmax)

    def _head(self, inner: Callable[..., Any], h: torch.Tensor) -> torch.Tensor:
        """The LM head (what `exit_logits` calls); a derived stage's logits are a placeholder (of a tensor-parallel
        shard: this rank's vocabulary columns, as its head gives)."""
        if self._mode != DERIVE:
            return inner(h)
        shard = self.model.vocab_shard
        width = self.model.config.vocab_size if shard is None else shard.stop - shard.start
        return h.new_empty((*h.shape[:-1], width))

    @contextmanager
    def attached(self) -> Iterator[FastCapture]:
        """The full capture's hooks, and around them those that skip what a derived stage need not run."""
        undo: list[Callable[[], None]] = []

        def around(obj: Any, name: str, wrapper: Callable[..., Any], restore: Any = None) -> None:
            inner = getattr(obj, name)
            setattr(obj, name, lambda *args, **kwargs: wrapper(inner, *args, **kwargs))
            undo.append(lambda: delattr(obj, name) if restore is None else setattr(obj, name, restore))

        with super().attached():
            try:
                # the placement's wrappers of the model's methods (instance attributes, which the decoders do not
                # look for, unlike an exit_logits of its own) are restored on the way out
                model = self.model
                around(model, "run_group", lambda inner, *a: self._group_pass("run_group", inner, *a),
                       model.run_group)
                around(model, "head", self._head, model.head)
                for method in ("token", "stage"):
                    around(compiled.BoundStep, method,
                           lambda inner, *a, m=method, **kw: self._group_pass(m, inner, *a, **kw),
                           getattr(compiled.BoundStep, method))
                yield self
            finally:
                for step in reversed(undo):
                    step()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if self._mode == DERIVE:  # a derived stage's placeholders and argmax: not recorded
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)
