"""The training corpus and its tokenizer: the Python standard library's own source, on every machine offline.

Corpus: the top-level `*.py` modules of `sysconfig.get_paths()["stdlib"]`, in sorted order, CRLF normalised to
LF. The split is by file and by name alone (crc32 of the file name), so a module that one Python version lacks
(3.13 dropped about twenty) leaves every other file on the same side. Versions still differ in content, so the
corpus carries a sha256 over names and bytes; checkpoints and metrics record it, and a mismatch is visible.

Tokenizer: byte-level BPE trained on the train split. Ids 0-255 are bytes, 256 ends a file (EOS), 257 and up are
merges in rank order. Training and encoding work on one numpy array of ids, a whole pass per merge; ties go to
the lowest pair id, so the merges are a pure function of the corpus and the vocabulary size.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EOS_ID = 256
FIRST_MERGE_ID = 257
HELDOUT_EVERY = 10  # a file is held out when crc32(name) % HELDOUT_EVERY == 0: about a tenth of the files


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class Corpus:
    root: Path
    train: dict[str, bytes]  # file name -> source bytes
    heldout: dict[str, bytes]
    sha256: str  # over every (name, bytes) of both splits, in sorted order

    def describe(self) -> dict:
        return {"source": "Python standard library, top-level *.py", "root": str(self.root),
                "sha256": self.sha256, "train_files": len(self.train), "heldout_files": len(self.heldout),
                "train_bytes": sum(map(len, self.train.values())),
                "heldout_bytes": sum(map(len, self.heldout.values())), "heldout_names": sorted(self.heldout)}


def is_heldout(name: str) -> bool:
    return zlib.crc32(name.encode()) % HELDOUT_EVERY == 0


def load_corpus(root: Path | None = None, max_files: int | None = None) -> Corpus:
    """The corpus under `root` (default: this Python's stdlib). `max_files` keeps the first files by sorted name
    (small corpora for tests)."""
    root = stdlib_dir() if root is None else Path(root)
    if not root.is_dir():
        raise ValueError(f"corpus directory {root} does not exist")
    paths = sorted(root.glob("*.py"))[:max_files]
    if not paths:
        raise ValueError(f"corpus directory {root} has no *.py files")
    digest = hashlib.sha256()
    train, heldout = {}, {}
    for path in paths:
        data = path.read_bytes().replace(b"\r\n", b"\n")
        digest.update(path.name.encode() + b"\0" + data + b"\0")
        (heldout if is_heldout(path.name) else train)[path.name] = data
    if not train or not heldout:
        raise ValueError(f"corpus directory {root}: {len(paths)} files give an empty train or held-out split")
    return Corpus(root, train, heldout, digest.hexdigest())


def _merge(ids: np.ndarray, a: int, b: int, new: int) -> np.ndarray:
    """Every non-overlapping (a, b) in ids replaced by `new`, left to right."""
    hit = (ids[:-1] == a) & (ids[1:] == b)
    if a == b:  # in a run of a's the pairs overlap: take those at even offsets from the run's start
        is_a = ids == a
        index = np.arange(len(ids))
        run_start = np.maximum.accumulate(np.where(is_a & ~np.r_[False, is_a[:-1]], index, 0))
        hit &= (index[:-1] - run_start[:-1]) % 2 == 0
    where = np.flatnonzero(hit)
    if len(where) == 0:
        return ids
    ids = ids.copy()
    ids[where] = new
    keep = np.ones(len(ids), dtype=bool)
    keep[where + 1] = False
    return ids[keep]


def _byte_ids(files: list[bytes]) -> np.ndarray:
    """Bytes of every file, each followed by EOS, as int32 ids."""
    parts = []
    for data in files:
        parts += [np.frombuffer(data, dtype=np.uint8).astype(np.int32), np.array([EOS_ID], dtype=np.int32)]
    return np.concatenate(parts)


class Tokenizer:
    """Byte-level BPE: `merges[k]` = the pair of ids that id FIRST_MERGE_ID + k stands for."""

    def __init__(self, merges: list[tuple[int, int]]) -> None:
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.vocab_size = FIRST_MERGE_ID + len(self.merges)
        self.eos_id = EOS_ID
        self._bytes = [bytes([i]) for i in range(256)] + [b""]
        for a, b in self.merges:
            self._bytes.append(self._bytes[a] + self._bytes[b])

    @classmethod
    def train(cls, files: list[bytes], vocab_size: int) -> Tokenizer:
        """Merge the most frequent adjacent pair (never across EOS) until the vocabulary has `vocab_size` ids."""
        if vocab_size < FIRST_MERGE_ID:
            raise ValueError(f"vocab_size {vocab_size} is too small for the byte tokenizer: it needs at least "
                             f"{FIRST_MERGE_ID} (256 bytes + EOS)")
        ids, merges = _byte_ids(files), []
        for new in range(FIRST_MERGE_ID, vocab_size):
            left, right = ids[:-1].astype(np.int64), ids[1:].astype(np.int64)
            counts = np.bincount((left * vocab_size + right)[(left != EOS_ID) & (right != EOS_ID)],
                                 minlength=vocab_size * vocab_size)
            best = int(counts.argmax())  # ties: the lowest pair id
            if counts[best] < 2:
                break
            a, b = divmod(best, vocab_size)
            merges.append((a, b))
            ids = _merge(ids, a, b, new)
        return cls(merges)

    def encode_files(self, files: list[bytes]) -> np.ndarray:
        """Token ids of the files, each followed by EOS (uint16: the vocabulary fits)."""
        ids = _byte_ids(files)
        for k, (a, b) in enumerate(self.merges):
            ids = _merge(ids, a, b, FIRST_MERGE_ID + k)
        return ids.astype(np.uint16)

    def encode(self, text: str) -> list[int]:
        return self.encode_files([text.encode()])[:-1].tolist()

    def decode(self, ids: list[int]) -> str:
        return b"".join(self._bytes[i] for i in ids).decode(errors="replace")

    def to_json(self) -> str:
        return json.dumps({"kind": "byte-bpe", "eos_id": EOS_ID, "merges": self.merges}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        data = json.loads(text)
        if data.get("kind") != "byte-bpe" or data.get("eos_id") != EOS_ID:
            raise ValueError(f"not a byte-bpe tokenizer with EOS {EOS_ID}: kind {data.get('kind')!r}")
        return cls([tuple(m) for m in data["merges"]])
