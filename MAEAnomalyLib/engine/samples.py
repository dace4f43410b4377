"""Which samples each step of the training loop reads: batch plans over epochs and ranks, and seeds.

Every random choice is derived from (seed, purpose, epoch, position in the epoch) instead of a running
generator. A sample therefore gets the same flip and pseudo-abnormal boxes whichever process, worker
or resumed run handles it, which is what makes data-parallel runs equal single-process ones and
resumed runs equal uninterrupted ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from ..core.runtime import seeded_generator as generator

Item = tuple[int, int, int]  # (epoch, position in the epoch, slice index)


def batches_per_epoch(n: int, batch: int) -> int:
    """Every sample once per epoch; the last batch may be smaller."""
    return math.ceil(n / batch)


@dataclass
class Step:
    """One global batch: its epoch, index in the epoch, this rank's rows [a, b) (possibly none) and its
    global size."""

    epoch: int
    batch: int
    a: int
    b: int
    size: int


class EpochBatches(Sampler[list[Item]]):
    """This rank's share of every global batch from (epoch, batch) up to the end of ``epochs``.

    Epoch e visits a permutation seeded by (seed, purpose, e); global batch k is its slice
    [k*B, (k+1)*B), of which rank r takes the contiguous rows ``dist.rows``.
    """

    def __init__(self, n: int, batch: int, seed: int, purpose: str, epochs: int, start: tuple[int, int],
                 rows: Callable[[int], tuple[int, int]]) -> None:
        self.n, self.batch, self.seed, self.purpose = n, batch, seed, purpose
        self.epochs, self.start, self.rows = epochs, start, rows
        self.per_epoch = batches_per_epoch(n, batch)

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=generator(self.seed, self.purpose, "order", epoch))

    def steps(self) -> Iterator[tuple[Step, list[Item]]]:
        first_epoch, first_batch = self.start
        for epoch in range(first_epoch, self.epochs):
            order = self.order(epoch).tolist()
            for k in range(first_batch if epoch == first_epoch else 0, self.per_epoch):
                chosen = order[k * self.batch:(k + 1) * self.batch]
                a, b = self.rows(len(chosen))
                # A last batch smaller than the number of ranks leaves some without a share: they run
                # the batch's first sample with zero weight, so that every rank joins the gradient sum.
                rows = range(a, b) if b > a else range(1)
                items = [(epoch, k * self.batch + j, chosen[j]) for j in rows]
                yield Step(epoch, k, a, b, len(chosen)), items

    def __iter__(self) -> Iterator[list[Item]]:
        for _, items in self.steps():
            yield items

    def __len__(self) -> int:
        first_epoch, first_batch = self.start
        return max(0, (self.epochs - first_epoch) * self.per_epoch - first_batch)


class ChunkBatches(Sampler[list[Item]]):
    """Consecutive chunks of slices in index order (for validation and reconstruction)."""

    def __init__(self, n: int, chunk: int, chunks: list[int]) -> None:
        self.n, self.chunk, self.chunks = n, chunk, chunks

    def __iter__(self) -> Iterator[list[Item]]:
        for c in self.chunks:
            yield [(0, i, i) for i in range(c * self.chunk, min(self.n, (c + 1) * self.chunk))]

    def __len__(self) -> int:
        return len(self.chunks)
