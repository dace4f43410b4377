"""Healthy volumes scored for calibration (``healthy_rows``: the rows the position reference and the slice
threshold are set on, ``calibration.slice_threshold``, and the voxels of the voxel threshold), and the
refusal of a volume given twice. Training calibrates on its held-out volumes; ``maeanomaly calibrate``
(``site``) on a site's own healthy scans."""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from ..calibration.position import brain_position, position_bin
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
