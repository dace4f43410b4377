"""Which volumes a command reads: folders and ``.txt`` lists expanded to files, and masks or label
maps paired with their images in order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import MAEAnomalyError
from .io import VOLUME_SUFFIXES

Source = tuple[Path, Path | None, Path | None]  # (image, mask, label map)


def expand_paths(items: Sequence[str] | None) -> list[str] | None:
    """Paths as given, except that a folder becomes the volume files directly inside it (sorted by
    name), or its subfolders when it holds only folders (DICOM series), and a ``.txt`` file becomes
    the paths it lists, one a line (relative to the list's folder; blank lines and ``#`` comments skipped).

    A folder with neither is kept as it is: a DICOM series.
    """
    if items is None:
        return None
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_file() and path.suffix.lower() == ".txt":
            try:
                lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                raise MAEAnomalyError(f"cannot read the list of paths ({exc.__class__.__name__})", path) from None
            listed = [str(path.parent / ln) for ln in lines if ln and not ln.startswith("#")]
            if not listed:
                raise MAEAnomalyError("lists no paths", path)
            out += listed
        elif path.is_dir():
            entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            volumes = [p for p in entries if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)]
            folders = [p for p in entries if p.is_dir()]
            if volumes:
                out += [str(p) for p in volumes]
            elif folders and not any(p.is_file() for p in entries):
                out += [str(p) for p in folders]
            else:
                out.append(item)
        else:
            out.append(item)
    return out


def check_pairs(images: Sequence, others: Sequence | None, flag: str) -> None:
    """Raises unless ``others`` (masks or label maps) pairs one to one with ``images``."""
    if others is not None and len(others) != len(images):
        raise MAEAnomalyError(f"{flag} gives {len(others)} files for {len(images)} images; they pair in order")


def sources(images: Sequence, masks: Sequence | None = None, labels: Sequence | None = None) -> list[Source]:
    """(image, mask, label map) of each volume, checked to pair in order."""
    check_pairs(images, masks, "--masks")
    check_pairs(images, labels, "--labels")
    return [(Path(p), Path(masks[i]) if masks else None, Path(labels[i]) if labels else None)
            for i, p in enumerate(images)]
