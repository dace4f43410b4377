"""The PNG report: score along the volume with the threshold, and the most anomalous slices."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from .scores import VolumeScores


def render_report(result: VolumeScores, title: str, top: int = 4) -> bytes:
    """Returns PNG bytes; slices are shown at model resolution, anterior up."""
    table = result.table
    scored = np.flatnonzero(table["skipped"] == 0)
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
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    order = scored[np.argsort(-table["score"][scored])][:top]
    vmax = float(result.difference_slices.max()) or 1.0
    for col, k in enumerate(order):
        sub = fig.add_subplot(grid[1, col])
        image = result.prepared.slices[k, 0].numpy()
        diff = result.difference_slices[k, 0].numpy()
        sub.imshow(image, cmap="gray", vmin=0, vmax=1)
        sub.imshow(np.ma.masked_less(diff, 0.05 * vmax), cmap="hot", vmin=0, vmax=vmax, alpha=0.6)
        sub.set_title(f"slice {k}: {table['score'][k]:.3f}", fontsize=9)
        sub.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
