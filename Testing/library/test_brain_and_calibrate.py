"""Automatic brain extraction (``--brain-mask``), site calibration (``calibrate``) and the shipped-model
lookup (``models``, a model given by name), on generated heads."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.core.shipped import resolve_model, shipped_models
from MAEAnomalyLib.data.brain import extract_brain, is_skull_stripped
from MAEAnomalyLib.data.preprocessing import prepare
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.evaluation.voxels import stored_thresholds
from MAEAnomalyLib.methods.model import load_model
from MAEAnomalyLib.scoring.scores import score_prepared
from MAEAnomalyLib.scoring.segmentation import median_filtered
from MAEAnomalyLib.scoring.voxel_maps import voxel_maps


@pytest.fixture
def run_cli(capfd: pytest.CaptureFixture) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str) -> subprocess.CompletedProcess:
        capfd.readouterr()
        code = main(list(args))
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path, Path]]:
    """Healthy generated heads (skull on), the last one stored sagittally like the IXI files."""
    root = tmp_path_factory.mktemp("heads")
    return [make_subject(100 + i, orientation="PSR" if i == 4 else "LPS").write(root, f"head{i}") for i in range(5)]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_skull_stripped_volumes_are_recognised(heads: list) -> None:
    image = sitk.ReadImage(str(heads[0][0]), sitk.sitkFloat32)
    brain = sitk.ReadImage(str(heads[0][1]))
    assert not is_skull_stripped(image)
    assert is_skull_stripped(sitk.Mask(image, brain))


def test_extracted_brain_is_on_the_input_grid(heads: list) -> None:
    image = sitk.ReadImage(str(heads[4][0]), sitk.sitkFloat32)  # sagittal storage
    mask = extract_brain(image)
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(mask, getter)() == pytest.approx(getattr(image, getter)()), getter
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(heads[4][1]))) > 0
    assert _dice(sitk.GetArrayFromImage(mask) > 0, truth) > 0.85


def test_score_writes_the_extracted_mask_only_when_it_extracted_one(run_cli: Callable, heads: list,
                                                                       untrained_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    image, brain, _ = heads[0]
    common = ["score", "--model", str(untrained_model_dir), "--image", str(image), "--device", "cpu"]
    auto = run_cli(*common, "--out-dir", str(tmp_path / "auto"))
    assert auto.returncode == 0, auto.stderr
    written = tmp_path / "auto" / "head0_brainmask.nii.gz"
    assert f"brain_mask: {written}" in auto.stdout and "extracted by deepbet" in auto.stderr
    mask = sitk.ReadImage(str(written))
    assert mask.GetSize() == sitk.ReadImage(str(image)).GetSize()
    for mode in ("none", str(brain)):
        result = run_cli(*common, "--brain-mask", mode, "--out-dir", str(tmp_path / "other"))
        assert result.returncode == 0, result.stderr
        assert "brain_mask" not in result.stdout and not list((tmp_path / "other").glob("*brainmask*"))


def _calibrate(run_cli: Callable, model: Path, heads: list, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("calibrate", "--model", str(model), "--images", *[str(h[0]) for h in heads],
                   "--masks", *[str(h[1]) for h in heads], "--out", str(out), "--device", "cpu", *extra)


def test_calibrate_keeps_the_weights_and_moves_the_threshold_to_the_target(run_cli: Callable, heads: list,
                                                                          untrained_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in untrained_model_dir.iterdir()}
    out = tmp_path / "site"
    result = _calibrate(run_cli, untrained_model_dir, heads, out, "--target-fpr", "0.2")
    assert result.returncode == 0, result.stderr
    assert {p.name: p.read_bytes() for p in untrained_model_dir.iterdir()} == before  # the source untouched
    for name in ("mae.safetensors", "classifier.safetensors"):
        assert (out / name).read_bytes() == before[name]
    config = json.loads((out / "config.json").read_text())
    record = config["site_calibration"]
    assert record["volumes"] == 5 and record["original_threshold"] == 0.5 and record["target_fpr"] == 0.2
    assert [f["path"] for f in record["files"]] == [str(h[0]) for h in heads]
    assert all(len(f["sha256"]) == 64 for f in record["files"]) and record["date"].startswith("20")
    assert config["position_reference"]["bins"] == 10
    # evaluate's voxel rows use the thresholds of this calibration, not training's.
    assert stored_thresholds(load_model(out).config) == record["voxel_thresholds"]
    assert record["voxel_thresholds"]["difference"]["on"] == config["voxel_threshold"]
    # Scored as `score` scores them, the calibration volumes are flagged at the target rate.
    model = load_model(out)
    flagged, slices = 0, 0
    for image, brain, _ in heads:
        table = score_prepared(model, prepare(image, model.config.preprocess, brain, min_pixels=8),
                               torch.device("cpu")).table
        usable = table["skipped"] == 0
        flagged += int(table["abnormal"][usable].sum())
        slices += int(usable.sum())
    assert slices == record["slices"]
    assert abs(flagged / slices - 0.2) <= 1 / slices + 1e-9


def test_calibrate_recalibrates_the_voxel_threshold_for_new_segmentation_settings(
        run_cli: Callable, heads: list, untrained_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    result = _calibrate(run_cli, untrained_model_dir, heads, out, "--target-fpr", "0.2",
                        "--set", "segmentation.smoothing_mm=2",
                        "--set", "segmentation.median_radius=1")
    assert result.returncode == 0, result.stderr
    model = load_model(out)
    seg = model.config.segmentation
    assert (seg.smoothing_mm, seg.median_radius) == (2.0, 1)
    assert model.config.site_calibration["settings"] == ["segmentation.smoothing_mm=2", "segmentation.median_radius=1"]
    # The stored threshold cuts the share it was set for of these volumes' brain voxels, on the map made
    # with the new settings (2-mm smoothing, then the 3x3x3 median filter).
    above, voxels = 0, 0
    for image, brain, _ in heads:
        result = score_prepared(model, prepare(image, model.config.preprocess, brain, min_pixels=8),
                                torch.device("cpu"))
        values = median_filtered(voxel_maps(result, model.config.preprocess)["difference"], 1)
        fg = result.prepared.foreground_input
        above += int((values[fg] >= model.config.voxel_threshold).sum())
        voxels += int(fg.sum())
    assert abs(above / voxels - seg.target_fpr) < 0.002


def test_calibrate_on_patients_leaves_out_their_labelled_slices(run_cli: Callable, untrained_model_dir: Path,
                                                                tmp_path: Path) -> None:
    """``--labels`` makes patients' volumes usable, as training's held-out volumes are: only the slices
    without a labelled voxel set the threshold."""
    patients = [make_subject(200 + i, lesion=True, lesion_radius=(3.0, 4.0)).write(tmp_path / "patients", f"p{i}")
                for i in range(6)]
    labelled = sum(int((sitk.GetArrayFromImage(sitk.ReadImage(str(p[2]))) > 0).any(axis=(1, 2)).sum())
                   for p in patients)  # stored axially (LPS): one array row per axial slice
    assert labelled > 0
    counts = {}
    for name, extra in (("all", ()), ("unlabelled", ("--labels", *[str(p[2]) for p in patients]))):
        out = tmp_path / name
        result = _calibrate(run_cli, untrained_model_dir, patients, out, "--target-fpr", "0.2", *extra)
        assert result.returncode == 0, result.stderr
        record = json.loads((out / "config.json").read_text())["site_calibration"]
        counts[name] = record["slices"]
        assert record["labelled_slices_left_out"] is bool(extra)
    assert counts["unlabelled"] == counts["all"] - labelled


@pytest.mark.parametrize("setting", ["mae_classifier.score_reconstructions=2", "train.score_reconstructions=2"])
def test_calibrate_changes_no_setting_the_networks_were_trained_with(run_cli: Callable, heads: list,
                                                                     untrained_model_dir: Path,
                                                                     tmp_path: Path, setting: str) -> None:
    out = tmp_path / "site"
    result = _calibrate(run_cli, untrained_model_dir, heads, out, "--set", setting)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"--set {setting}: calibrate changes segmentation settings only (and mae_classifier.spread_floor); "
        "the networks were trained with the others")


def test_calibrate_with_too_few_slices_says_how_many_are_needed(run_cli: Callable, heads: list,
                                                               untrained_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    result = _calibrate(run_cli, untrained_model_dir, heads[:1], out, "--target-fpr", "0.01")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "at least 1000 are needed" in lines[-1] and not out.exists()


def test_calibrate_never_writes_into_a_used_folder(run_cli: Callable, heads: list, untrained_model_dir: Path,
                                                  tmp_path: Path) -> None:
    result = _calibrate(run_cli, untrained_model_dir, heads, untrained_model_dir)
    assert result.returncode == 2 and "new or empty folder" in result.stderr


def test_models_lists_shipped_models_and_score_uses_the_default(run_cli: Callable, heads: list,
                                                                 untrained_model_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "models"
    shutil.copytree(untrained_model_dir, shipped / "brain-t1")
    (shipped / "brain-t1" / "MODEL_CARD.md").write_text("# brain-t1\n\nA test model of healthy heads.\n")
    monkeypatch.setenv("MAEANOMALY_MODELS", str(shipped))
    assert [m.name for m in shipped_models()] == ["brain-t1"]
    listed = run_cli("models")
    assert listed.returncode == 0 and "brain-t1  A test model of healthy heads. (default)" in listed.stdout
    assert resolve_model(None) == shipped / "brain-t1" == resolve_model("brain-t1")
    with pytest.raises(MAEAnomalyError, match="shipped models: brain-t1"):
        resolve_model("brain-t2")
    scored = run_cli("score", "--image", str(heads[0][0]), "--brain-mask", str(heads[0][1]),
                     "--out-dir", str(tmp_path / "out"), "--device", "cpu")
    assert scored.returncode == 0 and f"model {shipped / 'brain-t1'}" in scored.stderr


def test_a_cohort_without_masks_gets_its_brains_extracted(run_cli: Callable, heads: list, untrained_model_dir: Path,
                                                          tmp_path: Path) -> None:
    images = [str(h[0]) for h in heads[:2]]
    out = tmp_path / "cohort"
    result = run_cli("score", "--model", str(untrained_model_dir), "--images", *images, "--out-dir", str(out),
                     "--workers", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for image in heads[:2]:
        mask = sitk.ReadImage(str(out / f"{image[0].name[:-len('.nii.gz')]}_brainmask.nii.gz"))
        assert mask.GetSize() == sitk.ReadImage(str(image[0])).GetSize()
    # Another --brain-mask is another result: --resume scores the volumes again, and none writes no mask.
    again = run_cli("score", "--model", str(untrained_model_dir), "--images", *images, "--out-dir", str(out),
                    "--workers", "0", "--device", "cpu", "--resume", "--brain-mask", "none")
    assert again.returncode == 0 and "2 scored" in again.stderr, again.stderr
    refused = run_cli("score", "--model", str(untrained_model_dir), "--images", *images, "--out-dir", str(out),
                      "--brain-mask", str(heads[0][1]))
    assert refused.returncode == 2 and "with --images give --masks" in refused.stderr
