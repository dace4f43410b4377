"""Appearance-robust training: each training slice shown as some other scanner might show it.

A normalised slice (values in [0, 1], zero outside the foreground) gets a random gamma, a smooth bias field,
a histogram shift, in-plane blur or lower resolution, and Rician noise, each with its own probability, from
MONAI's random intensity transforms. The foreground mask and the anatomy stay where they are; only
intensities change, and the result is clipped to [0, 1] and zero outside the foreground again.

The appearance of a slice is fixed by (seed, slice index): whatever reads the slice (the MAE's training,
its reconstructions, the classifier's original) sees the same image, so a method's reconstruction and what
it is compared with always share one appearance. Thick slices cannot be simulated from one slice; the
in-plane loss of resolution stands in for them. The ranges stop short of the fixed sites of
``data.appearance.SIMULATED_SITES`` (gamma 0.5, 1.6 and 2.0, for instance), on which settings are chosen.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.runtime import derived_seed

GAMMA = (0.7, 1.5)
BIAS_COEFFICIENTS = (0.0, 0.2)  # of MONAI's degree-3 Legendre field, exponentiated: up to about ±30 %
BLUR_PX = (0.25, 1.0)
ZOOM = (0.5, 1.0)  # simulated acquisition at this share of the resolution, then upsampled
NOISE = 0.04  # Rician noise SD drawn up to this, in units of the normalised range
TRANSFORM_PROBABILITY = 0.5


def appearance_transform() -> Any:
    """The random transforms in the order a scanner applies them: tissue contrast, coil field, resolution,
    thermal noise. MONAI is imported here, so that importing this module stays cheap."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandBiasField,
        RandGaussianSmooth,
        RandHistogramShift,
        RandRicianNoise,
        RandSimulateLowResolution,
    )

    p = TRANSFORM_PROBABILITY
    return Compose([
        RandHistogramShift(prob=p, num_control_points=(5, 8)),  # first: on numpy it is several times faster
        RandAdjustContrast(prob=p, gamma=GAMMA),
        RandBiasField(prob=p, degree=3, coeff_range=BIAS_COEFFICIENTS),
        RandGaussianSmooth(prob=p / 2, sigma_x=BLUR_PX, sigma_y=BLUR_PX),
        RandSimulateLowResolution(prob=p / 2, zoom_range=ZOOM, upsample_mode="bilinear"),
        RandRicianNoise(prob=p, std=NOISE, sample_std=True),
    ])


def random_appearance(image: torch.Tensor, foreground: torch.Tensor, seed: int, transform: Any = None) -> torch.Tensor:
    """``image`` (1, S, S) in [0, 1] under the appearance that ``seed`` draws; ``foreground`` (1, S, S) bool.
    Returns a new float32 tensor in [0, 1], zero outside the foreground; the inputs are unchanged."""
    from monai.utils import convert_to_tensor

    transform = transform if transform is not None else appearance_transform()
    transform.set_random_state(seed=seed)
    # On a numpy copy: several of these transforms are a few times faster on numpy than on tensors.
    changed = transform(image.numpy().astype("float32", copy=True))
    out = convert_to_tensor(changed, track_meta=False, dtype=torch.float32)
    return out.clamp(0, 1) * foreground


class AppearanceRows:
    """Training rows (``data.slice_cache.SliceRows``) whose slices each carry a random appearance with
    probability ``probability``; everything else (masks, lengths) is the rows' own."""

    def __init__(self, rows: Any, probability: float, seed: int) -> None:
        self.rows, self.probability, self.seed = rows, probability, seed
        self._transform: Any = None  # built on first use, in each DataLoader worker

    def __len__(self) -> int:
        return len(self.rows)

    def __getattr__(self, name: str) -> Any:  # files, volume, row, nbytes, read_foreground …
        if name == "rows":  # not set yet (while unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.rows, name)

    def changed(self, index: int) -> bool:
        draw = torch.rand(1, generator=torch.Generator().manual_seed(derived_seed(self.seed, "appearance?", index)))
        return bool(draw < self.probability)

    def read(self, index: int) -> torch.Tensor:
        image = self.rows.read(index)
        if not self.changed(index):
            return image
        if self._transform is None:
            self._transform = appearance_transform()
        return random_appearance(image, self.rows.read_foreground(index),
                                 derived_seed(self.seed, "appearance", index) % 2**32, self._transform)
