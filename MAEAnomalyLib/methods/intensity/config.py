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
    # No position reference: the percentile is clipped at the volume's 99.5th percentile, so mid-brain
    # healthy slices sit at the clip and their spread per tenth collapses (0.0035 against 0.08 at the
    # brain's ends on held-out IXI), and a z-score per tenth would divide by almost nothing there
    # (docs/experiments.md). The score is the raw percentile, as the baseline column.
    return IntensityConfig(), {"image_size": size, "batch_size": batch, "position_reference": False}
