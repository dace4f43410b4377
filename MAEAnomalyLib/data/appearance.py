"""Scanner-appearance changes of a volume: what another scanner or protocol does to the same anatomy.

Each change is one of MONAI's intensity transforms at a fixed setting (bias field, gamma, histogram shift,
in-plane blur, Rician noise) or a plain average (thick slices). Only intensities change: the brain mask and
the anatomy stay where they are, so that lesion labels and brain masks remain valid. MONAI (and with it
torch) is imported inside the functions, so that importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BIAS_DEGREE = 3  # MONAI's RandBiasField default: a smooth field with a few broad swings across the head
HISTOGRAM_TOP = 99.0  # the brain percentile that maps to the histogram curve's upper end (1.0)


@dataclass(frozen=True)
class Appearance:
    """One fixed appearance; the defaults change nothing.

    ``gamma``: exponent of MONAI's AdjustContrast. ``histogram``: where the equally spaced interior points of
    [0, brain 99th percentile] go (increasing, in (0, 1)); above it the intensities are unchanged.
    ``bias``: standard deviation inside the brain of the log of a polynomial bias field. ``blur_mm``:
    in-plane Gaussian sigma in mm. ``thick``: axial slices averaged together (a ``thick`` times thicker
    acquisition on the same grid). ``noise``: Rician noise sigma as a share of the brain's median intensity.
    """

    gamma: float = 1.0
    histogram: tuple[float, ...] = field(default=())
    bias: float = 0.0
    blur_mm: float = 0.0
    thick: int = 1
    noise: float = 0.0

    def __post_init__(self) -> None:
        points = np.array([0.0, *self.histogram, 1.0])
        if np.any(np.diff(points) <= 0):
            raise ValueError(f"histogram points must increase inside (0, 1), got {self.histogram}")
        if self.gamma <= 0 or self.bias < 0 or self.blur_mm < 0 or self.thick < 1 or self.noise < 0:
            raise ValueError(f"invalid appearance {self}")


# Fixed sites, each outside what a training-time augmentation would typically draw (gamma 0.5 and 2.0, a
# 6 mm slice on a 2 mm grid, a strong field), so that a model cannot have seen exactly these.
SIMULATED_SITES: dict[str, Appearance] = {
    "bias_gamma": Appearance(gamma=2.0, bias=0.25),
    "noisy_low_contrast": Appearance(gamma=0.5, noise=0.08, blur_mm=0.8),  # 1.5T-like: flat contrast, low SNR
    "thick_blur": Appearance(thick=3, blur_mm=1.5),
    "histogram_bias": Appearance(histogram=(0.4, 0.62, 0.82), bias=0.2),  # dark tissue lifted: less contrast
    "combined": Appearance(gamma=1.6, bias=0.15, thick=2, blur_mm=1.0, noise=0.05),
}


def bias_field(shape: tuple[int, ...], brain: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """A multiplicative field exp(f): f a MONAI Legendre polynomial of seeded coefficients, rescaled to mean
    0 and standard deviation ``strength`` inside the brain (so the setting means the same on any grid)."""
    from monai.transforms import RandBiasField
    from monai.utils import convert_to_numpy

    transform = RandBiasField(degree=BIAS_DEGREE, coeff_range=(-1.0, 1.0), prob=1.0)
    transform.set_random_state(seed)
    log_field = np.log(convert_to_numpy(transform(np.ones((1, *shape), np.float32)))[0].astype(np.float64))
    inside = log_field[brain]
    spread = inside.std()
    if spread == 0:
        return np.ones(shape, np.float32)
    return np.exp((log_field - inside.mean()) * (strength / spread)).astype(np.float32)


def thick_slices(volume: np.ndarray, k: int) -> np.ndarray:
    """Each group of ``k`` axial slices (axis 0, from slice 0; the last group may be shorter) replaced by
    its mean: the through-plane resolution of a ``k`` times thicker slice, on the same grid."""
    starts = np.arange(0, volume.shape[0], k)
    counts = np.diff(np.append(starts, volume.shape[0]))
    means = np.add.reduceat(volume, starts, axis=0) / counts.reshape(-1, *([1] * (volume.ndim - 1)))
    return np.repeat(means, counts, axis=0).astype(volume.dtype)


def apply_appearance(volume: np.ndarray, brain: np.ndarray, spacing: tuple[float, float, float],
                     appearance: Appearance, seed: int) -> np.ndarray:
    """``volume`` (Z, Y, X, axial slices along Z) as ``appearance`` would show it; ``spacing`` is mm per
    voxel in the same (Z, Y, X) order (SimpleITK's ``GetSpacing()`` reversed) and ``brain`` a bool mask of the
    same shape. ``seed`` fixes the bias field's shape and the noise. Returns a new array of ``volume``'s
    dtype, non-negative (negative input values are clipped: magnitude images have none); inputs unchanged."""
    from monai.transforms import AdjustContrast, GaussianSmooth, RandHistogramShift, RandRicianNoise
    from monai.utils import convert_to_numpy

    brain = np.asarray(brain, bool)
    if brain.shape != volume.shape or not brain.any():
        raise ValueError(f"the brain mask must be a non-empty mask of the volume's shape {volume.shape}")
    bias_seed, noise_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    out = np.clip(volume, 0, None).astype(np.float32)  # a copy: the caller's array is never written
    # Contrast first (the tissue signal of another sequence), then the coil's field multiplies it, then the
    # acquisition's resolution, and thermal noise last, added to the complex signal (hence Rician).
    if appearance.gamma != 1.0:
        out = convert_to_numpy(AdjustContrast(appearance.gamma)(out)).astype(np.float32)
    if appearance.histogram:
        lo, hi, top = float(out.min()), float(out.max()), float(np.percentile(out[brain], HISTOGRAM_TOP))
        if hi > lo:  # MONAI's control points span [min, max]; ours span [min, brain top], identity above
            scale = (top - lo) / (hi - lo)
            tail = [1.0] if scale < 1 else []
            shift = RandHistogramShift(num_control_points=len(appearance.histogram) + 2, prob=1.0)
            shift.reference_control_points = np.array(
                [0.0, *(np.linspace(0, 1, len(appearance.histogram) + 2)[1:-1] * scale), scale, *tail])
            shift.floating_control_points = np.array([0.0, *(np.array(appearance.histogram) * scale), scale, *tail])
            out = convert_to_numpy(shift(out, randomize=False)).astype(np.float32)
    if appearance.bias > 0:
        out *= bias_field(out.shape, brain, appearance.bias, bias_seed)
    if appearance.blur_mm > 0:  # the axial slices as channels: a 2D Gaussian within each slice
        sigma = [appearance.blur_mm / float(d) for d in spacing[1:]]
        out = convert_to_numpy(GaussianSmooth(sigma)(out)).astype(np.float32)
    if appearance.thick > 1:
        out = thick_slices(out, appearance.thick)
    if appearance.noise > 0:
        noise = RandRicianNoise(prob=1.0, std=appearance.noise * float(np.median(out[brain])), sample_std=False)
        noise.set_random_state(noise_seed)
        out = convert_to_numpy(noise(out)).astype(np.float32)
    return np.clip(out, 0, None).astype(volume.dtype, copy=False)
