"""Messages and the remaining faults of a hostile or unlucky run: each ends in one line that names the
real problem, and leaves nothing half-done behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MAEAnomalyLib.cli.main import build_parser, main
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.core.files import atomic_outputs
from MAEAnomalyLib.data.io import read_volume
from MAEAnomalyLib.data.slice_cache import SliceCache
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.model_config import apply_overrides, preset
from MAEAnomalyLib.scoring.cohort_table import RECORDS
from MAEAnomalyLib.training import train

ROOT = Path(__file__).resolve().parents[2]


def test_a_symlink_loop_is_not_a_missing_file(tmp_path: Path) -> None:
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop)
    with pytest.raises(MAEAnomalyError, match="symbolic link loop"):
        read_volume(loop)
    broken = tmp_path / "broken.nii.gz"
    broken.symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(MAEAnomalyError, match="broken symbolic link"):
        read_volume(broken)


def test_huge_finite_values_are_not_called_infinite(tmp_path: Path) -> None:
    image = sitk.Cast(make_subject(1).image, sitk.sitkFloat64) * 1e300
    path = tmp_path / "huge.nii.gz"
    sitk.WriteImage(image, str(path))
    with pytest.raises(MAEAnomalyError, match="beyond what 32-bit floats hold") as info:
        read_volume(path)
    assert "infinite" not in str(info.value)


@pytest.mark.parametrize(("setting", "words"), [
    ("trian.seed=1",
     "--set trian.seed=1: no section 'trian' (sections: preprocess, train, calibration, segmentation, "
     "mae_classifier)"),
    ("train.bach_size=4", "--set train.bach_size=4: train has no setting 'bach_size' (settings: batch_size, "
                          "warmup_fraction, validation_fraction, hflip, seed)"),
    ("mae_classifier.mae.dept=4", "--set mae_classifier.mae.dept=4: mae_classifier.mae has no setting 'dept' "
                                  "(settings: patch_size, embed_dim, depth, "),
    ("train.seed", "--set train.seed: expected SECTION.FIELD=VALUE"),
])
def test_an_unknown_set_key_names_the_unknown_part_and_the_valid_ones(setting: str, words: str) -> None:
    with pytest.raises(MAEAnomalyError) as info:
        apply_overrides(preset("tiny"), [setting])
    assert words in str(info.value)


def test_help_explains_every_argument_and_the_default_preset() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
    assert "default: small" in commands["train"].format_help()


def test_a_folder_in_an_outputs_way_commits_nothing(tmp_path: Path) -> None:
    (tmp_path / "b.csv").mkdir()
    with pytest.raises(MAEAnomalyError, match="a folder is in the way"), atomic_outputs() as writer:
        writer.write_text("a", tmp_path / "a.csv")
        writer.write_text("b", tmp_path / "b.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]


def test_an_out_dir_that_is_a_file_is_one_line(capfd: pytest.CaptureFixture, untrained_model_dir: Path,
                                               cohort: dict, tmp_path: Path) -> None:
    out = tmp_path / "a_file"
    out.write_text("mine")
    capfd.readouterr()
    code = main(["score", "--model", str(untrained_model_dir), "--image", str(cohort["healthy"][0][0]),
                 "--out-dir", str(out), "--device", "cpu"])
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "cannot write" in lines[0], lines
    assert out.read_text() == "mine"


def test_a_truncated_cached_slice_file_is_prepared_again(tmp_path: Path) -> None:
    image = make_subject(6).write(tmp_path / "data", "head")[0]
    cache = SliceCache(tmp_path / "cache", preset("tiny").preprocess, 8)
    key = cache.key(image)
    entry = cache.ensure(key, image)
    slices = entry.slices_path
    whole = slices.read_bytes()
    slices.write_bytes(whole[: len(whole) // 2])
    again = cache.ensure(key, image)
    assert again.slices_path.read_bytes() == whole


def test_a_failed_training_run_leaves_no_folder_and_no_cache(cohort: dict, tmp_path: Path) -> None:
    """Every slice is labelled abnormal, so nothing is left to train on: the run fails after it has
    prepared (and cached) the volumes, and removes what it made."""
    images, labels = [], []
    for i, (image, mask, _) in enumerate(cohort["healthy"][:2]):
        everything = tmp_path / f"label{i}.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(mask)) * 0 + 1, str(everything))
        images.append(image)
        labels.append(everything)
    out = tmp_path / "model"
    with pytest.raises(MAEAnomalyError, match="no healthy slices"):
        train(images, out, preset("tiny"), __import__("torch").device("cpu"), labels=labels, log=lambda _: None,
              show_progress=False)
    assert not out.exists()


@pytest.mark.slow  # processes of its own, killed or limited
def test_sigterm_during_score_leaves_all_outputs_or_none(untrained_model_dir: Path, tmp_path: Path) -> None:
    """SIGTERM at a random moment of ``score``: exit 143 and no file at all, or all three outputs with their
    record (it had committed them); never a temporary file, never a traceback."""
    subject = make_subject(7, shape=(60, 96, 96))
    image, mask, _ = subject.write(tmp_path / "data", "head")
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(4):
        out = tmp_path / f"out{trial}"
        child = subprocess.Popen([sys.executable, "-m", "MAEAnomalyLib", "score", "--model", str(untrained_model_dir),
                                  "--image", str(image), "--mask", str(mask), "--out-dir", str(out), "--device", "cpu",
                                  "--batch-size", "4"], cwd=ROOT, stderr=subprocess.PIPE, encoding="utf-8",
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        time.sleep(float(rng.uniform(3.0, 9.0)))
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=120)
        files = sorted(p.name for p in out.iterdir()) if out.exists() else []
        outputs = [f for f in files if f != RECORDS]  # the record of what the run wrote sits beside them
        assert not [f for f in outputs if f.startswith(".")], files
        assert "Traceback" not in err
        if child.returncode == 143 and "nothing was written" in err:
            assert files == [] and "terminated" in err
        else:  # it committed first (then the signal may still end the process: 143 or -15)
            assert child.returncode in (0, 143, -signal.SIGTERM) and len(outputs) == 3, (child.returncode, err)
            assert RECORDS in files
        outcomes.add(child.returncode)
    assert 143 in outcomes  # at least one trial was stopped while it ran


def test_two_runs_committing_into_one_folder_never_mix_their_sets(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run is slowed down between its two renames while a second commits the same two files:
    the second waits for the folder, so the folder ends with one run's whole set."""
    import threading

    real_replace = os.replace

    def slow_after_first(src: str, dst: str) -> None:
        real_replace(src, dst)
        if threading.current_thread().name == "first" and Path(dst).name == "a.txt":
            time.sleep(0.5)

    monkeypatch.setattr(os, "replace", slow_after_first)

    def run(token: str) -> None:
        with atomic_outputs() as writer:
            writer.write_text(token, tmp_path / "a.txt")
            writer.write_text(token, tmp_path / "b.txt")

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    time.sleep(0.2)
    run("second")
    first.join()
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()


