"""Held-out healthy slices against their pseudo-abnormal versions, for a trained model: how MAEAnomaly
chooses settings without ever looking at real anomalies.

Each slice is reconstructed R times (other random masks); the classifier's probability is averaged
over the R difference images, as ``mae_classifier.score_reconstructions=R`` scores. Positives are the same
reconstructions with the same pseudo-abnormal boxes and betas. Prints the binary cross-entropy,
AUROC and accuracy for each R. Usage:

    python benchmarks/healthy_validation.py MODEL_DIR --images V.nii.gz [--masks M.nii.gz]
        [--labels L.nii.gz] [--reconstructions 1,2,4,8] [--draws 3] [--flip]
        [--task mae_classifier.pseudo_abnormal.FIELD=VALUE ...]

Slices are used as training uses them: enough foreground, and none of the label map's slices.
The boxes are drawn as the model was trained to see them, unless ``--task`` changes the
pseudo-abnormal settings: models trained on other boxes are then compared on one fixed task. The
format-1 name ``pseudo_abnormal.FIELD`` is an alias of ``mae_classifier.pseudo_abnormal.FIELD``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.preprocessing import prepare
from MAEAnomalyLib.data.slice_cache import healthy_rows
from MAEAnomalyLib.methods.mae_classifier.classifier import anomaly_probability, classifier_input
from MAEAnomalyLib.methods.mae_classifier.pseudo_abnormal import make_pseudo_abnormal
from MAEAnomalyLib.methods.mae_classifier.reconstruction import reconstruct_samples
from MAEAnomalyLib.methods.model import AnomalyModel, load_model
from MAEAnomalyLib.methods.model_config import ModelConfig, apply_overrides, resolve_alias
from MAEAnomalyLib.scoring.scores import min_pixels

BATCH = 32


def healthy_slices(model: AnomalyModel, images: list[Path], masks: list | None, labels: list | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N, 1, S, S) slices and foregrounds that training would use from these volumes."""
    cfg = model.config
    xs, fgs = [], []
    for i, image in enumerate(images):
        volume = prepare(image, cfg.preprocess, masks[i] if masks else None, labels[i] if labels else None,
                         min_pixels=min_pixels(cfg))
        usable = healthy_rows(volume.foreground_fraction, volume.labelled, cfg.preprocess.min_train_foreground)
        xs.append(volume.slices[usable])
        fgs.append(volume.foreground[usable])
    return torch.cat(xs), torch.cat(fgs)


@torch.inference_mode()
def probabilities(model: AnomalyModel, differences: torch.Tensor, foreground: torch.Tensor, flip: bool) -> np.ndarray:
    """The classifier's probability for each (N, 1, S, S) difference image (and its mirror image)."""
    views = [(differences, foreground)] + ([(differences.flip(-1), foreground.flip(-1))] if flip else [])
    settings = model.config.settings.classifier
    out = []
    for d, f in views:
        out.append(torch.cat([anomaly_probability(model.classifier(classifier_input(
            d[i:i + BATCH], f[i:i + BATCH], settings))) for i in range(0, len(d), BATCH)]).numpy())
    return np.mean(out, axis=0, dtype=np.float64)  # so that negatives and positives average over R alike


def validation_task(cfg: ModelConfig, settings: list[str]) -> ModelConfig:
    """A copy of the model's config with the pseudo-abnormal ``settings`` applied."""
    task_section = resolve_alias(cfg.method, "pseudo_abnormal") + "."
    wrong = [s for s in settings if not resolve_alias(cfg.method, s.partition("=")[0]).startswith(task_section)]
    if wrong:
        raise MAEAnomalyError(f"--task {wrong[0]}: only pseudo_abnormal settings define the validation task")
    task = copy.deepcopy(cfg)
    apply_overrides(task, settings)
    return task


def metrics(negatives: np.ndarray, positives: np.ndarray) -> tuple[float, float, float]:
    p = np.clip(np.concatenate([negatives, positives]), 1e-7, 1 - 1e-7)
    y = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(loss), float(roc_auc_score(y, p)), float(np.mean((p >= 0.5) == y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", type=Path, nargs="+", required=True)
    parser.add_argument("--masks", type=Path, nargs="+")
    parser.add_argument("--labels", type=Path, nargs="+", help="label maps whose abnormal slices are left out")
    parser.add_argument("--reconstructions", default="1,2,4,8", help="values of R, each dividing the largest")
    parser.add_argument("--draws", type=int, default=3, help="draws of pseudo-abnormal boxes per slice")
    parser.add_argument("--flip", action="store_true", help="also average over the left-right mirror image")
    parser.add_argument("--task", action="append", default=[], metavar="mae_classifier.pseudo_abnormal.FIELD=VALUE",
                        help="draw the validation boxes with this setting instead of the model's (repeatable)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    counts = [int(r) for r in args.reconstructions.split(",")]
    most = max(counts)
    try:
        model = load_model(args.model).eval()
        task = validation_task(model.config, args.task)
        x, fg = healthy_slices(model, args.images, args.masks, args.labels)
    except MAEAnomalyError as error:
        sys.exit(f"error: {error}")
    cfg = model.config
    generator = torch.Generator().manual_seed(0)
    recons = torch.cat([reconstruct_samples(model.mae, x[i:i + BATCH], cfg.settings.reconstruction_passes, most,
                                            generator) for i in range(0, len(x), BATCH)], dim=1)
    negatives = np.stack([probabilities(model, (r - x).abs(), fg, args.flip) for r in recons])
    positives = np.zeros((args.draws, *negatives.shape))
    boxes = task.settings.pseudo_abnormal
    for d in range(args.draws):
        for k, r in enumerate(recons):  # the same boxes and betas in every reconstruction
            pseudo, _ = make_pseudo_abnormal(r, boxes, torch.Generator().manual_seed(100 + d), fg)
            positives[d, k] = probabilities(model, (pseudo - x).abs(), fg, args.flip)

    print(f"{args.model}: {len(x)} healthy slices, {args.draws} draws of boxes, {most} reconstructions"
          + (", with mirror images" if args.flip else "")
          + (f"; task: {', '.join(args.task)}" if args.task else ""))
    print("R   loss     AUROC    accuracy  (means over groups of R reconstructions and draws)")
    for r in counts:
        rows = [metrics(negatives[g:g + r].mean(0), positives[d, g:g + r].mean(0))
                for g in range(0, most - most % r, r) for d in range(args.draws)]
        loss, auroc, acc = np.mean(rows, axis=0)
        print(f"{r:<3} {loss:.4f}   {auroc:.4f}   {acc:.3f}")


if __name__ == "__main__":
    main()
