"""How the post-processing defaults (``segmentation.median_radius``, ``segmentation.min_component_mm3``)
are chosen: on healthy volumes only. Usage:

    python benchmarks/voxel_postprocessing.py MODEL_DIR --calibration H.nii.gz... [--calibration-masks M...]
        --healthy U.nii.gz... [--healthy-masks M...] [--lesioned L.nii.gz... --labels S... [--lesioned-masks M...]]
        [--radii 0,1,2] [--sizes 0,27,100,200,500] [--target-fpr 0.01]

For each median radius, the voxel threshold is calibrated as training does (``--target-fpr`` of the
foreground voxels of the healthy ``--calibration`` volumes, e.g. the model's held-out ones); then on
unseen healthy ``--healthy`` volumes it prints, for each minimum component size, the mean false-positive
volume per subject (mL) and the mean number of components. ``--lesioned`` volumes add the Dice at
that threshold (pooled, and mean per volume) for reporting only: nothing is chosen on them.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import SimpleITK as sitk

from MAEAnomalyLib.calibration.histogram import VoxelHistogram
from MAEAnomalyLib.calibration.voxel_threshold import median_filtered
from MAEAnomalyLib.core.runtime import resolve_device
from MAEAnomalyLib.data.io import read_mask, to_canonical
from MAEAnomalyLib.data.preprocessing import prepare
from MAEAnomalyLib.methods.model import load_model
from MAEAnomalyLib.scoring.scores import min_pixels, score_prepared
from MAEAnomalyLib.scoring.segmentation import label_components
from MAEAnomalyLib.scoring.voxel_maps import voxel_maps, voxel_mm3


def scored_maps(model, images: list[str], masks: list[str] | None, labels: list[str] | None = None) -> list[tuple]:
    """(difference map, foreground, lesion or None, voxel mm³) of each volume on its canonical grid."""
    cfg = model.config
    out = []
    for i, image in enumerate(images):
        prepared = prepare(image, cfg.preprocess, masks[i] if masks else None, min_pixels=min_pixels(cfg))
        result = score_prepared(model, prepared, resolve_device("cpu"))
        lesion = None
        if labels:
            label = read_mask(labels[i], prepared.image, kind="label map")
            lesion = sitk.GetArrayFromImage(to_canonical(label)) > 0
        out.append((voxel_maps(result, cfg.preprocess)["difference"], prepared.foreground_input, lesion,
                    voxel_mm3(result)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--calibration", nargs="+", required=True)
    parser.add_argument("--calibration-masks", nargs="+")
    parser.add_argument("--healthy", nargs="+", required=True)
    parser.add_argument("--healthy-masks", nargs="+")
    parser.add_argument("--lesioned", nargs="+")
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--lesioned-masks", nargs="+")
    parser.add_argument("--radii", default="0,1,2")
    parser.add_argument("--sizes", default="0,27,100,200,500")
    parser.add_argument("--target-fpr", type=float, default=0.01)
    args = parser.parse_args()
    model = load_model(args.model)
    model.eval()
    calibration = scored_maps(model, args.calibration, args.calibration_masks)
    healthy = scored_maps(model, args.healthy, args.healthy_masks)
    lesioned = scored_maps(model, args.lesioned, args.lesioned_masks, args.labels) if args.lesioned else []
    sizes = [float(s) for s in args.sizes.split(",")]
    print(f"{'radius':>6}{'threshold':>11}{'min mm3':>9}{'FP mL/healthy':>15}{'components':>12}"
          f"{'Dice':>8}{'Dice/vol':>10}")
    for radius in (int(r) for r in args.radii.split(",")):
        histogram = VoxelHistogram()
        for values, fg, _, _ in calibration:
            smoothed = median_filtered(values, radius)[fg]
            histogram.add(smoothed, np.zeros(smoothed.size, bool))
        threshold = histogram.quantile_edge(args.target_fpr)
        called = [(median_filtered(v, radius) >= threshold) & fg for v, fg, _, _ in healthy]
        called_lesioned = [(median_filtered(v, radius) >= threshold) & fg for v, fg, _, _ in lesioned]
        for size in sizes:
            fp, count = [], []
            for c, (_, _, _, mm3) in zip(called, healthy, strict=True):
                labels = label_components(c, mm3, size)
                fp.append((labels > 0).sum() * mm3 / 1000)
                count.append(int(labels.max()))
            dice = [np.nan]
            counts = np.zeros(3)
            if lesioned:
                dice = []
                for c, (_, fg, lesion, mm3) in zip(called_lesioned, lesioned, strict=True):
                    kept = label_components(c, mm3, size) > 0
                    tp, fpv, fn = (kept & lesion).sum(), (kept & ~lesion).sum(), (~kept & lesion & fg).sum()
                    counts += (tp, fpv, fn)
                    dice.append(2 * tp / max(1, 2 * tp + fpv + fn))
            pooled = 2 * counts[0] / max(1, 2 * counts[0] + counts[1] + counts[2]) if lesioned else np.nan
            print(f"{radius:>6}{threshold:>11.4f}{size:>9.0f}{np.mean(fp):>15.2f}{np.mean(count):>12.1f}"
                  f"{pooled:>8.3f}{np.mean(dice):>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
