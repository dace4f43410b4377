"""Intensity standardisation as a preprocessing choice (``preprocess.normalisation``): Nyúl–Udupa histogram
standardisation undoes a monotone change of contrast, the standard scale is
learned from the training volumes only and saved with the model, and a percentile model's config.json and
slice cache key are what they were before the options existed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MAEAnomalyLib.core.config import PreprocessConfig
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.digest import content_digest
from MAEAnomalyLib.data.preprocessing import automatic_foreground, normalise
from MAEAnomalyLib.data.slice_cache import CACHE_FORMAT, cache_key
from MAEAnomalyLib.data.standardisation import (
    LANDMARK_PERCENTILES,
    learn_landmarks,
    standardise,
    volume_landmarks,
)
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.model import AnomalyModel, load_model, save_model
from MAEAnomalyLib.methods.model_config import ModelConfig, apply_overrides, preset
from MAEAnomalyLib.training import split_volumes, train
from MAEAnomalyLib.training.standardise import learn_from_sources

ROOT = Path(__file__).resolve().parents[2]
NEW_FIELDS = ("normalisation", "landmarks")


def subject(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A generated head (40 x 64 x 64) and its brain mask as arrays."""
    made = make_subject(seed)
    return sitk.GetArrayFromImage(made.image), sitk.GetArrayFromImage(made.brain_mask) > 0


def scale_of(volume: np.ndarray, foreground: np.ndarray) -> list[float]:
    return learn_landmarks([volume_landmarks(volume, foreground)])


def test_a_volume_on_the_standard_scale_is_only_mapped_linearly() -> None:
    volume, foreground = subject(3)
    own = volume_landmarks(volume, foreground)
    assert own.shape == (len(LANDMARK_PERCENTILES),) and LANDMARK_PERCENTILES[0] == 0.5
    assert LANDMARK_PERCENTILES[-1] == 99.5  # the percentile normalisation's clip points
    unclipped = (volume.astype(np.float64) - own[0]) / (own[-1] - own[0])
    linear = np.clip(unclipped, 0, 1) * foreground
    standardised = standardise(volume, foreground, scale_of(volume, foreground))
    assert standardised.dtype == np.float32 and not standardised[~foreground].any()
    assert np.allclose(standardised, linear, atol=1e-6)
    # With its own landmarks as the standard, the same values as percentile normalisation.
    assert np.allclose(standardised, normalise(volume, foreground, PreprocessConfig(), "a"), atol=1e-6)
    # The end segments extend linearly beyond the volume's first and last landmarks (no clamping at them).
    narrower = [0.25 + 0.5 * v for v in scale_of(volume, foreground)]
    beyond = foreground & ((unclipped < 0) | (unclipped > 1))
    assert beyond.sum() > 100
    extended = np.clip(0.25 + 0.5 * unclipped, 0, 1) * foreground
    assert np.allclose(standardise(volume, foreground, narrower), extended, atol=1e-6)


def test_a_monotone_change_of_contrast_is_undone() -> None:
    volume, foreground = subject(3)
    low, high = volume[foreground].min(), volume[foreground].max()
    other_site = 40 + 900 * np.clip((volume - low) / (high - low), 0, None) ** 2  # another gain, offset and gamma
    scale = scale_of(volume, foreground)
    difference = np.abs(standardise(volume, foreground, scale) - standardise(other_site, foreground, scale))[foreground]
    assert difference.mean() < 0.01 and difference.max() < 0.1
    # Percentile normalisation undoes the gain and offset, not the gamma.
    cfg = PreprocessConfig()
    percentile = np.abs(normalise(volume, foreground, cfg, "a") - normalise(other_site, foreground, cfg, "b"))
    assert percentile[foreground].mean() > 0.1


