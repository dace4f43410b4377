"""The per-slice score table's columns and its CSV form; torch-free so the Slicer logic can use it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..core.errors import MAEAnomalyError

# One row per axial slice, inferior first; the CLI's CSV and the Slicer table share the columns. Every
# method's table has these; its own columns (``methods.base.Method.columns``) and the intensity baseline sit
# between ``score`` and ``foreground_fraction`` (``scoring.scores.slice_table``). score is what the threshold
# applies to: the method's primary score, calibrated by brain position when the model has a position reference.
CORE_COLUMNS = ("slice_index", "position_mm", "score", "foreground_fraction", "brain_position", "abnormal", "skipped")
# score against the volume's own slices (calibration.volume_reference): in every table written since
# 2026-12-05, right after score; not required when a table is read, so that older tables still are.
VOLUME_SCORE = "score_volume"
# The table of the paper's method (mae_classifier); mae_l1_position is NaN without a position reference.
SCORE_COLUMNS = ("slice_index", "position_mm", "score", VOLUME_SCORE, "probability", "mae_l1", "mae_l1_position",
                 "ssim", "intensity_p995", "foreground_fraction", "brain_position", "abnormal", "skipped")
INTEGER_COLUMNS = ("slice_index", "abnormal", "skipped")


def table_to_csv(table: dict[str, np.ndarray]) -> str:
    """One row per slice; floats keep 9 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table)
    for k in range(len(table["slice_index"])):
        writer.writerow(int(table[c][k]) if c in INTEGER_COLUMNS else f"{float(table[c][k]):.9g}" for c in table)
    return buffer.getvalue()


def read_table_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a CSV written by ``table_to_csv`` into one array per column, in the file's order."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows, columns = list(reader), list(reader.fieldnames or [])
        missing = [c for c in CORE_COLUMNS if c not in columns]
        if missing:
            raise KeyError(missing[0])
        return {c: np.array([r[c] for r in rows], dtype=np.int64 if c in INTEGER_COLUMNS else np.float64)
                for c in columns}
    except (OSError, KeyError, ValueError) as exc:
        raise MAEAnomalyError(f"not a score table ({exc.__class__.__name__}: {exc})", path) from None
