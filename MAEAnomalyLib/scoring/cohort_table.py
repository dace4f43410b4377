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

from ..core.errors import MAEAnomalyError
from ..core.files import file_digest
from ..data.io import volume_name

COHORT_CSV = "cohort.csv"
COHORT_COLUMNS = ("image", "mask", "name", "slices_scored", "max_score", "max_slice", "max_position_mm",
                  "flagged_slices", "flagged_ranges", "status")
# One small JSON per scored volume (by ``score --images`` and ``score --image``), committed with its
# outputs: the input and model they came from, and each output's size and SHA-256. By it --resume tells
# a complete volume of this very input and model from one that is missing, changed, or of other inputs,
# and a later run tells the files MAEAnomaly wrote (which it may replace) from the user's own.
RECORDS = ".maeanomaly-cohort"
RUN_LOCK = "run.lock"  # held by the run writing into the folder (files.one_run_at_a_time)
OK = "ok"


def _absolute(path: str | Path) -> str:
    return os.path.abspath(os.fspath(path))  # not resolve(): a symlinked input keeps the name it was given


# Longest output name: with "_components.csv" and a temporary's dots and suffix, far below 255 bytes.
NAME_LIMIT = 120


def _short(name: str, path: str) -> str:
    """``name``, or its start and a digest of ``path`` when longer than NAME_LIMIT."""
    if len(name) <= NAME_LIMIT:
        return name
    return f"{name[:NAME_LIMIT - 9]}_{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def output_names(images: Sequence[str | Path]) -> list[str]:
    """One output name per input, unique without regard to case and at most NAME_LIMIT characters: the
    file name without its extension, prefixed by as few of its folders (``siteA__case``) as tell inputs
    of the same name apart (none where folders cannot: ``Case`` and ``case`` in one folder), and where
    still the same, or too long, suffixed by a digest of the path. The same list always gives the same names.
    """
    paths = [_absolute(p) for p in images]
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        real = os.path.realpath(p)  # a link and the file it points to are one input (a loop stays as it is)
        if real in seen:
            how = "" if paths[seen[real]] == p else ", the same file through a symbolic link"
            raise MAEAnomalyError(f"given twice in --images (entries {seen[real] + 1} and {i + 1}{how})", images[i])
        seen[real] = i
    names = [volume_name(p) for p in paths]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        groups[name.lower()].append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        parents = {i: Path(paths[i]).parent.parts[1:] for i in members}  # without the root

        # Depth d: the last d folders before the name. The fewest that tell the most names apart.
        tried = [{i: "__".join([*parents[i][max(0, len(parents[i]) - d):], names[i]]) if d else names[i]
                  for i in members} for d in range(max(len(p) for p in parents.values()) + 1)]
        told = [len({name.lower() for name in t.values()}) for t in tried]
        chosen = tried[told.index(max(told))]
        for i in members:
            names[i] = chosen[i] if len(chosen[i]) <= NAME_LIMIT else names[i]
    counts: dict[str, int] = defaultdict(int)
    for name in names:
        counts[name.lower()] += 1
    return [_short(f"{n}_{hashlib.sha256(p.encode()).hexdigest()[:8]}" if counts[n.lower()] > 1 else n, p)
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


def record_text(identity: str, outputs: dict[str, tuple[int, str]]) -> str:
    """The record of a committed set: ``identity`` (a ``volume_record``) and, by file name, the size and
    SHA-256 of each output (``files.file_digest``)."""
    record = json.loads(identity)
    record["outputs"] = {name: list(outputs[name]) for name in sorted(outputs)}
    return json.dumps(record, indent=1) + "\n"


def read_record(path: str | Path) -> dict | None:
    """A volume's record, or None when there is none or it is not one."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def same_inputs(record: dict, identity: str) -> bool:
    """Whether the record is of the input, mask, model and brain-mask mode in ``identity``."""
    return {k: v for k, v in record.items() if k != "outputs"} == json.loads(identity)


def _unchanged(path: Path, listed: object) -> bool:
    try:
        return [*file_digest(path)] == listed
    except (OSError, MAEAnomalyError):
        return False


def outputs_intact(record: dict, out_dir: str | Path) -> bool:
    """Whether every output the record lists is in ``out_dir`` with its size and SHA-256."""
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False  # a record of an older version lists none: what it stands for cannot be checked
    return all(Path(name).name == name and _unchanged(Path(out_dir) / name, listed)
               for name, listed in outputs.items())


def written_here(record: dict | None, path: Path) -> bool:
    """Whether the volume's record lists the file at ``path`` as one MAEAnomaly wrote (whole or damaged
    since, it may be replaced); a record of an older version (without the list) stands for every output
    of its name."""
    if record is None:
        return False
    outputs = record.get("outputs")
    return outputs is None or (isinstance(outputs, dict) and path.name in outputs)
