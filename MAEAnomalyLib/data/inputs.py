"""Which volumes a command reads: folders and ``.txt`` lists expanded to files, and masks or label
maps paired with their images: in the order given, or by name where a folder was expanded."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ..core.errors import MAEAnomalyError
from .io import DENIED, VOLUME_SUFFIXES, check_input, volume_name

Source = tuple[Path, Path | None, Path | None]  # (image, mask, label map)
# What a mask or label map may add to its image's name, after "_" or "-" (sub1 -> sub1_mask).
PAIR_SUFFIXES = ("brain_mask", "brainmask", "mask", "seg", "labels", "label")


class Paths(list):
    """Expanded paths; ``from_folder``: some are a folder's contents, whose sorted order says nothing
    about which mask goes with which image (``sub1, sub10, sub2``), so such lists pair by name."""

    def __init__(self, items: Iterable[str] = (), from_folder: bool = False) -> None:
        super().__init__(items)
        self.from_folder = from_folder


def _read_list(path: Path) -> list[str]:
    check_input(path)  # a FIFO would block for ever
    try:  # utf-8-sig: a byte-order mark (Notepad's) is not part of the first path
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise MAEAnomalyError(f"cannot read the list of paths ({exc.__class__.__name__})", path) from None
    listed = [str(path.parent / ln) for ln in lines if ln and not ln.startswith("#")]
    if not listed:
        raise MAEAnomalyError("lists no paths", path)
    return listed


def expand_paths(items: Sequence[str] | None) -> Paths | None:
    """Paths as given, except that a folder becomes the volume files directly inside it (sorted by
    name), or its subfolders when it holds only folders (DICOM series), and a ``.txt`` file becomes
    the paths it lists, one a line (relative to the list's folder; blank lines and ``#`` comments skipped).

    A folder with neither is kept as it is: a DICOM series. A name with a volume's extension that is
    not a folder is kept even when it cannot be read (a broken link, a loop, a FIFO), so that reading
    it reports why, instead of the volume silently missing.
    """
    if items is None:
        return None
    if isinstance(items, Paths):
        return items
    out = Paths()
    for item in items:
        path = Path(item)
        if path.suffix.lower() == ".txt" and not path.is_dir():
            out += _read_list(path)
        elif path.is_dir():
            try:
                entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            except PermissionError:
                raise MAEAnomalyError(DENIED, path) from None
            volumes = [p for p in entries if not p.is_dir() and p.name.lower().endswith(VOLUME_SUFFIXES)]
            folders = [p for p in entries if p.is_dir()]
            if volumes:
                out += [str(p) for p in volumes]
                out.from_folder = True
            elif folders and not any(p.is_file() for p in entries):
                out += [str(p) for p in folders]
                out.from_folder = True
            else:
                out.append(item)
        else:
            out.append(item)
    return out


def check_pairs(images: Sequence, others: Sequence | None, flag: str) -> None:
    """Raises unless ``others`` (masks or label maps) pairs one to one with ``images``."""
    if others is not None and len(others) != len(images):
        raise MAEAnomalyError(f"{flag} gives {len(others)} files for {len(images)} images; they pair in order")


def _image_of(other: str, named: dict[str, int]) -> int | None:
    """The index of the image that ``other`` is named after: its own name, or without a pairing suffix."""
    stem = volume_name(other).casefold()
    stripped = [stem[: -len(s) - 1] for s in PAIR_SUFFIXES if stem.endswith(s) and stem[: -len(s)][-1:] in ("_", "-")]
    return next((named[s] for s in (*stripped, stem) if s in named), None)


def _by_name(images: Sequence, others: Sequence, flag: str) -> list[str]:
    """``others`` reordered beside their images by name; raises where a name finds no partner or two."""
    how = (f"with a folder, {flag} pair with --images by name ({{image}}, {{image}}_mask, _brainmask, _seg, "
           "_label or _labels); rename, or give both as .txt lists in the same order")
    named: dict[str, int] = {}
    for i, image in enumerate(images):
        stem = volume_name(image).casefold()
        if stem in named:
            raise MAEAnomalyError(f"has the name of entry {named[stem] + 1} of --images; {how}", image)
        named[stem] = i
    paired: list[str | None] = [None] * len(images)
    for other in others:
        i = _image_of(str(other), named)
        if i is None:
            raise MAEAnomalyError(f"no image of --images has this name; {how}", other)
        if paired[i] is not None:
            raise MAEAnomalyError(f"pairs by name with {images[i]}, as {paired[i]} does; {how}", other)
        paired[i] = str(other)
    for i, other in enumerate(paired):
        if other is None:
            raise MAEAnomalyError(f"no file of {flag} has this image's name; {how}", images[i])
    return [str(p) for p in paired]


def pair(images: Sequence, others: Sequence | None, flag: str) -> list[str] | None:
    """``others`` (masks or label maps) beside their images: by name when either list came out of a
    folder, else in the order given; raises unless they pair one to one."""
    if others is None:
        return None
    if getattr(images, "from_folder", False) or getattr(others, "from_folder", False):
        return _by_name(images, others, flag)
    check_pairs(images, others, flag)
    return [str(p) for p in others]


def sources(images: Sequence, masks: Sequence | None = None, labels: Sequence | None = None) -> list[Source]:
    """(image, mask, label map) of each volume, folders and lists expanded (unless already), paired."""
    images, masks, labels = expand_paths(images), expand_paths(masks), expand_paths(labels)
    masks, labels = pair(images, masks, "--masks"), pair(images, labels, "--labels")
    return [(Path(p), Path(masks[i]) if masks else None, Path(labels[i]) if labels else None)
            for i, p in enumerate(images)]
