"""Traces built in code for what the simulator measures one op at a time: `one_op_trace`, a single-operator
measurement or a microbenchmark as a trace."""

from __future__ import annotations

from sim.opkinds import kernel_class
from sim.trace.records import OpRecord, StageRecord, Trace, TraceHeader


def one_op_trace(op: str, module: str, in_shapes: list[list[int]], out_shape: list[int], dtype: str, flops: int,
                 act_bytes: int, weight_bytes: int = 0, kv_read_bytes: int = 0, calls: int = 1,
                 role: str | None = None) -> Trace:
    """A trace of `calls` back-to-back calls of `op` on the same tensors (a single-operator measurement or a
    microbenchmark as the simulator sees it; after the first call, what fits on chip is served there):
    `act_bytes` split evenly between read and written; `weight_bytes` of one weight, `kv_read_bytes` of cache;
    `role` as in `sim.opkinds.kernel_class` ("norm" for a norm kernel)."""
    weights = {"B": {"bytes": weight_bytes, "shape": [weight_bytes // 2], "dtype": dtype}} if weight_bytes else {}
    head = TraceHeader(model={"name": "single op"}, decoder="sequential", dtype=dtype, batch=1, prompt_lens=[1],
                       max_new_tokens=1, device="meta", device_name="-", torch_version="-", code_revision="-",
                       flips={"source": "none"}, weights=weights, measured=False, command="one op")
    records = [OpRecord(i, 0, None, None, None, 0, out_shape[0], module, kernel_class(op, role), op, in_shapes,
                        [dtype] * len(in_shapes), [out_shape], [dtype], flops, weight_bytes, act_bytes // 2,
                        act_bytes - act_bytes // 2, kv_read_bytes, 0, ["B"] if weight_bytes else [],
                        ["kv:0:0"] if kv_read_bytes else [], [0] * len(in_shapes)) for i in range(calls)]
    return Trace(head, records, [StageRecord(0, "decode", [], [], [])])
