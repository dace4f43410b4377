"""Per-slice anomaly scores and the difference map for one volume."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics.regression import compute_ssim_and_cs
from scipy.ndimage import gaussian_filter

from ..calibration.position import brain_position, calibrated
from ..core.config import SegmentationConfig
from ..core.model_io import AnomalyModel
from ..core.runtime import autocast, seeded_generator
from ..data.io import from_canonical
from ..data.preprocessing import PreparedVolume, prepare_image
from ..methods.mae_classifier.classifier import anomaly_probability, classifier_input
from ..methods.mae_classifier.reconstruction import average_reconstructions, masked_passes

SSIM_KERNEL = 7
SCORING_SEED = 0
SLAB = 16  # slices per step where a full-resolution map is built slab by slab

ProgressFn = Callable[[float], None]


@dataclass
class VolumeScores:
    """The slice table, the difference map on the input's grid, and what the report needs."""

    table: dict[str, np.ndarray]
    difference: sitk.Image
    threshold: float
    prepared: PreparedVolume
    difference_slices: torch.Tensor  # (Z, 1, S, S) at model resolution, for the report
    # (Z, 1, S, S): the spread of the MAE's predictions per pixel (MaskedPasses.spread), for the map.
    spread_slices: torch.Tensor | None = None
    # What the anomaly segmentation (scoring.segmentation) needs; None in models without voxel calibration.
    voxel_threshold: float | None = None
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


def masked_ssim(recon: torch.Tensor, original: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (data range 1) over the foreground of each (N, 1, S, S) slice; 1 where none is left."""
    ssim_map, _ = compute_ssim_and_cs(recon.float(), original.float(), spatial_dims=2,
                                      kernel_size=(SSIM_KERNEL, SSIM_KERNEL), kernel_sigma=(1.5, 1.5))
    c = SSIM_KERNEL // 2
    inner = foreground[..., c:-c, c:-c].float()
    total = inner.sum(dim=(1, 2, 3))
    mean = (ssim_map * inner).sum(dim=(1, 2, 3)) / total.clamp(min=1)
    return torch.where(total > 0, mean, torch.ones_like(mean))


def masked_mean(values: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    fg = foreground.float()
    return (values * fg).sum(dim=(1, 2, 3)) / fg.sum(dim=(1, 2, 3)).clamp(min=1)


def intensity_p995(prepared: PreparedVolume) -> np.ndarray:
    """Non-learned baseline: the 99.5th percentile of normalised intensity inside the foreground."""
    out = np.zeros(len(prepared.foreground_fraction))
    slices, fg = prepared.slices[:, 0].numpy(), prepared.foreground[:, 0].numpy()
    for k in np.flatnonzero(fg.any(axis=(1, 2))):
        out[k] = np.percentile(slices[k][fg[k]], 99.5)
    return out


@torch.inference_mode()
def score_prepared(model: AnomalyModel, prepared: PreparedVolume, device: torch.device,
                   batch_size: int = 32, progress: ProgressFn | None = None) -> VolumeScores:
    """Scores every slice with foreground; slices without foreground are flagged and skipped.

    With ``train.score_reconstructions`` R > 1 each slice is reconstructed R times (other masks) and
    every column is the average over the R difference images; batches then hold ``batch_size // R``
    slices, so that memory does not grow with R.
    """
    cfg = model.config
    samples = cfg.train.score_reconstructions
    n = prepared.slices.shape[0]
    skipped = prepared.foreground_fraction == 0
    keep = np.flatnonzero(~skipped)
    score, l1, ssim = np.zeros(n), np.zeros(n), np.ones(n)
    diff, spread = torch.zeros_like(prepared.slices), torch.zeros_like(prepared.slices)
    step = max(1, batch_size // samples)
    for start in range(0, len(keep), step):
        idx = keep[start:start + step]
        images = prepared.slices[idx].to(device)
        fg = prepared.foreground[idx].to(device)
        with autocast(device):
            # Each slice's masks depend on the seed and the slice alone: the batch size never changes a score.
            passes = masked_passes(model.mae, images, cfg.train.reconstruction_passes * samples,
                                   per_image=[seeded_generator(SCORING_SEED, "score", int(k)) for k in idx])
            recon = average_reconstructions(passes, samples).float().flatten(0, 1)
            tiled_images, tiled_fg = images.repeat(samples, 1, 1, 1), fg.repeat(samples, 1, 1, 1)
            difference = (recon - tiled_images).abs()
            probs = anomaly_probability(model.classifier(classifier_input(difference, tiled_fg, cfg.classifier)))
        mean_difference = difference.view(samples, len(idx), *difference.shape[1:]).mean(dim=0)
        score[idx] = probs.view(samples, -1).mean(dim=0).cpu().numpy()
        l1[idx] = masked_mean(mean_difference, fg).cpu().numpy()
        ssim[idx] = masked_ssim(recon, tiled_images, tiled_fg).view(samples, -1).mean(dim=0).cpu().numpy()
        diff[idx] = (mean_difference * fg).cpu()
        spread[idx] = (passes.spread() * fg).cpu()
        if progress is not None:
            progress(min(1.0, (start + len(idx)) / max(1, len(keep))))
    threshold = float(cfg.threshold) if cfg.threshold is not None else float("inf")
    fraction = prepared.foreground_fraction
    reference = cfg.position_reference
    table = {
        "slice_index": np.arange(n),
        "position_mm": prepared.positions_mm,
        # With a position reference the thresholded score is the probability calibrated against healthy
        # slices at the same height in the brain; the raw probability stays as a column.
        "score": calibrated(score, fraction, reference, "probability") if reference else score,
        "probability": score,
        "mae_l1": l1,
        "mae_l1_position": calibrated(l1, fraction, reference, "mae_l1") if reference else np.full(n, np.nan),
        "ssim": ssim,
        "intensity_p995": intensity_p995(prepared),
        "foreground_fraction": prepared.foreground_fraction,
        "brain_position": brain_position(fraction),
        "abnormal": np.zeros(n, dtype=int),
        "skipped": skipped.astype(int),
    }
    table["abnormal"] = ((table["score"] >= threshold) & ~skipped).astype(int)
    seg = cfg.segmentation
    difference = difference_image(anomaly_map(diff, spread, seg.spread_floor), prepared, seg.smoothing_mm)
    return VolumeScores(table, difference, threshold, prepared, diff, spread, cfg.voxel_threshold, seg)


def anomaly_map(difference: torch.Tensor, spread: torch.Tensor, floor: float) -> torch.Tensor:
    """|reconstruction - original| divided by (the MAE's spread + ``floor``); unchanged when ``floor`` is 0."""
    return difference / (spread + floor) if floor > 0 else difference


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
    prepared = prepare_image(image, model.config.preprocess, mask, source=source,
                             min_pixels=model.config.mae.patch_size)
    return score_prepared(model.to(device), prepared, device, batch_size, progress)
