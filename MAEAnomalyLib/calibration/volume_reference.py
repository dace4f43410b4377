"""Scores against the volume's own slices: a reference that needs no healthy scans of the site.

A scanner the model never saw tends to shift and stretch the scores of a whole volume, so a threshold
set on healthy scans of another site flags many of its normal slices, and volumes from different sites
do not rank against each other. ``within_volume`` expresses each slice's score as a robust z-score
against the other brain slices of its volume: their median and 1.4826 × MAD, which a lesion in fewer
than half of the slices moves little. The slice's height in the brain is already accounted for when
the score is the position-calibrated one (``calibration.position``): what is left is the volume's own
level and spread.
"""

from __future__ import annotations

import numpy as np

_MAD_TO_SD = 1.4826
_MEAN_AD_TO_SD = 1.2533  # the same for the mean absolute deviation, used when over half the slices tie


def within_volume(values: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Robust z-score of each usable slice's value against the usable slices of the same volume; 0 for
    the others (and for all of them when fewer than 3 slices are usable, or when they all score alike).
    Where over half the slices tie at the median, the spread is taken from the mean absolute deviation."""
    values, usable = np.asarray(values, dtype=float), np.asarray(usable, dtype=bool)
    out = np.zeros(len(values))
    own = values[usable]
    if len(own) < 3:
        return out
    centre = float(np.median(own))
    deviation = np.abs(own - centre)
    spread = _MAD_TO_SD * float(np.median(deviation)) or _MEAN_AD_TO_SD * float(np.mean(deviation))
    if spread > 0:
        out[usable] = (own - centre) / spread
    return out
