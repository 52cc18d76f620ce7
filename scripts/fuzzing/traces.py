"""Hostile trace files, mutated from the default traces (data/traces/, format 5; each in turn) and a tensor-parallel
trace (tests/data/, format 5 with collectives) through
`sim.run --hw a100 --trace FILE`, and from the first --measured-stages stages of a measured trace
(data/measured/h200/, format 1; its end record recounted) through `sim.fitting.validate --hw
hwconfigs/h200-calibrated.yaml --measured FILE`. Each base runs unchanged first (a control: it must be accepted,
else the fuzzing would judge the base, not the mutations). The cases:

- named: what issue 12 lists (not gzip, binary, UTF-16, non-UTF-8, truncated gzip, 10**320 in flops, weight_bytes
  and shapes, NaN / infinity / negative / bool for counts and durations, a line 100,000 deep, attention in_shapes
  [[5]], [[]], [[0]], matmul out_shapes [[]], references to no op, stage or slot, end counts off by one,
  duplicate and missing header fields, stages with no ops, no decode stage, a "like" bomb of executed ops);
- drawn (seeded by --seed): a hostile value (NaN, infinities, negatives, huge integers, wrong types, deep
  nesting, odd shapes) at a random place of a random record; a line deleted, duplicated, swapped with the next or
  replaced by garbage; a key dropped, duplicated or added; the text or the gzip stream cut; a byte of the gzip
  stream flipped.

A case must be refused ("reject") when it holds a value no real run has (non-finite, negative or beyond any
run, of the wrong type, nested, a shape the kernel model cannot take, a damaged structure); "any" otherwise (a
change a trace may hold: a finite result, or a clear refusal). A clear refusal names the file, or is a capacity
refusal (a readable trace too large for the device, which names the hwconfig's peak.dram_capacity_bytes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from scripts.fuzzing.bases import DEFAULT_TRACES, H200_CALIBRATED, MEASURED, TP_TRACE, Base, first_stages
from scripts.fuzzing.harness import Case, Generator, Node
from scripts.fuzzing.mutate import (
    PLACEHOLDER,
    dumps,
    get,
    gz,
    gzipped,
    joined,
    nested,
    put,
    replace_line,
    with_key_first,
    without_key,
)
from sim.command import integer
from sim.trace import legacy_kind

DEEP = nested(100_000)

# Hostile values as JSON text, each with its class (what `expected` judges by).
HOSTILE = [("NaN", "nonfinite"), ("Infinity", "nonfinite"), ("-Infinity", "nonfinite"), ("1e999", "nonfinite"),
           ("-1", "negative"), ("-0.5", "negative"), ("1" + "0" * 320, "huge"), ("1" + "0" * 5000, "huge"),
           ("1e300", "huge"), ("true", "bool"), ("false", "bool"), ("null", "null"), ('""', "str"), ('"12"', "str"),
           ("1.5", "float"), ("0", "zero"), ("1", "zero"), ("[]", "list"), ("[[]]", "list"), ("[-1]", "negative"),
           ("[[5]]", "list"), ("[[0]]", "list"), ("{}", "object"), ('{"a":[1,2]}', "object"), (DEEP, "deep")]
NULLABLE = {"group", "depth", "layer", "seq", "duration_s", "wall_s"}
FREE_FORM = ("model", "flips", "extra")  # header objects whose contents the format leaves open


# ------------------------------------------------------------------------------------------------ the targets

@dataclass(frozen=True)
class Target:
    """A command that reads a trace, and the class of input its cases are."""

    kind: str
    command: str
    flag: str  # the flag that takes the trace
    hw: str  # the hwconfig it runs on (a preset's name or a path)


RUN = Target("trace", "sim.run", "--trace", "a100")
VALIDATE = Target("measured-trace", "sim.fitting.validate", "--measured", str(H200_CALIBRATED))
TRACE_FILE = "{tmp}/trace.jsonl.gz"


def trace_case(target: Target, base: Base, name: str, expect: str,
               make: Callable[[list[bytes]], bytes] | Node | None, control: bool = False) -> Case:
    """The target run on the file that `make` makes from the base's lines (in the child), or on a `Node`
    (a folder), or on no file at all (None)."""
    files = {} if make is None else {"trace.jsonl.gz": make if isinstance(make, Node) else partial(make, base.lines)}
    return Case(target.kind, name, target.command,
                ["--hw", target.hw, target.flag, TRACE_FILE, "--json", "{tmp}/out.json"], expect=expect,
                files=files, where=((TRACE_FILE, "peak.dram_capacity_bytes"),), results=("{tmp}/out.json",),
                source=base.label, control=control)


# ------------------------------------------------------------------------------------------------ the oracle

def expected(record: dict, path: tuple, raw: str, kind: str) -> str:
    """"reject" when a hostile value of class `kind` (JSON text `raw`) at `path` of `record` makes a trace no real
    run has; "any" when a trace may hold it (then it must project to a finite result, or be refused clearly)."""
    if kind in ("nonfinite", "deep") or not path:
        return "reject"  # not JSON (NaN, Infinity) or not finite; nesting no field has; a record not an object
    if kernel_cannot_take(record, path, raw):
        return "reject"
    if path[0] in FREE_FORM and "format" in record and len(path) > 1 and path != ("flips", "source"):
        return "reject" if path[0] == "model" and kind in ("list", "object") else "any"  # open contents
    if kind in ("huge", "negative"):
        return "reject"  # no count or duration of a real run is negative or beyond 1e300
    original = get(record, path)
    nullable = path[-1] in NULLABLE
    same = {type(None): ("zero", "float", "null"), bool: ("bool",), int: ("zero",), float: ("zero", "float"),
            str: ("str",), list: ("list",), dict: ("object",)}[type(original)]
    return "any" if kind in same or (kind == "null" and nullable) else "reject"


def kernel_cannot_take(record: dict, path: tuple, raw: str) -> bool:
    """The shapes the kernel model cannot take (issue 12, finding 7)."""
    kind = record.get("kind") or (legacy_kind(record["op"], record["module"]) if "op" in record else None)
    if kind == "attention" and path == ("in_shapes",):
        return raw in ("[[5]]", "[[]]", "[[0]]")
    return kind in ("matmul", "lm_head") and path == ("out_shapes",) and raw == "[[]]"


# --------------------------------------------------------------------------------------------- the mutations

def paths_of(obj: object, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into `obj` (keys and indices), the first two elements of long lists only."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths_of(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield from paths_of(v, (*prefix, i))


def value_case(target: Target, base: Base, line: int, path: tuple, raw: str, kind: str,
               also: dict | None = None) -> Case:
    """The record at `line` with the value at `path` replaced by the JSON text `raw` (of class `kind`), and the
    top-level fields in `also` set too (to keep what the reader checks against the value consistent)."""
    record = json.loads(base.lines[line - 1])
    changed = raw.encode() if not path else dumps(put({**record, **(also or {})}, path, PLACEHOLDER), raw)
    where = ".".join(map(str, path)) or "(the record)"
    return lines_case(target, base, f"line {line} {where} = {raw[:24]}", expected(record, path, raw, kind),
                      lambda lines: replace_line(lines, line, changed))


def lines_case(target: Target, base: Base, name: str, expect: str,
               change: Callable[[list[bytes]], list[bytes]]) -> Case:
    """The base's lines changed by `change`, as a gzip trace."""
    return trace_case(target, base, name, expect, lambda lines: gz(change(list(lines))))


