"""The settings of the intensity method (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class IntensityConfig:
    """The method's section of ``config.json`` (``intensity``)."""

    # Nothing to set: the slice score is the 99.5th percentile of the normalised intensity in the brain,
    # as the baseline column of every table, so that the two stay one figure.
    CHOICES: ClassVar[dict] = {}
    RANGES: ClassVar[dict] = {}


def preset(name: str) -> tuple[IntensityConfig, dict]:
    """Every preset is the same method; the image size follows the other methods' presets of that name,
    so that a preset's maps are comparable across methods."""
    sizes = {"tiny": (64, 32), "small": (128, 64), "paper": (224, 64)}
    if name not in sizes:
        raise ValueError(f"unknown preset '{name}' (choose tiny, small or paper)")
    size, batch = sizes[name]
    return IntensityConfig(), {"image_size": size, "batch_size": batch}