@pytest.mark.parametrize("case", ["json_folder", "out_dir_link_loop"])
def test_outputs_that_cannot_be_files_are_one_line(capfd: pytest.CaptureFixture, untrained_model_dir: Path,
                                                   cohort: dict, tmp_path: Path, case: str) -> None:
    image, mask, label = (str(p) for p in cohort["lesioned"][0])
    if case == "json_folder":
        (tmp_path / "metrics.json").mkdir()
        argv = ["evaluate", "--images", image, "--labels", label, "--json", str(tmp_path / "metrics.json")]
        words = "--json must name a file, but a folder is there"
    else:
        loop = tmp_path / "loop"
        loop.symlink_to(loop)
        argv = ["score", "--image", image, "--mask", mask, "--out-dir", str(loop)]
        words = "cannot write (Too many levels of symbolic links)"
    capfd.readouterr()
    code = main([*argv, "--model", str(untrained_model_dir), "--device", "cpu"])
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip() and not ln.startswith("scoring")]
    assert code == 2 and len(lines) == 1 and words in lines[0], lines


def test_sigterm_never_unwinds_from_inside_loggings_lock() -> None:
    """Raised there, SIGTERM's exception left logging's lock held (or was swallowed by the library that was
    logging), and a cohort's writer threads hung for ever on their next log call: it arrives a moment later."""
    import logging

    from MAEAnomalyLib.core.termination import Terminated, terminated_on_sigterm

    inside, raised_inside = False, None
    with terminated_on_sigterm(True):
        try:
            with logging._lock:  # as a library's logger.debug holds it
                inside = True
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.3)
                inside = False
            time.sleep(5)
        except Terminated:
            raised_inside = inside
    assert raised_inside is False
    assert not logging._lock._is_owned()