def line_of(lines: list[bytes], kind: str, nth: int = 0) -> int:
    """The 1-based line of the nth record of type `kind` ("header": line 1)."""
    if kind == "header":
        return 1
    found = [i + 1 for i, x in enumerate(lines) if x.startswith(b'{"type":"' + kind.encode() + b'"')]
    return found[nth % len(found)]


def line_matching(lines: list[bytes], test: Callable[[dict], bool]) -> int:
    return next(i + 1 for i, x in enumerate(lines) if i and test(json.loads(x)))


def kind_of(record: dict) -> str | None:
    if record.get("type") != "op":
        return None
    return record.get("kind") or legacy_kind(record["op"], record["module"])


def op_line(lines: list[bytes], kind: str) -> int:
    """The line of the first op record of kernel class `kind`."""
    return line_matching(lines, lambda r: kind_of(r) == kind)


def stage_counts(lines: list[bytes]) -> tuple[dict[int, int], int]:
    """Per stage number, its ops; and the ops executed (format 4: from the stage records; else the op records)."""
    counts, pending, executed = {}, 0, 0
    for r in map(json.loads, lines[1:-1]):
        if r["type"] == "op":
            pending += 1
        elif r["type"] == "stage":
            ops = r.get("ops")
            n = pending if ops is None else sum(c for _, c in ops["runs"]) if "runs" in ops else counts[ops["like"]]
            counts[r["stage"]], pending, executed = n, 0, executed + n
    return counts, executed


