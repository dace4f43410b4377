"""The anomaly map: |reconstruction - original| divided by the MAE's spread plus a floor, then averaged
by a Gaussian over the foreground's voxels only. An error the MAE is sure of outranks one where it is
unsure; a lesion's raised error over its whole extent stands out; scattered errors of healthy fine detail
are spread thin; the brain's edge is not dimmed by the zeros outside it."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MAEAnomalyLib.core.config import PreprocessConfig
from MAEAnomalyLib.data.io import to_canonical
from MAEAnomalyLib.data.preprocessing import prepare_image
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.mae_classifier.scorer import anomaly_map
from MAEAnomalyLib.methods.model import load_model
from MAEAnomalyLib.scoring.scores import difference_image, score_prepared, smoothed_in_foreground


def _ball(shape: tuple[int, int, int], centre: np.ndarray, radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * d) ** 2 for g, c, d in zip(grid, centre, spacing_zyx, strict=True)) <= radius_mm ** 2


def test_a_constant_map_stays_constant_up_to_the_foregrounds_edge() -> None:
    shape, spacing = (30, 40, 40), (1.0, 1.0, 2.5)  # x, y, z: anisotropic, as many clinical volumes
    fg = _ball(shape, np.array([15, 20, 20]), 14.0, np.array(spacing[::-1]))
    values = np.where(fg, 0.2, 5.0).astype(np.float32)  # what lies outside must not leak in
    out = smoothed_in_foreground(values, fg, 5.0, spacing)
    np.testing.assert_allclose(out[fg], 0.2, rtol=1e-4)
    assert (out[~fg] == 0).all()


def test_a_lesions_raised_error_outranks_scattered_larger_errors_once_smoothed() -> None:
    shape, spacing = (24, 48, 48), (1.0, 1.0, 1.0)
    fg = np.zeros(shape, bool)
    fg[2:-2, 4:-4, 4:-4] = True
    lesion = _ball(shape, np.array([12, 24, 24]), 6.0, np.ones(3))
    rng = np.random.default_rng(0)
    values = np.where(rng.random(shape) < 0.02, 0.5, 0.02)  # fine detail: a few large errors
    values[lesion] = 0.15  # the lesion: a moderate error over its whole extent
    values = (values * fg).astype(np.float32)
    far = fg & ~_ball(shape, np.array([12, 24, 24]), 16.0, np.ones(3))
    assert values[far].max() > values[lesion].max()  # per voxel, the lesion is not the highest
    out = smoothed_in_foreground(values, fg, 3.0, spacing)
    assert out[12, 24, 24] > 1.5 * out[far].max()


def test_difference_image_is_per_voxel_without_smoothing_and_on_the_inputs_grid_with_it() -> None:
    subject = make_subject(2, orientation="PSR")
    prepared = prepare_image(subject.image, PreprocessConfig(image_size=64), subject.brain_mask)
    rng = np.random.default_rng(0)
    diff = torch.from_numpy(np.abs(rng.normal(0, 0.1, prepared.slices.shape)).astype(np.float32))
    diff = diff * prepared.foreground
    fg = prepared.foreground_input
    maps = {}
    for sigma in (0.0, 6.0):
        image = difference_image(diff, prepared, sigma)
        assert image.GetSize() == subject.image.GetSize() and image.GetDirection() == subject.image.GetDirection()
        values = sitk.GetArrayFromImage(to_canonical(image))
        assert (values[~fg] == 0).all() and (values >= 0).all()
        maps[sigma] = values[fg]
    scored = np.flatnonzero(prepared.foreground_fraction > 0)
    per_voxel = prepared.to_input_grid(diff[scored]).clip(0) * fg[scored]
    np.testing.assert_allclose(maps[0.0], per_voxel[fg[scored]], atol=1e-6)
    # Averaging keeps the level of uniform noise and takes away most of its spread.
    assert abs(maps[6.0].mean() - maps[0.0].mean()) < 0.1 * maps[0.0].mean()
    assert maps[6.0].std() < 0.5 * maps[0.0].std()


def test_an_error_where_the_mae_is_sure_outranks_the_same_error_where_it_is_unsure() -> None:
    difference = torch.tensor([0.2, 0.2, 0.01, 0.0])
    spread = torch.tensor([0.0, 0.2, 0.0, 0.3])
    assert torch.equal(anomaly_map(difference, spread, 0.0), difference)  # floor 0: the plain difference
    out = anomaly_map(difference, spread, 0.05)
    assert out[0] > out[1] and out[0] == pytest.approx(4.0) and out[1] == pytest.approx(0.8)
    # the floor bounds what a small error can reach where the MAE is sure: no division by almost nothing
    assert out[2] == pytest.approx(0.2) and out[3] == 0


def test_the_spread_floor_changes_the_map_and_no_slice_score(untrained_model_dir) -> None:
    model = load_model(untrained_model_dir)
    subject = make_subject(3, orientation="PSR")
    prepared = prepare_image(subject.image, model.config.preprocess, subject.brain_mask)
    results = {}
    for floor in (0.0, 0.05):
        model.config.settings.spread_floor = floor
        results[floor] = score_prepared(model, prepared, torch.device("cpu"))
    plain, divided = results[0.0], results[0.05]
    for column, values in plain.table.items():
        np.testing.assert_array_equal(values, divided.table[column], err_msg=column)
    assert torch.equal(plain.extras["difference"], divided.extras["difference"])
    spread = divided.extras["spread"]
    assert (spread[~prepared.foreground] == 0).all() and spread.max() > 0
    a, b = (sitk.GetArrayFromImage(r.difference) for r in (plain, divided))
    assert a.shape == b.shape and not np.allclose(a, b)
