"""Train the code-* family (or any preset) from scratch on the Python standard library's source, with the
weighted exit loss of SharedDecoder.forward (w_g = g / sum(1..G)), seeded and resumable.

    python -m reference.experiments.train --family   # all seven code-* models, about half an hour on 2 cores
    python -m reference.experiments.train --preset code-4x3 --steps 100 --out-dir /tmp/run

A run is a pure function of its settings: the batch of step s is drawn from a generator seeded by (seed, s), so
a run resumed from its state file sees the same data with the same weights and optimizer moments as one that
never stopped, and its loss curve is the same. The state (fp32 weights and AdamW moments, safetensors) lives in
--state-dir, outside git; rerunning the same command resumes it, or skips a model whose checkpoint is done.

Outputs per preset, in --out-dir:
  PRESET.safetensors   the trained weights in float16 (no pickle); the metadata holds the preset, its config,
                       the step, the run's settings, the corpus sha256 and the tokenizer (load_checkpoint)
  PRESET.log.jsonl     one line per step (loss, lr, wall time) and per evaluation (held-out loss)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from reference.config import PRESETS, ModelConfig, get_preset
from reference.experiments.corpus import EOS_ID, Corpus, Tokenizer, load_corpus
from reference.model import SharedDecoder
from reference.quant import check_quantizable, check_state, parse_scheme, quantize, scheme_of
from sim.command import check_outputs, integer, number, random_seed, run_command
from sim.files import atomic_write

FAMILY = ("code-2", "code-4", "code-12", "code-2x6", "code-4x3", "code-2x8", "code-4x4")
ROOT = Path(__file__).resolve().parents[2]  # the checkout: data/trained, out/
CHECKPOINT_FORMAT = "speed-sim-checkpoint-v1"
QUANTIZED_FORMAT = "speed-sim-quantized-checkpoint-v1"  # reference.quant: packed weights, scales, the scheme
STATE_FORMAT = "speed-sim-train-state-v1"


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 800
    batch: int = 4  # sequences per step: at this budget more updates beat larger batches
    context: int = 256  # tokens per sequence
    lr: float = 1.5e-3  # peak; linear warm-up, cosine decay to lr * min_lr_ratio
    embed_lr_scale: float = 20.0  # see make_optimizer
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1  # on matrices and the embedding, not on norm gains
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 200  # steps between held-out evaluations (and one at the end)
    eval_windows: int = 32  # held-out windows of `context` tokens, evenly spaced

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "context", "eval_every", "eval_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.lr <= 0 or self.embed_lr_scale <= 0:
            raise ValueError(f"--lr and --embed-lr-scale must be > 0, got {self.lr} and {self.embed_lr_scale}")


@dataclass
class TokenizedCorpus:
    tokenizer: Tokenizer
    train: np.ndarray  # uint16 ids of the train files, each ended by EOS
    heldout: np.ndarray
    corpus: Corpus


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tokenize_corpus(corpus: Corpus, vocab_size: int, cache_dir: Path | None = None) -> TokenizedCorpus:
    """Train the tokenizer on the train split and encode both splits; cached in `cache_dir` by corpus hash."""
    cache = None if cache_dir is None else Path(cache_dir) / f"tokens-{corpus.sha256[:16]}-v{vocab_size}.npz"
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as saved:
            tokenizer = Tokenizer([tuple(m) for m in saved["merges"].tolist()])
            return TokenizedCorpus(tokenizer, saved["train"], saved["heldout"], corpus)
    train_files = [corpus.train[name] for name in sorted(corpus.train)]
    tokenizer = Tokenizer.train(train_files, vocab_size)
    data = TokenizedCorpus(tokenizer, tokenizer.encode_files(train_files),
                           tokenizer.encode_files([corpus.heldout[name] for name in sorted(corpus.heldout)]), corpus)
    if cache is not None:
        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:  # a file object: np.savez would add ".npz" to a temporary name
                np.savez(f, merges=np.array(tokenizer.merges, dtype=np.int32).reshape(-1, 2), train=data.train,
                         heldout=data.heldout)

        atomic_write(cache, write)
    return data


def batch_at(tokens: np.ndarray, step: int, settings: TrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets [batch, context] of one step: random windows, a function of (seed, step) alone."""
    rng = np.random.default_rng([settings.seed, step])
    starts = rng.integers(0, len(tokens) - settings.context - 1, size=settings.batch)
    windows = torch.from_numpy(np.stack([tokens[s : s + settings.context + 1] for s in starts]).astype(np.int64))
    return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: np.ndarray, windows: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`windows` evenly spaced held-out windows: the same every time, for every model."""
    if len(tokens) < context + 1:
        raise ValueError(f"held-out split has {len(tokens)} tokens, fewer than a window of {context + 1}")
    starts = np.linspace(0, len(tokens) - context - 1, windows).astype(np.int64)
    data = torch.from_numpy(np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int64))
    return data[:, :-1], data[:, 1:]


def lr_at(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - 1 - settings.warmup_steps)
    floor = settings.lr * settings.min_lr_ratio
    return floor + (settings.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def init_for_training(model: SharedDecoder, seed: int) -> None:
    """GPT-2 style: N(0, 0.02), the residual outputs (wo, down) scaled by 1/sqrt(2 * depth), norm gains 1.
    The model's own init (embedding std 1, tied head) suits random-weight decoding tests, but starts training
    with logits of std sqrt(d_model) and a loss far above ln(vocab)."""
    generator = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * model.config.depth)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                std = residual_std if name.endswith(("wo.weight", "down.weight")) else 0.02
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def make_optimizer(model: SharedDecoder, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW; each group's `lr_scale` multiplies the scheduled rate. The embedding is also the output head, and
    its rows of rarer tokens get few gradients: at the base rate a model stays near unigram statistics for
    hundreds of steps. Sweeps, held-out nats per token: code-2 after 800 steps at lr 3e-3 (batch 4), embedding
    x1 4.78, x5 4.36, x20 4.06, x50 4.26; code-12 after 200 of 800 steps, x20 at lr 3e-3 5.58 (its loss first
    rose above uniform), at 1.5e-3 4.99, at 1e-3 5.00."""
    params = dict(model.named_parameters())
    norms = [p for n, p in params.items() if n.endswith("norm.weight")]
    matrices = [p for n, p in params.items() if n != "embed.weight" and not n.endswith("norm.weight")]
    return torch.optim.AdamW([
        {"params": [params["embed.weight"]], "weight_decay": settings.weight_decay,
         "lr_scale": settings.embed_lr_scale},
        {"params": matrices, "weight_decay": settings.weight_decay, "lr_scale": 1.0},
        {"params": norms, "weight_decay": 0.0, "lr_scale": 1.0},
    ], lr=settings.lr, betas=(0.9, 0.95))


