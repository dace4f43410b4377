"""Scores at simulated scanner sites (issue #30): settings are chosen here, without a real anomaly.

    python benchmarks/simulated_sites.py ../shared/data [--model brain-t1] [--sites original,thick_blur]
        [--volumes 10] [--json OUT]

The 10 IXI volumes the T1 protocol never trains on are scored as they are ("original") and as each fixed site
of ``MAEAnomalyLib.data.appearance.SIMULATED_SITES`` shows them: healthy, and with the synthetic lesions of
``voxel_smoothing.py`` (blobs, seed 100+k; rings, seed 200+k) implanted *before* the site's change, since
the lesions are anatomy and the site is the scanner. The appearance of volume k has seed 300+k, the same for
its healthy and lesioned versions. Per site, and pooled over all sites run (the original included, as a
cohort from several scanners would be), for every score column of the slice table, over brain slices:

- slice AUROC of lesion slices (any label voxel) against the other slices of the lesioned volumes, pooled;
- the mean of the per-volume AUROCs and the pooled-minus-mean gap (near 0: scores comparable across volumes);
- the share of slices flagged at the model's threshold: healthy volumes, normal and lesion slices of the
  lesioned ones; and the voxel AUROC / AUPRC of the anomaly and intensity maps (``CohortVoxels``).

``foreground_fraction`` (brain area) is the baseline that knows nothing of intensities. Each volume is read
once; per site each of healthy / blob / ring is scored once. Skips with a message (exit 0) when the data
folder is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from MAEAnomalyLib.data.appearance import SIMULATED_SITES, Appearance, apply_appearance
from MAEAnomalyLib.data.io import read_mask, read_volume, to_canonical
from MAEAnomalyLib.data.preprocessing import prepare_image
from MAEAnomalyLib.evaluation.cohort import SCORES
from MAEAnomalyLib.evaluation.voxels import CohortVoxels
from MAEAnomalyLib.scoring.scores import min_pixels, score_prepared

sys.path.insert(0, str(Path(__file__).resolve().parent))
from voxel_smoothing import UNSEEN_FROM, implant_lesions, ixi_and_model

SITES = {"original": Appearance(), **SIMULATED_SITES}
POOLED = "pooled"


@dataclasses.dataclass
class Slices:
    """One scored volume at one site, reduced to its brain slices."""

    site: str
    kind: str  # healthy, blob or ring
    scores: dict[str, np.ndarray]
    lesion: np.ndarray  # bool per brain slice: any label voxel
    abnormal: np.ndarray  # bool per brain slice: flagged at the model's threshold


def score_columns(table: dict[str, np.ndarray]) -> list[str]:
    """score and its forms, then every column of evaluate's (the method's own, the baselines) the table has."""
    first = [c for c in table if c == "score" or c.startswith("score_")]
    return first + [c for c in SCORES if c in table and c not in first]


def auroc(lesion: np.ndarray, scores: np.ndarray) -> float:
    """NaN where undefined: one class only, or a score that is not finite (a column the model lacks)."""
    if lesion.all() or not lesion.any() or not np.isfinite(scores).all():
        return float("nan")
    return float(roc_auc_score(lesion, scores))


def slice_measures(rows: list[Slices], columns: list[str]) -> dict[str, dict]:
    lesioned = [r for r in rows if r.kind != "healthy"]
    pooled, mean = {}, {}
    for c in columns:
        pooled[c] = auroc(np.concatenate([r.lesion for r in lesioned]), np.concatenate([r.scores[c] for r in lesioned]))
        per_volume = [auroc(r.lesion, r.scores[c]) for r in lesioned]
        mean[c] = float(np.nanmean(per_volume)) if not np.isnan(per_volume).all() else float("nan")
    healthy = [r for r in rows if r.kind == "healthy"]

    def share(flags: list[np.ndarray]) -> float:
        joined = np.concatenate(flags) if flags else np.zeros(0, bool)
        return float(joined.mean()) if len(joined) else float("nan")

    flagged = {"healthy slices": share([r.abnormal for r in healthy]),
               "normal slices, lesioned volumes": share([r.abnormal[~r.lesion] for r in lesioned]),
               "lesion slices": share([r.abnormal[r.lesion] for r in lesioned])}
    return {"slice_auroc": pooled, "mean_volume_auroc": mean,
            "gap": {c: pooled[c] - mean[c] for c in columns}, "flagged": flagged}


def voxel_measures(lesioned: CohortVoxels, healthy: CohortVoxels) -> dict[str, float | None]:
    maps = lesioned.result()["maps"]
    false = healthy.evaluation.maps["difference+post"].false_positive_ml
    return {"difference AUROC": maps["difference"]["auroc"], "difference AUPRC": maps["difference"]["auprc"],
            "intensity AUROC": maps["intensity"]["auroc"], "intensity AUPRC": maps["intensity"]["auprc"],
            "FP mL/healthy (+post)": float(np.mean(false)) if false else None}


def markdown(title: str, table: dict[str, dict], columns: list[str]) -> str:
    def cell(v: float | None) -> str:
        return "n/a" if v is None or np.isnan(v) else f"{v:+.3f}" if title.startswith("gap") else f"{v:.3f}"

    lines = [f"\n{title}\n", "| site | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {site} | " + " | ".join(cell(row.get(c)) for c in columns) + " |" for site, row in table.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("MAEANOMALY_DATA", "../shared/data"))
    parser.add_argument("--model", default="brain-t1")
    parser.add_argument("--sites", default=",".join(SITES), help=f"comma-separated, of: {', '.join(SITES)}")
    parser.add_argument("--volumes", type=int, default=10, help="the first N of the 10 unseen IXI volumes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write every measure here")
    args = parser.parse_args()
    names = [s for s in args.sites.split(",") if s]
    if not names or any(s not in SITES for s in names):
        parser.error(f"--sites: unknown or none in {args.sites!r}; known: {', '.join(SITES)}")
    sites = {name: SITES[name] for name in names}
    found = ixi_and_model(args.data, args.model, args.device)
    if found is None:
        return 0
    ixi, model, device = found
    cfg = model.config
    unseen = sorted(ixi.glob("IXI*_T1.nii.gz"))[UNSEEN_FROM:][:args.volumes]
    rows: list[Slices] = []
    voxels = {s: (CohortVoxels(cfg), CohortVoxels(cfg)) for s in [*sites, POOLED]}  # lesioned, healthy
    start = time.time()
    for k, path in enumerate(unseen):
        image = read_volume(path)
        brain = read_mask(path.with_name(path.name.replace("_T1", "_brainmask")), image)
        canonical_brain = to_canonical(brain)
        inside = sitk.GetArrayFromImage(canonical_brain) > 0
        versions = {"healthy": (image, None)}
        for kind, seed in (("blob", 100 + k), ("ring", 200 + k)):
            versions[kind] = implant_lesions(image, brain, seed, kind)
        for kind, (version, label) in versions.items():
            canonical = to_canonical(version)
            array, spacing = sitk.GetArrayFromImage(canonical), canonical.GetSpacing()[::-1]
            lesion = sitk.GetArrayFromImage(to_canonical(label)) > 0 if label is not None else np.zeros_like(inside)
            for site, appearance in sites.items():
                changed = sitk.GetImageFromArray(apply_appearance(array, inside, spacing, appearance, seed=300 + k))
                changed.CopyInformation(canonical)
                prepared = prepare_image(changed, cfg.preprocess, canonical_brain, source=f"{path.name} {kind} {site}",
                                         min_pixels=min_pixels(cfg))
                result = score_prepared(model, prepared, device)
                table = result.table
                assert len(table["skipped"]) == len(lesion), "the slice table follows the canonical axial slices"
                brain_slices = table["skipped"] == 0
                rows.append(Slices(site, kind, {c: SCORES.get(c, 1.0) * np.asarray(table[c], float)[brain_slices]
                                                for c in score_columns(table)},
                                   lesion.any(axis=(1, 2))[brain_slices], table["abnormal"][brain_slices] == 1))
                for name in (site, POOLED):
                    voxels[name][kind == "healthy"].add_lesion(result, lesion)
                print(f"[{time.time() - start:6.0f} s] {path.name} {kind} at {site}", flush=True)
    columns = list(rows[0].scores) if rows else []
    measures = {s: slice_measures([r for r in rows if r.site == s or s == POOLED], columns) for s in [*sites, POOLED]}
    for s in measures:
        measures[s]["voxel"] = voxel_measures(*voxels[s])
    print(f"\nmodel {args.model}; {len(unseen)} unseen IXI volumes, healthy and with lesions (blobs, rings), "
          f"at {len(sites)} site(s); slices with brain only")
    titles = {"slice_auroc": "slice AUROC, pooled over the lesioned volumes",
              "mean_volume_auroc": "mean of the per-volume slice AUROCs",
              "gap": "gap: pooled AUROC minus the mean per-volume AUROC (near 0: comparable across volumes)",
              "flagged": "share of slices flagged at the model's threshold",
              "voxel": "voxel level over brain voxels (lesioned volumes; FP mL on the healthy ones)"}
    for key, title in titles.items():
        table = {s: m[key] for s, m in measures.items()}
        print(markdown(title, table, list(next(iter(table.values())))))
    if args.json:
        partial = args.json.with_name(args.json.name + ".partial")  # renamed into place: never half a file
        partial.write_text(json.dumps({"model": args.model, "volumes": [p.name for p in unseen],
                                       "sites": {s: dataclasses.asdict(a) for s, a in sites.items()},
                                       "measures": measures}, indent=1, default=float))
        partial.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
