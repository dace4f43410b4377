"""The paper's method registered: Georgescu, "Masked Autoencoders for Unsupervised Anomaly Detection in
Medical Images" (KES 2023). Torch-free at import; the networks, stages and scorer load when used."""

from __future__ import annotations

from typing import Any

from ...core.errors import MAEAnomalyError
from ..base import Method, lazy
from .config import MAEClassifierConfig, preset


def networks(cfg: Any) -> dict:
    from .classifier import build_classifier
    from .mae import MaskedAutoencoder

    size, s = cfg.preprocess.image_size, cfg.settings
    return {"mae": MaskedAutoencoder(s.mae, size), "classifier": build_classifier(s.classifier, size)}


def batch_slices(cfg: Any, batch_size: int) -> int:
    from .scorer import batch_slices as slices

    return slices(cfg.settings, batch_size)


def start_from(model: Any, source: Any, progress: Any) -> None:
    """Takes the MAE of a trained model with the same preprocessing and MAE settings; the classifier is trained."""
    from .stages import begin_classifier

    cfg, theirs = model.config, source.config
    if theirs.method != cfg.method or theirs.preprocess != cfg.preprocess or theirs.settings.mae != cfg.settings.mae:
        raise MAEAnomalyError("its preprocessing or MAE settings differ from this run's (use the same preset and MAE "
                              "settings)")
    model.mae.load_state_dict(source.mae.state_dict())
    begin_classifier(model, progress)


def summary_of_training(cfg: Any, progress: Any) -> dict:
    best = progress.best
    return {"classifier_epoch_kept": best["epoch"] if best else len(progress.history.get("classifier_loss", []))}


_MOVED_FROM_TRAIN = ("mae_epochs", "classifier_epochs", "classifier_batch_size", "mae_lr", "mae_weight_decay",
                     "classifier_lr", "classifier_weight_decay", "reconstruction_passes", "score_reconstructions",
                     "classifier_selection")

METHOD = Method(
    name="mae_classifier",
    summary="masked autoencoder and pseudo-abnormal classifier (Georgescu, KES 2023)",
    settings_type=MAEClassifierConfig,
    presets=("tiny", "small", "paper"),
    preset=preset,
    primary="probability",
    columns=("probability", "mae_l1", "ssim"),
    # The probability saturates at 0 and 1 (logit); the MAE error is positive and skewed (log).
    positioned={"probability": "logit", "mae_l1": "log"},
    lower_is_anomalous=("ssim",),
    descriptions={"probability": "Anomaly probability from the classifier (the raw score)",
                  "mae_l1": "Mean absolute reconstruction error in the foreground",
                  "mae_l1_position": "The reconstruction error's z-score against healthy slices at the same height",
                  "ssim": "Mean SSIM between slice and reconstruction in the foreground"},
    empty_scores={"ssim": 1.0},
    networks=networks,
    train=lazy(f"{__package__}.stages", "run_stages"),
    scorer=lazy(f"{__package__}.scorer", "make_scorer"),
    batch_slices=batch_slices,
    min_pixels=lambda cfg: cfg.settings.mae.patch_size,
    problems=lambda cfg: cfg.settings.problems(cfg.preprocess.image_size),
    summary_of_training=summary_of_training,
    start_from=start_from,
    map_settings=("spread_floor",),
    aliases={"mae": "mae_classifier.mae", "classifier": "mae_classifier.classifier",
             "pseudo_abnormal": "mae_classifier.pseudo_abnormal",
             "segmentation.spread_floor": "mae_classifier.spread_floor",
             **{f"train.{name}": f"mae_classifier.{name}" for name in _MOVED_FROM_TRAIN}},
)
