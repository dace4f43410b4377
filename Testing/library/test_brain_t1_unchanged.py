"""The shipped model scores as it did before methods became plug-ins: the bundled IXI sample's score table,
components table, map and anomaly labels, digested here from the outputs of commit aa88659 (the last
commit before the change, format-1 config.json read by that code), must come out byte for byte (the score
table without the ``score_volume`` column added since)."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MAEAnomalyLib.scoring.table import VOLUME_SCORE

pytestmark = pytest.mark.slow  # scores a volume with the shipped model (about 15 s on 2 cores)
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "Resources" / "SampleData"
# sha256sum of the files `maeanomaly score --model brain-t1 --image IXI516-HH-2297_T1.nii.gz --brain-mask
# IXI516-HH-2297_brainmask.nii.gz` wrote at aa88659, and of the voxel arrays of its two images.
BEFORE = {
    "scores.csv": "b1b33190d7d22c0dd1a2658b551ca3fd3b45b49944435f59a3b7635d1ae0141b",
    "components.csv": "53f236e657412632d313a97a3017ae678181208e6398c82aaf4a533d1c4a9cb7",
    "diff.nii.gz": "2f14aac75f819b25a3af4df70524d1e81ecbf98fd2c0f2b0f0a8a31715a0c506",
    "anomalies.nii.gz": "414f45150eaa344ee02c0c55579bcde9d61fa121e34cd01b48ff4ac262cbac91",
}


def digest(path: Path) -> str:
    """SHA-256 of a file; of an image's voxels; of a score table as it was before ``score_volume`` joined it."""
    if path.name.endswith("_scores.csv"):
        rows = list(csv.reader(path.read_text().splitlines()))
        drop = rows[0].index(VOLUME_SCORE)
        return hashlib.sha256("".join(",".join(r[:drop] + r[drop + 1:]) + "\n" for r in rows).encode()).hexdigest()
    if path.name.endswith(".nii.gz"):
        return hashlib.sha256(np.ascontiguousarray(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).tobytes()
                              ).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_brain_t1_scores_the_sample_byte_for_byte_as_before(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "MAEAnomalyLib", "score", "--model", "brain-t1", "--image",
                           str(SAMPLE / "IXI516-HH-2297_T1.nii.gz"), "--brain-mask",
                           str(SAMPLE / "IXI516-HH-2297_brainmask.nii.gz"), "--out-dir", str(tmp_path),
                           "--device", "cpu"], capture_output=True, encoding="utf-8", cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    found = {suffix: digest(tmp_path / f"IXI516-HH-2297_T1_{suffix}") for suffix in BEFORE}
    assert found == BEFORE
