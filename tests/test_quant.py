"""Weight-only quantization (reference.quant): the round-to-nearest quantizers keep every weight within half a step
of its grid; the packed kernels compute the product of the dequantized weights; SPEED decodes exactly what
sequential decoding decodes over the same quantized weights (float32 through the packed ops: tokens; float64
through dequantize-then-matmul: tokens, and final logits within 1e-9), with flushes; tensor-parallel decoding of a
quantized model equals single-process decoding of it; quantizing then sharding equals sharding then quantizing
where a scale depends on one rank's weights alone; compiled decoding equals eager; a quantized checkpoint round
trips, and a bad one, scheme, group size or degree is refused in one line.

The packed ops split even a 64 x 64 product across torch's threads (at::parallel_for with no grain), which on a
busy 2-core machine waits milliseconds for the other core: the module runs on one thread.
"""

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from strategies import PredictorModel

from reference import decode, demo, quant, ranks
from reference.config import ModelConfig, get_preset
from reference.experiments import quality, train
from reference.hfconfig import from_hf_dict, load_hf_config
from reference.model import SharedDecoder
from reference.parallel import TensorParallel, build_shard, fake_group, shard

EXACT = 1e-9  # float64 (dequantize-then-matmul): final logits and KV caches of SPEED against sequential
TP_EXACT = 1e-10  # float64: the sharded quantized decode against single-process (row-parallel sums reorder)
TP_FLOAT32 = 1e-4  # float32 through the packed ops: logits of 2 ranks against one process (measured 2e-5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- schemes
def test_schemes_are_parsed_and_unknown_ones_refused_naming_the_flag():
    assert list(quant.SCHEMES) == ["int8", "int4-g32", "int4-g64", "int4-g128"]
    assert quant.parse_scheme("int4-g64") == quant.Scheme("int4-g64", 4, 64)
    with pytest.raises(ValueError, match=r"^--quant int5: unknown scheme; schemes: int8, int4-g32, int4-g64"):
        quant.parse_scheme("int5")
    with pytest.raises(ValueError, match=r"^--quant int4-g48: unknown scheme: the group size must be one of 32, 64, "):
        quant.parse_scheme("int4-g48")
    assert quant.scheme_from_fields(8, -1, True).name == "int8"
    assert quant.scheme_from_fields(4, 128, False).name == quant.scheme_from_fields(4, 128, True).name == "int4-g128"
    for fields, field in [((8, 128, True), "group_size"), ((8, -1, False), "sym"), ((4, -1, True), "group_size"),
                          ((3, 128, True), "bits"), ((4, 96, True), "group_size"), (("4", 128, True), "bits"),
                          ((4, 128, "yes"), "sym")]:
        with pytest.raises(quant.SchemeFieldError, match=rf"^field '{field}': ") as err:
            quant.scheme_from_fields(*fields)
        assert err.value.field == field


# -- the quantizers: round to nearest on each scheme's grid
weights = st.builds(lambda seed, n, k, scale: torch.randn(n, k, generator=torch.Generator().manual_seed(seed),
                                                          dtype=torch.float64) * scale,
                    st.integers(0, 2**16), st.sampled_from([1, 3, 16]), st.sampled_from([128, 256]),
                    st.sampled_from([1e-3, 1.0, 30.0]))


