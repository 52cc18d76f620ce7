"""The one table of op kinds that capture and simulator share: which aten ops are matrix products, attention,
gathers, reductions, memsets and plain copies, and the kernel class each executed op becomes.

Capture (reference.capture.tracing) uses it to count FLOPs and bytes and writes each op's class into the trace
(`OpRecord.kind`); the simulator reads that class and never looks at module names. Two classes depend on where
an op runs rather than on the op: a matrix product inside the LM head is `lm_head`, and the small ops inside a
norm are `norm`. The capture knows where it is (it wraps the model's head and sees its norm modules) and passes
that `role`.

Collectives (tensor parallelism) are their own class, "collective": the functional collective ops of
torch.distributed (`_c10d_functional.*`, what eager decoding calls and torch.compile keeps as graph nodes), each
with the collective it runs (`COLLECTIVE_OPS`). `wait_tensor`, the wait that follows each, launches no kernel: the
capture records it as no op, its consumers reading the collective's output (they depend on the collective).
"""

from __future__ import annotations

# "fused": a kernel a graph compiler generated for a chain of the other non-matrix classes (sim.fusion);
# "collective": a collective among the ranks of a tensor-parallel group (sim.interconnect times it)
KERNEL_CLASSES = ("matmul", "lm_head", "attention", "gather", "norm", "elementwise", "reduction", "memset", "fused",
                  "collective")
MATRIX_CLASSES = ("matmul", "lm_head", "attention")  # run on the matrix units, in waves of output tiles
ROLES = ("head", "norm")  # where an op runs, when that decides its class
# bytes per element of the dtypes traces name
DTYPE_BYTES = {"float64": 8, "float32": 4, "int64": 8, "int32": 4, "bfloat16": 2, "float16": 2, "bool": 1, "int8": 1,
               "uint8": 1}

# weight-only quantized products: PyTorch's packed ops (x [M, K] in a float dtype times a packed weight [N, K] with
# its scales: reference.quant), each one kernel -> the weights' stored format
QUANT_MATMUL_OPS = {"aten._weight_int8pack_mm.default": "int8", "aten._weight_int4pack_mm.default": "int4",
                    "aten._weight_int4pack_mm_for_cpu.default": "int4"}
QUANT_DTYPES = ("int8", "int4")
# the weight-only schemes a model can be traced with (reference.quant.SCHEMES: int8 per output channel, int4 in
# groups of 32, 64 or 128 input features), as the simulator's command lines name them
QUANT_SCHEMES = ("int8", "int4-g32", "int4-g64", "int4-g128")
# ALU operations that dequantize one weight for one row, per stored format (what the packed kernels do per weight
# before its multiply-add): int8, widen and convert to float (ATen's cpu int8 kernel: _mm512_cvtepi8_epi32 then
# _mm512_cvtepi32_ps per 16 weights; the per-channel scale multiplies the output, not each weight); int4, shift and
# mask out the nibble, convert, one fused multiply-add with scale and zero point (tinygemm, aten/src/ATen/native/
# cuda/int4mm.cu: a lop3 magic-number convert, a bias fma and an __hfma2 with scale and zero per bf16x2, ~1.9
# instructions per weight at two weights each = ~4 element operations)
DEQUANT_OPS = {"int8": 2, "int4": 4}
MATMUL_OPS = frozenset({"aten.linear.default", "aten.mm.default", "aten.addmm.default", "aten.bmm.default",
                        "aten.baddbmm.default", "aten.matmul.default", *QUANT_MATMUL_OPS})
