"""Weight-only quantization of the reference decoder: int8 per output channel, int4 in groups along K.

    quantize(model, "int8")        # in place, once, from the float weights (round to nearest, no calibration)
    quantize(model, "int4-g32")    # groups of 32, 64 or 128 input features, each with a scale and a zero point

Schemes (`SCHEMES`):
- `int8`: symmetric per output channel, w ~ q * s with q in [-127, 127] and s = max|w_row| / 127 (llama.cpp's
  Q8_0 and TensorRT-LLM's weight-only int8 use the same grid). -128 is left out so that the grid is symmetric:
  negating a row negates its q, and the largest weight of either sign maps to exactly +-127.
- `int4-gN` (N = 32, 64, 128): asymmetric per group of N input features (along K) of each output row, tinygemm's
  convention: w ~ (q - 8) * scale + zero with q in 0..15, scale = (max - min) / 15, zero = min + 8 * scale, so
  q = 0 is the group's minimum and q = 15 its maximum. `scales_and_zeros` is [K / N, N_out, 2] (scale, zero).
Scales (and zeros) are in the activation dtype, rounded to it before q is computed from them, so q is the
nearest point of the grid the model really computes with.

What is quantized: every projection of the blocks (wq, wk, wv, wo, gate, up, down; of self-, cross- and encoder
attention alike). What stays in the activation dtype: biases (Qwen2's query/key/value), norms, the embedding and
the LM head: a tied head is the embedding, which a decode step gathers rows of rather than multiplying, and
GPTQ/AWQ checkpoints leave the head unquantized by default (`lm_head: false`).

Kernels (`QuantizedLinear.kernel` names the one a layer runs; `quantize(kernel=...)` chooses):
- "packed" (the default): PyTorch's packed ops wherever the device, dtype and shape have one.
  int8: `aten._weight_int8pack_mm(x, w_int8 [N, K], scales [N])`, on cpu for float32, bfloat16 and float16
  activations, on cuda for float32 (its kernel reads float inputs). int4: on cpu `aten._weight_int4pack_mm_for_cpu`
  over `_convert_weight_to_int4pack_for_cpu`'s layout (float32, bfloat16, float16; N a multiple of 16), on cuda
  `aten._weight_int4pack_mm` (tinygemm: bfloat16, N a multiple of 8) over `_convert_weight_to_int4pack`'s tiles.
  The cuda paths follow PyTorch's and torchao's callers and have not run here (no GPU). The meta device takes the
  cpu forms: the cuda int4 op's meta function reads a fake tensor's device, which a plain meta tensor has not.
- "dequant", and wherever no packed op fits (float64, other shapes): dequantize, then multiply. int8 as gpt-fast:
  `linear(x, w.to(x.dtype)) * scales`; int4: unpack the nibbles, `(q - 8) * scale + zero`, `linear`. Under
  torch.compile inductor fuses each dequantization into one generated kernel that writes the float weight, then
  calls the library GEMM; the packed ops it calls as they are (extern kernels).
Which is faster depends on the regime (python -m reference.experiments.quantkernels, README): on this x86 CPU
the packed ops are vectorized for bfloat16 only (their float32 and float16 paths are scalar loops in PyTorch's
int8mm/int4mm kernels), so in bfloat16 they beat the float product, and in float32 dequantize-then-matmul is
several times faster than them.

Storage: a layer holds its packed weight in the layout of its kernel, once. Its state dict (what is saved,
sharded and loaded) is portable: int8 [N, K], and for int4 the nibbles, uint8 [N, K / 2] with feature 2j in the
high nibble of byte j and 2j + 1 in the low (the cuda packer's input). A kernel layout is unpacked by running the
kernel itself on the identity with unit scales and zero point 8, which returns q exactly.

Tensor parallelism (reference.parallel) shards the packed weights with their scales: column-parallel layers keep
output rows (and their scales), row-parallel ones input columns; int8 scales are per output row, so a
row-parallel shard keeps them whole, and an int4 shard keeps whole groups: the group size must divide K / tp
(`check_tp`). Quantizing after sharding gives the same weights where a scale depends only on what one rank holds:
every int4 layer, and int8's column-parallel layers (a row-parallel int8 shard would take max|w| over its own
columns), so a tensor-parallel model is quantized whole, then sharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.config import ModelConfig
from reference.model import Attention, FeedForward, SharedDecoder

GROUP_SIZES = (32, 64, 128)  # the int4 group sizes of the issue; tinygemm's kernels take these (and 256)
INT8_MAX = 127  # int8 grid [-127, 127] (see the module docstring)
INT4_LEVELS = 15  # int4 grid 0..15
INT4_OFFSET = 8  # tinygemm's zero-point offset: w = (q - 8) * scale + zero
CPU_INT4_ROWS = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"
CUDA_INT4_ROWS = 8  # tinygemm's n tile (gpt-fast: out_features % 8 == 0)
CPU_INNER_K_TILES = 2  # the cpu packer takes the argument and lays out the same for 2, 4 and 8 (checked here)
UNPACK_ROWS = 256  # identity rows per kernel call when unpacking a kernel layout (bounds its memory)
PACKED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # activations the packed ops take (not float64)
KERNELS = ("packed", "dequant")  # quantize(kernel=...): the packed ops where they exist, or dequantize + matmul
DEQUANT = "dequantize + linear"  # QuantizedLinear.kernel of the dequantize-then-matmul form
INT8_PACKED = "aten._weight_int8pack_mm"
INT4_KERNELS = {"cpu": "aten._weight_int4pack_mm_for_cpu", "cuda": "aten._weight_int4pack_mm",
                "nibbles": DEQUANT}  # the op each int4 layout multiplies with
PROJECTIONS = {Attention: ("wq", "wk", "wv", "wo"), FeedForward: ("gate", "up", "down")}


@dataclass(frozen=True)
class Scheme:
    """A weight format: `bits` per weight, and the input features sharing a scale (None: a whole row)."""

    name: str
    bits: int
    group_size: int | None

    def check_k(self, k: int, where: str) -> None:
        """A ValueError where a layer of `k` input features cannot take this scheme's groups."""
        if self.group_size is not None and k % self.group_size:
            raise ValueError(f"--quant {self.name}: {where} has K = {k} input features, not a multiple of the "
                             f"group size {self.group_size}")