def end_record(lines: list[bytes], body: list[bytes]) -> bytes:
    """The end record of a trace made of `lines[0]` and the records `body`, recounted."""
    v4 = json.loads(lines[0])["version"] >= 4
    types = Counter(json.loads(x)["type"] for x in body)
    end = {"type": "end", "ops": types["op"], "stages": types["stage"]}
    if v4:
        end["executed"] = stage_counts([lines[0], *body, b""])[1]
    return dumps(end)


def recounted(lines: list[bytes], body: list[bytes]) -> list[bytes]:
    return [lines[0], *body, end_record(lines, body)]


def empty_stage(lines: list[bytes]) -> bytes:
    """A decode stage record with no ops after the last stage."""
    last = json.loads(lines[line_of(lines, "stage", -1) - 1])
    stage = {"type": "stage", "stage": last["stage"] + 1, "kind": "decode", "rows": [], "commits": [], "flushes": [],
             "wall_s": None}
    return dumps({**stage, "ops": {"runs": []}} if "ops" in last else stage)


def like_bomb(lines: list[bytes], copies: int = 1_000_000) -> bytes:
    """A million stage records "like" the last one: a 1 MB file that executes ~10**8 ops."""
    last = json.loads(lines[line_of(lines, "stage", -1) - 1])
    counts, executed = stage_counts(lines)
    text = (b'{"type":"stage","stage":%d,"kind":"decode","rows":[],"commits":[],"flushes":[],"wall_s":null,'
            b'"ops":{"like":' + str(last["stage"]).encode() + b',"set":[]}}')
    bomb = (text % (last["stage"] + 1 + k) for k in range(copies))
    end = dumps({"type": "end", "ops": json.loads(lines[-1])["ops"], "stages": len(counts) + copies,
                 "executed": executed + copies * counts[last["stage"]]})
    return gz(itertools.chain(lines[:-1], bomb, [end]), level=1)


def one_input(lines: list[bytes], line: int) -> dict:
    """The fields of the op record at `line` that describe its inputs, for one input (srcs and in_dtypes)."""
    record = json.loads(lines[line - 1])
    return {"in_dtypes": record["in_dtypes"][:1], **({"srcs": [0]} if record.get("srcs") else {})}


