"""Voxel-level evaluation of a cohort in ``evaluate``: each voxel map (``scoring.voxel_maps``) as it is
and post-processed (median filter before thresholding, small components removed after), against the
label map's voxels inside the foreground, through ``voxel_metrics`` (memory independent of the cohort)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..data.io import read_mask, to_canonical
from ..methods.model_config import ModelConfig
from ..scoring.scores import VolumeScores
from ..scoring.segmentation import label_components, median_filtered
from ..scoring.voxel_maps import MAPS, voxel_maps, voxel_mm3
from .voxel_metrics import VoxelEvaluation, format_voxel_metrics

POST = "+post"  # row suffix: median filter and minimum component size of the model's settings


def stored_thresholds(cfg: ModelConfig) -> dict[str, dict[str, float | None]]:
    """Each map's healthy-calibrated thresholds (``off``/``on``: the median filter): the latest
    ``calibrate``'s, else training's; a model trained before voxel calibration has none."""
    stored = next((record["voxel_thresholds"] for record in (cfg.site_calibration, cfg.training_summary)
                   if isinstance(record, dict) and isinstance(record.get("voxel_thresholds"), dict)), None)
    if isinstance(stored, dict):
        return {m: {v: stored.get(m, {}).get(v) for v in ("off", "on")} for m in MAPS}
    return {m: {"off": None, "on": cfg.voxel_threshold if m == "difference" else None} for m in MAPS}


class CohortVoxels:
    """Adds scored volumes with their label maps one at a time; ``result`` is ``evaluate``'s ``voxel``."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        thresholds = stored_thresholds(cfg)
        self.rows = {row: (m, v) for m in MAPS for row, v in ((m, "off"), (m + POST, "on"))}
        self.evaluation = VoxelEvaluation({row: thresholds[m][v] for row, (m, v) in self.rows.items()})
        self.volumes = 0

    def add(self, result: VolumeScores, label_path: str | Path) -> None:
        label = read_mask(label_path, result.prepared.image, kind="label map")
        self.add_lesion(result, sitk.GetArrayFromImage(to_canonical(label)) > 0)  # a view would dangle

    def add_lesion(self, result: VolumeScores, lesion: np.ndarray) -> None:
        """Adds a scored volume with its lesion as a (Z, Y, X) bool array on the canonical grid (all
        False for a healthy volume, which adds only false positives)."""
        seg = self.cfg.segmentation
        maps = voxel_maps(result, self.cfg.preprocess)
        rows = {row: median_filtered(maps[m], seg.median_radius if v == "on" else 0)
                for row, (m, v) in self.rows.items()}
        size = voxel_mm3(result)

        def drop_small(called: np.ndarray, _: np.ndarray) -> np.ndarray:
            return label_components(called, size, seg.min_component_mm3) > 0

        post = {row: drop_small for row, (_, v) in self.rows.items() if v == "on"}
        self.evaluation.add(rows, result.prepared.foreground_input, lesion, size / 1000, post)
        self.volumes += 1

    def result(self) -> dict:
        maps = self.evaluation.result()
        first = self.evaluation.maps[next(iter(self.rows))].histogram
        share = float(first.positive.sum() / max(1, first.positive.sum() + first.negative.sum()))
        seg = self.cfg.segmentation
        return {"volumes": self.volumes, "lesion_share": share, "median_radius": seg.median_radius,
                "min_component_mm3": seg.min_component_mm3, "maps": maps}


def format_cohort_voxels(voxel: dict) -> str:
    note = (f"'{POST}': median filter of radius {voxel['median_radius']} before thresholding, components under "
            f"{voxel['min_component_mm3']:g} mm3 dropped after (Dice@thr and FP only)")
    return format_voxel_metrics(voxel) + "\n" + note
