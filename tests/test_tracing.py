"""Capture: FLOPs and bytes per op from real shapes, the SPEED amortization visible in the trace, the same op
sequence on cpu and meta, and reproducible default traces."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from reference.capture import tracing
from reference.capture.opcapture import OpCapture
from reference.config import ModelConfig, get_preset
from reference.model import SharedDecoder
from sim.defaults import DEFAULT_TRACES
from sim.trace import read_trace


def traced(model, decoder="speed", tokens=6, flips="0.3,0.2", prompt=(3, 4, 5), source=None, meta_shortcuts=True):
    capture = OpCapture(model, meta_shortcuts=meta_shortcuts)
    predictor = tracing.flip_oracle(model.config, flips if model.config.n_groups > 1 else None)
    with capture.attached():
        tracing.run_decoder(model, decoder, [list(prompt)], tokens, source, predictor, observer=capture)
    return capture


@settings(max_examples=25)
@given(d_head=st.sampled_from([4, 8]), heads=st.sampled_from([1, 2, 4]), d_ff=st.integers(3, 40),
       vocab=st.integers(8, 90), groups=st.integers(1, 3), prompt_len=st.integers(1, 5))
def test_flops_and_bytes_of_linear_attention_and_head_by_hand(d_head, heads, d_ff, vocab, groups, prompt_len):
    d = d_head * heads
    cfg = ModelConfig(name="h", vocab_size=vocab, d_model=d, n_heads=heads, n_kv_heads=heads, d_ff=d_ff,
                      n_unique_layers=2, n_groups=groups, eos_id=None)
    model = SharedDecoder(cfg, dtype=torch.float32)
    rates = ",".join(["0.5"] * (groups - 1)) or None
    capture = traced(model, tokens=5, flips=rates, prompt=range(2, 2 + prompt_len))
    stage_rows = {s.stage: len(s.rows) for s in capture.stages}
    for op in capture.ops:
        rows = stage_rows.get(op.stage, 0)
        if op.module == "blocks.1.ffn.up" and capture.stages[op.stage].kind == "speed":
            assert op.flops == 2 * rows * d * d_ff
            assert (op.weight_bytes, op.act_read_bytes, op.act_write_bytes) == (
                4 * d * d_ff, 4 * rows * d, 4 * rows * d_ff)
            assert op.weights == ["blocks.1.ffn.up.weight"]
        if op.op == "aten.scaled_dot_product_attention" and op.kv_read_bytes:
            keys = op.in_shapes[1][-2]  # positions 0..p of the row's own depth
            assert op.flops == 4 * heads * keys * d_head
            assert op.kv_read_bytes == 2 * 4 * heads * keys * d_head
            assert op.act_read_bytes == op.act_write_bytes == 4 * heads * d_head
        if op.module == "head":
            assert op.flops == 2 * rows * d * vocab and op.weight_bytes == 4 * vocab * d
            assert op.act_write_bytes == 4 * rows * vocab


def test_matmul_flops_agree_with_torch_flop_counter():
    # on meta, attention lowers to the math path (bmm) that flop_counter counts; it misses cpu's fused kernel. Every
    # op executed in full, so that the counter sees it (the meta shortcuts skip what they can)
    model = SharedDecoder(get_preset("tiny-t5-2x3"), device="meta", dtype=torch.float32)
    counter = FlopCounterMode(display=False)
    with counter:
        capture = traced(model, source=[[7, 8, 9, 10]], meta_shortcuts=False)
    ours = sum(op.flops for op in capture.ops if op.op in ("aten.linear.default", "aten.scaled_dot_product_attention"))
    assert ours == counter.get_total_flops()


def block_weights(model: SharedDecoder, decoding: bool = True) -> int:
    """Bytes of the shared blocks' weights that a decode pass reads (cross-attention keys/values are cached)."""
    return sum(p.numel() * p.element_size() for name, p in model.blocks.named_parameters()
               if not (decoding and name.split(".")[1] == "cross_attn" and name.split(".")[2] in ("wk", "wv")))


