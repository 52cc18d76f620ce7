"""The fast capture (reference/capture/fastcapture.py) writes the trace the full capture writes, op for op and
field for field: over tiny presets of both families, sequential and SPEED, eager and compiled formulation,
flushes, batches of prompts of different lengths, and lengths. And it derives what it may, and only that."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.capture import tracing
from reference.capture.fastcapture import FastCapture, _Structure
from reference.capture.opcapture import OpCapture
from reference.config import get_preset
from reference.model import SharedDecoder
from sim.trace import OpRecord, OpTable, read_trace

PRESETS = ["tiny-6", "tiny-2x3", "tiny-4x3", "tiny-t5-2x3"]  # decoder-only, unshared and shared; encoder-decoder


def capture(kind, preset, decoder, tokens, prompt_lens, flips, compiled, source_len=5):
    """A capture (of class `kind`) of one run on the meta device, and the trace it makes."""
    cfg = get_preset(preset)
    model = SharedDecoder(cfg, device="meta", dtype=torch.bfloat16, seed=0)
    generator = torch.Generator().manual_seed(len(prompt_lens))
    tokens_of = lambda n: torch.randint(2, cfg.vocab_size, (n,), generator=generator).tolist()  # noqa: E731
    if cfg.is_encoder_decoder:
        prompts = [[cfg.decoder_start_id] for _ in prompt_lens]
        sources = [tokens_of(source_len + n) for n in prompt_lens]  # encoder inputs of different lengths
    else:
        prompts, sources = [tokens_of(n) for n in prompt_lens], None
    rates = None if decoder == "sequential" or cfg.n_groups == 1 else ",".join([str(flips)] * (cfg.n_groups - 1))
    predictor = tracing.flip_oracle(cfg, rates, seed=3, sequential=decoder == "sequential")
    cap = kind(model)
    with cap.attached():
        tracing.run_decoder(model, decoder, prompts, tokens, sources, predictor, observer=cap, compiled=compiled)
    head = tracing.header(model, cap, decoder, prompts, tokens, predictor, "meta", False, "test")
    return cap, cap.trace(head)


def assert_same_trace(fast, full):
    assert fast.header == full.header and fast.stages == full.stages
    assert len(fast.ops) == len(full.ops)
    for a, b in zip(fast.ops, full.ops):
        assert a == b, f"op {b.i} of stage {b.stage} differs:\n fast {a}\n full {b}"
    assert fast == full


@settings(max_examples=20)
@given(preset=st.sampled_from(PRESETS), decoder=st.sampled_from(["sequential", "speed"]), compiled=st.booleans(),
       tokens=st.integers(1, 14), prompt_lens=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       flips=st.sampled_from([0.0, 0.2, 0.6, 1.0]))
def test_fast_capture_equals_full_capture(preset, decoder, compiled, tokens, prompt_lens, flips):
    fast_capture, fast = capture(FastCapture, preset, decoder, tokens, prompt_lens, flips, compiled)
    _, full = capture(OpCapture, preset, decoder, tokens, prompt_lens, flips, compiled)
    assert_same_trace(fast, full)
    assert fast_capture.derived <= len(fast.stages)


@pytest.mark.parametrize("preset, decoder, compiled", [("tiny-2x3", "sequential", False),
                                                       ("tiny-t5-2x3", "sequential", True),
                                                       ("tiny-4x3", "speed", False), ("tiny-4x3", "speed", True)])
def test_repeated_stages_are_derived_not_executed(preset, decoder, compiled):
    """Sequential decoding has one structure (after the prefill): three stages recorded, the rest derived;
    SPEED with few flips repeats its pipeline's structures too. A derived stage runs no group pass."""
    fast_capture, fast = capture(FastCapture, preset, decoder, 24, [4], 0.1, compiled)
    _, full = capture(OpCapture, preset, decoder, 24, [4], 0.1, compiled)
    assert_same_trace(fast, full)
    recorded = len(fast.stages) - fast_capture.derived
    assert fast_capture.derived >= len(fast.stages) // 2
    assert len(fast_capture.ops) < len(full.ops) * (recorded + 1) / len(fast.stages)
    if decoder == "sequential":
        assert recorded == 4 and len(fast_capture.structures) == 1  # the prefill, and three decode steps
    assert len(fast.distinct) < len(fast.ops) / 4


