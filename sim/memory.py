"""The device memory a run needs, and whether it fits a device (simulator core, torch-free).

Three parts, each read from the trace of the run itself rather than recomputed from a model config, because the
trace records what the real decoder allocated and touched, whatever the architecture (untied heads, biases,
encoders and their cross-attention caches, the padded cache of compiled decoding), with no copy here of the
decoder's rules:

- weights: the bytes of every parameter tensor of the traced model (the header's `weights`, as allocated, in the
  run's dtype; a weight-only quantized model's packed weights, scales and zero points as it holds them); exact.
- KV cache at the longest length: the decoders allocate their caches once, for the longest sequence of the run
  (self-attention keys and values of every depth, and an encoder-decoder's cross-attention ones; compiled
  decoding's padded to its bucket), and the trace records that allocation as memset ops writing the KV cache;
  their bytes are the cache. Exact: the allocation itself, not a formula that would copy the decoders' sizing
  rules (summing the slices ops read would count a gather that reads one slice for several rows twice).
- largest live activations: the peak over ops of what an op reads and writes plus what earlier ops of its stage
  wrote that a later op still reads (from each input's producer, `srcs`), a tensor being freed after its last
  reader as PyTorch's allocator frees it once nothing refers to it. Traces without `srcs` (versions 1 and 2)
  give each op's own reads and writes, a lower bound.

A tensor-parallel trace is one rank's: its weights are the rank's shards (the replicated embedding and norms whole),
its KV cache the rank's KV heads, so the memory is per GPU.

Not counted: the runtime's own reservations (CUDA context, library workspaces, allocator fragmentation), which
depend on the software stack rather than on the run: "fits" means the run's tensors fit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from sim.hardware import HwConfig
from sim.trace import OpRecord, Trace

GB = 1e9  # the hwconfigs' capacities are datasheet GB (1e9 bytes)
INT64_SAFE_BYTES = 2**62  # byte sums of a stage below this add up in int64 without overflow (else Python ints)


@dataclass(frozen=True)
class DeviceMemory:
    """Device bytes a run needs."""

    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_bytes": self.total_bytes}


class CapacityError(ValueError):
    """A run whose device memory exceeds the device's DRAM capacity."""


def kv_cache_bytes(trace: Trace) -> int:
    """The KV cache as allocated: the bytes of the memset ops that write it (the cache's allocation), each counted
    as often as it executed."""
    memsets = {k for k, op in enumerate(trace.distinct) if op.kind == "memset" and op.kv_write_bytes}
    return sum(trace.distinct[k].kv_write_bytes for ids in trace.stage_op_ids for k in ids if k in memsets)


def _stage_peak(ops: list[OpRecord]) -> int:
    """The largest live activation bytes within one stage (ops in order; `srcs` give each input's producer), in
    one pass: a running total of the outputs a later op still reads."""
    last_use: dict[int, int] = {}
    for j, op in enumerate(ops):
        for s in op.srcs:
            if s:
                last_use[j - s] = j
    peak = held_total = 0
    pending: dict[int, int] = {}  # producer -> bytes of its output, while a later op still reads it
    for j, op in enumerate(ops):
        inputs = {j - s for s in op.srcs if s}
        held = held_total - sum(pending.get(i, 0) for i in inputs)  # inputs are in act_read_bytes already
        peak = max(peak, op.act_read_bytes + op.act_write_bytes + held)
        for i in inputs:
            if last_use.get(i) == j and i in pending:
                held_total -= pending.pop(i)
        if last_use.get(j, j) > j:
            pending[j] = op.act_write_bytes
            held_total += op.act_write_bytes
    return peak


