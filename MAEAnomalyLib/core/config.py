"""Configuration dataclasses and the named presets; everything here round-trips through JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config_rules import check_config, setting_problem, without_removed
from .errors import MAEAnomalyError

FORMAT_VERSION = 1
# In config.json beside the settings: the SHA-256 of each weights file, a record of the model directory's
# files that model_io checks on loading, not a setting; from_dict leaves it out, so any reader accepts it.
DIGESTS_KEY = "weights_sha256"


@dataclass
class PreprocessConfig:
    """How a volume becomes a stack of normalised square slices."""

    image_size: int = 224
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    # Slices whose foreground covers less than this fraction are not used for training.
    min_train_foreground: float = 0.05
    # Crop every slice of a volume to the in-plane bounding box of its whole foreground (plus this
    # many voxels), so that the anatomy, not the empty frame, fills the model's input. The paper
    # resizes the whole 240x240 slice.
    crop_to_foreground: bool = False
    crop_margin: int = 4


@dataclass
class MAEConfig:
    """Masked autoencoder sizes (encoder ViT plus a lighter decoder)."""

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75


@dataclass
class ClassifierConfig:
    """Anomaly classifier: a ViT with one input channel and one logit."""

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # The reference code starts from the MAE encoder; the paper does not say so.
    init_from_mae: bool = False
    # "bce": one logit and binary cross-entropy (paper); "softmax": two logits and
    # label-smoothed cross-entropy (reference code).
    head: str = "bce"
    label_smoothing: float = 0.1
    # Zero the difference image outside the foreground mask, in training and scoring alike. The paper
    # feeds the whole image; off the brain the difference is reconstruction noise on empty background.
    masked_input: bool = False
    # What the head reads: "token" the class token (paper, ViT); "avg", "max" or "avgmax" pool the
    # patch tokens, so that one small anomalous region need not be routed into the class token.
    global_pool: str = "token"


@dataclass
class PseudoAbnormalConfig:
    """Boxes whose intensity is scaled to fake a reconstruction failure (paper, Sec. 3.3)."""

    min_boxes: int = 1
    max_boxes: int = 10
    # Box sides in pixels at ``reference_size``; scaled with the actual input size.
    min_side: int = 10
    max_side: int = 40
    reference_size: int = 224
    # "box": one beta per box (paper); "pixel": one beta per pixel (ablation; reference code).
    beta_mode: str = "box"
    beta_low: float = 0.0
    beta_high: float = 1.0
    # Centre every box on a foreground pixel; the paper places boxes anywhere in the image.
    in_foreground: bool = False


@dataclass
class TrainConfig:
    """Optimisation settings for both stages."""

    mae_epochs: int = 100
    classifier_epochs: int = 20
    batch_size: int = 64  # MAE training, reconstruction and validation
    # A small training set gives the classifier few optimizer steps per epoch at the MAE's batch size.
    classifier_batch_size: int = 64
    mae_lr: float = 1.5e-4
    mae_weight_decay: float = 0.05
    classifier_lr: float = 1e-3
    classifier_weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    reconstruction_passes: int = 4
    # Independent reconstructions (other masks) of each slice when scoring and calibrating; the
    # classifier's probabilities, the MAE errors and the difference map are their averages. The paper
    # scores one; the score of a single one varies with its random masks.
    score_reconstructions: int = 1
    validation_fraction: float = 0.2
    target_fpr: float = 0.05
    # Score each slice against held-out healthy slices at the same height in the brain (scoring.position);
    # false: the classifier's probability, as in the paper.
    position_reference: bool = True
    # "last": keep the classifier of the last epoch (paper); "best_validation": keep the epoch with the
    # lowest loss on the held-out healthy volumes against their pseudo-abnormal versions (never real
    # anomalies), which guards against over-fitting a small training set.
    classifier_selection: str = "last"
    hflip: bool = True
    seed: int = 0


@dataclass
class SegmentationConfig:
    """How the difference map becomes an anomaly segmentation (``voxel_threshold``, ``scoring.segmentation``).

    Every default was chosen on healthy volumes alone, ``spread_floor`` and ``smoothing_mm`` on synthetic
    lesions implanted in them (README, *Anomaly segmentation*)."""

    # Share of the held-out healthy foreground voxels above the voxel threshold (its 99th percentile).
    target_fpr: float = 0.01
    # The map divides |reconstruction - original| by (the spread of the MAE's predictions + this floor):
    # the error counts less where the MAE is unsure of healthy anatomy (tissue edges), more where it
    # predicts with confidence and is wrong (0: not divided). The floor keeps pixels the MAE is sure of
    # from dividing by almost nothing.
    spread_floor: float = 0.05
    # Standard deviation (mm) of the 3D Gaussian that averages the map inside the foreground (0: per
    # voxel). A lesion raises it over its whole extent; healthy fine detail at scattered voxels, which the
    # average spreads thin. Floor and smoothing together located synthetic lesions (blobs and rings) in
    # unseen healthy IXI volumes best (benchmarks/voxel_smoothing.py). A model saved without a field was
    # calibrated on a map made without it, and loads with 0.
    smoothing_mm: float = 8.0
    # Radius in voxels of the 3D median filter applied to the map before thresholding (0: off). On unseen
    # healthy IXI it raised the per-voxel map's false-positive volume per subject; on the default map it
    # lowers it slightly and steadily with the radius, as any shrinking does (benchmarks/README.md).
    median_radius: int = 0
    # Connected components smaller than this (mm³) are dropped after thresholding (0: keep all). The size
    # of a 5.8-mm sphere: the largest dropped a priori; larger sizes lower healthy false positives further
    # only by discarding lesions of that size too.
    min_component_mm3: float = 100.0


@dataclass
class ModelConfig:
    """Everything needed to rebuild and run a trained model; stored as ``config.json``."""

    preset: str = "paper"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    pseudo_abnormal: PseudoAbnormalConfig = field(default_factory=PseudoAbnormalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    threshold: float | None = None
    # Per tenth of the brain's axial extent, the healthy centre and spread of each score (scoring.position);
    # None for models without one: their score is the classifier's probability.
    position_reference: dict[str, Any] | None = None
    # Set by ``maeanomaly calibrate``: the healthy volumes of a site, and the threshold it replaced.
    site_calibration: dict[str, Any] = field(default_factory=dict)
    # Calibrated with the slice threshold; None in models trained before voxel calibration existed.
    voxel_threshold: float | None = None
    format_version: int = FORMAT_VERSION
    versions: dict[str, str] = field(default_factory=dict)
    training_summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Builds a config from JSON data, rejecting unknown or missing sections."""
        sections = {
            "preprocess": PreprocessConfig,
            "mae": MAEConfig,
            "classifier": ClassifierConfig,
            "pseudo_abnormal": PseudoAbnormalConfig,
            "train": TrainConfig,
            "segmentation": SegmentationConfig,
        }
        if not all(isinstance(data.get(n, {}), dict) for n in sections):
            raise ValueError("every section must be a JSON object")
        data = {k: v for k, v in without_removed(data).items() if k != DIGESTS_KEY}
        # Saved before smoothing or the spread existed: its voxel threshold is for the map it was made on.
        data["segmentation"] = {"smoothing_mm": 0.0, "spread_floor": 0.0, **data.get("segmentation", {})}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        kwargs: dict[str, Any] = dict(data)
        for name, section in sections.items():
            values = data.get(name, {})
            names = {f.name for f in dataclasses.fields(section)}
            extra = set(values) - names
            if extra:
                raise ValueError(f"unknown keys {sorted(extra)} in '{name}'")
            kwargs[name] = section(**values)
        config = cls(**kwargs)
        config.check()
        return config

    def check(self) -> None:
        """Raises ValueError for a setting of the wrong type, outside its choices or range, or at odds
        with another (see ``config_rules``)."""
        check_config(self)


