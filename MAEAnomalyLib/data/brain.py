"""The brain as the foreground: a mask file, the volume's own background when it is already
skull-stripped, or deepbet's brain extraction (MIT; its weights ship inside its wheel)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..core.config import PreprocessConfig
from ..core.errors import MAEAnomalyError
from .io import from_canonical, read_mask, read_volume, to_canonical
from .preprocessing import PreparedVolume, check_slices_fit, prepare_image

BRAIN_MASK_MODES = ("auto", "none")
# A skull-stripped volume is a brain on a constant background: its non-background part is brain-sized.
# Adult brains are 1.0-1.8 L; a head with skull and scalp is 3 L or more.
MAX_BRAIN_LITRES = 2.5
_PLATEAU_FRACTION = 0.2
# ...and whole: a slab or crop of a head (skull and scalp on) also has a small non-background part, but the
# volume's edge cuts it where it is wide. Real stripped brains end inside their volume (IXI masked, BraTS:
# at most 0.1% of the widest cross-section lies on a face; benchmarks/brain_extraction_check.py).
_MAX_CUT_FRACTION = 0.5

# What deepbet extracts must look like an adult brain, or scoring would use a wrong mask without a word: a
# refusal names the volume and the way out (--brain-mask PATH or none). deepbet's mask is the intracranial
# brain (its authors report its volume as the TIV); adult intracranial volume is about 1.1-1.9 L (Buckner et al.,
# NeuroImage 23:724, 2004) and the brain about 150-190 mm long. The limits lie far outside these so that no real
# brain is refused: on 8 IXI heads and 12 brats2015 volumes deepbet gives 1.21-1.58 L, one piece, 148-176 mm,
# fill 0.43-0.50, contrast 0.47-0.93 (benchmarks/brain_extraction_check.py); the generated heads go down to
# 0.75 L. Noise (contrast 0.01), a ramp (0.19), a chest (14 L), a head at 20 mm (286 L) and a 16-voxel crop
# (0.04 L) each fail one (Testing/library/test_brain_sanity.py).
EXTRACTED_LITRES = (0.6, 2.4)
_MAX_EXTENT_MM = 260.0  # the longest side of its bounding box, with room for a 45-degree oblique grid
_MIN_MAIN_COMPONENT = 0.9  # share of the mask in its largest (face-connected) piece
_MIN_FILL = 0.2  # share of its bounding box it fills (an ellipsoid fills 0.52)
_MIN_CONTRAST = 0.3  # Kolmogorov-Smirnov distance between intensities inside it and in the shell around it
_SHELL_MM = 8.0


@dataclass
class Foreground:
    """The mask to score with (None: the automatic head foreground) and whether it was extracted here."""

    mask: sitk.Image | None
    extracted: bool
    how: str

    @property
    def extracted_mask(self) -> sitk.Image | None:
        """The mask when it was extracted here (written beside the outputs), else None."""
        return self.mask if self.extracted else None


def _cut_by_the_edge(region: np.ndarray) -> bool:
    """True when a face of the volume cuts ``region`` where it is wide (a slab or a crop of it)."""
    for axis in range(region.ndim):
        areas = region.sum(axis=tuple(a for a in range(region.ndim) if a != axis))
        if max(areas[0], areas[-1]) > _MAX_CUT_FRACTION * areas.max():
            return True
    return False


def is_skull_stripped(image: sitk.Image) -> bool:
    """True for a whole brain on a constant background plateau, of brain size."""
    array = sitk.GetArrayViewFromImage(image)
    values, counts = np.unique(array, return_counts=True)
    top = counts.argmax()
    if counts[top] < _PLATEAU_FRACTION * array.size:
        return False
    litres = (array.size - counts[top]) * float(np.prod(image.GetSpacing())) / 1e6
    return litres <= MAX_BRAIN_LITRES and not _cut_by_the_edge(array != values[top])


def _ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The largest gap between the two samples' cumulative distributions (0: alike, 1: apart)."""
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, both, "right") / a.size - np.searchsorted(b, both, "right") / b.size).max())


