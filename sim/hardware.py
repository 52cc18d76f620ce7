"""Hardware descriptions: peak figures (from datasheets, each with a source) kept apart from efficiency factors
(fitted by calibration), loaded from `hwconfigs/*.yaml` and validated.

Every malformed file gets a `HwConfigError` naming the file and the dotted field: missing, unknown, mistyped,
given twice, not finite (NaN, infinity, 1e999), or outside the range its field allows (`RANGES`: wide enough for
any chip and far-fetched what-ifs, narrow enough that every projection stays finite). The file itself is read
within bounds (`sim.inputs`: a regular UTF-8 file of at most 1 MiB, no alias expansion bombs, no deep nesting,
integers in decimal).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.defaults import HWCONFIG_DIR
from sim.inputs import InputError, brief, cut, load_yaml, load_yaml_file
from sim.opkinds import KERNEL_CLASSES, MATRIX_CLASSES

KINDS = ("gpu", "edge", "cpu")
# How a device reaches the others of a tensor-parallel group (sim.interconnect): every GPU one hop from every other
# through NVSwitch chips; NVLink wired directly between the node's GPUs (a bridged pair); PCIe; processes of one
# host over TCP loopback (gloo on a CPU)
LINK_KINDS = ("nvswitch", "nvlink", "pcie", "loopback")
GPU_LINK_KINDS = ("nvswitch", "nvlink", "pcie")  # the kinds NCCL's model times
SHOWN_SETS = 3  # --set values an error line repeats (of any number given)
GENERATED_CLASS = "fused"  # the kernel class of the kernels a graph compiler generates (sim.fusion)
DTYPES = ("bfloat16", "float16", "float32")

# The range (low, high, inclusive) of each kind of figure. Wide enough for any device from a microcontroller to a
# wafer-scale chip, and for what-if studies far beyond both; narrow enough that no projection overflows: the
# slowest legal kernel (FLOPs and bytes of the largest trace at the lowest rate and efficiencies) still takes a
# finite time, and sim.engine refuses, as a last guard, any kernel time that is not finite.
CLOCK_HZ = (1e6, 1e11)  # 1 MHz .. 100 GHz
COMPUTE_UNITS = (1, 10**7)  # SMs or cores
FLOPS_PER_S = (1e6, 1e19)  # 1 MFLOP/s .. 10 EFLOP/s for one chip
BANDWIDTH_BYTES_PER_S = (1e6, 1e17)  # 1 MB/s .. 100 PB/s
DRAM_CAPACITY_BYTES = (1e3, 1e16)  # 1 kB (a what-if that nothing fits) .. 10 PB
L2_CAPACITY_BYTES = (0.0, 1e13)  # 0: no on-chip cache
SECONDS = (0.0, 1.0)  # host costs and fixed times per kernel or launch: a second per kernel describes no runtime
EFFICIENCY = (1e-6, 1.0)  # achieved / peak: below a millionth of the peak no fit means anything
TILE = (1, 1 << 16)  # output tile sides, in rows and columns
# Devices one interconnect joins: one (nothing to talk to) up to far beyond a rack-scale NVLink domain (72 GPUs)
DEVICES_PER_NODE = (1, 1 << 16)
# The GPU's compute capability as NCCL writes it (major * 10 + minor: 80 A100, 86 A5000, 89 L4, 90 H100): NCCL's
# tuning tables start at Pascal (60); 199 leaves room for generations to come
COMPUTE_CAPABILITY = (60, 199)
# Rows one dequantization of a weight serves in a weight-only kernel: from one row (a kernel that dequantizes per
# row) to far beyond any kernel's row tile
DEQUANT_ROWS = (1, 1 << 16)
MAX_NAME_CHARS = 200  # a device's name heads every table
RANGES = {"peak.clock_hz": CLOCK_HZ, "peak.compute_units": COMPUTE_UNITS, "peak.matrix_flops_per_s": FLOPS_PER_S,
          "peak.vector_flops_per_s": FLOPS_PER_S, "peak.dram_bandwidth_bytes_per_s": BANDWIDTH_BYTES_PER_S,
          "peak.l2_bandwidth_bytes_per_s": BANDWIDTH_BYTES_PER_S, "peak.dram_capacity_bytes": DRAM_CAPACITY_BYTES,
          "peak.l2_capacity_bytes": L2_CAPACITY_BYTES, "host": SECONDS, "efficiency": EFFICIENCY, "tile": TILE,
          "interconnect.devices_per_node": DEVICES_PER_NODE,
          "interconnect.link_bandwidth_bytes_per_s": BANDWIDTH_BYTES_PER_S,
          "interconnect.collective_latency_s": SECONDS, "interconnect.step_latency_s": SECONDS,
          "interconnect.efficiency": EFFICIENCY, "interconnect.compute_capability": COMPUTE_CAPABILITY,
          "dequant.ops_per_s": FLOPS_PER_S, "dequant.rows_per_pass": DEQUANT_ROWS}


class HwConfigError(ValueError):
    """A hwconfig that cannot be used; `path` and `field` (dotted) say where."""

    def __init__(self, path: str | os.PathLike[str], field: str | None, problem: str) -> None:
        self.path, self.field = os.fspath(path), field
        shown = field if field is None or (field.isprintable() and len(field) <= 80) else brief(field)
        super().__init__(f"hwconfig {self.path}" + (f", field '{shown}'" if field else "") + f": {problem}")


@dataclass(frozen=True)
class Peak:
    clock_hz: float  # core clock: simulated time is counted in these cycles
    compute_units: int  # SMs (GPU) or cores (CPU)
    matrix_flops_per_s: dict[str, float]  # dense matrix-unit FLOP/s per dtype, whole chip
    vector_flops_per_s: dict[str, float]  # non-matrix FLOP/s per dtype, whole chip
    dram_bandwidth_bytes_per_s: float
    dram_capacity_bytes: float
    l2_capacity_bytes: float  # last-level on-chip cache (CPU: L3)
    l2_bandwidth_bytes_per_s: float


@dataclass(frozen=True)
class Host:
    """What the host pays to issue work. In eager mode a kernel of op kind `op` costs `eager_op_s[op]` where the
    table has it (the op's dispatch differs from op to op: an attention call or an indexed KV write runs more
    framework code, views and checks around its kernel than an add), else `launch_eager_s`; a collective always
    costs `launch_eager_s` (its dispatch and NCCL's launch); each eager stage adds `eager_stage_s` (the decode
    loop's own work between stages: the token read back, the next step's inputs). Both optional: without them
    every kernel costs `launch_eager_s`, as before the table existed."""

    launch_eager_s: float  # host time per kernel in eager mode (framework dispatch + launch): kinds not in the table
    launch_graph_s: float  # host time to launch one stage replayed as a graph (CUDA graph launch)
    graph_kernel_gap_s: float  # device-side gap between consecutive kernels of a replayed graph
    kernel_min_s: float  # shortest kernel on the device (an empty kernel, launch to completion)
    # op kind (`sim.kernels.op_kind`: the aten name, `.gemv`/`.math` where one op runs as another kernel) -> host
    # time per kernel of that kind in eager mode, s
    eager_op_s: dict[str, float] = dataclasses.field(default_factory=dict)
    eager_stage_s: float = 0.0  # host time per eager stage beyond its kernels' launches, s

    def eager_launch_s(self, cls: str, op: str) -> float:
        """The host's eager cost of one kernel of class `cls`, op kind `op` (class docstring)."""
        return self.launch_eager_s if cls == "collective" else self.eager_op_s.get(op, self.launch_eager_s)


