"""Where SPEED's predictions come from when no values exist (the meta device, what-if studies).

The decoders take an optional `predictor`: instead of reading the argmax of each exit it says what the row
predicts. `FlipOracle` draws flips from per-exit probabilities (the paper's Figure 4 profiles ship in
`data/flips/`); `FlipReplay` replays the predictions recorded from a real run. Pure Python, no torch.
"""

from __future__ import annotations

import json
import random
import reprlib
from collections.abc import Sequence
from pathlib import Path

import yaml

from reference.pipeline import Row

_HERE = Path(__file__).resolve().parent
# data/flips of the checkout; an installed wheel ships it as reference/profiles (pyproject.toml)
PROFILES_DIR = _HERE / "profiles" if (_HERE / "profiles").is_dir() else _HERE.parent / "data" / "flips"
PAPER_PROFILES = PROFILES_DIR / "paper-fig4.yaml"


class FlipOracle:
    """Predictions with chosen flip rates: at exit g >= 2 a row's prediction differs from its exit g-1
    prediction with probability rates[g - 2]; a row's first prediction is a fresh pseudo-random token. Tokens
    in `avoid` (EOS) are never predicted, so a run always reaches its full length."""

    def __init__(self, rates: Sequence[float], vocab_size: int, seed: int = 0, avoid: Sequence[int] = (),
                 source: str = "rates") -> None:
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError(f"flip rates must lie in [0, 1], got {list(rates)}")
        self.rates, self.vocab_size, self.seed = list(rates), vocab_size, seed
        self.avoid = set(avoid)
        if len(self.avoid) >= vocab_size - 1:
            raise ValueError("FlipOracle needs at least two tokens it may predict")
        self.source = source
        self._rng = random.Random(seed)

    def describe(self) -> dict:
        return {"source": self.source, "oracle": "rates", "rates": self.rates, "seed": self.seed}

    def _token(self, unlike: int | None = None) -> int:
        while True:
            token = self._rng.randrange(self.vocab_size)
            if token not in self.avoid and token != unlike:
                return token

    def __call__(self, seq: int, row: Row, exit_: int) -> int:
        if row.guess is None:
            return self._token()
        if exit_ - 2 >= len(self.rates):
            raise ValueError(f"flip profile has {len(self.rates)} rates; exit {exit_} needs at least {exit_ - 1}")
        return self._token(unlike=row.guess) if self._rng.random() < self.rates[exit_ - 2] else row.guess

    @classmethod
    def from_profile(cls, name: str, vocab_size: int, seed: int = 0, avoid: Sequence[int] = (),
                     path: Path | None = None) -> FlipOracle:
        """The oracle of a named profile in a profile file; by default the first of data/flips/*.yaml that has it
        (the paper's Figure 4, paper-fig4.yaml, first; the trained code-* models, trained.yaml)."""
        profiles = load_profiles(path)
        if name not in profiles:
            where = path if path is not None else f"{PROFILES_DIR}/*.yaml"
            raise ValueError(f"flip profile file {where}: no profile {reprlib.repr(name)}; profiles: "
                             f"{', '.join(profiles)}")
        file, rates, source = profiles[name]
        return cls(rates, vocab_size, seed, avoid, source=f"{file.name}:{name} ({source})")


def load_profiles(path: Path | None = None) -> dict[str, tuple[Path, list[float], str]]:
    """Every named profile: name -> (file, rates, the file's source), from `path` or data/flips/*.yaml (where two
    files name the same profile, the paper's wins)."""
    paths = [path] if path is not None else sorted(PROFILES_DIR.glob("*.yaml"), key=lambda p: p != PAPER_PROFILES)
    out: dict[str, tuple[Path, list[float], str]] = {}
    for candidate in paths:
        try:
            data = yaml.safe_load(candidate.read_text())
        except OSError as err:
            raise ValueError(f"flip profile file {candidate}: {err.strerror}") from None
        profiles = data.get("profiles", {}) if isinstance(data, dict) else {}
        for name, rates in profiles.items():
            out.setdefault(name, (candidate, rates, data.get("source", "")))
    return out


def default_profile(name: str, groups: int) -> str:
    """The flip profile a model decodes with when none is named: its own (by preset name), else the paper's
    profile of a model with the same G (t5-base-4x3's for G = 3, t5-base-2x6's for G = 6), else a ValueError
    that asks for rates."""
    profiles = load_profiles()
    if name in profiles:
        return name
    for other, (file, rates, _) in profiles.items():
        if file == PAPER_PROFILES and len(rates) == groups - 1 and not other.startswith("task-"):
            return other
    example = ",".join(["0.05"] * min(groups - 1, 4)) + (",..." if groups > 5 else "")
    shown = name if len(name) <= 60 else reprlib.repr(name)
    raise ValueError(f"no flip profile for {shown} (G = {groups}) in {PROFILES_DIR}, and none of the "
                     f"paper's has G - 1 = {groups - 1} rates: give the flips as {groups - 1} rates per exit (e.g. "
                     f"{example}) or a profile name")


class FlipReplay:
    """Replays the predictions a real run made, in order (same model depth G and the same pipeline rules give
    the same rows, so the replay reproduces its flushes exactly)."""

    def __init__(self, predictions: Sequence[int], source: str) -> None:
        self.predictions, self.source = list(predictions), source
        self._next = 0

    def describe(self) -> dict:
        return {"source": self.source, "oracle": "replay", "predictions": len(self.predictions)}

    def __call__(self, seq: int, row: Row, exit_: int) -> int:
        if self._next >= len(self.predictions):
            raise ValueError(f"flip log {self.source}: exhausted after {len(self.predictions)} predictions; "
                             "was it recorded with the same model depth and length?")
        self._next += 1
        return self.predictions[self._next - 1]

    def dumps(self, groups: int) -> str:
        """The log as JSON text (`load` reads it back); write it with `sim.files.atomic_write`, so that an existing
        log is never half-overwritten (the decoder core writes no files itself)."""
        return json.dumps({"source": self.source, "groups": groups, "predictions": self.predictions})

    @classmethod
    def load(cls, path: Path, groups: int) -> FlipReplay:
        try:
            data = json.loads(Path(path).read_text())
            predictions, recorded_groups = data["predictions"], data["groups"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"flip log {path}: unreadable or missing 'predictions'/'groups' ({err})") from None
        if recorded_groups != groups:
            raise ValueError(f"flip log {path}: field 'groups' is {recorded_groups}, the model has G = {groups}")
        return cls(predictions, source=str(path))
