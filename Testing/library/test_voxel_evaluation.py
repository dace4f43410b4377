"""The voxel threshold calibrated on healthy volumes, and ``evaluate``'s voxel-level table, with an
untrained model (the arithmetic, not the model's quality, is under test; see test_end_to_end for a
trained one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MAEAnomalyLib.calibration.voxel_threshold import VoxelCalibration
from MAEAnomalyLib.cli.main import main as cli_main
from MAEAnomalyLib.core.runtime import resolve_device
from MAEAnomalyLib.data.io import read_volume, to_canonical
from MAEAnomalyLib.data.preprocessing import prepare
from MAEAnomalyLib.data.synthetic import write_cohort
from MAEAnomalyLib.engine.distributed import Dist
from MAEAnomalyLib.methods.model import load_model
from MAEAnomalyLib.scoring.scores import score_prepared
from MAEAnomalyLib.scoring.voxel_maps import voxel_maps


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("voxel_cohort"), healthy=2, lesioned=2, seed=7)


@pytest.fixture(scope="module")
def calibrated(small_cohort, untrained_model_dir, tmp_path_factory):
    """The untrained model with voxel thresholds calibrated on the two healthy volumes, as training does."""
    model = load_model(untrained_model_dir)
    cfg = model.config
    calibration = VoxelCalibration(cfg.segmentation)
    healthy_maps = []
    for image, mask, _ in small_cohort[0]:
        prepared = prepare(image, cfg.preprocess, mask, min_pixels=cfg.settings.mae.patch_size)
        result = score_prepared(model, prepared, resolve_device("cpu"))
        usable = result.table["skipped"] == 0
        maps = voxel_maps(result, cfg.preprocess)
        calibration.add(maps, result.prepared.foreground_input, usable)
        healthy_maps.append((maps, prepared.foreground_input))
    found = calibration.thresholds(Dist())
    out = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(untrained_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["voxel_threshold"] = found["voxel_thresholds"]["difference"]["on"]
    config["training_summary"] = found
    (out / "config.json").write_text(json.dumps(config))
    return out, found, healthy_maps


def test_voxel_threshold_sets_the_false_positive_rate_on_healthy_voxels(calibrated):
    _, found, healthy_maps = calibrated
    assert found["voxel_target_fpr"] == 0.01
    for name in ("difference", "intensity"):
        threshold = found["voxel_thresholds"][name]["off"]
        values = np.concatenate([maps[name][fg] for maps, fg in healthy_maps])
        assert found["voxel_calibration_voxels"] == values.size
        share = (values >= threshold).mean()
        assert share <= 0.01
        assert share > 0.005 or name == "intensity"  # the normalised intensity piles up at 1 (clipping)
    # The median-filtered map is smoother, so its high tail is lower.
    assert found["voxel_thresholds"]["difference"]["on"] <= found["voxel_thresholds"]["difference"]["off"]


def test_evaluate_reports_voxel_metrics_for_each_map(calibrated, small_cohort, tmp_path, capsys):
    model, found, _ = calibrated
    lesioned = small_cohort[1]
    out = tmp_path / "metrics.json"
    assert cli_main(["evaluate", "--model", str(model), "--images", *[str(s[0]) for s in lesioned],
                     "--labels", *[str(s[2]) for s in lesioned], "--masks", *[str(s[1]) for s in lesioned],
                     "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Voxel level" in printed and "intensity+post" in printed
    voxel = json.loads(out.read_text())["voxel"]
    assert voxel["volumes"] == 2
    assert set(voxel["maps"]) == {"difference", "difference+post", "intensity", "intensity+post"}
    # The lesion's share of the foreground voxels, counted here from the files.
    lesion = brain = 0
    for image, mask, label in lesioned:
        reference = read_volume(image)
        fg = sitk.GetArrayFromImage(to_canonical(read_volume(mask, "mask"))) > 0
        lab = sitk.GetArrayFromImage(to_canonical(read_volume(label, "label map"))) > 0
        assert reference.GetSize() == read_volume(label).GetSize()
        lesion, brain = lesion + (lab & fg).sum(), brain + fg.sum()
    assert voxel["lesion_share"] == pytest.approx(lesion / brain)
    intensity = voxel["maps"]["intensity"]
    assert intensity["auroc"] > 0.8 and intensity["auprc"] > 3 * voxel["lesion_share"]  # generated lesions are bright
    for name, row in voxel["maps"].items():
        variant = "on" if name.endswith("+post") else "off"
        assert row["threshold"] == found["voxel_thresholds"][name.removesuffix("+post")][variant]
        assert 0 <= row["dice"] <= 1 and row["false_positive_ml_mean"] >= 0
        if variant == "off":  # no component removal: the oracle's thresholds include the calibrated one
            assert row["dice"] <= row["best_dice"] + 1e-3
        assert row["best_dice_mean_volume"] >= row["dice_mean_volume"] - 1e-3 or variant == "on"


def _benchmark(script: str, *args: object) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(root / "benchmarks" / script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_postprocessing_benchmark_lowers_healthy_false_positives_with_component_size(small_cohort,
                                                                                      untrained_model_dir):
    healthy, lesioned = small_cohort
    done = _benchmark("voxel_postprocessing.py", untrained_model_dir, "--calibration", healthy[0][0],
                      "--calibration-masks", healthy[0][1], "--healthy", healthy[1][0], "--healthy-masks",
                      healthy[1][1], "--lesioned", lesioned[0][0], "--labels", lesioned[0][2], "--lesioned-masks",
                      lesioned[0][1], "--radii", "0,1", "--sizes", "0,100,1000")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [(r[0], r[2]) for r in rows] == [(a, b) for a in ("0", "1") for b in ("0", "100", "1000")]
    for radius in ("0", "1"):
        fp = [float(r[3]) for r in rows if r[0] == radius]
        assert fp == sorted(fp, reverse=True)  # dropping small components never adds a false positive


@pytest.mark.slow
def test_memory_benchmark_runs_on_a_small_cohort(tmp_path):
    done = _benchmark("voxel_memory.py", "--volumes", 2, "--sizes", "1,2", "--shape", "24,48,48", "--work", tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [1, 2] and all(float(r[4]) > 0 for r in rows)
