"""The classifier's input: the foreground mask travels through the slice cache into the pseudo-abnormal
boxes and the masked difference image, and scoring builds the same input as training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from MAEAnomalyLib.data.preprocessing import prepare
from MAEAnomalyLib.data.slice_cache import SliceCache, SliceRows
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.mae_classifier.classifier import anomaly_probability
from MAEAnomalyLib.methods.mae_classifier.samples import ClassifierSamples, ReconStore
from MAEAnomalyLib.methods.model import AnomalyModel
from MAEAnomalyLib.methods.model_config import ModelConfig, preset
from MAEAnomalyLib.scoring.scores import score_prepared

ERROR = 0.1  # the reconstruction error written for every pixel, background included


@pytest.fixture
def cached(tmp_path: Path) -> tuple[ModelConfig, SliceRows, ReconStore]:
    """One generated subject in the slice cache, and a 'reconstruction' that is off by ERROR everywhere."""
    cfg = preset("tiny")
    image, mask, _ = make_subject(3).write(tmp_path, "a")
    cache = SliceCache(tmp_path / "cache", cfg.preprocess, min_pixels=cfg.settings.mae.patch_size)
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
    cfg.settings.classifier.masked_input, cfg.settings.pseudo_abnormal.in_foreground = True, True
    s = cfg.settings
    samples = ClassifierSamples(rows, store, s.pseudo_abnormal, s.classifier, seed=0, purpose="t", hflip=False)
    for i in range(len(rows)):
        negative, positive = samples[(0, i, i)]
        foreground = rows.read_foreground(i)
        assert torch.allclose(negative[foreground], torch.full_like(negative[foreground], ERROR), atol=1e-6)
        assert not negative[~foreground].any() and not positive[~foreground].any()
        # Boxes centred on the foreground always change the (masked) input somewhere.
        assert (positive != negative).any()


def test_unmasked_input_keeps_the_background(cached: tuple[ModelConfig, SliceRows, ReconStore]) -> None:
    cfg, rows, store = cached
    cfg.settings.classifier.masked_input = False  # the paper's input: the whole difference image
    s = cfg.settings
    samples = ClassifierSamples(rows, store, s.pseudo_abnormal, s.classifier, seed=0, purpose="t", hflip=True)
    negative, _ = samples[(0, 0, 0)]
    assert torch.allclose(negative, torch.full_like(negative, ERROR), atol=1e-6)


@pytest.mark.parametrize("masked", [True, False])
def test_scoring_feeds_the_classifier_what_training_does(tmp_path: Path, masked: bool) -> None:
    cfg = preset("tiny")
    cfg.settings.classifier.masked_input = masked
    torch.manual_seed(0)
    model = AnomalyModel.from_config(cfg).eval()
    image, mask, _ = make_subject(5).write(tmp_path, "a")
    prepared = prepare(image, cfg.preprocess, mask, min_pixels=cfg.settings.mae.patch_size)
    result = score_prepared(model, prepared, torch.device("cpu"))
    scored = np.flatnonzero(result.table["skipped"] == 0)
    # extras["difference"] is the foreground-masked difference |reconstruction - original|.
    with torch.no_grad():
        from_map = anomaly_probability(model.classifier(result.extras["difference"][scored])).numpy()
    same = np.allclose(result.table["score"][scored], from_map, atol=1e-5)
    assert same == masked
