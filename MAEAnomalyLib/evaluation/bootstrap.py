"""Bootstrap intervals for slice AUROCs. The one every figure uses resamples patients: a drawn patient brings
all its slices, since the slices of one patient are not independent cases. The bootstrap over slices stays
beside it (``auroc_difference``), for comparison only: it treats every slice as a case and is too narrow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

BOOTSTRAP_SAMPLES = 2000
MIN_PATIENTS = 3  # fewer: no interval at all
FEW_PATIENTS = 10  # fewer: the interval is printed as wide


def resample_patients(patients: Sequence | np.ndarray, draw: Sequence | np.ndarray) -> np.ndarray:
    """Indices of the slices of the patients in ``draw`` (patient ids, repeats allowed), in draw order:
    a patient drawn twice brings every one of its slices twice. The definition ``PatientBootstrap`` follows
    without building the pool (see ``weighted_auroc``)."""
    patients = np.asarray(patients)
    parts = [np.flatnonzero(patients == p) for p in draw]
    return np.concatenate(parts) if parts else np.empty(0, dtype=int)


def pair_counts(truth: np.ndarray, values: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    """(n, n) matrix whose entry [p, q] counts the pairs (abnormal slice of patient p, normal slice of patient
    q) that ``values`` rank the right way, ties as one half; ``codes`` numbers the patient of each slice."""
    truth = np.asarray(truth).astype(bool)
    values, codes = np.asarray(values, dtype=float), np.asarray(codes)
    above, owner = values[truth], codes[truth]
    out = np.zeros((n, n))
    for q in range(n):
        normal = np.sort(values[~truth & (codes == q)])
        below = np.searchsorted(normal, above, side="left")
        tied = np.searchsorted(normal, above, side="right") - below
        out[:, q] = np.bincount(owner, weights=below + 0.5 * tied, minlength=n)
    return out


def weighted_auroc(pairs: np.ndarray, abnormal: np.ndarray, normal: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The AUROC of the pool in which every slice of patient p appears ``counts[b, p]`` times, for each row b
    (Mann-Whitney: the pairs ranked right over all pairs); ``abnormal`` and ``normal`` count each patient's
    slices of either class. NaN where the pool lacks a class."""
    counts = np.atleast_2d(counts).astype(float)
    right = ((counts @ pairs) * counts).sum(axis=1)
    total = (counts @ abnormal) * (counts @ normal)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / total, np.nan)


