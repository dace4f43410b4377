"""The files ``score`` writes: the slice table as CSV, the difference map, and the PNG report."""

from __future__ import annotations

from pathlib import Path

from .errors import MAEAnomalyError
from .io import atomic_outputs
from .report import render_report
from .score_table import table_to_csv
from .scoring import VolumeScores


def output_paths(out_dir: str | Path, name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"scores": out_dir / f"{name}_scores.csv", "difference": out_dir / f"{name}_diff.nii.gz",
            "report": out_dir / f"{name}_report.png"}


def write_score_outputs(result: VolumeScores, out_dir: str | Path, name: str,
                        protected: tuple[str | Path, ...] = ()) -> dict[str, Path]:
    """Writes the three outputs together (all or none), never over a file in ``protected``."""
    paths = output_paths(out_dir, name)
    guarded = {Path(p).resolve() for p in protected}
    for path in paths.values():
        if path.resolve() in guarded:
            raise MAEAnomalyError("output would overwrite an input file; choose another --out-dir", path)
    with atomic_outputs() as writer:
        writer.write_text(table_to_csv(result.table), paths["scores"])
        writer.write_image(result.difference, paths["difference"])
        writer.write_bytes(render_report(result, name), paths["report"])
    return paths
