"""A sweep's output folder: the journal that makes it resumable, and the rows in spec order (JSON lines and CSV).

- `journal.jsonl`: one line per finished point, `{"key": ..., "row": {...}}`, appended as points finish (in any
  order) with one `os.write` on a file opened for appending, so a killed sweep loses no finished point. A line
  cut short by a kill is dropped when the journal is opened again (the file is truncated after the last whole
  line); a rerun skips every point whose key (its inputs: axes, hwconfig, model config, simulator revision) is
  there.
- `rows.jsonl`, `rows.csv`: every point of the spec, in spec order, written atomically from the journal at the end
  of a run, whatever the number of workers or the order points finished in. CSV flattens nested fields with
  dots (`bound.memory`, `point.batch`, `memory.total_bytes`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from sim.files import atomic_write

JOURNAL = "journal.jsonl"
ROWS_JSONL, ROWS_CSV = "rows.jsonl", "rows.csv"


class Journal:
    """The finished points of a sweep folder: `done` maps a point's key to its row."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / JOURNAL
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._read()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _read(self) -> None:
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # a line cut short by a kill is dropped
        for line in whole.splitlines():
            try:
                entry = json.loads(line)
                self.done[entry["key"]] = entry["row"]
            except (ValueError, KeyError, TypeError):
                continue  # not a journal line (never written by a whole append): skipped
        if len(whole) < len(data):
            os.truncate(self.path, len(whole))

    def append(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Record finished points (key, row): one write, so a kill leaves them all or a cut line."""
        text = "".join(json.dumps({"key": k, "row": r}, allow_nan=False) + "\n" for k, r in entries)
        os.write(self._fd, text.encode())
        self.done.update(entries)

    def close(self) -> None:
        os.close(self._fd)


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted columns."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def write_rows(folder: Path, rows: list[dict[str, Any]]) -> None:
    """rows.jsonl and rows.csv, atomically, in the order given."""
    atomic_write(folder / ROWS_JSONL, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows)))
    flat = [flatten(r) for r in rows]
    columns = list(dict.fromkeys(c for r in flat for c in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write(folder / ROWS_CSV, lambda tmp: tmp.write_text(text.getvalue()))
