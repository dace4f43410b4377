"""``evaluate``'s voxel-level metrics on a generated cohort: wall time and peak memory as the cohort grows
from 10 to 100 volumes, each size measured in a fresh process. Usage:

    python benchmarks/voxel_memory.py [--volumes 100] [--shape 64,128,128] [--work DIR] [--model MODEL_DIR]

Writes lesioned generated heads to --work once (reused afterwards). Without --model it builds an
untrained ``tiny`` model with fixed voxel thresholds: the model's quality is irrelevant here, only the
cost of the voxel metrics (the maps, the median filter, the histograms and the calibrated segmentation)
is measured. It prints, for each cohort size, the total time of ``evaluate_cohort``, the part spent in
the voxel metrics, the peak resident memory, and the memory an exact computation would need to hold
every foreground voxel of every map (a float32 score and a bool label per voxel and map).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROWS = 4  # maps evaluated: difference and intensity, each as it is and median-filtered


def write_volumes(work: Path, n: int, shape: tuple[int, int, int]) -> list[tuple[Path, Path, Path]]:
    from MAEAnomalyLib.data.synthetic import make_subject

    out = []
    for i in range(n):
        paths = tuple(work / "volumes" / f"head{i:03d}{s}.nii.gz" for s in ("", "_brainmask", "_label"))
        if not paths[2].exists():
            make_subject(1000 + i, lesion=True, shape=shape).write(work / "volumes", f"head{i:03d}")
        out.append(paths)
    return out


def untrained_model(work: Path) -> Path:
    import torch

    from MAEAnomalyLib.methods.model import AnomalyModel, save_model
    from MAEAnomalyLib.methods.model_config import preset

    out = work / "untrained_tiny"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        cfg = preset("tiny")
        cfg.threshold, cfg.voxel_threshold = 0.5, 0.3
        cfg.training_summary = {"voxel_thresholds": {m: {"off": 0.3, "on": 0.3} for m in ("difference", "intensity")}}
        save_model(AnomalyModel.from_config(cfg), out)
    return out


def measure(model: Path, volumes: list, n: int) -> dict:
    """Runs in a fresh process: ``evaluate_cohort`` on the first ``n`` volumes."""
    import numpy as np
    import torch

    from MAEAnomalyLib.evaluation import voxels as voxel_evaluation
    from MAEAnomalyLib.evaluation.cohort import evaluate_cohort

    torch.set_num_threads(2)
    spent = [0.0]
    add = voxel_evaluation.CohortVoxels.add

    def timed_add(self, result, label_path):  # the library's own method, timed
        start = time.perf_counter()
        add(self, result, label_path)
        spent[0] += time.perf_counter() - start

    voxel_evaluation.CohortVoxels.add = timed_add
    chosen = volumes[:n]
    start = time.perf_counter()
    metrics = evaluate_cohort(model, [v[0] for v in chosen], [v[2] for v in chosen], [v[1] for v in chosen], "cpu")
    seconds = time.perf_counter() - start
    import SimpleITK as sitk

    foreground = sum(int((sitk.GetArrayFromImage(sitk.ReadImage(str(v[1]))) > 0).sum()) for v in chosen)
    return {"volumes": n, "seconds": seconds, "voxel_seconds": spent[0],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "exact_mb": foreground * ROWS * 5 / 2**20, "foreground_voxels": foreground,
            "auroc_difference": metrics["voxel"]["maps"]["difference"]["auroc"],
            "finite": bool(np.isfinite(metrics["voxel"]["maps"]["intensity"]["auprc"]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--shape", default="64,128,128", help="Z,Y,X voxels of each generated head")
    parser.add_argument("--work", default="voxel_memory_work")
    parser.add_argument("--model")
    parser.add_argument("--sizes", default="10,100", help="cohort sizes to measure (at most --volumes)")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    shape = tuple(int(s) for s in args.shape.split(","))
    volumes = write_volumes(work, args.volumes, shape)
    model = Path(args.model) if args.model else untrained_model(work)
    if args.measure:
        print(json.dumps(measure(model, volumes, args.measure)))
        return 0
    print(f"{'volumes':>8}{'voxels (M)':>12}{'evaluate s':>12}{'voxel s':>10}{'peak RSS MB':>13}{'exact MB':>10}")
    for n in (int(s) for s in args.sizes.split(",")):
        done = subprocess.run([sys.executable, __file__, "--volumes", str(args.volumes), "--shape", args.shape,
                               "--work", str(work), "--model", str(model), "--measure", str(n)],
                              capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{n:>8}{r['foreground_voxels'] / 1e6:>12.1f}{r['seconds']:>12.1f}{r['voxel_seconds']:>10.1f}"
              f"{r['peak_rss_mb']:>13.0f}{r['exact_mb']:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
