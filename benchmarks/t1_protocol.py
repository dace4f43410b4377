"""The cross-dataset T1 protocol: a model of healthy IXI T1 anatomy, tested on the T1c of six BraTS-2015
gliomas, and its false-positive rate on the ten IXI volumes it never saw.

    python benchmarks/t1_protocol.py ../shared/data [--model brain-t1] [--json OUT.json]
    python benchmarks/t1_protocol.py ../shared/data --train WORK_DIR [--max-minutes M]

Without --train it evaluates a model (default: the shipped ``brain-t1``, trained by this protocol's
command, shown in models/brain-t1/MODEL_CARD.md). With --train it first trains one with that command
into WORK_DIR. Test volumes are given with their brain masks; slices are abnormal when any voxel of
their label is > 0. Skips with a message (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.evaluation.cohort import evaluate_cohort, format_metrics

TRAINED_ON = 30  # the first 30 IXI volumes in sorted order; the last 10 are never seen
CASES = tuple(f"pat000{i}" for i in range(1, 7))
# The shipped model's training command (models/brain-t1/MODEL_CARD.md); --train repeats it.
TRAIN_FLAGS = ["--preset", "small", "--mae-epochs", "80", "--classifier-epochs", "8", "--max-minutes", "120"]


def ixi_split(data: Path) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    images = sorted((data / "ixi-t1").glob("IXI*_T1.nii.gz"))
    masks = [p.with_name(p.name.replace("_T1", "_brainmask")) for p in images]
    return images[:TRAINED_ON], masks[:TRAINED_ON], images[TRAINED_ON:], masks[TRAINED_ON:]


def unseen_fpr(model_dir: Path, images: list[Path], masks: list[Path], device_name: str) -> dict:
    """The share of brain slices of unseen healthy volumes flagged at the model's threshold, and the
    brain volume each one's voxel maps call anomalous."""
    from MAEAnomalyLib.core.runtime import resolve_device
    from MAEAnomalyLib.data.preprocessing import prepare
    from MAEAnomalyLib.evaluation.voxels import CohortVoxels
    from MAEAnomalyLib.methods.model import load_model
    from MAEAnomalyLib.scoring.scores import min_pixels, score_prepared

    model = load_model(model_dir)
    device = resolve_device(device_name)
    voxels = CohortVoxels(model.config)  # as `evaluate` counts them; on healthy volumes, false positives only
    flagged, total, per_volume, volumes_flagged = 0, 0, [], 0
    for image, mask in zip(images, masks, strict=True):
        prepared = prepare(image, model.config.preprocess, mask, min_pixels=min_pixels(model.config))
        result = score_prepared(model.to(device), prepared, device)
        voxels.add_lesion(result, np.zeros(prepared.foreground_input.shape, dtype=bool))
        table = result.table
        usable = table["skipped"] == 0
        flagged += int(table["abnormal"][usable].sum())
        total += int(usable.sum())
        per_volume.append(round(float(table["abnormal"][usable].mean()), 3))
        volumes_flagged += int(table["abnormal"].any())
    return {"unseen_volumes": len(images), "slices": total, "flagged_slices": flagged,
            "false_positive_rate": flagged / max(1, total), "per_volume": per_volume,
            "volumes_with_a_flagged_slice": volumes_flagged,
            "target_fpr": model.config.calibration.target_fpr,
            "voxel_false_positive_ml": {row: [round(v, 2) for v in m.false_positive_ml]
                                        for row, m in voxels.evaluation.maps.items() if m.threshold is not None},
            "voxel_target_fpr": model.config.segmentation.target_fpr}


def main_cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", "../shared/data"))
    parser.add_argument("--model", default="brain-t1", help="a shipped model's name or a model directory")
    parser.add_argument("--train", metavar="WORK_DIR", help="train the protocol's model into WORK_DIR first")
    parser.add_argument("--max-minutes", type=float, help="with --train: override the training time budget")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "ixi-t1").is_dir() or not (data / "brats2015").is_dir():
        print(f"skipped: no ixi-t1/ and brats2015/ in {data}")
        return 0
    train_images, train_masks, unseen, unseen_masks = ixi_split(data)
    model_dir: Path | str = args.model
    if args.train:
        model_dir = Path(args.train) / "brain-t1"
        flags = list(TRAIN_FLAGS)
        if args.max_minutes is not None:
            flags[flags.index("--max-minutes") + 1] = str(args.max_minutes)
        code = main(["train", "--out", str(model_dir), "--images", *map(str, train_images),
                     "--masks", *map(str, train_masks), *flags, "--device", args.device])
        if code:
            return code
    from MAEAnomalyLib.core.shipped import resolve_model

    model_dir = resolve_model(str(model_dir))
    root = data / "brats2015"
    start = time.perf_counter()
    metrics = evaluate_cohort(model_dir, [str(root / c / "t1c.nii.gz") for c in CASES],
                              [str(root / c / "seg.nii.gz") for c in CASES],
                              [str(root / c / "brainmask.nii.gz") for c in CASES], args.device)
    metrics["seconds_per_volume"] = round((time.perf_counter() - start) / len(CASES), 1)
    metrics["ixi_unseen"] = unseen_fpr(model_dir, unseen, unseen_masks, args.device)
    print(f"model {model_dir}; test: T1c of BraTS-2015 {', '.join(CASES)} (brain masks given)")
    print(format_metrics(metrics))
    fpr = metrics["ixi_unseen"]
    print(f"IXI, {fpr['unseen_volumes']} unseen healthy volumes: {fpr['flagged_slices']} of {fpr['slices']} brain "
          f"slices flagged, false-positive rate {fpr['false_positive_rate']:.3f} (target {fpr['target_fpr']}); "
          f"per volume {fpr['per_volume']}")
    for row, values in fpr["voxel_false_positive_ml"].items():
        print(f"  voxels called by {row} at its calibrated threshold: mean {sum(values) / len(values):.2f} mL of "
              f"brain per unseen healthy volume (per volume {values})")
    print(f"scoring: {metrics['seconds_per_volume']} s per BraTS volume, {os.cpu_count()} CPU cores")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
