"""The shipped models: each is there, within its limits, loads and scores a generated volume, and the demo
runs end to end with the default one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from MAEAnomalyLib.core.shipped import DEFAULT_MODEL, models_dir, resolve_model, shipped_models
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods import get
from MAEAnomalyLib.methods.model import STORAGE_DTYPES, load_model
from MAEAnomalyLib.scoring.scores import score_image

ROOT = Path(__file__).resolve().parents[2]


SHIPPED = sorted(d.name for d in (ROOT / "models").iterdir() if (d / "config.json").is_file())


def test_the_default_model_ships_with_the_others() -> None:
    assert models_dir() == ROOT / "models"
    assert DEFAULT_MODEL in SHIPPED and [m.name for m in shipped_models()] == SHIPPED
    assert resolve_model(None) == resolve_model(DEFAULT_MODEL)


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_has_its_card_and_stays_within_its_size(name: str) -> None:
    model_dir = resolve_model(name)
    card = (model_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    for needed in ("CC BY-SA 3.0", "IXI", "MAEAnomalyLib train", "maeanomaly calibrate", "Limits"):
        assert needed in card, needed
    size = sum(p.stat().st_size for p in model_dir.iterdir())
    assert size <= 30 * 2**20
    config = json.loads((model_dir / "config.json").read_text())
    assert config["position_reference"]["bins"] == 10
    # Trained on IXI only: nothing from BraTS (non-commercial) may be in or behind it.
    assert "brats" not in json.dumps(config).lower()


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_scores_a_generated_volume(name: str) -> None:
    model = load_model(resolve_model(name))
    subject = make_subject(7, lesion=True, orientation="PSR")
    result = score_image(model, subject.image, subject.brain_mask, torch.device("cpu"))
    table = result.table
    brain = table["skipped"] == 0
    assert brain.sum() > 10 and np.isfinite(table["score"][brain]).all()
    method = get(model.config.method)
    l1 = next(c for c in method.columns if c.endswith("_l1"))  # the reconstruction error of each method
    assert np.isfinite(table[f"{l1}_position"][brain]).all()
    assert not np.array_equal(table["score"], table[method.primary])  # the score is calibrated by position
    assert result.difference.GetSize() == subject.image.GetSize()


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_weights_are_stored_as_models_readme_says_and_load_as_float32(name: str) -> None:
    model_dir = resolve_model(name)
    stored = set()
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            stored |= {weights.get_slice(key).get_dtype() for key in weights.keys()}  # noqa: SIM118
    stored -= {"I64"}  # batch norms' counts of batches (RA), integers in any storage
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    assert len(stored) == 1, stored  # one storage dtype for the whole model
    dtype = names.get(stored.pop())
    assert dtype in STORAGE_DTYPES
    readme = (ROOT / "models" / "README.md").read_text(encoding="utf-8")
    assert f"`{name}`: weights stored as {dtype}" in readme
    model = load_model(model_dir)
    for net in model.networks.values():
        assert {p.dtype for p in net.state_dict().values() if p.is_floating_point()} == {torch.float32}


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_clone_size_check_fails_over_its_limit() -> None:
    script = ROOT / "scripts" / "clone_size.sh"
    over = subprocess.run(["bash", str(script), "1"], capture_output=True, text=True, timeout=300)
    assert over.returncode == 1, over.stderr
    last = over.stderr.strip().splitlines()[-1]  # before it, at most a warning that the checkout is shallow
    assert "a full clone is" in last and "MB, over the limit of 1 MB" in last
    assert subprocess.run(["bash", str(script), "ninety"], capture_output=True, timeout=60).returncode == 2


@pytest.mark.slow
def test_the_demo_scores_real_anatomy_with_the_shipped_model(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "MAEAnomalyLib", "demo", "--out-dir", str(out), "--device", "cpu"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC lesion" in result.stdout
    found = json.loads((out / "demo.json").read_text())
    assert found["healthy"]["brain_slices"] > 50
    lesion = found["synthetic lesion"]
    assert lesion["lesion_slices"] >= 8 and len(lesion["lesion_slice_ranks"]) == lesion["lesion_slices"]
    assert 5 < lesion["lesion_ml"] < 8  # a 12-mm ball (7.2 mL) on 2-mm voxels
    assert 0 <= lesion["lesion_outlined"] <= 1 and "anomaly segmentation:" in result.stdout
    for stem in ("IXI516-HH-2297_T1", "IXI516-HH-2297_synthetic_lesion"):
        for suffix in ("_scores.csv", "_diff.nii.gz", "_report.png"):
            assert (out / "scores" / f"{stem}{suffix}").is_file()
