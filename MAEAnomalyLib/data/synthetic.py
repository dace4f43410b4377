"""Generated brain-like head volumes, with optional lesions, for the demo and the tests.

Each subject has a scalp, a dark skull, a brain with cortex, white matter and ventricles, smooth
texture, background noise and a random intensity scale, so that the whole pipeline is exercised
without real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

SHAPE = (40, 64, 64)  # (Z, Y, X) of the canonical (LPS) array
SPACING = (3.0, 3.0, 3.0)  # (x, y, z) in mm


@dataclass
class Subject:
    """A generated head: the image, its brain mask, and a label map (lesion voxels = 1)."""

    image: sitk.Image
    brain_mask: sitk.Image
    label: sitk.Image

    def write(self, directory: str | Path, name: str) -> tuple[Path, Path, Path]:
        """Writes ``name.nii.gz``, ``name_brainmask.nii.gz`` and ``name_label.nii.gz``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = (directory / f"{name}.nii.gz", directory / f"{name}_brainmask.nii.gz",
                 directory / f"{name}_label.nii.gz")
        for image, path in zip((self.image, self.brain_mask, self.label), paths, strict=True):
            sitk.WriteImage(image, str(path), useCompression=True)
        return paths


def _ellipsoid(grid: tuple[np.ndarray, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))


def make_subject(seed: int, lesion: bool = False, shape: tuple[int, int, int] = SHAPE,
                 orientation: str = "LPS", lesion_radius: tuple[float, float] = (5.0, 8.0)) -> Subject:
    """Generates one subject; ``orientation`` is the DICOM-style code of the stored axes
    (``"LPS"`` axial, ``"PSR"`` sagittal like the IXI files)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    grid = (z, y, x)
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-1.5, 1.5, 3)
    head = np.array(shape, dtype=np.float32) * rng.uniform(0.40, 0.46, 3)
    r_head = _ellipsoid(grid, centre, head)
    r_skull = _ellipsoid(grid, centre, head - 2.0)
    r_brain = _ellipsoid(grid, centre, head - 3.5)
    r_wm = _ellipsoid(grid, centre, (head - 3.5) * rng.uniform(0.68, 0.78))
    vent_offset = np.array([0, 0, head[2] * rng.uniform(0.16, 0.20)])
    vent_radii = head * np.array([0.30, 0.30, 0.15]) * rng.uniform(0.9, 1.1)
    ventricles = (_ellipsoid(grid, centre - vent_offset, vent_radii) <= 1) | (
        _ellipsoid(grid, centre + vent_offset, vent_radii) <= 1)

    texture = gaussian_filter(rng.normal(size=shape), 1.5).astype(np.float32)
    texture /= texture.std() + 1e-6
    volume = np.zeros(shape, dtype=np.float32)
    volume[r_head <= 1] = 0.55  # scalp
    volume[r_skull <= 1] = 0.08  # skull
    brain = r_brain <= 1
    volume[brain] = 0.50  # cortex
    volume[r_wm <= 1] = 0.78  # white matter
    volume[ventricles & brain] = 0.18
    volume += brain * 0.04 * texture
    label = np.zeros(shape, dtype=np.uint8)
    if lesion:
        inside = np.argwhere((r_wm <= 0.8) & ~ventricles)
        spot = inside[rng.integers(len(inside))].astype(np.float32)
        radius = rng.uniform(*lesion_radius)
        r_lesion = _ellipsoid(grid, spot, np.array([radius * 0.8, radius, radius]))
        blob = np.clip(1.2 - r_lesion, 0, 1) * brain
        volume += 0.6 * blob  # hyperintense, like oedema on FLAIR
        label[(blob > 0.2)] = 1
    volume = gaussian_filter(volume, 0.6)
    volume += np.abs(rng.normal(0, 0.02, shape)).astype(np.float32)  # Rician-like background noise
    volume = volume * rng.uniform(300, 1200) + rng.uniform(0, 50)

    def to_image(array: np.ndarray, pixel: int) -> sitk.Image:
        image = sitk.Cast(sitk.GetImageFromArray(array), pixel)
        image.SetSpacing(SPACING)
        image.SetOrigin((-SPACING[0] * shape[2] / 2, -SPACING[1] * shape[1] / 2, -SPACING[2] * shape[0] / 2))
        return image if orientation == "LPS" else sitk.DICOMOrient(image, orientation)

    return Subject(to_image(volume, sitk.sitkFloat32), to_image(brain.astype(np.uint8), sitk.sitkUInt8),
                   to_image(label, sitk.sitkUInt8))


def write_cohort(directory: str | Path, healthy: int, lesioned: int, seed: int = 0
                 ) -> tuple[list[tuple[Path, Path, Path]], list[tuple[Path, Path, Path]]]:
    """Writes ``healthy`` lesion-free and ``lesioned`` lesioned subjects; every third one is stored
    sagittally to exercise reorientation. Returns the (image, brain mask, label) paths of each group."""
    out: tuple[list, list] = ([], [])
    for i in range(healthy + lesioned):
        lesion = i >= healthy
        orientation = "PSR" if i % 3 == 2 else "LPS"
        subject = make_subject(seed * 1000 + i, lesion=lesion, orientation=orientation)
        name = f"{'lesion' if lesion else 'healthy'}{i:03d}"
        out[lesion].append(subject.write(directory, name))
    return out
