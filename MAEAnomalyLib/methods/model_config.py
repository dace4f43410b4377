"""A model's settings (``config.json``): which method made it, the shared sections, the method's own
section, and what training and calibration found. Everything here round-trips through JSON.

Format 2 records the method; format 1 (every model written before methods were plug-ins, all of them
the paper's method) loads unchanged: its settings move to where format 2 keeps them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.config import (
    CalibrationConfig,
    PreprocessConfig,
    SegmentationConfig,
    TrainConfig,
    build_section,
    section_problems,
    set_path,
)
from ..core.config_rules import without_removed
from ..core.errors import MAEAnomalyError
from . import DEFAULT_METHOD, get, names

FORMAT_VERSION = 2
# In config.json beside the settings: the SHA-256 of each weights file, a record of the model directory's
# files that model_io checks on loading, not a setting; from_dict leaves it out, so any reader accepts it.
DIGESTS_KEY = "weights_sha256"
SHARED = {"preprocess": PreprocessConfig, "train": TrainConfig, "calibration": CalibrationConfig,
          "segmentation": SegmentationConfig}
# Settings that moved from a shared section to ``calibration`` (format 1 kept them in ``train``).
SHARED_ALIASES = {"train.target_fpr": "calibration.target_fpr",
                  "train.position_reference": "calibration.position_reference"}
_RECORDS = ("threshold", "position_reference", "site_calibration", "voxel_threshold", "versions", "training_summary")


@dataclass
class ModelConfig:
    """Everything needed to rebuild and run a trained model; stored as ``config.json``."""

    method: str = DEFAULT_METHOD
    preset: str = "paper"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    settings: Any = None  # the method's section (``config.json`` keeps it under the method's name)
    threshold: float | None = None
    # Per tenth of the brain's axial extent, the healthy centre and spread of each positioned score
    # (calibration.position); None for models without one: their score is the method's raw primary score.
    position_reference: dict[str, Any] | None = None
    # Set by ``maeanomaly calibrate``: the healthy volumes of a site, and the threshold it replaced.
    site_calibration: dict[str, Any] = field(default_factory=dict)
    # Calibrated with the slice threshold; None in models trained before voxel calibration existed.
    voxel_threshold: float | None = None
    format_version: int = FORMAT_VERSION
    versions: dict[str, str] = field(default_factory=dict)
    training_summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = get(self.method).settings_type()

    def to_dict(self) -> dict[str, Any]:
        data = {"format_version": self.format_version, "method": self.method, "preset": self.preset}
        # A section's ``to_dict`` leaves out settings newer than a model while they hold their defaults.
        data.update({name: getattr(self, name).to_dict() if hasattr(getattr(self, name), "to_dict")
                     else dataclasses.asdict(getattr(self, name)) for name in SHARED})
        data[self.method] = dataclasses.asdict(self.settings)
        data.update({name: getattr(self, name) for name in _RECORDS})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Builds a config from JSON data (format 1 or 2), rejecting unknown or missing sections."""
        data = {k: v for k, v in data.items() if k != DIGESTS_KEY}
        # Format 2's removed options (train.appearance) are dropped or refused as format 1's are.
        data = from_format_1(data) if data.get("format_version", FORMAT_VERSION) == 1 else without_removed(data)
        method = data.get("method", DEFAULT_METHOD)
        if method not in names():
            raise ValueError(f"method '{method}' is not one of this version's ({', '.join(names())})")
        settings_type = get(method).settings_type
        known = {"format_version", "method", "preset", method, *SHARED, *_RECORDS}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in SHARED and k != method}
        for name, section in SHARED.items():
            kwargs[name] = build_section(section, data.get(name, {}), name)
        kwargs["settings"] = build_section(settings_type, data.get(method, {}), method)
        config = cls(**kwargs)
        config.check()
        return config

    def check(self) -> None:
        """Raises ValueError for a setting of the wrong type, outside its choices or range, or at odds
        with another."""
        problems = [p for name in SHARED for p in section_problems(getattr(self, name), name)]
        problems += section_problems(self.settings, self.method)
        if not problems:
            problems = get(self.method).problems(self) + threshold_problems(self)
        if problems:
            raise ValueError(problems[0])


