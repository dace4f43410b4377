"""The patches of a slice: where they lie, noising one patch while the rest stays clean, and putting the
reconstructed patches back together, averaged where they overlap."""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler


def origins(size: int, patch: int, stride: int) -> list[tuple[int, int]]:
    """The top-left corners of ``patch``-sized squares every ``stride`` pixels, row by row; a last row and
    column flush with the far edges, so that every pixel is covered."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return [(y, x) for y in starts for x in starts]


def patch_masks(size: int, patch: int, corners: list[tuple[int, int]]) -> torch.Tensor:
    """(P, 1, size, size): 1 inside each patch, 0 elsewhere."""
    masks = torch.zeros(len(corners), 1, size, size)
    for k, (y, x) in enumerate(corners):
        masks[k, :, y:y + patch, x:x + patch] = 1
    return masks


def make_scheduler(timesteps: int) -> DDPMScheduler:
    """pDDPM's forward process: the cosine schedule of T steps, the network predicting x₀."""
    return DDPMScheduler(num_train_timesteps=timesteps, schedule="cosine", prediction_type="sample")


def noise_patch(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """x₀ with only the pixels of ``mask`` taken forward to step ``t`` (√ᾱ_t·x₀ + √(1 − ᾱ_t)·ε)."""
    return torch.where(mask > 0, scheduler.add_noise(x0, noise, t), x0)


def stitch(predictions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, P, 1, S, S) predictions of N slices, each kept inside its patch (P masks (P, 1, S, S)) and
    averaged where patches overlap -> (N, 1, S, S)."""
    return (predictions * masks).sum(dim=1) / masks.sum(dim=0).clamp(min=1)
