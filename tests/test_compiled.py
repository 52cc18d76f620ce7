"""Compiled decoding (reference.compiled, `compile=True`) is exact: its tokens, SPEED's pipeline statistics and the
KV caches over committed positions equal eager decoding's, with one compiled variant per number of rows in flight
and no recompilation per token.

Compiling costs seconds per variant on a small CPU, so the models are module-scoped and every test reuses the
variants earlier ones compiled (a variant is keyed by its kind, rows and cache shape). float64 on the CPU, the
tolerance policy of tests/conftest.py: identical tokens, caches within rtol = atol = 1e-9.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from reference import compiled, decode
from reference.config import get_preset
from reference.model import SharedDecoder

TOKENS = 10


@pytest.fixture(scope="module")
def decoder():
    return SharedDecoder(get_preset("tiny-2x3"), dtype=torch.float64, seed=5)


@pytest.fixture(scope="module")
def t5():
    return SharedDecoder(get_preset("tiny-t5-2x3"), dtype=torch.float64, seed=9)


class StageRows:
    """A StageObserver that keeps the number of rows of every decode stage."""

    def __init__(self) -> None:
        self.rows = []

    def begin(self, kind):
        pass

    def end(self, rows, predictions, commits, flushes):
        if rows:
            self.rows.append(len(rows))


def run_compiled(fn, model, *args, **kwargs):
    """fn(..., compile=True), failing on any recompilation; checks that the graphs Dynamo compiled during the call
    are exactly the variants it reports."""
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = fn(model, *args, compile=True, **kwargs)
    assert counters["stats"]["unique_graphs"] - graphs == len(out.compile_variants)
    return out


def assert_same(out, ref, prompts):
    assert out.tokens == ref.tokens
    assert out.stats == ref.stats and out.per_sequence == ref.per_sequence  # the same flushes, stage for stage
    for b, prompt in enumerate(prompts):
        span = len(prompt) + len(ref.tokens[b]) - 1  # positions written by committed tokens
        torch.testing.assert_close(out.cache.k[:, b, :, :span], ref.cache.k[:, b, :, :span], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out.cache.v[:, b, :, :span], ref.cache.v[:, b, :, :span], rtol=1e-9, atol=1e-9)
        if ref.cache.cross_k is not None:
            n = ref.cache.encoder_lens[b]
            assert out.cache.encoder_lens[b] == n
            torch.testing.assert_close(out.cache.cross_k[:, b, :, :n], ref.cache.cross_k[:, b, :, :n], rtol=0, atol=0)


def eos_of(model, prompts, sources):
    """An EOS that the first sequence produces mid-way and the others never, so that sequences end at different
    stages (-1, no EOS, where there is none)."""
    free = decode.sequential(model, prompts, TOKENS, eos_id=-1, encoder_inputs=sources).tokens
    return next((t for k, t in enumerate(free[0]) if k >= 3 and t not in free[0][:k]
                 and not any(t in other for other in free[1:])), -1)


CASES = {
    "decoder-b1": ("decoder", [[5, 6, 7]], None),
    "decoder-b2": ("decoder", [[5, 6, 7], [9, 10, 11, 12, 13, 14]], None),
    "t5-b2": ("t5", [[0], [0, 7, 8]], [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_decoding_equals_eager(case, request):
    name, prompts, sources = CASES[case]
    model = request.getfixturevalue(name)
    eos = eos_of(model, prompts, sources) if len(prompts) > 1 else -1
    for fn in (decode.speed, decode.sequential):
        ref = fn(model, prompts, TOKENS, eos_id=eos, encoder_inputs=sources)
        log = StageRows()
        out = run_compiled(fn, model, prompts, TOKENS, eos_id=eos, encoder_inputs=sources, observer=log)
        assert_same(out, ref, prompts)
        if fn is decode.speed:
            assert ref.stats.flushed > 0  # the random model's early exits disagree: flushes are exercised
        kinds = {"stage"} if fn is decode.speed else {"token"}
        # compiled in this call (if not by an earlier test): one variant per kind and row count the decode ran
        assert {v.kind for v in out.compile_variants} <= kinds
        assert {v.rows for v in out.compile_variants} <= set(log.rows)
    keys = [v.key for v in compiled.compiled_step(model).variants]
    assert len(keys) == len(set(keys))  # no variant ever compiled twice
    if len(prompts) > 1:
        assert 3 < len(ref.tokens[0]) < len(ref.tokens[1]) == TOKENS  # EOS ended the first sequence mid-way


def test_one_variant_per_row_count_compiled_once_and_timed_apart(decoder):
    prompts = [[3] * 20]  # a cache of 32 positions: a shape no other test compiles
    log = StageRows()
    first = run_compiled(decode.speed, decoder, prompts, TOKENS, eos_id=-1, observer=log)
    assert_same(first, decode.speed(decoder, prompts, TOKENS, eos_id=-1), prompts)
    assert first.cache.k.shape[3] == 32
    # exactly one variant per number of rows in flight (1..G), however many stages ran
    assert sorted(v.rows for v in first.compile_variants) == sorted(set(log.rows)) == [1, 2, 3]
    assert len(log.rows) > 3 * len(first.compile_variants)
    assert all(v.kind == "stage" and v.first_call_s > 0 for v in first.compile_variants)
    assert first.compile_s == pytest.approx(sum(v.first_call_s for v in first.compile_variants))
    step = compiled.compiled_step(decoder)
    before = len(step.variants)
    # another length in the same bucket, another prompt: nothing compiles (run_compiled fails on any recompile)
    again = run_compiled(decode.speed, decoder, [[4] * 19], TOKENS + 2, eos_id=-1)
    assert again.compile_variants == [] and again.compile_s == 0 and len(step.variants) == before
    assert again.tokens == decode.speed(decoder, [[4] * 19], TOKENS + 2, eos_id=-1).tokens
    assert decode.speed(decoder, prompts, TOKENS, eos_id=-1).compile_variants is None  # eager


def test_custom_exits_run_eagerly_on_compiled_groups(decoder):
    """An overridden exit_logits (early exits of chosen quality, as in tests/test_decode.py) is called on the
    compiled hidden states; here early exits are noise, so SPEED flushes often."""
    groups = decoder.config.n_groups

    def noisy(h, rows, exits):
        logits = decoder.head(h)
        for r, (seq, pos, exit_) in enumerate(zip(rows.seqs, rows.positions, exits)):
            if exit_ < groups:  # the same noise for the same row and exit, whatever the decoder and its batching
                gen = torch.Generator().manual_seed(1000 * seq + 10 * pos + exit_)
                logits[r] = torch.randn(logits.shape[1], generator=gen, dtype=logits.dtype)
        return logits

    prompts = [[5, 6, 7]]
    decoder.exit_logits = noisy
    try:
        ref = decode.speed(decoder, prompts, TOKENS, eos_id=-1)
        out = run_compiled(decode.speed, decoder, prompts, TOKENS, eos_id=-1)
        plain = decode.sequential(decoder, prompts, TOKENS, eos_id=-1)
    finally:
        del decoder.exit_logits
    assert_same(out, ref, prompts)
    assert ref.tokens == plain.tokens and ref.stats.flushed > 2
    assert all(v.kind == "stage" and v.key[2] is False for v in out.compile_variants)  # no head in the graph


def test_reused_cache_and_predictor(decoder):
    """Where CUDA graphs run, one cache per shape serves every call; the same path on the CPU stays exact. A
    predictor (flip oracle) drives the compiled pipeline as it does the eager one."""
    from reference.flips import FlipOracle

    step = compiled.compiled_step(decoder)
    prompts = [[5, 6, 7]]
    step.reuse_cache = True
    try:
        a = run_compiled(decode.speed, decoder, prompts, TOKENS, eos_id=-1)
        b = run_compiled(decode.speed, decoder, [[2, 3, 4]], TOKENS, eos_id=-1)
    finally:
        step.reuse_cache, step._caches = False, {}
    assert a.cache is b.cache  # the second call overwrote the first's cache
    assert_same(b, decode.speed(decoder, [[2, 3, 4]], TOKENS, eos_id=-1), [[2, 3, 4]])

    def oracle():
        return FlipOracle([0.4, 0.3], decoder.config.vocab_size, seed=4, avoid=[1])

    ref = decode.speed(decoder, prompts, TOKENS, eos_id=-1, predictor=oracle())
    out = run_compiled(decode.speed, decoder, prompts, TOKENS, eos_id=-1, predictor=oracle())
    assert_same(out, ref, prompts)
    assert ref.stats.flushed > 0


def test_static_step_matches_run_group_without_compiling(t5):
    """The static-shape step itself (no torch.compile) against run_group, rows of two sequences at mixed groups."""
    with torch.inference_mode():
        caches = []
        for _ in range(2):
            cache = t5.new_cache(2, 16, 8)
            t5.encode_into(cache, 0, [3, 4, 5])
            t5.encode_into(cache, 1, [6, 7, 8, 9, 10, 11])
            t5.prefill(cache, 0, [0, 5, 6, 7])
            t5.prefill(cache, 1, [0])
            caches.append(cache)
        seqs, positions, groups = [0, 0, 1], [5, 4, 1], [0, 1, 2]
        h = torch.randn(3, t5.config.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        ref = t5.run_group(h, t5.rows(seqs, positions), groups, caches[0])
        c = caches[1]
        out = compiled.run_group_static(t5, h, *torch.tensor([seqs, positions, groups]), c.k, c.v, c.cross_k,
                                        c.cross_v, torch.tensor(c.encoder_lens))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c.k, caches[0].k, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c.v, caches[0].v, rtol=1e-9, atol=1e-9)


def test_bucket_and_refusals():
    assert [compiled.bucket(n, 512) for n in (1, 16, 17, 33, 300, 511, 512)] == [16, 16, 32, 64, 512, 512, 512]
    assert compiled.bucket(40, 40) == 40 and compiled.bucket(3, 10) == 10
    meta = SharedDecoder(get_preset("tiny-2x3"), device="meta")
    with pytest.raises(ValueError, match="meta device"):
        decode.speed(meta, [[1, 2]], 3, compile=True)
