"""What a cohort run writes besides each volume's outputs: collision-free output names, one
``cohort.csv`` row per volume, and the records by which ``--resume`` knows a volume is complete.
Torch-free."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.io import volume_name
from ..errors import MAEAnomalyError

COHORT_CSV = "cohort.csv"
COHORT_COLUMNS = ("image", "mask", "name", "slices_scored", "max_score", "max_slice", "max_position_mm",
                  "flagged_slices", "flagged_ranges", "status")
# One small JSON per finished volume, committed with its outputs, so that --resume can tell a complete
# volume of this very input and model from one that is missing, half done, or of other inputs.
RECORDS = ".maeanomaly-cohort"
OK = "ok"


def _absolute(path: str | Path) -> str:
    return os.path.abspath(os.fspath(path))  # not resolve(): a symlinked input keeps the name it was given


def output_names(images: Sequence[str | Path]) -> list[str]:
    """One output name per input, unique without regard to case: the file name without its extension,
    prefixed by as many of its folders (``siteA__case``) as it takes to tell inputs of the same name
    apart, and as a last resort suffixed by a digest of the path. The same list always gives the same names.
    """
    paths = [_absolute(p) for p in images]
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p in seen:
            raise MAEAnomalyError(f"given twice in --images (entries {seen[p] + 1} and {i + 1})", images[i])
        seen[p] = i
    names = [volume_name(p) for p in paths]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        groups[name.lower()].append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        parents = {i: Path(paths[i]).parent.parts[1:] for i in members}  # without the root
        tried = {i: names[i] for i in members}
        for depth in range(1, max(len(p) for p in parents.values()) + 1):
            tried = {i: "__".join([*parents[i][-depth:], volume_name(paths[i])]) for i in members}
            if len({t.lower() for t in tried.values()}) == len(members):
                break
        for i in members:
            names[i] = tried[i]
    counts: dict[str, int] = defaultdict(int)
    for name in names:
        counts[name.lower()] += 1
    return [f"{n}_{hashlib.sha256(p.encode()).hexdigest()[:8]}" if counts[n.lower()] > 1 else n
            for n, p in zip(names, paths, strict=True)]


def _fmt(value: float) -> str:
    return f"{float(value):.9g}"  # as the slice table writes floats, so a resumed row reads the same


def flagged_ranges(slices: np.ndarray) -> str:
    """Sorted slice indices as runs: ``[3, 4, 5, 9]`` -> ``"3-5;9"``."""
    runs: list[list[int]] = []
    for k in (int(s) for s in slices):
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ";".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def volume_row(image: str | Path, mask: str | Path | None, name: str, table: dict[str, np.ndarray]) -> dict:
    """The ``cohort.csv`` row of a scored volume, from its slice table."""
    scored = np.flatnonzero(table["skipped"] == 0)
    flagged = table["slice_index"][table["abnormal"] == 1]
    row = {"image": str(image), "mask": str(mask or ""), "name": name, "slices_scored": len(scored),
           "max_score": "", "max_slice": "", "max_position_mm": "", "flagged_slices": len(flagged),
           "flagged_ranges": flagged_ranges(flagged), "status": OK}
    if len(scored):
        top = scored[int(np.argmax(table["score"][scored]))]
        row.update(max_score=_fmt(table["score"][top]), max_slice=int(table["slice_index"][top]),
                   max_position_mm=_fmt(table["position_mm"][top]))
    return row


def failed_row(image: str | Path, mask: str | Path | None, name: str, error: str) -> dict:
    """The row of a volume that could not be scored: its one-line error as the status."""
    row = dict.fromkeys(COHORT_COLUMNS, "")
    row.update(image=str(image), mask=str(mask or ""), name=name, status=" ".join(error.split()) or "failed")
    return row


def cohort_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COHORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_cohort_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _stamp(path: str | Path | None) -> list[int] | None:
    """Size and modification time: a file replaced at the same path is not taken for the one scored."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def model_digest(model_dir: str | Path) -> str:
    """A model's identity for --resume: its config.json (training summary and threshold included) and
    the sizes and times of its weights."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")):
        digest.update(repr((weights.name, _stamp(weights))).encode())
    return digest.hexdigest()


def volume_record(image: str | Path, mask: str | Path | None, model: str, brain_mask: str = "auto") -> str:
    """The record committed with a volume's outputs (``model``: ``model_digest``; ``brain_mask``: how a
    volume without a mask gets one, so that changing it scores the volume again)."""
    return json.dumps({"image": _absolute(image), "image_stamp": _stamp(image),
                       "mask": None if mask is None else _absolute(mask), "mask_stamp": _stamp(mask),
                       "brain_mask": None if mask is not None else brain_mask, "model": model}, indent=1) + "\n"


def record_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / RECORDS / f"{name}.json"
