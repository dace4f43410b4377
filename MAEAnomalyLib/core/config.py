"""The settings every method shares, and the machinery of every settings section: building one from
JSON (unknown keys refused), checking it (types, choices, ranges, relations) and ``--set`` overrides.

A section is a dataclass; it may declare ``CHOICES`` and ``RANGES`` (field name to allowed names or to a
[low, high) range) and a ``problems()`` method for rules between its fields. Sections nest: a method's
section holds its networks' sections, and a setting is named by its dotted path (``mae_classifier.mae.depth``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import MAEAnomalyError

# Percentiles of the foreground intensities that histogram standardisation aligns (Nyúl, Udupa & Zhang 2000);
# the ends are the percentile normalisation's defaults, so that every option clips the same tails.
LANDMARK_PERCENTILES = (0.5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99.5)


def is_standard_scale(values: list) -> bool:
    """Whether ``values`` can be histogram landmarks: one finite number per landmark percentile, strictly
    increasing from 0 to 1."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    return (numbers and len(values) == len(LANDMARK_PERCENTILES) and values[0] == 0 and values[-1] == 1
            and all(values[i] < values[i + 1] for i in range(len(values) - 1)))


@dataclass
class PreprocessConfig:
    """How a volume becomes a stack of normalised square slices."""

    CHOICES: ClassVar[dict] = {"normalisation": ("percentile", "histogram")}
    RANGES: ClassVar[dict] = {"image_size": (8, 4097), "lower_percentile": (0, 100), "upper_percentile": (0, 100.0001),
                              "min_train_foreground": (0, 1.0001), "crop_margin": (0, 1_000_000)}

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
    # How intensities inside the foreground become [0, 1] (data.standardisation): ``percentile`` maps the
    # [lower, upper] percentiles; ``histogram`` maps each volume's LANDMARK_PERCENTILES piecewise linearly
    # onto ``landmarks``, the standard scale learned from the training volumes.
    normalisation: str = "percentile"
    landmarks: list[float] = dataclasses.field(default_factory=list)  # histogram only: set by training, empty otherwise

    def problems(self) -> list[str]:
        if self.lower_percentile >= self.upper_percentile:
            return [f"preprocess.lower_percentile ({self.lower_percentile}) must be below upper_percentile "
                    f"({self.upper_percentile})"]
        marks = self.landmarks
        if not (isinstance(marks, list) and (not marks or is_standard_scale(marks))):
            return [f"preprocess.landmarks is {marks!r}; it must be empty or {len(LANDMARK_PERCENTILES)} strictly "
                    "increasing numbers from 0 to 1"]
        if marks and self.normalisation != "histogram":
            return [f"preprocess.landmarks are set, but preprocess.normalisation is {self.normalisation!r}; "
                    "only histogram uses them"]
        return []

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON data, less ``normalisation`` and ``landmarks`` while they hold their defaults:
        a percentile model's config.json, checkpoint and slice cache key are what they were before them."""
        data = dataclasses.asdict(self)
        if self.normalisation == "percentile" and not self.landmarks:
            del data["normalisation"], data["landmarks"]
        return data


@dataclass
class TrainConfig:
    """What every method's training shares: the split, the seed, the batch and the schedule's warm-up."""

    CHOICES: ClassVar[dict] = {}
    RANGES: ClassVar[dict] = {"batch_size": (1, 1_000_001), "warmup_fraction": (0, 1),
                              "validation_fraction": (0.001, 1), "seed": (0, 2**63)}

    batch_size: int = 64  # training, reconstruction and validation batches (a method may set its own too)
    warmup_fraction: float = 0.05
    validation_fraction: float = 0.2
    hflip: bool = True
    seed: int = 0


@dataclass
class CalibrationConfig:
    """The slice threshold, set on held-out healthy slices only."""

    CHOICES: ClassVar[dict] = {}
    RANGES: ClassVar[dict] = {"target_fpr": (1e-6, 1)}

    target_fpr: float = 0.05
    # Score each slice against held-out healthy slices at the same height in the brain (calibration.position);
    # false: the method's raw primary score (for the paper's method, the classifier's probability).
    position_reference: bool = True


