"""The op capture: a `TorchDispatchMode` that records every aten op a decoding run dispatches, on cpu, cuda or
the meta device, as `sim.trace.OpRecord`s (see `reference.capture.tracing` for what each record holds).

Collectives of a tensor-parallel shard (`reference.parallel`: the functional collectives, under a real gloo or
NCCL group or torch's fake one on meta) are recorded as ops of kind "collective" with their group size (`ranks`,
from the process group they name); the `wait_tensor` after each runs (a real wait) but is not recorded, and hands
on the collective's output itself (what it returns in eager mode), so the ops that read it depend on the
collective (sim/trace/FORMAT.md, "Collectives").

Three concerns, three helpers: where the run is (`placement.Placement`, kept current by `placement.ModelHooks`),
which ops an op must follow (`accesses.Accesses`), and, here, what each tensor is (a weight, a KV cache slice or
an activation: `Origins`) and the FLOPs and bytes of each op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from reference.capture.accesses import Accesses
from reference.capture.clock import host_clock
from reference.capture.metaops import MetaOps, attention_output
from reference.capture.placement import KV_FIELDS, ModelHooks, Placement
from reference.model import KVCache, SharedDecoder
from reference.pipeline import Row
from reference.quant import quantized_layers
from sim.opkinds import (
    ATTENTION_OPS,
    COLLECTIVE_OPS,
    DEQUANT_OPS,
    GATHER_OPS,
    MATMUL_OPS,
    MATMULS_WITH_BIAS_FIRST,
    MOVE_OPS,
    QUANT_MATMUL_OPS,
    REDUCTION_OPS,
    SCATTER_OPS,
    kernel_class,
)
from sim.trace import QUANT_FIELD_NAMES, OpRecord, StageRecord, Trace, TraceHeader

aten = torch.ops.aten
METADATA = {aten._unsafe_view.default, aten.lift_fresh.default, aten.detach_.default}  # no kernel, no bytes
OVERWRITES = {aten.copy_.default, aten.fill_.Scalar, aten.zero_.default}  # write their target without reading it
SDPA = next(iter(ATTENTION_OPS))
WAIT = torch.ops._c10d_functional.wait_tensor.default  # a collective's wait: no kernel (sim.opkinds.WAIT_OPS)
IGNORED_NAMESPACES = ("profiler",)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def matmul_flops(name: str, tensors: list[torch.Tensor], out: torch.Tensor) -> int:
    """2*M*N*K per product, + M*N for a bias (addmm, baddbmm, linear with bias)."""
    a = tensors[1] if name in MATMULS_WITH_BIAS_FIRST else tensors[0]
    has_bias = name in MATMULS_WITH_BIAS_FIRST or (name == "aten.linear.default" and len(tensors) == 3)
    return 2 * out.numel() * a.shape[-1] + (out.numel() if has_bias else 0)


def sdpa_flops(q: torch.Tensor, k: torch.Tensor) -> int:
    """Q K^T and P V: 2 * 2 * (batch * heads * Lq * Lk * head_dim), as torch.utils.flop_counter counts it."""
    return 4 * q.numel() * k.shape[-2]


def group_size(args: tuple) -> int:
    """The ranks of the process group a functional collective names (its last string argument, the group's name:
    `all_reduce(input, op, group_name)`, `all_gather_into_tensor(input, group_size, group_name)`, ...)."""
    name = next(a for a in reversed(args) if isinstance(a, str))
    return dist.distributed_c10d._resolve_process_group(name).size()


def quantized_product(name: str, args: tuple) -> tuple[str | None, int | None, int, int, int]:
    """(weight_dtype, group_size, scale_bytes, zero_bytes, dequant_ops) of op `name` called with `args`: a packed
    quantized product's weight format (`_weight_int8pack_mm(x, w, scales)`; `_weight_int4pack_mm[_for_cpu](x, w,
    group_size, scales_and_zeros [K / group_size, N, 2]`: scale and zero point interleaved, half each); every
    other op's, none."""
    dtype = QUANT_MATMUL_OPS.get(name)
    if dtype is None:
        return None, None, 0, 0, 0
    if dtype == "int8":
        return dtype, None, nbytes(args[2]), 0, DEQUANT_OPS[dtype]
    half = nbytes(args[3]) // 2
    return dtype, int(args[2]), half, half, DEQUANT_OPS[dtype]


def op_flops(name: str, func: Any, tensors: list[torch.Tensor], outs: list[torch.Tensor]) -> int:
    """FLOPs of one op: multiply-add = 2; one per input element of a reduction, per output element otherwise;
    none for data movement."""
    if name in ATTENTION_OPS:
        return sdpa_flops(tensors[0], tensors[1])
    if name in MATMUL_OPS:
        return matmul_flops(name, tensors, outs[0])
    if name in MOVE_OPS or name in GATHER_OPS or name in COLLECTIVE_OPS or func.is_view:
        return 0  # casts and copies: bytes, no arithmetic; a collective's additions are in its time
    if name in REDUCTION_OPS:
        return tensors[0].numel()
    return sum(t.numel() for t in outs)


class Origins:
    """What each tensor is: a parameter or a quantized layer's packed weight, scales or zero points ("weight", name),
    a KV cache slice ("kv", item prefix, stride of a
    depth, stride of a sequence), or, untagged, an activation. Views inherit their source's tag."""

    def __init__(self, model: SharedDecoder) -> None:
        self.tags: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.weights: dict[str, dict[str, Any]] = {}
        quantized = [(f"{layer}.{name}", b) for layer, module in quantized_layers(model).items()
                     for name, b in module.named_buffers(recurse=False)]  # packed weights, scales, zero points
        for name, p in [*model.named_parameters(), *quantized]:
            self.tags[p] = ("weight", name)
            self.weights[name] = {"bytes": nbytes(p), "shape": list(p.shape), "dtype": str(p.dtype)[6:]}

    def kind(self, t: torch.Tensor) -> str:
        tag = self.tags.get(t)
        return "act" if tag is None else tag[0]

    def tag_cache(self, cache: KVCache) -> None:
        for name, prefix in KV_FIELDS.items():
            t = getattr(cache, name)
            if t is not None:
                self.tags[t] = ("kv", prefix, t.stride(0), t.stride(1))

    def kv_item(self, t: torch.Tensor) -> tuple[str, int, int] | None:
        """(prefix, depth or layer, seq) of a view of the KV cache, or None."""
        tag = self.tags.get(t)
        if tag is None or tag[0] != "kv":
            return None
        _, prefix, depth_stride, seq_stride = tag
        offset = t.storage_offset()
        return prefix, offset // depth_stride, offset % depth_stride // seq_stride

    def alias(self, args: tuple, out: Any) -> Any:
        """A view shares its source's origin."""
        tag = self.tags.get(args[0]) if isinstance(args[0], torch.Tensor) else None
        if tag is not None:
            for t in tree_leaves(out):
                self.tags[t] = tag
        return out

    def forget(self, outs: list[torch.Tensor]) -> None:
        """Fresh results: an id reused by a fresh tensor must not inherit an old tag."""
        for t in outs:
            self.tags.pop(t, None)


class OpCapture(TorchDispatchMode):
    """Records the ops of a decoding run of `model`. `timer` times each op: "host" (a clock around it, the one
    reference.capture.clock picks for the model's device: right on cpu, where ops are synchronous) or None;
    `annotate(i)` gives a context around op i (a profiler range). On the meta device ops run with the exact
    shortcuts of `reference.capture.metaops` unless `meta_shortcuts` is False."""

    def __init__(self, model: SharedDecoder, timer: str | None = None,
                 annotate: Callable[[int], Any] | None = None, meta_shortcuts: bool = True) -> None:
        super().__init__()
        self.model, self.timer, self.annotate = model, timer, annotate
        on_meta = meta_shortcuts and model.embed.weight.device.type == "meta"
        self.meta_ops = MetaOps() if on_meta else None
        self.ops: list[OpRecord] = []
        self.stages: list[StageRecord] = []
        self.where = Placement(model.config.n_unique_layers)
        self.origins = Origins(model)
        self.weights = self.origins.weights
        self.accesses = Accesses()
        self._in_composite = False
        self._now = host_clock(model.embed.weight.device)

    # -- the decoders' StageObserver hooks
    def begin(self, kind: str) -> None:
        self.where.begin_stage(kind)
        if self.where.stage > 0:  # ops before the first stage belong to it
            self.accesses.clear()

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list[tuple[int, int, int]],
            flushes: list[tuple[int, int, int]]) -> None:
        self.stages.append(StageRecord(
            stage=self.where.stage, kind=self.where.kind,
            rows=[[seq, row.position, row.group] for seq, row in rows],
            commits=[list(c) for c in commits], flushes=[list(f) for f in flushes], wall_s=None))
        seqs = {seq for seq, _ in rows}
        for op in reversed(self.ops):  # ops before the stage's first group pass (embedding, indices)
            if op.stage != self.where.stage:
                break
            if op.rows == 0:
                op.rows = len(rows)
            if op.seq is None and len(seqs) == 1:  # a stage of one sequence: every op is its
                op.seq = next(iter(seqs))

    def trace(self, header: TraceHeader) -> Trace:
        """The captured run as a trace with `header` (a ValueError if an op lies outside every stage)."""
        return Trace(header, self.ops, self.stages)

    @contextmanager
    def attached(self) -> Iterator[OpCapture]:
        """Install the model hooks and the dispatch modes for the length of a `with`."""
        with ModelHooks(self.model, self.where, self.origins.tag_cache).installed(), _CompositeOps(self), self:
            yield self

    # -- recording
    def _bytes(self, name: str, func: Any, args: tuple, tensors: list[torch.Tensor], outs: list[torch.Tensor]
               ) -> dict[str, Any]:
        """Bytes read and written by kind, the weights and KV items read, the first KV slice touched (its
        prefix, depth or layer, and sequence) and the memory regions touched."""
        written = set()
        if func is not None:
            schema = func._schema.arguments
            written = {id(a) for a, s in zip(args, schema) if s.alias_info is not None and s.alias_info.is_write}
        acc: dict[str, Any] = {"reads": {"weight": 0, "act": 0, "kv": 0}, "writes": {"act": 0, "kv": 0},
                               "weights": set(), "kv": [], "kv_slice": None, "read_regions": [], "write_regions": []}
        for i, t in enumerate(tensors):
            kind, where = self.origins.kind(t), self.accesses.region(t)
            item = self.origins.kv_item(t)
            if item is not None and acc["kv_slice"] is None:
                acc["kv_slice"] = item
            if id(t) in written:
                # a scatter writes only its values (the last input) into its destination, and reads none of it
                acc["writes"]["kv" if kind == "kv" else "act"] += nbytes(tensors[-1] if name in SCATTER_OPS else t)
                if where is not None:
                    acc["write_regions"].append(where)
                if func in OVERWRITES or name in SCATTER_OPS:
                    continue
            if where is not None:
                acc["read_regions"].append(where)
            acc["reads"][kind] += nbytes(outs[0]) if name in GATHER_OPS and i == 0 else nbytes(t)
            if kind == "weight":
                acc["weights"].add(self.origins.tags[t][1])
            elif item is not None:
                acc["kv"] += [i for i in self._kv_items(name, item) if i not in acc["kv"]]
        if not written:  # a fresh result: an activation, or the KV cache being allocated
            acc["writes"]["kv" if self.where.module == "kv_cache" else "act"] += sum(nbytes(t) for t in outs)
            self.origins.forget(outs)
        acc["fresh"] = [] if written else [r for r in map(self.accesses.region, outs) if r is not None]
        return acc

    def _kv_items(self, name: str, item: tuple[str, int, int]) -> list[str]:
        """The KV items ("PREFIX:SEQ:DEPTH" or, cross, "PREFIX:SEQ:LAYER") a read of the cache view `item` =
        (prefix, depth or layer, seq) touches: its own, or, where the compiled step gathers every row's slice
        from the whole cache, the slices of the step's rows."""
        prefix, where, seq = item
        rows = self.where.static_rows
        if name not in GATHER_OPS or rows is None:
            return [f"{prefix}:{seq}:{where}"]
        seqs, groups = rows
        if prefix in ("k", "v"):  # depth of row r in this block: groups[r] * Nd + layer
            return [f"{prefix}:{s}:{g * self.where.nd + (self.where.layer or 0)}" for s, g in zip(seqs, groups)]
        return [f"{prefix}:{s}:{where}" for s in dict.fromkeys(seqs)]

    def record(self, name: str, func: Any, args: tuple, kwargs: dict, out: Any, duration_s: float | None) -> None:
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if not tensors and not outs:
            return  # a scalar helper (promote_types and the like): no kernel
        acc = self._bytes(name, func, args, tensors, outs)
        # a view of one cache slice names the op's sequence, and a self-attention one its depth (the compiled
        # step's views of the whole cache name neither)
        kv_slice = acc["kv_slice"] if self.where.static_rows is None else None
        self_kv = kv_slice[1:] if kv_slice and kv_slice[0] in ("k", "v") else None
        group, depth, layer, seq, rows = self.where.place(self_kv)
        if kv_slice is not None:
            seq = kv_slice[2]
        index = len(self.ops)
        writers = [self.accesses.last_writer(self.accesses.region(t)) for t in tensors]
        deps = self.accesses.record(index, acc["read_regions"], acc["write_regions"], acc["fresh"])
        reads, writes = acc["reads"], acc["writes"]
        self.ops.append(OpRecord(
            i=index, stage=max(self.where.stage, 0), group=group, depth=depth, layer=layer, seq=seq, rows=rows,
            module=self.where.module, kind=kernel_class(name, self.where.role), op=name,
            in_shapes=[list(t.shape) for t in tensors], in_dtypes=[str(t.dtype)[6:] for t in tensors],
            out_shapes=[list(t.shape) for t in outs], out_dtypes=[str(t.dtype)[6:] for t in outs],
            flops=op_flops(name, func, tensors, outs), weight_bytes=reads["weight"], act_read_bytes=reads["act"],
            act_write_bytes=writes["act"], kv_read_bytes=reads["kv"], kv_write_bytes=writes["kv"],
            weights=sorted(acc["weights"]), kv=acc["kv"] if reads["kv"] else [],
            srcs=[0 if w is None else index - w for w in writers],
            deps=sorted(index - j for j in deps), duration_s=duration_s,
            ranks=group_size(args) if name in COLLECTIVE_OPS else None,
            **dict(zip(QUANT_FIELD_NAMES, quantized_product(name, args)))))

    def timed(self, call: Callable[[], Any]) -> tuple[Any, float | None]:
        """Run one recorded op, timed by the host clock and/or annotated for a profiler."""
        if self.annotate is not None:
            with self.annotate(len(self.ops)):
                return call(), None
        if self.timer is None:
            return call(), None
        t0 = self._now()
        out = call()
        return out, self._now() - t0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func.namespace in IGNORED_NAMESPACES or self._in_composite:
            return func(*args, **kwargs)
        if func in METADATA:
            return self.origins.alias(args, func(*args, **kwargs))
        if func is WAIT:  # waits (on a real group), then hands on the collective's output as eager mode does
            func(*args, **kwargs)
            return args[0]
        run = self.meta_ops
        out, duration = self.timed(lambda: func(*args, **kwargs) if run is None else run(func, args, kwargs))
        if func.is_view:
            src = args[0] if isinstance(args[0], torch.Tensor) else None
            if src is None or all(t.untyped_storage()._cdata == src.untyped_storage()._cdata
                                  for t in tree_leaves(out) if isinstance(t, torch.Tensor)):
                return self.origins.alias(args, out)
            # a view op that had to copy (a dtype cast, flattening a strided tensor): a kernel after all
        self.record(str(func), func, args, kwargs, out, duration)
        return out


class _CompositeOps(TorchFunctionMode):
    """Records scaled_dot_product_attention as one op, whichever kernels it lowers to on this device."""

    def __init__(self, capture: OpCapture) -> None:
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        capture = self.capture

        def call() -> Any:
            capture._in_composite = True
            try:
                if capture.meta_ops is not None:  # its output, without meta's math decomposition
                    return attention_output(*args[:3])
                out = func(*args, **kwargs)
                if out.device.type == "meta":
                    # the fused kernels of cpu and cuda return [..., T, H, hd] memory under an [..., H, T, hd]
                    # view, so merging the heads after them is a view; give meta's output the same layout
                    out = out.transpose(-3, -2).contiguous().transpose(-3, -2)
                return out
            finally:
                capture._in_composite = False

        out, duration = capture.timed(call)
        capture.record(SDPA, None, tuple(args[:3]), {}, out, duration)
        return out
