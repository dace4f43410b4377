"""The slice threshold: the position reference (``position``) built from healthy slices and the threshold
at a target false-positive rate on their scores. The rows come from ``training.calibrate.healthy_rows``
(held-out volumes in training, a site's healthy scans in ``calibrate``); no real anomaly is looked at."""

from __future__ import annotations

import numpy as np

from ..core.errors import MAEAnomalyError
from ..methods import get
from .position import calibrated_rows, reference_from_rows

# Healthy slices above the threshold at the target rate: fewer make the threshold one slice's score.
MIN_SLICES_ABOVE = 10


def slices_needed(target_fpr: float) -> int:
    return int(np.ceil(MIN_SLICES_ABOVE / target_fpr))


def threshold_from_rows(rows: np.ndarray, method: str, target_fpr: float, with_reference: bool, strict: bool
                        ) -> tuple[float, dict | None, dict]:
    """The position reference (or None) and the threshold at ``target_fpr`` on healthy ``rows`` (of
    ``healthy_rows``) of ``method``'s primary score.

    ``strict`` (``calibrate``) refuses too few slices; training then keeps the raw probability instead.
    """
    if len(rows) == 0:
        raise MAEAnomalyError("the healthy volumes have no usable slices for calibration")
    needed = slices_needed(target_fpr)
    if strict and len(rows) < needed:
        raise MAEAnomalyError(f"{len(rows)} healthy slices cannot set a threshold at a false-positive rate of "
                              f"{target_fpr:g}: at least {needed} are needed (give more healthy volumes)")
    bins = rows[:, 0].astype(int)
    found = get(method)
    values = {name: rows[:, 1 + j] for j, name in enumerate(found.positioned)}
    reference, note = None, "built"
    if with_reference:
        try:
            reference = reference_from_rows(bins, values, found.positioned)
        except ValueError as exc:
            if strict:
                raise MAEAnomalyError(f"too few healthy slices for a position reference: {exc}") from None
            note = f"not built: {exc}"
    primary = values[found.primary]
    score = calibrated_rows(primary, bins, reference, found.primary) if reference else primary
    threshold = float(np.quantile(score, 1 - target_fpr, method="higher"))
    summary = {"validation_slices": len(rows), "target_fpr": target_fpr,
               "validation_fpr": float((score >= threshold).mean()),
               "position_reference": note if with_reference else "off"}
    return threshold, reference, summary
