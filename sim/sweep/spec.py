"""Sweep specs: a YAML file that names the axes of a design-space sweep, expanded into points in a fixed order.

    grid:                                  # every combination, in this order (the last axis varies fastest)
      hw: [a100, h100]                     # shipped hwconfig names or YAML files
      model: [data/hfconfigs/llama-2-7b/config.json]   # presets, Hugging Face config.json or model YAML files
      share: [8x4, 4x8]                    # cyclically shared variants (NdxG; null: the model as it is)
      decoder: [speed, sequential]         # default: both (SPEED rows then carry their speedup)
      launch: [compiled]                   # eager, graph, compiled (default compiled)
      batch: [1, 4]
      tokens: [64]
      flip_rate: [0.02, 0.1]               # one SPEED flip rate for every exit (or flips: a profile or "0.09,0.04")
      tp: [1, 2, 8]                        # tensor-parallel degree (as sim.run --tp; memory per GPU)
      quant: [null, int8, int4-g128]       # weight-only quantization (as sim.run --quant; null: float weights)
      set:                                 # hwconfig fields, as sim.run --set; "x0.5": times the hwconfig's value
        peak.dram_bandwidth_bytes_per_s: [x0.5, x1, x2]
    plots:
      heatmap: {x: set.peak.dram_bandwidth_bytes_per_s, y: batch}
    cost: {a100: 1.8, h100: 3.0}           # $ per device-hour: latency against cost per million tokens
    accuracy: {llama-2-7b-8x4: 0.61}       # per model (as rows name it): latency against accuracy

`points:` (a list of mappings with the same keys) replaces `grid:` for hand-picked points. A scalar is an axis of
one value. Axes left out take sim.run's defaults (hw a100, model t5-base-4x3, batch 1, tokens 128, dtype
bfloat16, streams 1, tp 1, quant null, flips: the model's profile). Every problem is a `SpecError` naming the file
and the field: the file is read within `sim.inputs`' bounds (a regular UTF-8 file of at most 1 MiB, no alias
expansion bombs or deep nesting, no key given twice, integers in decimal), numbers must be finite, counts within
MAX_AXIS.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.defaults import DEFAULT_HW, DEFAULT_TOKENS, MAX_BATCH, MAX_TOKENS
from sim.engine import LAUNCH_MODES
from sim.inputs import InputError, brief, cut, load_yaml_file
from sim.opkinds import QUANT_SCHEMES

DECODERS = ("speed", "sequential")
DTYPES = ("bfloat16", "float16", "float32")
# axis -> default (a list: every value of it); "set.<field>" axes are hwconfig overrides
AXES: dict[str, list[Any]] = {
    "hw": [DEFAULT_HW], "model": ["t5-base-4x3"], "share": [None], "decoder": list(DECODERS), "launch": ["compiled"],
    "batch": [1], "tokens": [DEFAULT_TOKENS], "dtype": ["bfloat16"], "flips": [None], "flip_rate": [None],
    "streams": [1], "tp": [1], "quant": [None],
}
SCALE = re.compile(r"x\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)")  # "x0.5": half the hwconfig's value
# the largest value of each count axis: far beyond any run worth sweeping (and sim.run's own limit on streams)
MAX_AXIS = {"batch": MAX_BATCH, "tokens": MAX_TOKENS, "streams": 1024, "tp": 1 << 16}
# points a spec may hold: a day's sweep on a 100-worker cluster at ~1 point/s per worker (a point takes 0.1 to a
# few seconds); counted from the axes' lengths before any point is made
MAX_POINTS = 100_000
PLOTS = ("heatmap",)


class SpecError(ValueError):
    """A sweep spec that cannot be run; `path` and `field` say where."""

    def __init__(self, path: str | os.PathLike[str], field: str | None, problem: str) -> None:
        super().__init__(f"sweep spec {os.fspath(path)}" + (f", field '{field}'" if field else "") + f": {problem}")


@dataclass(frozen=True)
class Point:
    """One projection of a sweep: the value of every axis (`sets`: hwconfig overrides as written, sorted)."""

    hw: str
    model: str
    share: str | None
    decoder: str
    launch: str
    batch: int
    tokens: int
    dtype: str
    flips: str | None
    flip_rate: float | None
    streams: int
    tp: int
    quant: str | None = None  # a weight-only scheme (sim.opkinds.QUANT_SCHEMES); None: float weights
    sets: tuple[tuple[str, str], ...] = ()

    def axes(self) -> dict[str, Any]:
        """The point as a flat mapping: axis -> value ("set.<field>" for the overrides)."""
        out = {k: getattr(self, k) for k in AXES}
        out.update({f"set.{k}": v for k, v in self.sets})
        return out

    def configuration(self) -> Point:
        """The point with its decoder left open: the points of one configuration are projected together."""
        return Point(**{**self.__dict__, "decoder": ""})


@dataclass
class Spec:
    path: Path
    points: list[Point]
    swept: list[str]  # axes with more than one value, in spec order
    heatmap: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)  # hw (as the spec names it) -> $ per device-hour
    accuracy: dict[str, float] = field(default_factory=dict)  # model name (as rows name it) -> accuracy


def _values(path: Path, name: str, raw: Any) -> list[Any]:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise SpecError(path, name, "an axis needs at least one value")
    return values


def _check(path: Path, name: str, value: Any, where: str) -> Any:
    """One value of axis `name` (at `where` in the spec), validated (numbers as numbers, names from their lists)."""
    def fail(expected: str) -> SpecError:
        return SpecError(path, where, f"expected {expected}, got {brief(value)}")

    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if name in MAX_AXIS:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_AXIS[name]:
            raise fail(f"an integer in [1, {MAX_AXIS[name]}]")
    elif name == "decoder" and value not in DECODERS:
        raise fail(f"one of {', '.join(DECODERS)}")
    elif name == "launch" and value not in LAUNCH_MODES:
        raise fail(f"one of {', '.join(LAUNCH_MODES)}")
    elif name == "dtype" and value not in DTYPES:
        raise fail(f"one of {', '.join(DTYPES)}")
    elif name == "quant" and value is not None and value not in QUANT_SCHEMES:
        raise fail(f"one of {', '.join(QUANT_SCHEMES)}, or null (float weights)")
    elif name == "flip_rate" and value is not None and not (number and 0 <= value < 1):
        raise fail("a flip rate in [0, 1)")
    elif name in ("hw", "model") and (not isinstance(value, str) or not value):
        raise fail("a name or a file")
    elif name in ("share", "flips") and value is not None and not isinstance(value, str):
        raise fail("a string (or null)")
    elif name.startswith("set.") and not (number or (isinstance(value, str) and _factor(value))):
        raise fail("a finite number, or 'x<factor>' (a finite factor > 0) to scale the hwconfig's value")
    return str(value) if name.startswith("set.") else value


def _factor(text: str) -> bool:
    """Whether `text` is "x<factor>" with a finite factor > 0."""
    scale = SCALE.fullmatch(text)
    return scale is not None and 0 < float(scale[1]) < math.inf


def _axes(path: Path, raw: Any, where: str) -> dict[str, list[Any]]:
    """The axes of a grid or of one listed point: name -> validated values (defaults for the others)."""
    if not isinstance(raw, dict):
        raise SpecError(path, where, "expected a mapping of axis to values")
    axes = {k: list(v) for k, v in AXES.items()}
    for name, values in raw.items():
        if name == "set":
            if not isinstance(values, dict) or not values:
                raise SpecError(path, f"{where}.set", "expected a mapping of hwconfig field to values")
            for key, v in values.items():
                field = f"{where}.set.{key}"
                axes[f"set.{key}"] = _distinct(path, field, [_check(path, f"set.{key}", x, field)
                                                             for x in _values(path, field, v)])
        elif name in AXES:
            field = f"{where}.{name}"
            axes[name] = _distinct(path, field, [_check(path, name, x, field) for x in _values(path, field, values)])
        else:
            raise SpecError(path, f"{where}.{name}", f"unknown axis; axes: {', '.join(AXES)}, set")
    if axes["flips"] != [None] and axes["flip_rate"] != [None]:
        raise SpecError(path, f"{where}.flip_rate", "give flips or flip_rate, not both")
    return axes


def _distinct(path: Path, where: str, values: list[Any]) -> list[Any]:
    """`values` (checked: scalars) if no value is given twice; else a SpecError naming the axis and the value."""
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise SpecError(path, where, f"{brief(value)} given twice: each value of an axis makes its own points")
        seen.add(value)
    return values


def _count_points(path: Path, field: str, listed: list[dict[str, list[Any]]]) -> None:
    """Refuse a spec whose grid (or listed points, each a grid of its own) holds more than MAX_POINTS points,
    from its axes' lengths, before any point is made."""
    sizes = [math.prod(len(v) for v in axes.values()) for axes in listed]
    if sum(sizes) > MAX_POINTS:
        widest = max(listed, key=lambda axes: math.prod(len(v) for v in axes.values()))
        lengths = " x ".join(f"{len(v):,} {k}" for k, v in widest.items() if len(v) > 1)
        raise SpecError(path, field, f"{sum(sizes):,} points ({lengths}{' in the largest' if len(listed) > 1 else ''}"
                        f"), more than {MAX_POINTS:,}: split the sweep, or sweep fewer values")


