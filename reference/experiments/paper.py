"""The paper's experiments on the trained code-* family (reference.experiments.train): held-out loss and next-token
accuracy at every exit, flip rates between consecutive group exits (Figure 4), CPU latency of sequential and SPEED
greedy decoding against accuracy (Figure 3), and a check that SPEED's output is sequential decoding's on every prompt.

    python -m reference.experiments.paper                    # every checkpoint in data/trained, a few minutes

Writes (each atomically, so an interrupted run leaves the previous file):
  data/trained/metrics.json     every figure per model, the settings and the machine
  data/flips/trained.yaml       flip profiles keyed by preset, in the format of data/flips/paper-fig4.yaml
  docs/accuracy-vs-latency.png  Figure 3 on this CPU

Flip rate after exit g: over every position of the held-out windows (teacher forced), the share whose exit-(g+1)
argmax differs from its exit-g argmax, Figure 4's definition. Latency: batch 1, one prompt at a time, a fixed
number of new tokens (EOS does not stop decoding), float32, one warm-up run per decoder, then every prompt
`--repeats` times, decoders interleaved; per prompt the median over its repeats (a shared machine only ever
slows a run down), averaged over the prompts and divided by the new tokens, is ms per token. With --compile the
decoders run compiled (decode.*(compile=True)): the warm-up compiles every variant, and the compile time is reported
apart (latency.compile_s), never timed; the outputs then default to metrics-compiled.json and
accuracy-vs-latency-compiled.png, so that the eager figures stay.
Exactness: every prompt decoded by both decoders in float64 (and the float32 runs compared too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from reference import decode
from reference.experiments.corpus import Corpus, load_corpus
from reference.experiments.speedup import heldout_prompts
from reference.experiments.train import FAMILY, ROOT, eval_windows, load_checkpoint
from reference.model import SharedDecoder
from sim.command import check_outputs, integer, run_command
from sim.files import atomic_write

NO_EOS = -1  # an id no token has: decoding runs to its full length


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@torch.no_grad()
def evaluate(model: SharedDecoder, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 8) -> dict:
    """Held-out loss and accuracy of every exit, and flip rates between consecutive exits, teacher forced."""
    groups = model.config.n_groups
    loss_sum, correct, flips = torch.zeros(groups, dtype=torch.float64), torch.zeros(groups), torch.zeros(groups - 1)
    for start in range(0, len(inputs), chunk):
        logits, _ = model(inputs[start : start + chunk])  # [G, B, T, V]
        y = targets[start : start + chunk]
        predictions = logits.argmax(-1)
        for g in range(groups):
            loss_sum[g] += F.cross_entropy(logits[g].flatten(0, 1), y.flatten(), reduction="sum").double()
        correct += (predictions == y).flatten(1).sum(1)
        flips += (predictions[1:] != predictions[:-1]).flatten(1).sum(1)
    n = targets.numel()
    loss, accuracy = (loss_sum / n).tolist(), (correct / n).tolist()
    return {"loss": loss[-1], "accuracy": accuracy[-1], "loss_by_exit": loss, "accuracy_by_exit": accuracy,
            "flip_rates": (flips / n).tolist(), "positions": n}


def _timed(fn: Callable[..., decode.DecodeResult], model: SharedDecoder, prompt: list[int],
           tokens: int, compile: bool = False) -> tuple[float, decode.DecodeResult]:
    """(seconds, result) of one decode; the seconds exclude any compilation the call did (`result.compile_s`)."""
    t0 = time.perf_counter()
    result = fn(model, [prompt], tokens, eos_id=NO_EOS, compile=compile)
    return time.perf_counter() - t0 - result.compile_s, result


def latency(model: SharedDecoder, prompts: list[list[int]], tokens: int, repeats: int, compile: bool = False) -> dict:
    """ms per sequence (per prompt the median over repeats, averaged over prompts) and per token of each decoder
    (SPEED only for shared models), whether their float32 outputs agree, SPEED's pipeline statistics. `compile`:
    decode compiled (reference.compiled); the warm-up compiles every variant, and the compile time is reported apart
    (`compile_s`), never timed."""
    decoders = {"sequential": decode.sequential}
    if model.config.n_groups > 1:
        decoders["speed"] = decode.speed
    compile_s = 0.0
    for fn in decoders.values():  # warm-up: allocator, dispatch caches, compiled variants
        compile_s += _timed(fn, model, prompts[0], tokens, compile)[1].compile_s
    seconds = {name: [[] for _ in prompts] for name in decoders}
    outputs: dict[str, list[list[int]]] = {name: [] for name in decoders}
    stats = None
    for repeat in range(repeats):
        for i, prompt in enumerate(prompts):
            for name, fn in decoders.items():
                elapsed, result = _timed(fn, model, prompt, tokens, compile)
                compile_s += result.compile_s
                seconds[name][i].append(elapsed)
                if repeat == 0:
                    outputs[name].append(result.tokens[0])
                    if name == "speed":
                        stats = result.stats if stats is None else stats.merge(result.stats)
    report: dict = {"mode": "compiled" if compile else "eager"}
    if compile:
        report["compile_s"] = compile_s
    for name, runs in seconds.items():
        by_prompt_ms = [1e3 * statistics.median(r) for r in runs]
        ms = statistics.fmean(by_prompt_ms)
        report[name] = {"ms_per_sequence": ms, "ms_per_token": ms / tokens,
                        "ms_per_sequence_by_prompt": [round(t, 2) for t in by_prompt_ms],
                        "ms_per_sequence_spread": [1e3 * min(map(min, runs)), 1e3 * max(map(max, runs))]}
    if stats is not None:
        report["speed"].update(stages=stats.stages, rows_injected=stats.injected, rows_flushed=stats.flushed,
                               decode_flip_rates=stats.flip_rates[1:])  # exit 1 has nothing to flip from
    if "speed" in report:
        report["speedup"] = report["sequential"]["ms_per_token"] / report["speed"]["ms_per_token"]
        report["float32_outputs_identical"] = sum(a == b for a, b in zip(outputs["sequential"], outputs["speed"]))
    return report


def exact_in_float64(model: SharedDecoder, prompts: list[list[int]], tokens: int) -> dict:
    """Decode every prompt with both decoders in float64: SPEED must reproduce sequential decoding exactly."""
    model64 = SharedDecoder(model.config, dtype=torch.float64, seed=None)
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    same = 0
    for prompt in prompts:
        expected = decode.sequential(model64, [prompt], tokens, eos_id=NO_EOS).tokens
        same += decode.speed(model64, [prompt], tokens, eos_id=NO_EOS).tokens == expected
    return {"sequences": len(prompts), "identical": same}


def flips_yaml(models: dict[str, dict], settings: dict) -> str:
    lines = [
        "# Share of predictions that change after each group exit, measured on the trained code-* models",
        "# (reference.experiments.train, data/trained/). rates[k] is the share of exit-(k+2) predictions "
        "(argmax) that differ",
        "# from the same token's exit-(k+1) prediction, as in paper-fig4.yaml; teacher forced over",
        f"# {settings['eval_windows']} held-out windows of {settings['context']} tokens of the stdlib corpus.",
        "# Regenerate: python -m reference.experiments.paper",
        'source: "trained code-* models, data/trained/metrics.json (python -m reference.experiments.paper)"',
        "profiles:",
    ]
    lines += [f"  {name}: [{', '.join(f'{r:.4f}' for r in m['heldout']['flip_rates'])}]"
              for name, m in models.items() if m["groups"] > 1]
    return "\n".join(lines) + "\n"


def draw_accuracy_latency(ax: object, models: dict[str, dict], machine: str) -> None:
    """Figure 3 on matplotlib axes `ax`: held-out accuracy against ms per token; shared models both sequential
    and with SPEED, an arrow from one to the other."""
    for name, m in models.items():
        acc, lat = 100 * m["heldout"]["accuracy"], m["latency"]
        label = name.removeprefix("code-")
        seq = lat["sequential"]["ms_per_token"]
        if m["groups"] == 1:
            ax.scatter(seq, acc, marker="o", color="black", zorder=3)
            ax.annotate(label, (seq, acc), textcoords="offset points", xytext=(6, -3))
            continue
        spd = lat["speed"]["ms_per_token"]
        ax.scatter(seq, acc, marker="s", facecolors="none", edgecolors="tab:blue", zorder=3)
        ax.scatter(spd, acc, marker="^", color="tab:red", zorder=3)
        ax.annotate("", (spd, acc), (seq, acc), arrowprops={"arrowstyle": "->", "color": "grey", "lw": 0.8})
        ax.annotate(label, (spd, acc), textcoords="offset points", xytext=(-4, 6), ha="right")
    handles = [ax.scatter([], [], marker="o", color="black", label="unshared, sequential"),
               ax.scatter([], [], marker="s", facecolors="none", edgecolors="tab:blue", label="shared, sequential"),
               ax.scatter([], [], marker="^", color="tab:red", label="shared, SPEED")]
    ax.legend(handles=handles, loc="lower right")
    ax.set_xlabel(f"greedy decoding latency (ms per token; {machine})")
    ax.set_ylabel("held-out next-token accuracy (%)")
    ax.set_title("Accuracy vs latency of the trained code-* family (cf. SPEED Figure 3)")
    ax.grid(alpha=0.3)


def save_plot(models: dict[str, dict], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw_accuracy_latency(ax, models, machine)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def summary(m: dict) -> str:
    """One line of a model's figures."""
    lat, exact = m["latency"], m["exact_float64"]
    line = (f"held-out loss {m['heldout']['loss']:.3f}, accuracy {100 * m['heldout']['accuracy']:.1f}%, sequential "
            f"{lat['sequential']['ms_per_token']:.2f} ms/token")
    if "speed" in lat:
        flips = ", ".join(f"{100 * r:.1f}" for r in m["heldout"]["flip_rates"])
        line += (f", SPEED {lat['speed']['ms_per_token']:.2f} ms/token (x{lat['speedup']:.2f}), flips after each "
                 f"group [{flips}]%")
    if "compile_s" in lat:
        line += f", compiled (compile {lat['compile_s']:.1f} s, not timed)"
    return line + f", SPEED = sequential on {exact['identical']}/{exact['sequences']} prompts (float64)"


