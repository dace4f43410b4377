"""One volume scored by any method: its slice table and its anomaly map on the input's grid.

The method's scorer (``methods.base``) scores batches of prepared slices; this module assembles the
table (the method's columns, the position-calibrated ``score``, the intensity baseline, where each slice
sits) and puts the map on the input's grid, averaged in 3D inside the brain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter

from ..calibration.position import brain_position, calibrated, transformed
from ..calibration.volume_reference import within_volume
from ..core.config import SegmentationConfig
from ..data.io import from_canonical
from ..data.preprocessing import PreparedVolume, prepare_image
from ..methods import get
from ..methods.intensity.scorer import intensity_percentile
from ..methods.model import AnomalyModel
from .table import VOLUME_SCORE

SLAB = 16  # slices per step where a full-resolution map is built slab by slab
BASELINE = "intensity_p995"  # the non-learned baseline beside every method's columns (the intensity method's score)

ProgressFn = Callable[[float], None]


@dataclass
class VolumeScores:
    """The slice table, the anomaly map on the input's grid, and what the report needs."""

    table: dict[str, np.ndarray]
    difference: sitk.Image  # the anomaly map on the input's grid
    threshold: float
    prepared: PreparedVolume
    map_slices: torch.Tensor  # (Z, 1, S, S): the map at model resolution, before the 3D average
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's per-pixel extras, (Z, 1, S, S)
    # What the anomaly segmentation (scoring.segmentation) needs; None in models without voxel calibration.
    voxel_threshold: float | None = None
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


def slice_threshold(cfg: object) -> float:
    """The score at which a slice is flagged; infinite (nothing flagged) in an uncalibrated model."""
    return float(cfg.threshold) if cfg.threshold is not None else float("inf")


