"""Atomic output: every file is written beside its destination under a temporary name, and a set of
files is renamed into place only when all of them were written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk


@contextlib.contextmanager
def atomic_outputs() -> Iterator[AtomicWriter]:
    """Collects files written to temporary names and renames them all only if the block succeeds."""
    writer = AtomicWriter()
    try:
        yield writer
    except BaseException:
        writer.discard()
        raise
    writer.commit()


class AtomicWriter:
    """Writes each output beside its destination under a temporary name; see ``atomic_outputs``."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def temp_path(self, destination: str | Path) -> Path:
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(destination.suffixes[-2:]) if destination.name.endswith(".nii.gz") else destination.suffix
        fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp" + suffix, dir=destination.parent)
        os.close(fd)
        self._pending.append((Path(tmp), destination))
        return Path(tmp)

    def write_image(self, image: sitk.Image, destination: str | Path) -> None:
        sitk.WriteImage(image, str(self.temp_path(destination)), useCompression=True)

    def write_text(self, text: str, destination: str | Path) -> None:
        self.temp_path(destination).write_text(text)

    def write_bytes(self, data: bytes, destination: str | Path) -> None:
        self.temp_path(destination).write_bytes(data)

    def commit(self) -> None:
        for tmp, destination in self._pending:
            os.replace(tmp, destination)
        self._pending.clear()

    def discard(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()
