"""Which earlier ops of a stage an op must follow, from the memory every op reads and writes.

Each tensor an op touches is a range of elements of a storage (`region`); an op depends on the earlier ops whose
writes it reads (read after write) or whose reads or writes it overwrites (write after read, write after
write). Ranges, not whole storages, so two rows writing and reading different depths or positions of one KV
cache tensor stay independent. Stages need no edges between them: each ends with the host reading the
argmaxes, a full synchronization.

A storage is known by its address, which a new storage may take once the old one is freed; a tensor made
without a recorded op (`torch.tensor` on the meta device dispatches none) would then inherit the old one's
accesses. So each storage is also held by a weak reference, and what is recorded of a storage that is gone is
forgotten when a new one at its address is met (`Accesses.region`).
"""

from __future__ import annotations

import weakref

import torch

Region = tuple[int, int, int]  # (storage, first element, one past the last element)


def region(t: torch.Tensor) -> Region | None:
    """The storage elements a (possibly strided) view spans; None if it spans none."""
    if t.numel() == 0:
        return None
    lo = t.storage_offset()
    return t.untyped_storage()._cdata, lo, lo + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1


class Accesses:
    """Who read and who last wrote each element range of each storage in the current stage."""

    def __init__(self) -> None:
        self.writes: dict[int, list[tuple[int, int, int]]] = {}  # storage -> [(lo, hi, op index)]
        self.reads: dict[int, list[tuple[int, int, int]]] = {}
        self._storages: dict[int, weakref.ref] = {}  # storage address -> the storage recorded there

    def clear(self) -> None:
        self.writes.clear()
        self.reads.clear()
        self._storages.clear()

    def region(self, t: torch.Tensor) -> Region | None:
        """`region(t)`, after forgetting the accesses of a storage that was freed and whose address t's took."""
        where = region(t)
        if where is not None:
            storage = t.untyped_storage()
            known = self._storages.get(where[0])
            if known is None or known() is not storage:
                if known is not None:
                    self.writes.pop(where[0], None)
                    self.reads.pop(where[0], None)
                self._storages[where[0]] = weakref.ref(storage)
        return where

    def last_writer(self, where: Region | None) -> int | None:
        """The latest op of this stage that wrote any of `where`, or None."""
        if where is None:
            return None
        key, lo, hi = where
        return max((j for a, b, j in self.writes.get(key, ()) if a < hi and lo < b), default=None)

    def record(self, op: int, reads: list[Region], writes: list[Region], fresh: list[Region]) -> set[int]:
        """Note that op `op` reads `reads` and writes `writes` (`fresh`: newly allocated outputs, whose storage
        may reuse a freed one's address); return the earlier ops it depends on."""
        for key, _, _ in fresh:
            self.writes.pop(key, None)
            self.reads.pop(key, None)
        deps = set()
        for key, lo, hi in reads:
            deps.update(j for a, b, j in self.writes.get(key, ()) if a < hi and lo < b)
        for key, lo, hi in writes:
            for table in (self.writes, self.reads):
                deps.update(j for a, b, j in table.get(key, ()) if a < hi and lo < b)
                # accesses this write covers are ordered before it; later ops need only depend on it
                table[key] = [e for e in table.get(key, ()) if not (lo <= e[0] and e[1] <= hi)]
        for key, lo, hi in reads:
            self.reads.setdefault(key, []).append((lo, hi, op))
        for key, lo, hi in writes + fresh:
            self.writes.setdefault(key, []).append((lo, hi, op))
        deps.discard(op)
        return deps