def _point(axes: dict[str, Any]) -> Point:
    sets = tuple(sorted((k.removeprefix("set."), v) for k, v in axes.items() if k.startswith("set.")))
    return Point(**{k: axes[k] for k in AXES}, sets=sets)


def _mapping(path: Path, raw: dict, name: str, value_check: Any) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict) or not all(value_check(v) for v in value.values()):
        raise SpecError(path, name, f"expected a mapping of name to a finite number >= 0, got {brief(value)}")
    return {str(k): float(v) for k, v in value.items()}


def _heatmap(path: Path, plots: Any, points: list[Point], swept: list[str]) -> dict[str, Any]:
    """The heatmap of `plots`, checked against the points when the spec is read (never after they ran): x and y
    two distinct axes the spec sweeps (not the decoder: the map is SPEED's speedup over sequential decoding),
    `where` fixing other swept axes to values they take."""
    plots = {} if plots is None else plots
    if not isinstance(plots, dict) or not set(plots) <= set(PLOTS):
        unknown = sorted(set(plots) - set(PLOTS), key=str)[0] if isinstance(plots, dict) else None
        raise SpecError(path, f"plots.{cut(unknown)}" if unknown else "plots", f"expected a mapping of plots; "
                        f"plots: {', '.join(PLOTS)}")
    heatmap = plots.get("heatmap") or {}
    if not isinstance(heatmap, dict) or not set(heatmap) <= {"x", "y", "where"} or ("x" in heatmap) != (
            "y" in heatmap):
        raise SpecError(path, "plots.heatmap", f"expected {{x: AXIS, y: AXIS, where: {{AXIS: VALUE}}}}, got "
                        f"{brief(heatmap)}")
    plotted = [heatmap[k] for k in ("x", "y") if k in heatmap]
    where = heatmap.get("where") or {}
    if not isinstance(where, dict):
        raise SpecError(path, "plots.heatmap.where", f"expected a mapping of axis to value, got {brief(where)}")
    choices = [a for a in swept if a != "decoder"]
    for axis in [*plotted, *where]:
        if not isinstance(axis, str) or axis not in choices:
            raise SpecError(path, f"plots.heatmap {cut(axis)}", "not an axis the spec sweeps; swept axes: "
                            f"{', '.join(choices) or 'none'}")
        if axis in where and axis in plotted:
            raise SpecError(path, f"plots.heatmap {axis}", "plotted, so it cannot be fixed by where too")
    if len(set(plotted)) != len(plotted):
        raise SpecError(path, f"plots.heatmap {plotted[0]}", "x and y are the same axis")
    for axis, value in where.items():
        taken = {str(p.axes().get(axis)) for p in points}
        if str(value) not in taken:
            raise SpecError(path, f"plots.heatmap.where.{axis}", f"{brief(value)} is not a value the axis takes "
                            f"({', '.join(sorted(taken))[:200]})")
    return heatmap


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and expand a sweep spec: its points in a fixed order (grid: the last axis varies fastest)."""
    path = Path(path)
    try:
        raw = load_yaml_file(path)
    except FileNotFoundError:
        raise SpecError(path, None, "no such file") from None
    except InputError as err:
        raise SpecError(path, err.field, err.located) from None
    if not isinstance(raw, dict) or ("grid" in raw) == ("points" in raw):
        raise SpecError(path, None, "expected a mapping with either 'grid' (every combination) or 'points' (a list)")
    unknown = set(raw) - {"grid", "points", "plots", "cost", "accuracy"}
    if unknown:
        raise SpecError(path, sorted(unknown)[0], "unknown field; fields: grid or points, plots, cost, accuracy")
    if "grid" in raw:
        axes = _axes(path, raw["grid"], "grid")
        _count_points(path, "grid", [axes])
        points = [_point(dict(zip(axes, combo))) for combo in itertools.product(*axes.values())]
        swept = [k for k, v in axes.items() if len(v) > 1]
    else:
        if not isinstance(raw["points"], list) or not raw["points"]:
            raise SpecError(path, "points", "expected a non-empty list of mappings")
        listed = [_axes(path, p, f"points[{i}]") for i, p in enumerate(raw["points"])]
        _count_points(path, "points", listed)
        points = [_point(dict(zip(axes, combo))) for axes in listed for combo in itertools.product(*axes.values())]
        names = list(dict.fromkeys(k for axes in listed for k in axes))
        swept = [k for k in names if len({p.axes().get(k) for p in points}) > 1]
    if len(set(points)) != len(points):
        raise SpecError(path, "grid" if "grid" in raw else "points", "the same point appears twice")
    heatmap = _heatmap(path, raw.get("plots"), points, swept)
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf  # noqa: E731
    return Spec(path, points, swept, heatmap, _mapping(path, raw, "cost", number),
                _mapping(path, raw, "accuracy", number))
