"""Tensor-parallel decoding (reference.parallel, reference.ranks) is exact: with real gloo process groups of 2, 3
and 4 ranks on this machine, sharded sequential and SPEED decoding give single-process decoding's tokens, every
stage's rows, accepts and flushes, its pipeline statistics, logits and KV caches within 1e-10 (float64), and
every rank the same; bf16 stays within the error bf16 itself makes. A rank that dies or hangs makes the others
fail within seconds with one clear line; bad degrees are refused naming the figure.

Spawning ranks costs seconds, so one pool of ranks (`LocalRanks`) serves every case of a world size; the
single-process reference runs in the test process meanwhile.
"""

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from reference import decode, ranks
from reference.config import ModelConfig, get_preset
from reference.flips import FlipOracle
from reference.hfconfig import from_hf_dict, load_hf_config
from reference.model import SharedDecoder
from reference.parallel import TensorParallel, build_shard, check_degree, fake_group, shard, vocab_range

ROOT = Path(__file__).resolve().parents[1]
EXACT = 1e-10  # float64: logits and KV caches of the sharded decode against single-process decoding
TIMEOUT_S = 120.0  # the process groups' timeout where nothing is meant to fail (a busy 2-core machine)


@pytest.fixture(scope="module")
def pool():
    """pool(world): the ranks of `world`, started on first use and kept for the module (idle ranks wait on a
    queue: memory, no CPU)."""
    live: dict[int, ranks.LocalRanks] = {}

    def get(world: int) -> ranks.LocalRanks:
        if world not in live:
            live[world] = ranks.LocalRanks(world, timeout_s=TIMEOUT_S)
        return live[world]

    yield get
    for ranks_ in live.values():
        ranks_.close()


def check_exact(request: ranks.DecodeRequest, outputs: list[ranks.RankOutput]) -> ranks.Agreement:
    """The ranks' outputs equal the single-process decode of `request`: tokens, pipeline statistics, every
    stage's rows and decisions, on every rank; logits (where recorded) and KV caches within EXACT."""
    reference = ranks.run_request(request)
    agreement = ranks.compare(reference, outputs, request.prompts)
    assert agreement.exact, agreement
    for name in request.decoders:
        assert agreement.cache_max_abs[name] <= EXACT, agreement
        if request.record_logits:
            assert agreement.logits_max_abs[name] <= EXACT, agreement
    assert [o.rank for o in outputs] == list(range(len(outputs)))
    return agreement


@st.composite
def sharded_configs(draw, world: int) -> ModelConfig:
    """Tiny configs `world` ranks can shard: world or 2 x world query heads, KV heads as many or `world`
    (grouped-query), d_ff a multiple of world, decoder-only or encoder-decoder, the head tied or not, biases or
    not, and a vocabulary of 29 (prime: uneven vocabulary shards) or 48."""
    heads = world * draw(st.sampled_from([1, 2]))
    encoder = draw(st.integers(0, 1))
    return ModelConfig(
        name=f"tp{world}-tiny", vocab_size=draw(st.sampled_from([29, 48])),
        d_model=heads * draw(st.sampled_from([4, 8])), n_heads=heads,
        n_kv_heads=draw(st.sampled_from(sorted({world, heads}))), d_ff=world * draw(st.sampled_from([4, 8])),
        n_unique_layers=draw(st.integers(1, 2)), n_groups=draw(st.integers(1, 3)), n_encoder_layers=encoder,
        ffn=draw(st.sampled_from(["swiglu", "gated-gelu"])), max_seq_len=64, eos_id=None,
        tie_embeddings=draw(st.booleans()), qkv_bias=draw(st.booleans()))


