"""Content digests of volume files, so that a cache entry follows the bytes of its inputs, not their
paths: a detached header (.mhd, .nhdr, Analyze .hdr/.img) includes its voxel files, a DICOM folder
every file inside it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import MAEAnomalyError

_CHUNK = 1 << 20


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            yield block


def data_files(header: Path) -> list[Path]:
    """The files holding the voxels of a detached header (.mhd, .nhdr, Analyze .hdr/.img)."""
    name = header.name.lower()
    if name.endswith((".hdr", ".img")):
        return [p for p in (header.with_suffix(".img"), header.with_suffix(".hdr")) if p != header and p.is_file()]
    if not name.endswith((".mhd", ".nhdr")):
        return []
    fields = ("elementdatafile", "data file", "datafile")
    found = []
    for line in header.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=" if name.endswith(".mhd") else ":")
        if sep and key.strip().lower() in fields and value.strip() not in ("LOCAL", ""):
            found.append(header.parent / value.strip())
    # A LIST or a file pattern names several files: take every file that shares the header's stem.
    listed = [p for p in found if p.is_file()]
    if found and len(listed) < len(found):
        listed += [p for p in header.parent.glob(header.stem + ".*") if p != header]
    return sorted(set(listed))


def content_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (with its detached voxel data), or of every file (with its relative
    name) inside a DICOM folder."""
    from .io import DENIED, check_input  # io uses data_files: imported here, not at the top

    path = Path(path)
    check_input(path)  # before anything opens it: a FIFO would block for ever
    digest = hashlib.sha256()
    if path.is_dir():
        named = [(p.relative_to(path).as_posix(), p) for p in sorted(p for p in path.rglob("*") if p.is_file())]
    else:  # the content alone: a copy elsewhere finds the same entry
        named = [("", p) for p in (path, *data_files(path))]
    for name, item in named:
        digest.update(name.encode() + b"\0")
        try:
            for block in _blocks(item):
                digest.update(block)
        except PermissionError:  # a file inside a DICOM folder
            raise MAEAnomalyError(DENIED, item) from None
    return digest.hexdigest()
