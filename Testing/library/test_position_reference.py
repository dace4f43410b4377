"""Scores that slice position cannot explain: the position reference, its use in scoring, the
area-stratified AUROC, and hostile references in config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from MAEAnomalyLib.calibration.position import (
    BINS,
    brain_position,
    calibrated,
    calibrated_rows,
    position_bin,
    reference_from_rows,
)
from MAEAnomalyLib.calibration.slice_threshold import threshold_from_rows
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.evaluation.cohort import area_stratified_auroc, score_columns
from MAEAnomalyLib.methods.model import load_model

METHOD = "mae_classifier"
# The paper's method positions its probability on the logit scale and its MAE error on the log scale.
TRANSFORMS = {"probability": "logit", "mae_l1": "log"}


def test_brain_position_spans_the_foreground() -> None:
    fraction = np.array([0, 0, 0.1, 0.3, 0.5, 0.3, 0.1, 0])
    position = brain_position(fraction)
    assert np.isnan(position[[0, 1, 7]]).all()
    assert position[2] == 0 and position[6] == 1 and position[4] == pytest.approx(0.5)
    assert position_bin(position).tolist() == [-1, -1, 0, 2, 5, 7, BINS - 1, -1]


def _healthy_rows(rng: np.random.Generator, n: int = 2000) -> np.ndarray:
    """Healthy slices whose raw score depends on position: the ends of the brain score high. The rows of
    ``healthy_rows``: the tenth of the brain, then the method's positioned scores (probability, mae_l1)."""
    bins = rng.integers(0, BINS, n)
    edge = np.abs(bins - (BINS - 1) / 2) / ((BINS - 1) / 2)  # 0 mid-brain, 1 at the ends
    logit = -3 + 4 * edge + rng.normal(0, 0.5, n)
    probability = 1 / (1 + np.exp(-logit))
    return np.stack([bins, probability, np.exp(-4 + edge + rng.normal(0, 0.2, n))], axis=1)


def test_reference_removes_what_position_explains() -> None:
    rows = _healthy_rows(np.random.default_rng(0))
    reference = reference_from_rows(rows[:, 0], {"probability": rows[:, 1], "mae_l1": rows[:, 2]}, TRANSFORMS)
    z = calibrated_rows(rows[:, 1], rows[:, 0].astype(int), reference, "probability")
    # Raw: the ends of the brain score far above its middle; calibrated: every tenth centred on 0, spread 1.
    for b in range(BINS):
        chosen = rows[:, 0] == b
        assert abs(np.median(z[chosen])) < 0.1
        assert 0.8 < np.median(np.abs(z[chosen])) * 1.4826 < 1.2
    raw_end, raw_mid = rows[rows[:, 0] == 0, 1].mean(), rows[rows[:, 0] == 4, 1].mean()
    assert raw_end > 5 * raw_mid
    # The same raw score is unremarkable at the vertex and abnormal mid-brain.
    same = np.full(2, 0.3)
    assert calibrated_rows(same, np.array([0, 4]), reference, "probability")[1] > 3


def test_threshold_on_calibrated_scores_hits_the_target_rate_in_every_tenth() -> None:
    rows = _healthy_rows(np.random.default_rng(1), 5000)
    threshold, reference, summary = threshold_from_rows(rows, METHOD, 0.05, with_reference=True, strict=True)
    assert reference is not None and summary["validation_fpr"] == pytest.approx(0.05, abs=0.002)
    z = calibrated_rows(rows[:, 1], rows[:, 0].astype(int), reference, "probability")
    per_bin = [float((z[rows[:, 0] == b] >= threshold).mean()) for b in range(BINS)]
    assert max(per_bin) < 0.12 and min(per_bin) > 0.01, per_bin
    # Thresholding the raw probability instead flags almost only the ends of the brain.
    raw_threshold, none, _ = threshold_from_rows(rows, METHOD, 0.05, with_reference=False, strict=True)
    assert none is None
    raw_mid = float((rows[rows[:, 0] == 4, 1] >= raw_threshold).mean())
    assert raw_mid < 0.01


