"""The files ``score`` writes: the slice table as CSV, the difference map, and the PNG report."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.io import read_mask, read_volume, volume_name
from ..files import atomic_outputs, refuse_inputs
from ..model_io import load_model
from .report import render_report
from .scores import ProgressFn, VolumeScores, score_image
from .segmentation import components_csv, segment
from .table import table_to_csv


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"scores": out_dir / f"{name}_scores.csv", "difference": out_dir / f"{name}_diff.nii.gz",
            "report": out_dir / f"{name}_report.png", "anomalies": out_dir / f"{name}_anomalies.nii.gz",
            "components": out_dir / f"{name}_components.csv"}


def write_score_outputs(result: VolumeScores, out_dir: str | Path, name: str,
                        protected: tuple[str | Path, ...] = ()) -> dict[str, Path]:
    """Writes the outputs together (all or none), never over a file in ``protected``; the anomaly label
    map and components table only when the model has a voxel threshold."""
    paths = output_paths(out_dir, name)
    segmentation = segment(result.difference, result.prepared, result.voxel_threshold, result.segmentation)
    if segmentation is None:
        del paths["anomalies"], paths["components"]
    refuse_inputs(paths.values(), protected, "--out-dir")
    with atomic_outputs() as writer:
        writer.write_text(table_to_csv(result.table), paths["scores"])
        writer.write_image(result.difference, paths["difference"])
        writer.write_bytes(render_report(result, name, segmentation), paths["report"])
        if segmentation is not None:
            writer.write_image(segmentation.labels, paths["anomalies"])
            writer.write_text(components_csv(segmentation.components), paths["components"])
    return paths


def score_to_files(model_dir: str | Path, image_path: str | Path, mask_path: str | Path | None,
                   out_dir: str | Path, device: torch.device, batch_size: int = 32,
                   progress: ProgressFn | None = None) -> tuple[VolumeScores, dict[str, Path]]:
    """``maeanomaly score``: scores one volume file and writes its outputs beside none of its inputs."""
    model = load_model(model_dir)
    image = read_volume(image_path)
    mask = read_mask(mask_path, image) if mask_path else None
    result = score_image(model, image, mask, device, batch_size, progress, source=str(image_path))
    inputs = tuple(p for p in (image_path, mask_path) if p)
    return result, write_score_outputs(result, out_dir, volume_name(image_path), protected=inputs)
