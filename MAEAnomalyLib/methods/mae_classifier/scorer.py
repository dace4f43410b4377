"""The method's scorer: each slice masked and reconstructed (the paper's averaged masked passes), the
classifier's probability on |reconstruction - original|, the MAE's error and SSIM beside it, and the
anomaly map: the difference divided by the spread of the MAE's predictions (plus a floor)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics.regression import compute_ssim_and_cs

from ...core.runtime import autocast, seeded_generator
from ..base import Scorer, SliceScores, masked_mean
from ..model import AnomalyModel
from .classifier import anomaly_probability, classifier_input
from .reconstruction import average_reconstructions, masked_passes

SSIM_KERNEL = 7
SCORING_SEED = 0


def masked_ssim(recon: torch.Tensor, original: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (data range 1) over the foreground of each (N, 1, S, S) slice; 1 where none is left."""
    ssim_map, _ = compute_ssim_and_cs(recon.float(), original.float(), spatial_dims=2,
                                      kernel_size=(SSIM_KERNEL, SSIM_KERNEL), kernel_sigma=(1.5, 1.5))
    c = SSIM_KERNEL // 2
    inner = foreground[..., c:-c, c:-c].float()
    total = inner.sum(dim=(1, 2, 3))
    mean = (ssim_map * inner).sum(dim=(1, 2, 3)) / total.clamp(min=1)
    return torch.where(total > 0, mean, torch.ones_like(mean))


def anomaly_map(difference: torch.Tensor, spread: torch.Tensor, floor: float) -> torch.Tensor:
    """|reconstruction - original| divided by (the MAE's spread + ``floor``); unchanged when ``floor`` is 0."""
    return difference / (spread + floor) if floor > 0 else difference


def batch_slices(settings: object, batch_size: int) -> int:
    """With R reconstructions of each slice a batch holds ``batch_size // R`` slices: memory does not grow with R."""
    return max(1, batch_size // settings.score_reconstructions)


def make_scorer(model: AnomalyModel, device: torch.device) -> Scorer:
    """Scores a batch of slices. With ``score_reconstructions`` R > 1 each slice is reconstructed R times
    (other masks) and every score is the average over the R difference images."""
    s = model.config.settings
    samples = s.score_reconstructions

    @torch.inference_mode()
    def score(images: torch.Tensor, fg: torch.Tensor, idx: np.ndarray) -> SliceScores:
        images, fg = images.to(device), fg.to(device)
        with autocast(device):
            # Each slice's masks depend on the seed and the slice alone: the batch size never changes a score.
            passes = masked_passes(model.mae, images, s.reconstruction_passes * samples,
                                   per_image=[seeded_generator(SCORING_SEED, "score", int(k)) for k in idx])
            recon = average_reconstructions(passes, samples).float().flatten(0, 1)
            tiled_images, tiled_fg = images.repeat(samples, 1, 1, 1), fg.repeat(samples, 1, 1, 1)
            difference = (recon - tiled_images).abs()
            probs = anomaly_probability(model.classifier(classifier_input(difference, tiled_fg, s.classifier)))
        mean_difference = difference.view(samples, len(idx), *difference.shape[1:]).mean(dim=0)
        scores = {"probability": probs.view(samples, -1).mean(dim=0).cpu().numpy(),
                  "mae_l1": masked_mean(mean_difference, fg).cpu().numpy(),
                  "ssim": masked_ssim(recon, tiled_images, tiled_fg).view(samples, -1).mean(dim=0).cpu().numpy()}
        diff, spread = (mean_difference * fg).cpu(), (passes.spread() * fg).cpu()
        return SliceScores(scores, anomaly_map(diff, spread, s.spread_floor), {"difference": diff, "spread": spread})

    return score