def checkpoints(models_dir: Path, presets: list[str] | None) -> list[Path]:
    if presets:
        return [models_dir / f"{name}.safetensors" for name in presets]
    found = {p.name.removesuffix(".safetensors"): p for p in models_dir.glob("*.safetensors")}
    if not found:
        raise ValueError(f"no checkpoints (*.safetensors) in {models_dir}; train them: "
                         "python -m reference.experiments.train --family")
    order = [name for name in FAMILY if name in found] + sorted(set(found) - set(FAMILY))
    return [found[name] for name in order]


# the measurement settings, recorded in metrics.json and the flip profiles
SETTINGS = ("eval_windows", "context", "prompts", "prompt_len", "tokens", "repeats", "threads")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """--models and --presets: which trained checkpoints a command measures."""
    parser.add_argument("--models", type=Path, default=ROOT / "data" / "trained",
                        help="directory of the checkpoints (default data/trained)")
    parser.add_argument("--presets", nargs="+", metavar="NAME",
                        help="checkpoints to measure, by preset name (default: every *.safetensors in --models)")


def add_heldout_arguments(parser: argparse.ArgumentParser, prompts_help: str) -> None:
    """The held-out text a command measures on: the corpus, its windows and prompts, the tokens decoded."""
    parser.add_argument("--corpus", type=Path, metavar="DIR",
                        help="corpus directory, as in reference.experiments.train (default: this Python's stdlib)")
    parser.add_argument("--eval-windows", type=integer(1), default=128,
                        help="held-out windows for loss, accuracy and flips (default 128, as the paper's figures)")
    parser.add_argument("--context", type=integer(1), default=256, help="tokens per held-out window (default 256)")
    parser.add_argument("--prompts", type=integer(1), default=8, help=f"{prompts_help} (default 8)")
    parser.add_argument("--prompt-len", type=integer(1), default=64, help="tokens per prompt (default 64)")
    parser.add_argument("--tokens", type=integer(1), default=64, help="new tokens per prompt (default 64)")


