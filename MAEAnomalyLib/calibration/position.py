"""Scores that a slice's place in the brain cannot explain.

The small top and bottom slices of a brain (vertex, skull base) reconstruct worst, and the slices of
tumours are mostly large mid-brain ones, so a raw score partly ranks slices by where they sit. The
position reference holds, for each tenth of the brain's axial extent, the robust centre and spread of
a score over healthy held-out slices; a slice's calibrated score is its robust z-score within its
tenth. The reference is built on healthy volumes only (at training time, or by ``calibrate``).
"""

from __future__ import annotations

import numpy as np

BINS = 10
# The transforms that make a score roughly symmetric before its centre and spread are taken; a method
# names one for each score it positions (``methods.base.Method.positioned``).
TRANSFORMS = ("logit", "log", "none")
_EPS = 1e-6
_MAD_TO_SD = 1.4826  # the MAD of a normal distribution times this is its standard deviation
MIN_SLICES_PER_BIN = 5


def brain_position(foreground_fraction: np.ndarray) -> np.ndarray:
    """Relative axial position of each slice within the volume's foreground: 0 at its lowest slice with
    foreground, 1 at its highest; NaN for slices without foreground."""
    fraction = np.asarray(foreground_fraction, dtype=float)
    inside = np.flatnonzero(fraction > 0)
    out = np.full(len(fraction), np.nan)
    if len(inside):
        low, high = inside[0], inside[-1]
        out[inside] = (inside - low) / max(1, high - low)
    return out


def position_bin(position: np.ndarray, parts: int = BINS) -> np.ndarray:
    """The equal part of the brain's axial extent (a tenth by default) each slice is in (0..parts-1); -1
    for slices without foreground."""
    position = np.asarray(position, dtype=float)
    bins = np.full(len(position), -1, dtype=int)
    ok = np.isfinite(position)
    bins[ok] = np.minimum((position[ok] * parts).astype(int), parts - 1)
    return bins


def transformed(values: np.ndarray, kind: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if kind == "logit":
        p = np.clip(values, _EPS, 1 - _EPS)
        return np.log(p) - np.log1p(-p)
    if kind == "log":
        return np.log(np.maximum(values, _EPS))
    return values


def reference_from_rows(bins: np.ndarray, values: dict[str, np.ndarray], transforms: dict[str, str]) -> dict:
    """The reference from healthy slices: each one's tenth of the brain and its raw scores; ``transforms``
    names the columns to position and the transform of each."""
    bins = np.asarray(bins, dtype=int)
    counts = np.bincount(bins, minlength=BINS)[:BINS]
    if counts.min() < MIN_SLICES_PER_BIN:
        raise ValueError(f"every tenth of the brain needs at least {MIN_SLICES_PER_BIN} healthy slices, and "
                         f"these give {counts.tolist()} (lowest tenth first)")
    reference: dict = {"bins": BINS, "slices_per_bin": counts.tolist(), "columns": {}}
    for column, kind in transforms.items():
        v_all = transformed(values[column], kind)
        centre = np.array([np.median(v_all[bins == b]) for b in range(BINS)])
        spread = np.array([_MAD_TO_SD * np.median(np.abs(v_all[bins == b] - centre[b])) for b in range(BINS)])
        # A tenth whose slices all score alike must not blow every deviation up.
        floor = 0.05 * max(float(np.median(spread)), _EPS)
        reference["columns"][column] = {"transform": kind, "centre": centre.round(6).tolist(),
                                        "spread": np.maximum(spread, floor).round(6).tolist()}
    return reference


def calibrated_rows(values: np.ndarray, bins: np.ndarray, reference: dict, column: str) -> np.ndarray:
    """Robust z-scores of slices whose tenths of the brain are known (all ``bins`` >= 0)."""
    entry = reference["columns"][column]
    centre, spread = np.asarray(entry["centre"]), np.asarray(entry["spread"])
    return (transformed(values, entry["transform"]) - centre[bins]) / spread[bins]


def calibrated(values: np.ndarray, foreground_fraction: np.ndarray, reference: dict, column: str) -> np.ndarray:
    """Robust z-score of ``values`` (one volume's column) within each slice's tenth of the brain; 0 for
    slices without foreground."""
    bins = position_bin(brain_position(foreground_fraction))
    out = np.zeros(len(bins))
    ok = bins >= 0
    out[ok] = calibrated_rows(np.asarray(values)[ok], bins[ok], reference, column)
    return out