@pytest.mark.parametrize("world", [2, 3, 4])
@settings(max_examples=4, derandomize=True)
@given(data=st.data())
def test_sharded_decoding_equals_single_process(pool, world, data):
    cfg = data.draw(sharded_configs(world), label="config")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    batch = data.draw(st.integers(1, 2), label="batch")
    prompts = [data.draw(st.lists(st.integers(0, cfg.vocab_size - 1), min_size=1, max_size=5), label="prompt")
               for _ in range(batch)]
    sources = None
    if cfg.is_encoder_decoder:
        sources = [data.draw(st.lists(st.integers(0, cfg.vocab_size - 1), min_size=1, max_size=5), label="source")
                   for _ in range(batch)]
    n = data.draw(st.integers(1, 8), label="max_new_tokens")
    eos = -1
    if data.draw(st.booleans(), label="with eos"):  # a token the first sequence really produces
        free = decode.sequential(SharedDecoder(cfg, dtype=torch.float64, seed=seed), prompts, n, eos_id=-1,
                                 encoder_inputs=sources)
        eos = free.tokens[0][data.draw(st.integers(0, n - 1), label="eos step")]
    request = ranks.DecodeRequest(cfg, prompts, n, seed=seed, encoder_inputs=sources, eos_id=eos, keep_cache=True,
                                  record_logits=data.draw(st.booleans(), label="record logits"))
    check_exact(request, pool(world).run(ranks.decode_on_rank, request))


QWEN2 = {"model_type": "qwen2", "hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 6,
         "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 61, "max_position_embeddings": 64,
         "tie_word_embeddings": True}
# (config, world, seed, prompts, encoder inputs): each SPEED decode flushes (asserted), batches of two sequences
CASES = {
    "t5-2": (get_preset("tiny-t5-2x3"), 2, 9, [[0], [0, 7, 8]], [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12]]),
    "t5-4": (get_preset("tiny-t5-2x3"), 4, 9, [[0], [0, 7, 8]], [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12]]),
    "gqa-2": (get_preset("tiny-4x3"), 2, 3, [[5, 6, 7], [9, 10, 11, 12, 13, 14]], None),
    "qwen2-2": (from_hf_dict(QWEN2, name="qwen2-tiny").replace(n_unique_layers=2, n_groups=2), 2, 4, [[5, 6, 7], [1]],
              None),
    "untied-3": (ModelConfig(name="six-heads", vocab_size=50, d_model=48, n_heads=6, n_kv_heads=3, d_ff=48,
                             n_unique_layers=2, n_groups=3, max_seq_len=64, tie_embeddings=False, qkv_bias=True),
                 3, 2, [[5, 6, 7], [9, 10]], None),
    "t5-3": (ModelConfig(name="t5-six-heads", vocab_size=50, d_model=48, n_heads=6, n_kv_heads=6, d_ff=96,
                         n_unique_layers=1, n_groups=4, n_encoder_layers=2, ffn="gated-gelu", max_seq_len=64),
             3, 1, [[0], [0, 3]], [[4, 5, 6], [7, 8]]),
    "gqa-4": (ModelConfig(name="eight-heads", vocab_size=61, d_model=64, n_heads=8, n_kv_heads=4, d_ff=64,
                          n_unique_layers=2, n_groups=3, max_seq_len=64), 4, 5, [[5, 6, 7], [9]], None),
}


@pytest.mark.parametrize("case", sorted(CASES, key=lambda c: CASES[c][1]))
def test_flushes_and_restarts_stay_exact(pool, case):
    cfg, world, seed, prompts, sources = CASES[case]
    request = ranks.DecodeRequest(cfg, prompts, 16, seed=seed, encoder_inputs=sources, eos_id=-1, keep_cache=True,
                                  record_logits=True)
    outputs = pool(world).run(ranks.decode_on_rank, request)
    check_exact(request, outputs)
    stats = outputs[0].decoders["speed"].stats
    assert stats.flushed > 0 and stats.injected == stats.committed + stats.flushed  # flushes and restarts ran


# -- custom exits, teacher-forced logits, bf16 (run on the ranks by these functions)
def noisy_decode(tp: TensorParallel | None, cfg: ModelConfig, seed: int, prompts: list[list[int]]) -> list:
    """SPEED and sequential decoding with early exits replaced by seeded noise over the whole vocabulary (as
    tests/test_compiled.py models them): `exit_logits` overridden, so the sharded model gathers full logits."""
    model = SharedDecoder(cfg, dtype=torch.float64, seed=seed)
    if tp is not None:
        shard(model, tp)

    def noisy(h, rows, exits):
        logits = model.logits(h)
        for r, (seq, pos, exit_) in enumerate(zip(rows.seqs, rows.positions, exits)):
            if exit_ < cfg.n_groups:
                gen = torch.Generator().manual_seed(1000 * seq + 10 * pos + exit_)
                logits[r] = torch.randn(logits.shape[1], generator=gen, dtype=logits.dtype)
        return logits

    model.exit_logits = noisy
    return [(out.tokens, out.stats) for out in (decode.speed(model, prompts, 12, eos_id=-1),
                                                 decode.sequential(model, prompts, 12, eos_id=-1))]


