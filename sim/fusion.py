"""The fusion model: the kernels a graph compiler (torch.compile's inductor, XLA) runs for a traced stage.

Hardware-independent and torch-free: it reads only a trace's op kinds, their data flow (`srcs`: which op of the
stage wrote each input; `deps`: which ops an op must follow) and their bytes. The rules, as inductor applies them
to a decoder step:

- matrix products, the LM head and attention stay library kernels (cuBLAS / oneDNN GEMMs, fused attention),
  one kernel each, with their traced FLOPs and bytes;
- a collective (tensor parallelism) is never fused: it stays a graph node of its own between the fused kernels, as
  torch.compile traces the functional collectives (inductor emits `_c10d_functional.all_reduce_` in place on its
  buffer and `wait_tensor` after it: the kernels that read the result run after the collective), a barrier like
  a library kernel;
- every other op (pointwise, norms, reductions, gathers, copies, memsets) is fusible: it joins the fused kernel
  of an op it reads from (producer and consumer) or shares an input with (a horizontal fusion, as the rotary
  embeddings of q and k sharing cos and sin), unless the joined kernel would then both feed and depend on a
  library kernel (a cycle: the compiler would have to split it);
- a scatter into an existing buffer (compiled decoding's KV cache writes, `index_put_`) is a mutation: the
  values it writes are materialized by a kernel before it, so it never shares a kernel with the op that
  produced them; the reads of the buffer after it (the gather of the cache slices attention reads) may join it;
- a fused kernel's FLOPs are its ops' FLOPs; its bytes are only its external inputs (read once, whoever of its
  ops reads them) and the outputs used outside it or after the stage; intermediates stay in registers;
- kernels run in an order the dependencies allow, earliest traced op first, and the stage replays as one graph.

Every kernel the compiler generates has kind "fused" (its own kernel class: a generated kernel costs as the
compiler's code does, not as the eager op it replaces), a fusible op left alone too (its `op` keeps the aten
name); library kernels and collectives keep their own. `fuse` needs a format-3 trace (older ones do not record `srcs`).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import replace

from sim.opkinds import DTYPE_BYTES, MATRIX_CLASSES, SCATTER_OPS
from sim.trace import OpRecord, OpTable, Trace, gc_paused, validate

# a compiler leaves exactly the matrix-unit classes (GEMMs, the LM head, attention) to library kernels
LIBRARY_CLASSES = MATRIX_CLASSES
# what no generated kernel takes in: library kernels, and collectives (graph nodes of their own)
UNFUSED_CLASSES = (*LIBRARY_CLASSES, "collective")
FUSED_OP = "inductor.fused"


def is_fused(trace: Trace) -> bool:
    """Whether `trace` is already a fused trace (made by `fuse`)."""
    return trace.header.extra.get("fused_by") == "sim.fusion"


def _input_bytes(op: OpRecord, i: int) -> int:
    dtype = op.in_dtypes[i] if i < len(op.in_dtypes) else "float32"
    return math.prod(op.in_shapes[i]) * DTYPE_BYTES.get(dtype, 4)


def _preds(ops: list[OpRecord]) -> list[set[int]]:
    """Per op, the ops of the stage it must follow: its deps (program order when the trace has none) and the
    writers of its inputs."""
    out = []
    for i, op in enumerate(ops):
        deps = op.deps if op.deps is not None else ([1] if i else [])
        out.append({i - d for d in deps} | {i - s for s in op.srcs if s})
    return out


class _Kernels:
    """The kernels of a stage being formed: members (op indices) per node, each op's node, each node's parents and
    children (the nodes it depends on directly, and those depending on it directly) and ancestors (every node it
    depends on, transitively: the parents' closure, kept exact through joins and merges; a bit set, bit n for node
    n) and the ops whose kernels it must stay apart from (a scatter's value producer).

    A node n reaches node m through a third node exactly when n is an ancestor of one of m's other parents (the
    ancestors being exact and the graph acyclic), so the cycle checks look at the few parents, not at every
    ancestor; and what a node newly depends on reaches the nodes depending on it through their children links, not
    through every node of the stage. Both keep the work near linear in the stage, where a 70B model's stage of
    thousands of ops would otherwise be quadratic."""

    def __init__(self) -> None:
        self.members: list[list[int]] = []
        self.node_of: list[int] = []
        self.parents: list[set[int]] = []
        self.children: list[set[int]] = []
        self.ancestors: list[int] = []  # bit sets
        self.apart: list[set[int]] = []
        self.alive: set[int] = set()

    def add(self, i: int, node: int | None, parents: set[int], anc: int, apart: set[int]) -> int:
        """Put op i (depending on nodes `parents` directly and `anc` in all, a bit set, kept apart from the kernels
        of ops `apart`) into `node`, or into a new node when None."""
        if node is None:
            node = len(self.members)
            for per_node in (self.members, self.parents, self.children, self.apart):
                per_node.append([] if per_node is self.members else set())
            self.ancestors.append(0)
            self.alive.add(node)
        self.members[node].append(i)
        self.node_of.append(node)
        self.apart[node] |= apart
        for p in parents - {node} - self.parents[node]:
            self.parents[node].add(p)
            self.children[p].add(node)
        self._depend(node, anc & ~(1 << node))
        return node

    def joinable(self, node: int, parents: set[int]) -> bool:
        """Whether an op whose parent nodes are `parents` may join `node` without a cycle: no path from `node`
        through another of them."""
        return not any(self.ancestors[p] >> node & 1 for p in parents if p != node)

    def kept_apart(self, a: int, b: int) -> bool:
        """Whether nodes a and b hold ops that must not share a kernel."""
        return (any(self.node_of[j] == b for j in self.apart[a])
                or any(j < len(self.node_of) and self.node_of[j] == a for j in self.apart[b]))

    def descendants(self, node: int) -> set[int]:
        """Every node that depends on `node`, through the children links."""
        found: set[int] = set()
        todo = [node]
        while todo:
            for c in self.children[todo.pop()]:
                if c not in found:
                    found.add(c)
                    todo.append(c)
        return found

    def _depend(self, node: int, more: int) -> None:
        """`node` now also depends on the nodes of bit set `more`: so does every node that depends on it."""
        self.ancestors[node] |= more
        for x in self.descendants(node):
            self.ancestors[x] |= more & ~(1 << x)

    def cycle(self, a: int, b: int) -> bool:
        """Whether one kernel holding nodes a and b would depend on itself: a path a -> x -> b or b -> x -> a."""
        return not self.joinable(a, self.parents[b]) or not self.joinable(b, self.parents[a])

    def merge(self, a: int, b: int) -> None:
        """Node b into node a."""
        for j in self.members[b]:
            self.node_of[j] = a
        self.members[a] += self.members[b]
        self.apart[a] |= self.apart[b]
        self.alive.discard(b)
        for x in self.descendants(b):  # they depended on b: now on a
            self.ancestors[x] = self.ancestors[x] & ~(1 << b) | 1 << a
        for c in self.children[b]:
            self.parents[c].discard(b)
            self.parents[c].add(a)
        for p in self.parents[b]:
            self.children[p].discard(b)
            self.children[p].add(a)
        self.parents[a] = (self.parents[a] | self.parents[b]) - {a, b}
        self.children[a] = (self.children[a] | self.children[b]) - {a, b}
        both = ~(1 << a | 1 << b)
        self._depend(a, (self.ancestors[b] | self.ancestors[a]) & both)
        self.ancestors[a] &= both

    def try_merge(self, nodes: list[int]) -> None:
        """Merge the nodes into the first one, each where that makes no cycle."""
        for other in nodes[1:]:
            target = self.node_of[self.members[nodes[0]][0]]
            if (other in self.alive and other != target and not self.cycle(target, other)
                    and not self.kept_apart(target, other)):
                self.merge(target, other)


def stage_groups(ops: list[OpRecord]) -> list[list[int]]:
    """The kernels of one stage as groups of op indices (within the stage), in launch order: each fusible op
    joins the earliest kernel it reads from or shares an input with, and merges the others it could join; the
    fusible kernels that feed one library kernel merge too (its prologue). No merge makes a cycle."""
    preds = _preds(ops)
    fusible = [op.kind not in UNFUSED_CLASSES for op in ops]
    k = _Kernels()
    readers: dict[int, list[int]] = {}  # producing op -> fusible ops that read it
    for i, op in enumerate(ops):
        parents = {k.node_of[j] for j in preds[i]}
        anc = 0  # a bit set
        for p in parents:
            anc |= 1 << p | k.ancestors[p]
        producers = sorted({i - s for s in op.srcs if s})
        # a scatter stays apart from the producer of the values it writes (the last input), and from its kernel
        apart = {i - op.srcs[-1]} if op.op in SCATTER_OPS and op.srcs and op.srcs[-1] else set()
        target = None
        candidates: list[int] = []
        if fusible[i]:
            joinable = [j for j in producers if j not in apart]
            related = [j for j in joinable if fusible[j]] + [r for j in joinable for r in readers.get(j, ())]
            candidates = sorted({k.node_of[j] for j in related} - {k.node_of[j] for j in apart})
            target = next((n for n in candidates if k.joinable(n, parents)), None)
            for j in producers:
                readers.setdefault(j, []).append(i)
        node = k.add(i, target, parents, anc, apart)
        if target is not None:
            k.try_merge([node] + [n for n in candidates if n != node])
        elif not fusible[i]:  # a library kernel or a collective: the fusible kernels that feed it form its prologue
            k.try_merge(sorted({k.node_of[j] for j in producers if fusible[j]}))
    alive = sorted(k.alive)
    renumber = {n: r for r, n in enumerate(alive)}
    members = [sorted(k.members[n]) for n in alive]
    node_of = [renumber[k.node_of[i]] for i in range(len(ops))]
    return [members[n] for n in _launch_order(members, node_of, preds)]


def _launch_order(members: list[list[int]], node_of: list[int], preds: list[set[int]]) -> list[int]:
    """Kernels in an order the dependencies allow, the one holding the earliest op first."""
    after: list[set[int]] = [set() for _ in members]
    waiting = [0] * len(members)
    for i, ps in enumerate(preds):
        for j in ps:
            a, b = node_of[j], node_of[i]
            if a != b and b not in after[a]:
                after[a].add(b)
                waiting[b] += 1
    ready = [(members[n][0], n) for n in range(len(members)) if not waiting[n]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for m in after[n]:
            waiting[m] -= 1
            if not waiting[m]:
                heapq.heappush(ready, (members[m][0], m))
    if len(order) != len(members):
        raise AssertionError("sim.fusion: the fused kernels of a stage depend on each other in a cycle")
    return order


def _common(values: list[int | None]) -> int | None:
    return values[0] if len(set(values)) == 1 else None


def fused_op(ops: list[OpRecord], group: list[int], consumers: list[set[int]]) -> OpRecord:
    """One kernel covering ops `group` of a stage (`consumers[j]`: the ops of the stage that read op j's
    output). Its `i`, `deps` and `srcs` are set by `fuse`."""
    if len(group) == 1:
        op = ops[group[0]]
        return op if op.kind in UNFUSED_CLASSES else replace(op, kind="fused")
    inside = set(group)
    act_read = act_write = 0
    weights: dict[str, int] = {}  # distinct weights: a norm's weight read by two of its ops is read once
    read_outside: set[int] = set()  # producers outside the kernel whose output it already reads
    ins: list[tuple[list[int], str]] = []
    outs: list[tuple[list[int], str]] = []
    for j in group:
        op = ops[j]
        skipped = 0
        for k, s in enumerate(op.srcs):
            producer = j - s if s else None
            if producer in inside or producer in read_outside:
                skipped += _input_bytes(op, k)  # an intermediate, or an input another op of it read
                continue
            if producer is not None:
                read_outside.add(producer)
            ins.append((op.in_shapes[k], op.in_dtypes[k] if k < len(op.in_dtypes) else "float32"))
        act_read += max(0, op.act_read_bytes - skipped)
        if not consumers[j] or consumers[j] - inside:  # used after the kernel, or after the stage
            act_write += op.act_write_bytes
            outs += list(zip(op.out_shapes, op.out_dtypes))
        for w in op.weights:
            weights.setdefault(w, op.weight_bytes // len(op.weights))
    members = [ops[j] for j in group]
    return replace(
        members[0], group=_common([m.group for m in members]), depth=_common([m.depth for m in members]),
        layer=_common([m.layer for m in members]), seq=_common([m.seq for m in members]),
        rows=max(m.rows for m in members), kind="fused", op=FUSED_OP, in_shapes=[x[0] for x in ins],
        in_dtypes=[x[1] for x in ins], out_shapes=[x[0] for x in outs], out_dtypes=[x[1] for x in outs],
        flops=sum(m.flops for m in members), weight_bytes=sum(weights.values()), act_read_bytes=act_read,
        act_write_bytes=act_write, kv_read_bytes=sum(m.kv_read_bytes for m in members),
        kv_write_bytes=sum(m.kv_write_bytes for m in members), weights=sorted(weights),
        kv=list(dict.fromkeys(item for m in members for item in m.kv)), srcs=[], duration_s=None)


class _Plan:
    """How one stage structure fuses (`stage_groups`): its kernels as groups of slots, the ops of the stage that
    read each op's output, and per kernel the kernels it must follow (as distances back)."""

    def __init__(self, ops: list[OpRecord]) -> None:
        self.groups = stage_groups(ops)
        self.consumers: list[set[int]] = [set() for _ in ops]
        for c, op in enumerate(ops):
            for s in op.srcs:
                if s:
                    self.consumers[c - s].add(c)
        preds = _preds(ops)
        kernel_of = {j: k for k, group in enumerate(self.groups) for j in group}
        self.deps = [sorted(k - b for b in {kernel_of[p] for j in group for p in preds[j]} - {k})
                     for k, group in enumerate(self.groups)]


