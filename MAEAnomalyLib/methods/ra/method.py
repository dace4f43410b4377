"""Reversed Autoencoders registered: Bercea, Wiestler, Rueckert and Schnabel, "Towards Universal
Unsupervised Anomaly Detection in Medical Imaging" (and MIDL 2023, "Generalizing Unsupervised Anomaly
Detection: Towards Unbiased Pathology Screening"). Torch-free at import; the network, stage and scorer
load when used."""

from __future__ import annotations

from typing import Any

from ..base import Method, lazy
from .config import RAConfig, preset


def networks(cfg: Any) -> dict:
    from .network import ReversedAutoencoder

    return {"ra": ReversedAutoencoder(cfg.settings, cfg.preprocess.image_size)}


def summary_of_training(cfg: Any, progress: Any) -> dict:
    best = progress.best
    return {"ra_epoch_kept": best["epoch"] if best else len(progress.history.get("ra_loss", []))}


METHOD = Method(
    name="ra",
    summary="Reversed Autoencoder: pseudo-healthy reconstruction by a Soft-IntroVAE with a reversed "
            "embedding loss, CLAHE residual map weighted by LPIPS or the plain residual (Bercea et al.)",
    settings_type=RAConfig,
    presets=("tiny", "small", "paper"),
    preset=preset,
    primary="ra_map_mean",
    columns=("ra_map_mean", "ra_l1"),
    # Both are positive mean errors, skewed to the right (log).
    positioned={"ra_map_mean": "log", "ra_l1": "log"},
    map_settings=("anomaly_map", "clahe_clip", "clahe_tiles"),  # the map only: calibrate may change them
    descriptions={"ra_map_mean": "Mean of the RA anomaly map in the foreground (the raw score): "
                                 "|CLAHE(pseudo-healthy) - CLAHE(slice)| x the two smoothed LPIPS maps, or with "
                                 "ra.anomaly_map=residual |pseudo-healthy - slice|",
                  "ra_l1": "Mean absolute difference between the slice and its pseudo-healthy reconstruction",
                  "ra_l1_position": "That difference's z-score against healthy slices at the same height"},
    networks=networks,
    train=lazy(f"{__package__}.stages", "run_stage"),
    scorer=lazy(f"{__package__}.scorer", "make_scorer"),
    problems=lambda cfg: cfg.settings.problems(cfg.preprocess.image_size),
    summary_of_training=summary_of_training,
)