def forward_logits(tp: TensorParallel | None, cfg: ModelConfig, seed: int, dtype: torch.dtype, tokens: list[list[int]],
                   sources: list[list[int]] | None) -> torch.Tensor:
    """Teacher-forced logits of every exit over the whole vocabulary [G, B, T, V] (gathered across ranks)."""
    model = SharedDecoder(cfg, dtype=dtype, seed=seed)
    if tp is not None:
        shard(model, tp)
    with torch.inference_mode():
        logits, _ = model(torch.tensor(tokens), encoder_tokens=None if sources is None else torch.tensor(sources))
    return logits


def test_custom_exits_and_teacher_forcing_gather_the_whole_vocabulary(pool):
    cfg = get_preset("tiny-2x3")
    ref = noisy_decode(None, cfg, 5, [[5, 6, 7], [8]])
    outputs = pool(2).run(noisy_decode, cfg, 5, [[5, 6, 7], [8]])
    assert outputs[0] == outputs[1] == ref
    assert ref[0][1].flushed > 2 and ref[0][0] == ref[1][0]  # noisy early exits flush; SPEED = sequential
    tokens, sources = [[3, 1, 4, 1, 5, 9, 2, 6]], [[2, 7, 1, 8]]
    for cfg in (get_preset("tiny-2x3"), get_preset("tiny-t5-2x3")):
        src = sources if cfg.is_encoder_decoder else None
        exact = forward_logits(None, cfg, 2, torch.float64, tokens, src)
        sharded = pool(2).run(forward_logits, cfg, 2, torch.float64, tokens, src)
        assert sharded[0].shape == exact.shape == (cfg.n_groups, 1, 8, cfg.vocab_size)
        assert float((sharded[0] - exact).abs().max()) <= EXACT and torch.equal(sharded[0], sharded[1])


# bf16 (README, "Tensor parallelism"): sharding changes only the order of sums, so its logits may differ from
# single-process bf16 by about what bf16 itself differs from float64 (measured ratio 0.7-1.2 on these models),
# and their argmaxes may split where two logits are that close
BF16_ERROR_RATIO = 2.0  # max |sharded bf16 - bf16| <= this x max |bf16 - float64|
BF16_ARGMAX_AGREEMENT = 0.95  # share of teacher-forced argmaxes equal to single-process bf16's (measured 0.977-1)


@pytest.mark.parametrize("name, world", [("tiny-4x3", 2), ("tiny-t5-2x3", 4)])
def test_bf16_stays_within_its_own_rounding(pool, name, world):
    cfg = get_preset(name)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, cfg.vocab_size, (4, 32), generator=gen).tolist()
    sources = torch.randint(2, cfg.vocab_size, (4, 16), generator=gen).tolist() if cfg.is_encoder_decoder else None
    exact = forward_logits(None, cfg, 1, torch.float64, tokens, sources)
    bf16 = forward_logits(None, cfg, 1, torch.bfloat16, tokens, sources).double()
    sharded = pool(world).run(forward_logits, cfg, 1, torch.bfloat16, tokens, sources)
    assert all(torch.equal(s, sharded[0]) for s in sharded)  # every rank the same bits
    error = float((sharded[0].double() - bf16).abs().max())
    assert 0 < error <= BF16_ERROR_RATIO * float((bf16 - exact).abs().max())
    assert (sharded[0].argmax(-1) == bf16.argmax(-1)).double().mean() >= BF16_ARGMAX_AGREEMENT
    # decoding in bf16: every rank decides the same, whatever near-ties do to the tokens
    request = ranks.DecodeRequest(cfg, [[0]] * 2 if sources else tokens[:2], 16, seed=1, dtype="bfloat16",
                                  encoder_inputs=sources and sources[:2], eos_id=-1)
    agreement = ranks.compare(ranks.run_request(request), pool(world).run(ranks.decode_on_rank, request),
                              request.prompts)
    assert agreement.ranks_agree