@pytest.mark.parametrize("preset, source", [("tiny-4x3", None), ("tiny-t5-2x3", [[5, 6, 7]])])
def test_a_speed_stage_reads_the_shared_group_once_whatever_its_rows(preset, source):
    model = SharedDecoder(get_preset(preset), device="meta", dtype=torch.bfloat16)
    capture = traced(model, tokens=12, source=source)
    d, itemsize = model.config.d_model, 2
    once = block_weights(model) + (d + model.config.vocab_size * d) * itemsize  # + final norm + tied head
    seen_rows = set()
    for stage in capture.stages:
        if stage.kind != "speed":
            continue
        ops = [op for op in capture.ops if op.stage == stage.stage]
        injected = sum(1 for _, _, exit_ in stage.rows if exit_ == 1)
        assert sum(op.weight_bytes for op in ops) == once + injected * d * itemsize  # + embedding rows gathered
        reads = Counter(w for op in ops for w in op.weights if w != "embed.weight")
        assert set(reads.values()) == {1}  # every shared weight read by one op, once for all rows
        seen_rows.add(len(stage.rows))
    assert seen_rows == {1, 2, 3}  # fill, full pipeline, drain: the same weight traffic


def test_sequential_unshared_twelve_layers_read_twelve_layers_per_token():
    model = SharedDecoder(get_preset("t5-base-12"), device="meta", dtype=torch.bfloat16)
    capture = traced(model, decoder="sequential", tokens=3, source=[list(range(2, 10))])
    per_layer = block_weights(model) // 12
    head = (768 + 32128 * 768) * 2
    steps = [s for s in capture.stages if s.kind == "decode"]
    assert len(steps) == 3
    for step in steps:
        ops = [op for op in capture.ops if op.stage == step.stage]
        assert sum(op.weight_bytes for op in ops) == 12 * per_layer + head + 768 * 2
        assert {op.depth for op in ops if op.depth is not None} == set(range(12))


@pytest.mark.parametrize("preset, decoder",
                         [("tiny-4x3", "speed"), ("tiny-t5-2x3", "speed"), ("tiny-2x3", "sequential")])
def test_cpu_and_meta_traces_have_the_same_ops_and_shapes(preset, decoder):
    def summary(device):
        model = SharedDecoder(get_preset(preset), device=device, dtype=torch.float32)
        source = [[5, 6, 7, 8]] if model.config.is_encoder_decoder else None
        capture = traced(model, decoder=decoder, tokens=10, source=source)
        # allowed to differ: the copy that merging heads needs after a backend whose attention output has the
        # head-major layout (the cpu's math fallback for masks and prefill; meta mimics the fused kernels)
        return ([(op.stage, op.module, op.op, op.in_shapes, op.out_shapes, op.depth, op.flops, op.weight_bytes,
                  op.kv_read_bytes, op.kv_write_bytes) for op in capture.ops if op.op != "aten.flatten.using_ints"],
                capture.stages)
    assert summary("cpu") == summary("meta")


@pytest.mark.parametrize("preset, decoder, compiled", [
    ("tiny-4x3", "speed", False), ("tiny-t5-2x3", "speed", True), ("tiny-2x3", "sequential", True),
    ("llama-1b-11x2", "speed", False)])
def test_the_meta_shortcuts_change_no_op(preset, decoder, compiled):
    """On meta, functional ops take their outputs' metadata from an earlier call alike and attention its output
    directly (reference/capture/metaops.py): the trace is the one the ops executed in full give."""
    def trace(shortcuts):
        model = SharedDecoder(get_preset(preset), device="meta", dtype=torch.bfloat16)
        capture = OpCapture(model, meta_shortcuts=shortcuts)
        source = [[5, 6, 7, 8]] if model.config.is_encoder_decoder else None
        flips = ",".join(["0.4"] * (model.config.n_groups - 1)) or None
        with capture.attached():
            tracing.run_decoder(model, decoder, [[3, 4, 5]], 5, source, tracing.flip_oracle(model.config, flips),
                                observer=capture, compiled=compiled)
        return capture.ops, capture.stages
    assert trace(True) == trace(False)