def _preset(name: str, size: int, patch: int, enc: tuple[int, int, int], dec: tuple[int, int, int],
            train: TrainConfig) -> ModelConfig:
    dim, depth, heads = enc
    ddim, ddepth, dheads = dec
    return ModelConfig(
        preset=name,
        preprocess=PreprocessConfig(image_size=size),
        mae=MAEConfig(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                      decoder_embed_dim=ddim, decoder_depth=ddepth, decoder_num_heads=dheads),
        classifier=ClassifierConfig(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads),
        train=train,
    )


def preset(name: str) -> ModelConfig:
    """Returns a fresh config for ``tiny`` (tests, demo), ``small`` (CPU) or ``paper`` (ViT-B/16, 224 px)."""
    if name == "paper":  # every option as in the paper
        return _preset("paper", 224, 16, (768, 12, 12), (512, 8, 16),
                       TrainConfig(mae_epochs=1600, classifier_epochs=100, batch_size=64))
    if name == "tiny":
        cfg = _preset("tiny", 64, 8, (96, 4, 3), (64, 2, 4),
                      TrainConfig(mae_epochs=100, classifier_epochs=40, batch_size=32, classifier_batch_size=32,
                                  mae_lr=1e-3, classifier_selection="best_validation"))
    elif name == "small":
        # 152 BraTS training slices give 3 classifier steps an epoch at batch 64: too few. At batch 16
        # the paper's classifier lr of 1e-3 gave a higher healthy validation loss than 3e-4 (3 seeds).
        # Averaging 4 reconstructions lowered it on all 3 seeds; 8 added little for twice the cost. So
        # did a head on the max-pooled patch tokens instead of the class token.
        cfg = _preset("small", 128, 8, (192, 6, 3), (128, 2, 4),
                      TrainConfig(mae_epochs=60, classifier_epochs=15, batch_size=64, classifier_batch_size=16,
                                  mae_lr=1e-3, classifier_lr=3e-4, classifier_selection="best_validation",
                                  score_reconstructions=4))
        cfg.classifier.global_pool = "max"
    else:
        raise ValueError(f"unknown preset '{name}' (choose tiny, small or paper)")
    # Trained on a few hundred slices, the classifier learns little from boxes on empty background and
    # an unmasked difference image, and over-fits soon (measured: docs/experiments.md).
    cfg.pseudo_abnormal.in_foreground = True
    cfg.classifier.masked_input = True
    return cfg


