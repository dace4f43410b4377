"""How ``mae_classifier.spread_floor`` and ``smoothing_mm`` are chosen: on synthetic lesions implanted in
unseen healthy volumes, never on a real anomaly.

    python benchmarks/voxel_smoothing.py ../shared/data [--model brain-t1] [--floors 0,0.02,0.05,0.1,0.2]
        [--sigmas 0,4,6,8,10]

For each pair (spread floor, smoothing in mm), the voxel threshold is calibrated as training does:
``segmentation.target_fpr`` of the brain voxels of the model's held-out healthy IXI volumes
(``validation_volumes`` of its training summary). The 10 IXI volumes the T1 protocol never trains on
then give the false-positive volume per healthy subject, and the same 10 with synthetic lesions give the
voxel AUROC, AUPRC and Dice at that threshold, pooled. Each volume gets one or two lesions of one kind,
once with blobs and once with rings (``implant_lesions``); seeds are fixed. The rule, fixed first: the
pair with the highest pooled AUPRC. The intensity map is the baseline, on the same voxels. Each volume
is scored once; every pair is made from the same difference and spread. Skips with a message (exit 0)
when the data folder is absent.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy.ndimage import binary_erosion, gaussian_filter

from MAEAnomalyLib.calibration.voxel_threshold import VoxelCalibration
from MAEAnomalyLib.core.runtime import resolve_device
from MAEAnomalyLib.core.shipped import resolve_model
from MAEAnomalyLib.data.io import read_mask, read_volume, to_canonical
from MAEAnomalyLib.data.preprocessing import prepare_image
from MAEAnomalyLib.engine.distributed import Dist
from MAEAnomalyLib.evaluation.voxels import CohortVoxels
from MAEAnomalyLib.methods.mae_classifier.scorer import anomaly_map
from MAEAnomalyLib.methods.model import AnomalyModel, load_model
from MAEAnomalyLib.scoring.scores import VolumeScores, difference_image, min_pixels, score_prepared
from MAEAnomalyLib.scoring.voxel_maps import voxel_maps

UNSEEN_FROM = 30  # as run.py's T1 protocol: the last 10 IXI volumes in sorted order are never trained on


def implant_lesions(image: sitk.Image, brain: sitk.Image, seed: int, kind: str) -> tuple[sitk.Image, sitk.Image]:
    """The image with one or two synthetic lesions inside the brain, and their label map. ``blob``: a
    smooth ellipsoid (semi-axes 6-20 mm, 0.75-1.25 per axis) scaled by 0.55-0.8 or by 1.25-1.6; ``ring``:
    a ball of 8-20 mm whose rim (3-6 mm) is scaled by 1.3-1.6 and its core by 0.5-0.75, as a necrotic,
    enhancing tumour looks on T1c."""
    rng = np.random.default_rng(seed)
    volume = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = sitk.GetArrayFromImage(brain) > 0
    spacing = np.array(image.GetSpacing())[::-1]  # array (k, j, i) order
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in volume.shape), indexing="ij")
    centres = np.argwhere(binary_erosion(inside, iterations=4))
    factor, label = np.ones(volume.shape, np.float32), np.zeros(volume.shape, bool)
    for _ in range(rng.integers(1, 3)):
        centre = centres[rng.integers(len(centres))].astype(np.float32)
        if kind == "blob":
            semi_axes = rng.uniform(6, 20) * rng.uniform(0.75, 1.25, 3)
            r = np.sqrt(sum(((g - c) * d / a) ** 2 for g, c, d, a in zip(grid, centre, spacing, semi_axes,
                                                                          strict=True)))
            weight = gaussian_filter((np.clip(1.5 - r, 0, 1) * inside).astype(np.float32), 0.7)  # 1 within 0.5
            scale = rng.uniform(0.55, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 1.6)
            factor *= 1 + (scale - 1) * weight
        else:
            mm = np.sqrt(sum(((g - c) * d) ** 2 for g, c, d in zip(grid, centre, spacing, strict=True)))
            radius, rim = rng.uniform(8, 20), rng.uniform(3, 6)
            weight = gaussian_filter(((mm <= radius) & inside).astype(np.float32), 0.7)
            core = gaussian_filter(((mm <= radius - rim) & inside).astype(np.float32), 0.7)
            bright, dark = rng.uniform(1.3, 1.6), rng.uniform(0.5, 0.75)
            factor *= 1 + (bright - 1) * (weight - core) + (dark - 1) * core
        label |= (weight > 0.5) & inside
    lesioned, label_image = sitk.GetImageFromArray(volume * factor), sitk.GetImageFromArray(label.astype(np.uint8))
    lesioned.CopyInformation(image)
    label_image.CopyInformation(image)
    return lesioned, label_image


def remapped(result: VolumeScores, floor: float, sigma: float) -> VolumeScores:
    """The scored volume with its map made at another spread floor and smoothing."""
    slices = anomaly_map(result.extras["difference"], result.extras["spread"], floor)
    return dataclasses.replace(result, difference=difference_image(slices, result.prepared, sigma), map_slices=slices)


def ixi_and_model(data: str, model_name: str, device_name: str) -> tuple[Path, AnomalyModel, torch.device] | None:
    """The IXI folder and the model, in eval mode on its device; None (after saying so) without the data."""
    ixi = Path(data) / "ixi-t1"
    if not ixi.is_dir():
        print(f"skipped: no ixi-t1/ in {data}")
        return None
    model = load_model(resolve_model(model_name))
    device = resolve_device(device_name)
    model.to(device).eval()
    return ixi, model, device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", "../shared/data"))
    parser.add_argument("--model", default="brain-t1")
    parser.add_argument("--floors", default="0,0.02,0.05,0.1,0.2")
    parser.add_argument("--sigmas", default="0,4,6,8,10")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    found = ixi_and_model(args.data, args.model, args.device)
    if found is None:
        return 0
    ixi, model, device = found
    cfg = model.config
    held = [ixi / Path(p).name for p in cfg.training_summary["validation_volumes"]]
    unseen = sorted(ixi.glob("IXI*_T1.nii.gz"))[UNSEEN_FROM:]

    def score(image: sitk.Image, brain: sitk.Image, name: str) -> VolumeScores:
        prepared = prepare_image(image, cfg.preprocess, brain, source=name, min_pixels=min_pixels(cfg))
        return score_prepared(model, prepared, device)

    def brain_of(path: Path) -> tuple[sitk.Image, sitk.Image]:
        image = read_volume(path)
        return image, read_mask(path.with_name(path.name.replace("_T1", "_brainmask")), image)

    calibration = [score(*brain_of(p), str(p)) for p in held]
    healthy, lesioned = [], []
    for k, path in enumerate(unseen):
        image, brain = brain_of(path)
        healthy.append(score(image, brain, str(path)))
        for kind, seed in (("blob", 100 + k), ("ring", 200 + k)):
            with_lesions, label = implant_lesions(image, brain, seed, kind)
            lesioned.append((score(with_lesions, brain, f"{path} with {kind} lesions"),
                             sitk.GetArrayFromImage(to_canonical(label)) > 0, kind))
    print(f"model {args.model}: thresholds on {len(held)} held-out IXI volumes, false positives on {len(unseen)} "
          f"unseen ones, synthetic lesions (blobs, rings) in the same {len(unseen)}")
    print("'+post': components under the model's min_component_mm3 dropped; the intensity map is printed once")
    print(f"{'floor':>5} {'mm':>3} {'map':>10} {'threshold':>9} {'AUROC':>6} {'AUPRC':>6} {'blobs':>6} {'rings':>6} "
          f"{'Dice@thr':>8} {'+post':>6} {'FP mL/healthy':>13} {'+post':>6}")
    pairs = [(float(f), float(s)) for f in args.floors.split(",") for s in args.sigmas.split(",")]
    for floor, sigma in pairs:
        variant = copy.deepcopy(cfg)
        variant.settings.spread_floor, variant.segmentation.smoothing_mm = floor, sigma
        voxels = VoxelCalibration(variant.segmentation)
        for result in calibration:
            mapped = remapped(result, floor, sigma)
            voxels.add(voxel_maps(mapped, cfg.preprocess), mapped.prepared.foreground_input,
                       result.table["skipped"] == 0)
        variant.site_calibration = {"voxel_thresholds": voxels.thresholds(Dist())["voxel_thresholds"]}
        tests, negatives = CohortVoxels(variant), CohortVoxels(variant)
        by_kind = {kind: CohortVoxels(variant) for kind in ("blob", "ring")}
        for result, lesion, kind in lesioned:
            mapped = remapped(result, floor, sigma)
            tests.add_lesion(mapped, lesion)
            by_kind[kind].add_lesion(mapped, lesion)
        for result in healthy:
            negatives.add_lesion(remapped(result, floor, sigma), np.zeros(result.prepared.foreground_input.shape, bool))
        found, false = tests.result()["maps"], negatives.evaluation.maps
        kinds = {k: c.result()["maps"] for k, c in by_kind.items()}
        for name in ("difference", "intensity") if (floor, sigma) == pairs[0] else ("difference",):
            row, post = found[name], found[name + "+post"]
            fp = [np.mean(false[n].false_positive_ml) for n in (name, name + "+post")]
            print(f"{floor:>5g} {sigma:>3g} {name:>10} {row['threshold']:>9.4f} {row['auroc']:>6.3f} "
                  f"{row['auprc']:>6.3f} {kinds['blob'][name]['auprc']:>6.3f} {kinds['ring'][name]['auprc']:>6.3f} "
                  f"{row['dice']:>8.3f} {post['dice']:>6.3f} {fp[0]:>13.2f} {fp[1]:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