# -- torch.compile under tensor parallelism (gloo on the CPU)
def test_compiled_sharded_decoding_equals_eager():
    """A SPEED decode of one token (G = 2: two stages of one row, so one compiled variant: inductor takes tens of
    seconds per variant on a busy 2-core machine; tests/test_compiled.py covers variants per row count) whose
    graph holds the all-reduces and the argmax's all-gather, on every rank."""
    cfg = ModelConfig(name="tiny-1x2", vocab_size=40, d_model=16, n_heads=2, n_kv_heads=2, d_ff=16,
                      n_unique_layers=1, n_groups=2, max_seq_len=64)
    compiled = ranks.DecodeRequest(cfg, [[5, 6, 7]], 1, seed=3, decoders=("speed",), compile=True, keep_cache=True)
    compiling = ranks.LocalRanks(2, timeout_s=600.0)  # ranks compile apart: a first collective may wait minutes
    try:
        outputs = compiling.run(ranks.decode_on_rank, compiled)
    finally:
        compiling.close()
    check_exact(ranks.DecodeRequest(cfg, [[5, 6, 7]], 1, seed=3, decoders=("speed",), keep_cache=True), outputs)
    assert all(o.decoders["speed"].compile_s > 0 and o.decoders["speed"].stages == 2 for o in outputs)


# -- the meta device under a fake process group: what a trace of any --tp records
class Collectives(TorchDispatchMode):
    """Counts the ops dispatched; keeps the shapes and device of each collective's first call."""

    def __init__(self) -> None:
        super().__init__()
        self.counts, self.first = Counter(), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.counts[str(func)] += 1
        if "c10d" in str(func):
            self.first.setdefault(str(func), (tuple(args[0].shape), tuple(out.shape), out.device.type))
        return out


def test_a_70b_shard_builds_and_decodes_on_meta_under_a_fake_group():
    cfg = load_hf_config(ROOT / "data" / "hfconfigs" / "llama-2-70b" / "config.json", share="20x4")
    tp = fake_group(8, rank=5)
    try:
        model = build_shard(cfg, tp, dtype=torch.bfloat16)
        attn, ffn = model.blocks[0].attn, model.blocks[0].ffn
        assert (attn.n_heads, attn.n_kv_heads, ffn.gate.out_features) == (8, 1, 3584)
        assert attn.wq.weight.shape == (1024, 8192) and attn.wo.weight.shape == (8192, 1024)
        assert (model.vocab_shard.start, model.vocab_shard.stop) == (20000, 24000)
        assert model.lm_head.weight.shape == (4000, 8192) and model.embed.weight.shape == (32000, 8192)
        with Collectives() as seen:
            out = decode.speed(model, [[1, 2, 3, 4]], 3, predictor=FlipOracle([0.2] * 3, cfg.vocab_size, avoid=[2]))
    finally:
        torch.distributed.destroy_process_group()
    assert out.cache.k.shape == (cfg.depth, 1, 1, 6, 128) and out.cache.k.device.type == "meta"
    # one all-reduce after wo and one after down, per layer: prefill (3 prompt tokens at every depth), then per
    # stage the Nd blocks once; the argmax's all-gather once per stage
    assert seen.counts["_c10d_functional.all_reduce.default"] == 2 * (cfg.depth + cfg.n_unique_layers * out.stages)
    assert seen.counts["_c10d_functional.all_gather_into_tensor.default"] == out.stages
    assert seen.counts["_c10d_functional.wait_tensor.default"] == 2 * (cfg.depth + cfg.n_unique_layers
                                                                      * out.stages) + out.stages
    assert seen.first["_c10d_functional.all_reduce.default"] == ((1, 3, 8192), (1, 3, 8192), "meta")
    assert seen.first["_c10d_functional.all_gather_into_tensor.default"] == ((1, 2), (8, 2), "meta")


