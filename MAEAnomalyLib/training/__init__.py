"""Training, in pipeline order: what the loop reads (``samples``), the stage loop (``loop``), the MAE
and classifier stages (``stages``), calibration of the threshold (``calibration``), checkpoints
(``checkpoint``), torchrun (``distributed``), and ``train`` itself (``pipeline``)."""

from ..engine.loop import RunOptions, TrainingInterrupted
from .pipeline import check_out_dir, split_volumes, train

__all__ = ["RunOptions", "TrainingInterrupted", "check_out_dir", "split_volumes", "train"]