@settings(max_examples=30)
@given(w=weights, dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_int8_rounds_to_the_nearest_point_of_a_symmetric_grid(w, dtype):
    w = w.to(dtype)
    w[0] = 0.0  # a row of zeros: scale 0
    q, scales = quant.quantize_int8(w)
    assert q.dtype == torch.int8 and scales.dtype == dtype and int(q.abs().max()) <= 127
    wide, s = w.double(), scales.double()[:, None]
    assert float(scales[0]) == 0 and not q[0].any()
    # each weight within half a step of its grid point (a scale rounded to bf16 can clip the row's extreme a bit)
    assert bool(((q.double() * s - wide).abs() <= s * 0.5 * (1 + 1e-6) + s * 127 * 2**-7).all())
    if dtype == torch.float64:  # the row's largest magnitude lands on +-127
        assert bool((q[1:].abs().amax(dim=1) == 127).all())
        assert bool(((q.double() * s - wide).abs() <= s * (0.5 + 1e-9)).all())


@settings(max_examples=30)
@given(w=weights, group=st.sampled_from(quant.GROUP_SIZES))
def test_int4_rounds_to_the_nearest_point_of_each_groups_grid(w, group):
    w[0, :group] = 0.25  # a constant group: scale 0, q 8, exact
    q, sz = quant.quantize_int4(w, group)
    n, k = w.shape
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 15 and sz.shape == (k // group, n, 2)
    back = quant.dequantize_int4(q, sz, torch.float64)
    step = sz[..., 0].t().repeat_interleave(group, dim=1)  # [N, K]
    assert bool(((back - w).abs() <= step * (0.5 + 1e-9)).all())
    assert float(sz[0, 0, 0]) == 0 and bool((q[0, :group] == 8).all()) and bool((back[0, :group] == 0.25).all())
    groups = q.reshape(n, k // group, group)
    assert bool((groups.amin(-1)[1:] == 0).all()) and bool((groups.amax(-1)[1:] == 15).all())  # min -> 0, max -> 15
    assert torch.equal(quant.from_nibbles(quant.to_nibbles(q)), q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("scheme", list(quant.SCHEMES))
def test_layers_compute_the_product_of_their_dequantized_weights(scheme, dtype):
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(256, 48, bias=True, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 256, generator=gen) * 0.05)
    x = torch.randn(2, 3, 256, generator=gen).to(dtype)  # 3-D, as teacher forcing and prefill call it
    model = torch.nn.Module()
    model.layer = (quant.Int8Linear.from_linear(linear) if scheme == "int8"
                   else quant.Int4Linear.from_linear(linear, quant.SCHEMES[scheme].group_size))
    layer = model.layer
    packed = dtype != torch.float64
    assert (layer.kernel != "dequantize + linear") == packed
    expected = torch.nn.functional.linear(x.double(), layer.dequantized(torch.float64), linear.bias.double())
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float64: 1e-12}[dtype]
    assert (layer(x).double() - expected).abs().max() <= tolerance * expected.abs().max()
    if scheme != "int8":  # the kernel layout unpacks (through the kernel itself) to q exactly
        q, _ = quant.quantize_int4(linear.weight, layer.group_size)
        assert torch.equal(layer.quantized(), q)
        assert torch.equal(model.state_dict()["layer.weight"], quant.to_nibbles(q))  # portable nibbles


def test_int4_falls_back_to_dequantizing_where_the_cpu_kernel_takes_no_such_shape():
    linear = torch.nn.Linear(64, 24, bias=False)  # N = 24: the cpu packer wants N a multiple of 16
    layer = quant.Int4Linear.from_linear(linear, 32)
    assert layer.layout == "nibbles" and layer.kernel == "dequantize + linear"
    forced = quant.Int4Linear.from_linear(torch.nn.Linear(64, 32, bias=False), 32, kernel="dequant")
    assert forced.layout == "nibbles" and quant.Int4Linear.from_linear(torch.nn.Linear(64, 32), 32).layout == "cpu"


# -- SPEED = sequential over the same quantized weights
@st.composite
def quant_configs(draw) -> tuple[ModelConfig, str]:
    """Tiny configs whose widths every group size may divide (d_model 32 or 64, d_ff 64 or 128), decoder-only or
    encoder-decoder, MHA or GQA, tied or not, biases or not; and a scheme that fits them."""
    heads = draw(st.sampled_from([2, 4]))
    d_model, d_ff = draw(st.sampled_from([32, 64])), draw(st.sampled_from([64, 128]))
    cfg = ModelConfig(name="quant-tiny", vocab_size=draw(st.sampled_from([24, 48])), d_model=d_model, n_heads=heads,
                      n_kv_heads=draw(st.sampled_from([1, heads])), d_ff=d_ff, n_unique_layers=draw(st.integers(1, 3)),
                      n_groups=draw(st.integers(1, 4)), n_encoder_layers=draw(st.integers(0, 1)),
                      ffn=draw(st.sampled_from(["swiglu", "gated-gelu"])), max_seq_len=64, eos_id=None,
                      tie_embeddings=draw(st.booleans()), qkv_bias=draw(st.booleans()))
    fitting = [name for name, scheme in quant.SCHEMES.items() if d_model % (scheme.group_size or 1) == 0]
    return cfg, draw(st.sampled_from(fitting))


class FinalLogits:
    """Records, per (sequence, position), the logits a decode's rows have at the last exit (the ones that decide
    the token), by overriding a model's exit_logits."""

    def __init__(self, model: SharedDecoder) -> None:
        self.model, self.logits = model, {}
        model.exit_logits = self

    def __call__(self, h, rows, exits):
        logits = type(self.model).exit_logits(self.model, h, rows, exits)
        for r, (seq, pos, exit_) in enumerate(zip(rows.seqs, rows.positions, exits)):
            if exit_ == self.model.config.n_groups:
                assert (seq, pos) not in self.logits or torch.equal(self.logits[seq, pos], logits[r])
                self.logits[seq, pos] = logits[r].clone()
        return logits


def decode_both(model: SharedDecoder, prompts, sources, n: int, eos: int = -1):
    """sequential and SPEED decodes of `model` with their final logits."""
    out = {}
    for name, fn in (("sequential", decode.sequential), ("speed", decode.speed)):
        recorder = FinalLogits(model)
        out[name] = (fn(model, prompts, n, eos_id=eos, encoder_inputs=sources), recorder.logits)
    del model.exit_logits
    return out


def check_speed_is_sequential(model: SharedDecoder, prompts, sources, n: int) -> decode.DecodeResult:
    out = decode_both(model, prompts, sources, n)
    (ref, ref_logits), (spd, spd_logits) = out["sequential"], out["speed"]
    assert spd.tokens == ref.tokens
    assert spd.stats.committed == sum(map(len, ref.tokens)) and spd.stats.injected == spd.stats.committed + \
        spd.stats.flushed
    assert spd_logits.keys() == ref_logits.keys()
    if model.embed.weight.dtype == torch.float64:
        assert max(float((spd_logits[k] - ref_logits[k]).abs().max()) for k in ref_logits) <= EXACT
        for b, prompt in enumerate(prompts):
            span = len(prompt) + len(ref.tokens[b]) - 1
            torch.testing.assert_close(spd.cache.k[:, b, :, :span], ref.cache.k[:, b, :, :span], rtol=EXACT,
                                       atol=EXACT)
    return spd


@settings(max_examples=60, derandomize=True)
@given(drawn=quant_configs(), dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_speed_equals_sequential_over_quantized_weights(drawn, dtype, data):
    cfg, scheme = drawn
    seed = data.draw(st.integers(0, 2**16), label="seed")
    batch = data.draw(st.integers(1, 2), label="batch")
    prompts = [data.draw(st.lists(st.integers(0, cfg.vocab_size - 1), min_size=1, max_size=5), label="prompt")
               for _ in range(batch)]
    sources = ([data.draw(st.lists(st.integers(0, cfg.vocab_size - 1), min_size=1, max_size=5), label="source")
                for _ in range(batch)] if cfg.is_encoder_decoder else None)
    model = quant.quantize(SharedDecoder(cfg, dtype=dtype, seed=seed), scheme)
    for layer in quant.quantized_layers(model).values():  # the packed op wherever the dtype and shape have one
        packed = dtype == torch.float32 and (scheme == "int8" or layer.out_features % 16 == 0)
        assert (layer.kernel != "dequantize + linear") == packed
    check_speed_is_sequential(model, prompts, sources, data.draw(st.integers(1, 10), label="max_new_tokens"))


QWEN2 = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 61, "max_position_embeddings": 64,
         "tie_word_embeddings": False}
FLUSHING = {  # (config, prompts, encoder inputs): SPEED flushes on each (asserted); Qwen2 from its HF config
    "gqa": (get_preset("tiny-4x3"), [[5, 6, 7], [9, 10]], None),
    "t5": (get_preset("tiny-t5-2x3"), [[0], [0, 7]], [[3, 4, 5], [6, 7, 8, 9]]),
    "qwen2": (from_hf_dict(QWEN2, name="qwen2-tiny").replace(n_unique_layers=2, n_groups=2), [[5, 6, 7], [1]], None),
}


@pytest.mark.parametrize("scheme", ["int8", "int4-g32", "int4-g64"])
@pytest.mark.parametrize("case", sorted(FLUSHING))
def test_flushes_stay_exact_over_quantized_weights(case, scheme):
    """Early exits that guess at random (seeded) flush most stages: float64 through dequantize-then-matmul; and
    the model's own exits in float32 through the packed ops."""
    cfg, prompts, sources = FLUSHING[case]
    noisy = quant.quantize(PredictorModel(cfg, "random", seed=3), scheme)
    assert check_speed_is_sequential(noisy, prompts, sources, 12).stats.flushed > 2
    own = quant.quantize(SharedDecoder(cfg, dtype=torch.float32, seed=3), scheme)
    assert {layer.kernel for layer in quant.quantized_layers(own).values()} <= {
        "aten._weight_int8pack_mm", "aten._weight_int4pack_mm_for_cpu"}
    check_speed_is_sequential(own, prompts, sources, 12)


# -- tensor parallelism
def test_quantized_tensor_parallel_decoding_equals_single_process():
    requests = [ranks.DecodeRequest(cfg, prompts, 10, seed=2, dtype=dtype, encoder_inputs=sources, eos_id=-1,
                                    keep_cache=True, record_logits=True, quant=scheme)
                for cfg, prompts, sources in (FLUSHING["gqa"], FLUSHING["t5"])
                for dtype, scheme in (("float64", "int8"), ("float64", "int4-g32"), ("float32", "int4-g32"),
                                      ("float32", "int8"))]
    with ranks.LocalRanks(2, timeout_s=120.0) as pool:
        for request in requests:
            agreement = ranks.compare(ranks.run_request(request), pool.run(ranks.decode_on_rank, request),
                                      request.prompts)
            assert agreement.exact, (request.config.name, request.dtype, request.quant, agreement)
            tolerance = TP_EXACT if request.dtype == "float64" else TP_FLOAT32
            assert max(agreement.logits_max_abs.values()) <= tolerance, agreement
            assert max(agreement.cache_max_abs.values()) <= tolerance, agreement


def test_quantize_then_shard_is_shard_then_quantize_where_scales_stay_on_one_rank():
    """int4: every layer (groups do not straddle the shards); int8: the column-parallel layers; a row-parallel int8
    shard quantized alone would scale by its own columns' max|w|, so sharding keeps the whole row's scales."""
    cfg = get_preset("tiny-4x3").replace(d_model=128, n_heads=4, n_kv_heads=2, d_ff=256)
    whole = SharedDecoder(cfg, dtype=torch.float32, seed=1)
    for scheme in ("int4-g32", "int4-g64", "int8"):
        for rank in range(2):
            tp = TensorParallel(2, rank, "none")
            first = shard(quant.quantize(copy.deepcopy(whole), scheme), tp).state_dict()
            then = quant.quantize(shard(copy.deepcopy(whole), tp), scheme).state_dict()
            assert first.keys() == then.keys()
            for key in first:
                row_parallel = key.split(".")[-2] in ("wo", "down") and scheme == "int8"
                if not row_parallel:
                    assert torch.equal(first[key], then[key]), (scheme, rank, key)
            unsharded = quant.quantize(copy.deepcopy(whole), "int8").state_dict()
            if scheme == "int8":
                assert torch.equal(first["blocks.0.ffn.down.scales"], unsharded["blocks.0.ffn.down.scales"])
                assert not torch.equal(first["blocks.0.ffn.down.scales"], then["blocks.0.ffn.down.scales"])


def test_a_70b_int4_shard_builds_and_decodes_on_meta():
    cfg = load_hf_config(train.ROOT / "data" / "hfconfigs" / "llama-2-70b" / "config.json", share="20x4")
    tp = fake_group(8, rank=5)
    try:
        model = build_shard(cfg, tp, dtype=torch.bfloat16, quant="int4-g128")
        attn, ffn = model.blocks[0].attn, model.blocks[0].ffn
        assert attn.wq.weight.shape == (1024, 4096) and attn.wq.scales_and_zeros.shape == (64, 1024, 2)
        assert attn.wo.in_features == 1024 and attn.wo.scales_and_zeros.shape == (8, 8192, 2)
        assert ffn.down.in_features == 3584 and ffn.down.scales_and_zeros.shape == (28, 8192, 2)
        assert ffn.gate.kernel == "aten._weight_int4pack_mm_for_cpu" and ffn.gate.weight.device.type == "meta"
        out = decode.speed(model, [[1, 2, 3]], 2, predictor=lambda seq, row, exit_: 5)
        assert out.cache.k.device.type == "meta" and len(out.tokens[0]) == 2
        int8 = build_shard(cfg, tp, dtype=torch.bfloat16, quant="int8")
        assert int8.blocks[0].ffn.down.weight.shape == (8192, 3584) and int8.blocks[0].ffn.down.scales.shape == (8192,)
    finally:
        torch.distributed.destroy_process_group()


# -- compiled decoding
def test_compiled_decoding_over_quantized_weights_equals_eager():
    """The packed op (float32, inductor's lowering) and the dequantize-then-matmul form (float64, fused by
    inductor): one SPEED stage variant each (G = 2, one token), as tests/test_parallel.py keeps compile time down."""
    cfg = ModelConfig(name="tiny-1x2", vocab_size=40, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64,
                      n_unique_layers=1, n_groups=2, max_seq_len=64)
    for dtype, scheme in ((torch.float32, "int4-g32"), (torch.float64, "int8")):
        model = quant.quantize(SharedDecoder(cfg, dtype=dtype, seed=4), scheme)
        eager = decode.speed(model, [[5, 6, 7]], 1, eos_id=-1)
        fast = decode.speed(model, [[5, 6, 7]], 1, eos_id=-1, compile=True)
        assert fast.tokens == eager.tokens and fast.stats == eager.stats and fast.compile_s > 0
        span = 3
        torch.testing.assert_close(fast.cache.k[:, 0, :, :span], eager.cache.k[:, 0, :, :span],
                                   rtol=1e-5 if dtype == torch.float32 else EXACT,
                                   atol=1e-5 if dtype == torch.float32 else EXACT)


# -- checkpoints
@pytest.fixture(scope="module")
def trained():
    return train.load_checkpoint(train.ROOT / "data" / "trained" / "code-2.safetensors")


@pytest.mark.parametrize("scheme", ["int8", "int4-g64"])
def test_a_quantized_checkpoint_round_trips(tmp_path, trained, scheme):
    float_model, _, meta = trained
    model = quant.quantize(copy.deepcopy(float_model), scheme)
    path = tmp_path / f"code-2.{scheme}.safetensors"
    train.save_checkpoint(model, path, meta)
    loaded, tokenizer, loaded_meta = train.load_checkpoint(path)
    assert loaded_meta["quant"] == scheme and loaded_meta["dtype"] == "float32" and tokenizer.vocab_size == 1024
    assert quant.scheme_of(loaded).name == scheme and quant.describe(loaded) == quant.describe(model)
    saved, again = model.state_dict(), loaded.state_dict()
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    prompt = [[5, 6, 7, 8]]
    assert decode.sequential(loaded, prompt, 12).tokens == decode.sequential(model, prompt, 12).tokens
    wide, _, _ = train.load_checkpoint(path, dtype=torch.float64)  # scales cast; dequantize-then-matmul
    assert {layer.kernel for layer in quant.quantized_layers(wide).values()} == {"dequantize + linear"}
    assert quant.projection_bytes(model) < quant.projection_bytes(float_model) / 3.5


def tampered(tmp_path, trained, change) -> str:
    """A quantized checkpoint of code-2 changed by `change(tensors, metadata)`; its path."""
    good = tmp_path / "good.safetensors"
    train.save_checkpoint(quant.quantize(copy.deepcopy(trained[0]), "int4-g64"), good, trained[2])
    tensors = load_file(good)
    with safe_open(str(good), "pt") as f:
        metadata = f.metadata()
    change(tensors, metadata)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    return str(tmp_path / "bad.safetensors")


def cut_scales(tensors, metadata):
    tensors["blocks.0.ffn.down.scales_and_zeros"] = tensors["blocks.0.ffn.down.scales_and_zeros"][:2].clone()


def other_scheme(tensors, metadata):
    metadata["quant"] = json.dumps("int4-g32")


def unknown_scheme(tensors, metadata):
    metadata["quant"] = json.dumps("int3")


def nan_scale(tensors, metadata):
    tensors["blocks.1.attn.wk.scales_and_zeros"][0, 0, 0] = float("nan")


def missing(tensors, metadata):
    del tensors["blocks.1.attn.wo.weight"]


def int8_weights(tensors, metadata):
    tensors["blocks.0.attn.wq.weight"] = torch.zeros(128, 128, dtype=torch.int8)


@pytest.mark.parametrize("change, message", [
    (cut_scales, "scales_and_zeros of blocks.0.ffn.down: expected [4, 128, 2], got [2, 128, 2]"),
    (other_scheme, "scales_and_zeros of blocks.0.attn.wq: expected [4, 128, 2], got [2, 128, 2]"),
    (unknown_scheme, "field 'quant': int3: unknown scheme; schemes: int8, int4-g32, int4-g64, int4-g128"),
    (nan_scale, "scales_and_zeros of blocks.1.attn.wk: holds values that are not finite"),
    (missing, "weight of blocks.1.attn.wo is missing"),
    (int8_weights, "weight of blocks.0.attn.wq: expected [128, 64], got [128, 128]"),
])
def test_a_bad_quantized_checkpoint_is_refused_in_one_line(tmp_path, trained, capsys, change, message):
    bad = tampered(tmp_path, trained, change)
    with pytest.raises(ValueError) as err:
        train.load_checkpoint(bad)
    assert str(err.value) == f"checkpoint {bad}: {message}"
    status = quality.main(["--models", str(tmp_path), "--presets", "bad", "--json", str(tmp_path / "q.json")])
    stderr = capsys.readouterr().err
    assert status == 2 and stderr == f"python -m reference.experiments.quality: error: checkpoint {bad}: {message}\n"


# -- refusals of schemes, layers and degrees
def test_layers_and_degrees_that_cannot_take_the_scheme_are_refused_naming_the_figure():
    model = SharedDecoder(get_preset("tiny-4x3"), dtype=torch.float32, seed=0)  # d_model 64, d_ff 128
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"^--quant int4-g128: blocks\.0\.attn\.wq has K = 64 input features, not a "
                                         r"multiple of the group size 128$"):
        quant.quantize(model, "int4-g128")
    assert quant.scheme_of(model) is None and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"^--quant int4-g128: d_model 64 \(the input features of wq, wk, wv, wo, "
                                         r"gate and up\) is not a multiple of the group size 128 \(tiny-4x3\)$"):
        quant.check_quantizable(model.config, "int4-g128")
    quant.quantize(model, "int8")
    with pytest.raises(ValueError, match=r"model tiny-4x3 is already quantized \(int8\)"):
        quant.quantize(model, "int4-g32")
    with pytest.raises(ValueError, match=r"^--quant int4-g128 with --tp 4: d_ff 11008 / 4 = 2752 is not a multiple of "
                                         r"the group size 128$"):
        quant.check_tp(get_preset("llama2-7b-8x4"), "int4-g128", 4)
    quant.check_tp(get_preset("llama2-7b-8x4"), "int4-g128", 2)
    quant.check_tp(get_preset("llama2-7b-8x4"), "int8", 4)
    sharded = quant.quantize(SharedDecoder(get_preset("tiny-4x3").replace(d_model=128, n_kv_heads=4), device="meta"),
                             "int4-g64")
    with pytest.raises(ValueError, match=r"--quant int4-g64 with --tp 4: d_model 128 / 4 = 32 is not a multiple"):
        shard(sharded, TensorParallel(4, 0, "none"))


