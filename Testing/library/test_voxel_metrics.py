"""Voxel-level metrics from streaming histograms, against exact values and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from MAEAnomalyLib.evaluation.voxel_metrics import VoxelEvaluation, VoxelHistogram, format_voxel_metrics


def _volumes(seed: int, n: int = 4, shape: tuple[int, int, int] = (12, 40, 40)):
    """Generated maps: a lesion ball per volume, brighter on average than the rest, with overlap."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    out = []
    for _ in range(n):
        centre = rng.uniform([3, 10, 10], [9, 30, 30])
        lesion = ((z - centre[0]) ** 2 * 4 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < rng.uniform(20, 60)
        values = np.clip(rng.normal(0.3, 0.12, shape) + 0.25 * lesion, 0, 1).astype(np.float32)
        foreground = np.ones(shape, bool)
        foreground[:, :3] = False
        out.append((values, foreground, lesion))
    return out


def test_histogram_matches_exact_auroc_and_auprc_within_0_001():
    volumes = _volumes(0)
    histogram = VoxelHistogram()
    for values, fg, lesion in volumes:  # one volume at a time, as evaluate streams them
        histogram.add(values[fg], lesion[fg])
    values = np.concatenate([v[fg] for v, fg, _ in volumes])
    truth = np.concatenate([lesion[fg] for _, fg, lesion in volumes])
    assert 0.6 < roc_auc_score(truth, values) < 0.95  # a map neither perfect nor useless
    assert histogram.auroc() == pytest.approx(roc_auc_score(truth, values), abs=1e-3)
    assert histogram.auprc() == pytest.approx(average_precision_score(truth, values), abs=1e-3)


def test_perfect_map_gives_dice_and_auprc_1():
    _, fg, lesion = _volumes(1, n=1)[0]
    perfect = np.where(lesion, 0.9, 0.1).astype(np.float32)
    evaluation = VoxelEvaluation({"perfect": 0.5})
    evaluation.add({"perfect": perfect}, fg, lesion, voxel_ml=0.001)
    result = evaluation.result()["perfect"]
    assert result["auroc"] == 1.0 and result["auprc"] == 1.0
    assert result["best_dice"] == 1.0 and result["dice"] == 1.0 and result["dice_mean_volume"] == 1.0
    assert result["false_positive_ml_mean"] == 0.0


def test_map_that_ignores_the_lesion_gives_auprc_equal_to_the_lesion_share():
    evaluation = VoxelEvaluation({"constant": None})
    shares = []
    for values, fg, lesion in _volumes(2, n=3):
        evaluation.add({"constant": np.full(values.shape, 0.4, np.float32)}, fg, lesion, voxel_ml=0.001)
        shares.append((lesion[fg].sum(), fg.sum()))
    result = evaluation.result()["constant"]
    share = sum(s[0] for s in shares) / sum(s[1] for s in shares)
    assert result["auprc"] == pytest.approx(share, rel=1e-9)
    assert result["auroc"] == pytest.approx(0.5)
    assert result["dice"] is None and result["threshold"] is None  # no threshold: no calibrated Dice


def test_best_dice_and_dice_at_threshold_by_hand():
    # Volume A: values 0.9, 0.8, 0.7, 0.2 with lesion at 0.9 and 0.7. Thresholding at 0.7 calls three
    # voxels, two of them lesion: Dice 2*2 / (3 + 2) = 0.8, the best of every threshold.
    a_values = np.array([0.9, 0.8, 0.7, 0.2], np.float32)
    a_lesion = np.array([True, False, True, False])
    # Volume B: no lesion; one voxel of 0.6, under the calibrated threshold 0.75 but not under 0.6.
    b_values = np.array([0.6, 0.1, 0.1, 0.1], np.float32)
    b_lesion = np.zeros(4, bool)
    evaluation = VoxelEvaluation({"map": 0.75})
    fg = np.ones(4, bool)
    evaluation.add({"map": a_values}, fg, a_lesion, voxel_ml=0.5)
    evaluation.add({"map": b_values}, fg, b_lesion, voxel_ml=0.5)
    result = evaluation.result()["map"]
    # Pooled, 0.7 stays the oracle threshold (TP 2, FP 1): 0.8; at 0.6 B's voxel joins: 4/6.
    assert result["best_dice"] == pytest.approx(0.8)
    assert result["best_dice_threshold"] == pytest.approx(0.7, abs=1e-4)
    assert result["best_dice_mean_volume"] == pytest.approx(0.8)  # only volume A has a lesion
    # At 0.75: A calls 0.9 and 0.8 (TP 1, FP 1, FN 1), B calls nothing: 2 / (2 + 1 + 1).
    assert result["dice"] == pytest.approx(0.5)
    assert result["dice_mean_volume"] == pytest.approx(0.5)
    assert result["false_positive_ml_mean"] == pytest.approx(0.25)  # one 0.5 mL voxel in A, none in B
    evaluation_text = format_voxel_metrics({"volumes": 2, "lesion_share": 0.25, "maps": {"map": result}})
    assert "map" in evaluation_text and "0.500" in evaluation_text


def test_postprocessing_changes_only_the_calibrated_segmentation():
    values, fg, lesion = _volumes(3, n=1)[0]
    evaluation = VoxelEvaluation({"raw": 0.5, "post": 0.5})
    evaluation.add({"raw": values, "post": values}, fg, lesion, voxel_ml=0.001,
                   postprocess={"post": lambda called, _: called & lesion})  # drops every false positive
    raw, post = evaluation.result()["raw"], evaluation.result()["post"]
    assert raw["auroc"] == post["auroc"] and raw["best_dice"] == post["best_dice"]
    assert post["false_positive_ml_mean"] == 0.0 < raw["false_positive_ml_mean"]
    assert post["dice"] > raw["dice"]


def test_healthy_cohort_has_no_dice_but_a_false_positive_volume():
    evaluation = VoxelEvaluation({"map": 0.5})
    values = np.array([0.9, 0.6, 0.1, 0.1], np.float32)
    evaluation.add({"map": values}, np.ones(4, bool), np.zeros(4, bool), voxel_ml=0.25)
    result = evaluation.result()["map"]
    assert result["auroc"] is None and result["auprc"] is None
    assert result["best_dice"] is None and result["dice"] is None and result["dice_mean_volume"] is None
    assert result["false_positive_ml_mean"] == pytest.approx(0.5)  # two voxels of 0.25 mL


def test_quantile_edge_sets_the_false_positive_rate_on_healthy_voxels():
    rng = np.random.default_rng(4)
    healthy = rng.uniform(0, 1, 200_000)
    histogram = VoxelHistogram()
    histogram.add(healthy, np.zeros(healthy.size, bool))
    threshold = histogram.quantile_edge(0.01)
    assert (healthy >= threshold).mean() == pytest.approx(0.01, abs=2e-4)
    assert (healthy >= threshold).mean() <= 0.01
    assert threshold == pytest.approx(np.quantile(healthy, 0.99), abs=1e-3)
