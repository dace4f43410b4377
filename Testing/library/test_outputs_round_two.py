"""Issue 27, all or none and the user's files: a signal never cuts a set's renames short, a run leaves no
earlier run's outputs beside its own, a file MAEAnomaly did not write is never replaced, and ``--resume``
checks every output of a volume by its size and SHA-256."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import SimpleITK as sitk

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.core.files import atomic_outputs
from MAEAnomalyLib.data.synthetic import make_subject

SHAPE = (24, 64, 64)  # small: fast to score
T = TypeVar("T")


class Stop(BaseException):
    """What the test's own SIGTERM handler raises, as the CLI's does."""


def _sigterm_at_rename(number: int):
    """A profile function that sends SIGTERM to this process just before its ``number``-th ``os.replace``
    (as ``strace -e inject=rename:signal=SIGTERM:when=N`` does), without touching MAEAnomaly's code."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "c_call" and arg is os.replace:
            calls += 1
            if calls == number:
                os.kill(os.getpid(), signal.SIGTERM)

    return profile


def _stop(signum: int, frame: object) -> None:
    raise Stop


def _with_sigterm_at_rename(number: int, run: Callable[[], T]) -> T:
    """``run()`` with SIGTERM sent at its ``number``-th rename (the CLI installs its own handler over ``_stop``)."""
    previous = signal.signal(signal.SIGTERM, _stop)
    sys.setprofile(_sigterm_at_rename(number))
    try:
        return run()
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_the_renames_waits_for_the_whole_set(tmp_path: Path) -> None:
    names = ("a.txt", "b.txt", "c.txt")
    with atomic_outputs() as writer:
        for name in names:
            writer.write_text("first run", tmp_path / name)

    def second() -> None:
        with atomic_outputs() as writer:
            for name in names:
                writer.write_text("second run", tmp_path / name)

    with pytest.raises(Stop):
        _with_sigterm_at_rename(2, second)
    assert [(tmp_path / n).read_text() for n in names] == ["second run"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == list(names)  # no temporary left


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small generated head (skull on, so ``--brain-mask auto`` extracts the brain) and its brain mask."""
    image, mask, _ = make_subject(3).write(tmp_path_factory.mktemp("head"), "head")
    return image, mask


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A smaller head (scored with a mask or --brain-mask none only)."""
    image, mask, _ = make_subject(4, shape=SHAPE).write(tmp_path_factory.mktemp("small"), "head")
    return image, mask


@pytest.fixture(scope="module")
def voxel_model(untrained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained model with a voxel threshold: its outputs include the anomaly map and components."""
    model = tmp_path_factory.mktemp("voxel") / "tiny"
    shutil.copytree(untrained_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["voxel_threshold"] = 0.05
    (model / "config.json").write_text(json.dumps(config))
    return model


def _score(model: Path, image: Path, out: Path, *extra: str) -> int:
    return main(["score", "--model", str(model), "--image", str(image), "--out-dir", str(out), "--device", "cpu",
                 *extra])


def _visible(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}


def test_sigterm_during_the_commit_of_score_leaves_one_runs_set(capfd: pytest.CaptureFixture, voxel_model: Path,
                                                                small: tuple[Path, Path], tmp_path: Path) -> None:
    """The issue's strace run: SIGTERM at the second rename of a second ``score`` with other settings.
    The folder holds the second run's whole set, and the message does not claim that nothing was written."""
    image, mask = small
    out, reference = tmp_path / "out", tmp_path / "reference"
    assert _score(voxel_model, image, out, "--brain-mask", "none") == 0
    assert _score(voxel_model, image, reference, "--mask", str(mask)) == 0
    capfd.readouterr()
    code = _with_sigterm_at_rename(2, lambda: _score(voxel_model, image, out, "--mask", str(mask)))
    err = capfd.readouterr().err
    assert code == 143 and "nothing was written" not in err and "written whole" in err, err
    assert _visible(out) == _visible(reference)


@pytest.mark.slow  # deepbet extracts the brain
def test_a_run_leaves_no_earlier_outputs_beside_its_own(voxel_model: Path, untrained_model_dir: Path,
                                                       head: tuple[Path, Path], tmp_path: Path) -> None:
    """Extracted mask, anomaly map and components, then ``--brain-mask none`` with a model without a voxel
    threshold: only that run's three outputs are left."""
    image, _ = head
    out = tmp_path / "out"
    assert _score(voxel_model, image, out) == 0
    assert sorted(_visible(out)) == ["head_anomalies.nii.gz", "head_brainmask.nii.gz", "head_components.csv",
                                     "head_diff.nii.gz", "head_report.png", "head_scores.csv"]
    assert _score(untrained_model_dir, image, out, "--brain-mask", "none") == 0
    assert sorted(_visible(out)) == ["head_diff.nii.gz", "head_report.png", "head_scores.csv"]


def _refused(capfd: pytest.CaptureFixture, model: Path, image: Path, out: Path, mine: Path, *extra: str) -> None:
    """``score`` ends in one line naming the user's file, which is unchanged, and writes nothing."""
    before = mine.read_bytes()
    capfd.readouterr()
    assert _score(model, image, out, *extra) == 2
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("maeanomaly")]
    assert lines == [f"maeanomaly: error: {mine}: not written by MAEAnomaly, so it is not replaced; move it "
                     "away or choose another --out-dir"], lines
    assert mine.read_bytes() == before and sorted(_visible(out)) == [mine.name]


@pytest.mark.slow  # deepbet extracts the brain
def test_the_users_own_brain_mask_in_the_output_folder_is_never_replaced(
        capfd: pytest.CaptureFixture, untrained_model_dir: Path, head: tuple[Path, Path], tmp_path: Path) -> None:
    image, mask = head
    mine = tmp_path / "out" / "head_brainmask.nii.gz"
    mine.parent.mkdir()
    shutil.copy(mask, mine)
    _refused(capfd, untrained_model_dir, image, mine.parent, mine)


def test_a_file_of_an_outputs_name_that_maeanomaly_did_not_write_is_never_replaced(
        capfd: pytest.CaptureFixture, untrained_model_dir: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    """Once the user's file is gone, MAEAnomaly's own outputs (its record lists them) are replaced freely."""
    image, _ = small
    out = tmp_path / "out"
    mine = out / "head_scores.csv"
    out.mkdir()
    mine.write_text("slice,my notes\n")
    _refused(capfd, untrained_model_dir, image, out, mine, "--brain-mask", "none")
    mine.unlink()
    for _ in range(2):
        assert _score(untrained_model_dir, image, out, "--brain-mask", "none") == 0


def _cohort(model: Path, images: list[Path], masks: list[Path], out: Path, *extra: str) -> int:
    return main(["score", "--model", str(model), "--images", *map(str, images), "--masks", *map(str, masks),
                 "--out-dir", str(out), "--device", "cpu", "--workers", "0", *extra])


def test_resume_checks_every_output_by_size_and_digest(capfd: pytest.CaptureFixture, voxel_model: Path,
                                                       tmp_path: Path) -> None:
    """The anomaly map and components of one volume removed and its difference map truncated, another's
    report changed in place (same size): both are scored again, the untouched one is skipped."""
    subjects = [make_subject(20 + i, shape=SHAPE).write(tmp_path / "data", f"case{i}") for i in range(3)]
    images, masks = [s[0] for s in subjects], [s[1] for s in subjects]
    out = tmp_path / "out"
    assert _cohort(voxel_model, images, masks, out) == 0
    (out / "case0_anomalies.nii.gz").unlink()
    (out / "case0_components.csv").unlink()
    diff = out / "case0_diff.nii.gz"
    diff.write_bytes(diff.read_bytes()[:-100])
    report = bytearray((out / "case1_report.png").read_bytes())
    report[len(report) // 2] ^= 0xFF
    (out / "case1_report.png").write_bytes(bytes(report))
    capfd.readouterr()
    assert _cohort(voxel_model, images, masks, out, "--resume") == 0
    assert "3 volumes: 2 scored, 0 failed, 1 skipped" in capfd.readouterr().err
    assert (out / "case0_anomalies.nii.gz").is_file() and (out / "case0_components.csv").is_file()
    with gzip.open(diff) as fh:
        fh.read()  # whole again
    assert sitk.ReadImage(str(diff)).GetSize() == sitk.ReadImage(str(images[0])).GetSize()


def test_a_second_run_into_a_folder_in_use_stops_in_one_line(capfd: pytest.CaptureFixture,
                                                            untrained_model_dir: Path, tmp_path: Path) -> None:
    """While a cohort run holds its folder, another run into it writes nothing and says so; the lock goes
    with the run, and the next run proceeds."""
    from MAEAnomalyLib.core.files import one_run_at_a_time
    from MAEAnomalyLib.scoring.cohort_table import RECORDS, RUN_LOCK

    subjects = [make_subject(40 + i, shape=SHAPE).write(tmp_path / "data", f"case{i}") for i in range(2)]
    images, masks = [s[0] for s in subjects], [s[1] for s in subjects]
    out = tmp_path / "out"
    with one_run_at_a_time(out / RECORDS / RUN_LOCK, out, "--out-dir"):  # the first run, as it holds the folder
        capfd.readouterr()
        assert _cohort(untrained_model_dir, images, masks, out) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another maeanomaly run is writing into this folder" in err[0] and str(out) in err[0]
        assert sorted(p.name for p in out.iterdir()) == [RECORDS]
        assert [p.name for p in (out / RECORDS).iterdir()] == [RUN_LOCK]
    assert _cohort(untrained_model_dir, images, masks, out) == 0
    assert (out / "cohort.csv").is_file()
