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

from ..config import PreprocessConfig
from ..errors import MAEAnomalyError
from .io import from_canonical, read_mask, read_volume, to_canonical
from .preprocessing import PreparedVolume, prepare_image

BRAIN_MASK_MODES = ("auto", "none")
# A skull-stripped volume is a brain on a constant background: its non-background part is brain-sized.
# Adult brains are 1.0-1.8 L; a head with skull and scalp is 3 L or more.
MAX_BRAIN_LITRES = 2.5
_PLATEAU_FRACTION = 0.2


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


def is_skull_stripped(image: sitk.Image) -> bool:
    """True for a brain on a constant background plateau, of brain size."""
    array = sitk.GetArrayViewFromImage(image)
    counts = np.unique(array, return_counts=True)[1]
    top = counts.argmax()
    if counts[top] < _PLATEAU_FRACTION * array.size:
        return False
    litres = (array.size - counts[top]) * float(np.prod(image.GetSpacing())) / 1e6
    return litres <= MAX_BRAIN_LITRES


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
    if not sitk.GetArrayViewFromImage(mask).any():
        raise MAEAnomalyError("brain extraction found no brain (is this a head MRI?); give --brain-mask PATH "
                              "or --brain-mask none", source)
    return Foreground(mask, True, "the brain extracted by deepbet")


def prepare_volume(image_path: str | Path, cfg: PreprocessConfig, brain_mask: str | Path | None = None,
                   label_path: str | Path | None = None, min_pixels: int = 1, device: torch.device | None = None
                   ) -> tuple[PreparedVolume, Foreground]:
    """Reads a volume, chooses its foreground (``choose_foreground``) and prepares it for the networks."""
    image = read_volume(image_path)
    foreground = choose_foreground(image, brain_mask, str(image_path), device)
    labels = None if label_path is None else read_mask(label_path, image, kind="label map")
    return prepare_image(image, cfg, foreground.mask, labels, str(image_path), min_pixels), foreground
