"""Trace fields the projection may not use, each given a value no real run has (issue 22, class 5): an unknown
dtype (the header's, an op's inputs or outputs, a weight's), an unknown device, a model size of zero or below, an
empty prompt list or one of another length than the batch, an op that depends on itself, stage rows, commits and
flushes of sequences the batch does not have, exits the model has not, tokens beyond its vocabulary, and more
tokens committed than the run generates. Through `sim.run --trace` (a default trace, format 4) and
`sim.fitting.validate --measured` (the first stages of a measured trace, format 1). Each must be refused naming
the file and the field."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from scripts.fuzzing.bases import DEFAULT_TRACES, MEASURED, Base, first_stages
from scripts.fuzzing.harness import Case, Generator
from scripts.fuzzing.mutate import dumps, gz, put, replace_line
from scripts.fuzzing.traces import RUN, TRACE_FILE, VALIDATE, Target, line_matching, trace_case

KIND = "trace-fields"
MODEL_SIZES = ("vocab_size", "d_model", "n_heads", "n_kv_heads", "d_ff", "n_unique_layers", "n_groups",
               "max_seq_len")


def changed(target: Target, base: Base, name: str, line: int, change: Callable[[dict], dict],
            field: str | tuple[str, ...], expect: str = "reject") -> Case:
    """The base with the record at `line` changed by `change`; a refusal must name `field`."""
    record = json.loads(base.lines[line - 1])
    data = dumps(change(record))
    case = trace_case(target, base, name, expect, lambda lines: gz(replace_line(list(lines), line, data)))
    case.kind = KIND
    case.where = ((TRACE_FILE, "peak.dram_capacity_bytes"), field)
    return case


def setter(path: tuple, value: object) -> Callable[[dict], dict]:
    return lambda record: put(record, path, value)


def header_cases(target: Target, base: Base) -> list[Case]:
    header = json.loads(base.lines[0])
    weight = next(iter(header["weights"]))
    cases = [changed(target, base, f"header dtype {v!r}", 1, setter(("dtype",), v), "dtype")
             for v in ("float7", "", "BF16", "bfloat16 ", "complex64", "int4")]
    cases += [changed(target, base, f"header device {v!r}", 1, setter(("device",), v), "device")
              for v in ("tpu", "", "CUDA", "gpu", "meta ")]
    cases += [changed(target, base, f"header model.{f} {v}", 1, setter(("model", f), v), f"model.{f}")
              for f in MODEL_SIZES if f in header["model"] for v in (0, -1, 2.5, "64")]
    cases += [
        changed(target, base, "header model.n_encoder_layers -1", 1, setter(("model", "n_encoder_layers"), -1),
                "model.n_encoder_layers"),
        changed(target, base, "header prompt_lens []", 1, setter(("prompt_lens",), []), "prompt_lens"),
        changed(target, base, "header prompt_lens of two for a batch of one", 1,
                setter(("prompt_lens",), [*header["prompt_lens"]] * 2), "prompt_lens"),
        changed(target, base, "header batch 2 with one prompt", 1, setter(("batch",), 2), ("prompt_lens", "batch")),
        changed(target, base, "header prompt_lens [0]", 1, setter(("prompt_lens",), [0]), "prompt_lens"),
        changed(target, base, f"header weights.{weight}.dtype 'q4'", 1, setter(("weights", weight, "dtype"), "q4"),
                "dtype"),
        changed(target, base, "header max_new_tokens 1", 1, setter(("max_new_tokens",), 1),
                ("commits", "max_new_tokens")),
        changed(target, base, "header max_new_tokens 4 times the run's", 1,
                setter(("max_new_tokens",), 4 * header["max_new_tokens"]), "max_new_tokens", expect="any"),
    ]
    return cases


def op_cases(target: Target, base: Base) -> list[Case]:
    op = line_matching(base.lines, lambda r: r.get("type") == "op" and bool(r["in_dtypes"] and r["out_dtypes"]))
    cases = [changed(target, base, f"op {f} {v!r}", op, setter((f, 0), v), f)
             for f in ("in_dtypes", "out_dtypes") for v in ("float7", "", "Float32", "q4")]
    with_deps = next((i + 1 for i, x in enumerate(base.lines) if b'"deps":[' in x and b'"deps":[]' not in x), None)
    if with_deps is not None:
        record = json.loads(base.lines[with_deps - 1])
        cases += [changed(target, base, "an op that depends on itself (deps [0])", with_deps,
                          setter(("deps",), [0, *record["deps"]]), "deps"),
                  changed(target, base, "an op that depends on itself only", with_deps, setter(("deps",), [0]),
                          "deps")]
    return cases


def stage_cases(target: Target, base: Base) -> list[Case]:
    header = json.loads(base.lines[0])
    line = line_matching(base.lines, lambda r: r.get("type") == "stage" and bool(r["commits"]))
    stage = json.loads(base.lines[line - 1])
    seq, position, token = stage["commits"][0]
    groups = header["model"].get("n_groups", 1)
    vocab = header["model"].get("vocab_size", 32128)
    batch = header["batch"]
    row = stage["rows"][0] if stage["rows"] else [0, position, groups]

    def with_field(field: str, entry: list) -> Callable[[dict], dict]:
        return lambda record: {**record, field: [*record[field], entry]}

    cases = [
        changed(target, base, "a commit of a sequence the batch has not", line,
                with_field("commits", [batch + 4, position, token]), "commits"),
        changed(target, base, "a commit of a token beyond the vocabulary", line,
                setter(("commits", 0), [seq, position, vocab + 7]), "commits"),
        changed(target, base, "a stage that commits 200 tokens more", line,
                lambda r: {**r, "commits": r["commits"] + [[seq, position + 1 + k, token] for k in range(200)]},
                "commits"),
        changed(target, base, "a row of a sequence the batch has not", line,
                with_field("rows", [batch + 2, row[1], row[2]]), "rows"),
        changed(target, base, "a row at exit 0", line, with_field("rows", [row[0], row[1], 0]), "rows"),
        changed(target, base, f"a row at exit {groups + 5} (G = {groups})", line,
                with_field("rows", [row[0], row[1], groups + 5]), "rows"),
        changed(target, base, "a flush of a sequence the batch has not", line,
                with_field("flushes", [batch + 9, 1, 1]), "flushes"),
    ]
    return cases


def cases(args: argparse.Namespace) -> list[Case]:
    bases = ((RUN, Base(next(p for p in DEFAULT_TRACES if ".speed." in p.name and "compiled" not in p.name))),
             (RUN, Base(next(p for p in DEFAULT_TRACES if ".sequential." in p.name and "compiled" not in p.name))),
             (VALIDATE, first_stages(Base(MEASURED), 6)))
    out = []
    for target, base in bases:
        for c in header_cases(target, base) + op_cases(target, base) + stage_cases(target, base):
            c.name = f"{base.label}: {c.name}"
            out.append(c)
    return out


GENERATOR = Generator(group=KIND, classes={KIND: "trace fields the projection does not use"}, cases=cases)
