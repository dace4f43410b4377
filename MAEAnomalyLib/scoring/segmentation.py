"""The anomaly segmentation: the difference map, median-filtered, thresholded at the model's voxel
threshold inside the foreground, split into connected components (face-connected) numbered by size
(1 the largest), those under ``segmentation.min_component_mm3`` dropped; and one table row per component.

Everything is computed on the canonical grid (axes permuted and flipped, never resampled, so sizes
and neighbourhoods are those of the input) and the label map is put back on the input's exact grid.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..calibration.voxel_threshold import median_filtered
from ..core.config import SegmentationConfig
from ..data.io import from_canonical, to_canonical

if TYPE_CHECKING:  # torch-free at import, so that the Slicer module loads before torch is installed
    from ..data.preprocessing import PreparedVolume

COMPONENT_COLUMNS = ("label", "voxels", "volume_mm3", "volume_ml", "first_slice", "last_slice",
                     "centroid_r", "centroid_a", "centroid_s", "centroid_l", "centroid_p", "centroid_lps_s",
                     "map_max", "map_mean")


@dataclass
class Segmentation:
    """Components of one volume: the label map on the input's grid, the same on the canonical grid
    (array [k] is axial slice k, inferior first) and one row per component, largest first."""

    labels: sitk.Image
    canonical: np.ndarray
    components: list[dict]
    threshold: float


def label_components(called: np.ndarray, voxel_mm3: float, min_mm3: float) -> np.ndarray:
    """Face-connected components of a bool array numbered by size (1 the largest), those under
    ``min_mm3`` set to 0."""
    if not called.any():
        return np.zeros(called.shape, dtype=np.uint16)
    minimum = max(0, math.ceil(min_mm3 / voxel_mm3 - 1e-9))
    # One image alive at a time (ITK's labels are 4 bytes a voxel; cast to 2 before leaving ITK).
    called_image = sitk.GetImageFromArray(called.astype(bool, copy=False).view(np.uint8))  # no numpy copy
    components = sitk.ConnectedComponent(called_image, False)
    del called_image
    labels = sitk.RelabelComponent(components, minimumObjectSize=minimum, sortByObjectSize=True)
    del components
    largest = sitk.MinimumMaximumImageFilter()
    largest.Execute(labels)
    return sitk.GetArrayFromImage(sitk.Cast(labels, sitk.sitkUInt16 if largest.GetMaximum() < 2**16
                                            else sitk.sitkUInt32))


def called_voxels(values: np.ndarray, foreground: np.ndarray, threshold: float, voxel_mm3: float,
                  cfg: SegmentationConfig) -> np.ndarray:
    """The component labels of a (Z, Y, X) map: median filter, threshold inside the foreground, small
    components removed."""
    smoothed = median_filtered(values, cfg.median_radius)
    return label_components((smoothed >= threshold) & foreground, voxel_mm3, cfg.min_component_mm3)


def label_centres(labels: np.ndarray, n: int, counts: np.ndarray) -> np.ndarray:
    """(n, 3) mean (z, y, x) index of labels 1..n, slab by slab. The sums are of integers, exact in float64
    in any order, so the centres are those of ``ndimage.center_of_mass`` to the bit (without its float64
    copies of the whole array)."""
    sums = np.zeros((n + 1, 3))
    for k, plane in enumerate(labels):
        rows, cols = np.nonzero(plane)
        if len(rows):
            found = plane[rows, cols]
            sums[:, 0] += k * np.bincount(found, minlength=n + 1)
            sums[:, 1] += np.bincount(found, weights=rows, minlength=n + 1)
            sums[:, 2] += np.bincount(found, weights=cols, minlength=n + 1)
    return sums[1:] / counts[:, None].astype(np.float64)


def component_rows(labels: np.ndarray, values: np.ndarray, canonical: sitk.Image) -> list[dict]:
    """One row per label of a canonical label array: size, axial slice range, centroid (RAS and LPS),
    and the largest and mean value of ``values`` inside."""
    n = int(labels.max())
    if n == 0:
        return []
    voxel_mm3 = float(np.prod(canonical.GetSpacing()))
    index = np.arange(1, n + 1)
    # The labelled voxels alone, in the array's order: scipy's sums then add the same values in the same
    # order as over the whole array, without its float64 copy of the whole map.
    inside = labels > 0
    labelled, inside_values = labels[inside], values[inside]
    del inside
    counts = np.bincount(labelled, minlength=n + 1)[1:]
    centres = label_centres(labels, n, counts)
    highest = ndimage.maximum(inside_values, labelled, index)
    means = ndimage.mean(inside_values, labelled, index)
    rows = []
    for k, box in enumerate(ndimage.find_objects(labels)[:n]):
        z, y, x = centres[k]
        l_, p, s = canonical.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
        volume = float(counts[k]) * voxel_mm3
        rows.append({"label": k + 1, "voxels": int(counts[k]), "volume_mm3": volume, "volume_ml": volume / 1000,
                     "first_slice": box[0].start, "last_slice": box[0].stop - 1,
                     "centroid_r": -l_, "centroid_a": -p, "centroid_s": s,
                     "centroid_l": l_, "centroid_p": p, "centroid_lps_s": s,
                     "map_max": float(highest[k]), "map_mean": float(means[k])})
    return rows


def segment(difference: sitk.Image, prepared: PreparedVolume, threshold: float | None,
            cfg: SegmentationConfig) -> Segmentation | None:
    """The anomaly segmentation of a scored volume, or None when the model has no voxel threshold."""
    if threshold is None:
        return None
    canonical = to_canonical(difference)
    values = sitk.GetArrayViewFromImage(canonical)  # read only, valid while ``canonical`` lives: no copy
    voxel_mm3 = float(np.prod(canonical.GetSpacing()))
    labels = called_voxels(values, prepared.foreground_input, threshold, voxel_mm3, cfg)
    rows = component_rows(labels, values, canonical)
    return Segmentation(from_canonical(labels, prepared.image), labels, rows, float(threshold))


def components_csv(rows: list[dict]) -> str:
    """The components table; floats keep 9 significant digits; a header alone when there are none."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COMPONENT_COLUMNS)
    for row in rows:
        writer.writerow(row[c] if isinstance(row[c], int) else f"{row[c]:.9g}" for c in COMPONENT_COLUMNS)
    return buffer.getvalue()


def read_components_csv(path: str) -> list[dict]:
    """Reads a table written by ``components_csv``."""
    with open(path, newline="") as fh:
        return [{c: (int(r[c]) if c in ("label", "voxels", "first_slice", "last_slice") else float(r[c]))
                 for c in COMPONENT_COLUMNS} for r in csv.DictReader(fh)]


def labels_at_model_size(segmentation: Segmentation, prepared: PreparedVolume, size: int) -> np.ndarray:
    """(Z, S, S) labels as the networks see each slice (the report draws their outlines there)."""
    from ..data.preprocessing import to_model_size

    rows, cols = prepared.window
    window = segmentation.canonical[:, rows, cols].astype(np.float32)
    return to_model_size(window, size, mode="nearest")[:, 0].numpy().round().astype(np.int64)
