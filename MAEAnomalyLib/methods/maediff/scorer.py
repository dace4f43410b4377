"""The method's scorer: every patch of every slice noised to the test step and reconstructed in one network
pass (no iterative sampling), the patches averaged where they overlap, and the map |x − x̂| in the
foreground."""

from __future__ import annotations

import numpy as np
import torch

from ...core.runtime import seeded_generator as generator
from ..base import Scorer, SliceScores, masked_mean
from ..model import AnomalyModel
from .patches import make_scheduler, noise_patch, origins, patch_masks, stitch


def patches_per_slice(size: int, patch: int, stride: int) -> int:
    """How many network passes a slice costs: ((size − patch) / stride + 1)², rounded up."""
    return len(origins(size, patch, stride))


def make_scorer(model: AnomalyModel, device: torch.device) -> Scorer:
    """Scores a batch of slices in float32; each slice's noise is seeded by its index, so a slice's
    scores and map are the same in any batch."""
    s, size, seed = model.config.settings, model.config.preprocess.image_size, model.config.train.seed
    net = model.unet.to(device).eval()
    scheduler = make_scheduler(s.timesteps)
    masks = patch_masks(size, s.patch, origins(size, s.patch, s.stride)).to(device)
    patches = len(masks)

    @torch.inference_mode()
    def score(images: torch.Tensor, fg: torch.Tensor, idx: np.ndarray) -> SliceScores:
        images, fg = images.to(device).float(), fg.to(device)
        n = len(images)
        noise = torch.stack([torch.randn(patches, 1, size, size, generator=generator(seed, "maediff-score", int(i)))
                             for i in idx]).to(device)
        x0 = (images * 2 - 1)[:, None].expand(-1, patches, -1, -1, -1)
        every_mask = masks[None].expand(n, -1, -1, -1, -1)
        t = torch.full((n * patches,), s.test_step, device=device, dtype=torch.long)
        x0_flat, noise_flat, mask_flat = (x.reshape(n * patches, 1, size, size) for x in (x0, noise, every_mask))
        predictions = net(noise_patch(scheduler, x0_flat, noise_flat, t, mask_flat), t, mask_flat)
        reconstruction = (stitch(predictions.reshape(n, patches, 1, size, size), masks) + 1) / 2
        amap = (images - reconstruction).abs() * fg
        scores = {f"{model.config.method}_l1": masked_mean(amap, fg).cpu().numpy()}
        return SliceScores(scores, amap.cpu())

    return score
