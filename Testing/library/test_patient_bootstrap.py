"""Intervals over patients: the bootstrap draws whole patients (every slice of a drawn patient together),
and ``evaluate`` reports it for every AUROC and every "score minus" difference."""

from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import roc_auc_score

from MAEAnomalyLib.evaluation.bootstrap import (
    BOOTSTRAP_SAMPLES,
    PatientBootstrap,
    auroc_difference,
    pair_counts,
    patient_bootstrap,
    resample_patients,
    weighted_auroc,
)
from MAEAnomalyLib.evaluation.cohort import format_metrics, slice_metrics


def offset_patients(n: int = 150) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four patients, each with n normal and n abnormal slices that the score separates perfectly within the
    patient, but two patients ("low") score 0 on normal and 1 on abnormal slices, two ("high") 2 and 3.
    Pooled, only the abnormal slices of a low patient against the normal ones of a high patient are ranked
    wrongly: with k low patients among the 4 drawn, AUROC = 1 − k (4 − k) / 16."""
    truth, score, patient = [], [], []
    for p, offset in enumerate([0, 0, 2, 2]):
        truth += [0] * n + [1] * n
        score += [offset] * n + [offset + 1] * n
        patient += [p] * (2 * n)
    return np.array(truth), np.array(score, dtype=float), np.array(patient)


def test_patient_and_slice_bootstraps_differ_as_worked_out_by_hand() -> None:
    truth, score, patient = offset_patients()
    constant = np.zeros(truth.size)  # AUROC exactly 0.5 in every draw: all ties
    # Over patients, k (low patients drawn) is Binomial(4, 1/2): AUROC 0.75 at k = 2 (p = 6/16), 0.8125 at
    # k = 1 or 3 (8/16), 1.0 at k = 0 or 4 (2/16). The lowest value holds over 2.5 % of the draws and so
    # does the highest: the interval is exactly [0.75, 1.0], and never goes below 0.75.
    boot = patient_bootstrap(truth, patient, score)
    assert boot["estimate"] == 0.75 and boot["ci95"] == [0.75, 1.0]
    assert (boot["patients"], boot["samples"], boot["samples_used"]) == (4, BOOTSTRAP_SAMPLES, BOOTSTRAP_SAMPLES)
    over_patients = patient_bootstrap(truth, patient, score, constant)
    assert over_patients["estimate"] == 0.25 and over_patients["ci95"] == [0.25, 0.5]
    # Over slices, each of the four cells of 300 slices is redrawn around 300: the share of low abnormal
    # slices and that of high normal slices each vary by about ±0.02, the AUROC by about ±0.014, so the
    # interval is about [0.22, 0.28], on both sides of 0.25.
    low, high = auroc_difference(truth, score, constant)["ci95"]
    assert 0.20 < low < 0.24 and 0.26 < high < 0.30
    assert 3 * (high - low) < (0.5 - 0.25)  # the interval over patients is more than three times as wide


def test_slice_metrics_give_intervals_over_patients_and_label_the_slice_bootstrap() -> None:
    truth, score, patient = offset_patients(n=40)
    tables, labelled = [], []
    for p in range(4):
        s, y = score[patient == p], truth[patient == p].astype(bool)
        tables.append({"score": s, "mae_l1": s, "ssim": -s, "intensity_p995": np.zeros(s.size),
                       "foreground_fraction": np.linspace(0, 1, s.size), "skipped": np.zeros(s.size, dtype=int)})
        labelled.append(y)
    metrics = slice_metrics(tables, labelled)
    entry = metrics["foreground_slices"]
    assert entry["patients"] == 4 and entry["bootstrap"]["resampled"] == "patients"
    assert entry["score"]["auroc"] == 0.75 and entry["score"]["auroc_ci_patients"] == [0.75, 1.0]
    assert entry["intensity_p995"]["auroc_ci_patients"] == [0.5, 0.5]
    minus = entry["score_minus"]["intensity_p995"]
    assert (minus["difference"], minus["ci95"], minus["patients"]) == (0.25, [0.25, 0.5], 4)
    sliced = entry["score_minus_slice_bootstrap"]["intensity_p995"]
    assert sliced["resampled"] == "slices" and sliced["ci95"][0] < 0.25  # below what any patient draw gives
    text = format_metrics(metrics)
    assert "95% interval over 4 patients" in text and "wide: few patients" in text
    assert "[0.750, 1.000]" in text and "[+0.250, +0.500]" in text
    # Two volumes of one patient are one patient: drawn together.
    grouped = slice_metrics(tables, labelled, patients=["a", "a", "b", "c"])["foreground_slices"]
    assert grouped["patients"] == 3 and grouped["bootstrap"]["patients"] == 3


def test_identical_patients_give_an_interval_that_collapses_to_the_estimate() -> None:
    rng = np.random.default_rng(4)
    truth = np.arange(30) % 3 == 0
    values = truth + rng.normal(0, 1.0, truth.size)  # no perfect ranking within the patient
    copies = 6
    boot = patient_bootstrap(np.tile(truth, copies), np.repeat(np.arange(copies), truth.size), np.tile(values, copies))
    assert 0.6 < boot["estimate"] < 0.95
    assert boot["ci95"] == [boot["estimate"], boot["estimate"]]
    assert np.isclose(boot["estimate"], roc_auc_score(truth, values))


def test_a_patient_drawn_twice_brings_all_its_slices_twice() -> None:
    patients = np.array(["p", "p", "q", "r", "r", "r"])
    assert resample_patients(patients, ["r", "p", "r"]).tolist() == [3, 4, 5, 0, 1, 3, 4, 5]
    assert resample_patients(patients, []).tolist() == []
    # The bootstrap never builds the pool: its AUROC of a draw must equal the AUROC of the pool built by hand.
    rng = np.random.default_rng(5)
    codes = np.repeat(np.arange(5), [7, 9, 4, 12, 8])
    truth = rng.random(codes.size) < 0.4
    values = np.round(truth + rng.normal(0, 1, codes.size), 1)  # rounded: ties across patients too
    boot = PatientBootstrap(truth, codes, samples=50, seed=3)
    pairs = pair_counts(truth, values, codes, 5)
    drawn = weighted_auroc(pairs, boot.abnormal, boot.normal, boot.counts)
    assert (boot.counts.sum(axis=1) == 5).all() and len(drawn) == boot.used > 40
    assert (boot.counts == 0).any() and (boot.counts >= 2).any()  # draws leave patients out and repeat others
    for counts, auroc in zip(boot.counts[:10], drawn[:10], strict=True):
        pool = resample_patients(codes, np.repeat(np.arange(5), counts.astype(int)))
        assert np.isclose(auroc, roc_auc_score(truth[pool], values[pool]))


def test_a_score_minus_itself_is_exactly_zero_everywhere() -> None:
    rng = np.random.default_rng(6)
    codes = np.repeat(np.arange(8), 20)
    truth = rng.random(codes.size) < 0.3
    values = truth + rng.normal(0, 1, codes.size)
    same = patient_bootstrap(truth, codes, values, values.copy())
    assert same["estimate"] == 0.0 and same["ci95"] == [0.0, 0.0]
    different = patient_bootstrap(truth, codes, values, rng.random(codes.size))
    assert different["ci95"][0] < different["estimate"] < different["ci95"][1]
    table = {"score": values, "mae_l1": values.copy(), "ssim": -values, "intensity_p995": rng.random(codes.size),
             "foreground_fraction": rng.random(codes.size), "skipped": np.zeros(codes.size, dtype=int)}
    tables = [{k: v[codes == p] for k, v in table.items()} for p in range(8)]
    minus = slice_metrics(tables, [truth[codes == p] for p in range(8)])["foreground_slices"]["score_minus"]
    for name in ("mae_l1", "ssim"):  # 1 − SSIM ranks exactly as the score here
        assert (minus[name]["difference"], minus[name]["ci95"]) == (0.0, [0.0, 0.0])


def test_fewer_than_three_patients_give_no_interval() -> None:
    truth, score, patient = offset_patients(n=10)
    two = patient < 2  # patients 0 and 1 only
    boot = patient_bootstrap(truth[two], patient[two], score[two])
    assert boot["estimate"] == 1.0 and boot["ci95"] is None and boot["samples_used"] == 0
    assert patient_bootstrap(truth[two], patient[two], score[two], -score[two])["ci95"] is None
    tables = [{"score": score[patient == p], "mae_l1": -score[patient == p], "ssim": score[patient == p],
               "intensity_p995": score[patient == p], "foreground_fraction": score[patient == p],
               "skipped": np.zeros(20, dtype=int)} for p in range(2)]
    metrics = slice_metrics(tables, [truth[patient == p].astype(bool) for p in range(2)])
    entry = metrics["foreground_slices"]
    assert entry["score"]["auroc_ci_patients"] is None and entry["score_minus"]["mae_l1"]["ci95"] is None
    assert entry["score_minus"]["mae_l1"]["difference"] == 1.0  # 1 − 0: the estimate stays
    assert "no interval: 2 patient(s), fewer than 3" in format_metrics(metrics)


def test_draws_with_one_class_only_are_left_out_and_counted() -> None:
    truth, score, patient = offset_patients(n=10)
    truth[(patient > 0) & (truth == 1)] = 0  # only patient 0 has abnormal slices
    boot = patient_bootstrap(truth, patient, score)
    # A draw keeps patient 0 with probability 1 − (3/4)^4 ≈ 0.68: about 1,367 of 2,000 draws (sd ≈ 21).
    assert 1250 < boot["samples_used"] < 1480 and boot["samples"] == BOOTSTRAP_SAMPLES


def test_a_cohort_of_twenty_patients_takes_well_under_a_second_per_score() -> None:
    rng = np.random.default_rng(7)
    codes = np.repeat(np.arange(20), 155)
    truth = rng.random(codes.size) < 0.3
    start = time.perf_counter()
    boot = PatientBootstrap(truth, codes)
    values = [truth + rng.normal(0, s, codes.size) for s in (0.5, 1, 2, 4, 8, 16)]
    for v in values[1:]:
        boot.difference(values[0], v)
    assert time.perf_counter() - start < 3.0