@torch.no_grad()
def heldout_loss(model: SharedDecoder, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 8) -> float:
    """Mean cross-entropy of the final exit over the held-out windows."""
    total = 0.0
    for start in range(0, len(inputs), chunk):
        logits, _ = model(inputs[start : start + chunk])
        total += F.cross_entropy(logits[-1].flatten(0, 1), targets[start : start + chunk].flatten(),
                                 reduction="sum").item()
    return total / targets.numel()


# -- checkpoints: safetensors only, so loading never unpickles anything
def _write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    # atomic, with a temporary name of its own: an interrupted save leaves the previous file, two runs never collide
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                             metadata=metadata))


def save_checkpoint(model: SharedDecoder, path: Path, meta: dict, dtype: torch.dtype = torch.float16) -> None:
    """The weights in `dtype` and `meta` as JSON strings. float16 rounds 8x finer than bfloat16, and trained weights
    lie far inside its range. A quantized model (reference.quant) is written as it holds its state: packed weights
    as integers, the scales, zero points and every other tensor in its activation dtype (the scheme's scales are
    in that dtype, so `dtype` does not apply), the scheme and that dtype in the metadata."""
    scheme = scheme_of(model)
    meta = {k: v for k, v in meta.items() if k not in ("format", "quant", "dtype")}  # (a loaded checkpoint's)
    if scheme is None:
        tensors = {name: p.detach().to(dtype) for name, p in model.state_dict().items()}
        _write_safetensors(tensors, {"format": CHECKPOINT_FORMAT, **{k: json.dumps(v) for k, v in meta.items()}},
                           path)
        return
    quantized = {**meta, "quant": scheme.name, "dtype": str(model.embed.weight.dtype).removeprefix("torch.")}
    _write_safetensors({name: t.detach() for name, t in model.state_dict().items()},
                       {"format": QUANTIZED_FORMAT, **{k: json.dumps(v) for k, v in quantized.items()}}, path)


