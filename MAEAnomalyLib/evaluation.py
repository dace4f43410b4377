"""Slice-level AUROC and AUPRC of each score, over slices with foreground and over all slices."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

# Each score column and the sign that makes larger mean "more anomalous".
SCORES = {"score": 1.0, "mae_l1": 1.0, "ssim": -1.0, "intensity_p995": 1.0}


def slice_metrics(tables: list[dict[str, np.ndarray]], labelled: list[np.ndarray]) -> dict:
    """Pools slices of all volumes; ``labelled[i][k]`` is True when slice k of volume i is abnormal."""
    pooled = {name: np.concatenate([t[name] for t in tables]) for name in (*SCORES, "skipped")}
    truth = np.concatenate(labelled).astype(int)
    subsets = {"foreground_slices": pooled["skipped"] == 0, "all_slices": np.ones_like(truth, dtype=bool)}
    out: dict = {}
    for subset, chosen in subsets.items():
        y = truth[chosen]
        entry: dict = {"slices": int(chosen.sum()), "abnormal": int(y.sum())}
        for name, sign in SCORES.items():
            values = sign * pooled[name][chosen]
            if 0 < y.sum() < len(y):
                entry[name] = {"auroc": float(roc_auc_score(y, values)),
                               "auprc": float(average_precision_score(y, values))}
            else:
                entry[name] = {"auroc": None, "auprc": None}
        out[subset] = entry
    return out


def format_metrics(metrics: dict) -> str:
    """A plain-text table of the metrics."""
    lines = [f"{'subset':<18}{'score':<16}{'AUROC':>8}{'AUPRC':>8}   slices (abnormal)"]
    for subset, entry in metrics.items():
        for name in SCORES:
            auroc, auprc = entry[name]["auroc"], entry[name]["auprc"]
            def fmt(v):
                return (f"{v:8.3f}" if v is not None else f"{'n/a':>8}")
            label = "1 - ssim" if name == "ssim" else name
            lines.append(f"{subset:<18}{label:<16}{fmt(auroc)}{fmt(auprc)}   {entry['slices']} ({entry['abnormal']})")
    return "\n".join(lines)
