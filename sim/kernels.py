"""Kernel classes and their cost models, each bounded below by its roofline floor.

A trace op becomes a `Kernel`: its class (the trace's `kind`: matmul, lm_head, attention, gather, norm,
elementwise, reduction, memset, fused), FLOPs, bytes split into weights / activations / KV cache, its problem shape
(a matrix product's M, N, K; attention's batch, heads, query and key lengths) and the on-chip items it reads
(weights by id, KV cache slices by sequence and depth, as the trace names them). What a kernel costs on a device
(`kernel_cost`) depends on the hardware and on how many of its bytes the cache model served on chip:

    compute_s = the library kernel's waves of CTA tiles (GPU matrix products: sim.matmul; fused attention:
                `attention_times`), waves of hwconfig tiles over the cores (a CPU), or FLOPs at the vector rate
    memory_s  = max(dram_bytes / achieved DRAM bw, all_bytes / (L2 bw * eff))   every byte passes the L2; the
                achieved DRAM bandwidth is DRAM bw * eff, less for a GPU kernel of too few CTAs to stream at
                full bandwidth (sim.matmul.stream_bandwidth)
    time_s    = max(max(compute_s, memory_s) + fixed_s, kernel_min_s)   (fixed_s: fits per class or op kind)
    floor_s   = max(flops / peak rate, dram_bytes / DRAM bw, all_bytes / L2 bw)  (<= time_s: eff <= 1)

A memory-bound kernel so costs its fixed time plus its bytes at the achieved bandwidth: the ramp of achieved
bandwidth with size (small transfers do not saturate DRAM).

Efficiencies combine one way: a resource's efficiency (hwconfig `efficiency.matrix | vector | dram | l2`)
times the kernel's fit, the most specific one there is (under compiled launch `compiled.CLASS` first; then
`ops.CLASS.KIND`, else `classes.CLASS`, else 1): its `efficiency` for compute time, its `memory_efficiency` (by
default the same) for memory time; the fit also brings `fixed_s`. All factors are in (0, 1], so no kernel is
projected below its floor.

A collective (kind "collective", tensor parallelism) is not a kernel of the compute units: its time is the
interconnect model's (`sim.interconnect.collective_time`: NCCL's algorithm and protocol for its bytes and group
size on the hwconfig's `interconnect`, gloo's ring on a CPU), bound "comm"; its floor is the same model at the
link's line rate (efficiency 1, no fitted collective_latency_s): NCCL's own latency and the bytes at the full
link bandwidth, which no collective beats (the model is monotone in bandwidth).

Kernels that overlap (`sim.engine`, streams > 1) share the device: a kernel's demand is the share of the
compute units and of the memory system it keeps busy while it runs alone (`demand`).

A weight-only quantized product (the trace's `weight_dtype` int8 or int4: PyTorch's packed ops) reads its packed
weights with their scales and zero points (its `weight_bytes`: a quarter of bf16's for int4, half for int8) and
dequantizes them on the vector/ALU units (`dequant_s`): `dequant_ops` operations per weight, once per block of the
hwconfig's `dequant.rows_per_pass` rows (the kernel's row tile: tinygemm's 16 on a GPU, ATen's 4 on a CPU), at
`dequant.ops_per_s` times the vector efficiency, so the work grows with the rows of a SPEED stage and can bound it.
The product itself runs where the real kernel runs it: on a GPU on the tensor cores (the library model above, the
dequantization overlapping it on the CUDA cores: compute_s = max of the two), on a CPU on the vector units (ATen's
AVX-512 kernels, which dequantize on the same ports: compute_s = the sum).

On a CPU (kind cpu) a matmul's output is cut into the hwconfig's tiles (tile.m x tile.n, the m side shrunk to the
rows there are), one tile per core per wave, and attention into blocks of query rows, as before the GPU library
models: the CPU's BLAS is not cuBLAS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sim.hardware import HwConfig, HwConfigError, KernelFit
from sim.interconnect import collective_time
from sim.matmul import MATRIX_ROW_BLOCK, plan, row_blocks, stream_bandwidth, sustained_compute_s
from sim.opkinds import COLLECTIVE_OPS, KERNEL_CLASSES, MATRIX_CLASSES
from sim.trace import OpRecord, check_op, op_collective_bytes

CLASSES = KERNEL_CLASSES
PRODUCT_CLASSES = ("matmul", "lm_head")
# A CPU product of at most this many rows has a fit per row count where calibrate fitted one (`rows_kind`): SPEED's
# stages run G = 2 to 4 rows, which MKL streams at different rates (docs/cpu-dram-products.md).
MAX_FEW_ROWS = 4
# Fused attention kernels (FlashAttention, cuDNN, PyTorch's CPU flash kernel) give each compute unit a block of
# 64 query rows of one (batch, head): the tile count that waves are cut from.
ATTENTION_QUERY_TILE = 64
# Keys per block of FlashAttention-2's split-KV (flash-decoding) kernel by head dim: `block_n = head_size <= 64 ?
# 256 : (head_size <= 128 ? 128 : 64)` in set_params_splitkv (csrc/flash_attn/flash_api.cpp; PyTorch's copy in
# aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp), as run_mha_fwd_splitkv_dispatch launches it.
KV_SPLIT_BLOCKS = ((64, 256), (128, 128))  # (largest head dim, keys per block); beyond: 64
KV_SPLIT_BLOCK_WIDE = 64
# At most 128 splits (num_splits_heuristic(..., max_splits=128)); of the splits that change the blocks per split
# (`is_split_eligible`), the fewest whose wave efficiency is within 85% of the best (the same heuristic).
MAX_KV_SPLITS = 128
KV_SPLIT_WAVE_EFFICIENCY = 0.85
# FlashAttention-2 splits KV only when the (batch x heads x query blocks) CTAs fill less than 80% of the compute
# units (`if (batch_nheads_mblocks >= 0.8f * num_SMs) { return 1; }` in num_splits_heuristic).
KV_SPLIT_BELOW_UNITS = 0.8


@dataclass(frozen=True, slots=True)
class Kernel:
    """What a trace op asks of the device (hardware-independent)."""

    cls: str
    op: str  # the op kind, for per-op fits: the aten name (`op_kind`)
    dtype: str
    flops: int
    weight_bytes: int
    act_bytes: int  # activations read + written
    kv_read_bytes: int
    kv_write_bytes: int
    reads: tuple[tuple[str, int], ...]  # on-chip cache items read: (key, bytes): weights by id, KV slices
    tiles: int  # independent output tiles on a CPU (matrix classes), for wave quantization
    tile_flops: float  # FLOPs of one such tile, its rows padded to whole MATRIX_ROW_BLOCKs as matrix units take them
    padding: float = 1.0  # padded / real rows of a tile: vector units (a CPU, a GPU's fp32) do no padded work
    collective: tuple[str, int, int] | None = None  # a collective's (kind, bytes as NCCL counts them, group size)
    # the problem: a matrix product's (M, N, K); attention's (batch, query heads, key-value heads, query length,
    # key length, head dim); () for the other classes
    shape: tuple[int, ...] = ()
    weight_dtype: str | None = None  # a weight-only quantized product's weight format (int8, int4); None: float
    dequant_ops: int = 0  # its operations dequantizing one weight for one row (the trace's dequant_ops)

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.act_bytes + self.kv_read_bytes + self.kv_write_bytes


def op_kind(op: OpRecord) -> str:
    """The aten name, with a suffix where PyTorch runs one op as different kernels: a matrix product of one
    row is a matrix-vector product (`.gemv`: BLAS and cuBLAS pick other kernels than for two or more rows);
    attention on other than 4-D inputs runs the unfused math path (`.math`: several kernels, ~5x longer at
    decode shapes on an H200), since PyTorch's fused attention kernels take only 4-D inputs."""
    if op.kind == "attention" and op.in_shapes and len(op.in_shapes[0]) != 4:
        return op.op + ".math"
    if op.kind in ("matmul", "lm_head") and op.out_shapes and math.prod(op.out_shapes[0][:-1]) == 1:
        return op.op + ".gemv"
    return op.op


