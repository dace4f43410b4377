"""Simulated scanner appearances (data.appearance): only intensities change, deterministically per seed."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MAEAnomalyLib.data.appearance import SIMULATED_SITES, Appearance, apply_appearance, thick_slices
from MAEAnomalyLib.data.synthetic import make_subject

SPACING = (3.0, 3.0, 3.0)  # make_subject's grid, isotropic


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    subject = make_subject(3, shape=(32, 48, 48))
    return sitk.GetArrayFromImage(subject.image), sitk.GetArrayFromImage(subject.brain_mask) > 0


def test_identity_returns_an_unchanged_copy(head):
    volume, brain = head
    out = apply_appearance(volume, brain, SPACING, Appearance(), seed=0)
    assert out is not volume and out.dtype == volume.dtype
    np.testing.assert_array_equal(out, volume)


@pytest.mark.parametrize("site", sorted(SIMULATED_SITES))
def test_site_changes_brain_intensities_only(head, site):
    volume, brain = head
    before, mask_before = volume.copy(), brain.copy()
    out = apply_appearance(volume, brain, SPACING, SIMULATED_SITES[site], seed=1)
    np.testing.assert_array_equal(volume, before)  # the input is never written
    np.testing.assert_array_equal(brain, mask_before)  # nor the mask: the anatomy does not move
    assert out.shape == volume.shape and out.dtype == volume.dtype
    assert np.isfinite(out).all() and out.min() >= 0
    change = np.abs(out[brain] - volume[brain]) / np.median(volume[brain])
    assert np.median(change) > 0.01, site


def test_same_seed_same_output_other_seed_other_noise(head):
    volume, brain = head
    noisy = Appearance(noise=0.05)
    first, again = (apply_appearance(volume, brain, SPACING, noisy, seed=7) for _ in range(2))
    other = apply_appearance(volume, brain, SPACING, noisy, seed=8)
    np.testing.assert_array_equal(first, again)
    assert np.mean(first[brain] != other[brain]) > 0.99
    # Noise with sigma 5 % of the brain's median, at high SNR nearly Gaussian: its spread is about that.
    spread = np.std(first[brain] - other[brain]) / np.sqrt(2) / np.median(volume[brain])
    assert 0.04 < spread < 0.06
    # A site without random parts does not depend on the seed.
    fixed = SIMULATED_SITES["thick_blur"]
    np.testing.assert_array_equal(apply_appearance(volume, brain, SPACING, fixed, seed=1),
                                  apply_appearance(volume, brain, SPACING, fixed, seed=2))


def test_thick_slices_by_hand():
    z = np.array([0, 2, 0, 2, 0, 2, 5], np.float32)  # a checkerboard along z, then a short last group
    volume = np.broadcast_to(z[:, None, None], (7, 2, 3)).copy()
    np.testing.assert_allclose(thick_slices(volume, 2)[:, 0, 0], [1, 1, 1, 1, 1, 1, 5])
    np.testing.assert_allclose(thick_slices(volume, 3)[:, 0, 0], [2 / 3, 2 / 3, 2 / 3, 4 / 3, 4 / 3, 4 / 3, 5])
    grouped = np.repeat(np.array([1.0, 4.0, 9.0], np.float32), 3)[:, None, None] * np.ones((9, 4, 4), np.float32)
    brain = np.ones(grouped.shape, bool)
    out = apply_appearance(grouped, brain, SPACING, Appearance(thick=3), seed=0)
    np.testing.assert_array_equal(out, grouped)  # constant within each group of 3: unchanged
    assert out.dtype == np.float32


def test_gamma_and_histogram_by_hand():
    volume = np.array([0, 1, 2, 4], np.float32).reshape(4, 1, 1) * np.ones((4, 2, 2), np.float32)
    brain = np.ones(volume.shape, bool)
    squared = apply_appearance(volume, brain, SPACING, Appearance(gamma=2.0), seed=0)
    np.testing.assert_allclose(squared[:, 0, 0], [0, 0.25, 1, 4], rtol=1e-5)  # (x / max)^2 * max
    lifted = apply_appearance(volume, brain, SPACING, Appearance(histogram=(0.75,)), seed=0)
    assert np.all(np.diff(lifted[:, 0, 0]) > 0)  # monotone: the order of intensities is kept
    assert lifted[1, 0, 0] > 1 and lifted[3, 0, 0] == pytest.approx(4)  # the dark end lifted, the top kept


def test_bias_field_has_the_set_strength(head):
    volume, brain = head
    out = apply_appearance(volume, brain, SPACING, Appearance(bias=0.2), seed=4)
    log_ratio = np.log(out[brain] / volume[brain])
    assert abs(log_ratio.mean()) < 1e-3 and log_ratio.std() == pytest.approx(0.2, rel=1e-3)


def test_invalid_settings_are_refused(head):
    volume, brain = head
    with pytest.raises(ValueError):
        Appearance(histogram=(0.6, 0.4))
    with pytest.raises(ValueError):
        Appearance(thick=0)
    with pytest.raises(ValueError):
        apply_appearance(volume, np.zeros_like(brain), SPACING, Appearance(), seed=0)