def test_learned_scale_is_the_mean_of_the_volumes_scaled_to_0_1() -> None:
    first, second = np.linspace(10, 110, 11), np.r_[0, np.linspace(50, 60, 9), 100]
    learned = learn_landmarks([first, second])
    expected = (np.linspace(0, 1, 11) + np.r_[0, np.linspace(0.5, 0.6, 9), 1]) / 2
    assert np.allclose(learned, expected) and learned[0] == 0 and learned[-1] == 1
    assert PreprocessConfig(normalisation="histogram", landmarks=learned).problems() == []
    with pytest.raises(MAEAnomalyError, match="two landmarks coincide"):
        learn_landmarks([np.r_[0, 0, np.linspace(1, 9, 9)]])
    with pytest.raises(MAEAnomalyError, match="at least one training volume"):
        learn_landmarks([])


@pytest.mark.parametrize("cfg", [PreprocessConfig(),
                                 PreprocessConfig(normalisation="histogram", landmarks=list(np.linspace(0, 1, 11)))])
def test_a_constant_or_empty_foreground_is_refused_naming_the_source(cfg: PreprocessConfig) -> None:
    volume = np.full((3, 8, 8), 7.0, dtype=np.float32)
    foreground = np.ones(volume.shape, dtype=bool)
    with pytest.raises(MAEAnomalyError, match=r"case\.nii\.gz: intensities inside the foreground are constant"):
        normalise(volume, foreground, cfg, "case.nii.gz")
    with pytest.raises(MAEAnomalyError, match="foreground mask is empty"):
        normalise(volume, ~foreground, cfg, "case.nii.gz")


def test_a_histogram_model_without_landmarks_is_refused() -> None:
    volume, foreground = subject(1)
    with pytest.raises(MAEAnomalyError, match=r"has no landmarks \(train it again\)"):
        normalise(volume, foreground, PreprocessConfig(normalisation="histogram"), "case.nii.gz")


def test_learn_from_sources_reads_masks_or_finds_the_foreground(tmp_path: Path) -> None:
    made = [make_subject(seed, orientation=orientation) for seed, orientation in ((1, "LPS"), (2, "PSR"))]
    paths = [m.write(tmp_path, f"s{i}") for i, m in enumerate(made)]
    sources = [(paths[0][0], paths[0][1], None), (paths[1][0], None, None)]
    arrays = [sitk.GetArrayFromImage(m.image) for m in made]
    expected = learn_landmarks([volume_landmarks(arrays[0], sitk.GetArrayFromImage(made[0].brain_mask) > 0),
                                volume_landmarks(arrays[1], automatic_foreground(arrays[1]))])
    assert learn_from_sources(sources) == expected


@pytest.mark.parametrize(("data", "words"), [
    ({"normalisation": "nyul"}, "preprocess.normalisation is 'nyul'; choose percentile or histogram"),
    ({"normalisation": 3}, "preprocess.normalisation is 3; it must be a string"),
    ({"normalisation": "histogram", "landmarks": [0, 0.5, 1]}, "it must be empty or 11 strictly increasing numbers"),
    ({"normalisation": "histogram", "landmarks": [0.1 * i for i in range(11)][::-1]}, "strictly increasing"),
    ({"normalisation": "histogram", "landmarks": [0, *[0.1 * i for i in range(1, 10)], 2]}, "from 0 to 1"),
    ({"normalisation": "histogram", "landmarks": [0, *[0.1 * i for i in range(1, 10)], True]}, "from 0 to 1"),
    ({"normalisation": "histogram", "landmarks": "0 to 1"}, "preprocess.landmarks is '0 to 1'"),
    ({"landmarks": [0.1 * i for i in range(11)]}, "preprocess.normalisation is 'percentile'; only histogram uses"),
])
def test_settings_are_checked(data: dict, words: str) -> None:
    config = preset("tiny").to_dict()
    config["preprocess"].update(data)
    with pytest.raises(ValueError) as info:
        ModelConfig.from_dict(config)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_choice_is_set_from_the_command_line() -> None:
    cfg = preset("tiny")
    apply_overrides(cfg, ["preprocess.normalisation=histogram"])
    assert cfg.preprocess.normalisation == "histogram" and cfg.preprocess.landmarks == []
    cfg.check()  # landmarks are learned when training
    with pytest.raises(MAEAnomalyError, match=r"^--set preprocess\.normalisation=nyul: choose percentile or "
                                              r"histogram$"):
        apply_overrides(cfg, ["preprocess.normalisation=nyul"])