def brain_measures(mask: np.ndarray, image: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Volume (L), pieces, share of the largest, longest side (mm), fill of the bounding box and contrast with
    the shell around it of ``mask`` extracted from ``image`` ((z, y, x) arrays; ``spacing`` (x, y, z) mm).
    All but the volume are measured on a grid of about 2 mm, which bounds memory and time on fine grids."""
    step = np.asarray(spacing, dtype=float)[::-1]
    voxels = int(np.count_nonzero(mask))
    result = {"litres": voxels * float(step.prod()) / 1e6, "pieces": 0, "largest": 0.0, "extent_mm": 0.0,
              "fill": 0.0, "contrast": 0.0}
    stride = tuple(max(1, int(2.0 // s)) for s in step)
    coarse = np.asarray(mask[tuple(slice(None, None, k) for k in stride)], dtype=bool)
    image = np.asarray(image[tuple(slice(None, None, k) for k in stride)])
    step = step * stride
    labels, pieces = ndimage.label(coarse)
    if not pieces:
        return result
    result.update(pieces=pieces, largest=float(np.bincount(labels.ravel())[1:].max() / coarse.sum()))
    box = ndimage.find_objects(coarse.astype(np.uint8))[0]
    sides = np.array([s.stop - s.start for s in box])
    result.update(extent_mm=float((sides * step).max()), fill=float(coarse.sum() / sides.prod()))
    grow = np.ceil(_SHELL_MM / step).astype(int) + 1  # the shell lies within the box grown by its width
    near = tuple(slice(max(0, s.start - g), s.stop + g) for s, g in zip(box, grow, strict=True))
    inside = coarse[near]
    shell = ~inside & (ndimage.distance_transform_edt(~inside, sampling=step) <= _SHELL_MM)
    if shell.any():
        result["contrast"] = _ks_distance(image[near][inside], image[near][shell])
    return result


def implausible_brain(mask: np.ndarray, image: np.ndarray, spacing: tuple[float, ...]) -> str | None:
    """Why ``mask`` (see ``brain_measures``) is not an adult brain, or None; each reason names its volume."""
    m = brain_measures(mask, image, spacing)
    litres = f"{m['litres']:.2f} L"
    low, high = EXTRACTED_LITRES
    if not low <= m["litres"] <= high:
        return f"{litres}, where an adult brain is {low:g}-{high:g} L"
    if m["largest"] < _MIN_MAIN_COMPONENT:
        return f"{litres} in {m['pieces']:.0f} pieces, the largest {m['largest']:.0%} of it"
    if m["extent_mm"] > _MAX_EXTENT_MM:
        return f"{litres} spanning {m['extent_mm']:.0f} mm, where a brain is under {_MAX_EXTENT_MM:.0f} mm long"
    if m["fill"] < _MIN_FILL:
        return f"{litres} filling {m['fill']:.0%} of its bounding box, where a brain fills about half"
    if m["contrast"] < _MIN_CONTRAST:
        return f"{litres} that does not stand out from its surroundings (contrast {m['contrast']:.2f})"
    return None


@functools.lru_cache(maxsize=2)
def _extractor(use_gpu: bool):
    from deepbet import BrainExtraction

    with warnings.catch_warnings():  # deepbet's TorchScript weights; torch >= 2.10 warns on every load
        warnings.simplefilter("ignore", FutureWarning)
        return BrainExtraction(no_gpu=not use_gpu)


def extract_brain(image: sitk.Image, device: torch.device | None = None) -> sitk.Image:
    """deepbet's brain mask of ``image``, as a uint8 image on exactly the image's grid."""
    lps = sitk.GetArrayFromImage(to_canonical(image)).astype(np.float32)  # (S, P, L) axes: z, y, x
    ras = np.ascontiguousarray(lps.transpose(2, 1, 0)[::-1, ::-1, :])  # deepbet works in RAS voxel order
    bet = _extractor(device is not None and device.type == "cuda")
    with torch.inference_mode():
        probability = bet.run_model(ras.copy())
    mask = bet.postprocess(probability > 0.5).astype(np.uint8)
    on_lps = np.ascontiguousarray(mask[::-1, ::-1, :].transpose(2, 1, 0))
    return sitk.Cast(from_canonical(on_lps, image), sitk.sitkUInt8)


def choose_foreground(image: sitk.Image, brain_mask: str | Path | None, source: str,
                      device: torch.device | None = None) -> Foreground:
    """``brain_mask``: a mask file, ``"auto"`` (None means auto) or ``"none"`` (the head foreground)."""
    mode = "auto" if brain_mask is None else str(brain_mask)
    if mode == "none":
        return Foreground(None, False, "the automatic head foreground (--brain-mask none)")
    if mode != "auto":
        return Foreground(read_mask(mode, image), False, f"the mask {mode}")
    if is_skull_stripped(image):
        return Foreground(None, False, "the volume's own background (already skull-stripped)")
    mask = extract_brain(image, device)
    array = sitk.GetArrayViewFromImage(mask)
    problem = implausible_brain(array, sitk.GetArrayViewFromImage(image), image.GetSpacing()) if array.any() else ""
    if problem is not None:
        found = f"no plausible brain ({problem})" if problem else "no brain"
        raise MAEAnomalyError(f"brain extraction found {found}; is this a head MRI? give --brain-mask PATH "
                              "or --brain-mask none", source)
    return Foreground(mask, True, "the brain extracted by deepbet")


def prepare_volume(image_path: str | Path, cfg: PreprocessConfig, brain_mask: str | Path | None = None,
                   label_path: str | Path | None = None, min_pixels: int = 1, device: torch.device | None = None
                   ) -> tuple[PreparedVolume, Foreground]:
    """Reads a volume, chooses its foreground (``choose_foreground``) and prepares it for the networks."""
    image = read_volume(image_path)
    check_slices_fit(image, min_pixels, str(image_path))  # before brain extraction, which would fail less clearly
    foreground = choose_foreground(image, brain_mask, str(image_path), device)
    labels = None if label_path is None else read_mask(label_path, image, kind="label map")
    return prepare_image(image, cfg, foreground.mask, labels, str(image_path), min_pixels), foreground
