"""Brain extraction that can say no: what deepbet finds must look like an adult brain (volume, one piece,
size, shape, contrast with its surroundings), and only a whole brain on a constant background counts as
skull-stripped. Generated data only, except the optional real-data test at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data import brain
from MAEAnomalyLib.data.synthetic import make_subject

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
REFUSAL = r"brain extraction found no plausible brain \(\d+\.\d\d L.*--brain-mask none"


def _image(array: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    return image


def _noise() -> sitk.Image:
    return _image(np.random.default_rng(0).uniform(0, 1000, (128, 128, 128)), (1.0, 1.0, 1.0))


def _ramp() -> sitk.Image:
    z, y, x = np.meshgrid(*[np.arange(128, dtype=np.float32)] * 3, indexing="ij")
    return _image(x + y + z, (1.0, 1.0, 1.0))


def _chest() -> sitk.Image:
    """A CT-like torso: soft tissue (40 HU) with two lungs (-850 HU) in air (-1000 HU)."""
    _, y, x = np.meshgrid(np.arange(100), np.arange(256), np.arange(256), indexing="ij")
    body = ((y - 128) / 90) ** 2 + ((x - 128) / 120) ** 2 <= 1
    lungs = (((y - 120) / 55) ** 2 + ((x - 80) / 35) ** 2 <= 1) | (((y - 120) / 55) ** 2 + ((x - 176) / 35) ** 2 <= 1)
    ct = np.where(body, np.where(lungs, -850.0, 40.0), -1000.0)
    return _image(ct + np.random.default_rng(0).normal(0, 10, ct.shape), (1.5, 1.5, 3.0))


def _head_at_20_mm() -> sitk.Image:
    image = make_subject(100).image
    image.SetSpacing((20.0, 20.0, 20.0))
    return image


def _crop_16() -> sitk.Image:
    return make_subject(100).image[24:40, 24:40, 12:28]


# Each costs a deepbet run (seconds on a CPU): noise is refused through `score` below, the rest in the slow tier.
@pytest.mark.parametrize("make", [_ramp, *(pytest.param(make, marks=pytest.mark.slow)
                                           for make in (_noise, _crop_16, _chest, _head_at_20_mm))])
def test_extraction_refuses_what_is_no_brain(make) -> None:
    with pytest.raises(MAEAnomalyError, match=REFUSAL) as refused:
        brain.choose_foreground(make(), "auto", "input.nii.gz")
    assert str(refused.value).startswith("input.nii.gz: ") and "\n" not in str(refused.value)


def test_score_refuses_noise_in_one_line_and_writes_nothing(untrained_model_dir: Path, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture) -> None:
    path = tmp_path / "noise.nii.gz"
    sitk.WriteImage(_noise(), str(path))
    out = tmp_path / "out"
    code = main(["score", "--model", str(untrained_model_dir), "--image", str(path), "--out-dir", str(out),
                 "--device", "cpu"])
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"maeanomaly: error: {path}: brain extraction found no plausible brain (")
    assert "--brain-mask none" in last and not (out.exists() and any(out.iterdir()))


@pytest.mark.parametrize("seed, orientation", [(79, "LPS"),  # the smallest generated brain
                                               pytest.param(101, "PSR", marks=pytest.mark.slow)])
def test_generated_heads_are_still_extracted(seed: int, orientation: str) -> None:
    subject = make_subject(seed, orientation=orientation)
    foreground = brain.choose_foreground(subject.image, "auto", "head.nii.gz")
    assert foreground.extracted
    measures = brain.brain_measures(sitk.GetArrayFromImage(foreground.mask), sitk.GetArrayFromImage(subject.image),
                                    subject.image.GetSpacing())
    low, high = brain.EXTRACTED_LITRES
    assert low < measures["litres"] < high and measures["largest"] > 0.99


def _ellipsoid(shape: tuple[int, int, int], radii: tuple[float, float, float]) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grid, radii, strict=True)) <= 1


def test_the_check_names_each_implausible_shape() -> None:
    """Masks built to fail one measure each, on a T1-like image (bright brain, dark surroundings)."""
    spacing = (2.0, 2.0, 2.0)
    head = _ellipsoid((80, 110, 100), (30, 42, 35))  # a 1.5 L brain
    image = np.where(head, 800.0, 100.0)
    assert brain.implausible_brain(head, image, spacing) is None
    half = _ellipsoid((80, 110, 90), (25, 35, 22))  # 0.65 L
    two = np.concatenate([half, np.zeros((80, 110, 20), dtype=bool), half], axis=2)  # 40 mm apart
    assert "in 2 pieces" in brain.implausible_brain(two, np.where(two, 800.0, 100.0), spacing)
    rod = np.zeros((40, 40, 200), dtype=bool)  # 0.75 L, 300 mm long
    rod[7:32, 7:32, 25:175] = True
    assert "spanning 300 mm" in brain.implausible_brain(rod, np.where(rod, 800.0, 100.0), spacing)
    big = _ellipsoid((94, 124, 114), (45, 60, 55))
    shell = big & ~ndimage.binary_erosion(big, iterations=3)  # 0.8 L, hollow
    assert "of its bounding box" in brain.implausible_brain(shell, np.where(shell, 800.0, 100.0), spacing)
    assert "does not stand out" in brain.implausible_brain(head, np.full(head.shape, 500.0), spacing)
    assert brain.implausible_brain(head[:, :, :10], image[:, :, :10], spacing).startswith("0.")


def _zero_background_head(seed: int) -> sitk.Image:
    """A generated head (skull and scalp on) whose background is exactly zero, as in the IXI files."""
    subject = make_subject(seed)
    inside = ndimage.binary_dilation(sitk.GetArrayFromImage(subject.brain_mask) > 0, iterations=4)
    head = sitk.GetImageFromArray(np.where(inside, sitk.GetArrayFromImage(subject.image), 0).astype(np.float32))
    head.CopyInformation(subject.image)
    return head


@pytest.mark.parametrize("first, slices", [(15, 10), (10, 20), (0, 25), (28, 12), (12, 28)])
def test_an_axial_slab_of_a_head_is_not_skull_stripped(first: int, slices: int) -> None:
    slab = _zero_background_head(100)[:, :, first:first + slices]
    assert not brain.is_skull_stripped(slab)


@pytest.mark.parametrize("orientation", ["LPS", "PSR"])
def test_a_whole_stripped_brain_is_still_recognised(orientation: str) -> None:
    subject = make_subject(102, orientation=orientation)
    stripped = sitk.Mask(subject.image, subject.brain_mask)
    assert brain.is_skull_stripped(stripped)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(subject.brain_mask)
    box = shape.GetBoundingBox(1)  # cropped to the brain, as some pipelines store it
    tight = stripped[box[0]:box[0] + box[3], box[1]:box[1] + box[4], box[2]:box[2] + box[5]]
    assert brain.is_skull_stripped(tight)


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "ixi-t1").is_dir(), reason="no real data in ../shared/data")
def test_real_brains_pass_both_checks() -> None:
    """IXI heads and the bundled sample are extracted and accepted; IXI masked and brats2015 volumes count as
    skull-stripped (benchmarks/brain_extraction_check.py measures more of them)."""
    heads = sorted((DATA / "ixi-t1").glob("IXI*_T1.nii.gz"))
    sample = Path(__file__).resolve().parents[2] / "Resources" / "SampleData" / "IXI516-HH-2297_T1.nii.gz"
    for path in [heads[0], heads[-1], sample]:
        foreground = brain.choose_foreground(sitk.ReadImage(str(path), sitk.sitkFloat32), "auto", str(path))
        assert foreground.extracted, path
    for path in heads:
        mask = sitk.ReadImage(str(path).replace("_T1", "_brainmask"))
        assert brain.is_skull_stripped(sitk.Mask(sitk.ReadImage(str(path), sitk.sitkFloat32), mask)), path
    for path in sorted((DATA / "brats2015").glob("pat*/*.nii.gz")):
        if path.name in ("t1c.nii.gz", "flair.nii.gz"):
            assert brain.is_skull_stripped(sitk.ReadImage(str(path), sitk.sitkFloat32)), path