def test_trace_file_round_trip_and_header(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    written, _ = tracing.capture_trace("tiny-2x3", "speed", 8, path, flips="0.2,0.1", source_len=4)
    trace = read_trace(path)
    assert trace == written and trace.ops == written.ops and trace.stages == written.stages
    assert trace.header.decoder == "speed" and trace.header.model["n_groups"] == 3
    assert trace.header.flips["rates"] == [0.2, 0.1] and trace.header.dtype == "bfloat16"
    assert sum(len(s.commits) for s in trace.stages) == 8


def test_default_traces_regenerate_byte_identical(tmp_path):
    committed = sorted(DEFAULT_TRACES.glob("*.jsonl.gz"))
    assert len(committed) == 8, "run: python -m reference.capture.tracing --defaults"
    fresh = tracing.write_defaults(tmp_path, progress=False)
    assert sorted(p.name for p in fresh) == [p.name for p in committed]
    for path in committed:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), (
            f"{path.name} is stale: run python -m reference.capture.tracing --defaults")


def test_bad_requests_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        tracing.capture_trace("nope", "speed", 4, tmp_path / "x.jsonl.gz")
    with pytest.raises(ValueError, match="needs 2 rates, got 1"):
        tracing.capture_trace("tiny-2x3", "speed", 4, tmp_path / "x.jsonl.gz", flips="0.1")
    assert not list(Path(tmp_path).iterdir())


def test_the_trace_contract_kind_sequence_and_kv_items():
    """Version 3: every op carries its kernel class, which agrees with the naming rules the old versions relied
    on (so the model's names still mean what the capture says); per-row attention names the sequence and depth
    of the KV slice it reads; an op over the rows of several sequences has no sequence."""
    from sim.trace import legacy_kind

    model = SharedDecoder(get_preset("tiny-t5-2x3"), dtype=torch.float32)
    capture = OpCapture(model)
    sources = [[5, 6, 7], [8, 9]]
    with capture.attached():
        tracing.run_decoder(model, "speed", [[0], [0]], 5, sources, tracing.flip_oracle(model.config, "0.3,0.2"),
                            observer=capture)
    nd = model.config.n_unique_layers
    assert {op.kind for op in capture.ops} >= {"matmul", "lm_head", "attention", "norm", "gather", "elementwise"}
    for op in capture.ops:
        assert op.kind == legacy_kind(op.op, op.module), op
        if op.kind == "attention" and op.kv_read_bytes:
            items = [item.split(":") for item in op.kv]
            assert len(items) == 2 and op.seq in (0, 1) and {int(seq) for _, seq, _ in items} == {op.seq}
            prefixes, (where,) = {p for p, _, _ in items}, {int(w) for _, _, w in items}
            if prefixes == {"k", "v"}:  # self-attention: keys and values of its own depth
                assert where == op.depth and op.depth // nd == op.group
            else:  # cross-attention: the encoder keys and values of its shared layer
                assert prefixes == {"xk", "xv"} and where == op.layer
        stage_seqs = {r[0] for r in capture.stages[op.stage].rows}
        if op.module == "blocks.0.attn.wq" and capture.stages[op.stage].kind == "speed":
            # rows of both sequences in one product: no sequence; a stage of one sequence's rows: that one
            assert op.seq == (None if len(stage_seqs) > 1 else next(iter(stage_seqs)))
    # an encoder stage runs one sequence (the cache allocated before the first stage belongs to none)
    assert {op.seq for op in capture.ops if capture.stages[op.stage].kind == "encoder"
            and op.module != "kv_cache"} == {0, 1}


def test_the_capture_refuses_a_model_whose_names_drifted():
    model = SharedDecoder(get_preset("tiny-2x3"), dtype=torch.float32)
    model.layers = model.blocks  # a rename the capture's rules would not see
    del model.blocks
    with pytest.raises(RuntimeError, match=r"no longer match the model.*blocks\.0"):
        OpCapture(model).attached().__enter__()