class FusedTrace:
    """`trace` (compact, as `Trace` is) has one op per kernel the compiler runs; `covers[k]` lists the indices
    (in the source trace's `ops`) of the traced ops kernel k covers, in program order (expanded on first use)."""

    def __init__(self, trace: Trace, plans: list[_Plan], sizes: list[int]) -> None:
        self.trace = trace
        self._plans, self._sizes = plans, sizes  # per stage: its plan, and its ops in the source trace
        self._covers: list[list[int]] | None = None

    @property
    def covers(self) -> list[list[int]]:
        if self._covers is None:
            first, self._covers = 0, []
            for plan, size in zip(self._plans, self._sizes):
                self._covers += [[first + j for j in group] for group in plan.groups]
                first += size
        return self._covers


@gc_paused()
def fuse(trace: Trace) -> FusedTrace:
    """The trace of the kernels a compiler runs for `trace` (module docstring), and what each covers. Stages
    alike in what fusion reads (kinds, srcs, deps) share one plan; stages of the same ops share their kernels.
    The traced ops are checked first (`sim.trace.validate`), so that an error names the traced op; the fused trace
    is then `checked`: its kernels are made of checked ops (their counts are sums, which the format's bounds on
    one op do not bound: the engine's own guard on kernel times does)."""
    validate(trace)
    if trace.header.version < 3:
        raise ValueError(f"compiled launch fuses a trace by its data flow, which format {trace.header.version} does "
                         "not record (srcs): re-trace it with python -m reference.capture.tracing (format 3 or later)")
    flow: dict[tuple, int] = {}  # what fusion reads of an op -> id
    flow_of_op = [flow.setdefault((op.kind, tuple(op.srcs), None if op.deps is None else tuple(op.deps)), len(flow))
                  for op in trace.distinct]
    plans: dict[tuple[int, ...], _Plan] = {}
    fused: dict[tuple[int, ...], tuple[int, ...]] = {}  # a stage's op ids -> its kernels' ids in `table`
    table = OpTable()
    stage_plans, stage_ids, executed = [], [], 0
    for stage, ids in zip(trace.stages, trace.stage_op_ids):
        key = tuple(map(flow_of_op.__getitem__, ids))
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _Plan([trace.distinct[k] for k in ids])
        kernels = fused.get(ids)
        if kernels is None:
            ops = [trace.distinct[k] for k in ids]
            kernels = fused[ids] = tuple(
                table.intern(replace(fused_op(ops, group, plan.consumers), i=executed + k, stage=stage.stage,
                                     deps=plan.deps[k], srcs=[], duration_s=None))
                for k, group in enumerate(plan.groups))
        stage_plans.append(plan)
        stage_ids.append(kernels)
        executed += len(kernels)
    header = replace(trace.header, measured=False, extra={**trace.header.extra, "fused_by": "sim.fusion"})
    return FusedTrace(Trace.compact(header, list(trace.stages), table.ops, stage_ids, checked=True), stage_plans,
                      list(map(len, trace.stage_op_ids)))
