"""Reading, reorientation, preprocessing and its inverse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MAEAnomalyLib.core.config import PreprocessConfig
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.io import from_canonical, read_volume, slice_positions_mm, to_canonical, volume_name
from MAEAnomalyLib.data.preprocessing import automatic_foreground, normalise, prepare, to_input_size, to_model_size
from MAEAnomalyLib.data.synthetic import make_subject


def test_volume_name() -> None:
    assert volume_name("/a/case.nii.gz") == "case"
    assert volume_name("b/scan.nrrd") == "scan"
    assert volume_name("dicomdir") == "dicomdir"


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_formats_read_the_same_voxels(tmp_path: Path, suffix: str) -> None:
    image = make_subject(1).image
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(image, str(path))
    read = read_volume(path)
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))
    assert np.allclose(read.GetSpacing(), image.GetSpacing())


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")  # one series UID
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(s)


def test_dicom_series_folder(tmp_path: Path) -> None:
    image = sitk.Cast(sitk.RescaleIntensity(make_subject(2).image, 0, 1000), sitk.sitkInt16)
    folder = tmp_path / "series"
    write_dicom_series(image, folder)
    read = read_volume(folder)
    assert read.GetSize() == image.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image).astype(np.float32))
    assert np.allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-3)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path) -> None:
    image = sitk.Cast(sitk.RescaleIntensity(make_subject(2).image, 0, 1000), sitk.sitkInt16)
    folder = tmp_path / "series"
    write_dicom_series(image, folder)
    (folder / "017.dcm").unlink()
    with pytest.raises(MAEAnomalyError, match=r"unevenly spaced: 6.00 mm between slices 17 and 18, 3.00 mm") as info:
        read_volume(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_canonical_slices_run_inferior_to_superior() -> None:
    axial = make_subject(3).image
    sagittal = make_subject(3, orientation="PSR").image  # stored like the IXI files
    assert sagittal.GetSize() != axial.GetSize()
    a, s = to_canonical(axial), to_canonical(sagittal)
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(s))
    positions = slice_positions_mm(s)
    assert np.all(np.diff(positions) > 0)
    assert np.allclose(positions, slice_positions_mm(a))


def test_from_canonical_restores_the_exact_grid() -> None:
    image = make_subject(4, orientation="PSR").image
    array = sitk.GetArrayFromImage(to_canonical(image)) * 2
    back = from_canonical(array, image)
    assert back.GetSize() == image.GetSize()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    assert back.GetSpacing() == image.GetSpacing()
    assert np.allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image) * 2)


def test_automatic_foreground_on_noisy_background_and_plateau() -> None:
    subject = make_subject(5)
    volume = sitk.GetArrayFromImage(subject.image)
    brain = sitk.GetArrayFromImage(subject.brain_mask).astype(bool)
    auto = automatic_foreground(volume)
    assert auto[brain].mean() > 0.99  # the head mask covers the brain
    assert auto.mean() < 0.6  # and not the noisy background
    stripped = np.where(brain, volume - volume[brain].mean(), 0.0)  # z-scored, zero outside, like BraTS
    assert np.array_equal(automatic_foreground(stripped), brain)


def test_prepare_normalises_inside_the_foreground(tmp_path: Path) -> None:
    paths = make_subject(6).write(tmp_path, "s")
    cfg = PreprocessConfig(image_size=64)
    vol = prepare(paths[0], cfg, mask_path=paths[1])
    assert vol.slices.shape == (40, 1, 64, 64) and vol.slices.dtype == torch.float32
    assert float(vol.slices.min()) >= 0.0 and float(vol.slices.max()) <= 1.0
    assert float(vol.slices[~vol.foreground].abs().max()) == 0.0
    inside = vol.slices[vol.foreground]
    assert float((inside >= 0.999).float().mean()) < 0.02  # only the top 0.5 % clip
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[1]))) > 0
    assert np.allclose(vol.foreground_fraction, brain.mean(axis=(1, 2)))


def test_resize_and_inverse_on_a_non_square_grid() -> None:
    yy, xx = np.meshgrid(np.linspace(0, 1, 50), np.linspace(0, 1, 70), indexing="ij")
    stack = np.stack([np.sin(3 * yy + k) * np.cos(2 * xx) for k in range(3)]).astype(np.float32)
    small = to_model_size(stack, 64, mode="bilinear")
    assert small.shape == (3, 1, 64, 64)
    back = to_input_size(small, (50, 70))
    assert back.shape == (3, 50, 70)
    error = np.abs(back - stack)
    assert error[:, 2:-2].max() < 0.03  # away from the zero padding the round trip is close
    assert error.mean() < 0.01
    # the padding is symmetric: the first and last padded rows stay zero at model size
    assert float(small[:, :, 0].abs().max()) == 0.0 and float(small[:, :, -1].abs().max()) == 0.0


def test_crop_to_foreground_magnifies_the_anatomy_and_maps_back(tmp_path: Path) -> None:
    image, mask, _ = make_subject(8, shape=(24, 64, 80)).write(tmp_path, "a")
    full_cfg = PreprocessConfig(image_size=32)
    crop_cfg = PreprocessConfig(image_size=32, crop_to_foreground=True, crop_margin=2)
    full, crop = prepare(image, full_cfg, mask_path=mask), prepare(image, crop_cfg, mask_path=mask)
    brain = full.foreground_input
    rows, cols = np.flatnonzero(brain.any(axis=(0, 2))), np.flatnonzero(brain.any(axis=(0, 1)))
    assert full.window == (slice(0, 64), slice(0, 80))
    # one window for the whole volume: the union of every slice's brain, plus the margin
    assert crop.window == (slice(rows[0] - 2, rows[-1] + 3), slice(cols[0] - 2, cols[-1] + 3))
    assert crop.slices.shape == full.slices.shape == (24, 1, 32, 32)
    assert crop.foreground.float().mean() > 1.2 * full.foreground.float().mean()
    assert np.array_equal(crop.foreground_fraction, full.foreground_fraction)  # measured on the input grid
    # Back on the input grid, the cropped path is the closer to the normalised volume (it is resized
    # less) and is zero outside its window.
    truth = normalise(sitk.GetArrayFromImage(full.canonical), brain, full_cfg, "a")
    crop_back, full_back = crop.to_input_grid(crop.slices), full.to_input_grid(full.slices)
    assert crop_back.shape == full_back.shape == brain.shape
    inside = brain & (full_back > 0)
    crop_error, full_error = np.abs(crop_back - truth)[inside].mean(), np.abs(full_back - truth)[inside].mean()
    assert crop_error < 0.8 * full_error
    outside = np.ones(brain.shape[1:], bool)
    outside[crop.window] = False
    assert not crop_back[:, outside].any()


def test_sagittal_and_axial_storage_prepare_identically(tmp_path: Path) -> None:
    axial = make_subject(7, lesion=True).write(tmp_path, "ax")
    sagittal = make_subject(7, lesion=True, orientation="PSR").write(tmp_path, "sag")
    cfg = PreprocessConfig(image_size=64)
    a, s = prepare(axial[0], cfg, label_path=axial[2]), prepare(sagittal[0], cfg, label_path=sagittal[2])
    assert torch.equal(a.slices, s.slices)
    # The lesion's area in each axial slice, in mm², whichever way the volume is stored.
    label = sitk.ReadImage(str(axial[2]))
    spacing = label.GetSpacing()
    expected = (sitk.GetArrayFromImage(label) > 0).sum(axis=(1, 2)) * spacing[0] * spacing[1]
    assert expected.max() > 0 and np.allclose(a.labelled_area_mm2, expected)
    assert np.allclose(s.labelled_area_mm2, expected) and np.array_equal(a.labelled, expected > 0)
    assert np.allclose(a.positions_mm, s.positions_mm)


@pytest.mark.parametrize("oblique", [0.0, 0.3])
def test_canonical_size_matches_the_reoriented_image(oblique: float) -> None:
    """Every axis order and flip, straight and oblique: the size known before the voxels are reoriented."""
    import itertools

    from MAEAnomalyLib.data.io import canonical_size

    turn = np.array([[np.cos(oblique), -np.sin(oblique), 0], [np.sin(oblique), np.cos(oblique), 0], [0, 0, 1]])
    for axes in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            direction = np.zeros((3, 3))
            for column, (row, sign) in enumerate(zip(axes, signs, strict=True)):
                direction[row, column] = sign
            image = sitk.Image([5, 7, 11], sitk.sitkUInt8)
            image.SetDirection((turn @ direction).ravel().tolist())
            assert canonical_size(image) == to_canonical(image).GetSize(), (axes, signs)