def test_degrees_are_refused_naming_the_figure():
    llama = get_preset("llama2-7b")
    with pytest.raises(ValueError, match=r"^--tp 3: n_heads 32 is not divisible by 3 \(llama2-7b\)$"):
        check_degree(llama, 3)
    with pytest.raises(ValueError, match=r"--tp 8: n_kv_heads 4 is not divisible by 8"):
        check_degree(load_hf_config(ROOT / "data" / "hfconfigs" / "tinyllama-1.1b" / "config.json"), 8)
    with pytest.raises(ValueError, match=r"--tp 5: n_heads 12 is not divisible by 5 \(self-, cross- and encoder"):
        check_degree(get_preset("t5-base-4x3"), 5)
    with pytest.raises(ValueError, match=r"--tp 3: d_ff 11008 is not divisible"):
        check_degree(llama.replace(n_heads=48, n_kv_heads=48, d_model=6144), 3)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"--tp {bad}: must be an integer >= 1"):
            check_degree(llama, bad)
    check_degree(get_preset("t5-base-4x3"), 4)
    assert [vocab_range(29, 4, r) for r in range(4)] == [(0, 8), (8, 15), (15, 22), (22, 29)]
    model = SharedDecoder(get_preset("tiny-2x3"), device="meta")
    assert shard(model, TensorParallel(1, 0, "none")) is model and model.vocab_shard is None  # one rank: as is
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, 2\)"):
        shard(model, TensorParallel(2, 2, "none"))
    shard(model, TensorParallel(2, 1, "none"))
    with pytest.raises(ValueError, match="already sharded"):
        shard(model, TensorParallel(2, 1, "none"))


# -- failures: a rank that dies or hangs mid-decode
class StopAfter:
    """A StageObserver that ends this process (`os._exit`) or hangs it after `stages` decode stages."""

    def __init__(self, stages: int, how: str) -> None:
        self.stages, self.how, self.seen = stages, how, 0

    def begin(self, kind):
        pass

    def end(self, rows, predictions, commits, flushes):
        self.seen += bool(rows)
        if self.seen == self.stages:
            if self.how == "die":
                os._exit(7)
            time.sleep(3600)


def stop_mid_decode(tp: TensorParallel, victim: int, how: str) -> list[list[int]]:
    model = shard(SharedDecoder(get_preset("tiny-2x3"), dtype=torch.float64, seed=0), tp)
    observer = StopAfter(4, how) if tp.rank == victim else None
    return decode.speed(model, [[5, 6, 7]], 40, eos_id=-1, observer=observer).tokens


@pytest.mark.parametrize("how", ["die", "hang"])
def test_a_failed_rank_stops_the_others_within_seconds(how):
    timeout_s = 5.0
    failing = ranks.LocalRanks(2, timeout_s=timeout_s)
    try:
        assert failing.run(ranks.decode_on_rank, ranks.DecodeRequest(get_preset("tiny-2x3"), [[1]], 1))  # started
        pids = failing.pids
        with pytest.raises(ranks.RankFailure) as failure:
            failing.run(stop_mid_decode, 1, how)
    finally:
        failing.close()
    err = failure.value
    survivor = err.outcomes[0]
    assert err.exitcodes[0] == 1 and "\n" not in survivor and survivor.startswith("RuntimeError: ")
    if how == "die":  # the dead peer's connection closes: the survivor fails at once
        assert err.exitcodes[1] == 7 and "without a result" in err.outcomes[1]
        assert "gloo" in survivor and err.reported_s[0] < 30  # Connection reset (or closed) by peer
    else:  # a hung peer: the survivor's collective times out after timeout_s; the hung rank is killed
        assert err.exitcodes[1] is not None and err.exitcodes[1] < 0
        assert "Timed out waiting 5000ms" in survivor and timeout_s <= err.reported_s[0] < timeout_s + 25
    assert f"rank 0: {survivor} (exit code 1)" in str(err)
    assert len(pids) == 2 and failing.pids == []  # the failure closed the pool, and no process is left behind:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- the command line under torchrun
def torchrun(nproc: int, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
               "127.0.0.1", "--master-port", str(ranks.free_port()), "-m", "reference.demo", *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_demo_under_torchrun_agrees_and_refuses_a_world_size_other_than_tp():
    done = torchrun(2, "--tp", "2", "--preset", "tiny-t5-2x3", "--tokens", "12")
    assert done.returncode == 0, done.stderr
    assert "sharded outputs agree with single-process decoding: True" in done.stdout
    assert "every rank the same tokens, statistics and stage decisions: True" in done.stdout
    assert done.stdout.count("tensor parallel: 2 ranks (gloo") == 1  # rank 0 alone prints
    refused = torchrun(2, "--tp", "4", "--preset", "tiny-t5-2x3")
    assert refused.returncode != 0 and refused.stdout == ""
    lines = [line for line in refused.stderr.splitlines() if "reference.demo: error:" in line]
    assert lines == ["python -m reference.demo: error: --tp 4: torchrun started 2 processes (WORLD_SIZE 2); --tp "
                     "must equal --nproc-per-node"]
