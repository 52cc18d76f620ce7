"""Every field of the trace format in one place: per record (header, op, stage, end) and version, each field
with its check (type and bound) and a description of what it expects, which the error names (the field
meanings: sim/trace/FORMAT.md). `check` validates a parsed record against its schema."""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections.abc import Callable
from typing import Any

from sim.opkinds import DTYPE_BYTES, KERNEL_CLASSES, QUANT_DTYPES
from sim.trace.limits import (
    DECODERS,
    MAX_BYTES,
    MAX_DEQUANT_OPS,
    MAX_ELEMENTS,
    MAX_FLOPS,
    MAX_INDEX,
    MAX_NESTING,
    MAX_SECONDS,
    MIN_SECONDS,
    STAGE_KINDS,
)
from sim.trace.records import QUANT_FIELD_NAMES, PathLike, TraceError

Check = Callable[[Any], bool]
Field = tuple[Check, str]  # a field's check and what it expects

_INT, _LIST, _STR_TYPE = {int}, {list}, {str}


def ints(v: Any, least: int = 0, most: int | None = MAX_INDEX) -> bool:
    """A list of integers in least..most (no upper bound: None; `type(x) is int` also rejects bools), checked
    with C-level passes."""
    return (type(v) is list and {*map(type, v)} <= _INT and min(v, default=least) >= least
            and (most is None or max(v, default=0) <= most))


def _shape(v: Any) -> bool:
    """A tensor shape: integers >= 0 whose nonzero ones multiply to at most MAX_ELEMENTS (so each is at most that)."""
    return (type(v) is list and {*map(type, v)} <= _INT and min(v, default=0) >= 0
            and math.prod(filter(None, v)) <= MAX_ELEMENTS)


def _shapes(v: Any) -> bool:
    """A list of shapes, checked in a few C-level passes over all their dimensions: when the nonzero ones of all
    shapes multiply to at most MAX_ELEMENTS, so do each shape's (the common case); else shape by shape."""
    if type(v) is not list or not {*map(type, v)} <= _LIST:
        return False
    dims = list(itertools.chain.from_iterable(v))
    if not ({*map(type, dims)} <= _INT and min(dims, default=0) >= 0):
        return False
    return math.prod(filter(None, dims)) <= MAX_ELEMENTS or all(math.prod(filter(None, s)) <= MAX_ELEMENTS for s in v)


DTYPES = frozenset(DTYPE_BYTES)  # the dtypes a trace may name: those whose size the simulator knows
DEVICES = ("cpu", "cuda", "meta")  # where a trace was captured or measured
# the model's sizes a header's model names (reference.config.ModelConfig's): integers >= 1 where given
MODEL_SIZES = ("vocab_size", "d_model", "n_heads", "n_kv_heads", "d_ff", "n_unique_layers", "n_groups", "max_seq_len")
_DTYPE_NAMES = ", ".join(sorted(DTYPES))
WEIGHT = f"{{bytes: an integer in 0..2**50, shape: a shape, dtype: one of {_DTYPE_NAMES}}}"


def _dtypes(v: Any) -> bool:
    """A list of dtype names the simulator knows."""
    return type(v) is list and {*map(type, v)} <= _STR_TYPE and {*v} <= DTYPES


def weight(v: Any) -> bool:
    return (type(v) is dict and v.keys() == {"bytes", "shape", "dtype"} and type(v["bytes"]) is int
            and 0 <= v["bytes"] <= MAX_BYTES and _shape(v["shape"]) and type(v["dtype"]) is str
            and v["dtype"] in DTYPES)


def model_size_fault(model: dict[str, Any]) -> str | None:
    """The first of a header model's sizes that is not an integer >= 1 (the encoder's layers: >= 0), or None."""
    for k in (*MODEL_SIZES, "n_encoder_layers"):
        v = model.get(k)
        if v is not None and not (type(v) is int and v >= (0 if k == "n_encoder_layers" else 1)):
            return k
    return None


def _model(v: Any) -> bool:
    """The header's model: scalars (numbers finite), its sizes integers >= 1 (the encoder's layers >= 0)."""
    return type(v) is dict and all(map(_scalar, v.values())) and model_size_fault(v) is None


def _scalar(v: Any) -> bool:
    return v is None or type(v) in (str, int, bool) or (type(v) is float and math.isfinite(v))


def _free_form(v: Any) -> bool:
    """JSON nested at most MAX_NESTING deep, every number finite (1e999 reads as infinity)."""
    level = [v]
    for _ in range(MAX_NESTING):
        inner = []
        for x in level:
            if type(x) is dict:
                inner += x.values()
            elif type(x) is list:
                inner += x
            elif type(x) is float and not math.isfinite(x):
                return False
        if not inner:
            return True
        level = inner
    return False


def _count(most: int, bound: str, least: int = 0, null: bool = False) -> Field:
    """A field holding an integer in least..most (or null, when `null`), `bound` naming `most`."""
    desc = f"an integer in {least}..{bound}" + (" or null" if null else "")
    if null:
        return (lambda v: v is None or (type(v) is int and least <= v <= most)), desc
    return (lambda v: type(v) is int and least <= v <= most), desc