@dataclass(frozen=True)
class Efficiency:
    """Achieved / peak, in (0, 1]: fitted by calibration, never part of the peak figures."""

    matrix: float
    vector: float
    dram: float
    l2: float
    # the share of the matrix rate (matrix x this) a product sustains past the power-management window
    # (sim.matmul.POWER_WINDOW_S): a GPU at its power limit lowers its clock under long tensor-core work
    matrix_sustained: float = 1.0


@dataclass(frozen=True)
class KernelFit:
    """Fitted per kernel class, or per op kind within a class (optional): compute time is divided by `efficiency`,
    memory time by `memory_efficiency` (the share of the memory system's bandwidth the kernel achieves; default:
    `efficiency`), and `fixed_s` is added (work beyond FLOPs and bytes: attention's softmax passes, a
    reduction's second pass, the dispatch of an op on a CPU, which differs from op to op). A matrix product
    reaches its compute peak when large and streams its weights at a bandwidth of its own when it has few rows,
    which depends on the kernel the library picks (on a CPU a GEMV streams twice as fast as a 3-row product).
    `row_latency_s` (optional; unset: none): a CPU product's time per output row whose weights stream from DRAM,
    beyond its bytes (a CPU GEMV pays about one DRAM latency per row: sim.kernels.tiled_times)."""

    efficiency: float = 1.0
    fixed_s: float = 0.0
    memory_efficiency: float | None = None
    row_latency_s: float | None = None

    @property
    def bandwidth_share(self) -> float:
        """The efficiency memory time is divided by."""
        return self.efficiency if self.memory_efficiency is None else self.memory_efficiency


