"""Microbenchmarks, one per hardware resource, for calibrating a hwconfig (`python -m sim.fitting.calibrate` fits them).

- copy: streaming copy bandwidth over sizes (bytes read + written); the on-chip cache shows as a knee;
- gemm: matrix products per dtype as the decoder computes them (x @ W^T), large (peak rate) and at decode shapes
  past the cache (memory-bound): one row (GEMV) and a few rows;
- elementwise: a multiply over large tensors (vector units / memory), per dtype;
- attention: scaled_dot_product_attention at decode shapes (one query row over L keys, 4-D), per dtype;
- quant: weight-only quantized products as the quantized decoder runs them (reference.quant's layers on ATen's packed
  ops: int8 per channel, int4 in groups of 32) at decode rows 1 to 16, per dtype the packed ops take; rows name the
  op and its weight format (packed weight, scale and zero bytes, dequantization operations per weight and row);
- launch: host time per tiny op in eager mode (dispatch + launch), with the device kept ahead;
- kernel_min: device time of a tiny kernel; graph_gap: per-kernel cost of tiny kernels replayed as a graph;
- all_reduce: seconds per all-reduce over message sizes and world sizes, the decoder's tensor-parallel collective
  (reference.capture.collective_bench: one process per rank, gloo over 127.0.0.1 on cpu, NCCL on every GPU present).

The decode sweeps (selected with --only; not run by default, calibration reads neither), at the shapes of whole
models (`--decode-presets`: their weights, their attention heads) in one dtype (`--decode-dtype`):

- decode_gemm: x @ W^T of R rows (`--decode-rows`: 1 for a sequential step, SPEED's stage rows up to G, a batch)
  by every distinct weight shape a decode step multiplies by (q/o, k/v, fused q|k|v, FFN in, FFN out, LM head);
  rows as gemm's (m, n, k, dtype, form "linear", seconds) plus "preset" and "weight" (which projection);
- decode_attention: one query row over L keys (`--attention-lengths`) per preset's head layout, grouped-query
  (`enable_gqa`) where it has fewer KV heads, as the decoder calls it; rows as attention's plus "kv_heads" and
  "preset".

Device timing on cuda uses CUDA graphs of `repeat` back-to-back calls timed by CUDA events, so launch gaps
do not count (kernel_min and graph_gap separate what remains); on cpu the host clock around `repeat` calls (on
one thread its CPU time: reference.capture.clock).
Inputs are random (never zeros), rotated among buffers larger than the cache where the cache must not help.
Returns plain data (seconds per call), saved as JSON beside the hwconfig it calibrates.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from reference.capture.clock import clock_name, host_clock
from reference.capture.collective_bench import all_reduce_sweep, backend_facts, default_sizes
from reference.config import ModelConfig, get_preset
from reference.quant import PACKED_DTYPES, SCHEMES, Int4Linear, Int8Linear
from sim.command import check_outputs, integer, run_command
from sim.files import atomic_write
from sim.opkinds import DEQUANT_OPS


class Timer:
    """Seconds per call of `fn`, median of `trials`: CUDA graph + events on cuda, host clock on cpu (the one
    reference.capture.clock picks: on one thread its CPU time)."""

    def __init__(self, device: torch.device, trials: int = 5) -> None:
        self.device, self.trials = device, trials
        self.now = host_clock(device)

    def __call__(self, fn: Callable[[], Any], repeat: int) -> float:
        if self.device.type != "cuda":
            fn()
            times = []
            for _ in range(self.trials):
                t0 = self.now()
                for _ in range(repeat):
                    fn()
                times.append((self.now() - t0) / repeat)
            return statistics.median(times)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # warm-up: handles, workspaces
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeat):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.trials):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3 / repeat)
        return statistics.median(times)


def cycling(op: Callable[..., Any], *pools: list[torch.Tensor]) -> Callable[[], None]:
    """A call of `op` on the next set of buffers at each call (so repeated calls do not hit the cache)."""
    state = {"i": 0}

    def call() -> None:
        j = state["i"] % len(pools[0])
        state["i"] += 1
        op(*(pool[j] for pool in pools))

    return call


def _repeat_for(seconds_guess: float, budget_s: float = 0.02) -> int:
    return int(max(3, min(200, budget_s / max(seconds_guess, 1e-7))))


# A CPU's products of one row (x @ W^T, BLAS's GEMV) stream a weight of n rows of k at a rate that grows with the
# row length: each output row costs about one DRAM latency beyond its bytes (on the development machine, AMD EPYC,
# float32, past the L3: 83 ns per row plus 16 GB/s; 9.5 GB/s for the 512-wide rows of code-wide-4x3, 15-19 GB/s for
# 4096-wide ones, VALIDATION.md). So a CPU's microbenchmarks take the widths its decoders run past the cache
# (code-wide-4x3: 512 and 1408; T5-Base: 768 and 2048), never only a large model's, whose long rows stream faster.
# Few-row products (BLAS's GEMM at 2-4 rows: a SPEED stage's G rows) stream slower still, at every width.
CPU_GEMV_SHAPES = ((1, 512, 512), (1, 1408, 512), (1, 512, 1408), (1, 2048, 768), (1, 768, 2048), (1, 4096, 4096))
CPU_FEW_ROW_SHAPES = ((3, 1408, 512), (3, 512, 512), (2, 512, 1408), (4, 768, 2048), (3, 2048, 768))
# Bytes of weights a product microbenchmark rotates through, so that each call streams its weight from DRAM: past
# the largest last-level cache here (a 32 MiB L3 four times, an H100's 50 MB L2 twice), whatever the weight's size
ROTATED_WEIGHT_BYTES = 128 << 20
MAX_ROTATED_WEIGHTS = 256

# (heads, KV heads, head_dim) of the decode-attention benchmark: a small and a large model
_ATTENTION_HEADS = ((12, 12, 64), (32, 32, 128))

# Rows of the decode sweep's products: a sequential step's one row, SPEED's stage rows (2 to 4 at G up to 4), and
# batches of 8 and 16 rows; libraries pick a GEMV kernel for one row and other kernels for a few
DECODE_ROWS = (1, 2, 3, 4, 8, 16)
# Key lengths of the decode-attention sweep, 128 to 32k: from caches that fit on chip to ones far past it (a 32k
# Llama-2-7B layer holds 512 MiB of bf16 keys and values)
ATTENTION_LENGTHS = tuple(128 << i for i in range(9))
# Whose shapes the decode sweeps take by default: on a GPU Llama-2-7B (4096 wide, 32 heads of 128), T5-Base (768,
# 12 heads of 64) and TinyLlama-1.1B (grouped-query: 32 query heads on 4 KV heads); on a cpu the presets this
# machine decodes: code-wide-4x3 (512 wide, past the L3 in float32) and tiny-4x3 (grouped-query, 4 on 2)
DECODE_PRESETS = {"cuda": ("llama2-7b", "t5-base-12", "llama-1b"), "cpu": ("code-wide-4x3", "tiny-4x3")}
# Rows of the quantized products: a sequential step, SPEED's stage rows (within and past ATen's cpu row block of 4)
# and a batch; their weights (n, k) a tiny preset's (the fixed time shows), a small model's and one past a 2 MiB L2
QUANT_ROWS = (1, 2, 4, 8, 16)
QUANT_SHAPES = ((128, 128), (512, 512), (2048, 1024))
QUANT_SCHEMES = ("int8", "int4-g32")  # per channel, and the smallest groups (the most scales per weight)
SWEEPS = ("resources", "all_reduce", "decode_gemm", "decode_attention")  # what --only selects


@dataclass(frozen=True)
class DecodeSweep:
    """The decode sweeps to run: `gemm` (decode_gemm) and `attention` (decode_attention) at the shapes of
    `presets`, products of `rows` rows, attention over `lengths` keys, all in `dtype`."""

    presets: tuple[str, ...]
    dtype: str
    rows: tuple[int, ...] = DECODE_ROWS
    lengths: tuple[int, ...] = ATTENTION_LENGTHS
    gemm: bool = True
    attention: bool = True

    def configs(self) -> list[ModelConfig]:
        """The presets' configs (a ValueError names an unknown one)."""
        return [get_preset(name) for name in self.presets]


