"""The files ``score`` writes: the slice table as CSV, the difference map, and the PNG report."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk
import torch

from ..core.errors import MAEAnomalyError
from ..core.files import atomic_outputs, refuse_inputs
from ..data.brain import BRAIN_MASK_MODES, Foreground, prepare_volume
from ..data.io import volume_name
from ..data.preprocessing import PreparedVolume
from ..methods.model import load_model
from ..methods.model_config import ModelConfig
from .cohort_table import model_digest, read_record, record_path, record_text, volume_record, written_here
from .report import render_report
from .scores import ProgressFn, VolumeScores, min_pixels, score_prepared
from .segmentation import components_csv, segment
from .table import table_to_csv


def brain_mask_path(out_dir: str | Path, name: str) -> Path:
    """Where ``score`` writes a brain mask it extracted."""
    return Path(out_dir) / f"{name}_brainmask.nii.gz"


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"scores": out_dir / f"{name}_scores.csv", "difference": out_dir / f"{name}_diff.nii.gz",
            "report": out_dir / f"{name}_report.png", "anomalies": out_dir / f"{name}_anomalies.nii.gz",
            "components": out_dir / f"{name}_components.csv"}


def _stale_and_owned(out_dir: Path, name: str, writing: set[Path]) -> list[Path]:
    """Run under the folder lock before the set is renamed: refuses to replace a file that the volume's
    record does not list as written by MAEAnomaly (the user's own); returns the earlier outputs of this
    name that the set does not replace (removed with it), never a user's file."""
    record = read_record(record_path(out_dir, name))
    stale = []
    for path in (*output_paths(out_dir, name).values(), brain_mask_path(out_dir, name)):
        if not os.path.lexists(path):
            continue
        if written_here(record, path):
            if path not in writing:
                stale.append(path)
        elif path in writing:
            raise MAEAnomalyError("not written by MAEAnomaly, so it is not replaced; move it away or choose "
                                  "another --out-dir", path)
    return stale


def write_score_outputs(result: VolumeScores, out_dir: str | Path, name: str, identity: str,
                        protected: tuple[str | Path, ...] = (), brain_mask: sitk.Image | None = None
                        ) -> dict[str, Path]:
    """Writes the outputs together (all or none), never over a file in ``protected`` nor over one that
    MAEAnomaly did not write: the anomaly label map and components table only when the model has a voxel
    threshold; with ``brain_mask`` (one extracted here) also that mask, so that the user can see what was
    scored; last the volume's record (``identity``, a ``volume_record``, with the outputs' digests). An
    earlier run's outputs of this name that the set does not include are removed with the commit."""
    out_dir = Path(out_dir)
    paths = output_paths(out_dir, name)
    if brain_mask is not None:
        paths["brain_mask"] = brain_mask_path(out_dir, name)
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
        record = record_text(identity, {p.name: writer.digest(p) for p in paths.values()})
        writer.write_text(record, record_path(out_dir, name))  # last: it exists only if the outputs do
        writer.before_commit(lambda: _stale_and_owned(out_dir, name, set(paths.values())))
    return paths


def prepare_for_scoring(image_path: str | Path, brain_mask: str | Path | None, config: ModelConfig,
                        device: torch.device | None = None) -> tuple[PreparedVolume, Foreground]:
    """The one place where ``score`` makes a volume ready (in the main process or in a prefetching
    worker): the volume prepared, and the foreground it was scored with."""
    return prepare_volume(image_path, config.preprocess, brain_mask, min_pixels=min_pixels(config),
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
    mask_file = inputs[1] if len(inputs) > 1 else None
    identity = volume_record(image_path, mask_file, model_digest(model_dir), str(brain_mask or "auto"))
    paths = write_score_outputs(result, out_dir, volume_name(image_path), identity, inputs,
                                foreground.extracted_mask)
    return result, paths, foreground