class PatientBootstrap:
    """Draws patients with replacement ``samples`` times (seeded), once per cohort, so that every score and
    every difference of the cohort is judged on the same draws (paired). Draws whose pool holds one class
    only are left out; ``used`` says how many remain. Fewer than ``MIN_PATIENTS`` patients: no interval."""

    def __init__(self, truth: np.ndarray, patients: Sequence | np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0) -> None:
        self.truth = np.asarray(truth).astype(bool)
        ids, self.codes = np.unique(np.asarray(patients), return_inverse=True)
        self.codes = self.codes.ravel()
        self.patients, self.samples = len(ids), samples
        self.abnormal = np.bincount(self.codes, weights=self.truth.astype(float), minlength=self.patients)
        self.normal = np.bincount(self.codes, weights=(~self.truth).astype(float), minlength=self.patients)
        self.counts = np.zeros((0, self.patients))
        if self.patients >= MIN_PATIENTS:
            draws = np.random.default_rng(seed).integers(0, self.patients, (samples, self.patients))
            flat = (draws + self.patients * np.arange(samples)[:, None]).ravel()
            counts = np.bincount(flat, minlength=samples * self.patients).reshape(samples, self.patients)
            keep = (counts @ self.abnormal > 0) & (counts @ self.normal > 0)
            self.counts = counts[keep].astype(float)
        self.used = len(self.counts)

    def _aurocs(self, values: np.ndarray) -> tuple[float, np.ndarray]:
        """The AUROC on the cohort itself, and on every draw kept."""
        pairs = pair_counts(self.truth, values, self.codes, self.patients)
        whole = weighted_auroc(pairs, self.abnormal, self.normal, np.ones(self.patients))[0]
        return float(whole), weighted_auroc(pairs, self.abnormal, self.normal, self.counts)

    def _interval(self, drawn: np.ndarray) -> list[float] | None:
        if self.patients < MIN_PATIENTS or not self.used:
            return None
        low, high = np.percentile(drawn, [2.5, 97.5])
        return [float(low), float(high)]

    def auroc(self, values: np.ndarray) -> dict:
        """``auroc`` (None when the cohort lacks a class) and its 95 % percentile interval ``ci95`` over patients."""
        whole, drawn = self._aurocs(values)
        return {"auroc": None if np.isnan(whole) else whole, "ci95": self._interval(drawn)}

    def difference(self, a: np.ndarray, b: np.ndarray) -> dict:
        """AUROC(a) − AUROC(b) on the same slices, with its 95 % interval over patients (paired draws)."""
        whole_a, drawn_a = self._aurocs(a)
        whole_b, drawn_b = self._aurocs(b)
        difference = whole_a - whole_b
        return {"difference": None if np.isnan(difference) else float(difference),
                "ci95": self._interval(drawn_a - drawn_b), **self.described()}

    def described(self) -> dict:
        """What the intervals rest on, for the JSON: over how many patients, how many draws kept of how many."""
        return {"resampled": "patients", "patients": self.patients, "samples": self.samples,
                "samples_used": self.used}


def patient_bootstrap(truth: np.ndarray, patients: Sequence | np.ndarray, a: np.ndarray,
                      b: np.ndarray | None = None, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """The AUROC of ``a`` (or AUROC(a) − AUROC(b) with ``b``) over slices whose patient is ``patients[k]``:
    ``estimate`` on the cohort, ``ci95`` its 95 % percentile interval over patients (None under
    ``MIN_PATIENTS`` patients), and ``patients``, ``samples``, ``samples_used`` (draws with both classes)."""
    boot = PatientBootstrap(truth, patients, samples, seed)
    result = boot.auroc(a) if b is None else boot.difference(a, b)
    return {"estimate": result["auroc" if b is None else "difference"], "ci95": result["ci95"], **boot.described()}


def _auroc_rows(truth: np.ndarray, values: np.ndarray) -> np.ndarray:
    """AUROC of every row of (B, N) values against (B, N) bool truth (Mann-Whitney, ties averaged)."""
    ranks = rankdata(values, axis=1)
    n1 = truth.sum(axis=1)
    return ((ranks * truth).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * (truth.shape[1] - n1))


def auroc_difference(truth: np.ndarray, a: np.ndarray, b: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> dict:
    """AUROC(a) − AUROC(b) on the same slices, with a 95 % paired bootstrap interval over SLICES.

    Kept for comparison only (``score_minus_slice_bootstrap``): slices of one patient are correlated, so this
    interval is narrower than the one over patients (``PatientBootstrap``), which every figure uses.
    """
    rng = np.random.default_rng(seed)
    truth = truth.astype(bool)
    differences = []
    for start in range(0, samples, 100):  # in chunks: a cohort's slices times the samples can be large
        index = rng.integers(0, len(truth), (min(100, samples - start), len(truth)))
        y = truth[index]
        keep = (y.sum(axis=1) > 0) & (y.sum(axis=1) < len(truth))  # resamples with both classes
        index, y = index[keep], y[keep]
        differences.append(_auroc_rows(y, a[index]) - _auroc_rows(y, b[index]))
    low, high = np.percentile(np.concatenate(differences), [2.5, 97.5])
    return {"difference": float(roc_auc_score(truth, a) - roc_auc_score(truth, b)), "ci95": [float(low), float(high)],
            "resampled": "slices"}
