"""Voxel-level metrics of any anomaly map over the foreground voxels of a cohort: AUROC, AUPRC (average
precision), the best Dice over thresholds (an oracle) and the Dice at a given threshold, pooled over
voxels and as the mean of per-volume Dice.

Ranking metrics come from fixed-resolution histograms of the map's values inside and outside the
lesion, added one volume at a time, so memory stays at a few histograms however many volumes there are.
A value v is binned by u = v / (1 + |v|), a monotone map of every real number onto (-1, 1), split into
80,000 equal bins: no value is ever clipped, and bins are at most 1e-4 wide for |v| <= 1 (the
normalised maps). The binned AUROC and AUPRC match the exact ones within 0.001
(Testing/library/test_voxel_metrics.py). The Dice at a given threshold is counted exactly, voxel by voxel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..calibration.histogram import BINS, VoxelHistogram


@dataclass
class MapMetrics:
    """Everything one map contributes over a cohort: histograms of fixed size, and two numbers per volume
    (its calibrated Dice and false-positive volume), never its voxels."""

    threshold: float | None = None
    histogram: VoxelHistogram = field(default_factory=VoxelHistogram)
    dice_sum: np.ndarray = field(default_factory=lambda: np.zeros(BINS))  # per-volume Dice curves, summed
    lesion_volumes: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))  # TP, FP, FN at threshold
    volume_dice: list[float] = field(default_factory=list)  # at threshold, volumes with a lesion
    false_positive_ml: list[float] = field(default_factory=list)  # at threshold, every volume

    def add(self, values: np.ndarray, lesion: np.ndarray, called: np.ndarray | None, voxel_ml: float) -> None:
        """``values``, ``lesion`` and ``called`` (the thresholded, post-processed map; None without a
        threshold) over one volume's foreground voxels."""
        own = VoxelHistogram(self.histogram.bins)
        own.add(values, lesion)
        self.histogram.positive += own.positive
        self.histogram.negative += own.negative
        if lesion.any():
            self.dice_sum += own.dice_curve()
            self.lesion_volumes += 1
        if called is None:
            return
        tp, fp = int((called & lesion).sum()), int((called & ~lesion).sum())
        fn = int(lesion.sum()) - tp
        self.counts += (tp, fp, fn)
        if lesion.any():
            self.volume_dice.append(2 * tp / (2 * tp + fp + fn))
        self.false_positive_ml.append(fp * voxel_ml)

    def result(self) -> dict:
        h = self.histogram
        pooled = h.dice_curve()
        best = int(np.argmax(pooled))
        lesion = h.positive.sum() > 0  # a healthy cohort defines no Dice, only a false-positive volume
        out: dict = {"auroc": h.auroc(), "auprc": h.auprc(),
                     "lesion_share": float(h.positive.sum() / max(1, h.positive.sum() + h.negative.sum())),
                     "best_dice": float(pooled[best]) if lesion else None,
                     "best_dice_threshold": h.edge(h.bins - 1 - best) if lesion else None}
        if self.lesion_volumes:
            mean_curve = self.dice_sum / self.lesion_volumes
            k = int(np.argmax(mean_curve))
            out["best_dice_mean_volume"] = float(mean_curve[k])
            out["best_dice_mean_volume_threshold"] = h.edge(h.bins - 1 - k)
        else:
            out["best_dice_mean_volume"] = out["best_dice_mean_volume_threshold"] = None
        tp, fp, fn = (int(c) for c in self.counts)
        has = self.threshold is not None and bool(self.false_positive_ml)
        out["threshold"] = self.threshold
        out["dice"] = 2 * tp / (2 * tp + fp + fn) if has and lesion else None
        out["dice_mean_volume"] = float(np.mean(self.volume_dice)) if has and self.volume_dice else None
        out["false_positive_ml_mean"] = float(np.mean(self.false_positive_ml)) if has else None
        return out


PostProcess = Callable[[np.ndarray, np.ndarray], np.ndarray]


class VoxelEvaluation:
    """Adds volumes one at a time; ``result`` gives each map's metrics. ``thresholds`` names each map and
    its calibrated threshold (or None); in ``add``, ``postprocess[name](called, foreground)`` turns a
    thresholded map into the final segmentation (e.g. small components removed)."""

    def __init__(self, thresholds: dict[str, float | None]) -> None:
        self.maps = {name: MapMetrics(threshold=t) for name, t in thresholds.items()}

    def add(self, maps: dict[str, np.ndarray], foreground: np.ndarray, lesion: np.ndarray, voxel_ml: float,
            postprocess: dict[str, PostProcess] | None = None) -> None:
        fg = np.asarray(foreground, dtype=bool)
        truth = np.asarray(lesion, dtype=bool)[fg]
        for name, metrics in self.maps.items():
            values = maps[name]
            called = None
            if metrics.threshold is not None:
                full = (values >= metrics.threshold) & fg
                if postprocess is not None and name in postprocess:
                    full = postprocess[name](full, fg)
                called = full[fg]
            metrics.add(values[fg], truth, called, voxel_ml)

    def result(self) -> dict[str, dict]:
        return {name: m.result() for name, m in self.maps.items()}


def format_voxel_metrics(voxel: dict) -> str:
    """The table ``evaluate`` prints: one row per map."""
    def fmt(v: float | None) -> str:
        return f"{v:9.3f}" if v is not None else f"{'n/a':>9}"

    heads = ("AUROC", "AUPRC", "best Dice", "(per vol)", "Dice@thr", "(per vol)", "FP mL/vol")
    lines = [f"Voxel level, over foreground voxels ({voxel['volumes']} volumes, lesion share "
             f"{voxel['lesion_share']:.4f}); best Dice is an oracle (threshold chosen on the test labels), "
             "Dice@thr uses the threshold calibrated on healthy volumes:",
             f"{'map':<26}" + "".join(f"{h:>10}" for h in heads)]
    for name, m in voxel["maps"].items():
        cells = (m["auroc"], m["auprc"], m["best_dice"], m["best_dice_mean_volume"], m["dice"],
                 m["dice_mean_volume"], m["false_positive_ml_mean"])
        lines.append(f"{name:<26}" + "".join(f" {fmt(c)}" for c in cells))
    return "\n".join(lines)
