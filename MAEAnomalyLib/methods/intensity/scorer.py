"""The intensity method's scorer; also the code of the intensity baseline column of every method's table."""

from __future__ import annotations

import numpy as np
import torch

from ..base import Scorer, SliceScores


def intensity_percentile(slices: np.ndarray, foreground: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """The ``percentile`` of each (N, 1, S, S) slice's normalised intensity inside its foreground (0 without)."""
    out = np.zeros(len(slices))
    for k in np.flatnonzero(foreground.any(axis=(1, 2, 3))):
        out[k] = np.percentile(slices[k][foreground[k]], percentile)
    return out


def make_scorer(model: object, device: torch.device) -> Scorer:
    """Scores on the CPU (nothing to compute on a device): the 99.5th percentile and the masked intensity."""
    def score(images: torch.Tensor, fg: torch.Tensor, idx: np.ndarray) -> SliceScores:
        images, fg = images.cpu(), fg.cpu()
        value = intensity_percentile(images.numpy(), fg.numpy())
        return SliceScores({"intensity_p995": value}, images * fg)

    return score
