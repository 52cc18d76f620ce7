"""Writing a trace: `TraceWriter` streams a version 4 file (sim/trace/FORMAT.md) atomically and
byte-reproducibly; `write_trace` writes a whole `Trace`. The writer validates little: the reader is the check."""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import operator
import os
import secrets
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sim.trace.limits import TRACE_VERSION
from sim.trace.records import FIELDS, OpRecord, OpTable, PathLike, StageRecord, Trace, TraceHeader

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _line(obj: Any, kind: str | None, **first: Any) -> str:
    d: dict[str, Any] = {"type": kind} if kind else {}
    d.update(first)
    names = FIELDS[type(obj)]
    for name in names[2:] if type(obj) is OpRecord else names:
        d[name] = getattr(obj, name)
    return _ENCODER.encode(d) + "\n"


def _runs(ids: tuple[int, ...]) -> list[list[int]]:
    """Consecutive ids as [first, count] runs."""
    runs: list[list[int]] = []
    for k in ids:
        if runs and runs[-1][0] + runs[-1][1] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    return runs


class TraceWriter:
    """Write a trace to `path` through a temp file in the same directory, moved onto `path` by `close()`
    (on normal exit of a `with` block); `abort()` (on an exception) deletes it, leaving `path` untouched.
    Either stream executed ops (`op`) and close each stage with `stage(record)`, or give a stage's op ids
    into this writer's `table` (`stage(record, ids)`); `write_trace` writes a whole `Trace`."""

    def __init__(self, path: PathLike, header: TraceHeader) -> None:
        self.path = Path(path)
        self.table = OpTable()
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        self._raw = open(self._tmp, "xb")  # noqa: SIM115 (closed by close/abort)
        gz = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, filename="")
        self._out = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
        self._pending: list[int] = []  # ids of the ops streamed since the last stage record
        self._written = self._stages = self._executed = 0
        self._same: dict[tuple[int, ...], int] = {}  # op ids -> the first stage that executed them
        self._last_of_length: dict[int, tuple[int, tuple[int, ...]]] = {}  # n ops -> (stage, ids) of the last
        try:
            self._out.write(_line(replace(header, version=TRACE_VERSION), None))
        except BaseException:
            self.abort()
            raise

    def op(self, record: OpRecord) -> None:
        """Append an executed op to the stage being written (its i and stage are not written: implied)."""
        self._pending.append(self.table.intern(record))

    def stage(self, record: StageRecord, ids: Sequence[int] | None = None) -> None:
        """Close a stage: the ops streamed since the last stage record, or `ids` (ids into `table`), in order."""
        ids = tuple(self._pending if ids is None else ids)
        self._pending = []
        for k in range(self._written, len(self.table.ops)):  # op records before the first stage that uses them
            self._out.write(_line(self.table.ops[k], "op", id=k))
        self._written = len(self.table.ops)
        self._out.write(_line(record, "stage")[:-2] + ',"ops":' + _ENCODER.encode(self._encode(record.stage, ids))
                        + "}\n")
        self._stages += 1
        self._executed += len(ids)

    def _encode(self, stage: int, ids: tuple[int, ...]) -> dict[str, Any]:
        """A stage's ops field: like an identical earlier stage, else like the last one with as many ops or as
        runs of ids, whichever takes fewer numbers."""
        same = self._same.setdefault(ids, stage)
        last = self._last_of_length.get(len(ids))
        self._last_of_length[len(ids)] = (stage, ids)
        if same != stage:
            return {"like": same, "set": []}
        runs = _runs(ids)
        if last is not None:
            changed = list(itertools.compress(range(len(ids)), map(operator.ne, ids, last[1])))
            if len(changed) < len(runs):
                return {"like": last[0], "set": [[j, ids[j]] for j in changed]}
        return {"runs": runs}

    def close(self) -> None:
        """Write the end record and move the finished file onto `path`."""
        if self._raw.closed:
            return
        try:
            if self._pending:
                raise ValueError(f"{len(self._pending)} ops streamed after the last stage record")
            end = {"type": "end", "ops": self._written, "stages": self._stages, "executed": self._executed}
            self._out.write(_ENCODER.encode(end) + "\n")
            self._out.close()  # flushes the gzip trailer; leaves self._raw open
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard what was written; `path` is left as it was."""
        if not self._raw.closed:
            with contextlib.suppress(Exception):
                self._out.close()
            self._raw.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_trace(path: PathLike, trace: Trace) -> None:
    """Write `trace` to `path` (atomically), as version 4."""
    with TraceWriter(path, trace.header) as writer:
        mine: dict[int, int] = {}  # the trace's op ids -> the writer's
        for stage, ids in zip(trace.stages, trace.stage_op_ids):
            for k in sorted(set(ids).difference(mine)):
                mine[k] = writer.table.intern(trace.distinct[k])
            writer.stage(stage, tuple(map(mine.__getitem__, ids)))
