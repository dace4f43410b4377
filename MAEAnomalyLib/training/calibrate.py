"""Calibration on healthy volumes only: the position reference (``scoring.position``) and the decision
threshold at a target false-positive rate. Training calibrates on its held-out volumes; ``maeanomaly
calibrate`` does the same on a site's own healthy scans."""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from ..calibration.position import brain_position, calibrated_rows, position_bin, reference_from_rows
from ..calibration.voxel_threshold import VoxelCalibration
from ..core.errors import MAEAnomalyError
from ..data.digest import content_digest
from ..data.inputs import Source
from ..data.preprocessing import PreparedVolume, prepare
from ..engine.distributed import Dist, StopControl
from ..engine.loop import TrainingInterrupted
from ..methods import get
from ..methods.model import AnomalyModel
from ..scoring.iterate import scored_volumes
from ..scoring.voxel_maps import voxel_maps

# Healthy slices above the threshold at the target rate: fewer make the threshold one slice's score.
MIN_SLICES_ABOVE = 10


def healthy_rows(model: AnomalyModel, sources: Sequence[Source], dist: Dist, stop: StopControl | None,
                 prepare_fn: Callable[..., PreparedVolume] = prepare, voxels: VoxelCalibration | None = None
                 ) -> np.ndarray:
    """(N, 1 + K) rows of [tenth of the brain, then the method's K positioned raw scores] of every usable
    healthy slice (with foreground, not labelled) of ``sources``, scored exactly as ``maeanomaly score``
    scores and shared among the ranks. Without ``stop`` (``calibrate``) SIGTERM is left to the caller.
    ``voxels`` collects the same volumes' foreground voxels for the voxel threshold."""
    cfg = model.config
    columns = list(get(cfg.method).positioned)

    def stop_agreed() -> None:
        if stop is not None and stop.poll() == StopControl.SIGNAL:
            raise TrainingInterrupted("stopped by SIGTERM during calibration (training itself is complete); "
                                      "--resume calibrates again")

    local = []
    for _, result in scored_volumes(model, sources, prepare_fn, dist.device, rank=dist.rank, world=dist.world,
                                    after_round=stop_agreed):
        table = result.table
        usable = table["skipped"] == 0
        if result.prepared.labelled is not None:
            usable &= ~result.prepared.labelled
        bins = position_bin(brain_position(table["foreground_fraction"]))
        local.append(np.stack([bins, *(table[c] for c in columns)], axis=1)[usable])
        if voxels is not None:
            voxels.add(voxel_maps(result, cfg.preprocess), result.prepared.foreground_input, usable)
    rows = np.concatenate(local) if local else np.zeros((0, 1 + len(columns)))
    return np.concatenate([part.reshape(-1, 1 + len(columns)) for part in dist.gather(rows)])


def refuse_repeated_volumes(sources: Sequence[Source]) -> None:
    """Raises, naming both entries, when two of ``--images`` hold the same volume (the same bytes, by the
    same path or another): calibrated on twice, it counts as two sites' volumes; in training, one copy may
    be trained on and the other held out. Only files of equal size (and folders) are read to compare."""
    groups: dict[object, list[int]] = defaultdict(list)
    for i, (image, _, _) in enumerate(sources):
        with contextlib.suppress(OSError):  # a missing file is reported when it is read, with its own message
            groups["folder" if image.is_dir() else os.stat(image).st_size].append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        seen: dict[str, int] = {}
        for i in members:
            first = seen.setdefault(content_digest(sources[i][0]), i)
            if first != i:
                raise MAEAnomalyError(f"the same volume as entry {first + 1} ({sources[first][0]}): given twice in "
                                      f"--images (entries {first + 1} and {i + 1})", sources[i][0])


def slices_needed(target_fpr: float) -> int:
    return int(np.ceil(MIN_SLICES_ABOVE / target_fpr))


def threshold_from_rows(rows: np.ndarray, method: str, target_fpr: float, with_reference: bool, strict: bool
                        ) -> tuple[float, dict | None, dict]:
    """The position reference (or None) and the threshold at ``target_fpr`` on healthy ``rows`` (of
    ``healthy_rows``) of ``method``'s primary score.

    ``strict`` (``calibrate``) refuses too few slices; training then keeps the raw probability instead.
    """
    if len(rows) == 0:
        raise MAEAnomalyError("the healthy volumes have no usable slices for calibration")
    needed = slices_needed(target_fpr)
    if strict and len(rows) < needed:
        raise MAEAnomalyError(f"{len(rows)} healthy slices cannot set a threshold at a false-positive rate of "
                              f"{target_fpr:g}: at least {needed} are needed (give more healthy volumes)")
    bins = rows[:, 0].astype(int)
    found = get(method)
    values = {name: rows[:, 1 + j] for j, name in enumerate(found.positioned)}
    reference, note = None, "built"
    if with_reference:
        try:
            reference = reference_from_rows(bins, values, found.positioned)
        except ValueError as exc:
            if strict:
                raise MAEAnomalyError(f"too few healthy slices for a position reference: {exc}") from None
            note = f"not built: {exc}"
    primary = values[found.primary]
    score = calibrated_rows(primary, bins, reference, found.primary) if reference else primary
    threshold = float(np.quantile(score, 1 - target_fpr, method="higher"))
    summary = {"validation_slices": len(rows), "target_fpr": target_fpr,
               "validation_fpr": float((score >= threshold).mean()),
               "position_reference": note if with_reference else "off"}
    return threshold, reference, summary
