"""Preprocessing of the real data in ../shared/data (skipped when it is absent): the IXI T1 files,
stored sagittally, become true axial slices, and the BraTS cases give the slice counts that their
README states."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MAEAnomalyLib.core.config import PreprocessConfig
from MAEAnomalyLib.data.preprocessing import prepare

DATA = Path(os.environ.get("MAEANOMALY_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (DATA / "brats2015").is_dir(), reason=f"no real data at {DATA}")


def test_ixi_sagittal_volumes_become_axial_slices() -> None:
    cfg = PreprocessConfig(image_size=128)  # percentile normalisation: it needs no training volumes
    for image in sorted((DATA / "ixi-t1").glob("IXI*_T1.nii.gz"))[:3]:
        stored = sitk.ReadImage(str(image))
        codes = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(stored.GetDirection())
        superior_axis = next(i for i, c in enumerate(codes) if c in "SI")
        mask = image.with_name(image.name.replace("_T1", "_brainmask"))
        prepared = prepare(image, cfg, mask, min_pixels=8)
        # One slice per voxel along the inferior-superior axis, in increasing superior position.
        assert prepared.slices.shape[0] == stored.GetSize()[superior_axis]
        assert np.all(np.diff(prepared.positions_mm) > 0)
        brain = prepared.foreground_fraction > 0
        assert 40 < brain.sum() < prepared.slices.shape[0]  # the head does not fill the field of view
        assert not brain[0] and not brain[-1]


@pytest.mark.parametrize("case", [f"pat000{i}" for i in range(1, 7)])
def test_brats_cases_have_the_stated_brain_and_tumour_slices(case: str) -> None:
    folder = DATA / "brats2015" / case
    prepared = prepare(folder / "flair.nii.gz", PreprocessConfig(image_size=128), folder / "brainmask.nii.gz",
                       folder / "seg.nii.gz", min_pixels=8)
    brain = prepared.foreground_fraction > 0
    assert prepared.labelled is not None
    assert 130 <= brain.sum() <= 145 and 61 <= prepared.labelled.sum() <= 84
    assert not (prepared.labelled & ~brain).any()  # tumour only where there is brain
