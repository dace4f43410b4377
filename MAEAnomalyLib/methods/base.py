"""What a method is to the rest of the library, and what its scorer returns (the same type for every
method, as anomalib's ``InferenceBatch``).

A method is one folder under ``methods/`` holding a ``Method``: its name, its settings section and
presets, its networks, its training stages (each one ``engine.loop.Stage``) and its scorer. Everything
else (data, preprocessing, the training engine, calibration, scoring, outputs, evaluation, the CLI and
the Slicer module) is shared and reads only what is declared here. docs/adding-a-method.md walks through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import: the settings of a model are read without torch
    import numpy as np
    import torch
    from torch import nn

    from ..data.slice_cache import SliceRows
    from ..engine.loop import Progress, Run
    from .model import AnomalyModel


@dataclass
class SliceScores:
    """A method's scores for a batch of N prepared slices."""

    scores: dict[str, np.ndarray]  # named per-slice scores, each (N,); ``Method.primary`` among them
    anomaly_map: torch.Tensor  # (N, 1, S, S) at model resolution, zero outside the foreground
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # optional per-pixel extras, each (N, 1, S, S)


# A scorer: (images (N, 1, S, S), foreground (N, 1, S, S), slice indices (N,)) -> SliceScores. It must give
# each slice the same result whatever batch it is in (seed by the slice index, not the batch).
Scorer = Callable[["torch.Tensor", "torch.Tensor", "np.ndarray"], SliceScores]


def masked_mean(values: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """The mean of each (N, 1, S, S) map inside its foreground, in float32 (0 where it has none): the slice
    scores that average an error or a map over the brain."""
    fg = foreground.float()
    return (values * fg).sum(dim=(1, 2, 3)) / fg.sum(dim=(1, 2, 3)).clamp(min=1)


@dataclass
class TrainingData:
    """What a method's stages train on: healthy slices of the training and of the held-out volumes, and
    a folder for what a stage writes on the way (removed when the model is saved)."""

    train: SliceRows
    val: SliceRows
    work_dir: Any  # pathlib.Path


@dataclass(frozen=True)
class Method:
    """A registered method. Functions take the whole ``ModelConfig`` (``cfg.settings`` is the method's section)."""

    name: str
    summary: str  # one line for --help and the Slicer module
    settings_type: type  # the dataclass of its section of config.json
    presets: tuple[str, ...]
    # preset name -> (its section, the shared settings that preset sets: image_size, batch_size and, when
    # not the defaults, position_reference (True) and normalisation ("percentile"))
    preset: Callable[[str], tuple[Any, dict]]
    primary: str  # the raw score the position reference and the slice threshold calibrate
    columns: tuple[str, ...]  # its slice-table columns, in order (``primary`` among them)
    # columns the position reference is built for, each with the transform that makes it roughly
    # symmetric first ("logit" for probabilities, "log" for positive skewed errors, "none")
    positioned: dict[str, str]
    # cfg -> {name: network}; every network is saved as NAME.safetensors (none: nothing is trained)
    networks: Callable[[Any], dict[str, nn.Module]]
    # (model, data, run, progress, resumed): trains what is left of its stages, each with
    # ``engine.loop.train_stage`` (checkpoints, --resume, DDP and the time budget come with it)
    train: Callable[[AnomalyModel, TrainingData, Run, Progress, dict | None], None]
    scorer: Callable[[AnomalyModel, torch.device], Scorer]
    # a line for each of its columns, shown in the Slicer table
    descriptions: dict[str, str] = field(default_factory=dict)
    # its columns where a lower value means more anomalous (SSIM), for the evaluation's AUROCs
    lower_is_anomalous: tuple[str, ...] = ()
    # the score of a slice without foreground, where it is not 0 (SSIM: 1, nothing differs)
    empty_scores: dict[str, float] = field(default_factory=dict)
    # (cfg, batch size) -> slices per scoring batch (a method that scores R copies of each slice takes fewer)
    batch_slices: Callable[[Any, int], int] = lambda cfg, batch_size: batch_size
    # the smallest slice side (pixels) the method can take, e.g. a ViT's patch
    min_pixels: Callable[[Any], int] = lambda cfg: 1
    # extra rules between its settings and the shared ones: cfg -> problems
    problems: Callable[[Any], list[str]] = lambda cfg: []
    # (cfg, progress) -> what the training summary records of its stages
    summary_of_training: Callable[[Any, Progress], dict] = lambda cfg, progress: {}
    # (model, trained model, progress): starts from another model's networks (``train --mae-from``)
    start_from: Callable[[AnomalyModel, AnomalyModel, Progress], None] | None = None
    # settings of its section that shape only the map, which ``calibrate --set`` may change with the thresholds
    map_settings: tuple[str, ...] = ()
    # aliases of its settings from the previous format: old "section.field" -> its dotted path
    aliases: dict[str, str] = field(default_factory=dict)

    def position_columns(self) -> dict[str, str]:
        """Its columns that the slice table also gives against healthy slices at the same height, each with
        that column's name: every positioned one but the primary, which ``score`` already is."""
        return {c: f"{c}_position" for c in self.columns if c in self.positioned and c != self.primary}


def lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` as a function that imports its module when first called, so that registering a
    method imports no torch."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call
