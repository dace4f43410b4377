"""The voxel maps that voxel-level calibration and evaluation compare, on the canonical grid of a
scored volume: the difference map, and the normalised intensity as a non-learned baseline (on FLAIR,
bright is abnormal; on T1 it is no sensible detector and shows only the floor)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..calibration.voxel_threshold import MAPS  # noqa: F401 (the names of the maps below)
from ..core.config import PreprocessConfig
from ..data.io import to_canonical
from ..data.preprocessing import normalise
from .scores import VolumeScores


def voxel_maps(result: VolumeScores, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """Each map as a (Z, Y, X) float32 array on ``result.prepared``'s canonical grid."""
    prepared = result.prepared
    difference = sitk.GetArrayFromImage(to_canonical(result.difference))
    volume = sitk.GetArrayFromImage(prepared.canonical)
    intensity = normalise(volume, prepared.foreground_input, cfg, prepared.source)
    return {"difference": difference, "intensity": intensity}


def voxel_mm3(result: VolumeScores) -> float:
    return float(np.prod(result.prepared.canonical.GetSpacing()))
