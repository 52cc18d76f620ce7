"""The SPEED pipeline bookkeeping, without a model: a synthetic "language" decides the true next token and
early exits guess it with a chosen accuracy."""

import itertools
import random
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.pipeline import SpeedPipeline


def true_next(prefix: tuple[int, ...], vocab: int) -> int:
    """A deterministic function of the whole prefix, like a model's final exit."""
    return hash(prefix) % vocab


def sequential_rollout(prompt: list[int], n: int, vocab: int, eos: int | None) -> list[int]:
    seq, out = list(prompt), []
    while len(out) < n and not (out and out[-1] == eos):
        out.append(true_next(tuple(seq), vocab))
        seq.append(out[-1])
    return out


def run_pipeline(prompt, n, groups, vocab, eos, accuracy, seed, check=True):
    rng = random.Random(seed)
    pipe = SpeedPipeline(groups, prompt[-1], len(prompt) - 1, n, eos)
    committed_before: list[int] = []
    while not pipe.done:
        rows = pipe.begin_stage()
        if check:
            # rows: distinct groups, consecutive positions, older rows deeper, at most G in flight
            assert len(rows) <= groups
            assert [r.position for r in rows] == list(range(rows[0].position, rows[0].position + len(rows)))
            assert all(a.group > b.group for a, b in itertools.pairwise(rows))
            # the oldest row's input is always a committed (or prompt) token
            known = [prompt[-1], *pipe.committed]
            assert rows[0].token == known[rows[0].position - (len(prompt) - 1)]
        predictions = []
        for r in rows:
            # the row's input sequence: prompt, committed tokens, then the in-flight tokens up to its position
            seq = list(prompt) + pipe.committed
            seq += [x.token for x in rows if x.position >= len(seq)]
            prefix = tuple(seq[: r.position + 1])
            truth = true_next(prefix, vocab)
            exact = r.group + 1 == groups or rng.random() < accuracy
            predictions.append(truth if exact else rng.randrange(vocab))
        in_flight = len(rows)
        out = pipe.end_stage(predictions)
        if check:
            assert pipe.committed[: len(committed_before)] == committed_before  # committed only grows
            # a flush takes every younger row with it: the survivors are a prefix of the stage's rows
            assert out.kept.stop == in_flight - out.flushed and out.kept.start == (out.committed is not None)
            committed_before = list(pipe.committed)
    return pipe


cases = dict(
    prompt=st.lists(st.integers(0, 7), min_size=1, max_size=6),
    n=st.integers(1, 40),
    groups=st.integers(1, 8),
    eos=st.one_of(st.none(), st.integers(0, 7)),
    accuracy=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    seed=st.integers(0, 2**16),
)


@given(**cases)
def test_speed_commits_the_sequential_output(prompt, n, groups, eos, accuracy, seed):
    pipe = run_pipeline(prompt, n, groups, 8, eos, accuracy, seed)
    assert pipe.committed == sequential_rollout(prompt, n, 8, eos)


@given(**cases)
def test_counts_balance(prompt, n, groups, eos, accuracy, seed):
    pipe = run_pipeline(prompt, n, groups, 8, eos, accuracy, seed)
    s = pipe.stats
    assert not pipe.rows
    assert s.injected == s.committed + s.flushed
    assert s.committed == len(pipe.committed)
    assert s.row_passes == sum(s.predictions_by_group)
    assert s.row_passes_wasted <= s.row_passes
    assert sum(s.flushes_by_group) <= s.flushed
    assert s.flips_by_group[0] == 0  # exit 1 has nothing to change from
    assert s.predictions_by_group[-1] == s.committed  # every row reaching exit G commits


@given(prompt=cases["prompt"], n=cases["n"], groups=cases["groups"], seed=cases["seed"])
def test_perfect_predictor_never_flushes(prompt, n, groups, seed):
    pipe = run_pipeline(prompt, n, groups, 8, None, 1.0, seed)
    assert pipe.stats.flushed == 0 and pipe.stats.row_passes_wasted == 0
    assert pipe.stats.stages == len(pipe.committed) + groups - 1


