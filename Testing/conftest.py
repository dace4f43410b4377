"""Shared fixtures: a generated cohort and one small trained model for the whole session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# The Slicer-only package sits beside the module file, as Slicer puts it on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "MAEAnomaly"))

from MAEAnomalyLib.core.runtime import resolve_device
from MAEAnomalyLib.data.synthetic import write_cohort
from MAEAnomalyLib.methods.model import AnomalyModel, save_model
from MAEAnomalyLib.methods.model_config import preset
from MAEAnomalyLib.training import train

# Two cores on CI: the default thread count oversubscribes when pytest and torch share them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Path, Path, Path]]]:
    """10 healthy and 3 lesioned generated subjects as (image, brain mask, label) paths."""
    healthy, lesioned = write_cohort(tmp_path_factory.mktemp("cohort"), healthy=10, lesioned=3, seed=0)
    return {"healthy": healthy, "lesioned": lesioned}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the trained model is end to end, so ``slow``; ``-m "not slow"`` is the fast tier."""
    for item in items:
        if "tiny_model_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid ``tiny`` model directory with random weights and a threshold: enough for every error path."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.threshold = 0.5
    out = tmp_path_factory.mktemp("untrained") / "tiny"
    save_model(AnomalyModel.from_config(cfg), out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(cohort: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained and calibrated ``tiny`` model (default epochs) on the healthy subjects."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    healthy = cohort["healthy"]
    train([h[0] for h in healthy], out, preset("tiny"), resolve_device("cpu"), masks=[h[1] for h in healthy],
          log=lambda _: None, show_progress=False)
    return out


@pytest.fixture(scope="session")
def slicer_python():
    """The ``slicer`` package: slicer-core's MRML with Slicer 5.10.0's own Python layer loaded over it
    (see ``slicer_python.py``); skips where either is missing."""
    pytest.importorskip("slicer")
    import slicer_python

    try:
        return slicer_python.load()
    except FileNotFoundError as exc:
        pytest.skip(f"Slicer 5.10's Python sources are not at {exc} (set MAEANOMALY_SLICER_PYTHON)")


@pytest.fixture
def slicer_app(slicer_python, monkeypatch: pytest.MonkeyPatch):
    """``slicer.app`` for one test (module and widget code reach for it); a fresh scene as ``slicer.mrmlScene``."""
    import slicer_python as stand_ins

    monkeypatch.setattr(slicer_python, "app", stand_ins.Application(), raising=False)
    monkeypatch.setattr(slicer_python, "mrmlScene", slicer_python.vtkMRMLScene(), raising=False)
    return slicer_python.app
