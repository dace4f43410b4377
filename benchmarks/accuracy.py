"""Slice-level accuracy on real data, through the public CLI API.

BraTS-2015 FLAIR (train on the tumour-free slices of pat0001-pat0004, test on every slice of
pat0005-pat0006) and, with --ixi, the false-positive rate at the stored threshold on unseen healthy
IXI T1 volumes. Beside the table it prints the protocol's intensity heuristic taken literally, on the
native 1 mm slices; the table's heuristic is computed on the model's resized input. Usage:

    python benchmarks/accuracy.py ../shared/data [--preset small] [--mae-epochs N] [--classifier-epochs N]
                                  [--batch-size N] [--max-minutes M] [--set SECTION.FIELD=VALUE]
                                  [--mae-from MODEL_DIR] [--ixi]

Skips with a message (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.evaluation.cohort import evaluate_cohort, format_metrics

TRAIN_CASES = ("pat0001", "pat0002", "pat0003", "pat0004")
TEST_CASES = ("pat0005", "pat0006")


def run_cli(args: list[str]) -> None:
    code = main(args)
    if code:
        sys.exit(code)


def training_flags(args: argparse.Namespace) -> list[str]:
    """The optional ``maeanomaly train`` flags this benchmark passes on."""
    flags = []
    for name in ("mae_epochs", "classifier_epochs", "batch_size", "max_minutes"):
        if getattr(args, name) is not None:
            flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for setting in args.set or []:
        flags += ["--set", setting]
    return flags


def train_once(model: Path, train: list[str]) -> None:
    """Runs ``maeanomaly train`` unless ``model`` is already trained; resumes an interrupted run."""
    if (model / "config.json").exists():
        print(f"reusing the trained model in {model}", file=sys.stderr)
    else:
        run_cli(train + (["--resume"] if (model / "checkpoint").exists() else []))


def brats(data: Path, work: Path, args: argparse.Namespace) -> dict:
    root = data / "brats2015"
    model = work / f"brats_{args.preset}"

    def files(cases: tuple[str, ...], name: str) -> list[str]:
        return [str(root / c / name) for c in cases]

    start = time.perf_counter()
    train = ["train", "--preset", args.preset, "--out", str(model), "--device", args.device,
             "--images", *files(TRAIN_CASES, "flair.nii.gz"), "--masks", *files(TRAIN_CASES, "brainmask.nii.gz"),
             "--labels", *files(TRAIN_CASES, "seg.nii.gz"), *training_flags(args)]
    if args.mae_from:
        train += ["--mae-from", args.mae_from]
    train_once(model, train)
    train_seconds = time.perf_counter() - start
    metrics = evaluate_cohort(model, files(TEST_CASES, "flair.nii.gz"), files(TEST_CASES, "seg.nii.gz"),
                              files(TEST_CASES, "brainmask.nii.gz"), args.device)
    summary = json.loads((model / "config.json").read_text())["training_summary"]
    metrics["train_seconds_this_run"] = round(train_seconds, 1)
    metrics["train_seconds_recorded"] = summary.get("train_seconds")
    return metrics


def native_heuristic(data: Path) -> dict:
    """The protocol's intensity heuristic taken literally: the 99.5th percentile of the given (z-scored)
    FLAIR inside the brain of each native 1 mm slice, not of the model's resized input slice."""
    import SimpleITK as sitk
    from sklearn.metrics import average_precision_score, roc_auc_score

    def array(case: str, name: str) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(data / "brats2015" / case / name)))

    scores, truth, brain = [], [], []
    for case in TEST_CASES:  # BraTS volumes are stored axially: the array's first axis is z
        flair, mask, seg = array(case, "flair.nii.gz"), array(case, "brainmask.nii.gz") > 0, array(case, "seg.nii.gz")
        for z in range(flair.shape[0]):
            has_brain = bool(mask[z].any())
            scores.append(float(np.percentile(flair[z][mask[z]], 99.5)) if has_brain else -np.inf)
            truth.append(bool((seg[z] > 0).any()))
            brain.append(has_brain)
    s, y, b = np.array(scores), np.array(truth), np.array(brain)
    s[~b] = s[b].min() - 1  # slices without brain rank lowest
    return {name: {"auroc": float(roc_auc_score(y[m], s[m])), "auprc": float(average_precision_score(y[m], s[m])),
                   "slices": int(m.sum())}
            for name, m in (("foreground_slices", b), ("all_slices", np.ones_like(b)))}


def ixi(data: Path, work: Path, args: argparse.Namespace) -> dict:
    """Trains on the first --ixi-train healthy IXI volumes; scores the rest; reports the FPR."""
    from t1_protocol import unseen_fpr  # the same count as the T1 protocol's, beside this script

    root = data / "ixi-t1"
    images = sorted(root.glob("IXI*_T1.nii.gz"))
    masks = [p.with_name(p.name.replace("_T1", "_brainmask")) for p in images]
    n = args.ixi_train
    model_dir = work / f"ixi_{args.preset}"
    train_once(model_dir, ["train", "--preset", args.preset, "--out", str(model_dir), "--device", args.device,
                           "--images", *map(str, images[:n]), "--masks", *map(str, masks[:n]), *training_flags(args)])
    return unseen_fpr(model_dir, images[n:], masks[n:], args.device)


def main_cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", "../shared/data"))
    parser.add_argument("--work", default="benchmark_runs", help="where models are written (reused if present)")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "paper"))
    parser.add_argument("--mae-epochs", type=int)
    parser.add_argument("--classifier-epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-minutes", type=float, help="training time budget for each model")
    parser.add_argument("--set", action="append")
    parser.add_argument("--mae-from", help="BraTS: take the MAE from this model and train only the classifier")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ixi", action="store_true", help="also run the IXI cross-dataset false-positive check")
    parser.add_argument("--ixi-train", type=int, default=30)
    parser.add_argument("--json", help="write all results to this file")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "brats2015").is_dir():
        print(f"skipped: no real data at {data} (pass DATA_DIR or set MAEANOMALY_DATA)")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"preset": args.preset, "machine": f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} cores", "brats": brats(data, work, args)}
    print(f"\nBraTS-2015 FLAIR, train pat0001-0004 (tumour-free slices), test pat0005-0006; preset {args.preset}")
    print(format_metrics(results["brats"]))
    print(f"training time: {results['brats']['train_seconds_recorded']} s (recorded in the model)")
    results["native_intensity_p995"] = native = native_heuristic(data)
    print("intensity p99.5 on the native 1 mm slices (given z-scores), AUROC / AUPRC: "
          + ", ".join(f"{k} {v['auroc']:.3f} / {v['auprc']:.3f}" for k, v in native.items()))
    if args.ixi:
        results["ixi"] = ixi(data, work, args)
        r = results["ixi"]
        print(f"\nIXI T1, {r['unseen_volumes']} unseen healthy volumes: {r['flagged_slices']} of {r['slices']} "
              f"brain slices flagged (FPR {r['false_positive_rate']:.3f}; target {r['target_fpr']}), "
              f"{r['volumes_with_a_flagged_slice']} volumes with at least one flagged slice")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=lambda o: np.asarray(o).tolist()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
