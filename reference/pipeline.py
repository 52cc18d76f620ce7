"""SPEED pipeline bookkeeping for one sequence: slots, inject, compare, flush, commit, statistics.

Pure Python (no torch), so it is tested fast and can be driven either by real argmaxes or, where no values
exist (the meta device), by a flip oracle. The caller runs the model; the pipeline says what to run.

One stage:
1. `begin_stage()` injects the next token as a new row at group 0 (if one is due) and returns the rows to run,
   oldest first. Row k (0 = oldest) has completed `rows[k].group` groups and now runs the next one.
2. The caller runs every row once through the shared group and gives `end_stage()` each row's argmax at its
   new exit.
3. `end_stage` compares each row's prediction with the same row's prediction one exit earlier. For the oldest
   row whose prediction changed, every younger row was started from a stale token: they are flushed. The
   oldest row, once it has completed all G groups, commits its prediction. The next token to inject is the
   newest row's latest prediction (or the token just committed when no row is left).

Invariants: committed tokens only grow; injected = committed + flushed once drained; a flush takes every
younger row with it; rows are at distinct groups and consecutive positions, older rows deeper.

Stage count: every stage starts at most one row, so stages = rows injected (committed + flushed) + stages that
inject none, and a stage injects none exactly when the newest row in flight already predicts EOS or the last
position (with no row in flight, the next row always starts). So stages >= tokens + G - 1 (each committed row
starts in a stage of its own, the last runs G stages), with equality when nothing is flushed and no stage waits
before the last row starts; and stages <= G x tokens, since every stage advances the oldest row, which is never
flushed. A row's changed prediction flushes only younger rows, yet can still cost stages: an early exit that
predicts EOS holds up the next row until a later exit of the same row predicts otherwise (G = 4, exit 1 always
EOS, later exits right: 10 tokens take 22 stages, none flushed).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    position: int  # position of the row's input token
    token: int  # the input token: committed, or speculated from an exit of the row before it
    group: int = 0  # groups completed
    guess: int | None = None  # latest exit prediction of the token at position + 1


@dataclass
class PipelineStats:
    groups: int
    stages: int = 0
    injected: int = 0  # rows started
    committed: int = 0  # rows that completed all groups and committed a token
    flushed: int = 0  # rows discarded because a token before them changed
    row_passes: int = 0  # row-group passes run (rows per stage, summed)
    row_passes_wasted: int = 0  # passes run by rows that were later flushed
    predictions_by_group: list[int] = field(default_factory=list)  # [g-1]: predictions made at exit g
    flips_by_group: list[int] = field(default_factory=list)  # [g-1]: predictions that changed after exit g
    flushes_by_group: list[int] = field(default_factory=list)  # [g-1]: flushes (>= 1 row) caused at exit g

    def __post_init__(self) -> None:
        for name in ("predictions_by_group", "flips_by_group", "flushes_by_group"):
            if not getattr(self, name):
                setattr(self, name, [0] * self.groups)

    @property
    def flip_rates(self) -> list[float | None]:
        """Share of predictions that changed after exit g (None for exit 1, which has nothing before it)."""
        return [None if g == 0 or not n else f / n
                for g, (f, n) in enumerate(zip(self.flips_by_group, self.predictions_by_group))]

    def merge(self, other: PipelineStats) -> PipelineStats:
        """Counts of two runs added (the stage count is the larger: sequences of a batch share stages)."""
        add = {name: getattr(self, name) + getattr(other, name)
               for name in ("injected", "committed", "flushed", "row_passes", "row_passes_wasted")}
        lists = {name: [a + b for a, b in zip(getattr(self, name), getattr(other, name))]
                 for name in ("predictions_by_group", "flips_by_group", "flushes_by_group")}
        return PipelineStats(self.groups, max(self.stages, other.stages), **add, **lists)

    def summary(self) -> str:
        rates = ", ".join("-" if r is None else f"{100 * r:.1f}%" for r in self.flip_rates)
        return (f"stages {self.stages}, rows injected {self.injected} = committed {self.committed} + flushed "
                f"{self.flushed}; row-passes {self.row_passes} of which wasted {self.row_passes_wasted}; "
                f"flushes by exit {self.flushes_by_group}; flip rate by exit [{rates}]")


@dataclass
class StageOutcome:
    kept: slice  # which of this stage's rows (in begin_stage order) stay in flight, in order
    committed: int | None  # the token committed this stage, if any
    flushed: int  # rows discarded this stage
    flush_exit: int | None  # the exit (1..G) whose changed prediction caused the flush


class SpeedPipeline:
    """The pipeline of one sequence.

    first_token, first_position: the last prompt token and its position; it is the first row. Every generated
    token is committed by a row: the row at position p commits the token at p + 1.
    """

    def __init__(self, groups: int, first_token: int, first_position: int, max_new_tokens: int,
                 eos_id: int | None = None) -> None:
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.groups = groups
        self.first_token, self.first_position = first_token, first_position
        self.max_new_tokens, self.eos_id = max_new_tokens, eos_id
        self.rows: list[Row] = []
        self.committed: list[int] = []
        self.stats = PipelineStats(groups)
        self._in_stage = False

    @property
    def done(self) -> bool:
        return len(self.committed) == self.max_new_tokens or (
            bool(self.committed) and self.committed[-1] == self.eos_id)

    def _next_input(self) -> tuple[int, int] | None:
        """(position, token) of the row to inject next, or None when no row is due."""
        if self.done:
            return None
        if self.rows:
            position, token = self.rows[-1].position + 1, self.rows[-1].guess
        elif self.committed:
            position, token = self.first_position + len(self.committed), self.committed[-1]
        else:
            return self.first_position, self.first_token
        if token == self.eos_id or position - self.first_position >= self.max_new_tokens:
            return None  # the row would predict past EOS or past the length limit
        return position, token

    def begin_stage(self) -> list[Row]:
        """Inject the next row if one is due; return the rows to run this stage, oldest first."""
        if self._in_stage:
            raise RuntimeError("begin_stage called twice without end_stage")
        if self.done:
            raise RuntimeError("the pipeline is done: no stage to run")
        nxt = self._next_input()
        if nxt is not None:
            self.rows.append(Row(*nxt))
            self.stats.injected += 1
        self._in_stage = True
        return list(self.rows)

    def end_stage(self, predictions: list[int]) -> StageOutcome:
        """predictions[k]: argmax of row k at its new exit (rows as begin_stage returned them)."""
        if not self._in_stage:
            raise RuntimeError("end_stage called without begin_stage")
        if len(predictions) != len(self.rows):
            raise ValueError(f"expected {len(self.rows)} predictions, got {len(predictions)}")
        self._in_stage = False
        stats = self.stats
        stats.stages += 1
        stats.row_passes += len(self.rows)
        changed_at = None
        for k, (row, prediction) in enumerate(zip(self.rows, predictions)):
            row.group += 1
            stats.predictions_by_group[row.group - 1] += 1
            if row.guess is not None and prediction != row.guess:
                stats.flips_by_group[row.group - 1] += 1
                if changed_at is None:
                    changed_at = k
            row.guess = prediction

        keep_stop, flushed, flush_exit = len(self.rows), 0, None
        if changed_at is not None and changed_at + 1 < len(self.rows):
            discarded = self.rows[changed_at + 1 :]
            flushed, flush_exit = len(discarded), self.rows[changed_at].group
            stats.flushed += flushed
            stats.row_passes_wasted += sum(r.group for r in discarded)
            stats.flushes_by_group[flush_exit - 1] += 1
            keep_stop = changed_at + 1
            del self.rows[keep_stop:]

        committed, keep_start = None, 0
        if self.rows and self.rows[0].group == self.groups:
            committed = self.rows.pop(0).guess
            self.committed.append(committed)
            stats.committed += 1
            keep_start = 1
            if self.done and self.rows:
                raise AssertionError("rows in flight past the end of the sequence")
        return StageOutcome(slice(keep_start, keep_stop), committed, flushed, flush_exit)