NO_FIT = KernelFit()


@dataclass(frozen=True)
class CompiledFits:
    """What kernels cost under compiled launch where eager fits do not tell (fitted by sim.fitting.compiled to
    compiled measurements): a library kernel (matrix products, the LM head, attention) called from a compiled
    graph costs its eager fit's work plus `library_fixed_s` (on a cpu an eager op's measured time includes the
    framework's dispatch, which the graph's calls skip); a kernel the compiler generates (class fused) has a fit of
    its own, `generated`."""

    library_fixed_s: float
    generated: KernelFit


@dataclass(frozen=True)
class Interconnect:
    """How the device reaches the other devices of a tensor-parallel group; sim.interconnect times a collective on
    it. The hardware figures and what calibration fits live here; the collective library's own constants (NCCL's
    latencies and caps, gloo's segment size) live in sim.interconnect, with their sources."""

    kind: str  # LINK_KINDS
    devices_per_node: int  # devices one node joins: a larger group needs a multi-node interconnect (not modelled)
    link_bandwidth_bytes_per_s: float  # per device, per direction: the datasheet line rate (loopback: a measurement)
    collective_latency_s: float  # fixed cost per collective beyond the algorithm's own; 0 or fitted
    efficiency: float = 1.0  # share of link_bandwidth_bytes_per_s the collective moves (start: NCCL's link model)
    compute_capability: int | None = None  # GPU kinds: sm version, which indexes NCCL's tuning tables
    nvls: bool = False  # NVLink SHARP on the switches (NVSwitch gen 3, sm90+): NCCL's NVLS algorithm
    step_latency_s: float | None = None  # loopback only: cost of one message of gloo's ring (fitted)


@dataclass(frozen=True)
class Dequant:
    """How the device's weight-only kernels dequantize packed int8/int4 weights (sim.kernels.dequant_s): the
    arithmetic runs on the vector/ALU units (a GPU's CUDA cores beside the tensor cores; a CPU's vector units,
    which its products share), and each weight is dequantized once per block of `rows_per_pass` rows."""

    ops_per_s: float  # element operations per second of dequantizing arithmetic (shift, mask, convert, fma), chip
    rows_per_pass: int  # rows one dequantization of a weight serves (the kernel's row tile)


@dataclass(frozen=True)
class Tile:
    m: int  # matmul output tile one compute unit computes per wave
    n: int


