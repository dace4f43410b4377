"""Every registered method through the Slicer module's logic on a real MRML scene (slicer-core wheel): a model
of each, trained through the command line, scores a volume node in this process and in the background
process, into the same table and difference nodes as the command line's files, leaving the input unchanged.
The default method is covered in depth by test_slicer_logic.py, on the session's tiny model."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
from training_runs import child_env, train_command  # noqa: E402

from MAEAnomalyLib.cli.main import main as cli_main  # noqa: E402
from MAEAnomalyLib.data.synthetic import make_subject, write_cohort  # noqa: E402
from MAEAnomalyLib.methods import DEFAULT_METHOD, names  # noqa: E402
from MAEAnomalyLib.scoring.table import read_table_csv  # noqa: E402
from SlicerMAEAnomalyLib.logic import MAEAnomalyLogic  # noqa: E402

pytestmark = pytest.mark.slow  # trains one model of each method
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    healthy, _ = write_cohort(tmp_path_factory.mktemp("methods") / "data", healthy=5, lesioned=0, seed=11)
    return {"images": [h[0] for h in healthy], "masks": [h[1] for h in healthy]}


@pytest.fixture(scope="module", params=[m for m in names() if m != DEFAULT_METHOD])
def model(request: pytest.FixtureRequest, cohort: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "model"
    done = subprocess.run(train_command(request.param, cohort, out), capture_output=True, encoding="utf-8",
                          cwd=ROOT, env=child_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def load_volume(scene: slicer.vtkMRMLScene, path: Path) -> slicer.vtkMRMLScalarVolumeNode:
    """Reads a file through a storage node, as Slicer's 'Add data' does."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(volume)
    return volume


def test_each_method_scores_in_slicer_as_on_the_command_line(model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    image_path, mask_path = make_subject(3, lesion=True).write(tmp_path / "in", "head")[:2]
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    volume, mask = load_volume(scene, image_path), load_volume(scene, mask_path)
    before = slicer.util.arrayFromVolume(volume).copy()
    logic = MAEAnomalyLogic()

    table, difference = logic.process(volume, model, maskNode=mask, device="cpu")

    assert cli_main(["score", "--model", str(model), "--image", str(image_path), "--brain-mask", str(mask_path),
                     "--out-dir", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    expected = read_table_csv(tmp_path / "cli" / "head_scores.csv")
    columns = logic.tableColumns(table)
    assert list(columns) == list(expected)  # the method's own columns too, in the CLI's order
    for name, values in expected.items():
        np.testing.assert_allclose(columns[name], values, rtol=1e-6, atol=1e-9, err_msg=name)
    cli_map = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / "head_diff.nii.gz")))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(difference), cli_map, atol=1e-6)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = logic.startProcessing(volume, model, maskNode=mask, device="cpu")
    deadline = time.monotonic() + 300
    while not run.poll().finished:
        assert time.monotonic() < deadline, "the background run did not finish"
        time.sleep(0.1)
    table2, difference2 = logic.finishProcessing(run)
    assert (table2.GetID(), difference2.GetID()) == (table.GetID(), difference.GetID())
    after = logic.tableColumns(table2)
    for name, values in expected.items():  # another thread count may change float sums slightly
        np.testing.assert_allclose(after[name], values, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
