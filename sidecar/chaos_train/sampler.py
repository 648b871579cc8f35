"""The elastic sampler: a seeded global order per epoch and one global cursor.

Pure Python (no torch) so the local job's summary can recompute exactly which samples
each committed step consumed. Every step takes the next ``global_batch`` ids of the epoch's
order; each member takes a contiguous slice by rank. The global batch does not depend on
the number of members, so churn never loses or repeats a sample within an epoch. When the
data set is not a multiple of the global batch, each epoch drops its last
``dataset_size % global_batch`` ids (a different tail every epoch, as the order is reshuffled),
like ``drop_last``: every step has the full global batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class ElasticSampler:
    dataset_size: int
    global_batch: int
    seed: int
    epoch: int = 0
    cursor: int = 0

    def __post_init__(self) -> None:
        if self.global_batch <= 0 or self.dataset_size < self.global_batch:
            raise ValueError("global_batch must be positive and at most dataset_size")
        self._cache: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            ids = list(range(self.dataset_size))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(ids)
            self._cache = (epoch, ids)
        return self._cache[1]

    def batch(self) -> list[int]:
        """The global batch of the current step."""
        return self.order(self.epoch)[self.cursor : self.cursor + self.global_batch]

    @staticmethod
    def split(ids: list[int], rank: int, world: int) -> list[int]:
        """Contiguous slice for ``rank``; slice sizes differ by at most one."""
        base, extra = divmod(len(ids), world)
        start = rank * base + min(rank, extra)
        return ids[start : start + base + (1 if rank < extra else 0)]

    def advance(self) -> None:
        self.cursor += self.global_batch
        if self.cursor + self.global_batch > self.dataset_size:
            self.epoch += 1
            self.cursor = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset_size // self.global_batch

    def state(self) -> tuple[int, int]:
        return self.epoch, self.cursor

    def load(self, epoch: int, cursor: int) -> None:
        self.epoch, self.cursor = epoch, cursor