def _parser() -> argparse.ArgumentParser:
    """The command line: which checkpoints, where the outputs go, the measurement settings."""
    parser = argparse.ArgumentParser(prog="python -m reference.experiments.paper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--metrics", type=Path,
                        help="where the figures go (default data/trained/metrics.json; with --compile "
                        "data/trained/metrics-compiled.json)")
    parser.add_argument("--flips-out", type=Path, default=ROOT / "data" / "flips" / "trained.yaml",
                        help="where the flip profiles go (default data/flips/trained.yaml)")
    parser.add_argument("--plot", type=Path,
                        help="where Figure 3 goes (default docs/accuracy-vs-latency.png; with --compile "
                        "docs/accuracy-vs-latency-compiled.png)")
    add_heldout_arguments(parser, "prompts for latency and exactness, evenly spaced in the held-out files")
    parser.add_argument("--repeats", type=integer(1), default=5,
                        help="timed runs of every prompt per decoder, after one warm-up run (default 5)")
    parser.add_argument("--threads", type=integer(1), default=1,
                        help="torch CPU threads (default 1: batch-1 decoding is latency bound, and one thread keeps "
                        "timings steadier on a shared machine)")
    parser.add_argument("--compile", action="store_true",
                        help="decode compiled in the latency part (torch.compile, reference.compiled): every "
                        "variant is compiled in the warm-up, its compile time reported apart, never timed")
    return parser