def test_models_saved_before_the_options_load_as_percentile() -> None:
    saved = json.loads((ROOT / "models" / "brain-t1" / "config.json").read_text())
    assert not set(NEW_FIELDS) & set(saved["preprocess"])
    cfg = ModelConfig.from_dict(saved)
    assert cfg.preprocess.normalisation == "percentile" and cfg.preprocess.landmarks == []
    # ... and a percentile model's config.json is written as it was: without the two keys.
    assert cfg.to_dict()["preprocess"] == saved["preprocess"]


def test_a_histogram_model_round_trips_its_landmarks(tmp_path: Path) -> None:
    cfg = preset("tiny")
    cfg.preprocess.normalisation = "histogram"
    cfg.preprocess.landmarks = learn_landmarks([np.r_[0, np.geomspace(1, 100, 10)]])
    cfg.threshold = 0.5
    save_model(AnomalyModel.from_config(cfg), tmp_path / "model")
    written = json.loads((tmp_path / "model" / "config.json").read_text())["preprocess"]
    assert written["normalisation"] == "histogram" and written["landmarks"] == cfg.preprocess.landmarks
    assert load_model(tmp_path / "model").config.preprocess == cfg.preprocess


def test_the_cache_key_of_percentile_is_the_key_before_the_options(tmp_path: Path) -> None:
    image, mask, _ = make_subject(4).write(tmp_path, "a")
    cfg = PreprocessConfig()
    old_settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NEW_FIELDS}
    parts = [json.dumps({"format": CACHE_FORMAT, "preprocess": old_settings, "min_pixels": 8}, sort_keys=True),
             f"image={content_digest(image)}", f"mask={content_digest(mask)}", "labels=-"]
    assert cache_key(image, mask, None, cfg, 8) == hashlib.sha256("\n".join(parts).encode()).hexdigest()
    # The other options, and each standard scale, are keys of their own.
    keys = {cache_key(image, mask, None, c, 8) for c in (
        cfg,
        PreprocessConfig(normalisation="histogram", landmarks=list(np.linspace(0, 1, 11))),
        PreprocessConfig(normalisation="histogram", landmarks=list(np.linspace(0, 1, 11) ** 2)))}
    assert len(keys) == 3


def test_training_learns_the_scale_from_the_training_volumes_only(tmp_path: Path) -> None:
    cfg = preset("tiny")
    cfg.preprocess.image_size, cfg.preprocess.normalisation = 32, "histogram"
    cfg.train.batch_size, cfg.settings.classifier_batch_size = 8, 8
    cfg.settings.mae_epochs = cfg.settings.classifier_epochs = 1
    train_ids, val_ids = split_volumes(3, cfg.train.validation_fraction, cfg.train.seed)
    sources = []
    for i in range(3):
        made = make_subject(20 + i)
        if i in val_ids:  # the held-out volume's contrast differs wildly: it would move the scale
            array = sitk.GetArrayFromImage(made.image)
            changed = sitk.GetImageFromArray(array.max() * (array / array.max()) ** 4)
            changed.CopyInformation(made.image)
            made.image = changed
        image, mask, _ = made.write(tmp_path, f"v{i}")
        sources.append((image, mask, None))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train([s[0] for s in sources], tmp_path / "model", cfg, torch.device("cpu"), masks=[s[1] for s in sources],
              log=lambda _: None, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    saved = load_model(tmp_path / "model").config.preprocess.landmarks
    assert saved == learn_from_sources([sources[i] for i in train_ids])
    everything = learn_from_sources(sources)
    assert max(abs(a - b) for a, b in zip(saved, everything, strict=True)) > 0.05
