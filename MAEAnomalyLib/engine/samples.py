"""What the training loop reads: batch plans, per-sample datasets, and on-disk MAE reconstructions.

Every random choice is derived from (seed, purpose, epoch, position in the epoch) instead of a running
generator. A sample therefore gets the same flip and pseudo-abnormal boxes whichever process, worker
or resumed run handles it, which is what makes data-parallel runs equal single-process ones and
resumed runs equal uninterrupted ones.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..core.config import ClassifierConfig, PseudoAbnormalConfig
from ..core.runtime import seeded_generator as generator
from ..data.slice_cache import RowReader, SliceRows
from ..methods.mae_classifier.classifier import classifier_input
from ..methods.mae_classifier.pseudo_abnormal import make_pseudo_abnormal

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


class MAESamples(Dataset):
    """Training slices, each flipped left-right with probability 1/2 when ``hflip``."""

    def __init__(self, rows: SliceRows, seed: int, purpose: str, hflip: bool) -> None:
        self.rows, self.seed, self.purpose, self.hflip = rows, seed, purpose, hflip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: Item) -> torch.Tensor:
        epoch, position, index = item
        image = self.rows.read(index)
        if self.hflip and bool(torch.rand(1, generator=generator(self.seed, self.purpose, epoch, position)) < 0.5):
            image = image.flip(-1)
        return image


class ClassifierSamples(Dataset):
    """Pairs (|recon − original|, |pseudo-abnormal recon − original|): a negative and a positive input,
    both made exactly as scoring makes the classifier's input. Training samples may be flipped left-right
    (slice, reconstruction and mask together)."""

    def __init__(self, rows: SliceRows, recons: ReconStore, cfg: PseudoAbnormalConfig, classifier: ClassifierConfig,
                 seed: int, purpose: str, hflip: bool) -> None:
        self.rows, self.recons, self.cfg, self.classifier = rows, recons, cfg, classifier
        self.seed, self.purpose, self.hflip = seed, purpose, hflip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position, index = item
        original, recon = self.rows.read(index), self.recons.read(index)
        foreground = self.rows.read_foreground(index)
        gen = generator(self.seed, self.purpose, epoch, position)
        if self.hflip and bool(torch.rand(1, generator=gen) < 0.5):
            original, recon, foreground = original.flip(-1), recon.flip(-1), foreground.flip(-1)
        pseudo, _ = make_pseudo_abnormal(recon[None], self.cfg, gen, foreground[None])
        return (classifier_input((recon - original).abs(), foreground, self.classifier),
                classifier_input((pseudo[0] - original).abs(), foreground, self.classifier))


class ReconStore:
    """MAE reconstructions of a list of slices, in one ``.npy`` part file per rank.

    Rank r reconstructs the contiguous chunks ``chunks(r)``; chunk c always uses the generator
    (seed, name, c), so the contents do not depend on how many ranks wrote them.
    """

    def __init__(self, directory: Path, name: str, n: int, chunk: int, world: int) -> None:
        self.directory, self.name, self.n, self.chunk, self.world = directory, name, n, chunk, world
        self.n_chunks = math.ceil(n / chunk)
        self.reader = RowReader()
        bounds = [min(n, (r * self.n_chunks // world) * chunk) for r in range(world + 1)]
        self.starts = np.array(bounds[:-1])

    def chunks(self, rank: int) -> list[int]:
        return list(range(rank * self.n_chunks // self.world, (rank + 1) * self.n_chunks // self.world))

    def part(self, rank: int) -> Path:
        return self.directory / f"{self.name}.part{rank}of{self.world}.npy"

    def write(self, rank: int, parts: Iterator[np.ndarray], shape: tuple[int, ...]) -> None:
        """Streams this rank's chunks into its part file (written under a temporary name, then renamed)."""
        chunks = self.chunks(rank)
        rows = min(self.n, chunks[-1] * self.chunk + self.chunk) - chunks[0] * self.chunk if chunks else 0
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                          "shape": (rows, *shape)}
                np.lib.format.write_array_header_1_0(fh, header)
                written = 0
                for values in parts:
                    fh.write(np.ascontiguousarray(values, dtype=np.float32).tobytes())
                    written += len(values)
            if written != rows:
                raise RuntimeError(f"reconstruction part {rank} has {written} rows, expected {rows}")
            os.replace(temp, self.part(rank))
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def read(self, index: int) -> torch.Tensor:
        rank = int(np.searchsorted(self.starts, index, side="right")) - 1
        # Ranks without chunks share a start with the next one; the last such rank holds the rows.
        return self.reader.read(str(self.part(rank)), index - int(self.starts[rank]))