@given(**cases)
def test_stage_count_is_rows_started_plus_stages_that_start_none(prompt, n, groups, eos, accuracy, seed):
    # what the pipeline's docstring and the demo state: one row started per stage at most; a stage starts none
    # exactly when the newest row predicts EOS or the last position; tokens + G - 1 <= stages <= G x tokens
    pipe = SpeedPipeline(groups, prompt[-1], len(prompt) - 1, n, eos)
    rng, idle, held_by_eos = random.Random(seed), 0, False
    while not pipe.done:
        before = pipe.stats.injected
        newest = pipe.rows[-1] if pipe.rows else None
        rows = pipe.begin_stage()
        started = pipe.stats.injected - before
        assert started <= 1
        held = newest is not None and (newest.guess == eos or newest.position + 1 - (len(prompt) - 1) >= n)
        assert started == (not held)
        idle += 1 - started
        held_by_eos |= held and newest.guess == eos
        pipe.end_stage([true_next((r.position, r.token), 8) if r.group + 1 == groups or rng.random() < accuracy
                        else rng.randrange(8) for r in rows])
    s, tokens = pipe.stats, len(pipe.committed)
    assert s.stages == s.injected + idle == s.committed + s.flushed + idle
    assert tokens + groups - 1 <= s.stages <= groups * tokens
    if s.flushed == 0 and not held_by_eos:  # then only the last row holds stages up: the final G - 1
        assert s.stages == tokens + groups - 1


def test_an_early_eos_holds_up_the_next_row_without_a_flush():
    # issue 12's case: G = 4, exit 1 always predicts EOS, later exits are right: each row waits for its own
    # exit 2 before the next row starts, so 10 tokens take 22 stages (not tokens + G - 1 = 13) with no flush
    eos, groups = 1, 4
    pipe = SpeedPipeline(groups, first_token=5, first_position=0, max_new_tokens=10, eos_id=eos)
    while not pipe.done:
        rows = pipe.begin_stage()
        pipe.end_stage([eos if r.group == 0 else 2 + r.position % 5 for r in rows])
    assert pipe.committed == [2 + p % 5 for p in range(10)] and eos not in pipe.committed
    assert pipe.stats.stages == 22 and pipe.stats.flushed == 0
    assert pipe.stats.flips_by_group[1] == 10  # every row changed its mind at exit 2: nothing younger to flush


def test_always_wrong_predictor_pays_for_every_token():
    # exits 1..G-1 always wrong (and never agreeing with each other): each token waits a full pipeline depth
    pipe = run_pipeline([3], 20, 4, 1000, None, 0.0, seed=1)
    assert pipe.committed == sequential_rollout([3], 20, 1000, None)
    assert pipe.stats.flushed > 0 and pipe.stats.row_passes_wasted > 0


def test_single_group_is_one_stage_per_token():
    pipe = run_pipeline([1, 2], 15, 1, 8, None, 0.0, seed=0)
    assert pipe.stats.stages == 15 and pipe.stats.flushed == 0


def test_flush_discards_every_younger_row():
    pipe = SpeedPipeline(groups=3, first_token=5, first_position=0, max_new_tokens=10)
    pipe.begin_stage()
    pipe.end_stage([7])  # row@0 exit 1 guesses 7
    pipe.begin_stage()
    pipe.end_stage([7, 8])  # row@0 exit 2 agrees; row@1 (token 7) guesses 8
    rows = pipe.begin_stage()
    assert [(r.position, r.token, r.group) for r in rows] == [(0, 5, 2), (1, 7, 1), (2, 8, 0)]
    out = pipe.end_stage([9, 8, 4])  # row@0 changes its mind at exit 3: rows @1 and @2 are stale
    assert out.committed == 9 and out.flushed == 2 and out.flush_exit == 3
    assert out.kept == slice(1, 1) and pipe.rows == []
    assert pipe.begin_stage()[0].token == 9  # restart from the corrected token
    assert pipe.stats.row_passes_wasted == 1 + 2  # row@2 ran one group, row@1 two


def test_misuse_is_refused():
    pipe = SpeedPipeline(2, 0, 0, 3)
    with pytest.raises(RuntimeError):
        pipe.end_stage([])
    pipe.begin_stage()
    with pytest.raises(ValueError, match="expected 1 predictions"):
        pipe.end_stage([1, 2])
    with pytest.raises(ValueError, match="groups"):
        SpeedPipeline(0, 0, 0, 3)


def test_pipeline_module_does_not_import_torch():
    code = "import sys, reference.pipeline; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
