"""MAEDiff registered (Xu, Wang and Du, "MAEDiff: Masked Autoencoder-enhanced Diffusion Models for
Unsupervised Anomaly Detection in Brain Images"), and pDDPM (Behrendt et al., "Patched Diffusion Models for
Unsupervised Anomaly Detection in Brain MRI", MIDL 2023) as its ablation: the same code without the MAE
module and with test patches that do not overlap, so that every table shows what the module adds.
Torch-free at import; the network, stage and scorer load when used."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..base import Method, lazy
from .config import MAEDiffConfig, preset


def networks(cfg: Any) -> dict:
    from .network import PatchDiffusionUNet

    return {"unet": PatchDiffusionUNet(cfg.settings, cfg.preprocess.image_size)}


def summary_of_training(cfg: Any, progress: Any) -> dict:
    best = progress.best
    return {"diffusion_epoch_kept": best["epoch"] if best else len(progress.history.get("diffusion_loss", []))}


def batch_slices(cfg: Any, batch_size: int) -> int:
    """Slices per scoring batch: each costs one network pass per patch."""
    from .scorer import patches_per_slice

    s = cfg.settings
    return max(1, batch_size // patches_per_slice(cfg.preprocess.image_size, s.patch, s.stride))


def _method(name: str, summary: str, mae: bool) -> Method:
    column = f"{name}_l1"
    return Method(
        name=name,
        summary=summary,
        settings_type=MAEDiffConfig,
        presets=("tiny", "small", "paper"),
        preset=partial(preset, mae=mae),
        primary=column,
        columns=(column,),
        positioned={column: "log"},  # a positive mean error, skewed to the right
        descriptions={column: "Mean absolute difference between the slice and its reconstruction from noised "
                              "patches, in the foreground (the raw score)"},
        networks=networks,
        train=lazy(f"{__package__}.stages", "run_stage"),
        scorer=lazy(f"{__package__}.scorer", "make_scorer"),
        batch_slices=batch_slices,
        problems=lambda cfg: cfg.settings.problems(cfg.preprocess.image_size),
        summary_of_training=summary_of_training,
        # Scoring only: the network is the same whatever the test stride or step, so calibrate may change
        # them (with the thresholds and position reference they move).
        map_settings=("stride", "test_step"),
    )


METHODS = (
    _method("maediff", "MAEDiff: patched diffusion (x0 from one noised patch at a time, overlapping patches "
                       "averaged) with an MAE module on the visible cells (Xu et al.)", mae=True),
    _method("pddpm", "pDDPM, MAEDiff's ablation: patched diffusion without the MAE module, test patches "
                     "that do not overlap (Behrendt et al.)", mae=False),
)