MATMULS_WITH_BIAS_FIRST = frozenset({"aten.addmm.default", "aten.baddbmm.default"})
# one op whatever kernels it lowers to (a fused kernel on cpu and cuda, a dozen math ops on meta)
ATTENTION_OPS = frozenset({"aten.scaled_dot_product_attention"})
GATHER_OPS = frozenset({"aten.embedding.default", "aten.index.Tensor", "aten.index_select.default"})
# one FLOP per input element; softmax is a reduction pass (max, sum) over its rows
REDUCTION_OPS = frozenset({"aten.mean.dim", "aten.sum.dim_IntList", "aten.argmax.default", "aten.amax.default",
                           "aten.max.dim", "aten._softmax.default", "aten._safe_softmax.default"})
MEMSET_OPS = frozenset({"aten.zeros.default", "aten.empty.memory_format", "aten.fill_.Scalar", "aten.zero_.default",
                        "aten.full.default"})
# data movement without arithmetic: bytes, no FLOPs (elementwise kernels on the device)
COPY_OPS = frozenset({"aten.copy_.default", "aten.cat.default", "aten.stack.default", "aten.clone.default",
                      "aten._to_copy.default", "aten.lift_fresh_copy.default", "aten._local_scalar_dense.default",
                      "aten.arange.start"})
# writes of indexed elements into a tensor (compiled decoding's KV cache writes): only the values move
SCATTER_OPS = frozenset({"aten.index_put_.default", "aten.index_put.default", "aten._index_put_impl_.default"})
MOVE_OPS = MEMSET_OPS | COPY_OPS | SCATTER_OPS
# the functional collectives (torch.distributed._functional_collectives' ops; the in-place forms are what inductor
# emits on its own buffers) -> the collective each runs (sim.interconnect.COLLECTIVES)
COLLECTIVE_OPS = {
    "_c10d_functional.all_reduce.default": "all_reduce", "_c10d_functional.all_reduce_.default": "all_reduce",
    "_c10d_functional.all_gather_into_tensor.default": "all_gather",
    "_c10d_functional.all_gather_into_tensor_out.default": "all_gather",
    "_c10d_functional.reduce_scatter_tensor.default": "reduce_scatter",
    "_c10d_functional.broadcast.default": "broadcast", "_c10d_functional.broadcast_.default": "broadcast",
}
# waits for a collective's result: no kernel of their own (the capture records them as no op)
WAIT_OPS = frozenset({"_c10d_functional.wait_tensor.default"})


def kernel_class(op: str, role: str | None = None) -> str:
    """The kernel class of aten op `op` (e.g. "aten.mm.default") run in `role` (one of ROLES, or None)."""
    if op in MATMUL_OPS:
        return "lm_head" if role == "head" else "matmul"
    if op in COLLECTIVE_OPS:
        return "collective"
    if op in ATTENTION_OPS:
        return "attention"
    if op in GATHER_OPS:
        return "gather"
    if op in MEMSET_OPS:
        return "memset"
    if role == "norm":
        return "norm"
    if op in REDUCTION_OPS:
        return "reduction"
    return "elementwise"


def collective_bytes(collective: str, read_bytes: int, write_bytes: int) -> int:
    """The bytes a collective moves as NCCL counts them (its `nBytes`, what sim.interconnect times), from the bytes
    the op reads and writes: an all-gather's output (every rank's input), every other collective's input (an
    all-reduce's or a broadcast's tensor, a reduce-scatter's whole input)."""
    return write_bytes if collective == "all_gather" else read_bytes


def split_fault(collective: str, nbytes: int, ranks: int, dtype: str) -> str | None:
    """Why `nbytes` (`collective_bytes`) of `dtype` cannot be `collective` among `ranks`: not a whole number of
    elements, or, where the collective splits its buffer among the ranks (all-gather, reduce-scatter), of elements
    per rank; None if they can (dtype one of DTYPE_BYTES)."""
    chunk = DTYPE_BYTES[dtype] * (ranks if collective in ("all_gather", "reduce_scatter") else 1)
    if nbytes % chunk:
        return (f"{nbytes} bytes is not a whole number of {dtype} elements"
                + (f" for each of {ranks} ranks" if chunk != DTYPE_BYTES[dtype] else ""))
    return None
