"""The decision threshold, set at a target false-positive rate on held-out healthy volumes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.inputs import Source
from ..data.preprocessing import prepare
from ..errors import MAEAnomalyError
from ..model_io import AnomalyModel
from ..scoring.scores import score_prepared
from .distributed import Dist, StopControl
from .loop import TrainingInterrupted, release_freed_memory
from .voxel_threshold import VoxelCalibration


def calibrate(model: AnomalyModel, sources: Sequence[Source], dist: Dist, stop: StopControl, target_fpr: float
              ) -> tuple[float, dict]:
    """Threshold at ``target_fpr`` false positives on held-out healthy slices (with foreground).

    The held-out volumes are prepared and scored one at a time, exactly as ``maeanomaly score`` does,
    and shared among the ranks.
    """
    cfg = model.config
    model.to(dist.device).eval()
    local = []
    voxels = VoxelCalibration(cfg)  # issue 19: the voxel threshold, from the same healthy volumes
    for start in range(0, len(sources), dist.world):
        if start + dist.rank < len(sources):
            image, mask, labels = sources[start + dist.rank]
            volume = prepare(image, cfg.preprocess, mask, labels, min_pixels=cfg.mae.patch_size)
            result = score_prepared(model, volume, dist.device)
            usable = result.table["skipped"] == 0
            if volume.labelled is not None:
                usable &= ~volume.labelled
            local.append(result.table["score"][usable])
            voxels.add(result, usable)
            del volume, result
            release_freed_memory()
        if stop.poll() == StopControl.SIGNAL:
            raise TrainingInterrupted("stopped by SIGTERM during calibration (training itself is complete); "
                                      "--resume calibrates again")
    values = np.concatenate(dist.gather(np.concatenate(local) if local else np.zeros(0)))
    if values.size == 0:
        raise MAEAnomalyError("the held-out volumes have no usable slices for calibration")
    threshold = float(np.quantile(values, 1 - target_fpr, method="higher"))
    summary = {"validation_slices": int(values.size), "target_fpr": target_fpr,
               "validation_fpr": float((values >= threshold).mean()), **voxels.thresholds(dist)}
    return threshold, summary
