"""Synthetic traces and hwconfigs for the simulator tests (no torch)."""

from hypothesis import strategies as st

from sim.hardware import parse
from sim.opkinds import kernel_class
from sim.trace import OpRecord, StageRecord, Trace, TraceHeader

OPS = [("aten.linear.default", "blocks.0.attn.wq"), ("aten.linear.default", "head"),
       ("aten.scaled_dot_product_attention", "blocks.0.attn"), ("aten.mul.Tensor", "blocks.0.ffn"),
       ("aten.mean.dim", "blocks.0.attn_norm"), ("aten.embedding.default", "embed"),
       ("aten.copy_.default", "blocks.0.attn"), ("aten.zeros.default", "kv_cache"), ("aten.argmax.default", "")]
# tensor parallelism: the row-parallel products' all-reduce and the vocabulary-parallel argmax's all-gather
COLLECTIVES = [("_c10d_functional.all_reduce.default", "blocks.0.attn"),
               ("_c10d_functional.all_gather_into_tensor.default", "")]


def header(weights: dict[str, int], measured: bool = False, tp: int = 1) -> TraceHeader:
    return TraceHeader(model={"name": "synthetic", "n_groups": 1}, decoder="sequential", dtype="bfloat16", tp=tp,
                       batch=1,
                       prompt_lens=[1], max_new_tokens=1, device="meta", device_name="synthetic",
                       torch_version="-", code_revision="-", flips={"source": "none"},
                       weights={w: {"bytes": b, "shape": [b // 2], "dtype": "bfloat16"} for w, b in weights.items()},
                       measured=measured, command="tests")


def op(i: int, stage: int, name: str, module: str, flops: int, weight: int = 0, act: int = 0, kv: int = 0,
       m: int = 1, n: int = 64, weights: tuple[str, ...] = (), duration_s: float | None = None,
       deps: list[int] | None = None, ranks: int = 2) -> OpRecord:
    """An op of aten op `name` in `module`; a collective (of `ranks`) moves [m, n] bf16 elements per rank, its
    other figures as they come (the simulator times it by its bytes alone)."""
    kind = kernel_class(name, "head" if module == "head" else "norm" if module.endswith("norm") else None)
    if kind == "collective":
        gather = "all_gather" in name
        per_rank = 2 * m * n
        return OpRecord(i, stage, None, None, 0, 0, m, module, kind, name, [[m, n]], ["bfloat16"],
                        [[m * ranks if gather else m, n]], ["bfloat16"], 0, 0, per_rank,
                        per_rank * ranks if gather else per_rank, 0, 0, [], [], [0], deps, duration_s, ranks)
    k = max(1, flops // max(2 * m * n, 1))
    in_shapes = [[m, k], [n, k]] if "linear" in name else [[1, 4, m, 64], [1, 4, 8, 64]]
    return OpRecord(i, stage, None, 0 if kv else None, 0, 0, m, module, kind, name, in_shapes, ["bfloat16"] * 2,
                    [[m, n]], ["bfloat16"], flops, weight, act, act, kv, 0, list(weights), ["kv:0:0"] if kv else [],
                    [0, 0], deps, duration_s)


@st.composite
def traces(draw, max_stages: int = 4, max_ops: int = 12) -> Trace:
    weights = {f"w{j}": draw(st.integers(2, 10**8)) for j in range(draw(st.integers(1, 4)))}
    ops, stages, i = [], [], 0
    with_deps = draw(st.booleans())  # else a version 1 trace: program order
    tp = draw(st.sampled_from([1, 2, 8]))  # > 1: a tensor-parallel shard's trace, with collectives
    for s in range(draw(st.integers(1, max_stages))):
        for k in range(draw(st.integers(1, max_ops))):
            name, module = draw(st.sampled_from(OPS + (COLLECTIVES if tp > 1 else [])))
            deps = None
            if with_deps:
                deps = sorted(draw(st.sets(st.integers(1, k), max_size=3))) if k else []
            w = draw(st.sampled_from([None, *weights]))
            ops.append(op(i, s, name, module, flops=draw(st.integers(0, 10**12)),
                          weight=weights[w] if w else 0, act=draw(st.integers(0, 10**8)),
                          kv=draw(st.integers(0, 10**8)) if "scaled" in name else 0, m=draw(st.integers(1, 4096)),
                          n=draw(st.integers(1, 8192)), weights=(w,) if w else (), deps=deps, ranks=tp))
            i += 1
        stages.append(StageRecord(s, draw(st.sampled_from(["prefill", "decode"])), [[0, s, 1]], [[0, s + 1, 5]], []))
    return Trace(header(weights, tp=tp), ops, stages)


def interconnect(link_bandwidth_bytes_per_s: float = 3e11, efficiency: float = 0.8,
                 collective_latency_s: float = 0.0) -> dict:
    """An interconnect section: eight A100-like GPUs on NVSwitch."""
    return {"kind": "nvswitch", "devices_per_node": 8, "link_bandwidth_bytes_per_s": link_bandwidth_bytes_per_s,
            "collective_latency_s": collective_latency_s, "efficiency": efficiency, "compute_capability": 80,
            "nvls": False}


def hw_dict(**peak: float) -> dict:
    figures = {"clock_hz": 1.5e9, "compute_units": 100, "matrix_flops_per_s": {"bfloat16": 300e12, "float32": 150e12},
               "vector_flops_per_s": {"bfloat16": 40e12, "float32": 20e12}, "dram_bandwidth_bytes_per_s": 2e12,
               "dram_capacity_bytes": 80e9, "l2_capacity_bytes": 40e6, "l2_bandwidth_bytes_per_s": 6e12}
    figures.update(peak)
    sources = {f"peak.{k}": "test" for k in figures} | {f"host.{k}": "test" for k in
                                                      ("launch_eager_s", "launch_graph_s", "graph_kernel_gap_s",
                                                       "kernel_min_s")}
    return {"name": "synthetic", "kind": "gpu", "peak": figures,
            "host": {"launch_eager_s": 1e-5, "launch_graph_s": 1e-6, "graph_kernel_gap_s": 1e-6, "kernel_min_s": 2e-6},
            "efficiency": {"matrix": 0.7, "vector": 0.5, "dram": 0.85, "l2": 0.7}, "tile": {"m": 128, "n": 128},
            "sources": sources}


@st.composite
def hwconfigs(draw):
    raw = hw_dict(clock_hz=draw(st.floats(1e8, 3e9)), compute_units=draw(st.integers(1, 200)),
                  dram_bandwidth_bytes_per_s=draw(st.floats(1e10, 1e13)), l2_capacity_bytes=draw(st.floats(0, 1e8)),
                  l2_bandwidth_bytes_per_s=draw(st.floats(1e11, 3e13)))
    raw["peak"]["matrix_flops_per_s"]["bfloat16"] = draw(st.floats(1e12, 2e15))
    raw["peak"]["vector_flops_per_s"]["bfloat16"] = draw(st.floats(1e11, 1e14))
    for k in raw["efficiency"]:
        raw["efficiency"][k] = draw(st.floats(0.05, 1.0))
    raw["host"] = {"launch_eager_s": draw(st.floats(0, 1e-4)), "launch_graph_s": draw(st.floats(0, 1e-5)),
                   "graph_kernel_gap_s": draw(st.floats(0, 1e-5)), "kernel_min_s": draw(st.floats(0, 1e-5))}
    raw["tile"] = {"m": draw(st.sampled_from([16, 64, 128])), "n": draw(st.sampled_from([32, 128, 256]))}
    raw["interconnect"] = interconnect(draw(st.floats(1e9, 1e12)), draw(st.floats(0.05, 1.0)),
                                       draw(st.floats(0, 1e-4)))
    raw["sources"].update({f"interconnect.{k}": "test" for k in raw["interconnect"]})
    return parse(raw, "synthetic.yaml")
