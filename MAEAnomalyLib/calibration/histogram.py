"""Counts of a map's values in fixed-resolution bins, added one volume at a time: what the voxel threshold
is read from (``voxel_threshold``) and what ``evaluation.voxel_metrics`` ranks.

A value v is binned by u = v / (1 + |v|), a monotone map of every real number onto (-1, 1), split into
80,000 equal bins: no value is ever clipped, and bins are at most 1e-4 wide for |v| <= 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BINS = 80_000


@dataclass
class VoxelHistogram:
    """Counts of lesion (positive) and other (negative) foreground voxels per value bin."""

    bins: int = BINS
    positive: np.ndarray = field(default=None)  # type: ignore[assignment]
    negative: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.positive is None:
            self.positive = np.zeros(self.bins, dtype=np.int64)
        if self.negative is None:
            self.negative = np.zeros(self.bins, dtype=np.int64)

    def index(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value: bin k holds u = v / (1 + |v|) in [-1 + 2k/bins, -1 + 2(k+1)/bins)."""
        v = np.asarray(values, dtype=np.float64)
        u = v / (1 + np.abs(v))
        return np.clip(np.floor((u + 1) * (self.bins / 2)), 0, self.bins - 1).astype(np.int64)

    def add(self, values: np.ndarray, truth: np.ndarray) -> None:
        """Adds voxels (any shape) with their bool lesion labels."""
        bins = self.index(values.ravel())
        truth = np.asarray(truth, dtype=bool).ravel()
        self.positive += np.bincount(bins[truth], minlength=self.bins)
        self.negative += np.bincount(bins[~truth], minlength=self.bins)

    def edge(self, k: int) -> float:
        """Lower edge of bin ``k`` as a map value: calling 'anomalous' from bin k up is thresholding there."""
        u = -1 + 2 * k / self.bins
        return float(u / (1 - abs(u))) if abs(u) < 1 else float(np.sign(u) * np.inf)

    def curves(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives when every voxel in bin k or above is called anomalous, k descending."""
        return np.cumsum(self.positive[::-1]), np.cumsum(self.negative[::-1])

    def auroc(self) -> float | None:
        """Trapezoidal area under the binned ROC curve (ties within a bin count one half)."""
        tp, fp = self.curves()
        p, n = tp[-1], fp[-1]
        if p == 0 or n == 0:
            return None
        tpr = np.concatenate([[0.0], tp / p])
        fpr = np.concatenate([[0.0], fp / n])
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))

    def auprc(self) -> float | None:
        """Average precision, sum of recall steps times precision, as scikit-learn defines it."""
        tp, fp = self.curves()
        p = tp[-1]
        if p == 0 or fp[-1] == 0:
            return None
        called = tp + fp
        precision = np.divide(tp, called, out=np.zeros(len(tp)), where=called > 0)
        return float(np.sum(np.diff(np.concatenate([[0], tp])) / p * precision))

    def dice_curve(self) -> np.ndarray:
        """Dice when thresholding at each bin's lower edge, bins descending (2 TP / (TP + FP + P))."""
        tp, fp = self.curves()
        denominator = tp + fp + tp[-1]
        return np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)

    def quantile_edge(self, fraction: float) -> float:
        """The lowest bin edge with at most ``fraction`` of the negative voxels at or above it."""
        _, fp = self.curves()
        within = np.flatnonzero(fp <= fraction * fp[-1])  # a prefix, since fp grows as the edge falls
        return self.edge(self.bins - 1 - within[-1]) if len(within) else float("inf")
