"""On-disk cache of prepared slices, so that large cohorts are preprocessed once and never held in memory.

Each volume becomes ``<cache>/<key[:2]>/<key>/`` with ``slices.npy`` (all axial slices, (Z, 1, S, S)
float32, read row by row through memory maps), ``foreground.npy`` (the foreground mask at the same
resolution, uint8) and ``meta.json`` (per-slice foreground fraction and labelled flag). The key is a
SHA-256 of the image, mask and label-map bytes and of the preprocessing settings, so an edited file or
a changed setting gets a new entry instead of a stale one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.config import PreprocessConfig
from ..core.errors import MAEAnomalyError
from ..core.files import current_umask, write_failure
from .digest import content_digest
from .preprocessing import prepare

CACHE_FORMAT = 2
SLICES_NAME, FOREGROUND_NAME, META_NAME = "slices.npy", "foreground.npy", "meta.json"


def cache_key(image: str | Path, mask: str | Path | None, labels: str | Path | None, cfg: PreprocessConfig,
              min_pixels: int) -> str:
    """The entry name for one volume: its inputs' contents plus every setting that shapes the slices."""
    # ``to_dict``: a percentile volume's key is what it was before the other normalisations existed.
    settings = {"format": CACHE_FORMAT, "preprocess": cfg.to_dict(), "min_pixels": min_pixels}
    parts = [json.dumps(settings, sort_keys=True)]
    for role, path in (("image", image), ("mask", mask), ("labels", labels)):
        parts.append(f"{role}={content_digest(path) if path is not None else '-'}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def healthy_rows(foreground_fraction: np.ndarray, labelled: np.ndarray | None, min_foreground: float) -> np.ndarray:
    """Slices that may be trained on: enough foreground and no labelled voxel (so pathological volumes
    can contribute)."""
    keep = foreground_fraction >= min_foreground
    if labelled is not None:
        keep &= ~labelled
    return np.flatnonzero(keep)


@dataclass
class CacheEntry:
    """One cached volume: where its slices are and which of them may be trained on."""

    directory: Path
    foreground_fraction: np.ndarray  # (Z,)
    labelled: np.ndarray | None  # (Z,) bool

    @property
    def slices_path(self) -> Path:
        return self.directory / SLICES_NAME

    @property
    def foreground_path(self) -> Path:
        return self.directory / FOREGROUND_NAME

    def healthy_rows(self, min_foreground: float) -> np.ndarray:
        return healthy_rows(self.foreground_fraction, self.labelled, min_foreground)


class SliceCache:
    """A cache directory for one preprocessing configuration (entries of other settings may share it)."""

    def __init__(self, root: str | Path, cfg: PreprocessConfig, min_pixels: int) -> None:
        self.root, self.cfg, self.min_pixels = Path(root), cfg, min_pixels
        if self.root.exists() and not self.root.is_dir():
            raise MAEAnomalyError("cache directory is a file", self.root)

    def key(self, image: str | Path, mask: str | Path | None = None, labels: str | Path | None = None) -> str:
        return cache_key(image, mask, labels, self.cfg, self.min_pixels)

    def directory(self, key: str) -> Path:
        return self.root / key[:2] / key

    def load(self, key: str) -> CacheEntry | None:
        """The entry for ``key``, or None when it has not been written yet; a damaged entry (a file short
        or unreadable) is removed and also None, so that ``ensure`` prepares the volume again."""
        directory = self.directory(key)
        if not (directory / META_NAME).exists():
            return None
        try:
            meta = json.loads((directory / META_NAME).read_text())
            for name in (SLICES_NAME, FOREGROUND_NAME):  # a short file (a damaged disk, a killed copy)
                if np.load(directory / name, mmap_mode="r").shape != tuple(meta["shape"]):
                    raise ValueError(name)
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(directory, ignore_errors=True)  # prepared again by ``ensure``
            return None
        labelled = None if meta["labelled"] is None else np.asarray(meta["labelled"], dtype=bool)
        return CacheEntry(directory, np.asarray(meta["foreground_fraction"], dtype=np.float64), labelled)

    def ensure(self, key: str, image: str | Path, mask: str | Path | None = None,
               labels: str | Path | None = None) -> CacheEntry:
        """Loads the entry, preparing the volume and writing the entry first if needed."""
        entry = self.load(key)
        if entry is not None:
            return entry
        prepared = prepare(image, self.cfg, mask, labels, min_pixels=self.min_pixels)
        final = self.directory(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Written into a private folder and renamed as a whole: readers (and other ranks writing the
        # same entry) never see a half-written one.
        temp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        os.chmod(temp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a cache may be shared in a group
        try:
            np.save(temp / SLICES_NAME, prepared.slices.numpy().astype(np.float32, copy=False))
            np.save(temp / FOREGROUND_NAME, prepared.foreground.numpy().astype(np.uint8))
            labelled = None if prepared.labelled is None else prepared.labelled.tolist()
            meta = {"format": CACHE_FORMAT, "source": str(image), "shape": list(prepared.slices.shape),
                    "foreground_fraction": prepared.foreground_fraction.tolist(), "labelled": labelled}
            (temp / META_NAME).write_text(json.dumps(meta))
            try:
                os.rename(temp, final)
            except OSError:
                if self.load(key) is None:  # not a concurrent writer's finished entry: a real failure
                    raise
        except OSError as exc:  # a full disk or a file-size limit (numpy's short writes carry no errno)
            raise write_failure(final, exc) from None
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        entry = self.load(key)
        assert entry is not None
        return entry


def prepare_entry(job: tuple[SliceCache, tuple[Path, Path | None, Path | None]]) -> str:
    """Makes sure one volume (image, mask, label map) is cached; returns its key."""
    cache, source = job
    key = cache.key(*source)
    cache.ensure(key, *source)
    return key


def _init_preparer() -> None:
    # Out of the trainer's process group, and killable: the trainer handles SIGTERM and ends the pool.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setpgrp()
    # One thread each: the pool already uses the cores.
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


@contextlib.contextmanager
def preparation_pool(workers: int) -> Iterator[Pool | None]:
    """Processes that prepare volumes in parallel (None for ``workers == 0``). They also keep the
    memory that preprocessing fragments out of the trainer, whose heap DataLoader workers later share."""
    if workers <= 0:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers, initializer=_init_preparer) as pool:
        yield pool


class RowReader:
    """Reads single rows of ``.npy`` files through short-lived memory maps.

    Each read maps only the pages of one row and unmaps them at once, so a pass over a cohort far
    larger than memory leaves neither anonymous nor mapped memory behind.
    """

    def __init__(self) -> None:
        self._layout: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}

    def layout(self, path: str) -> tuple[int, tuple[int, ...], np.dtype]:
        """(header bytes, shape, dtype) of a C-ordered ``.npy`` file."""
        if path not in self._layout:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
                if fortran:
                    raise MAEAnomalyError("cached array is not C-ordered; delete the cache", path)
                self._layout[path] = (fh.tell(), shape, dtype)
        return self._layout[path]

    def read(self, path: str, row: int) -> torch.Tensor:
        offset, shape, dtype = self.layout(path)
        row_shape = shape[1:]
        row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset + row * row_bytes, shape=row_shape)
        values = np.array(mapped)
        del mapped
        return torch.from_numpy(values)


class SliceRows:
    """A list of cached slices (file and row of each), readable by index from any worker process."""

    def __init__(self, entries: Sequence[CacheEntry], min_foreground: float) -> None:
        self.files = [str(e.slices_path) for e in entries]
        self.foreground_files = [str(e.foreground_path) for e in entries]
        chosen = [e.healthy_rows(min_foreground) for e in entries]
        self.volume = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, r in enumerate(chosen)]
                                     or [np.zeros(0, dtype=np.int64)])
        self.row = np.concatenate(chosen or [np.zeros(0, dtype=np.int64)]).astype(np.int64)
        self.reader = RowReader()

    def __len__(self) -> int:
        return len(self.row)

    def read(self, index: int) -> torch.Tensor:
        """Slice ``index`` as a (1, S, S) float32 tensor."""
        return self.reader.read(self.files[self.volume[index]], int(self.row[index]))

    def read_foreground(self, index: int) -> torch.Tensor:
        """The foreground mask of slice ``index`` as a (1, S, S) bool tensor."""
        return self.reader.read(self.foreground_files[self.volume[index]], int(self.row[index])).bool()

    def nbytes(self) -> int:
        """What holding all of these slices in memory would take."""
        if not len(self):
            return 0
        _, shape, dtype = self.reader.layout(self.files[0])
        return len(self) * int(np.prod(shape[1:])) * dtype.itemsize