@dataclass(frozen=True)
class HwConfig:
    name: str
    kind: str
    peak: Peak
    host: Host
    efficiency: Efficiency
    tile: Tile
    sources: dict[str, str]
    path: str = ""
    notes: str = ""
    classes: dict[str, KernelFit] = dataclasses.field(default_factory=dict)
    # class -> op kind (aten name) -> fit: refines the class fit for the op kinds calibration saw often enough
    ops: dict[str, dict[str, KernelFit]] = dataclasses.field(default_factory=dict)
    compiled: CompiledFits | None = None  # under compiled launch, where it differs from eager
    interconnect: Interconnect | None = None  # None: a single device, no tensor parallelism
    dequant: Dequant | None = None  # None: no figures for weight-only quantized products (sim.kernels refuses them)

    def fit(self, cls: str, op: str, compiled: bool = False) -> KernelFit:
        """The fit of op kind `op` of kernel class `cls`: the op kind's own, else its class's, else none; under
        compiled launch (`compiled`) with a `compiled` section, a library kernel's fixed time is the section's
        and a generated kernel (class fused) takes the section's `generated` fit."""
        fit = self.ops.get(cls, {}).get(op)
        fit = fit if fit is not None else self.classes.get(cls, NO_FIT)
        if compiled and self.compiled is not None:
            if cls == GENERATED_CLASS:
                return self.compiled.generated
            if cls in MATRIX_CLASSES:
                return dataclasses.replace(fit, fixed_s=self.compiled.library_fixed_s)
        return fit

    def matrix_flops(self, dtype: str) -> float:
        return self.peak.matrix_flops_per_s.get(dtype, self.peak.matrix_flops_per_s["float32"])

    def vector_flops(self, dtype: str) -> float:
        return self.peak.vector_flops_per_s.get(dtype, self.peak.vector_flops_per_s["float32"])

    def cycles(self, seconds: float) -> int:
        """Seconds -> whole core-clock cycles, rounded up (a partial cycle still costs one)."""
        return -int(-seconds * self.peak.clock_hz // 1)

    def with_overrides(self, overrides: dict[str, str]) -> HwConfig:
        """A copy with dotted fields replaced ("peak.dram_bandwidth_bytes_per_s" -> "4e12", each value read as YAML
        within `sim.inputs`' bounds), validated again; errors name the file, the --set values and the field."""
        raw = to_dict(self)
        shown = [f"{cut(k)}={cut(v)}" for k, v in list(overrides.items())[:SHOWN_SETS]]
        more = f" (and {len(overrides) - SHOWN_SETS:,} more)" if len(overrides) > SHOWN_SETS else ""
        where = f"{self.path} with --set {' '.join(shown)}{more}"
        if "host.eager_stage_s" in overrides and "eager_stage_s" not in raw["host"]:  # optional, unset: settable
            raw["host"]["eager_stage_s"] = 0.0
            raw["sources"]["host.eager_stage_s"] = "set on the command line (--set)"
        for key, text in overrides.items():
            node, parts = raw, key.split(".")
            for depth, part in enumerate(parts[:-1]):
                if not isinstance(node.get(part), dict):
                    raise HwConfigError(where, key, _no_such_field(node, parts[:depth]))
                node = node[part]
            if parts[-1] not in node or isinstance(node[parts[-1]], dict):
                raise HwConfigError(where, key, _no_such_field(node, parts[:-1]))
            try:
                node[parts[-1]] = load_yaml(text)
            except InputError as err:
                raise HwConfigError(where, key, err.problem) from None
        if "peak.compute_units" in overrides:
            # more units of the same kind: the chip's peak rates grow with them (unless set explicitly)
            units = _number(where, "peak.compute_units", raw["peak"]["compute_units"], COMPUTE_UNITS, integer=True)
            for rates in ("matrix_flops_per_s", "vector_flops_per_s"):
                if not any(k.startswith(f"peak.{rates}") for k in overrides):
                    raw["peak"][rates] = {d: r * units / self.peak.compute_units for d, r in raw["peak"][rates].items()}
        return parse(raw, where)


def _no_such_field(node: dict, within: list[str]) -> str:
    """Says which fields there are where a --set key went astray (the figures of that section, or the sections)."""
    prefix = ".".join(within) + "." if within else ""
    names = [f"{prefix}{k}" + (".*" if isinstance(v, dict) else "") for k, v in node.items() if k != "sources"]
    return f"no such figure; {'in ' + prefix[:-1] if prefix else 'at the top'}: {', '.join(names)}"


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if k == "sources":
            continue
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def to_dict(hw: HwConfig) -> dict[str, Any]:
    raw = dataclasses.asdict(hw)
    raw.pop("path")
    for field, unset in (("eager_op_s", {}), ("eager_stage_s", 0.0)):  # optional host figures: left out when unset
        if raw["host"][field] == unset:
            del raw["host"][field]
    fits = [*raw["classes"].values(), *(f for by_op in raw["ops"].values() for f in by_op.values())]
    if raw["compiled"] is None:
        del raw["compiled"]
    else:
        fits.append(raw["compiled"]["generated"])
    if raw["dequant"] is None:
        del raw["dequant"]
    if raw["interconnect"] is None:
        del raw["interconnect"]
    else:
        raw["interconnect"] = {k: v for k, v in raw["interconnect"].items() if v is not None}  # unset: left out
    for fit in fits:
        for field in ("memory_efficiency", "row_latency_s"):  # optional: left out when unset
            if fit[field] is None:
                del fit[field]
    return raw


def _number(path: str, field: str, value: Any, bounds: tuple[float, float], integer: bool = False) -> Any:
    """`value` if it is a finite number (an integer where `integer`) within `bounds`; else a HwConfigError."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise HwConfigError(path, field, f"expected {'an integer' if integer else 'a number'}, got {brief(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise HwConfigError(path, field, f"expected a finite number, got {value!r}")
    low, high = bounds
    if not low <= value <= high:
        raise HwConfigError(path, field, f"must lie in [{low:g}, {high:g}], got {brief(value)}")
    return value


def _section(path: str, raw: Any, name: str, cls: type, check: Any, optional: tuple[str, ...] = ()) -> Any:
    if not isinstance(raw, dict):
        raise HwConfigError(path, name, f"expected a mapping, got {brief(raw)}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise HwConfigError(path, f"{name}.{key}", f"unknown field; allowed: {', '.join(names)}")
    values = {}
    for field in names:
        if field not in raw:
            if field in optional:
                continue
            raise HwConfigError(path, f"{name}.{field}", "missing")
        values[field] = check(f"{name}.{field}", raw[field])
    return cls(**values)


def _peak_field(path: str, field: str, value: Any) -> Any:
    if field.endswith("flops_per_s"):
        if not isinstance(value, dict) or "float32" not in value:
            raise HwConfigError(path, field, f"expected a mapping of dtype to FLOP/s with at least float32, "
                                f"got {brief(value)}")
        for dtype, rate in value.items():
            if dtype not in DTYPES:
                raise HwConfigError(path, f"{field}.{dtype}", f"unknown dtype; allowed: {', '.join(DTYPES)}")
            _number(path, f"{field}.{dtype}", rate, FLOPS_PER_S)
        return {k: float(v) for k, v in value.items()}
    if field == "peak.compute_units":
        return int(_number(path, field, value, COMPUTE_UNITS, integer=True))
    return float(_number(path, field, value, RANGES[field]))


def _seconds(path: str, field: str, value: Any) -> float:
    return float(_number(path, field, value, SECONDS))


def _host_field(path: str, field: str, value: Any) -> Any:
    """A `host` figure: seconds, or (`host.eager_op_s`) a mapping of op kind to seconds."""
    if field != "host.eager_op_s":
        return _seconds(path, field, value)
    table = _mapping(path, field, value, "op kind (aten name) to seconds per kernel")
    return {op: _seconds(path, f"{field}.{op}", cost) for op, cost in table.items()}


def _efficiency(path: str, field: str, value: Any) -> float:
    """An efficiency: achieved / peak."""
    return float(_number(path, field, value, EFFICIENCY))


def _fit(path: str, field: str, value: Any) -> KernelFit:
    return _section(path, value, field, KernelFit, lambda f, v: _efficiency(path, f, v) if f.endswith("efficiency")
                    else _seconds(path, f, v), optional=("memory_efficiency", "row_latency_s"))


def parse(raw: Any, path: str | os.PathLike[str]) -> HwConfig:
    """Validate a hwconfig mapping (as loaded from YAML)."""
    path = os.fspath(path)
    if not isinstance(raw, dict):
        raise HwConfigError(path, None, "expected a YAML mapping at the top level")
    # classes, ops, compiled, interconnect, dequant: optional
    allowed = [f.name for f in dataclasses.fields(HwConfig) if f.name != "path"]
    for key in raw:
        if key not in allowed:
            raise HwConfigError(path, key, f"unknown field; allowed: {', '.join(allowed)}")
    for key in ("name", "kind", "peak", "host", "efficiency", "tile", "sources"):
        if key not in raw:
            raise HwConfigError(path, key, "missing")
    if not isinstance(raw["name"], str) or not 0 < len(raw["name"]) <= MAX_NAME_CHARS:
        raise HwConfigError(path, "name", f"expected a string of 1 to {MAX_NAME_CHARS} characters, got "
                            f"{brief(raw['name'])}")
    if raw["kind"] not in KINDS:
        raise HwConfigError(path, "kind", f"must be one of {', '.join(KINDS)}, got {brief(raw['kind'])}")

    peak = _section(path, raw["peak"], "peak", Peak, lambda f, v: _peak_field(path, f, v))
    host = _section(path, raw["host"], "host", Host, lambda f, v: _host_field(path, f, v),
                    optional=("eager_op_s", "eager_stage_s"))
    eff = _section(path, raw["efficiency"], "efficiency", Efficiency, lambda f, v: _efficiency(path, f, v),
                   optional=("matrix_sustained",))
    tile = _section(path, raw["tile"], "tile", Tile, lambda f, v: int(_number(path, f, v, TILE, integer=True)))
    sources = raw["sources"]
    if not isinstance(sources, dict):
        raise HwConfigError(path, "sources", "expected a mapping of field to source")
    _check_sources(path, raw, sources)
    notes = raw.get("notes", "")
    if not isinstance(notes, str):
        raise HwConfigError(path, "notes", f"expected a string, got {brief(notes)}")
    classes = {cls: _fit(path, f"classes.{cls}", value) for cls, value in _class_mapping(path, raw, "classes").items()}
    ops = {cls: {op: _fit(path, f"ops.{cls}.{op}", value)
                 for op, value in _mapping(path, f"ops.{cls}", by_op, "op kind (aten name) to fit").items()}
           for cls, by_op in _class_mapping(path, raw, "ops").items()}
    compiled = None
    if raw.get("compiled") is not None:
        compiled = _section(path, raw["compiled"], "compiled", CompiledFits, lambda f, v: _fit(path, f, v)
                            if f.endswith("generated") else _seconds(path, f, v))
    interconnect = None if raw.get("interconnect") is None else _interconnect(path, raw["interconnect"], sources)
    dequant = None if raw.get("dequant") is None else _dequant(path, raw["dequant"], sources)
    return HwConfig(raw["name"], raw["kind"], peak, host, eff, tile, dict(sources), path, notes, classes, ops,
                    compiled, interconnect, dequant)


def _dequant(path: str, raw: Any, sources: dict) -> Dequant:
    """The optional `dequant` section: both figures, each within its range and with a source."""
    section = _section(path, raw, "dequant", Dequant, lambda f, v: _number(
        path, f, v, RANGES[f], integer=f.endswith("rows_per_pass")))
    for field in ("ops_per_s", "rows_per_pass"):
        key = f"dequant.{field}"
        if not isinstance(sources.get(key), str) or not sources[key].strip():
            raise HwConfigError(path, f"sources.{key}", "missing: every dequant figure needs a source")
    return Dequant(float(section.ops_per_s), int(section.rows_per_pass))


def _check_sources(path: str, raw: dict, sources: dict) -> None:
    """A source for every peak and host figure: per dtype or for a rate's mapping, per op kind or for the host's
    table of op kinds (`host.eager_op_s`: op kinds hold dots)."""
    def cited(key: str) -> bool:
        return isinstance(sources.get(key), str) and bool(sources[key].strip())

    for field in _leaves({"peak": raw["peak"], "host": raw["host"]}):
        if field.startswith("host.eager_op_s."):
            if not (cited(field) or cited("host.eager_op_s")):
                raise HwConfigError(path, "sources.host.eager_op_s", "missing: every peak and host figure needs a "
                                    "source (one for the table, or one per op kind)")
            continue
        if field.count(".") > 1 and (field in sources or field.rsplit(".", 1)[0] in sources):
            continue  # per-dtype rates: the source may be given per dtype or for the mapping
        if not cited(field):
            raise HwConfigError(path, f"sources.{field}", "missing: every peak and host figure needs a source")


def _interconnect_field(path: str, field: str, value: Any) -> Any:
    if field == "interconnect.kind":
        if value not in LINK_KINDS:
            raise HwConfigError(path, field, f"must be one of {', '.join(LINK_KINDS)}, got {brief(value)}")
        return value
    if field == "interconnect.nvls":
        if not isinstance(value, bool):
            raise HwConfigError(path, field, f"expected true or false, got {brief(value)}")
        return value
    integer = field in ("interconnect.devices_per_node", "interconnect.compute_capability")
    number = _number(path, field, value, RANGES[field], integer=integer)
    return int(number) if integer else float(number)


def _interconnect(path: str, raw: Any, sources: dict) -> Interconnect:
    """The optional `interconnect` section, checked field by field and as a whole: the fields its kind needs and no
    others, and a source for every figure."""
    optional = ("efficiency", "compute_capability", "nvls", "step_latency_s")
    section = _section(path, raw, "interconnect", Interconnect, lambda f, v: _interconnect_field(path, f, v),
                       optional=optional)
    gpu = section.kind in GPU_LINK_KINDS
    needs = {"compute_capability": gpu, "step_latency_s": not gpu}
    why = {"compute_capability": "NCCL's tuning tables are indexed by it",
           "step_latency_s": "gloo's per-message cost: NCCL's per-step latencies are its own constants"}
    for field, needed in needs.items():
        if needed and field not in raw:
            raise HwConfigError(path, f"interconnect.{field}", f"missing: kind {section.kind} needs it ({why[field]})")
        if not needed and field in raw:
            kinds = ", ".join(GPU_LINK_KINDS) if field == "compute_capability" else "loopback"
            raise HwConfigError(path, f"interconnect.{field}", f"only for kind {kinds}, not {section.kind} "
                                f"({why[field]})")
    if section.nvls and (section.kind != "nvswitch" or section.compute_capability < 90):
        raise HwConfigError(path, "interconnect.nvls", "NVLS needs kind nvswitch and compute_capability >= 90 "
                            f"(NVSwitch gen 3, NCCL search.cc), got kind {section.kind}, compute_capability "
                            f"{section.compute_capability}")
    for field in raw:
        key = f"interconnect.{field}"
        if field == "nvls" and raw[field] is False:  # off, NCCL's default without an NVLink SHARP switch
            continue
        if not isinstance(sources.get(key), str) or not sources[key].strip():
            raise HwConfigError(path, f"sources.{key}", "missing: every interconnect figure needs a source")
    return section


def _mapping(path: str, field: str, value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise HwConfigError(path, field, f"expected a mapping of {what}, got {brief(value)}")
    return value


def _class_mapping(path: str, raw: dict, field: str) -> dict:
    """The optional top-level mapping `field` keyed by kernel class."""
    out = _mapping(path, field, raw.get(field), "kernel class to op kinds" if field == "ops" else
                   "kernel class to fit")
    fitted = [c for c in KERNEL_CLASSES if c != "collective"]  # a collective's time: the interconnect section's
    for cls in out:
        if cls not in fitted:
            why = ("a collective is timed by the interconnect section (its efficiency and collective_latency_s)"
                   if cls == "collective" else "unknown kernel class")
            raise HwConfigError(path, f"{field}.{cls}", f"{why}; allowed: {', '.join(fitted)}")
    return out


def load_hwconfig(path: str | os.PathLike[str]) -> HwConfig:
    """Load and validate a hwconfig YAML file."""
    path = Path(path)
    try:
        raw = load_yaml_file(path)
    except FileNotFoundError:
        known = ", ".join(sorted(p.name for p in HWCONFIG_DIR.glob("*.yaml")))
        raise HwConfigError(path, None, f"no such file (shipped hwconfigs: {known})") from None
    except InputError as err:
        raise HwConfigError(path, err.field, err.located) from None
    return parse(raw, path)