def _peaks_of_structure(ids: np.ndarray, srcs: list[list[int]], read: np.ndarray, write: np.ndarray) -> np.ndarray:
    """`_stage_peak` of every stage in `ids` [stages, ops] (ids into `read` and `write`, bytes per distinct op) at
    once, for stages of one dataflow structure (`srcs`: the same at every slot): what is held at op j is every
    earlier output whose last reader is j or later (a difference array summed along the stage) less j's own
    inputs, which its reads count already."""
    n = ids.shape[1]
    last_use: dict[int, int] = {}
    readers, inputs = [], []  # (op j, producer i) for each distinct input of each op
    for j, distances in enumerate(srcs):
        for i in {j - d for d in distances if 0 < d <= j}:
            last_use[i] = j
            readers.append(j)
            inputs.append(i)
    writes = write[ids.T]  # [ops, stages]
    producers = np.fromiter(last_use, np.intp, len(last_use))
    last = np.fromiter(last_use.values(), np.intp, len(last_use))
    live = np.zeros((n + 1, ids.shape[0]), np.int64)
    live[producers + 1] += writes[producers]  # live from the op after its producer ...
    np.subtract.at(live, last + 1, writes[producers])  # ... through its last reader
    held = np.cumsum(live[:n], axis=0)
    np.subtract.at(held, np.asarray(readers, np.intp), writes[np.asarray(inputs, np.intp)])
    return (read[ids.T] + writes + held).max(axis=0)


def activation_bytes(trace: Trace) -> int:
    """The largest live activations of any stage, each distinct stage (its ops' ids) computed once, stages of one
    dataflow structure together (`_peaks_of_structure`; `_stage_peak` where int64 could overflow)."""
    stages = [ids for ids in set(trace.stage_op_ids) if ids]
    read = [op.act_read_bytes for op in trace.distinct]
    write = [op.act_write_bytes for op in trace.distinct]
    if max(map(len, stages), default=0) * (max(read, default=0) + max(write, default=0)) >= INT64_SAFE_BYTES:
        return max((_stage_peak([trace.distinct[k] for k in ids]) for ids in stages), default=0)
    shape_of: dict[tuple[int, ...], int] = {}
    srcs_key = [shape_of.setdefault(tuple(op.srcs), len(shape_of)) for op in trace.distinct]
    structures: dict[tuple[int, ...], list[tuple[int, ...]]] = defaultdict(list)
    for ids in stages:
        structures[tuple(map(srcs_key.__getitem__, ids))].append(ids)
    read_a, write_a = np.array(read, np.int64), np.array(write, np.int64)
    return max((int(_peaks_of_structure(np.array(group, np.intp), [trace.distinct[k].srcs for k in group[0]],
                                        read_a, write_a).max()) for group in structures.values()), default=0)


def device_memory(trace: Trace, fused: Trace | None = None) -> DeviceMemory:
    """What the traced run needs on the device (see the module docstring for how each part is counted); under
    compiled launch `fused` is its fused trace (sim.fusion), whose kernels' live tensors are the activations,
    while weights and KV cache are what the traced run allocated (a fused kernel that covers the cache's
    allocation is no memset any more). For a tensor-parallel trace: one GPU's (its rank's shard)."""
    weights = sum(int(w["bytes"]) for w in trace.header.weights.values())
    return DeviceMemory(weights, kv_cache_bytes(trace), activation_bytes(trace if fused is None else fused))


def check_fits(memory: DeviceMemory, hw: HwConfig, what: str) -> None:
    """Raise `CapacityError` (one line: the run, the hwconfig and the figures) when `memory` exceeds the DRAM
    capacity of `hw`; `what` names the run."""
    capacity = hw.peak.dram_capacity_bytes
    if memory.total_bytes > capacity:
        raise CapacityError(
            f"{what} does not fit on {hw.name} ({hw.path}): it needs {memory.total_bytes / GB:.2f} GB (weights "
            f"{memory.weights_bytes / GB:.2f} GB + KV cache {memory.kv_cache_bytes / GB:.2f} GB + activations "
            f"{memory.activation_bytes / GB:.2f} GB) > peak.dram_capacity_bytes {capacity / GB:.2f} GB")


def run_name(trace: Trace) -> str:
    """How a refusal names the run: model, decoder, dtype, batch, tokens (and, sharded, the rank and degree)."""
    h = trace.header
    shard = f", rank {h.tp_rank} of TP {h.tp}" if h.tp > 1 else ""
    return f"{h.model.get('name', '?')} ({h.decoder}, {h.dtype}, batch {h.batch}, {h.max_new_tokens} tokens{shard})"
