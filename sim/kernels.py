"""Kernel classes and their cost models, each bounded below by its roofline floor.

A trace op becomes a `Kernel`: its class (the trace's `kind`: matmul, lm_head, attention, gather, norm,
elementwise, reduction, memset), FLOPs, bytes split into weights / activations / KV cache, and the on-chip items
it reads (weights by id, KV cache slices by sequence and depth, as the trace names them). What a kernel costs
on a device (`kernel_cost`) depends on the hardware and on how many of its bytes the cache model served on chip:

    compute_s = waves * tile_flops / (unit rate * efficiency)       matmul, lm_head, attention (matrix units)
              = flops / (vector rate * efficiency)                  everything else
    memory_s  = max(dram_bytes / (DRAM bw * eff), all_bytes / (L2 bw * eff))   every byte passes the L2
    time_s    = max(compute_s, memory_s, kernel_min_s) + fixed_s   (fits per class or op kind, optional)
    floor_s   = max(flops / peak rate, dram_bytes / DRAM bw, all_bytes / L2 bw)  (<= time_s: eff <= 1)

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

Waves: a matmul's output is cut into tiles (tile.m x tile.n, the m side shrunk to the rows there are, rounded
up to MATRIX_ROW_BLOCK on matrix units, which take rows in blocks; vector units compute only the real rows), one
tile per compute unit per wave, so wave quantization against the unit count shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sim.hardware import HwConfig
from sim.interconnect import collective_time
from sim.opkinds import COLLECTIVE_OPS, KERNEL_CLASSES, MATRIX_CLASSES
from sim.trace import OpRecord, check_op, op_collective_bytes

CLASSES = KERNEL_CLASSES
# Tensor cores take the rows (M) of a product in blocks of 16 (mma shapes m16n8k16 on Ampere and Hopper): a
# product of fewer rows pays for 16 on the matrix units.
MATRIX_ROW_BLOCK = 16
# Fused attention kernels (FlashAttention, cuDNN, PyTorch's CPU flash kernel) give each compute unit a block of
# 64 query rows of one (batch, head): the tile count that waves are cut from.
ATTENTION_QUERY_TILE = 64


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
    tiles: int  # independent output tiles (matrix classes), for wave quantization
    tile_flops: float  # FLOPs of one tile, its rows padded to whole MATRIX_ROW_BLOCKs as matrix units take them
    padding: float = 1.0  # padded / real rows of a tile: vector units (a CPU, a GPU's fp32) do no padded work
    collective: tuple[str, int, int] | None = None  # a collective's (kind, bytes as NCCL counts them, group size)

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


def _row_blocks(n: int) -> int:
    """Rows `n` rounded up to whole MATRIX_ROW_BLOCKs."""
    return max(MATRIX_ROW_BLOCK, -(-n // MATRIX_ROW_BLOCK) * MATRIX_ROW_BLOCK)


def kernel_of(op: OpRecord, tile_m: int, tile_n: int, checked: bool = False) -> Kernel:
    """The hardware-independent view of one op; `tile_m`, `tile_n` from the hwconfig cut matmuls into tiles. An op
    that breaks the trace format's rules is refused (`sim.trace.check_op`: an `OpError` naming op and field),
    unless `checked` (it is known to pass them: `sim.trace.validate`)."""
    if not checked:
        check_op(op)
    cls = op.kind
    dtype = (op.out_dtypes or op.in_dtypes or ["float32"])[0]
    tiles, tile_flops, padding = 1, float(op.flops), 1.0
    if cls in ("matmul", "lm_head") and op.out_shapes:
        n = op.out_shapes[0][-1]
        m = max(1, math.prod(op.out_shapes[0]) // max(n, 1))
        k = op.flops / max(2 * m * n, 1)
        tm, tn = min(tile_m, _row_blocks(m)), min(tile_n, _row_blocks(n))
        tiles = -(-m // tm) * -(-n // tn)
        tile_flops = 2.0 * tm * tn * k
        padding = tm / min(tile_m, m)
    elif cls == "attention" and op.in_shapes:
        q = op.in_shapes[0]  # [..., heads, Lq, head_dim]: a tile per (batch, head, block of query rows)
        tiles = max(1, math.prod(q[:-2]) * -(-q[-2] // ATTENTION_QUERY_TILE))
        tile_flops = op.flops / tiles
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
                  op.kv_read_bytes, op.kv_write_bytes, tuple(reads), tiles, tile_flops, padding, collective)


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


def kernel_cost(k: Kernel, hw: HwConfig, dram_bytes: int, compiled: bool = False) -> KernelCost:
    """Device time of kernel `k` when `dram_bytes` of its bytes come from device memory (the rest on chip);
    `compiled`: a kernel of a compiled graph (`hw.fit`). A collective's is the interconnect's (`collective_cost`)."""
    if k.collective is not None:
        return collective_cost(k, hw)
    peak, eff = hw.peak, hw.efficiency
    if k.cls in MATRIX_CLASSES:
        rate = hw.matrix_flops(k.dtype)
        waves = -(-k.tiles // peak.compute_units)
        # only matrix units (a dtype faster there than on the vector units) compute the padded rows
        tile_flops = k.tile_flops if rate > hw.vector_flops(k.dtype) else k.tile_flops / k.padding
        compute_s = waves * tile_flops / (rate / peak.compute_units * eff.matrix)
    else:
        rate = hw.vector_flops(k.dtype)
        compute_s = k.flops / (rate * eff.vector)
    memory_s = max(dram_bytes / (peak.dram_bandwidth_bytes_per_s * eff.dram),
                   k.bytes / (peak.l2_bandwidth_bytes_per_s * eff.l2))
    fit = hw.fit(k.cls, k.op, compiled)
    compute_s, memory_s = compute_s / fit.efficiency, memory_s / fit.bandwidth_share
    floors = (k.flops / rate, dram_bytes / peak.dram_bandwidth_bytes_per_s, k.bytes / peak.l2_bandwidth_bytes_per_s)
    floor_s = max(floors)
    time_s = max(compute_s, memory_s, hw.host.kernel_min_s, floor_s) + fit.fixed_s
    if max(hw.host.kernel_min_s, fit.fixed_s) > max(compute_s, memory_s):
        bound = "latency"  # fixed costs, not FLOPs or bytes, set the time
    else:
        bound = "compute" if compute_s >= memory_s else "memory"
    return KernelCost(time_s, floor_s, bound, compute_s, memory_s, *floors)


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
    when it runs alone, each in [0, 1]. A matrix kernel with fewer tiles than units occupies only some units;
    a latency-bound kernel occupies little of either, so it overlaps almost freely. A collective runs on the link
    (sim.engine): none of either (NCCL's kernels take one block per channel, a few of the units, and move a decode
    step's few kilobytes; not modelled)."""
    if cost.time_s <= 0:
        return 0.0, 0.0
    units = min(k.tiles, hw.peak.compute_units) / hw.peak.compute_units if k.cls in MATRIX_CLASSES else 1.0
    return min(1.0, units * cost.compute_s / cost.time_s), min(1.0, cost.memory_s / cost.time_s)
