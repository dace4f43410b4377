"""Slice-level AUROC and AUPRC of each score, over slices with foreground and over all slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ..calibration.position import position_bin
from ..methods import get as get_method
from ..methods import names as method_names
from .bootstrap import FEW_PATIENTS, MIN_PATIENTS, PatientBootstrap, auroc_difference

# Each score column and the sign that makes larger mean "more anomalous": the calibrated score, every
# registered method's own columns (its raw score, its reconstruction error, ...) with the position z-score
# of each that is calibrated by position, then the baselines. foreground_fraction is no detector: it shows
# how much of an AUROC the slice's brain area alone explains (tumours sit in large mid-brain slices, healthy
# slices include the small top and bottom ones). score_volume is score against the volume's own slices.
BASELINES = ("intensity_p995", "foreground_fraction")


def _score_signs() -> dict[str, float]:
    signs = {"score": 1.0, "score_volume": 1.0}
    for method in map(get_method, method_names()):
        positioned = method.position_columns()
        for column in method.columns:
            if column not in BASELINES:
                signs.setdefault(column, -1.0 if column in method.lower_is_anomalous else 1.0)
            if column in positioned:
                signs.setdefault(positioned[column], 1.0)
    return {**signs, **dict.fromkeys(BASELINES, 1.0)}


SCORES = _score_signs()
LABELS = {"score_volume": "score within volume", "ssim": "1 - ssim", "foreground_fraction": "foreground area",
          **{name: f"{column} by position" for m in method_names()
             for column, name in get_method(m).position_columns().items()}}
AREA_STRATA = 5
POSITION_GROUPS = 3  # bottom, middle and top thirds of the brain


def score_columns(tables: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """The columns of ``SCORES`` that every table holds, finite on slices with foreground; ``probability``
    only where it differs from ``score`` (a model with a position reference)."""
    def usable(name: str) -> bool:
        return all(name in t and np.isfinite(np.asarray(t[name])[np.asarray(t["skipped"]) == 0]).all()
                   for t in tables)

    columns = {name: sign for name, sign in SCORES.items() if usable(name)}
    if "probability" in columns and all(np.array_equal(t["probability"], t["score"]) for t in tables):
        del columns["probability"]
    return columns


def area_stratified_auroc(truth: np.ndarray, values: np.ndarray, area: np.ndarray,
                          strata: int = AREA_STRATA) -> float | None:
    """AUROC with abnormal and normal slices compared only within the same stratum of foreground area
    (``strata`` equal-count groups), pooled over strata by their number of pairs: what brain area cannot
    explain. None when no stratum holds both classes."""
    truth = truth.astype(bool)
    edges = np.quantile(area, np.linspace(0, 1, strata + 1)[1:-1])
    group = np.searchsorted(edges, area, side="right")
    total, pairs = 0.0, 0
    for g in range(strata):
        y, v = truth[group == g], values[group == g]
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos and n_neg:
            total += roc_auc_score(y, v) * n_pos * n_neg
            pairs += n_pos * n_neg
    return total / pairs if pairs else None


def _auroc(truth: np.ndarray, values: np.ndarray) -> float | None:
    """AUROC, or None when the slices hold only one class."""
    return float(roc_auc_score(truth, values)) if 0 < truth.sum() < len(truth) else None


def by_lesion_size(truth: np.ndarray, values: dict[str, np.ndarray], area: np.ndarray, groups: int = 3) -> dict:
    """AUROC of each score with the abnormal slices split into ``groups`` equal-count groups by their
    lesion's area (smallest first), each group against every normal slice: a pooled AUROC averages
    away how a score fares on the small lesions."""
    truth = truth.astype(bool)
    bounds = np.quantile(area[truth], np.linspace(0, 1, groups + 1))
    rank = np.searchsorted(bounds[1:-1], area, side="left")  # group of each abnormal slice, by area
    out = []
    for g in range(groups):
        chosen = ~truth | (truth & (rank == g))
        y = truth[chosen]
        entry: dict = {"area_mm2": [float(bounds[g]), float(bounds[g + 1])], "abnormal": int(y.sum())}
        for name, v in values.items():
            entry[name] = _auroc(y, v[chosen])
        out.append(entry)
    return {"normal": int((~truth).sum()), "groups": out}


def by_position(truth: np.ndarray, values: dict[str, np.ndarray], position: np.ndarray,
                groups: int = POSITION_GROUPS) -> list[dict]:
    """AUROC of each score within each equal part of the brain's axial extent (``brain_position``,
    bottom first; None where a part lacks a class): where in the brain a score wins or loses."""
    truth = truth.astype(bool)
    part = position_bin(position, groups)
    out = []
    for g in range(groups):
        chosen = part == g
        entry: dict = {"position": [g / groups, (g + 1) / groups], "slices": int(chosen.sum()),
                       "abnormal": int(truth[chosen].sum())}
        entry.update({name: _auroc(truth[chosen], v[chosen]) for name, v in values.items()})
        out.append(entry)
    return out


def by_volume(table: dict[str, np.ndarray], labelled: np.ndarray, name: str, columns: dict[str, float]) -> dict:
    """One volume's slices with foreground: the AUROC of each score within the volume (None unless it
    has both classes), and the share of its normal and of its abnormal slices flagged at the threshold
    (the table's ``abnormal`` column, when it has one). A pooled AUROC also ranks one volume's slices
    against another's, so a volume whose healthy slices all score high lowers it unseen."""
    fg = np.asarray(table["skipped"]) == 0
    y = np.asarray(labelled, dtype=bool)[fg]
    entry: dict = {"volume": name, "slices": int(fg.sum()), "abnormal": int(y.sum())}
    entry["auroc"] = {n: _auroc(y, sign * np.asarray(table[n])[fg]) for n, sign in columns.items()}
    flagged = np.asarray(table["abnormal"])[fg].astype(bool) if "abnormal" in table else None
    entry["flagged_normal"] = float(flagged[~y].mean()) if flagged is not None and (~y).any() else None
    entry["flagged_abnormal"] = float(flagged[y].mean()) if flagged is not None and y.any() else None
    return entry


def slice_metrics(tables: list[dict[str, np.ndarray]], labelled: list[np.ndarray],
                  lesion_area: list[np.ndarray] | None = None, names: list[str] | None = None,
                  patients: Sequence | None = None) -> dict:
    """Pools slices of all volumes; ``labelled[i][k]`` is True when slice k of volume i is abnormal.
    Every interval resamples patients (``PatientBootstrap``): volume i belongs to ``patients[i]``, by
    default a patient of its own. ``auroc_ci_patients`` and ``score_minus`` (AUROC of score minus each other
    score) carry them; ``score_minus_slice_bootstrap`` is the narrower bootstrap over slices, for comparison.
    With ``lesion_area`` (the labelled area of each slice) it adds ``by_lesion_size`` over slices with
    foreground. ``by_volume`` holds each volume's own figures, named by ``names``."""
    columns = score_columns(tables)
    pooled = {name: np.concatenate([t[name] for t in tables]) for name in (*columns, "foreground_fraction",
                                                                          "skipped")}
    truth = np.concatenate(labelled).astype(int)
    owner = np.unique(np.asarray(patients if patients is not None else range(len(tables))), return_inverse=True)[1]
    patient = np.repeat(owner.ravel(), [len(t["skipped"]) for t in tables])
    subsets = {"foreground_slices": pooled["skipped"] == 0, "all_slices": np.ones_like(truth, dtype=bool)}
    out: dict = {}
    for subset, chosen in subsets.items():
        y = truth[chosen]
        entry: dict = {"slices": int(chosen.sum()), "abnormal": int(y.sum()),
                       "patients": len(np.unique(patient[chosen]))}
        both_classes = 0 < y.sum() < len(y)
        boot = PatientBootstrap(y, patient[chosen]) if both_classes else None
        for name, sign in columns.items():
            values = sign * pooled[name][chosen]
            if boot is not None:
                entry[name] = {"auroc": float(roc_auc_score(y, values)),
                               "auprc": float(average_precision_score(y, values)),
                               "auroc_ci_patients": boot.auroc(values)["ci95"]}
                if subset == "foreground_slices":
                    entry[name]["auroc_within_area"] = area_stratified_auroc(
                        y, values, pooled["foreground_fraction"][chosen])
            else:
                entry[name] = {"auroc": None, "auprc": None, "auroc_ci_patients": None}
        if boot is not None:
            entry["bootstrap"] = boot.described()
            score = pooled["score"][chosen]
            others = {name: sign * pooled[name][chosen] for name, sign in columns.items() if name != "score"}
            entry["score_minus"] = {name: boot.difference(score, v) for name, v in others.items()}
            entry["score_minus_slice_bootstrap"] = {name: auroc_difference(y, score, v) for name, v in others.items()}
        out[subset] = entry
    fg = subsets["foreground_slices"]
    if lesion_area is not None and truth[fg].sum() >= 3 and (1 - truth[fg]).sum() > 0:
        area = np.concatenate(lesion_area)[fg]
        out["by_lesion_size"] = by_lesion_size(truth[fg], {n: s * pooled[n][fg] for n, s in columns.items()}, area)
    if all("brain_position" in t for t in tables) and 0 < truth[fg].sum() < fg.sum():
        position = np.concatenate([t["brain_position"] for t in tables])[fg]
        out["by_position"] = by_position(truth[fg], {n: s * pooled[n][fg] for n, s in columns.items()}, position)
    names = names or [f"volume {i + 1}" for i in range(len(tables))]
    out["by_volume"] = [by_volume(t, y, n, columns) for t, y, n in zip(tables, labelled, names, strict=True)]
    out["scores"] = list(columns)
    return out


def interval_note(entry: dict) -> str:
    """What a subset's intervals rest on, in words: over how many patients, and whether that is few."""
    n = entry.get("patients")
    boot = entry.get("bootstrap")
    if boot is None or n is None:
        return "no interval (one class only, or metrics from before intervals over patients)"
    if n < MIN_PATIENTS:
        return f"no interval: {n} patient(s), fewer than {MIN_PATIENTS}"
    note = (f"95% interval over {n} patients (bootstrap drawing whole patients with all their slices; "
            f"{boot['samples_used']} of {boot['samples']} draws had both classes)")
    return note + (f"; wide: few patients (under {FEW_PATIENTS}), and with so few the bootstrap itself is rough"
                   if n < FEW_PATIENTS else "")


def format_metrics(metrics: dict) -> str:
    """A plain-text table of the metrics of each subset of slices, then ``by_lesion_size``,
    ``by_position`` and ``by_volume`` if present."""
    subsets = {k: v for k, v in metrics.items() if k.endswith("_slices")}
    names = metrics.get("scores", list(SCORES))

    def fmt(v: float | None) -> str:
        return f"{v:8.3f}" if v is not None else f"{'n/a':>8}"

    def span(ci: list[float] | None, signed: bool = False) -> str:
        return "n/a" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f"[{ci[0]:.3f}, {ci[1]:.3f}]"

    lines = [f"{'subset':<18}{'score':<20}{'AUROC':>8}{'AUROC 95% interval':>20}{'AUPRC':>8}"
             f"{'AUROC within area':>19}   slices (abnormal)"]
    for subset, entry in subsets.items():
        for name in names:
            label = LABELS.get(name, name)
            within = entry[name].get("auroc_within_area")
            lines.append(f"{subset:<18}{label:<20}{fmt(entry[name]['auroc'])}"
                         f"{span(entry[name].get('auroc_ci_patients')):>20}{fmt(entry[name]['auprc'])}"
                         f"{fmt(within) if subset == 'foreground_slices' else '':>19}   "
                         f"{entry['slices']} ({entry['abnormal']})")
    for subset, entry in subsets.items():
        lines.append(f"{subset}: {interval_note(entry)}")
    lines.append(f"AUROC within area: abnormal and normal slices compared only within the same fifth of "
                 f"foreground area (what brain area cannot explain; {AREA_STRATA} strata).")
    if any("score_minus" in entry for entry in subsets.values()):
        lines.append("AUROC of score minus each other score, with its 95% paired bootstrap interval over "
                     "patients (the same draws as above):")
    for subset, entry in subsets.items():
        for name, d in entry.get("score_minus", {}).items():
            lines.append(f"{subset:<18}{LABELS.get(name, name):<20}{d['difference']:+8.3f}   "
                         f"{span(d['ci95'], signed=True)}")
    if "by_lesion_size" in metrics:
        entry = metrics["by_lesion_size"]
        heads = [f"{g['area_mm2'][0]:.0f}-{g['area_mm2'][1]:.0f} mm2 ({g['abnormal']})" for g in entry["groups"]]
        lines.append(f"AUROC by lesion area per slice (abnormal slices in each group; each group against all "
                     f"{entry['normal']} normal slices with foreground):")
        lines.append(f"{'':<18}{'score':<20}" + "".join(f"{h:>24}" for h in heads))
        for name in names:
            cells = "".join(f"{fmt(g[name]):>24}" for g in entry["groups"])
            lines.append(f"{'by_lesion_size':<18}{LABELS.get(name, name):<20}{cells}")
    if "by_position" in metrics:
        parts = metrics["by_position"]
        heads = [f"{g['position'][0]:.2f}-{g['position'][1]:.2f} ({g['slices']}, {g['abnormal']})" for g in parts]
        lines.append("AUROC by position in the brain (0 its lowest slice, 1 its highest; slices, abnormal):")
        lines.append(f"{'':<18}{'score':<20}" + "".join(f"{h:>24}" for h in heads))
        for name in names:
            lines.append(f"{'by_position':<18}{LABELS.get(name, name):<20}"
                         + "".join(f"{fmt(g[name]):>24}" for g in parts))
    if "by_volume" in metrics:
        lines.append("Per volume (slices with foreground): AUROC within the volume, and the share of its normal "
                     "and abnormal slices flagged at the threshold:")
        heads = [LABELS.get(n, n) for n in names]
        lines.append(f"{'slices (abnormal)':<18}" + "".join(f"{h:>19}" for h in heads)
                     + f"{'flagged normal':>16}{'flagged abnormal':>18}   volume")
        for v in metrics["by_volume"]:
            cells = "".join(f"{fmt(v['auroc'][n]):>19}" for n in names)
            lines.append(f"{v['slices']:>6} ({v['abnormal']})".ljust(18) + cells
                         + f"{fmt(v['flagged_normal']):>16}{fmt(v['flagged_abnormal']):>18}   {v['volume']}")
    if "voxel" in metrics:
        from .voxels import format_cohort_voxels

        lines.append(format_cohort_voxels(metrics["voxel"]))
    return "\n".join(lines)


def evaluate_cohort(model_dir: str | Path, images: Sequence, labels: Sequence, masks: Sequence | None,
                    device_name: str = "auto", batch_size: int = 32, brain_mask: str = "auto") -> dict:
    """Scores every volume and returns the slice-level metrics (see ``slice_metrics``); volumes without
    a mask get their foreground by ``brain_mask`` (see ``data.brain.choose_foreground``)."""
    from tqdm import tqdm

    from ..core.runtime import resolve_device
    from ..data.brain import prepare_volume
    from ..data.inputs import sources
    from ..data.preprocessing import PreparedVolume
    from ..methods.model import load_model
    from ..scoring.iterate import scored_volumes
    from .voxels import CohortVoxels

    volumes = sources(images, masks, labels)
    model = load_model(model_dir)
    device = resolve_device(device_name)
    model.to(device)
    tables, truth, areas = [], [], []
    voxels = CohortVoxels(model.config)
    def prepare_fn(image: Path, preprocess: object, mask: Path | None, label: Path | None, min_pixels: int
                   ) -> PreparedVolume:
        return prepare_volume(image, preprocess, mask or brain_mask, label, min_pixels, device)[0]

    scored = scored_volumes(model, volumes, prepare_fn, device, batch_size)
    for k, result in tqdm(scored, total=len(volumes), desc="scoring volumes", unit="vol"):
        tables.append(result.table)
        voxels.add(result, volumes[k][2])
        truth.append(result.prepared.labelled)
        areas.append(result.prepared.labelled_area_mm2)
    metrics = slice_metrics(tables, truth, areas, [str(path) for path in images])
    metrics["volumes"] = len(images)
    metrics["threshold"] = model.config.threshold
    metrics["voxel"] = voxels.result()
    return metrics
