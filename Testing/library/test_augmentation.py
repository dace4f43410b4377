"""Appearance-robust training (data.augmentation): only intensities inside the mask change, and every reader of
a training slice (MAE, reconstruction, classifier) sees the same changed slice."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from MAEAnomalyLib.data.augmentation import AppearanceRows, appearance_transform, random_appearance
from MAEAnomalyLib.data.slice_cache import SliceCache, SliceRows
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.mae_classifier.samples import MAESamples
from MAEAnomalyLib.methods.model_config import preset


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> SliceRows:
    directory = tmp_path_factory.mktemp("augmentation")
    image, mask, _ = make_subject(5).write(directory, "a")
    cfg = preset("tiny").preprocess
    cache = SliceCache(directory / "cache", cfg, min_pixels=8)
    return SliceRows([cache.ensure(cache.key(image, mask), image, mask)], cfg.min_train_foreground)


def _slice(rows: SliceRows, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    return rows.read(index), rows.read_foreground(index)


@pytest.mark.parametrize("position", range(6))
def test_each_transform_changes_intensities_inside_the_mask_only(rows, position):
    transform = appearance_transform()
    transform.transforms = [transform.transforms[position]]
    transform.transforms[0].prob = 1.0
    image, foreground = _slice(rows, len(rows) // 2)
    before = image.clone()
    changed = [random_appearance(image, foreground, seed, transform) for seed in range(4)]
    assert torch.equal(image, before)  # the cached slice is never written
    for out in changed:
        assert out.shape == image.shape and out.dtype == torch.float32
        assert (out[~foreground] == 0).all() and out.min() >= 0 and out.max() <= 1
    difference = torch.stack([(out - image).abs()[foreground].mean() for out in changed])
    assert difference.max() > 1e-3, type(transform.transforms[0]).__name__


def test_a_slice_keeps_one_appearance_wherever_it_is_read(rows):
    changed = AppearanceRows(rows, probability=1.0, seed=3)
    index = len(rows) // 2
    first = changed.read(index)
    assert torch.equal(first, changed.read(index))
    # A DataLoader worker started by spawn gets a pickled copy: it reads the same image.
    assert torch.equal(first, pickle.loads(pickle.dumps(changed)).read(index))
    assert torch.equal(first, AppearanceRows(rows, 1.0, seed=3).read(index))
    assert not torch.equal(first, AppearanceRows(rows, 1.0, seed=4).read(index))
    assert not torch.equal(first, rows.read(index))
    # The mask and the rows themselves are the cached ones.
    assert torch.equal(changed.read_foreground(index), rows.read_foreground(index))
    assert len(changed) == len(rows) and changed.nbytes() == rows.nbytes()
    # The MAE's training samples (unflipped) are exactly the changed slices the other stages read.
    samples = MAESamples(changed, seed=0, purpose="mae", hflip=False)
    assert torch.equal(samples[(0, 0, index)], first)


def test_the_share_of_changed_slices_follows_the_probability(rows):
    none, half = AppearanceRows(rows, 0.0, seed=0), AppearanceRows(rows, 0.5, seed=0)
    assert all(torch.equal(none.read(i), rows.read(i)) for i in range(len(rows)))
    share = np.mean([half.changed(i) for i in range(2000)])
    assert 0.45 < share < 0.55


@pytest.mark.slow
def test_training_with_appearance_trains_on_the_changed_slices(tmp_path: Path):
    from MAEAnomalyLib.data.synthetic import write_cohort
    from MAEAnomalyLib.methods.model import load_model
    from MAEAnomalyLib.training import train

    healthy, _ = write_cohort(tmp_path / "cohort", healthy=4, lesioned=0, seed=1)
    images, masks = [h[0] for h in healthy], [h[1] for h in healthy]
    mae = {}
    for share in (0.0, 1.0):
        cfg = preset("tiny")
        cfg.preprocess.image_size = 32
        cfg.train.appearance = share
        cfg.settings.mae_epochs, cfg.settings.classifier_epochs = 1, 1
        out = tmp_path / f"model-{share}"
        train(images, out, cfg, torch.device("cpu"), masks=masks, log=lambda _: None, show_progress=False)
        model = load_model(out)
        assert model.config.train.appearance == share  # recorded, and reloaded from config.json
        mae[share] = {k: v.clone() for k, v in model.networks["mae"].state_dict().items()}
    # Same seed, same split, same batches: only the slices' appearance differs, and the MAE learned from it.
    assert any(not torch.equal(mae[0.0][k], mae[1.0][k]) for k in mae[0.0])
