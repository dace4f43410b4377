"""The files ``score`` writes: the slice table as CSV, the difference map, and the PNG report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..config import ModelConfig
from ..data.io import read_mask, read_volume, volume_name
from ..data.preprocessing import PreparedVolume, prepare_image
from ..files import AtomicWriter, atomic_outputs, refuse_inputs
from ..model_io import load_model
from .report import render_report
from .scores import ProgressFn, VolumeScores, score_prepared
from .table import table_to_csv


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"scores": out_dir / f"{name}_scores.csv", "difference": out_dir / f"{name}_diff.nii.gz",
            "report": out_dir / f"{name}_report.png"}


def write_score_outputs(result: VolumeScores, out_dir: str | Path, name: str,
                        protected: tuple[str | Path, ...] = (),
                        also: Callable[[AtomicWriter], None] | None = None) -> dict[str, Path]:
    """Writes the three outputs together (all or none), never over a file in ``protected``; ``also``
    writes more files into the same set, after the three (so that its files exist only if they do)."""
    paths = output_paths(out_dir, name)
    refuse_inputs(paths.values(), protected, "--out-dir")
    with atomic_outputs() as writer:
        writer.write_text(table_to_csv(result.table), paths["scores"])
        writer.write_image(result.difference, paths["difference"])
        writer.write_bytes(render_report(result, name), paths["report"])
        if also is not None:
            also(writer)
    return paths


def prepare_volume(image_path: str | Path, mask_path: str | Path | None, config: ModelConfig) -> PreparedVolume:
    """Reads one volume (and its optional foreground mask) and prepares it for ``config``'s networks:
    the one place where ``score`` makes a volume ready, in the main process or in a prefetching worker."""
    image = read_volume(image_path)
    mask = read_mask(mask_path, image) if mask_path else None
    return prepare_image(image, config.preprocess, mask, source=str(image_path), min_pixels=config.mae.patch_size)


def score_to_files(model_dir: str | Path, image_path: str | Path, mask_path: str | Path | None,
                   out_dir: str | Path, device: torch.device, batch_size: int = 32,
                   progress: ProgressFn | None = None) -> tuple[VolumeScores, dict[str, Path]]:
    """``maeanomaly score``: scores one volume file and writes its outputs beside none of its inputs."""
    model = load_model(model_dir)
    prepared = prepare_volume(image_path, mask_path, model.config)
    result = score_prepared(model.to(device), prepared, device, batch_size, progress)
    inputs = tuple(p for p in (image_path, mask_path) if p)
    return result, write_score_outputs(result, out_dir, volume_name(image_path), protected=inputs)
