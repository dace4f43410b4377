"""The histogram standard scale (``preprocess.landmarks``, ``data.standardisation``), learned from the
training volumes only: the held-out volumes that validation and calibration use must not shape it."""

from __future__ import annotations

from collections.abc import Sequence

import SimpleITK as sitk

from ..data.inputs import Source
from ..data.io import read_mask, read_volume
from ..data.preprocessing import automatic_foreground
from ..data.standardisation import learn_landmarks, volume_landmarks


def learn_from_sources(sources: Sequence[Source]) -> list[float]:
    """The standard scale of the (image, mask, label map) ``sources``; the foreground is each one's mask,
    or without one the automatic foreground, as preprocessing finds it. One volume in memory at a time."""
    per_volume = []
    for image_path, mask_path, _ in sources:
        image = read_volume(image_path)
        volume = sitk.GetArrayViewFromImage(image)  # read only and no copy: ``image`` outlives it
        if mask_path is not None:
            mask = read_mask(mask_path, image)  # held: a view is valid only while its image lives
            foreground = sitk.GetArrayViewFromImage(mask) > 0
        else:
            foreground = automatic_foreground(volume)
        per_volume.append(volume_landmarks(volume, foreground, str(image_path)))
    return learn_landmarks(per_volume)