def weight_shapes(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(projection, n, k) of each distinct weight W [n, k] that a decode step of `cfg` multiplies rows by (x @ W^T),
    the first projection of a shape naming it: q and o, k and v (grouped-query: fewer rows), q|k|v fused (as
    gpt-fast and vLLM store them), the FFN's input and output, the LM head."""
    d, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
    named = [("q/o", d, d), ("k/v", kv, d), ("qkv", d + 2 * kv, d), ("ffn in", cfg.d_ff, d), ("ffn out", d, cfg.d_ff),
             ("lm head", cfg.vocab_size, d)]
    out: dict[tuple[int, int], str] = {}
    for name, n, k in named:
        out.setdefault((n, k), name)
    return [(name, n, k) for (n, k), name in out.items()]


def head_layouts(configs: list[ModelConfig]) -> list[tuple[str, int, int, int]]:
    """(preset, heads, KV heads, head_dim) of each distinct self-attention layout of `configs`."""
    out: dict[tuple[int, int, int], str] = {}
    for cfg in configs:
        out.setdefault((cfg.n_heads, cfg.n_kv_heads, cfg.head_dim), cfg.name)
    return [(name, *layout) for layout, name in out.items()]


class _Sizes(NamedTuple):
    """What each microbenchmark sweeps on one device."""

    copy: list[int]  # bytes
    gemm: list[tuple[int, int, int]]  # (m, n, k): large (peak rate), then decode shapes (GEMV, memory-bound)
    elementwise: list[int]  # elements
    attention: list[int]  # key lengths


def _sizes(cuda: bool, quick: bool) -> _Sizes:
    """The sweep: larger on cuda, fewer and smaller sizes when `quick`. Products: large ones (the peak rate), then
    decode shapes past the cache (memory-bound): one row (a GEMV) and a few rows (a SPEED stage's G rows, a batch),
    which libraries run as different kernels at different bandwidths."""
    max_copy = (2 << 30) if cuda else (256 << 20 if quick else 1 << 30)
    copy_sizes = [1 << s for s in range(16, max_copy.bit_length()) if (1 << s) <= max_copy][:: 2 if quick else 1]
    gemm_shapes = [(4096, 4096, 4096), (8192, 8192, 8192)] if cuda else [(512, 512, 512), (1024, 1024, 1024)]
    if cuda:
        gemv_shapes = [(1, 768, 768), (1, 2048, 768), (1, 768, 2048), (1, 4096, 4096), (1, 11008, 4096),
                       (1, 32128, 768)]
        few_row_shapes = [(2, 768, 2048), (3, 2048, 768), (4, 768, 2048), (4, 4096, 4096), (8, 4096, 4096)]
        if quick:  # a GEMV and a few-row product each of a small model's width and of a large one's
            gemv_shapes, few_row_shapes = gemv_shapes[1:4] + gemv_shapes[5:], few_row_shapes[:2] + few_row_shapes[3:4]
    else:  # CPU_GEMV_SHAPES: the widths this CPU decodes past its cache
        gemv_shapes, few_row_shapes = list(CPU_GEMV_SHAPES), list(CPU_FEW_ROW_SHAPES)
        if quick:
            gemv_shapes, few_row_shapes = gemv_shapes[:4], few_row_shapes[:3]
    elem_sizes = [1 << s for s in (20, 24, 27)] if cuda else [1 << s for s in (16, 20, 24)]
    attn_lengths = [128, 512, 2048] if not quick else [128, 1024]
    return _Sizes(copy_sizes, gemm_shapes + gemv_shapes + few_row_shapes, elem_sizes, attn_lengths)


@dataclass
class _Bench:
    """What every microbenchmark shares: the device, its timer, seeded random inputs and the progress bar."""

    dev: torch.device
    timer: Timer
    gen: torch.Generator
    bar: tqdm

    @property
    def cuda(self) -> bool:
        """Whether the device is a GPU (device timing, larger sizes)."""
        return self.dev.type == "cuda"

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal values (never zeros), drawn in float32 and cast to `dtype`."""
        return torch.randn(*shape, generator=self.gen, device=self.dev, dtype=torch.float32).to(dtype)


def _bench_copy(b: _Bench, sizes: list[int]) -> list[dict[str, Any]]:
    """Streaming copy bandwidth per size in bytes."""
    results = []
    for size in sizes:  # rotate buffers so sizes past the cache really stream from memory
        n = size // 4
        copies = max(1, min(8, (256 << 20) // size)) if size < (64 << 20) else 2
        src = [b.rand(n) for _ in range(copies)]
        dst = [torch.empty_like(s) for s in src]
        copy = cycling(lambda d, s: d.copy_(s), dst, src)
        seconds = b.timer(copy, _repeat_for(2 * size / (2e12 if b.cuda else 2e10)))
        results.append({"bytes": size, "seconds": seconds, "bytes_moved": 2 * size})
        b.bar.update()
    return results


def _bench_gemm(b: _Bench, dtype_name: str, shapes: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Seconds per matrix product of m rows of k by a weight of n x k in `dtype_name` (x @ W^T, `F.linear`, as the
    decoder computes its projections), per shape."""
    dtype = getattr(torch, dtype_name)
    results = []
    for m, n, k in shapes:
        weight_bytes = n * k * torch.finfo(dtype).bits // 8
        count = max(1, min(MAX_ROTATED_WEIGHTS, -(-ROTATED_WEIGHT_BYTES // weight_bytes)))  # past the cache
        linear = cycling(F.linear, [b.rand(m, k, dtype=dtype) for _ in range(count)],
                         [b.rand(n, k, dtype=dtype) for _ in range(count)])
        seconds = b.timer(linear, _repeat_for(2 * m * n * k / (5e14 if b.cuda else 5e11) + 2 * n * k / 2e12))
        results.append({"m": m, "n": n, "k": k, "dtype": dtype_name, "form": "linear", "seconds": seconds})
        b.bar.update()
    return results


def _bench_elementwise(b: _Bench, dtype_name: str, sizes: list[int]) -> list[dict[str, Any]]:
    """Seconds per elementwise multiply of two tensors of `dtype_name`, per element count."""
    dtype = getattr(torch, dtype_name)
    results = []
    for numel in sizes:
        x, y, z = b.rand(numel, dtype=dtype), b.rand(numel, dtype=dtype), torch.empty(numel, dtype=dtype, device=b.dev)
        # into a preallocated output: a cpu would otherwise map fresh pages for every large result
        seconds = b.timer(lambda x=x, y=y, z=z: torch.mul(x, y, out=z),
                          _repeat_for(3 * numel * 2 / (2e12 if b.cuda else 2e10)))
        results.append({"numel": numel, "dtype": dtype_name, "seconds": seconds})
        b.bar.update()
    return results


def _bench_quant(b: _Bench, dtype_name: str, shapes: tuple[tuple[int, int], ...] = QUANT_SHAPES,
                 rows: tuple[int, ...] = QUANT_ROWS) -> list[dict[str, Any]]:
    """Seconds per weight-only quantized product of m rows by a weight of n x k in `dtype_name`, through
    reference.quant's layers (their packed ATen ops), per scheme, shape and rows; each row names its op and weight
    format as a trace's op carries them (the weight, scales and zero points read, the dequantization work)."""
    dtype = getattr(torch, dtype_name)
    results = []
    for scheme_name in QUANT_SCHEMES:
        scheme = SCHEMES[scheme_name]
        for n, k in shapes:
            linear = torch.nn.Linear(k, n, bias=False, device=b.dev, dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(b.rand(n, k, dtype=dtype) / k ** 0.5)
            layer = (Int8Linear.from_linear(linear) if scheme.group_size is None
                     else Int4Linear.from_linear(linear, scheme.group_size))
            scales = layer.scales if scheme.group_size is None else layer.scales_and_zeros
            scale_bytes = scales.numel() * scales.element_size()
            zero_bytes = 0 if scheme.group_size is None else scale_bytes // 2
            for m in rows:
                x = b.rand(m, k, dtype=dtype)
                t0 = b.timer.now()  # one call sizes the repeats: a scalar path (float32) runs 10-30x a vector one
                layer(x)
                seconds = b.timer(lambda x=x, layer=layer: layer(x), _repeat_for(b.timer.now() - t0))
                results.append({"scheme": scheme_name, "op": layer.kernel + ".default", "m": m, "n": n, "k": k,
                                "dtype": dtype_name, "weight_dtype": f"int{scheme.bits}",
                                "group_size": scheme.group_size, "weight_shape": list(layer.weight.shape),
                                "scales_shape": list(scales.shape),
                                "weight_bytes": layer.weight.numel() * layer.weight.element_size(),
                                "scale_bytes": scale_bytes - zero_bytes, "zero_bytes": zero_bytes,
                                "dequant_ops": DEQUANT_OPS[f"int{scheme.bits}"], "seconds": seconds})
                b.bar.update()
    return results


def _bench_attention(b: _Bench, dtype_name: str, lengths: list[int] | tuple[int, ...],
                     layouts: tuple[tuple[int, int, int], ...] = _ATTENTION_HEADS) -> list[dict[str, Any]]:
    """Seconds per decode attention (one query row over `length` keys) in `dtype_name`, per head layout (heads, KV
    heads, head_dim) and length; grouped-query (`enable_gqa`) where there are fewer KV heads, as the decoder calls
    it."""
    dtype = getattr(torch, dtype_name)
    results = []
    for heads, kv_heads, head_dim in layouts:
        for length in lengths:
            # 4-D, as the decoder passes them: PyTorch's fused attention kernels take only 4-D inputs
            q = b.rand(1, heads, 1, head_dim, dtype=dtype)
            k, v = (b.rand(1, kv_heads, length, head_dim, dtype=dtype) for _ in range(2))
            gqa = kv_heads != heads
            seconds = b.timer(lambda q=q, k=k, v=v, gqa=gqa: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa),
                              50)
            results.append({"heads": heads, "kv_heads": kv_heads, "length": length, "head_dim": head_dim,
                            "dtype": dtype_name, "query_shape": list(q.shape), "seconds": seconds})
            b.bar.update()
    return results


def _bench_decode(b: _Bench, sweep: DecodeSweep) -> dict[str, list[dict[str, Any]]]:
    """The decode sweeps: products of few rows by every weight shape of the presets, and decode attention over
    every key length per head layout, each row naming the preset (and the projection) it comes from."""
    configs, out = sweep.configs(), {}
    if sweep.gemm:
        out["decode_gemm"] = []
        for cfg in configs:
            for weight, n, k in weight_shapes(cfg):
                rows = _bench_gemm(b, sweep.dtype, [(m, n, k) for m in sweep.rows])
                out["decode_gemm"] += [r | {"preset": cfg.name, "weight": weight} for r in rows]
    if sweep.attention:
        out["decode_attention"] = []
        for preset, heads, kv_heads, head_dim in head_layouts(configs):
            rows = _bench_attention(b, sweep.dtype, sweep.lengths, ((heads, kv_heads, head_dim),))
            out["decode_attention"] += [r | {"preset": preset} for r in rows]
    return out


def decode_steps(sweep: DecodeSweep) -> int:
    """Rows the decode sweeps measure (for a progress bar, and the campaign's budget)."""
    configs = sweep.configs()
    gemm = sum(len(weight_shapes(cfg)) for cfg in configs) * len(sweep.rows) if sweep.gemm else 0
    attention = len(head_layouts(configs)) * len(sweep.lengths) if sweep.attention else 0
    return gemm + attention


def _bench_launch(b: _Bench) -> dict[str, float]:
    """Host time per eager op, and device time per tiny kernel: alone (kernel_min) and as a graph node."""
    tiny = b.rand(1)
    # host cost per eager op: the device keeps up with tiny kernels, so the host paces the loop
    n_ops = 2000
    if b.cuda:
        torch.cuda.synchronize()
    t0 = b.timer.now()
    for _ in range(n_ops):
        tiny.add_(1.0)
    if b.cuda:
        torch.cuda.synchronize()
    out = {"launch_eager_s": (b.timer.now() - t0) / n_ops}
    b.bar.update()
    if b.cuda:  # the same tiny kernel as a graph: per-kernel device time plus the graph's per-node gap
        out["graph_per_kernel_s"] = b.timer(lambda: tiny.add_(1.0), 1000)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(200):
                tiny.add_(1.0)
            torch.cuda.synchronize()
        kernels = [e.device_time_total * 1e-6 for e in prof.events() if e.device_time_total > 0 and "add" in e.name]
        out["kernel_min_s"] = statistics.median(kernels) if kernels else out["graph_per_kernel_s"]
    else:
        out["graph_per_kernel_s"] = out["kernel_min_s"] = b.timer(lambda: tiny.add_(1.0), 2000)
    b.bar.update(2)
    return out


def run_microbenchmarks(device: str, dtypes: tuple[str, ...] = ("bfloat16", "float32"), quick: bool = False,
                        progress: bool = True, resources: bool = True, all_reduce: bool = True,
                        world_sizes: tuple[int, ...] | None = None, decode: DecodeSweep | None = None
                        ) -> dict[str, Any]:
    """Measure every resource of `device` ("cpu" or "cuda"); `quick` uses fewer and smaller sizes. `resources` False
    skips the per-device resources, `all_reduce` False the all-reduce sweep (over `world_sizes`, default: 2 ranks
    on a cpu when quick, else reference.capture.collective_bench.default_world_sizes); `decode`: the decode sweeps
    to run too (decode_gemm, decode_attention; none by default)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    out: dict[str, Any] = {"device": device, "device_name": torch.cuda.get_device_name(dev) if cuda else
                           f"cpu ({torch.get_num_threads()} threads)", "torch_version": torch.__version__,
                           "threads": torch.get_num_threads(), "clock": clock_name(dev)}
    if resources:
        out.update(_resource_benchmarks(dev, dtypes, quick, progress))
    if decode is not None:
        with _bench(dev, quick, decode_steps(decode), progress, "decode sweeps") as b:
            out.update(_bench_decode(b, decode))
    if all_reduce:
        if quick and world_sizes is None and not cuda:
            world_sizes = (2,)
        out["all_reduce_setup"] = backend_facts(device)
        out["all_reduce"] = all_reduce_sweep(device, world_sizes, default_sizes(device, quick),
                                             trials=3 if quick else 7, progress=progress)
    return out


@contextmanager
def _bench(dev: torch.device, quick: bool, steps: int, progress: bool, what: str) -> Iterator[_Bench]:
    """A _Bench of `dev` (fewer timing trials when `quick`; inputs seeded with 0) whose progress bar counts `steps`."""
    bar = tqdm(total=steps, desc=f"{what} on {dev}", disable=not progress)
    try:
        yield _Bench(dev, Timer(dev, trials=3 if quick else 5), torch.Generator(device=dev).manual_seed(0), bar)
    finally:
        bar.close()


def _resource_benchmarks(dev: torch.device, dtypes: tuple[str, ...], quick: bool, progress: bool) -> dict[str, Any]:
    """copy, gemm, elementwise, attention, launch, kernel_min and graph_gap of one device."""
    sizes = _sizes(dev.type == "cuda", quick)
    per_dtype = len(sizes.gemm) + len(sizes.elementwise) + len(_ATTENTION_HEADS) * len(sizes.attention)
    quant_dtypes = [d for d in dtypes if getattr(torch, d) in PACKED_DTYPES and dev.type == "cpu"]
    per_quant = len(QUANT_SCHEMES) * len(QUANT_SHAPES) * len(QUANT_ROWS)
    steps = len(sizes.copy) + len(dtypes) * per_dtype + len(quant_dtypes) * per_quant + 3  # 3: launch, kernel_min
    # and graph_gap
    out: dict[str, Any] = {}
    with _bench(dev, quick, steps, progress, "microbenchmarks") as b:
        # the order of the draws from the generator (copy, every gemm, then elementwise and attention per dtype)
        # fixes the inputs
        out["copy"] = _bench_copy(b, sizes.copy)
        out["gemm"] = [r for dtype_name in dtypes for r in _bench_gemm(b, dtype_name, sizes.gemm)]
        out["elementwise"], out["attention"] = [], []
        for dtype_name in dtypes:  # per dtype: calibration uses those of the traces it fits
            out["elementwise"] += _bench_elementwise(b, dtype_name, sizes.elementwise)
            out["attention"] += _bench_attention(b, dtype_name, sizes.attention)
        # after the others: their inputs stay those of the generator's draws before (a saved run compares)
        quant = [r for dtype_name in quant_dtypes for r in _bench_quant(b, dtype_name)]
        out |= {"quant": quant} if quant else {}
        out.update(_bench_launch(b))
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reference.capture.microbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True, help="device to measure")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller sizes (all-reduce: 2 ranks on cpu)")
    parser.add_argument("--only", nargs="+", choices=SWEEPS, default=["resources", "all_reduce"], metavar="SWEEP",
                        help="what to run, one or more of: resources (copy ... graph_gap), all_reduce (the all-reduce "
                        "sweep), decode_gemm and decode_attention (the decode sweeps, at the shapes of "
                        "--decode-presets); default: resources all_reduce, what calibration fits")
    parser.add_argument("--world-sizes", type=integer(2, 64), nargs="+", metavar="N",
                        help="ranks of the all-reduce sweep (default: every power of two up to the GPUs present, or "
                        "on cpu up to the cores, 2 with --quick)")
    parser.add_argument("--threads", type=integer(1), help="torch intra-op threads for the per-device resources "
                        "and the decode sweeps (default: torch's; the all-reduce ranks run one thread each)")
    parser.add_argument("--decode-presets", nargs="+", metavar="PRESET",
                        help="models whose weight shapes and attention head layouts the decode sweeps take "
                        f"(default on cuda: {' '.join(DECODE_PRESETS['cuda'])}; on cpu: "
                        f"{' '.join(DECODE_PRESETS['cpu'])})")
    parser.add_argument("--decode-rows", type=integer(1, 4096), nargs="+", metavar="R", default=list(DECODE_ROWS),
                        help=f"rows of the decode_gemm products (default: {' '.join(map(str, DECODE_ROWS))})")
    parser.add_argument("--attention-lengths", type=integer(1, 1 << 20), nargs="+", metavar="L",
                        default=list(ATTENTION_LENGTHS),
                        help=f"key lengths of decode_attention (default: {ATTENTION_LENGTHS[0]} to "
                        f"{ATTENTION_LENGTHS[-1]}, powers of two)")
    parser.add_argument("--decode-dtype", choices=("bfloat16", "float16", "float32"),
                        help="dtype of the decode sweeps (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the measurements")
    return parser


def _decode_sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> DecodeSweep | None:
    """The decode sweeps the flags ask for (None: neither selected); an unknown preset is a flag error."""
    if not {"decode_gemm", "decode_attention"} & set(args.only):
        return None
    sweep = DecodeSweep(tuple(args.decode_presets or DECODE_PRESETS[args.device]),
                        args.decode_dtype or ("bfloat16" if args.device == "cuda" else "float32"),
                        tuple(args.decode_rows), tuple(args.attention_lengths), "decode_gemm" in args.only,
                        "decode_attention" in args.only)
    try:
        sweep.configs()
    except ValueError as err:
        parser.error(f"--decode-presets: {err}")
    return sweep


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out": args.out})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and args.world_sizes and max(args.world_sizes) > torch.cuda.device_count():
        parser.error(f"--world-sizes {max(args.world_sizes)}: only {torch.cuda.device_count()} GPUs here")
    result = run_microbenchmarks(args.device, quick=args.quick, resources="resources" in args.only,
                                 all_reduce="all_reduce" in args.only,
                                 world_sizes=tuple(args.world_sizes) if args.world_sizes else None,
                                 decode=_decode_sweep(parser, args))
    text = json.dumps(result, indent=1)
    atomic_write(args.out, lambda tmp: tmp.write_text(text))
    print(_summary(args.out, result))
    return 0


def _size(nbytes: int) -> str:
    return f"{nbytes >> 10} KiB" if nbytes >= 1024 else f"{nbytes} B"


def _summary(out: Any, result: dict[str, Any]) -> str:
    """One line of what was measured."""
    parts = []
    if "copy" in result:
        copy_peak = max(c["bytes_moved"] / c["seconds"] for c in result["copy"])
        gemm_peak = max(2 * g["m"] * g["n"] * g["k"] / g["seconds"] for g in result["gemm"])
        parts.append(f"launch {result['launch_eager_s'] * 1e6:.1f} us/op, kernel_min "
                     f"{result['kernel_min_s'] * 1e6:.2f} us, graph {result['graph_per_kernel_s'] * 1e6:.2f} "
                     f"us/kernel, copy peak {copy_peak / 1e9:.0f} GB/s, gemm peak {gemm_peak / 1e12:.1f} TFLOP/s")
    for n in sorted({r["world_size"] for r in result.get("all_reduce", [])}):
        rows = sorted((r for r in result["all_reduce"] if r["world_size"] == n), key=lambda r: r["bytes"])
        parts.append(f"all-reduce x{n}: " + ", ".join(f"{_size(r['bytes'])} {r['seconds'] * 1e6:.0f} us"
                                                      for r in rows))
    if "all_reduce" in result and not result["all_reduce"]:
        parts.append("all-reduce: no world size to sweep (one GPU)")
    if result.get("decode_gemm"):  # the weight read per second, median over the shapes, per number of rows
        size = {"bfloat16": 2, "float16": 2, "float32": 4}
        rates: dict[int, list[float]] = {}
        for g in result["decode_gemm"]:
            rates.setdefault(g["m"], []).append(g["n"] * g["k"] * size[g["dtype"]] / g["seconds"])
        parts.append("decode_gemm weights read at " + ", ".join(f"{statistics.median(r) / 1e9:.0f} GB/s ({m} rows)"
                                                               for m, r in sorted(rates.items())))
    if result.get("decode_attention"):
        longest = max(result["decode_attention"], key=lambda a: (a["length"], a["heads"]))
        parts.append(f"decode_attention {len(result['decode_attention'])} rows, {longest['length']} keys "
                     f"({longest['heads']} heads on {longest['kv_heads']}): {longest['seconds'] * 1e6:.0f} us")
    return f"{out}: " + "; ".join(parts)


if __name__ == "__main__":
    import sys

    sys.exit(run_command(main, "python -m reference.capture.microbench"))
