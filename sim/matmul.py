"""The matrix-product model on a GPU: the kernel the library (cuBLAS, cuBLASLt) runs for a product of shape
(M rows, N outputs, K inner), and its compute and memory times.

A GPU library holds a family of GEMM kernels, one per output tile of a thread block (CTA) and per split of the
inner dimension, and its heuristics pick one per shape. The model picks the way the heuristics aim to: the
candidate with the shortest time, over

- the tiles (`LIBRARY_TILES`, no larger than the hwconfig's `tile`, the largest its library runs), each shrunk on
  its M side to the rows there are (rounded up to the 16 rows tensor cores take: `MATRIX_ROW_BLOCK`), so a product
  of 1 to 16 rows (decoding, a SPEED stage's 2 to 16 rows) runs a 16-row tile: the skinny kernels that stream the
  weights once (GEMV and small-M GEMM);
- and the splits of K (`SPLIT_K`): when the tiles alone would leave compute units idle, each CTA takes a slice of
  K and the partial sums are reduced (split-K, the small-M path), at the cost of writing and reading them; a grid
  that fills the units is not split (a large product runs its waves, wave quantization and all).

For each candidate, the CTAs run in waves of one per compute unit (wave quantization: one CTA more than a wave
costs a whole wave), each at the compute unit's share of the matrix rate, times the efficiency its tile reaches
(`tile_efficiency`: the hwconfig's matrix efficiency is that of the largest tile); the memory time is the bytes
from DRAM (weights, activations, split-K partials) at the achieved bandwidth, of which too few CTAs reach only a
part (`stream_bandwidth`). Its time is the longer of the two.
Every factor is <= 1 and no tile computes fewer rows than the product has, so no candidate beats the roofline.
"""

from __future__ import annotations

from dataclasses import dataclass

# Tensor cores take a product's rows (M) in blocks of 16 (mma shapes m16n8k16 on Ampere and Hopper): a product of
# fewer rows pays for 16 on the matrix units.
MATRIX_ROW_BLOCK = 16
# CTA output tiles (rows x columns) of the GEMM kernels cuBLAS ships for sm80/sm90 fp16/bf16, as its kernel names
# show them in profiler traces (e.g. `ampere_bf16_s16816gemm_bf16_256x128_ldg8_f2f_stages_64x3_tn`,
# `..._128x128_...`, `..._64x64_sliced1x2_...`; `sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64`),
# and CUTLASS's default tile shapes (include/cutlass/gemm/device/default_gemm_configuration.h: 128x256, 256x128,
# 128x128, 128x64, 64x128, 64x64 threadblock shapes for tensor-op GEMMs).
LIBRARY_TILES = ((256, 128), (128, 256), (128, 128), (128, 64), (64, 128), (64, 64))
# What one CTA streaming alone reaches from DRAM, in bytes per core clock: its loads in flight over the memory
# latency (Little's law), a property of the compute unit (not of how many there are), so products and attention of
# few CTAs (a GEMV of few columns, decode attention of one sequence) split their work (split-K, split-KV) as the
# libraries do. One SM's even share of DRAM bandwidth is ~13 bytes per cycle on an A100 (2039 GB/s / 108 SMs / 1.41
# GHz) and on an H100 (3350 / 132 / 1.98); a decode CTA's block in flight (128 keys x 128 dims, K and V: 64 KiB)
# over ~0.5 us of latency gives ~5 times that. Fitted on the public fit set (python -m sim.fitting.public_kernels
# --fit: the fit-set loss is the same from 26 up, and the fit takes the mildest value of its grid), so on an A100
# or H100 fewer than a sixth of the SMs' CTAs leave DRAM bandwidth unused.
CTA_STREAM_BYTES_PER_CYCLE = 78.0
# Splits of K the split-K kernels take (cuBLASLt's CUBLASLT_ALGO_CONFIG_SPLITK_NUM candidates; CUTLASS's
# GemmSplitKParallel takes any count), each slice at least one K step of the CTA tile (the 64 of
# `tilesize128x256x64`, `stages_64x3`).
SPLIT_K = (1, 2, 3, 4, 6, 8, 12, 16)
K_STEP = 64
# Partial sums of a split-K product are fp32 (4 bytes), written by each slice and read back by the reduction.
SPLIT_K_PARTIAL_BYTES = 4
# Per step of K, a CTA computes tm * tn multiply-adds per row of K and loads tm + tn operand elements (A's rows and
# B's columns) into shared memory: its efficiency falls with the tile as tm * tn / (tm * tn + TILE_LOAD_ROWS *
# (tm + tn)), the load expressed in rows of MMA work (8: a 128x128 tile reaches 97% of a 128x256 tile's rate, a
# 64x64 one 88%). Fitted, one value for every GPU, on the public measurements' fit set (data/public/README.md):
# python -m sim.fitting.public_kernels --fit (of the grid points within 1% of the least fit-set loss, the least).
TILE_LOAD_ROWS = 8.0


