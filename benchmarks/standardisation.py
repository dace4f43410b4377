"""Which intensity normalisation keeps a volume's normalised slices the same at other scanners (issue #30)?

    python benchmarks/standardisation.py ../shared/data [--volumes 10] [--json OUT]

No model and no anomaly: each of the 10 IXI volumes the T1 protocol never trains on is normalised as it is and
as each fixed site of ``MAEAnomalyLib.data.appearance.SIMULATED_SITES`` shows it (seed 300+k, as in
``simulated_sites.py``), with each ``preprocess.normalisation``. Histogram landmarks are learned from the 24
training volumes of ``models/brain-t1`` only. Measured inside the brain, on the canonical grid:

- ``change``: mean |normalised at the site − normalised as acquired|, divided by the mean absolute
  deviation of the normalised volume as acquired (its contrast), so that a normalisation that merely
  compresses the range gains nothing;
- ``slice mean``: the same for the per-slice mean inside the brain (what a slice-level score sees first).

Lower is better: the site changed less of what a model is shown. Per site, the median over volumes; and the
mean over sites. Blur, thick slices and noise change anatomy detail that no normalisation restores; the
options differ on gamma, bias and histogram changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MAEAnomalyLib.core.config import PreprocessConfig
from MAEAnomalyLib.core.shipped import resolve_model
from MAEAnomalyLib.data.appearance import SIMULATED_SITES, apply_appearance
from MAEAnomalyLib.data.io import read_mask, read_volume, to_canonical
from MAEAnomalyLib.data.preprocessing import normalise
from MAEAnomalyLib.methods.model import load_model
from MAEAnomalyLib.training.standardise import learn_from_sources

sys.path.insert(0, str(Path(__file__).resolve().parent))
from voxel_smoothing import UNSEEN_FROM

OPTIONS = ("percentile", "histogram")  # z-scoring was measured here too (docs/experiments.md) and removed


def brain_of(path: Path) -> Path:
    return path.with_name(path.name.replace("_T1", "_brainmask"))


def change(reference: np.ndarray, other: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """(voxel change, slice-mean change), each relative to the reference's contrast inside the brain."""
    inside = reference[brain]
    contrast = float(np.mean(np.abs(inside - inside.mean())))
    voxel = float(np.mean(np.abs(other[brain] - inside))) / contrast
    rows = brain.any(axis=(1, 2))
    means = [(reference[k][brain[k]].mean(), other[k][brain[k]].mean()) for k in np.flatnonzero(rows)]
    slice_mean = float(np.mean([abs(b - a) for a, b in means])) / contrast
    return voxel, slice_mean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", "../shared/data"))
    parser.add_argument("--volumes", type=int, default=10, help="the first N of the 10 unseen IXI volumes")
    parser.add_argument("--json", type=Path, help="write every measure here")
    args = parser.parse_args()
    ixi = Path(args.data) / "ixi-t1"
    if not ixi.is_dir():
        print(f"skipped: no ixi-t1/ in {args.data}")
        return 0
    summary = load_model(resolve_model("brain-t1")).config.training_summary
    trained_on = [ixi / Path(p).name for p in summary["train_volumes"]]
    landmarks = learn_from_sources([(p, brain_of(p), None) for p in trained_on])
    configs = {name: PreprocessConfig(normalisation=name, landmarks=landmarks if name == "histogram" else [])
               for name in OPTIONS}
    unseen = sorted(ixi.glob("IXI*_T1.nii.gz"))[UNSEEN_FROM:][:args.volumes]
    measures: dict[str, dict[str, list[tuple[float, float]]]] = {s: {o: [] for o in OPTIONS} for s in SIMULATED_SITES}
    for k, path in enumerate(unseen):
        acquired_image = read_volume(path)
        image = to_canonical(acquired_image)
        brain = sitk.GetArrayFromImage(to_canonical(read_mask(brain_of(path), acquired_image))) > 0
        array, spacing = sitk.GetArrayFromImage(image), image.GetSpacing()[::-1]
        acquired = {o: normalise(array, brain, cfg, path.name) for o, cfg in configs.items()}
        for site, appearance in SIMULATED_SITES.items():
            changed = apply_appearance(array, brain, spacing, appearance, seed=300 + k)
            for o, cfg in configs.items():
                measures[site][o].append(change(acquired[o], normalise(changed, brain, cfg, path.name), brain))
        print(f"{path.name} done", flush=True)
    summary = {site: {o: [float(np.median([m[i] for m in values])) for i in (0, 1)] for o, values in row.items()}
               for site, row in measures.items()}
    summary["mean over sites"] = {o: [float(np.mean([summary[s][o][i] for s in SIMULATED_SITES])) for i in (0, 1)]
                                  for o in OPTIONS}
    print(f"\n{len(unseen)} unseen IXI volumes; change relative to the volume's contrast (median over volumes)\n")
    print("| site | " + " | ".join(f"{o} change | {o} slice mean" for o in OPTIONS) + " |")
    print("|---" * (2 * len(OPTIONS) + 1) + "|")
    for site, row in summary.items():
        print(f"| {site} | " + " | ".join(f"{row[o][0]:.3f} | {row[o][1]:.3f}" for o in OPTIONS) + " |")
    if args.json:
        partial = args.json.with_name(args.json.name + ".partial")
        partial.write_text(json.dumps({"volumes": [p.name for p in unseen], "landmarks": landmarks,
                                       "summary": summary}, indent=1))
        partial.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
