"""One preprocessing path for training, scoring and evaluation: canonical axial slices, a foreground
mask, robust normalisation inside it, an optional crop to the foreground's bounding box, and square
padding plus resizing to the model's input size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import CenterSpatialCrop, Resize, ScaleIntensityRange, SpatialPad
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_numpy, convert_to_tensor

from ..core.config import PreprocessConfig
from ..core.errors import MAEAnomalyError
from .io import canonical_size, read_mask, read_volume, slice_positions_mm, to_canonical
from .standardisation import SLAB, standardise

# A background plateau (skull-stripped or zero-filled data) covers at least this share of voxels.
_PLATEAU_FRACTION = 0.2


@dataclass
class PreparedVolume:
    """A volume on its canonical grid, as the networks see it."""

    image: sitk.Image  # the input as read, on its own grid
    canonical: sitk.Image  # reoriented so that array[k] is axial slice k, inferior first
    slices: torch.Tensor  # (Z, 1, S, S) float32 in [0, 1], zero outside the foreground
    foreground: torch.Tensor  # (Z, 1, S, S) bool, the mask at model resolution
    foreground_input: np.ndarray  # (Z, Y, X) bool, the mask on the canonical grid
    foreground_fraction: np.ndarray  # (Z,) share of each slice's voxels that are foreground
    positions_mm: np.ndarray  # (Z,) superior world coordinate of each slice centre
    labelled: np.ndarray | None  # (Z,) True where the label map has any voxel > 0
    source: str
    window: tuple[slice, slice]  # (Y, X) part of each canonical slice that the networks see
    labelled_area_mm2: np.ndarray | None = None  # (Z,) in-plane area of each slice's labelled voxels

    @property
    def in_plane_shape(self) -> tuple[int, int]:
        size = self.canonical.GetSize()
        return size[1], size[0]

    def to_input_grid(self, stack: torch.Tensor) -> np.ndarray:
        """(N, 1, S, S) model-resolution slices -> (N, Y, X) on the canonical grid, zero outside the window."""
        out = np.zeros((len(stack), *self.in_plane_shape), dtype=np.float32)
        rows, cols = self.window
        out[:, rows, cols] = to_input_size(stack, (rows.stop - rows.start, cols.stop - cols.start))
        return out


def automatic_foreground(volume: np.ndarray) -> np.ndarray:
    """Foreground of a (Z, Y, X) array: everything off a constant background plateau, else Otsu's
    threshold cleaned to its largest connected component with holes filled."""
    values, counts = np.unique(volume, return_counts=True)
    top = counts.argmax()
    if counts[top] >= _PLATEAU_FRACTION * volume.size:
        return volume != values[top]
    image = sitk.GetImageFromArray(volume.astype(np.float32, copy=False))  # ITK copies it anyway
    mask = sitk.OtsuThreshold(image, 0, 1)
    mask = sitk.BinaryMorphologicalOpening(mask, [1, 1, 1])
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    mask = sitk.BinaryFillhole(components == 1)
    return sitk.GetArrayFromImage(mask).astype(bool)


def normalise(volume: np.ndarray, foreground: np.ndarray, cfg: PreprocessConfig, source: str) -> np.ndarray:
    """Maps the foreground's intensities to [0, 1] as ``cfg.normalisation`` says, clips, and zeroes the
    background: ``percentile`` maps its [lower, upper] percentiles; ``histogram`` is in ``standardisation``."""
    if cfg.normalisation == "histogram":
        if not cfg.landmarks:
            raise MAEAnomalyError("the model's histogram standardisation has no landmarks (train it again)", source)
        return standardise(volume, foreground, cfg.landmarks, source)
    if cfg.normalisation != "percentile":
        raise MAEAnomalyError(f"preprocess.normalisation {cfg.normalisation!r} is not one of "
                              f"{', '.join(PreprocessConfig.CHOICES['normalisation'])}", source)
    if not foreground.any():
        raise MAEAnomalyError("foreground mask is empty", source)
    # The masked copy is ours: sorting it in place gives the same percentiles without a second copy.
    lo, hi = np.percentile(volume[foreground], [cfg.lower_percentile, cfg.upper_percentile], overwrite_input=True)
    if hi <= lo:
        raise MAEAnomalyError("intensities inside the foreground are constant", source)
    scale = ScaleIntensityRange(a_min=float(lo), a_max=float(hi), b_min=0.0, b_max=1.0, clip=True)
    out = np.empty(volume.shape, dtype=np.float32)
    # A slab of slices at a time: element by element the same values, with the transform's float
    # temporaries the size of a slab instead of the volume's.
    for start in range(0, len(volume), SLAB):
        part = slice(start, start + SLAB)
        slab = np.array(volume[part])  # writable (torch refuses read-only views), a slab's copy only
        out[part] = convert_to_numpy(scale(slab), dtype=np.float32) * foreground[part]
    return out


def foreground_window(foreground: np.ndarray, margin: int) -> tuple[slice, slice]:
    """In-plane (Y, X) bounding box of a (Z, Y, X) mask over all its slices, widened by ``margin``
    voxels and clipped to the slice; one window per volume keeps the scale the same in every slice."""
    start, end = generate_spatial_bounding_box(foreground.any(axis=0)[None], margin=margin, allow_smaller=True)
    return slice(int(start[0]), int(end[0])), slice(int(start[1]), int(end[1]))


def _square(shape: tuple[int, int]) -> int:
    return max(shape)


def to_model_size(stack: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """(Z, Y, X) -> (Z, 1, size, size): pad symmetrically to a square, then resize."""
    side = _square(stack.shape[1:])
    padded = SpatialPad((side, side), method="symmetric")(torch.as_tensor(stack, dtype=torch.float32))
    kwargs = {"anti_aliasing": False} if mode == "nearest" else {}
    resized = Resize((size, size), mode=mode, **kwargs)(padded)
    return convert_to_tensor(resized, track_meta=False).unsqueeze(1)


def slabs_to_model_size(stack: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """``to_model_size`` of a (Z, Y, X) array (any dtype, as float32) a slab at a time: each slice is
    resized on its own, so the slices are the same, and the float32 copy and padding are slabs."""
    return torch.cat([to_model_size(stack[k:k + SLAB].astype(np.float32), size, mode)
                      for k in range(0, len(stack), SLAB)])


def to_input_size(stack: torch.Tensor, in_plane: tuple[int, int]) -> np.ndarray:
    """Inverse of ``to_model_size``: (Z, 1, S, S) -> (Z, Y, X) on the canonical grid."""
    side = _square(in_plane)
    resized = Resize((side, side), mode="bilinear")(stack[:, 0].float())
    return convert_to_numpy(CenterSpatialCrop(in_plane)(resized), dtype=np.float32)


def check_slices_fit(image: sitk.Image, min_pixels: int, source: str) -> None:
    """Refuses a volume whose axial slices are smaller than one patch (before any costly step)."""
    nx, ny, _ = canonical_size(image)
    if min(nx, ny) < min_pixels:
        raise MAEAnomalyError(
            f"axial slices are {nx}x{ny} voxels, smaller than one {min_pixels}x{min_pixels} patch", source)


def prepare_image(image: sitk.Image, cfg: PreprocessConfig, mask: sitk.Image | None = None,
                  labels: sitk.Image | None = None, source: str = "image", min_pixels: int = 1) -> PreparedVolume:
    """Prepares a float32 3D image (and optional mask and label map on its grid) for the networks."""
    check_slices_fit(image, min_pixels, source)
    canonical = to_canonical(image)
    nx, ny, _ = canonical.GetSize()
    volume = sitk.GetArrayViewFromImage(canonical)  # read only and no copy: ``canonical`` outlives it
    if mask is not None:
        canonical_mask = to_canonical(mask)  # held: a view is valid only while its image lives
        foreground = sitk.GetArrayViewFromImage(canonical_mask) > 0
        del canonical_mask
        if not foreground.any():
            raise MAEAnomalyError("mask is empty", source)
    else:
        foreground = automatic_foreground(volume)
    labelled = labelled_area = None
    if labels is not None:
        canonical_labels = to_canonical(labels)
        labelled_voxels = (sitk.GetArrayViewFromImage(canonical_labels) > 0).sum(axis=(1, 2))
        labelled = labelled_voxels > 0
        spacing = canonical.GetSpacing()
        labelled_area = labelled_voxels * float(spacing[0] * spacing[1])
    normalised = normalise(volume, foreground, cfg, source)
    window = (slice(0, ny), slice(0, nx))
    if cfg.crop_to_foreground:
        window = foreground_window(foreground, cfg.crop_margin)
    in_window = (slice(None), *window)
    return PreparedVolume(
        image=image,
        canonical=canonical,
        slices=slabs_to_model_size(normalised[in_window], cfg.image_size, mode="area"),
        foreground=slabs_to_model_size(foreground[in_window], cfg.image_size, mode="nearest") > 0.5,
        foreground_input=foreground,
        foreground_fraction=foreground.mean(axis=(1, 2)),
        positions_mm=slice_positions_mm(canonical),
        labelled=labelled,
        source=source,
        window=window,
        labelled_area_mm2=labelled_area,
    )


def prepare(image_path: str | Path, cfg: PreprocessConfig, mask_path: str | Path | None = None,
            label_path: str | Path | None = None, min_pixels: int = 1) -> PreparedVolume:
    """Reads an image (and optional mask and label map) and prepares it for the networks."""
    image = read_volume(image_path)
    mask = None if mask_path is None else read_mask(mask_path, image)
    labels = None if label_path is None else read_mask(label_path, image, kind="label map")
    return prepare_image(image, cfg, mask, labels, str(image_path), min_pixels)