# A GPU's power management keeps the board under its power limit by lowering the SM clock over a window of
# sustained load: tensor-core work shorter than the window runs at the clock of the matrix efficiency (the
# maximum achievable matmul FLOPS, itself measured on products of ~0.1 ms), the rest of a longer product at the
# hwconfig's `efficiency.matrix_sustained` share of it. Public products show it: an H100's 8192-wide products run
# at 699 TFLOP/s for 0.2 ms and 648 for 3.4 ms (humming), its cubes at 789 for 0.17 ms and 668-720 for 3 ms (zzc).
# Fitted with the sustained shares on the public measurements' fit set (python -m sim.fitting.public_kernels --fit,
# on a grid); decode kernels are microseconds long and never reach it.
POWER_WINDOW_S = 2.5e-4


def sustained_compute_s(compute_s: float, sustained: float) -> float:
    """Seconds of tensor-core work of `compute_s` at the burst rate, its part past POWER_WINDOW_S at the sustained
    share `sustained` (hwconfig efficiency.matrix_sustained) of that rate."""
    if compute_s <= POWER_WINDOW_S:
        return compute_s
    return POWER_WINDOW_S + (compute_s - POWER_WINDOW_S) / sustained


@dataclass(frozen=True, slots=True)
class MatmulPlan:
    """The kernel the library runs for one product, and its times at the rates given."""

    tile_m: int  # rows of the CTA tile (shrunk to the product's rows)
    tile_n: int
    split_k: int
    ctas: int  # thread blocks launched
    waves: int  # ceil(ctas / compute units)
    compute_s: float
    memory_s: float  # DRAM bytes (with split-K partials) at the achieved bandwidth

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.memory_s)


def stream_bandwidth(ctas: int, units: int, clock_hz: float, bandwidth: float) -> float:
    """The DRAM bandwidth (bytes/s) `ctas` CTAs reach on `units` compute units at `clock_hz` when the memory system
    gives at most `bandwidth`: as many CTAs as units stream at once, each at CTA_STREAM_BYTES_PER_CYCLE."""
    return min(bandwidth, min(ctas, units) * CTA_STREAM_BYTES_PER_CYCLE * clock_hz)


def row_blocks(rows: int) -> int:
    """Rows rounded up to whole MATRIX_ROW_BLOCKs (at least one)."""
    return max(MATRIX_ROW_BLOCK, -(-rows // MATRIX_ROW_BLOCK) * MATRIX_ROW_BLOCK)


def tile_efficiency(tile_m: int, tile_n: int) -> float:
    """The share of the compute unit's matrix rate a CTA tile reaches for its MMA work (see TILE_LOAD_ROWS)."""
    area = tile_m * tile_n
    return area / (area + TILE_LOAD_ROWS * (tile_m + tile_n))


def candidate_tiles(largest: tuple[int, int]) -> list[tuple[int, int]]:
    """The library's tiles no larger (in area) than `largest` (the hwconfig's tile); `largest` itself if none is."""
    area = largest[0] * largest[1]
    return [t for t in LIBRARY_TILES if t[0] * t[1] <= area] or [largest]


def plan(m: int, n: int, k: int, units: int, clock_hz: float, largest: tuple[int, int], unit_rate: float,
         padded: bool, dram_bytes: float, bandwidth: float) -> MatmulPlan:
    """The fastest kernel of the library's family for an (m x k) @ (k x n) product on `units` compute units at
    `clock_hz`, each computing `unit_rate` FLOP/s with the largest tile (rate x matrix efficiency); `padded`: matrix
    units, which compute whole MATRIX_ROW_BLOCKs; `dram_bytes` from DRAM at up to `bandwidth` bytes/s (achieved)."""
    tiles = candidate_tiles(largest)
    reference = max(tile_efficiency(tm, tn) for tm, tn in tiles)
    best: MatmulPlan | None = None
    for tm, tn in tiles:
        rows = min(tm, row_blocks(m) if padded else m)  # the M side shrinks to the rows there are
        count = -(-m // rows) * -(-n // tn)
        # the kernel runs at its tile's rate; a tile shrunk to fewer rows loads the same columns of B per row of K,
        # which is the weight stream the memory time holds, not more compute
        rate = unit_rate * tile_efficiency(tm, tn) / reference
        for split in SPLIT_K:
            if split > 1 and (count >= units or k < split * K_STEP):
                break  # split a grid that leaves units idle, every slice at least one K step
            ctas = count * split
            waves = -(-ctas // units)
            compute_s = waves * 2.0 * rows * tn * -(-k // split) / rate
            partials = 2 * SPLIT_K_PARTIAL_BYTES * m * n * split if split > 1 else 0
            memory_s = (dram_bytes + partials) / stream_bandwidth(ctas, units, clock_hz, bandwidth)
            candidate = MatmulPlan(rows, tn, split, ctas, waves, compute_s, memory_s)
            if best is None or candidate.time_s < best.time_s:
                best = candidate
    assert best is not None  # every tile list has at least one tile, every tile the split of 1
    return best
