"""``score --images``: a cohort in one command. Outputs equal ``score --image``'s under names that cannot
collide, cohort.csv, a bad volume's row and exit code, --resume, and workers that change no result."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.scoring.cohort_table import (
    COHORT_COLUMNS,
    RECORDS,
    flagged_ranges,
    output_names,
    read_cohort_csv,
    volume_row,
)
from MAEAnomalyLib.scoring.table import read_table_csv

# Scoring is the same computation whatever process prepared the volume; the outputs are compared to this.
TOLERANCE = 1e-6
OUTPUTS = ("scores.csv", "diff.nii.gz", "report.png")


@pytest.fixture
def run_cli(capfd: pytest.CaptureFixture) -> Callable[..., subprocess.CompletedProcess]:
    """``main`` in this process, stdout and stderr captured (as in test_cli_errors)."""
    def run(*args: str) -> subprocess.CompletedProcess:
        capfd.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three subjects, two of them named ``case.nii.gz`` in different folders, with masks; and a damaged file."""
    root = tmp_path_factory.mktemp("cohort20")
    for seed, folder in enumerate(("siteA", "siteB", "siteC")):
        make_subject(seed, lesion=seed == 1).write(root / folder, "case" if seed < 2 else "other")
    (root / "bad.nii.gz").write_bytes(b"not an image")
    return root


def images(root: Path) -> list[str]:
    return [str(root / "siteA" / "case.nii.gz"), str(root / "bad.nii.gz"), str(root / "siteB" / "case.nii.gz"),
            str(root / "siteC" / "other.nii.gz")]


def masks(root: Path) -> list[str]:
    return [str(root / "siteA" / "case_brainmask.nii.gz"), str(root / "siteA" / "case_brainmask.nii.gz"),
            str(root / "siteB" / "case_brainmask.nii.gz"), str(root / "siteC" / "other_brainmask.nii.gz")]


NAMES = ["siteA__case", "bad", "siteB__case", "other"]


