"""The voxel threshold: calibrated with the slice threshold, on the foreground voxels of the held-out
healthy volumes only (slices with a label, when the held-out volumes have labels, are left out, as for
the slice threshold). No real anomaly is ever looked at.

For each voxel map (``scoring.voxel_maps``), with the median filter off and on, the threshold is the
lowest value that at most ``segmentation.target_fpr`` of those voxels reach. The difference map's
threshold with the model's median filter becomes ``voxel_threshold``; all four go into the training
summary, for ``evaluate``'s baselines."""

from __future__ import annotations

import numpy as np

from ..core.config import ModelConfig
from ..engine.distributed import Dist
from ..evaluation.voxel_metrics import VoxelHistogram
from ..scoring.scores import VolumeScores
from ..scoring.segmentation import median_filtered
from ..scoring.voxel_maps import MAPS, voxel_maps

VARIANTS = ("off", "on")  # the median filter before thresholding


class VoxelCalibration:
    """Histograms of each map's healthy foreground voxels, one volume at a time."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.histograms = {(m, v): VoxelHistogram() for m in MAPS for v in VARIANTS}

    def add(self, result: VolumeScores, usable_slices: np.ndarray) -> None:
        """Adds a scored held-out volume; ``usable_slices`` (Z,) marks its healthy slices."""
        foreground = result.prepared.foreground_input & np.asarray(usable_slices, dtype=bool)[:, None, None]
        healthy = np.zeros(int(foreground.sum()), dtype=bool)  # every voxel counts as a negative
        for name, values in voxel_maps(result, self.cfg.preprocess).items():
            for variant in VARIANTS:
                radius = self.cfg.segmentation.median_radius if variant == "on" else 0
                self.histograms[name, variant].add(median_filtered(values, radius)[foreground], healthy)

    def thresholds(self, dist: Dist) -> dict:
        """Every rank's voxels pooled; returns ``voxel_thresholds`` (map -> variant -> value) and counts."""
        keys = list(self.histograms)
        counts = np.stack([self.histograms[k].negative for k in keys])
        total = np.sum([part.reshape(counts.shape) for part in dist.gather(counts)], axis=0)
        fpr = self.cfg.segmentation.target_fpr
        out: dict = {m: {} for m in MAPS}
        for k, (name, variant) in enumerate(keys):
            histogram = VoxelHistogram(negative=total[k])
            out[name][variant] = histogram.quantile_edge(fpr)
        voxels = int(total[0].sum())
        return {"voxel_thresholds": out, "voxel_calibration_voxels": voxels, "voxel_target_fpr": fpr}
