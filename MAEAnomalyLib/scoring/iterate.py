"""The one loop "prepare each volume, score it, hand it on" that calibration and evaluation share
(cohort scoring runs the same two steps, ``prepare_for_scoring`` and ``score_prepared``, in prefetching
workers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..data.inputs import Source
from ..data.preprocessing import PreparedVolume
from ..engine.loop import release_freed_memory
from ..methods.model import AnomalyModel
from .scores import VolumeScores, min_pixels, score_prepared

# (image, preprocessing settings, mask, labels, min_pixels=...) -> the prepared volume
PrepareFn = Callable[..., PreparedVolume]


def scored_volumes(model: AnomalyModel, sources: Sequence[Source], prepare_fn: PrepareFn, device: torch.device,
                   batch_size: int = 32, rank: int = 0, world: int = 1,
                   after_round: Callable[[], None] | None = None) -> Iterator[tuple[int, VolumeScores]]:
    """(index, scores) of this rank's share of ``sources``, scored exactly as ``maeanomaly score`` scores.
    The ranks go in rounds of one volume each; ``after_round`` runs after every round on every rank (a stop
    request agreed between ranks). Freed memory goes back to the OS after each volume."""
    model.to(device).eval()
    for start in range(0, len(sources), world):
        if start + rank < len(sources):
            image, mask, labels = sources[start + rank]
            prepared = prepare_fn(image, model.config.preprocess, mask, labels, min_pixels=min_pixels(model.config))
            yield start + rank, score_prepared(model, prepared, device, batch_size)
            del prepared
            release_freed_memory()
        if after_round is not None:
            after_round()