SCHEMES: dict[str, Scheme] = {s.name: s for s in (Scheme("int8", 8, None),
                                                   *(Scheme(f"int4-g{g}", 4, g) for g in GROUP_SIZES))}


def parse_scheme(text: str | Scheme, flag: str = "--quant") -> Scheme:
    """The scheme called `text` ("int8", "int4-g32", ...); a ValueError naming `flag` lists the schemes."""
    if isinstance(text, Scheme):
        return text
    scheme = SCHEMES.get(text)
    if scheme is None:
        hint = ""
        if isinstance(text, str) and text.startswith("int4-g"):
            hint = f": the group size must be one of {', '.join(map(str, GROUP_SIZES))}"
        raise ValueError(f"{flag} {text}: unknown scheme{hint}; schemes: {', '.join(SCHEMES)}")
    return scheme


class SchemeFieldError(ValueError):
    """A quantization setting that no scheme represents; `field` names it (for readers of quantization_config)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"field '{field}': {problem}")


def scheme_from_fields(bits: object, group_size: object, sym: object = True) -> Scheme:
    """The scheme of a GPTQ/AWQ-style setting (`bits`, `group_size` with -1 for a whole row, `sym`: no stored
    zero point); a SchemeFieldError naming the field where none represents it. int4 is asymmetric, so a
    symmetric int4 checkpoint fits it (its zero points are 0); int8 is symmetric per channel only."""
    for field, value in (("bits", bits), ("group_size", group_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemeFieldError(field, f"expected an integer, got {value!r}")
    if not isinstance(sym, bool):
        raise SchemeFieldError("sym", f"expected true or false, got {sym!r}")
    if bits == 8:
        if group_size != -1:
            raise SchemeFieldError("group_size", f"{group_size} with 8 bits: int8 has one scale per output "
                                   "channel (group_size -1)")
        if not sym:
            raise SchemeFieldError("sym", "false with 8 bits: int8 is symmetric (no zero point)")
        return SCHEMES["int8"]
    if bits == 4:
        if group_size not in GROUP_SIZES:
            raise SchemeFieldError("group_size", f"{group_size} with 4 bits: int4 groups are "
                                   f"{', '.join(map(str, GROUP_SIZES))} input features")
        return SCHEMES[f"int4-g{group_size}"]
    raise SchemeFieldError("bits", f"{bits}: the schemes have 8 or 4 bits")


# -- round-to-nearest quantizers: every scale from its own row or group alone
def _wide(w: Tensor) -> Tensor:
    """w in at least float32, for the quantizers' arithmetic."""
    return w.detach().to(torch.promote_types(w.dtype, torch.float32))


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """w [N, K] -> (q int8 [N, K] in [-127, 127], scales [N] in w's dtype); w ~ q * scales[:, None]. A row of zeros
    gets scale 0 and q 0."""
    wide = _wide(w)
    scales = (wide.abs().amax(dim=1) / INT8_MAX).to(w.dtype)
    s = scales.to(wide.dtype)[:, None]
    q = torch.where(s > 0, wide / torch.where(s > 0, s, 1.0), 0.0).round().clamp(-INT8_MAX, INT8_MAX)
    return q.to(torch.int8), scales


