"""Model directories round-trip bit-exactly and are written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from MAEAnomalyLib.config import ModelConfig, preset
from MAEAnomalyLib.errors import MAEAnomalyError
from MAEAnomalyLib.model_io import AnomalyModel, load_config, load_model, save_model


@pytest.mark.parametrize(("pool", "members"), [("token", 1), ("avg", 1), ("max", 2)])
def test_round_trip_is_bit_exact(tmp_path: Path, pool: str, members: int) -> None:
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.classifier.global_pool, cfg.classifier.members = pool, members
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
    ("train", "classifier_ema", 1.5, "it must be at least 0.0 and below 1.0"),
    ("classifier", "members", 0, "it must be at least 1 and below 17"),
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
    with pytest.raises(RuntimeError, match="share memory"):
        save_model(broken, tmp_path / "m")
    after = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    assert after == before  # no temporary file left, nothing replaced