PRESETS = ("tiny", "small", "paper")


def apply_overrides(cfg: ModelConfig, overrides: Sequence[str]) -> None:
    """Applies ``section.field=value`` settings, converting each value to the field's type."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        section_name, _, field_name = key.partition(".")
        section = getattr(cfg, section_name, None)
        sections = [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
        if not sep or not field_name:
            raise MAEAnomalyError(f"--set {item}: expected section.field=value, e.g. pseudo_abnormal.beta_mode=pixel")
        if section_name not in sections:
            raise MAEAnomalyError(f"--set {item}: no section '{section_name}' (sections: {', '.join(sections)})")
        names = [f.name for f in dataclasses.fields(section)]
        if field_name not in names:
            raise MAEAnomalyError(f"--set {item}: '{section_name}' has no setting '{field_name}' "
                                  f"(settings: {', '.join(names)})")
        current = getattr(section, field_name)
        try:
            if isinstance(current, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value: object = raw.lower() in ("true", "1")
            else:
                value = type(current)(raw)
        except ValueError:
            raise MAEAnomalyError(f"--set {item}: '{raw}' is not a valid {type(current).__name__}") from None
        problem = setting_problem(section_name, field_name, value)
        if problem is not None:
            raise MAEAnomalyError(f"--set {item}: {problem}")
        setattr(section, field_name, value)
