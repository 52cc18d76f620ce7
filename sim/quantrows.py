"""The rows at which a weight-only quantized product turns compute-bound, per chip (the kernel model of
sim.kernels: packed bytes from memory, dequantization per block of rows on the vector/ALU units, the product on
the units the real kernel uses).

    python -m sim.quantrows [--hw a100 h100 cpu-xeon-8480] [--shape 4096x4096 11008x4096 4096x11008]

A SPEED stage runs G rows (more with a batch) through each weight: the bytes of the weights stay, the work per
row grows. Per hwconfig, shape (N outputs x K inputs: Llama-2-7B's projections by default) and weight format
(bf16, int8, int4 in groups of 128) it prints the kernel time of a decode product of 1 row, the fewest rows at
which the product is compute-bound (the dequantization or the product itself outlasting the memory stream), and
the time of 16 and 64 rows as a multiple of one row's: what a stage of that many rows costs against a decode step.
"""

from __future__ import annotations

import argparse
import sys

from sim.command import run_command
from sim.defaults import resolve_hwconfig
from sim.hardware import HwConfig, HwConfigError, load_hwconfig
from sim.kernels import KernelCost, kernel_cost, kernel_of
from sim.opkinds import DEQUANT_OPS
from sim.trace import OpRecord

FORMATS = ("bf16", "int8", "int4-g128")
LLAMA_2_7B = ("4096x4096", "11008x4096", "4096x11008")  # q/k/v/o, gate/up, down: N outputs x K inputs
MAX_ROWS = 4096  # rows searched for the turn to compute-bound (beyond: "-")
SCALE_BYTES = 2  # bf16 scales and zero points, as reference.quant holds them in the activation dtype


def product(m: int, n: int, k: int, fmt: str = "bf16") -> OpRecord:
    """A decode product of `m` rows, [m, k] x [k, n], as the capture records it: a bf16 `aten.mm`, or PyTorch's
    packed int8 (a scale per output row) or int4 (`int4-gG`: a scale and a zero point per G inputs) product, with
    its packed bytes and dequantizing operations (sim/trace/FORMAT.md, "Quantized products")."""
    fields: dict = {}
    if fmt == "bf16":
        name, weight_bytes, shapes = "aten.mm.default", SCALE_BYTES * n * k, [[m, k], [k, n]]
    elif fmt == "int8":
        name, weight_bytes, shapes = "aten._weight_int8pack_mm.default", n * k + SCALE_BYTES * n, [[m, k], [n, k], [n]]
        fields = dict(weight_dtype="int8", scale_bytes=SCALE_BYTES * n, dequant_ops=DEQUANT_OPS["int8"])
    else:
        group = int(fmt.rpartition("-g")[2])
        half = k // group * n * SCALE_BYTES  # scales_and_zeros [K / group, N, 2]: half scales, half zero points
        name = "aten._weight_int4pack_mm.default"
        weight_bytes, shapes = n * k // 2 + 2 * half, [[m, k], [n, k // 2], [k // group, n, 2]]
        fields = dict(weight_dtype="int4", group_size=group, scale_bytes=half, zero_bytes=half,
                      dequant_ops=DEQUANT_OPS["int4"])
    return OpRecord(0, 0, 0, 0, 0, None, m, "blocks.0.attn.wq", "matmul", name, shapes, ["bfloat16"] * len(shapes),
                    [[m, n]], ["bfloat16"], 2 * m * n * k, weight_bytes, 2 * m * k, 2 * m * n, 0, 0, [], [], [],
                    None, None, None, **fields)


def cost(hw: HwConfig, m: int, n: int, k: int, fmt: str) -> KernelCost:
    """The kernel model's cost of `product(m, n, k, fmt)` on `hw`, every byte from DRAM (weights stream once)."""
    kernel = kernel_of(product(m, n, k, fmt), hw.tile.m, hw.tile.n)
    return kernel_cost(kernel, hw, kernel.bytes)


def compute_bound_rows(hw: HwConfig, n: int, k: int, fmt: str) -> int | None:
    """The fewest rows (a power of two up to MAX_ROWS) at which the product is compute-bound; None if none."""
    rows = 1
    while rows <= MAX_ROWS:
        if cost(hw, rows, n, k, fmt).bound == "compute":
            return rows
        rows *= 2
    return None


def table(hws: list[HwConfig], shapes: list[tuple[int, int]]) -> list[str]:
    """The lines of the table (module docstring)."""
    lines = [f"{'hwconfig':<32}{'N x K':>12}{'weights':>11}{'1 row us':>10}{'compute-bound at':>18}"
             f"{'16 rows':>9}{'64 rows':>9}"]
    for hw in hws:
        for n, k in shapes:
            for fmt in FORMATS:
                one = cost(hw, 1, n, k, fmt).time_s
                turn = compute_bound_rows(hw, n, k, fmt)
                lines.append(f"{hw.name[:31]:<32}{f'{n}x{k}':>12}{fmt:>11}{one * 1e6:>10.1f}"
                             f"{'-' if turn is None else f'{turn} rows':>18}"
                             + "".join(f"{cost(hw, m, n, k, fmt).time_s / one:>8.2f}x" for m in (16, 64)))
    return lines


def shape(text: str) -> tuple[int, int]:
    """"NxK" -> (N, K), each a positive multiple of 128 (the largest int4 group)."""
    n, _, k = text.partition("x")
    if not (n.isdigit() and k.isdigit() and int(n) > 0 and int(k) > 0 and int(k) % 128 == 0):
        raise argparse.ArgumentTypeError(f"expected NxK, positive integers with K a multiple of 128, got {text!r}")
    return int(n), int(k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.quantrows", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", nargs="+", default=["a100", "h100", "cpu-xeon-8480"], metavar="NAME_OR_FILE",
                        help="hwconfigs (shipped names or YAML files; default a100 h100 cpu-xeon-8480)")
    parser.add_argument("--shape", nargs="+", type=shape, default=[shape(s) for s in LLAMA_2_7B], metavar="NxK",
                        help="products, N outputs x K inputs (default Llama-2-7B's: " + " ".join(LLAMA_2_7B) + ")")
    args = parser.parse_args(argv)
    try:
        hws = [load_hwconfig(resolve_hwconfig(name)) for name in args.hw]
    except HwConfigError as err:
        parser.error(str(err))
    print("\n".join(table(hws, args.shape)))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m sim.quantrows"))
