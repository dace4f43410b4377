"""What the method's stages read: healthy slices for the MAE, difference images (negative and
pseudo-abnormal) for the classifier, and the MAE's reconstructions of every slice, stored on disk.

Every random choice is derived from (seed, purpose, epoch, position) (``engine.samples``), so a sample
gets the same flip and pseudo-abnormal boxes whichever process, worker or resumed run handles it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...core.runtime import seeded_generator as generator
from ...data.slice_cache import RowReader, SliceRows
from ...engine.samples import Item
from .classifier import classifier_input
from .config import ClassifierConfig, PseudoAbnormalConfig
from .pseudo_abnormal import make_pseudo_abnormal


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
