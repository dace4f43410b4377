"""The intensity baseline registered as a method: no networks, no stages; training calibrates it."""

from __future__ import annotations

from ..base import Method, lazy
from .config import IntensityConfig, preset

METHOD = Method(
    name="intensity",
    summary="99.5th percentile of normalised intensity in the brain (non-learned baseline; strong on FLAIR)",
    settings_type=IntensityConfig,
    presets=("tiny", "small", "paper"),
    preset=preset,
    primary="intensity_p995",
    columns=("intensity_p995",),
    positioned={"intensity_p995": "none"},
    networks=lambda cfg: {},
    train=lambda model, data, run, progress, resumed: None,
    scorer=lazy(f"{__package__}.scorer", "make_scorer"),
)
