"""Model directories round-trip bit-exactly and are written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from MAEAnomalyLib.config import ModelConfig, preset
from MAEAnomalyLib.errors import MAEAnomalyError
from MAEAnomalyLib.model_io import AnomalyModel, load_config, load_model, save_model


@pytest.mark.parametrize("pool", ["token", "avg", "max"])
def test_round_trip_is_bit_exact(tmp_path: Path, pool: str) -> None:
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.classifier.global_pool = pool
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
    data["mae"]["depht"] = 3
    with pytest.raises(ValueError, match="depht"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize(("section", "name", "value", "words"), [
    ("classifier", "global_pool", "mean", "choose token, avg, max or avgmax"),
    ("train", "score_reconstructions", 0, "it must be at least 1 and below 101"),
])
def test_setting_out_of_its_choices_is_a_damaged_model(tmp_path: Path, section: str, name: str, value: object,
                                                        words: str) -> None:
    cfg = preset("tiny")
    cfg.threshold = 0.5
    save_model(AnomalyModel.from_config(cfg), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    data[section][name] = value
    path.write_text(json.dumps(data))
    with pytest.raises(MAEAnomalyError, match=f"model is damaged: {section}.{name} is .*; {words}"):
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


@pytest.mark.parametrize(("section", "name", "off", "other"), [
    ("classifier", "members", 1, 3),
    ("classifier", "drop_path_rate", 0.0, 0.1),
    ("train", "classifier_ema", 0.0, 0.95),
    ("train", "classifier_shift", 0.0, 0.1),
    ("train", "reconstruction_variants", 1, 2),
])
def test_removed_settings_load_only_at_their_old_default(tmp_path: Path, section: str, name: str, off: object,
                                                         other: object) -> None:
    """A model directory written before the option was removed loads as before when the option is off,
    and is refused in one line naming the setting when it is on."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.threshold = 0.5
    model = AnomalyModel.from_config(cfg)
    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
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
