"""The trace provider: what the simulator asks of the reference decoder, answered as a command.

    python -m reference.capture.provider OP < requests.json > answers.json

`sim/` never imports `reference/`: it consumes trace files and knows nothing of who makes them. Where it needs a
trace it has not got (`sim.run --model`, other lengths, a sweep's points), a model described (a sweep's journal
keys, flips checked before any work), or microbenchmarks run (`sim.fitting.calibrate`), it runs this command
(`sim.provider`; another tracer plugs in by naming its own command in SPEED_SIM_TRACER). Why a command and not an
import: the trace file is already the one contract between the two cores, and a process boundary keeps it the
only thing that crosses (sim never loads torch into its process; the sweep's driver and Ray workers stay
torch-free); it works alike in a checkout without install, an editable install, a wheel and a Ray task; and
errors cross as the project's command-line contract has them. The cost, one interpreter start per call (about
0.1 s; torch is imported only when a trace must actually be made), is why every op takes a batch of requests.

Protocol: OP is one of the ops below; stdin is a JSON list of requests (mappings), stdout gets a JSON list of
answers, one per request and in their order, exit status 0. A call that cannot be served (a request malformed or
with a key this provider does not know, a model or a run it refuses, torch missing where a trace must be made)
writes ONE line `error: <what and where>` to stderr as its last output and exits with status 2. Anything else on
stderr (progress bars, notes) is for the user's terminal. Ctrl-C: one line, exit 130 (`sim.command.run_command`).

- `describe`: {"model": a preset, a Hugging Face config.json, a model config YAML file or a mapping of
  ModelConfig's fields; "share": "NdxG" or null; "flag": the flag or field the model was given by, named in
  errors (default "--model"); optional "decoder", "flips", "flip_rate": the run's flips resolved as a SPEED
  trace is made with them; "tp": a tensor-parallel degree the model must shard evenly over (default 1); "quant": a
  weight-only scheme (sim.opkinds.QUANT_SCHEMES) or null} -> {"name", "config": ModelConfig's fields, "digest": a
  short hash of them, "quant": the scheme its traces are made with (`resolve_quant`: the request's, or the one a
  config.json's quantization_config selects) or null, "flips" (with "decoder"): a profile name, rates per exit, or
  null}. A request that cannot be described is answered {"error": one line, "field": "model", "tp", "quant" or
  "flips"} instead: the caller (a sweep) says which of its points it was.
- `trace`: {the model keys above; "decoder": "speed" or "sequential"; "tokens"; "batch" (default 1); "dtype"
  (default bfloat16); "flips": as `python -m reference.capture.tracing --flips` takes them (null: the model's
  profile); "flip_rate": one rate for every exit instead; "compiled": the run compiled decoding makes; "tp": the
  tensor-parallel degree (default 1: rank 0's shard of the model sharded over that many ranks, its collectives
  traced, on meta under a fake process group: no processes start); "quant": the block projections quantized with
  this weight-only scheme first (null: float weights, unless a config.json's quantization_config selects one)} ->
  {"path": the trace file, "name": the model's name, "capture_s": the time spent tracing it, 0 when it was cached}.
  Traced on the meta device and cached under `sim.defaults.trace_cache()` by config digest, degree, weight scheme
  and code revision; a cached trace is found
  without importing torch. Every request is checked before the first is traced (a degree the model cannot be
  sharded over: `--tp 3: n_heads 32 is not divisible by 3 (llama2-7b)`).
- `microbench`: {"device": "cpu" or "cuda"; "quick"; "threads": torch intra-op threads or null} -> the results of
  `reference.capture.microbench.run_microbenchmarks` (seconds per call per resource).
- `defaults`: {"out_dir"} -> {"paths"}: the default traces (`python -m reference.capture.tracing --defaults`)
  written into `out_dir`.

Requests are checked against a schema per op (`SCHEMAS`): a key it does not list is refused, so a caller that
asks for something this provider cannot do (quantization, before it is added here) gets a clear line rather than
a trace of something else.

Weight-only quantization ("quant"): a request's scheme, or the one a Hugging Face config.json's
`quantization_config` selects by itself (GPTQ / AWQ bits, group size and symmetry: `reference.hfconfig.
quantization_fields`, `reference.quant.scheme_from_fields`); one that no scheme represents is refused naming the
field, as are a --quant that contradicts it, a group size that does not divide a layer's K and a tensor-parallel
shard that would split a group (`resolve_quant`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reference.capture.estimate import check_request
from reference.capture.revision import code_revision
from reference.config import ModelConfig, get_preset, parse_share, shared_variant
from reference.hfconfig import HfConfigError, from_hf_dict, quantization_fields
from sim.command import run_command
from sim.defaults import DEFAULT_PROMPT_LEN, DEFAULT_SOURCE_LEN, MAX_BATCH, MAX_TOKENS, trace_cache
from sim.inputs import InputError, brief, cut, load_json_file, load_yaml_file
from sim.opkinds import QUANT_SCHEMES

PROG = "python -m reference.capture.provider"
MAX_THREADS = 1 << 16  # torch intra-op threads: beyond any machine's cores
RATES = re.compile(r"[0-9.eE+-]+(,[0-9.eE+-]+)*")  # flips given as rates per exit (else a profile name)
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")  # what a cache file's name keeps of a model's name
NAME_CHARS = 48  # of a model's name in a cache file's name (the config's digest tells models apart)
DECODERS = ("speed", "sequential")
DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Key:
    """One key of a request: what its value must be, and its default (REQUIRED: none)."""

    check: Callable[[Any], bool]
    expected: str
    default: Any = None


REQUIRED = object()


def _is_int(low: int, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _is_rate(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1


MODEL_KEYS = {
    "model": Key(lambda v: _is_str(v) or isinstance(v, dict), "a preset, a config file or a mapping of "
                 "ModelConfig's fields", REQUIRED),
    "share": Key(_optional(_is_str), "'NdxG' or null"),
    "flag": Key(_is_str, "the flag or field that gave the model", "--model"),
}
FLIPS_KEYS = {
    "flips": Key(_optional(_is_str), "a flip profile, rates per exit '0.09,0.04', or null"),
    "flip_rate": Key(_optional(_is_rate), "a flip rate in [0, 1), or null"),
}
TP_KEY = Key(_is_int(1), "an integer >= 1 (the tensor-parallel degree)", 1)
QUANT_KEY = Key(_optional(lambda v: v in QUANT_SCHEMES), f"one of {', '.join(QUANT_SCHEMES)}, or null")
# op -> request key -> Key
SCHEMAS: dict[str, dict[str, Key]] = {
    "describe": {**MODEL_KEYS, "decoder": Key(_optional(lambda v: v in DECODERS), "speed, sequential or null"),
                 **FLIPS_KEYS, "tp": TP_KEY, "quant": QUANT_KEY},
    "trace": {**MODEL_KEYS, "decoder": Key(lambda v: v in DECODERS, "speed or sequential", REQUIRED),
              "tokens": Key(_is_int(1, MAX_TOKENS), f"an integer in 1..{MAX_TOKENS}", REQUIRED),
              "batch": Key(_is_int(1, MAX_BATCH), f"an integer in 1..{MAX_BATCH}", 1),
              "dtype": Key(lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}", "bfloat16"), **FLIPS_KEYS,
              "compiled": Key(lambda v: isinstance(v, bool), "true or false", False), "tp": TP_KEY,
              "quant": QUANT_KEY},
    "microbench": {"device": Key(lambda v: v in ("cpu", "cuda"), "cpu or cuda", REQUIRED),
                   "quick": Key(lambda v: isinstance(v, bool), "true or false", False),
                   "threads": Key(_optional(_is_int(1, MAX_THREADS)), f"an integer in 1..{MAX_THREADS}, or null")},
    "defaults": {"out_dir": Key(_is_str, "a folder", REQUIRED)},
}


def checked_requests(op: str, raw: Any) -> list[dict[str, Any]]:
    """The requests of `op` (as read from JSON: a list of mappings), every key checked and the defaults filled
    in; a ValueError names the request and the key."""
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ValueError(f"{op}: expected a JSON list of requests (mappings), got {brief(raw)}")
    schema = SCHEMAS[op]
    requests = []
    for i, request in enumerate(raw):
        unknown = [k for k in request if k not in schema]
        if unknown:
            raise ValueError(f"{op} request {i}: unknown key {brief(unknown[0])}: this provider cannot serve it "
                             f"(keys: {', '.join(schema)})")
        for key, spec in schema.items():
            if key not in request:
                if spec.default is REQUIRED:
                    raise ValueError(f"{op} request {i}: key {key!r} is required ({spec.expected})")
            elif not spec.check(request[key]):
                raise ValueError(f"{op} request {i}: {key!r} must be {spec.expected}, got {brief(request[key])}")
        requests.append({key: request.get(key, spec.default) for key, spec in schema.items()})
    return requests


def model_config(model: str | dict[str, Any], share: str | None = None, flag: str = "--model") -> ModelConfig:
    """The model `--model` names: a preset, a Hugging Face config.json of the Llama family (Llama, Mistral,
    Qwen2), a model config YAML file (ModelConfig's fields, read within `sim.inputs`' bounds) or those fields as
    a mapping (what `describe` answers); `share` "NdxG": its cyclically shared variant. A ValueError names the flag
    (`flag`: "--model", or a spec's field), the file and the field of what cannot be used."""
    try:
        cfg = _model_fields(model) if isinstance(model, dict) else _model_named(model)
    except ValueError as err:
        shown = model.get("name", "(fields)") if isinstance(model, dict) else model
        raise ValueError(f"{flag} {cut(shown, 200)}: {err}") from None
    if share is None:
        return cfg
    try:
        return shared_variant(cfg, *parse_share(share))
    except ValueError as err:
        raise ValueError(f"--share {cut(share)}: {err}") from None


def _model_named(model: str) -> ModelConfig:
    """A preset, or the model of a config.json or a model config YAML file (each read as `sim.inputs` reads a
    file: a regular file, within bounds)."""
    path = Path(model)
    if path.is_dir():
        hint = " (its config.json?)" if (path / "config.json").is_file() else ""
        raise ValueError(f"a folder, not a preset or a config file{hint}")
    if path.suffix == ".json":
        return _model_json(path)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return _model_yaml(path)
    try:
        return get_preset(model)
    except ValueError as err:
        raise ValueError(f"{err}; or give a config.json or a model config YAML file") from None


def _model_json(path: Path) -> ModelConfig:
    """A Hugging Face config.json (reference.hfconfig), read as strict JSON (`sim.inputs.load_json`)."""
    try:
        raw = load_json_file(path)
    except FileNotFoundError:
        raise HfConfigError(path, None, "no such file") from None
    except InputError as err:
        raise HfConfigError(path, err.field, err.located) from None
    return from_hf_dict(raw, path)


def _model_yaml(path: Path) -> ModelConfig:
    """A model config YAML file: a mapping of ModelConfig's fields."""
    try:
        raw = load_yaml_file(path)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except InputError as err:
        raise ValueError(f"model config {err}") from None
    if not isinstance(raw, dict):
        raise ValueError("a model config is a mapping of ModelConfig's fields")
    return _model_fields(raw)


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def _model_fields(raw: dict[str, Any]) -> ModelConfig:
    """A ModelConfig of its fields (each checked by ModelConfig; one not among them refused)."""
    unknown = next((k for k in raw if k not in MODEL_FIELDS), None)
    if unknown is not None:
        raise ValueError(f"model config, field '{cut(unknown)}': unknown; ModelConfig's fields: "
                         f"{', '.join(MODEL_FIELDS)}")
    missing = next((k for k in MODEL_FIELDS if k not in raw and ModelConfig.__dataclass_fields__[k].default is
                    dataclasses.MISSING), None)
    if missing is not None:
        raise ValueError(f"model config, field '{missing}': missing")
    try:
        return ModelConfig(**raw)
    except ValueError as err:  # ConfigError: names the field
        raise ValueError(f"model config: {err}") from None


def config_digest(cfg: ModelConfig) -> str:
    """A short hash of every field of a model config: traces of different configs never share a cache entry."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:8]


def resolve_flips(cfg: ModelConfig, decoder: str, flips: str | None, flip_rate: float | None) -> str | None:
    """The flips a SPEED trace is made with, checked against the model: a profile (named, or the model's own when
    None), rates per exit, or `flip_rate` for every exit; sequential decoding reads no early exit (its trace is
    the same whatever the flips: None)."""
    if flips is not None and flip_rate is not None:
        raise ValueError("give flips or flip_rate, not both")
    if decoder == "sequential" or cfg.n_groups == 1:
        return None
    if flip_rate is not None:
        return ",".join([repr(float(flip_rate))] * (cfg.n_groups - 1))
    if flips is None or not RATES.fullmatch(flips):  # a profile: the model's own, or a named one
        from reference.flips import FlipOracle, default_profile

        try:
            name = flips or default_profile(cfg.name, cfg.n_groups)
            rates = FlipOracle.from_profile(name, cfg.vocab_size).rates
        except ValueError as err:
            raise ValueError(f"{err} (give flips as rates per exit, or flip_rate)") from None
    else:
        rates = flips.split(",")
    if len(rates) != cfg.n_groups - 1:
        given = brief(flips) if flips else f"the profile of {cut(cfg.name)}"
        raise ValueError(f"{given} gives {len(rates)} rates, but {cut(cfg.name)} has G = {cfg.n_groups}: it needs "
                         f"{cfg.n_groups - 1} (or use flip_rate)")
    return flips


def describe(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per request the model it names, or the error that says why it cannot be used (see the module doc)."""
    answers = []
    for r in requests:
        try:
            cfg = model_config(r["model"], r["share"], r["flag"])
        except ValueError as err:
            answers.append({"error": str(err), "field": "model"})
            continue
        try:
            check_tp(cfg, r["tp"])
        except ValueError as err:
            answers.append({"error": str(err), "field": "tp"})
            continue
        try:
            quant = resolve_quant(cfg, r["model"], r["quant"], r["tp"])
        except ValueError as err:
            answers.append({"error": str(err), "field": "quant"})
            continue
        answer: dict[str, Any] = {"name": cfg.name, "config": dataclasses.asdict(cfg), "digest": config_digest(cfg),
                                  "quant": quant}
        if r["decoder"] is not None:
            try:
                answer["flips"] = resolve_flips(cfg, r["decoder"], r["flips"], r["flip_rate"])
            except ValueError as err:
                answer = {"error": str(err), "field": "flips"}
        answers.append(answer)
    return answers


def check_tp(cfg: ModelConfig, tp: int) -> None:
    """A ValueError naming --tp and the figure where `cfg` cannot be sharded over `tp` ranks
    (`reference.parallel.check_degree`; imported only for tp > 1, so that one rank needs no torch)."""
    if tp > 1:
        from reference.parallel import check_degree

        check_degree(cfg, tp)


def resolve_quant(cfg: ModelConfig, model: str | dict[str, Any], quant: str | None, tp: int) -> str | None:
    """The weight-only scheme the traces of `cfg` (given as `model`) are made with: `quant`, or the one a
    config.json's quantization_config selects (the two must agree), checked against the model and the degree `tp`;
    None for float weights. A ValueError names the flag or the config field (reference.quant, imported only where
    there is a scheme to check: float models need no torch)."""
    fields = quantization_fields(model) if isinstance(model, str) and Path(model).suffix == ".json" else None
    if fields is None and quant is None:
        return None
    from reference import quant as schemes

    if fields is not None:
        try:
            selected = schemes.scheme_from_fields(*fields).name
        except schemes.SchemeFieldError as err:
            raise HfConfigError(model, f"quantization_config.{err.field}", str(err).partition(": ")[2]) from None
        if quant not in (None, selected):
            raise ValueError(f"--quant {quant}: {model} is a {selected} checkpoint (its quantization_config); give "
                             f"--quant {selected} or none")
        quant = selected
    schemes.check_quantizable(cfg, quant)
    schemes.check_tp(cfg, quant, tp)
    return quant


def cached_trace(cfg: ModelConfig, r: dict[str, Any], flips: str | None, quant: str | None = None) -> Path:
    """Where the trace of request `r` is cached: named by the config's digest, the tensor-parallel degree, the
    weight scheme `quant` and the code revision, so that a trace made before the reference decoder changed is not
    reused. The parts of the name that come from inputs are bounded: the model's name cut to NAME_CHARS of
    SAFE_NAME's characters (no "/" nor ".." leaves the cache), the flips hashed (a thousand rates would be a name
    too long for any file system)."""
    name = SAFE_NAME.sub("-", cfg.name)[:NAME_CHARS].strip(".-") or "model"
    flip_part = "profile" if flips is None else "f" + hashlib.sha256(flips.encode()).hexdigest()[:12]
    file = (f"{name}.{config_digest(cfg)}.{r['decoder']}{'.compiled' if r['compiled'] else ''}.{r['dtype']}."
            f"{'' if quant is None else quant + '.'}tp{r['tp']}.b{r['batch']}.t{r['tokens']}.{flip_part}."
            f"{code_revision()}.jsonl.gz")
    return trace_cache() / file


def trace(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per request its trace file (made on the meta device unless cached) and the model's name. Every model is
    resolved before the first trace is made: a bad request is refused before any work."""
    runs = []
    for r in requests:
        cfg = model_config(r["model"], r["share"], r["flag"])
        try:
            flips = resolve_flips(cfg, r["decoder"], r["flips"], r["flip_rate"])
        except ValueError as err:
            raise ValueError(f"--flips {brief(r['flips'])}: {err}") from None
        check_request(cfg, r["decoder"], r["tokens"], r["batch"], DEFAULT_PROMPT_LEN, DEFAULT_SOURCE_LEN)
        quant = resolve_quant(cfg, r["model"], r["quant"], r["tp"])
        path = cached_trace(cfg, r, flips, quant)
        if not path.exists():  # a cached trace's degree was checked when it was made
            check_tp(cfg, r["tp"])
        runs.append((r, cfg, flips, quant, path))
    return [{"path": str(path), "name": cfg.name,
             "capture_s": 0.0 if path.exists() else _make_trace(cfg, r, flips, quant, path)}
            for r, cfg, flips, quant, path in runs]


def _make_trace(cfg: ModelConfig, r: dict[str, Any], flips: str | None, quant: str | None, path: Path) -> float:
    """Trace request `r` with the reference decoder on the meta device into `path`; the seconds it took (building
    the model, capturing, writing; not importing torch)."""
    try:
        import torch

        from reference.capture import tracing
    except ImportError as err:
        raise ValueError(f"tracing {cfg.name!r} on demand needs torch and the reference decoder ({err}); "
                         "replay a recorded trace with --trace FILE instead") from None
    shard = f", rank 0 of TP {r['tp']}" if r["tp"] > 1 else ""
    weights = f", {quant} weights" if quant else ""
    print(f"tracing {cfg.name} ({r['decoder']}{', compiled' if r['compiled'] else ''}, {r['tokens']} tokens, "
          f"batch {r['batch']}{shard}{weights}) on the meta device ...", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        tracing.capture_trace(cfg, r["decoder"], r["tokens"], path, dtype=getattr(torch, r["dtype"]),
                              batch=r["batch"], prompt_len=DEFAULT_PROMPT_LEN, source_len=DEFAULT_SOURCE_LEN,
                              flips=flips, compiled=r["compiled"], progress=True, tp=r["tp"], quant=quant,
                              command=f"python -m sim.run --model {cfg.name} (on demand)")
    except ValueError as err:  # a bad --flips, or a length the model cannot hold
        raise ValueError(f"tracing {cut(cfg.name)} (--tokens {r['tokens']}, --batch {r['batch']}, --flips "
                         f"{brief(flips or 'default')}): {err}") from None
    return time.perf_counter() - t0


def microbench(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per request the microbenchmarks run on its device."""
    try:
        import torch

        from reference.capture.microbench import run_microbenchmarks
    except ImportError as err:
        raise ValueError(f"running the microbenchmarks needs torch ({err}); give --microbench FILE") from None
    if any(r["device"] == "cuda" for r in requests) and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: torch {torch.__version__} sees no CUDA device here; run on the GPU's "
                         "machine, or give --microbench FILE measured there")
    answers = []
    for r in requests:
        if r["threads"] is not None:
            torch.set_num_threads(r["threads"])
        answers.append(run_microbenchmarks(r["device"], quick=r["quick"]))
    return answers


def defaults(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per request the default traces, written into its folder."""
    try:
        from reference.capture import tracing
    except ImportError as err:
        raise ValueError(f"writing the default traces needs torch and the reference decoder ({err})") from None
    return [{"paths": [str(p) for p in tracing.write_defaults(Path(r["out_dir"]), progress=True)]} for r in requests]


OPS: dict[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]] = {
    "describe": describe, "trace": trace, "microbench": microbench, "defaults": defaults}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=OPS, help="what to do with the requests read from stdin (a JSON list)")
    args = parser.parse_args(argv)
    try:
        try:
            raw = json.loads(sys.stdin.read())
        except ValueError as err:
            raise ValueError(f"{args.op}: the requests on stdin are not JSON ({err})") from None
        answers = OPS[args.op](checked_requests(args.op, raw))
    except ValueError as err:  # the protocol's error: one line, the last on stderr, exit status 2
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, PROG))
