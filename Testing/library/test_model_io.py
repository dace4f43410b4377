"""Model directories round-trip bit-exactly and are written atomically."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.model import AnomalyModel, compact_weights, load_config, load_model, save_model
from MAEAnomalyLib.methods.model_config import ModelConfig, preset
from MAEAnomalyLib.scoring.scores import score_image


@pytest.mark.parametrize("pool", ["token", "avg", "max"])
def test_round_trip_is_bit_exact(tmp_path: Path, pool: str) -> None:
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.settings.classifier.global_pool = pool
    cfg.threshold = 0.25
    model = AnomalyModel.from_config(cfg)
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "classifier.safetensors", "config.json", "mae.safetensors"]
    loaded = load_model(tmp_path / "m")
    for name in ("mae", "classifier"):
        a, b = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config.to_dict() == model.config.to_dict()
    versions = json.loads((tmp_path / "m" / "config.json").read_text())["versions"]
    assert {"maeanomaly", "torch", "timm", "monai"} <= set(versions)


def test_config_rejects_unknown_keys() -> None:
    data = preset("tiny").to_dict()
    data["mae_classifier"]["mae"]["depht"] = 3
    with pytest.raises(ValueError, match="depht"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize(("section", "name", "value", "words"), [
    ("mae_classifier.classifier", "global_pool", "mean", "choose token, avg, max or avgmax"),
    ("mae_classifier", "score_reconstructions", 0, "it must be at least 1 and below 101"),
])
def test_setting_out_of_its_choices_is_a_damaged_model(tmp_path: Path, section: str, name: str, value: object,
                                                        words: str) -> None:
    cfg = preset("tiny")
    cfg.threshold = 0.5
    save_model(AnomalyModel.from_config(cfg), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    target = data
    for part in section.split("."):
        target = target[part]
    target[name] = value
    path.write_text(json.dumps(data))
    with pytest.raises(MAEAnomalyError, match=re.escape(f"model is damaged: {section}.{name} is {value!r}; {words}")):
        load_model(tmp_path / "m")


def test_uncalibrated_model_is_refused(tmp_path: Path) -> None:
    save_model(AnomalyModel.from_config(preset("tiny")), tmp_path / "m")
    assert load_config(tmp_path / "m").threshold is None
    with pytest.raises(MAEAnomalyError, match="no calibrated threshold"):
        load_model(tmp_path / "m")


def test_failed_save_leaves_the_previous_model(tmp_path: Path) -> None:
    cfg = preset("tiny")
    cfg.threshold = 0.5
    save_model(AnomalyModel.from_config(cfg), tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    broken = AnomalyModel.from_config(cfg)
    # Two entries sharing memory: safetensors refuses them while writing the second weights file.
    broken.classifier.norm.weight = broken.classifier.blocks[0].norm1.weight
    with pytest.raises(MAEAnomalyError, match=r"cannot write .*share memory"):
        save_model(broken, tmp_path / "m")
    after = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    assert after == before  # no temporary file left, nothing replaced


# Format 1 (every model written before methods were plug-ins) kept these settings of the paper's method in
# ``train``; format 2 keeps them in the method's section, ``mae_classifier``.
FORMAT_1_TRAIN = ("mae_epochs", "classifier_epochs", "classifier_batch_size", "mae_lr", "mae_weight_decay",
                  "classifier_lr", "classifier_weight_decay", "reconstruction_passes", "score_reconstructions",
                  "classifier_selection")


def as_format_1(data: dict) -> dict:
    """A format-2 ``config.json``'s data in format 1's flat layout (sections preprocess, mae, classifier,
    pseudo_abnormal, train, segmentation; no method), as models were written before methods were plug-ins."""
    settings = data["mae_classifier"]
    assert data["method"] == "mae_classifier" and data["format_version"] == 2
    # Every setting of the method's section and of calibration has its place in format 1.
    assert set(settings) == {"mae", "classifier", "pseudo_abnormal", "spread_floor", *FORMAT_1_TRAIN}
    assert set(data["calibration"]) == {"target_fpr", "position_reference"}
    old = {"preset": data["preset"], "preprocess": data["preprocess"], "mae": settings["mae"],
           "classifier": settings["classifier"], "pseudo_abnormal": settings["pseudo_abnormal"],
           "train": {**data["train"], **{name: settings[name] for name in FORMAT_1_TRAIN}, **data["calibration"]},
           "segmentation": {**data["segmentation"], "spread_floor": settings["spread_floor"]}}
    kept = ("threshold", "position_reference", "site_calibration", "voxel_threshold", "versions",
            "training_summary", "weights_sha256")
    old.update({name: data[name] for name in kept if name in data})
    old["format_version"] = 1
    return old


@pytest.mark.parametrize(("section", "name", "off", "other", "format_1"), [
    ("classifier", "members", 1, 3, True),
    ("classifier", "drop_path_rate", 0.0, 0.1, True),
    ("train", "classifier_ema", 0.0, 0.95, True),
    ("train", "classifier_shift", 0.0, 0.1, True),
    ("train", "reconstruction_variants", 1, 2, True),
    ("train", "appearance", 0.0, 0.8, False),
])
def test_removed_settings_load_only_at_their_old_default(tmp_path: Path, section: str, name: str, off: object,
                                                         other: object, format_1: bool) -> None:
    """A model directory written before the option was removed (in the format of its time) loads as before
    when the option is off, and is refused in one line naming the setting when it is on."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.threshold = 0.5
    model = AnomalyModel.from_config(cfg)
    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    data = as_format_1(data) if format_1 else data
    data[section][name] = off
    path.write_text(json.dumps(data))
    loaded = load_model(tmp_path / "m")
    assert loaded.config.to_dict() == model.config.to_dict()
    assert all(torch.equal(v, model.classifier.state_dict()[k]) for k, v in loaded.classifier.state_dict().items())
    data[section][name] = other
    path.write_text(json.dumps(data))
    with pytest.raises(MAEAnomalyError) as info:
        load_model(tmp_path / "m")
    message = str(info.value)
    assert "\n" not in message and f"{section}.{name} is {other!r}" in message and "no longer supports" in message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_as_float32_rounded(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.threshold = 0.25
    model = AnomalyModel.from_config(cfg)
    save_model(model, tmp_path / "full")
    save_model(model, tmp_path / "half", dtype=dtype)
    for name in ("mae", "classifier"):
        stored = load_file(str(tmp_path / "half" / f"{name}.safetensors"))
        assert {v.dtype for v in stored.values()} == {dtype}
        half = (tmp_path / "half" / f"{name}.safetensors").stat().st_size
        assert half < 0.55 * (tmp_path / "full" / f"{name}.safetensors").stat().st_size
    loaded = load_model(tmp_path / "half")
    for name in ("mae", "classifier"):
        original, got = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(v.dtype == torch.float32 for v in got.values())
        assert all(torch.equal(got[k], original[k].to(dtype).float()) for k in original)
    assert loaded.config.to_dict() == load_config(tmp_path / "full").to_dict()


def test_compact_weights_rewrites_the_weights_only(untrained_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(untrained_model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    compact_weights(copy, "float16")
    compacted = json.loads((copy / "config.json").read_text())
    digests = compacted.pop("weights_sha256")
    config.pop("weights_sha256", None)
    assert compacted == config  # only the weights' digests change with them
    assert digests["mae.safetensors"] == hashlib.sha256((copy / "mae.safetensors").read_bytes()).hexdigest()
    assert {v.dtype for v in load_file(str(copy / "mae.safetensors")).values()} == {torch.float16}
    before = (copy / "mae.safetensors").read_bytes()
    compact_weights(copy, "float16")  # a second time changes nothing
    assert (copy / "mae.safetensors").read_bytes() == before


def test_compact_scores_agree_with_float32(untrained_model_dir: Path, tmp_path: Path) -> None:
    compact = tmp_path / "m"
    shutil.copytree(untrained_model_dir, compact)
    compact_weights(compact, "float16")
    subject = make_subject(3, lesion=True)
    full = score_image(load_model(untrained_model_dir), subject.image, subject.brain_mask)
    half = score_image(load_model(compact), subject.image, subject.brain_mask)
    brain = full.table["skipped"] == 0
    for column in ("score", "mae_l1", "ssim"):
        assert np.allclose(full.table[column][brain], half.table[column][brain], rtol=0, atol=1e-3), column
    diff_full, diff_half = (sitk.GetArrayFromImage(r.difference) for r in (full, half))
    assert np.allclose(diff_full, diff_half, rtol=0, atol=1e-2)


def test_compact_storage_is_explicit_and_checked(tmp_path: Path) -> None:
    cfg = preset("tiny")
    cfg.threshold = 0.5
    model = AnomalyModel.from_config(cfg)
    with pytest.raises(MAEAnomalyError, match="unknown weight storage dtype int8"):
        save_model(model, tmp_path / "m", dtype="int8")
    with torch.no_grad():
        model.classifier.norm.weight[0] = 1e5  # beyond float16's 65504
    with pytest.raises(MAEAnomalyError, match=r"out of the range of torch\.float16"):
        save_model(model, tmp_path / "m", dtype=torch.float16)
    assert not (tmp_path / "m").exists()
    save_model(model, tmp_path / "m", dtype=torch.bfloat16)  # bfloat16 has float32's range
    assert load_model(tmp_path / "m").classifier.norm.weight[0] == 99840  # 1e5 rounded to bfloat16's 8 bits


def test_a_format_1_model_directory_loads_and_scores_as_its_format_2_twin(tmp_path: Path) -> None:
    """A model directory written before methods were plug-ins (format 1: flat sections, no method) loads
    with the same settings and gives the same slice table and the same map, bit for bit."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.threshold = 0.5
    save_model(AnomalyModel.from_config(cfg), tmp_path / "v2")
    shutil.copytree(tmp_path / "v2", tmp_path / "v1")
    path = tmp_path / "v1" / "config.json"
    data = json.loads(path.read_text())
    old = as_format_1(data)
    assert old["weights_sha256"] == data["weights_sha256"] and "mae_classifier" not in old and "method" not in old
    path.write_text(json.dumps(old, indent=2))
    new, migrated = load_model(tmp_path / "v2"), load_model(tmp_path / "v1")
    assert migrated.config.to_dict() == new.config.to_dict()
    assert migrated.weights_sha256 == new.weights_sha256
    subject = make_subject(3, lesion=True)
    results = [score_image(model, subject.image, subject.brain_mask) for model in (new, migrated)]
    assert results[0].table.keys() == results[1].table.keys()
    for column, values in results[0].table.items():
        np.testing.assert_array_equal(results[1].table[column], values, err_msg=column)
    maps = [sitk.GetArrayFromImage(r.difference) for r in results]
    assert maps[0].any()
    np.testing.assert_array_equal(maps[1], maps[0])


def test_half_precision_weights_in_a_pickle_are_still_refused(untrained_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(untrained_model_dir, copy)
    state = {k: v.half() for k, v in load_file(str(copy / "mae.safetensors")).items()}
    torch.save(state, copy / "mae.safetensors")
    with pytest.raises(MAEAnomalyError, match="unreadable weights"):
        load_model(copy)