def _measure(path: Path, corpus: Corpus, heldout_files: list[bytes],
             args: argparse.Namespace) -> tuple[str, dict, bool]:
    """(preset, its figures, whether it was trained on `corpus`) of one checkpoint; prints its summary."""
    model, tokenizer, meta = load_checkpoint(path)
    cfg = model.config
    corpus_matches = meta["run"]["corpus_sha256"] == corpus.sha256
    if not corpus_matches:
        print(f"warning: {cfg.name} was trained on corpus sha256 {meta['run']['corpus_sha256'][:12]}, this "
              f"Python's stdlib gives {corpus.sha256[:12]}: held-out figures are not comparable",
              file=sys.stderr)
    heldout = tokenizer.encode_files(heldout_files)
    inputs, targets = eval_windows(heldout, args.eval_windows, args.context)
    prompts = heldout_prompts(heldout, args.prompts, args.prompt_len)
    t0 = time.perf_counter()
    train_settings = meta["run"]["settings"]
    figures = {
        "nd": cfg.n_unique_layers, "groups": cfg.n_groups, "depth": cfg.depth,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train": {"steps": meta["step"], "wall_s": meta["train_wall_s"],
                  "tokens": meta["step"] * train_settings["batch"] * train_settings["context"]},
        "heldout": evaluate(model, inputs, targets),
        "latency": latency(model, prompts, args.tokens, args.repeats, args.compile),
        "exact_float64": exact_in_float64(model, prompts, args.tokens),
    }
    print(f"{cfg.name:>9}: {summary(figures)} [{time.perf_counter() - t0:.0f} s]")
    return cfg.name, figures, corpus_matches


def _write_outputs(args: argparse.Namespace, models: dict[str, dict], settings: dict, machine: str, corpus: Corpus,
                   corpus_matches: bool) -> None:
    """metrics.json, the flip profiles and Figure 3, each written atomically."""
    command = "python -m reference.experiments.paper" + (" --compile" if args.compile else "")
    metrics = {"command": command, "settings": {**settings, "compile": args.compile},
               "machine": {"cpu": machine, "cores": os.cpu_count(), "python": platform.python_version(),
                           "torch": torch.__version__},
               "corpus": {**{k: v for k, v in corpus.describe().items() if k != "root"},
                          "matches_checkpoints": corpus_matches},
               "models": models}
    atomic_write(args.metrics, lambda tmp: tmp.write_text(json.dumps(metrics, indent=1) + "\n"))
    atomic_write(args.flips_out, lambda tmp: tmp.write_text(flips_yaml(models, settings)))
    save_plot(models, args.plot, machine + (", compiled" if args.compile else ""))
    print(f"wrote {args.metrics}, {args.flips_out}, {args.plot}")


def main(argv: list[str] | None = None) -> int:
    """Measure every checkpoint and write the outputs; 1 if SPEED differs from sequential decoding, 2 on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    settings = {k: getattr(args, k) for k in SETTINGS}  # each >= 1: the parser's integer(1)
    suffix = "-compiled" if args.compile else ""
    args.metrics = args.metrics or ROOT / "data" / "trained" / f"metrics{suffix}.json"
    args.plot = args.plot or ROOT / "docs" / f"accuracy-vs-latency{suffix}.png"
    check_outputs(parser, {"--metrics": args.metrics, "--flips-out": args.flips_out, "--plot": args.plot})
    try:
        torch.set_num_threads(args.threads)
        paths = checkpoints(args.models, args.presets)
        corpus = load_corpus(args.corpus)
        heldout_files = [corpus.heldout[name] for name in sorted(corpus.heldout)]
        machine = f"{cpu_name()}, {args.threads} thread{'s' if args.threads > 1 else ''}"
        models, corpus_matches = {}, True
        for path in paths:
            name, figures, matches = _measure(path, corpus, heldout_files, args)
            models[name] = figures
            corpus_matches = corpus_matches and matches
        _write_outputs(args, models, settings, machine, corpus, corpus_matches)
        inexact = [name for name, m in models.items() if m["exact_float64"]["identical"] != args.prompts]
        if inexact:
            print(f"error: SPEED output differs from sequential decoding for {', '.join(inexact)}", file=sys.stderr)
            return 1
    except (ValueError, OSError) as err:
        print(f"python -m reference.experiments.paper: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m reference.experiments.paper"))
