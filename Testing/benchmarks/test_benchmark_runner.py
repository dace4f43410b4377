"""benchmarks/run.py on a generated data folder: the cache key, each protocol's file lists, and an end-to-end
run of the intensity method (it trains nothing) that writes the tables, then reuses every cached model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from MAEAnomalyLib.core.shipped import resolve_model
from MAEAnomalyLib.data.synthetic import make_subject

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run  # noqa: E402
import run_protocols as rp  # noqa: E402

SPLIT = rp.Split(paper_train=3, paper_test=2, ixi_train=3, ixi_unseen=2)
BRATS18 = [f"Brats18_X_{i}" for i in range(5)]


def _write(subject, folder: Path, names: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images = {"image": subject.image, "mask": subject.brain_mask, "label": subject.label}
    for name, which in names.items():
        sitk.WriteImage(images[which], str(folder / name), useCompression=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """brats2018/ (5 cases, four contrasts), brats2015/ (2 cases), ixi-t1/ (5 healthy volumes), generated."""
    root = tmp_path_factory.mktemp("data")
    contrasts = {f"{c}.nii.gz": "image" for c in ("t1", "t1c", "t2", "flair")}
    for i, case in enumerate(BRATS18):
        _write(make_subject(100 + i, lesion=True), root / "brats2018" / case,
               {**contrasts, "seg.nii.gz": "label", "brainmask.nii.gz": "mask"})
    for i in range(2):
        _write(make_subject(200 + i, lesion=True), root / "brats2015" / f"pat000{i + 1}",
               {"flair.nii.gz": "image", "t1c.nii.gz": "image", "seg.nii.gz": "label", "brainmask.nii.gz": "mask"})
    for i in range(5):
        _write(make_subject(300 + i), root / "ixi-t1",
               {f"IXI00{i}-HH-000{i}_T1.nii.gz": "image", f"IXI00{i}-HH-000{i}_brainmask.nii.gz": "mask"})
    return root


def test_cache_key_changes_with_each_setting_and_stays_otherwise(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    files = [root / "a.nii.gz", root / "b.nii.gz"]
    for f in files:
        f.write_bytes(b"0123")
    base = ("intensity", "paper", "flair", "small", ["segmentation.smoothing_mm=6"])

    def key(*args: object, root: Path = root, files: list[Path] = files) -> str:
        return rp.cache_key(*args, files, root)

    first = key(*base)
    assert key(*base) == first
    for i, other in enumerate(("mae_classifier", "t1", "t1", "tiny", ["segmentation.smoothing_mm=7"])):
        changed = list(base)
        changed[i] = other
        assert key(*changed) != first, changed
    assert key(*base[:4], []) != first
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)  # the same files, relative to another data folder: the same key
    assert key(*base, root=moved, files=[moved / f.name for f in files]) == first
    files[1].write_bytes(b"01234")  # one training file's size changes
    assert key(*base) != first


def test_protocol_file_lists_on_a_generated_data_folder(data: Path, tmp_path: Path) -> None:
    jobs, skipped = rp.protocol_jobs("t1", data, ["intensity", "mae_classifier"], ["t1"], SPLIT)
    assert skipped == []
    trained, shipped = jobs
    ixi = sorted((data / "ixi-t1").glob("IXI*_T1.nii.gz"))
    assert trained.train.images == ixi[:3] and shipped.train is None and shipped.shipped == "brain-t1"
    assert [m.name for m in trained.train.masks] == [f"IXI00{i}-HH-000{i}_brainmask.nii.gz" for i in range(3)]
    assert trained.train.labels is None
    names = [t.name for t in trained.tests]
    assert names == ["brats2018 t1 (5)", "brats2018 t1c (5)", "brats2015 t1c (2)",
                     "pooled: brats2018 t1 + brats2015 t1c (7)", "IXI unseen healthy (2)"]
    assert [p.parent.name for p in trained.tests[1].images] == BRATS18
    assert [p.name for p in trained.tests[1].images] == ["t1c.nii.gz"] * 5
    pooled = trained.tests[3]
    assert pooled.images == trained.tests[0].images + trained.tests[2].images
    assert pooled.labels == trained.tests[0].labels + trained.tests[2].labels
    assert pooled.masks == trained.tests[0].masks + trained.tests[2].masks
    assert trained.tests[4].images == ixi[3:] and trained.tests[4].labels is None
    # A model of the user's replaces the shipped one, or the training, of its method only.
    jobs, _ = rp.protocol_jobs("t1", data, ["intensity", "mae_classifier"], ["t1"], SPLIT,
                               {"intensity": "/models/mine"})
    assert [(j.train, j.shipped) for j in jobs] == [(None, "/models/mine"), (None, "brain-t1")]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"threshold": 1.0}))
    # Each as the runner finds it (Runner.model_dir): the given folder, and the shipped model's own.
    given, shipped = run.model_row(jobs[0], tmp_path / "m"), run.model_row(jobs[1], resolve_model("brain-t1"))
    assert given["model"] == "given /models/mine" and shipped["model"] == "shipped brain-t1"

    jobs, skipped = rp.protocol_jobs("paper", data, ["intensity"], ["t1", "flair"], SPLIT)
    assert skipped == [] and [(j.contrast, j.method) for j in jobs] == [("t1", "intensity"), ("flair", "intensity")]
    t1, flair = jobs
    assert [p.parent.name for p in t1.train.images] == BRATS18[:3]
    assert [p.name for p in t1.train.images] == ["t1.nii.gz"] * 3
    assert [p.name for p in t1.train.labels] == ["seg.nii.gz"] * 3  # tumour slices are left out of training
    assert [p.parent.name for p in t1.tests[0].images] == BRATS18[3:]
    assert [t.name for t in t1.tests] == ["brats2018 t1 last 2"]
    assert [t.name for t in flair.tests] == ["brats2018 flair last 2", "brats2015 flair (2)"]
    assert [p.name for p in flair.tests[1].images] == ["flair.nii.gz"] * 2

    jobs, skipped = rp.protocol_jobs("paper", data, ["intensity"], ["t1"], rp.Split(paper_train=4, paper_test=2))
    assert jobs == [] and skipped == ["paper: brats2018/ holds 5 cases, not 4 + 2"]


def test_tables_show_every_column_and_copy_intervals_through() -> None:
    column = {"auroc": 0.75, "auprc": 0.5, "auroc_within_area": 0.6, "auroc_ci95": [0.61, 0.88]}
    metrics = {"foreground_slices": {"slices": 10, "abnormal": 4, "score": column,
                                     "score_minus": {"mae_l1": {"difference": 0.1, "ci95": [-0.2, 0.3]}}},
               "all_slices": {"score": {"auroc": 0.8, "auprc": 0.55}},
               "by_position": [{"score": 0.5}, {"score": 0.6}, {"score": None}],
               "by_volume": [{"auroc": {"score": 0.9}}, {"auroc": {"score": 0.3}}, {"auroc": {"score": 0.7}}],
               "voxel": {"maps": {"difference+post": {"auroc": 0.9, "auprc": 0.2, "best_dice": 0.3, "dice": 0.1,
                                                      "false_positive_ml_mean": 2.5}}}}
    result = {"method": "m", "test_set": "set", "kind": "labelled", "metrics": metrics, "seconds_per_volume": 1.25,
              "seconds": 150.0}
    [row] = rp.rows(result)
    assert row == ("| m | set | score | 10 (4) | 0.750 [0.610, 0.880] | 0.500 | 0.800 | 0.550 | 0.600 | "
                   "0.500 / 0.600 / — | — | 0.700 (0.300–0.900) | 0.900 | 0.200 | 0.300 | 0.100 | 2.500 | 1.2 |")
    models = [{"method": "m", "contrast": "t1", "model": "shipped x", "trained_on": "IXI", "train_seconds": 600.0},
              {"method": "n", "contrast": "t1", "model": "given /m/y", "trained_on": "IXI", "train_seconds": 900.0},
              {"method": "m", "contrast": "t1", "model": "p-t1-m-key", "trained_on": "a", "train_seconds": 1800.0}]
    text = rp.markdown({"protocol": "p", "command": "c", "wall_seconds": 1, "cpus": 2, "models": models,
                        "results": [result]})
    assert "`c`; 1 s wall (2 CPU cores); from nothing: training 30 min + evaluation 2 min." in text  # no given ones
    assert "  - `foreground_slices.score_minus.mae_l1.ci95` +0.100 [-0.200, 0.300]" in text
    assert "auroc_ci95" not in text  # shown in its AUROC cell, not listed again
    assert "precision" not in str(rp.intervals({"precision": [0, 1], "voxel": {"decision": 1}}))


def test_comparability_compares_pooled_with_per_patient_and_groups_sources() -> None:
    per_volume = [{"volume": f"d/brats2018/Brats18_{name}/t1.nii.gz", "auroc": {"score": value}}
                  for name, value in (("2013_2_1", 0.9), ("CBICA_AAB_1", 0.6), ("TCIA01_1_1", 0.5))]
    per_volume.append({"volume": "d/brats2015/pat0001/t1c.nii.gz", "auroc": {"score": 0.6}})
    metrics = {"foreground_slices": {"score": {"auroc": 0.55}}, "by_volume": per_volume}
    [row] = rp.comparability_rows({"method": "m", "test_set": "set", "metrics": metrics})
    # Mean per patient (0.9 + 0.6 + 0.5 + 0.6) / 4 = 0.65: pooled is 0.10 below it.
    assert row == "| m | set | score | 0.550 | 0.650 | -0.100 | 2013 0.900 (1), CBICA 0.600 (1), TCIA 0.500 (1), " \
                  "brats2015 0.600 (1) |"


def _run(data: Path, work: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    env.pop("MAEANOMALY_DATA", None)
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), str(data), "--methods", "intensity",
                           "--contrasts", "flair", "--preset", "tiny", "--paper-cases", "3,2", "--ixi-volumes", "3,2",
                           "--work", str(work), "--out", str(out), "--device", "cpu", "--batch-size", "16", *extra],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow  # trains a model of every registered method through the CLI
def test_runner_writes_the_tables_then_reuses_every_cached_model(data: Path, tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    first = _run(data, work, out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("] training intensity") == 2  # one model per protocol
    expected = {"t1": ["brats2018 t1 (5)", "brats2018 t1c (5)", "brats2015 t1c (2)",
                       "pooled: brats2018 t1 + brats2015 t1c (7)", "IXI unseen healthy (2)"],
                "paper": ["brats2018 flair last 2", "brats2015 flair (2)"]}
    reports = {}
    for protocol, sets in expected.items():
        report = json.loads((out / f"{protocol}.json").read_text())
        reports[protocol] = report
        assert [r["test_set"] for r in report["results"]] == sets
        assert [m["method"] for m in report["models"]] == ["intensity"]
        table = (out / f"{protocol}.md").read_text()
        for result in report["results"]:
            assert result["seconds_per_volume"] > 0
            if result["kind"] == "labelled":
                assert set(result["metrics"]["foreground_slices"]) >= {"score", "intensity_p995", "foreground_fraction"}
                for column in ("score", "intensity_p995", "brain area"):
                    assert f"| intensity | {result['test_set']} | {column} |" in table
            else:
                assert result["metrics"]["volumes"] == 2 and result["metrics"]["slices"] > 0
                assert f"| intensity | {result['test_set']} | {result['metrics']['slices']} |" in table
    model = Path(reports["paper"]["models"][0]["path"])
    assert model.parent == work / "models" and model.name.startswith("paper-flair-intensity-")
    stamp = (model / "config.json").stat().st_mtime_ns
    logs = {p: p.read_text() for p in (work / "models").glob("*.log")}
    assert len(logs) == 2

    again = _run(data, work, out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "] training" not in again.stdout and "] resuming" not in again.stdout  # no training subprocess
    assert "(0 to train, 1 shipped or cached)" in again.stdout
    assert again.stdout.count("] cached: intensity") == 7  # and no evaluation either
    assert (model / "config.json").stat().st_mtime_ns == stamp
    assert {p: p.read_text() for p in (work / "models").glob("*.log")} == logs
    for protocol in expected:
        rerun = json.loads((out / f"{protocol}.json").read_text())
        assert rerun["results"] == reports[protocol]["results"]


@pytest.mark.slow  # trains through the CLI
def test_runner_resumes_an_interrupted_training(data: Path, tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    [job], _ = rp.protocol_jobs("paper", data, ["intensity"], ["flair"], SPLIT)
    key = rp.cache_key("intensity", "paper", "flair", "tiny", [], job.train.files(), data)
    interrupted = work / "models" / f"paper-flair-intensity-{key}"
    interrupted.mkdir(parents=True)  # what a training stopped before its first checkpoint leaves
    done = _run(data, work, out, "--protocols", "paper")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"] resuming intensity (paper, flair) on brats2018 flair first 3: 3 volumes -> {interrupted}" in done.stdout
    assert "] training" not in done.stdout
    assert " --resume" in (interrupted.parent / f"{interrupted.name}.log").read_text().splitlines()[0]
    assert (interrupted / "config.json").exists()


@pytest.mark.slow  # trains through the CLI
def test_runner_trains_again_a_model_that_a_smaller_budget_cut_short(data: Path, tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    first = _run(data, work, out, "--protocols", "paper", "--max-minutes", "5")
    assert first.returncode == 0, first.stdout + first.stderr
    [model] = [p for p in (work / "models").iterdir() if p.is_dir()]
    assert json.loads((model.parent / f"{model.name}.key.json").read_text())["max_minutes"] == 5
    config = json.loads((model / "config.json").read_text())
    config["training_summary"]["stopped_by_time_budget"] = ["a stage"]  # what train writes when the budget ends one
    (model / "config.json").write_text(json.dumps(config))

    same = _run(data, work, out, "--protocols", "paper", "--max-minutes", "5")
    assert same.returncode == 0 and "(0 to train, 1 shipped or cached)" in same.stdout
    unlimited = _run(data, work, out, "--protocols", "paper")
    assert unlimited.returncode == 0, unlimited.stdout + unlimited.stderr
    assert f"{model.name}: cut short by a smaller time budget; training it again" in unlimited.stdout
    assert f"] training intensity (paper, flair) on brats2018 flair first 3: 3 volumes -> {model}" in unlimited.stdout
    assert json.loads((model / "config.json").read_text())["training_summary"]["stopped_by_time_budget"] == []
    assert json.loads((model.with_name(model.name + ".cut") / "config.json").read_text()) == config


def test_runner_without_data_says_so_and_exits_0(tmp_path: Path) -> None:
    done = _run(tmp_path / "absent", tmp_path / "work", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    absent = tmp_path / "absent"
    assert done.stdout.strip() == f"skipped: no real data at {absent} (pass DATA_DIR or set MAEANOMALY_DATA)"
    assert not (tmp_path / "out").exists()
