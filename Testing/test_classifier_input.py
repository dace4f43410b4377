"""The classifier's input: the foreground mask travels through the slice cache into the pseudo-abnormal
boxes and the masked difference image, and scoring builds the same input as training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from MAEAnomalyLib.config import ModelConfig, preset
from MAEAnomalyLib.model_io import AnomalyModel
from MAEAnomalyLib.models.classifier import anomaly_probability
from MAEAnomalyLib.preprocessing import prepare
from MAEAnomalyLib.scoring import score_prepared
from MAEAnomalyLib.slice_cache import SliceCache, SliceRows
from MAEAnomalyLib.synthetic import make_subject
from MAEAnomalyLib.train_data import ClassifierSamples, ReconStore, shifted

ERROR = 0.1  # the reconstruction error written for every pixel, background included


@pytest.fixture
def cached(tmp_path: Path) -> tuple[ModelConfig, SliceRows, ReconStore]:
    """One generated subject in the slice cache, and a 'reconstruction' that is off by ERROR everywhere."""
    cfg = preset("tiny")
    image, mask, _ = make_subject(3).write(tmp_path, "a")
    cache = SliceCache(tmp_path / "cache", cfg.preprocess, min_pixels=cfg.mae.patch_size)
    rows = SliceRows([cache.ensure(cache.key(image, mask), image, mask)], cfg.preprocess.min_train_foreground)
    recon = np.stack([rows.read(i).numpy() for i in range(len(rows))]) + ERROR
    store = ReconStore(tmp_path / "recon", "train", len(rows), chunk=16, world=1)
    store.write(0, iter([recon]), recon.shape[1:])
    return cfg, rows, store


def test_cache_keeps_the_foreground_mask(tmp_path: Path) -> None:
    cfg = preset("tiny").preprocess
    image, mask, _ = make_subject(4).write(tmp_path, "a")
    cache = SliceCache(tmp_path / "cache", cfg, min_pixels=8)
    rows = SliceRows([cache.ensure(cache.key(image, mask), image, mask)], cfg.min_train_foreground)
    prepared = prepare(image, cfg, mask, min_pixels=8)
    for i in (0, len(rows) // 2, len(rows) - 1):
        assert torch.equal(rows.read_foreground(i), prepared.foreground[rows.row[i]])


def test_masked_input_is_zero_off_the_foreground(cached: tuple[ModelConfig, SliceRows, ReconStore]) -> None:
    cfg, rows, store = cached
    cfg.classifier.masked_input, cfg.pseudo_abnormal.in_foreground = True, True
    samples = ClassifierSamples(rows, [store], cfg.pseudo_abnormal, cfg.classifier, seed=0, purpose="t", hflip=False)
    for i in range(len(rows)):
        negative, positive = samples[(0, i, i)]
        foreground = rows.read_foreground(i)
        assert torch.allclose(negative[foreground], torch.full_like(negative[foreground], ERROR), atol=1e-6)
        assert not negative[~foreground].any() and not positive[~foreground].any()
        # Boxes centred on the foreground always change the (masked) input somewhere.
        assert (positive != negative).any()


def test_unmasked_input_keeps_the_background(cached: tuple[ModelConfig, SliceRows, ReconStore]) -> None:
    cfg, rows, store = cached
    cfg.classifier.masked_input = False  # the paper's input: the whole difference image
    samples = ClassifierSamples(rows, [store], cfg.pseudo_abnormal, cfg.classifier, seed=0, purpose="t", hflip=True)
    negative, _ = samples[(0, 0, 0)]
    assert torch.allclose(negative, torch.full_like(negative, ERROR), atol=1e-6)


@pytest.mark.parametrize("masked", [True, False])
def test_scoring_feeds_the_classifier_what_training_does(tmp_path: Path, masked: bool) -> None:
    cfg = preset("tiny")
    cfg.classifier.masked_input = masked
    torch.manual_seed(0)
    model = AnomalyModel.from_config(cfg).eval()
    image, mask, _ = make_subject(5).write(tmp_path, "a")
    prepared = prepare(image, cfg.preprocess, mask, min_pixels=cfg.mae.patch_size)
    result = score_prepared(model, prepared, torch.device("cpu"))
    scored = np.flatnonzero(result.table["skipped"] == 0)
    # difference_slices is the foreground-masked difference (the map the user sees).
    with torch.no_grad():
        from_map = anomaly_probability(model.classifier(result.difference_slices[scored])).numpy()
    same = np.allclose(result.table["score"][scored], from_map, atol=1e-5)
    assert same == masked


def test_shift_moves_slice_reconstruction_and_mask_together() -> None:
    image = torch.zeros(1, 16, 16)
    image[0, 5:9, 6:10] = 1.0  # a block well inside the slice, so a shift of up to 3 keeps it whole
    recon, mask = 0.5 * image, image > 0
    for seed in range(20):
        moved = shifted((image, recon, mask), 3, torch.Generator().manual_seed(seed))
        ys, xs = torch.nonzero(moved[0][0], as_tuple=True)
        dy, dx = int(ys.min()) - 5, int(xs.min()) - 6
        assert abs(dy) <= 3 and abs(dx) <= 3
        expected = torch.roll(image, (dy, dx), dims=(-2, -1))
        assert torch.equal(moved[0], expected)
        assert torch.equal(moved[1], 0.5 * expected) and torch.equal(moved[2], expected > 0)


def test_shift_fills_the_uncovered_border_with_background() -> None:
    image = torch.ones(1, 8, 8)
    moved, = shifted((image,), 4, torch.Generator().manual_seed(1))
    dy, dx = 8 - int(moved[0].any(dim=1).sum()), 8 - int(moved[0].any(dim=0).sum())
    assert moved.sum() == (8 - dy) * (8 - dx)  # what moved out is gone, not wrapped around


def test_classifier_samples_shift_only_when_asked(cached: tuple[ModelConfig, SliceRows, ReconStore]) -> None:
    cfg, rows, store = cached
    cfg.classifier.masked_input = True
    plain = ClassifierSamples(rows, [store], cfg.pseudo_abnormal, cfg.classifier, seed=0, purpose="t", hflip=False)
    moved = ClassifierSamples(rows, [store], cfg.pseudo_abnormal, cfg.classifier, seed=0, purpose="t", hflip=False,
                              max_shift=6)
    i = len(rows) // 2
    unshifted = plain[(0, 0, i)][0]
    negatives = [moved[(epoch, 0, i)][0] for epoch in range(8)]
    assert all(n.sum() <= unshifted.sum() + 1e-4 for n in negatives)  # shifting only loses the edge
    assert any(not torch.equal(n, unshifted) for n in negatives)
    assert torch.equal(moved[(3, 0, i)][0], moved[(3, 0, i)][0])  # the same item gets the same shift


def test_drop_path_is_active_in_training_only() -> None:
    cfg = preset("tiny")
    cfg.classifier.drop_path_rate = 0.5
    torch.manual_seed(0)
    classifier = AnomalyModel.from_config(cfg).classifier
    x = torch.rand(4, 1, cfg.preprocess.image_size, cfg.preprocess.image_size)
    classifier.train()
    assert not torch.equal(classifier(x), classifier(x))
    classifier.eval()
    assert torch.equal(classifier(x), classifier(x))
    assert ModelConfig.from_dict(cfg.to_dict()).classifier.drop_path_rate == 0.5


def test_epochs_cycle_through_reconstruction_variants(cached: tuple[ModelConfig, SliceRows, ReconStore],
                                                      tmp_path: Path) -> None:
    cfg, rows, store = cached
    cfg.classifier.masked_input = False
    other_error = 0.25
    recon = np.stack([rows.read(i).numpy() for i in range(len(rows))]) + other_error
    other = ReconStore(tmp_path / "recon", "train1", len(rows), chunk=16, world=1)
    other.write(0, iter([recon]), recon.shape[1:])
    samples = ClassifierSamples(rows, [store, other], cfg.pseudo_abnormal, cfg.classifier, seed=0, purpose="t",
                                hflip=False)
    for epoch, error in [(0, ERROR), (1, other_error), (2, ERROR), (3, other_error)]:
        negative, _ = samples[(epoch, 0, 0)]
        assert torch.allclose(negative, torch.full_like(negative, error), atol=1e-6)
