"""The alternatives to percentile normalisation (``preprocess.normalisation``), each mapping the foreground's
intensities to [0, 1], clipped, with the background zero, as ``preprocessing.normalise`` does:

- ``histogram``: Nyúl–Udupa standardisation (Nyúl, Udupa & Zhang, IEEE TMI 2000). Each volume's intensity
  percentiles (``LANDMARK_PERCENTILES``) are mapped piecewise linearly onto a standard scale, the average of
  the training volumes' landmarks (each first scaled so that its ends are 0 and 1), so that a monotone change
  of contrast between scanners is undone, not only an affine one.

Numpy only; full-resolution arrays are transformed a slab of slices at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.config import LANDMARK_PERCENTILES
from ..core.errors import MAEAnomalyError

SLAB = 16  # slices per step where a full-resolution array is transformed slab by slab


def _check_foreground(foreground: np.ndarray, source: str) -> None:
    if not foreground.any():
        raise MAEAnomalyError("foreground mask is empty", source)


def volume_landmarks(volume: np.ndarray, foreground: np.ndarray, source: str = "image") -> np.ndarray:
    """The ``LANDMARK_PERCENTILES`` of the intensities inside ``foreground`` (float64, non-decreasing)."""
    _check_foreground(foreground, source)
    # The masked copy is ours: sorting it in place gives the same percentiles without a second copy.
    marks = np.percentile(volume[foreground], LANDMARK_PERCENTILES, overwrite_input=True).astype(np.float64)
    if marks[-1] <= marks[0]:
        raise MAEAnomalyError("intensities inside the foreground are constant", source)
    return marks


def learn_landmarks(per_volume: Sequence[np.ndarray]) -> list[float]:
    """The standard scale: each volume's landmarks mapped linearly so that its first is 0 and its last 1,
    then averaged; strictly increasing from 0 to 1."""
    if not per_volume:
        raise MAEAnomalyError("histogram standardisation needs at least one training volume to learn its landmarks")
    scaled = [(m - m[0]) / (m[-1] - m[0]) for m in (np.asarray(v, dtype=np.float64) for v in per_volume)]
    scale = np.mean(scaled, axis=0)
    scale[0], scale[-1] = 0.0, 1.0
    if np.any(np.diff(scale) <= 0):
        raise MAEAnomalyError("the training volumes' intensities take too few distinct values inside the foreground "
                              "for histogram standardisation (two landmarks coincide); choose another "
                              "preprocess.normalisation")
    return [float(v) for v in scale]


def _piecewise_linear(x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``np.interp`` from ``source`` to ``target`` landmarks, its two end segments extended linearly beyond them."""
    y = np.interp(x, source, target)
    for end, inner, beyond in ((0, 1, x < source[0]), (-1, -2, x > source[-1])):
        width = source[end] - source[inner]
        if width != 0:  # a zero-width end segment (tied landmarks): np.interp's constant beyond it
            y[beyond] = target[end] + (x[beyond] - source[end]) * ((target[end] - target[inner]) / width)
    return y


def standardise(volume: np.ndarray, foreground: np.ndarray, landmarks: Sequence[float],
                source: str = "image") -> np.ndarray:
    """Nyúl–Udupa standardisation: the volume's own landmarks mapped piecewise linearly onto ``landmarks``
    (the standard scale), clipped to [0, 1], zero outside the foreground; float32."""
    own = volume_landmarks(volume, foreground, source)
    standard = np.asarray(landmarks, dtype=np.float64)
    if standard.shape != own.shape:
        raise MAEAnomalyError(f"histogram standardisation needs {len(own)} landmarks, not {len(standard)}", source)
    out = np.empty(volume.shape, dtype=np.float32)
    for start in range(0, len(volume), SLAB):
        part = slice(start, start + SLAB)
        mapped = _piecewise_linear(np.asarray(volume[part], dtype=np.float64), own, standard)
        out[part] = np.clip(mapped, 0.0, 1.0) * foreground[part]
    return out