def kernel_of(op: OpRecord, tile_m: int, tile_n: int, checked: bool = False) -> Kernel:
    """The hardware-independent view of one op; `tile_m`, `tile_n` from the hwconfig cut matmuls into tiles. An op
    that breaks the trace format's rules is refused (`sim.trace.check_op`: an `OpError` naming op and field),
    unless `checked` (it is known to pass them: `sim.trace.validate`)."""
    if not checked:
        check_op(op)
    cls = op.kind
    dtype = (op.out_dtypes or op.in_dtypes or ["float32"])[0]
    tiles, tile_flops, padding, shape = 1, float(op.flops), 1.0, ()
    if cls in PRODUCT_CLASSES and op.out_shapes:
        n = op.out_shapes[0][-1]
        m = max(1, math.prod(op.out_shapes[0]) // max(n, 1))
        k = op.flops / max(2 * m * n, 1)
        tm, tn = min(tile_m, row_blocks(m)), min(tile_n, row_blocks(n))
        tiles = -(-m // tm) * -(-n // tn)
        tile_flops = 2.0 * tm * tn * k
        padding = tm / min(tile_m, m)
        shape = (m, max(n, 1), max(1, round(k)))
    elif cls == "attention" and op.in_shapes:
        q = op.in_shapes[0]  # [..., heads, Lq, head_dim]: a tile per (batch, head, block of query rows)
        tiles = max(1, math.prod(q[:-2]) * -(-q[-2] // ATTENTION_QUERY_TILE))
        tile_flops = op.flops / tiles
        shape = attention_shape(op.in_shapes)
    reads: list[tuple[str, int]] = []
    if op.weights:
        share = op.weight_bytes // len(op.weights)
        reads += [(w, share) for w in op.weights]
    if op.kv_read_bytes and op.kv:
        share = op.kv_read_bytes // len(op.kv)
        reads += [(item, share) for item in op.kv]
    collective = None
    if cls == "collective":  # its dtype: what it moves (sim.trace's checks: one of DTYPE_BYTES)
        kind = COLLECTIVE_OPS[op.op]
        collective, dtype = (kind, op_collective_bytes(op, kind), op.ranks), op.in_dtypes[0]
    return Kernel(cls, op_kind(op), dtype, op.flops, op.weight_bytes, op.act_read_bytes + op.act_write_bytes,
                  op.kv_read_bytes, op.kv_write_bytes, tuple(reads), tiles, tile_flops, padding, shape=shape,
                  collective=collective, weight_dtype=op.weight_dtype, dequant_ops=op.dequant_ops)


def attention_shape(in_shapes: list[list[int]]) -> tuple[int, ...]:
    """(batch, query heads, key-value heads, query length, key length, head dim) of an attention op whose inputs
    are queries [..., heads, Lq, head_dim] and keys [..., kv_heads, Lk, head_dim] (fewer dimensions: one batch,
    one head; no keys given: as many as queries). Grouped-query attention reads each key-value head once."""
    q = [max(1, d) for d in in_shapes[0]]
    keys = [max(1, d) for d in in_shapes[1]] if len(in_shapes) > 1 and len(in_shapes[1]) >= 2 else q
    heads = q[-3] if len(q) >= 3 else 1
    kv_heads = min(heads, keys[-3]) if len(keys) >= 3 else heads
    return (math.prod(q[:-3]), heads, kv_heads, q[-2], keys[-2], q[-1])


@dataclass(frozen=True, slots=True)
class KernelCost:
    time_s: float
    floor_s: float  # max of the three floors below
    bound: str  # compute | memory | latency
    compute_s: float
    memory_s: float
    floor_compute_s: float  # FLOPs at the peak rate
    floor_dram_s: float  # DRAM bytes at peak DRAM bandwidth
    floor_l2_s: float  # all bytes at peak L2 bandwidth
    floor_link_s: float = 0.0  # a collective: its time at the link's line rate (module docstring)
    units: float = 1.0  # share of the compute units the kernel's CTAs (tiles) occupy, in (0, 1]


def library_kernels(hw: HwConfig) -> bool:
    """Whether `hw` runs the GPU libraries' kernels (cuBLAS, FlashAttention) that `sim.matmul` and
    `attention_times` model: a GPU or an edge GPU; a CPU runs its own BLAS (the tile model of `kernel_of`)."""
    return hw.kind != "cpu"


def product_times(k: Kernel, hw: HwConfig, dram_bytes: int, fit: KernelFit) -> tuple[float, float, float]:
    """(compute_s, memory_s, units) of a matrix product on a GPU: the library's kernel for its shape (sim.matmul),
    its tensor-core work past the power window at the sustained rate (sim.matmul.sustained_compute_s), with DRAM
    bytes at the achieved bandwidth (hwconfig dram efficiency x the fit's memory efficiency)."""
    peak, eff = hw.peak, hw.efficiency
    m, n, inner = k.shape
    rate = hw.matrix_flops(k.dtype)
    unit_rate = rate / peak.compute_units * eff.matrix * fit.efficiency
    bandwidth = peak.dram_bandwidth_bytes_per_s * eff.dram * fit.bandwidth_share
    p = plan(m, n, inner, peak.compute_units, peak.clock_hz, (hw.tile.m, hw.tile.n), unit_rate,
             rate > hw.vector_flops(k.dtype), dram_bytes, bandwidth)
    compute_s = sustained_compute_s(p.compute_s, eff.matrix_sustained)
    return compute_s, p.memory_s, min(p.ctas, peak.compute_units) / peak.compute_units


def kv_split_block(head_dim: int) -> int:
    """Keys per block of FlashAttention-2's split-KV kernel for `head_dim` (KV_SPLIT_BLOCKS)."""
    return next((keys for dim, keys in KV_SPLIT_BLOCKS if head_dim <= dim), KV_SPLIT_BLOCK_WIDE)


def kv_splits(ctas: int, key_blocks: int, units: int) -> int:
    """FlashAttention-2's split of the keys (flash-decoding, num_splits_heuristic) for `ctas` (batch x heads x
    query blocks) CTAs over `key_blocks` blocks of keys on `units` compute units: none when the CTAs fill the
    units; else, of the splits that change the blocks per split, the fewest whose wave efficiency is within
    KV_SPLIT_WAVE_EFFICIENCY of the best."""
    if ctas >= KV_SPLIT_BELOW_UNITS * units:
        return 1
    limit = min(MAX_KV_SPLITS, units, key_blocks)

    def wave_efficiency(splits: int) -> float:
        if splits > 1 and -(-key_blocks // splits) == -(-key_blocks // (splits - 1)):
            return 0.0  # the same blocks per split as one split fewer: not a split of its own
        waves = ctas * splits / units
        return waves / math.ceil(waves)

    best = max(wave_efficiency(s) for s in range(1, limit + 1))
    return next(s for s in range(1, limit + 1) if wave_efficiency(s) >= KV_SPLIT_WAVE_EFFICIENCY * best)


def attention_times(k: Kernel, hw: HwConfig, dram_bytes: int, fit: KernelFit) -> tuple[float, float, float]:
    """(compute_s, memory_s, units) of fused attention on a GPU (FlashAttention-2, PyTorch's flash backend): a CTA
    per (batch, query head, block of ATTENTION_QUERY_TILE query rows), the keys split (`kv_splits`) when those CTAs
    leave compute units idle, as at decode; the KV cache read once per key-value head (grouped-query attention), at
    the bandwidth the CTAs reach (sim.matmul.stream_bandwidth); compute in waves of the CTAs."""
    peak, eff = hw.peak, hw.efficiency
    batch, heads, _, q_len, kv_len, head_dim = k.shape
    ctas = batch * heads * -(-q_len // ATTENTION_QUERY_TILE)
    splits = kv_splits(ctas, -(-kv_len // kv_split_block(head_dim)), peak.compute_units)
    rate = hw.matrix_flops(k.dtype)
    rows = MATRIX_ROW_BLOCK if rate > hw.vector_flops(k.dtype) else 1  # a decode query row pays for 16 on MMAs
    padding = max(1.0, min(ATTENTION_QUERY_TILE, rows) / min(ATTENTION_QUERY_TILE, q_len))
    waves = -(-(ctas * splits) // peak.compute_units)
    compute_s = waves * k.flops * padding / (ctas * splits) / (rate / peak.compute_units * eff.matrix * fit.efficiency)
    bandwidth = peak.dram_bandwidth_bytes_per_s * eff.dram * fit.bandwidth_share
    memory_s = dram_bytes / stream_bandwidth(ctas * splits, peak.compute_units, peak.clock_hz, bandwidth)
    return compute_s, memory_s, min(ctas * splits, peak.compute_units) / peak.compute_units


def streamed_rows(k: Kernel, dram_bytes: int) -> float:
    """Output rows of product `k` whose weights stream from DRAM when `dram_bytes` of its bytes do (the rows
    times the share of its weights that come from DRAM, at most all of them); 0 for other kernels."""
    if k.cls not in PRODUCT_CLASSES or not k.shape:
        return 0.0
    return k.shape[1] * min(1.0, dram_bytes / max(k.weight_bytes, 1))


def tiled_times(k: Kernel, hw: HwConfig, dram_bytes: int, fit: KernelFit) -> tuple[float, float, float]:
    """(compute_s, memory_s, units) of every other kernel: matrix classes in waves of the hwconfig's tiles over
    the compute units (a CPU; a GPU's unfused attention), the rest at the vector rate; DRAM bytes at bandwidth,
    plus, for a product whose fit has a `row_latency_s` (a CPU GEMV), that latency per `streamed_rows`."""
    peak, eff = hw.peak, hw.efficiency
    units = 1.0
    if k.cls in MATRIX_CLASSES:
        # a CPU's weight-only quantized kernels multiply on the vector units (ATen's int8/int4 kernels: AVX-512 FMA)
        rate = hw.vector_flops(k.dtype) if k.weight_dtype else hw.matrix_flops(k.dtype)
        waves = -(-k.tiles // peak.compute_units)
        # only matrix units (a dtype faster there than on the vector units) compute the padded rows
        tile_flops = k.tile_flops if rate > hw.vector_flops(k.dtype) else k.tile_flops / k.padding
        compute_s = waves * tile_flops / (rate / peak.compute_units * (eff.vector if k.weight_dtype else eff.matrix))
        units = min(k.tiles, peak.compute_units) / peak.compute_units
    else:
        compute_s = k.flops / (hw.vector_flops(k.dtype) * eff.vector)
    memory_s = dram_bytes / (peak.dram_bandwidth_bytes_per_s * eff.dram) / fit.bandwidth_share
    if fit.row_latency_s:
        memory_s += streamed_rows(k, dram_bytes) * fit.row_latency_s
    return compute_s / fit.efficiency, memory_s, units


def dequant_s(k: Kernel, hw: HwConfig, fit: KernelFit) -> float:
    """Seconds of a weight-only quantized product's dequantizing arithmetic on `hw`: each of its N x K weights
    dequantized once per block of `hw.dequant.rows_per_pass` rows (the kernel's row tile: more rows, more passes),
    `k.dequant_ops` operations each, at the dequant rate times the vector efficiency and the kernel's fit. A
    HwConfigError where `hw` has no dequant figures."""
    if hw.dequant is None:
        raise HwConfigError(hw.path, "dequant", f"missing: a weight-only {k.weight_dtype} product ({k.op}) needs the "
                            "dequantization figures (dequant.ops_per_s, dequant.rows_per_pass)")
    m, n, inner = k.shape
    passes = -(-m // hw.dequant.rows_per_pass)
    return k.dequant_ops * n * inner * passes / (hw.dequant.ops_per_s * hw.efficiency.vector * fit.efficiency)


def rows_kind(k: Kernel) -> str | None:
    """The op kind of a CPU few-row product with its rows (`aten.linear.default.rows3`): a CPU's BLAS streams two,
    three and four rows at rates of their own (three the slowest; docs/cpu-dram-products.md), so calibrate fits
    each row count the microbenchmarks take; None for other kernels."""
    if k.cls not in PRODUCT_CLASSES or not k.shape or not 2 <= k.shape[0] <= MAX_FEW_ROWS:
        return None
    return f"{k.op}.rows{k.shape[0]}"


def fit_kind(k: Kernel, hw: HwConfig) -> str:
    """The op kind whose fit times `k` on `hw`: on a CPU a few-row product's `rows_kind` where `hw` fits it, else
    the kernel's op kind."""
    rows = None if library_kernels(hw) else rows_kind(k)
    return rows if rows is not None and rows in hw.ops.get(k.cls, {}) else k.op


def kernel_cost(k: Kernel, hw: HwConfig, dram_bytes: int, compiled: bool = False) -> KernelCost:
    """Device time of kernel `k` when `dram_bytes` of its bytes come from device memory (the rest on chip);
    `compiled`: a kernel of a compiled graph (`hw.fit`). A collective's is the interconnect's (`collective_cost`)."""
    if k.collective is not None:
        return collective_cost(k, hw)
    peak = hw.peak
    fit = hw.fit(k.cls, fit_kind(k, hw), compiled)
    if library_kernels(hw) and k.cls in PRODUCT_CLASSES and k.shape:
        compute_s, memory_s, units = product_times(k, hw, dram_bytes, fit)
    elif library_kernels(hw) and k.cls == "attention" and k.shape and not k.op.endswith(".math"):
        compute_s, memory_s, units = attention_times(k, hw, dram_bytes, fit)
    else:
        compute_s, memory_s, units = tiled_times(k, hw, dram_bytes, fit)
    if k.weight_dtype is not None:
        # a GPU dequantizes on its CUDA cores while its tensor cores multiply (two pipelines, which tinygemm's and
        # Marlin's warps keep busy at once); a CPU's vector ports do the one, then the other
        work_s = dequant_s(k, hw, fit)
        compute_s = max(compute_s, work_s) if library_kernels(hw) else compute_s + work_s
    # every byte passes the L2
    memory_s = max(memory_s, k.bytes / (peak.l2_bandwidth_bytes_per_s * hw.efficiency.l2 * fit.bandwidth_share))
    rate = hw.matrix_flops(k.dtype) if k.cls in MATRIX_CLASSES else hw.vector_flops(k.dtype)
    floors = (k.flops / rate, dram_bytes / peak.dram_bandwidth_bytes_per_s, k.bytes / peak.l2_bandwidth_bytes_per_s)
    floor_s = max(floors)
    # a kernel's fixed time (start, drain) and its work add up; no kernel is shorter than an empty one
    time_s = max(max(compute_s, memory_s, floor_s) + fit.fixed_s, hw.host.kernel_min_s)
    if max(hw.host.kernel_min_s, fit.fixed_s) > max(compute_s, memory_s):
        bound = "latency"  # fixed costs, not FLOPs or bytes, set the time
    else:
        bound = "compute" if compute_s >= memory_s else "memory"
    return KernelCost(time_s, floor_s, bound, compute_s, memory_s, *floors, units=units)


def collective_cost(k: Kernel, hw: HwConfig) -> KernelCost:
    """A collective's time on `hw`'s interconnect (bound "comm"), and its floor: the same collective at the link's
    line rate (module docstring). An `InterconnectError` (naming the hwconfig field) where `hw` has no interconnect
    or its node is smaller than the group."""
    kind, nbytes, ranks = k.collective
    time_s = collective_time(kind, nbytes, ranks, k.dtype, hw).time_s
    line_rate = replace(hw.interconnect, efficiency=1.0, collective_latency_s=0.0) if hw.interconnect else None
    floor_s = collective_time(kind, nbytes, ranks, k.dtype, replace(hw, interconnect=line_rate)).time_s
    return KernelCost(time_s, floor_s, "comm", 0.0, 0.0, 0.0, 0.0, 0.0, floor_s)


def demand(k: Kernel, cost: KernelCost, hw: HwConfig) -> tuple[float, float]:
    """(compute, memory): the shares of the compute units and of memory bandwidth that kernel `k` keeps busy
    when it runs alone, each in [0, 1]. A kernel with fewer CTAs (tiles) than units occupies only some units;
    a latency-bound kernel occupies little of either, so it overlaps almost freely. A collective runs on the link
    (sim.engine): none of either (NCCL's kernels take one block per channel, a few of the units, and move a decode
    step's few kilobytes; not modelled)."""
    if cost.time_s <= 0:
        return 0.0, 0.0
    return min(1.0, cost.units * cost.compute_s / cost.time_s), min(1.0, cost.memory_s / cost.time_s)