def read_metadata(path: Path) -> dict:
    """The JSON-decoded metadata of a checkpoint or state file."""
    try:
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        return {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}
    except (OSError, ValueError, SafetensorError) as err:
        raise ValueError(f"checkpoint {path}: not a readable safetensors file with JSON metadata ({err})") from None


def _quantized_model(path: Path, cfg: ModelConfig, meta: dict, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                     kernel: str) -> SharedDecoder:
    """The model of a quantized checkpoint in `dtype`: its tensors checked against the model its config, scheme
    and dtype give (one line naming the file and the tensor otherwise), then loaded (floats cast to `dtype`)."""
    try:
        scheme = parse_scheme(meta.get("quant"), flag="field 'quant':")
        saved_dtype = getattr(torch, str(meta.get("dtype")), None)
        if not isinstance(saved_dtype, torch.dtype) or not saved_dtype.is_floating_point:
            raise ValueError(f"field 'dtype': {meta.get('dtype')!r} is not a floating-point dtype")
        check_quantizable(cfg, scheme)
        check_state(quantize(SharedDecoder(cfg, device="meta", dtype=saved_dtype, seed=None), scheme), tensors)
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}") from None
    model = quantize(SharedDecoder(cfg, dtype=dtype, seed=None), scheme, kernel)
    model.load_state_dict({k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()})
    return model


def load_checkpoint(path: Path, dtype: torch.dtype = torch.float32,
                    kernel: str = "packed") -> tuple[SharedDecoder, Tokenizer, dict]:
    """(model in `dtype`, its tokenizer, the metadata) of a checkpoint written by save_checkpoint; a quantized one
    comes back quantized (its scales cast to `dtype`; `kernel` as in reference.quant.quantize)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    meta = read_metadata(path)
    if meta.get("format") not in (CHECKPOINT_FORMAT, QUANTIZED_FORMAT):
        raise ValueError(f"checkpoint {path}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r} or "
                         f"{QUANTIZED_FORMAT!r}")
    try:
        cfg = ModelConfig(**meta["config"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path}: its config does not fit this ModelConfig ({err})") from None
    if not isinstance(meta.get("tokenizer"), str):
        raise ValueError(f"checkpoint {path}: its metadata holds no tokenizer")
    tensors = load_file(path)
    if meta["format"] == QUANTIZED_FORMAT:
        model = _quantized_model(path, cfg, meta, tensors, dtype, kernel)
    else:
        model = SharedDecoder(cfg, dtype=dtype, seed=None)
        model.load_state_dict({name: t.to(dtype) for name, t in tensors.items()})
    model.eval()
    return model, Tokenizer.from_json(meta["tokenizer"]), meta


def _save_state(path: Path, model: SharedDecoder, optimizer: torch.optim.AdamW, step: int, run: dict,
                wall_s: float) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors.update({f"opt.{index}.{k}": v for k, v in state.items()})
    meta = {"format": STATE_FORMAT, "step": json.dumps(step), "run": json.dumps(run), "wall_s": json.dumps(wall_s)}
    _write_safetensors(tensors, meta, path)


def _load_state(path: Path, model: SharedDecoder, optimizer: torch.optim.AdamW) -> tuple[int, float]:
    """Restore weights and AdamW moments in place; (step, wall seconds so far)."""
    meta = read_metadata(path)
    tensors = load_file(path)
    model.load_state_dict({k.removeprefix("model."): t for k, t in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": opt_state, "param_groups": optimizer.state_dict()["param_groups"]})
    return meta["step"], meta["wall_s"]


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[float]  # train loss of every step run by this call
    heldout_loss: float
    wall_s: float  # training time of the whole run, resumed parts included
    skipped: bool = False


def _check_fits(cfg: ModelConfig, data: TokenizedCorpus, settings: TrainSettings) -> None:
    """Refuse a model whose vocabulary does not match the tokenizer or whose context is shorter than the run's."""
    if cfg.vocab_size != data.tokenizer.vocab_size or cfg.eos_id != data.tokenizer.eos_id:
        raise ValueError(f"model {cfg.name!r}: vocab_size {cfg.vocab_size} and eos_id {cfg.eos_id} must match the "
                         f"tokenizer's {data.tokenizer.vocab_size} and {data.tokenizer.eos_id}")
    if settings.context > cfg.max_seq_len:
        raise ValueError(f"--context {settings.context} exceeds {cfg.name}'s max_seq_len {cfg.max_seq_len}")


