"""The PNG report: score along the volume with the threshold, and the most anomalous slices."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from .scores import VolumeScores
from .segmentation import Segmentation, labels_at_model_size


def render_report(result: VolumeScores, title: str, segmentation: Segmentation | None = None, top: int = 4) -> bytes:
    """Returns PNG bytes; slices are shown at model resolution, anterior up, with the outlines of the
    anomaly components (cyan) when a segmentation is given."""
    table = result.table
    scored = np.flatnonzero(table["skipped"] == 0)
    # A method's "difference" extra (the paper's |reconstruction - original|) is what a reader expects to
    # see; its anomaly map otherwise.
    shown = result.extras.get("difference", result.map_slices)
    # A Figure of its own, not pyplot's global state: cohort scoring renders reports in several threads.
    fig = Figure(figsize=(10, 6.5), dpi=100)
    grid = fig.add_gridspec(2, top, height_ratios=[1.0, 1.1])
    ax = fig.add_subplot(grid[0, :])
    pos = table["position_mm"]
    ax.plot(pos[scored], table["score"][scored], "o-", ms=3, color="tab:blue", label="anomaly score")
    if np.isfinite(result.threshold):
        ax.axhline(result.threshold, color="tab:red", ls="--", label=f"threshold {result.threshold:.3f}")
    abnormal = table["abnormal"] == 1
    ax.plot(pos[abnormal], table["score"][abnormal], "o", ms=5, color="tab:red", label="above threshold")
    ax.set_xlabel("slice position (mm, inferior → superior)")
    raw = next((name for name in table if name != "score" and np.array_equal(table[name], table["score"])), None)
    if raw is not None:  # the method's raw primary score
        ax.set_ylabel(f"score ({raw})")
        if raw == "probability":
            ax.set_ylim(-0.02, 1.02)
    else:  # calibrated by position: a z-score against healthy slices at the same height in the brain
        ax.set_ylabel("score (z vs healthy, by position)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    order = scored[np.argsort(-table["score"][scored])][:top]
    vmax = float(shown.max()) or 1.0
    outlines = None if segmentation is None else labels_at_model_size(segmentation, result.prepared,
                                                                       shown.shape[-1])
    for col, k in enumerate(order):
        sub = fig.add_subplot(grid[1, col])
        image = result.prepared.slices[k, 0].numpy()
        diff = shown[k, 0].numpy()
        sub.imshow(image, cmap="gray", vmin=0, vmax=1)
        sub.imshow(np.ma.masked_less(diff, 0.05 * vmax), cmap="hot", vmin=0, vmax=vmax, alpha=0.6)
        if outlines is not None and outlines[k].any():
            sub.contour(outlines[k] > 0, levels=[0.5], colors="cyan", linewidths=0.8)
        sub.set_title(f"slice {k}: {table['score'][k]:.3f}", fontsize=9)
        sub.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
