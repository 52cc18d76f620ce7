"""SPEED decoding is exact in exact arithmetic: its output, and its KV cache over committed positions, equal
sequential greedy decoding's, for any config, prompt, length, EOS and early-exit quality (float64, random models:
no near-tie). In floating point a constructed near-tie splits them (`test_a_near_tie_can_split_the_decoders`)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import PredictorModel, tiny_configs

from reference import decode
from reference.config import get_preset
from reference.flips import FlipOracle, FlipReplay
from reference.model import SharedDecoder
from sim.files import atomic_write


def committed_span(prompt: list[int], tokens: list[int]) -> int:
    """Positions whose keys/values a decode writes: the prompt and every generated token but the last."""
    return len(prompt) + len(tokens) - 1


@settings(max_examples=200)
@given(cfg=tiny_configs(), data=st.data())
def test_speed_equals_sequential(cfg, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    mode = data.draw(st.sampled_from(["model", "oracle", "random", "mixed"]), label="early exits")
    batch = data.draw(st.integers(1, 3), label="batch")
    prompts = [data.draw(st.lists(st.integers(0, cfg.vocab_size - 1), min_size=1, max_size=6), label="prompt")
               for _ in range(batch)]
    sources = None
    if cfg.is_encoder_decoder:
        sources = [data.draw(st.lists(st.integers(0, cfg.vocab_size - 1), min_size=1, max_size=6), label="source")
                   for _ in range(batch)]
    n = data.draw(st.integers(1, 16), label="max_new_tokens")
    model = PredictorModel(cfg, mode, seed)

    # EOS placement: none, or a token the sequence really produces at a chosen step
    free = decode.sequential(model, prompts, n, eos_id=-1, encoder_inputs=sources)
    eos = -1
    if data.draw(st.booleans(), label="with eos"):
        eos = free.tokens[0][data.draw(st.integers(0, n - 1), label="eos step")]
    ref = decode.sequential(model, prompts, n, eos_id=eos, encoder_inputs=sources)
    model.truth = {(b, len(p) - 1 + k): t for b, p in enumerate(prompts) for k, t in enumerate(ref.tokens[b])}

    out = decode.speed(model, prompts, n, eos_id=eos, encoder_inputs=sources)

    assert out.tokens == ref.tokens
    for b, prompt in enumerate(prompts):
        span = committed_span(prompt, ref.tokens[b])
        torch.testing.assert_close(out.cache.k[:, b, :, :span], ref.cache.k[:, b, :, :span], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out.cache.v[:, b, :, :span], ref.cache.v[:, b, :, :span], rtol=1e-9, atol=1e-9)
    stats = out.stats
    assert stats.injected == stats.committed + stats.flushed
    assert stats.committed == sum(len(t) for t in ref.tokens)
    if mode == "oracle":  # a perfect predictor never flushes: fill + drain is the only overhead
        assert stats.flushed == 0
        assert [s.stages for s in out.per_sequence] == [len(t) + cfg.n_groups - 1 for t in ref.tokens]


@settings(max_examples=30)
@given(cfg=tiny_configs(max_groups=1), seed=st.integers(0, 2**16), n=st.integers(1, 12))
def test_one_group_is_sequential_stage_for_stage(cfg, seed, n):
    model = SharedDecoder(cfg, dtype=torch.float64, seed=seed)
    prompts = [[1, 2, 3], [4]]
    sources = [[5, 6], [7, 8, 9]] if cfg.is_encoder_decoder else None
    logs = {}
    for name, fn in (("sequential", decode.sequential), ("speed", decode.speed)):
        logs[name] = StageLog()
        fn(model, prompts, n, encoder_inputs=sources, observer=logs[name])
    setup = ["encoder", "prefill", "encoder"] if cfg.is_encoder_decoder else ["prefill"]  # prompt [4] needs none
    assert logs["speed"].kinds == setup + ["speed"] * len(logs["speed"].stages)
    assert logs["sequential"].kinds == setup + ["decode"] * len(logs["sequential"].stages)
    assert logs["speed"].stages == logs["sequential"].stages


class StageLog:
    """A StageObserver that keeps what every stage ran and committed."""

    def __init__(self) -> None:
        self.kinds, self.stages = [], []

    def begin(self, kind):
        self.kinds.append(kind)

    def end(self, rows, predictions, commits, flushes):
        if rows:
            self.stages.append(([(b, r.position, r.token) for b, r in rows], predictions, commits, flushes))


def test_flip_oracle_drives_speed_without_reading_values():
    cfg = get_preset("tiny-2x3")
    model = SharedDecoder(cfg, dtype=torch.float64)
    out = decode.speed(model, [[3, 4]], 200, predictor=FlipOracle([0.3, 0.2], cfg.vocab_size, seed=1, avoid=[1]))
    rates = out.stats.flip_rates
    assert len(out.tokens[0]) == 200 and 1 not in out.tokens[0]  # EOS avoided: full length
    assert 0.2 < rates[1] < 0.4 and 0.1 < rates[2] < 0.3
    # the same oracle seed gives the same run; a replay of its predictions gives the same flushes
    log = StageLog()
    again = decode.speed(model, [[3, 4]], 200, predictor=FlipOracle([0.3, 0.2], cfg.vocab_size, seed=1, avoid=[1]),
                         observer=log)
    assert again.tokens == out.tokens
    replay = FlipReplay([p for _, preds, _, _ in log.stages for p in preds], source="test")
    replayed = decode.speed(model, [[3, 4]], 200, predictor=replay)
    assert replayed.tokens == out.tokens and replayed.stats == out.stats


def test_flip_profiles_of_the_paper_and_of_the_trained_models():
    oracle = FlipOracle.from_profile("t5-base-4x3", vocab_size=100)
    assert oracle.rates == [0.09, 0.04] and "Figure 4" in oracle.source
    trained = FlipOracle.from_profile("code-4x3", vocab_size=100)  # found in data/flips/trained.yaml
    assert len(trained.rates) == 2 and trained.source.startswith("trained.yaml:code-4x3")
    with pytest.raises(ValueError, match=r"no profile 't5-base-9x9'; profiles: t5-base-4x3.*code-4x3"):
        FlipOracle.from_profile("t5-base-9x9", vocab_size=100)
    with pytest.raises(ValueError, match=r"flip rates must lie in \[0, 1\]"):
        FlipOracle([1.5], 10)


@settings(max_examples=40)
@given(cfg=tiny_configs(), seed=st.integers(0, 2**16), n=st.integers(1, 12), data=st.data())
def test_cached_decoding_equals_teacher_forced_argmax(cfg, seed, n, data):
    model = SharedDecoder(cfg, dtype=torch.float64, seed=seed)
    prompt = data.draw(st.lists(st.integers(0, cfg.vocab_size - 1), min_size=1, max_size=6))
    source = [3, 1, 4, 1, 5] if cfg.is_encoder_decoder else None
    out = decode.sequential(model, [prompt], n, eos_id=-1, encoder_inputs=source and [source])
    full = torch.tensor([prompt + out.tokens[0][:-1]])
    logits, _ = model(full, encoder_tokens=None if source is None else torch.tensor([source]))
    assert logits[-1, 0, len(prompt) - 1 :].argmax(-1).tolist() == out.tokens[0]


def test_decoding_refuses_bad_input():
    model = SharedDecoder(get_preset("tiny-2x3"), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"prompts\[0\] is empty"):
        decode.speed(model, [[]], 4)
    with pytest.raises(ValueError, match="max_seq_len = 512"):
        decode.sequential(model, [[1] * 500], 20)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 256\)"):
        decode.speed(model, [[1, 999]], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode.speed(model, [[1]], 0)
    with pytest.raises(ValueError, match="decoder-only"):
        decode.speed(model, [[1]], 3, encoder_inputs=[[1]])
    t5 = SharedDecoder(get_preset("tiny-t5-2x3"), dtype=torch.float64)
    with pytest.raises(ValueError, match="encoder_inputs must give one input per prompt"):
        decode.speed(t5, [[0]], 3)


def test_random_early_exits_flush_but_stay_exact():
    cfg = get_preset("tiny-4x3")
    model = PredictorModel(cfg, "random", seed=3)
    ref = decode.sequential(model, [[5, 6, 7]], 24, eos_id=-1)
    out = decode.speed(model, [[5, 6, 7]], 24, eos_id=-1)
    assert out.tokens == ref.tokens
    assert out.stats.flushed > 0 and out.stats.row_passes_wasted > 0


def test_flip_log_saved_and_loaded_replays_the_run(tmp_path):
    cfg = get_preset("tiny-4x3")
    model = SharedDecoder(cfg, dtype=torch.float64)
    log = StageLog()
    out = decode.speed(model, [[3, 4]], 40, predictor=FlipOracle([0.3, 0.2], cfg.vocab_size, seed=2, avoid=[1]),
                       observer=log)
    text = FlipReplay([p for _, preds, _, _ in log.stages for p in preds], source="run").dumps(3)
    atomic_write(tmp_path / "log.json", lambda tmp: tmp.write_text(text))
    replayed = decode.speed(model, [[3, 4]], 40, predictor=FlipReplay.load(tmp_path / "log.json", groups=3))
    assert replayed.tokens == out.tokens and replayed.stats == out.stats
    with pytest.raises(ValueError, match="field 'groups' is 3, the model has G = 4"):
        FlipReplay.load(tmp_path / "log.json", groups=4)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="missing 'predictions'/'groups'"):
        FlipReplay.load(tmp_path / "bad.json", groups=3)


def test_a_near_tie_can_split_the_decoders():
    """What floating point keeps of exactness (README, "Exactness"): the decoders batch rows differently, so their
    logits differ by rounding (~1e-14 in float64), and a step whose top two logits are closer than that can pick
    different tokens. Tied embeddings make the logits of tokens 45 and 255 differ by scale x (v . h): a scale of a
    few 1e-17 puts them within rounding of each other at every step."""
    model = SharedDecoder(get_preset("tiny-2x3"), dtype=torch.float64, seed=0)
    weight = model.embed.weight.detach()
    base = weight.clone()
    v = torch.randn(base.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert decode.sequential(model, [[5, 6, 7]], 6).tokens == [[45] * 6]  # 45 is the untied model's choice
    split = None
    for scale in (3.5e-17, 3e-17, 4e-17, 5e-17, 2.5e-17, 6e-17):  # the first splits on this CPU; the others: margin
        weight[255] = base[45] - scale * v
        sequential, speed = (f(model, [[5, 6, 7]], 6).tokens[0] for f in (decode.sequential, decode.speed))
        if sequential != speed:
            split = (sequential, speed)
            break
    assert split is not None, "no near-tie split the decoders"
    sequential, speed = split
    first = next(i for i, (a, b) in enumerate(zip(sequential, speed)) if a != b)
    assert {sequential[first], speed[first]} == {45, 255}  # the two tied tokens, nothing else
    assert sequential[:first] == speed[:first]
