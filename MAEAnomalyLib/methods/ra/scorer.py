"""The method's scorer: the pseudo-healthy slice D(μ(x)), the anomaly map (``ra.anomaly_map``: the authors'
perceptual map with the shipped LPIPS network, or the plain residual) and its mean."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..base import Scorer, SliceScores, masked_mean
from ..model import AnomalyModel
from .anomaly_map import anomaly_map, residual_map
from .lpips import load_lpips


def make_scorer(model: AnomalyModel, device: torch.device) -> Scorer:
    """Scores a batch of slices in float32. The code decoded is the mean μ, never a sample, and the batch
    norms use their running statistics: a slice's scores and map are the same in any batch."""
    s = model.config.settings
    net = model.ra.to(device).eval()
    if s.anomaly_map == "residual":
        make_map = residual_map
    else:
        make_map = partial(anomaly_map, clip=s.clahe_clip, tiles=s.clahe_tiles, lpips=load_lpips().to(device))

    @torch.inference_mode()
    def score(images: torch.Tensor, fg: torch.Tensor, idx: np.ndarray) -> SliceScores:
        images, fg = images.to(device).float(), fg.to(device)
        pseudo = net.pseudo_healthy(images)
        amap = make_map(pseudo, images, fg)
        # The authors' image score is the map's mean over the whole slice; ours is over the brain, where the
        # map is defined, so that a small brain section (the brain's ends) does not lower it.
        scores = {"ra_map_mean": masked_mean(amap, fg).cpu().numpy(),
                  "ra_l1": masked_mean((pseudo - images).abs(), fg).cpu().numpy()}
        return SliceScores(scores, amap.cpu())

    return score