def test_too_few_healthy_slices_is_one_clear_error() -> None:
    rows = _healthy_rows(np.random.default_rng(2), 150)
    with pytest.raises(MAEAnomalyError, match="at least 1000 are needed"):
        threshold_from_rows(rows, METHOD, 0.01, with_reference=True, strict=True)
    sparse = rows[rows[:, 0] != 3]
    with pytest.raises(MAEAnomalyError, match="every tenth of the brain needs"):
        threshold_from_rows(sparse, METHOD, 0.1, with_reference=True, strict=True)
    # Training keeps going on the raw probability and says why.
    threshold, reference, summary = threshold_from_rows(sparse, METHOD, 0.1, with_reference=True, strict=False)
    assert reference is None and summary["position_reference"].startswith("not built")
    assert 0 <= threshold <= 1


def test_calibrated_is_zero_off_the_foreground() -> None:
    rows = _healthy_rows(np.random.default_rng(3))
    reference = reference_from_rows(rows[:, 0], {"probability": rows[:, 1], "mae_l1": rows[:, 2]}, TRANSFORMS)
    fraction = np.array([0, 0.2, 0.4, 0.2, 0])
    out = calibrated(np.array([0.9, 0.5, 0.5, 0.5, 0.9]), fraction, reference, "probability")
    assert out[0] == 0 and out[4] == 0 and out[1] == pytest.approx(out[3] + 0, abs=10)


def test_area_stratified_auroc_sees_through_brain_area() -> None:
    rng = np.random.default_rng(0)
    area = rng.integers(1, 6, 4000).astype(float)
    truth = rng.random(4000) < 0.1 * area  # large slices hold more lesions
    by_area = area + rng.normal(0, 1e-3, 4000)
    detector = truth + rng.normal(0, 0.5, 4000)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truth, by_area) > 0.65  # pooled, area alone looks like a detector
    assert area_stratified_auroc(truth, by_area, area) == pytest.approx(0.5, abs=0.05)
    assert area_stratified_auroc(truth, detector, area) > 0.85
    assert area_stratified_auroc(truth, truth.astype(float), area) == 1.0


def test_score_columns_keep_probability_only_when_it_differs() -> None:
    table = {"score": np.array([0.1, 0.2]), "probability": np.array([0.1, 0.2]), "mae_l1": np.ones(2),
             "mae_l1_position": np.full(2, np.nan), "ssim": np.ones(2), "intensity_p995": np.ones(2),
             "foreground_fraction": np.ones(2), "skipped": np.zeros(2, dtype=int)}
    assert list(score_columns([table])) == ["score", "mae_l1", "ssim", "intensity_p995", "foreground_fraction"]
    calibrated_table = dict(table, score=np.array([1.5, -0.2]), mae_l1_position=np.array([0.3, 0.1]))
    assert "probability" in score_columns([calibrated_table]) and "mae_l1_position" in score_columns(
        [calibrated_table])


def _with_reference(untrained: Path, tmp_path: Path, reference: object, threshold: object = 2.0) -> Path:
    model = tmp_path / "model"
    shutil.copytree(untrained, model)
    config = json.loads((model / "config.json").read_text())
    config["position_reference"], config["threshold"] = reference, threshold
    (model / "config.json").write_text(json.dumps(config))
    return model


def _good_reference() -> dict:
    column = {"centre": [0.0] * BINS, "spread": [1.0] * BINS}
    return {"bins": BINS, "columns": {"probability": {"transform": "logit", **column},
                                      "mae_l1": {"transform": "log", **column}}}


def test_a_model_with_a_reference_loads_and_its_threshold_is_a_z_score(untrained_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    model = load_model(_with_reference(untrained_model_dir, tmp_path, _good_reference(), 2.5))
    assert model.config.threshold == 2.5 and model.config.position_reference["bins"] == BINS


@pytest.mark.parametrize("damage", ["spread_zero", "centre_nan", "short", "no_columns", "not_a_dict"])
def test_hostile_references_are_refused_in_one_line(untrained_model_dir: Path, tmp_path: Path, damage: str) -> None:
    reference: object = _good_reference()
    if damage == "spread_zero":
        reference["columns"]["probability"]["spread"][3] = 0.0
    elif damage == "centre_nan":
        reference["columns"]["mae_l1"]["centre"][0] = float("nan")
    elif damage == "short":
        reference["columns"]["mae_l1"]["centre"] = [0.0]
    elif damage == "no_columns":
        reference = {"bins": BINS}
    else:
        reference = "bins"
    with pytest.raises(MAEAnomalyError, match="model is damaged: position_reference") as info:
        load_model(_with_reference(untrained_model_dir, tmp_path, reference))
    assert "\n" not in str(info.value)
