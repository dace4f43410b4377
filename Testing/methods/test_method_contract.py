"""The contract every registered method keeps, run over the registry: a method added later gets the whole
battery by registering. On generated heads: train the smallest preset, save, load, score (the table's
columns, the map on the input grid), calibrate, evaluate, score a cohort, resume after SIGTERM to the same
weights, and train under two-process torchrun to what one process trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from training_runs import child_env, interrupt_after_checkpoint, train_command, weights

from MAEAnomalyLib.data.io import to_canonical
from MAEAnomalyLib.data.synthetic import write_cohort
from MAEAnomalyLib.evaluation.cohort import evaluate_cohort
from MAEAnomalyLib.methods import get, names
from MAEAnomalyLib.methods.model import load_model
from MAEAnomalyLib.methods.model_config import FORMAT_VERSION
from MAEAnomalyLib.scoring.scores import BASELINE, score_image
from MAEAnomalyLib.scoring.table import CORE_COLUMNS, read_table_csv
from MAEAnomalyLib.training.site import calibrate_site

pytestmark = pytest.mark.slow  # every method is trained
ROOT = Path(__file__).resolve().parents[2]
METHODS = names()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    healthy, lesioned = write_cohort(tmp_path_factory.mktemp("contract") / "data", healthy=5, lesioned=2, seed=5)
    return {"images": [h[0] for h in healthy], "masks": [h[1] for h in healthy],
            "lesioned": [v[0] for v in lesioned], "lesioned_masks": [v[1] for v in lesioned],
            "labels": [v[2] for v in lesioned]}


@pytest.fixture(scope="module")
def trained(cohort: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each method trained once, through the command line, in one process."""
    out = {}
    for method in METHODS:
        model_dir = tmp_path_factory.mktemp(method) / "model"
        done = subprocess.run(train_command(method, cohort, model_dir), capture_output=True, encoding="utf-8",
                              cwd=ROOT, env=child_env(), timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        out[method] = model_dir
    return out




@pytest.mark.parametrize("method", METHODS)
def test_trains_saves_and_loads_with_its_method_recorded(method: str, trained: dict[str, Path]) -> None:
    model = load_model(trained[method])
    data = json.loads((trained[method] / "config.json").read_text())
    assert data["method"] == method and data["format_version"] == FORMAT_VERSION and method in data
    assert set(weights(trained[method])) == set(model.networks)  # one weights file per declared network
    assert np.isfinite(model.config.threshold) and model.config.voxel_threshold is not None


@pytest.mark.parametrize("method", METHODS)
def test_scores_a_volume_to_the_shared_table_and_a_map_on_its_grid(method: str, trained: dict[str, Path],
                                                                   cohort: dict, tmp_path: Path) -> None:
    found, image = get(method), cohort["lesioned"][0]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "MAEAnomalyLib", "score", "--model", str(trained[method]),
                           "--image", str(image), "--mask", str(cohort["lesioned_masks"][0]), "--out-dir", str(out),
                           "--device", "cpu"], capture_output=True, encoding="utf-8", cwd=ROOT, env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    table = read_table_csv(next(out.glob("*_scores.csv")))
    assert set(CORE_COLUMNS) | set(found.columns) | {BASELINE} <= set(table)
    volume = sitk.ReadImage(str(image))
    assert len(table["slice_index"]) == to_canonical(volume).GetSize()[2]  # one row per axial slice
    scored = table["skipped"] == 0
    assert scored.any() and np.isfinite(table["score"][scored]).all()
    for name in ("diff", "anomalies"):
        written = sitk.ReadImage(str(next(out.glob(f"*_{name}.nii.gz"))))
        assert written.GetSize() == volume.GetSize() and written.GetSpacing() == pytest.approx(volume.GetSpacing())
    # The same volume scored in memory gives the same table: one scoring path.
    result = score_image(load_model(trained[method]), sitk.ReadImage(str(image), sitk.sitkFloat32),
                         sitk.ReadImage(str(cohort["lesioned_masks"][0])))
    np.testing.assert_allclose(result.table["score"], table["score"], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_calibrates_evaluates_and_scores_a_cohort(method: str, trained: dict[str, Path], cohort: dict,
                                                 tmp_path: Path) -> None:
    record = calibrate_site(trained[method], [str(p) for p in cohort["images"]], [str(p) for p in cohort["masks"]],
                            "auto", tmp_path / "site", torch.device("cpu"), target_fpr=0.2)
    assert record["target_fpr"] == 0.2 and load_model(tmp_path / "site").config.threshold is not None
    metrics = evaluate_cohort(trained[method], cohort["lesioned"], cohort["labels"], cohort["lesioned_masks"], "cpu")
    assert metrics["foreground_slices"]["score"]["auroc"] is not None
    out = tmp_path / "cohort"
    done = subprocess.run([sys.executable, "-m", "MAEAnomalyLib", "score", "--model", str(trained[method]),
                           "--images", *map(str, cohort["lesioned"]), "--masks", *map(str, cohort["lesioned_masks"]),
                           "--out-dir", str(out), "--device", "cpu"], capture_output=True, encoding="utf-8",
                          cwd=ROOT, env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (out / "cohort.csv").read_text().splitlines()
    assert len(rows) == 3 and all(row.endswith(",ok") for row in rows[1:])




@pytest.mark.parametrize("method", METHODS)
def test_resumes_after_sigterm_to_the_same_model(method: str, trained: dict[str, Path], cohort: dict,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = train_command(method, cohort, out)
    if not get(method).networks(load_model(trained[method]).config):
        # Nothing trained, no checkpoint: a stopped run leaves no model, and the next run gives the same one.
        done = subprocess.run(command, capture_output=True, encoding="utf-8", cwd=ROOT, env=child_env())
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        stopped = interrupt_after_checkpoint(command, out / "checkpoint")
        assert stopped.returncode == 143 and "--resume" in stopped.stderr, stopped.stderr[-3000:]
        assert not (out / "config.json").exists()
        resumed = subprocess.run([*command, "--resume"], capture_output=True, encoding="utf-8", cwd=ROOT,
                                 env=child_env(), timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(trained[method]), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert load_model(out).config.threshold == load_model(trained[method]).config.threshold


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_what_one_trains(method: str, trained: dict[str, Path], cohort: dict,
                                             tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = train_command(method, cohort, out)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *command[1:]], capture_output=True, encoding="utf-8", cwd=ROOT, env=child_env(),
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp, single = weights(out), weights(trained[method])
    assert ddp.keys() == single.keys() and load_model(out).config.training_summary["processes"] == 2
    for name in single:  # equal up to the order of floating-point sums
        gap = max(float((ddp[name][k] - single[name][k]).abs().max()) for k in single[name])
        assert gap < 1e-3, (name, gap)
    assert load_model(out).config.threshold == pytest.approx(load_model(trained[method]).config.threshold, abs=1e-3)
