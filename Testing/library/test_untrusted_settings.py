"""Model directories are untrusted input and training settings are checked before any work: every
field's type, range and relation to the others, a size cap, and the weights' dtypes and finiteness,
each refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.methods.model import load_model
from MAEAnomalyLib.methods.model_config import PRESETS, preset


def edited(model_dir: Path, tmp_path: Path, section: str | None, name: str, value: object) -> Path:
    """A copy of the model with ``section.name`` (a dotted section, e.g. ``mae_classifier.mae``) set to ``value``."""
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    data = json.loads((copy / "config.json").read_text())
    target = data
    for part in section.split(".") if section else ():
        target = target[part]
    target[name] = value
    (copy / "config.json").write_text(json.dumps(data))
    return copy


@pytest.mark.parametrize(("section", "name", "value", "words"), [
    ("mae_classifier.mae", "depth", 10_000, "mae_classifier.mae.depth is 10000; it must be at least 1 and below 129"),
    ("mae_classifier.mae", "embed_dim", 8190, "billion parameters, more than 10 times the largest preset"),
    ("mae_classifier", "reconstruction_passes", 0, "mae_classifier.reconstruction_passes is 0"),
    (None, "threshold", -0.5, "threshold is -0.5; it must be a probability"),
    (None, "threshold", float("nan"), "threshold is nan"),
    ("mae_classifier.mae", "mask_ratio", 1.0, "mae_classifier.mae.mask_ratio is 1.0"),
    ("preprocess", "lower_percentile", 99.9, "lower_percentile (99.9) must be below upper_percentile"),
    ("mae_classifier.mae", "depth", "12", "mae_classifier.mae.depth is '12'; it must be an integer"),
    ("preprocess", "image_size", 60, "must be a multiple of mae_classifier.mae.patch_size"),
])
def test_hostile_configs_are_refused_before_anything_is_built(untrained_model_dir: Path, tmp_path: Path,
                                                              section: str | None, name: str, value: object,
                                                              words: str) -> None:
    model = edited(untrained_model_dir, tmp_path, section, name, value)
    with pytest.raises(MAEAnomalyError, match="model is damaged") as info:
        load_model(model)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fault", ["int64", "nan"])
def test_weights_of_the_wrong_dtype_or_not_finite_are_refused(untrained_model_dir: Path, tmp_path: Path,
                                                              fault: str) -> None:
    copy = tmp_path / "model"
    shutil.copytree(untrained_model_dir, copy)
    path = copy / "classifier.safetensors"
    state = load_file(str(path))
    key = next(iter(state))
    state[key] = state[key].to(torch.int64) if fault == "int64" else torch.full_like(state[key], float("nan"))
    save_file(state, str(path))
    with pytest.raises(MAEAnomalyError, match="stored as torch.int64" if fault == "int64" else "NaN or infinite"):
        load_model(copy)


def test_every_preset_passes_its_own_checks() -> None:
    for name in PRESETS:
        preset(name).check()


@pytest.mark.parametrize(("flags", "words"), [
    # The short forms are --set's: their errors name the setting they set.
    (["--batch-size", "-4"], "train.batch_size=-4: must be at least 1 and below 1000001"),
    (["--mae-epochs", "-1"], "mae_classifier.mae_epochs=-1: must be at least 0 and below 1000001"),
    (["--classifier-epochs", "0"], "mae_classifier.classifier_epochs=0: must be at least 1 and below 1000001"),
    (["--set", "calibration.target_fpr=2"], "must be at least 1e-06 and below 1"),
    (["--set", "train.target_fpr=2"], "must be at least 1e-06 and below 1"),
    (["--set", "preprocess.image_size=7"], "must be at least 8 and below 4097"),
    (["--set", "preprocess.image_size=60"], "must be a multiple of mae_classifier.mae.patch_size"),
])
def test_nonsense_training_settings_end_before_any_work(capfd: pytest.CaptureFixture, cohort: dict, tmp_path: Path,
                                                        flags: list[str], words: str) -> None:
    out = tmp_path / "out"
    capfd.readouterr()
    code = main(["train", "--preset", "tiny", "--out", str(out), "--device", "cpu", *flags,
                 "--images", *[str(h[0]) for h in cohort["healthy"][:2]]])
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_batch_size_zero_is_one_line(capfd: pytest.CaptureFixture, untrained_model_dir: Path, cohort: dict,
                                     tmp_path: Path, command: str) -> None:
    image, _, label = (str(p) for p in cohort["lesioned"][0])
    argv = (["score", "--image", image, "--out-dir", str(tmp_path / "o")] if command == "score"
            else ["evaluate", "--images", image, "--labels", label])
    capfd.readouterr()
    assert main([*argv, "--model", str(untrained_model_dir), "--batch-size", "0", "--device", "cpu"]) == 2
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert lines == ["maeanomaly: error: --batch-size 0: give 1 or more slices per batch"]


def test_a_failed_config_check_names_no_image(untrained_model_dir: Path, tmp_path: Path, cohort: dict) -> None:
    """Swapped percentiles are the model's fault: the message names config.json, not the image."""
    model = edited(untrained_model_dir, tmp_path, "preprocess", "lower_percentile", 99.9)
    with pytest.raises(MAEAnomalyError) as info:
        load_model(model)
    assert str(model / "config.json") in str(info.value)
    assert str(cohort["healthy"][0][0]) not in str(info.value)