@dataclass
class SegmentationConfig:
    """How the anomaly map becomes an anomaly segmentation (``calibration.voxel_threshold``,
    ``scoring.segmentation``). Every default was chosen on healthy volumes alone, ``smoothing_mm`` on
    synthetic lesions implanted in them (docs/experiments.md)."""

    CHOICES: ClassVar[dict] = {}
    RANGES: ClassVar[dict] = {"target_fpr": (1e-6, 1), "median_radius": (0, 6), "smoothing_mm": (0, 50),
                              "min_component_mm3": (0, 1e9)}

    # Share of the held-out healthy foreground voxels above the voxel threshold (its 99th percentile).
    target_fpr: float = 0.01
    # Standard deviation (mm) of the 3D Gaussian that averages the map inside the foreground (0: per
    # voxel). A lesion raises it over its whole extent; healthy fine detail at scattered voxels, which the
    # average spreads thin. A model saved without a field was calibrated on a map made without it, and
    # loads with 0.
    smoothing_mm: float = 8.0
    # Radius in voxels of the 3D median filter applied to the map before thresholding (0: off).
    median_radius: int = 0
    # Connected components smaller than this (mm³) are dropped after thresholding (0: keep all). The size
    # of a 5.8-mm sphere: the largest dropped a priori.
    min_component_mm3: float = 100.0


def is_section(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def build_section(cls: type, data: Any, path: str) -> Any:
    """A section (and the sections nested in it) from JSON data; unknown keys are refused."""
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(data) - set(fields)
    if extra:
        raise ValueError(f"unknown keys {sorted(extra)} in '{path}'")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        kwargs[name] = build_section(type(default), value, f"{path}.{name}") if is_section(default) else value
    return cls(**kwargs)


def _type_problem(path: str, field: dataclasses.Field, value: Any) -> str | None:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(field.type))
    if kind is None:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    wanted = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]
    return None if ok else f"{path} is {value!r}; it must be {wanted}"


def value_problem(section: Any, name: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``section.name`` ("choose …" or "must be …"), or None when it can."""
    choices = getattr(section, "CHOICES", {}).get(name)
    if choices is not None and value not in choices:
        return f"choose {', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else f"must be {choices[0]}"
    bounds = getattr(section, "RANGES", {}).get(name)
    if bounds is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                   and bounds[0] <= float(value) < bounds[1]):
        return f"must be at least {bounds[0]} and below {bounds[1]}"
    return None


def section_problems(section: Any, path: str) -> list[str]:
    """Every problem of a section and of the sections nested in it: types first, then values, then rules."""
    problems: list[str] = []
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if is_section(value):
            problems += section_problems(value, f"{path}.{field.name}")
            continue
        problem = _type_problem(f"{path}.{field.name}", field, value)
        if problem is None and (problem := value_problem(section, field.name, value)) is not None:
            subject = "it " if problem.startswith("must") else ""
            problem = f"{path}.{field.name} is {value!r}; {subject}{problem}"
        if problem is not None:
            problems.append(problem)
    if not problems and hasattr(section, "problems"):
        problems += section.problems()
    return problems


def convert(item: str, current: Any, raw: str) -> Any:
    """``raw`` as the type of ``current`` (the setting's present value); a one-line error otherwise."""
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        return type(current)(raw)
    except ValueError:
        raise MAEAnomalyError(f"--set {item}: '{raw}' is not a valid {type(current).__name__}") from None


def set_path(root: Any, path: list[str], item: str, raw: str, prefix: str = "") -> None:
    """Sets the setting at the dotted ``path`` below ``root`` (itself named ``prefix``) from the text
    ``raw``, checked."""
    section = root
    for depth, name in enumerate(path):
        names = [f.name for f in dataclasses.fields(section)]
        where = ".".join(p for p in (prefix, *path[:depth]) if p) or "the settings"
        if name not in names:
            raise MAEAnomalyError(f"--set {item}: {where} has no setting '{name}' (settings: {', '.join(names)})")
        value = getattr(section, name)
        if depth == len(path) - 1:
            if is_section(value):
                raise MAEAnomalyError(f"--set {item}: '{name}' is a section; name one of its settings")
            new = convert(item, value, raw)
            problem = value_problem(section, name, new)
            if problem is not None:
                raise MAEAnomalyError(f"--set {item}: {problem}")
            setattr(section, name, new)
            return
        if not is_section(value):
            raise MAEAnomalyError(f"--set {item}: '{name}' is a setting, not a section")
        section = value