def quantize_int4(w: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """w [N, K] -> (q int32 [N, K] in 0..15, scales_and_zeros [K / group_size, N, 2] in w's dtype);
    w ~ (q - 8) * scale + zero per group of `group_size` features along K. A constant group gets scale 0, q 8."""
    n, k = w.shape
    groups = _wide(w).reshape(n, k // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # [N, K / gs]
    scale = ((high - low) / INT4_LEVELS).to(w.dtype)
    zero = (low + INT4_OFFSET * scale.to(low.dtype)).to(w.dtype)
    s, z = scale.to(groups.dtype)[..., None], zero.to(groups.dtype)[..., None]
    q = torch.where(s > 0, (groups - z) / torch.where(s > 0, s, 1.0) + INT4_OFFSET, float(INT4_OFFSET))
    q = q.round().clamp(0, INT4_LEVELS).to(torch.int32).reshape(n, k)
    return q, torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous()


def dequantize_int4(q: Tensor, scales_and_zeros: Tensor, dtype: torch.dtype) -> Tensor:
    """q [N, K] (0..15) and scales_and_zeros [K / gs, N, 2] -> w [N, K] in `dtype`: (q - 8) * scale + zero."""
    n, k = q.shape
    groups = scales_and_zeros.shape[0]
    scale, zero = scales_and_zeros.to(dtype).transpose(0, 1).unbind(-1)  # [N, K / gs] each
    w = (q.reshape(n, groups, k // groups).to(dtype) - INT4_OFFSET) * scale[..., None] + zero[..., None]
    return w.reshape(n, k)


# -- int4 layouts
def to_nibbles(q: Tensor) -> Tensor:
    """q [N, K] (0..15) -> uint8 [N, K / 2], feature 2j in the high nibble of byte j, 2j + 1 in the low."""
    return (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)


def from_nibbles(nibbles: Tensor) -> Tensor:
    """uint8 [N, K / 2] -> q int32 [N, K] (the inverse of to_nibbles). Widened before the shifts: uint8 shifts run
    a slow path in eager mode, and on int32 inductor fuses the stack of the two halves into the unpacking."""
    wide = nibbles.to(torch.int32)
    return torch.stack((wide >> 4, wide & 15), dim=-1).flatten(1)


def _cuda_inner_k_tiles(k: int) -> int:
    """tinygemm's k tiles per packed int32: the most of 8, 4, 2 whose 16-feature tiles divide K."""
    return next(t for t in (8, 4, 2) if k % (16 * t) == 0)


def int8_packed(device: torch.device, dtype: torch.dtype, kernel: str = "packed") -> bool:
    """Whether an int8 layer runs `_weight_int8pack_mm`: on cpu (and meta) for float32, bfloat16 and float16
    activations, on cuda for float32 (its kernel reads float inputs)."""
    if kernel == "dequant":
        return False
    return (device.type in ("cpu", "meta") and dtype in PACKED_DTYPES) or (device.type == "cuda"
                                                                         and dtype == torch.float32)


def int4_layout(device: torch.device, dtype: torch.dtype, n: int, k: int, kernel: str = "packed") -> str:
    """The layout (and so the kernel) of an int4 layer of N outputs and K inputs: "cpu" or "cuda" (the packed ops
    of that device, where its dtype and shapes fit them), else "nibbles" (dequantize, then multiply)."""
    if kernel == "dequant":
        return "nibbles"
    if device.type in ("cpu", "meta") and dtype in PACKED_DTYPES and n % CPU_INT4_ROWS == 0:
        return "cpu"
    if device.type == "cuda" and dtype == torch.bfloat16 and n % CUDA_INT4_ROWS == 0 and k % 32 == 0:
        return "cuda"
    return "nibbles"


def pack_int4(q: Tensor, layout: str) -> Tensor:
    """q int32 [N, K] (0..15) in `layout`: nibbles, or the cpu / cuda packed op's operand."""
    if layout == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), CPU_INNER_K_TILES)
    if layout == "cuda":
        return torch.ops.aten._convert_weight_to_int4pack(to_nibbles(q).contiguous(), _cuda_inner_k_tiles(q.shape[1]))
    return to_nibbles(q)


def _int4_mm(x: Tensor, weight: Tensor, layout: str, group_size: int, scales_and_zeros: Tensor) -> Tensor:
    """x [M, K] @ the packed weight^T -> [M, N]: the packed op of `layout`."""
    if layout == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, weight, group_size, scales_and_zeros)
    return torch.ops.aten._weight_int4pack_mm(x, weight, group_size, scales_and_zeros)


# -- the quantized layers
class QuantizedLinear(nn.Module):
    """A projection y = x W^T (+ bias) whose W is held quantized; `kernel` names the op that multiplies. Subclasses
    hold the packed weight and scales as buffers and shard them (`keep_rows`, `keep_columns`)."""

    scheme: Scheme
    kernel: str

    def __init__(self, in_features: int, out_features: int, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def _finish(self, y: Tensor, shape: torch.Size) -> Tensor:
        """The packed op's [M, N] as [..., N], plus the bias."""
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def _keep_bias_rows(self, start: int, size: int) -> None:
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach()[start : start + size].clone(), requires_grad=False)

    def dequantized(self, dtype: torch.dtype | None = None) -> Tensor:
        """W as the layer computes with it, [N, K] in `dtype` (default: the scales' dtype)."""
        raise NotImplementedError

    def keep_rows(self, start: int, size: int) -> None:
        """Column-parallel: keep output rows [start, start + size) (and their scales, bias)."""
        raise NotImplementedError

    def keep_columns(self, start: int, size: int) -> None:
        """Row-parallel: keep input columns [start, start + size) (the output becomes a partial sum)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={self.scheme.name}, kernel={self.kernel}")


class Int8Linear(QuantizedLinear):
    """int8 per output channel: `weight` int8 [N, K], `scales` [N] in the activation dtype."""

    scheme = SCHEMES["int8"]

    def __init__(self, weight: Tensor, scales: Tensor, bias: Tensor | None = None, kernel: str = "packed") -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.kernel = INT8_PACKED if int8_packed(weight.device, scales.dtype, kernel) else DEQUANT

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "packed") -> Int8Linear:
        return cls(*quantize_int8(linear.weight), linear.bias, kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel == DEQUANT:  # gpt-fast's form: the scale applies to the output
            return self._finish(F.linear(x, self.weight.to(x.dtype)) * self.scales, x.shape)
        return self._finish(torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight,
                                                               self.scales), x.shape)

    def dequantized(self, dtype: torch.dtype | None = None) -> Tensor:
        dtype = self.scales.dtype if dtype is None else dtype
        return self.weight.to(dtype) * self.scales.to(dtype)[:, None]

    def keep_rows(self, start: int, size: int) -> None:
        self.weight = self.weight[start : start + size].clone()
        self.scales = self.scales[start : start + size].clone()
        self._keep_bias_rows(start, size)
        self.out_features = size

    def keep_columns(self, start: int, size: int) -> None:
        self.weight = self.weight[:, start : start + size].clone()  # the scales are per output row: all kept
        self.in_features = size


class Int4Linear(QuantizedLinear):
    """int4 in groups of `group_size` along K: `weight` packed in `layout` ("cpu", "cuda": the packed op's operand;
    "nibbles": uint8 [N, K / 2]) and `scales_and_zeros` [K / group_size, N, 2] in the activation dtype. The state
    dict holds the nibbles whatever the layout (`_save_to_state_dict`, `_load_from_state_dict`)."""

    def __init__(self, q: Tensor, scales_and_zeros: Tensor, group_size: int, bias: Tensor | None = None,
                 kernel: str = "packed") -> None:
        n, k = q.shape
        super().__init__(k, n, bias)
        self.scheme = SCHEMES[f"int4-g{group_size}"]
        self.group_size = group_size
        self.layout = int4_layout(q.device, scales_and_zeros.dtype, n, k, kernel)
        self.kernel = INT4_KERNELS[self.layout]
        self._dequant_only = kernel == "dequant"
        self.register_buffer("weight", pack_int4(q, self.layout))
        self.register_buffer("scales_and_zeros", scales_and_zeros)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, kernel: str = "packed") -> Int4Linear:
        return cls(*quantize_int4(linear.weight, group_size), group_size, linear.bias, kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.layout == "nibbles":
            w = dequantize_int4(from_nibbles(self.weight), self.scales_and_zeros, x.dtype)
            return F.linear(x, w, self.bias)
        return self._finish(_int4_mm(x.reshape(-1, self.in_features), self.weight, self.layout, self.group_size,
                                     self.scales_and_zeros), x.shape)

    def quantized(self) -> Tensor:
        """q int32 [N, K] (0..15), from any layout: a packed layout is unpacked by its own kernel, run on the
        identity with scale 1 and zero point 8, so that it returns q exactly."""
        if self.layout == "nibbles":
            return from_nibbles(self.weight)
        dtype = torch.bfloat16 if self.layout == "cuda" else torch.float32  # integers 0..15: exact in either
        unit = torch.empty_like(self.scales_and_zeros, dtype=dtype)
        unit[..., 0], unit[..., 1] = 1.0, float(INT4_OFFSET)
        eye = torch.eye(self.in_features, dtype=dtype, device=self.weight.device)
        columns = [_int4_mm(eye[k : k + UNPACK_ROWS], self.weight, self.layout, self.group_size, unit)
                   for k in range(0, self.in_features, UNPACK_ROWS)]  # each [rows, N]: q^T
        return torch.cat(columns).t().round().to(torch.int32)

    def dequantized(self, dtype: torch.dtype | None = None) -> Tensor:
        dtype = self.scales_and_zeros.dtype if dtype is None else dtype
        return dequantize_int4(self.quantized(), self.scales_and_zeros, dtype)

    def _repack(self, q: Tensor, scales_and_zeros: Tensor) -> None:
        """Hold q and its scales anew, in the layout their shapes and this module's kernel choice give."""
        n, k = q.shape
        self.in_features, self.out_features = k, n
        self.layout = int4_layout(q.device, scales_and_zeros.dtype, n, k, "dequant" if self._dequant_only else "packed")
        self.kernel = INT4_KERNELS[self.layout]
        self.weight = pack_int4(q, self.layout)
        self.scales_and_zeros = scales_and_zeros.contiguous()

    def keep_rows(self, start: int, size: int) -> None:
        self._repack(self.quantized()[start : start + size], self.scales_and_zeros[:, start : start + size].clone())
        self._keep_bias_rows(start, size)

    def keep_columns(self, start: int, size: int) -> None:
        gs = self.group_size
        if start % gs or size % gs:
            raise ValueError(f"--quant {self.scheme.name}: columns [{start}, {start + size}) split a group of {gs}")
        self._repack(self.quantized()[:, start : start + size],
                     self.scales_and_zeros[start // gs : (start + size) // gs].clone())

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.layout != "nibbles":
            destination[prefix + "weight"] = to_nibbles(self.quantized())

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        # load_state_dict hands each module its own copy of the mapping: replacing the entry changes nothing else
        key = prefix + "weight"
        if self.layout != "nibbles" and key in state_dict:
            expected = (self.out_features, self.in_features // 2)
            if tuple(state_dict[key].shape) != expected or state_dict[key].dtype != torch.uint8:
                raise ValueError(f"{key}: expected uint8 nibbles {list(expected)}, got {state_dict[key].dtype} "
                                 f"{list(state_dict[key].shape)}")
            state_dict[key] = pack_int4(from_nibbles(state_dict[key].to(self.weight.device)), self.layout)
        super()._load_from_state_dict(state_dict, prefix, *args)


# -- whole models
def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """The quantized projections of `model`, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def scheme_of(model: nn.Module) -> Scheme | None:
    """The scheme `model` was quantized with, or None where it holds no quantized layer."""
    return next((m.scheme for m in quantized_layers(model).values()), None)


def projections(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(owner, attribute, qualified name) of every projection quantization replaces."""
    found = []
    for path, module in model.named_modules():
        for kind, names in PROJECTIONS.items():
            if isinstance(module, kind):
                found += [(module, name, f"{path}.{name}" if path else name) for name in names]
    return found


def check_quantizable(cfg: ModelConfig, scheme: str | Scheme) -> Scheme:
    """The scheme, or a ValueError naming the config figure its groups do not divide: K is d_model for wq, wk,
    wv, wo, gate and up (wo's input is the heads' outputs, n_heads x head_dim = d_model), d_ff for down."""
    scheme = parse_scheme(scheme)
    for field, k, layers in (("d_model", cfg.d_model, "wq, wk, wv, wo, gate and up"), ("d_ff", cfg.d_ff, "down")):
        if scheme.group_size is not None and k % scheme.group_size:
            raise ValueError(f"--quant {scheme.name}: {field} {k} (the input features of {layers}) is not a multiple "
                             f"of the group size {scheme.group_size} ({cfg.name})")
    return scheme


def check_tp(cfg: ModelConfig, scheme: str | Scheme | None, world_size: int) -> None:
    """A ValueError naming the figure where `world_size` row-parallel shards (wo: d_model / tp input features,
    down: d_ff / tp) would split an int4 group. Only whole groups shard: a group's scale and zero point belong to
    one rank."""
    scheme = None if scheme is None else parse_scheme(scheme)
    if scheme is None or scheme.group_size is None or world_size <= 1:
        return
    for field, k in (("d_model", cfg.d_model), ("d_ff", cfg.d_ff)):
        local = k // world_size
        if k % world_size == 0 and local % scheme.group_size:
            raise ValueError(f"--quant {scheme.name} with --tp {world_size}: {field} {k} / {world_size} = {local} is "
                             f"not a multiple of the group size {scheme.group_size}")


@torch.no_grad()
def quantize(model: SharedDecoder, scheme: str | Scheme, kernel: str = "packed") -> SharedDecoder:
    """Replace every block projection of `model` (wq, wk, wv, wo, gate, up, down; the encoder's too) by its
    quantized form, in place, from its float weights (round to nearest); returns the model. kernel: "packed" (the
    packed op where the device, dtype and shape have one) or "dequant" (dequantize, then multiply, everywhere).
    A ValueError names the layer (or figure) where the scheme does not fit, and changes nothing. Quantize in the
    dtype and on the device the model decodes in: each layer's form (and int4 layout) is chosen for them."""
    scheme = parse_scheme(scheme)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    cfg = model.config
    if scheme_of(model) is not None:
        raise ValueError(f"--quant {scheme.name}: model {cfg.name} is already quantized ({scheme_of(model).name})")
    dtype = model.embed.weight.dtype
    if not dtype.is_floating_point:
        raise ValueError(f"--quant {scheme.name}: the model's dtype {dtype} is not a floating-point type")
    layers = projections(model)
    for owner, name, path in layers:  # every layer checked before any is replaced
        scheme.check_k(getattr(owner, name).in_features, path)
    for owner, name, _ in layers:
        linear = getattr(owner, name)
        if scheme.group_size is None:
            setattr(owner, name, Int8Linear.from_linear(linear, kernel))
        else:
            setattr(owner, name, Int4Linear.from_linear(linear, scheme.group_size, kernel))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the tensors the model's state dict holds (weights, packed weights as held, scales, zeros, norms,
    biases; a tied head once), counted where they live: the state dict itself would unpack int4 kernel layouts
    (of the same bytes) through the kernel."""
    held: dict[int, Tensor] = {}
    for module in model.modules():
        persistent = [b for name, b in module._buffers.items() if name not in module._non_persistent_buffers_set]
        held.update({id(t): t for t in (*module._parameters.values(), *persistent) if t is not None})
    return sum(t.nbytes for t in held.values())


def projection_bytes(model: SharedDecoder) -> int:
    """Bytes of the block projections' state, float or quantized (packed weights, scales, zeros, biases)."""
    return sum(weight_bytes(getattr(owner, name)) for owner, name, _ in projections(model))


def check_state(model: SharedDecoder, tensors: dict[str, Tensor]) -> None:
    """A ValueError in one line naming the tensor where `tensors` (a quantized checkpoint's) do not fit
    `model` (quantized alike): a tensor missing or extra, a shape or dtype other than the model's (e.g. "scales of
    blocks.0.ffn.down: expected [256], got [128]"), an int8 value outside [-127, 127], a scale that is not finite."""
    expected = model.state_dict()
    for key in expected.keys() - tensors.keys():
        raise ValueError(f"{_named(key)} is missing")
    for key in tensors.keys() - expected.keys():
        raise ValueError(f"{_named(key)} is not a tensor of {model.config.name} quantized "
                         f"{scheme_of(model).name}")
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"{_named(key)}: expected {list(want.shape)}, got {list(got.shape)}")
        if got.dtype != want.dtype:
            raise ValueError(f"{_named(key)}: expected {want.dtype}, got {got.dtype}")
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            raise ValueError(f"{_named(key)}: holds values that are not finite")
        if got.dtype == torch.int8 and bool((got == -INT8_MAX - 1).any()):
            raise ValueError(f"{_named(key)}: int8 values must lie in [-127, 127], found -128")


def _named(key: str) -> str:
    """"blocks.0.ffn.down.scales" -> "scales of blocks.0.ffn.down"."""
    module, _, tensor = key.rpartition(".")
    return f"{tensor} of {module}" if module else tensor


def describe(model: SharedDecoder) -> str:
    """One line: the scheme and the kernels the quantized layers run."""
    layers = quantized_layers(model)
    if not layers:
        return "not quantized"
    kernels = sorted({m.kernel for m in layers.values()})
    return f"{scheme_of(model).name}, {len(layers)} layers, kernels: {', '.join(kernels)}"