def named_cases(target: Target, base: Base) -> list[Case]:
    """The cases issue 12 lists, on one base."""
    lines = base.lines
    header = json.loads(lines[0])
    first_op, first_stage, end = line_of(lines, "op"), line_of(lines, "stage"), len(lines)
    attention, matmul, head = op_line(lines, "attention"), op_line(lines, "matmul"), op_line(lines, "lm_head")
    weight = next(iter(header["weights"]))
    big = "1" + "0" * 320

    def value(line: int, path: tuple, raw: str, kind: str) -> Case:
        return value_case(target, base, line, path, raw, kind)

    def text(name: str, expect: str, change: Callable[[list[bytes]], list[bytes]]) -> Case:
        return lines_case(target, base, name, expect, change)

    def replaced(line: int, data: bytes) -> Callable[[list[bytes]], list[bytes]]:
        return lambda ls: replace_line(ls, line, data)

    end_record_ = json.loads(lines[-1])
    cases = [
        text("non-UTF-8 byte in a string", "reject", replaced(first_op, lines[first_op - 1].replace(
            b'"module":"', b'"module":"\xe9', 1))),
        text("an op line 100,000 deep", "reject", replaced(first_op, DEEP.encode())),
        text("an op line 200 deep", "reject", replaced(first_op, nested(200).encode())),
        value(1, ("extra",), '{"a":' * 100_000 + "1" + "}" * 100_000, "deep"),
        value(first_op, ("flops",), big, "huge"), value(first_op, ("weight_bytes",), big, "huge"),
        value(matmul, ("in_shapes", 0, 0), big, "huge"), value(matmul, ("out_shapes", 0, 0), big, "huge"),
        value(1, ("weights", weight, "bytes"), big, "huge"), value(1, ("weights", weight, "shape", 0), big, "huge"),
        value(first_op, ("flops",), "NaN", "nonfinite"), value(first_op, ("flops",), "Infinity", "nonfinite"),
        value(first_op, ("flops",), "1e999", "nonfinite"), value(first_op, ("flops",), "-1", "negative"),
        value(first_op, ("rows",), "true", "bool"), value(first_op, ("act_read_bytes",), "1.5", "float"),
        *(value_case(target, base, attention, ("in_shapes",), shapes, "list", one_input(lines, attention))
          for shapes in ("[[5]]", "[[]]", "[[0]]")),
        value(matmul, ("out_shapes",), "[[]]", "list"), value(head, ("out_shapes",), "[[]]", "list"),
        value(1, ("batch",), "true", "bool"), value(1, ("max_new_tokens",), "-1", "negative"),
        value(1, ("prompt_lens",), "[-1]", "negative"), value(1, ("model", "d_model"), "NaN", "nonfinite"),
        value(1, ("extra", "end_to_end_s"), "Infinity", "nonfinite"),
        value(first_stage, ("wall_s",), "NaN", "nonfinite"), value(first_stage, ("wall_s",), "-1", "negative"),
        value(first_stage, ("wall_s",), "1e300", "huge"),
        *(text(f"end {k} {d:+d}", "reject", replaced(end, dumps({**end_record_, k: end_record_[k] + d})))
          for k in end_record_ if k != "type" for d in (-1, 1)),
        value(end, ("ops",), big, "huge"),
        text("header field given twice", "reject", replaced(1, with_key_first(lines[0], "batch", "1"))),
        text("header field missing", "reject", replaced(1, without_key(lines[0], "dtype"))),
        text("op field given twice", "reject", replaced(first_op, with_key_first(lines[first_op - 1], "flops", "0"))),
        text("a stage with no ops", "any", lambda ls: recounted(ls, [*ls[1:-1], empty_stage(ls)])),
        text("header and end only", "any", lambda ls: recounted(ls, [])),
        text("no decode stage (the first stage only)", "any", lambda ls: recounted(ls, ls[1:first_stage])),
    ]
    return [*file_cases(target, base), *cases,
            *(format4_cases(target, base) if header["version"] >= 4 else format1_cases(target, base))]