def slice_table(model: AnomalyModel, prepared: PreparedVolume, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The table's columns in order: index, position, the thresholded ``score`` (the primary score,
    against healthy slices at the same height when the model has a position reference), ``score_volume``
    (``score`` against the volume's own slices; the transformed primary score without a reference), the
    method's columns (each positioned one also as ``NAME_position``), the baseline, and where each slice sits."""
    cfg, method = model.config, get(model.config.method)
    n, fraction, reference = len(prepared.foreground_fraction), prepared.foreground_fraction, cfg.position_reference
    skipped = fraction == 0
    primary = raw[method.primary]
    score = calibrated(primary, fraction, reference, method.primary) if reference else primary
    own = score if reference else transformed(primary, method.positioned.get(method.primary, "none"))
    table = {"slice_index": np.arange(n), "position_mm": prepared.positions_mm, "score": score,
             VOLUME_SCORE: within_volume(own, ~skipped)}
    positioned = method.position_columns()
    for name in method.columns:
        table[name] = raw[name]
        if name in positioned:
            table[positioned[name]] = calibrated(raw[name], fraction, reference, name) if reference else np.full(
                n, np.nan)
    if BASELINE not in table:
        table[BASELINE] = intensity_percentile(prepared.slices.numpy(), prepared.foreground.numpy())
    table.update({"foreground_fraction": fraction, "brain_position": brain_position(fraction),
                  "abnormal": ((table["score"] >= slice_threshold(cfg)) & ~skipped).astype(int),
                  "skipped": skipped.astype(int)})
    return table


@torch.inference_mode()
def score_prepared(model: AnomalyModel, prepared: PreparedVolume, device: torch.device,
                   batch_size: int = 32, progress: ProgressFn | None = None) -> VolumeScores:
    """Scores every slice with foreground; slices without foreground are flagged and skipped (their scores
    are the method's ``empty_scores``, 0 by default, and their map zero)."""
    cfg, method = model.config, get(model.config.method)
    score = method.scorer(model.to(device), device)
    keep = np.flatnonzero(prepared.foreground_fraction > 0)
    raw: dict[str, np.ndarray] = {}
    map_slices = torch.zeros_like(prepared.slices)
    extras: dict[str, torch.Tensor] = {}
    step = method.batch_slices(cfg, batch_size)
    for start in range(0, len(keep), step):
        idx = keep[start:start + step]
        out = score(prepared.slices[idx], prepared.foreground[idx], idx)
        for name, values in out.scores.items():
            raw.setdefault(name, np.full(len(map_slices), method.empty_scores.get(name, 0.0)))[idx] = values
        map_slices[idx] = out.anomaly_map
        for name, values in out.extras.items():
            extras.setdefault(name, torch.zeros_like(prepared.slices))[idx] = values
        if progress is not None:
            progress(min(1.0, (start + len(idx)) / max(1, len(keep))))
    for name in method.columns:  # a volume with no foreground at all
        raw.setdefault(name, np.full(len(map_slices), method.empty_scores.get(name, 0.0)))
    table = slice_table(model, prepared, raw)
    seg = cfg.segmentation
    difference = difference_image(map_slices, prepared, seg.smoothing_mm)
    return VolumeScores(table, difference, slice_threshold(cfg), prepared, map_slices, extras, cfg.voxel_threshold,
                        seg)


def smoothed_in_foreground(values: np.ndarray, foreground: np.ndarray, sigma_mm: float,
                           spacing: tuple[float, ...]) -> np.ndarray:
    """Gaussian average (sigma in mm; ``spacing`` x, y, z of a (Z, Y, X) array) over foreground voxels
    only, so that the zeros outside do not dim the foreground's edge; zero outside."""
    sigma = [sigma_mm / float(d) for d in reversed(spacing)]
    inside = foreground.astype(np.float32)
    weight = gaussian_filter(inside, sigma)
    # The masked values and their average in ``inside``'s buffer: the same products and filter, three
    # full-volume float32 arrays alive instead of six.
    total = np.multiply(values, inside, out=inside, dtype=np.float32)
    gaussian_filter(total, sigma, output=total)
    kept = foreground & (weight > 0)
    np.divide(total, weight, out=total, where=kept)
    del weight
    np.copyto(total, 0, where=~kept)
    return total


def difference_image(diff: torch.Tensor, prepared: PreparedVolume, smoothing_mm: float) -> sitk.Image:
    """The model-resolution map (``diff``: ``anomaly_map``) on the input grid, zero outside the
    foreground, averaged in 3D inside it by a Gaussian of ``smoothing_mm`` (0: per voxel)."""
    on_canonical = np.zeros(prepared.foreground_input.shape, dtype=np.float32)
    scored = np.flatnonzero(prepared.foreground_fraction > 0)  # skipped slices stay zero, at no cost
    # A slab of slices at a time (each slice is resized on its own): its temporaries are slabs, not volumes.
    for start in range(0, len(scored), SLAB):
        part = scored[start:start + SLAB]
        resized = prepared.to_input_grid(diff[part])
        np.clip(resized, 0, None, out=resized)
        resized *= prepared.foreground_input[part]
        on_canonical[part] = resized
    if smoothing_mm > 0:
        on_canonical = smoothed_in_foreground(on_canonical, prepared.foreground_input, smoothing_mm,
                                              prepared.canonical.GetSpacing())
    return from_canonical(on_canonical, prepared.image)


def score_image(model: AnomalyModel, image: sitk.Image, mask: sitk.Image | None = None,
                device: torch.device | None = None, batch_size: int = 32,
                progress: ProgressFn | None = None, source: str = "image") -> VolumeScores:
    """Prepares and scores an in-memory float32 3D image (and optional mask on its grid)."""
    device = device or torch.device("cpu")
    prepared = prepare_image(image, model.config.preprocess, mask, source=source, min_pixels=min_pixels(model.config))
    return score_prepared(model.to(device), prepared, device, batch_size, progress)


def min_pixels(cfg: object) -> int:
    """The smallest slice side the model's method takes (preprocessing refuses smaller volumes)."""
    return get(cfg.method).min_pixels(cfg)