def _seconds(v: Any) -> bool:
    return v is None or (type(v) in (float, int) and (v == 0 or MIN_SECONDS <= v <= MAX_SECONDS))


# Field checkers: (predicate, what it expects). `type(v) is int` also rejects bools.
_KERNEL_CLASSES = frozenset(KERNEL_CLASSES)
_KIND = (lambda v: type(v) is str and v in _KERNEL_CLASSES, f"one of {KERNEL_CLASSES}")
_NAT = (lambda v: type(v) is int and v >= 0, "an integer >= 0")  # a count compared with what was read
_INDEX = _count(MAX_INDEX, "2**31 - 1")
_POS = _count(MAX_INDEX, "2**31 - 1", least=1)
_OPT_INDEX = _count(MAX_INDEX, "2**31 - 1", null=True)
_BYTES = _count(MAX_BYTES, "2**50")
_STR = (lambda v: type(v) is str, "a string")
_STRS = (lambda v: type(v) is list and {*map(type, v)} <= _STR_TYPE, "a list of strings")
_DTYPE_LIST = (_dtypes, f"a list of dtypes, each one of {_DTYPE_NAMES}")
_SHAPES = (_shapes, "a list of shapes (lists of integers >= 0 whose nonzero ones multiply to at most 2**50)")
_TRIPLES = (lambda v: type(v) is list and all(ints(t) and len(t) == 3 for t in v),
            "a list of [int, int, int] (integers in 0..2**31 - 1)")
_SECONDS = (_seconds, f"0, a number of seconds in {MIN_SECONDS:g}..{MAX_SECONDS:g}, or null")
_OBJECT = (lambda v: type(v) is dict, "an object")
_FREE = (lambda v: type(v) is dict and _free_form(v),
         f"an object nested at most {MAX_NESTING} deep, its numbers finite")
_DEPS = (lambda v: ints(v, 1, None), "a list of integers >= 1")


class Schema:
    """The fields of one kind of record, in order, each with its check and description; `get` takes their values
    out of a parsed record (KeyError: a field is missing) and `checks` are the checks in the same order."""

    def __init__(self, fields: dict[str, Field]) -> None:
        self.fields = fields
        self.get = operator.itemgetter(*fields)
        self.checks = tuple(ok for ok, _ in fields.values())

    def without(self, *names: str) -> Schema:
        return Schema({k: c for k, c in self.fields.items() if k not in names})

    def with_fields(self, added: dict[str, Field], after: str | None = None) -> Schema:
        """These fields and `added` (a version's new fields), placed right after field `after` (default: last)."""
        if after is None:
            return Schema({**self.fields, **added})
        out: dict[str, Field] = {}
        for name, spec in self.fields.items():
            out[name] = spec
            if name == after:
                out.update(added)
        return Schema(out)

    def fault(self, values: tuple[Any, ...]) -> tuple[str, str] | None:
        """The first field whose value fails its check, and what it expected; None if none does."""
        for (name, (ok, desc)), v in zip(self.fields.items(), values):
            if not ok(v):
                return name, f"expected {desc}, got {show(v)}"
        return None