def score_args(model: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return ["score", "--model", str(model), "--images", *images(root), "--masks", *masks(root),
            "--out-dir", str(out), "--device", "cpu", *extra]


def assert_same_outputs(a: Path, name_a: str, b: Path, name_b: str) -> None:
    """Equal slice tables and difference maps (within TOLERANCE), and a report in each."""
    ta, tb = read_table_csv(a / f"{name_a}_scores.csv"), read_table_csv(b / f"{name_b}_scores.csv")
    for column in ta:
        np.testing.assert_allclose(ta[column], tb[column], rtol=0, atol=TOLERANCE, err_msg=column)
    da = sitk.ReadImage(str(a / f"{name_a}_diff.nii.gz"))
    db = sitk.ReadImage(str(b / f"{name_b}_diff.nii.gz"))
    assert da.GetSize() == db.GetSize() and da.GetOrigin() == db.GetOrigin()
    np.testing.assert_allclose(sitk.GetArrayFromImage(da), sitk.GetArrayFromImage(db), rtol=0, atol=TOLERANCE)
    assert (a / f"{name_a}_report.png").stat().st_size > 0 and (b / f"{name_b}_report.png").stat().st_size > 0


def test_output_names_never_collide(tmp_path: Path) -> None:
    assert output_names(["/d/a.nii.gz", "/d/b.nrrd"]) == ["a", "b"]
    # Same file name in other folders: as many folders as it takes, here two.
    assert output_names(["/x/s1/t1/case.nii.gz", "/x/s2/t1/case.nii.gz", "/x/s1/t1/other.mha"]) == [
        "s1__t1__case", "s2__t1__case", "other"]
    # Names that differ only in case or extension, and a generated name that meets a real one.
    names = output_names(["/d/Case.nii.gz", "/d/case.nrrd", "/e/a__b.nii.gz", "/e/a/b.nii.gz", "/f/a/b.nii"])
    assert len({n.lower() for n in names}) == 5
    assert names == output_names(["/d/Case.nii.gz", "/d/case.nrrd", "/e/a__b.nii.gz", "/e/a/b.nii.gz", "/f/a/b.nii"])
    with pytest.raises(MAEAnomalyError, match=r"given twice in --images \(entries 1 and 3\)"):
        output_names([str(tmp_path / "a.nii.gz"), "b.nii.gz", str(tmp_path / "x" / ".." / "a.nii.gz")])


def test_cohort_row_summarises_the_slice_table() -> None:
    assert flagged_ranges(np.array([3, 4, 5, 9, 11, 12])) == "3-5;9;11-12"
    assert flagged_ranges(np.array([], dtype=int)) == ""
    table = {"slice_index": np.arange(5), "position_mm": np.array([-6.0, -3.0, 0.0, 3.0, 6.0]),
             "score": np.array([0.0, 0.7, 0.2, 0.9, 0.95]), "abnormal": np.array([0, 1, 0, 1, 0]),
             "skipped": np.array([0, 0, 0, 0, 1])}
    row = volume_row("a.nii.gz", None, "a", table)
    assert row == {"image": "a.nii.gz", "mask": "", "name": "a", "slices_scored": 4, "max_score": "0.9",
                   "max_slice": 3, "max_position_mm": "3", "flagged_slices": 2, "flagged_ranges": "1;3",
                   "status": "ok"}


def test_cohort_scores_each_volume_as_score_image_does(untrained_model_dir: Path, cohort_dir: Path,
                                                       run_cli: Callable, tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    done = run_cli(*score_args(untrained_model_dir, cohort_dir, out, "--workers", "0"))
    assert done.returncode == 3, done.stderr
    bad = str(cohort_dir / "bad.nii.gz")
    assert f"maeanomaly: error: {bad}: cannot read image" in done.stderr
    assert f"4 volumes: 3 scored, 1 failed, 0 skipped (complete from an earlier run); table: {out / 'cohort.csv'}" \
        in done.stderr
    assert done.stdout.strip() == f"cohort: {out / 'cohort.csv'}"
    rows = read_cohort_csv(out / "cohort.csv")
    assert list(rows[0]) == list(COHORT_COLUMNS)
    assert [r["image"] for r in rows] == images(cohort_dir) and [r["name"] for r in rows] == NAMES
    assert [r["status"] for r in rows] == ["ok", rows[1]["status"], "ok", "ok"]
    assert rows[1]["status"].startswith(f"{bad}: cannot read image") and "\n" not in rows[1]["status"]
    assert all(rows[1][c] == "" for c in COHORT_COLUMNS[3:-1])
    # The bad volume wrote nothing; each good one its three outputs, equal to score --image's.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("bad")) == []
    for row, image, mask in zip(rows, images(cohort_dir), masks(cohort_dir), strict=True):
        if row["status"] != "ok":
            continue
        single = tmp_path / "single" / row["name"]
        assert run_cli("score", "--model", str(untrained_model_dir), "--image", image, "--mask", mask,
                       "--out-dir", str(single), "--device", "cpu").returncode == 0
        assert_same_outputs(out, row["name"], single, Path(image).name.split(".")[0])
        table = read_table_csv(out / f"{row['name']}_scores.csv")
        assert row == {k: str(v) for k, v in volume_row(image, mask, row["name"], table).items()}
        assert row["mask"] == mask and int(row["slices_scored"]) == int((table["skipped"] == 0).sum()) > 0
        assert float(row["max_score"]) == pytest.approx(table["score"].max())
    assert sorted(p.name for p in (out / RECORDS).glob("*.json")) == ["other.json", "siteA__case.json",
                                                                 "siteB__case.json"]


def test_workers_change_no_result(untrained_model_dir: Path, cohort_dir: Path, run_cli: Callable,
                                  tmp_path: Path) -> None:
    runs = {}
    for workers in ("0", "2"):
        runs[workers] = tmp_path / workers
        done = run_cli(*score_args(untrained_model_dir, cohort_dir, runs[workers], "--workers", workers))
        assert done.returncode == 3, done.stderr
    assert (runs["0"] / "cohort.csv").read_text() == (runs["2"] / "cohort.csv").read_text()
    for name in NAMES:
        if name != "bad":
            assert_same_outputs(runs["0"], name, runs["2"], name)


def _stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name != "cohort.csv"}


def test_resume_skips_complete_volumes_and_redoes_the_rest(untrained_model_dir: Path, cohort_dir: Path,
                                                           run_cli: Callable, tmp_path: Path) -> None:
    root = tmp_path / "inputs"
    shutil.copytree(cohort_dir, root)
    out = tmp_path / "out"
    assert run_cli(*score_args(untrained_model_dir, root, out, "--workers", "0")).returncode == 3
    first = (out / "cohort.csv").read_text()
    # As an interruption leaves it: one volume's set incomplete, a temporary file beside it.
    (out / "siteB__case_report.png").unlink()
    (out / ".siteB__case_scores.csv.abc.tmp.csv").write_text("half")
    # The bad input is repaired; another input is replaced by a new file at the same path.
    make_subject(5).write(root, "bad")
    shutil.copy(root / "siteA" / "case.nii.gz", root / "copy.nii.gz")
    (root / "copy.nii.gz").replace(root / "siteA" / "case.nii.gz")
    before = _stamps(out)
    done = run_cli(*score_args(untrained_model_dir, root, out, "--resume"))
    assert done.returncode == 0, done.stderr
    assert "4 volumes: 3 scored, 0 failed, 1 skipped" in done.stderr
    after = _stamps(out)
    assert all(after[f"other_{o}"] == before[f"other_{o}"] for o in OUTPUTS)
    assert all(after[f"siteA__case_{o}"] != before[f"siteA__case_{o}"] for o in OUTPUTS)
    assert {f"siteB__case_{o}" for o in OUTPUTS} <= set(after) and {f"bad_{o}" for o in OUTPUTS} <= set(after)
    rows = read_cohort_csv(out / "cohort.csv")
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert [line for line in (out / "cohort.csv").read_text().splitlines() if "bad" not in line] == \
        [line for line in first.splitlines() if "bad" not in line]
    # Nothing left to do: everything is skipped. With another model, nothing is.
    done = run_cli(*score_args(untrained_model_dir, root, out, "--resume"))
    assert done.returncode == 0 and "4 volumes: 0 scored, 0 failed, 4 skipped" in done.stderr
    other_model = tmp_path / "model"
    shutil.copytree(untrained_model_dir, other_model)
    config = json.loads((other_model / "config.json").read_text())
    config["threshold"] = 0.25
    (other_model / "config.json").write_text(json.dumps(config))
    done = run_cli(*score_args(other_model, root, out, "--resume"))
    assert done.returncode == 0 and "4 volumes: 4 scored, 0 failed, 0 skipped" in done.stderr


def test_cohort_argument_errors(untrained_model_dir: Path, cohort_dir: Path, run_cli: Callable,
                                tmp_path: Path) -> None:
    model, image = str(untrained_model_dir), str(cohort_dir / "siteC" / "other.nii.gz")
    cases = [
        (["--image", image, "--resume"], "--resume goes with --images"),
        (["--image", image, "--workers", "2"], "--workers goes with --images"),
        (["--images", image, "--mask", image], "--mask goes with --image"),
        (["--images", image, "--workers", "-1"], "--workers -1: give 0"),
        (["--images", image, image], "given twice in --images"),
        (["--images", image, "--masks", image, image], "--masks gives 2 files for 1 images"),
    ]
    for extra, message in cases:
        done = run_cli("score", "--model", model, "--out-dir", str(tmp_path / "out"), *extra)
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr)
        assert not (tmp_path / "out").exists()
    done = run_cli("score", "--model", model, "--out-dir", str(tmp_path / "out"), "--image", image, "--images", image)
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
    # An output that would replace an input is refused before anything is scored.
    (tmp_path / "in").mkdir()
    shutil.copy(image, tmp_path / "in" / "x.nii.gz")
    shutil.copy(image, tmp_path / "in" / "x_scores.csv")
    done = run_cli("score", "--model", model, "--out-dir", str(tmp_path / "in"), "--images",
                   str(tmp_path / "in" / "x.nii.gz"), str(tmp_path / "in" / "x_scores.csv"))
    assert done.returncode == 2 and "would overwrite an input" in done.stderr
