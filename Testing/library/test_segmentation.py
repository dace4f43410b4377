"""The anomaly segmentation: components on a generated volume with two lesions, the label map on the
input's grid, the components table, and the files ``score`` writes with and without a voxel threshold."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_model_io import as_format_1

from MAEAnomalyLib.cli.main import main as cli_main
from MAEAnomalyLib.core.config import PreprocessConfig, SegmentationConfig
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.io import from_canonical, to_canonical
from MAEAnomalyLib.data.preprocessing import prepare_image
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.model_config import ModelConfig, apply_overrides, preset
from MAEAnomalyLib.scoring.cohort_table import RECORDS
from MAEAnomalyLib.scoring.segmentation import read_components_csv, segment

BIG, SMALL = 4.0, 2.6  # ball radii in voxels


def _two_lesions(orientation: str = "PSR"):
    """A generated head stored sagittally, and a difference map with two balls of 0.8 in its brain, a
    three-voxel speck of 0.9, and 0.1 elsewhere in the brain."""
    subject = make_subject(3, orientation=orientation)
    prepared = prepare_image(subject.image, PreprocessConfig(image_size=64), subject.brain_mask)
    fg = prepared.foreground_input
    z, y, x = np.indices(fg.shape)
    centre = np.round(np.argwhere(fg).mean(axis=0)).astype(int)
    centres = {"big": centre + np.array([0, 0, -9]), "small": centre + np.array([2, 0, 9])}
    balls = {name: ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r ** 2
             for (name, c), r in zip(centres.items(), (BIG, SMALL), strict=True)}
    values = np.where(fg, 0.1, 0.0).astype(np.float32)
    for ball in balls.values():
        assert fg[ball].all()  # the lesions lie inside the brain
        values[ball] = 0.8
    speck = tuple(centre + np.array([-6, 6, 0]))
    values[speck[0], speck[1], speck[2]:speck[2] + 3] = 0.9
    return subject, prepared, from_canonical(values, subject.image), balls


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def test_two_lesions_become_two_components_numbered_by_size_on_the_input_grid():
    subject, prepared, difference, balls = _two_lesions()
    # 27 mm3 voxels: the 3-voxel speck (81 mm3) is under 100 mm3 and dropped; no median filter here.
    seg = segment(difference, prepared, 0.5, SegmentationConfig(median_radius=0, min_component_mm3=100))
    assert _same_grid(seg.labels, subject.image)
    assert seg.labels.GetDirection() != to_canonical(subject.image).GetDirection()  # stored sagittally
    assert [r["label"] for r in seg.components] == [1, 2]
    assert [r["voxels"] for r in seg.components] == [int(balls["big"].sum()), int(balls["small"].sum())]
    voxel = float(np.prod(subject.image.GetSpacing()))
    assert seg.components[0]["volume_mm3"] == pytest.approx(balls["big"].sum() * voxel)
    assert seg.components[0]["volume_ml"] == pytest.approx(balls["big"].sum() * voxel / 1000)
    # Centroids, worked out on the input's own grid (not the canonical one the code uses).
    labels = sitk.GetArrayFromImage(seg.labels)
    for row in seg.components:
        k, j, i = np.argwhere(labels == row["label"]).mean(axis=0)
        lps = subject.image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
        assert (row["centroid_l"], row["centroid_p"], row["centroid_lps_s"]) == pytest.approx(lps, abs=1e-6)
        assert (row["centroid_r"], row["centroid_a"], row["centroid_s"]) == pytest.approx(
            (-lps[0], -lps[1], lps[2]), abs=1e-6)
        assert row["map_max"] == pytest.approx(0.8) and row["map_mean"] == pytest.approx(0.8)
    slices = np.flatnonzero(balls["big"].any(axis=(1, 2)))
    assert (seg.components[0]["first_slice"], seg.components[0]["last_slice"]) == (slices[0], slices[-1])


def test_median_filter_removes_a_speck_and_keeps_the_lesions():
    _, prepared, difference, balls = _two_lesions("LPS")
    kept = segment(difference, prepared, 0.5, SegmentationConfig(median_radius=0, min_component_mm3=0))
    assert len(kept.components) == 3  # the speck too
    filtered = segment(difference, prepared, 0.5, SegmentationConfig(median_radius=1, min_component_mm3=0))
    assert len(filtered.components) == 2
    # The filter shaves a ball's rim (a median over 27 voxels) but keeps its core, and adds nothing.
    assert filtered.canonical[balls["big"]].max() == 1 and not (filtered.canonical[~balls["big"]] == 1).any()
    assert not (filtered.canonical[~(balls["big"] | balls["small"])] > 0).any()
    assert filtered.components[0]["voxels"] > 0.7 * balls["big"].sum()


def test_no_voxel_threshold_no_segmentation():
    _, prepared, difference, _ = _two_lesions("LPS")
    assert segment(difference, prepared, None, SegmentationConfig()) is None


def _model_with(tmp_path: Path, source: Path, voxel_threshold: float | None) -> Path:
    model = tmp_path / "model"
    shutil.copytree(source, model)
    config = json.loads((model / "config.json").read_text())
    if voxel_threshold is None:  # as written before voxel calibration existed: format 1, no voxel threshold
        config = as_format_1(config)
        config.pop("voxel_threshold", None)
        config.pop("segmentation", None)
    else:
        config["voxel_threshold"] = voxel_threshold
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_score_writes_the_label_map_and_components_with_the_other_outputs(tmp_path, untrained_model_dir, capsys):
    subject = make_subject(5, lesion=True, orientation="PSR")
    image, mask, _ = subject.write(tmp_path / "data", "head")
    model = _model_with(tmp_path, untrained_model_dir, 0.3)
    out = tmp_path / "out"
    assert cli_main(["score", "--model", str(model), "--image", str(image), "--mask", str(mask),
                     "--out-dir", str(out), "--device", "cpu"]) == 0
    anomalies = sitk.ReadImage(str(out / "head_anomalies.nii.gz"))
    assert _same_grid(anomalies, sitk.ReadImage(str(image)))
    labels = sitk.GetArrayFromImage(anomalies)
    rows = read_components_csv(str(out / "head_components.csv"))
    assert [r["label"] for r in rows] == list(range(1, labels.max() + 1))
    assert [r["voxels"] for r in rows] == [int((labels == r["label"]).sum()) for r in rows]
    assert all(a["voxels"] >= b["voxels"] for a, b in itertools.pairwise(rows))  # numbered by size
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(mask))) > 0
    assert not (labels[~brain] > 0).any()  # only inside the foreground
    assert "anomalies:" in capsys.readouterr().out


def test_a_model_without_voxel_threshold_still_scores_and_says_so(tmp_path, untrained_model_dir, capsys):
    subject = make_subject(5, lesion=True)
    image, mask, _ = subject.write(tmp_path / "data", "head")
    model = _model_with(tmp_path, untrained_model_dir, None)
    out = tmp_path / "out"
    assert cli_main(["score", "--model", str(model), "--image", str(image), "--brain-mask", str(mask),
                     "--out-dir", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [RECORDS, "head_diff.nii.gz", "head_report.png",
                                                     "head_scores.csv"]
    assert "no voxel threshold" in capsys.readouterr().err


def test_segmentation_settings_are_checked_and_old_configs_load(untrained_model_dir):
    data = json.loads((untrained_model_dir / "config.json").read_text())
    # Models saved before voxel calibration are format 1 (the flat layout; spread_floor in segmentation).
    flat = as_format_1(data)
    flat.pop("segmentation", None)
    flat.pop("voxel_threshold", None)
    old = ModelConfig.from_dict(flat)
    # Saved before smoothing and the spread existed: its maps were per voxel and undivided, and stay so.
    assert old.voxel_threshold is None
    assert old.segmentation == SegmentationConfig(smoothing_mm=0.0) and old.settings.spread_floor == 0.0
    # Saved with smoothing but before the spread (the brain-t1 of c55ef96 to 08f90e6): undivided.
    smoothed = ModelConfig.from_dict({**flat, "segmentation": {"smoothing_mm": 6.0}})
    assert smoothed.segmentation == SegmentationConfig(smoothing_mm=6.0) and smoothed.settings.spread_floor == 0.0
    assert (ModelConfig().segmentation.smoothing_mm, ModelConfig().settings.spread_floor) == (8.0, 0.05)
    for base in (data, flat):
        with pytest.raises(ValueError, match=r"segmentation\.smoothing_mm is -1\.0"):
            ModelConfig.from_dict({**base, "segmentation": {"smoothing_mm": -1.0}})
    with pytest.raises(ValueError, match=r"mae_classifier\.spread_floor is -1\.0"):
        ModelConfig.from_dict({**data, "mae_classifier": {**data["mae_classifier"], "spread_floor": -1.0}})
    # Format 1's segmentation.spread_floor is the method's setting now, and named so.
    with pytest.raises(ValueError, match=r"mae_classifier\.spread_floor is -1\.0"):
        ModelConfig.from_dict({**flat, "segmentation": {"spread_floor": -1.0}})
    with pytest.raises(ValueError, match="voxel_threshold"):
        ModelConfig.from_dict({**data, "voxel_threshold": -1.0})
    with pytest.raises(ValueError, match=r"segmentation\.median_radius"):
        ModelConfig.from_dict({**data, "segmentation": {"median_radius": 9}})
    with pytest.raises(MAEAnomalyError, match=r"segmentation\.min_component_mm3"):
        apply_overrides(preset("tiny"), ["segmentation.min_component_mm3=-5"])
