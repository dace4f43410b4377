"""The smoothed difference map: a Gaussian of the signed residual inside the foreground, then its
magnitude. A lesion's residual keeps its sign and survives; errors that change sign from voxel to voxel
cancel; the brain's edge is not dimmed by the zeros outside it."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from MAEAnomalyLib.config import PreprocessConfig
from MAEAnomalyLib.data.io import to_canonical
from MAEAnomalyLib.data.preprocessing import prepare_image
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.scoring.scores import difference_image, smoothed_in_foreground


def _ball(shape: tuple[int, int, int], centre: np.ndarray, radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * d) ** 2 for g, c, d in zip(grid, centre, spacing_zyx, strict=True)) <= radius_mm ** 2


def test_a_constant_residual_stays_constant_up_to_the_foregrounds_edge() -> None:
    shape, spacing = (30, 40, 40), (1.0, 1.0, 2.5)  # x, y, z: anisotropic, as many clinical volumes
    fg = _ball(shape, np.array([15, 20, 20]), 14.0, np.array(spacing[::-1]))
    values = np.where(fg, 0.2, 5.0).astype(np.float32)  # what lies outside must not leak in
    out = smoothed_in_foreground(values, fg, 5.0, spacing)
    np.testing.assert_allclose(out[fg], 0.2, rtol=1e-4)
    assert (out[~fg] == 0).all()


def test_alternating_errors_cancel_and_a_lesion_survives() -> None:
    shape, spacing = (24, 48, 48), (1.0, 1.0, 1.0)
    fg = np.zeros(shape, bool)
    fg[2:-2, 4:-4, 4:-4] = True
    z, y, x = np.indices(shape)
    checkerboard = np.where((z + y + x) % 2 == 0, 0.1, -0.1)
    lesion = _ball(shape, np.array([12, 24, 24]), 8.0, np.ones(3))
    residual = (checkerboard + 0.1 * lesion).astype(np.float32) * fg
    # Per voxel, the lesion is invisible: |residual| is 0.1 or 0.2 by the checkerboard's sign alone.
    assert np.isclose(np.abs(residual[lesion]).mean(), 0.1, atol=0.01)
    out = np.abs(smoothed_in_foreground(residual, fg, 3.0, spacing))
    far = fg & ~_ball(shape, np.array([12, 24, 24]), 20.0, np.ones(3))
    assert out[12, 24, 24] > 0.07
    assert out[far].max() < 0.01


def test_difference_image_is_per_voxel_without_smoothing_and_on_the_inputs_grid_with_it() -> None:
    subject = make_subject(2, orientation="PSR")
    prepared = prepare_image(subject.image, PreprocessConfig(image_size=64), subject.brain_mask)
    rng = np.random.default_rng(0)
    residual = torch.from_numpy(rng.normal(0, 0.1, prepared.slices.shape).astype(np.float32)) * prepared.foreground
    diff = residual.abs()
    plain = difference_image(diff, residual, prepared, 0.0)
    smooth = difference_image(diff, residual, prepared, 5.0)
    fg = prepared.foreground_input
    for image in (plain, smooth):
        assert image.GetSize() == subject.image.GetSize() and image.GetDirection() == subject.image.GetDirection()
        values = sitk.GetArrayFromImage(to_canonical(image))
        assert (values[~fg] == 0).all() and (values >= 0).all()
    plain_values = sitk.GetArrayFromImage(to_canonical(plain))[fg]
    smooth_values = sitk.GetArrayFromImage(to_canonical(smooth))[fg]
    # Zero-mean noise: per voxel it is |noise| (about 0.08 on average); smoothed, it nearly cancels.
    assert plain_values.mean() > 0.05 and smooth_values.mean() < 0.3 * plain_values.mean()
