"""What ``benchmarks/run.py`` runs: each protocol's training and test volumes on a data folder
(``../shared/data/README.md`` defines them), the cache keys of models and evaluations, and the tables."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from MAEAnomalyLib.evaluation.cohort import BASELINES, SCORES
from MAEAnomalyLib.evaluation.cohort import LABELS as COHORT_LABELS
from MAEAnomalyLib.methods import get as get_method
from MAEAnomalyLib.methods import names as method_names

PROTOCOLS = ("t1", "paper")
CONTRASTS = ("t1", "flair", "t2")  # of the paper protocol; "t1" is the native T1
# T1 protocol: the methods whose IXI model ships with the project
SHIPPED_T1 = {"mae_classifier": "brain-t1", "ra": "brain-t1-ra"}


# Each method's own raw score (its primary), but for the intensity baseline's, which is one of the baselines
PRIMARIES = tuple(dict.fromkeys(p for p in (get_method(m).primary for m in method_names()) if p not in BASELINES))


def _columns() -> tuple[str, ...]:
    """evaluate's score columns in the tables' order: the calibrated score, each method's own score, the
    baselines, then the reconstruction errors and their position forms."""
    first = [c for c in ("score", "score_volume", *PRIMARIES) if c in SCORES]
    return (*first, *BASELINES, *(c for c in SCORES if c not in first and c not in BASELINES))


# Columns of evaluate's tables reported per method, when present; the voxel map shown beside each.
COLUMNS = _columns()
VOXEL_MAP = {"score": "difference+post", "intensity_p995": "intensity+post"}
LABELS = {**COHORT_LABELS, "foreground_fraction": "brain area",
          **{p: f"{p} (the method's raw score)" for p in PRIMARIES}}


@dataclass
class Split:
    """Case counts: the paper protocol trains on the first ``paper_train`` brats2018 cases (sorted) and
    tests on the last ``paper_test``; the T1 protocol trains on the first ``ixi_train`` IXI T1 volumes
    and counts false positives on the last ``ixi_unseen``."""

    paper_train: int = 14
    paper_test: int = 6
    ixi_train: int = 30
    ixi_unseen: int = 10


@dataclass
class Volumes:
    name: str
    images: list[Path]
    masks: list[Path]
    labels: list[Path] | None = None  # None: healthy volumes, false positives only

    def files(self) -> list[Path]:
        return [*self.images, *self.masks, *(self.labels or [])]


@dataclass
class Job:
    """One model of a protocol (trained, or shipped) and the volumes it is tested on."""

    protocol: str
    contrast: str
    method: str
    train: Volumes | None
    shipped: str | None = None
    tests: list[Volumes] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.contrast}-{self.method}"


def _cases(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p / "seg.nii.gz").exists()) if folder.is_dir() else []


def case_volumes(name: str, cases: list[Path], contrast: str) -> Volumes:
    return Volumes(name, [c / f"{contrast}.nii.gz" for c in cases], [c / "brainmask.nii.gz" for c in cases],
                   [c / "seg.nii.gz" for c in cases])


def ixi_volumes(data: Path) -> tuple[list[Path], list[Path]]:
    images = sorted((data / "ixi-t1").glob("IXI*_T1.nii.gz"))
    return images, [p.with_name(p.name.replace("_T1.nii.gz", "_brainmask.nii.gz")) for p in images]


def protocol_jobs(protocol: str, data: Path, methods: list[str], contrasts: list[str], split: Split,
                  t1_models: dict[str, str] | None = None) -> tuple[list[Job], list[str]]:
    """The jobs of ``protocol`` on ``data``, and one line for each part skipped for want of data. On the T1
    protocol a method of ``t1_models`` (method -> model folder or shipped name) is evaluated with that model
    instead of its shipped one or one trained here."""
    b18, b15 = _cases(data / "brats2018"), _cases(data / "brats2015")
    jobs: list[Job] = []
    skipped: list[str] = []
    if protocol == "t1":
        images, masks = ixi_volumes(data)
        if len(images) < split.ixi_train + split.ixi_unseen:
            skipped.append(f"t1: ixi-t1/ holds {len(images)} T1 volumes, not {split.ixi_train} + {split.ixi_unseen}")
            return [], skipped
        n, m = split.ixi_train, split.ixi_unseen
        tests = [case_volumes(f"brats2018 {c} ({len(b18)})", b18, c) for c in ("t1", "t1c") if b18]
        tests += [case_volumes(f"brats2015 t1c ({len(b15)})", b15, "t1c")] if b15 else []
        if b18 and b15:  # issue 30's target: one ranking across every patient and both sources
            parts = [case_volumes("", b18, "t1"), case_volumes("", b15, "t1c")]
            tests.append(Volumes(f"pooled: brats2018 t1 + brats2015 t1c ({len(b18) + len(b15)})",
                                 *([p for v in parts for p in getattr(v, f)] for f in ("images", "masks", "labels"))))
        tests.append(Volumes(f"IXI unseen healthy ({m})", images[-m:], masks[-m:]))
        skipped += [f"t1: no {d}/ in {data}" for d, c in (("brats2018", b18), ("brats2015", b15)) if not c]
        given = {**SHIPPED_T1, **(t1_models or {})}
        for method in methods:
            train = None if method in given else Volumes(f"IXI T1 first {n}", images[:n], masks[:n])
            jobs.append(Job("t1", "t1", method, train, given.get(method), tests))
        return jobs, skipped
    n, m = split.paper_train, split.paper_test
    if len(b18) < n + m:
        return [], [f"paper: brats2018/ holds {len(b18)} cases, not {n} + {m}"]
    for contrast in contrasts:
        tests = [case_volumes(f"brats2018 {contrast} last {m}", b18[-m:], contrast)]
        if contrast == "flair":
            tests += [case_volumes(f"brats2015 flair ({len(b15)})", b15, "flair")] if b15 else []
            skipped += [] if b15 else [f"paper: no brats2015/ in {data}"]
        train = case_volumes(f"brats2018 {contrast} first {n}", b18[:n], contrast)
        jobs += [Job("paper", contrast, method, train, None, tests) for method in methods]
    return jobs, skipped


def _described(files: list[Path], root: Path) -> list[list]:
    """Each file as [path relative to the data folder, size in bytes]: the key survives a moved folder."""
    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            return str(p)

    return [[rel(p), p.stat().st_size] for p in files]


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(method: str, protocol: str, contrast: str, preset: str, sets: list[str], files: list[Path],
              root: Path) -> str:
    """The key of a trained model: method, protocol, contrast and settings (preset, --set items in their
    order, and the whole config they make with this version's defaults, so that a changed default trains
    again), the training files with their sizes."""
    from MAEAnomalyLib.methods.model_config import apply_overrides
    from MAEAnomalyLib.methods.model_config import preset as make_preset

    cfg = make_preset(preset, method)
    apply_overrides(cfg, sets)
    return digest({"method": method, "protocol": protocol, "contrast": contrast, "preset": preset,
                   "set": list(sets), "config": cfg.to_dict(), "files": _described(files, root)})[:16]


def evaluation_key(config_sha256: str, volumes: Volumes, root: Path, code: str) -> str:
    """The key of an evaluation: the model (its config.json's SHA-256), the test set and the evaluation code."""
    return digest({"model": config_sha256, "name": volumes.name, "files": _described(volumes.files(), root),
                   "code": code})[:16]


def source_digest(folder: Path) -> str:
    return digest([[p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in sorted(folder.rglob("*.py"))])


_INTERVAL = re.compile(r"(^|_)ci\d*($|_)|interval", re.IGNORECASE)


def intervals(value: object, path: str = "") -> list[tuple[str, str]]:
    """Every entry whose key names an interval (``ci95``, ``auroc_ci``, ``...interval...``): its path and
    its value as text (after the ``difference`` beside it, if any)."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _INTERVAL.search(str(key)):
                found.append((where, (f"{value['difference']:+.3f} " if isinstance(value.get("difference"), float)
                                      else "") + f3(item)))
            else:
                found += intervals(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += intervals(item, f"{path}[{i}]")
    return found


def interval_note(entry: dict) -> str:
    """``evaluate``'s words on what an entry's intervals rest on, where the library has them."""
    try:
        from MAEAnomalyLib.evaluation.cohort import interval_note as note
    except ImportError:
        return "intervals as `evaluate` reports them"
    return note(entry)


def f3(v: object) -> str:
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:.3f}"
    return "—" if v is None else json.dumps(v, default=str)


def _patients(metrics: dict, column: str) -> str:
    values = sorted(v["auroc"].get(column) for v in metrics.get("by_volume", [])
                    if v["auroc"].get(column) is not None)
    return f"{values[len(values) // 2]:.3f} ({values[0]:.3f}–{values[-1]:.3f})" if values else "—"


def rows(result: dict) -> list[str]:
    """The table rows of one evaluation: one per reported column."""
    metrics = result["metrics"]
    brain, every = metrics["foreground_slices"], metrics["all_slices"]
    out = []
    for column in (c for c in COLUMNS if c in brain and isinstance(brain[c], dict)):
        auroc = f3(brain[column].get("auroc"))
        for _, text in intervals(brain[column]):
            auroc += f" {text}" if not text.endswith("—") else ""
        thirds = " / ".join(f3(g.get(column)) for g in metrics.get("by_position") or [])
        sizes = " / ".join(f3(g.get(column)) for g in (metrics.get("by_lesion_size") or {}).get("groups", []))
        voxel = metrics.get("voxel", {}).get("maps", {}).get(VOXEL_MAP.get(column, ""), {})
        cells = [result["method"], result["test_set"], LABELS.get(column, column),
                 f"{brain['slices']} ({brain['abnormal']})", auroc, f3(brain[column].get("auprc")),
                 f3(every.get(column, {}).get("auroc")), f3(every.get(column, {}).get("auprc")),
                 f3(brain[column].get("auroc_within_area")), thirds or "—", sizes or "—", _patients(metrics, column),
                 *(f3(voxel.get(k)) if voxel else "—" for k in ("auroc", "auprc", "best_dice", "dice",
                                                                 "false_positive_ml_mean")),
                 f"{result['seconds_per_volume']:.1f}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def source_group(volume: str) -> str:
    """Where a test case comes from: the BraTS-2018 2013 set, CBICA or TCIA, or BraTS-2015."""
    match = re.search(r"Brats18_(2013|CBICA|TCIA)", volume)
    return match.group(1) if match else "brats2015" if "brats2015" in volume else "other"


def comparability_rows(result: dict) -> list[str]:
    """Pooled AUROC against the mean of the per-patient AUROCs (a gap near 0: scores comparable across
    volumes), and the per-patient mean by source group, per reported column."""
    metrics = result["metrics"]
    brain, per_volume = metrics["foreground_slices"], metrics.get("by_volume") or []
    out = []
    for column in (c for c in COLUMNS if c in brain and isinstance(brain[c], dict)):
        values = {v.get("volume", str(i)): v["auroc"][column] for i, v in enumerate(per_volume)
                  if v["auroc"].get(column) is not None}
        if not values:
            continue
        mean = sum(values.values()) / len(values)
        groups = {}
        for volume, value in values.items():
            groups.setdefault(source_group(volume), []).append(value)
        by_group = ", ".join(f"{g} {sum(v) / len(v):.3f} ({len(v)})" for g, v in sorted(groups.items()))
        pooled = brain[column]["auroc"]
        out.append(f"| {result['method']} | {result['test_set']} | {LABELS.get(column, column)} | "
                   f"{f3(pooled)} | {mean:.3f} | {pooled - mean:+.3f} | {by_group} |")
    return out


HEAD = ("method", "test set", "column", "brain slices (tumour)", "AUROC", "AUPRC", "AUROC all slices",
        "AUPRC all slices", "AUROC within area", "AUROC bottom / middle / top third",
        "AUROC lesion-size thirds", "AUROC per patient: median (range)", "voxel AUROC", "voxel AUPRC",
        "oracle Dice", "Dice@thr", "FP mL/volume", "s/volume")


def _from_nothing(report: dict) -> str:
    """What the protocol costs without a cache: its trainings and evaluations, each as long as when it ran
    (models shipped or given with --t1-model are not trained by it)."""
    made_here = [m for m in report["models"] if not m["model"].startswith(("shipped", "given"))]
    train = sum(m.get("train_seconds") or 0 for m in made_here)
    evaluate = sum(r["seconds"] for r in report["results"])
    return f"training {train / 60:.0f} min + evaluation {evaluate / 60:.0f} min"


def markdown(report: dict) -> str:
    """One protocol's tables: the models, the slice and voxel figures, false positives on healthy volumes."""
    lines = [f"# Protocol {report['protocol']}", "",
             f"`{report['command']}`; {report['wall_seconds']:.0f} s wall ({report['cpus']} CPU cores); "
             f"from nothing: {_from_nothing(report)}.", "",
             "| method | contrast | model | trained on | slices | train s | stopped by budget | threshold |",
             "|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        cut = m.get("stopped_by_time_budget")
        cut = ", ".join(map(str, cut)) or "no" if isinstance(cut, list) else cut
        lines.append(f"| {m['method']} | {m['contrast']} | {m['model']} | {m['trained_on']} | {m.get('train_slices')} "
                     f"| {m.get('train_seconds')} | {cut} | {f3(m.get('threshold'))} |")
    labelled = [r for r in report["results"] if r["kind"] == "labelled"]
    if labelled:
        lines += ["", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        for result in labelled:
            lines += rows(result)
        lines += ["", "Voxel figures: the `difference+post` map for `score` (the anomaly segmentation as `score` "
                  "makes it), `intensity+post` for `intensity_p995`; FP mL outside the tumour, mean per patient. "
                  "Lesion-size thirds: each against all normal brain slices."]
        lines += ["", "Across volumes: the pooled AUROC against the mean of the per-patient AUROCs (a gap near 0: "
                  "scores comparable across volumes), and the per-patient mean by source group (patients).", "",
                  "| method | test set | column | pooled AUROC | mean per-patient AUROC | gap | by source group |",
                  "|---|---|---|---|---|---|---|"]
        for result in labelled:
            lines += comparability_rows(result)
    healthy = [r for r in report["results"] if r["kind"] == "healthy"]
    if healthy:
        lines += ["", "| method | healthy volumes | brain slices | flagged | false-positive rate (target) | "
                  "volumes with a flagged slice | FP mL/volume, mean (max) | s/volume |", "|" + "---|" * 8]
        for r in healthy:
            h, ml = r["metrics"], r["metrics"]["voxel_false_positive_ml"].get("difference+post") or [0.0]
            lines.append(f"| {r['method']} | {r['test_set']} | {h['slices']} | {h['flagged_slices']} | "
                         f"{h['false_positive_rate']:.3f} ({h['target_fpr']}) | {h['volumes_with_a_flagged_slice']} | "
                         f"{sum(ml) / len(ml):.2f} ({max(ml):.2f}) | {r['seconds_per_volume']:.1f} |")
    shown = [r for r in labelled if intervals(r["metrics"])]
    if shown:
        lines += ["", "Intervals reported by `evaluate` beside those in the AUROC cells (over all slices, and of "
                  "the bootstrap over slices, in the JSON only):"]
        for r in shown:
            lines.append(f"- {r['method']}, {r['test_set']}: {interval_note(r['metrics']['foreground_slices'])}")
            in_cells = tuple(f"foreground_slices.{c}." for c in COLUMNS)
            for path, text in intervals(r["metrics"]):
                if not (text.endswith("—") or path.startswith(("all_slices", *in_cells)) or "slice_bootstrap" in path):
                    lines.append(f"  - `{path}` {text}")
    lines += [f"- {line}" for line in report.get("skipped", [])]
    return "\n".join(lines) + "\n"
