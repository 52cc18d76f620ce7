"""Capture: record every op a real decoding run executes, with what a hardware model needs, as a trace file
(format: `sim.trace`).

How: a `TorchDispatchMode` sees every aten op the run dispatches, on cpu, cuda or the meta device (where no
values exist, so a 7B-shaped decoder is traced in seconds without its weights). Each op gets

- where it ran: the stage (from the decoders' `StageObserver` hooks), the module (forward hooks, and wrappers
  of the row methods that the decoders call directly), the layer, group and depth;
- FLOPs from its shapes (multiply-add = 2; one per element for elementwise ops and reductions), equal to
  `torch.utils.flop_counter` for the matrix products and attention;
- bytes read and written, split into weights / activations / KV cache by where each tensor came from: every
  tensor is tagged with its origin (a parameter, the KV cache, or computed), and views inherit the tag;
  gathers (embedding, index) read only the rows they gather; an in-place copy writes its destination;
- its dependencies: the earlier ops of its stage whose memory it reads (read after write) or overwrites (write
  after read or write), found from the storage and element range of every tensor it touches, so two rows
  writing and reading different depths or positions of one KV cache tensor stay independent. Stages need no
  edges between them: each ends with the host reading the argmaxes, a full synchronization.

Views (no kernel, no bytes) are not recorded; a view op that copies instead (`to` a new dtype, `flatten` of a
strided tensor) is. `scaled_dot_product_attention` is recorded as one op whatever
backend it lowers to (a fused kernel on cpu and cuda, a dozen math ops on meta), so traces of one run on
different devices have the same op sequence.

    python -m reference.capture.tracing --preset t5-base-4x3 --decoder speed --device meta --tokens 128 --out FILE
    python -m reference.capture.tracing --defaults     # regenerate the simulator's default traces under data/traces/
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from reference import decode
from reference.config import PRESETS, ModelConfig, get_preset
from reference.flips import FlipOracle
from reference.model import KVCache, SharedDecoder
from reference.pipeline import Row
from sim.defaults import DEFAULT_RUNS, DEFAULT_SOURCE_LEN, DEFAULT_TOKENS, DEFAULT_TRACES, default_trace_name
from sim.trace import OpRecord, StageRecord, TraceHeader, TraceWriter

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # holds reference/ and sim/: the checkout or site-packages
# Sources whose content decides what a trace holds: their hash is the trace's code revision, so that a
# regenerated default trace is byte-identical until one of them changes.
TRACE_SOURCES = ("reference/config.py", "reference/model.py", "reference/decode.py", "reference/pipeline.py",
                 "reference/flips.py", "reference/capture/tracing.py", "sim/trace.py")

aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.matmul.default,
           aten.linear.default}  # under inference_mode, linear reaches the dispatcher whole
WITH_BIAS_FIRST = {aten.addmm.default, aten.baddbmm.default}
METADATA = {aten._unsafe_view.default, aten.lift_fresh.default, aten.detach_.default}  # no kernel, no bytes
GATHERS = {aten.embedding.default, aten.index.Tensor, aten.index_select.default}  # read only what they gather
REDUCTIONS = {aten.mean.dim, aten.sum.dim_IntList, aten.argmax.default, aten.amax.default, aten.max.dim}
MOVES = {aten.copy_.default, aten.cat.default, aten.stack.default, aten.clone.default, aten._to_copy.default,
         aten.zeros.default, aten.empty.memory_format, aten.fill_.Scalar, aten.zero_.default,
         aten.lift_fresh_copy.default, aten._local_scalar_dense.default, aten.full.default, aten.arange.start}
OVERWRITES = {aten.copy_.default, aten.fill_.Scalar, aten.zero_.default}  # write their target without reading it
SDPA = "aten.scaled_dot_product_attention"
IGNORED_NAMESPACES = ("profiler",)


def code_revision() -> str:
    """A hash of the sources that decide what a trace holds."""
    digest = hashlib.sha256()
    for name in TRACE_SOURCES:
        digest.update((SOURCE_ROOT / name).read_bytes())
    return "src-" + digest.hexdigest()[:12]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def matmul_flops(func: Any, tensors: list[torch.Tensor], out: torch.Tensor) -> int:
    """2*M*N*K per product, + M*N for a bias (addmm, baddbmm, linear with bias)."""
    a = tensors[1] if func in WITH_BIAS_FIRST else tensors[0]
    has_bias = func in WITH_BIAS_FIRST or (func is aten.linear.default and len(tensors) == 3)
    return 2 * out.numel() * a.shape[-1] + (out.numel() if has_bias else 0)


def sdpa_flops(q: torch.Tensor, k: torch.Tensor) -> int:
    """Q K^T and P V: 2 * 2 * (batch * heads * Lq * Lk * head_dim), as torch.utils.flop_counter counts it."""
    return 4 * q.numel() * k.shape[-2]


class _Stage:
    """What the capture knows about where the run is."""

    def __init__(self) -> None:
        self.index, self.kind = -1, "decode"
        self.rows = 0  # tokens each op of this stage processes (rows of a decode stage, length of a prefill)
        self.groups: list[int] | None = None  # groups of the rows of the current run_group call
        self.layer: int | None = None
        self.depth: int | None = None  # prefill: depth of the block being run


Region = tuple[int, int, int]  # (storage, first element, one past the last element)


def _region(t: torch.Tensor) -> Region | None:
    """The storage elements a (possibly strided) view spans; None if it spans none."""
    if t.numel() == 0:
        return None
    lo = t.storage_offset()
    return t.untyped_storage()._cdata, lo, lo + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1


class _Accesses:
    """Who read and who last wrote each element range of each storage in the current stage, to find the ops a
    new op must follow."""

    def __init__(self) -> None:
        self.writes: dict[int, list[tuple[int, int, int]]] = {}  # storage -> [(lo, hi, op index)]
        self.reads: dict[int, list[tuple[int, int, int]]] = {}

    def clear(self) -> None:
        self.writes.clear()
        self.reads.clear()

    def record(self, op: int, reads: list[Region], writes: list[Region], fresh: list[Region]) -> set[int]:
        """Note that op `op` reads `reads` and writes `writes` (`fresh`: newly allocated outputs, whose storage
        may reuse a freed one's address); return the earlier ops it depends on."""
        for key, _, _ in fresh:
            self.writes.pop(key, None)
            self.reads.pop(key, None)
        deps = set()
        for key, lo, hi in reads:
            deps.update(j for a, b, j in self.writes.get(key, ()) if a < hi and lo < b)
        for key, lo, hi in writes:
            for table in (self.writes, self.reads):
                deps.update(j for a, b, j in table.get(key, ()) if a < hi and lo < b)
                # accesses this write covers are ordered before it; later ops need only depend on it
                table[key] = [e for e in table.get(key, ()) if not (lo <= e[0] and e[1] <= hi)]
        for key, lo, hi in reads:
            self.reads.setdefault(key, []).append((lo, hi, op))
        for key, lo, hi in writes + fresh:
            self.writes.setdefault(key, []).append((lo, hi, op))
        deps.discard(op)
        return deps


class OpCapture(TorchDispatchMode):
    """Records the ops of a decoding run of `model` (see the module docstring). `timer` times each op:
    "host" (a clock around it: right on cpu, where ops are synchronous) or None."""

    def __init__(self, model: SharedDecoder, timer: str | None = None,
                 annotate: Callable[[int], Any] | None = None) -> None:
        super().__init__()
        self.model, self.timer, self.annotate = model, timer, annotate
        self.ops: list[OpRecord] = []
        self.stages: list[StageRecord] = []
        self.where = _Stage()
        self.modules: list[str] = []
        self.origin: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> ("weight", name) | ("kv", base)
        self.weights = {}
        for name, p in model.named_parameters():
            self.origin[p] = ("weight", name)
            self.weights[name] = {"bytes": _nbytes(p), "shape": list(p.shape), "dtype": str(p.dtype)[6:]}
        self._in_composite = False
        self._undo: list[Callable[[], None]] = []
        self.accesses = _Accesses()

    # -- where we are: stages (StageObserver), modules, layers
    def begin(self, kind: str) -> None:
        self.where.index += 1
        self.where.kind = kind
        self.where.rows = 0
        if self.where.index > 0:  # ops before the first stage belong to it
            self.accesses.clear()

    def end(self, rows: list[tuple[int, Row]], predictions: list[int], commits: list[tuple[int, int, int]],
            flushes: list[tuple[int, int, int]]) -> None:
        self.stages.append(StageRecord(
            stage=self.where.index, kind=self.where.kind,
            rows=[[seq, row.position, row.group] for seq, row in rows],
            commits=[list(c) for c in commits], flushes=[list(f) for f in flushes], wall_s=None))
        for op in reversed(self.ops):  # ops before the stage's first group pass (embedding, indices)
            if op.stage != self.where.index:
                break
            if op.rows == 0:
                op.rows = len(rows)

    @contextmanager
    def attached(self) -> Iterator[OpCapture]:
        """Install the hooks and wrappers that tell the capture where it is, and the dispatch modes."""
        model, nd = self.model, self.model.config.n_unique_layers
        for name, module in model.named_modules():
            if name:
                pre = module.register_forward_pre_hook(lambda m, a, name=name: self._enter_module(name))
                post = module.register_forward_hook(lambda m, a, o: self._leave_module())
                self._undo += [pre.remove, post.remove]
            for method in ("forward_rows", "cross_rows", "encoder_kv"):
                if hasattr(module, method):
                    self._wrap(module, method, name)
        self._wrap(model, "head", "head")
        self._wrap(model, "rows", "rows")
        self._wrap(model, "new_cache", "kv_cache", after=self._tag_cache)

        def run_group(h, rows, groups, cache, inner=model.run_group):
            self.where.groups, self.where.rows = groups, len(groups)
            try:
                return inner(h, rows, groups, cache)
            finally:
                self.where.groups = None

        def prefill(cache, seq, tokens, inner=model.prefill):
            self.where.depth, self.where.rows = -1, len(tokens)
            try:
                return inner(cache, seq, tokens)
            finally:
                self.where.depth = None

        model.run_group, model.prefill = run_group, prefill
        self._undo += [lambda: delattr(model, "run_group"), lambda: delattr(model, "prefill")]
        self.nd = nd
        try:
            with _CompositeOps(self), self:
                yield self
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()

    def _wrap(self, obj: Any, method: str, name: str, after: Callable[[Any], None] | None = None) -> None:
        inner = getattr(obj, method)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._enter_module(name)
            try:
                out = inner(*args, **kwargs)
            finally:
                self._leave_module()
            if after is not None:
                after(out)
            return out

        setattr(obj, method, wrapper)
        self._undo.append(lambda: delattr(obj, method))

    def _enter_module(self, name: str) -> None:
        self.modules.append(name)
        match = re.fullmatch(r"(encoder\.)?blocks\.(\d+)", name)
        if match:
            self.where.layer = int(match.group(2))
            if self.where.depth is not None and not match.group(1):
                self.where.depth += 1  # prefill runs the blocks in depth order

    def _leave_module(self) -> None:
        self.modules.pop()

    def _tag_cache(self, cache: KVCache) -> None:
        for t in (cache.k, cache.v):
            self.origin[t] = ("kv", t.stride(0))  # depth of a view = its storage offset // stride(0)
        for t in (cache.cross_k, cache.cross_v):
            if t is not None:
                self.origin[t] = ("kv", None)

    # -- recording
    def _placement(self, tensors: list[torch.Tensor]) -> tuple[int | None, int | None, int | None, int]:
        """(group, depth, layer, rows) of an op."""
        w, nd = self.where, self.nd
        module = self.modules[-1] if self.modules else ""
        layer = w.layer if module.startswith(("blocks.", "encoder.blocks.")) else None
        if module.startswith("encoder"):
            return None, None, layer, w.rows
        if w.depth is not None and w.depth >= 0 and layer is not None:  # prefill
            return w.depth // nd, w.depth, layer, w.rows
        if w.groups is not None and layer is not None:
            for t in tensors:  # per-row attention work touches one depth of the cache
                origin = self.origin.get(t)
                if origin is not None and origin[0] == "kv" and origin[1] is not None:
                    depth = t.storage_offset() // origin[1]
                    return depth // nd, depth, layer, 1
            if len(set(w.groups)) == 1:
                return w.groups[0], w.groups[0] * nd + layer, layer, w.rows
        return None, None, layer, w.rows

    def record(self, name: str, func: Any, args: tuple, kwargs: dict, out: Any, duration_s: float | None) -> None:
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if not tensors and not outs:
            return  # a scalar helper (promote_types and the like): no kernel
        written = set()
        if func is not None:
            schema = func._schema.arguments
            written = {id(a) for a, s in zip(args, schema) if s.alias_info is not None and s.alias_info.is_write}
        reads = {"weight": 0, "act": 0, "kv": 0}
        writes = {"act": 0, "kv": 0}
        weights: list[str] = []
        read_regions: list[Region] = []
        write_regions: list[Region] = []
        for i, t in enumerate(tensors):
            kind = self._kind(t)
            region = _region(t)
            if id(t) in written:
                writes["kv" if kind == "kv" else "act"] += _nbytes(t)
                if region is not None:
                    write_regions.append(region)
                if func in OVERWRITES:
                    continue
            if region is not None:
                read_regions.append(region)
            size = _nbytes(outs[0]) if func in GATHERS and i == 0 else _nbytes(t)
            reads[kind] += size
            if kind == "weight":
                weights.append(self.origin[t][1])
        if not written:  # a fresh result: an activation, or the KV cache being allocated
            writes["kv" if self.modules[-1:] == ["kv_cache"] else "act"] += sum(_nbytes(t) for t in outs)
            for t in outs:
                self.origin.pop(t, None)  # an id reused by a fresh tensor must not inherit an old tag
        if func is None:
            flops = sdpa_flops(tensors[0], tensors[1])
        elif func in MATMULS:
            flops = matmul_flops(func, tensors, outs[0])
        elif func in MOVES or func in GATHERS or func.is_view:  # casts and copies: bytes, no arithmetic
            flops = 0
        elif func in REDUCTIONS:
            flops = tensors[0].numel()
        else:
            flops = sum(t.numel() for t in outs)
        group, depth, layer, rows = self._placement(tensors)
        fresh = [] if written else [r for r in map(_region, outs) if r is not None]
        index = len(self.ops)
        deps = self.accesses.record(index, read_regions, write_regions, fresh)
        self.ops.append(OpRecord(
            i=index, stage=max(self.where.index, 0), group=group, depth=depth, layer=layer, rows=rows,
            module=self.modules[-1] if self.modules else "", op=name,
            in_shapes=[list(t.shape) for t in tensors], in_dtypes=[str(t.dtype)[6:] for t in tensors],
            out_shapes=[list(t.shape) for t in outs], out_dtypes=[str(t.dtype)[6:] for t in outs],
            flops=flops, weight_bytes=reads["weight"], act_read_bytes=reads["act"], act_write_bytes=writes["act"],
            kv_read_bytes=reads["kv"], kv_write_bytes=writes["kv"], weights=sorted(set(weights)),
            deps=sorted(index - j for j in deps), duration_s=duration_s))

    def _kind(self, t: torch.Tensor) -> str:
        origin = self.origin.get(t)
        return "act" if origin is None else origin[0]

    def timed(self, name: str, call: Callable[[], Any]) -> tuple[Any, float | None]:
        """Run one recorded op, timed by the host clock and/or annotated for a profiler."""
        if self.annotate is not None:
            with self.annotate(len(self.ops)):
                return call(), None
        if self.timer is None:
            return call(), None
        t0 = time.perf_counter_ns()
        out = call()
        return out, (time.perf_counter_ns() - t0) * 1e-9

    def _alias(self, args: tuple, out: Any) -> Any:
        """A view shares its source's origin."""
        origin = self.origin.get(args[0]) if isinstance(args[0], torch.Tensor) else None
        if origin is not None:
            for t in tree_leaves(out):
                self.origin[t] = origin
        return out

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func.namespace in IGNORED_NAMESPACES or self._in_composite:
            return func(*args, **kwargs)
        if func in METADATA:
            return self._alias(args, func(*args, **kwargs))
        if func.is_view:
            out, duration = self.timed(str(func), lambda: func(*args, **kwargs))
            src = args[0] if isinstance(args[0], torch.Tensor) else None
            if src is None or all(t.untyped_storage()._cdata == src.untyped_storage()._cdata
                                  for t in tree_leaves(out) if isinstance(t, torch.Tensor)):
                return self._alias(args, out)
            # a view op that had to copy (a dtype cast, flattening a strided tensor): a kernel after all
        else:
            out, duration = self.timed(str(func), lambda: func(*args, **kwargs))
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
                out = func(*args, **kwargs)
                if out.device.type == "meta":
                    # the fused kernels of cpu and cuda return [..., T, H, hd] memory under an [..., H, T, hd]
                    # view, so merging the heads after them is a view; give meta's output the same layout
                    out = out.transpose(-3, -2).contiguous().transpose(-3, -2)
                return out
            finally:
                capture._in_composite = False

        out, duration = capture.timed(SDPA, call)
        capture.record(SDPA, None, tuple(args[:3]), {}, out, duration)
        return out


def workload(cfg: Any, batch: int, prompt_len: int, source_len: int, seed: int = 0
             ) -> tuple[list[list[int]], list[list[int]] | None]:
    """Seeded random prompts (and encoder inputs for an encoder-decoder model, whose decoder prompt is then
    the start token), avoiding EOS."""
    generator = torch.Generator().manual_seed(seed)
    low = 2  # ids 0 and 1 are pad/start and EOS in every family here

    def tokens(n: int) -> list[int]:
        return torch.randint(low, cfg.vocab_size, (n,), generator=generator).tolist()

    if cfg.is_encoder_decoder:
        return [[cfg.decoder_start_id] for _ in range(batch)], [tokens(source_len) for _ in range(batch)]
    return [tokens(prompt_len) for _ in range(batch)], None


def flip_oracle(cfg: Any, flips: str | None, seed: int = 0, sequential: bool = False) -> FlipOracle | None:
    """The predictor of a traced run: a named profile of data/flips/*.yaml, comma-separated rates
    ("0.09,0.04"), "model" (None: the model's own argmax; needs values, so not on meta), or, when None, the
    profile named like the preset (zero flips when G = 1)."""
    if flips == "model":
        return None
    avoid = [cfg.eos_id] if cfg.eos_id is not None else []
    if flips is None:
        if cfg.n_groups == 1 or sequential:  # every prediction is a final one: no flips to draw
            return FlipOracle([], cfg.vocab_size, seed, avoid, source="none (no early exits read)")
        flips = cfg.name
    if re.fullmatch(r"[0-9.eE+-]+(,[0-9.eE+-]+)*", flips):
        rates = [float(r) for r in flips.split(",")]
        if len(rates) != cfg.n_groups - 1:
            raise ValueError(f"--flips: {cfg.name} has G = {cfg.n_groups}, so it needs {cfg.n_groups - 1} rates, "
                             f"got {len(rates)}")
        return FlipOracle(rates, cfg.vocab_size, seed, avoid, source=f"rates {flips}")
    return FlipOracle.from_profile(flips, cfg.vocab_size, seed, avoid)


def header(model: SharedDecoder, capture: OpCapture, decoder: str, prompts: list[list[int]], tokens: int,
           predictor: FlipOracle | None, device: str, measured: bool, command: str, extra: dict | None = None
           ) -> TraceHeader:
    p = next(model.parameters())
    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(p.device)
    elif device == "meta":
        device_name = "meta (shapes only)"
    else:
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    if decoder == "sequential":
        flips = {"source": "none"}
    else:
        flips = predictor.describe() if predictor is not None else {"source": "model"}
    return TraceHeader(
        model=dict(vars(model.config)),
        decoder=decoder, dtype=str(p.dtype)[6:], batch=len(prompts), prompt_lens=[len(x) for x in prompts],
        max_new_tokens=tokens, device=device.split(":")[0], device_name=device_name,
        torch_version=torch.__version__.split("+")[0], code_revision=code_revision(), flips=flips,
        weights=capture.weights, measured=measured, command=command, extra=extra or {})


def run_decoder(model: SharedDecoder, decoder: str, prompts: list[list[int]], tokens: int,
                encoder_inputs: list[list[int]] | None, predictor: Any, observer: Any = None) -> decode.DecodeResult:
    fn = decode.speed if decoder == "speed" else decode.sequential
    return fn(model, prompts, tokens, encoder_inputs=encoder_inputs, observer=observer, predictor=predictor)


def capture_trace(preset: str | ModelConfig, decoder: str, tokens: int, out: Path, device: str = "meta",
                  dtype: torch.dtype = torch.bfloat16, batch: int = 1, prompt_len: int = 16,
                  source_len: int = DEFAULT_SOURCE_LEN, flips: str | None = None, seed: int = 0,
                  command: str = "") -> tuple[OpCapture, float]:
    """Trace one decoding run of a preset (or a config) and write it to `out`. Returns the capture and its time
    in s."""
    cfg = preset if isinstance(preset, ModelConfig) else get_preset(preset)
    predictor = flip_oracle(cfg, flips, seed, decoder == "sequential")
    if predictor is None and device == "meta":
        raise ValueError("--flips model needs real values: the meta device has none; give a profile or rates")
    model = SharedDecoder(cfg, device=device, dtype=dtype, seed=seed)
    prompts, sources = workload(cfg, batch, prompt_len, source_len, seed)
    capture = OpCapture(model)
    t0 = time.perf_counter()
    with capture.attached():
        run_decoder(model, decoder, prompts, tokens, sources, predictor, observer=capture)
    elapsed = time.perf_counter() - t0
    write_trace(out, header(model, capture, decoder, prompts, tokens, predictor, device, False, command), capture)
    return capture, elapsed


def write_trace(out: Path, head: TraceHeader, capture: OpCapture) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    stage_of = {s.stage for s in capture.stages}
    if any(op.stage not in stage_of for op in capture.ops):
        raise RuntimeError("ops outside any stage: the decoder's observer hooks were not called")
    with TraceWriter(out, head) as writer:
        ops = iter(capture.ops)
        op = next(ops, None)
        for stage in capture.stages:
            while op is not None and op.stage <= stage.stage:
                writer.op(op)
                op = next(ops, None)
            writer.stage(stage)


def write_defaults(out_dir: Path = DEFAULT_TRACES, progress: bool = True) -> list[Path]:
    """The simulator's default traces (meta device, so byte-reproducible on any machine)."""
    from tqdm import tqdm

    paths = []
    for preset, decoder in tqdm(DEFAULT_RUNS, desc="default traces", disable=not progress):
        path = out_dir / default_trace_name(preset, decoder)
        capture_trace(preset, decoder, DEFAULT_TOKENS, path, command="python -m reference.capture.tracing --defaults")
        paths.append(path)
    return paths


def add_workload_arguments(parser: argparse.ArgumentParser, required: bool, decoder_default: str | None = "speed"
                           ) -> None:
    """The flags that say which run to trace or measure (shared by the tracing and measure commands)."""
    parser.add_argument("--preset", required=required, help="model preset; one of: " + ", ".join(PRESETS))
    default = None if required else decoder_default
    parser.add_argument("--decoder", choices=("sequential", "speed"), default=default, required=required,
                        help="decoder" + (f" (default {default})" if default else ""))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32", "float64"),
                        help="parameter dtype (default bfloat16)")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                        help=f"tokens to generate per sequence (default {DEFAULT_TOKENS})")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    parser.add_argument("--prompt-len", type=int, default=16, help="decoder-only prompt length (default 16)")
    parser.add_argument("--source-len", type=int, default=DEFAULT_SOURCE_LEN,
                        help=f"encoder input length of encoder-decoder presets (default {DEFAULT_SOURCE_LEN})")
    parser.add_argument("--flips", help="SPEED flips: a profile of data/flips/*.yaml (the paper's, the trained "
                        "models'), rates per exit '0.09,0.04', or 'model' (the model's own argmax; not on meta); "
                        "default: the preset's profile")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, prompts and flips (default 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.capture.tracing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser, required=False)
    parser.add_argument("--device", default="meta", help="cpu, cuda or meta (default meta: shapes only, no weights)")
    parser.add_argument("--out", type=Path, help="trace file to write (.jsonl.gz)")
    parser.add_argument("--defaults", action="store_true", help="regenerate the default traces under data/traces/")
    args = parser.parse_args(argv)
    if args.defaults:
        for path in write_defaults():
            print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")
        return 0
    if args.preset is None or args.out is None:
        parser.error("--preset and --out are required (or --defaults)")
    try:
        capture, elapsed = capture_trace(args.preset, args.decoder, args.tokens, args.out, args.device,
                                         getattr(torch, args.dtype), args.batch, args.prompt_len, args.source_len,
                                         args.flips, args.seed,
                                         command=" ".join(["python -m reference.capture.tracing", *sys.argv[1:]]))
    except ValueError as err:
        parser.error(str(err))
    flops = sum(op.flops for op in capture.ops)
    weight_bytes = sum(op.weight_bytes for op in capture.ops)
    print(f"{args.out}: {len(capture.ops)} ops in {len(capture.stages)} stages, {flops / 1e9:.2f} GFLOP, "
          f"{weight_bytes / 1e9:.2f} GB of weights read; captured in {elapsed:.1f} s, "
          f"{args.out.stat().st_size / 1e6:.2f} MB on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
