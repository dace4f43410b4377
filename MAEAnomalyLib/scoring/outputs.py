"""The files ``score`` writes: the slice table as CSV, the difference map, and the PNG report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk
import torch

from ..config import ModelConfig
from ..data.brain import BRAIN_MASK_MODES, Foreground, prepare_volume
from ..data.io import volume_name
from ..data.preprocessing import PreparedVolume
from ..files import AtomicWriter, atomic_outputs, refuse_inputs
from ..model_io import load_model
from .report import render_report
from .scores import ProgressFn, VolumeScores, score_prepared
from .segmentation import components_csv, segment
from .table import table_to_csv


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"scores": out_dir / f"{name}_scores.csv", "difference": out_dir / f"{name}_diff.nii.gz",
            "report": out_dir / f"{name}_report.png", "anomalies": out_dir / f"{name}_anomalies.nii.gz",
            "components": out_dir / f"{name}_components.csv"}


def write_score_outputs(result: VolumeScores, out_dir: str | Path, name: str,
                        protected: tuple[str | Path, ...] = (), brain_mask: sitk.Image | None = None,
                        also: Callable[[AtomicWriter], None] | None = None) -> dict[str, Path]:
    """Writes the outputs together (all or none), never over a file in ``protected``: the anomaly label
    map and components table only when the model has a voxel threshold; with ``brain_mask`` (one
    extracted here) also that mask, so that the user can see what was scored; ``also`` writes more files
    into the same set, after the others (so that its files exist only if they do)."""
    paths = output_paths(out_dir, name)
    if brain_mask is not None:
        paths["brain_mask"] = Path(out_dir) / f"{name}_brainmask.nii.gz"
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
        if brain_mask is not None:
            writer.write_image(brain_mask, paths["brain_mask"])
        if also is not None:
            also(writer)
    return paths


def prepare_for_scoring(image_path: str | Path, brain_mask: str | Path | None, config: ModelConfig,
                        device: torch.device | None = None) -> tuple[PreparedVolume, Foreground]:
    """The one place where ``score`` makes a volume ready (in the main process or in a prefetching
    worker): the volume prepared, and the foreground it was scored with."""
    return prepare_volume(image_path, config.preprocess, brain_mask, min_pixels=config.mae.patch_size,
                          device=device)


def score_to_files(model_dir: str | Path, image_path: str | Path, brain_mask: str | Path | None,
                   out_dir: str | Path, device: torch.device, batch_size: int = 32,
                   progress: ProgressFn | None = None) -> tuple[VolumeScores, dict[str, Path], Foreground]:
    """``maeanomaly score``: scores one volume file and writes its outputs beside none of its inputs.
    ``brain_mask`` is a mask file, "auto" or "none" (see ``data.brain.choose_foreground``)."""
    model = load_model(model_dir)
    prepared, foreground = prepare_for_scoring(image_path, brain_mask, model.config, device)
    result = score_prepared(model.to(device), prepared, device, batch_size, progress)
    inputs = tuple(str(p) for p in (image_path, brain_mask) if p and str(p) not in BRAIN_MASK_MODES)
    paths = write_score_outputs(result, out_dir, volume_name(image_path), inputs, foreground.extracted_mask)
    return result, paths, foreground
