"""Training: the tokenizer, the weighted exit loss, that training learns, that a resumed run is the same run, and
that the committed trained models' early exits mostly agree with their last (what SPEED's speculation needs)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference.config import get_preset
from reference.experiments import train
from reference.experiments.corpus import EOS_ID, FIRST_MERGE_ID, Tokenizer, load_corpus, stdlib_dir
from reference.model import SharedDecoder

# a tiny preset with room for the bytes, EOS and 31 merges
TINY = get_preset("tiny-2x3").replace(vocab_size=288, eos_id=EOS_ID)
# small modules every Python 3.10-3.13 has; copy.py and glob.py fall in the held-out split
FILES = ("bisect.py", "colorsys.py", "fnmatch.py", "heapq.py", "keyword.py", "copy.py", "glob.py")
SETTINGS = train.TrainSettings(steps=30, batch=4, context=64, warmup_steps=3, eval_every=10, eval_windows=8)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: tiny matmuls gain nothing from more, and a shared machine makes extra threads wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name in FILES:
        shutil.copy(stdlib_dir() / name, root / name)
    corpus = load_corpus(root)
    assert sorted(corpus.heldout) == ["copy.py", "glob.py"]
    return train.tokenize_corpus(corpus, TINY.vocab_size)


def naive_bpe_encode(text: bytes, merges: list[tuple[int, int]]) -> list[int]:
    """The textbook encoder: apply each merge in rank order, left to right, in plain Python."""
    ids = list(text)
    for k, pair in enumerate(merges):
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(FIRST_MERGE_ID + k)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return ids


def test_tokenizer_round_trips_and_matches_the_textbook_encoder(data):
    tok = data.tokenizer
    assert tok.vocab_size == TINY.vocab_size
    text = (stdlib_dir() / "glob.py").read_text() + "\n    aaaa  aaaaa\tx = 1\n"  # runs of one byte: overlapping pairs
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == naive_bpe_encode(text.encode(), tok.merges)
    assert len(ids) < 0.8 * len(text.encode())  # the merges compress
    assert Tokenizer.from_json(tok.to_json()).merges == tok.merges
    assert data.train[-1] == EOS_ID and data.heldout[-1] == EOS_ID


def test_tokenizer_training_is_deterministic(data):
    files = [data.corpus.train[name] for name in sorted(data.corpus.train)]
    assert Tokenizer.train(files, TINY.vocab_size).merges == data.tokenizer.merges


def test_weighted_exit_loss_is_the_weighted_sum_of_per_exit_cross_entropies():
    model = SharedDecoder(get_preset("tiny-2x3"), dtype=torch.float64, seed=3)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (2, 12), generator=generator)
    targets = torch.randint(0, 256, (2, 12), generator=generator)
    targets[0, :3] = -100  # ignored positions
    logits, loss = model(tokens, targets)
    keep = targets != -100
    by_hand = 0.0
    for g, exit_logits in enumerate(logits, start=1):
        log_probs = exit_logits - exit_logits.logsumexp(-1, keepdim=True)
        nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        by_hand += g / 6 * nll[keep].mean()  # w_g = g / (1 + 2 + 3)
    torch.testing.assert_close(loss, by_hand, rtol=1e-12, atol=1e-12)
    # and the exits differ, so a wrong weighting would show
    per_exit = [F.cross_entropy(x.flatten(0, 1), targets.flatten(), ignore_index=-100).item() for x in logits]
    assert max(per_exit) - min(per_exit) > 1e-3


def test_training_lowers_the_loss(data, tmp_path):
    model = SharedDecoder(TINY, seed=None)
    train.init_for_training(model, SETTINGS.seed)
    model.eval()
    inputs, targets = train.eval_windows(data.heldout, SETTINGS.eval_windows, SETTINGS.context)
    before = train.heldout_loss(model, inputs, targets)
    assert abs(before - math.log(TINY.vocab_size)) < 0.1  # small init: near-uniform predictions

    result = train.train(TINY, data, SETTINGS, tmp_path / "out", tmp_path / "state", progress=False)
    assert result.heldout_loss < before - 1.0
    assert np.mean(result.losses[-5:]) < result.losses[0] - 1.0
    # the checkpoint holds that model, and says what it is
    loaded, tok, meta = train.load_checkpoint(result.checkpoint)
    assert loaded.config == TINY and meta["step"] == SETTINGS.steps and tok.merges == data.tokenizer.merges
    assert meta["run"]["corpus_sha256"] == data.corpus.sha256
    assert train.heldout_loss(loaded, inputs, targets) == pytest.approx(result.heldout_loss, abs=0.01)  # float16
    log = [json.loads(line) for line in (tmp_path / "out" / f"{TINY.name}.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(SETTINGS.steps))
    assert [r["step"] for r in log if "heldout_loss" in r] == [9, 19, 29]


def test_a_resumed_run_is_the_same_run(data, tmp_path):
    settings = train.TrainSettings(steps=8, batch=4, context=64, warmup_steps=2, eval_every=4, eval_windows=4)
    whole = train.train(TINY, data, settings, tmp_path / "a", tmp_path / "a-state", progress=False)

    first = train.train(TINY, data, settings, tmp_path / "b", tmp_path / "b-state", progress=False, stop_after=3)
    assert len(first.losses) == 3 and not (tmp_path / "b" / f"{TINY.name}.safetensors").exists()
    log = tmp_path / "b" / f"{TINY.name}.log.jsonl"
    with log.open("a") as f:  # a crash after the last save: a logged step that the state does not hold
        f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
    rest = train.train(TINY, data, settings, tmp_path / "b", tmp_path / "b-state", progress=False)

    assert first.losses + rest.losses == whole.losses  # bit for bit: same data, weights, moments
    a, _, _ = train.load_checkpoint(whole.checkpoint)
    b, _, _ = train.load_checkpoint(rest.checkpoint)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert [json.loads(line)["loss"] for line in log.read_text().splitlines()] == [
        round(x, 5) for x in whole.losses]
    # done: running it again trains nothing; other settings refuse to resume the state
    assert train.train(TINY, data, settings, tmp_path / "b", tmp_path / "b-state", progress=False).skipped
    (tmp_path / "b" / f"{TINY.name}.safetensors").unlink()
    other = train.TrainSettings(**{**settings.__dict__, "lr": 1e-3})
    with pytest.raises(ValueError, match=r"different run \(settings changed\).*--restart"):
        train.train(TINY, data, other, tmp_path / "b", tmp_path / "b-state", progress=False)


@pytest.mark.parametrize("preset", ["code-2x6", "code-4x3"])
def test_trained_early_exits_agree_with_the_last_far_more_than_random_ones(preset):
    """The committed checkpoints (python -m reference.experiments.train --family). The random baseline is the model's
    own init, the random models of the decoding tests; a model fresh from the training init is none: its tiny
    residual branches leave every exit echoing the input token, so its exits agree trivially."""
    model, tokenizer, _ = train.load_checkpoint(train.ROOT / "data" / "trained" / f"{preset}.safetensors")
    corpus = load_corpus()
    heldout = tokenizer.encode_files([corpus.heldout[name] for name in sorted(corpus.heldout)])
    inputs, targets = train.eval_windows(heldout, 4, 128)

    def agreement(m: SharedDecoder) -> float:
        """Share of (early exit, position) pairs whose argmax is the last exit's."""
        with torch.no_grad():
            predictions = m(inputs)[0].argmax(-1)
        return (predictions[:-1] == predictions[-1]).float().mean().item()

    trained, random = agreement(model), agreement(SharedDecoder(model.config, seed=0))
    assert trained > 0.6 and trained > random + 0.25, (trained, random)
    with torch.no_grad():  # and it agrees by predicting the text, not by echoing its input
        last = model(inputs)[0][-1].argmax(-1)
    assert (last == targets).float().mean() > 0.15 and (last == inputs).float().mean() < 0.1


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert train.main(["--preset", "tiny-2x3", "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert train.main(["--preset", "code-2", "--corpus", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and err.strip().count("\n") == 0
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        train.load_checkpoint(tmp_path / "bad.safetensors")