def file_cases(target: Target, base: Base) -> list[Case]:
    """Files that are not traces: other encodings, binary, damaged gzip streams, a directory, no file."""
    def raw(name: str, make: Callable[[list[bytes]], bytes] | Node | None) -> Case:
        return trace_case(target, base, name, "reject", make)

    return [
        raw("not gzip (the JSON text)", joined),
        raw("binary", lambda ls: random.Random(0).randbytes(4096)),
        raw("UTF-16 text", lambda ls: b"\n".join(ls).decode().encode("utf-16")),
        raw("gzip of UTF-16 text", lambda ls: gzipped(b"\n".join(ls).decode().encode("utf-16"))),
        raw("gzip of binary", lambda ls: gzipped(random.Random(1).randbytes(4096))),
        raw("empty file", lambda ls: b""),
        raw("gzip of nothing", lambda ls: gzipped(b"")),
        raw("gzip cut in half", lambda ls: gz(ls)[: len(gz(ls)) // 2]),
        raw("gzip without its trailer", lambda ls: gz(ls)[:-8]),
        raw("gzip with trailing garbage", lambda ls: gz(ls) + b"garbage"),
        raw("two gzip members (records after the end)", lambda ls: gz(ls) + gz(ls)),
        raw("a directory", Node("folder")),
        raw("no such file", None),
    ]


def format4_cases(target: Target, base: Base) -> list[Case]:
    """References that point nowhere, and a bomb of executed ops."""
    lines = base.lines
    stage = line_of(lines, "stage", 1)  # the second stage record
    record = json.loads(lines[stage - 1])
    n_ops = json.loads(lines[-1])["ops"]
    refs = [({"runs": [[0, n_ops + 5]]}, "runs past the op records"), ({"runs": [[n_ops, 1]]}, "an op id not yet read"),
            ({"like": record["stage"], "set": []}, "like itself"), ({"like": 10**6, "set": []}, "like no stage"),
            ({"like": 0, "set": [[10**6, 0]]}, "a slot past the stage"), ({"like": 0, "set": [[0, n_ops]]},
                                                                           "set an op id not yet read")]
    cases = [lines_case(target, base, f"stage ops: {name}", "reject",
                        lambda ls, ops=ops: replace_line(ls, stage, dumps({**record, "ops": ops})))
             for ops, name in refs]
    return [*cases, trace_case(target, base, "a million stages 'like' the last (10**8 ops executed)", "reject",
                               like_bomb)]


def format1_cases(target: Target, base: Base) -> list[Case]:
    """Measured durations that no run measures, and the format-1 reader's own checks."""
    lines = base.lines
    op, stage = line_of(lines, "op", 3), line_of(lines, "stage", 1)
    cases = [value_case(target, base, op, ("duration_s",), raw, kind) for raw, kind in (
        ("NaN", "nonfinite"), ("Infinity", "nonfinite"), ("1e999", "nonfinite"), ("-1", "negative"),
        ("-0.5", "negative"), ("null", "null"), ('"1e-6"', "str"), ("1e300", "huge"), ("true", "bool"))]
    cases += [value_case(target, base, stage, ("wall_s",), raw, kind) for raw, kind in (
        ("NaN", "nonfinite"), ("-1", "negative"), ("Infinity", "nonfinite"))]
    cases += [value_case(target, base, 1, ("measured",), "false", "bool"),
              value_case(target, base, op, ("i",), "0", "zero"),
              lines_case(target, base, "an op after the last stage record", "reject",
                         lambda ls: [*ls[:-1], ls[op - 1], ls[-1]])]
    return cases


# ----------------------------------------------------------------------------------------------- drawn cases

def random_path(rng: random.Random, record: dict) -> tuple:
    """A random place in `record`: a top-level key, descended into now and again."""
    if rng.random() < 0.03:
        return ()
    path: tuple = (rng.choice(list(record)),)
    node = record[path[0]]
    while isinstance(node, dict | list) and node and rng.random() < 0.5:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(min(len(node), 3))
        path, node = (*path, key), node[key]
    return path


GARBAGE = [b"", b"{}", b"[]", b"null", b"1", b'"x"', b"{", b'{"type":"op"}', b'{"type":"nope"}', b"\x00\xff"]


def structure_case(rng: random.Random, target: Target, b: Base) -> Case:
    """A line deleted, duplicated, swapped or replaced; a key dropped, duplicated or added; the text or the gzip
    stream cut; a byte of the gzip stream flipped."""
    lines = b.lines
    n = len(lines)
    k = rng.randrange(1, n + 1)
    which = rng.randrange(9)
    if which == 0:
        return lines_case(target, b, f"line {k} deleted", "reject", lambda ls: ls[: k - 1] + ls[k:])
    if which == 1:
        return lines_case(target, b, f"line {k} twice", "reject", lambda ls: ls[:k] + ls[k - 1 :])
    if which == 2:
        k = min(k, n - 1)
        return lines_case(target, b, f"lines {k} and {k + 1} swapped", "any",
                          lambda ls: [*ls[: k - 1], ls[k], ls[k - 1], *ls[k + 1 :]])
    if which == 3:
        junk = rng.choice(GARBAGE)
        return lines_case(target, b, f"line {k} replaced by {junk[:12]!r}", "reject",
                          lambda ls: replace_line(ls, k, junk))
    record = json.loads(lines[k - 1])
    key = rng.choice(list(record))
    if which == 4:
        expect = "any" if (k, key) == (1, "extra") else "reject"
        return lines_case(target, b, f"line {k} without {key!r}", expect,
                          lambda ls: replace_line(ls, k, without_key(ls[k - 1], key)))
    if which == 5:
        dup = json.dumps(record[key], separators=(",", ":"))
        return lines_case(target, b, f"line {k} with {key!r} twice", "reject",
                          lambda ls: replace_line(ls, k, with_key_first(ls[k - 1], key, dup)))
    if which == 6:
        return lines_case(target, b, f"line {k} with an unknown key", "reject",
                          lambda ls: replace_line(ls, k, with_key_first(ls[k - 1], "bogus", "1")))
    cut = rng.random()
    if which == 7:
        return trace_case(target, b, f"text cut at {cut:.0%}", "reject",
                          lambda ls: gzipped(b"\n".join(ls)[: int(cut * (sum(map(len, ls)) + len(ls) - 2))]))
    flip = rng.randrange(1, 256)
    return trace_case(target, b, f"gzip byte at {cut:.0%} ^ {flip}", "any",
                      lambda ls: flipped(gz(ls), int(cut * len(gz(ls))), flip))


def flipped(data: bytes, at: int, mask: int) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


def drawn_cases(rng: random.Random, target: Target, bases: list[Base], n: int) -> list[Case]:
    """`n` seeded cases: hostile values at random places (60%), structural damage (40%); bases in turn."""
    cases = []
    for c in range(n):
        b = bases[c % len(bases)]
        lines = b.lines
        if rng.random() < 0.4:
            cases.append(structure_case(rng, target, b))
            continue
        pick = rng.random()
        line = 1 if pick < 0.15 else len(lines) if pick < 0.2 else rng.randrange(2, len(lines))
        path = random_path(rng, json.loads(lines[line - 1]))
        raw, kind = rng.choice(HOSTILE)
        cases.append(value_case(target, b, line, path, raw, kind))
    return cases


# ---------------------------------------------------------------------------------------------- the generator

def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("traces")
    group.add_argument("--trace-cases", type=integer(0), default=400,
                       help="cases of the class trace (sim.run), named ones included (default 400)")
    group.add_argument("--measured-trace-cases", type=integer(0), default=120,
                       help="cases of the class measured-trace (sim.fitting.validate), named ones included "
                       "(default 120)")
    group.add_argument("--measured-stages", type=integer(1), default=6,
                       help="stages of the measured trace kept as its base (default 6: fast cases)")


def cases(args: argparse.Namespace) -> list[Case]:
    """The controls, the named cases and the drawn ones (one generator, seeded by --seed, for both targets in
    turn: the cases do not depend on which classes --only picks)."""
    targets = ((RUN, [Base(p) for p in [*DEFAULT_TRACES, TP_TRACE]], args.trace_cases),
               (VALIDATE, [first_stages(Base(MEASURED), args.measured_stages)], args.measured_trace_cases))
    rng = random.Random(args.seed)
    out = []
    for target, bases, n in targets:
        out += [trace_case(target, b, "the base itself", "any", gz, control=True) for b in bases]
        named = named_cases(target, bases[0])[:n]
        out += named + drawn_cases(rng, target, bases, n - len(named))
    return out


GENERATOR = Generator(
    group="traces",
    classes={"trace": "traces through `sim.run --trace`",
             "measured-trace": "measured traces through `sim.fitting.validate --measured`"},
    cases=cases, add_arguments=add_arguments)
