"""Reading and preparing a cohort's volumes ahead, in DataLoader worker processes, while the main
process scores the ones already prepared."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import SimpleITK as sitk
from torch.utils.data import DataLoader, Dataset

from ..config import ModelConfig
from ..data.preprocessing import PreparedVolume
from ..errors import MAEAnomalyError
from ..training.distributed import shield_worker
from .outputs import prepare_for_scoring


@dataclass
class Volume:
    """One input of the cohort: its place in the list, paths, and output name."""

    index: int
    image: str
    mask: str | None
    name: str


@dataclass
class Prepared:
    """A volume made ready for the networks, or the one-line reason it could not be."""

    volume: Volume
    prepared: PreparedVolume | None
    error: str | None
    seconds: float  # spent reading and preparing it (in whichever process did)
    brain_mask: sitk.Image | None = None  # extracted by --brain-mask auto, written with the outputs


def one_line(exc: BaseException, path: str) -> str:
    """A volume's error as one line naming its file; an unexpected error says that it was unexpected."""
    if isinstance(exc, MAEAnomalyError):
        text = str(exc) if exc.path else f"{path}: {exc}"
    else:
        text = f"{path}: unexpected {exc.__class__.__name__}: {exc}"
    return " ".join(text.split())[:500]


class PreparedVolumes(Dataset):
    """Item ``i``: volume ``i`` read and prepared by ``prepare_for_scoring`` (errors are returned, not
    raised, so that one bad volume does not end the run); volumes without a mask get ``brain_mask``."""

    def __init__(self, volumes: Sequence[Volume], config: ModelConfig, brain_mask: str = "auto") -> None:
        self.volumes = list(volumes)
        self.config = config
        self.brain_mask = brain_mask

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> Prepared:
        volume = self.volumes[i]
        start = time.perf_counter()
        mask = None
        try:
            prepared, foreground = prepare_for_scoring(volume.image, volume.mask or self.brain_mask, self.config)
            mask = foreground.extracted_mask
            error = None
        except Exception as exc:  # any failure of one volume is that volume's row, not the cohort's end
            prepared, error = None, one_line(exc, volume.image)
        return Prepared(volume, prepared, error, time.perf_counter() - start, mask)


def _as_is(item: Prepared) -> Prepared:
    return item


def prefetched(volumes: Sequence[Volume], config: ModelConfig, workers: int, brain_mask: str = "auto"
               ) -> Iterator[Prepared]:
    """The volumes prepared, in order: by ``workers`` processes running ahead (each at most two
    volumes ahead), or one by one in this process when ``workers`` is 0."""
    dataset = PreparedVolumes(volumes, config, brain_mask)
    if workers == 0 or len(dataset) == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    # batch_size=None: one volume per item, passed through as it is (its tensors via shared memory).
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=min(workers, len(dataset)),
                        collate_fn=_as_is, worker_init_fn=shield_worker, prefetch_factor=2)
    yield from loader
