"""The voxel threshold: calibrated with the slice threshold, on the foreground voxels of the held-out
healthy volumes only (slices with a label, when the held-out volumes have labels, are left out, as for
the slice threshold). No real anomaly is ever looked at.

For each voxel map (``scoring.voxel_maps``), with the median filter off and on, the threshold is the
lowest value that at most ``segmentation.target_fpr`` of those voxels reach. The difference map's
threshold with the model's median filter becomes ``voxel_threshold``; all four go into the training
summary, for ``evaluate``'s baselines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..core.config import SegmentationConfig
from .histogram import VoxelHistogram

if TYPE_CHECKING:  # torch-free at import: the Slicer module draws segmentations before torch is installed
    from ..engine.distributed import Dist

VARIANTS = ("off", "on")  # the median filter before thresholding
# The maps calibrated (``scoring.voxel_maps``): the method's anomaly map, and the normalised intensity as
# the non-learned baseline of ``evaluate``.
MAPS = ("difference", "intensity")


def median_filtered(array: np.ndarray, radius: int) -> np.ndarray:
    """3D median over a (2r+1)³ cube (r = 0: the array itself)."""
    if radius <= 0:
        return array
    return sitk.GetArrayFromImage(sitk.Median(sitk.GetImageFromArray(array.astype(np.float32)), [radius] * 3))


class VoxelCalibration:
    """Histograms of each map's healthy foreground voxels, one volume at a time."""

    def __init__(self, cfg: SegmentationConfig) -> None:
        self.cfg = cfg
        self.histograms = {(m, v): VoxelHistogram() for m in MAPS for v in VARIANTS}

    def add(self, maps: dict[str, np.ndarray], foreground: np.ndarray, usable_slices: np.ndarray) -> None:
        """Adds a scored held-out volume: its (Z, Y, X) ``maps`` on the canonical grid, its foreground
        there, and ``usable_slices`` (Z,), its healthy slices."""
        foreground = foreground & np.asarray(usable_slices, dtype=bool)[:, None, None]
        healthy = np.zeros(int(foreground.sum()), dtype=bool)  # every voxel counts as a negative
        for name, values in maps.items():
            for variant in VARIANTS:
                radius = self.cfg.median_radius if variant == "on" else 0
                self.histograms[name, variant].add(median_filtered(values, radius)[foreground], healthy)

    def thresholds(self, dist: Dist) -> dict:
        """Every rank's voxels pooled; returns ``voxel_thresholds`` (map -> variant -> value) and counts."""
        keys = list(self.histograms)
        counts = np.stack([self.histograms[k].negative for k in keys])
        total = np.sum([part.reshape(counts.shape) for part in dist.gather(counts)], axis=0)
        fpr = self.cfg.target_fpr
        out: dict = {m: {} for m in MAPS}
        for k, (name, variant) in enumerate(keys):
            histogram = VoxelHistogram(negative=total[k])
            out[name][variant] = histogram.quantile_edge(fpr)
        voxels = int(total[0].sum())
        return {"voxel_thresholds": out, "voxel_calibration_voxels": voxels, "voxel_target_fpr": fpr}