def _finished(checkpoint: Path, settings: TrainSettings, same_run: dict) -> dict | None:
    """The metadata of `checkpoint` if it holds this run, trained to the last step; else None."""
    if not checkpoint.exists():
        return None
    meta = read_metadata(checkpoint)
    if meta.get("step") == settings.steps and {k: meta.get("run", {}).get(k) for k in same_run} == same_run:
        return meta
    return None


def _start(cfg: ModelConfig, settings: TrainSettings, state_path: Path, same_run: dict,
           restart: bool) -> tuple[SharedDecoder, torch.optim.AdamW, int, float]:
    """(model, optimizer, step, wall seconds so far): freshly initialised, or resumed from this run's state."""
    model = SharedDecoder(cfg, seed=None)
    init_for_training(model, settings.seed)
    optimizer = make_optimizer(model, settings)
    if restart or not state_path.exists():
        return model, optimizer, 0, 0.0
    saved_run = read_metadata(state_path)["run"]
    changed = [k for k in same_run if saved_run.get(k) != same_run[k]]
    if changed:
        raise ValueError(f"resume state {state_path} belongs to a different run ({', '.join(changed)} changed); "
                         "pass --restart to start over")
    step, wall_s = _load_state(state_path, model, optimizer)
    return model, optimizer, step, wall_s


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep the log lines of the steps before `step`, drop the rest (or every line when starting at 0)."""
    # the state holds only those steps: a crash after the last save logged steps that rerun now
    kept = []
    if step > 0 and log_path.exists():
        kept = [line for line in log_path.read_text().splitlines() if _logged_step(line) < step]
    atomic_write(log_path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def _logged_step(line: str) -> float:
    """The step of a log line; a line a kill cut short counts as after every step (dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _optimizer_step(model: SharedDecoder, optimizer: torch.optim.AdamW, tokens: np.ndarray, step: int,
                    settings: TrainSettings) -> tuple[torch.Tensor, float]:
    """One AdamW step on the batch of `step` at its scheduled rate, gradients clipped; (train loss, lr)."""
    model.train()
    lr = lr_at(step, settings)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    inputs, targets = batch_at(tokens, step, settings)
    _, loss = model(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    optimizer.step()
    return loss, lr


def train(cfg: ModelConfig, data: TokenizedCorpus, settings: TrainSettings, out_dir: Path, state_dir: Path,
          restart: bool = False, stop_after: int | None = None, progress: bool = True) -> TrainResult:
    """Train `cfg` from scratch, or resume its state in `state_dir`; write the checkpoint and log to `out_dir`.
    `stop_after` ends the call after that many steps (the state is saved: an interrupted run)."""
    _check_fits(cfg, data, settings)
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    checkpoint, log_path = out_dir / f"{cfg.name}.safetensors", out_dir / f"{cfg.name}.log.jsonl"
    state_path = state_dir / f"{cfg.name}.state.safetensors"
    tokenizer_json = data.tokenizer.to_json()
    run = {"config": dataclasses.asdict(cfg), "settings": dataclasses.asdict(settings),
           "corpus_sha256": data.corpus.sha256, "tokenizer_sha256": sha256_text(tokenizer_json),
           "threads": torch.get_num_threads()}
    same_run = {k: v for k, v in run.items() if k != "threads"}  # thread count may differ on resume
    done = None if restart else _finished(checkpoint, settings, same_run)
    if done is not None:
        return TrainResult(checkpoint, [], done["heldout_loss"], done["train_wall_s"], skipped=True)

    model, optimizer, step, wall_s = _start(cfg, settings, state_path, same_run, restart)
    out_dir.mkdir(parents=True, exist_ok=True)
    _truncate_log(log_path, step)
    eval_inputs, eval_targets = eval_windows(data.heldout, settings.eval_windows, settings.context)
    last = settings.steps if stop_after is None else min(settings.steps, step + stop_after)
    losses, held = [], float("nan")
    save_every = max(1, settings.steps // 8)
    with log_path.open("a") as log, tqdm(total=settings.steps, initial=step, desc=cfg.name, unit="step",
                                         disable=not progress, dynamic_ncols=True) as bar:
        while step < last:
            t0 = time.perf_counter()
            loss, lr = _optimizer_step(model, optimizer, data.train, step, settings)
            wall_s += time.perf_counter() - t0
            losses.append(loss.item())
            record = {"step": step, "loss": round(losses[-1], 5), "lr": round(lr, 7), "wall_s": round(wall_s, 2)}
            step += 1
            if step % settings.eval_every == 0 or step == settings.steps:
                model.eval()
                held = heldout_loss(model, eval_inputs, eval_targets)
                record["heldout_loss"] = round(held, 5)
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update()
            if step % save_every == 0 or step == last:
                _save_state(state_path, model, optimizer, step, run, wall_s)

    if step == settings.steps:
        meta = {"preset": cfg.name, "config": dataclasses.asdict(cfg), "step": step, "run": run,
                "heldout_loss": held, "train_wall_s": round(wall_s, 1), "tokenizer": tokenizer_json,
                "corpus": {k: v for k, v in data.corpus.describe().items() if k != "root"}}
        save_checkpoint(model, checkpoint, meta)
    return TrainResult(checkpoint, losses, held, wall_s)


def _parser() -> argparse.ArgumentParser:
    """The command line: which presets, the TrainSettings, where data goes."""
    parser = argparse.ArgumentParser(prog="python -m reference.experiments.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainSettings()
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", nargs="+", metavar="NAME",
                       help="model presets to train, one after another; a vocabulary of >= 257 ids with eos_id 256 "
                       "is needed (the code-* presets); all presets: " + ", ".join(PRESETS))
    which.add_argument("--family", action="store_true", help="train the whole family: " + ", ".join(FAMILY))
    parser.add_argument("--steps", type=integer(1), default=defaults.steps,
                        help=f"optimizer steps (default {defaults.steps})")
    parser.add_argument("--batch", type=integer(1), default=defaults.batch,
                        help=f"sequences per step (default {defaults.batch})")
    parser.add_argument("--context", type=integer(1), default=defaults.context,
                        help=f"tokens per training sequence and held-out window (default {defaults.context})")
    parser.add_argument("--lr", type=number(0), default=defaults.lr,
                        help=f"peak AdamW learning rate after a linear warm-up, decayed by a cosine to a tenth "
                        f"(default {defaults.lr})")
    parser.add_argument("--embed-lr-scale", type=number(0), default=defaults.embed_lr_scale,
                        help="learning rate multiplier of the tied embedding/output head (default "
                        f"{defaults.embed_lr_scale}; see make_optimizer)")
    parser.add_argument("--warmup-steps", type=integer(0), default=defaults.warmup_steps,
                        help=f"warm-up steps (default {defaults.warmup_steps})")
    parser.add_argument("--weight-decay", type=number(0), default=defaults.weight_decay,
                        help=f"AdamW weight decay of matrices and the embedding (default {defaults.weight_decay})")
    parser.add_argument("--seed", type=random_seed(), default=defaults.seed,
                        help=f"seed of the initial weights and of the data order (default {defaults.seed})")
    parser.add_argument("--eval-every", type=integer(1), default=defaults.eval_every,
                        help=f"steps between held-out evaluations, logged (default {defaults.eval_every})")
    parser.add_argument("--eval-windows", type=integer(1), default=defaults.eval_windows,
                        help=f"held-out windows per evaluation (default {defaults.eval_windows})")
    parser.add_argument("--corpus", type=Path, metavar="DIR",
                        help="directory whose top-level *.py files are the corpus (default: this Python's stdlib, "
                        "sysconfig.get_paths()['stdlib'])")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "data" / "trained",
                        help="where checkpoints and loss logs go (default data/trained)")
    parser.add_argument("--state-dir", type=Path, default=ROOT / "out" / "train",
                        help="where resume states and the tokenized corpus cache go, outside git (default out/train)")
    parser.add_argument("--restart", action="store_true",
                        help="ignore resume states and finished checkpoints: train from step 0")
    parser.add_argument("--threads", type=integer(1), default=min(8, os.cpu_count() or 1),
                        help="torch CPU threads (default: the cores, at most 8; fewer leaves cores to other work)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _configs(args: argparse.Namespace) -> list[ModelConfig]:
    """The presets to train, each checked to fit the byte-BPE tokenizer."""
    configs = [get_preset(name) for name in (FAMILY if args.family else args.preset)]
    for cfg in configs:
        if cfg.vocab_size <= EOS_ID or cfg.eos_id != EOS_ID:
            raise ValueError(f"preset {cfg.name}: vocab_size {cfg.vocab_size} and eos_id {cfg.eos_id} do not fit "
                             f"the byte-BPE tokenizer (needs vocab_size > {EOS_ID}, eos_id {EOS_ID}); the code-* "
                             "presets do")
    return configs


def main(argv: list[str] | None = None) -> int:
    """Train the presets the command line names, one after another; 2 on a bad setting or file."""
    parser = _parser()
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out-dir": args.out_dir, "--state-dir": args.state_dir},
                  folders=("--out-dir", "--state-dir"))
    try:
        configs = _configs(args)
        settings = TrainSettings(steps=args.steps, batch=args.batch, context=args.context, lr=args.lr,
                                 embed_lr_scale=args.embed_lr_scale, warmup_steps=args.warmup_steps,
                                 weight_decay=args.weight_decay, seed=args.seed, eval_every=args.eval_every,
                                 eval_windows=args.eval_windows)
        torch.set_num_threads(args.threads)
        corpus = load_corpus(args.corpus)
        tokenized: dict[int, TokenizedCorpus] = {}
        for cfg in configs:
            if cfg.vocab_size not in tokenized:
                tokenized[cfg.vocab_size] = tokenize_corpus(corpus, cfg.vocab_size, args.state_dir)
            result = train(cfg, tokenized[cfg.vocab_size], settings, args.out_dir, args.state_dir, args.restart,
                           progress=not args.no_progress)
            status = "up to date" if result.skipped else "trained"
            print(f"{cfg.name}: {status}, held-out loss {result.heldout_loss:.4f}, {result.wall_s / 60:.1f} min of "
                  f"training -> {result.checkpoint}")
    except (ValueError, OSError) as err:
        print(f"python -m reference.experiments.train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.experiments.train"))
