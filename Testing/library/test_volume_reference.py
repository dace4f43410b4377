"""``score_volume``: each slice's score against the other brain slices of its own volume, so that a
scanner that shifts and stretches every score of a volume changes nothing in it."""

from __future__ import annotations

import numpy as np

from MAEAnomalyLib.calibration.volume_reference import within_volume
from MAEAnomalyLib.data.preprocessing import prepare_image
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.model import AnomalyModel
from MAEAnomalyLib.methods.model_config import preset
from MAEAnomalyLib.scoring.scores import slice_table
from MAEAnomalyLib.scoring.table import SCORE_COLUMNS, VOLUME_SCORE


def test_a_constructed_volume_by_hand() -> None:
    # Ten usable slices: eight normal ones at 0, ±1, ±2, ±3, 0 and a lesion of two slices at 20 and 30.
    values = np.array([0, 1, -1, 2, -2, 3, -3, 0, 20, 30, 99], dtype=float)
    usable = np.array([True] * 10 + [False])  # the last slice has no brain: its value is ignored
    # By hand: sorted, the ten are −3 −2 −1 0 0 1 2 3 20 30, median (0 + 1) / 2 = 0.5; |v − 0.5| sorted:
    # 0.5 0.5 0.5 1.5 1.5 2.5 2.5 3.5 19.5 29.5, median (1.5 + 2.5) / 2 = 2, spread 1.4826 × 2 = 2.9652.
    found = within_volume(values, usable)
    assert np.allclose(found[:10], (values[:10] - 0.5) / 2.9652)
    assert found[10] == 0
    assert round(found[9], 3) == 9.949  # the lesion stands far out: it barely moved the reference


def test_a_site_that_shifts_and_stretches_a_volume_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    values, usable = rng.normal(size=60), rng.random(60) > 0.1
    values[20:32] += 6  # a lesion in a fifth of the slices
    assert np.allclose(within_volume(3.5 * values - 11, usable), within_volume(values, usable))
    # Pooled over two volumes, one shifted by its scanner, the raw values rank the lesions of the
    # unshifted volume below the other's normal slices; within each volume they come first in both.
    shifted = values + 10
    pooled_raw = np.concatenate([values[usable], shifted[usable]])
    pooled_own = np.concatenate([within_volume(values, usable)[usable], within_volume(shifted, usable)[usable]])
    lesion = np.zeros(60, bool)
    lesion[20:32] = True
    truth = np.concatenate([lesion[usable], lesion[usable]])
    assert pooled_raw[truth].min() < pooled_raw[~truth].max()
    assert pooled_own[truth].min() > pooled_own[~truth].max()


def test_degenerate_volumes_give_zeros_or_a_finite_spread() -> None:
    assert not within_volume(np.array([1.0, 5.0]), np.array([True, True])).any()  # too few slices
    assert not within_volume(np.full(8, 2.0), np.ones(8, bool)).any()  # all alike
    ties = np.array([0, 0, 0, 0, 0, 0, 1, 4], dtype=float)  # over half tie: the MAD is 0
    found = within_volume(ties, np.ones(8, bool))
    assert np.isfinite(found).all() and found[7] > found[6] > 0 == found[0]


def test_every_table_has_it_right_after_score() -> None:
    subject = make_subject(seed=3, shape=(24, 48, 48))
    for method in ("mae_classifier", "intensity"):
        cfg = preset("tiny", method)
        model = AnomalyModel(cfg)  # slice_table reads the config only
        prepared = prepare_image(subject.image, cfg.preprocess, subject.brain_mask)
        usable = prepared.foreground_fraction > 0
        raw = {name: np.linspace(0.1, 0.9, len(usable)) for name in ("probability", "mae_l1", "ssim",
                                                                      "intensity_p995")}
        table = slice_table(model, prepared, raw)
        assert list(table)[:4] == ["slice_index", "position_mm", "score", VOLUME_SCORE]
        own = table[VOLUME_SCORE]
        assert np.median(own[usable]) == 0 and not own[~usable].any()
        order = np.argsort(table["score"][usable])
        assert (np.diff(own[usable][order]) >= 0).all()  # a monotone map of the volume's score
    assert list(SCORE_COLUMNS[:4]) == ["slice_index", "position_mm", "score", VOLUME_SCORE]