def test_batches_of_speed_pipelines_stay_exact_when_nothing_repeats():
    """A batch's SPEED pipelines flush apart, so a stage's rows seldom repeat: recorded, and still exact."""
    _, fast = capture(FastCapture, "tiny-4x3", "speed", 12, [3, 5, 2], 0.5, False)
    _, full = capture(OpCapture, "tiny-4x3", "speed", 12, [3, 5, 2], 0.5, False)
    assert_same_trace(fast, full)


def test_capture_trace_is_fast_on_meta_unless_asked_and_writes_the_same_file(tmp_path):
    fast, _ = tracing.capture_trace("tiny-4x3", "speed", 16, tmp_path / "fast.jsonl.gz", flips="0.1,0.1",
                                    prompt_len=4)
    full, _ = tracing.capture_trace("tiny-4x3", "speed", 16, tmp_path / "full.jsonl.gz", flips="0.1,0.1",
                                    prompt_len=4, full=True)
    assert fast == full == read_trace(tmp_path / "fast.jsonl.gz")
    assert (tmp_path / "fast.jsonl.gz").read_bytes() == (tmp_path / "full.jsonl.gz").read_bytes()


def test_the_fast_capture_needs_the_meta_device():
    model = SharedDecoder(get_preset("tiny-2x3"), dtype=torch.float32)
    with pytest.raises(ValueError, match="meta device"):
        FastCapture(model)


def op(flops: int, shape: int, srcs: int = 1) -> OpRecord:
    return OpRecord(0, 0, 0, 0, 0, 0, 1, "blocks.0.attn", "attention", "aten.scaled_dot_product_attention",
                    [[1, 2, 1, 8], [1, 2, shape, 8]], ["bfloat16"] * 2, [[1, 2, 1, 8]], ["bfloat16"], flops, 0, 32,
                    32, 64 * shape, 0, [], ["k:0:0", "v:0:0"], [srcs, 0], [srcs])


def learn(structure: _Structure, table: OpTable, stages: list[tuple[int, OpRecord]]) -> None:
    for position, record in stages:
        structure.learn(position, (table.intern(op(5, 1)), table.intern(record)), table)


def test_a_rule_is_trusted_only_when_its_third_stage_agrees():
    table = OpTable()
    affine = _Structure()  # KV length = position + 1: shapes, FLOPs and bytes grow with it
    learn(affine, table, [(3, op(40, 4)), (5, op(60, 6)), (9, op(100, 10))])
    assert affine.trusted and not affine.broken
    derived = affine.rule.at(20)
    assert derived[0] == table.intern(op(5, 1)) and derived[1] == op(210, 21)
    curved = _Structure()  # not affine in the position: the third stage disagrees
    learn(curved, table, [(3, op(40, 4)), (5, op(60, 6)), (9, op(120, 10))])
    assert curved.broken and not curved.trusted
    fractional = _Structure()  # a slope that is no whole number: broken at once
    learn(fractional, table, [(3, op(40, 4)), (5, op(61, 6))])
    assert fractional.broken
    moved = _Structure()  # every integer field may move, dependencies too, as long as it moves affinely...
    learn(moved, table, [(3, op(40, 4)), (5, op(60, 6, srcs=3)), (7, op(80, 8, srcs=5))])
    assert moved.trusted
    learn(broken := _Structure(), table, [(3, op(40, 4)), (5, op(60, 6, srcs=3)), (7, op(80, 8, srcs=4))])
    assert broken.broken  # ...and is checked like any other
    assert affine.rule.at(-5) is None  # a negative derived shape: no derivation, the stage is recorded
