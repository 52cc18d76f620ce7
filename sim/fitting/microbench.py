"""Microbenchmark results (the JSON `reference.capture.microbench` writes; `sim.fitting.calibrate` and
`sim.fitting.validate` read them): their format in one place, checked whole when read, so that no fit or
comparison starts on results of another shape.

    mb = load_microbench(path)              # a file: MicrobenchError naming the file and the field
    mb = check_microbench(raw, "where")     # results already in memory (the trace provider's answer)

The results are a JSON object (read by `sim.inputs.load_json`: strict, bounded) of

- the resource benchmarks, all or none: `copy`, `gemm`, `elementwise`, `attention` (non-empty lists of rows, each
  row's fields in ROWS: counts integers in 1..2**50, dtypes the simulator knows, seconds per call in
  MEASURED_S) and the host figures `launch_eager_s`, `graph_per_kernel_s`, `kernel_min_s` (seconds);
- the decode sweeps, `decode_gemm` and `decode_attention` (each optional: gemm's and attention's rows, with the
  `preset` and the `weight` they come from; a decode_gemm row's `form` any name);
- the quantized products, `quant` (optional, cpu): rows of a packed weight-only product (`op` one of
  sim.opkinds.QUANT_MATMUL_OPS) of m rows by n x k, with its weight format as a trace op carries it;
- the all-reduce sweep, `all_reduce` (its rows checked by `sim.fitting.collectives.all_reduce_rows`) and
  `all_reduce_setup` (an object);
- what was measured: `device` ("cpu" or "cuda"), `device_name`, `torch_version`, `clock` (strings), `threads`.

A key or a row field not listed here is refused, never ignored: results of another format (or another
version of this one) would otherwise be read as no results at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.fitting.collectives import MEASURED_S, all_reduce_rows
from sim.inputs import InputError, brief, cut, load_json_file
from sim.opkinds import DTYPE_BYTES, QUANT_MATMUL_OPS
from sim.trace.limits import MAX_DEQUANT_OPS

DEVICES = ("cpu", "cuda")
MAX_COUNT = 2**50  # bytes, elements and sizes of one benchmark call: beyond any device's memory
MAX_THREADS = 1 << 16
Check = tuple[Callable[[Any], bool], str]  # a value's check, and what it expects


def _count(v: Any) -> bool:
    return type(v) is int and 1 <= v <= MAX_COUNT


def _seconds(v: Any) -> bool:
    return type(v) in (int, float) and MEASURED_S[0] <= v <= MEASURED_S[1]


COUNT: Check = (_count, "an integer in 1..2**50")
SECONDS: Check = (_seconds, f"seconds in [{MEASURED_S[0]:g}, {MEASURED_S[1]:g}]")
DTYPE: Check = (lambda v: type(v) is str and v in DTYPE_BYTES, f"one of {', '.join(DTYPE_BYTES)}")
SHAPE: Check = (lambda v: type(v) is list and len(v) >= 3 and all(map(_count, v)),
                "a shape of three or more integers in 1..2**50")
TEXT: Check = (lambda v: type(v) is str, "a string")
# each list of rows -> its rows' fields (required, then optional)
ROWS: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "copy": ({"bytes": COUNT, "bytes_moved": COUNT, "seconds": SECONDS}, {}),
    "gemm": ({"m": COUNT, "n": COUNT, "k": COUNT, "dtype": DTYPE, "seconds": SECONDS},
             {"form": (lambda v: v in ("linear", "mm"), "linear or mm")}),
    "elementwise": ({"numel": COUNT, "dtype": DTYPE, "seconds": SECONDS}, {}),
    "attention": ({"heads": COUNT, "length": COUNT, "head_dim": COUNT, "dtype": DTYPE, "seconds": SECONDS},
                  {"kv_heads": COUNT, "query_shape": SHAPE}),
}
# the decode sweeps (microbench --only decode_gemm decode_attention): gemm's and attention's rows naming the preset
# (and the weight) they come from; a product form is any name (validate lists the forms it cannot model)
DECODE_ROWS: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "decode_gemm": (ROWS["gemm"][0], {"form": TEXT, "preset": TEXT, "weight": TEXT}),
    "decode_attention": (ROWS["attention"][0], {**ROWS["attention"][1], "preset": TEXT}),
}
# the quantized products (reference.capture.microbench._bench_quant), which sim.fitting.calibrate fits `dequant` to
DIMS: Check = (lambda v: type(v) is list and len(v) >= 1 and all(map(_count, v)), "a shape of integers in 1..2**50")
QUANT_ROWS: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {"quant": (
    {**ROWS["gemm"][0], "scheme": TEXT,
     "op": (lambda v: v in QUANT_MATMUL_OPS, f"one of {', '.join(QUANT_MATMUL_OPS)}"),
     "weight_dtype": (lambda v: v in ("int8", "int4"), "int8 or int4"),
     "group_size": (lambda v: v is None or _count(v), "null or an integer in 1..2**50"),
     "weight_shape": DIMS, "scales_shape": DIMS, "weight_bytes": COUNT, "scale_bytes": COUNT,
     "zero_bytes": (lambda v: type(v) is int and 0 <= v <= MAX_COUNT, "an integer in 0..2**50"),
     "dequant_ops": (lambda v: type(v) is int and 1 <= v <= MAX_DEQUANT_OPS, f"an integer in 1..{MAX_DEQUANT_OPS}")},
    {})}
HOST = {"launch_eager_s": SECONDS, "graph_per_kernel_s": SECONDS, "kernel_min_s": SECONDS}
RESOURCES = (*ROWS, *HOST)  # written together (reference.capture.microbench: all or none)
ABOUT: dict[str, Check] = {
    "device": (lambda v: v in DEVICES, f"one of {', '.join(DEVICES)}"), "device_name": TEXT,
    "torch_version": TEXT, "clock": TEXT,
    "threads": (lambda v: type(v) is int and 1 <= v <= MAX_THREADS, f"an integer in 1..{MAX_THREADS}"),
    "all_reduce_setup": (lambda v: type(v) is dict, "an object"),
    "all_reduce": (lambda v: type(v) is list, "a list of rows"),
}
KNOWN = (*RESOURCES, *DECODE_ROWS, *QUANT_ROWS, *ABOUT)


class MicrobenchError(ValueError):
    """Results that are not microbenchmark results: `where` (the file) and `field` say where."""

    def __init__(self, where: str, field: str | None, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{where}" + (f", field '{field}'" if field else "") + f": {problem}")


def _check_value(where: str, field: str, value: Any, check: Check) -> None:
    ok, expected = check
    if not ok(value):
        raise MicrobenchError(where, field, f"expected {expected}, got {brief(value)}")


def _check_rows(where: str, key: str, rows: Any) -> None:
    required, optional = {**ROWS, **DECODE_ROWS, **QUANT_ROWS}[key]
    if type(rows) is not list or not rows:
        raise MicrobenchError(where, key, f"expected a non-empty list of rows, got {brief(rows)}")
    for i, row in enumerate(rows):
        at = f"{key}[{i}]"
        if type(row) is not dict:
            raise MicrobenchError(where, at, f"expected a row (an object), got {brief(row)}")
        unknown = next((k for k in row if k not in required and k not in optional), None)
        if unknown is not None:
            raise MicrobenchError(where, f"{at}.{cut(unknown)}", f"unknown field; a {key} row has "
                                  f"{', '.join([*required, *optional])}")
        missing = next((k for k in required if k not in row), None)
        if missing is not None:
            raise MicrobenchError(where, f"{at}.{missing}", "missing")
        for name, check in {**required, **optional}.items():
            if name in row:
                _check_value(where, f"{at}.{name}", row[name], check)
        if "kv_heads" in row and row["heads"] % row["kv_heads"]:
            raise MicrobenchError(where, f"{at}.kv_heads", f"{row['kv_heads']} key-value heads do not divide its "
                                  f"{row['heads']} query heads (grouped-query attention)")


def check_microbench(raw: Any, where: str) -> dict[str, Any]:
    """`raw` if it is microbenchmark results by the module docstring's rules; MicrobenchError naming `where`
    and the field otherwise."""
    if type(raw) is not dict:
        raise MicrobenchError(where, None, f"expected a JSON object of results, got {brief(raw)}")
    unknown = next((k for k in raw if k not in KNOWN), None)
    if unknown is not None:
        raise MicrobenchError(where, cut(unknown), f"unknown; results hold {', '.join(KNOWN)}")
    for key, check in ABOUT.items():
        if key in raw:
            _check_value(where, key, raw[key], check)
    present = [k for k in RESOURCES if k in raw]
    if present:
        missing = next((k for k in RESOURCES if k not in raw), None)
        if missing is not None:
            raise MicrobenchError(where, missing, f"missing: the resource benchmarks come together ({present[0]} "
                                  f"is there; {', '.join(RESOURCES)})")
        for key in ROWS:
            _check_rows(where, key, raw[key])
        for key, check in HOST.items():
            _check_value(where, key, raw[key], check)
    for key in (*DECODE_ROWS, *QUANT_ROWS):
        if key in raw:
            _check_rows(where, key, raw[key])
    if not present and not raw.get("all_reduce") and not any(k in raw for k in (*DECODE_ROWS, *QUANT_ROWS)):
        raise MicrobenchError(where, None, f"no results: neither the resource benchmarks ({', '.join(ROWS)}), "
                              f"all_reduce rows, the decode sweeps ({', '.join(DECODE_ROWS)}) nor quant rows")
    try:
        all_reduce_rows(raw)
    except ValueError as err:  # names the row and its field
        raise MicrobenchError(where, None, str(err)) from None
    return raw


def load_microbench(path: str | os.PathLike[str], where: str | None = None) -> dict[str, Any]:
    """The microbenchmark results of a file (a regular file of strict JSON: `sim.inputs`), checked; errors name
    `where` (default: the file)."""
    where = where or f"microbenchmark results {os.fspath(path)}"
    try:
        raw = load_json_file(Path(path))
    except FileNotFoundError:
        raise MicrobenchError(where, None, "no such file") from None
    except InputError as err:
        raise MicrobenchError(where, err.field, err.located) from None
    return check_microbench(raw, where)
