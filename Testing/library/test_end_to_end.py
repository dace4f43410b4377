"""Training, calibration, scoring and evaluation on generated volumes, through the public API and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.core.runtime import resolve_device
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.engine.checkpoint import load_state
from MAEAnomalyLib.evaluation.cohort import evaluate_cohort
from MAEAnomalyLib.methods.mae_classifier import scorer as mae_scorer
from MAEAnomalyLib.methods.model import load_model
from MAEAnomalyLib.methods.model_config import preset
from MAEAnomalyLib.scoring.cohort_table import RECORDS
from MAEAnomalyLib.scoring.scores import score_image
from MAEAnomalyLib.scoring.table import SCORE_COLUMNS, read_table_csv
from MAEAnomalyLib.training import split_volumes, train

pytestmark = pytest.mark.slow  # trains models or drives a real MRML scene end to end

ROOT = Path(__file__).resolve().parents[2]


def test_model_ranks_lesion_slices_above_healthy_ones(tiny_model_dir: Path, cohort: dict) -> None:
    lesioned = cohort["lesioned"]
    metrics = evaluate_cohort(tiny_model_dir, [p[0] for p in lesioned], [p[2] for p in lesioned],
                              [p[1] for p in lesioned], "cpu")
    fg = metrics["foreground_slices"]
    assert fg["abnormal"] > 10 and fg["slices"] - fg["abnormal"] > 10
    # The tiny preset, trained for about a minute, ranks lesion slices clearly above healthy ones;
    # healthy slices through the ventricles are its main false positives (see README, Benchmarks).
    assert fg["score"]["auroc"] > 0.6, metrics
    assert metrics["all_slices"]["score"]["auroc"] > 0.75, metrics
    assert metrics["all_slices"]["slices"] == 3 * 40


def test_calibration_holds_out_whole_volumes(tiny_model_dir: Path, cohort: dict) -> None:
    summary = load_model(tiny_model_dir).config.training_summary
    train_vols, val_vols = set(summary["train_volumes"]), set(summary["validation_volumes"])
    assert train_vols.isdisjoint(val_vols)
    assert len(train_vols) + len(val_vols) == len(cohort["healthy"])
    assert summary["validation_fpr"] <= 0.05 + 1.0 / summary["validation_slices"]
    train_ids, val_ids = split_volumes(10, 0.2, seed=0)
    assert len(val_ids) == 2 and set(train_ids).isdisjoint(val_ids)


def test_scoring_table_and_difference_map(tiny_model_dir: Path, cohort: dict) -> None:
    model = load_model(tiny_model_dir)
    image = sitk.ReadImage(str(cohort["lesioned"][0][0]), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(cohort["lesioned"][0][1]))
    result = score_image(model, image, mask)
    table = result.table
    assert list(table) == list(SCORE_COLUMNS)
    assert len(table["slice_index"]) == 40
    skipped = table["skipped"] == 1
    assert skipped.any() and (~skipped).any()  # slices above and below the brain
    assert np.all(table["score"][skipped] == 0) and np.all(table["abnormal"][skipped] == 0)
    assert np.all((table["probability"] >= 0) & (table["probability"] <= 1))
    assert np.array_equal(table["abnormal"], ((table["score"] >= model.config.threshold) & ~skipped).astype(int))
    diff = result.difference
    assert diff.GetSize() == image.GetSize() and diff.GetOrigin() == image.GetOrigin()
    assert diff.GetSpacing() == image.GetSpacing() and diff.GetDirection() == image.GetDirection()
    values, brain = sitk.GetArrayFromImage(diff), sitk.GetArrayFromImage(mask) > 0
    assert values[~brain].max() == 0 and values[brain].max() > 0
    # the difference map is larger inside the lesion than elsewhere in the brain
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort["lesioned"][0][2]))) > 0
    assert values[lesion].mean() > 1.3 * values[brain & ~lesion].mean()  # 1.4-1.6 over scoring seeds


def test_averaging_reconstructions_steadies_the_scores(tiny_model_dir: Path, cohort: dict,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(tiny_model_dir)
    image = sitk.ReadImage(str(cohort["lesioned"][0][0]), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(cohort["lesioned"][0][1]))

    def tables(samples: int) -> list[dict]:
        model.config.settings.score_reconstructions = samples
        out = []
        for seed in range(4):  # other random masks
            monkeypatch.setattr(mae_scorer, "SCORING_SEED", seed)
            out.append(score_image(model, image, mask).table)
        return out

    single, averaged = tables(1), tables(4)
    scored = single[0]["skipped"] == 0
    for column in ("score", "mae_l1", "ssim"):
        one = np.array([t[column] for t in single])[:, scored]
        four = np.array([t[column] for t in averaged])[:, scored]
        # the mean of 4 independent reconstructions varies about half as much as one does
        assert four.std(axis=0).mean() < 0.75 * one.std(axis=0).mean(), column
        # and estimates the same thing: each slice keeps its own value, up to that variation
        assert np.abs(four.mean(axis=0) - one.mean(axis=0)).mean() < 0.25 * np.abs(one).mean(), column
    for t in averaged:
        assert np.all(t["score"][~scored] == 0) and np.all((t["probability"] >= 0) & (t["probability"] <= 1))


def test_sagittal_storage_gives_the_same_slice_table(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    axial = score_image(model, make_subject(42, lesion=True).image)
    sagittal_subject = make_subject(42, lesion=True, orientation="PSR")
    sagittal = score_image(model, sagittal_subject.image)
    for column in SCORE_COLUMNS:
        assert np.allclose(axial.table[column], sagittal.table[column], atol=1e-5, equal_nan=True), column
    assert sagittal.difference.GetSize() == sagittal_subject.image.GetSize()
    assert sagittal.difference.GetDirection() == sagittal_subject.image.GetDirection()


def test_cropped_slices_map_back_onto_the_input_grid(tiny_model_dir: Path, cohort: dict) -> None:
    model = load_model(tiny_model_dir)
    model.config.preprocess.crop_to_foreground = True  # the trained networks, fed brain-cropped slices
    # The per-voxel difference: a misplaced crop shows as a lesion off its place, which averaging would blur.
    model.config.settings.spread_floor, model.config.segmentation.smoothing_mm = 0.0, 0.0
    image = sitk.ReadImage(str(cohort["lesioned"][0][0]), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(cohort["lesioned"][0][1]))
    result = score_image(model, image, mask)
    window = result.prepared.window
    assert window[0].stop - window[0].start < 64 and window[1].stop - window[1].start < 64
    diff = result.difference
    assert diff.GetSize() == image.GetSize() and diff.GetDirection() == image.GetDirection()
    values, brain = sitk.GetArrayFromImage(diff), sitk.GetArrayFromImage(mask) > 0
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort["lesioned"][0][2]))) > 0
    assert values[~brain].max() == 0 and values[lesion].mean() > 1.5 * values[brain & ~lesion].mean()
    # The window is found on the canonical grid, so sagittal storage crops the same anatomy.
    axial = score_image(model, make_subject(42, lesion=True).image)
    sagittal = score_image(model, make_subject(42, lesion=True, orientation="PSR").image)
    assert axial.prepared.window == sagittal.prepared.window
    assert np.allclose(axial.table["score"], sagittal.table["score"], atol=1e-5)


def test_cli_score_writes_three_outputs(tiny_model_dir: Path, cohort: dict, tmp_path: Path) -> None:
    image, mask, _ = cohort["lesioned"][1]
    out = tmp_path / "scores"
    result = subprocess.run([sys.executable, "-m", "MAEAnomalyLib", "score", "--model", str(tiny_model_dir),
                             "--image", str(image), "--mask", str(mask), "--out-dir", str(out), "--device", "cpu",
                             "--progress", "lines"], capture_output=True, encoding="utf-8", cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    name = image.name.removesuffix(".nii.gz")
    assert sorted(p.name for p in out.iterdir()) == sorted(  # a trained model has a voxel threshold (#19)
        [f"{name}_scores.csv", f"{name}_diff.nii.gz", f"{name}_report.png", f"{name}_anomalies.nii.gz",
         f"{name}_components.csv", RECORDS])  # and the record of what the run wrote
    assert "progress 1.000" in result.stderr
    table = read_table_csv(out / f"{name}_scores.csv")
    direct = score_image(load_model(tiny_model_dir), sitk.ReadImage(str(image), sitk.sitkFloat32),
                         sitk.ReadImage(str(mask))).table
    for column in SCORE_COLUMNS:
        assert np.allclose(table[column], direct[column], rtol=1e-6, atol=1e-7, equal_nan=True), column
    assert (out / f"{name}_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diff = sitk.ReadImage(str(out / f"{name}_diff.nii.gz"))
    assert diff.GetSize() == sitk.ReadImage(str(image)).GetSize()


def test_cli_evaluate_writes_json(tiny_model_dir: Path, cohort: dict, tmp_path: Path) -> None:
    lesioned = cohort["lesioned"]
    out = tmp_path / "metrics.json"
    result = subprocess.run([sys.executable, "-m", "MAEAnomalyLib", "evaluate", "--model", str(tiny_model_dir),
                             "--images", *[str(p[0]) for p in lesioned], "--labels", *[str(p[2]) for p in lesioned],
                             "--device", "cpu", "--json", str(out)], capture_output=True, encoding="utf-8", cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    for subset in ("foreground_slices", "all_slices"):
        for score in ("score", "mae_l1", "ssim", "intensity_p995", "foreground_fraction"):
            assert 0 <= metrics[subset][score]["auroc"] <= 1
            assert 0 <= metrics[subset][score]["auprc"] <= 1
    assert "AUROC" in result.stdout and "all_slices" in result.stdout
    # Voxel level (#19): training calibrated every map's threshold on healthy volumes only.
    for row in metrics["voxel"]["maps"].values():
        assert 0 <= row["auroc"] <= 1 and row["auprc"] >= 0 and row["dice"] is not None
    assert metrics["voxel"]["maps"]["intensity"]["auroc"] > 0.8  # the generated lesions are bright


def test_resume_after_interruption_gives_the_same_weights(cohort: dict, tmp_path: Path) -> None:
    """Also with best-validation selection, whose running best must survive the interruption."""
    cfg = preset("tiny")
    cfg.settings.mae_epochs, cfg.settings.classifier_epochs = 3, 3
    cfg.settings.classifier_selection = "best_validation"
    images, masks = [p[0] for p in cohort["healthy"][:4]], [p[1] for p in cohort["healthy"][:4]]
    device = resolve_device("cpu")
    reference = train(images, tmp_path / "a", preset_copy(cfg), device, masks, log=lambda _: None,
                      show_progress=False)

    class Interrupt(Exception):
        pass

    def stop_after_first_classifier_epoch(message: str) -> None:
        if message.startswith("classifier epoch 1/"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train(images, tmp_path / "b", preset_copy(cfg), device, masks, log=stop_after_first_classifier_epoch,
              show_progress=False)
    assert not (tmp_path / "b" / "config.json").exists()
    resumed = train(images, tmp_path / "b", preset_copy(cfg), device, masks, resume=True, log=lambda _: None,
                    show_progress=False)
    for name in ("mae", "classifier"):
        a, b = getattr(reference, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert reference.config.threshold == resumed.config.threshold
    # The kept classifier is the epoch with the lowest validation loss, and it is the one saved.
    summary = json.loads((tmp_path / "b" / "config.json").read_text())["training_summary"]
    losses = summary["history"]["classifier_val_loss"]
    assert len(losses) == 3 and summary["classifier_epoch_kept"] == int(np.argmin(losses)) + 1
    best = load_state(tmp_path / "b" / "checkpoint")["best"]
    assert best["epoch"] == summary["classifier_epoch_kept"]
    saved = load_model(tmp_path / "b").classifier.state_dict()
    assert all(torch.equal(saved[k], best["weights"][k]) for k in saved)


def preset_copy(cfg):
    from MAEAnomalyLib.methods.model_config import ModelConfig

    return ModelConfig.from_dict(cfg.to_dict())


def test_classifier_only_training_reuses_an_mae(tiny_model_dir: Path, cohort: dict, tmp_path: Path) -> None:
    cfg = preset("tiny")
    cfg.settings.classifier_epochs = 2
    cfg.settings.classifier.masked_input = True  # a classifier setting may differ from the source model's
    images, masks = [p[0] for p in cohort["healthy"][:4]], [p[1] for p in cohort["healthy"][:4]]
    model = train(images, tmp_path / "m", cfg, resolve_device("cpu"), masks, log=lambda _: None,
                  show_progress=False, mae_from=tiny_model_dir)
    source = load_model(tiny_model_dir)
    assert all(torch.equal(v, source.mae.state_dict()[k]) for k, v in model.mae.state_dict().items())
    summary = load_model(tmp_path / "m").config.training_summary
    assert summary["mae_from"] == str(tiny_model_dir)
    # No MAE epoch was trained (the history holds what the stages that ran recorded).
    assert summary["history"].get("mae_loss", []) == [] and len(summary["history"]["classifier_loss"]) == 2
    # Another preset's MAE cannot serve: a clear error, and nothing written.
    with pytest.raises(MAEAnomalyError, match="preprocessing or MAE settings differ"):
        train(images, tmp_path / "n", preset("small"), resolve_device("cpu"), masks, log=lambda _: None,
              show_progress=False, mae_from=tiny_model_dir)
    assert not (tmp_path / "n").exists()
