"""Slice-level metrics: the AUROC difference between two scores and its bootstrap interval."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from MAEAnomalyLib.evaluation.cohort import auroc_difference, format_metrics, slice_metrics


def test_auroc_difference_and_its_interval() -> None:
    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1], 150)
    strong = truth + rng.normal(0, 0.5, truth.size)  # separates the classes well
    weak = truth + rng.normal(0, 2.0, truth.size)
    clear = auroc_difference(truth, strong, weak)
    assert np.isclose(clear["difference"], roc_auc_score(truth, strong) - roc_auc_score(truth, weak))
    low, high = clear["ci95"]
    assert 0 < low < clear["difference"] < high  # clearly better: the interval excludes 0
    tie = auroc_difference(truth, strong, strong + rng.normal(0, 1e-3, truth.size))
    assert tie["ci95"][0] < 0.01 and tie["ci95"][1] > -0.01 and abs(tie["difference"]) < 0.01
    assert auroc_difference(truth, strong, weak) == clear  # seeded: the same interval every time


def test_slice_metrics_report_each_baseline_against_the_score() -> None:
    rng = np.random.default_rng(2)
    labelled = [np.arange(40) % 2 == 0, np.arange(30) % 3 == 0]
    tables = []
    for truth in labelled:
        n = len(truth)
        tables.append({"score": truth + rng.normal(0, 0.5, n), "mae_l1": rng.random(n), "ssim": rng.random(n),
                       "intensity_p995": rng.random(n), "foreground_fraction": rng.random(n),
                       "skipped": np.zeros(n, dtype=int)})
    metrics = slice_metrics(tables, labelled)
    minus = metrics["foreground_slices"]["score_minus"]
    assert set(minus) == {"mae_l1", "ssim", "intensity_p995", "foreground_fraction"}
    entry = metrics["foreground_slices"]
    # 1 − SSIM is ranked: the difference uses the sign that makes larger mean more anomalous.
    assert np.isclose(minus["ssim"]["difference"], entry["score"]["auroc"] - entry["ssim"]["auroc"])
    assert "paired bootstrap" in format_metrics(metrics)


def test_by_lesion_size_separates_small_lesions_from_large_ones() -> None:
    # A score that sees only lesions of 100 mm² or more: perfect on the large ones, chance on the small.
    rng = np.random.default_rng(3)
    n_normal, n_lesion = 60, 30
    truth = np.r_[np.zeros(n_normal, dtype=bool), np.ones(n_lesion, dtype=bool)]
    area = np.r_[np.zeros(n_normal), np.linspace(10, 300, n_lesion)]
    score = np.where(area >= 100, 2.0 + rng.random(truth.size), rng.random(truth.size))
    table = {"score": score, "mae_l1": rng.random(truth.size), "ssim": rng.random(truth.size),
             "intensity_p995": area, "foreground_fraction": rng.random(truth.size),
             "skipped": np.zeros(truth.size, dtype=int)}
    metrics = slice_metrics([table], [truth], [area])
    groups = metrics["by_lesion_size"]["groups"]
    assert [g["abnormal"] for g in groups] == [10, 10, 10] and metrics["by_lesion_size"]["normal"] == n_normal
    assert groups[0]["area_mm2"][0] == 10 and groups[-1]["area_mm2"][1] == 300
    assert groups[0]["score"] < 0.8 and groups[1]["score"] == groups[2]["score"] == 1.0
    assert all(g["intensity_p995"] == 1.0 for g in groups)  # any positive area beats the normal slices
    text = format_metrics(metrics)
    assert "AUROC by lesion area" in text and "10-" in text and "-300 mm2 (10)" in text
    assert "by_lesion_size" not in format_metrics(slice_metrics([table], [truth]))


def test_by_position_shows_where_in_the_brain_a_score_loses() -> None:
    # A score that ranks slices perfectly in the lower two thirds of the brain and backwards in the top third.
    position = np.linspace(0, 1, 90)
    truth = np.arange(90) % 2 == 1
    score = np.where(truth, 1.0, 0.0) * np.where(position < 2 / 3, 1, -1) + position / 100
    table = {"score": score, "mae_l1": score, "ssim": -score, "intensity_p995": score,
             "foreground_fraction": np.full(90, 0.5), "brain_position": position,
             "skipped": np.zeros(90, dtype=int)}
    parts = slice_metrics([table], [truth])["by_position"]
    assert [(p["slices"], p["abnormal"]) for p in parts] == [(30, 15), (30, 15), (30, 15)]
    assert parts[0]["score"] == parts[1]["score"] == 1.0 and parts[2]["score"] == 0.0
    assert "AUROC by position" in format_metrics(slice_metrics([table], [truth]))
    del table["brain_position"]  # tables from before the column: no section
    assert "by_position" not in slice_metrics([table], [truth])


def test_by_volume_shows_a_volume_whose_normal_slices_all_score_high() -> None:
    # Each volume ranks its own slices perfectly, but the second one's normal slices score above the
    # first one's tumours: the pooled AUROC falls, and only the per-volume figures say where.
    truth = [np.arange(20) >= 10, np.arange(20) >= 10]
    scores = [np.r_[np.linspace(0.0, 0.2, 10), np.linspace(0.5, 0.6, 10)],
              np.r_[np.linspace(0.7, 0.8, 10), np.linspace(0.9, 1.0, 10)]]
    tables = [{"score": s, "mae_l1": s, "ssim": -s, "intensity_p995": s, "foreground_fraction": s,
               "abnormal": (s >= 0.65).astype(int), "skipped": np.zeros(20, dtype=int)} for s in scores]
    metrics = slice_metrics(tables, truth, names=["a.nii.gz", "b.nii.gz"])
    assert metrics["foreground_slices"]["score"]["auroc"] < 0.8
    first, second = metrics["by_volume"]
    assert (first["volume"], first["slices"], first["abnormal"]) == ("a.nii.gz", 20, 10)
    assert first["auroc"]["score"] == second["auroc"]["score"] == first["auroc"]["ssim"] == 1.0
    assert (first["flagged_normal"], first["flagged_abnormal"]) == (0.0, 0.0)
    assert (second["flagged_normal"], second["flagged_abnormal"]) == (1.0, 1.0)
    text = format_metrics(metrics)
    assert "Per volume" in text and text.rstrip().endswith("b.nii.gz")
    # A table without decisions (no threshold column) still gets its AUROCs; a volume of one class none.
    del tables[0]["abnormal"]
    lone = slice_metrics(tables, [truth[0], np.zeros(20, dtype=bool)])["by_volume"]
    assert lone[0]["flagged_normal"] is None and lone[0]["auroc"]["score"] == 1.0
    assert lone[1]["volume"] == "volume 2" and lone[1]["auroc"]["score"] is None