HEADER_V4 = Schema({
    "format": _STR, "version": _NAT,
    "model": (_model, f"an object of scalars (numbers finite), its sizes ({', '.join(MODEL_SIZES)}) integers >= 1 "
              "where given"),
    "decoder": (lambda v: v in DECODERS, f"one of {DECODERS}"),
    "dtype": (lambda v: type(v) is str and v in DTYPES, f"one of {_DTYPE_NAMES}"), "batch": _POS,
    "prompt_lens": (lambda v: ints(v, 1) and bool(v), "a non-empty list of integers in 1..2**31 - 1"),
    "max_new_tokens": _POS, "device": (lambda v: v in DEVICES, f"one of {DEVICES}"),
    "device_name": _STR, "torch_version": _STR, "code_revision": _STR,
    "flips": (lambda v: _FREE[0](v) and type(v.get("source")) is str,
              f"an object with a string 'source', nested at most {MAX_NESTING} deep, its numbers finite"),
    "weights": (lambda v: type(v) is dict and all(map(weight, v.values())), f"an object of {{id: {WEIGHT}}}"),
    "measured": (lambda v: type(v) is bool, "true or false"), "command": _STR, "extra": _FREE,
})
# version 5: the tensor-parallel degree and the rank the trace is of, after the dtype (version 4 reads as one rank;
# the reader checks tp_rank < tp)
HEADER = HEADER_V4.with_fields({"tp": _POS, "tp_rank": _INDEX}, after="dtype")
# an executed op (`OpRecord`, version 3)
OP = Schema({
    "i": _NAT, "stage": _INDEX, "group": _OPT_INDEX, "depth": _OPT_INDEX, "layer": _OPT_INDEX, "seq": _OPT_INDEX,
    "rows": _INDEX, "module": _STR, "kind": _KIND, "op": _STR,
    "in_shapes": _SHAPES, "in_dtypes": _DTYPE_LIST, "out_shapes": _SHAPES, "out_dtypes": _DTYPE_LIST,
    "flops": _count(MAX_FLOPS, "2**60"), "weight_bytes": _BYTES, "act_read_bytes": _BYTES, "act_write_bytes": _BYTES,
    "kv_read_bytes": _BYTES, "kv_write_bytes": _BYTES, "weights": _STRS, "kv": _STRS,
    # distances back in the stage: bounded by the ops of the stage before the op (checked with the stage)
    "srcs": (lambda v: ints(v, 0, None), "a list of integers >= 0"),
    "deps": _DEPS,
    "duration_s": _SECONDS,
})
OP_V2 = OP.without("seq", "kind", "kv", "srcs")
OP_V1 = OP_V2.without("deps")
OP_SCHEMAS = {3: OP, 2: OP_V2, 1: OP_V1}  # version -> op schema
OP_REST = {v: schema.without("i", "stage") for v, schema in OP_SCHEMAS.items()}  # what follows i and stage
STAGE = Schema({
    "stage": _INDEX, "kind": (lambda v: v in STAGE_KINDS, f"one of {STAGE_KINDS}"), "rows": _TRIPLES,
    "commits": _TRIPLES, "flushes": _TRIPLES, "wall_s": _SECONDS,
})
END = Schema({"ops": _NAT, "stages": _NAT})
# version 4: an op record is a distinct op, numbered by `id`; a stage names its ops; the end counts executions
OP_BODY = OP.without("i", "stage")  # an op wherever it runs: the fields of `OpRecord` after i and stage
OP_V4 = Schema({"id": _NAT, **OP_BODY.fields})
STAGE_V4 = Schema({**STAGE.fields, "ops": _OBJECT})
END_V4 = Schema({**END.fields, "executed": _NAT})
# version 5: a collective's group size, null for every other op (sim.trace.checks: non-null exactly for kind
# "collective"), after the duration
OP_BODY_V5 = OP_BODY.with_fields({"ranks": _count(MAX_INDEX, "2**31 - 1", least=1, null=True)})
OP_V5 = Schema({"id": _NAT, **OP_BODY_V5.fields})
# version 6: a weight-only quantized product's weight format, after the group size (sim.trace.checks: all null or 0
# for every other op, weight_bytes holding the packed weights and the scale and zero bytes)
QUANT_FIELDS: dict[str, Field] = {
    "weight_dtype": (lambda v: v is None or v in QUANT_DTYPES, f"null or one of {QUANT_DTYPES}"),
    "group_size": _count(MAX_INDEX, "2**31 - 1", least=1, null=True),
    "scale_bytes": _BYTES, "zero_bytes": _BYTES,
    "dequant_ops": _count(MAX_DEQUANT_OPS, str(MAX_DEQUANT_OPS)),
}
OP_BODY_V6 = OP_BODY_V5.with_fields(QUANT_FIELDS)
assert tuple(QUANT_FIELDS) == QUANT_FIELD_NAMES, "the schema's quantized fields are OpRecord's, in its order"
OP_V6 = Schema({"id": _NAT, **OP_BODY_V6.fields})
OP_BY_VERSION = {4: OP_V4, 5: OP_V5, 6: OP_V6}  # version -> the schema of a compact op record
# an op in memory (`sim.trace.check_op`): every field of `OpRecord` after i and stage, as the newest version has
# them, but deps may be None (program order, as version 1 reads)
OP_IN_MEMORY = Schema({**OP_BODY_V6.fields, "deps": (lambda v: v is None or _DEPS[0](v), f"null or {_DEPS[1]}")})

# a record's "type" when it has none
MISSING = object()


def show(v: Any) -> str:
    """A value for an error message, at most 80 characters."""
    try:
        text = json.dumps(v)
    except (ValueError, RecursionError):  # nested deeper than the encoder goes, or an integer too long to print
        text = f"a {type(v).__name__} too large to show"
    except TypeError:  # not a JSON value: only in an op built in code
        text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def check(obj: dict[str, Any], schema: Schema, path: PathLike, line: int) -> tuple[Any, ...]:
    """Validate `obj` (a record without its "type") against `schema`; return its values in schema order."""
    try:
        values = schema.get(obj)
    except KeyError as e:
        raise TraceError(path, line, e.args[0], "missing") from None
    if len(obj) != len(schema.fields):
        raise TraceError(path, line, next(k for k in obj if k not in schema.fields), "unknown field")
    if all(map(operator.call, schema.checks, values)):  # the common case, in one C-level pass
        return values
    fault = schema.fault(values)
    if fault is not None:
        raise TraceError(path, line, *fault)
    return values


def type_error(path: PathLike, line: int, kind: Any) -> TraceError:
    """A record whose "type" (`kind`, MISSING if it has none) is none of the format's."""
    problem = "missing" if kind is MISSING else f"expected 'op', 'stage' or 'end', got {show(kind)}"
    return TraceError(path, line, "type", problem)