def from_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``config.json`` (the paper's method, its settings in flat sections) as format 2."""
    data = without_removed(data)
    method = get(DEFAULT_METHOD)
    sections = ("preprocess", "mae", "classifier", "pseudo_abnormal", "train", "segmentation")
    if not all(isinstance(data.get(n, {}), dict) for n in sections):
        raise ValueError("every section must be a JSON object")
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in sections}
    out.update({"format_version": FORMAT_VERSION, "method": method.name})
    # Saved before smoothing or the spread existed: its voxel threshold is for the map it was made on.
    old = {**data, "segmentation": {"smoothing_mm": 0.0, "spread_floor": 0.0, **data.get("segmentation", {})}}
    for section in sections:
        for name, value in old.get(section, {}).items():
            path = resolve_alias(method.name, f"{section}.{name}").split(".")
            target = out
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
    return out


def resolve_alias(method: str, key: str) -> str:
    """The format-2 dotted path of a setting named as format 1 named it (``mae.depth``,
    ``train.mae_epochs``); any other name unchanged."""
    aliases = {**SHARED_ALIASES, **get(method).aliases}
    if key in aliases:
        return aliases[key]
    section, _, rest = key.partition(".")
    return f"{aliases[section]}.{rest}" if section in aliases and rest else key


def threshold_problems(cfg: ModelConfig) -> list[str]:
    """The threshold is a raw score, or with a position reference a z-score; the reference itself must
    hold a finite centre and a positive spread per bin for each positioned column of the method."""
    ref, threshold = cfg.position_reference, cfg.threshold
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)
    if threshold is not None and not number:
        return [f"threshold is {threshold!r}; it must be a finite number"]
    voxel = cfg.voxel_threshold
    if voxel is not None and not (isinstance(voxel, (int, float)) and math.isfinite(voxel) and voxel >= 0):
        return [f"voxel_threshold is {voxel!r}; it must be a number of at least 0"]
    positioned = get(cfg.method).positioned
    if ref is None:
        if threshold is not None and positioned.get(get(cfg.method).primary) == "logit" and not 0 <= threshold <= 1:
            return [f"threshold is {threshold!r}; it must be a probability from 0 to 1"]
        return []
    bins = ref.get("bins") if isinstance(ref, dict) else None
    columns = ref.get("columns") if isinstance(ref, dict) else None
    if not (isinstance(bins, int) and 1 <= bins <= 1000 and isinstance(columns, dict)
            and set(columns) == set(positioned)):
        return [f"position_reference must hold 'bins' and 'columns' for {' and '.join(positioned)}"]
    for name, entry in columns.items():
        if not (isinstance(entry, dict) and entry.get("transform") == positioned[name]
                and _finite_list(entry.get("centre"), bins) and _finite_list(entry.get("spread"), bins)
                and all(v > 0 for v in entry["spread"])):
            return [f"position_reference column {name} needs the transform {positioned[name]}, {bins} finite "
                    f"centres and {bins} positive spreads"]
    return []


def _finite_list(values: Any, length: int) -> bool:
    return (isinstance(values, list) and len(values) == length
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def preset(name: str, method: str = DEFAULT_METHOD) -> ModelConfig:
    """A fresh config of ``method``'s preset ``name`` (``tiny``, ``small``, ``paper`` for every method)."""
    found = get(method)
    if name not in found.presets:
        raise ValueError(f"unknown preset '{name}' (choose {', '.join(found.presets)})")
    settings, shared = found.preset(name)
    preprocess = PreprocessConfig(image_size=shared["image_size"],
                                  normalisation=shared.get("normalisation", PreprocessConfig.normalisation))
    return ModelConfig(method=method, preset=name, preprocess=preprocess,
                       train=TrainConfig(batch_size=shared["batch_size"]),
                       calibration=CalibrationConfig(position_reference=shared.get("position_reference", True)),
                       settings=settings)


PRESETS = ("tiny", "small", "paper")


def apply_overrides(cfg: ModelConfig, overrides: Sequence[str]) -> None:
    """Applies ``SECTION.FIELD=VALUE`` settings (the method's own under its name, e.g.
    ``mae_classifier.mae.depth=4``; format-1 names are aliases), each converted to the field's type."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise MAEAnomalyError(f"--set {item}: expected SECTION.FIELD=VALUE, e.g. {cfg.method}."
                                  f"{dataclasses.fields(cfg.settings)[-1].name}=... or segmentation.smoothing_mm=6")
        section, *path = resolve_alias(cfg.method, key).split(".")
        if section == cfg.method:
            root = cfg.settings
        elif section in SHARED:
            root = getattr(cfg, section)
        else:
            raise MAEAnomalyError(f"--set {item}: no section '{section}' (sections: "
                                  f"{', '.join([*SHARED, cfg.method])})")
        set_path(root, path, item, raw, section)
