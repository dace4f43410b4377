"""The intensity baseline registered as a method: no networks, no stages; training calibrates it."""

from __future__ import annotations

from typing import Any

from ..base import Method
from .config import IntensityConfig, preset


def scorer(model: Any, device: Any) -> Any:
    from .scorer import make_scorer

    return make_scorer(model, device)


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
    scorer=scorer,
)