@pytest.mark.parametrize("argv, message", [
    (["--quant", "int5"], "--quant int5: unknown scheme; schemes: int8, int4-g32, int4-g64, int4-g128"),
    (["--quant", "int4-g128"], "--quant int4-g128: d_model 64 (the input features of wq, wk, wv, wo, gate and up) "
                               "is not a multiple of the group size 128 (tiny-4x3)"),
    (["--quant", "int4-g128", "--preset", "llama2-7b-8x4", "--tp", "4"],
     "--quant int4-g128 with --tp 4: d_ff 11008 / 4 = 2752 is not a multiple of the group size 128"),
    (["--quant", "int8", "--quant-kernel", "fast"], "argument --quant-kernel: invalid choice: 'fast'"),
])
def test_demo_refuses_bad_quantization_in_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        demo.main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert exit_.value.code == 2 and "Traceback" not in err and len(errors) == 1 and message in errors[0], err


@pytest.mark.parametrize("scheme", ["int8", "int4-g32"])
def test_demo_decodes_quantized_weights_and_agrees(capsys, scheme):
    assert demo.main(["--quant", scheme, "--tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert f"quantized {scheme}, 28 layers, kernels: aten._weight_int" in out and "outputs agree: True" in out
    assert "weights: block projections 589,824 B -> " in out and "float32" in out
